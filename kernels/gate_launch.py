"""Launchers of the pooled-gate family (kernels/gate.py): each full-size pass planned as a value
(:class:`kernels.plan.Plan`), then run.

A call of the channel gate or the spatial gate is four launches, around a tiny step on
``[N, K]`` that the caller runs as PyTorch ops (cbam_fast/gates.py):

* forward: :func:`plan_pool` (mean, max, argmax over R) -> tiny step -> :func:`plan_scale` (``y =
  x * g``); or, for the channel gate with a plain MLP, :func:`plan_mlp_forward`: the tiny step
  folded into the two launches (CBAM's channel pooling pass, then the scale pass with the
  MLP's second layer and the gate), nothing between them;
* backward: :func:`plan_bwd_reduce` (``dg = sum_r dy * x``) -> the tiny step's backward ->
  :func:`plan_bwd_dx`; or, for the folded MLP, :func:`plan_mlp_backward`: the reduce pass with the
  MLP's backward in it, the parameter gradients, dx: 3 launches and nothing between them.

x is read twice in the forward (once from L2 where it fits: the two passes walk the batch in
opposite directions, ``ORDER``) and once in the backward; dy twice. Nothing full-size is saved
for the backward besides x: the gate ``g`` ``[N, K]`` and the argmax ``[N, K]`` int32 (the folded
MLP: its hidden vector and pre-activations, ``[N, 3, HID]``; the pools are computed again).
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from .gate import gate_bwd_dx_kernel, gate_reduce_kernel, gate_scale_kernel
from .launch import GRID_X_MAX, MAX_CHANNELS, MAX_POSITIONS, NUM_STAGES, ChannelMLP, _counters, _empty, slab_block_h
from .launch import POOL_AVG, _pool_splits, _served_blocks, acc_dtype, blocks_for, check_launchable
from .launch import launch_channel_pool, launch_param_grads
from .launch import _memory_format, layout_of, pool_tile, prepare_input, stream_output
from .launch import CONV_LIGHT, CONV_MAX_MEAN, CONV_MEAN_MAX, _channel_splits, conv_taps, launch_spatial_gate
from .plan import Plan, Traffic, execute, sm_count

# The gate function of the folded MLP (gate_scale_kernel GATE): sigmoid, hard_sigmoid.
GATE_SIGMOID, GATE_HARD_SIGMOID = 0, 1

# The gated axis: the channel gate (squeeze-and-excitation, K = C, pooled over R = H*W) or the
# spatial gate (K = H*W, pooled over R = C).
AXIS_CHANNEL, AXIS_SPATIAL = 0, 1
# The direction each pass walks the batch in (kernels/common.py sample_major): consecutive
# passes over the same tensor alternate, so each starts on what its predecessor read last.
ORDER = dict(gate_pool=0, gate_scale=1, gate_bwd_reduce=0, gate_bwd_dx=1)  # by role
TILE_ELEMENTS = 2048  # per program and loop stage: 8 per thread at 8 warps (fp64: half)
CONTIG_BLOCK = 128  # the tile's extent along the contiguous axis: 256 contiguous bytes in 16-bit


@dataclasses.dataclass(frozen=True)
class GateView:
    """x as ``[N, K, R]``: sizes, strides, and the tile_offsets layout of the view (0: R is
    contiguous, 1: K is, 2: neither)."""

    N: int
    K: int
    R: int
    s_n: int
    s_k: int
    s_r: int
    layout: int


def gate_view(t: torch.Tensor, axis: int) -> GateView:
    """The ``[N, K, R]`` view of a 4-D tensor whose H and W merge (layout_of's strides)."""
    _, strides = layout_of(t)
    if strides is None:
        raise ValueError("cbam_fast: a tensor whose H and W do not merge reached the gate kernels")
    s_n, s_c, s_p = strides
    N, C, H, W = t.shape
    if axis == AXIS_CHANNEL:
        K, R, s_k, s_r = C, H * W, s_c, s_p
    else:
        K, R, s_k, s_r = H * W, C, s_p, s_c
    layout = 0 if s_r == 1 else 1 if s_k == 1 else 2
    return GateView(N, K, R, s_n, s_k, s_r, layout)


def gate_tile(layout: int, K: int, R: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_R): up to CONTIG_BLOCK along the contiguous axis (so a thread's loads
    are 16-byte vectors where the rows allow), the rest of TILE_ELEMENTS along the other;
    neither larger than its axis needs. fp64 (gradcheck) halves the tile."""
    elems = TILE_ELEMENTS // 2 if dtype == torch.float64 else TILE_ELEMENTS
    np2 = triton.next_power_of_2
    if layout == 1:  # K contiguous
        bk = min(CONTIG_BLOCK, np2(K))
        return bk, min(np2(R), max(1, elems // bk))
    br = min(CONTIG_BLOCK, np2(R))
    return min(np2(K), max(1, elems // br)), br


def _warps(bk: int, br: int) -> int:
    return max(1, min(8, bk * br // 256))


def check_gate_launchable(shape) -> None:
    """ValueError, before any launch, for a shape the gate kernels cannot index or launch."""
    N, C, H, W = shape
    if H * W > MAX_POSITIONS:
        raise ValueError(f"cbam_fast: H*W = {H * W} positions (shape {tuple(shape)}) exceeds the kernels' limit of 2**29")
    if C > MAX_CHANNELS:
        raise ValueError(f"cbam_fast: {C} channels exceeds the kernels' limit of 2**29")
    # the largest grid: one program per (sample, tile of the smaller contiguous block, split)
    if N * max(C, 1) * max(H * W, 1) // 64 > GRID_X_MAX:
        raise ValueError(f"cbam_fast: input of shape {tuple(shape)} is too large for the gate kernels' grid")


@dataclasses.dataclass(frozen=True)
class _Grid:
    bk: int
    br: int
    n_kb: int
    n_splits: int
    r_per_split: int
    warps: int

    def programs(self, N: int) -> int:
        return N * self.n_splits * self.n_kb


def _grid(v: GateView, dtype: torch.dtype, device: torch.device, max_splits: int | None = None) -> _Grid:
    """Tiles and splits of a pass: R is split until ``N * blocks * splits`` is 4 programs per SM
    (at most ``max_splits``). Each program covers its own part of R: no pass depends on how
    another split it."""
    bk, br = gate_tile(v.layout, v.K, v.R, dtype)
    n_kb = triton.cdiv(v.K, bk)
    n_splits = _pool_splits(v.N * n_kb, v.R, br, device)
    if max_splits is not None:
        n_splits = max(1, min(n_splits, max_splits))
    # a multiple of the tile, rounded down so that the splits are at least the wanted count (up
    # where that would pass max_splits)
    r_per_split = max(br, triton.cdiv(v.R, n_splits) // br * br)
    if max_splits is not None and triton.cdiv(v.R, r_per_split) > max_splits:
        r_per_split = triton.cdiv(triton.cdiv(v.R, n_splits), br) * br
    return _Grid(bk, br, n_kb, triton.cdiv(v.R, r_per_split), r_per_split, _warps(bk, br))


def _traffic(v: GateView, g: _Grid, es: int, loads: int, stores: int) -> Traffic:
    S = v.N * v.K * v.R * es
    per_program = g.bk * min(g.r_per_split, v.R) * es * loads
    return Traffic(S * (loads + stores), per_program, g.bk * g.br * es * loads)


def _plan_reduce(x: torch.Tensor, dy, axis: int, pools: int, mlp=None) -> Plan:
    """One launch of ``gate_reduce_kernel``: forward pass 1 (``dy`` None: the pools only) or
    backward pass 1 (``dg = sum_r dy * x``, and with ``pools`` the pools again). env ``dg`` (None
    without dy), ``dy`` (as read: its own strides when H and W merge, else a copy in x's format),
    ``v`` ``[N, pools, K]`` (row 0 the mean over R, row 1 the max; None without pools) and ``idx``
    ``[N, K]`` int32 (the max's first argmax; None below pools 2), in the acc dtype.

    ``mlp`` (backward of the folded MLP, :func:`plan_mlp_backward`): ``(ha, pre, w2, b2, mlp,
    act, gate_kind)``; then env ``g`` (the gate ``[N, C]``), ``v`` ``[N, 2, C]`` (the first layer's
    inputs), ``da`` ``[N, C]``, ``dpre`` ``[N, 2, HID]`` instead of ``dg``."""
    v = gate_view(x, axis)
    dev, acc = x.device, acc_dtype(x.dtype)
    g = _grid(v, x.dtype, dev)
    if dy is not None:
        dy, d = _dy_view(dy, x, axis)
    else:
        d = v
    parts = (v.N, g.n_splits, v.K) if g.n_splits > 1 else (1,)
    part = _empty(parts if dy is not None else (1,), acc, dev)
    psum = _empty(parts if pools >= 1 else (1,), acc, dev)
    pmax = _empty(parts if pools == 2 else (1,), acc, dev)
    pidx = _empty(parts if pools == 2 else (1,), torch.int32, dev)
    dg = _empty((v.N, v.K) if dy is not None else (1,), acc, dev)  # with mlp: the gate
    out = _empty((v.N, 2 if mlp is not None else pools, v.K) if pools else (1,), acc, dev)
    idx = _empty((v.N, v.K) if pools == 2 else (1,), torch.int32, dev)
    role, reads = ("gate_bwd_reduce", ("x", "dy")) if dy is not None else ("gate_pool", ("x",))
    if mlp is not None:
        ha, pre, w2, b2, opts, act, kind = mlp
        HID = ha.shape[1]
        da = _empty((v.N, v.K), acc, dev)
        dhp = _empty((v.N, g.n_kb, HID) if opts.two_layer else (1,), acc, dev)
        dpre = _empty((v.N, 2, HID), acc, dev)
        mlp_args = (w2 if w2 is not None else ha, b2 if b2 is not None else ha, ha,
                    pre if pre is not None else ha, da, dhp, dpre)
        mlp_opts = dict(MLP=True, MLP_POOL=opts.pool, TWO_LAYER=opts.two_layer, HAS_BIAS=b2 is not None, ACT=act,
                        GATE=kind, BLOCK_H=slab_block_h(HID, g.bk))
        w2_bytes = v.N * v.K * HID * w2.element_size() if opts.two_layer else 0
    else:
        HID, mlp_args, w2_bytes = 1, (dg,) * 7, 0
        mlp_opts = dict(MLP=False, MLP_POOL=0, TWO_LAYER=False, HAS_BIAS=False, ACT=0, GATE=0, BLOCK_H=1)
    traffic = _traffic(v, g, x.element_size(), len(reads), 0)
    plan = Plan()
    plan.launch(role, gate_reduce_kernel, (g.programs(v.N),),
                (x, dy if dy is not None else x, part, dg, psum, pmax, pidx, out, idx,
                 _counters(dev, v.N * g.n_kb + v.N + 1), *mlp_args, v.K, v.R, g.r_per_split, g.n_splits, HID,
                 v.N * g.n_kb, v.s_n, v.s_k, v.s_r, d.s_n, d.s_k, d.s_r),
                dict(X_LAYOUT=v.layout, DY_LAYOUT=d.layout, HAS_DY=dy is not None, POOLS=pools, **mlp_opts,
                     BLOCK_K=g.bk, BLOCK_R=g.br, BLOCK_S=16, NUM_STAGES=NUM_STAGES, REVERSE=ORDER[role]),
                num_warps=g.warps, reads=reads, evict_first=("x",) if dy is not None else (),
                traffic=Traffic(traffic.total, traffic.loads_per_program, traffic.tile, shared=2 * w2_bytes))
    plan.env.update(dg=dg if dy is not None else None, dy=dy, v=out if pools else None,
                    idx=idx if pools == 2 else None)
    if mlp is not None:
        plan.env.update(g=dg, dg=None, da=da, dpre=dpre)
    return plan


def plan_pool(x: torch.Tensor, axis: int, need_max: bool) -> Plan:
    """Forward pass 1 of a gate: env ``x`` (served as is, or an NCHW copy), ``v`` ``[N, 2, K]``
    (mean over R and, with ``need_max``, the max; ``[N, 1, K]`` without) and ``idx`` ``[N, K]``
    int32 (the first argmax; None without ``need_max``), in the acc dtype."""
    check_gate_launchable(x.shape)
    x, _, _ = prepare_input(x)
    plan = _plan_reduce(x, None, axis, 2 if need_max else 1)
    plan.env["x"] = x
    return plan


# The spatial gate's conv weight layouts (its pool order) as spatial_gate_kernel's CONV_FORM takes
# them for the pool pass's maps, whose row 0 is the mean (the kernel's row 0 takes the input
# channel its form calls max): [mean, max] weights are form 0 for these maps, [max, mean] form 1.
SPATIAL_CONV_FORMS = {"mean_max": CONV_MAX_MEAN, "max_mean": CONV_MEAN_MAX, "light": CONV_LIGHT}


def plan_spatial_gate(x: torch.Tensor, wc: torch.Tensor, bc, pool: str) -> Plan:
    """The spatial gate alone with nothing to differentiate (inference): 2 launches and no other
    op. The gate's pool pass (mean and max of x over C, ``[N, 2, P]`` acc dtype), then CBAM's gate
    pass (:func:`kernels.launch.launch_spatial_gate`, no channel gate): the k x k conv of the maps
    per position block, its sigmoid, y = x * gate. ``wc``: the conv weight flattened, in its own
    dtype, its input channels in the order ``pool`` names (:data:`SPATIAL_CONV_FORMS`); ``bc``:
    ``[1]`` or None. env ``y``."""
    check_launchable(x.shape, 1, _served_blocks(x))
    x, layout, strides = prepare_input(x)
    plan = plan_pool(x, AXIS_SPATIAL, True)
    N, C, H, W = x.shape
    P = H * W
    blk = blocks_for(layout, x.dtype, P)
    c_per_split = _channel_splits(N * triton.cdiv(P, blk.stream_p), C, blk.stream_c, x.device)
    form = SPATIAL_CONV_FORMS[pool]
    y, _ = launch_spatial_gate(plan, x, layout, strides, blk, None, plan.env["v"], wc, bc, conv_taps(wc, form), form,
                               None, None, None, c_per_split, reverse=1 - ORDER["gate_pool"])
    plan.env["y"] = y
    return plan


def plan_scale(x: torch.Tensor, gate: torch.Tensor, axis: int, plan: Plan | None = None, fused=None) -> Plan:
    """Forward pass 2: env ``y = x * gate`` (``gate`` ``[N, K]`` contiguous, acc dtype), in x's
    dtype and memory format. ``x`` as :func:`plan_pool` served it. ``fused`` (the channel gate
    with its MLP folded in, :func:`plan_mlp_forward`): ``(ha, w2, b2, mlp, gate_kind)``, the gate
    computed in the kernel from the first pass's ``ha`` (``gate`` is then unused: pass ``ha``).
    Appends to ``plan`` when given."""
    v = gate_view(x, axis)
    dev = x.device
    es = x.element_size()
    if fused is None:
        ha = w2 = b2 = gate
        mlp, kind, HID, has_bias = ChannelMLP(), GATE_SIGMOID, 1, False
        g = _grid(v, x.dtype, dev)
        w2_bytes = 0
    else:
        ha, w2, b2, mlp, kind = fused
        HID, has_bias = ha.shape[1], b2 is not None
        # every program forms its channels' gate from a [BLOCK_K, HID] slab of W2
        g, w2_bytes = _slab_grid(v, x.dtype, es, dev, w2 if mlp.two_layer else None, HID)
        w2 = w2 if w2 is not None else ha
        b2 = b2 if b2 is not None else ha
    y = _empty(x.shape, x.dtype, dev, _format_of(x))
    w = gate_view(y, axis)
    plan = Plan() if plan is None else plan
    block_h = slab_block_h(HID, g.bk)
    stream_y = stream_output(v.N * v.K * v.R * es, dev)
    plan.launch("gate_scale", gate_scale_kernel, (g.programs(v.N),),
                (x, y, gate, ha, w2, b2, v.K, v.R, g.r_per_split, HID, v.s_n, v.s_k, v.s_r, w.s_n, w.s_k, w.s_r),
                dict(LAYOUT=v.layout, FUSED=fused is not None, GATE=kind, POOL=mlp.pool, TWO_LAYER=mlp.two_layer,
                     HAS_BIAS=has_bias, BLOCK_K=g.bk, BLOCK_R=g.br, BLOCK_H=block_h, NUM_STAGES=NUM_STAGES,
                     REVERSE=ORDER["gate_scale"], STREAM_Y=stream_y),
                num_warps=g.warps, reads=("x",), writes=("y",), evict_first=("x", "y") if stream_y else ("x",),
                traffic=Traffic(2 * v.N * v.K * v.R * es, g.bk * min(g.r_per_split, v.R) * es, g.bk * g.br * es,
                                shared=g.programs(v.N) * w2_bytes, shared_per_program=w2_bytes))
    plan.env["y"] = y
    return plan


def plan_mlp_forward(x: torch.Tensor, w1, b1, w2, b2, mlp: ChannelMLP, act: int, gate_kind: int) -> Plan:
    """The channel gate with its MLP folded into the passes (squeeze-and-excitation), 2 launches:
    CBAM's ``channel_pool_kernel`` (the pools, the first layer, the hidden vector per sample:
    kernels/launch.py :func:`launch_channel_pool`, ``act`` ReLU or SiLU) and the scale pass
    (the second layer, the gate, ``y = x * g``). Parameters as CBAM's kernels take them:
    contiguous, each in its own dtype, the two biases both or neither; ``w2`` None: one layer
    (``w1`` ``[C, C]``). env ``y``, ``x`` (as served) and what the backward needs
    (:func:`plan_mlp_backward`), acc dtype: ``ha`` ``[N, HID]`` the summed hidden activation (one
    layer: the gate's pre-activation ``[N, C]``) and ``pre`` ``[N, 2, HID]`` the branches'
    pre-activations (None for one layer)."""
    check_launchable(x.shape, w1.shape[0], _served_blocks(x))
    check_gate_launchable(x.shape)
    x, layout, strides = prepare_input(x)
    N, C, H, W = x.shape
    P = H * W
    blk = blocks_for(layout, x.dtype, P)
    pool_c, _ = pool_tile(blk, layout, N, C, P, sm_count(x.device), mlp.pool)
    cnt = _counters(x.device, N * triton.cdiv(C, pool_c) + N + 1)
    plan = Plan()
    # the two branches' pre-activations, which the backward takes through the activation
    pre = _empty((N, 2, w1.shape[0]), acc_dtype(x.dtype), x.device) if mlp.two_layer else None
    ha = launch_channel_pool(plan, x, layout, strides, w1, b1, mlp, blk, cnt, act, preact=pre)
    plan_scale(x, ha, AXIS_CHANNEL, plan, fused=(ha, w2, b2, mlp, gate_kind))
    plan.env.update(x=x, ha=ha, pre=pre)
    return plan


def _slab_grid(v: GateView, dtype, es: int, device, w, HID: int):
    """The grid of a pass whose every program reads a ``[BLOCK_K, HID]`` slab of the weight ``w``
    (None: no slab) before its loop: each split of R re-reads it, so R is split only while a
    sample's slabs stay under a quarter of its x (``es``: x's element size). Returns (grid, slab
    bytes per program)."""
    if w is None:
        return _grid(v, dtype, device), 0
    w_sample = v.K * HID * w.element_size()
    g = _grid(v, dtype, device, max_splits=max(1, v.K * v.R * es // (4 * w_sample)))
    return g, g.bk * HID * w.element_size()


def _format_of(x: torch.Tensor):
    """The memory format of an output like x: channels_last where x is channels_last-like."""
    return _memory_format(layout_of(x)[0])


def _dy_view(dy: torch.Tensor, x: torch.Tensor, axis: int):
    """dy as the kernels read it: its own strides when H and W merge, else a copy in x's format."""
    if layout_of(dy)[1] is None:
        dy = dy.contiguous(memory_format=_format_of(x))
    return dy, gate_view(dy, axis)


def plan_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, axis: int, pools: int = 0) -> Plan:
    """Backward pass 1: env ``dg`` ``[N, K]`` acc dtype, ``sum_r dy * x``; ``dy`` (env) in any
    strides (copied only when its H and W do not merge). ``pools`` (a forward that kept none):
    1 also ``v`` ``[N, 1, K]`` the mean over R, 2 ``v`` ``[N, 2, K]`` mean and max and ``idx``
    ``[N, K]`` the max's first argmax (env ``v``, ``idx``; None where not computed)."""
    return _plan_reduce(x, dy, axis, pools)


def plan_bwd_dx(dy: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, dmean, dmax, idx,
                axis: int, plan: Plan | None = None, mlp=None) -> Plan:
    """Backward pass 2: env ``dx`` (x's dtype and memory format) ``= dy * gate + dmean / R``
    ``+ dmax`` at the argmax ``idx`` (``dmax``, ``idx`` None: no max pool). ``dy`` as
    :func:`plan_bwd_reduce` left it; ``gate``, ``dmean``, ``dmax`` ``[N, K]`` contiguous, acc dtype.
    ``mlp`` (the folded MLP): ``(w1, dpre, opts)``, the pools' gradients formed in the kernel from
    ``W1^T dpre`` (``dmean``, ``dmax`` then unused). Appends to ``plan`` when given."""
    v = gate_view(x, axis)
    dy, d = _dy_view(dy, x, axis)  # (the caller passes the dy plan_bwd_reduce left: no second copy)
    dev = x.device
    if mlp is not None:
        w1, dpre, opts = mlp
        HID = w1.shape[0]
        g, w1_bytes = _slab_grid(v, x.dtype, x.element_size(), dev, w1, HID)  # a [HID, BLOCK_K] slab of W1 per program
        dmean = dmax = gate
    else:
        w1 = dpre = gate
        HID, opts, w1_bytes = 1, ChannelMLP(), 0
        g = _grid(v, x.dtype, dev)
    dx = _empty(x.shape, x.dtype, dev, _format_of(x))
    w = gate_view(dx, axis)
    plan = Plan() if plan is None else plan
    es = x.element_size()
    plan.launch("gate_bwd_dx", gate_bwd_dx_kernel, (g.programs(v.N),),
                (dy, dx, gate, dmean, dmax if dmax is not None else dmean, idx if idx is not None else gate,
                 w1, dpre, v.K, v.R, g.r_per_split, HID,
                 d.s_n, d.s_k, d.s_r, w.s_n, w.s_k, w.s_r),
                dict(X_LAYOUT=v.layout, DY_LAYOUT=d.layout, MAX=idx is not None, MLP=mlp is not None,
                     MLP_POOL=opts.pool, BLOCK_K=g.bk, BLOCK_R=g.br,
                     BLOCK_H=slab_block_h(HID, g.bk), NUM_STAGES=NUM_STAGES,
                     REVERSE=ORDER["gate_bwd_dx"]),
                num_warps=g.warps, reads=("dy",), writes=("dx",), evict_first=("dy",),
                traffic=Traffic(2 * v.N * v.K * v.R * es, g.bk * min(g.r_per_split, v.R) * es, g.bk * g.br * es,
                                shared=g.programs(v.N) * w1_bytes, shared_per_program=w1_bytes))
    plan.env["dx"] = dx
    return plan


def plan_mlp_backward(dy: torch.Tensor, x: torch.Tensor, ha, pre, w1, b1, w2, b2, mlp: ChannelMLP, act: int,
                      gate_kind: int, need_x: bool, need_params: bool) -> Plan:
    """The backward of the channel gate with its MLP folded in (:func:`plan_mlp_forward`), 3
    launches and no other op: the reduce pass (``dg = sum dy * x``, the pools again, and the MLP's
    backward per channel block and per sample: :func:`kernels.gate._mlp_backward_block`), the
    parameter gradients (CBAM's ``channel_mlp_wgrad_kernel``, each summed over the batch in a fixed
    order, written in its parameter's dtype; with ``need_params``) and dx (with ``need_x``).
    ``ha``, ``pre``: the forward's env; parameters as the forward took them. env ``dx`` (or None),
    ``mlp_grads`` ``(dw1, db1, dw2, db2)`` (None for an absent bias or layer; the whole None
    without ``need_params``)."""
    check_gate_launchable(x.shape)
    need_max = mlp.pool != POOL_AVG
    plan = _plan_reduce(x, dy, AXIS_CHANNEL, 2 if need_max else 1, mlp=(ha, pre, w2, b2, mlp, act, gate_kind))
    env = plan.env
    plan.env.update(dx=None, mlp_grads=None)
    if need_params:
        N, C, H, W = x.shape
        blk = blocks_for(layout_of(x)[0], x.dtype, H * W)
        plan.env["mlp_grads"], _ = launch_param_grads(plan, env["v"], env["da"], env["dpre"], ha, w1, b1, w2, b2,
                                                      mlp, blk, True)
    if need_x:
        plan_bwd_dx(env["dy"], x, env["g"], None, None, env["idx"], AXIS_CHANNEL, plan, mlp=(w1, env["dpre"], mlp))
    return plan


def gate_pool(x, axis, need_max):
    env = execute(plan_pool(x, axis, need_max))
    return env["x"], env["v"], env["idx"]


def spatial_gate(x, wc, bc, pool):
    return execute(plan_spatial_gate(x, wc, bc, pool))["y"]


def gate_scale(x, gate, axis):
    return execute(plan_scale(x, gate, axis))["y"]


def gate_bwd_reduce(dy, x, axis, pools=0):
    env = execute(plan_bwd_reduce(dy, x, axis, pools))
    return env["dg"], env["v"], env["idx"]


def gate_mlp_forward(x, w1, b1, w2, b2, mlp, act, gate_kind):
    env = execute(plan_mlp_forward(x, w1, b1, w2, b2, mlp, act, gate_kind))
    return env["y"], env["ha"], env["pre"]


def gate_bwd_dx(dy, x, gate, dmean, dmax, idx, axis):
    return execute(plan_bwd_dx(dy, x, gate, dmean, dmax, idx, axis))["dx"]


def gate_mlp_backward(dy, x, ha, pre, w1, b1, w2, b2, mlp, act, gate_kind, need_x, need_params):
    env = execute(plan_mlp_backward(dy, x, ha, pre, w1, b1, w2, b2, mlp, act, gate_kind, need_x, need_params))
    return env["dx"], env["mlp_grads"]
