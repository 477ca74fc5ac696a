"""The fused CBAM as registered PyTorch operators: ``cbam_fast::forward`` and ``cbam_fast::backward``.

``torch.library.custom_op`` (with ``register_fake`` and ``register_autograd``) rather than
``triton_op``: the ops are opaque to torch.compile, export and the autograd engine alike, they
run through the Triton interpreter on CPU (``triton_op`` cannot, so it could not be tested
without a GPU), and the ops carry their own launch logic (pooling splits, the training-mode
BatchNorm on the small conv-output map) that ``triton_op``'s tracing would have to re-derive.
The ops take the parameters as the caller holds them (the conv weight in its own layout,
``conv_form``: [max, mean], [mean, max] or the light one-channel form; kernels/launch.py).

Forward outputs: ``y`` (x's dtype and memory format), then the small tensors the backward needs:
``a`` [N, C] and ``z`` [N, P] (the gates' pre-activations), ``smap`` [N, 2, P], ``sidx`` [N, P]
int32, then for a spatial BatchNorm ``zhat`` [N, P] (the normalised conv output) and ``stats``
[3] = (invstd, mean, variance) (empty otherwise). ``bn_mode``: ``BN_NONE``; ``BN_BATCH``
(training mode: batch statistics over N, H, W of the conv output, from one small kernel between
the pooling and gating passes; ``stats`` holds the unbiased batch variance); ``BN_RUNNING`` (eval
mode: the running statistics ``bn_mean``/``bn_var`` as scalar math in the gate pass). The
backward gives the BatchNorm's parameters PyTorch's own gradients ``sum(du * zhat)`` and
``sum(du)``, summed in backward pass 1. The ops are functional (so the forward has an autograd
formula): the caller updates a BatchNorm's running statistics from ``stats`` with the mutating
op ``cbam_fast::bn_update`` (one single-program kernel, no PyTorch op).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from .kernels import ChannelMLP, Saved, acc_dtype, cbam_backward, cbam_forward
from .kernels import launch
from .kernels.launch import SpatialBN, _memory_format, layout_of
from .kernels.plan import execute


def _prep(p):
    return None if p is None else p.detach().contiguous()


def kernel_mlp_params(x, w1, b1, w2, b2):
    """The MLP's parameters as the kernels take them: contiguous, each in its own dtype (the
    kernels upcast after loading: no per-call cast; a parameter is copied only when it is not
    contiguous). A two-layer MLP with one bias of the two gets a zero bias for the other (the
    kernels take both or neither)."""
    b1, b2 = _prep(b1), _prep(b2)
    if w2 is not None and (b1 is None) != (b2 is None):  # the kernels take both biases or neither
        b1 = b1 if b1 is not None else torch.zeros(w1.shape[0], dtype=b2.dtype, device=x.device)
        b2 = b2 if b2 is not None else torch.zeros(w2.shape[0], dtype=b1.dtype, device=x.device)
    return _prep(w1), b1, _prep(w2), b2


def kernel_params(x, w1, b1, w2, b2, wc, bc):
    """Parameters as the kernels take them (:func:`kernel_mlp_params`), the conv weight
    flattened."""
    return (*kernel_mlp_params(x, w1, b1, w2, b2), _prep(wc).view(-1), _prep(bc))


def _device_guard(x: Tensor):
    """Triton launches on the current CUDA device: make it x's (inputs on cuda:1 launch there)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _no_autocast(x: Tensor):
    """The ops compute in fp32 (fp64 for fp64 inputs) whatever autocast is active outside: any
    PyTorch op inside (a copy of an input in an unserved layout) must not be autocast."""
    return torch.autocast(x.device.type, enabled=False)


def output_format(x: Tensor):
    """The memory format of y and dx: x's own when the kernels serve it, else contiguous."""
    layout, _ = layout_of(x)
    return _memory_format(layout) if layout is not None else torch.contiguous_format


BN_NONE, BN_BATCH, BN_RUNNING = launch.BN_NONE, launch.BN_BATCH, launch.BN_RUNNING


# ----------------------------------------------------------------------------- forward op


@torch.library.custom_op("cbam_fast::forward", mutates_args=())
def forward_op(
    x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor],
    wc: Tensor, bc: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
    bn_mean: Optional[Tensor], bn_var: Optional[Tensor], bn_mode: int, bn_eps: float, pool: int, two_layer: bool,
    conv_form: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    params = kernel_params(x, w1, b1, w2, b2, wc, bc)
    with _device_guard(x), _no_autocast(x):
        y, saved = cbam_forward(x, *params, mlp=ChannelMLP(pool, two_layer), conv_form=conv_form,
                                bn=_spatial_bn(bn_mode, bn_eps, bn_weight, bn_bias, bn_mean, bn_var))
    if bn_mode == BN_NONE:  # distinct empty tensors: outputs must not alias
        return y, saved.a, saved.z, saved.smap, saved.sidx, x.new_empty(0, dtype=acc), x.new_empty(0, dtype=acc)
    return y, saved.a, saved.z, saved.smap, saved.sidx, saved.zhat, saved.stats


