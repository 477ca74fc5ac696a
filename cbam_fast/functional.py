"""Functional CBAM: input checks, backend dispatch, and the autograd function over the kernels.

Data path: ``CBAM.forward`` -> :func:`cbam` (checks, dispatch) -> ``_CBAMFunction`` (autograd)
-> ``cbam_fast.kernels.launch`` (launchers) -> ``@triton.jit`` kernels.
"""

from __future__ import annotations

import os

import torch

from . import reference
from .kernels import KERNEL_SIZES, Saved, acc_dtype, cbam_backward, cbam_forward
from .kernels.channel import channel_pool_kernel

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def check_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias) -> None:
    """Every bad input raises a TypeError/ValueError naming the problem, before any kernel runs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cbam: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"cbam: input must be 4-D [N, C, H, W], got {x.dim()}-D shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cbam: input must be float16, bfloat16, float32 or float64, got {x.dtype}")
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
    _check_param("fc2_weight", fc2_weight, (c, hidden), x)
    if fc1_bias is not None:
        _check_param("fc1_bias", fc1_bias, (hidden,), x)
    if fc2_bias is not None:
        _check_param("fc2_bias", fc2_bias, (c,), x)
    if not isinstance(conv_weight, torch.Tensor) or conv_weight.dim() != 4:
        raise ValueError("cbam: conv_weight must be a 4-D tensor [1, 2, k, k]")
    k = conv_weight.shape[-1]
    check_kernel_size(k)
    _check_param("conv_weight", conv_weight, (1, 2, k, k), x)
    if conv_bias is not None:
        _check_param("conv_bias", conv_bias, (1,), x)


# ----------------------------------------------------------------------------- kernel path


def _kernel_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias):
    """Parameters as the kernels take them: acc dtype, contiguous, conv weight flattened.
    No copy for fp32 parameters with an fp16/bf16/fp32 input."""
    acc = acc_dtype(x.dtype)

    def prep(p):
        return None if p is None else p.detach().to(acc).contiguous()

    b1, b2 = prep(fc1_bias), prep(fc2_bias)
    if (b1 is None) != (b2 is None):  # one bias only: the kernels take both or neither
        b1 = b1 if b1 is not None else torch.zeros(fc1_weight.shape[0], dtype=acc, device=x.device)
        b2 = b2 if b2 is not None else torch.zeros(fc2_weight.shape[0], dtype=acc, device=x.device)
    return prep(fc1_weight), b1, prep(fc2_weight), b2, prep(conv_weight).view(-1), prep(conv_bias)


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


class _CBAMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias):
        params = _kernel_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
        y, saved = cbam_forward(x, *params)
        # Only x (already held by the caller), the parameters and the small gate maps are kept.
        ctx.save_for_backward(x, saved.cg, saved.sg, saved.smap, saved.sidx,
                              fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, cg, sg, smap, sidx, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias = ctx.saved_tensors
        w1, b1, w2, _, wc, _ = _kernel_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
        need = ctx.needs_input_grad
        dx, mlp_grads, conv_grads = cbam_backward(
            dy, x, Saved(cg=cg, sg=sg, smap=smap, sidx=sidx), w1, b1, w2, wc,
            need_x=need[0], need_mlp=any(need[1:5]), need_conv=any(need[5:7]),
        )
        grads = [dx, None, None, None, None, None, None]
        if mlp_grads is not None:
            for i, (g, p) in enumerate(zip(mlp_grads, (fc1_weight, fc1_bias, fc2_weight, fc2_bias)), start=1):
                if need[i] and g is not None:
                    grads[i] = g.to(p.dtype)
        if conv_grads is not None:
            dwc, dbc = conv_grads
            if need[5]:
                grads[5] = dwc.view_as(conv_weight).to(conv_weight.dtype)
            if need[6] and conv_bias is not None:
                grads[6] = dbc.to(conv_bias.dtype)
        if torch.is_grad_enabled():  # create_graph=True: mark the gradients as not differentiable
            grads = [None if g is None else _NoDoubleBackward.apply(g.detach().requires_grad_()) for g in grads]
        return tuple(grads)


def cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias=None):
    """CBAM forward: ``y = x * cg * sg`` (official semantics, see :mod:`cbam_fast.reference`).

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or channels_last (served without
           a copy; other strides are copied). ``N = 0`` returns an empty output.
        fc1_weight ``[hidden, C]``, fc1_bias ``[hidden]`` or None, fc2_weight ``[C, hidden]``,
        fc2_bias ``[C]`` or None: the shared MLP ``fc2(relu(fc1(.)))``.
        conv_weight ``[1, 2, k, k]`` (k in 3, 5, 7) over the [max, mean] channel pools; conv_bias
        ``[1]`` or None.

    Returns ``y`` with x's shape, dtype and memory format. Differentiable in x and every parameter.
    """
    check_inputs(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
    chosen = backend()
    if chosen == "torch" or (chosen == "auto" and not x.is_cuda):
        return reference.cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
    if not x.is_cuda and not kernels_interpreted():
        raise RuntimeError(
            "cbam: CBAM_FAST_BACKEND=triton on a CPU tensor needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before importing cbam_fast, or use CBAM_FAST_BACKEND=auto"
        )
    if x.shape[0] == 0:
        return torch.empty_like(x)
    args = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _CBAMFunction.apply(*args)
    y, _ = cbam_forward(x, *_kernel_params(*args))
    return y
