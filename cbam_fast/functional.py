"""Functional CBAM: input checks, backend dispatch, and the autograd function over the kernels.

Data path: ``CBAM.forward`` -> :func:`cbam` (checks, dispatch, parameter mapping) ->
``_CBAMFunction`` (autograd) -> ``cbam_fast.kernels.launch`` (launchers) -> ``@triton.jit`` kernels.

The kernels know one spatial conv: 2 -> 1 channels over ``[max, mean]``, plus a bias. Every other
spatial form maps onto it with differentiable PyTorch ops on the k x k weight (tiny), so autograd
carries the gradient back to the caller's parameters: the ``[mean, max]`` order is a flip, the
light single-channel pool ``conv(mean / 2 + max / 2, w)`` is ``conv([max, mean], [w / 2, w / 2])``,
and an eval-mode BatchNorm folds into the weight and bias. A training-mode BatchNorm needs the
batch statistics of the conv output, so the launcher computes that [N, 1, H, W] map with PyTorch
ops between the pooling and gating kernels (:class:`_BatchNormTrain`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import reference
from .kernels import KERNEL_SIZES, POOL_AVG, POOL_AVG_MAX, POOL_LIGHT, ChannelMLP, Saved, acc_dtype, cbam_backward, cbam_forward
from .kernels.channel import channel_pool_kernel

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CHANNEL_POOLS = {"avg_max": POOL_AVG_MAX, "avg": POOL_AVG, "light": POOL_LIGHT}
SPATIAL_POOLS = ("max_mean", "mean_max", "light")


def backend() -> str:
    """The backend chosen by ``CBAM_FAST_BACKEND`` (read at every call):

    * ``auto`` (default): Triton kernels for CUDA tensors, PyTorch ops for CPU tensors;
    * ``triton``: always the Triton kernels (CPU tensors need ``TRITON_INTERPRET=1`` set before
      cbam_fast is imported: they then run through the Triton interpreter);
    * ``torch``: always the PyTorch reference ops.
    """
    value = os.environ.get("CBAM_FAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"CBAM_FAST_BACKEND must be one of {', '.join(BACKENDS)}; got {value!r}")
    return value


def kernels_interpreted() -> bool:
    """True when the Triton kernels were loaded under ``TRITON_INTERPRET=1`` (they run on CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(channel_pool_kernel, InterpretedFunction)


# ----------------------------------------------------------------------------- checks


def _check_param(name, p, shape, x):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"cbam: {name} must be a torch.Tensor, got {type(p).__name__}")
    if not p.dtype.is_floating_point or p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cbam: {name} must be float16, bfloat16, float32 or float64, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"cbam: {name} is on {p.device} but the input is on {x.device}; move both to one device")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"cbam: {name} has shape {tuple(p.shape)}, expected {tuple(shape)}")


