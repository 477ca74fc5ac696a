"""``cbam_fast.CBAM``: the drop-in nn.Module, with the options of every common CBAM variant."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .functional import CHANNEL_POOLS, SPATIAL_POOLS, cbam, check_kernel_size

MLP_FORMS = ("reduce", "single")
HIDDEN_ROUNDING = ("floor", "round")


def hidden_width(channels: int, reduction_ratio: float, rounding: str = "floor") -> int:
    """The MLP's hidden width: ``"floor"`` ``max(1, C // r)`` (the authors' ``C // r``, floored at 1),
    ``"round"`` ``max(1, int(C / r + 0.5))`` (not always timm's width, which rounds ``C * rd_ratio``:
    ``CBAM.timm`` uses :func:`timm_hidden_width`)."""
    if rounding == "floor":
        return max(1, int(channels // reduction_ratio))
    if rounding == "round":
        return max(1, int(channels / reduction_ratio + 0.5))
    raise ValueError(f"CBAM: hidden_rounding must be one of {HIDDEN_ROUNDING}, got {rounding!r}")


def timm_hidden_width(channels: int, rd_ratio: float = 1. / 16, rd_channels: int | None = None,
                      rd_divisor: int = 1) -> int:
    """timm's CBAM hidden width: ``rd_channels`` when it is given (truthy), else timm's
    ``make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)``: the product rounded to
    the nearest multiple of ``rd_divisor`` (halves up, by ``int(v + d / 2) // d * d``), at least
    ``rd_divisor``. (``round_limit=0.`` switches off make_divisible's "round up when rounding
    lost more than 10%" step.) E.g. C = 45, rd_ratio 0.7: 31; rd_ratio 0: ``rd_divisor``."""
    if rd_channels:
        return rd_channels
    if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
        raise ValueError(f"CBAM.timm: rd_divisor must be an int >= 1, got {rd_divisor!r}")
    if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)):
        raise ValueError(f"CBAM.timm: rd_ratio must be a number, got {rd_ratio!r}")
    v = channels * rd_ratio
    return max(rd_divisor, int(v + rd_divisor / 2) // rd_divisor * rd_divisor)


def _floor_width(preset, c_name, channels, r_name, ratio) -> int:
    """``channels // ratio`` as the authors' and the tutorials' code compute it; 0 is refused."""
    _check_int(c_name, channels)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
        raise ValueError(f"{preset}: {r_name} must be a number >= 1, got {ratio!r}")
    hidden = int(channels // ratio)
    if hidden < 1:
        raise ValueError(
            f"{preset}: the MLP's hidden width {c_name} // {r_name} = {channels} // {ratio} is 0 "
            f"({c_name} < {r_name}); cbam_fast needs at least 1: use a {r_name} <= {channels}"
        )
    return hidden


def _layer_name(layer) -> str:
    return layer if isinstance(layer, str) else getattr(layer, "__name__", type(layer).__name__)


def _check_timm_layers(preset, act_layer, gate_layer) -> None:
    """timm's ``act_layer`` / ``gate_layer``: cbam_fast serves ReLU and sigmoid only."""
    if not (act_layer is nn.ReLU or act_layer == "relu"):
        raise ValueError(f"{preset}: act_layer={_layer_name(act_layer)} is not served: cbam_fast's MLP "
                         f"uses ReLU (act_layer=nn.ReLU)")
    if not (gate_layer is nn.Sigmoid or gate_layer == "sigmoid"):
        raise ValueError(f"{preset}: gate_layer={_layer_name(gate_layer)} is not served: cbam_fast's "
                         f"gates are sigmoids (gate_layer='sigmoid')")


def _official_channel_pool(pool_types) -> str:
    """The authors' ``pool_types`` as a ``channel_pool``: avg + max (the MLP outputs are summed,
    so either order) or avg alone; anything else is refused, naming it."""
    if isinstance(pool_types, str) or not isinstance(pool_types, (list, tuple)):
        raise ValueError(f"CBAM.official: pool_types must be a list such as ['avg', 'max'], got {pool_types!r}")
    pools = list(pool_types)
    if sorted(pools) == ["avg", "max"]:
        return "avg_max"
    if pools == ["avg"]:
        return "avg"
    others = [p for p in pools if p not in ("avg", "max")]
    if not pools:
        what = "an empty list"
    elif others:
        what = f"the pool type{'s' if len(others) > 1 else ''} {', '.join(map(repr, others))}"
    elif pools == ["max"]:
        what = "'max' alone (without 'avg')"
    else:
        what = "repeated pool types"
    raise ValueError(f"CBAM.official: pool_types={pools!r}: {what} not served; cbam_fast serves "
                     f"['avg', 'max'] and ['avg']")


def _check_int(name, value, minimum=1, who="CBAM"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{who}: {name} must be >= {minimum}, got {value}")


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018), fused.

    ``y = x * cg * sg``. Defaults are the paper's / authors' math without the spatial BatchNorm:
    ``cg = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with ``MLP = fc2(relu(fc1(.)))``
    (``Linear(C, hidden)``, ``Linear(hidden, C)``, with biases, ``hidden = max(1, C // r)``) and
    ``sg = sigmoid(conv(cat[max_c(x*cg), mean_c(x*cg)]))``, a k x k 2->1 conv without bias,
    padding k // 2. Parameters are initialised as PyTorch's Linear and Conv2d defaults.

    Options (keyword-only), covering the common implementations (see the presets ``official``,
    ``timm``, ``timm_light``, ``ultralytics``, ``luuuyi``, ``mmyolo``, ``tutorial`` and
    :func:`cbam_fast.convert`):

    * ``channel_pool``: ``"avg_max"`` (default), ``"avg"`` (SE-like), ``"light"`` (one MLP pass on
      ``avg / 2 + max / 2``);
    * ``mlp``: ``"reduce"`` (C -> hidden -> C with ReLU) or ``"single"`` (one C -> C layer, no ReLU);
      ``mlp_bias``; ``hidden_channels`` (explicit width) or ``hidden_rounding`` (``"floor"``,
      ``"round"``);
    * ``spatial_pool``: ``"max_mean"`` (the conv's input channels in the authors' order),
      ``"mean_max"``, or ``"light"`` (one channel ``mean / 2 + max / 2``); ``conv_bias``;
    * ``spatial_bn``: a ``BatchNorm2d(1, eps=bn_eps, momentum=bn_momentum)`` on the conv output
      (training: batch statistics and running-statistics updates as nn.BatchNorm2d; eval: folded
      into the conv, no extra pass);
    * ``keep_attention``: after each forward, ``channel_attention`` ``[N, C]`` and
      ``spatial_attention`` ``[N, 1, H, W]`` hold the gates of that forward (detached; the kernels
      produce them anyway, so no extra pass over x).

    Input ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or channels_last; the output has
    the input's shape, dtype and memory format.
    """

    def __init__(self, channels: int, reduction_ratio: float = 16, kernel_size: int = 7, *,
                 channel_pool: str = "avg_max", mlp: str = "reduce", mlp_bias: bool = True,
                 hidden_channels: int | None = None, hidden_rounding: str = "floor",
                 spatial_pool: str = "max_mean", conv_bias: bool = False,
                 spatial_bn: bool = False, bn_eps: float = 1e-5, bn_momentum: float | None = 0.1,
                 keep_attention: bool = False):
        super().__init__()
        _check_int("channels", channels)
        if isinstance(reduction_ratio, bool) or not isinstance(reduction_ratio, (int, float)) or not reduction_ratio >= 1:
            raise ValueError(f"CBAM: reduction_ratio must be a number >= 1, got {reduction_ratio!r}")
        check_kernel_size(kernel_size)
        if channel_pool not in CHANNEL_POOLS:
            raise ValueError(f"CBAM: channel_pool must be one of {tuple(CHANNEL_POOLS)}, got {channel_pool!r}")
        if mlp not in MLP_FORMS:
            raise ValueError(f"CBAM: mlp must be one of {MLP_FORMS}, got {mlp!r}")
        if spatial_pool not in SPATIAL_POOLS:
            raise ValueError(f"CBAM: spatial_pool must be one of {SPATIAL_POOLS}, got {spatial_pool!r}")
        if hidden_channels is not None:
            _check_int("hidden_channels", hidden_channels)
            hidden = hidden_channels
        else:
            hidden = hidden_width(channels, reduction_ratio, hidden_rounding)
        self.channels = channels
        self.reduction_ratio = reduction_ratio
        self.kernel_size = kernel_size
        self.channel_pool = channel_pool
        self.spatial_pool = spatial_pool
        self.keep_attention = keep_attention
        self.channel_attention = None
        self.spatial_attention = None
        if mlp == "reduce":
            self.fc1 = nn.Linear(channels, hidden, bias=mlp_bias)
            self.fc2 = nn.Linear(hidden, channels, bias=mlp_bias)
        else:
            self.fc1 = nn.Linear(channels, channels, bias=mlp_bias)
            self.fc2 = None
        in_maps = 1 if spatial_pool == "light" else 2
        self.conv = nn.Conv2d(in_maps, 1, kernel_size, padding=kernel_size // 2, bias=conv_bias)
        self.bn = nn.BatchNorm2d(1, eps=bn_eps, momentum=bn_momentum) if spatial_bn else None

    @property
    def mlp(self) -> str:
        return "reduce" if self.fc2 is not None else "single"

    @property
    def hidden_channels(self) -> int:
        return self.fc1.out_features

    # ------------------------------------------------------------------ presets

    @classmethod
    def official(cls, gate_channels: int, reduction_ratio: int = 16, pool_types=['avg', 'max'],  # noqa: B006
                 no_spatial: bool = False, **kw) -> "CBAM":
        """The authors' CBAM (Jongchan/attention-module ``MODELS/cbam.py``), with its signature
        ``CBAM(gate_channels, reduction_ratio=16, pool_types=['avg', 'max'], no_spatial=False)``:
        hidden width ``gate_channels // reduction_ratio``, BatchNorm(eps 1e-5, momentum 0.01)
        after the 7x7 conv over ``[max, mean]``.

        ``pool_types``: ``['avg', 'max']`` (either order: the MLP outputs are summed) or
        ``['avg']``; the others (``'lp'``, ``'lse'``, ``'max'`` alone, repeats) are refused with a
        ValueError naming them. ``no_spatial=True`` returns the channel gate alone,
        :meth:`cbam_fast.ChannelAttention.official` (the authors' keys). A hidden width of 0 (C < r) is refused. Extra keywords
        (``keep_attention``, ...) go to :class:`CBAM`."""
        pools = _official_channel_pool(pool_types)
        if "channel_pool" in kw:  # cbam_fast's own keyword, over the default pool_types only
            chosen = kw.pop("channel_pool")
            if chosen != pools and list(pool_types) != ["avg", "max"]:
                raise ValueError(f"CBAM.official: channel_pool={chosen!r} contradicts pool_types={list(pool_types)!r}")
            pools = chosen
        if no_spatial:  # the authors' channel gate alone: a ChannelAttention with the authors' keys
            if kw:
                raise ValueError(f"CBAM.official: no_spatial=True takes no cbam_fast keywords, got {sorted(kw)}")
            if pools not in ("avg_max", "avg"):
                raise ValueError(f"CBAM.official: no_spatial=True with channel_pool={pools!r}: the authors' channel "
                                 "gate pools avg and max, or avg")
            from .gate_modules import ChannelAttention

            return ChannelAttention.official(gate_channels, reduction_ratio, ["avg", "max"] if pools == "avg_max" else ["avg"])
        hidden = _floor_width("CBAM.official", "gate_channels", gate_channels, "reduction_ratio", reduction_ratio)
        return cls(gate_channels, reduction_ratio, 7, channel_pool=pools, hidden_channels=hidden,
                   spatial_bn=True, bn_eps=1e-5, bn_momentum=0.01, **kw)

    @classmethod
    def timm(cls, channels: int, rd_ratio: float = 1. / 16, rd_channels: int | None = None, rd_divisor: int = 1,
             spatial_kernel_size: int = 7, act_layer=nn.ReLU, gate_layer="sigmoid", mlp_bias: bool = False,
             device=None, dtype=None, **kw) -> "CBAM":
        """timm's ``CbamModule`` (``timm/layers/cbam.py``), with its signature and argument order:
        hidden width ``rd_channels`` or ``make_divisible(channels * rd_ratio, rd_divisor,
        round_limit=0.)`` as timm computes it, 1x1-conv MLP without bias (``mlp_bias``),
        ``[mean, max]`` k x k conv, BatchNorm (eps 1e-5, momentum 0.1). ``act_layer`` must be
        ReLU and ``gate_layer`` sigmoid (the others are refused with a ValueError naming them).
        ``device``/``dtype``: where the parameters are made (timm >= 1.0.2x's factory arguments).
        Extra keywords (``keep_attention``, ...) go to :class:`CBAM`."""
        _check_timm_layers("CBAM.timm", act_layer, gate_layer)
        hidden = timm_hidden_width(channels, rd_ratio, rd_channels, rd_divisor)
        m = cls(channels, 16, spatial_kernel_size, mlp_bias=mlp_bias, hidden_channels=hidden,
                spatial_pool="mean_max", spatial_bn=True, bn_momentum=0.1, **kw)
        return m if device is None and dtype is None else m.to(device=device, dtype=dtype)

    @classmethod
    def timm_light(cls, channels: int, rd_ratio: float = 1. / 16, rd_channels: int | None = None,
                   rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer=nn.ReLU, gate_layer="sigmoid",
                   mlp_bias: bool = False, device=None, dtype=None, **kw) -> "CBAM":
        """timm's ``LightCbamModule``: ``CBAM.timm``'s signature and hidden width, one MLP pass
        on avg/2 + max/2, one-channel spatial pool, BN. (timm's module builds its ``gate_layer``
        but applies sigmoid whatever it is; only sigmoid is accepted here, so that a
        ``gate_layer`` is never silently ignored.)"""
        _check_timm_layers("CBAM.timm_light", act_layer, gate_layer)
        hidden = timm_hidden_width(channels, rd_ratio, rd_channels, rd_divisor)
        m = cls(channels, 16, spatial_kernel_size, channel_pool="light", mlp_bias=mlp_bias, hidden_channels=hidden,
                spatial_pool="light", spatial_bn=True, bn_momentum=0.1, **kw)
        return m if device is None and dtype is None else m.to(device=device, dtype=dtype)

    @classmethod
    def ultralytics(cls, c1: int, kernel_size: int = 7, **kw) -> "CBAM":
        """Ultralytics' ``CBAM``: an SE-like channel gate (avg pool, one C -> C layer with bias)."""
        return cls(c1, 1, kernel_size, channel_pool="avg", mlp="single", spatial_pool="mean_max", **kw)

    @classmethod
    def luuuyi(cls, in_planes: int, **kw) -> "CBAM":
        """luuuyi/CBAM.PyTorch's ``ChannelAttention`` + ``SpatialAttention``: C // 16, no biases."""
        return cls(in_planes, 16, 7, mlp_bias=False, hidden_channels=max(1, in_planes // 16), spatial_pool="mean_max", **kw)

    @classmethod
    def mmyolo(cls, in_channels: int, reduce_ratio: int = 16, kernel_size: int = 7, **kw) -> "CBAM":
        """mmyolo's ``CBAM`` plugin: MLP with biases, [mean, max] conv with bias, no BN."""
        return cls(in_channels, reduce_ratio, kernel_size, hidden_channels=int(in_channels / reduce_ratio),
                   spatial_pool="mean_max", conv_bias=True, **kw)

    @classmethod
    def tutorial(cls, channels: int, reduction_ratio: int = 16, kernel_size: int = 7, **kw) -> "CBAM":
        """The CBAM of the tutorials (document 000 of the seed documents): ``ChannelAttention``
        (average pool only, ``Linear(C, C // r)``, ReLU, ``Linear(C // r, C)``, both with biases,
        sigmoid) then ``SpatialAttention`` (a biased k x k conv, 7 in the document, over
        ``[mean, max]``, sigmoid), no BatchNorm. Hidden width ``C // r``; C < r (a width of 0) is
        refused. Extra keywords (``keep_attention``, ...) go to :class:`CBAM`."""
        hidden = _floor_width("CBAM.tutorial", "channels", channels, "reduction_ratio", reduction_ratio)
        return cls(channels, reduction_ratio, kernel_size, channel_pool="avg", mlp_bias=True, hidden_channels=hidden,
                   spatial_pool="mean_max", conv_bias=True, **kw)

    @classmethod
    def se_style(cls, channels: int, reduction_ratio: int = 16, kernel_size: int = 7, **kw) -> "CBAM":
        """Deprecated alias of :meth:`tutorial` (with a DeprecationWarning). Earlier versions of this
        preset used a ``[max, mean]`` spatial conv, not the tutorials' ``[mean, max]`` (their
        weights then gave about 25% output error); it is now exactly :meth:`tutorial`."""
        warnings.warn("CBAM.se_style is deprecated: it is now an alias of CBAM.tutorial (the tutorials' "
                      "[mean, max] spatial conv); call CBAM.tutorial", DeprecationWarning, stacklevel=2)
        return cls.tutorial(channels, reduction_ratio, kernel_size, **kw)

    @classmethod
    def from_module(cls, module: nn.Module) -> "CBAM":
        """An equivalent CBAM holding the same weights and buffers (device, dtype, train/eval mode
        kept) for a recognised CBAM module; see :func:`cbam_fast.convert`."""
        from .convert import from_module

        return from_module(module)

    # ------------------------------------------------------------------ forward

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module it compiles, before compiling anything
        raise RuntimeError(
            "cbam_fast.CBAM does not support torch.jit.script: its forward chooses in Python between "
            "the Triton kernels and the PyTorch ops, which TorchScript cannot compile. Use torch.jit.trace "
            "(it records the same op), torch.compile or torch.export instead"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != self.channels:
            raise ValueError(f"CBAM: input has {x.shape[1]} channels but this module was built for {self.channels}")
        fc2 = self.fc2
        out = cbam(
            x, self.fc1.weight, self.fc1.bias, None if fc2 is None else fc2.weight, None if fc2 is None else fc2.bias,
            self.conv.weight, self.conv.bias, channel_pool=self.channel_pool, spatial_pool=self.spatial_pool,
            bn=self.bn, return_gates=self.keep_attention,
        )
        if not self.keep_attention:
            return out
        y, cg, sg = out
        self.channel_attention, self.spatial_attention = cg.detach(), sg.detach()
        return y

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from .convert import translate_state_dict

        translate_state_dict(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        parts = [f"{self.channels}", f"hidden={self.hidden_channels}", f"kernel_size={self.kernel_size}"]
        if self.channel_pool != "avg_max":
            parts.append(f"channel_pool={self.channel_pool!r}")
        if self.fc2 is None:
            parts.append("mlp='single'")
        if self.spatial_pool != "max_mean":
            parts.append(f"spatial_pool={self.spatial_pool!r}")
        return ", ".join(parts)
