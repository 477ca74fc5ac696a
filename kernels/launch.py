"""Launchers: allocate outputs, pick block sizes, run the Triton kernels of a CBAM forward or backward.

Full-size passes (S = |x| in bytes; see shared bytes model in the README's design notes):

forward, 3 reads + 1 write (compulsory: 1 read + 1 write):
  1. ``channel_pool_kernel``  reads x      -> pooled sum/max partials     (then the tiny MLP kernel)
  2. ``spatial_pool_kernel``  reads x      -> max/mean over C of x*cg     (x*cg is never stored)
  3. ``spatial_gate_kernel``  reads x      -> conv, sigmoid, writes y = x*cg*sg
  Each pass needs the full result of the previous one (the MLP needs every position's pool,
  the conv needs its neighbours' channel pools), so three grid-wide dependencies force three
  streams over x; passes 2 and 3 hit L2 when the working set fits.

backward, x read twice, dy twice, dx written once (compulsory: 2 reads + 1 write):
  1. ``bwd_reduce_kernel``   reads x, dy -> dz = dL/d(conv out), dL/dcg partials, pool partials
  2. ``bwd_spatial_kernel``  reads x     -> transposed conv of dz, conv weight partials, rest of dL/dcg
  3. ``bwd_dx_kernel``       reads dy    -> writes dx
  dL/dcg needs sum_p x * d(mean map), and d(mean map) needs dz at the conv's neighbours, which
  needs the full channel reduction of pass 1: the second read of x cannot be folded into the
  first without a grid-wide sync. dx needs no x: ``(dy sg + d(mean map)/C + d(max map) at the
  saved argmax) cg + the channel pools' gradients`` (the max pool's through its saved index).
  The MLP backward and its weight gradient (``channel_mlp_*``) touch only [N, C] and [HID, C] data.

Saved between forward and backward besides x: the gates' pre-activations a [N, C] and z [N, P],
smap [N, 2, P] and sidx [N, P] (int32) -- 4 * (N*C + 4*N*P) bytes in fp32, under 5% of |x| for the ResNet-50 CBAM
stages in 16-bit (largest: 4.5% at 2048x7x7). The channel pools are recomputed by backward
pass 1 rather than saved.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton

from .channel import channel_mlp_bwd_kernel, channel_mlp_fwd_kernel, channel_mlp_wgrad_kernel, channel_pool_kernel
from .common import LAYOUT_CCONTIG, LAYOUT_PCONTIG, LAYOUT_STRIDED
from .plan import Plan, Ref, Traffic, execute, sm_count
from .spatial import bwd_dx_kernel, bwd_reduce_kernel, bwd_spatial_kernel, spatial_gate_kernel, spatial_pool_kernel

KERNEL_SIZES = (3, 5, 7)


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Block sizes for one input layout. Fixed per layout so the compile check covers them all."""

    pool_c: int  # channel_pool_kernel tile
    pool_p: int
    stream_c: int  # tile of every kernel with one program per (sample, position block)
    stream_p: int
    warps: int = 8  # for the pool and stream kernels: 2048-element tiles, 8 per thread
    mlp_c: int = 32  # 64 spilled in channel_mlp_bwd_kernel on sm_80
    mlp_h: int = 16
    mlp_warps: int = 4


# p-contiguous (NCHW): long runs along H*W; channels_last: long runs along C.
BLOCKS = {
    LAYOUT_PCONTIG: Blocks(pool_c=16, pool_p=128, stream_c=32, stream_p=64),
    LAYOUT_CCONTIG: Blocks(pool_c=64, pool_p=32, stream_c=64, stream_p=32),
}


def blocks_for(layout: int, dtype: torch.dtype) -> Blocks:
    """Block sizes for a layout and io dtype: fp64 (gradcheck) halves the channel tiles (the MLP
    kernels' too) and gives the MLP kernels 8 warps; otherwise they spill on sm_80 (seen:
    channel_mlp_bwd_kernel with 32-channel tiles, STACK 8, for the light channel pool)."""
    blk = BLOCKS[layout]
    if dtype == torch.float64:
        blk = dataclasses.replace(blk, pool_c=blk.pool_c // 2, stream_c=blk.stream_c // 2, mlp_c=blk.mlp_c // 2,
                                  mlp_warps=8)
    return blk


