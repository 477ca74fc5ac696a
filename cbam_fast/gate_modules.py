"""``cbam_fast.ChannelAttention`` and ``cbam_fast.SpatialAttention``: CBAM's two halves alone, as
drop-in modules (squeeze-and-excitation and its relatives; the spatial gate), fused.

Each module holds its parameters in the layout of the implementation it stands for, under that
implementation's names (``fc.0`` / ``fc.2`` for the seed documents' ``ChannelAttention``,
``fc1`` / ``bn`` / ``fc2`` for timm's ``SEModule``, ``conv_reduce`` / ``conv_expand`` for
EfficientNet's ``SqueezeExcite``, ...), so state dicts are interchangeable as they are: nothing
is renamed. The forward reads the weights by path (``Linear`` weights as they are, 1x1 conv
weights as ``[out, in]`` views) and calls :func:`cbam_fast.gates.channel_attention` /
:func:`cbam_fast.gates.spatial_attention`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import gates, reference
from .functional import check_kernel_size
from .gates import _choice
from .module import _check_int, timm_hidden_width

_ACT_NAMES = {"relu": "relu", "silu": "silu", "swish": "silu"}
_GATE_NAMES = {"sigmoid": "sigmoid", "hardsigmoid": "hard_sigmoid"}  # by name, lower case, without "_"


def act_name(who, layer) -> str:
    """timm's ``act_layer`` (a name, a class or an instance) as ``"relu"`` / ``"silu"``; others refused."""
    name = layer if isinstance(layer, str) else getattr(layer, "__name__", type(layer).__name__)
    key = name.lower() if isinstance(name, str) else ""
    if key in _ACT_NAMES:
        return _ACT_NAMES[key]
    raise ValueError(f"{who}: act_layer={name} is not served: cbam_fast's excitation uses ReLU or SiLU")


def gate_name(who, layer) -> str:
    """A ``gate_layer`` (name, class or instance) as ``"sigmoid"`` / ``"hard_sigmoid"``; others refused."""
    name = layer if isinstance(layer, str) else getattr(layer, "__name__", type(layer).__name__)
    key = name.lower().replace("_", "") if isinstance(name, str) else ""
    if key in _GATE_NAMES:
        return _GATE_NAMES[key]
    raise ValueError(f"{who}: gate_layer={name} is not served: cbam_fast's gates are sigmoid and hard_sigmoid")


def _weight2d(layer: nn.Module) -> torch.Tensor:
    """A Linear's weight, or a 1x1 Conv2d's as an ``[out, in]`` view (no copy)."""
    w = layer.weight
    return w if w.dim() == 2 else w.flatten(1)


class _Gate(nn.Module):
    """What the two modules share: construction from the parts of an existing module, the
    TorchScript refusal, and where the parameters are (``self._paths``)."""

    _paths: dict

    @classmethod
    def _from_parts(cls, children: dict, *, training: bool = True, **spec):
        """A module holding ``children`` under their names (so its state dict has exactly their
        keys), configured by ``spec`` (the attributes its forward reads)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, child in children.items():
            new.add_module(name, child)
        for k, v in spec.items():
            setattr(new, k, v)
        new.training = training  # the children keep their own modes (a frozen BatchNorm stays frozen)
        return new

    @classmethod
    def _copy_of(cls, source: nn.Module, **spec):
        """A module holding deep copies of ``source``'s children (each tensor a copy with its dtype,
        device and requires_grad; each child in its own train/eval mode), in source's mode."""
        # one deepcopy of all of them: a tensor or module shared between two children stays shared
        children = copy.deepcopy(dict(source.named_children()))
        return cls._from_parts(children, training=source.training, **spec)

    def _layer(self, key):
        path = self._paths.get(key)
        return None if path is None else self.get_submodule(path)

    def __prepare_scriptable__(self):
        raise RuntimeError(f"cbam_fast.{type(self).__name__} does not support torch.jit.script: its forward chooses "
                           "in Python between the Triton kernels and the PyTorch ops. Use torch.jit.trace, "
                           "torch.compile or torch.export instead")


