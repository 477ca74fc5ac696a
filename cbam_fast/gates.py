"""The pooled-gate family: CBAM's channel half alone (squeeze-and-excitation) and its spatial
half alone, as functional forms over fused Triton passes.

Data path: :func:`channel_attention` / :func:`spatial_attention` (checks, dispatch) ->
:class:`_PooledGate` (autograd) -> the registered ops ``torch.ops.cbam_fast.gate_*`` -> the
launchers (kernels/gate_launch.py) -> the kernels (kernels/gate.py).

Every full-size pass is a fused kernel: the forward reads x to pool it (mean, max and argmax
over the pooled axis) and again to write ``y = x * g``; the backward reads x and dy once to form
``dg = sum dy * x`` and dy again to write ``dx`` (the pools' gradients folded in). Nothing
full-size is saved besides x. The tiny step between them, on ``[N, C]`` (or ``[N, H*W]``):

* the channel gate's plain MLP (one or two layers, ReLU or SiLU, optional biases; sigmoid or
  hard_sigmoid): folded into the two forward launches (CBAM's channel pooling pass computes the
  hidden vector per sample, the scale pass the second layer and the gate per channel block), so
  the forward is 2 launches and nothing else; its backward is 3 launches and nothing else (the
  first pass pools x again and runs the MLP's backward from the forward's hidden vector, the
  second writes the parameter gradients, the third dx);
* anything else (a norm on the hidden vector, ECA's 1-D conv, the spatial k x k conv and its
  BatchNorm, a callable the caller gives): PyTorch ops with autograd between the passes, its
  backward between the two backward passes on the graph its forward recorded (so a BatchNorm in
  it updates its running statistics once, as in eager).

Served by the kernels: CUDA tensors (and CPU tensors with ``CBAM_FAST_BACKEND=triton`` under
the Triton interpreter). The exact PyTorch math of :mod:`cbam_fast.reference` serves CPU
tensors, ``torch.func`` transforms, forward-mode AD, ``torch.compile`` / export tracing
(Inductor fuses the reference chain itself), ``torch.jit.trace`` and ONNX export.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import reference
from .functional import FLOAT_DTYPES, _check_dense, _check_param, backend, check_kernel_size, check_mlp
from .functional import kernels_interpreted
from .functional import under_transform
from .kernels import acc_dtype
from .kernels import gate_launch
from .kernels.gate_launch import AXIS_CHANNEL, AXIS_SPATIAL, GATE_HARD_SIGMOID, GATE_SIGMOID
from .kernels.launch import ACT_RELU, ACT_SILU, POOL_AVG, POOL_AVG_MAX, POOL_LIGHT, ChannelMLP, layout_of
from .kernels.launch import prepare_input
from .ops import _device_guard, kernel_mlp_params, output_format

CHANNEL_POOLS = ("avg", "avg_max", "light")
SPATIAL_POOLS = ("mean_max", "max_mean", "light")
ACTIVATIONS = reference.ACTIVATIONS
GATES = reference.GATES


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("cbam_fast::gate_pool", mutates_args=())
def gate_pool_op(x: Tensor, axis: int, need_max: bool) -> tuple[Tensor, Tensor]:
    """Mean (and with ``need_max`` max) of x over the pooled axis, ``[N, 2, K]`` (``[N, 1, K]``) acc dtype, and the
    first argmax ``[N, K]`` int32 (empty without ``need_max``). x in a served layout."""
    with _device_guard(x):
        _, v, idx = gate_launch.gate_pool(x, axis, need_max)
    return v, idx if idx is not None else x.new_empty(0, dtype=torch.int32)


@gate_pool_op.register_fake
def _(x, axis, need_max):
    K = _kept(x, axis)
    acc = acc_dtype(x.dtype)
    return (x.new_empty((x.shape[0], 2 if need_max else 1, K), dtype=acc),
            x.new_empty((x.shape[0], K) if need_max else (0,), dtype=torch.int32))


@torch.library.custom_op("cbam_fast::gate_scale", mutates_args=())
def gate_scale_op(x: Tensor, gate: Tensor, axis: int) -> Tensor:
    """``x * gate`` broadcast along the pooled axis (``gate`` ``[N, K]`` acc dtype), in x's dtype
    and memory format."""
    with _device_guard(x):
        return gate_launch.gate_scale(x, gate.contiguous(), axis)


@gate_scale_op.register_fake
def _(x, gate, axis):
    return torch.empty_like(x, memory_format=output_format(x))


@torch.library.custom_op("cbam_fast::spatial_gate", mutates_args=())
def spatial_gate_op(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], pool: str) -> Tensor:
    """The spatial gate alone, ``x * sigmoid(conv(maps) + bias)``, in 2 launches (no ATen op): for
    calls with nothing to differentiate. x in a served layout; the conv weight in the order
    ``pool`` names, each parameter in its own dtype (the kernels upcast)."""
    with _device_guard(x):
        return gate_launch.spatial_gate(x, conv_weight.detach().contiguous().view(-1),
                                        None if conv_bias is None else conv_bias.detach().contiguous(), pool)


@spatial_gate_op.register_fake
def _(x, conv_weight, conv_bias, pool):
    return torch.empty_like(x, memory_format=output_format(x))


@torch.library.custom_op("cbam_fast::gate_bwd_reduce", mutates_args=())
def gate_bwd_reduce_op(dy: Tensor, x: Tensor, axis: int, pools: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``sum dy * x`` over the pooled axis, ``[N, K]`` acc dtype; with ``pools`` (a forward that
    kept none) x's pools again: 1 the mean ``[N, 1, K]``, 2 mean and max ``[N, 2, K]`` and the
    argmax ``[N, K]`` int32 (empty where not computed)."""
    with _device_guard(x):
        dg, v, idx = gate_launch.gate_bwd_reduce(dy, x, axis, pools)
    empty = x.new_empty(0, dtype=dg.dtype)
    return dg, empty if v is None else v, x.new_empty(0, dtype=torch.int32) if idx is None else idx


