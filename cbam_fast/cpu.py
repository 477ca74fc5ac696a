"""The CPU path: :func:`cbam_fast.reference.cbam`'s numbers, in fewer and cheaper passes over x.

The reference is the definition of correct; this module computes the same function for CPU
tensors, as fast as plain PyTorch ops allow on one thread:

* Inference (nothing needs a gradient): max pools by ``amax`` (values only: no indices), the
  shared MLP run once over ``[avg; max]``, the gates by the reference's own ops, the last product
  in place, and few ops in all (at small shapes each op's dispatch is a visible share).
* Training, x above :data:`LEAN_NUMEL` elements: one ``autograd.Function`` over the full-size
  work. Its forward builds the small parts (the MLP on the ``[2N, C]`` pooled vectors; the conv,
  BatchNorm and sigmoid on the ``[N, 2, H, W]`` pooled maps) as ordinary autograd graphs from
  detached leaves, so they keep the reference's formulas, BatchNorm module call and
  running-statistics update, and it keeps one full-size tensor (x) for the backward (y is
  written over x * cg). The backward makes two full-size products and two in-place updates,
  reduces by matrix products, scatters the max gradients into place (nothing zero-filled, no
  separate accumulations) and asks autograd for the small graphs' gradients.
* Training on a small x: autograd's chain of ops (:func:`_lean_train`), where per-op overhead
  is most of a call's cost.

Max-pool indices are computed only where a gradient needs them, by kernels that vectorise (see
:func:`_max_c`, :func:`_max_hw`), and they follow ``torch.max(dim)``'s rule: the gradient goes
to the first maximal element, as in the reference.

Calls this path does not serve exactly go to :func:`reference.cbam`: TorchScript, tracing,
``torch.compile``, ``torch.func`` transforms, forward-mode AD, CPU autocast, tensor subclasses,
strides other than NCHW / channels-last, empty batches. Double backward (``create_graph=True``)
through the Function recomputes the gradient through the reference ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from . import reference


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelling
        return torch.is_autocast_cpu_enabled()


def served(x) -> bool:
    """True when this path serves the call; False sends it to :func:`reference.cbam`."""
    return not (
        torch.compiler.is_compiling()
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or type(x) is not torch.Tensor
        or x.device.type != "cpu"
        or x.shape[0] == 0
        or _layout(x) is None
        or torch._C._are_functorch_transforms_active()
        or forward_ad._current_level >= 0
        or _autocast_cpu()
    )


# ----------------------------------------------------------------------------- max pools

_CL = torch.channels_last
# training on at most this many elements of x takes autograd's chain (_lean_train): there a
# call's cost is mostly per-op overhead; above it, the custom backward's fewer passes win
LEAN_NUMEL = 2 ** 17
# below this many positions (H * W) the channel max over C of an NCHW tensor is faster through
# adaptive max pooling's channels-last kernel (vectorised across positions) than through amax
SMALL_P = 64


def _layout(x) -> str | None:
    """"nchw", "cl" or None (other strides: served by the reference)."""
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=_CL):
        return "cl"
    return None


def _cl_view(x1):
    """An NCHW ``[N, C, H, W]`` tensor's memory as the channels-last tensor ``[N, H*W, C, 1]``:
    adaptive max pooling of it is the maximum over C at every position, by the vectorised
    channels-last kernel (values and the index of the first maximal element, as torch.max)."""
    N, C, H, W = x1.shape
    P = H * W
    return x1.as_strided((N, P, C, 1), (C * P, 1, P, P))


def _first_max_index(t, mx, dim, size):
    """The index along ``dim`` of the first element of ``t`` equal to its maximum ``mx`` (keepdim
    shape), as torch.max(dim) returns it, by vectorised ops: a 0/1 mask of the maximal elements
    times descending weights ``size .. 1``, maximised. None where no element matched (NaN)."""
    shape = [1] * t.dim()
    shape[dim] = size
    desc = torch.arange(size, 0, -1, dtype=t.dtype).view(shape)
    mask = torch.eq(t, mx, out=torch.empty_like(t))
    r = mask.mul_(desc).amax(dim=dim, keepdim=True)
    if not bool(r.min() > 0):
        return None
    return (size - r).long()


def _exact_weights(x, size) -> bool:
    return x.dtype in (torch.float32, torch.float64) and size <= 2 ** 24


def _max_c(x1, out, need_index):
    """``x1.max(dim=1, keepdim=True)``: the values written to ``out`` ``[N, 1, H, W]``; returns
    the indices (the first maximal channel) when asked, else None."""
    N, C, H, W = x1.shape
    layout = _layout(x1)
    if not need_index:
        torch.amax(x1, dim=1, keepdim=True, out=out)
        return None
    if layout == "nchw":
        v, i = F.adaptive_max_pool2d(_cl_view(x1), 1, return_indices=True)
        out.copy_(v.view(N, 1, H, W))
        return i.view(N, 1, H, W)
    if layout == "cl" and _exact_weights(x1, C):
        torch.amax(x1, dim=1, keepdim=True, out=out)
        i = _first_max_index(x1, out, 1, C)
        if i is not None:
            return i
    v, i = x1.max(dim=1, keepdim=True)
    out.copy_(v)
    return i


def _max_hw(x, flat, out, need_index):
    """``flat.max(dim=2)`` for ``flat = x.flatten(2)`` ``[N, C, H*W]``: the values written to
    ``out`` ``[N, C]``; returns the indices (the first maximal position) when asked, else None."""
    if not need_index:
        torch.amax(flat, dim=2, out=out)
        return None
    layout = _layout(x)
    if layout == "cl":  # channels-last: adaptive max pooling's kernel, vectorised over C
        v, i = F.adaptive_max_pool2d(x, 1, return_indices=True)
        out.copy_(v.flatten(1))
        return i.flatten(1)
    P = flat.shape[2]
    if _exact_weights(x, P):
        torch.amax(flat, dim=2, out=out)
        i = _first_max_index(flat, out[:, :, None], 2, P)
        if i is not None:
            return i.view(out.shape)
    v, i = flat.max(dim=2)
    out.copy_(v)
    return i


# ----------------------------------------------------------------------------- small parts


def _spatial_order(pool):
    """(index of the max map, index of the mean map) in the ``[N, 2, H, W]`` pooled buffer."""
    return (1, 0) if pool == "mean_max" else (0, 1)


def _cast(params, dtype):
    return [p if p is None or p.dtype == dtype else p.to(dtype) for p in params]


# ----------------------------------------------------------------------------- forward


def _mlp(t, w1, b1, w2, b2):
    h = F.linear(t, w1, b1)
    return h if w2 is None else F.linear(F.relu(h), w2, b2)


def _inference(x, params, channel_pool, spatial_pool, bn):
    """The forward when nothing needs a gradient: the reference's ops with the max pools by amax
    (values only; below :data:`SMALL_P` positions the channel max through the vectorised
    channels-last kernel, which is faster there), the MLP run once over [avg; max], the last
    product in place. Few ops: at small shapes each op's dispatch is a visible share of a call.
    ``torch.add(0.5 * a, b, alpha=0.5)`` is the reference's ``0.5 * a + 0.5 * b`` in one op
    fewer (halving is exact)."""
    N, C, H, W = x.shape
    w1, b1, w2, b2, wc, bc = _cast(params, x.dtype)
    avg = x.mean(dim=(2, 3))
    if channel_pool == "avg":
        a = _mlp(avg, w1, b1, w2, b2)
    elif channel_pool == "light":
        a = _mlp(torch.add(0.5 * avg, x.amax(dim=(2, 3)), alpha=0.5), w1, b1, w2, b2)
    else:
        a = _mlp(torch.cat([avg, x.amax(dim=(2, 3))]), w1, b1, w2, b2).view(2, N, C).sum(dim=0)
    cg = torch.sigmoid(a)
    x1 = x * cg.view(N, C, 1, 1)
    mean = x1.mean(dim=1, keepdim=True)
    if H * W < SMALL_P and x1.is_contiguous():
        mx = F.adaptive_max_pool2d(_cl_view(x1), 1).view(N, 1, H, W)
    else:
        mx = x1.amax(dim=1, keepdim=True)
    if spatial_pool == "light":
        p = torch.add(0.5 * mean, mx, alpha=0.5)
    else:
        p = torch.cat([mx, mean] if spatial_pool == "max_mean" else [mean, mx], dim=1)
    sg = _conv_bn_sigmoid(p, wc, bc, bn)
    return x1.mul_(sg), cg, sg


def _conv_bn_sigmoid(p, wc, bc, bn):
    """The reference's conv, BatchNorm (its module call, dtype rule and running-statistics
    update) and sigmoid on the pooled maps."""
    k = wc.shape[-1]
    z = F.conv2d(p, wc, bc, padding=k // 2)
    if bn is not None:
        ref = bn.weight if bn.weight is not None else bn.running_mean
        z = bn(z.to(ref.dtype) if ref is not None else z).to(z.dtype)
    return torch.sigmoid(z)


def _forward_train(x, params, channel_pool, spatial_pool, bn, x_grad, x1_grad):
    """The training forward: y, cg, sg and what the backward needs. The gates' small graphs are
    built under grad mode from two leaves: the pooled vectors ``v`` (``[avg; max]`` ``[2N, C]``)
    and the pooled maps ``p`` ``[N, 2, H, W]``, each filled in place by the pools."""
    N, C, H, W = x.shape
    flat = x.flatten(2)
    two = channel_pool != "avg"
    v = x.new_empty((2 * N if two else N, C))
    torch.mean(flat, dim=2, out=v[:N])
    idx_hw = _max_hw(x, flat, v[N:], x_grad) if two else None
    with torch.enable_grad():
        v_l = v.requires_grad_(x_grad)
        w1, b1, w2, b2, wc, bc = _cast(params, x.dtype)
        if channel_pool == "avg_max":
            a = _mlp(v_l, w1, b1, w2, b2).view(2, N, C).sum(dim=0)
        elif channel_pool == "avg":
            a = _mlp(v_l, w1, b1, w2, b2)
        else:  # light
            a = _mlp(0.5 * v_l[:N] + 0.5 * v_l[N:], w1, b1, w2, b2)
        cg = torch.sigmoid(a)
    cg_d = cg.detach()
    x1 = x * cg_d.view(N, C, 1, 1)
    p = x1.new_empty((N, 2, H, W))
    i_max, i_mean = _spatial_order(spatial_pool)
    torch.mean(x1, dim=1, keepdim=True, out=p[:, i_mean:i_mean + 1])
    idx_c = _max_c(x1, p[:, i_max:i_max + 1], x1_grad)
    with torch.enable_grad():
        p_l = p.requires_grad_(x1_grad)
        sg = _conv_bn_sigmoid(0.5 * p_l[:, 1:2] + 0.5 * p_l[:, 0:1] if spatial_pool == "light" else p_l, wc, bc, bn)
    sg_d = sg.detach()
    y = x1.mul_(sg_d)  # x1 is not needed again: the backward works from x
    return y, cg_d, sg_d, (v_l, cg, idx_hw, p_l, sg, idx_c)


def _lean_train(x, params, channel_pool, spatial_pool, bn):
    """Training on a small x (at most :data:`LEAN_NUMEL` elements): differentiable PyTorch ops,
    autograd's own backward. There the full-size passes are cheap and a call's cost is mostly its
    op count, which this keeps near the reference's; it still runs the MLP once over [avg; max]
    and takes the channel max over C through the channels-last kernel. Gradient rule as the
    reference's: to the first maximal element (torch.max / adaptive max pooling indices)."""
    N, C, H, W = x.shape
    w1, b1, w2, b2, wc, bc = _cast(params, x.dtype)
    flat = x.flatten(2)
    avg = flat.mean(dim=2)
    layout = _layout(x)
    if channel_pool == "avg":
        a = _mlp(avg, w1, b1, w2, b2)
    else:
        if not x.requires_grad:  # no gradient flows back through this max: values only
            mx = flat.amax(dim=2)
        elif layout == "cl":
            mx = F.adaptive_max_pool2d(x, 1).flatten(1)
        else:
            mx = flat.max(dim=2).values
        if channel_pool == "light":
            a = _mlp(0.5 * avg + 0.5 * mx, w1, b1, w2, b2)
        else:
            a = _mlp(torch.cat([avg, mx]), w1, b1, w2, b2).view(2, N, C).sum(dim=0)
    cg = torch.sigmoid(a)
    x1 = x * cg.view(N, C, 1, 1)
    mean = x1.mean(dim=1, keepdim=True)
    if not x1.requires_grad:
        mx = x1.amax(dim=1, keepdim=True)
    elif layout == "nchw":
        mx = F.adaptive_max_pool2d(_cl_view(x1), 1).view(N, 1, H, W)
    else:
        mx = x1.max(dim=1, keepdim=True).values
    if spatial_pool == "light":
        p = 0.5 * mean + 0.5 * mx
    else:
        p = torch.cat([mx, mean] if spatial_pool == "max_mean" else [mean, mx], dim=1)
    sg = _conv_bn_sigmoid(p, wc, bc, bn)
    return x1 * sg, cg, sg


