"""The fused CBAM as registered PyTorch operators: ``cbam_fast::forward`` and ``cbam_fast::backward``.

``torch.library.custom_op`` (with ``register_fake`` and ``register_autograd``) rather than
``triton_op``: the ops are opaque to torch.compile, export and the autograd engine alike, they
run through the Triton interpreter on CPU (``triton_op`` cannot, so it could not be tested
without a GPU), and the ops carry their own launch logic (pooling splits, the training-mode
BatchNorm on the small conv-output map) that ``triton_op``'s tracing would have to re-derive.
The ops take the parameters already mapped to the kernels' layout (see
:func:`cbam_fast.functional._kernel_conv`); the module and the functional API call them.

Forward outputs: ``y`` (x's dtype and memory format), then the small tensors the backward needs:
``a`` [N, C] and ``z`` [N, P] (the gates' pre-activations), ``smap`` [N, 2, P], ``sidx`` [N, P]
int32, then for a spatial BatchNorm ``stats`` [3] = (invstd, mean, variance) and, with batch
statistics, ``zhat`` [N, P] (the normalised conv output) (empty otherwise). ``bn_mode``:
``BN_NONE``; ``BN_BATCH`` (training mode: batch statistics over N, H, W of the conv output, computed
between the kernels on the small [N, 1, H, W] map; ``stats`` holds the unbiased batch variance);
``BN_RUNNING`` (eval mode: the running statistics ``bn_mean``/``bn_var`` folded into the conv inside
the op, no extra pass; the backward gives the BatchNorm's parameters PyTorch's own gradient
``sum(du * zhat)``, recomputing ``zhat`` from the small map, where the fold's chain rule would
cancel across the conv taps). The ops are
functional: the caller updates a BatchNorm's running statistics from ``stats``
(:func:`update_running_stats`), which keeps the forward op differentiable by ``register_autograd``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import ChannelMLP, Saved, acc_dtype, cbam_backward, cbam_forward
from .kernels.launch import layout_of, _memory_format, prepare_input


def _prep(p):
    return None if p is None else p.detach().contiguous()


def kernel_params(x, w1, b1, w2, b2, wc, bc):
    """Parameters as the kernels take them: contiguous, conv weight flattened, each in its own
    dtype (the kernels upcast after loading: no per-call cast; a parameter is copied only when
    it is not contiguous). A two-layer MLP with one bias of the two gets a zero bias for the
    other (the kernels take both or neither)."""
    b1, b2 = _prep(b1), _prep(b2)
    if w2 is not None and (b1 is None) != (b2 is None):  # the kernels take both biases or neither
        b1 = b1 if b1 is not None else torch.zeros(w1.shape[0], dtype=b2.dtype, device=x.device)
        b2 = b2 if b2 is not None else torch.zeros(w2.shape[0], dtype=b1.dtype, device=x.device)
    return _prep(w1), b1, _prep(w2), b2, _prep(wc).view(-1), _prep(bc)


def _device_guard(x: Tensor):
    """Triton launches on the current CUDA device: make it x's (inputs on cuda:1 launch there)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _no_autocast(x: Tensor):
    """The ops compute in fp32 (fp64 for fp64 inputs) whatever autocast is active outside: the
    few PyTorch ops inside (the training-mode BatchNorm's conv) must not be autocast to 16 bits."""
    return torch.autocast(x.device.type, enabled=False)


def output_format(x: Tensor):
    """The memory format of y and dx: x's own when the kernels serve it, else contiguous."""
    layout, _ = layout_of(x)
    return _memory_format(layout) if layout is not None else torch.contiguous_format


BN_NONE, BN_BATCH, BN_RUNNING = 0, 1, 2


