"""Small @triton.jit helpers shared by the channel and spatial kernels.

Every full-size tensor is addressed as a ``[N, C, P]`` view (``P = H * W``) through three
strides. ``LAYOUT`` is a compile-time constant that tells the kernel which stride is 1, so
loads vectorise along the contiguous axis without a copy:

* ``LAYOUT_PCONTIG`` (0): NCHW-like, ``stride_p == 1``;
* ``LAYOUT_CCONTIG`` (1): channels_last, ``stride_c == 1``;
* ``LAYOUT_STRIDED`` (2): neither (e.g. an expanded, stride-0 incoming gradient).

All offsets into full-size tensors are int64: one sample alone can exceed 2**31 elements.
"""

import triton
import triton.language as tl

LAYOUT_PCONTIG = 0
LAYOUT_CCONTIG = 1
LAYOUT_STRIDED = 2

# Larger than any channel or position index; used as "no index" in argmin-style reductions.
INDEX_SENTINEL = 2**31 - 1
# "No index yet" of the running (max, index) accumulators that first_argmax reduces at the end:
# above every real index, and first_argmax's key ``index + INDEX_OFFSET`` still fits in int32.
RUNNING_SENTINEL = 2**30 - 1
# Channel and position indices, masked lanes included, are below this (the launchers refuse H*W
# or C above 2**29); first_argmax spells it as a literal (a jit function reads no module globals).
INDEX_OFFSET = 2**30


@triton.jit
def tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT: tl.constexpr):
    """int64 offsets of the [BLOCK_C, BLOCK_P] tile (n, o_c[:, None], o_p[None, :])."""
    o_c64 = o_c.to(tl.int64)
    o_p64 = o_p.to(tl.int64)
    if LAYOUT == 0:
        offs = n * s_n + o_c64[:, None] * s_c + o_p64[None, :]
    elif LAYOUT == 1:
        offs = n * s_n + o_c64[:, None] + o_p64[None, :] * s_p
    else:
        offs = n * s_n + o_c64[:, None] * s_c + o_p64[None, :] * s_p
    return offs


@triton.jit
def sample_major(per_sample, REVERSE: tl.constexpr):
    """(sample, rank within the sample) of this program in a 1-D grid of ``N * per_sample``
    programs laid out sample by sample. The GPU starts programs roughly in grid order, so a pass
    walks the batch one sample at a time: ascending, or with REVERSE descending. The launchers
    alternate the direction between consecutive passes over the same tensor (a serpentine), so
    each pass starts on the samples the previous one touched last, the ones still in L2. The
    order changes no result: every cross-program reduction merges its partials in a fixed order."""
    pid = tl.program_id(0)
    n = pid // per_sample
    r = pid - n * per_sample
    if REVERSE:
        n = tl.num_programs(0) // per_sample - 1 - n
    return n.to(tl.int64), r


@triton.jit
def sigmoid(z):
    """Logistic function in z's precision (tl.sigmoid is fp32-only under the interpreter)."""
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def first_argmax(v, idx, AXIS: tl.constexpr):
    """Max of ``v`` along AXIS and the smallest ``idx`` reaching it (the index rule of torch.max).
    A NaN wins and the first NaN's index is reported, as torch.max(dim) does (``tl.max`` alone
    ignores NaN). Indices are below ``INDEX_OFFSET``: one min over ``idx`` for NaNs and
    ``idx + INDEX_OFFSET`` for maximal elements finds the first NaN, else the first maximum.
    (Built from tl.max / tl.min rather than a tuple tl.reduce, which the interpreter runs element
    by element.)"""
    best = tl.max(v, axis=AXIS)
    if AXIS == 0:
        hit = v == best[None, :]
    else:
        hit = v == best[:, None]
    OFFSET: tl.constexpr = 1073741824  # INDEX_OFFSET
    key = tl.where(v != v, idx, tl.where(hit, idx + OFFSET, 2147483647))
    k = tl.min(key, axis=AXIS)
    has_nan = k < OFFSET
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, k, k - OFFSET)


@triton.jit
def merge_argmax(b_max, b_idx, t_max, t_idx):
    """Merge two partial (max, first index) results elementwise in the order of torch.max(dim):
    NaN above every number, then the larger value; equal values (or two NaNs) go to the smaller
    index. A running result starts at ``(-inf, INDEX_SENTINEL)``, which any real element
    replaces, -inf included. (The ReLUs of the MLP kernels keep NaN the same way:
    ``where(v < 0, 0, v)``, as torch.relu; ``tl.maximum`` would drop it.)"""
    b_nan = b_max != b_max
    t_nan = t_max != t_max
    take_t = (t_max > b_max) | (t_nan & ~b_nan) | (((t_max == b_max) | (t_nan & b_nan)) & (t_idx < b_idx))
    return tl.where(take_t, t_max, b_max), tl.where(take_t, t_idx, b_idx)


@triton.jit
def nan_max(v, AXIS: tl.constexpr):
    """Max of ``v`` along AXIS, NaN if any element is NaN (as torch.amax; ``tl.max`` ignores NaN)."""
    best = tl.max(v, axis=AXIS)
    has_nan = tl.max(tl.where(v != v, 1, 0), axis=AXIS) > 0
    return tl.where(has_nan, float("nan"), best)


