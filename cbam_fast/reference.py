"""Pure-PyTorch reference CBAM, written from the paper's math (official semantics).

The one definition of "correct" for the tests and benchmarks. It runs as a chain of ordinary
PyTorch ops in the input's dtype, like the eager implementations cbam_fast replaces:

    cg = sigmoid(MLP(avgpool_hw(x)) + MLP(maxpool_hw(x)))        MLP = fc2(relu(fc1(.)))
    x1 = x * cg
    sg = sigmoid(conv_kxk(cat[max_c(x1), mean_c(x1)]) + conv_bias)  2 -> 1 channels, padding k//2
    y  = x1 * sg

Max pooling uses ``torch.max(dim)`` (the gradient goes to one maximal element), as the authors'
``max_pool2d`` and ``torch.max(x, 1)[0]`` do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    """[N, C] channel gate of x [N, C, H, W]."""
    flat = x.flatten(2)
    avg = flat.mean(dim=2)
    mx = flat.max(dim=2).values

    def mlp(v):
        return F.linear(F.relu(F.linear(v, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)

    return torch.sigmoid(mlp(avg) + mlp(mx))


def spatial_gate(x1, conv_weight, conv_bias=None):
    """[N, 1, H, W] spatial gate of x1 [N, C, H, W]; conv_weight [1, 2, k, k] over [max, mean]."""
    pooled = torch.cat([x1.max(dim=1, keepdim=True).values, x1.mean(dim=1, keepdim=True)], dim=1)
    k = conv_weight.shape[-1]
    return torch.sigmoid(F.conv2d(pooled, conv_weight, conv_bias, padding=k // 2))


def cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias=None):
    """Reference CBAM forward. Parameters are cast to x's dtype (as a module converted with
    ``.half()`` would hold them)."""
    cast = [None if p is None else p.to(x.dtype) for p in (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)]
    fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias = cast
    x1 = x * channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)[:, :, None, None]
    return x1 * spatial_gate(x1, conv_weight, conv_bias)
