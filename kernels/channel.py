"""Triton kernels of the channel branch: the forward's channel pooling with the MLP's first
layer, and the backward's parameter gradients.

Shapes (N batch, C channels, P = H*W positions, HID hidden width, S pooling splits, NCB =
cdiv(C, BLOCK_C) channel blocks):

* ``x``: ``[N, C, P]`` view of the input, any of the layouts in :mod:`common`, fp16/bf16/fp32/fp64.
* pooling partials ``psum``, ``pmax``: ``[N, S, C]`` in the accumulation dtype (fp32, fp64 for fp64
  inputs). Split ``s`` covers positions ``[s * p_per_split, (s + 1) * p_per_split)``: H*W is split
  only to expose parallelism.
* ``w1``: ``[HID, C]``, ``b1``: ``[HID]``, ``w2``: ``[C, HID]``, ``b2``: ``[C]``, each in its own
  float dtype, upcast after loading (no per-call cast).

The MLP is not a kernel of its own: its first layer is split by channel block, each block's
partial products formed by the program that finishes that block's pooling (one ``[HID,
BLOCK_C]`` slab of W1), and summed per sample by the program that finishes the sample (a
ticket); its second layer runs per channel chunk in the spatial pooling pass, or, where W2 is
small, once per sample in this pass's last epilogue (SECOND_LAYER)
(kernels/spatial.py). No ``tl.dot``: K can be 1, and the products are matrix-vector ones.
"""

import triton
import triton.language as tl

from .common import (
    nan_max, running_max, sample_major, second_layer_bias, second_layer_slab, sigmoid, sum_rows, ticket, tile_offsets,
)


