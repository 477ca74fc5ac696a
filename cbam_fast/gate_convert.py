"""Recognise the pooled-gate modules a model already has (squeeze-and-excitation and its
relatives, CBAM's halves used alone) and build their :class:`cbam_fast.ChannelAttention` /
:class:`cbam_fast.SpatialAttention` replacements (:func:`cbam_fast.convert` calls
:func:`recognise_gate` for every module no CBAM recogniser claims).

| module | recognised by | served as |
|---|---|---|
| timm ``SEModule`` | class name; ``fc1`` / ``bn`` / ``act`` / ``fc2`` / ``gate``, ``add_maxpool`` | MLP (1x1 convs), a BatchNorm ``bn`` as PyTorch ops |
| timm ``EffectiveSEModule`` | class name; ``fc`` / ``gate`` | one C -> C layer, hard_sigmoid |
| timm ``SqueezeExcite`` (EfficientNet, MobileNetV3) | class name; ``conv_reduce`` / ``act1`` / ``conv_expand`` / ``gate`` | MLP, ReLU or SiLU, sigmoid or hard_sigmoid |
| timm ``EcaModule`` | class name; ``conv`` (Conv1d 1 -> 1), no ``conv2`` | the module's own Conv1d as the excitation |
| authors' ``CBAM(no_spatial=True)`` | ``ChannelGate`` and ``no_spatial`` | the authors' MLP, avg (+ max) pools |
| Ultralytics ``ChannelAttention`` / ``SpatialAttention`` | class name; ``fc`` / ``cv1``; confirmed on a probe | C -> C layer / [mean, max] conv |
| seed document 000's ``ChannelAttention`` / ``SpatialAttention`` used alone (any names) | structure, its forward read with torch.fx, confirmed on a probe | the MLP / the conv |

The replacement holds deep copies of the original's children under their names, so its state
dict has exactly the original's keys and shapes (checked). Anything else about such a module
that cbam_fast cannot serve exactly (another activation or gate, a norm other than BatchNorm,
ECA's MLP variant, a non-"same" conv, ...) raises :class:`UnsupportedModule` naming it;
:func:`cbam_fast.convert` then leaves the module as it is and warns.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .convert import UnsupportedModule, _conv1x1, _is, _looks_channel, _looks_spatial, _read_half, _refuse
from .convert import _spatial_conv, _Unconfirmed

def _act(owner, m):
    """A module's activation layer as ``"relu"`` / ``"silu"``; UnsupportedModule for another."""
    from .gate_modules import act_name

    try:
        return act_name(type(owner).__name__, m)
    except ValueError as e:
        raise UnsupportedModule(str(e)) from None


def _gate(owner, m):
    """A module's gate layer as ``"sigmoid"`` / ``"hard_sigmoid"``; UnsupportedModule for another."""
    from .gate_modules import gate_name

    try:
        return gate_name(type(owner).__name__, m)
    except ValueError as e:
        raise UnsupportedModule(str(e)) from None


def _channel_cls():
    from .gate_modules import ChannelAttention

    return ChannelAttention


def _spatial_cls():
    from .gate_modules import SpatialAttention

    return SpatialAttention


def _mlp_shapes(owner, fc1, fc2):
    """(C, hidden) of a 1x1-conv MLP C -> hidden -> C (fc2 None: one layer C -> C)."""
    if not _conv1x1(fc1) or (fc2 is not None and not _conv1x1(fc2)):
        _refuse(owner, "an excitation other than 1x1 convs (stride 1, no padding, groups 1)")
    C, hidden = fc1.in_channels, fc1.out_channels
    if fc2 is None:
        if hidden != C:
            _refuse(owner, f"a single layer {C} -> {hidden} (a gate needs C -> C)")
    elif (fc2.in_channels, fc2.out_channels) != (hidden, C):
        _refuse(owner, "an MLP whose layers are not C -> hidden -> C")
    if hidden < 1:
        _refuse(owner, "a hidden width of 0")
    return C, hidden


