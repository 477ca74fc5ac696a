"""timm's CbamModule and LightCbamModule (timm/layers/cbam.py), re-implemented with timm's signatures
(argument names, order and defaults) and hidden-width rule (make_divisible, timm/layers/helpers.py)."""

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v, divisor=8, min_value=None, round_limit=.9):
    """timm.layers.helpers.make_divisible: v rounded to the nearest multiple of divisor (halves
    up), at least min_value (default divisor), one divisor more when rounding lost more than
    (1 - round_limit) of v."""
    floor = min_value or divisor
    rounded = max(floor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


def _rd(channels, rd_ratio, rd_divisor=1):
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)


def create_act_layer(layer):
    """timm's create_act_layer for the names and classes these tests use."""
    if isinstance(layer, str):
        layer = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid, "relu": nn.ReLU, "silu": nn.SiLU}[layer]
    return layer()


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an (here identity) activation and dropout, as timm's norm_act."""

    def __init__(self, num_features, apply_act=False, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class ConvNormAct(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, apply_act=False, bias=False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.bn = BatchNormAct2d(out_channels, apply_act=apply_act)

    def forward(self, x):
        return self.bn(self.conv(x))


class ChannelAttn(nn.Module):
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=1, act_layer=nn.ReLU,
                 gate_layer="sigmoid", mlp_bias=False):
        super().__init__()
        if not rd_channels:
            rd_channels = _rd(channels, rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x):
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * self.gate(x_avg + x_max)


class LightChannelAttn(ChannelAttn):
    def forward(self, x):
        pooled = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
        return x * F.sigmoid(self.fc2(self.act(self.fc1(pooled))))


class SpatialAttn(nn.Module):
    def __init__(self, kernel_size=7, gate_layer="sigmoid"):
        super().__init__()
        self.conv = ConvNormAct(2, 1, kernel_size, apply_act=False)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x):
        attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(attn))


class LightSpatialAttn(nn.Module):
    def __init__(self, kernel_size=7, gate_layer="sigmoid"):
        super().__init__()
        self.conv = ConvNormAct(1, 1, kernel_size, apply_act=False)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x):
        attn = 0.5 * x.mean(dim=1, keepdim=True) + 0.5 * x.amax(dim=1, keepdim=True)
        return x * self.gate(self.conv(attn))


class CbamModule(nn.Module):
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=1, spatial_kernel_size=7,
                 act_layer=nn.ReLU, gate_layer="sigmoid", mlp_bias=False, device=None, dtype=None):
        super().__init__()
        self.channel = ChannelAttn(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, mlp_bias)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer)
        self.to(device=device, dtype=dtype)  # timm's factory arguments (timm >= 1.0.2x)

    def forward(self, x):
        return self.spatial(self.channel(x))


class LightCbamModule(nn.Module):
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=1, spatial_kernel_size=7,
                 act_layer=nn.ReLU, gate_layer="sigmoid", mlp_bias=False, device=None, dtype=None):
        super().__init__()
        self.channel = LightChannelAttn(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, mlp_bias)
        self.spatial = LightSpatialAttn(spatial_kernel_size)  # timm passes no gate_layer here
        self.to(device=device, dtype=dtype)

    def forward(self, x):
        return self.spatial(self.channel(x))
