"""Replace the CBAM modules a model already has with ``cbam_fast.CBAM``, keeping their weights.

Recognised (timm, ultralytics, mmyolo are never imported):

| implementation | module recognised | preset |
|---|---|---|
| authors' code (Jongchan/attention-module) | ``CBAM`` with ``ChannelGate`` / ``SpatialGate`` | ``CBAM.official`` |
| timm | ``CbamModule``, ``LightCbamModule`` (``channel`` / ``spatial``) | ``CBAM.timm``, ``CBAM.timm_light`` |
| Ultralytics | ``CBAM`` with ``channel_attention.fc`` / ``spatial_attention.cv1`` | ``CBAM.ultralytics`` |
| mmyolo | ``CBAM`` with ``ChannelAttention`` / ``SpatialAttention`` of ``ConvModule`` s | ``CBAM.mmyolo`` |
| luuuyi/CBAM.PyTorch | a module holding a channel-gate half and a spatial-gate half (any names) whose forward is ``x = ca(x) * x; sa(x) * x`` | ``CBAM.luuuyi`` |
| "tutorial" (SEEDS document 000) | a module holding a channel-attention half and a spatial-attention half (any names) whose forward is ``sa(ca(x))``, or the two halves consecutive in an ``nn.Sequential`` | explicit keywords (``channel_pool="avg"``, ``conv_bias=True``, ...) |

The last two are recognised by structure, never by attribute names, and confirmed before they are
fused: each half's ``forward`` is read with ``torch.fx`` (pools, MLP, gate, product with x: nothing
else), the holder's ``forward`` is traced with the halves as leaves (channel half, then spatial
half, and nothing else), and the fused module's output is checked against the original on a small
fp64 probe. Ultralytics' and mmyolo's compositions are confirmed the same way.

A module that looks like one of these but uses an option cbam_fast does not serve (the authors'
'lp'/'lse' or max-only pools or ``no_spatial``, a hidden width of 0, a gate other than sigmoid,
an activation other than ReLU, a norm or activation where the original has none, a state-dict
layout other than the original's) is refused: :func:`from_module` raises
:class:`UnsupportedModule` naming the module and the option; :func:`convert` leaves it untouched
and warns with the reason. Never a silent wrong answer, and convert never raises because of one
module.

Checkpoints stay interchangeable: a converted module saves its state dict under the key names
and shapes of the implementation it replaced (a state-dict hook), and loads them back;
``CBAM._load_from_state_dict`` also renames the keys each original saves (tables below) so an
equivalently configured ``cbam_fast.CBAM`` built directly loads them (it saves its own keys).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import operator
import warnings
from collections import Counter, OrderedDict
from itertools import chain

import torch
import torch.nn.functional as F
from torch import fx, nn

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
KEY_MAPS["timm_light"] = KEY_MAPS["timm"]

# document 000's halves, under any two child names: <channel>.fc.{0,2}.*, <spatial>.conv.*
_TUTORIAL_CHANNEL = {"fc.0.weight": "fc1.weight", "fc.0.bias": "fc1.bias", "fc.2.weight": "fc2.weight", "fc.2.bias": "fc2.bias"}
_TUTORIAL_SPATIAL = {"conv.weight": "conv.weight", "conv.bias": "conv.bias"}


# ----------------------------------------------------------------------------- state-dict keys


def _tutorial_map(keys) -> dict:
    """The foreign -> own map of a document-000 layout (two children with any names), or {}."""
    groups: dict[str, set] = {}
    for k in keys:
        head, _, rest = k.partition(".")
        groups.setdefault(head, set()).add(rest)
    if len(groups) != 2:
        return {}
    (a, ra), (b, rb) = groups.items()
    if not ra <= set(_TUTORIAL_CHANNEL):
        (a, ra), (b, rb) = (b, rb), (a, ra)
    if not (ra <= set(_TUTORIAL_CHANNEL) and {"fc.0.weight", "fc.2.weight"} <= ra
            and rb <= set(_TUTORIAL_SPATIAL) and "conv.weight" in rb):
        return {}
    return {**{f"{a}.{k}": v for k, v in _TUTORIAL_CHANNEL.items()}, **{f"{b}.{k}": v for k, v in _TUTORIAL_SPATIAL.items()}}


def translate_state_dict(module, state_dict, prefix: str) -> None:
    """Rename, in place, the keys under ``prefix`` that an original implementation saved to this
    module's own names; 1x1 conv weights ``[out, in, 1, 1]`` become Linear weights ``[out, in]``.

    A converted module first uses the keys it recorded (:func:`from_module`); otherwise the first
    known layout (``KEY_MAPS``, then document 000's) that covers every foreign key is used."""
    own = dict(module.named_parameters(recurse=True))
    own.update(dict(module.named_buffers(recurse=True)))
    recorded = {f: o for group in getattr(module, "_cbam_fast_keys", ()) for f, o, _, _ in group}
    if recorded:
        _rename(state_dict, prefix, recorded, own)
    foreign = [k[len(prefix):] for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]
    if not foreign:
        return
    for mapping in chain(KEY_MAPS.values(), [_tutorial_map(foreign)]):
        if all(k in mapping for k in foreign):
            _rename(state_dict, prefix, mapping, own)
            return


def _rename(state_dict, prefix, mapping, own) -> None:
    for foreign, target in mapping.items():
        if prefix + foreign not in state_dict:
            continue
        value = state_dict.pop(prefix + foreign)
        mine = own.get(target)
        if isinstance(value, torch.Tensor) and mine is not None and value.shape != mine.shape \
                and value.numel() == mine.numel():
            value = value.reshape(mine.shape)
        state_dict[prefix + target] = value


def _save_hook(module, state_dict, prefix, local_metadata) -> None:
    """State-dict post-hook of a converted module (or of the nn.Sequential holding a fused pair):
    the keys and shapes of the original, in the original's order and place."""
    for group in module._cbam_fast_keys:
        saved_as = {prefix + o for _, o, _, _ in group}
        keys = list(state_dict)
        first = next((i for i, k in enumerate(keys) if k in saved_as), None)
        if first is None:
            continue
        tail = OrderedDict((k, state_dict.pop(k)) for k in keys[first:])
        done = False
        for k, v in tail.items():
            if k not in saved_as:
                state_dict[k] = v
            elif not done:
                done = True
                for f, o, fshape, _ in group:
                    if prefix + o in tail:
                        value = tail[prefix + o]
                        state_dict[prefix + f] = value if tuple(value.shape) == fshape else value.detach().reshape(fshape)
        meta = getattr(state_dict, "_metadata", None)
        if meta is not None:
            for f, o, _, _ in group:
                theirs, ours = (prefix + f).rpartition(".")[0], (prefix + o).rpartition(".")[0]
                if ours in meta:
                    meta.setdefault(theirs, meta[ours])


def _load_hook(module, state_dict, prefix, *args) -> None:
    """Load pre-hook of an nn.Sequential holding a fused pair: the original's keys to the fused
    module's own (a converted module itself translates in ``CBAM._load_from_state_dict``)."""
    for group in module._cbam_fast_keys:
        for f, o, _, oshape in group:
            if prefix + f in state_dict:
                value = state_dict.pop(prefix + f)
                if isinstance(value, torch.Tensor) and tuple(value.shape) != oshape and value.numel() == math.prod(oshape):
                    value = value.reshape(oshape)
                state_dict[prefix + o] = value


def _record_keys(module, group, load_hook: bool) -> None:
    groups = module.__dict__.get("_cbam_fast_keys", ())
    if not groups:
        module.register_state_dict_post_hook(_save_hook)
        if load_hook:
            module.register_load_state_dict_pre_hook(_load_hook)
    module._cbam_fast_keys = groups + (group,)


class UnsupportedModule(ValueError):
    """A CBAM-like module with an option cbam_fast does not serve."""


# ----------------------------------------------------------------------------- recognisers


@dataclasses.dataclass
class _Found:
    kind: str  # the implementation, e.g. "timm"
    kwargs: dict  # cbam_fast.CBAM's constructor arguments
    keys: dict  # the original's state-dict key -> cbam_fast.CBAM's
    bn: nn.Module | None = None  # the original's spatial BatchNorm
    probe: bool = False  # inferred from structure: confirm the output on an fp64 probe


def _refuse(module, option):
    raise UnsupportedModule(f"{type(module).__name__}: {option} is not supported by cbam_fast.CBAM")


def _leave(module, why):
    raise UnsupportedModule(f"{type(module).__name__}: {why}")


def _is(module, *names):
    return type(module).__name__ in names


def _is_sigmoid(module):
    return isinstance(module, nn.Sigmoid) or _is(module, "Sigmoid")


def _is_relu(module):
    return isinstance(module, nn.ReLU) or _is(module, "ReLU")


def _is_identity(module):
    return module is None or isinstance(module, nn.Identity)


def _conv1x1(module):
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
        and module.padding == (0, 0) and module.dilation == (1, 1) and module.groups == 1


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


def _hidden(owner, width, why=""):
    if width < 1:
        _refuse(owner, f"a hidden width of {width}{why}")
    return width


def _official_gate(m, gate):
    """The authors' ChannelGate's pools and MLP layers (fc1, fc2), checked: UnsupportedModule for
    an option cbam_fast does not serve."""
    pools = list(getattr(gate, "pool_types", ["avg", "max"]))
    others = [p for p in pools if p not in ("avg", "max")]
    if others:
        _refuse(m, f"pool_types={pools} (the {others} pools)")
    if sorted(pools) == ["max"]:
        _refuse(m, f"pool_types={pools} (a max-only channel pool)")
    if sorted(pools) not in (["avg", "max"], ["avg"]):
        _refuse(m, f"pool_types={pools} (a pool listed twice)")
    layers = list(gate.mlp) if isinstance(gate.mlp, nn.Sequential) else []
    if len(layers) == 3 and isinstance(layers[0], nn.Linear) and _is_relu(layers[1]) and isinstance(layers[2], nn.Linear):
        _refuse(m, "an MLP without the authors' leading Flatten (keys mlp.0 / mlp.2 where the authors' are mlp.1 / mlp.3)")
    if len(layers) != 4 or not (isinstance(layers[0], nn.Flatten) or _is(layers[0], "Flatten")) \
            or not isinstance(layers[1], nn.Linear) or not _is_relu(layers[2]) or not isinstance(layers[3], nn.Linear):
        _refuse(m, "an MLP other than the authors' Flatten-Linear-ReLU-Linear")
    fc1 = layers[1]
    _hidden(m, fc1.out_features, f" (gate_channels {fc1.in_features} < reduction_ratio: C // r is 0)")
    return pools, fc1, layers[3]


def _official(m):
    gate, spatial = getattr(m, "ChannelGate", None), getattr(m, "SpatialGate", None)
    if gate is None or not _is(gate, "ChannelGate"):
        return None
    if getattr(m, "no_spatial", False):
        return None  # the channel gate alone: a ChannelAttention (cbam_fast/gate_convert.py)
    if spatial is None:
        _refuse(m, "a CBAM without its SpatialGate")
    pools, fc1, _ = _official_gate(m, gate)
    basic = spatial.spatial
    k = _spatial_conv(basic.conv, m, 2)
    if getattr(basic, "relu", None) is not None:
        _refuse(m, "a ReLU after the spatial conv")
    bn = getattr(basic, "bn", None)
    kwargs = dict(channels=fc1.in_features, kernel_size=k, channel_pool="avg_max" if len(pools) == 2 else "avg",
                  hidden_channels=fc1.out_features, mlp_bias=fc1.bias is not None,
                  conv_bias=basic.conv.bias is not None, spatial_bn=bn is not None, **_bn_args(bn))
    return _Found("official", kwargs, KEY_MAPS["official"], bn)


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
    kind = "timm_light" if light else "timm"
    kwargs = dict(channels=ch.fc1.in_channels, kernel_size=k, channel_pool="light" if light else "avg_max",
                  hidden_channels=_hidden(m, ch.fc1.out_channels), mlp_bias=ch.fc1.bias is not None,
                  spatial_pool="light" if light else "mean_max", conv_bias=cna.conv.bias is not None,
                  spatial_bn=isinstance(bn, nn.modules.batchnorm._BatchNorm), **_bn_args(bn))
    return _Found(kind, kwargs, KEY_MAPS[kind], bn if isinstance(bn, nn.modules.batchnorm._BatchNorm) else None)


def _ultralytics(m):
    ch, sp = getattr(m, "channel_attention", None), getattr(m, "spatial_attention", None)
    if ch is None or sp is None or not _conv1x1(getattr(ch, "fc", None)) or not hasattr(sp, "cv1"):
        return None
    if not (_is_sigmoid(getattr(ch, "act", None)) and _is_sigmoid(getattr(sp, "act", None))):
        _refuse(m, "a gate other than sigmoid")
    if not isinstance(getattr(ch, "pool", None), nn.AdaptiveAvgPool2d):
        _refuse(m, f"channel pool {type(getattr(ch, 'pool', None)).__name__}")
    k = _spatial_conv(sp.cv1, m, 2)
    _confirm_order(m, (ch, sp), "sequential")
    kwargs = dict(channels=ch.fc.in_channels, kernel_size=k, channel_pool="avg", mlp="single",
                  mlp_bias=ch.fc.bias is not None, spatial_pool="mean_max", conv_bias=sp.cv1.bias is not None)
    return _Found("ultralytics", kwargs, KEY_MAPS["ultralytics"], probe=True)


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
    _confirm_order(m, (ch, sp), "gates")
    kwargs = dict(channels=first.conv.in_channels, kernel_size=k, hidden_channels=_hidden(m, first.conv.out_channels),
                  mlp_bias=first.conv.bias is not None, spatial_pool="mean_max", conv_bias=sp.conv.conv.bias is not None)
    return _Found("mmyolo", kwargs, KEY_MAPS["mmyolo"], probe=True)


# --------------------------------------------------- recognised by structure, confirmed with torch.fx

_CHANNEL_LEAVES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Conv2d, nn.ReLU, nn.Sigmoid,
                   nn.Flatten, nn.Identity)
