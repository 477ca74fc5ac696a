"""Triton kernels of the pooled-gate family: CBAM's channel half alone (squeeze-and-excitation)
and its spatial half alone.

Both gate one axis of x by a function of x pooled over the other axis, so one set of kernels
serves both. x is viewed as ``[N, K, R]`` through three strides ``(s_n, s_k, s_r)``: ``K`` the
gated ("kept") axis, ``R`` the pooled ("reduced") axis:

* the channel gate: ``K = C``, ``R = H*W`` (``g`` is ``[N, C]``);
* the spatial gate: ``K = H*W``, ``R = C`` (``g`` is ``[N, H*W]``).

``LAYOUT`` is :func:`common.tile_offsets`' with K as its first index and R as its second: 0 when
``s_r == 1``, 1 when ``s_k == 1``, 2 neither (an incoming gradient in other strides).

forward, 2 launches:

1. :func:`gate_reduce_kernel` reads x: mean, max and the first argmax over R (``V`` ``[N, 2, K]``,
   ``IDX`` ``[N, K]``), R split across programs until the grid fills the GPU, the splits merged
   in a fixed order by the last program of each block (a ticket: deterministic, no atomics on data);
   then the tiny step runs as PyTorch ops on ``[N, K]`` (a caller's excitation);
   or, for the channel gate with a plain MLP (SE), CBAM's ``channel_pool_kernel`` instead
   (kernels/channel.py: the pools, the MLP's first layer and, per sample, the hidden vector:
   the tiny step folded into the pass; nothing between the launches);
2. :func:`gate_scale_kernel` reads x again (from L2 where it is still there: the passes walk the
   batch in opposite directions) and writes ``y = x * g`` (for the folded MLP, with the second
   layer and the gate computed per channel block first).

backward, 2 launches around the tiny step's own backward (PyTorch ops on ``[N, K]``):

1. :func:`gate_reduce_kernel` reads x and dy: ``dg = sum_r dy * x`` (``[N, K]``);
2. :func:`gate_bwd_dx_kernel` reads dy, writes ``dx = dy * g + dmean / R + dmax at the argmax``;

or, for the folded MLP, 3 launches and nothing between them: the reduce pass also pools x again
and runs the MLP's backward (per channel block ``dL/da`` and its share of ``dL/dh``, per sample,
a ticket, the hidden layer's), CBAM's ``channel_mlp_wgrad_kernel`` the parameter gradients,
and the dx pass takes the pools' gradients through the first layer itself (``W1^T dL/dpre``).

Every program covers a ``[BLOCK_K, BLOCK_R]`` tile at a time of ``BLOCK_K`` kept indices and
its split of R, in a pipelined loop with running accumulators reduced once after the loop.
"""

import triton
import triton.language as tl

from .common import argmax_rows, first_argmax, merge_argmax, sample_major, second_layer, sigmoid, sum_rows, ticket, tile_offsets
from .spatial import pool_grads


@triton.jit
def _gate_program(n_kb, n_splits, REVERSE: tl.constexpr):
    """(sample, split of R, block of K) of this program in a 1-D grid of ``N * n_splits * n_kb``
    programs, sample by sample (:func:`common.sample_major`)."""
    n, r = sample_major(n_kb * n_splits, REVERSE)
    split = r // n_kb
    return n, split, r - split * n_kb


@triton.jit
def gate_of(a, GATE: tl.constexpr):
    """The gate of its pre-activation: GATE 0 ``sigmoid(a)``, 1 ``hard_sigmoid(a)`` (``relu6(a + 3)
    / 6``, keeping NaN as F.hardsigmoid: tl.minimum / tl.maximum drop it on a GPU)."""
    if GATE == 0:
        g = sigmoid(a)
    else:
        g = tl.where(a != a, a, tl.minimum(tl.maximum(a / 6.0 + 0.5, 0.0), 1.0))
    return g


@triton.jit
def gate_slope(a, GATE: tl.constexpr):
    """d gate / d a: ``sigmoid(a) * sigmoid(-a)`` (free of cancellation near saturation), or
    hard_sigmoid's ``1/6`` strictly inside (-3, 3), else 0 (as torch's hardsigmoid_backward; NaN
    for a NaN a under the sigmoid, 0 under hard_sigmoid, as there)."""
    if GATE == 0:
        s = sigmoid(a) * sigmoid(-a)
    else:
        s = tl.where((a > -3.0) & (a < 3.0), 1.0 / 6.0, 0.0)
    return s


