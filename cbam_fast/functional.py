"""Functional CBAM: input checks, backend dispatch, and the autograd function over the kernels.

Data path: ``CBAM.forward`` -> :func:`cbam` (checks, dispatch, parameter mapping) ->
``torch.ops.cbam_fast.forward`` / ``backward`` (registered ops with autograd, :mod:`cbam_fast.ops`)
-> ``cbam_fast.kernels.launch`` (launchers) -> ``@triton.jit`` kernels.

The kernels read the spatial conv's weight in the caller's own layout (``[max, mean]``,
``[mean, max]``, or the light single-channel pool ``conv(mean / 2 + max / 2, w)``, as the
constexpr ``CONV_FORM``), and apply the spatial BatchNorm themselves (eval: running statistics;
training: batch statistics from one small kernel, and one single-program kernel updating the
running statistics in place), so a call launches no PyTorch op on the parameters or buffers.
"""

from __future__ import annotations

import os

import torch
import torch.autograd.forward_ad as _forward_ad

from . import reference
from . import ops  # registers torch.ops.cbam_fast.*
from .kernels import KERNEL_SIZES, POOL_AVG, POOL_AVG_MAX, POOL_LIGHT, acc_dtype
from .kernels import launch, plan
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


def _check_dense(name, t):
    if t.layout != torch.strided:
        raise TypeError(f"cbam: {name} must be a dense (strided) tensor, got layout {t.layout}")


def _check_param(name, p, shape, x):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"cbam: {name} must be a torch.Tensor, got {type(p).__name__}")
    _check_dense(name, p)
    if not p.dtype.is_floating_point or p.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cbam: {name} must be float16, bfloat16, float32 or float64, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"cbam: {name} is on {p.device} but the input is on {x.device}; move both to one device")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"cbam: {name} has shape {tuple(p.shape)}, expected {tuple(shape)}")


def check_kernel_size(kernel_size) -> None:
    """Raise ValueError unless kernel_size is one of the odd sizes the kernels are built for."""
    if isinstance(kernel_size, torch.Tensor) and kernel_size.dim() == 0 and not kernel_size.is_floating_point():
        kernel_size = int(kernel_size)  # a traced shape (TorchScript ONNX export)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"cbam: kernel_size must be an int, got {type(kernel_size).__name__}")
    if kernel_size <= 0 or kernel_size % 2 == 0 or kernel_size not in KERNEL_SIZES:
        raise ValueError(
            f"cbam: kernel_size must be odd and positive, one of {KERNEL_SIZES}; got {kernel_size}"
        )