class ChannelAttention(_Gate):
    """The channel gate (squeeze-and-excitation; CBAM's channel half alone), fused:
    ``y = x * gate(E(pool(x)))``.

    ``ChannelAttention(in_channels, reduction_ratio=16)`` is the seed documents' module exactly
    (average pool; ``fc = Sequential(Linear(C, C // r), ReLU, Linear(C // r, C))`` with biases;
    sigmoid; state-dict keys ``fc.0.*``, ``fc.2.*``). Options: ``hidden_channels``, ``pool``
    (``"avg"``, ``"avg_max"``: the MLP on each pool, summed, ``"light"``: one pass on
    ``mean / 2 + max / 2``), ``act`` (``"relu"``, ``"silu"``), ``gate`` (``"sigmoid"``,
    ``"hard_sigmoid"``), ``bias``, ``mlp="single"`` (one ``Linear(C, C)``, no activation).

    Presets for the modules people have: :meth:`timm_se` (timm ``SEModule``),
    :meth:`timm_effective_se`, :meth:`timm_squeeze_excite` (EfficientNet / MobileNetV3),
    :meth:`timm_eca`, :meth:`ultralytics`, :meth:`official` (the authors' CBAM with
    ``no_spatial=True``); :func:`cbam_fast.convert` replaces existing ones.
    """

    def __init__(self, in_channels: int, reduction_ratio: float = 16, *, hidden_channels: int | None = None,
                 pool: str = "avg", act: str = "relu", gate: str = "sigmoid", bias: bool = True, mlp: str = "reduce"):
        super().__init__()
        who = "ChannelAttention"
        _check_int("in_channels", in_channels, who=who)
        _choice(who, "pool", pool, gates.CHANNEL_POOLS)
        _choice(who, "act", act, gates.ACTIVATIONS)
        _choice(who, "gate", gate, gates.GATES)
        _choice(who, "mlp", mlp, ("reduce", "single"))
        if mlp == "reduce":
            if hidden_channels is None:
                if isinstance(reduction_ratio, bool) or not isinstance(reduction_ratio, (int, float)) \
                        or not reduction_ratio >= 1:
                    raise ValueError(f"{who}: reduction_ratio must be a number >= 1, got {reduction_ratio!r}")
                hidden_channels = int(in_channels // reduction_ratio)
                if hidden_channels < 1:
                    raise ValueError(f"{who}: the hidden width in_channels // reduction_ratio = {in_channels} // "
                                     f"{reduction_ratio} is 0; use a reduction_ratio <= {in_channels}")
            _check_int("hidden_channels", hidden_channels, who=who)
            self.fc = nn.Sequential(nn.Linear(in_channels, hidden_channels, bias=bias),
                                    nn.ReLU() if act == "relu" else nn.SiLU(),
                                    nn.Linear(hidden_channels, in_channels, bias=bias))
            self._paths = {"fc1": "fc.0", "fc2": "fc.2"}
        else:
            self.fc = nn.Sequential(nn.Linear(in_channels, in_channels, bias=bias))
            self._paths = {"fc1": "fc.0"}
        self.channels, self.pooling, self.activation, self.gating, self.excitation = in_channels, pool, act, gate, "mlp"

    # ------------------------------------------------------------------ presets

    @classmethod
    def timm_se(cls, channels: int, rd_ratio: float = 1. / 16, rd_channels: int | None = None, rd_divisor: int = 8,
                add_maxpool: bool = False, bias: bool = True, act_layer=nn.ReLU, norm_layer=None,
                gate_layer="sigmoid") -> "ChannelAttention":
        """timm's ``SEModule`` (``timm/layers/squeeze_excite.py``), its signature and keys
        (``fc1``, ``bn``, ``fc2``: 1x1 convs, ``bn`` a ``norm_layer(rd)`` or Identity): hidden width
        ``rd_channels`` or ``make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)``;
        ``add_maxpool``: the pool ``0.5 * mean + 0.5 * max``. ``act_layer`` ReLU or SiLU,
        ``gate_layer`` sigmoid or hard_sigmoid; a ``norm_layer`` must be a BatchNorm class (it runs
        as PyTorch ops on the ``[N, rd]`` hidden vector)."""
        who = "ChannelAttention.timm_se"
        _check_int("channels", channels, who=who)
        act, gate = act_name(who, act_layer), gate_name(who, gate_layer)
        rd = timm_hidden_width(channels, rd_ratio, rd_channels, rd_divisor)  # timm's make_divisible rule
        children = {"fc1": nn.Conv2d(channels, rd, 1, bias=bias)}
        if norm_layer is not None:
            bn = norm_layer(rd)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                raise ValueError(f"{who}: norm_layer={getattr(norm_layer, '__name__', norm_layer)} is not served: "
                                 "cbam_fast serves a BatchNorm on the hidden vector")
            children["bn"] = bn
        else:
            children["bn"] = nn.Identity()
        children["act"] = nn.ReLU(inplace=True) if act == "relu" else nn.SiLU(inplace=True)
        children["fc2"] = nn.Conv2d(rd, channels, 1, bias=bias)
        return cls._from_parts(children, **_spec(channels, "light" if add_maxpool else "avg", act, gate,
                                                 fc1="fc1", fc2="fc2", norm="bn" if norm_layer is not None else None))

    @classmethod
    def timm_effective_se(cls, channels: int, add_maxpool: bool = False, gate_layer="hard_sigmoid") -> "ChannelAttention":
        """timm's ``EffectiveSEModule``: one 1x1 conv ``fc`` C -> C with bias, hard_sigmoid gate."""
        who = "ChannelAttention.timm_effective_se"
        _check_int("channels", channels, who=who)
        gate = gate_name(who, gate_layer)
        return cls._from_parts({"fc": nn.Conv2d(channels, channels, 1, bias=True)},
                               **_spec(channels, "light" if add_maxpool else "avg", "relu", gate, fc1="fc"))

    @classmethod
    def timm_squeeze_excite(cls, in_chs: int, rd_ratio: float = 0.25, rd_channels: int | None = None,
                            act_layer=nn.ReLU, gate_layer=nn.Sigmoid, force_act_layer=None,
                            rd_round_fn=None) -> "ChannelAttention":
        """timm's EfficientNet / MobileNetV3 ``SqueezeExcite`` (``timm/models/_efficientnet_blocks.py``):
        ``conv_reduce`` (C -> rd, rd = ``rd_round_fn(C * rd_ratio)`` or ``round(C * rd_ratio)``
        unless ``rd_channels``), ``act1`` (``force_act_layer`` or ``act_layer``: ReLU or SiLU),
        ``conv_expand``, both with bias, ``gate`` (sigmoid or hard_sigmoid)."""
        who = "ChannelAttention.timm_squeeze_excite"
        _check_int("in_chs", in_chs, who=who)
        if rd_channels is None:
            rd_channels = (rd_round_fn or round)(in_chs * rd_ratio)
        _check_int("rd_channels", rd_channels, who=who)
        act = act_name(who, force_act_layer or act_layer)
        gate = gate_name(who, gate_layer)
        children = {"conv_reduce": nn.Conv2d(in_chs, rd_channels, 1, bias=True),
                    "act1": nn.ReLU(inplace=True) if act == "relu" else nn.SiLU(inplace=True),
                    "conv_expand": nn.Conv2d(rd_channels, in_chs, 1, bias=True)}
        return cls._from_parts(children, **_spec(in_chs, "avg", act, gate, fc1="conv_reduce", fc2="conv_expand"))

    @classmethod
    def timm_eca(cls, channels: int | None = None, kernel_size: int = 3, gamma: float = 2, beta: float = 1,
                 gate_layer="sigmoid") -> "ChannelAttention":
        """timm's ``EcaModule``: the mean over H, W, a ``Conv1d(1, 1, k, padding=(k - 1) // 2,
        bias=False)`` over the channels (``conv``; k from ``channels`` as timm derives it when
        given), the gate. Channels are known only at the first forward when ``channels`` is None."""
        who = "ChannelAttention.timm_eca"
        if channels is not None:
            _check_int("channels", channels, who=who)
            t = int(abs(math.log(channels, 2) + beta) / gamma)
            kernel_size = max(t if t % 2 else t + 1, 3)
        _check_int("kernel_size", kernel_size, who=who)
        if kernel_size % 2 == 0:
            raise ValueError(f"{who}: kernel_size must be odd, got {kernel_size}")
        gate = gate_name(who, gate_layer)
        conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        return cls._from_parts({"conv": conv}, **_spec(channels, "avg", "relu", gate, eca="conv"))

    @classmethod
    def ultralytics(cls, channels: int) -> "ChannelAttention":
        """Ultralytics' ``ChannelAttention(channels)``: average pool, one 1x1 conv ``fc`` C -> C with
        bias, sigmoid."""
        _check_int("channels", channels, who="ChannelAttention.ultralytics")
        return cls._from_parts({"fc": nn.Conv2d(channels, channels, 1, bias=True)},
                               **_spec(channels, "avg", "relu", "sigmoid", fc1="fc"))

    @classmethod
    def official(cls, gate_channels: int, reduction_ratio: int = 16, pool_types=['avg', 'max']) -> "ChannelAttention":  # noqa: B006
        """The authors' CBAM with ``no_spatial=True`` (Jongchan/attention-module): its
        ``ChannelGate`` alone, keys ``ChannelGate.mlp.1.*``, ``ChannelGate.mlp.3.*`` (Flatten,
        Linear C -> C // r, ReLU, Linear); ``pool_types`` ``['avg', 'max']`` or ``['avg']``."""
        from .module import _floor_width, _official_channel_pool

        pool = _official_channel_pool(pool_types)
        hidden = _floor_width("ChannelAttention.official", "gate_channels", gate_channels, "reduction_ratio",
                              reduction_ratio)
        holder = nn.Module()
        holder.mlp = nn.Sequential(nn.Flatten(), nn.Linear(gate_channels, hidden), nn.ReLU(),
                                   nn.Linear(hidden, gate_channels))
        return cls._from_parts({"ChannelGate": holder},
                               **_spec(gate_channels, pool, "relu", "sigmoid", fc1="ChannelGate.mlp.1",
                                       fc2="ChannelGate.mlp.3"))

    # ------------------------------------------------------------------ forward

    @property
    def hidden_channels(self) -> int | None:
        fc2 = self._layer("fc2")
        return None if fc2 is None else _weight2d(fc2).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != self.channels:
            raise ValueError(f"ChannelAttention: input has {x.shape[1]} channels but this module was built for "
                             f"{self.channels}")
        if self.excitation == "eca":
            conv = self._layer("eca")
            return gates.channel_attention(x, pool=self.pooling, gate=self.gating, excite=_EcaExcite(conv),
                                           params=tuple(conv.parameters()))
        fc1, fc2, norm = self._layer("fc1"), self._layer("fc2"), self._layer("norm")
        w1, b1 = _weight2d(fc1), fc1.bias
        w2, b2 = (None, None) if fc2 is None else (_weight2d(fc2), fc2.bias)
        if norm is None:
            return gates.channel_attention(x, w1, b1, w2, b2, pool=self.pooling, act=self.activation, gate=self.gating)
        excite = _NormedExcite(w1, b1, norm, self.activation, w2, b2)
        params = tuple(p for p in (w1, b1, w2, b2, norm.weight, norm.bias) if p is not None)
        return gates.channel_attention(x, pool=self.pooling, gate=self.gating, excite=excite, params=params)

    def extra_repr(self) -> str:
        parts = [f"{self.channels}", f"pool={self.pooling!r}", f"gate={self.gating!r}"]
        if self.excitation == "mlp" and self._paths.get("fc2") is not None:
            parts.insert(1, f"act={self.activation!r}")
        if self.excitation == "eca":
            parts.append("excitation='eca'")
        return ", ".join(parts)


class _EcaExcite:
    """ECA's excitation: the module's Conv1d over the channels of the pooled ``[N, C]`` (its weight
    cast to the pooled vector's dtype: the accumulation dtype, ``in_acc``)."""

    in_acc = True

    def __init__(self, conv):
        self.conv = conv

    def __call__(self, v):
        c = self.conv
        b = None if c.bias is None else c.bias.to(v.dtype)
        return F.conv1d(v.unsqueeze(1), c.weight.to(v.dtype), b, c.stride, c.padding, c.dilation, c.groups).squeeze(1)


class _NormedExcite:
    """``fc2(act(norm(fc1(v))))``: a norm (timm's ``bn``, a BatchNorm over the hidden channels, in
    its own mode and its parameters' dtype) on the hidden vector, as PyTorch ops; the layers in
    the pooled vector's dtype (the accumulation dtype, ``in_acc``)."""

    in_acc = True

    def __init__(self, w1, b1, norm, act, w2, b2):
        self.w1, self.b1, self.norm, self.act, self.w2, self.b2 = w1, b1, norm, act, w2, b2

    @property
    def pure(self) -> bool:  # no state update when called (the backward may recompute it)
        from .gates import _updates_state

        return not _updates_state(self.norm)

    def __call__(self, v):
        h = F.linear(v, self.w1.to(v.dtype), None if self.b1 is None else self.b1.to(v.dtype))
        ref = self.norm.weight if self.norm.weight is not None else self.norm.running_mean
        dt = ref.dtype if ref is not None else h.dtype
        h = self.norm(h[:, :, None, None].to(dt)).flatten(1).to(v.dtype)
        h = reference.activation(h, self.act)
        return F.linear(h, self.w2.to(v.dtype), None if self.b2 is None else self.b2.to(v.dtype))


def _spec(channels, pool, act, gate, *, fc1=None, fc2=None, norm=None, eca=None) -> dict:
    paths = {k: v for k, v in dict(fc1=fc1, fc2=fc2, norm=norm, eca=eca).items() if v is not None}
    return dict(channels=channels, pooling=pool, activation=act, gating=gate, excitation="eca" if eca else "mlp",
                _paths=paths)


class SpatialAttention(_Gate):
    """The spatial gate (CBAM's spatial half alone), fused: ``y = x * gate(conv(maps))``, the maps
    the mean and max over channels.

    ``SpatialAttention()`` is the seed documents' module exactly (``conv = Conv2d(2, 1, 7,
    padding=3)`` with bias over ``[mean, max]``, sigmoid; keys ``conv.*``). Options:
    ``kernel_size`` (3, 5, 7), ``pool`` (``"mean_max"``, ``"max_mean"``, ``"light"``), ``bias``,
    ``bn`` (a BatchNorm2d(1) on the conv output, keys ``bn.*``), ``gate``. Preset:
    :meth:`ultralytics`."""

    def __init__(self, kernel_size: int = 7, *, pool: str = "mean_max", bias: bool = True, bn: bool = False,
                 gate: str = "sigmoid", bn_eps: float = 1e-5, bn_momentum: float | None = 0.1):
        super().__init__()
        check_kernel_size(kernel_size)
        _choice("SpatialAttention", "pool", pool, gates.SPATIAL_POOLS)
        _choice("SpatialAttention", "gate", gate, gates.GATES)
        self.conv = nn.Conv2d(1 if pool == "light" else 2, 1, kernel_size, padding=kernel_size // 2, bias=bias)
        if bn:
            self.bn = nn.BatchNorm2d(1, eps=bn_eps, momentum=bn_momentum)
        self.kernel_size, self.pooling, self.gating = kernel_size, pool, gate
        self._paths = {"conv": "conv", **({"bn": "bn"} if bn else {})}

    @classmethod
    def ultralytics(cls, kernel_size: int = 7) -> "SpatialAttention":
        """Ultralytics' ``SpatialAttention(kernel_size=7)``: ``cv1`` Conv2d(2, 1, k, padding k // 2,
        no bias) over ``[mean, max]``, sigmoid; k 3 or 7."""
        if kernel_size not in (3, 7):
            raise ValueError(f"SpatialAttention.ultralytics: kernel size must be 3 or 7, got {kernel_size}")
        conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        return cls._from_parts({"cv1": conv}, kernel_size=kernel_size, pooling="mean_max", gating="sigmoid",
                               _paths={"conv": "cv1"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self._layer("conv"), self._layer("bn")
        return gates.spatial_attention(x, conv.weight, conv.bias, pool=self.pooling, gate=self.gating, bn=bn)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, pool={self.pooling!r}, gate={self.gating!r}"