# ----------------------------------------------------------------------------- training


class _CBAMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opts, x, w1, b1, w2, b2, wc, bc, bn_w, bn_b):
        channel_pool, spatial_pool, bn = opts
        ctx.set_materialize_grads(False)
        ctx.opts = opts
        mlp_params = [p for p in (w1, b1, w2, b2) if p is not None and p.requires_grad]
        conv_params = [p for p in (wc, bc, bn_w, bn_b) if p is not None and p.requires_grad]
        x_grad = x.requires_grad
        x1_grad = x_grad or bool(mlp_params)  # a gradient flows into x1 = x * cg
        y, cg, sg, (v_l, cg_g, idx_hw, p_l, sg_g, idx_c) = _forward_train(
            x, (w1, b1, w2, b2, wc, bc), channel_pool, spatial_pool, bn, x_grad, x1_grad)
        ctx.graphs = (cg_g, [v_l] if x_grad else [], mlp_params, sg_g, [p_l] if x1_grad else [], conv_params)
        ctx.grad_flags = (x_grad, x1_grad)
        ctx.save_for_backward(x, cg, sg, idx_hw, idx_c, w1, b1, w2, b2, wc, bc, bn_w, bn_b)
        return y, cg, sg

    @staticmethod
    def backward(ctx, gy, gcg_out, gsg_out):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient, by the reference ops
            return (None, *_recompute_grads(ctx.opts, saved, gy, gcg_out, gsg_out))
        x, cg, sg, idx_hw, idx_c = saved[:5]
        params = saved[5:]
        channel_pool, spatial_pool, _ = ctx.opts
        x_grad, x1_grad = ctx.grad_flags
        cg_g, ch_leaves, mlp_params, sg_g, sp_leaves, conv_params = ctx.graphs
        N, C, H, W = x.shape
        P = H * W
        grads = {}
        if gy is None:
            gy = torch.zeros_like(x)
        xf = x.flatten(2)
        # fp16/bf16: the reference's rounding order (products with x1 = x * cg, rounded as the
        # forward rounded it); fp32/fp64: t = dy * x, then d sg = sum_c t * cg and d cg's first
        # term sum_p t * sg by matrix products (no x1 kept or recomputed)
        low = x.dtype in (torch.float16, torch.bfloat16)
        if low:
            x1 = x * cg.view(N, C, 1, 1)
            gsg = (gy * x1).sum(dim=1, keepdim=True)
        else:
            t = (gy * x).flatten(2)
            gsg = torch.bmm(cg[:, None, :], t).view(N, 1, H, W)
        if gsg_out is not None:
            gsg = gsg + gsg_out
        g_p = None
        if sp_leaves or conv_params:
            out = torch.autograd.grad(sg_g, sp_leaves + conv_params, gsg, retain_graph=True, allow_unused=True)
            g_p = out[0] if sp_leaves else None
            grads.update(zip(map(id, conv_params), out[len(sp_leaves):]))
        if not x1_grad:
            return (None, None, *(None if q is None else grads.get(id(q)) for q in params))

        i_max, i_mean = _spatial_order(spatial_pool)
        g_mean = g_p[:, i_mean:i_mean + 1]
        g_smx = g_p[:, i_max:i_max + 1].reshape(N, 1, P)
        ic = idx_c.view(N, 1, P)
        # d x1 = dy * sg + d mean / C + d max at the max channel; d cg = sum_p d x1 * x
        gx = torch.addcmul(g_mean / C, gy, sg, out=torch.empty_like(x))
        gxf = gx.flatten(2)
        gxf.scatter_add_(1, ic, g_smx)
        if low:
            gcg = (gx * x).sum(dim=(2, 3))
        else:
            gcg = torch.baddbmm(torch.bmm(t, sg.view(N, P, 1)), xf, g_mean.reshape(N, P, 1), alpha=1.0 / C).view(N, C)
            gcg.scatter_add_(1, ic.view(N, P), (xf.gather(1, ic) * g_smx).view(N, P))
        if gcg_out is not None:
            gcg = gcg + gcg_out
        out = torch.autograd.grad(cg_g, ch_leaves + mlp_params, gcg, retain_graph=True, allow_unused=True)
        grads.update(zip(map(id, mlp_params), out[len(ch_leaves):]))
        if not x_grad:
            gx = None
        else:
            g_v = out[0]
            # d x = d x1 * cg + d avg / P + d max at the max position
            torch.addcmul((g_v[:N] / P).view(N, C, 1, 1), gx, cg.view(N, C, 1, 1), out=gx)
            if idx_hw is not None:
                gxf.scatter_add_(2, idx_hw[:, :, None], g_v[N:, :, None])
        return (None, gx, *(None if q is None else grads.get(id(q)) for q in params))