def check_mlp(who, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> None:
    """The channel MLP's parameters for x (``[N, C, H, W]``): ``fc1_weight`` ``[hidden, C]`` (hidden
    >= 1), ``fc2_weight`` ``[C, hidden]`` or None (then one ``[C, C]`` layer), biases to match;
    a ValueError/TypeError naming the problem, prefixed by ``who``."""
    c = x.shape[1]
    if not isinstance(fc1_weight, torch.Tensor) or fc1_weight.dim() != 2:
        raise ValueError(f"{who}: fc1_weight must be a 2-D tensor [hidden, C]")
    hidden, c_param = fc1_weight.shape
    if c_param != c:
        raise ValueError(f"{who}: input has {c} channels but the parameters are for {c_param} channels")
    if hidden < 1:
        raise ValueError(f"{who}: the MLP hidden width must be at least 1")
    _check_param("fc1_weight", fc1_weight, (hidden, c), x)
    if fc1_bias is not None:
        _check_param("fc1_bias", fc1_bias, (hidden,), x)
    if fc2_weight is None:
        if hidden != c:
            raise ValueError(f"{who}: a single-layer MLP (fc2_weight=None) needs fc1_weight [C, C], got "
                             f"{tuple(fc1_weight.shape)}")
        if fc2_bias is not None:
            raise ValueError(f"{who}: fc2_bias given without fc2_weight")
    else:
        _check_param("fc2_weight", fc2_weight, (c, hidden), x)
        if fc2_bias is not None:
            _check_param("fc2_bias", fc2_bias, (c,), x)


def check_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                 channel_pool="avg_max", spatial_pool="max_mean", bn=None) -> None:
    """Every bad input raises a TypeError/ValueError naming the problem, before any kernel runs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cbam: input must be a torch.Tensor, got {type(x).__name__}")
    _check_dense("input", x)
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
    check_mlp("cbam", x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
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
        if _bn_uses_batch_stats(bn) and n * h * w == 1:  # nn.BatchNorm2d's own rule, checked before any launch
            raise ValueError(f"cbam: training-mode BatchNorm needs more than 1 value per channel, got N*H*W = 1 "
                             f"(input shape {tuple(x.shape)})")


# ----------------------------------------------------------------------------- parameter mapping


def _bn_uses_batch_stats(bn) -> bool:
    return bn.training or bn.running_mean is None


# the conv's input layout, as the kernels read the caller's weight (no flip or concatenation op)
CONV_FORMS = {"max_mean": launch.CONV_MAX_MEAN, "mean_max": launch.CONV_MEAN_MAX, "light": launch.CONV_LIGHT}


def under_transform(*tensors) -> bool:
    """True inside a ``torch.func`` transform (grad, vjp, jvp, jacrev, jacfwd, vmap, hessian,
    functionalize), or when one of ``tensors`` is a forward-mode AD dual tensor
    (``torch.autograd.forward_ad.make_dual``): the calls :func:`cbam` serves with the reference ops."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None:
        if active():
            return True
    elif torch._C._functorch.maybe_current_level() is not None:
        return True
    if _forward_ad._current_level < 0:  # no forward-mode AD level is open: no tensor is dual
        return False
    return any(t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors)


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
    if under_transform(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                       None if bn is None else bn.weight, None if bn is None else bn.bias):
        # torch.func transforms and forward-mode AD: the registered op has no vmap or forward-mode
        # rule (a custom_op gives zero tangents), so these calls take the exact reference math,
        # which every transform differentiates / batches correctly (gates as the op path returns them)
        out = reference.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                             channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn, return_gates=return_gates)
        if not return_gates:
            return out
        acc = acc_dtype(x.dtype)
        return out[0], out[1].detach().to(acc), out[2].detach().to(acc)
    chosen = backend()
    # ONNX has no cbam_fast op: an export records the reference math (standard ONNX ops; global
    # pools as ReduceMean/ReduceMax, so none of adaptive max pooling's export problems)
    if torch.onnx.is_in_onnx_export():
        return reference.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                              channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn, return_gates=return_gates)
    if chosen == "torch" or (chosen == "auto" and not x.is_cuda):  # the reference's numbers, faster on CPU
        from . import cpu  # (non-CPU tensors: cpu.cbam hands them to reference.cbam)

        return cpu.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                        channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn, return_gates=return_gates)
    if not x.is_cuda and not kernels_interpreted() and not plan.dry_run():
        raise RuntimeError(
            "cbam: CBAM_FAST_BACKEND=triton on a CPU tensor needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before importing cbam_fast, or use CBAM_FAST_BACKEND=auto"
        )
    N, C, H, W = x.shape
    if N == 0:  # an empty batch: nothing to launch; the reference gives the empty output and
        # (zero) gradients for every parameter, in the graph like any other call
        y, cg, sg = reference.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                                   channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn, return_gates=True)
        acc = acc_dtype(x.dtype)
        return (y, cg.detach().to(acc), sg.detach().to(acc)) if return_gates else y

    bn_batch = bn is not None and _bn_uses_batch_stats(bn)
    if bn is None:
        bn_args = (None, None, None, None, ops.BN_NONE, 0.0)
    elif bn_batch:
        bn_args = (bn.weight, bn.bias, None, None, ops.BN_BATCH, float(bn.eps))
    else:
        bn_args = (bn.weight, bn.bias, bn.running_mean, bn.running_var, ops.BN_RUNNING, float(bn.eps))
    y, a, z, _, _, _, stats = torch.ops.cbam_fast.forward(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, *bn_args,
        CHANNEL_POOLS[channel_pool], fc2_weight is not None, CONV_FORMS[spatial_pool],
    )
    if bn_batch and bn.training and bn.track_running_stats and bn.running_mean is not None:
        # as nn.BatchNorm2d, in place: one single-program kernel (no PyTorch op on the scalars)
        torch.ops.cbam_fast.bn_update(bn.running_mean, bn.running_var, bn.num_batches_tracked, stats.detach(),
                                      -1.0 if bn.momentum is None else float(bn.momentum))
    if not return_gates:
        return y
    return y, torch.sigmoid(a).detach(), torch.sigmoid(z).detach().view(N, 1, H, W)
