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
    return spatial_maps(x1.mean(dim=1, keepdim=True), x1.max(dim=1, keepdim=True).values, pool, x1.shape)


def spatial_gate(x1, conv_weight, conv_bias=None, pool="max_mean", bn=None):
    """[N, 1, H, W] spatial gate of x1 [N, C, H, W]."""
    return torch.sigmoid(spatial_excite(conv_weight, conv_bias, bn)(spatial_pools(x1, pool)))


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


# ----------------------------------------------------------------------------- the gate family

ACTIVATIONS = ("relu", "silu")
GATES = ("sigmoid", "hard_sigmoid")


def activation(h, act="relu"):
    """The MLP's hidden activation: ``"relu"`` or ``"silu"`` (timm's ``act_layer``)."""
    if act == "relu":
        return F.relu(h)
    if act == "silu":
        return F.silu(h)
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


def apply_gate(a, gate="sigmoid"):
    """The gate: ``"sigmoid"`` or ``"hard_sigmoid"`` (``F.hardsigmoid``, ``relu6(a + 3) / 6``:
    what timm's ``create_act_layer('hard_sigmoid')`` builds)."""
    if gate == "sigmoid":
        return torch.sigmoid(a)
    if gate == "hard_sigmoid":
        return F.hardsigmoid(a)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def mlp_excite(fc1_weight, fc1_bias=None, fc2_weight=None, fc2_bias=None, act="relu", dtype=None):
    """The two-layer MLP ``fc2(act(fc1(v)))`` (``fc2_weight=None``: the single layer ``fc1(v)``)
    on a pooled ``[N, C]`` vector, as a callable; parameters cast to ``dtype`` (x's) when given."""
    def cast(p):
        return p if p is None or dtype is None else p.to(dtype)

    w1, b1, w2, b2 = cast(fc1_weight), cast(fc1_bias), cast(fc2_weight), cast(fc2_bias)

    def excite(v):
        h = F.linear(v, w1, b1)
        return h if w2 is None else F.linear(activation(h, act), w2, b2)
    return excite


def combine_pools(excite, mean, mx, pool):
    """The excitation of the pooled vectors: ``"avg"`` ``excite(mean)``; ``"avg_max"``
    ``excite(mean) + excite(max)`` (CBAM's shared MLP on each pool, summed); ``"light"``
    ``excite(0.5 * mean + 0.5 * max)`` (timm's ``add_maxpool``, one pass)."""
    if pool == "avg":
        return excite(mean)
    if pool == "avg_max":
        return excite(mean) + excite(mx)
    if pool == "light":
        return excite(0.5 * mean + 0.5 * mx)
    raise ValueError(f"pool must be one of {CHANNEL_POOLS}, got {pool!r}")


def channel_attention(x, fc1_weight=None, fc1_bias=None, fc2_weight=None, fc2_bias=None, *, pool="avg",
                      act="relu", gate="sigmoid", excite=None, return_gate=False):
    """Reference channel gate (squeeze-and-excitation): ``y = x * gate(E(pools of x))``.

    ``E`` is the MLP ``fc2(act(fc1(.)))`` (``fc2_weight=None``: the single layer ``fc1``),
    parameters cast to x's dtype, or ``excite``, any callable on ``[N, C]`` in x's dtype. Pools
    over H, W: mean, and for ``pool`` ``"avg_max"`` / ``"light"`` the max (``torch.max``: the
    gradient goes to one maximal element). With ``return_gate``: ``(y, gate [N, C])``."""
    flat = x.flatten(2)
    mean = flat.mean(dim=2)
    mx = flat.max(dim=2).values if pool != "avg" else None
    if excite is None:
        excite = mlp_excite(fc1_weight, fc1_bias, fc2_weight, fc2_bias, act, x.dtype)
    g = apply_gate(combine_pools(excite, mean, mx, pool), gate)
    y = x * g[:, :, None, None]
    return (y, g) if return_gate else y


def spatial_maps(mean, mx, pool, shape):
    """The spatial gate's conv input ``[N, 2, H, W]`` (``[N, 1, H, W]`` for ``"light"``) from the
    pools over channels ``mean``, ``mx`` (``[N, H*W]`` or ``[N, 1, H, W]``)."""
    N, _, H, W = shape
    mean, mx = mean.reshape(N, 1, H, W), mx.reshape(N, 1, H, W)
    if pool == "max_mean":
        return torch.cat([mx, mean], dim=1)
    if pool == "mean_max":
        return torch.cat([mean, mx], dim=1)
    if pool == "light":
        return 0.5 * mean + 0.5 * mx
    raise ValueError(f"spatial_pool must be one of {SPATIAL_POOLS}, got {pool!r}")


def spatial_excite(conv_weight, conv_bias=None, bn=None, dtype=None):
    """The spatial gate's tiny step as a callable on the pooled maps: the k x k 'same' conv
    (parameters cast to ``dtype`` when given), then ``bn`` (a BatchNorm2d(1), in its own mode and
    its parameters' dtype) when given."""
    w = conv_weight if dtype is None else conv_weight.to(dtype)
    b = conv_bias if conv_bias is None or dtype is None else conv_bias.to(dtype)
    k = conv_weight.shape[-1]

    def excite(maps):
        z = F.conv2d(maps, w, b, padding=k // 2)
        if bn is not None:
            ref = bn.weight if bn.weight is not None else bn.running_mean
            z = bn(z.to(ref.dtype) if ref is not None else z).to(z.dtype)
        return z
    return excite


def spatial_attention(x, conv_weight, conv_bias=None, *, pool="mean_max", gate="sigmoid", bn=None,
                      return_gate=False):
    """Reference spatial gate (CBAM's spatial half alone): ``y = x * gate(conv(maps))`` with the
    maps the mean and max over channels (``torch.max``) in the order ``pool`` names
    (:func:`spatial_maps`), the conv ``[1, 2, k, k]`` (``[1, 1, k, k]`` for ``"light"``), then
    ``bn`` when given. With ``return_gate``: ``(y, gate [N, 1, H, W])``."""
    mean = x.mean(dim=1, keepdim=True)
    mx = x.max(dim=1, keepdim=True).values
    g = apply_gate(spatial_excite(conv_weight, conv_bias, bn, x.dtype)(spatial_maps(mean, mx, pool, x.shape)), gate)
    y = x * g
    return (y, g) if return_gate else y