@gate_bwd_reduce_op.register_fake
def _(dy, x, axis, pools=0):
    N, K, acc = x.shape[0], _kept(x, axis), acc_dtype(x.dtype)
    return (x.new_empty((N, K), dtype=acc), x.new_empty((N, pools, K) if pools else (0,), dtype=acc),
            x.new_empty((N, K) if pools == 2 else (0,), dtype=torch.int32))


@torch.library.custom_op("cbam_fast::gate_mlp_forward", mutates_args=())
def gate_mlp_forward_op(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor],
                        pool: int, act: int, gate: int) -> tuple[Tensor, Tensor, Tensor]:
    """The channel gate with its MLP folded into the two passes: ``x * gate(fc2(act(fc1(pools))))``
    (``w2`` None: the single layer ``fc1``), x in a served layout, parameters in their own dtype;
    ``pool``, ``act``, ``gate``: the launchers' codes (kernels/launch.py POOL_*, ACT_*;
    kernels/gate_launch.py GATE_*). Returns ``y`` and what the backward needs, acc dtype: ``ha``
    ``[N, hidden]`` the summed hidden activation (one layer: the gate's pre-activation ``[N, C]``)
    and ``pre`` ``[N, 2, hidden]`` the two branches' pre-activations (empty for one layer)."""
    w1, b1, w2, b2 = kernel_mlp_params(x, w1, b1, w2, b2)
    with _device_guard(x):
        y, ha, pre = gate_launch.gate_mlp_forward(x, w1, b1, w2, b2, ChannelMLP(pool, w2 is not None), act, gate)
    return y, ha, pre if pre is not None else ha.new_empty(0)


@gate_mlp_forward_op.register_fake
def _(x, w1, b1, w2, b2, pool, act, gate):
    N, acc = x.shape[0], acc_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=output_format(x)), x.new_empty((N, w1.shape[0]), dtype=acc),
            x.new_empty((N, 2, w1.shape[0]) if w2 is not None else (0,), dtype=acc))