_SPATIAL_LEAVES = (nn.Conv2d, nn.Sigmoid, nn.Identity)


def _leaves(m):
    return [s for s in m.modules() if not s._modules]


def _only_layer_tensors(m, layers):
    """m's parameters are exactly those of ``layers`` and it holds no buffers."""
    mine = {id(p) for layer in layers for p in layer.parameters()}
    return not any(True for _ in m.buffers()) and {id(p) for p in m.parameters()} == mine


def _looks_channel(m):
    """A module holding only what a channel-attention half needs: two MLP layers (Linear, or
    1x1 Conv2d), pools, ReLU, Sigmoid (what its forward does is read by :func:`_read_half`)."""
    if not m._modules:
        return False
    leaves = _leaves(m)
    layers = [s for s in leaves if isinstance(s, (nn.Linear, nn.Conv2d))]
    return all(isinstance(s, _CHANNEL_LEAVES) for s in leaves) and len(layers) == 2 \
        and all(isinstance(s, nn.Linear) or _conv1x1(s) for s in layers) and _only_layer_tensors(m, layers)


def _looks_spatial(m):
    """A module holding only a 2 -> 1 Conv2d and Sigmoid / Identity."""
    if not m._modules:
        return False
    leaves = _leaves(m)
    convs = [s for s in leaves if isinstance(s, nn.Conv2d)]
    return all(isinstance(s, _SPATIAL_LEAVES) for s in leaves) and len(convs) == 1 \
        and convs[0].in_channels == 2 and convs[0].out_channels == 1 and _only_layer_tensors(m, convs)