def _timm_se(m):
    if not _is(m, "SEModule") or not all(hasattr(m, a) for a in ("fc1", "fc2", "act", "gate")):
        return None
    C, hidden = _mlp_shapes(m, m.fc1, m.fc2)
    bn = getattr(m, "bn", None)
    norm = None
    if bn is not None and not isinstance(bn, nn.Identity):
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.num_features != hidden:
            _refuse(m, f"norm_layer={type(bn).__name__} (cbam_fast serves a BatchNorm over the hidden channels)")
        norm = "bn"
    spec = dict(pool="light" if getattr(m, "add_maxpool", False) else "avg", act=_act(m, m.act), gate=_gate(m, m.gate),
                fc1="fc1", fc2="fc2", norm=norm)
    return _channel_cls()._copy_of(m, **_spec(C, **spec)), "timm_se", False


def _timm_effective_se(m):
    if not _is(m, "EffectiveSEModule") or not hasattr(m, "fc") or not hasattr(m, "gate"):
        return None
    C, _ = _mlp_shapes(m, m.fc, None)
    spec = dict(pool="light" if getattr(m, "add_maxpool", False) else "avg", act="relu", gate=_gate(m, m.gate),
                fc1="fc")
    return _channel_cls()._copy_of(m, **_spec(C, **spec)), "timm_effective_se", False


def _timm_squeeze_excite(m):
    if not _is(m, "SqueezeExcite") or not all(hasattr(m, a) for a in ("conv_reduce", "act1", "conv_expand", "gate")):
        return None
    C, _ = _mlp_shapes(m, m.conv_reduce, m.conv_expand)
    spec = dict(pool="avg", act=_act(m, m.act1), gate=_gate(m, m.gate), fc1="conv_reduce", fc2="conv_expand")
    return _channel_cls()._copy_of(m, **_spec(C, **spec)), "timm_squeeze_excite", False