@torch.library.custom_op("cbam_fast::gate_mlp_backward", mutates_args=())
def gate_mlp_backward_op(dy: Tensor, x: Tensor, ha: Tensor, pre: Tensor, w1: Tensor, b1: Optional[Tensor],
                         w2: Optional[Tensor], b2: Optional[Tensor], pool: int, act: int, gate: int, need_x: bool,
                         need_params: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The folded MLP gate's backward (3 launches, no other op): gradients for x, w1, b1, w2, b2,
    each in its own dtype (an empty tensor where not asked for, or for an absent parameter).
    ``ha``, ``pre``: :func:`gate_mlp_forward_op`'s; x in a served layout, dy in any strides."""
    kw1, kb1, kw2, kb2 = kernel_mlp_params(x, w1, b1, w2, b2)
    with _device_guard(x):
        dx, grads = gate_launch.gate_mlp_backward(dy, x, ha, pre if pre.numel() else None, kw1, kb1, kw2, kb2,
                                                  ChannelMLP(pool, w2 is not None), act, gate, need_x, need_params)
    dw1, db1, dw2, db2 = grads if grads is not None else (None,) * 4
    # a bias the caller did not give was zero-filled for the kernels: it gets no gradient
    db1 = db1 if b1 is not None else None
    db2 = db2 if b2 is not None else None
    return tuple(ha.new_empty(0) if t is None else t for t in (dx, dw1, db1, dw2, db2))


@gate_mlp_backward_op.register_fake
def _(dy, x, ha, pre, w1, b1, w2, b2, pool, act, gate, need_x, need_params):
    def like(p):
        return torch.empty(p.shape, dtype=p.dtype, device=p.device) if need_params and p is not None \
            else ha.new_empty(0)

    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x)) if need_x \
        else ha.new_empty(0)
    return (dx, like(w1), like(b1), like(w2), like(b2))


@torch.library.custom_op("cbam_fast::gate_bwd_dx", mutates_args=())
def gate_bwd_dx_op(dy: Tensor, x: Tensor, gate: Tensor, dmean: Tensor, dmax: Tensor, idx: Tensor, axis: int) -> Tensor:
    """``dy * gate + dmean / R + dmax`` at the argmax ``idx`` (empty ``dmax`` and ``idx``: no max
    pool), in x's dtype and memory format (x gives only its shape and format)."""
    with _device_guard(x):
        has_max = idx.numel() > 0
        return gate_launch.gate_bwd_dx(dy, x, gate.contiguous(), dmean.contiguous(),
                                       dmax.contiguous() if has_max else None, idx if has_max else None, axis)


@gate_bwd_dx_op.register_fake
def _(dy, x, gate, dmean, dmax, idx, axis):
    return torch.empty_like(x, memory_format=output_format(x))


def _kept(x, axis):
    return x.shape[1] if axis == AXIS_CHANNEL else x.shape[2] * x.shape[3]


# ----------------------------------------------------------------------------- autograd


@contextlib.contextmanager
def _deterministic_cudnn():
    """cuDNN with deterministic algorithms (and no benchmarking), every other setting as it is: the
    tiny step's convolutions (ECA's 1-D conv, the spatial gate's k x k conv) then have
    deterministic gradients."""
    b = torch.backends.cudnn
    saved = b.deterministic, b.benchmark
    b.deterministic, b.benchmark = True, False
    try:
        yield
    finally:
        b.deterministic, b.benchmark = saved


def _unlisted_leaves(out: Tensor, listed: Sequence[Tensor]) -> list:
    """Tensors requiring grad that ``out``'s graph reaches other than through ``listed``: their
    gradients would be lost (the tiny step's backward differentiates only the listed ones)."""
    stop = {id(t.grad_fn) for t in listed if t.grad_fn is not None}
    listed_ids = {id(t) for t in listed}
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen or id(fn) in stop:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None and id(var) not in listed_ids:
            found.append(var)
        stack.extend(f for f, _ in fn.next_functions)
    return found