class _BatchNormTrain:
    """Training-mode BatchNorm2d(1) of the spatial conv output with batch statistics over
    N, H, W, as nn.BatchNorm2d computes it, on the small [N, 1, H, W] map."""

    def __init__(self, wc, bc, weight, bias, eps):
        self.wc, self.bc, self.weight, self.bias, self.eps = wc, bc, weight, bias, eps

    def preact(self, smap):
        """smap [N, 2, H, W] (acc dtype) -> BN(conv(smap)) [N, 1, H, W]."""
        acc, k = smap.dtype, self.wc.shape[-1]
        z = F.conv2d(smap, self.wc.detach().to(acc), None if self.bc is None else self.bc.detach().to(acc), padding=k // 2)
        count = z.numel()
        if count <= 1:
            raise ValueError(f"cbam: training-mode BatchNorm needs more than 1 value per channel, got N*H*W = {count}")
        mean, var = z.mean(), z.var(unbiased=False)
        invstd = torch.rsqrt(var + self.eps)
        self.stats = torch.stack([invstd, mean, var * count / (count - 1)])
        self.zhat = (z - mean) * invstd
        gamma = 1.0 if self.weight is None else self.weight.detach().to(acc)
        beta = 0.0 if self.bias is None else self.bias.detach().to(acc)
        return self.zhat * gamma + beta


def update_running_stats(running_mean, running_var, num_batches_tracked, stats, momentum):
    """nn.BatchNorm2d's running-statistics update from a training forward's ``stats``
    (momentum None: cumulative average over num_batches_tracked). Tensor ops only: no host sync."""
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / num_batches_tracked.to(stats.dtype)
        else:
            factor = torch.full((), momentum, dtype=stats.dtype, device=stats.device)
        running_mean.copy_((running_mean * (1 - factor) + factor * stats[1]).to(running_mean.dtype))
        running_var.copy_((running_var * (1 - factor) + factor * stats[2]).to(running_var.dtype))


def _running_stats(mean, var, eps, acc):
    """stats [3] = (invstd, mean, var) of an eval-mode BatchNorm, in the acc dtype."""
    mean, var = mean.detach().to(acc).reshape(()), var.detach().to(acc).reshape(())
    return torch.stack([torch.rsqrt(var + eps), mean, var])


def _fold_running_bn(wc, bc, weight, bias, stats):
    """The conv weight and bias with an eval-mode BatchNorm folded in (acc dtype, stats' dtype):
    ``scale = invstd * gamma``, ``wc' = wc * scale``, ``bc' = (bc - mean) * scale + beta``.
    Returns (wc', bc' [1], scale)."""
    acc = stats.dtype
    invstd, mean = stats[0], stats[1]
    scale = invstd if weight is None else invstd * weight.detach().to(acc).reshape(())
    shift = -mean * scale
    if bc is not None:
        shift = shift + bc.detach().to(acc).reshape(()) * scale
    if bias is not None:
        shift = shift + bias.detach().to(acc).reshape(())
    return wc.detach().to(acc) * scale, shift.reshape(1), scale


def _bn_backward(du, zhat, invstd, weight, batch_stats):
    """dL/d BN output -> (dL/d conv output, dL/d weight, dL/d bias); with batch statistics the
    gradient also flows through the batch mean and variance."""
    gamma = 1.0 if weight is None else weight.detach().to(du.dtype)
    dweight = (du * zhat).sum().reshape(1)
    dbias = du.sum().reshape(1)
    if batch_stats:
        du = du - du.mean() - zhat * (du * zhat).mean()
    return gamma * invstd * du, dweight, dbias


# ----------------------------------------------------------------------------- forward op


@torch.library.custom_op("cbam_fast::forward", mutates_args=())
def forward_op(
    x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor],
    wc: Tensor, bc: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
    bn_mean: Optional[Tensor], bn_var: Optional[Tensor], bn_mode: int, bn_eps: float, pool: int, two_layer: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    N, _, H, W = x.shape
    zhat, stats = x.new_empty(0, dtype=acc), x.new_empty(0, dtype=acc)  # distinct: outputs must not alias
    bn = None
    if bn_mode == BN_RUNNING:
        stats = _running_stats(bn_mean, bn_var, bn_eps, acc)
        wc, bc, _ = _fold_running_bn(wc, bc, bn_weight, bn_bias, stats)
    elif bn_mode == BN_BATCH:
        bn = _BatchNormTrain(wc, bc, bn_weight, bn_bias, bn_eps)
    params = kernel_params(x, w1, b1, w2, b2, wc, bc)
    with _device_guard(x), _no_autocast(x):
        y, saved = cbam_forward(x, *params, mlp=ChannelMLP(pool, two_layer), spatial_preact=None if bn is None else bn.preact)
    if bn is not None:
        zhat, stats = bn.zhat.reshape(N, H * W), bn.stats
    return y, saved.a, saved.z, saved.smap, saved.sidx, zhat, stats


@forward_op.register_fake
def _forward_fake(x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, bn_mean, bn_var, bn_mode, bn_eps, pool, two_layer):
    N, C, H, W = x.shape
    P = H * W
    acc = acc_dtype(x.dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    small = dict(dtype=acc, device=x.device)
    zhat = x.new_empty((N, P) if bn_mode == BN_BATCH else (0,), dtype=acc)
    stats = x.new_empty((3,) if bn_mode != BN_NONE else (0,), dtype=acc)
    return (y, torch.empty((N, C), **small), torch.empty((N, P), **small), torch.empty((N, 2, P), **small),
            torch.empty((N, P), dtype=torch.int32, device=x.device), zhat, stats)


# ----------------------------------------------------------------------------- backward op


def _conv_grad_dtypes(kwc, bc, bn_mode, stats):
    """Dtypes of the kernels' conv weight and bias gradients: the parameters' own, except with an
    eval-mode BatchNorm folded in (both in the acc dtype, scaled afterwards: the fold's bias
    gradient is needed even without a conv bias)."""
    if bn_mode == BN_RUNNING:
        return stats.dtype, stats.dtype
    return kwc.dtype, None if bc is None else bc.dtype


@torch.library.custom_op("cbam_fast::backward", mutates_args=())
def backward_op(
    dy: Tensor, x: Tensor, a: Tensor, z: Tensor, smap: Tensor, sidx: Tensor, zhat: Tensor, stats: Tensor,
    w1: Tensor, b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor],
    bn_weight: Optional[Tensor], bn_mode: int, pool: int, two_layer: bool,
    need_x: bool, need_mlp: bool, need_conv: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients for x, w1, b1, w2, b2, wc (kernel layout), bc, bn weight, bn bias; an empty
    tensor stands for a gradient that was not asked for (or a parameter that is absent)."""
    kwc, scale = wc, None
    if bn_mode == BN_RUNNING:  # the kernels ran the folded conv: run their backward through it
        kwc, _, scale = _fold_running_bn(wc, bc, bn_weight, None, stats)
    kw1, kb1, kw2, kb2, kwc, _ = kernel_params(x, w1, b1, w2, b2, kwc, None)
    bn_grads = []
    dz_hook = None
    if bn_mode == BN_BATCH:
        def dz_hook(du):
            dz, dweight, dbias = _bn_backward(du, zhat.view_as(du), stats[0], bn_weight, batch_stats=True)
            bn_grads.extend([dweight, dbias])
            return dz

    with _device_guard(x), _no_autocast(x):
        dx, mlp_grads, conv_grads, dz = cbam_backward(
            dy, x, Saved(a=a, z=z, smap=smap, sidx=sidx), kw1, kb1, kw2, kwc,
            need_x=need_x, need_mlp=need_mlp, need_conv=need_conv, mlp=ChannelMLP(pool, two_layer), dz_hook=dz_hook,
            b2=kb2, conv_grad_dtypes=_conv_grad_dtypes(kwc, bc, bn_mode, stats),
        )
        if bn_mode == BN_RUNNING and need_conv:
            # zhat recomputed on the small map as PyTorch's BatchNorm sees it, for its parameters'
            # gradients; the conv's own gradients are the folded conv's times the scale
            N, _, H, W = x.shape
            acc, k = stats.dtype, math.isqrt(wc.numel() // 2)
            zc = F.conv2d(smap.view(N, 2, H, W), wc.detach().to(acc).view(1, 2, k, k),
                          None if bc is None else bc.detach().to(acc), padding=k // 2)
            zhat_eval = (zc - stats[1]) * stats[0]
            _, dweight, dbias = _bn_backward(dz.view(N, 1, H, W), zhat_eval, stats[0], bn_weight, batch_stats=False)
            bn_grads.extend([dweight, dbias])
            dwc_folded, dbc_folded = conv_grads
            conv_grads = (dwc_folded * scale, dbc_folded * scale)
    dw1, db1, dw2, db2 = mlp_grads if mlp_grads is not None else (None,) * 4
    # a bias the caller did not give was zero-filled for the kernels: it gets no gradient
    db1 = db1 if b1 is not None else None
    db2 = db2 if b2 is not None else None
    dwc, dbc = conv_grads if conv_grads is not None else (None, None)
    if dwc is not None:
        dwc = dwc.view_as(wc)
    dbc = dbc if bc is not None else None
    dbn_w, dbn_b = bn_grads if bn_grads else (None, None)
    outs = (dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b)
    return tuple(a.new_empty(0) if t is None else t for t in outs)


@backward_op.register_fake
def _backward_fake(dy, x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_mode, pool,
                   two_layer, need_x, need_mlp, need_conv):
    acc = a.dtype

    def like(p, needed, dtype=None):
        """A gradient in its parameter's dtype (the kernels write it so), or empty."""
        if not (needed and p is not None):
            return a.new_empty(0)
        return torch.empty(p.shape, dtype=dtype or p.dtype, device=p.device)

    def sized(n, needed):
        return a.new_empty(n if needed else 0)

    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x)) if need_x else a.new_empty(0)
    bn = bn_mode == BN_BATCH or (bn_mode == BN_RUNNING and need_conv)
    conv_acc = acc if bn_mode == BN_RUNNING else None  # the folded conv's gradients are scaled in acc
    return (dx, like(w1, need_mlp), like(b1, need_mlp), like(w2, need_mlp), like(b2, need_mlp),
            like(wc, need_conv, conv_acc), like(bc, need_conv, conv_acc), sized(1, bn), sized(1, bn))


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "cbam_fast: double backward (differentiating the gradients of CBAM, create_graph=True) "
        "is not supported; use CBAM_FAST_BACKEND=torch for higher-order gradients"
    )