def _spatial_bn(bn_mode, bn_eps, weight, bias, mean, var):
    if bn_mode == BN_NONE:
        return None
    if (weight is None) != (bias is None):
        raise ValueError("cbam: the spatial BatchNorm needs both weight and bias, or neither (affine=False)")
    return SpatialBN(bn_mode, float(bn_eps), _prep(weight), _prep(bias),
                     _prep(mean) if bn_mode == BN_RUNNING else None, _prep(var) if bn_mode == BN_RUNNING else None)


@torch.library.custom_op("cbam_fast::bn_update", mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def bn_update_op(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor], stats: Tensor,
                 momentum: float) -> None:
    """nn.BatchNorm2d's running-statistics update, in place, from a training forward's ``stats``
    (``momentum`` < 0: PyTorch's ``None``, the cumulative average over num_batches_tracked):
    one single-program kernel instead of a dozen PyTorch ops on scalars."""
    if running_mean.numel() != 1 or running_var.numel() != 1:
        raise ValueError("cbam: the spatial BatchNorm's running statistics must hold one value each")
    if momentum < 0 and num_batches_tracked is None:
        raise ValueError("cbam: a cumulative-average BatchNorm (momentum=None) needs num_batches_tracked")
    with _device_guard(stats):
        execute(launch.plan_bn_update(stats, running_mean, running_var, num_batches_tracked,
                                      None if momentum < 0 else momentum))


@bn_update_op.register_fake
def _bn_update_fake(running_mean, running_var, num_batches_tracked, stats, momentum):
    return None


@forward_op.register_fake
def _forward_fake(x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, bn_mean, bn_var, bn_mode, bn_eps, pool, two_layer,
                  conv_form=0):
    N, C, H, W = x.shape
    P = H * W
    acc = acc_dtype(x.dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    small = dict(dtype=acc, device=x.device)
    zhat = x.new_empty((N, P) if bn_mode != BN_NONE else (0,), dtype=acc)
    stats = x.new_empty((3,) if bn_mode != BN_NONE else (0,), dtype=acc)
    return (y, torch.empty((N, C), **small), torch.empty((N, P), **small), torch.empty((N, 2, P), **small),
            torch.empty((N, P), dtype=torch.int32, device=x.device), zhat, stats)


# ----------------------------------------------------------------------------- backward op


@torch.library.custom_op("cbam_fast::backward", mutates_args=())
def backward_op(
    dy: Tensor, x: Tensor, a: Tensor, z: Tensor, smap: Tensor, sidx: Tensor, zhat: Tensor, stats: Tensor,
    w1: Tensor, b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor],
    bn_weight: Optional[Tensor], bn_mode: int, pool: int, two_layer: bool,
    need_x: bool, need_mlp: bool, need_conv: bool, conv_form: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients for x, w1, b1, w2, b2, wc (the caller's layout), bc, bn weight, bn bias; an empty
    tensor stands for a gradient that was not asked for (or a parameter that is absent)."""
    kw1, kb1, kw2, kb2, kwc, _ = kernel_params(x, w1, b1, w2, b2, wc, None)
    bn = None
    if bn_mode != BN_NONE:
        bn = SpatialBN(bn_mode, 0.0, _prep(bn_weight))
    saved = Saved(a=a, z=z, smap=smap, sidx=sidx, zhat=zhat if bn is not None else None,
                  stats=stats if bn is not None else None)
    with _device_guard(x), _no_autocast(x):
        dx, mlp_grads, conv_grads, bn_grads, _ = cbam_backward(
            dy, x, saved, kw1, kb1, kw2, kwc, need_x=need_x, need_mlp=need_mlp, need_conv=need_conv,
            mlp=ChannelMLP(pool, two_layer), b2=kb2, conv_grad_dtypes=(wc.dtype, None if bc is None else bc.dtype),
            conv_form=conv_form, bn=bn,
        )
    dw1, db1, dw2, db2 = mlp_grads if mlp_grads is not None else (None,) * 4
    # a bias the caller did not give was zero-filled for the kernels: it gets no gradient
    db1 = db1 if b1 is not None else None
    db2 = db2 if b2 is not None else None
    dwc, dbc = conv_grads if conv_grads is not None else (None, None)
    if dwc is not None:
        dwc = dwc.view_as(wc)
    dbc = dbc if bc is not None else None
    dbn_w, dbn_b = bn_grads if bn_grads is not None and need_conv else (None, None)
    outs = (dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b)
    return tuple(a.new_empty(0) if t is None else t for t in outs)


@backward_op.register_fake
def _backward_fake(dy, x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_mode, pool,
                   two_layer, need_x, need_mlp, need_conv, conv_form=0):

    def like(p, needed, dtype=None):
        """A gradient in its parameter's dtype (the kernels write it so), or empty."""
        if not (needed and p is not None):
            return a.new_empty(0)
        return torch.empty(p.shape, dtype=dtype or p.dtype, device=p.device)

    def sized(n, needed):
        return a.new_empty(n if needed else 0)

    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x)) if need_x else a.new_empty(0)
    bn = bn_mode != BN_NONE and need_conv
    return (dx, like(w1, need_mlp), like(b1, need_mlp), like(w2, need_mlp), like(b2, need_mlp),
            like(wc, need_conv), like(bc, need_conv), like(bn_weight, bn), like(bn_weight, bn))