def _updates_state(module) -> bool:
    """A module whose call cannot be repeated with the same result and no side effect: a
    BatchNorm that updates its running statistics (training mode, tracking), a dropout in
    training mode (a new mask per call)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return module.training and module.track_running_stats and module.running_mean is not None
    return isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.training and module.p > 0


@dataclasses.dataclass(frozen=True)
class _Opts:
    """How one gate call runs (the first input of :class:`_PooledGate`).

    axis: AXIS_CHANNEL or AXIS_SPATIAL; need_max: the max is pooled; tiny: the tiny step,
    ``tiny(mean, max)`` -> the gate's pre-activation ``[N, K]`` (PyTorch ops; ``max`` None without
    it); gate: the gate's name; pure: the tiny step updates no state (it may be recomputed);
    in_acc: it takes the pools in the accumulation dtype (cbam_fast's own steps) rather than x's
    (a caller's callable); folded: ``(pool, act, gate)`` codes when the tiny step is the plain MLP
    folded into the kernels (no graph recorded: the backward's kernels differentiate it)."""

    axis: int
    need_max: bool
    tiny: Callable
    gate: str
    pure: bool = True
    in_acc: bool = True
    folded: Optional[tuple] = None


class _PooledGate(torch.autograd.Function):
    """``y = x * gate(tiny(mean, max))`` with the pools and the product fused (see the module
    docstring). Inputs: the call's :class:`_Opts`, x, then the tensors the tiny step differentiates
    (for a folded MLP: w1, b1, w2, b2, None where absent)."""

    @staticmethod
    def forward(ctx, opts, x, *params):
        acc = acc_dtype(x.dtype)
        served, _, _ = prepare_input(x)
        ctx.opts, ctx.params = opts, params
        if opts.folded is not None:
            y, ha, pre = torch.ops.cbam_fast.gate_mlp_forward(served, *params, *opts.folded)
            # the parameters saved too: the backward reads them again, so an in-place change
            # between forward and backward must fail (autograd's version check) rather than
            # give other gradients. ha, pre: [N, hidden] values, the MLP's hidden state
            ctx.save_for_backward(x, served if served is not x else None, ha, pre, *params)
            ctx.graph = None
            return y
        v, idx = torch.ops.cbam_fast.gate_pool(served, opts.axis, opts.need_max)
        g, mean, mx = _tiny_graph(opts, v, acc if opts.in_acc else x.dtype, params)
        g_acc = g.detach().to(acc).contiguous()
        y = torch.ops.cbam_fast.gate_scale(served, g_acc, opts.axis)
        ctx.save_for_backward(x, served if served is not x else None, g_acc, idx, *params)
        # the tiny step's graph (small: [N, K] values), for its backward between the two
        # backward passes
        ctx.graph = (g, mean, mx)
        return y

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():  # backward(create_graph=True): a differentiable backward
            return _backward_with_graph(ctx, dy)
        opts = ctx.opts
        x, served, g_acc, idx = ctx.saved_tensors[:4]  # (unpacking checks the parameters' versions)
        served = x if served is None else served
        if layout_of(dy)[1] is None:  # H and W do not merge: one copy in x's format, for both passes
            dy = dy.contiguous(memory_format=output_format(served))
        need = ctx.needs_input_grad
        params = [p for p in ctx.params]
        if ctx.graph is None:  # the folded MLP: its whole backward in the kernels
            ha, pre = g_acc, idx
            grads = torch.ops.cbam_fast.gate_mlp_backward(dy, served, ha, pre, *params, *opts.folded, need[1],
                                                          any(need[2:]))
            return (None, *(t if n and p is not None else None
                            for t, n, p in zip(grads, need[1:], (x, *params))))
        dg, _, _ = torch.ops.cbam_fast.gate_bwd_reduce(dy, served, opts.axis, 0)
        g, mean, mx = ctx.graph
        want = [i for i, p in enumerate(params) if p is not None and need[2 + i]]
        pools = [mean] + ([mx] if mx is not None else [])
        inputs = pools + [params[i] for i in want]
        grads = [None] * len(inputs)
        if g.requires_grad:
            with _deterministic_cudnn():
                # retain_graph: a second backward through the caller's graph (retain_graph=True
                # there) runs this again
                grads = torch.autograd.grad(g, inputs, dg.to(g.dtype), retain_graph=True, allow_unused=True)
        acc = g_acc.dtype
        dpools = [torch.zeros_like(p, dtype=acc) if d is None else d.to(acc) for p, d in zip(pools, grads)]
        dx = None
        if need[1]:
            dmax = dpools[1] if mx is not None else dpools[0].new_empty(0)
            dx = torch.ops.cbam_fast.gate_bwd_dx(dy, served, g_acc, dpools[0], dmax,
                                                 idx if mx is not None else idx.new_empty(0), opts.axis)
        out = [None] * len(params)
        for i, d in zip(want, grads[len(pools):]):
            out[i] = d
        return (None, dx, *out)


def _tiny_graph(opts, v, dtype, params):
    """The tiny step on the pools ``v`` (``[N, 1 or 2, K]``) as leaves in ``dtype``, recorded for
    its backward: ``(g, mean, max)``; refuses an excitation that uses a tensor requiring grad
    that is not among ``params`` (its gradient would be lost)."""
    with torch.enable_grad(), _deterministic_cudnn():
        mean = v[:, 0].to(dtype).detach().requires_grad_()
        mx = v[:, 1].to(dtype).detach().requires_grad_() if opts.need_max else None
        g = reference.apply_gate(opts.tiny(mean, mx), opts.gate)
    if not isinstance(g, Tensor) or tuple(g.shape) != tuple(mean.shape):
        raise ValueError(f"cbam_fast: the gate's tiny step returned shape "
                         f"{tuple(getattr(g, 'shape', ()))}, expected {tuple(mean.shape)}")
    listed = (mean,) + ((mx,) if mx is not None else ()) + tuple(p for p in params if p is not None)
    hidden = _unlisted_leaves(g, listed) if g.requires_grad else []
    if hidden:
        raise ValueError(f"cbam_fast: the excitation uses {len(hidden)} tensor(s) that require grad but are not "
                         f"among its params (shapes {[tuple(t.shape) for t in hidden]}): pass them in `params`, "
                         "or their gradients would be lost")
    return g, mean, mx


def _backward_with_graph(ctx, dy):
    """create_graph=True (a gradient penalty, gradgradcheck): the gradients through the reference
    math, recomputed from x (the pools, the tiny step, the gate), so that they are differentiable
    again. A tiny step that updates state (a training-mode BatchNorm) is not recomputed: refused."""
    opts = ctx.opts
    if not opts.pure:
        raise RuntimeError("cbam_fast: backward(create_graph=True) through a gate whose excitation updates state "
                           "(a training-mode BatchNorm) is not supported: recomputing it would update the running "
                           "statistics again. Use eval mode, or CBAM_FAST_BACKEND=torch")
    x = ctx.saved_tensors[0]
    need = ctx.needs_input_grad
    params = ctx.params
    wanted = [i for i, p in enumerate(params) if p is not None and need[2 + i]]
    inputs = ([x] if need[1] else []) + [params[i] for i in wanted]
    dt = acc_dtype(x.dtype) if opts.in_acc else x.dtype
    with _deterministic_cudnn():
        if opts.axis == AXIS_CHANNEL:
            flat = x.flatten(2)
            mean, mx = flat.mean(dim=2), flat.max(dim=2).values if opts.need_max else None
            g = reference.apply_gate(opts.tiny(mean.to(dt), None if mx is None else mx.to(dt)), opts.gate)
            y = x * g.to(x.dtype)[:, :, None, None]
        else:
            mean, mx = x.mean(dim=1).flatten(1), x.max(dim=1).values.flatten(1)
            g = reference.apply_gate(opts.tiny(mean.to(dt), mx.to(dt)), opts.gate)
            y = x * g.to(x.dtype).view(x.shape[0], 1, x.shape[2], x.shape[3])
        grads = list(torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True))
    dx = grads.pop(0) if need[1] else None
    out = [None] * len(params)
    for i in wanted:
        out[i] = grads.pop(0)
    return (None, dx, *out)


def _apply(opts: _Opts, x, params):
    return _PooledGate.apply(opts, x, *params)


_FORCED = [0]


@contextlib.contextmanager
def reference_math():
    """Inside the block every gate call runs the reference math (convert's probes use it)."""
    _FORCED[0] += 1
    try:
        yield
    finally:
        _FORCED[0] -= 1


def _reference_only(*tensors) -> bool:
    """The calls the exact PyTorch math serves instead of the kernels (see the module docstring)."""
    x = tensors[0]
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    if _FORCED[0] or under_transform(*tensors) or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() \
            or torch.compiler.is_compiling() or exporting() or isinstance(x, torch._subclasses.FakeTensor):
        return True
    chosen = backend()
    if chosen == "torch" or (chosen == "auto" and not x.is_cuda):
        return True
    if x.shape[0] == 0:
        return True
    if not x.is_cuda and not kernels_interpreted():
        from .kernels import plan

        if not plan.dry_run():
            raise RuntimeError(
                "cbam_fast: CBAM_FAST_BACKEND=triton on a CPU tensor needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 before importing cbam_fast, or use CBAM_FAST_BACKEND=auto")
    return False


def _check_x(name, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    _check_dense("input", x)
    if x.dim() != 4:
        raise ValueError(f"{name}: input must be 4-D [N, C, H, W], got {x.dim()}-D shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: input must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: input must have C, H, W >= 1, got shape {tuple(x.shape)}")


def _choice(name, what, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}: {what} must be one of {allowed}, got {value!r}")


def channel_attention(x: Tensor, fc1_weight: Optional[Tensor] = None, fc1_bias: Optional[Tensor] = None,
                      fc2_weight: Optional[Tensor] = None, fc2_bias: Optional[Tensor] = None, *, pool: str = "avg",
                      act: str = "relu", gate: str = "sigmoid", excite: Optional[Callable] = None,
                      params: Optional[Sequence[Tensor]] = None) -> Tensor:
    """The channel gate (squeeze-and-excitation; CBAM's channel half alone), fused:
    ``y = x * gate(E(pools of x over H, W))``.

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32/float64, NCHW or channels_last (served
           without a copy; other strides are copied).
        fc1_weight ``[hidden, C]``, fc1_bias ``[hidden]`` or None, fc2_weight ``[C, hidden]`` or None,
        fc2_bias ``[C]`` or None: the MLP ``E = fc2(act(fc1(.)))``; ``fc2_weight=None``: the single
           layer ``fc1`` (``[C, C]``, no activation). Parameters are cast to x's dtype, as eager
           modules converted with ``.half()`` hold them.
        pool: ``"avg"`` (``E(mean)``), ``"avg_max"`` (``E(mean) + E(max)``, CBAM), ``"light"``
           (``E(mean / 2 + max / 2)``, timm's ``add_maxpool``). The max's gradient goes to the first
           maximal position (``torch.max``; timm's ``amax`` splits it among ties, which have
           measure zero for continuous data).
        act: ``"relu"`` or ``"silu"``; gate: ``"sigmoid"`` or ``"hard_sigmoid"``.
        excite: instead of the MLP, any differentiable callable ``[N, C] -> [N, C]`` of the pooled
           vector (in x's dtype), e.g. ECA's 1-D conv over channels; it runs as PyTorch ops
           between the fused passes. ``params``: the tensors it differentiates (default: its
           ``parameters()`` when it is an nn.Module); a tensor requiring grad that it uses but
           that is not listed is refused (its gradient would be lost). ``backward(create_graph=True)``
           recomputes it from x: a callable with side effects says so with an attribute
           ``pure = False`` (a module holding a training-mode BatchNorm or dropout is detected),
           and is then refused there.

    Returns ``y`` with x's shape, dtype and memory format; differentiable in x and the parameters.
    """
    name = "channel_attention"
    _check_x(name, x)
    _choice(name, "pool", pool, CHANNEL_POOLS)
    _choice(name, "gate", gate, GATES)
    if excite is not None:
        if not callable(excite):
            raise TypeError(f"{name}: excite must be callable, got {type(excite).__name__}")
        if any(t is not None for t in (fc1_weight, fc1_bias, fc2_weight, fc2_bias)):
            raise ValueError(f"{name}: give either the MLP's parameters or excite, not both")
        if params is None:
            params = tuple(excite.parameters()) if isinstance(excite, torch.nn.Module) else ()
        params = tuple(params)
        if not all(isinstance(p, Tensor) for p in params):
            raise TypeError(f"{name}: params must be tensors")
        tiny_excite = excite
    else:
        _choice(name, "act", act, ACTIVATIONS)
        if params is not None:
            raise ValueError(f"{name}: params goes with excite (the MLP's parameters are its arguments)")
        check_mlp(name, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        params = tuple(p for p in (fc1_weight, fc1_bias, fc2_weight, fc2_bias) if p is not None)
        tiny_excite = None
    if _reference_only(x, *params):
        if tiny_excite is None:
            return reference.channel_attention(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool=pool, act=act,
                                               gate=gate)
        return reference.channel_attention(x, pool=pool, gate=gate, excite=tiny_excite)

    if tiny_excite is None:  # the plain MLP: folded into the two forward passes
        def tiny(mean, mx):
            return reference.combine_pools(reference.mlp_excite(fc1_weight, fc1_bias, fc2_weight, fc2_bias, act,
                                                                mean.dtype), mean, mx, pool)

        folded = (_POOL_CODES[pool], ACT_RELU if act == "relu" else ACT_SILU,
                  GATE_SIGMOID if gate == "sigmoid" else GATE_HARD_SIGMOID)
        opts = _Opts(AXIS_CHANNEL, pool != "avg", tiny, gate, folded=folded)
        return _apply(opts, x, (fc1_weight, fc1_bias, fc2_weight, fc2_bias))

    def tiny(mean, mx):
        return reference.combine_pools(tiny_excite, mean, mx, pool)

    pure = getattr(tiny_excite, "pure", None)
    if pure is None:
        pure = not (isinstance(tiny_excite, torch.nn.Module) and any(map(_updates_state, tiny_excite.modules())))
    opts = _Opts(AXIS_CHANNEL, pool != "avg", tiny, gate, pure=pure, in_acc=getattr(tiny_excite, "in_acc", False))
    return _apply(opts, x, params)


_POOL_CODES = {"avg": POOL_AVG, "avg_max": POOL_AVG_MAX, "light": POOL_LIGHT}


def spatial_attention(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor] = None, *,
                      pool: str = "mean_max", gate: str = "sigmoid", bn: Optional[torch.nn.Module] = None) -> Tensor:
    """The spatial gate (CBAM's spatial half alone), fused: ``y = x * gate(conv(maps))`` with the
    maps the mean and max of x over channels (``torch.max``: the gradient to the first maximal
    channel) in the order ``pool`` names: ``"mean_max"`` (the seed documents', Ultralytics'),
    ``"max_mean"`` (the authors'), ``"light"`` (one map ``mean / 2 + max / 2``, weight ``[1, 1, k, k]``).

    conv_weight ``[1, 2, k, k]`` (k in 3, 5, 7), conv_bias ``[1]`` or None, cast to x's dtype (with
    nothing to differentiate, no BatchNorm and the sigmoid gate: read in their own dtype by the
    kernels, which convolve the maps in the accumulation dtype, fp32 (fp64 for fp64 inputs), and
    run the whole gate in 2 launches; so a 16-bit result can differ from the same call with grad
    enabled by the rounding of the conv in x's dtype, within the error the reference allows);
    ``bn``: None or a ``BatchNorm2d(1)`` on the conv output, in its own train/eval mode (training
    updates its running statistics once per call, as nn.BatchNorm2d). gate: ``"sigmoid"`` or
    ``"hard_sigmoid"``. Returns ``y`` with x's shape, dtype and memory format.
    """
    name = "spatial_attention"
    _check_x(name, x)
    _choice(name, "pool", pool, SPATIAL_POOLS)
    _choice(name, "gate", gate, GATES)
    if not isinstance(conv_weight, Tensor) or conv_weight.dim() != 4:
        raise ValueError(f"{name}: conv_weight must be a 4-D tensor [1, 2, k, k] ([1, 1, k, k] for pool='light')")
    k = conv_weight.shape[-1]
    check_kernel_size(k)
    _check_param("conv_weight", conv_weight, (1, 1 if pool == "light" else 2, k, k), x)
    if conv_bias is not None:
        _check_param("conv_bias", conv_bias, (1,), x)
    if bn is not None:
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or bn.num_features != 1:
            raise TypeError(f"{name}: bn must be a BatchNorm2d(1) module (or None)")
        for t_name, t in (("bn.weight", bn.weight), ("bn.running_mean", bn.running_mean)):
            if t is not None and t.device != x.device:
                raise ValueError(f"{name}: {t_name} is on {t.device} but the input is on {x.device}")
    params = tuple(p for p in (conv_weight, conv_bias) if p is not None)
    if bn is not None:
        params += tuple(p for p in (bn.weight, bn.bias) if p is not None)
    if _reference_only(x, *params):
        return reference.spatial_attention(x, conv_weight, conv_bias, pool=pool, gate=gate, bn=bn)
    if bn is None and gate == "sigmoid" and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))):
        # nothing to differentiate (inference): the conv and the gate in the kernels, 2 launches
        served, _, _ = prepare_input(x)
        return torch.ops.cbam_fast.spatial_gate(served, conv_weight, conv_bias, pool)
    shape = x.shape

    def tiny(mean, mx):
        maps = reference.spatial_maps(mean, mx, pool, shape)
        return reference.spatial_excite(conv_weight, conv_bias, bn, mean.dtype)(maps).flatten(1)

    return _apply(_Opts(AXIS_SPATIAL, True, tiny, gate, pure=bn is None or not _updates_state(bn)), x, params)
