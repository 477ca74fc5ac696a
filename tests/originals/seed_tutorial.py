"""Seed document 000's ChannelAttention and SpatialAttention (../shared/SEEDS.md), re-implemented
exactly as the document writes them, and the composing classes its readers write (the document
shows none): attribute names of their choosing, or an nn.Sequential of the two. Also the common
variant whose MLP is two 1x1 convs with ReLU."""

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Average pool only, Linear MLP with biases, sigmoid; returns x times the gate."""

    def __init__(self, in_channels, reduction_ratio=16):
        super(ChannelAttention, self).__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, in_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(in_channels // reduction_ratio, in_channels),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_pool = self.avg_pool(x).view(x.size(0), -1)
        channel_attention = self.sigmoid(self.fc(avg_pool)).unsqueeze(2).unsqueeze(3)
        return x * channel_attention


class SpatialAttention(nn.Module):
    """[mean, max] over channels, a biased 7x7 conv (PyTorch's default bias=True), sigmoid."""

    def __init__(self):
        super(SpatialAttention, self).__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, padding=3)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_pool = torch.mean(x, dim=1, keepdim=True)
        max_pool = torch.max(x, dim=1, keepdim=True)[0]
        spatial_attention = torch.cat([avg_pool, max_pool], dim=1)
        spatial_attention = self.conv(spatial_attention)
        spatial_attention = self.sigmoid(spatial_attention)
        return x * spatial_attention


class ConvChannelAttention(nn.Module):
    """The variant readers write with the MLP as two 1x1 convs (with biases) and ReLU."""

    def __init__(self, in_channels, reduction_ratio=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(in_channels, in_channels // reduction_ratio, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels // reduction_ratio, in_channels, 1),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc(self.avg_pool(x)))


class CBAM(nn.Module):
    """Long attribute names."""

    def __init__(self, in_channels, reduction_ratio=16):
        super().__init__()
        self.channel_attention = ChannelAttention(in_channels, reduction_ratio)
        self.spatial_attention = SpatialAttention()

    def forward(self, x):
        x = self.channel_attention(x)
        x = self.spatial_attention(x)
        return x


class CBAMBlock(nn.Module):
    """Short attribute names (``ca`` / ``sa``, as luuuyi's, but document 000's halves)."""

    def __init__(self, in_channels, reduction_ratio=16):
        super().__init__()
        self.ca = ChannelAttention(in_channels, reduction_ratio)
        self.sa = SpatialAttention()

    def forward(self, x):
        return self.sa(self.ca(x))


class CBAMLayer(nn.Module):
    """``cam`` / ``sam``, registered spatial first (the forward decides the order)."""

    def __init__(self, in_channels, reduction_ratio=16):
        super().__init__()
        self.sam = SpatialAttention()
        self.cam = ChannelAttention(in_channels, reduction_ratio)

    def forward(self, x):
        out = self.cam(x)
        out = self.sam(out)
        return out


class ConvCBAM(nn.Module):
    """The 1x1-conv MLP variant."""

    def __init__(self, in_channels, reduction_ratio=16):
        super().__init__()
        self.ca = ConvChannelAttention(in_channels, reduction_ratio)
        self.sa = SpatialAttention()

    def forward(self, x):
        return self.sa(self.ca(x))


def sequential_cbam(in_channels, reduction_ratio=16):
    """``nn.Sequential(ChannelAttention(C), SpatialAttention())``."""
    return nn.Sequential(ChannelAttention(in_channels, reduction_ratio), SpatialAttention())