@triton.jit
def act_grad(pre, dh, ACT: tl.constexpr):
    """The gradient through the hidden activation at its pre-activation ``pre``: ReLU passes it
    where ``pre > 0`` or pre is NaN (torch's threshold_backward), SiLU multiplies it by
    ``s (1 + pre (1 - s))``, ``s = sigmoid(pre)`` (torch's silu_backward)."""
    if ACT == 0:
        d = tl.where(pre <= 0.0, 0.0, dh)
    else:
        s = sigmoid(pre)
        d = dh * s * (1.0 + pre * (1.0 - s))
    return d


@triton.jit
def gate_scale_kernel(
    X, Y, G, HA, W2, B2,
    K, R, r_per_split, HID,
    s_xn, s_xk, s_xr, s_yn, s_yk, s_yr,
    LAYOUT: tl.constexpr, FUSED: tl.constexpr, GATE: tl.constexpr, POOL: tl.constexpr, TWO_LAYER: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr, STREAM_Y: tl.constexpr,
):
    """Forward pass 2: ``y = x * g[n, k]``, the product rounded once to y's dtype. Grid and programs
    as :func:`gate_reduce_kernel`'s (no merge: every program writes its own tile).

    ``g``: without FUSED the gate itself, ``G`` ``[N, K]`` (acc dtype, from the caller's tiny
    step). With FUSED (the channel gate, K = C, its MLP in the kernels) the gate of the program's
    channels from the first pass's ``HA``: with TWO_LAYER the MLP's second layer ``a = W2 @ HA[n]
    + b2`` (twice b2 for POOL 0; one ``[BLOCK_K, HID]`` slab of W2), else ``a = HA[n]`` itself;
    then :func:`gate_of` (GATE 0 sigmoid, 1 hard_sigmoid). ``G`` is then unused but for its dtype.
    STREAM_Y: y stored with the L2 hint ``evict_first``."""
    acc_ty = G.dtype.element_ty
    n_kb = tl.cdiv(K, BLOCK_K)
    n_splits = tl.cdiv(R, r_per_split)
    n, split, kb = _gate_program(n_kb, n_splits, REVERSE)
    o_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < K
    if FUSED:
        if TWO_LAYER:
            a = second_layer(W2, B2, HA, n, o_k, m_k, HID, acc_ty, POOL, HAS_BIAS, BLOCK_H)
        else:
            a = tl.load(HA + n * K + o_k, mask=m_k, other=0.0)
        g = gate_of(a, GATE)
    else:
        g = tl.load(G + n * K + o_k, mask=m_k, other=0.0)
    r_start = split * r_per_split
    r_end = tl.minimum(r_start + r_per_split, R)
    for r0 in tl.range(r_start, r_end, BLOCK_R, num_stages=NUM_STAGES):
        o_r = r0 + tl.arange(0, BLOCK_R)
        m = m_k[:, None] & (o_r < r_end)[None, :]
        v = tl.load(X + tile_offsets(n, o_k, o_r, s_xn, s_xk, s_xr, LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_first").to(acc_ty)  # the forward's last read of x
        out = (v * g[:, None]).to(Y.dtype.element_ty)
        y_offs = tile_offsets(n, o_k, o_r, s_yn, s_yk, s_yr, LAYOUT)
        if STREAM_Y:  # x + y exceed the L2: y's lines are its first victims, not x's (launch.py stream_output)
            tl.store(Y + y_offs, out, mask=m, eviction_policy="evict_first")
        else:
            tl.store(Y + y_offs, out, mask=m)


# the split count and the counter offset vary with the shape: not specialised (fewer variants)
@triton.jit(do_not_specialize=["n_splits", "cnt_b"])
def gate_reduce_kernel(
    X, DY, PART, DG, PSUM, PMAX, PIDX, V, IDX, CNT,
    W2, B2, HA, PRE, DA, DHP, DPRE,
    K, R, r_per_split, n_splits, HID, cnt_b,
    s_xn, s_xk, s_xr, s_gn, s_gk, s_gr,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, HAS_DY: tl.constexpr, POOLS: tl.constexpr,
    MLP: tl.constexpr, MLP_POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr, GATE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, NUM_STAGES: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """The reductions over R, one pass over x (and dy):

    * forward pass 1 (no HAS_DY): x's pools, POOLS 1 the mean ``V[n, 0, k] = mean_r x``, POOLS 2
      also the max ``V[n, 1, k]`` and ``IDX[n, k]`` the first r reaching it (NaN wins, as
      torch.max(dim)); V ``[N, POOLS, K]``;
    * backward pass 1 (HAS_DY): ``DG[n, k] = sum_r dy * x`` (the gate's gradient, ``[N, K]`` acc
      dtype) and, with POOLS (a forward that kept no pools: the folded MLP), the pools again from
      the same loads.

    Grid ``(N * n_splits * NKB,)``; program (n, split, kb) covers ``BLOCK_K`` kept indices and R in
    ``[split * r_per_split, ...)``. With several splits the partial rows go to ``PART``, ``PSUM``,
    ``PMAX``, ``PIDX`` ``[N, n_splits, K]`` and the last split of (n, kb) (a ticket on
    ``CNT[n * NKB + kb]``) merges them in split order.

    MLP (backward, HAS_DY and POOLS: the channel gate with its plain MLP folded into the
    kernels): that last program then runs the MLP's backward for its channels
    (:func:`_mlp_backward_block`), and the last block of each sample (a ticket on ``CNT[cnt_b +
    n]``) the hidden layer's; V then holds the first layer's inputs ``[N, 2, K]``."""
    acc_ty = V.dtype.element_ty
    n_kb = tl.cdiv(K, BLOCK_K)
    n, split, kb = _gate_program(n_kb, n_splits, REVERSE)
    o_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < K
    r_start = split * r_per_split
    r_end = tl.minimum(r_start + r_per_split, R)
    acc = tl.zeros([BLOCK_K, BLOCK_R], dtype=acc_ty)
    acc_sum = tl.zeros([BLOCK_K, BLOCK_R], dtype=acc_ty)
    acc_max = tl.full([BLOCK_K, BLOCK_R], float("-inf"), dtype=acc_ty)
    acc_idx = tl.full([BLOCK_K, BLOCK_R], 1073741823, dtype=tl.int32)  # RUNNING_SENTINEL
    for r0 in tl.range(r_start, r_end, BLOCK_R, num_stages=NUM_STAGES):
        o_r = r0 + tl.arange(0, BLOCK_R)
        m = m_k[:, None] & (o_r < r_end)[None, :]
        x_offs = tile_offsets(n, o_k, o_r, s_xn, s_xk, s_xr, X_LAYOUT)
        if HAS_DY:
            v = tl.load(X + x_offs, mask=m, other=0.0,
                        eviction_policy="evict_first").to(acc_ty)  # the backward's only read of x
            d = tl.load(DY + tile_offsets(n, o_k, o_r, s_gn, s_gk, s_gr, DY_LAYOUT), mask=m, other=0.0,
                        eviction_policy="evict_last").to(acc_ty)  # the dx pass reads dy again
            acc += v * d
        else:  # evict_last: the scale pass reads x again, from L2 where it is still there
            v = tl.load(X + x_offs, mask=m, other=0.0, eviction_policy="evict_last").to(acc_ty)
        if POOLS >= 1:
            acc_sum += v
        if POOLS == 2:
            acc_max, acc_idx = merge_argmax(acc_max, acc_idx, tl.where(m, v, float("-inf")),
                                            tl.zeros([BLOCK_K, BLOCK_R], dtype=tl.int32) + o_r[None, :])
    b = tl.sum(acc, axis=1)
    b_sum = tl.sum(acc_sum, axis=1)
    b_max = b_sum  # (unused below POOLS 2)
    b_idx = tl.zeros([BLOCK_K], dtype=tl.int32)
    if POOLS == 2:
        b_max, b_idx = first_argmax(acc_max, acc_idx, 1)
    last = n_splits == 1  # a tensor unless the JIT specialised n_splits to 1
    if n_splits > 1:
        o_part = (n * n_splits + split) * K + o_k
        if HAS_DY:
            tl.store(PART + o_part, b, mask=m_k)
        if POOLS >= 1:
            tl.store(PSUM + o_part, b_sum, mask=m_k)
        if POOLS == 2:
            tl.store(PMAX + o_part, b_max, mask=m_k)
            tl.store(PIDX + o_part, b_idx, mask=m_k)
        last = ticket(CNT, n * n_kb + kb, n_splits)
    if last:
        if n_splits > 1:  # every split's partials, in split order
            if HAS_DY:
                b = sum_rows(PART, n * n_splits, n_splits, K, o_k, m_k, BLOCK_S)
            if POOLS >= 1:
                b_sum = sum_rows(PSUM, n * n_splits, n_splits, K, o_k, m_k, BLOCK_S)
            if POOLS == 2:
                b_max, b_idx = argmax_rows(PMAX, PIDX, n * n_splits, n_splits, K, K, o_k, m_k, BLOCK_S)
        if MLP:
            _mlp_backward_block(b, b_sum / R, b_max, b_idx, V, IDX, DG, W2, B2, HA, PRE, DA, DHP, DPRE, CNT,
                                n, kb, n_kb, o_k, m_k, K, HID, cnt_b,
                                POOLS, MLP_POOL, TWO_LAYER, HAS_BIAS, ACT, GATE, BLOCK_H, BLOCK_S)
        elif HAS_DY:
            tl.store(DG + n * K + o_k, b, mask=m_k)
        if POOLS >= 1 and not MLP:
            NV: tl.constexpr = 2 if POOLS == 2 else 1  # rows of V per sample
            tl.store(V + n * NV * K + o_k, b_sum / R, mask=m_k)
            if POOLS == 2:
                tl.store(V + n * NV * K + K + o_k, b_max, mask=m_k)
                tl.store(IDX + n * K + o_k, b_idx, mask=m_k)


@triton.jit
def _mlp_backward_block(dg, mean, b_max, b_idx, V, IDX, G, W2, B2, HA, PRE, DA, DHP, DPRE, CNT,
                        n, kb, n_kb, o_k, m_k, C, HID, cnt_b,
                        POOLS: tl.constexpr, POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
                        ACT: tl.constexpr, GATE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    """The folded MLP's backward for sample n's channels ``o_k`` (block kb), given their
    ``dg = sum dy * x`` and pools, once every split is in:

    * the first layer's inputs ``V[n] = (v0, v1)`` ``[2, C]`` (avg, or avg/2 + max/2 for POOL 2;
      max, 0 on masked channels) and the argmax ``IDX`` (POOLS 2), for the parameter-gradient and
      dx passes;
    * the gate's pre-activation again (TWO_LAYER: :func:`second_layer` from the forward's hidden
      vector ``HA[n]``, one ``[BLOCK_K, HID]`` slab of W2; one layer: ``HA[n]`` is it), the gate
      ``G[n]`` (for dx) and ``dL/da = dg * gate'(a)`` ``DA[n]``;
    * TWO_LAYER: the block's partial ``dL/dh = W2[block]^T dL/da`` to ``DHP[n, kb]`` ``[HID]``;
      the last block of the sample (ticket ``CNT[cnt_b + n]``) sums them in block order and
      takes them through the activation at the forward's pre-activations ``PRE[n]`` ``[2, HID]``
      into ``DPRE[n]`` ``[2, HID]`` (dL/d first-layer output, per branch);
      one layer: ``DPRE[n] = (dL/da, dL/da or 0)`` directly (HID == C)."""
    acc_ty = DA.dtype.element_ty
    v0 = mean
    v1 = tl.zeros(o_k.shape, dtype=acc_ty)
    if POOLS == 2:
        v1 = tl.where(m_k, b_max, 0.0)  # masked channels: no -inf into the products
        tl.store(IDX + n * C + o_k, b_idx, mask=m_k)
    if POOL == 2:
        v0 = 0.5 * v0 + 0.5 * v1
    tl.store(V + (n * 2) * C + o_k, v0, mask=m_k)
    tl.store(V + (n * 2 + 1) * C + o_k, v1, mask=m_k)
    if TWO_LAYER:
        a = second_layer(W2, B2, HA, n, o_k, m_k, HID, acc_ty, POOL, HAS_BIAS, BLOCK_H)
    else:
        a = tl.load(HA + n * C + o_k, mask=m_k, other=0.0)
    tl.store(G + n * C + o_k, gate_of(a, GATE), mask=m_k)
    da = tl.where(m_k, dg * gate_slope(a, GATE), 0.0)
    tl.store(DA + n * C + o_k, da, mask=m_k)
    if TWO_LAYER:
        for h0 in range(0, HID, BLOCK_H):
            o_h = h0 + tl.arange(0, BLOCK_H)
            m_h = o_h < HID
            w = tl.load(W2 + o_k.to(tl.int64)[:, None] * HID + o_h[None, :], mask=m_k[:, None] & m_h[None, :],
                        other=0.0).to(acc_ty)
            tl.store(DHP + (n * n_kb + kb) * HID + o_h, tl.sum(w * da[:, None], axis=0), mask=m_h)
        if ticket(CNT, cnt_b + n, n_kb):
            for h0 in range(0, HID, BLOCK_H):
                o_h = h0 + tl.arange(0, BLOCK_H)
                m_h = o_h < HID
                dh = sum_rows(DHP, n * n_kb, n_kb, HID, o_h, m_h, BLOCK_S)
                pre0 = tl.load(PRE + (n * 2) * HID + o_h, mask=m_h, other=0.0)
                tl.store(DPRE + (n * 2) * HID + o_h, act_grad(pre0, dh, ACT), mask=m_h)
                dp1 = tl.zeros([BLOCK_H], dtype=acc_ty)
                if POOL == 0:
                    dp1 = act_grad(tl.load(PRE + (n * 2 + 1) * HID + o_h, mask=m_h, other=0.0), dh, ACT)
                tl.store(DPRE + (n * 2 + 1) * HID + o_h, dp1, mask=m_h)
    else:
        tl.store(DPRE + (n * 2) * C + o_k, da, mask=m_k)
        if POOL == 0:
            tl.store(DPRE + (n * 2 + 1) * C + o_k, da, mask=m_k)
        else:
            tl.store(DPRE + (n * 2 + 1) * C + o_k, tl.zeros(o_k.shape, dtype=acc_ty), mask=m_k)


@triton.jit
def gate_bwd_dx_kernel(
    DY, DX, G, DMEAN, DMAX, IDX, W1, DPRE,
    K, R, r_per_split, HID,
    s_gn, s_gk, s_gr, s_dn, s_dk, s_dr,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, MAX: tl.constexpr, MLP: tl.constexpr, MLP_POOL: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, NUM_STAGES: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """Backward pass 2: ``dx = dy * G[n, k] + DMEAN[n, k] / R`` and, with MAX, ``+ DMAX[n, k]`` where
    ``r == IDX[n, k]`` (the gradients of the mean and the max, ``[N, K]`` acc dtype).
    Written in x's layout (X_LAYOUT; dx's strides ``s_d*``); grid as :func:`gate_scale_kernel`'s.

    MLP (the folded MLP, K = C): the pools' gradients come through the first layer instead,
    ``dv_j = W1^T DPRE[n, j]`` for the program's channels (one ``[HID, BLOCK_K]`` slab of W1 before
    the loop; MLP_POOL 0: dmean = dv_0, dmax = dv_1; 1: dmean = dv_0; 2: both dv_0 / 2)."""
    acc_ty = G.dtype.element_ty
    n_kb = tl.cdiv(K, BLOCK_K)
    n_splits = tl.cdiv(R, r_per_split)
    n, split, kb = _gate_program(n_kb, n_splits, REVERSE)
    o_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < K
    g = tl.load(G + n * K + o_k, mask=m_k, other=0.0)
    d_max = tl.zeros([BLOCK_K], dtype=acc_ty)
    idx = tl.zeros([BLOCK_K], dtype=tl.int32) - 1
    if MLP:
        d_mean, d_max = pool_grads(W1, DPRE, n, o_k, m_k, K, HID, acc_ty, MLP_POOL, BLOCK_H)
        d_mean = d_mean / R
    else:
        d_mean = tl.load(DMEAN + n * K + o_k, mask=m_k, other=0.0) / R
        if MAX:
            d_max = tl.load(DMAX + n * K + o_k, mask=m_k, other=0.0)
    if MAX:
        idx = tl.load(IDX + n * K + o_k, mask=m_k, other=-1)
    r_start = split * r_per_split
    r_end = tl.minimum(r_start + r_per_split, R)
    for r0 in tl.range(r_start, r_end, BLOCK_R, num_stages=NUM_STAGES):
        o_r = r0 + tl.arange(0, BLOCK_R)
        m = m_k[:, None] & (o_r < r_end)[None, :]
        d = tl.load(DY + tile_offsets(n, o_k, o_r, s_gn, s_gk, s_gr, DY_LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_first").to(acc_ty)  # the backward's last read of dy
        out = d * g[:, None] + d_mean[:, None]
        if MAX:
            out += tl.where(o_r[None, :] == idx[:, None], d_max[:, None], 0.0)
        tl.store(DX + tile_offsets(n, o_k, o_r, s_dn, s_dk, s_dr, X_LAYOUT), out.to(DX.dtype.element_ty), mask=m)