def check_kernel_size(kernel_size) -> None:
    """Raise ValueError unless kernel_size is one of the odd sizes the kernels are built for."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"cbam: kernel_size must be an int, got {type(kernel_size).__name__}")
    if kernel_size <= 0 or kernel_size % 2 == 0 or kernel_size not in KERNEL_SIZES:
        raise ValueError(
            f"cbam: kernel_size must be odd and positive, one of {KERNEL_SIZES}; got {kernel_size}"
        )


def check_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                 channel_pool="avg_max", spatial_pool="max_mean", bn=None) -> None:
    """Every bad input raises a TypeError/ValueError naming the problem, before any kernel runs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cbam: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"cbam: input must be 4-D [N, C, H, W], got {x.dim()}-D shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cbam: input must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if channel_pool not in CHANNEL_POOLS:
        raise ValueError(f"cbam: channel_pool must be one of {tuple(CHANNEL_POOLS)}, got {channel_pool!r}")
    if spatial_pool not in SPATIAL_POOLS:
        raise ValueError(f"cbam: spatial_pool must be one of {SPATIAL_POOLS}, got {spatial_pool!r}")
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"cbam: input must have C, H, W >= 1, got shape {tuple(x.shape)}")
    if not isinstance(fc1_weight, torch.Tensor) or fc1_weight.dim() != 2:
        raise ValueError("cbam: fc1_weight must be a 2-D tensor [hidden, C]")
    hidden, c_param = fc1_weight.shape
    if c_param != c:
        raise ValueError(f"cbam: input has {c} channels but the parameters are for {c_param} channels")
    if hidden < 1:
        raise ValueError("cbam: the MLP hidden width must be at least 1")
    _check_param("fc1_weight", fc1_weight, (hidden, c), x)
    if fc1_bias is not None:
        _check_param("fc1_bias", fc1_bias, (hidden,), x)
    if fc2_weight is None:
        if hidden != c:
            raise ValueError(f"cbam: a single-layer MLP (fc2_weight=None) needs fc1_weight [C, C], got {tuple(fc1_weight.shape)}")
        if fc2_bias is not None:
            raise ValueError("cbam: fc2_bias given without fc2_weight")
    else:
        _check_param("fc2_weight", fc2_weight, (c, hidden), x)
        if fc2_bias is not None:
            _check_param("fc2_bias", fc2_bias, (c,), x)
    if not isinstance(conv_weight, torch.Tensor) or conv_weight.dim() != 4:
        raise ValueError("cbam: conv_weight must be a 4-D tensor [1, 2, k, k] ([1, 1, k, k] for spatial_pool='light')")
    k = conv_weight.shape[-1]
    check_kernel_size(k)
    _check_param("conv_weight", conv_weight, (1, 1 if spatial_pool == "light" else 2, k, k), x)
    if conv_bias is not None:
        _check_param("conv_bias", conv_bias, (1,), x)
    if bn is not None:
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or bn.num_features != 1:
            raise TypeError("cbam: bn must be a BatchNorm2d(1) module (or None)")
        for name, t in (("bn.weight", bn.weight), ("bn.bias", bn.bias), ("bn.running_mean", bn.running_mean)):
            if t is not None and t.device != x.device:
                raise ValueError(f"cbam: {name} is on {t.device} but the input is on {x.device}; move both to one device")


# ----------------------------------------------------------------------------- parameter mapping


def _bn_uses_batch_stats(bn) -> bool:
    return bn.training or bn.running_mean is None


