"""mmyolo's CBAM plugin (mmyolo/models/plugins/cbam.py) with mmcv's ConvModule, re-implemented."""

import torch
from torch import nn


class ConvModule(nn.Module):
    """conv -> (no norm) -> activation; bias on, as mmcv does when there is no norm."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, act=nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=True)
        self.norm = None
        self.with_norm = False
        self.with_activation = act is not None
        self.activate = act() if act is not None else None

    def forward(self, x):
        x = self.conv(x)
        return self.activate(x) if self.activate is not None else x


class ChannelAttention(nn.Module):
    def __init__(self, channels, reduce_ratio=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Sequential(
            ConvModule(channels, int(channels / reduce_ratio), 1, act=nn.ReLU),
            ConvModule(int(channels / reduce_ratio), channels, 1, act=None),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.fc(self.avg_pool(x)) + self.fc(self.max_pool(x)))


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = ConvModule(2, 1, kernel_size, padding=kernel_size // 2, act=nn.Sigmoid)

    def forward(self, x):
        avg = torch.mean(x, dim=1, keepdim=True)
        mx, _ = torch.max(x, dim=1, keepdim=True)
        return self.conv(torch.cat([avg, mx], dim=1))


class CBAM(nn.Module):
    def __init__(self, in_channels, reduce_ratio=16, kernel_size=7):
        super().__init__()
        self.channel_attention = ChannelAttention(in_channels, reduce_ratio)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x):
        out = self.channel_attention(x) * x
        return self.spatial_attention(out) * out