@triton.jit
def running_max(acc, v):
    """Elementwise running max keeping NaN (once NaN, stays NaN; a NaN replaces any number)."""
    return tl.where((v > acc) | (v != v), v, acc)


@triton.jit
def ticket(CNT, slot, total):
    """True in the last of ``total`` programs to take a ticket on counter ``CNT[slot]``; that
    program also resets the counter to 0, so the call's own kernels keep the workspace zeroed
    (no fill launch). Deterministic "last program finishes the reduction": the last program
    then reads every program's partial results in a fixed order.

    Ordering: a barrier so every thread's stores are issued, then one acquire-release atomic;
    the last program reads the others' partials after it (with ``.cg`` loads, through L2)."""
    tl.debug_barrier()
    t = tl.atomic_add(CNT + slot, 1, sem="acq_rel")
    last = t == total - 1
    if last:
        tl.atomic_xchg(CNT + slot, 0, sem="relaxed")
    return last


@triton.jit
def argmax_rows(MAX, IDX, row0, n_rows, max_stride, idx_stride, o_col, m_col, BLOCK_S: tl.constexpr):
    """Merge the (max, first index) partial rows ``row0 .. row0 + n_rows`` of ``MAX``/``IDX``
    (row r at ``r * max_stride`` and ``r * idx_stride``, columns ``o_col``) in row order, as
    torch.max(dim): NaN wins, ties to the smaller index. Loads through L2 (``.cg``): the rows may
    come from other programs of the same launch."""
    b_max = tl.full(o_col.shape, float("-inf"), dtype=MAX.dtype.element_ty)
    b_idx = tl.full(o_col.shape, 1073741823, dtype=tl.int32)  # RUNNING_SENTINEL
    for s0 in range(0, n_rows, BLOCK_S):
        o_s = row0 + s0 + tl.arange(0, BLOCK_S)
        m = (o_s < row0 + n_rows)[:, None] & m_col[None, :]
        t_max = tl.load(MAX + o_s[:, None] * max_stride + o_col[None, :], mask=m, other=float("-inf"),
                        cache_modifier=".cg")
        t_idx = tl.load(IDX + o_s[:, None] * idx_stride + o_col[None, :], mask=m, other=1073741823,
                        cache_modifier=".cg")
        t_max, t_idx = first_argmax(t_max, t_idx, 0)
        b_max, b_idx = merge_argmax(b_max, b_idx, t_max, t_idx)
    return b_max, b_idx


@triton.jit
def sum_rows(X, row0, n_rows, stride, o_col, m_col, BLOCK_S: tl.constexpr):
    """Sum of the rows ``row0 .. row0 + n_rows`` of ``X`` (row r at ``r * stride``, columns
    ``o_col``), a [BLOCK_S, columns] tile at a time: a fixed order, deterministic. Loads through
    L2 (``.cg``): the rows may come from other programs of the same launch."""
    acc = tl.zeros(o_col.shape, dtype=X.dtype.element_ty)
    for s0 in range(0, n_rows, BLOCK_S):
        o_s = (row0 + s0 + tl.arange(0, BLOCK_S)).to(tl.int64)
        m = (o_s < row0 + n_rows)[:, None] & m_col[None, :]
        acc += tl.sum(tl.load(X + o_s[:, None] * stride + o_col[None, :], mask=m, other=0.0, cache_modifier=".cg"),
                      axis=0)
    return acc


@triton.jit
def second_layer(W2, B2, HA, n, o_c, m_c, HID, acc_ty: tl.constexpr,
                 POOL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr):
    """The MLP's second layer for channels o_c of sample n, ``W2[o_c] @ HA[n] + b2`` (twice b2 for
    POOL 0: MLP(avg) + MLP(max)), from one ``[len(o_c), HID]`` slab of W2; 0 on masked channels."""
    a = tl.zeros(o_c.shape, dtype=acc_ty)
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        a += second_layer_slab(W2, tl.load(HA + n * HID + o_h, mask=m_h, other=0.0), o_c, m_c, o_h, m_h, HID, acc_ty)
    return second_layer_bias(B2, a, o_c, m_c, acc_ty, POOL, HAS_BIAS)


@triton.jit
def second_layer_slab(W2, hv, o_c, m_c, o_h, m_h, HID, acc_ty: tl.constexpr):
    """``W2[o_c, o_h] @ hv``: one ``[len(o_c), len(o_h)]`` slab of W2 (``[C, HID]``) times the hidden
    values ``hv`` at o_h."""
    w = tl.load(W2 + o_c.to(tl.int64)[:, None] * HID + o_h[None, :], mask=m_c[:, None] & m_h[None, :],
                other=0.0).to(acc_ty)
    return tl.sum(w * hv[None, :], axis=1)


@triton.jit
def second_layer_bias(B2, a, o_c, m_c, acc_ty: tl.constexpr, POOL: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The second layer's bias on products ``a`` of channels o_c (twice b2 for POOL 0); 0 on
    masked channels (0 * an infinite hidden unit is NaN)."""
    if HAS_BIAS:
        b2 = tl.load(B2 + o_c, mask=m_c, other=0.0).to(acc_ty)
        a += b2
        if POOL == 0:
            a += b2
    return tl.where(m_c, a, 0.0)