def _no_double_backward(ctx, *grads):
    # not reached through cbam_fast.cbam: with create_graph=True the forward op's backward
    # recomputes through the reference ops instead of calling this op (_backward_with_graph)
    raise RuntimeError(
        "cbam_fast: torch.ops.cbam_fast.backward is not differentiable; differentiate "
        "torch.ops.cbam_fast.forward (or cbam_fast.cbam) with create_graph=True instead"
    )


backward_op.register_autograd(_no_double_backward)


# ----------------------------------------------------------------------------- autograd

_DIFF_INPUTS = ("x", "w1", "b1", "w2", "b2", "wc", "bc", "bn_weight", "bn_bias")


def _setup_context(ctx, inputs, output):
    (x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, _mean, _var, bn_mode, bn_eps, pool, two_layer, *rest) = inputs
    ctx.conv_form = rest[0] if rest else 0
    ctx.n_inputs = len(inputs)
    _, a, z, smap, sidx, zhat, stats = output
    # the auxiliary outputs never receive a gradient: do not fill zeros for them (6 launches)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias)
    ctx.pool, ctx.two_layer, ctx.bn_mode, ctx.bn_eps = pool, two_layer, bn_mode, bn_eps


_POOL_NAMES = {launch.POOL_AVG_MAX: "avg_max", launch.POOL_AVG: "avg", launch.POOL_LIGHT: "light"}
_CONV_NAMES = {launch.CONV_MAX_MEAN: "max_mean", launch.CONV_MEAN_MAX: "mean_max", launch.CONV_LIGHT: "light"}


def _reference_forward(ctx, x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, stats):
    """The op's ``y`` as differentiable PyTorch ops (cbam_fast.reference's math), for the double
    backward. The spatial BatchNorm normalises as the forward did (batch statistics, or the
    running statistics the forward used, from ``stats``) and never updates running statistics:
    the forward already did, once."""
    import torch.nn.functional as F

    from . import reference

    cast = [None if p is None else p.to(x.dtype) for p in (w1, b1, w2, b2, wc, bc)]
    w1, b1, w2, b2, wc, bc = cast
    cg = reference.channel_gate(x, w1, b1, w2 if ctx.two_layer else None, b2 if ctx.two_layer else None,
                                _POOL_NAMES[ctx.pool])
    x1 = x * cg[:, :, None, None]
    k = wc.shape[-1]
    zc = F.conv2d(reference.spatial_pools(x1, _CONV_NAMES[ctx.conv_form]), wc, bc, padding=k // 2)
    if ctx.bn_mode != BN_NONE:
        dtype = bn_weight.dtype if bn_weight is not None else stats.dtype
        if ctx.bn_mode == BN_BATCH:
            mean = var = None
        else:  # stats = (invstd, mean, variance): the running statistics the forward read
            mean, var = stats[1:2].detach().to(dtype), stats[2:3].detach().to(dtype)
        zc = F.batch_norm(zc.to(dtype), mean, var, bn_weight, bn_bias, training=ctx.bn_mode == BN_BATCH,
                          eps=ctx.bn_eps).to(x.dtype)
    return x1 * torch.sigmoid(zc)


def _backward_with_graph(ctx, dy, saved):
    """create_graph=True (a gradient penalty, a Hessian-vector product, gradgradcheck): the
    gradients are computed by autograd through the reference ops, recomputed from the saved
    inputs, so that they are differentiable again with the right second derivatives. Slower
    than the kernels' backward, which is not differentiable; used only when a graph is asked for."""
    x, _, _, _, _, _, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias = saved
    params = (x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias)
    wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[i] and p is not None]
    y = _reference_forward(ctx, *params, stats)
    grads = torch.autograd.grad(y, [params[i] for i in wanted], dy, create_graph=True, allow_unused=True)
    out = [None] * len(params)
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out) + (None,) * (ctx.n_inputs - len(out))


def _backward(ctx, dy, *_aux_grads):
    if dy is None:  # y itself received no gradient
        return (None,) * ctx.n_inputs
    if torch.is_grad_enabled():  # backward(create_graph=True): the engine runs this in grad mode
        return _backward_with_graph(ctx, dy, ctx.saved_tensors)
    x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_mlp = any(need[1:5])
    need_conv = any(need[5:9])  # the BN parameters' gradients come from the conv's backward too
    grads = torch.ops.cbam_fast.backward(
        dy, x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight,
        ctx.bn_mode, ctx.pool, ctx.two_layer, need[0], need_mlp, need_conv, ctx.conv_form,
    )
    params = (x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias)
    out = []
    for i, (g, p) in enumerate(zip(grads, params)):
        out.append(g.to(p.dtype) if need[i] and p is not None else None)
    # bn_mean, bn_var, bn_mode, bn_eps, pool, two_layer and the optional conv_form
    return tuple(out) + (None,) * (ctx.n_inputs - len(out))


forward_op.register_autograd(_backward, setup_context=_setup_context)
