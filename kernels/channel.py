"""Triton kernels of the channel branch: pooling over H*W, the shared MLP and its backward.

Shapes (N batch, C channels, P = H*W positions, HID hidden width, S pooling splits):

* ``x``: ``[N, C, P]`` view of the input, any of the layouts in :mod:`common`, fp16/bf16/fp32/fp64.
* pooling partials ``psum``, ``pmax``: ``[N, S, C]`` in the accumulation dtype (fp32, fp64 for fp64
  inputs); ``pidx``: ``[N, S, C]`` int32, the position of each partial maximum. Split ``s`` covers
  positions ``[s * p_per_split, (s + 1) * p_per_split)``. The forward splits H*W only to expose
  parallelism; the backward's first pass writes the same format, one split per position block.
* ``w1``: ``[HID, C]``, ``b1``: ``[HID]``, ``w2``: ``[C, HID]``, ``b2``: ``[C]``, in the
  accumulation dtype.
* ``cg``: ``[N, C]`` channel gate, ``sigmoid(MLP(avg) + MLP(max))``.

The MLP kernels run one program per sample and keep intermediate vectors in small global
scratch rows (``[N, ...]``) separated by ``tl.debug_barrier()``: hidden widths range from 1 to C,
so no register tiling fits them all, and the MLP costs O(C * HID) per sample, negligible next to
the O(C * H * W) passes. No ``tl.dot``: K can be 1 and the interpreter and sm_80 disagree on
tiny dots.
"""

import triton
import triton.language as tl

from .common import first_argmax, sigmoid, tile_offsets


