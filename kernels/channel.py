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
so no register tiling fits them all. No ``tl.dot``: K can be 1 and the interpreter and sm_80
disagree on tiny dots. Each program streams the weights it needs from L2 once per sample (the
forward reads W1 and W2 once each, the backward W2 once and W1 twice: the avg and max branches
share each weight tile, :func:`_matvec`). That is small next to the O(C * H * W) passes for the
early stages, but not for the deepest ones: at C = 2048, HID = 128 the fp32 weights are 2 MB per
sample against the sample's 200 kB of bf16 x at 7 x 7, read by one SM each. What that costs, and
whether a sample-blocked or hidden-split MLP wins, needs a GPU measurement (benchmarks/NOTES.md).
"""

import triton
import triton.language as tl

from .common import first_argmax, merge_argmax, sigmoid, tile_offsets


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
        b_max, b_idx = merge_argmax(b_max, b_idx, t_max, t_idx)  # on a tie the earlier position keeps it

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
        v_max, v_idx = merge_argmax(v_max, v_idx, s_max, s_idx)
    return v_sum / P, v_max, v_idx


@triton.jit
def _matvec(M, o_r, m_r, V0, V1, n_k, s_r, s_k, BLOCK_K: tl.constexpr, PAIR: tl.constexpr):
    """``out0[r] = sum_k M[r * s_r + k * s_k] * V0[k]`` for the rows o_r, k < n_k (V0 contiguous),
    and with PAIR the same for V1 from the same weight tiles (zeros otherwise): the avg and max
    branches share each tile, so the weight is streamed once for both. Returns (out0, out1).
    int64 offsets: a single-layer MLP's ``[C, C]`` weight passes 2**31 elements from C = 46341."""
    out0 = tl.zeros(o_r.shape, dtype=M.dtype.element_ty)
    out1 = tl.zeros(o_r.shape, dtype=M.dtype.element_ty)
    o_r64 = o_r.to(tl.int64)
    for k0 in range(0, n_k, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < n_k
        w = tl.load(M + o_r64[:, None] * s_r + o_k.to(tl.int64)[None, :] * s_k, mask=m_r[:, None] & m_k[None, :], other=0.0)
        out0 += tl.sum(w * tl.load(V0 + o_k, mask=m_k, other=0.0)[None, :], axis=1)
        if PAIR:
            out1 += tl.sum(w * tl.load(V1 + o_k, mask=m_k, other=0.0)[None, :], axis=1)
    return out0, out1


@triton.jit
def channel_mlp_fwd_kernel(
    PSUM, PMAX, PIDX, W1, B1, W2, B2, CG, A, VSCR, HSCR,
    C, HID, P, n_splits,
    POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """The channel gate of one sample; grid ``(N,)``.

    POOL selects the MLP inputs: 0 (avg+max): ``cg = sigmoid(MLP(avg) + MLP(max))``; 1 (avg):
    ``sigmoid(MLP(avg))``; 2 (light): ``sigmoid(MLP(avg / 2 + max / 2))``. With TWO_LAYER
    ``MLP(v) = W2 relu(W1 v + b1) + b2`` (``W1`` ``[HID, C]``, ``W2`` ``[C, HID]``), else the single
    layer ``W1 v + b1`` (``W1`` ``[C, C]``, HID == C).
    Writes ``CG`` ``[N, C]`` (the gate) and ``A`` ``[N, C]`` (its pre-activation, kept for the
    backward: ``cg * (1 - cg)`` is then formed as ``sigmoid(a) * sigmoid(-a)``, without the
    cancellation of ``1 - cg`` near saturation).
    ``VSCR``: ``[N, 2, C]`` scratch (MLP input v0, max); ``HSCR``: ``[N, HID]`` (summed hidden).
    """
    n = tl.program_id(0).to(tl.int64)
    v0_row = VSCR + (n * 2) * C
    v1_row = VSCR + (n * 2 + 1) * C
    # 1. finish the pooling
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        v_avg, v_max, _ = _reduce_pool_partials(PSUM, PMAX, PIDX, n, o_c, m_c, C, P, n_splits)
        if POOL == 2:
            v_avg = 0.5 * v_avg + 0.5 * v_max
        tl.store(v0_row + o_c, v_avg, mask=m_c)
        tl.store(v1_row + o_c, v_max, mask=m_c)
    tl.debug_barrier()
    # 2. first layer on the pooled vector(s); a two-layer MLP's output layer is linear, so the
    #    avg and max branches are summed before it
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        pre, pre1 = _matvec(W1, o_h, m_h, v0_row, v1_row, C, C, 1, BLOCK_C, POOL == 0)
        if HAS_BIAS:
            pre += tl.load(B1 + o_h, mask=m_h, other=0.0)
        if TWO_LAYER:
            pre = tl.where(pre < 0.0, 0.0, pre)  # ReLU keeping NaN, as torch.relu
        if POOL == 0:
            if HAS_BIAS:
                pre1 += tl.load(B1 + o_h, mask=m_h, other=0.0)
            if TWO_LAYER:
                pre1 = tl.where(pre1 < 0.0, 0.0, pre1)
            pre += pre1
        if TWO_LAYER:
            tl.store(HSCR + n * HID + o_h, pre, mask=m_h)
        else:
            tl.store(A + n * C + o_h, pre, mask=m_h)
            tl.store(CG + n * C + o_h, sigmoid(pre), mask=m_h)
    if TWO_LAYER:
        tl.debug_barrier()
        # 3. output layer and gate
        for c0 in range(0, C, BLOCK_C):
            o_c = c0 + tl.arange(0, BLOCK_C)
            m_c = o_c < C
            a, _ = _matvec(W2, o_c, m_c, HSCR + n * HID, HSCR, HID, HID, 1, BLOCK_H, False)
            if HAS_BIAS:
                b2 = tl.load(B2 + o_c, mask=m_c, other=0.0)
                a += b2
                if POOL == 0:  # MLP(avg) + MLP(max) holds b2 twice
                    a += b2
            tl.store(A + n * C + o_c, a, mask=m_c)
            tl.store(CG + n * C + o_c, sigmoid(a), mask=m_c)


@triton.jit
def channel_mlp_bwd_kernel(
    PSUM, PMAX, PIDX, PDCG, A, W1, B1, W2,
    VSCR, DA, DPRE, HS, DPOOL, IDXP,
    C, HID, P, n_splits,
    POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Backward of the channel gate for one sample; grid ``(N,)``. POOL, TWO_LAYER as forward.

    Inputs: pooling partials recomputed by the first backward pass, ``PDCG`` ``[N, S, C]``
    partials of dL/dcg, ``A`` ``[N, C]`` the gate's pre-activation.
    Outputs (acc dtype): ``VSCR`` ``[N, 2, C]`` (MLP input v0, max), ``DA`` ``[N, C]`` (dL/d
    pre-sigmoid), ``DPRE`` ``[N, 2, HID]`` (dL/d first-layer output for v0 and, with POOL 0, max;
    zero otherwise), ``HS`` ``[N, HID]`` (summed hidden activation, TWO_LAYER), ``DPOOL``
    ``[N, 2, C]`` (dL/d avg / P, which every element of the row receives, and dL/d max, which
    the argmax element receives), ``IDXP`` ``[N, C]`` int32 (argmax position).
    """
    n = tl.program_id(0).to(tl.int64)
    v0_row = VSCR + (n * 2) * C
    v1_row = VSCR + (n * 2 + 1) * C
    da_row = DA + n * C
    dp0_row = DPRE + (n * 2) * HID
    dp1_row = DPRE + (n * 2 + 1) * HID
    # 1. pooled vectors, their argmax, and dL/da = dL/dcg * cg * (1 - cg)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        v_avg, v_max, v_idx = _reduce_pool_partials(PSUM, PMAX, PIDX, n, o_c, m_c, C, P, n_splits)
        if POOL == 2:
            v_avg = 0.5 * v_avg + 0.5 * v_max
        dcg = tl.zeros([BLOCK_C], dtype=v_avg.dtype)
        for s in range(0, n_splits):
            dcg += tl.load(PDCG + (n * n_splits + s) * C + o_c, mask=m_c, other=0.0)
        a = tl.load(A + n * C + o_c, mask=m_c, other=0.0)
        tl.store(v0_row + o_c, v_avg, mask=m_c)
        tl.store(v1_row + o_c, v_max, mask=m_c)
        tl.store(IDXP + n * C + o_c, v_idx, mask=m_c)
        tl.store(da_row + o_c, dcg * sigmoid(a) * sigmoid(-a), mask=m_c)
    tl.debug_barrier()
    # 2. dL/d first-layer output: through the output layer and the ReLUs (recomputing the
    #    pre-activations), or dL/da itself for a single layer
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        if TWO_LAYER:
            d_hid, _ = _matvec(W2, o_h, m_h, da_row, da_row, C, 1, HID, BLOCK_C, False)
            pre0, pre1 = _matvec(W1, o_h, m_h, v0_row, v1_row, C, C, 1, BLOCK_C, POOL == 0)
            if HAS_BIAS:
                pre0 += tl.load(B1 + o_h, mask=m_h, other=0.0)
            # ReLU backward as torch's threshold_backward: the gradient passes where pre > 0 or
            # pre is NaN; the recomputed activation keeps NaN as torch.relu
            dp0 = tl.where(pre0 <= 0.0, 0.0, d_hid)
            hs = tl.where(pre0 < 0.0, 0.0, pre0)
            dp1 = tl.zeros([BLOCK_H], dtype=dp0.dtype)
            if POOL == 0:
                if HAS_BIAS:
                    pre1 += tl.load(B1 + o_h, mask=m_h, other=0.0)
                dp1 = tl.where(pre1 <= 0.0, 0.0, d_hid)
                hs += tl.where(pre1 < 0.0, 0.0, pre1)
            tl.store(HS + n * HID + o_h, hs, mask=m_h)
        else:
            dp0 = tl.load(da_row + o_h, mask=m_h, other=0.0)
            dp1 = tl.zeros([BLOCK_H], dtype=dp0.dtype)
            if POOL == 0:
                dp1 = dp0
        tl.store(dp0_row + o_h, dp0, mask=m_h)
        tl.store(dp1_row + o_h, dp1, mask=m_h)
    tl.debug_barrier()
    # 3. back through the first layer to the pooled vectors
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        d_v0, d_v1 = _matvec(W1, o_c, m_c, dp0_row, dp1_row, HID, 1, C, BLOCK_H, POOL == 0)
        if POOL == 0:
            d_avg = d_v0
            d_max = d_v1
        elif POOL == 1:
            d_avg = d_v0
            d_max = tl.zeros([BLOCK_C], dtype=d_v0.dtype)
        else:
            d_avg = 0.5 * d_v0
            d_max = 0.5 * d_v0
        tl.store(DPOOL + (n * 2) * C + o_c, d_avg / P, mask=m_c)
        tl.store(DPOOL + (n * 2 + 1) * C + o_c, d_max, mask=m_c)


@triton.jit
def channel_mlp_wgrad_kernel(
    VSCR, DA, DPRE, HS, DW1, DB1, DW2, DB2,
    N, C, HID,
    POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """MLP weight gradients, summed over the batch in a fixed order (deterministic).

    ``DW1`` ``[HID, C]``, ``DB1`` ``[HID]``; with TWO_LAYER ``DW2`` ``[C, HID]``, ``DB2`` ``[C]``;
    acc dtype. Grid: ``(cdiv(HID, BLOCK_H), cdiv(C, BLOCK_C))``: each program owns one tile of
    each weight.
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
    # The [N, 2, C] rows pass 2**31 elements when N * C does: walk them with pointer increments
    # (64-bit) instead of n * C products in int32.
    dpre_row = DPRE
    v_row = VSCR
    da_row = DA
    hs_row = HS
    for n in range(0, N):
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
    tl.store(DW1 + o_h64[:, None] * C + o_c[None, :], g_w1, mask=m_h[:, None] & m_c[None, :])
    if HAS_BIAS:
        if pid_c == 0:
            tl.store(DB1 + o_h, g_b1, mask=m_h)
    if TWO_LAYER:
        tl.store(DW2 + o_c64[:, None] * HID + o_h[None, :], g_w2, mask=m_c[:, None] & m_h[None, :])
        if HAS_BIAS:
            if pid_h == 0:
                if POOL == 0:
                    g_b2 = 2.0 * g_b2
                tl.store(DB2 + o_c, g_b2, mask=m_c)