def _timm_eca(m):
    if not _is(m, "EcaModule") or not hasattr(m, "conv") or not hasattr(m, "gate"):
        return None
    if getattr(m, "conv2", None) is not None:
        _refuse(m, "use_mlp=True (ECA with an MLP)")
    conv = m.conv
    if not isinstance(conv, nn.Conv1d) or conv.in_channels != 1 or conv.out_channels != 1 or conv.groups != 1 \
            or conv.stride != (1,) or conv.dilation != (1,) or conv.padding_mode != "zeros" \
            or conv.padding != ((conv.kernel_size[0] - 1) // 2,) or conv.kernel_size[0] % 2 == 0:
        _refuse(m, f"a channel conv {conv} (ECA's is Conv1d(1, 1, k odd, padding (k - 1) // 2))")
    return _channel_cls()._copy_of(m, **_spec(None, pool="avg", act="relu", gate=_gate(m, m.gate), eca="conv")), \
        "timm_eca", False


def _official_no_spatial(m):
    gate = getattr(m, "ChannelGate", None)
    if not _is(m, "CBAM") or gate is None or not _is(gate, "ChannelGate") or not getattr(m, "no_spatial", False):
        return None
    from .convert import _official_gate

    pools, fc1, fc2 = _official_gate(m, gate)
    spec = dict(pool="avg_max" if len(pools) == 2 else "avg", act="relu", gate="sigmoid", fc1="ChannelGate.mlp.1",
                fc2="ChannelGate.mlp.3")
    return _channel_cls()._copy_of(m, **_spec(fc1.in_features, **spec)), "official_no_spatial", False


def _ultralytics_channel(m):
    if not _is(m, "ChannelAttention") or not _conv1x1(getattr(m, "fc", None)):
        return None
    if not isinstance(getattr(m, "pool", None), nn.AdaptiveAvgPool2d):
        _refuse(m, f"channel pool {type(getattr(m, 'pool', None)).__name__}")
    C, _ = _mlp_shapes(m, m.fc, None)
    spec = dict(pool="avg", act="relu", gate=_gate(m, getattr(m, "act", None)), fc1="fc")
    return _channel_cls()._copy_of(m, **_spec(C, **spec)), "ultralytics", True


def _ultralytics_spatial(m):
    if not _is(m, "SpatialAttention") or not isinstance(getattr(m, "cv1", None), nn.Conv2d):
        return None
    k = _spatial_conv(m.cv1, m, 2)
    new = _spatial_cls()._copy_of(m, kernel_size=k, pooling="mean_max", gating=_gate(m, getattr(m, "act", None)),
                                  _paths={"conv": "cv1"})
    return new, "ultralytics", True


def _standalone_half(m):
    """A channel or spatial attention half (seed document 000's form, any attribute names) used
    on its own: read from its torch.fx graph; only the form that returns ``x * gate``. Recognised by
    structure alone, so a module whose forward does not read as such a gate (an MLP in an
    nn.Sequential, a half of another form) is simply not one: None, no warning."""
    if type(m).forward is nn.Module.forward or isinstance(m, nn.Sequential) \
            or not (_looks_channel(m) or _looks_spatial(m)):
        return None
    try:
        read = _read_half(m)
    except _Unconfirmed:
        return None
    if not read["gated"]:
        return None  # it returns the gate, not x times it: a part of a composition, not a gate module
    if read["half"] == "channel":
        fc1 = m.get_submodule(read["fc1"])
        C, hidden = (fc1.in_features, fc1.out_features) if isinstance(fc1, nn.Linear) else (fc1.in_channels,
                                                                                            fc1.out_channels)
        if hidden < 1:
            _refuse(m, f"a hidden width of 0 (channels {C} < reduction ratio)")
        spec = dict(pool="avg" if read["pools"] == {"avg"} else "avg_max", act="relu", gate="sigmoid",
                    fc1=read["fc1"], fc2=read["fc2"])
        return _channel_cls()._copy_of(m, **_spec(C, **spec)), "tutorial", True
    conv = m.get_submodule(read["conv"])
    k = _spatial_conv(conv, m, 2)
    return _spatial_cls()._copy_of(m, kernel_size=k, pooling=read["order"], gating="sigmoid",
                                   _paths={"conv": read["conv"]}), "tutorial", True


def _spec(channels, pool, act, gate, fc1=None, fc2=None, norm=None, eca=None):
    from .gate_modules import _spec as spec

    return spec(channels, pool, act, gate, fc1=fc1, fc2=fc2, norm=norm, eca=eca)


RECOGNISERS = (_timm_se, _timm_effective_se, _timm_squeeze_excite, _timm_eca, _official_no_spatial,
               _ultralytics_channel, _ultralytics_spatial, _standalone_half)


def _probe(source, new):
    """source(x) == new's reference math on a small fp64 probe (CPU copies, eval mode, no hooks),
    else UnsupportedModule."""
    from . import gates

    C = new.channels if getattr(new, "channels", None) else 8
    x = torch.randn(2, C, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    try:
        a, b = copy.deepcopy(source), copy.deepcopy(new)
        for mod in (a, b):
            for s in mod.modules():
                for attr in ("_forward_hooks", "_forward_pre_hooks"):
                    getattr(s, attr).clear()
            mod.to("cpu", torch.float64).eval()
        with torch.no_grad(), gates.reference_math():
            want, got = a(x), b(x)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModule(f"{type(source).__name__}: its output could not be checked on a probe input "
                                f"({type(e).__name__}: {e})") from None
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or not torch.allclose(want, got, rtol=1e-9, atol=1e-9):
        err = (want - got).abs().max().item() if isinstance(want, torch.Tensor) and want.shape == got.shape else "shape"
        raise UnsupportedModule(f"{type(source).__name__}: its output differs from the gate its structure describes "
                                f"(fp64 probe, max error {err})")


def recognise_gate(m):
    """The ChannelAttention / SpatialAttention replacing ``m`` (``converted_from`` names the
    implementation), None when ``m`` is not a gate module cbam_fast recognises;
    UnsupportedModule for a recognised one with an option it does not serve."""
    for recognise in RECOGNISERS:
        found = recognise(m)
        if found is None:
            continue
        new, kind, probe = found
        if any(t is not None for t in list(m._parameters.values()) + list(m._buffers.values())):
            raise UnsupportedModule(f"{type(m).__name__}: tensors held by the module itself, outside its layers")
        theirs, ours = list(m.state_dict(keep_vars=True)), list(new.state_dict(keep_vars=True))
        if theirs != ours:  # by construction the same; a guard, never a silent change of layout
            raise UnsupportedModule(f"{type(m).__name__}: a state-dict layout cbam_fast cannot keep ({theirs} vs {ours})")
        if probe:
            _probe(m, new)
        new.converted_from = kind
        return new
    return None