@triton.jit
def channel_pool_kernel(
    X, PSUM, PMAX, PIDX,
    C, P, p_per_split, n_splits,
    s_n, s_c, s_p,
    LAYOUT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Partial sum, max and first argmax over one split of H*W for BLOCK_C channels.

    Grid: ``(N * cdiv(C, BLOCK_C), n_splits)``.
    """
    acc_ty = PSUM.dtype.element_ty
    n_cblocks = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    n = (pid // n_cblocks).to(tl.int64)
    o_c = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    split = tl.program_id(1)
    p_start = split * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)

    b_sum = tl.zeros([BLOCK_C], dtype=acc_ty)
    b_max = tl.full([BLOCK_C], float("-inf"), dtype=acc_ty)
    b_idx = tl.full([BLOCK_C], 2147483647, dtype=tl.int32)
    for p0 in range(p_start, p_end, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)
        m = m_c[:, None] & (o_p < p_end)[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT), mask=m, other=0.0).to(acc_ty)
        b_sum += tl.sum(v, axis=1)
        t_max, t_idx = first_argmax(tl.where(m, v, float("-inf")), o_p[None, :], 1)
        better = t_max > b_max  # strict: on a tie the earlier position keeps the index
        b_idx = tl.where(better, t_idx, b_idx)
        b_max = tl.where(better, t_max, b_max)

    o_out = (n * n_splits + split) * C + o_c
    tl.store(PSUM + o_out, b_sum, mask=m_c)
    tl.store(PMAX + o_out, b_max, mask=m_c)
    tl.store(PIDX + o_out, b_idx, mask=m_c)


@triton.jit
def _reduce_pool_partials(PSUM, PMAX, PIDX, n, o_c, m_c, C, P, n_splits):
    """Fixed-order reduction of the ``[N, S, C]`` partials: (avg, max, argmax position)."""
    acc_ty = PSUM.dtype.element_ty
    v_sum = tl.zeros(o_c.shape, dtype=acc_ty)
    v_max = tl.full(o_c.shape, float("-inf"), dtype=acc_ty)
    v_idx = tl.full(o_c.shape, 2147483647, dtype=tl.int32)
    for s in range(0, n_splits):
        o = (n * n_splits + s) * C + o_c
        v_sum += tl.load(PSUM + o, mask=m_c, other=0.0)
        s_max = tl.load(PMAX + o, mask=m_c, other=float("-inf"))
        s_idx = tl.load(PIDX + o, mask=m_c, other=2147483647)
        better = s_max > v_max
        v_idx = tl.where(better, s_idx, v_idx)
        v_max = tl.where(better, s_max, v_max)
    return v_sum / P, v_max, v_idx


@triton.jit
def channel_mlp_fwd_kernel(
    PSUM, PMAX, PIDX, W1, B1, W2, B2, CG, VSCR, HSCR,
    C, HID, P, n_splits,
    HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """cg[n] = sigmoid(W2 (relu(W1 avg + b1) + relu(W1 max + b1)) + 2 b2), one program per n.

    ``VSCR``: ``[N, 2, C]`` scratch (avg, max); ``HSCR``: ``[N, HID]`` scratch (summed hidden).
    Grid: ``(N,)``.
    """
    acc_ty = CG.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    # 1. finish the pooling
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        v_avg, v_max, _ = _reduce_pool_partials(PSUM, PMAX, PIDX, n, o_c, m_c, C, P, n_splits)
        tl.store(VSCR + (n * 2) * C + o_c, v_avg, mask=m_c)
        tl.store(VSCR + (n * 2 + 1) * C + o_c, v_max, mask=m_c)
    tl.debug_barrier()
    # 2. hidden layer on both pooled vectors; the second layer is linear, so sum before it
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        pre_avg = tl.zeros([BLOCK_H], dtype=acc_ty)
        pre_max = tl.zeros([BLOCK_H], dtype=acc_ty)
        for c0 in range(0, C, BLOCK_C):
            o_c = c0 + tl.arange(0, BLOCK_C)
            m_c = o_c < C
            w = tl.load(W1 + o_h[:, None] * C + o_c[None, :], mask=m_h[:, None] & m_c[None, :], other=0.0)
            v_avg = tl.load(VSCR + (n * 2) * C + o_c, mask=m_c, other=0.0)
            v_max = tl.load(VSCR + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
            pre_avg += tl.sum(w * v_avg[None, :], axis=1)
            pre_max += tl.sum(w * v_max[None, :], axis=1)
        if HAS_BIAS:
            b = tl.load(B1 + o_h, mask=m_h, other=0.0)
            pre_avg += b
            pre_max += b
        hid = tl.maximum(pre_avg, 0.0) + tl.maximum(pre_max, 0.0)
        tl.store(HSCR + n * HID + o_h, hid, mask=m_h)
    tl.debug_barrier()
    # 3. output layer and gate
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        a = tl.zeros([BLOCK_C], dtype=acc_ty)
        for h0 in range(0, HID, BLOCK_H):
            o_h = h0 + tl.arange(0, BLOCK_H)
            m_h = o_h < HID
            w = tl.load(W2 + o_c[:, None] * HID + o_h[None, :], mask=m_c[:, None] & m_h[None, :], other=0.0)
            hid = tl.load(HSCR + n * HID + o_h, mask=m_h, other=0.0)
            a += tl.sum(w * hid[None, :], axis=1)
        if HAS_BIAS:
            a += 2.0 * tl.load(B2 + o_c, mask=m_c, other=0.0)
        tl.store(CG + n * C + o_c, sigmoid(a), mask=m_c)


@triton.jit
def channel_mlp_bwd_kernel(
    PSUM, PMAX, PIDX, PDCG, CG, W1, B1, W2,
    VSCR, DA, DPRE, HS, DPOOL, IDXP,
    C, HID, P, n_splits,
    HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Backward of the channel gate for one sample; grid ``(N,)``.

    Inputs: pooling partials recomputed by the first backward pass, ``PDCG`` ``[N, S, C]``
    partials of dL/dcg, ``CG`` ``[N, C]``.
    Outputs (acc dtype): ``VSCR`` ``[N, 2, C]`` (avg, max), ``DA`` ``[N, C]`` (dL/d pre-sigmoid),
    ``DPRE`` ``[N, 2, HID]`` (dL/d hidden pre-activation for avg and max), ``HS`` ``[N, HID]``
    (summed hidden activation), ``DPOOL`` ``[N, 2, C]`` (dL/dx for every element from the
    avg pool, i.e. d avg / P, and dL/d max for the argmax element), ``IDXP`` ``[N, C]`` int32
    (argmax position).
    """
    acc_ty = CG.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    # 1. pooled vectors, their argmax, and dL/da = dL/dcg * cg * (1 - cg)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        v_avg, v_max, v_idx = _reduce_pool_partials(PSUM, PMAX, PIDX, n, o_c, m_c, C, P, n_splits)
        dcg = tl.zeros([BLOCK_C], dtype=acc_ty)
        for s in range(0, n_splits):
            dcg += tl.load(PDCG + (n * n_splits + s) * C + o_c, mask=m_c, other=0.0)
        cg = tl.load(CG + n * C + o_c, mask=m_c, other=0.0)
        tl.store(VSCR + (n * 2) * C + o_c, v_avg, mask=m_c)
        tl.store(VSCR + (n * 2 + 1) * C + o_c, v_max, mask=m_c)
        tl.store(IDXP + n * C + o_c, v_idx, mask=m_c)
        tl.store(DA + n * C + o_c, dcg * cg * (1.0 - cg), mask=m_c)
    tl.debug_barrier()
    # 2. recompute the hidden pre-activations; back through the output layer and the ReLUs
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        pre_avg = tl.zeros([BLOCK_H], dtype=acc_ty)
        pre_max = tl.zeros([BLOCK_H], dtype=acc_ty)
        d_hid = tl.zeros([BLOCK_H], dtype=acc_ty)
        for c0 in range(0, C, BLOCK_C):
            o_c = c0 + tl.arange(0, BLOCK_C)
            m_c = o_c < C
            m_hc = m_h[:, None] & m_c[None, :]
            w1 = tl.load(W1 + o_h[:, None] * C + o_c[None, :], mask=m_hc, other=0.0)
            w2t = tl.load(W2 + o_c[None, :] * HID + o_h[:, None], mask=m_hc, other=0.0)
            v_avg = tl.load(VSCR + (n * 2) * C + o_c, mask=m_c, other=0.0)
            v_max = tl.load(VSCR + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
            da = tl.load(DA + n * C + o_c, mask=m_c, other=0.0)
            pre_avg += tl.sum(w1 * v_avg[None, :], axis=1)
            pre_max += tl.sum(w1 * v_max[None, :], axis=1)
            d_hid += tl.sum(w2t * da[None, :], axis=1)
        if HAS_BIAS:
            b = tl.load(B1 + o_h, mask=m_h, other=0.0)
            pre_avg += b
            pre_max += b
        tl.store(DPRE + (n * 2) * HID + o_h, tl.where(pre_avg > 0.0, d_hid, 0.0), mask=m_h)
        tl.store(DPRE + (n * 2 + 1) * HID + o_h, tl.where(pre_max > 0.0, d_hid, 0.0), mask=m_h)
        tl.store(HS + n * HID + o_h, tl.maximum(pre_avg, 0.0) + tl.maximum(pre_max, 0.0), mask=m_h)
    tl.debug_barrier()
    # 3. back through the hidden layer to the pooled vectors
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        d_avg = tl.zeros([BLOCK_C], dtype=acc_ty)
        d_max = tl.zeros([BLOCK_C], dtype=acc_ty)
        for h0 in range(0, HID, BLOCK_H):
            o_h = h0 + tl.arange(0, BLOCK_H)
            m_h = o_h < HID
            w1t = tl.load(W1 + o_h[None, :] * C + o_c[:, None], mask=m_c[:, None] & m_h[None, :], other=0.0)
            dp_avg = tl.load(DPRE + (n * 2) * HID + o_h, mask=m_h, other=0.0)
            dp_max = tl.load(DPRE + (n * 2 + 1) * HID + o_h, mask=m_h, other=0.0)
            d_avg += tl.sum(w1t * dp_avg[None, :], axis=1)
            d_max += tl.sum(w1t * dp_max[None, :], axis=1)
        tl.store(DPOOL + (n * 2) * C + o_c, d_avg / P, mask=m_c)
        tl.store(DPOOL + (n * 2 + 1) * C + o_c, d_max, mask=m_c)


@triton.jit
def channel_mlp_wgrad_kernel(
    VSCR, DA, DPRE, HS, DW1, DB1, DW2, DB2,
    N, C, HID,
    HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """MLP weight gradients, summed over the batch in a fixed order (deterministic).

    ``DW1`` ``[HID, C]``, ``DW2`` ``[C, HID]``, ``DB1`` ``[HID]``, ``DB2`` ``[C]``, acc dtype.
    Grid: ``(cdiv(HID, BLOCK_H), cdiv(C, BLOCK_C))``; each program owns one tile of each weight.
    """
    acc_ty = DW1.dtype.element_ty
    pid_h = tl.program_id(0)
    pid_c = tl.program_id(1)
    o_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    o_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_h = o_h < HID
    m_c = o_c < C
    g_w1 = tl.zeros([BLOCK_H, BLOCK_C], dtype=acc_ty)
    g_w2 = tl.zeros([BLOCK_C, BLOCK_H], dtype=acc_ty)
    g_b1 = tl.zeros([BLOCK_H], dtype=acc_ty)
    g_b2 = tl.zeros([BLOCK_C], dtype=acc_ty)
    for n in range(0, N):  # the [N, *] rows here are tiny: int32 offsets suffice
        dp_avg = tl.load(DPRE + (n * 2) * HID + o_h, mask=m_h, other=0.0)
        dp_max = tl.load(DPRE + (n * 2 + 1) * HID + o_h, mask=m_h, other=0.0)
        hs = tl.load(HS + n * HID + o_h, mask=m_h, other=0.0)
        v_avg = tl.load(VSCR + (n * 2) * C + o_c, mask=m_c, other=0.0)
        v_max = tl.load(VSCR + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
        da = tl.load(DA + n * C + o_c, mask=m_c, other=0.0)
        g_w1 += dp_avg[:, None] * v_avg[None, :] + dp_max[:, None] * v_max[None, :]
        g_w2 += da[:, None] * hs[None, :]
        g_b1 += dp_avg + dp_max
        g_b2 += da
    tl.store(DW1 + o_h[:, None] * C + o_c[None, :], g_w1, mask=m_h[:, None] & m_c[None, :])
    tl.store(DW2 + o_c[:, None] * HID + o_h[None, :], g_w2, mask=m_c[:, None] & m_h[None, :])
    if HAS_BIAS:
        if pid_c == 0:
            tl.store(DB1 + o_h, g_b1, mask=m_h)
        if pid_h == 0:
            tl.store(DB2 + o_c, 2.0 * g_b2, mask=m_c)
