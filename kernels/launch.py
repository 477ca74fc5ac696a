"""Launchers: plan a CBAM forward or backward as a value (kernels/plan.py), then run it.

Every launch is decided here before anything runs: kernels, grids, block sizes, constexprs,
splits, buffers. The tiny work (the MLP on [N, C], its backward and weight gradient, the
merges of partial results) is folded into the full-size passes: a reduction across programs
is finished by the last program to arrive ("ticket", kernels/common.py), which reads the
partials in a fixed order, so every result is bitwise deterministic without atomics on data.

forward, 3 launches, 3 reads of x + 1 write of y (compulsory: 1 read + 1 write):
  1. ``channel_pool_kernel``  reads x -> channel pools; per channel block the MLP's first-layer
     partial products (a W1 slab); per sample the hidden vector (sum of the blocks, bias, ReLU)
     (and, where W2 is small, the second layer once per sample: :func:`second_layer_in_pool`)
  2. ``spatial_pool_kernel``  reads x -> the MLP's second layer for its channel chunk (a W2 slab)
     unless pass 1 ran it, the gate cg, max/mean over C of x*cg (x*cg never stored; chunks
     merged by a ticket)
  3. ``spatial_gate_kernel``  reads x -> conv of the pooled maps, sigmoid, writes y = x*cg*sg
  The spatial conv reads its weight in the caller's layout, and a spatial BatchNorm is scalar
  math on the conv output in pass 3 (eval: running statistics; training: batch statistics from
  one more small launch, ``spatial_stats_kernel``, over the [N, P] conv output, between passes
  2 and 3; the backward's two sums over N, H, W ride on backward pass 1's tickets).
  Each pass needs the complete result of the previous one (the gate needs every position's
  pool, the conv its neighbours' channel pools), so three streams over x; passes 2 and 3 hit
  L2 when x fits. The stream passes split the channels (1-D grid N * chunks * NPB, sample by
  sample) until there are 4 programs per SM; consecutive passes over x walk the batch in
  opposite directions (``ORDER``), each starting on the samples still in L2.

backward, 4 launches, x read twice, dy twice, dx written once (compulsory: 2 reads + 1 write):
  1. ``bwd_reduce_kernel``   reads x, dy -> dz = dL/d(conv out) (chunks merged by a ticket),
     dL/dcg partials, channel-pool partials (recomputed, not saved)
  2. ``bwd_spatial_kernel``  reads x -> transposed conv of dz, conv weight partials, rest of
     dL/dcg; per (sample, chunk) ticket the MLP backward of the chunk (pooled vectors, argmax,
     dL/da, partial products with W1 and W2 slabs); per sample ticket the hidden layer's
     gradient through the ReLUs; the conv-gradient rows of the sample summed
  3. ``channel_mlp_wgrad_kernel`` every parameter gradient, fixed-order sums over the batch,
     written in each parameter's dtype (no cast afterwards)
  4. ``bwd_dx_kernel``       reads dy -> the pooled vectors' gradients through W1 (a slab per
     channel tile), writes dx
  dL/dcg needs sum_p x * d(mean map), and d(mean map) needs dz at the conv's neighbours, which
  needs the full channel reduction of pass 1: the second read of x cannot be folded into the
  first. dx needs no x: ``(dy sg + d(mean map)/C + d(max map) at the saved argmax) cg + the
  channel pools' gradients``.

Parameters are read in their own dtype (upcast after loading): no per-call cast. Workspaces
(partials, counters) cost no launch: the tickets' counters are reset by the programs that
take them.

Saved between forward and backward besides x: the gates' pre-activations a [N, C] and z [N, P],
smap [N, 2, P] and sidx [N, P] (int32), with a spatial BatchNorm also zhat [N, P] -- 4 * (N*C +
4*N*P) bytes in fp32 (4 * (N*C + 5*N*P) with the BatchNorm), under 5% of |x| for the ResNet-50
CBAM stages in 16-bit (largest: 4.5% at 2048x7x7, 4.6% with the BatchNorm).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Optional

import torch
import triton

from .channel import channel_mlp_wgrad_kernel, channel_pool_kernel
from .common import LAYOUT_CCONTIG, LAYOUT_PCONTIG, LAYOUT_STRIDED
from .plan import Plan, Traffic, execute, l2_bytes, sm_count
from .spatial import (
    bn_running_update_kernel, bwd_dx_kernel, bwd_reduce_kernel, bwd_spatial_kernel, spatial_gate_kernel, spatial_pool_kernel, spatial_stats_kernel,
)

KERNEL_SIZES = (3, 5, 7)
# Software-pipelining depth of the full-size loops (tl.range num_stages). NUM_STAGES: two tiles in
# flight ahead of the one in use, for the passes bound by bandwidth (the gate pass, dx, the gate
# family's kernels; 5 stages spilled there at the 128-register budget: gate_scale and
# gate_bwd_dx with 128-channel tiles, spatial_gate with a BatchNorm). DEEP_STAGES: four ahead,
# for the passes whose programs wait on latency (channel_pool's loop, spatial_pool, bwd_spatial,
# the parameter gradients' loop over the batch; the static report: 2-3 round trips a program
# where they waited 3-4). MLP_BLOCK_H: widest hidden tile of the first layer's products and of
# the ticket's sum; MLP_BLOCK_H2: of the second layer inside the pooling loop (registers).
NUM_STAGES = 3
DEEP_STAGES = 5
MLP_BLOCK_H = 128
MLP_BLOCK_H2 = 32
# MLP_SLAB: the most [BLOCK_K, BLOCK_H] weight elements a gate kernel holds at once (:func:`slab_block_h`;
# the gate's reduce epilogue at BLOCK_K=128 with BLOCK_H=32 spilled on sm_90: 128 registers, 16 bytes of stack)
MLP_SLAB = 2048
# the most W2 elements (C x HID), and the fewest samples, for which the forward runs the second
# layer in the channel pool pass, once per sample (:func:`second_layer_in_pool`)
SECOND_LAYER_IN_POOL = 16384
SECOND_LAYER_MIN_BATCH = 8


def slab_block_h(hid: int, block_k: int) -> int:
    """Hidden width of the [block_k, BLOCK_H] weight slab a gate kernel holds per step: at most
    MLP_BLOCK_H2 and MLP_SLAB elements (the gate's reduce epilogue, its fused scale pass and its
    dx pass all take it from here)."""
    return min(triton.next_power_of_2(hid), MLP_BLOCK_H2, max(1, MLP_SLAB // block_k))


# The direction each full-size pass walks the batch in (REVERSE of kernels/common.py sample_major:
# 1 = from the last sample down). Consecutive passes over the same tensor alternate, so each
# starts on the samples its predecessor touched last, still in L2 (a serpentine): x in the
# forward (pools ascending, spatial pool descending, gate ascending), x and dy in the backward
# (pass 1 ascending, passes 2 and 3 descending: dy's previous reader is pass 1). Together with
# the loads' eviction hints (evict_last where a later pass re-reads the tensor, evict_first on
# its last read). The static report (benchmarks/plan.py) models the reuse from this order.
ORDER = dict(channel_pool=0, spatial_pool=1, spatial_gate=0, bwd_reduce=0, bwd_spatial=1, bwd_dx=1)


def stream_output(out_bytes: int, device: torch.device) -> bool:
    """Whether a pass that reads x and writes y (``out_bytes`` each) stores y with the L2 hint
    ``evict_first``: when x and y together exceed 75% of the L2 (what the static report's model
    calls its reach), so that y's lines, not x's, are the L2's victims while the pass still reads
    x. Below that both stay, and y keeps the default policy: the next layer reads it from L2."""
    return 2 * out_bytes > 0.75 * l2_bytes(device)


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Block sizes for one input layout. Fixed per layout so the compile check covers them all."""

    pool_c: int  # channel_pool_kernel tile
    pool_p: int
    stream_c: int  # tile of every kernel with one program per (sample, position block)
    stream_p: int
    warps: int = 8  # for the pool and stream kernels: 2048-element tiles, 8 per thread
    mlp_c: int = 32  # tiles of the parameter-gradient kernel
    mlp_h: int = 16
    mlp_warps: int = 4