def dy_block_c(blk: Blocks, layout: int, dy_layout: int) -> int:
    """Channel tile of the backward kernels that read dy (``bwd_reduce_kernel``, ``bwd_dx_kernel``):
    halved when dy's layout is not x's (a channels_last dy for an NCHW x, an expanded stride-0
    dy, ...), whose tiles the compiler re-lays out in registers: with triton 3.6,
    bwd_reduce_kernel spilled (STACK 8) on sm_80 for fp32 NCHW x and channels_last dy at 32."""
    return blk.stream_c if dy_layout == layout else blk.stream_c // 2


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- size limits

# Offsets into every tensor are int64 in the kernels; what stays int32 is an index inside one
# sample: a channel, a position (the argmax positions are stored as int32), a position block's
# start and end (a pooling split's end can reach about 1.5 * H*W), and first_argmax's key
# ``index + 2**30``. Hence the limit on H*W and C.
MAX_POSITIONS = 2**29
MAX_CHANNELS = 2**29
GRID_X_MAX, GRID_YZ_MAX = 2**31 - 1, 65535  # CUDA's grid limits


def stream_grid(N: int, P: int, blk: "Blocks"):
    """Grid of the kernels with one program per (sample, block of positions): one dimension,
    since the number of position blocks alone passes CUDA's 65535 for the second one."""
    return (N * triton.cdiv(P, blk.stream_p),)


def check_launchable(shape, hidden: int, blk: "Blocks") -> None:
    """ValueError, before any launch, for a shape the kernels cannot index or launch."""
    N, C, H, W = shape
    P = H * W
    if P > MAX_POSITIONS:
        raise ValueError(f"cbam: H*W = {P} positions (shape {tuple(shape)}) exceeds the kernels' limit of 2**29")
    if C > MAX_CHANNELS:
        raise ValueError(f"cbam: {C} channels exceeds the kernels' limit of 2**29")
    grids = {
        "channel pooling": (N * triton.cdiv(C, blk.pool_c), 1),
        "spatial passes": stream_grid(N, P, blk),
        "MLP": (N,),
        "MLP weight gradient": (triton.cdiv(hidden, blk.mlp_h), triton.cdiv(C, blk.mlp_c)),
    }
    for name, grid in grids.items():
        if grid[0] > GRID_X_MAX or any(d > GRID_YZ_MAX for d in grid[1:]):
            raise ValueError(f"cbam: input of shape {tuple(shape)} is too large: the {name} grid {grid} exceeds CUDA's limits")


# ----------------------------------------------------------------------------- allocation

# Set by the test suite: every buffer a launcher allocates is filled with NaN (floating) or an
# out-of-range index (int32), so an element a kernel fails to write cannot pass a comparison.
POISON = False


