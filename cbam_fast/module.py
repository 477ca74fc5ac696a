"""``cbam_fast.CBAM``: the drop-in nn.Module, with the options of every common CBAM variant."""

from __future__ import annotations

import torch
from torch import nn

from .functional import CHANNEL_POOLS, SPATIAL_POOLS, cbam, check_kernel_size

MLP_FORMS = ("reduce", "single")
HIDDEN_ROUNDING = ("floor", "round")


def hidden_width(channels: int, reduction_ratio: float, rounding: str = "floor") -> int:
    """The MLP's hidden width: ``"floor"`` ``max(1, C // r)`` (the authors' ``C // r``, floored at 1),
    ``"round"`` ``max(1, int(C / r + 0.5))`` (timm's ``make_divisible`` with divisor 1)."""
    if rounding == "floor":
        return max(1, int(channels // reduction_ratio))
    if rounding == "round":
        return max(1, int(channels / reduction_ratio + 0.5))
    raise ValueError(f"CBAM: hidden_rounding must be one of {HIDDEN_ROUNDING}, got {rounding!r}")


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"CBAM: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"CBAM: {name} must be >= {minimum}, got {value}")


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018), fused.

    ``y = x * cg * sg``. Defaults are the paper's / authors' math without the spatial BatchNorm:
    ``cg = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with ``MLP = fc2(relu(fc1(.)))``
    (``Linear(C, hidden)``, ``Linear(hidden, C)``, with biases, ``hidden = max(1, C // r)``) and
    ``sg = sigmoid(conv(cat[max_c(x*cg), mean_c(x*cg)]))``, a k x k 2->1 conv without bias,
    padding k // 2. Parameters are initialised as PyTorch's Linear and Conv2d defaults.

    Options (keyword-only), covering the common implementations (see the presets ``official``,
    ``timm``, ``timm_light``, ``ultralytics``, ``luuuyi``, ``mmyolo``, ``se_style`` and
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
    def official(cls, gate_channels: int, reduction_ratio: int = 16, **kw) -> "CBAM":
        """The authors' CBAM (Jongchan/attention-module): BN(eps 1e-5, momentum 0.01) after the 7x7 conv."""
        return cls(gate_channels, reduction_ratio, 7, spatial_bn=True, bn_eps=1e-5, bn_momentum=0.01, **kw)

    @classmethod
    def timm(cls, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
             spatial_kernel_size: int = 7, mlp_bias: bool = False, **kw) -> "CBAM":
        """timm's ``CbamModule``: rounded hidden width, no MLP bias, [mean, max] conv, BN."""
        hidden = rd_channels or hidden_width(channels, 1 / rd_ratio, "round")
        return cls(channels, 16, spatial_kernel_size, mlp_bias=mlp_bias, hidden_channels=hidden,
                   spatial_pool="mean_max", spatial_bn=True, bn_momentum=0.1, **kw)

    @classmethod
    def timm_light(cls, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                   spatial_kernel_size: int = 7, mlp_bias: bool = False, **kw) -> "CBAM":
        """timm's ``LightCbamModule``: one MLP pass on avg/2 + max/2, one-channel spatial pool, BN."""
        hidden = rd_channels or hidden_width(channels, 1 / rd_ratio, "round")
        return cls(channels, 16, spatial_kernel_size, channel_pool="light", mlp_bias=mlp_bias, hidden_channels=hidden,
                   spatial_pool="light", spatial_bn=True, bn_momentum=0.1, **kw)

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
    def se_style(cls, channels: int, reduction_ratio: int = 16, kernel_size: int = 7, **kw) -> "CBAM":
        """The SE-style variant: avg-only channel branch with the reducing MLP, a biased k x k
        spatial conv, no BatchNorm."""
        return cls(channels, reduction_ratio, kernel_size, channel_pool="avg", conv_bias=True, **kw)

    @classmethod
    def from_module(cls, module: nn.Module) -> "CBAM":
        """An equivalent CBAM holding the same weights and buffers (device, dtype, train/eval mode
        kept) for a recognised CBAM module; see :func:`cbam_fast.convert`."""
        from .convert import from_module

        return from_module(module)

    # ------------------------------------------------------------------ forward

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