# p-contiguous (NCHW): long runs along H*W; channels_last: long runs along C.
BLOCKS = {
    LAYOUT_PCONTIG: Blocks(pool_c=16, pool_p=128, stream_c=32, stream_p=64),
    LAYOUT_CCONTIG: Blocks(pool_c=64, pool_p=32, stream_c=64, stream_p=32),
}


def blocks_for(layout: int, dtype: torch.dtype, P: int = 0) -> Blocks:
    """Block sizes for a layout, io dtype and H*W (``P``):

    * fp64 (gradcheck) halves the channel tiles (the MLP kernels' too) and gives the MLP kernels
      8 warps; otherwise they spill on sm_80 (seen: channel_mlp_bwd_kernel with 32-channel
      tiles, STACK 8, for the light channel pool);
    * channels_last with H*W above 32: the stream passes take [32, 64] (channels, positions)
      instead of [64, 32], half as many position blocks per sample, so half as many programs
      recompute their chunk's channel gate from a slab of W2 in spatial_pool (W2 is read N * NPB
      times: 2.6-5x |x| at 2048 x 7 x 7 before); a row of the tile is still 64 contiguous bytes.
      The report predicts 7.9 -> 5.4 us for that pass at 2048 x 7 x 7."""
    blk = BLOCKS[layout]
    if dtype == torch.float64:
        blk = dataclasses.replace(blk, pool_c=blk.pool_c // 2, stream_c=blk.stream_c // 2, mlp_c=blk.mlp_c // 2,
                                  mlp_warps=8)
    if layout == LAYOUT_CCONTIG and P > 32:
        blk = dataclasses.replace(blk, stream_c=blk.stream_c // 2, stream_p=2 * blk.stream_p)
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
    """First grid axis of the stream passes, one program per (sample, block of positions): the
    number of position blocks alone passes CUDA's 65535 for a second axis, which is left to the
    channel splits."""
    return (N * triton.cdiv(P, blk.stream_p),)


def check_launchable(shape, hidden: int, blk: "Blocks") -> None:
    """ValueError, before any launch, for a shape the kernels cannot index or launch."""
    N, C, H, W = shape
    P = H * W
    if P > MAX_POSITIONS:
        raise ValueError(f"cbam: H*W = {P} positions (shape {tuple(shape)}) exceeds the kernels' limit of 2**29")
    if C > MAX_CHANNELS:
        raise ValueError(f"cbam: {C} channels exceeds the kernels' limit of 2**29")
    # the largest grid of each kind the plans can make (1-D, sample by sample; the pooling and
    # channel splits multiply it only while it is under 4 programs per SM, so they never raise
    # the largest one much)
    grids = {
        "channel pooling": (N * triton.cdiv(C, blk.pool_c), 1),
        "spatial passes": stream_grid(N, P, blk),
        "parameter gradient": (triton.cdiv(hidden, blk.mlp_h) + 1, triton.cdiv(C, blk.mlp_c)),
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
    return blocks_for(layout if layout in BLOCKS else LAYOUT_PCONTIG, x.dtype, x.shape[2] * x.shape[3])


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


# The spatial conv's input layout as the caller holds its weight (kernels read it as it is: no
# flip or concatenation op per call): [max, mean] (the authors'), [mean, max] (timm, Ultralytics,
# mmyolo, luuuyi), one channel over mean / 2 + max / 2 (timm's light module, weight [1, 1, K, K]).
CONV_MAX_MEAN, CONV_MEAN_MAX, CONV_LIGHT = 0, 1, 2
# The spatial BatchNorm: none, batch statistics (training), running statistics (eval).
BN_NONE, BN_BATCH, BN_RUNNING = 0, 1, 2
# Position tile of the training-mode BatchNorm's statistics pass (4 warps: 128 positions keep
# its unrolled k x k gathers within the register budget; 256 spilled on sm_80 and sm_90), and the
# tile of the single-program sums over every position block (two iterations for 32 x 56 x 56).
STATS_BLOCK_P = 128
BLOCK_T = 1024


@dataclasses.dataclass(frozen=True)
class SpatialBN:
    """The spatial BatchNorm2d(1) of a call, applied in the kernels as scalar math on the conv
    output. ``mode``: BN_BATCH or BN_RUNNING; ``weight``/``bias`` ``[1]`` or None (not affine);
    ``mean``/``var`` the running statistics (BN_RUNNING), each in its own dtype."""

    mode: int
    eps: float
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    var: Optional[torch.Tensor] = None


def _float32_pair(v: float):
    """v as two float32 values whose float64 sum is v to 48 bits (Triton passes Python floats
    as float32: the pair keeps a float64 factor exact enough for float64 buffers)."""
    hi = struct.unpack("<f", struct.pack("<f", float(v)))[0]
    return hi, float(v) - hi


def conv_taps(wc: torch.Tensor, conv_form: int) -> int:
    """K of a flat conv weight in the caller's layout (K*K taps per input map)."""
    return math.isqrt(wc.numel() if conv_form == CONV_LIGHT else wc.numel() // 2)


@dataclasses.dataclass
class Saved:
    """What the backward needs besides x and the parameters (all small)."""

    a: torch.Tensor  # [N, C]    acc dtype, channel gate pre-activation (cg = sigmoid(a))
    z: torch.Tensor  # [N, P]    acc dtype, spatial gate pre-activation (sg = sigmoid(z))
    smap: torch.Tensor  # [N, 2, P] acc dtype
    sidx: torch.Tensor  # [N, P]    int32
    zhat: Optional[torch.Tensor] = None  # [N, P] acc dtype, the normalised conv output (spatial BatchNorm)
    stats: Optional[torch.Tensor] = None  # [3] acc dtype, (invstd, mean, variance) of the spatial BatchNorm


def pool_tile(blk: Blocks, layout: int, N: int, C: int, P: int, sms: int, pool: int = 0) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the channel pooling. NCHW with H*W at most 256 (the 14 x 14 and
    7 x 7 stages): one tile spans all of H*W (the next power of two) and holds more channels,
    up to 4x the layout's tile ([64, 64] at 7 x 7, [32, 256] at 14 x 14; the kernel's ONE_TILE
    path keeps no running accumulators, so it fits the register budget): a program's one load
    is then 6-12 KB in flight instead of 1.5-3 KB, and 2-4x fewer programs walk the same x."""
    if layout != LAYOUT_PCONTIG or P > 256:
        return blk.pool_c, blk.pool_p
    pool_p = triton.next_power_of_2(P)
    # (at most 4x the channels: [128, 64] spilled with triton 3.6 on sm_80 and sm_90; and for the
    # average pool alone, ``pool`` POOL_AVG, at most 4096 elements: [32, 256] spilled there with
    # triton 3.9, 128 registers and STACK 40-64, sm_80 and sm_90, where avg + max did not)
    pool_c = min(4 * blk.pool_c, 4 * blk.pool_c * blk.pool_p // pool_p)
    if pool == POOL_AVG:
        pool_c = max(blk.pool_c, min(pool_c, 4096 // pool_p))
    # but not so few programs that SMs idle (a small batch): at least two per SM, else the
    # layout's own channel tile
    while pool_c > blk.pool_c and N * triton.cdiv(C, pool_c) < 2 * sms:
        pool_c //= 2
    return pool_c, pool_p


def _pool_splits(n_rows: int, P: int, block_p: int, device: torch.device) -> int:
    """Split H*W across programs when N * C-blocks alone cannot fill the device (4 programs per SM)."""
    target = 4 * sm_count(device)
    return max(1, min(triton.cdiv(P, block_p), triton.cdiv(target, n_rows)))


def _stream_traffic(N, C, P, es, block_c, block_p, loads, stores, c_per_split=None) -> Traffic:
    """A (sample, position block, channel chunk) program looping over its channels, loading
    ``loads`` and storing ``stores`` full-size tensors."""
    S = N * C * P * es
    per_program = min(block_p, P) * min(C, c_per_split or C) * es * loads
    return Traffic(S * (loads + stores), per_program, block_c * block_p * es * loads)


def _channel_splits(programs: int, C: int, block_c: int, device: torch.device) -> int:
    """Channel chunk (a multiple of block_c) of the forward's stream passes: split C across
    programs until the grid has 4 programs per SM, keeping at least two channel tiles per
    program where C allows (so a pipelined loop has a tile in flight while one is used)."""
    target = 4 * sm_count(device)
    if programs >= target:
        return C
    want = triton.cdiv(target, programs)
    per = max(1, (C // want) // block_c) * block_c  # rounded down: at least `want` chunks
    return max(per, min(2 * block_c, triton.cdiv(C, block_c) * block_c))


# Workspace counters of the tickets (kernels/common.py ``ticket``): kept zeroed by the kernels
# themselves (the last program of each ticket resets its counter), so no call launches a fill.
# One buffer per (device, stream): calls on concurrent streams never share a counter. Under
# CUDA-graph capture each call gets its own zeroed buffer, recorded into the graph.
_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(n, dtype=torch.int32, device=device)
        key = (device, torch.cuda.current_stream(device).cuda_stream)
    else:
        key = (device, None)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096, 0 if buf is None else 2 * buf.numel()), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


# The MLP's hidden activation (kernels/channel.py ACT): ReLU (CBAM, SE) or SiLU (EfficientNet's SE).
ACT_RELU, ACT_SILU = 0, 1


def launch_channel_pool(plan: Plan, x, layout: int, strides, w1, b1, mlp: ChannelMLP, blk: Blocks, cnt,
                        act: int = ACT_RELU, preact=None, w2=None, b2=None, a=None) -> torch.Tensor:
    """Plan ``channel_pool_kernel`` (forward pass 1 of CBAM, and of the fused channel gate) into
    ``plan``: the channel pools of x, the MLP's first layer per channel block and, per sample,
    the summed hidden activation (single layer: the gate's pre-activation). ``cnt``: the
    tickets' counters, ``N * NCB + N`` of them from its start (NCB: :func:`pool_tile`'s blocks).
    ``preact``: None, or an ``[N, 2, HID]`` acc-dtype tensor that receives the two branches'
    pre-activations (bias included). ``a``: None, or an ``[N, C]`` acc-dtype tensor that receives
    the gate's pre-activation ``W2 @ ha + b2`` (two layers, ``w2``/``b2`` given: the second layer
    once per sample, :func:`second_layer_in_pool`). Returns ``ha`` ``[N, HID]`` (acc dtype)."""
    s_n, s_c, s_p = strides
    N, C, H, W = x.shape
    P = H * W
    HID = w1.shape[0]
    dev, acc = x.device, acc_dtype(x.dtype)
    es, ws = x.element_size(), w1.element_size()
    S = x.numel() * es
    has_bias = b1 is not None
    pool_c, pool_p = pool_tile(blk, layout, N, C, P, sm_count(dev), mlp.pool)
    n_cblocks = triton.cdiv(C, pool_c)
    n_splits = _pool_splits(N * n_cblocks, P, pool_p, dev)
    p_per_split = triton.cdiv(triton.cdiv(P, n_splits), pool_p) * pool_p
    n_splits = triton.cdiv(P, p_per_split)
    psum = _empty((N, n_splits, C), acc, dev)
    pmax = _empty((N, n_splits, C), acc, dev)
    pre = _empty((N, n_cblocks, 2, HID), acc, dev)
    ha = _empty((N, HID), acc, dev)
    block_h = min(triton.next_power_of_2(HID), MLP_BLOCK_H)
    pool_h = min(block_h, 4096 // pool_c)  # the [BLOCK_H, BLOCK_C] slab of W1: at most 16 values per thread
    second = a is not None
    assert not second or (mlp.two_layer and w2 is not None and HID <= MLP_BLOCK_H2), "second layer: two layers, small HID"
    block_h2 = min(triton.next_power_of_2(HID), MLP_BLOCK_H2)
    block_c2 = min(triton.next_power_of_2(C), max(1, MLP_SLAB // 2 // block_h2))
    # W1 slabs: one per program; with the second layer here, W2 once per sample (its last
    # program: after the barrier the hidden vector, then the slabs, stages - 1 in flight)
    w2_bytes = C * HID * w2.element_size() if second else 0
    stages = DEEP_STAGES  # the pooling loop's depth, and the epilogue's walk of W2
    tail = 1 + triton.cdiv(triton.cdiv(C, block_c2), stages - 1) if second else 0
    per_sample = n_splits * n_cblocks
    plan.launch("channel_pool", channel_pool_kernel, (N * per_sample,),
                (x, psum, pmax, w1, b1 if has_bias else w1, pre, ha, preact if preact is not None else ha,
                 w2 if second else w1, b2 if second and has_bias else w1, a if second else ha, cnt,
                 C, P, HID, p_per_split, n_splits,
                 N * n_cblocks, s_n, s_c, s_p),
                dict(LAYOUT=layout, POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias, ACT=act,
                     STORE_PRE=preact is not None, BLOCK_C=pool_c, BLOCK_P=pool_p, BLOCK_S=32, BLOCK_H=pool_h,
                     BLOCK_CB=32, NUM_STAGES=stages, REVERSE=ORDER["channel_pool"], ONE_TILE=pool_p >= P,
                     SECOND_LAYER=second, BLOCK_C2=block_c2 if second else 16, BLOCK_H2=block_h2 if second else 16),
                num_warps=blk.warps, reads=("x",),
                traffic=Traffic(S, pool_c * min(p_per_split, P) * es, pool_c * min(pool_p, P) * es,
                                shared=N * (HID * C * ws + w2_bytes),
                                shared_per_program=HID * pool_c * ws + w2_bytes // per_sample,
                                tail_round_trips=tail))
    return ha


def second_layer_in_pool(mlp: ChannelMLP, layout: int, N: int, C: int, HID: int) -> bool:
    """Whether CBAM's forward runs the MLP's second layer in the channel pool pass, once per
    sample (its last program walks all of W2), instead of in the spatial pool pass, where every
    (sample, position block) program forms its channel chunk's gate from a ``[chunk, HID]`` slab of
    W2: there W2 moves N x NPB x C x HID elements, as much as x itself at 28 x 28 (27 MB beside
    25.7 MB, bf16, batch 32). Only where W2 is small (``SECOND_LAYER_IN_POOL`` elements at most,
    HID at most ``MLP_BLOCK_H2``: 56 x 56 and 28 x 28 at the default reduction 16): a large W2
    (512 KB at 2048 x 7 x 7) walked by one program per sample would be a long chain at the pass's
    end. And only from ``SECOND_LAYER_MIN_BATCH`` samples: the last sample's walk (a few L2 round
    trips, ~0.5-1.3 us) is exposed at the end of the pass, which pays only where the slabs it saves
    spatial_pool are many (at batch 1, 28 x 28: 0.8 MB of W2, ~0.1 us of L2 bandwidth). For
    channels_last, HID at most ``MLP_BLOCK_H2 // 2``: with a ``[32, 32]`` slab the pipelined walk
    took channel_pool's channels_last build (16-bit, 28 x 28) from 80 to 84 registers, one resident
    program fewer per SM (unpipelined it keeps 80, but then its 17 round trips, ~4 us, cost more
    than the slabs save), so there the second layer stays in spatial_pool."""
    hid_max = MLP_BLOCK_H2 if layout != LAYOUT_CCONTIG else MLP_BLOCK_H2 // 2
    return (mlp.two_layer and C * HID <= SECOND_LAYER_IN_POOL and HID <= hid_max
            and N >= SECOND_LAYER_MIN_BATCH)


def plan_forward(x, w1, b1, w2, b2, wc, bc, mlp: ChannelMLP = ChannelMLP(), conv_form: int = CONV_MAX_MEAN,
                 bn: Optional[SpatialBN] = None) -> Plan:
    """The fused CBAM forward as a :class:`Plan` (nothing runs until :func:`execute`): three
    launches, each a full-size pass over x (kernels/channel.py and kernels/spatial.py say what
    each computes; the MLP is folded into the first two, the reductions between programs are
    "last program finishes" tickets, deterministic).

    x: [N, C, H, W] fp16/bf16/fp32/fp64, NCHW or channels_last (other strides are copied).
    w1: [HID, C], b1: [HID] or None, w2: [C, HID] or None (single layer), b2: [C] or None (b1
    and b2 both given or both None), wc: the conv weight flattened in the caller's layout
    ``conv_form`` (CONV_MAX_MEAN / CONV_MEAN_MAX ``[2*K*K]``, CONV_LIGHT ``[K*K]``), bc: [1] or None
    -- parameters contiguous, each in its own float dtype (the kernels upcast after loading).
    bn: None or the spatial BatchNorm (:class:`SpatialBN`): running statistics are scalar math in
    the gate pass; batch statistics add one small launch (``spatial_stats``) before it.
    The plan's env holds ``y`` (x's memory format and dtype) and ``saved`` (:class:`Saved`).
    """
    check_launchable(x.shape, w1.shape[0], _served_blocks(x))  # before any copy or launch
    x, layout, (s_n, s_c, s_p) = prepare_input(x)
    N, C, H, W = x.shape
    P = H * W
    HID = w1.shape[0]
    K = conv_taps(wc, conv_form)
    dev, acc = x.device, acc_dtype(x.dtype)
    blk = blocks_for(layout, x.dtype, P)
    es, ws = x.element_size(), w1.element_size()
    S = x.numel() * es
    plan = Plan()
    has_bias = b1 is not None
    mlp_opts = dict(POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias)

    # pass 1: channel pools, the MLP's first layer (per channel block), the hidden vector per sample
    pool_c, pool_p = pool_tile(blk, layout, N, C, P, sm_count(dev), mlp.pool)
    n_cblocks = triton.cdiv(C, pool_c)
    n_pb = triton.cdiv(P, blk.stream_p)
    c_per_split = _channel_splits(N * n_pb, C, blk.stream_c, dev)
    n_csplits = triton.cdiv(C, c_per_split)
    cnt = _counters(dev, N * n_cblocks + N + N * n_pb + 1)
    # the summed hidden activation, or (single layer) the gate's pre-activation; a small W2's
    # second layer here too (the gate's pre-activation a), once per sample
    a = None if not mlp.two_layer else _empty((N, C), acc, dev)
    second = second_layer_in_pool(mlp, layout, N, C, HID)
    ha = launch_channel_pool(plan, x, layout, (s_n, s_c, s_p), w1, b1, mlp, blk, cnt,
                             **(dict(w2=w2, b2=b2, a=a) if second else {}))
    a = ha if a is None else a
    two_layer = mlp.two_layer and not second  # the second layer in the spatial pool pass
    block_h = min(triton.next_power_of_2(HID), MLP_BLOCK_H)

    # pass 2: the MLP's second layer (per channel chunk) and the spatial pools of x * cg
    smap = _empty((N, 2, P), acc, dev)
    sidx = _empty((N, P), torch.int32, dev)
    spart = _empty((N, n_csplits, 2, P) if n_csplits > 1 else (1,), acc, dev)
    spidx = _empty((N, n_csplits, P) if n_csplits > 1 else (1,), torch.int32, dev)
    w2_bytes = c_per_split * HID * ws if two_layer else 0
    plan.launch("spatial_pool", spatial_pool_kernel, (N * n_csplits * n_pb,),
                (x, w2 if w2 is not None else w1, b2 if has_bias else w1, ha, a, spart, spidx, smap, sidx,
                 cnt[N * n_cblocks + N:], C, P, HID, c_per_split, n_csplits, s_n, s_c, s_p),
                dict(LAYOUT=layout, **dict(mlp_opts, TWO_LAYER=two_layer), BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p,
                     BLOCK_H=min(block_h, MLP_BLOCK_H2), BLOCK_S=16, NUM_STAGES=DEEP_STAGES,
                     REVERSE=ORDER["spatial_pool"]),
                num_warps=blk.warps, reads=("x",),
                traffic=Traffic(S, min(blk.stream_p, P) * c_per_split * es, blk.stream_c * blk.stream_p * es,
                                shared=N * n_pb * n_csplits * w2_bytes, shared_per_program=w2_bytes))

    bn_mode = BN_NONE if bn is None else bn.mode
    gate_map = smap
    zhat = _empty((N, P), acc, dev) if bn_mode != BN_NONE else None
    stats = _empty((3,), acc, dev) if bn_mode != BN_NONE else None
    if bn_mode == BN_BATCH:
        # the batch statistics of the conv output over N, H, W, before any position can be gated
        zc = _empty((N, P), acc, dev)
        n_tiles = N * triton.cdiv(P, STATS_BLOCK_P)
        tpart = _empty((n_tiles, 3), acc, dev)
        plan.launch("spatial_stats", spatial_stats_kernel, (n_tiles,),
                    (smap, wc, bc if bc is not None else wc, zc, tpart, stats, cnt[N * n_cblocks + N + N * n_pb:],
                     P, H, W, n_tiles, N * P, float(bn.eps)),
                    dict(KSIZE=K, CONV_FORM=conv_form, HAS_CONV_BIAS=bc is not None, BLOCK_P=STATS_BLOCK_P,
                         BLOCK_T=BLOCK_T),
                    num_warps=4,
                    traffic=Traffic(4 * N * P * 3, 4 * 2 * (STATS_BLOCK_P + 2 * K * K), 4 * 2 * STATS_BLOCK_P, "l2"))
        gate_map = zc

    # pass 3: the k x k conv of the pooled maps (and the BatchNorm), the spatial gate, y = x * cg * sg
    y, z = launch_spatial_gate(plan, x, layout, (s_n, s_c, s_p), blk, a, gate_map, wc, bc, K, conv_form, bn, zhat,
                               stats, c_per_split)
    plan.env.update(y=y, saved=Saved(a=a, z=z, smap=smap, sidx=sidx, zhat=zhat, stats=stats))
    return plan


def launch_spatial_gate(plan: Plan, x, layout: int, strides, blk: Blocks, a, smap, wc, bc, K: int, conv_form: int,
                        bn: Optional[SpatialBN], zhat, stats, c_per_split: int, reverse: int = ORDER["spatial_gate"]):
    """Plan ``spatial_gate_kernel`` (CBAM's forward pass 3; the spatial gate alone at inference)
    into ``plan``: y = x * cg * sigmoid(z), z the k x k conv of ``smap`` (``[N, 2, P]`` acc dtype,
    the rows in the order ``conv_form`` says of the weight's input channels: row 0 takes the
    channel it calls max) and the BatchNorm. ``a``: the channel gate's pre-activation ``[N, C]``,
    or None (no channel gate: y = x * sigmoid(z)). With a training-mode BatchNorm ``smap`` is the
    conv output ``[N, P]`` and ``stats`` its batch statistics. ``reverse``: the direction it walks
    the batch in (the opposite of the previous pass over x). Returns (y, z)."""
    s_n, s_c, s_p = strides
    N, C, H, W = x.shape
    P = H * W
    dev, acc = x.device, acc_dtype(x.dtype)
    es = x.element_size()
    S = x.numel() * es
    bn_mode = BN_NONE if bn is None else bn.mode
    n_pb = triton.cdiv(P, blk.stream_p)
    n_csplits = triton.cdiv(C, c_per_split)
    y = _empty(x.shape, x.dtype, dev, _memory_format(layout))
    _, (y_n, y_c, y_p) = layout_of(y)
    z = _empty((N, P), acc, dev)
    affine = bn is not None and bn.weight is not None
    stream_y = stream_output(S, dev)
    any_t = z  # a pointer argument a compiled-out branch never reads
    plan.launch("spatial_gate", spatial_gate_kernel, (N * n_csplits * n_pb,),
                (x, y, a if a is not None else any_t, smap, wc, bc if bc is not None else wc, z,
                 *(t if t is not None else any_t for t in (zhat, bn and bn.weight, bn and bn.bias, bn and bn.mean,
                                                           bn and bn.var, stats)),
                 C, P, H, W, c_per_split, float(bn.eps) if bn is not None else 0.0,
                 s_n, s_c, s_p, y_n, y_c, y_p),
                dict(LAYOUT=layout, KSIZE=K if bn_mode != BN_BATCH else 1, CONV_FORM=conv_form,
                     HAS_CONV_BIAS=bn_mode != BN_BATCH and bc is not None, BN=bn_mode, BN_AFFINE=affine,
                     HAS_CG=a is not None, BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p, NUM_STAGES=NUM_STAGES,
                     REVERSE=reverse, STREAM_Y=stream_y),
                num_warps=blk.warps, reads=("x",), writes=("y",), evict_first=("x", "y") if stream_y else ("x",),
                traffic=Traffic(2 * S, min(blk.stream_p, P) * c_per_split * es, blk.stream_c * blk.stream_p * es))
    return y, z


def cbam_forward(x, w1, b1, w2, b2, wc, bc, mlp: ChannelMLP = ChannelMLP(), conv_form: int = CONV_MAX_MEAN,
                 bn: Optional[SpatialBN] = None):
    """Fused CBAM forward (arguments as :func:`plan_forward`). Returns (y, Saved)."""
    env = execute(plan_forward(x, w1, b1, w2, b2, wc, bc, mlp=mlp, conv_form=conv_form, bn=bn))
    return env["y"], env["saved"]


def plan_bn_update(stats, running_mean, running_var, num_batches_tracked, momentum) -> Plan:
    """A training-mode BatchNorm's running-statistics update from a forward's batch ``stats``
    (one single-program launch, in place; ``momentum`` None: the cumulative average)."""
    plan = Plan()
    plan.launch("bn_update", bn_running_update_kernel, (1,),
                (stats, running_mean, running_var, num_batches_tracked if num_batches_tracked is not None else stats,
                 *_float32_pair(-1.0 if momentum is None else momentum)),
                dict(HAS_NBT=num_batches_tracked is not None), num_warps=1,
                traffic=Traffic(64, 64, 64, "l2"))
    return plan


# ----------------------------------------------------------------------------- backward


def plan_backward(dy, x, saved: Saved, w1, b1, w2, wc, need_x: bool, need_mlp: bool, need_conv: bool,
                  mlp: ChannelMLP = ChannelMLP(), b2=None, conv_grad_dtypes=None, conv_form: int = CONV_MAX_MEAN,
                  bn: Optional[SpatialBN] = None) -> Plan:
    """The fused CBAM backward as a :class:`Plan`.

    dy: [N, C, H, W] in any strides (stride-0 expanded included); x, the parameters and ``mlp``
    as given to :func:`plan_forward` (``saved.zhat`` and ``saved.stats`` from it with a BatchNorm;
    ``bn`` its weight for the scale). b2: the second-layer bias (for its gradient's dtype) or
    None; conv_grad_dtypes: the dtypes of the conv weight's and bias's gradients (None for the
    bias: not wanted); default (wc's, None).
    The env holds ``dx`` (or None), ``mlp_grads`` ((dw1, db1, dw2, db2) or None), ``conv_grads``
    ((dwc, dbc or None) or None), ``bn_grads`` ((dweight, dbias) ``[1]`` in the BatchNorm weight's dtype, or None) and
    ``dz``: dx in x's dtype and memory format, each parameter gradient in its parameter's dtype
    (written so by the kernels: no cast afterwards; dwc flat in the caller's layout, dbc ``[1]``),
    dz the ``[N, P]`` gradient of the spatial gate's pre-activation (after the BatchNorm).
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
    K = conv_taps(wc, conv_form)
    dev, acc = x.device, acc_dtype(x.dtype)
    blk = blocks_for(layout, x.dtype, P)
    es = x.element_size()
    n_pb = triton.cdiv(P, blk.stream_p)
    stream = dict(BLOCK_C=blk.stream_c, BLOCK_P=blk.stream_p)
    dy_stream = dict(stream, BLOCK_C=dy_block_c(blk, layout, dy_layout))
    plan = Plan()
    plan.env.update(dx=None, mlp_grads=None, conv_grads=None, bn_grads=None)
    bn_mode = BN_NONE if bn is None else bn.mode
    affine = bn is not None and bn.weight is not None

    c_per_split = _channel_splits(N * n_pb, C, blk.stream_c, dev)
    n_csplits = triton.cdiv(C, c_per_split)
    has_bias = b1 is not None
    mlp_opts = dict(POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias)
    stages = dict(NUM_STAGES=NUM_STAGES)
    block_h = min(triton.next_power_of_2(HID), MLP_BLOCK_H2)
    cnt = _counters(dev, N * n_pb + N * n_csplits + N + 1)

    # pass 1: dz, first half of dL/dcg, channel-pool partials (one split per position block);
    # with a BatchNorm its two sums over N, H, W (its parameters' gradients)
    dz = _empty((N, P), acc, dev)
    bnpart = _empty((N * n_pb, 2), acc, dev) if bn_mode != BN_NONE else dz
    bnsum = _empty((2,), acc, dev) if bn_mode != BN_NONE else dz
    dbnw = _empty((1,), bn.weight.dtype, dev) if affine else dz  # the parameters' dtype: no cast after
    dbnb = _empty((1,), bn.weight.dtype, dev) if affine else dz
    zhat = saved.zhat if bn_mode != BN_NONE else dz
    stats = saved.stats if bn_mode != BN_NONE else dz
    dzpart = _empty((N, n_csplits, P) if n_csplits > 1 else (1,), acc, dev)
    psum = _empty((N, n_pb, C), acc, dev)
    pmax = _empty((N, n_pb, C), acc, dev)
    pidx = _empty((N, n_pb, C), torch.int32, dev)
    pdcg = _empty((N, n_pb, C), acc, dev)
    plan.launch("bwd_reduce", bwd_reduce_kernel, (N * n_csplits * n_pb,),
                (x, dy, saved.a, saved.z, dz, dzpart, psum, pmax, pidx, pdcg, cnt, zhat, bnpart, bnsum, dbnw, dbnb,
                 cnt[N * n_pb + N * n_csplits + N:], C, P, c_per_split, n_csplits, N * n_pb,
                 s_xn, s_xc, s_xp, s_gn, s_gc, s_gp),
                # two full-size loads and four per-channel reductions per iteration: two stages for
                # 16-bit inputs; fp32/fp64 unpipelined (two stages spilled at the 128-register
                # budget on sm_90, fp32 channels_last; three spilled for every dtype)
                dict(X_LAYOUT=layout, DY_LAYOUT=dy_layout, BN=bn_mode, BN_AFFINE=affine, **dy_stream, BLOCK_S=16,
                     BLOCK_T=BLOCK_T, NUM_STAGES=2 if es <= 2 else 1, REVERSE=ORDER["bwd_reduce"]), num_warps=blk.warps,
                reads=("x", "dy"),
                traffic=_stream_traffic(N, C, P, es, dy_stream["BLOCK_C"], blk.stream_p, loads=2, stores=0,
                                        c_per_split=c_per_split))
    plan.env["dz"] = dz
    if affine:
        plan.env["bn_grads"] = (dbnw, dbnb)

    # pass 2: transposed conv, conv weight partials, second half of dL/dcg; the MLP backward
    NR = 2 * K * K + 1
    ds = _empty((N, 2, P), acc, dev)
    pdw = _empty((N * n_pb, NR), acc, dev)
    pdwn = _empty((N, NR), acc, dev)
    vscr = _empty((N, 2, C), acc, dev)
    da = _empty((N, C), acc, dev)
    idxp = _empty((N, C), torch.int32, dev)
    dhp = _empty((N, n_csplits, HID), acc, dev)
    prep = _empty((N, n_csplits, 2, HID), acc, dev)
    dpre = _empty((N, 2, HID), acc, dev)
    hs = _empty((N, HID), acc, dev)
    w2_arg = w2 if w2 is not None else w1
    plan.launch("bwd_spatial", bwd_spatial_kernel, (N * n_csplits * n_pb,),
                (x, dz, saved.smap, saved.sidx, wc, pdcg, ds, pdw, pdwn,
                 psum, pmax, pidx, saved.a, w1, b1 if has_bias else w1, w2_arg, vscr, da, idxp, dhp, prep, dpre, hs,
                 cnt[N * n_pb:], zhat, bnsum, stats, bn.weight if affine else dz,
                 C, P, H, W, HID, c_per_split, n_csplits, N * n_csplits, N * P, s_xn, s_xc, s_xp),
                dict(X_LAYOUT=layout, KSIZE=K, CONV_FORM=conv_form, BN=bn_mode, BN_AFFINE=affine, **mlp_opts, **stream,
                     BLOCK_S=16, BLOCK_H=min(block_h, 32),
                     BLOCK_CM=min(blk.stream_c, 32), BLOCK_R=triton.next_power_of_2(NR), NUM_STAGES=DEEP_STAGES,
                     REVERSE=ORDER["bwd_spatial"]),
                num_warps=blk.warps, reads=("x",), evict_first=("x",),
                traffic=_stream_traffic(N, C, P, es, blk.stream_c, blk.stream_p, loads=1, stores=0,
                                        c_per_split=c_per_split))

    # pass 3: every parameter gradient, summed over the batch in a fixed order
    if need_mlp or need_conv:
        conv = (pdwn, wc, conv_grad_dtypes or (wc.dtype, None)) if need_conv else None
        mlp_grads, conv_grads = launch_param_grads(plan, vscr, da, dpre, hs, w1, b1, w2, b2, mlp, blk, need_mlp,
                                                   conv, K, conv_form)
        plan.env.update(mlp_grads=mlp_grads, conv_grads=conv_grads)

    if need_x:
        dx = _empty(x.shape, x.dtype, dev, _memory_format(layout))
        _, (s_dn, s_dc, s_dp) = layout_of(dx)
        plan.launch("bwd_dx", bwd_dx_kernel, (N * n_csplits * n_pb,),
                    (dy, dx, saved.a, saved.z, ds, saved.sidx, w1, dpre, idxp, _empty((N, 2, C), acc, dev),
                     C, P, HID, c_per_split,
                     s_gn, s_gc, s_gp, s_dn, s_dc, s_dp),
                    dict(X_LAYOUT=layout, DY_LAYOUT=dy_layout, POOL=mlp.pool, **dy_stream, BLOCK_H=block_h, **stages,
                         REVERSE=ORDER["bwd_dx"]),
                    num_warps=blk.warps, reads=("dy",), writes=("dx",), evict_first=("dy",),
                    traffic=_stream_traffic(N, C, P, es, dy_stream["BLOCK_C"], blk.stream_p, loads=1, stores=1,
                                            c_per_split=c_per_split))
        plan.env["dx"] = dx
    return plan


def launch_param_grads(plan: Plan, vscr, da, dpre, hs, w1, b1, w2, b2, mlp: ChannelMLP, blk: Blocks,
                       need_mlp: bool, conv=None, ksize: int = 1, conv_form: int = CONV_MAX_MEAN):
    """Plan ``channel_mlp_wgrad_kernel`` (CBAM's backward pass 3, and the fused channel gate's
    parameter gradients) into ``plan``: from the per-sample rows ``vscr`` ``[N, 2, C]`` (the first
    layer's inputs), ``da`` ``[N, C]`` (dL/d gate pre-activation), ``dpre`` ``[N, 2, HID]``
    (dL/d first-layer output per branch), ``hs`` ``[N, HID]`` (the summed hidden activation), the
    MLP's gradients (``need_mlp``) and, with ``conv`` ``(pdwn, wc, (weight dtype, bias dtype or
    None))``, the ``ksize`` conv's (weight layout ``conv_form``); each summed over the batch in a
    fixed order and written in its parameter's dtype (b2: ``b2``'s, else b1's). Returns ``((dw1, db1, dw2, db2) or None,
    (dwc, dbc) or None)``."""
    N, C = da.shape
    HID = w1.shape[0]
    dev = da.device
    has_bias = b1 is not None
    need_conv = conv is not None
    dw1 = _empty((HID, C), w1.dtype, dev) if need_mlp else None
    db1 = _empty((HID,), b1.dtype, dev) if need_mlp and has_bias else None
    dw2 = _empty((C, HID), w2.dtype, dev) if need_mlp and mlp.two_layer else None
    db2 = _empty((C,), (b2 if b2 is not None else b1).dtype, dev) if need_mlp and has_bias and mlp.two_layer else None
    pdwn, wc, (w_dt, b_dt) = conv if need_conv else (None, None, (None, None))
    dwc = _empty((wc.numel(),), w_dt, dev) if need_conv else None
    dbc = _empty((1,), b_dt, dev) if need_conv and b_dt is not None else None
    NR = 2 * ksize * ksize + 1
    n_htiles = triton.cdiv(HID, blk.mlp_h) if need_mlp else 0
    n_ctiles = triton.cdiv(C, blk.mlp_c) if need_mlp else 1
    some = dw1 if dw1 is not None else dwc
    plan.launch("param_grads", channel_mlp_wgrad_kernel, (n_htiles + int(need_conv), n_ctiles),
                (vscr, da, dpre, hs, *(t if t is not None else some for t in (dw1, db1, dw2, db2)),
                 pdwn if need_conv else vscr, dwc if dwc is not None else some, dbc if dbc is not None else some,
                 N, C, HID, n_htiles),
                dict(POOL=mlp.pool, TWO_LAYER=mlp.two_layer, HAS_BIAS=has_bias, HAS_MLP=need_mlp, HAS_CONV=need_conv,
                     HAS_CONV_BIAS=dbc is not None, KSIZE=ksize, CONV_FORM=conv_form,
                     BLOCK_C=blk.mlp_c, BLOCK_H=blk.mlp_h, BLOCK_R=triton.next_power_of_2(NR), BLOCK_N=16,
                     NUM_STAGES=DEEP_STAGES),
                num_warps=blk.mlp_warps,
                traffic=Traffic(4 * N * (4 * C + 3 * HID) + 4 * 2 * HID * C,
                                4 * N * 2 * (2 * blk.mlp_h + 2 * blk.mlp_c), 4 * 2 * (2 * blk.mlp_h + 2 * blk.mlp_c),
                                "l2"))
    return ((dw1, db1, dw2, db2) if need_mlp else None), ((dwc, dbc) if need_conv else None)


def cbam_backward(dy, x, saved: Saved, w1, b1, w2, wc, need_x: bool, need_mlp: bool, need_conv: bool,
                  mlp: ChannelMLP = ChannelMLP(), **kw):
    """Fused CBAM backward (arguments as :func:`plan_backward`). Returns (dx or None,
    (dw1, db1, dw2, db2) or None, (dwc, dbc) or None, (dbn_weight, dbn_bias) or None, dz)."""
    env = execute(plan_backward(dy, x, saved, w1, b1, w2, wc, need_x, need_mlp, need_conv, mlp=mlp, **kw))
    return env["dx"], env["mlp_grads"], env["conv_grads"], env["bn_grads"], env["dz"]
