"""Replace the CBAM modules a model already has with ``cbam_fast.CBAM``, keeping their weights.

Recognised (by class name and structure; timm, ultralytics, mmyolo are never imported):

| implementation | module recognised | preset |
|---|---|---|
| authors' code (Jongchan/attention-module) | ``CBAM`` with ``ChannelGate`` / ``SpatialGate`` | ``CBAM.official`` |
| timm | ``CbamModule``, ``LightCbamModule`` (``channel`` / ``spatial``) | ``CBAM.timm``, ``CBAM.timm_light`` |
| Ultralytics | ``CBAM`` with ``channel_attention.fc`` / ``spatial_attention.cv1`` | ``CBAM.ultralytics`` |
| mmyolo | ``CBAM`` with ``ChannelAttention`` / ``SpatialAttention`` of ``ConvModule`` s | ``CBAM.mmyolo`` |
| luuuyi/CBAM.PyTorch | a module holding exactly ``ca`` (ChannelAttention) and ``sa`` (SpatialAttention) | ``CBAM.luuuyi`` |

A module that looks like one of these but uses an option cbam_fast does not serve (the authors'
'lp'/'lse' pools or ``no_spatial``, a gate other than sigmoid, an activation other than ReLU, a
norm or activation where the original has none) is refused: :func:`from_module` raises
:class:`UnsupportedModule` naming the module and the option; :func:`convert` leaves it untouched
and warns. Never a silent wrong answer.

State dicts saved by each original load into an equivalently configured ``cbam_fast.CBAM``
directly (``CBAM._load_from_state_dict`` renames the keys of the tables below and reshapes 1x1
conv weights into Linear weights).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger("cbam_fast")

_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _with_bn(mapping: dict, foreign_bn: str) -> dict:
    return {**mapping, **{f"{foreign_bn}.{b}": f"bn.{b}" for b in _BN_BUFFERS}}


# foreign key suffix -> cbam_fast key suffix, per implementation
KEY_MAPS = {
    "official": _with_bn({
        "ChannelGate.mlp.1.weight": "fc1.weight", "ChannelGate.mlp.1.bias": "fc1.bias",
        "ChannelGate.mlp.3.weight": "fc2.weight", "ChannelGate.mlp.3.bias": "fc2.bias",
        "SpatialGate.spatial.conv.weight": "conv.weight", "SpatialGate.spatial.conv.bias": "conv.bias",
    }, "SpatialGate.spatial.bn"),
    "timm": _with_bn({
        "channel.fc1.weight": "fc1.weight", "channel.fc1.bias": "fc1.bias",
        "channel.fc2.weight": "fc2.weight", "channel.fc2.bias": "fc2.bias",
        "spatial.conv.conv.weight": "conv.weight", "spatial.conv.conv.bias": "conv.bias",
    }, "spatial.conv.bn"),
    "ultralytics": {
        "channel_attention.fc.weight": "fc1.weight", "channel_attention.fc.bias": "fc1.bias",
        "spatial_attention.cv1.weight": "conv.weight", "spatial_attention.cv1.bias": "conv.bias",
    },
    "mmyolo": {
        "channel_attention.fc.0.conv.weight": "fc1.weight", "channel_attention.fc.0.conv.bias": "fc1.bias",
        "channel_attention.fc.1.conv.weight": "fc2.weight", "channel_attention.fc.1.conv.bias": "fc2.bias",
        "spatial_attention.conv.conv.weight": "conv.weight", "spatial_attention.conv.conv.bias": "conv.bias",
    },
    "luuuyi": {"ca.fc.0.weight": "fc1.weight", "ca.fc.2.weight": "fc2.weight", "sa.conv1.weight": "conv.weight"},
}


def translate_state_dict(module, state_dict, prefix: str) -> None:
    """Rename, in place, the keys under ``prefix`` that an original implementation saved to this
    module's own names; 1x1 conv weights ``[out, in, 1, 1]`` become Linear weights ``[out, in]``."""
    own = dict(module.named_parameters(recurse=True))
    own.update(dict(module.named_buffers(recurse=True)))
    for mapping in KEY_MAPS.values():
        hits = [k for k in mapping if prefix + k in state_dict]
        if not hits:
            continue
        for foreign in hits:
            target = mapping[foreign]
            value = state_dict.pop(prefix + foreign)
            if target in own and isinstance(value, torch.Tensor) and value.dim() == 4 and own[target].dim() == 2:
                value = value.reshape(own[target].shape)
            state_dict[prefix + target] = value


