"""Pure-PyTorch reference CBAM, written from the paper's math, with the variants of the
implementations cbam_fast replaces.

The one definition of "correct" for the tests and benchmarks. It runs as a chain of ordinary
PyTorch ops in the input's dtype, like the eager modules it stands for. Default (official):

    cg = sigmoid(MLP(avgpool_hw(x)) + MLP(maxpool_hw(x)))        MLP = fc2(relu(fc1(.)))
    x1 = x * cg
    sg = sigmoid(conv_kxk(cat[max_c(x1), mean_c(x1)]) + conv_bias)  2 -> 1 channels, padding k//2
    y  = x1 * sg

Options:

* ``channel_pool``: ``"avg_max"`` (above), ``"avg"`` (``sigmoid(MLP(avg))``), ``"light"``
  (``sigmoid(MLP(avg / 2 + max / 2))``, timm's LightCbam);
* ``fc2_weight=None``: a single layer ``MLP(v) = fc1(v)`` (no ReLU), Ultralytics' C -> C conv;
* ``spatial_pool``: ``"max_mean"`` (official channel order), ``"mean_max"`` (timm, Ultralytics,
  mmyolo, luuuyi), ``"light"`` (one channel ``mean / 2 + max / 2``, ``conv_weight`` ``[1, 1, k, k]``);
* ``bn``: a ``BatchNorm2d(1)`` applied to the conv output (in its own train/eval mode).

Max pooling uses ``torch.max(dim)`` (the gradient goes to one maximal element).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHANNEL_POOLS = ("avg_max", "avg", "light")
SPATIAL_POOLS = ("max_mean", "mean_max", "light")


def channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool="avg_max"):
    """[N, C] channel gate of x [N, C, H, W]."""
    flat = x.flatten(2)
    avg = flat.mean(dim=2)
    mx = flat.max(dim=2).values

    def mlp(v):
        h = F.linear(v, fc1_weight, fc1_bias)
        return h if fc2_weight is None else F.linear(F.relu(h), fc2_weight, fc2_bias)

    if pool == "avg_max":
        a = mlp(avg) + mlp(mx)
    elif pool == "avg":
        a = mlp(avg)
    elif pool == "light":
        a = mlp(0.5 * avg + 0.5 * mx)
    else:
        raise ValueError(f"channel_pool must be one of {CHANNEL_POOLS}, got {pool!r}")
    return torch.sigmoid(a)


def spatial_pools(x1, pool="max_mean"):
    """The spatial branch's input: [N, 2, H, W] (or [N, 1, H, W] for 'light') pools over C."""
    mx = x1.max(dim=1, keepdim=True).values
    mean = x1.mean(dim=1, keepdim=True)
    if pool == "max_mean":
        return torch.cat([mx, mean], dim=1)
    if pool == "mean_max":
        return torch.cat([mean, mx], dim=1)
    if pool == "light":
        return 0.5 * mean + 0.5 * mx
    raise ValueError(f"spatial_pool must be one of {SPATIAL_POOLS}, got {pool!r}")


def spatial_gate(x1, conv_weight, conv_bias=None, pool="max_mean", bn=None):
    """[N, 1, H, W] spatial gate of x1 [N, C, H, W]."""
    k = conv_weight.shape[-1]
    z = F.conv2d(spatial_pools(x1, pool), conv_weight, conv_bias, padding=k // 2)
    if bn is not None:
        ref = bn.weight if bn.weight is not None else bn.running_mean
        z = bn(z.to(ref.dtype) if ref is not None else z).to(z.dtype)
    return torch.sigmoid(z)


def cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias=None, *,
         channel_pool="avg_max", spatial_pool="max_mean", bn=None, return_gates=False):
    """Reference CBAM forward. MLP and conv parameters are cast to x's dtype (as a module
    converted with ``.half()`` would hold them); ``bn`` runs in its parameters' dtype.
    With ``return_gates``: ``(y, cg [N, C], sg [N, 1, H, W])``."""
    cast = [None if p is None else p.to(x.dtype) for p in (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)]
    fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias = cast
    cg = channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, channel_pool)
    x1 = x * cg[:, :, None, None]
    sg = spatial_gate(x1, conv_weight, conv_bias, spatial_pool, bn)
    y = x1 * sg
    return (y, cg, sg) if return_gates else y