# the split count and counter offsets vary with the shape: not specialised (fewer variants to
# compile); p_per_split is, as it is always a multiple of the tile: one divisibility class
@triton.jit(do_not_specialize=["n_splits", "cnt_b"])
def channel_pool_kernel(
    X, PSUM, PMAX, W1, B1, PRE, HA, PREACT, W2, B2, A, CNT,
    C, P, HID, p_per_split, n_splits, cnt_b,
    s_n, s_c, s_p,
    LAYOUT: tl.constexpr, POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    STORE_PRE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_CB: tl.constexpr, NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr, ONE_TILE: tl.constexpr,
    SECOND_LAYER: tl.constexpr, BLOCK_C2: tl.constexpr, BLOCK_H2: tl.constexpr,
):
    """Forward pass 1: channel pooling over H*W and the MLP's first layer. Grid
    ``(N * n_splits * NCB,)``, NCB = cdiv(C, BLOCK_C), sample by sample (:func:`sample_major`, the
    direction REVERSE); program (n, split, cb):

    1. sum and max (NaN wins, as torch.amax) of x over its split of H*W for BLOCK_C channels,
       in running [BLOCK_C, BLOCK_P] accumulators reduced once after the loop (ONE_TILE: H*W
       fits one tile, BLOCK_P >= P and one split: one load, reduced at once);
    2. with several splits: writes them to ``PSUM``/``PMAX`` ``[N, n_splits, C]``; the last
       split program of (n, cb) (a ticket on ``CNT[n * NCB + cb]``) reduces them in split order;
    3. that program forms the block's MLP inputs (avg, or avg/2 + max/2 for POOL 2; and max for
       POOL 0) and their first-layer partial products over its channels,
       ``PRE[n, cb, j, :] = W1[:, block] @ v_j[block]`` (``[N, NCB, 2, HID]``), reading one
       ``[HID, BLOCK_C]`` slab of W1;
    4. the last channel block of sample n (a ticket on ``CNT[cnt_b + n]``) sums the partial
       products over the blocks in a fixed order and writes, with TWO_LAYER, the summed hidden
       activation ``HA[n] = act(pre_avg + b1) + act(pre_max + b1)`` (``[N, HID]``; ``act`` ReLU, or
       SiLU for ACT 1; the second layer is linear, so the branches are summed before it; with
       STORE_PRE also the branches' pre-activations ``PREACT[n]`` ``[2, HID]``, which the fused
       channel gate's backward takes through the activation), else the
       gate's pre-activation
       ``HA[n] = (W1 avg + b1) + (W1 max + b1)`` (``[N, C]``, HID == C). POOL 1 and 2 have one
       branch. Parameters in their own dtype, upcast after loading;
    5. with SECOND_LAYER (TWO_LAYER, a small W2: kernels/launch.py ``SECOND_LAYER_IN_POOL``) that
       program also runs the MLP's second layer once for the sample, ``A[n] = W2 @ HA[n] + b2``
       (``[N, C]``, in ``[BLOCK_C2, BLOCK_H2]`` slabs, HID <= BLOCK_H2), so the spatial pool
       pass loads the gate's pre-activation instead of each of its programs reading a slab of W2.
    """
    acc_ty = PSUM.dtype.element_ty
    n_cb = tl.cdiv(C, BLOCK_C)
    n, r = sample_major(n_cb * n_splits, REVERSE)
    split = r // n_cb
    cb = r - split * n_cb
    o_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    p_start = split * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)

    if ONE_TILE:  # all of H*W in one tile (one split): no running accumulators, no loop
        o_p = tl.arange(0, BLOCK_P)
        m = m_c[:, None] & (o_p < P)[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_last").to(acc_ty)
        b_sum = tl.sum(v, axis=1)
        b_max = nan_max(tl.where(m, v, float("-inf")), 1)
    else:
        acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_ty)
        acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_ty)
        for p0 in tl.range(p_start, p_end, BLOCK_P, num_stages=NUM_STAGES):
            o_p = p0 + tl.arange(0, BLOCK_P)
            m = m_c[:, None] & (o_p < p_end)[None, :]
            # evict_last: passes 2 and 3 re-read x, from L2 where it is still there
            v = tl.load(X + tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT), mask=m, other=0.0,
                        eviction_policy="evict_last").to(acc_ty)
            acc_sum += v
            acc_max = running_max(acc_max, tl.where(m, v, float("-inf")))
        b_sum = tl.sum(acc_sum, axis=1)
        b_max = nan_max(acc_max, 1)

    last = n_splits == 1  # a tensor unless the JIT specialised n_splits to 1
    if n_splits > 1:
        o_part = (n * n_splits + split) * C + o_c
        tl.store(PSUM + o_part, b_sum, mask=m_c)
        tl.store(PMAX + o_part, b_max, mask=m_c)
        last = ticket(CNT, n * n_cb + cb, n_splits)
    if last:
        if n_splits > 1:  # every split's partials, in split order (a [BLOCK_S, BLOCK_C] tile at a time)
            b_sum = sum_rows(PSUM, n * n_splits, n_splits, C, o_c, m_c, BLOCK_S)
            b_max = tl.full([BLOCK_C], float("-inf"), dtype=acc_ty)
            for s0 in range(0, n_splits, BLOCK_S):
                o_s = s0 + tl.arange(0, BLOCK_S)
                m_s = (o_s < n_splits)[:, None] & m_c[None, :]
                o = (n * n_splits + o_s[:, None]) * C + o_c[None, :]
                b_max = running_max(b_max, nan_max(tl.load(PMAX + o, mask=m_s, other=float("-inf"),
                                                           cache_modifier=".cg"), 0))
        v0 = b_sum / P
        v1 = tl.where(m_c, b_max, 0.0)  # masked channels: no -inf into the products
        if POOL == 2:
            v0 = 0.5 * v0 + 0.5 * v1
        # first-layer partial products of this channel block
        o_pre = (n * n_cb + cb) * 2 * HID
        for h0 in range(0, HID, BLOCK_H):
            o_h = h0 + tl.arange(0, BLOCK_H)
            m_h = o_h < HID
            w = tl.load(W1 + o_h.to(tl.int64)[:, None] * C + o_c[None, :], mask=m_h[:, None] & m_c[None, :],
                        other=0.0).to(acc_ty)
            tl.store(PRE + o_pre + o_h, tl.sum(w * v0[None, :], axis=1), mask=m_h)
            if POOL == 0:
                tl.store(PRE + o_pre + HID + o_h, tl.sum(w * v1[None, :], axis=1), mask=m_h)
        if ticket(CNT, cnt_b + n, n_cb):
            for h0 in range(0, HID, BLOCK_H):
                o_h = h0 + tl.arange(0, BLOCK_H)
                m_h = o_h < HID
                pre0 = sum_rows(PRE, n * n_cb, n_cb, 2 * HID, o_h, m_h, BLOCK_CB)
                pre1 = tl.zeros([BLOCK_H], dtype=acc_ty)
                if POOL == 0:
                    pre1 = sum_rows(PRE + HID, n * n_cb, n_cb, 2 * HID, o_h, m_h, BLOCK_CB)
                if HAS_BIAS:
                    b1 = tl.load(B1 + o_h, mask=m_h, other=0.0).to(acc_ty)
                    pre0 += b1
                    pre1 += b1
                if STORE_PRE:
                    tl.store(PREACT + n * 2 * HID + o_h, pre0, mask=m_h)
                    tl.store(PREACT + n * 2 * HID + HID + o_h, pre1, mask=m_h)
                if TWO_LAYER:
                    if ACT == 0:  # ReLU keeping NaN, as torch.relu
                        pre0 = tl.where(pre0 < 0.0, 0.0, pre0)
                        pre1 = tl.where(pre1 < 0.0, 0.0, pre1)
                    else:  # SiLU, x * sigmoid(x)
                        pre0 = pre0 * sigmoid(pre0)
                        pre1 = pre1 * sigmoid(pre1)
                if POOL == 0:
                    pre0 += pre1
                tl.store(HA + n * HID + o_h, pre0, mask=m_h)
            if SECOND_LAYER:  # the gate's pre-activation, once per sample (W2 small, HID <= BLOCK_H2)
                tl.debug_barrier()  # HA, just written by other threads of this program
                o_h2 = tl.arange(0, BLOCK_H2)
                m_h2 = o_h2 < HID
                hv = tl.load(HA + n * HID + o_h2, mask=m_h2, other=0.0)
                # the slabs' loads do not depend on each other: pipelined, this chain at the end
                # of the pass is a few L2 round trips, not one per slab
                for c0 in tl.range(0, C, BLOCK_C2, num_stages=NUM_STAGES):
                    o_c2 = c0 + tl.arange(0, BLOCK_C2)
                    m_c2 = o_c2 < C
                    a = second_layer_slab(W2, hv, o_c2, m_c2, o_h2, m_h2, HID, acc_ty)
                    a = second_layer_bias(B2, a, o_c2, m_c2, acc_ty, POOL, HAS_BIAS)
                    tl.store(A + n * C + o_c2, a, mask=m_c2)