def _kernel_conv(conv_weight, conv_bias, spatial_pool, bn):
    """Map the caller's spatial conv (+ eval BatchNorm) onto the kernels' [max, mean] conv.
    Differentiable PyTorch ops on k x k tensors; the identity for the official layout."""
    wc = conv_weight
    if spatial_pool == "mean_max":
        wc = wc.flip(1)
    elif spatial_pool == "light":
        wc = torch.cat([wc, wc], dim=1) * 0.5
    bc = conv_bias
    if bn is not None and not _bn_uses_batch_stats(bn):
        scale = torch.rsqrt(bn.running_var.to(wc.dtype) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(wc.dtype)
        shift = -bn.running_mean.to(wc.dtype) * scale
        if bc is not None:
            shift = shift + bc * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(wc.dtype)
        wc, bc = wc * scale, shift
    return wc, bc


def _kernel_params(x, w1, b1, w2, b2, wc, bc):
    """Parameters as the kernels take them: acc dtype, contiguous, conv weight flattened.
    No copy for fp32 parameters with an fp16/bf16/fp32 input."""
    acc = acc_dtype(x.dtype)

    def prep(p):
        return None if p is None else p.detach().to(acc).contiguous()

    b1, b2 = prep(b1), prep(b2)
    if w2 is not None and (b1 is None) != (b2 is None):  # the kernels take both biases or neither
        b1 = b1 if b1 is not None else torch.zeros(w1.shape[0], dtype=acc, device=x.device)
        b2 = b2 if b2 is not None else torch.zeros(w2.shape[0], dtype=acc, device=x.device)
    return prep(w1), b1, prep(w2), b2, prep(wc).view(-1), prep(bc)


class _BatchNormTrain:
    """Training-mode BatchNorm2d(1) of the spatial conv output, exactly as nn.BatchNorm2d does it
    (batch statistics over N, H, W; running statistics and num_batches_tracked updated, momentum
    None meaning a cumulative average), on the small [N, 1, H, W] map, in the acc dtype."""

    def __init__(self, bn, weight, bias, wc, bc):
        self.bn, self.weight, self.bias, self.wc, self.bc = bn, weight, bias, wc, bc

    def preact(self, smap):
        """smap [N, 2, H, W] -> BN(conv(smap)) [N, 1, H, W]."""
        bn, acc = self.bn, smap.dtype
        k = self.wc.shape[-1]
        z = F.conv2d(smap, self.wc.detach().to(acc), None if self.bc is None else self.bc.detach().to(acc), padding=k // 2)
        count = z.numel()
        if count <= 1:
            raise ValueError(f"cbam: training-mode BatchNorm needs more than 1 value per channel, got input with N*H*W = {count}")
        mean = z.mean()
        var = z.var(unbiased=False)
        self.invstd = torch.rsqrt(var + bn.eps)
        self.zhat = (z - mean) * self.invstd
        self.gamma = 1.0 if self.weight is None else self.weight.detach().to(acc)
        beta = 0.0 if self.bias is None else self.bias.detach().to(acc)
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                if bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.add_(1)
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - factor).add_(factor * mean.to(bn.running_mean.dtype))
                unbiased = var * count / (count - 1)
                bn.running_var.mul_(1 - factor).add_(factor * unbiased.to(bn.running_var.dtype))
        return self.zhat * self.gamma + beta

    def backward(self, du):
        """dL/d BN output [N, 1, H, W] -> dL/d conv output; records the BN parameter gradients."""
        zhat = self.zhat
        self.dweight = (du * zhat).sum().reshape(1)
        self.dbias = du.sum().reshape(1)
        return self.gamma * self.invstd * (du - du.mean() - zhat * (du * zhat).mean())


# ----------------------------------------------------------------------------- autograd


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on a gradient; differentiating through it raises a clear error."""

    @staticmethod
    def forward(ctx, grad):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "cbam_fast: double backward (differentiating the gradients of CBAM, create_graph=True) "
            "is not supported; use CBAM_FAST_BACKEND=torch for higher-order gradients"
        )


def _gates(saved, shape):
    """The channel gate [N, C] and spatial gate [N, 1, H, W] from the saved pre-activations
    (two tiny sigmoids, done only when asked for)."""
    N, _, H, W = shape
    return torch.sigmoid(saved.a), torch.sigmoid(saved.z).view(N, 1, H, W)


def _run_forward(x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, mlp, bn):
    params = _kernel_params(x, w1, b1, w2, b2, wc, bc)
    bn_train = None
    if bn is not None:  # only batch-statistics BatchNorm reaches here; eval BN is folded into wc, bc
        bn_train = _BatchNormTrain(bn, bn_weight, bn_bias, wc, bc)
    y, saved = cbam_forward(x, *params, mlp=mlp, spatial_preact=None if bn_train is None else bn_train.preact)
    return y, saved, bn_train


class _CBAMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, mlp, bn):
        y, saved, bn_train = _run_forward(x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, mlp, bn)
        # Only x (already held by the caller), the parameters and the small gate maps are kept.
        ctx.save_for_backward(x, saved.a, saved.z, saved.smap, saved.sidx, w1, b1, w2, b2, wc, bc)
        ctx.mlp, ctx.bn_train = mlp, bn_train
        cg, sg = _gates(saved, x.shape)
        ctx.mark_non_differentiable(cg, sg)
        return y, cg, sg

    @staticmethod
    def backward(ctx, dy, _dcg, _dsg):
        x, a, z, smap, sidx, w1, b1, w2, b2, wc, bc = ctx.saved_tensors
        kw1, kb1, kw2, _, kwc, _ = _kernel_params(x, w1, b1, w2, b2, wc, bc)
        need = ctx.needs_input_grad
        bn_train = ctx.bn_train
        dx, mlp_grads, conv_grads, _ = cbam_backward(
            dy, x, Saved(a=a, z=z, smap=smap, sidx=sidx), kw1, kb1, kw2, kwc,
            need_x=need[0], need_mlp=any(need[1:5]), need_conv=any(need[5:7]), mlp=ctx.mlp,
            dz_hook=None if bn_train is None else bn_train.backward,
        )
        grads = [dx] + [None] * 10
        if mlp_grads is not None:
            for i, (g, p) in enumerate(zip(mlp_grads, (w1, b1, w2, b2)), start=1):
                if need[i] and g is not None and p is not None:
                    grads[i] = g.to(p.dtype)
        if conv_grads is not None:
            dwc, dbc = conv_grads
            if need[5]:
                grads[5] = dwc.view_as(wc).to(wc.dtype)
            if need[6] and bc is not None:
                grads[6] = dbc.to(bc.dtype)
        if bn_train is not None:
            for i, g, p in ((7, bn_train.dweight, bn_train.weight), (8, bn_train.dbias, bn_train.bias)):
                if need[i] and p is not None:
                    grads[i] = g.to(p.dtype)
        if torch.is_grad_enabled():  # create_graph=True: mark the gradients as not differentiable
            grads = [None if g is None else _NoDoubleBackward.apply(g.detach().requires_grad_()) for g in grads]
        return tuple(grads)


def cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias=None, *,
         channel_pool="avg_max", spatial_pool="max_mean", bn=None, return_gates=False):
    """CBAM forward: ``y = x * cg * sg`` (see :mod:`cbam_fast.reference` for the math).

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or channels_last (served without
           a copy; other strides are copied). ``N = 0`` returns an empty output.
        fc1_weight ``[hidden, C]``, fc1_bias ``[hidden]`` or None, fc2_weight ``[C, hidden]``,
        fc2_bias ``[C]`` or None: the shared MLP ``fc2(relu(fc1(.)))``; ``fc2_weight=None``: the
           single layer ``fc1`` (``[C, C]``, no ReLU).
        conv_weight ``[1, 2, k, k]`` (``[1, 1, k, k]`` for ``spatial_pool="light"``), k in 3, 5, 7;
           conv_bias ``[1]`` or None.
        channel_pool: ``"avg_max"``, ``"avg"`` or ``"light"``; spatial_pool: ``"max_mean"``,
           ``"mean_max"`` or ``"light"`` (the conv's input channel order).
        bn: None or a ``BatchNorm2d(1)`` on the conv output, used in its own train/eval mode
           (training mode updates its running statistics like nn.BatchNorm2d).
        return_gates: also return the channel gate ``[N, C]`` and spatial gate ``[N, 1, H, W]``
           (acc dtype, no extra pass over x; not differentiable).

    Returns ``y`` with x's shape, dtype and memory format (and the gates with ``return_gates``).
    Differentiable in x and every parameter.
    """
    check_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, channel_pool, spatial_pool, bn)
    chosen = backend()
    if chosen == "torch" or (chosen == "auto" and not x.is_cuda):
        return reference.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                              channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn, return_gates=return_gates)
    if not x.is_cuda and not kernels_interpreted():
        raise RuntimeError(
            "cbam: CBAM_FAST_BACKEND=triton on a CPU tensor needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before importing cbam_fast, or use CBAM_FAST_BACKEND=auto"
        )
    N, C, H, W = x.shape
    if N == 0:
        y = torch.empty_like(x)
        acc = acc_dtype(x.dtype)
        gates = (x.new_empty((0, C), dtype=acc), x.new_empty((0, 1, H, W), dtype=acc))
        return (y, *gates) if return_gates else y

    wc, bc = _kernel_conv(conv_weight, conv_bias, spatial_pool, bn)
    bn_batch = bn if bn is not None and _bn_uses_batch_stats(bn) else None
    bn_weight = None if bn_batch is None else bn_batch.weight
    bn_bias = None if bn_batch is None else bn_batch.bias
    mlp = ChannelMLP(pool=CHANNEL_POOLS[channel_pool], two_layer=fc2_weight is not None)
    args = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, wc, bc, bn_weight, bn_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y, cg, sg = _CBAMFunction.apply(*args, mlp, bn_batch)
    else:
        y, saved, _ = _run_forward(*args, mlp, bn_batch)
        cg, sg = _gates(saved, x.shape)
    return (y, cg, sg) if return_gates else y