backward_op.register_autograd(_no_double_backward)


# ----------------------------------------------------------------------------- autograd

_DIFF_INPUTS = ("x", "w1", "b1", "w2", "b2", "wc", "bc", "bn_weight", "bn_bias")


def _setup_context(ctx, inputs, output):
    (x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias, _mean, _var, bn_mode, _eps, pool, two_layer) = inputs
    _, a, z, smap, sidx, zhat, stats = output
    # the auxiliary outputs never receive a gradient: do not fill zeros for them (6 launches)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias)
    ctx.pool, ctx.two_layer, ctx.bn_mode = pool, two_layer, bn_mode


def _backward(ctx, dy, *_aux_grads):
    if dy is None:  # y itself received no gradient
        return (None,) * 15
    x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_mlp = any(need[1:5])
    need_conv = any(need[5:9])  # the BN parameters' gradients come from the conv's backward too
    grads = torch.ops.cbam_fast.backward(
        dy, x, a, z, smap, sidx, zhat, stats, w1, b1, w2, b2, wc, bc, bn_weight,
        ctx.bn_mode, ctx.pool, ctx.two_layer, need[0], need_mlp, need_conv,
    )
    params = (x, w1, b1, w2, b2, wc, bc, bn_weight, bn_bias)
    out = []
    for i, (g, p) in enumerate(zip(grads, params)):
        out.append(g.to(p.dtype) if need[i] and p is not None else None)
    return tuple(out) + (None,) * 6  # bn_mean, bn_var, bn_mode, bn_eps, pool, two_layer


forward_op.register_autograd(_backward, setup_context=_setup_context)