class _Unconfirmed(Exception):
    """torch.fx shows a forward other than the one assumed."""


def _trace(module, leaves=()):
    ids = {id(m) for m in leaves}

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return id(m) in ids or super().is_leaf_module(m, qualname)

    try:
        return _Tracer().trace(module)
    except Exception as e:  # noqa: BLE001 - any failure to trace means: cannot confirm
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _Unconfirmed(f"torch.fx cannot trace its forward ({type(e).__name__}: {first[:160]})") from None


_FUNCTIONS = {
    operator.mul: "mul", torch.mul: "mul", operator.add: "add", torch.add: "add",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.relu: "relu", F.relu: "relu",
    torch.mean: "mean", torch.max: "max", torch.amax: "amax",
    torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat",
    torch.flatten: "flatten", torch.reshape: "reshape", torch.squeeze: "squeeze", torch.unsqueeze: "unsqueeze",
    operator.getitem: "getitem", getattr: "getattr",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d", F.adaptive_max_pool2d: "adaptive_max_pool2d",
}
_SHAPE_OPS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous", "view_as", "expand_as"}


def _op_name(node):
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target, getattr(node.target, "__name__", str(node.target)))
    return node.op


def _arg(node, i, name, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _dims(dim):
    """A reduction's dims of a 4-D input as a set, or None."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        dim = (dim,)
    if not isinstance(dim, (tuple, list)) or not all(isinstance(d, int) for d in dim):
        return None
    return {d % 4 for d in dim}


def _is_one(size):
    return size == 1 or (isinstance(size, (tuple, list)) and len(size) == 2 and all(s == 1 for s in size))


def _read_half(module):
    """What an attention half's forward computes, read from its torch.fx graph.

    A channel half: ``x * sigmoid(sum over pools of fc2(relu(fc1(pool(x)))))`` (pools: avg, or avg
    and max with one shared MLP), or that gate alone; a spatial half: ``x * sigmoid(conv(cat[mean_c,
    max_c]))`` in either order, or that gate alone. Reshapes of the small values are allowed (the
    numerical probe checks them); any other operation is not. Raises :class:`_Unconfirmed`."""
    graph = _trace(module)
    mods = dict(module.named_modules())
    val = {}
    fc = {}  # "fc1" / "fc2" -> module name
    conv = []
    x = None

    def of(a):
        return val.get(a) if isinstance(a, fx.Node) else ("const", a)

    def no(node, why="not part of a CBAM half"):
        raise _Unconfirmed(f"its forward computes `{node.format_node()}`: {why}")

    def small(v):  # a pooled / gate value, not x itself
        return v is not None and v[0] not in ("x", "meta", "const", "indices")

    def gate_of(v):  # sigmoid of v
        return ("sgate",) if v[0] == "conv" else ("gate", {v[1]} if v[0] == "fc2" else {"avg", "max"})

    def consts_or_meta(args):
        for a in args:
            if isinstance(a, (tuple, list)):
                consts_or_meta(a)
            elif isinstance(a, fx.Node) and of(a)[0] not in ("meta", "x"):
                return False
        return True

    def layer(node, name, inp):
        slot = "fc1" if inp[0] == "pool" else "fc2"
        if fc.setdefault(slot, name) != name:
            no(node, f"a second {slot} layer (the MLP is not shared between the pools)")
        return (slot, inp[1])

    for node in graph.nodes:
        args = [of(a) for a in node.args]
        if node.op == "placeholder":
            if x is not None:
                no(node, "a second input")
            x = node
            val[node] = ("x",)
            continue
        if node.op == "output":
            out = args[0]
            if out[0] in ("cgated", "gate", "sgated", "sgate"):
                break
            no(node, "the output is not a gate or the input times a gate")
        if node.op == "call_module":
            mod = mods[node.target]
            inp = args[0] if len(args) == 1 and not node.kwargs else None
            if inp is None:
                no(node, "a module called with other than one input")
            if isinstance(mod, nn.AdaptiveAvgPool2d) and inp[0] == "x" and _is_one(mod.output_size):
                val[node] = ("pool", "avg")
            elif isinstance(mod, nn.AdaptiveMaxPool2d) and inp[0] == "x" and _is_one(mod.output_size) and not mod.return_indices:
                val[node] = ("pool", "max")
            elif isinstance(mod, (nn.Flatten, nn.Identity)) and small(inp):
                val[node] = inp
            elif (isinstance(mod, nn.Linear) or _conv1x1(mod)) and inp[0] in ("pool", "relu"):
                val[node] = layer(node, node.target, inp)
            elif isinstance(mod, nn.Conv2d) and inp[0] == "cat":
                conv.append(node.target)
                val[node] = ("conv",)
            elif isinstance(mod, nn.ReLU) and inp[0] == "fc1":
                val[node] = ("relu", inp[1])
            elif isinstance(mod, nn.Sigmoid) and inp[0] in ("fc2", "sum", "conv"):
                val[node] = gate_of(inp)
            else:
                no(node)
            continue
        if node.op not in ("call_function", "call_method"):
            no(node)
        op, first = _op_name(node), (args[0] if args else None)
        if op in ("size", "dim") and first == ("x",):
            val[node] = ("meta",)
        elif op == "getattr" and first == ("x",) and node.args[1] == "shape":
            val[node] = ("meta",)
        elif op == "getattr" and first == ("cmaxpair",) and node.args[1] == "values":
            val[node] = ("cmax",)
        elif op == "getitem" and first == ("meta",):
            val[node] = ("meta",)
        elif op == "getitem" and first == ("cmaxpair",) and node.args[1] in (0, 1):
            val[node] = ("cmax",) if node.args[1] == 0 else ("indices",)  # `mx, _ = torch.max(...)`
        elif op == "getitem" and small(first) and all(i is None or i is Ellipsis or i == slice(None) for i in (
                node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],))):
            val[node] = first
        elif op in _SHAPE_OPS and small(first) and consts_or_meta(node.args[1:]) and consts_or_meta(node.kwargs.values()):
            val[node] = first
        elif op in ("mean", "amax") and first == ("x",) and set(node.kwargs) <= {"dim", "keepdim"}:
            dims = _dims(_arg(node, 1, "dim"))
            if dims == {1}:
                val[node] = ("cmean",) if op == "mean" else ("cmax",)
            elif dims == {2, 3}:
                val[node] = ("pool", "avg" if op == "mean" else "max")
            else:
                no(node, "a reduction over other dims than the channels or H, W")
        elif op == "max" and first == ("x",) and set(node.kwargs) <= {"dim", "keepdim"} and _dims(_arg(node, 1, "dim")) == {1}:
            val[node] = ("cmaxpair",)
        elif op in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and first == ("x",) and _is_one(_arg(node, 1, "output_size")) \
                and not _arg(node, 2, "return_indices", False):
            val[node] = ("pool", "avg" if op == "adaptive_avg_pool2d" else "max")
        elif op == "cat":
            parts = node.args[0]
            kinds = [of(p)[0] for p in parts] if isinstance(parts, (tuple, list)) else []
            if _arg(node, 1, "dim", 0) not in (1, -3) or sorted(kinds) != ["cmax", "cmean"]:
                no(node, "a concatenation other than [mean over C, max over C] along the channels")
            val[node] = ("cat", "mean_max" if kinds[0] == "cmean" else "max_mean")
        elif op == "add" and len(args) == 2 and not node.kwargs and sorted(map(tuple, args)) == [("fc2", "avg"), ("fc2", "max")]:
            val[node] = ("sum",)
        elif op == "relu" and first is not None and first[0] == "fc1":
            val[node] = ("relu", first[1])
        elif op == "sigmoid" and first is not None and first[0] in ("fc2", "sum", "conv") and len(args) == 1:
            val[node] = gate_of(first)
        elif op == "mul" and len(args) == 2 and not node.kwargs and ("x",) in args:
            other = args[1] if args[0] == ("x",) else args[0]
            if other[0] == "gate":
                val[node] = ("cgated", other[1])
            elif other[0] == "sgate":
                val[node] = ("sgated",)
            else:
                no(node, "x multiplied by something other than its gate")
        else:
            no(node)
    else:
        raise _Unconfirmed("its forward has no output")
    if out[0] in ("cgated", "gate"):
        pools = out[1]
        if pools != {"avg"} and pools != {"avg", "max"}:
            raise _Unconfirmed(f"its channel gate pools {sorted(pools)} (cbam_fast serves avg, or avg and max)")
        if "fc1" not in fc or "fc2" not in fc:
            raise _Unconfirmed("its channel gate has no two-layer MLP")
        return {"half": "channel", "gated": out[0] == "cgated", "pools": pools, "fc1": fc["fc1"], "fc2": fc["fc2"]}
    if len(set(conv)) != 1:
        raise _Unconfirmed("its spatial gate does not use one conv")
    order = next(v[1] for v in val.values() if v[0] == "cat")
    return {"half": "spatial", "gated": out[0] == "sgated", "order": order, "conv": conv[0]}


_FORMS = {"sequential": "{sa}({ca}(x))", "gates": "x = {ca}(x) * x; {sa}(x) * x"}


def _confirm_order(holder, halves, form):
    """The holder's forward, traced with the two halves as leaves, is exactly the composition
    ``form`` of the channel half then the spatial half: nothing else, nothing in between."""
    ca, sa = halves
    names = {id(m): n for n, m in holder.named_children()}
    expected = _FORMS[form].format(ca=names.get(id(ca), "?"), sa=names.get(id(sa), "?"))
    try:
        graph = _trace(holder, leaves=halves)
    except _Unconfirmed as e:
        _leave(holder, f"cannot confirm that its forward is {expected}: {e}")
    nodes = list(graph.nodes)

    def module(n, m, arg):
        return n.op == "call_module" and holder.get_submodule(n.target) is m and n.args == (arg,) and not n.kwargs

    def mul(n, a, b):
        return _op_name(n) == "mul" and not n.kwargs and n.args in ((a, b), (b, a))

    ok = False
    if form == "sequential" and len(nodes) == 4:
        ph, c, s, out = nodes
        ok = ph.op == "placeholder" and module(c, ca, ph) and module(s, sa, c) and out.args == (s,)
    elif form == "gates" and len(nodes) == 6:
        ph, c, m1, s, m2, out = nodes
        ok = ph.op == "placeholder" and module(c, ca, ph) and mul(m1, c, ph) and module(s, sa, m1) and mul(m2, s, m1) \
            and out.args == (m2,)
    if not ok:
        got = ", ".join(n.target if n.op == "call_module" else str(_op_name(n)) for n in nodes if n.op not in ("placeholder", "output"))
        _leave(holder, f"its forward is not {expected} (the channel half, then the spatial half, nothing else): "
                       f"it computes {got}")


def _halves(holder, ca_item, sa_item, order_confirmed=False):
    """The _Found of a holder of a channel half and a spatial half (document 000's form, or luuuyi's)."""
    (na, ca), (nb, sa) = ca_item, sa_item
    reads = []
    for name, half in ((na, ca), (nb, sa)):
        try:
            reads.append(_read_half(half))
        except _Unconfirmed as e:
            _leave(holder, f"cannot confirm what its half {name} computes: {e}")
    rc, rs = reads
    if rc["half"] != "channel" or rs["half"] != "spatial" or rc["gated"] != rs["gated"]:
        _leave(holder, f"{na} and {nb} are not a channel and a spatial attention of one form")
    form = "sequential" if rc["gated"] else "gates"
    if not order_confirmed:
        _confirm_order(holder, (ca, sa), form)
    fc1, fc2, conv = ca.get_submodule(rc["fc1"]), ca.get_submodule(rc["fc2"]), sa.get_submodule(rs["conv"])
    linear = isinstance(fc1, nn.Linear)
    c_in, hidden = (fc1.in_features, fc1.out_features) if linear else (fc1.in_channels, fc1.out_channels)
    fc2_shape = (fc2.in_features, fc2.out_features) if linear else (fc2.in_channels, fc2.out_channels)
    if type(fc1) is not type(fc2) or fc2_shape != (hidden, c_in):
        _refuse(holder, "an MLP whose layers are not C -> hidden -> C of one kind")
    if (fc1.bias is None) != (fc2.bias is None):
        _refuse(holder, "an MLP with a bias on one layer only")
    _hidden(holder, hidden, f" (channels {c_in} < reduction ratio)")
    k = _spatial_conv(conv, holder, 2)
    keys = {}
    for path, target in ((f"{na}.{rc['fc1']}", "fc1"), (f"{na}.{rc['fc2']}", "fc2"), (f"{nb}.{rs['conv']}", "conv")):
        keys.update({f"{path}.weight": f"{target}.weight", f"{path}.bias": f"{target}.bias"})
    kwargs = dict(channels=c_in, kernel_size=k, hidden_channels=hidden, mlp_bias=fc1.bias is not None,
                  channel_pool="avg" if rc["pools"] == {"avg"} else "avg_max", spatial_pool=rs["order"],
                  conv_bias=conv.bias is not None)
    return _Found("tutorial" if form == "sequential" else "luuuyi", kwargs, keys, probe=True)


def _composed(m):
    """A module whose only children are a channel-attention half and a spatial-attention half."""
    children = [(n, c) for n, c in m._modules.items() if c is not None]
    if type(m).forward is nn.Module.forward or len(children) != 2 or any(t is not None for t in chain(m._parameters.values(), m._buffers.values())):
        return None
    a, b = children
    if _looks_spatial(a[1]) and _looks_channel(b[1]):
        a, b = b, a
    if not (_looks_channel(a[1]) and _looks_spatial(b[1])):
        return None
    return _halves(m, a, b)


RECOGNISERS = (_official, _timm, _mmyolo, _ultralytics, _composed)


def _cbam():
    from .module import CBAM

    return CBAM


def _served():
    """cbam_fast's own modules: never converted again."""
    from .gate_modules import ChannelAttention, SpatialAttention
    from .module import CBAM

    return CBAM, ChannelAttention, SpatialAttention


def _bn_args(bn):
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return {}
    if bn.num_features != 1 or not bn.affine:
        raise UnsupportedModule(f"{type(bn).__name__}: a spatial BatchNorm other than BatchNorm2d(1, affine=True)")
    if not bn.track_running_stats:
        raise UnsupportedModule(f"{type(bn).__name__}: a spatial BatchNorm without running statistics")
    return {"bn_eps": bn.eps, "bn_momentum": bn.momentum}


def _recognise(module):
    for recognise in RECOGNISERS:
        found = recognise(module)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------- building

_HOOKS = {  # nn.Module attribute -> what it holds
    "_forward_pre_hooks": "forward pre-hook", "_forward_hooks": "forward hook",
    "_backward_pre_hooks": "backward pre-hook", "_backward_hooks": "backward hook",
    "_state_dict_pre_hooks": "state_dict pre-hook", "_state_dict_hooks": "state_dict hook",
    "_load_state_dict_pre_hooks": "load_state_dict pre-hook", "_load_state_dict_post_hooks": "load_state_dict post-hook",
}
# carried over from a replaced module to its cbam_fast.CBAM (the same dicts: handles stay valid)
_CARRIED = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook")


def _build(source, found):
    """A cbam_fast.CBAM holding copies of ``source``'s tensors (each keeping its dtype, device and
    requires_grad) in ``source``'s train/eval mode, and the key group to save them under."""
    CBAM = _cbam()
    with torch.random.fork_rng(devices=[]):  # the init's draws leave the global RNG as it was
        new = CBAM(**found.kwargs)
    ours = new.state_dict(keep_vars=True)
    theirs = source.state_dict(keep_vars=True)
    keys = {f: o for f, o in found.keys.items() if o in ours}
    name = type(source).__name__
    extra, missing = sorted(set(theirs) - set(keys)), sorted(set(keys) - set(theirs))
    if extra or missing:
        raise UnsupportedModule(f"{name}: a state-dict layout other than {found.kind}'s "
                                f"(unexpected keys {extra}, missing keys {missing})")
    if set(keys.values()) != set(ours):
        raise UnsupportedModule(f"{name}: no source for {sorted(set(ours) - set(keys.values()))}")
    if len({id(t) for t in theirs.values()}) != len(theirs):
        raise UnsupportedModule(f"{name}: tied tensors inside it (one tensor under two names)")
    group = []
    for f, src in theirs.items():
        o = keys[f]
        if src.numel() != ours[o].numel():
            raise UnsupportedModule(f"{name}: {f} has shape {tuple(src.shape)}, cbam_fast.CBAM needs {tuple(ours[o].shape)}")
        owner_path, _, leaf = o.rpartition(".")
        owner = new.get_submodule(owner_path)
        value = src.detach().clone().reshape(ours[o].shape)
        if leaf in owner._parameters:
            setattr(owner, leaf, nn.Parameter(value, requires_grad=src.requires_grad))
        else:
            setattr(owner, leaf, value)
        group.append((f, o, tuple(src.shape), tuple(ours[o].shape)))
    new.train(source.training)
    if new.bn is not None:  # the BatchNorm keeps its own mode (e.g. frozen statistics in a training model)
        new.bn.train(found.bn.training)
    if found.probe:
        _confirm_numerically(source, new)
    new.converted_from = found.kind
    return new, tuple(group)


@contextlib.contextmanager
def _hooks_off(modules):
    saved = []
    for m in modules:
        for attr in _HOOKS:
            if getattr(m, attr, None):
                saved.append((m, attr, m.__dict__[attr]))
                m.__dict__[attr] = OrderedDict()
    try:
        yield
    finally:
        for m, attr, hooks in saved:
            m.__dict__[attr] = hooks


def _confirm_numerically(source, new):
    """source(x) == cbam_fast's reference of ``new`` on a small fp64 probe (on CPU, no hooks run,
    the global RNG untouched), else :class:`UnsupportedModule`."""
    from . import reference

    x = torch.randn(2, new.channels, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def cpu64(t):
        return None if t is None else t.detach().to("cpu", torch.float64)

    try:
        tensors = {n: cpu64(t) for n, t in chain(source.named_parameters(), source.named_buffers())}
        with torch.no_grad(), _hooks_off(list(source.modules())):
            want = torch.func.functional_call(source, tensors, (x,))
            fc2 = new.fc2
            got = reference.cbam(x, cpu64(new.fc1.weight), cpu64(new.fc1.bias), cpu64(None if fc2 is None else fc2.weight),
                                 cpu64(None if fc2 is None else fc2.bias), cpu64(new.conv.weight), cpu64(new.conv.bias),
                                 channel_pool=new.channel_pool, spatial_pool=new.spatial_pool)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModule(f"{type(source).__name__}: its output could not be checked on a probe input "
                                f"({type(e).__name__}: {e})") from None
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or not torch.allclose(want, got, rtol=1e-9, atol=1e-9):
        err = (want - got).abs().max().item() if isinstance(want, torch.Tensor) and want.shape == got.shape else "shape"
        raise UnsupportedModule(f"{type(source).__name__}: its output differs from the CBAM its structure describes "
                                f"(fp64 probe, max error {err})")


def from_module(module: nn.Module):
    """An equivalent :class:`cbam_fast.CBAM` (or, for a gate module such as timm's ``SEModule`` or a
    CBAM half used alone, :class:`cbam_fast.ChannelAttention` / :class:`cbam_fast.SpatialAttention`:
    cbam_fast/gate_convert.py, keys kept as they are) holding copies of ``module``'s weights and buffers
    (each with its dtype, device and ``requires_grad``), in its train/eval mode (the spatial
    BatchNorm in its own). It saves its state dict under ``module``'s key names and shapes, and
    loads those (and its own). ``converted_from`` names the implementation. Raises
    :class:`UnsupportedModule` for a CBAM-like module with an option cbam_fast does not serve, and
    ``TypeError`` for a module it does not recognise. Hooks stay on ``module`` (:func:`convert`
    carries them over)."""
    found = _recognise(module)
    if found is None:
        from .gate_convert import recognise_gate

        gate = recognise_gate(module)
        if gate is not None:
            return gate
        raise TypeError(f"{type(module).__name__} is not a CBAM module cbam_fast recognises")
    new, group = _build(module, found)
    _record_keys(new, group, load_hook=False)  # loading: CBAM._load_from_state_dict translates
    return new


# ----------------------------------------------------------------------------- convert


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _plain_sequential(m):
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


class _Walk:
    """One pass over a model: every module object visited once (memo by id), so a module reached
    from several places becomes one cbam_fast.CBAM at every place."""

    def __init__(self, model):
        self.slots, self.tensors = Counter(), Counter()  # id -> references in the whole model
        seen, stack = set(), [model]
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            for c in m._modules.values():
                if c is not None:
                    self.slots[id(c)] += 1
                    stack.append(c)
            for t in chain(m._parameters.values(), m._buffers.values()):
                if t is not None:
                    self.tensors[id(t)] += 1
        self.memo, self.names, self.keep = {}, {}, []
        self.replaced, self.warnings = [], []

    def visit(self, m, qual):
        if id(m) in self.memo:
            new = self.memo[id(m)]
            if new is not m:
                log.info("cbam_fast.convert: %s is %s again: the same cbam_fast.CBAM", qual, self.names[id(m)])
            return new
        self.memo[id(m)], self.names[id(m)] = m, qual or "<model>"
        self.keep.append(m)  # ids stay unique while the walk runs
        if isinstance(m, _served()):
            return m
        new = self.replace(m, qual)
        if new is not None:
            self.memo[id(m)] = new
            return new
        if _plain_sequential(m) and len(m) > 2:
            self.fuse_pairs(m, qual)
        for name, child in list(m._modules.items()):
            if child is not None:
                new_child = self.visit(child, _join(qual, name))
                if new_child is not child:
                    setattr(m, name, new_child)
        return m

    def replace(self, m, qual):
        try:
            found = _recognise(m)
            if found is None:
                from .gate_convert import recognise_gate

                gate = recognise_gate(m)
                if gate is None:
                    return None
                self.check_replaceable(m, [("", m)], carried=m)
                new, kind, what = gate, gate.converted_from, f"gate) with cbam_fast.{type(gate).__name__}"
            else:
                self.check_replaceable(m, [("", m)], carried=m)
                new, group = _build(m, found)
                _record_keys(new, group, load_hook=False)
                kind, what = found.kind, "CBAM) with cbam_fast.CBAM"
            for attr in _CARRIED:
                if attr in m.__dict__:
                    new.__dict__[attr] = m.__dict__[attr]
        except Exception as e:  # noqa: BLE001 - one module never aborts convert: it stays, with the reason
            self.warn(qual, m, e)
            return None
        self.replaced.append((qual or "<model>", kind))
        log.info("cbam_fast.convert: replaced %s (%s %s", qual or "<model>", kind, what)
        return new

    def fuse_pairs(self, seq, qual):
        """Consecutive channel and spatial halves of document 000 in an nn.Sequential: one
        cbam_fast.CBAM in the first slot, nn.Identity in the second (indices stay)."""
        names = list(seq._modules)
        i = 0
        while i + 1 < len(names):
            (na, a), (nb, b) = (names[i], seq._modules[names[i]]), (names[i + 1], seq._modules[names[i + 1]])
            if a is None or b is None or not (_looks_channel(a) and _looks_spatial(b)):
                i += 1
                continue
            where = f"{_join(qual, na)} and {_join(qual, nb)}"
            try:
                pair = nn.Sequential(OrderedDict([(na, a), (nb, b)]))  # the two slots, keys as in seq
                pair.training = a.training  # the fused module's mode (not .train(): a and b stay as they are)
                found = _halves(pair, (na, a), (nb, b), order_confirmed=True)  # nn.Sequential's forward
                if found.kind != "tutorial":
                    _leave(pair, "halves that return their gate (not x times it) cannot be applied by nn.Sequential")
                self.check_replaceable(pair, [(na, a), (nb, b)], carried=None)
                new, group = _build(pair, found)
            except Exception as e:  # noqa: BLE001
                self.warn(where, a, e)
                i += 1
                continue
            setattr(seq, na, new)
            setattr(seq, nb, nn.Identity().train(b.training))
            _record_keys(seq, tuple((f, f"{na}.{o}", fs, os) for f, o, fs, os in group), load_hook=True)
            self.replaced.append((_join(qual, na), found.kind))
            log.info("cbam_fast.convert: replaced %s (a tutorial CBAM pair) with one cbam_fast.CBAM at %s; "
                     "%s is now nn.Identity", where, _join(qual, na), _join(qual, nb))
            i += 2

    def check_replaceable(self, owner, roots, carried):
        """Replacing ``roots`` by one new module changes nothing else: no submodule or tensor of
        theirs is used elsewhere in the model, and no hook is lost (``carried``'s forward and full
        backward hooks move to the new module)."""
        subtree = {}
        for prefix, r in roots:
            for n, s in r.named_modules(prefix=prefix):
                subtree.setdefault(id(s), (n, s))
        inner_slots, inner_tensors, tensor_names = Counter(), Counter(), {}
        for n, s in subtree.values():
            for c in s._modules.values():
                if c is not None:
                    inner_slots[id(c)] += 1
            for tn, t in chain(s._parameters.items(), s._buffers.items()):
                if t is not None:
                    inner_tensors[id(t)] += 1
                    tensor_names.setdefault(id(t), _join(n, tn))
        root_ids = {id(r) for _, r in roots}
        for n, s in subtree.values():
            if id(s) in root_ids:
                if carried is None and self.slots[id(s)] != 1:
                    _leave(owner, f"{n} is also used elsewhere in the model (fusing it would untie them)")
                continue
            if inner_slots[id(s)] < self.slots[id(s)]:
                _leave(owner, f"its submodule {n} is also used elsewhere in the model (replacing the module would untie them)")
        for t, count in inner_tensors.items():
            if count < self.tensors[t]:
                _leave(owner, f"its tensor {tensor_names[t]} is shared with a module outside it "
                              "(tied weights: replacing the module would untie them)")
        for n, s in subtree.values():
            movable = s is carried
            for attr, what in _HOOKS.items():
                if getattr(s, attr, None) and not (movable and attr in _CARRIED):
                    _leave(owner, f"a {what} on {('its submodule ' + n) if not movable else 'it'} would not run on "
                                  "cbam_fast.CBAM")
            if movable and s._backward_hooks and not getattr(s, "_is_full_backward_hook", True):
                _leave(owner, "a register_backward_hook (non-full) hook on it sees the original's last op, "
                              "which cbam_fast.CBAM does not have")
            if torch.nn.utils.parametrize.is_parametrized(s):
                _leave(owner, f"a parametrization (torch.nn.utils.parametrize) on {n or 'it'}")

    def warn(self, where, m, e):
        why = str(e) if isinstance(e, UnsupportedModule) else f"{type(m).__name__}: {type(e).__name__} while converting it: {e}"
        self.warnings.append(f"cbam_fast.convert: left {where or '<model>'} untouched: {why}")


def convert(model: nn.Module, *, return_replaced: bool = False):
    """Replace every recognised CBAM module inside ``model`` (the model itself included) with an
    equivalent :class:`cbam_fast.CBAM`; ``model = cbam_fast.convert(model)``.

    Returns the model: the same object, converted in place, unless ``model`` itself is a
    recognised CBAM (then its replacement), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does.
    With ``return_replaced=True``: ``(model, replaced)``, ``replaced`` a list of
    ``(qualified name, implementation)``, one per replaced module (a module reached from several
    places is listed under its first name and becomes one cbam_fast.CBAM at every place). Each
    replacement is also logged (INFO) on the ``cbam_fast`` logger.

    Nothing about training changes: each tensor keeps its values, dtype, device and
    ``requires_grad``, each module its train/eval mode; forward hooks, forward pre-hooks and full
    backward hooks on a replaced module move to its replacement. Create optimizers after
    converting (the parameters are new tensors). A recognised module that cannot be served
    exactly, or whose replacement would change anything else (a submodule or tensor shared with
    the rest of the model, a hook on a submodule), is left untouched with a warning that says
    why; convert never raises because of one module.
    """
    walk = _Walk(model)
    out = walk.visit(model, "")
    for message in walk.warnings:
        warnings.warn(message, UserWarning, stacklevel=2)
    return (out, walk.replaced) if return_replaced else out