class UnsupportedModule(ValueError):
    """A CBAM-like module with an option cbam_fast does not serve."""


# ----------------------------------------------------------------------------- recognisers


def _refuse(module, option):
    raise UnsupportedModule(f"{type(module).__name__}: {option} is not supported by cbam_fast.CBAM")


def _is(module, *names):
    return type(module).__name__ in names


def _is_sigmoid(module):
    return isinstance(module, nn.Sigmoid) or _is(module, "Sigmoid")


def _is_relu(module):
    return isinstance(module, nn.ReLU) or _is(module, "ReLU")


def _is_identity(module):
    return module is None or isinstance(module, nn.Identity)


def _conv1x1(module):
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _spatial_conv(module, owner, in_maps):
    if not isinstance(module, nn.Conv2d) or module.in_channels != in_maps or module.out_channels != 1:
        _refuse(owner, f"a spatial conv other than {in_maps} -> 1 channels")
    k = module.kernel_size[0]
    from .kernels import KERNEL_SIZES

    if k not in KERNEL_SIZES:
        _refuse(owner, f"spatial kernel size {k} (cbam_fast serves {KERNEL_SIZES})")
    if module.kernel_size != (k, k) or module.padding != (k // 2, k // 2) or module.stride != (1, 1) \
            or module.dilation != (1, 1) or module.groups != 1 or module.padding_mode != "zeros":
        _refuse(owner, f"spatial conv {module} (cbam_fast needs a square odd 'same' conv, stride 1)")
    return k


def _official(m):
    gate, spatial = getattr(m, "ChannelGate", None), getattr(m, "SpatialGate", None)
    if gate is None or not _is(gate, "ChannelGate"):
        return None
    pools = list(getattr(gate, "pool_types", ["avg", "max"]))
    if getattr(m, "no_spatial", False) or spatial is None:
        _refuse(m, "no_spatial=True")
    if sorted(pools) not in (["avg", "max"], ["avg"]):
        _refuse(m, f"pool_types={pools} ('lp' and 'lse' pools)")
    mlp = gate.mlp
    layers = [l for l in mlp if not isinstance(l, nn.Flatten) and not _is(l, "Flatten")]
    if len(layers) != 3 or not isinstance(layers[0], nn.Linear) or not _is_relu(layers[1]) or not isinstance(layers[2], nn.Linear):
        _refuse(m, "an MLP other than Linear-ReLU-Linear")
    basic = spatial.spatial
    k = _spatial_conv(basic.conv, m, 2)
    if getattr(basic, "relu", None) is not None:
        _refuse(m, "a ReLU after the spatial conv")
    bn = getattr(basic, "bn", None)
    new = _cbam()(gate.gate_channels if hasattr(gate, "gate_channels") else layers[0].in_features, 16, k,
                  channel_pool="avg_max" if len(pools) == 2 else "avg", hidden_channels=layers[0].out_features,
                  mlp_bias=layers[0].bias is not None, conv_bias=basic.conv.bias is not None,
                  spatial_bn=bn is not None, **_bn_args(bn))
    return new, "official"


def _timm(m):
    if not _is(m, "CbamModule", "LightCbamModule"):
        return None
    light = _is(m, "LightCbamModule")
    ch, sp = m.channel, m.spatial
    if not (_conv1x1(ch.fc1) and _conv1x1(ch.fc2)):
        _refuse(m, "a channel MLP other than two 1x1 convs")
    if not _is_relu(getattr(ch, "act", nn.ReLU())):
        _refuse(m, f"act_layer={type(ch.act).__name__} (cbam_fast's MLP uses ReLU)")
    if not light and not _is_sigmoid(ch.gate):
        _refuse(m, f"gate_layer={type(ch.gate).__name__} (cbam_fast gates with sigmoid)")
    if not _is_sigmoid(sp.gate):
        _refuse(m, f"gate_layer={type(sp.gate).__name__} (cbam_fast gates with sigmoid)")
    cna = sp.conv
    k = _spatial_conv(cna.conv, m, 1 if light else 2)
    bn = getattr(cna, "bn", None)
    if bn is not None and not _is_identity(getattr(bn, "act", None)):
        _refuse(m, "an activation after the spatial BatchNorm")
    if bn is not None and not _is_identity(getattr(bn, "drop", None)):
        _refuse(m, "dropout after the spatial BatchNorm")
    new = _cbam()(ch.fc1.in_channels, 16, k, channel_pool="light" if light else "avg_max",
                  hidden_channels=ch.fc1.out_channels, mlp_bias=ch.fc1.bias is not None,
                  spatial_pool="light" if light else "mean_max", conv_bias=cna.conv.bias is not None,
                  spatial_bn=isinstance(bn, nn.modules.batchnorm._BatchNorm), **_bn_args(bn))
    return new, "timm_light" if light else "timm"


def _ultralytics(m):
    ch, sp = getattr(m, "channel_attention", None), getattr(m, "spatial_attention", None)
    if ch is None or sp is None or not _conv1x1(getattr(ch, "fc", None)) or not hasattr(sp, "cv1"):
        return None
    if not (_is_sigmoid(ch.act) and _is_sigmoid(sp.act)):
        _refuse(m, "a gate other than sigmoid")
    if not isinstance(ch.pool, nn.AdaptiveAvgPool2d):
        _refuse(m, f"channel pool {type(ch.pool).__name__}")
    k = _spatial_conv(sp.cv1, m, 2)
    new = _cbam()(ch.fc.in_channels, 1, k, channel_pool="avg", mlp="single", mlp_bias=ch.fc.bias is not None,
                  spatial_pool="mean_max", conv_bias=sp.cv1.bias is not None)
    return new, "ultralytics"


def _mmyolo(m):
    ch, sp = getattr(m, "channel_attention", None), getattr(m, "spatial_attention", None)
    fc = getattr(ch, "fc", None)
    if ch is None or sp is None or not isinstance(fc, nn.Sequential) or len(fc) != 2 or not all(_is(f, "ConvModule") for f in fc):
        return None
    first, second = fc
    for cm, act in ((first, "ReLU"), (second, None), (sp.conv, "Sigmoid")):
        if getattr(cm, "norm", None) is not None or getattr(cm, "with_norm", False):
            _refuse(m, "a norm layer in a ConvModule")
        activate = getattr(cm, "activate", None) if getattr(cm, "with_activation", True) else None
        if (activate is None) != (act is None) or (act == "ReLU" and not _is_relu(activate)) or (act == "Sigmoid" and not _is_sigmoid(activate)):
            _refuse(m, f"act_cfg {type(activate).__name__ if activate is not None else None} where {act} is expected")
    if not (_conv1x1(first.conv) and _conv1x1(second.conv)):
        _refuse(m, "a channel MLP other than two 1x1 convs")
    k = _spatial_conv(sp.conv.conv, m, 2)
    new = _cbam()(first.conv.in_channels, 16, k, hidden_channels=first.conv.out_channels,
                  mlp_bias=first.conv.bias is not None, spatial_pool="mean_max", conv_bias=sp.conv.conv.bias is not None)
    return new, "mmyolo"


def _luuuyi(m):
    children = dict(m.named_children())
    if set(children) != {"ca", "sa"} or not _is(children["ca"], "ChannelAttention") or not _is(children["sa"], "SpatialAttention"):
        return None
    ca, sa = children["ca"], children["sa"]
    layers = list(ca.fc)
    if len(layers) != 3 or not (_conv1x1(layers[0]) and _is_relu(layers[1]) and _conv1x1(layers[2])):
        _refuse(m, "a channel MLP other than conv-ReLU-conv")
    k = _spatial_conv(sa.conv1, m, 2)
    new = _cbam()(layers[0].in_channels, 16, k, hidden_channels=layers[0].out_channels, mlp_bias=layers[0].bias is not None,
                  spatial_pool="mean_max", conv_bias=sa.conv1.bias is not None)
    return new, "luuuyi"


RECOGNISERS = (_official, _timm, _mmyolo, _ultralytics, _luuuyi)


def _cbam():
    from .module import CBAM

    return CBAM


def _bn_args(bn):
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return {}
    if bn.num_features != 1 or not bn.affine:
        raise UnsupportedModule(f"{type(bn).__name__}: a spatial BatchNorm other than BatchNorm2d(1, affine=True)")
    return {"bn_eps": bn.eps, "bn_momentum": bn.momentum}


def _recognise(module):
    for recognise in RECOGNISERS:
        found = recognise(module)
        if found is not None:
            return found
    return None


def from_module(module: nn.Module):
    """An equivalent :class:`cbam_fast.CBAM` holding ``module``'s weights and buffers, on its device
    and dtype, in its train/eval mode. Raises :class:`UnsupportedModule` for a CBAM-like module
    with an option cbam_fast does not serve, and ``TypeError`` for a module it does not recognise."""
    found = _recognise(module)
    if found is None:
        raise TypeError(f"{type(module).__name__} is not a CBAM module cbam_fast recognises")
    new, _ = found
    ref = next(module.parameters())
    new = new.to(device=ref.device, dtype=ref.dtype)
    if new.bn is not None and not getattr(module_bn(module), "track_running_stats", True):
        raise UnsupportedModule(f"{type(module).__name__}: a spatial BatchNorm without running statistics")
    new.load_state_dict(module.state_dict(), strict=True)
    new.train(module.training)
    bn = module_bn(module)
    if new.bn is not None:  # the BatchNorm keeps its own mode and dtype (e.g. frozen, or fp32 in an fp16 model)
        new.bn.to(dtype=bn.weight.dtype).train(bn.training)
        new.bn.load_state_dict(bn.state_dict())
    return new


def module_bn(module):
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m
    return None


def convert(model: nn.Module):
    """Replace every recognised CBAM module inside ``model`` (the model itself included) with an
    equivalent :class:`cbam_fast.CBAM` holding the same weights and buffers.

    Returns ``(model, replaced)``: the converted model (a new object only when ``model`` itself was
    replaced) and a list of ``(qualified name, implementation)`` pairs. Each replacement is also
    logged on the ``cbam_fast`` logger. CBAM-like modules with unsupported options are left as
    they are, with a warning naming the module and the option.
    """
    from .module import CBAM

    replaced = []

    def visit(parent, name, child):
        qual = name or "<model>"
        if isinstance(child, CBAM):
            return child
        try:
            found = _recognise(child)
        except UnsupportedModule as e:
            warnings.warn(f"cbam_fast.convert: left {qual} untouched: {e}", stacklevel=3)
            found = None
        if found is not None:
            new = from_module(child)
            replaced.append((qual, found[1]))
            log.info("cbam_fast.convert: replaced %s (%s CBAM)", qual, found[1])
            return new
        for sub_name, sub in list(child.named_children()):
            new_sub = visit(child, f"{name}.{sub_name}" if name else sub_name, sub)
            if new_sub is not sub:
                setattr(child, sub_name, new_sub)
        return child

    model = visit(None, "", model)
    return model, replaced