class _BNCall:
    """A stand-in for the bn module in a recomputation: the module's forward on the given weight
    and bias (the reference's dtype rule included), leaving the running statistics alone."""

    def __init__(self, bn, weight, bias):
        self.weight, self.bias, self.running_mean = weight, bias, bn.running_mean
        self._bn = bn

    def __call__(self, z):
        bn = self._bn
        batch = bn.training or bn.running_mean is None
        return F.batch_norm(z, None if batch else bn.running_mean, None if batch else bn.running_var,
                            self.weight, self.bias, batch, 0.0, bn.eps)


def _recompute_grads(opts, saved, gy, gcg_out, gsg_out):
    """The gradients as a graph (double backward): recompute through reference.cbam's ops."""
    channel_pool, spatial_pool, bn = opts
    x, params = saved[0], saved[5:]
    inputs = [t for t in (x, *params) if t is not None and t.requires_grad]
    y, cg, sg = reference.cbam(x, *params[:6], channel_pool=channel_pool, spatial_pool=spatial_pool,
                               bn=None if bn is None else _BNCall(bn, *params[6:]), return_gates=True)
    outs, gouts = zip(*[(o, g) for o, g in ((y, gy), (cg, gcg_out), (sg, gsg_out)) if g is not None])
    got = dict(zip(map(id, inputs), torch.autograd.grad(outs, inputs, gouts, create_graph=True, allow_unused=True)))
    return tuple(None if t is None else got.get(id(t)) for t in (x, *params))


# ----------------------------------------------------------------------------- entry point


def cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias=None, *,
         channel_pool="avg_max", spatial_pool="max_mean", bn=None, return_gates=False):
    """:func:`reference.cbam` for CPU tensors (inputs already checked by :func:`functional.cbam`)."""
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
    if not served(x):
        return reference.cbam(x, *params, channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn,
                              return_gates=return_gates)
    bn_w = None if bn is None else bn.weight
    bn_b = None if bn is None else bn.bias
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params, bn_w, bn_b))):
        y, cg, sg = _inference(x, params, channel_pool, spatial_pool, bn)
    elif x.numel() <= LEAN_NUMEL:
        y, cg, sg = _lean_train(x, params, channel_pool, spatial_pool, bn)
    else:
        y, cg, sg = _CBAMFunction.apply((channel_pool, spatial_pool, bn), x, *params, bn_w, bn_b)
    return (y, cg, sg) if return_gates else y