# split sizes and counter offsets vary with the shape: not specialised (fewer variants to compile)
@triton.jit(do_not_specialize=["n_htiles"])
def channel_mlp_wgrad_kernel(
    VSCR, DA, DPRE, HS, DW1, DB1, DW2, DB2, PDWN, DWC, DBC,
    N, C, HID, n_htiles,
    POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MLP: tl.constexpr,
    HAS_CONV: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, KSIZE: tl.constexpr, CONV_FORM: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """The parameter gradients, each summed over the batch in a fixed order (deterministic) and
    written in its parameter's dtype. Grid ``(n_htiles + 1, cdiv(C, BLOCK_C))``:

    * programs ``(h, c)``, ``h < n_htiles``: one tile of ``DW1`` ``[HID, C]`` (and ``DB1``
      ``[HID]``) and, with TWO_LAYER, of ``DW2`` ``[C, HID]`` (and ``DB2`` ``[C]``), from the
      per-sample rows ``VSCR`` ``[N, 2, C]``, ``DA`` ``[N, C]``, ``DPRE`` ``[N, 2, HID]``, ``HS``
      ``[N, HID]`` of backward pass 2;
    * program ``(n_htiles, 0)``: the conv weight ``DWC`` ``[2 K K]`` and bias ``DBC`` ``[1]``
      gradients, the per-sample rows ``PDWN`` ``[N, 2 K K + 1]`` (max taps, mean taps, bias)
      summed over the batch and written in the caller's weight layout (CONV_FORM, as
      ``spatial._tap_weights``: 1 swaps the two halves, 2 gives each tap half of both).
    """
    acc_ty = VSCR.dtype.element_ty
    pid_h = tl.program_id(0)
    pid_c = tl.program_id(1)
    if HAS_MLP and pid_h < n_htiles:
        o_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        o_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        m_h = o_h < HID
        m_c = o_c < C
        g_w1 = tl.zeros([BLOCK_H, BLOCK_C], dtype=acc_ty)
        g_w2 = tl.zeros([BLOCK_C, BLOCK_H], dtype=acc_ty)
        g_b1 = tl.zeros([BLOCK_H], dtype=acc_ty)
        g_b2 = tl.zeros([BLOCK_C], dtype=acc_ty)
        # The [N, 2, C] rows pass 2**31 elements when N * C does: walk them with pointer
        # increments (64-bit) instead of n * C products in int32.
        dpre_row = DPRE
        v_row = VSCR
        da_row = DA
        hs_row = HS
        for n in tl.range(0, N, num_stages=NUM_STAGES):  # loads independent of the sums: pipelined
            dp0 = tl.load(dpre_row + o_h, mask=m_h, other=0.0)
            v0 = tl.load(v_row + o_c, mask=m_c, other=0.0)
            g_w1 += dp0[:, None] * v0[None, :]
            g_b1 += dp0
            if POOL == 0:
                dp1 = tl.load(dpre_row + HID + o_h, mask=m_h, other=0.0)
                v1 = tl.load(v_row + C + o_c, mask=m_c, other=0.0)
                g_w1 += dp1[:, None] * v1[None, :]
                g_b1 += dp1
            if TWO_LAYER:
                da = tl.load(da_row + o_c, mask=m_c, other=0.0)
                hs = tl.load(hs_row + o_h, mask=m_h, other=0.0)
                g_w2 += da[:, None] * hs[None, :]
                g_b2 += da
            dpre_row += 2 * HID
            v_row += 2 * C
            da_row += C
            hs_row += HID
        o_h64 = o_h.to(tl.int64)
        o_c64 = o_c.to(tl.int64)
        tl.store(DW1 + o_h64[:, None] * C + o_c[None, :], g_w1.to(DW1.dtype.element_ty), mask=m_h[:, None] & m_c[None, :])
        if HAS_BIAS:
            if pid_c == 0:
                tl.store(DB1 + o_h, g_b1.to(DB1.dtype.element_ty), mask=m_h)
        if TWO_LAYER:
            tl.store(DW2 + o_c64[:, None] * HID + o_h[None, :], g_w2.to(DW2.dtype.element_ty),
                     mask=m_c[:, None] & m_h[None, :])
            if HAS_BIAS:
                if pid_h == 0:
                    if POOL == 0:
                        g_b2 = 2.0 * g_b2
                    tl.store(DB2 + o_c, g_b2.to(DB2.dtype.element_ty), mask=m_c)
    if HAS_CONV:
        if pid_h == n_htiles:
            if pid_c == 0:
                KK: tl.constexpr = KSIZE * KSIZE
                NR: tl.constexpr = 2 * KK + 1
                o_r = tl.arange(0, BLOCK_R)
                o_src = o_r
                if CONV_FORM == 1:  # the caller's [mean, max] taps from the kernels' [max, mean] rows
                    o_src = tl.where(o_r < KK, o_r + KK, tl.where(o_r < 2 * KK, o_r - KK, o_r))
                acc_w = sum_rows(PDWN, 0, N, NR, o_src, o_r < NR, BLOCK_N)
                if CONV_FORM == 2:  # one map mean / 2 + max / 2: half of each tap's two gradients
                    acc_mean = sum_rows(PDWN, 0, N, NR, o_r + KK, o_r < KK, BLOCK_N)
                    tl.store(DWC + o_r, (0.5 * (acc_w + acc_mean)).to(DWC.dtype.element_ty), mask=o_r < KK)
                else:
                    tl.store(DWC + o_r, acc_w.to(DWC.dtype.element_ty), mask=o_r < 2 * KK)
                if HAS_CONV_BIAS:
                    tl.store(DBC + o_r - 2 * KK, acc_w.to(DBC.dtype.element_ty), mask=o_r == 2 * KK)