def _empty(shape, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if POISON:
        t.fill_(float("nan") if dtype.is_floating_point else -(2**31))
    return t


# ----------------------------------------------------------------------------- layouts


def _flat_strides(t: torch.Tensor):
    """Strides of t viewed as [N, C, H*W], or None when H and W cannot be merged."""
    s_n, s_c, s_h, s_w = t.stride()
    _, _, h, w = t.shape
    if h == 1:
        return s_n, s_c, s_w
    if w == 1:
        return s_n, s_c, s_h
    if s_h != w * s_w:
        return None
    return s_n, s_c, s_w


def layout_of(t: torch.Tensor):
    """(layout, strides) of a 4-D tensor for the kernels, or (None, None) if it needs a copy."""
    strides = _flat_strides(t)
    if strides is None:
        return None, None
    _, s_c, s_p = strides
    if s_p == 1:
        return LAYOUT_PCONTIG, strides
    if s_c == 1:
        return LAYOUT_CCONTIG, strides
    return LAYOUT_STRIDED, strides


def prepare_input(x: torch.Tensor):
    """x itself when its layout is served (NCHW- or channels_last-like), else a contiguous copy."""
    layout, strides = layout_of(x)
    if layout not in (LAYOUT_PCONTIG, LAYOUT_CCONTIG):
        x = x.contiguous()
        layout, strides = layout_of(x)
    return x, layout, strides


def _served_blocks(x: torch.Tensor) -> Blocks:
    """The block sizes x will be served with (a copied input becomes NCHW), without copying it."""
    layout, _ = layout_of(x)
    return blocks_for(layout if layout in BLOCKS else LAYOUT_PCONTIG, x.dtype)


def _memory_format(layout: int):
    return torch.channels_last if layout == LAYOUT_CCONTIG else torch.contiguous_format


# ----------------------------------------------------------------------------- forward

POOL_AVG_MAX, POOL_AVG, POOL_LIGHT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class ChannelMLP:
    """How the channel gate is formed (compile-time options of the MLP kernels).

    pool: POOL_AVG_MAX (``MLP(avg) + MLP(max)``), POOL_AVG (``MLP(avg)``) or POOL_LIGHT
    (``MLP(avg / 2 + max / 2)``). two_layer: ``W2 relu(W1 v + b1) + b2``, else ``W1 v + b1``.
    """

    pool: int = POOL_AVG_MAX
    two_layer: bool = True


@dataclasses.dataclass
class Saved:
    """What the backward needs besides x and the parameters (all small)."""

    a: torch.Tensor  # [N, C]    acc dtype, channel gate pre-activation (cg = sigmoid(a))
    z: torch.Tensor  # [N, P]    acc dtype, spatial gate pre-activation (sg = sigmoid(z))
    smap: torch.Tensor  # [N, 2, P] acc dtype
    sidx: torch.Tensor  # [N, P]    int32


def _pool_splits(n_rows: int, P: int, block_p: int, device: torch.device) -> int:
    """Split H*W across programs when N * C-blocks alone cannot fill the device (4 programs per SM)."""
    target = 4 * sm_count(device)
    return max(1, min(triton.cdiv(P, block_p), triton.cdiv(target, n_rows)))


def _stream_traffic(N, C, P, es, block_c, block_p, loads, stores) -> Traffic:
    """A (sample, position block) program looping over the channels, loading ``loads`` and
    storing ``stores`` full-size tensors."""
    S = N * C * P * es
    per_program = min(block_p, P) * C * es * loads
    return Traffic(S * (loads + stores), per_program, block_c * block_p * es * loads)


def _mlp_traffic(N, C, HID, n_parts, weight_passes, ws, blk, partials=3) -> Traffic:
    """A per-sample MLP program: it reduces ``n_parts`` rows of ``partials`` [C] vectors, then
    streams the weights ``weight_passes`` times ([HID, C] each), one tile at a time."""
    per_program = 4 * n_parts * C * partials + weight_passes * HID * C * ws
    return Traffic(N * per_program, per_program, blk.mlp_h * blk.mlp_c * ws, "l2")


def plan_forward(x, w1, b1, w2, b2, wc, bc, mlp: ChannelMLP = ChannelMLP(), spatial_preact=None) -> Plan:
    """The fused CBAM forward as a :class:`Plan` (nothing runs until :func:`execute`).

    x: [N, C, H, W] fp16/bf16/fp32/fp64, NCHW or channels_last (other strides are copied).
    w1: [HID, C], b1: [HID] or None, w2: [C, HID] or None (single layer), b2: [C] or None (b1
    and b2 both given or both None), wc: [2*K*K] (max taps, then mean taps), bc: [1] or None --
    parameters in the acc dtype, contiguous.
    spatial_preact: None, or a function ``smap [N, 2, H, W] -> pre-activation [N, 1, H, W]``
    (the conv and a training-mode BatchNorm, in PyTorch ops) used instead of the in-kernel conv.
    The plan's env holds ``y`` (x's memory format and dtype) and ``saved`` (:class:`Saved`).
    """
    check_launchable(x.shape, w1.shape[0], _served_blocks(x))  # before any copy or launch
    x, layout, (s_n, s_c, s_p) = prepare_input(x)
    N, C, H, W = x.shape
    P = H * W
    HID = w1.shape[0]
    K = math.isqrt(wc.numel() // 2)
    dev, acc = x.device, acc_dtype(x.dtype)
    blk = blocks_for(layout, x.dtype)
    es, ws = x.element_size(), w1.element_size()
    S = x.numel() * es
    plan = Plan()

    n_cblocks = triton.cdiv(C, blk.pool_c)
    n_splits = _pool_splits(N * n_cblocks, P, blk.pool_p, dev)
    p_per_split = triton.cdiv(triton.cdiv(P, n_splits), blk.pool_p) * blk.pool_p
    n_splits = triton.cdiv(P, p_per_split)
    psum = _empty((N, n_splits, C), acc, dev)
    pmax = _empty((N, n_splits, C), acc, dev)
    pidx = _empty((N, n_splits, C), torch.int32, dev)
    plan.launch("channel_pool", channel_pool_kernel, (N * n_cblocks, n_splits),
                (x, psum, pmax, pidx, C, P, p_per_split, n_splits, s_n, s_c, s_p),
                dict(LAYOUT=layout, BLOCK_C=blk.pool_c, BLOCK_P=blk.pool_p), num_warps=blk.warps, reads=("x",),
                traffic=Traffic(S, blk.pool_c * min(p_per_split, P) * es, blk.pool_c * blk.pool_p * es))

    cg = _empty((N, C), acc, dev)
    a = _empty((N, C), acc, dev)
    vscr = _empty((N, 2, C), acc, dev)
    hscr = _empty((N, HID), acc, dev)
    has_bias = b1 is not None
    plan.launch("channel_mlp", channel_mlp_fwd_kernel, (N,),
                (psum, pmax, pidx, w1, b1 if has_bias else w1, w2 if w2 is not None else w1,
                 b2 if has_bias else w1, cg, a, vscr, hscr, C, HID, P, n_splits),
                dict(POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias, BLOCK_C=blk.mlp_c, BLOCK_H=blk.mlp_h),
                num_warps=blk.mlp_warps,
                traffic=_mlp_traffic(N, C, HID, n_splits, 1 + mlp.two_layer, ws, blk))

    smap = _empty((N, 2, P), acc, dev)
    sidx = _empty((N, P), torch.int32, dev)
    plan.launch("spatial_pool", spatial_pool_kernel, stream_grid(N, P, blk),
                (x, cg, smap, sidx, C, P, s_n, s_c, s_p),
                dict(LAYOUT=layout, BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p), num_warps=blk.warps, reads=("x",),
                traffic=_stream_traffic(N, C, P, es, blk.stream_c, blk.stream_p, loads=1, stores=0))

    gate_map = smap
    if spatial_preact is not None:
        def preact(env):
            env["pre_act"] = spatial_preact(smap.view(N, 2, H, W)).reshape(N, P).to(acc).contiguous()

        plan.torch_step("spatial_preact", preact)
        gate_map = Ref("pre_act")
    y = _empty(x.shape, x.dtype, dev, _memory_format(layout))
    _, (y_n, y_c, y_p) = layout_of(y)
    z = _empty((N, P), acc, dev)
    plan.launch("spatial_gate", spatial_gate_kernel, stream_grid(N, P, blk),
                (x, y, cg, gate_map, wc, bc if bc is not None else wc, z, C, P, H, W, s_n, s_c, s_p, y_n, y_c, y_p),
                dict(LAYOUT=layout, KSIZE=K if spatial_preact is None else 1,
                     HAS_CONV_BIAS=spatial_preact is None and bc is not None, PRE_ACT=spatial_preact is not None,
                     BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p),
                num_warps=blk.warps, reads=("x",), writes=("y",),
                traffic=_stream_traffic(N, C, P, es, blk.stream_c, blk.stream_p, loads=1, stores=1))
    plan.env.update(y=y, saved=Saved(a=a, z=z, smap=smap, sidx=sidx))
    return plan


def cbam_forward(x, w1, b1, w2, b2, wc, bc, mlp: ChannelMLP = ChannelMLP(), spatial_preact=None):
    """Fused CBAM forward (arguments as :func:`plan_forward`). Returns (y, Saved)."""
    env = execute(plan_forward(x, w1, b1, w2, b2, wc, bc, mlp=mlp, spatial_preact=spatial_preact))
    return env["y"], env["saved"]


# ----------------------------------------------------------------------------- backward


def plan_backward(dy, x, saved: Saved, w1, b1, w2, wc, need_x: bool, need_mlp: bool, need_conv: bool,
                  mlp: ChannelMLP = ChannelMLP(), dz_hook=None) -> Plan:
    """The fused CBAM backward as a :class:`Plan`.

    dy: [N, C, H, W] in any strides (stride-0 expanded included); x, the parameters and ``mlp``
    as given to :func:`plan_forward`. dz_hook: None, or a function mapping dL/d(pre-activation)
    ``[N, 1, H, W]`` to dL/d(conv output) (the backward of ``spatial_preact``'s BatchNorm).
    The env holds ``dx`` (or None), ``mlp_grads`` ((dw1, db1, dw2, db2) or None), ``conv_grads``
    ((dwc, dbc) or None) and ``dz``: dx in x's dtype and memory format, parameter gradients in the
    acc dtype (dwc flat ``[2*K*K]``, dbc ``[1]``), dz the ``[N, P]`` gradient of the spatial gate's
    pre-activation.
    """
    check_launchable(x.shape, w1.shape[0], _served_blocks(x))
    x, layout, (s_xn, s_xc, s_xp) = prepare_input(x)
    dy_layout, dy_strides = layout_of(dy)
    if dy_layout is None:
        dy = dy.contiguous(memory_format=_memory_format(layout))
        dy_layout, dy_strides = layout_of(dy)
    s_gn, s_gc, s_gp = dy_strides
    N, C, H, W = x.shape
    P = H * W
    HID = w1.shape[0]
    K = math.isqrt(wc.numel() // 2)
    dev, acc = x.device, acc_dtype(x.dtype)
    blk = blocks_for(layout, x.dtype)
    es, ws = x.element_size(), w1.element_size()
    n_pb = triton.cdiv(P, blk.stream_p)
    grid = stream_grid(N, P, blk)
    stream = dict(BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p)
    dy_stream = dict(stream, BLOCK_C=dy_block_c(blk, layout, dy_layout))
    plan = Plan()
    plan.env.update(dx=None, mlp_grads=None, conv_grads=None)

    # pass 1: dz, first half of dL/dcg, channel-pool partials (one split per position block)
    dz = _empty((N, P), acc, dev)
    psum = _empty((N, n_pb, C), acc, dev)
    pmax = _empty((N, n_pb, C), acc, dev)
    pidx = _empty((N, n_pb, C), torch.int32, dev)
    pdcg = _empty((N, n_pb, C), acc, dev)
    plan.launch("bwd_reduce", bwd_reduce_kernel, grid,
                (x, dy, saved.a, saved.z, dz, psum, pmax, pidx, pdcg, C, P, s_xn, s_xc, s_xp, s_gn, s_gc, s_gp),
                dict(X_LAYOUT=layout, DY_LAYOUT=dy_layout, **dy_stream), num_warps=blk.warps, reads=("x", "dy"),
                traffic=_stream_traffic(N, C, P, es, dy_stream["BLOCK_C"], blk.stream_p, loads=2, stores=0))
    plan.env["dz"] = dz
    dz_conv = dz
    if dz_hook is not None:
        def hook(env):
            env["dz_conv"] = dz_hook(dz.view(N, 1, H, W)).reshape(N, P).to(acc).contiguous()

        plan.torch_step("dz_hook", hook)
        dz_conv = Ref("dz_conv")

    # pass 2: transposed conv, conv weight partials, second half of dL/dcg
    ds = _empty((N, 2, P), acc, dev)
    pdw = _empty((N * n_pb, 2 * K * K + 1), acc, dev)
    plan.launch("bwd_spatial", bwd_spatial_kernel, grid,
                (x, dz_conv, saved.smap, saved.sidx, wc, pdcg, ds, pdw, C, P, H, W, s_xn, s_xc, s_xp),
                dict(X_LAYOUT=layout, KSIZE=K, **stream), num_warps=blk.warps, reads=("x",),
                traffic=_stream_traffic(N, C, P, es, blk.stream_c, blk.stream_p, loads=1, stores=0))
    if need_conv:
        def conv_grads(env):
            # [N * NPB, 2K*K + 1] -> [2K*K + 1]: a fixed-order torch reduction (deterministic, tiny)
            pdw_sum = pdw.sum(dim=0)
            env["conv_grads"] = (pdw_sum[: 2 * K * K], pdw_sum[2 * K * K :])

        plan.torch_step("conv_wgrad_sum", conv_grads)

    if not (need_x or need_mlp):
        return plan

    has_bias = b1 is not None
    opts = dict(POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias, BLOCK_C=blk.mlp_c, BLOCK_H=blk.mlp_h)
    w2_arg = w2 if w2 is not None else w1
    vscr = _empty((N, 2, C), acc, dev)
    da = _empty((N, C), acc, dev)
    dpre = _empty((N, 2, HID), acc, dev)
    hs = _empty((N, HID), acc, dev)
    dpool = _empty((N, 2, C), acc, dev)
    idxp = _empty((N, C), torch.int32, dev)
    plan.launch("channel_mlp_bwd", channel_mlp_bwd_kernel, (N,),
                (psum, pmax, pidx, pdcg, saved.a, w1, b1 if has_bias else w1, w2_arg,
                 vscr, da, dpre, hs, dpool, idxp, C, HID, P, n_pb), opts, num_warps=blk.mlp_warps,
                traffic=_mlp_traffic(N, C, HID, n_pb, 1 + 2 * mlp.two_layer, ws, blk, partials=4))

    if need_mlp:
        dw1 = _empty((HID, C), acc, dev)
        db1 = _empty((HID,), acc, dev) if has_bias else None
        dw2 = _empty((C, HID), acc, dev) if mlp.two_layer else None
        db2 = _empty((C,), acc, dev) if has_bias and mlp.two_layer else None
        plan.launch("channel_mlp_wgrad", channel_mlp_wgrad_kernel, (triton.cdiv(HID, blk.mlp_h), triton.cdiv(C, blk.mlp_c)),
                    (vscr, da, dpre, hs, dw1, db1 if db1 is not None else dw1,
                     dw2 if dw2 is not None else dw1, db2 if db2 is not None else dw1, N, C, HID),
                    opts, num_warps=blk.mlp_warps,
                    traffic=Traffic(4 * N * (4 * C + 3 * HID) + 4 * 2 * HID * C,
                                    4 * N * 2 * (2 * blk.mlp_h + 2 * blk.mlp_c), 4 * 2 * (2 * blk.mlp_h + 2 * blk.mlp_c),
                                    "l2"))
        plan.env["mlp_grads"] = (dw1, db1, dw2, db2)

    if need_x:
        dx = _empty(x.shape, x.dtype, dev, _memory_format(layout))
        _, (s_dn, s_dc, s_dp) = layout_of(dx)
        plan.launch("bwd_dx", bwd_dx_kernel, grid,
                    (dy, dx, saved.a, saved.z, ds, saved.sidx, dpool, idxp, C, P, s_gn, s_gc, s_gp, s_dn, s_dc, s_dp),
                    dict(X_LAYOUT=layout, DY_LAYOUT=dy_layout, **dy_stream), num_warps=blk.warps,
                    reads=("dy",), writes=("dx",),
                    traffic=_stream_traffic(N, C, P, es, dy_stream["BLOCK_C"], blk.stream_p, loads=1, stores=1))
        plan.env["dx"] = dx
    return plan


def cbam_backward(dy, x, saved: Saved, w1, b1, w2, wc, need_x: bool, need_mlp: bool, need_conv: bool,
                  mlp: ChannelMLP = ChannelMLP(), dz_hook=None):
    """Fused CBAM backward (arguments as :func:`plan_backward`).
    Returns (dx or None, (dw1, db1, dw2, db2) or None, (dwc, dbc) or None, dz)."""
    env = execute(plan_backward(dy, x, saved, w1, b1, w2, wc, need_x, need_mlp, need_conv, mlp=mlp, dz_hook=dz_hook))
    return env["dx"], env["mlp_grads"], env["conv_grads"], env["dz"]
