"""Triton kernels of the spatial branch and the full-size backward passes.

Shapes (N batch, C channels, P = H*W positions, K the odd conv size, NPB = cdiv(P, BLOCK_P)):

* ``x``, ``y``, ``dy``, ``dx``: ``[N, C, P]`` views (layouts in :mod:`common`), fp16/bf16/fp32/fp64.
* ``cg``: ``[N, C]`` channel gate (forward), ``a`` its pre-activation (saved for the backward,
  which recomputes ``cg = sigmoid(a)``); ``smap``: ``[N, 2, P]`` spatial pools of ``x * cg``
  (channel 0 the max over C, channel 1 the mean, the official order); ``sidx``: ``[N, P]`` int32,
  the channel holding each spatial max; ``z``: ``[N, P]`` the spatial gate's pre-activation
  (``sg = sigmoid(z)``; kept instead of sg so ``sg * (1 - sg)`` is ``sigmoid(z) * sigmoid(-z)``,
  free of cancellation near saturation). All small, acc dtype.
* ``wc``: ``[2 * K * K]`` conv weight (``[max-taps, mean-taps]``), ``bc``: ``[1]`` conv bias, in
  their own dtype (upcast after loading).

Every kernel here runs one program per (sample, block of BLOCK_P positions, channel chunk) and
loops over the chunk's channels in a pipelined loop (``tl.range(num_stages=...)``), so each
full-size tensor is streamed once per kernel. The grid is 1-D, ``N * n_csplits * NPB``
programs sample by sample (``common.sample_major``: the GPU starts programs about in grid
order, so a pass walks the batch one sample at a time, ascending or, REVERSE, descending; the
launchers alternate the direction between passes over the same tensor so each re-read starts
on what is still in L2). Reductions over the channels of a chunk are kept in running accumulators and reduced once
after the loop; the chunks' partial results are merged in a fixed order by the last program of
each position block (a ticket). The k x k conv reads only the ``[N, 2, P]`` map (or ``[N, P]``
dz in the backward), which stays in L1/L2.
"""

import triton
import triton.language as tl

from .common import argmax_rows, first_argmax, merge_argmax, sample_major, second_layer, sigmoid, sum_rows, ticket, tile_offsets


@triton.jit
def _stream_program(n_pb, n_csplits, REVERSE: tl.constexpr):
    """(sample, position block, channel chunk) of this program in a stream pass's 1-D grid of
    ``N * n_csplits * n_pb`` programs, sample by sample (:func:`sample_major`)."""
    n, r = sample_major(n_pb * n_csplits, REVERSE)
    cs = r // n_pb
    return n, r - cs * n_pb, cs


@triton.jit
def pool_grads(W1, DPRE, n, o_c, m_c, C, HID, acc_ty: tl.constexpr, POOL: tl.constexpr, BLOCK_H: tl.constexpr):
    """The gradients of sample n's pooled vectors at channels o_c through the MLP's first layer,
    ``dv_j = W1[:, o_c]^T DPRE[n, j]`` (one ``[HID, len(o_c)]`` slab of W1; DPRE ``[N, 2, HID]``):
    ``(d avg, d max)`` -- POOL 0 (dv_0, dv_1), 1 (dv_0, 0), 2 (the light pool avg/2 + max/2):
    (dv_0 / 2, dv_0 / 2). d avg is the mean's gradient, not yet divided by the pooled count."""
    d_v0 = tl.zeros(o_c.shape, dtype=acc_ty)
    d_v1 = tl.zeros(o_c.shape, dtype=acc_ty)
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        w1 = tl.load(W1 + o_h.to(tl.int64)[:, None] * C + o_c[None, :], mask=m_h[:, None] & m_c[None, :],
                     other=0.0).to(acc_ty)
        d_v0 += tl.sum(w1 * tl.load(DPRE + (n * 2) * HID + o_h, mask=m_h, other=0.0)[:, None], axis=0)
        if POOL == 0:
            d_v1 += tl.sum(w1 * tl.load(DPRE + (n * 2 + 1) * HID + o_h, mask=m_h, other=0.0)[:, None], axis=0)
    if POOL == 0:
        d_avg = d_v0
        d_max = d_v1
    elif POOL == 1:
        d_avg = d_v0
        d_max = tl.zeros(o_c.shape, dtype=acc_ty)
    else:
        d_avg = 0.5 * d_v0
        d_max = 0.5 * d_v0
    return d_avg, d_max


@triton.jit
def _channel_gate(W2, B2, HA, A, n, o_c, m_c, C, HID,
                  POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr):
    """The channel gate's pre-activation for channels o_c of sample n: with TWO_LAYER the MLP's
    second layer (:func:`second_layer`), stored to ``A``; else ``A[n, o_c]`` itself (written by
    the first pass)."""
    acc_ty = A.dtype.element_ty
    if TWO_LAYER:
        a = second_layer(W2, B2, HA, n, o_c, m_c, HID, acc_ty, POOL, HAS_BIAS, BLOCK_H)
        tl.store(A + n * C + o_c, a, mask=m_c)
    else:
        a = tl.load(A + n * C + o_c, mask=m_c, other=0.0)
    return a


# split counts and counter offsets vary with the shape: not specialised (fewer variants to compile)
@triton.jit(do_not_specialize=["n_csplits"])
def spatial_pool_kernel(
    X, W2, B2, HA, A, SPART, SPIDX, SMAP, SIDX, CNT,
    C, P, HID, c_per_split, n_csplits,
    s_n, s_c, s_p,
    LAYOUT: tl.constexpr, POOL: tl.constexpr, TWO_LAYER: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr,
    NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr,
):
    """Forward pass 2: the channel gate (the MLP's second layer) and the spatial pools of
    ``x * cg`` (never stored). Grid ``(N * n_csplits * NPB,)`` (sample by sample:
    :func:`sample_major`, REVERSE descending); program (n, pb, cs) covers BLOCK_P
    positions and the channels ``[cs * c_per_split, ...)``:

    * with TWO_LAYER, ``a = W2 @ HA[n] + b2`` for its channels, before the stream loop (one ``[BLOCK_C, HID]``
      slab of W2 per channel block; the gate's pre-activation, stored to ``A`` ``[N, C]`` by every
      position block, equal values, and read back in the loop);
    * max (first channel on ties, NaN wins, as torch.max) and sum over its channels of x * cg,
      in running [BLOCK_C, BLOCK_P] accumulators reduced once after the loop;
    * with several channel splits: partial rows ``SPART`` ``[N, n_csplits, 2, P]`` (max, sum) and
      ``SPIDX`` ``[N, n_csplits, P]``; the last split of (n, pb) (a ticket on ``CNT[n * NPB + pb]``)
      merges them in split order. Writes ``SMAP`` ``[N, 2, P]`` (max, mean) and ``SIDX``.
    """
    acc_ty = SMAP.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    n, pb, cs = _stream_program(n_pb, n_csplits, REVERSE)
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    c_start = cs * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    if TWO_LAYER:
        # the chunk's gate pre-activations first (its W2 slab), stored to A by every position
        # block of (n, cs) alike (the same bits: a benign write of equal values) and read back
        # below: the stream loop then holds only the loads of x, which lets it pipeline
        for c0 in range(c_start, c_end, BLOCK_C):
            o_c = c0 + tl.arange(0, BLOCK_C)
            _channel_gate(W2, B2, HA, A, n, o_c, o_c < c_end, C, HID, POOL, TWO_LAYER, HAS_BIAS, BLOCK_H)
        tl.debug_barrier()  # this program's rows of A, read back by other threads
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_ty)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_ty)
    acc_idx = tl.full([BLOCK_C, BLOCK_P], 1073741823, dtype=tl.int32)  # RUNNING_SENTINEL
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=NUM_STAGES):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_last").to(acc_ty)  # pass 3 reads x again
        a = tl.load(A + n * C + o_c, mask=m_c, other=0.0)
        v = v * sigmoid(a)[:, None]
        acc_sum += v
        acc_max, acc_idx = merge_argmax(acc_max, acc_idx, tl.where(m, v, float("-inf")),
                                        tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32) + o_c[:, None])
    b_max, b_idx = first_argmax(acc_max, acc_idx, 0)
    b_sum = tl.sum(acc_sum, axis=0)
    last = n_csplits == 1
    if n_csplits > 1:
        o_row = (n * n_csplits + cs) * P + o_p
        tl.store(SPART + (n * n_csplits + cs) * 2 * P + o_p, b_max, mask=m_p)
        tl.store(SPART + (n * n_csplits + cs) * 2 * P + P + o_p, b_sum, mask=m_p)
        tl.store(SPIDX + o_row, b_idx, mask=m_p)
        last = ticket(CNT, n * n_pb + pb, n_csplits)
    if last:
        if n_csplits > 1:  # every split's partial rows, in split order
            row0 = n * n_csplits
            b_sum = sum_rows(SPART + P, row0, n_csplits, 2 * P, o_p, m_p, BLOCK_S)
            b_max, b_idx = argmax_rows(SPART, SPIDX, row0, n_csplits, 2 * P, P, o_p, m_p, BLOCK_S)
        tl.store(SMAP + (n * 2) * P + o_p, b_max, mask=m_p)
        tl.store(SMAP + (n * 2 + 1) * P + o_p, b_sum / C, mask=m_p)
        tl.store(SIDX + n * P + o_p, b_idx, mask=m_p)


@triton.jit
def _tap_row(o_p, m_p, H, W, kh, KSIZE: tl.constexpr, SIGN: tl.constexpr):
    """Neighbour positions of o_p for the taps of conv row kh, as a [BLOCK_P, KW] gather tile.

    SIGN = 1 gives the correlation's inputs ``(h + dh, w + dw)``, SIGN = -1 its adjoint's
    ``(h - dh, w - dw)``. Returns (tap column [KW], its mask, positions, in-bounds mask).
    One row at a time keeps the gather tile small (registers) while still vectorised.
    """
    KW: tl.constexpr = triton.next_power_of_2(KSIZE)
    PAD: tl.constexpr = KSIZE // 2
    o_kw = tl.arange(0, KW)
    m_kw = o_kw < KSIZE
    hh = o_p // W + SIGN * (kh - PAD)
    ww = (o_p % W)[:, None] + SIGN * (o_kw[None, :] - PAD)
    m = m_p[:, None] & m_kw[None, :] & ((hh >= 0) & (hh < H))[:, None] & (ww >= 0) & (ww < W)
    return o_kw, m_kw, hh[:, None] * W + ww, m


@triton.jit
def _tap_weights(WC, kh, o_kw, m_kw, acc_ty: tl.constexpr, KSIZE: tl.constexpr, CONV_FORM: tl.constexpr):
    """Row kh of the conv's taps for the max map and the mean map, from the caller's own weight
    layout (no flip or concatenation op before the launch): CONV_FORM 0 ``[max, mean]`` input
    channels, 1 ``[mean, max]``, 2 one channel over ``mean / 2 + max / 2`` (``[1, 1, K, K]``:
    both maps take half of each tap)."""
    KK: tl.constexpr = KSIZE * KSIZE
    if CONV_FORM == 2:
        w = tl.load(WC + kh * KSIZE + o_kw, mask=m_kw, other=0.0).to(acc_ty) * 0.5
        return w, w
    OFF_MAX: tl.constexpr = KK if CONV_FORM == 1 else 0
    OFF_MEAN: tl.constexpr = 0 if CONV_FORM == 1 else KK
    w0 = tl.load(WC + OFF_MAX + kh * KSIZE + o_kw, mask=m_kw, other=0.0).to(acc_ty)
    w1 = tl.load(WC + OFF_MEAN + kh * KSIZE + o_kw, mask=m_kw, other=0.0).to(acc_ty)
    return w0, w1


@triton.jit
def _bn_grad_input(DZ, ZHAT, offs, mask, gi, c0, c1, BN: tl.constexpr):
    """dL/d(conv output) at ``offs`` from dL/d(BatchNorm output) ``DZ``: ``gi * dz`` with running
    statistics (BN 2), ``gi * (dz - c0 - zhat * c1)`` with batch statistics (BN 1, c0 and c1 the
    batch means of dz and dz * zhat); ``dz`` itself without a BatchNorm. Zero where masked."""
    d = tl.load(DZ + offs, mask=mask, other=0.0)
    if BN == 1:
        zh = tl.load(ZHAT + offs, mask=mask, other=0.0)
        d = tl.where(mask, gi * (d - c0 - zh * c1), 0.0)
    elif BN == 2:
        d = gi * d
    return d


@triton.jit
def _conv_same(MAP, WC, n, o_p, m_p, P, H, W, KSIZE: tl.constexpr, TRANSPOSE: tl.constexpr,
               CONV_FORM: tl.constexpr, ZHAT, gi, c0, c1, BN: tl.constexpr):
    """The 2->1 'same' k x k correlation of ``MAP`` ([N, 2, P], max then mean) at positions o_p,
    or, with TRANSPOSE, its adjoint 1->2 applied to ``MAP`` ([N, P] dL/d(gate pre-activation),
    taken through the BatchNorm by :func:`_bn_grad_input`): returns (max-map, mean-map) parts."""
    acc_ty = MAP.dtype.element_ty
    out0 = tl.zeros(o_p.shape, dtype=acc_ty)
    out1 = tl.zeros(o_p.shape, dtype=acc_ty)
    for kh in tl.static_range(KSIZE):
        o_kw, m_kw, o_q, m_q = _tap_row(o_p, m_p, H, W, kh, KSIZE, -1 if TRANSPOSE else 1)
        w0, w1 = _tap_weights(WC, kh, o_kw, m_kw, acc_ty, KSIZE, CONV_FORM)
        if TRANSPOSE:
            d = _bn_grad_input(MAP, ZHAT, n * P + o_q, m_q, gi, c0, c1, BN)
            out0 += tl.sum(d * w0[None, :], axis=1)
            out1 += tl.sum(d * w1[None, :], axis=1)
        else:
            out0 += tl.sum(tl.load(MAP + (n * 2) * P + o_q, mask=m_q, other=0.0) * w0[None, :], axis=1)
            out1 += tl.sum(tl.load(MAP + (n * 2 + 1) * P + o_q, mask=m_q, other=0.0) * w1[None, :], axis=1)
    return out0, out1


@triton.jit(do_not_specialize=["H", "W", "n_tiles", "count"])
def spatial_stats_kernel(
    SMAP, WC, BC, ZC, TPART, STATS, CNT,
    P, H, W, n_tiles, count, bn_eps,
    KSIZE: tl.constexpr, CONV_FORM: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Training-mode BatchNorm of the spatial conv output (forward, between passes 2 and 3): the
    conv ``zc = conv(smap) + bc`` ``[N, P]`` (stored to ``ZC`` for the gate pass) and its batch
    statistics over N, H, W. Grid ``(N * cdiv(P, BLOCK_P),)``; each program stores its tile's
    count, mean and centred sum of squares to ``TPART`` ``[n_tiles, 3]``; the last program (a
    ticket on ``CNT[0]``) combines them in tile order (mean first, then the centred sums with the
    tiles' offsets: no cancellation) and writes ``STATS`` = (invstd, mean, unbiased variance), as
    nn.BatchNorm2d normalises (biased variance) and updates its running variance (unbiased).
    Deterministic: fixed-order sums."""
    acc_ty = SMAP.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    z0, z1 = _conv_same(SMAP, WC, n, o_p, m_p, P, H, W, KSIZE, False, CONV_FORM, ZC, 1.0, 0.0, 0.0, 0)
    z = z0 + z1
    if HAS_CONV_BIAS:
        z += tl.load(BC).to(acc_ty)
    tl.store(ZC + n * P + o_p, z, mask=m_p)
    t_cnt = tl.sum(m_p.to(acc_ty), axis=0)
    t_mean = tl.sum(tl.where(m_p, z, 0.0), axis=0) / t_cnt
    t_dev = tl.where(m_p, z - t_mean, 0.0)
    t_m2 = tl.sum(t_dev * t_dev, axis=0)
    tl.store(TPART + pid * 3, t_cnt)
    tl.store(TPART + pid * 3 + 1, t_mean)
    tl.store(TPART + pid * 3 + 2, t_m2)
    if ticket(CNT, 0, n_tiles):
        total = count.to(acc_ty)
        acc_s = tl.zeros([BLOCK_T], dtype=acc_ty)
        for t0 in range(0, n_tiles, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T)
            m_t = o_t < n_tiles
            c_t = tl.load(TPART + o_t * 3, mask=m_t, other=0.0, cache_modifier=".cg")
            mu_t = tl.load(TPART + o_t * 3 + 1, mask=m_t, other=0.0, cache_modifier=".cg")
            acc_s += c_t * mu_t
        mean = tl.sum(acc_s, axis=0) / total
        acc_m2 = tl.zeros([BLOCK_T], dtype=acc_ty)
        for t0 in range(0, n_tiles, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T)
            m_t = o_t < n_tiles
            c_t = tl.load(TPART + o_t * 3, mask=m_t, other=0.0, cache_modifier=".cg")
            mu_t = tl.load(TPART + o_t * 3 + 1, mask=m_t, other=0.0, cache_modifier=".cg")
            m2_t = tl.load(TPART + o_t * 3 + 2, mask=m_t, other=0.0, cache_modifier=".cg")
            acc_m2 += m2_t + c_t * (mu_t - mean) * (mu_t - mean)
        m2 = tl.sum(acc_m2, axis=0)
        var_u = m2 / (total - 1.0)
        tl.store(STATS, 1.0 / tl.sqrt(m2 / total + bn_eps))
        tl.store(STATS + 1, mean)
        tl.store(STATS + 2, var_u)


@triton.jit
def bn_running_update_kernel(STATS, RMEAN, RVAR, NBT, momentum_hi, momentum_lo, HAS_NBT: tl.constexpr):
    """A training-mode BatchNorm2d(1)'s running-statistics update, in place, as nn.BatchNorm2d
    does it, from the batch ``STATS`` (invstd, mean, unbiased variance) of
    :func:`spatial_stats_kernel`: ``NBT += 1`` (HAS_NBT), ``r = (1 - f) r + f s`` for
    ``RMEAN``/``RVAR`` in their own dtype, with ``f`` the momentum (float32 ``momentum_hi +
    momentum_lo``: Triton passes Python floats as float32, the pair keeps a float64 factor to 48
    bits) or, for a negative momentum (PyTorch's ``None``), ``1 / NBT``. One program."""
    acc_ty = STATS.dtype.element_ty
    momentum = tl.full([], momentum_hi, tl.float64) + tl.full([], momentum_lo, tl.float64)
    f = momentum.to(acc_ty)
    if HAS_NBT:
        nbt = tl.load(NBT) + 1
        tl.store(NBT, nbt)
        if momentum < 0:
            f = 1.0 / nbt.to(acc_ty)
    rm = tl.load(RMEAN).to(acc_ty)
    rv = tl.load(RVAR).to(acc_ty)
    tl.store(RMEAN, (rm * (1.0 - f) + f * tl.load(STATS + 1)).to(RMEAN.dtype.element_ty))
    tl.store(RVAR, (rv * (1.0 - f) + f * tl.load(STATS + 2)).to(RVAR.dtype.element_ty))


# H and W vary with the shape: not specialised (fewer variants to compile)
@triton.jit(do_not_specialize=["H", "W"])
def spatial_gate_kernel(
    X, Y, A, SMAP, WC, BC, Z, ZHAT, BNW, BNB, BNM, BNV, STATS,
    C, P, H, W, c_per_split, bn_eps,
    s_xn, s_xc, s_xp, s_yn, s_yc, s_yp,
    LAYOUT: tl.constexpr, KSIZE: tl.constexpr, CONV_FORM: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    BN: tl.constexpr, BN_AFFINE: tl.constexpr, HAS_CG: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr,
    STREAM_Y: tl.constexpr,
):
    """Forward pass 3: the spatial gate's pre-activation z (stored by the first channel split) and
    y = x * cg * sigmoid(z) with ``cg = sigmoid(A)``. Grid ``(N * n_csplits * NPB,)`` (sample by sample:
    :func:`sample_major`, REVERSE descending): program
    (n, pb, cs) covers BLOCK_P positions and the channels ``[cs * c_per_split, ...)`` (the k x k
    conv of the small map is recomputed per split, from L2).

    ``z = conv(smap) + bc`` (CONV_FORM: the caller's weight layout, :func:`_tap_weights`), then
    the spatial BatchNorm, as scalar math on z: BN 2 (eval) with the running statistics ``BNM``,
    ``BNV`` (``STATS`` = (invstd, mean, var) written by program 0 for the backward); BN 1
    (training) with the batch statistics of ``STATS`` from :func:`spatial_stats_kernel`, whose
    conv output ``SMAP`` now is (``[N, P]``; WC, BC unused). With a BatchNorm, ``ZHAT`` gets the
    normalised conv output (its parameters' gradients need it); BN_AFFINE: weight ``BNW`` and
    bias ``BNB``. STREAM_Y: y stored with the L2 hint ``evict_first``. Without HAS_CG (the spatial
    gate alone) there is no channel gate: y = x * sigmoid(z), ``A`` unused but for its dtype.
    """
    acc_ty = Z.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    n_csplits = tl.cdiv(C, c_per_split)
    n, pb, cs = _stream_program(n_pb, n_csplits, REVERSE)
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    first = m_p & ((o_p * 0 + cs) == 0)
    if BN == 1:
        z = tl.load(SMAP + n * P + o_p, mask=m_p, other=0.0)
    else:
        z0, z1 = _conv_same(SMAP, WC, n, o_p, m_p, P, H, W, KSIZE, False, CONV_FORM, Z, 1.0, 0.0, 0.0, 0)
        z = z0 + z1
        if HAS_CONV_BIAS:
            z += tl.load(BC).to(acc_ty)
    if BN != 0:
        if BN == 1:
            invstd = tl.load(STATS)
            mean = tl.load(STATS + 1)
        else:
            mean = tl.load(BNM).to(acc_ty)
            var = tl.load(BNV).to(acc_ty)
            invstd = 1.0 / tl.sqrt(var + bn_eps)
            if tl.program_id(0) == 0:
                if cs == 0:
                    tl.store(STATS, invstd)
                    tl.store(STATS + 1, mean)
                    tl.store(STATS + 2, var)
        zhat = (z - mean) * invstd
        tl.store(ZHAT + n * P + o_p, zhat, mask=first)
        z = zhat
        if BN_AFFINE:
            z = zhat * tl.load(BNW).to(acc_ty) + tl.load(BNB).to(acc_ty)
    tl.store(Z + n * P + o_p, z, mask=first)  # N*P floats: kept for backward, cheap in inference
    sg = sigmoid(z)
    c_start = cs * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=NUM_STAGES):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_first").to(acc_ty)  # the forward's last read of x
        if HAS_CG:
            cg = sigmoid(tl.load(A + n * C + o_c, mask=m_c, other=0.0))
            out = ((v * cg[:, None]) * sg[None, :]).to(Y.dtype.element_ty)
        else:
            out = (v * sg[None, :]).to(Y.dtype.element_ty)
        y_offs = tile_offsets(n, o_c, o_p, s_yn, s_yc, s_yp, LAYOUT)
        if STREAM_Y:  # x + y exceed the L2: y's lines are its first victims, not x's (launch.py stream_output)
            tl.store(Y + y_offs, out, mask=m, eviction_policy="evict_first")
        else:
            tl.store(Y + y_offs, out, mask=m)


# split counts and counter offsets vary with the shape: not specialised (fewer variants to compile)
@triton.jit(do_not_specialize=["n_csplits"])
def bwd_reduce_kernel(
    X, DY, A, Z, DZ, DZPART, PSUM, PMAX, PIDX, PDCG, CNT, ZHAT, BNPART, BNSUM, DBNW, DBNB, CNT_BN,
    C, P, c_per_split, n_csplits, n_tiles,
    s_xn, s_xc, s_xp, s_gn, s_gc, s_gp,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, BN: tl.constexpr, BN_AFFINE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr,
    NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr,
):
    """Backward pass 1 (reads x and dy). Grid ``(N * n_csplits * NPB,)`` (sample by sample:
    :func:`sample_major`, REVERSE descending); program (n, pb, cs), its
    BLOCK_P positions and channel chunk:

    * ``pdcg[n, pb, c] = sum_{p in block} dy * x * sg`` (first term of dL/dcg);
    * the channel-pool partials of x over the block (``[N, NPB, C]`` sum, max, first argmax),
      recomputed here instead of being saved by the forward;
    * ``dz[n, p] = sg (1 - sg) sum_c dy * x * cg`` (dL/dz): a running [BLOCK_C, BLOCK_P]
      accumulator, reduced after the loop; with several channel splits, partial rows
      ``DZPART`` ``[N, n_csplits, P]`` merged in split order by the last split (ticket on
      ``CNT[n * NPB + pb]``);
    * with a spatial BatchNorm (BN 1 batch, 2 running statistics), the sums over N, H, W of dz
      and dz * zhat: each position block's pair to ``BNPART`` ``[n_tiles, 2]``, summed in block
      order by the last block (ticket on ``CNT_BN[0]``) into ``BNSUM`` -- the BatchNorm's bias
      and weight gradients (``DBNB``, ``DBNW`` with BN_AFFINE) and, with batch statistics, the
      means the next pass needs to take dz through the normalisation.
    """
    acc_ty = Z.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    n, pb, cs = _stream_program(n_pb, n_csplits, REVERSE)
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    z = tl.load(Z + n * P + o_p, mask=m_p, other=0.0)
    sg = sigmoid(z)
    acc_dsg = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_ty)
    c_start = cs * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=NUM_STAGES):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        m = m_c[:, None] & m_p[None, :]
        # evict_last: pass 2 re-reads x, pass 3 dy
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, X_LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_last").to(acc_ty)
        g = tl.load(DY + tile_offsets(n, o_c, o_p, s_gn, s_gc, s_gp, DY_LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_last").to(acc_ty)
        cg = sigmoid(tl.load(A + n * C + o_c, mask=m_c, other=0.0))
        gv = g * v
        acc_dsg += gv * cg[:, None]
        o_part = (n * n_pb + pb) * C + o_c
        tl.store(PDCG + o_part, tl.sum(gv * sg[None, :], axis=1), mask=m_c)
        tl.store(PSUM + o_part, tl.sum(v, axis=1), mask=m_c)
        t_max, t_idx = first_argmax(tl.where(m, v, float("-inf")), o_p[None, :], 1)
        tl.store(PMAX + o_part, t_max, mask=m_c)
        tl.store(PIDX + o_part, t_idx, mask=m_c)
    dsg = tl.sum(acc_dsg, axis=0)
    last = n_csplits == 1
    if n_csplits > 1:
        tl.store(DZPART + (n * n_csplits + cs) * P + o_p, dsg, mask=m_p)
        last = ticket(CNT, n * n_pb + pb, n_csplits)
    if last:
        if n_csplits > 1:
            dsg = sum_rows(DZPART, n * n_csplits, n_csplits, P, o_p, m_p, BLOCK_S)
        dz = dsg * sg * sigmoid(-z)
        tl.store(DZ + n * P + o_p, dz, mask=m_p)
        if BN != 0:
            dz = tl.where(m_p, dz, 0.0)
            zhat = tl.load(ZHAT + n * P + o_p, mask=m_p, other=0.0)
            tile = n * n_pb + pb
            tl.store(BNPART + tile * 2, tl.sum(dz, axis=0))
            tl.store(BNPART + tile * 2 + 1, tl.sum(dz * zhat, axis=0))
            if ticket(CNT_BN, 0, n_tiles):
                acc_b = tl.zeros([BLOCK_T], dtype=acc_ty)
                acc_w = tl.zeros([BLOCK_T], dtype=acc_ty)
                for t0 in range(0, n_tiles, BLOCK_T):
                    o_t = t0 + tl.arange(0, BLOCK_T)
                    m_t = o_t < n_tiles
                    acc_b += tl.load(BNPART + o_t * 2, mask=m_t, other=0.0, cache_modifier=".cg")
                    acc_w += tl.load(BNPART + o_t * 2 + 1, mask=m_t, other=0.0, cache_modifier=".cg")
                s_b = tl.sum(acc_b, axis=0)
                s_w = tl.sum(acc_w, axis=0)
                tl.store(BNSUM, s_b)
                tl.store(BNSUM + 1, s_w)
                if BN_AFFINE:
                    tl.store(DBNB, s_b.to(DBNB.dtype.element_ty))
                    tl.store(DBNW, s_w.to(DBNW.dtype.element_ty))


@triton.jit
def _mlp_backward_chunk(PDCG, PSUM, PMAX, PIDX, A, W1, W2, VSCR, DA, IDXP, DPRE, DHP, PREP,
                        n, cs, n_pb, C, P, HID, n_csplits, c_start, c_end,
                        POOL: tl.constexpr, TWO_LAYER: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr):
    """The channel MLP's backward for sample n's channels ``[c_start, c_end)``, once every
    position block's partials are in: the pooled vectors (fixed order over the blocks) and
    argmax, ``dL/da = dL/dcg * cg * (1 - cg)``, and the chunk's partial products for the
    first layer's pre-activations ``W1[:, chunk] @ v_j`` and for ``dL/dh = W2[chunk]^T dL/da``.
    A single layer's ``dL/d(first-layer output)`` is dL/da itself (written to DPRE here)."""
    acc_ty = DA.dtype.element_ty
    for c0 in range(c_start, c_end, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        row0 = n * n_pb
        dcg = sum_rows(PDCG, row0, n_pb, C, o_c, m_c, BLOCK_S)
        v_sum = sum_rows(PSUM, row0, n_pb, C, o_c, m_c, BLOCK_S)
        v_max, v_idx = argmax_rows(PMAX, PIDX, row0, n_pb, C, C, o_c, m_c, BLOCK_S)
        v0 = v_sum / P
        v1 = tl.where(m_c, v_max, 0.0)
        if POOL == 2:
            v0 = 0.5 * v0 + 0.5 * v1
        a = tl.load(A + n * C + o_c, mask=m_c, other=0.0)
        da = dcg * sigmoid(a) * sigmoid(-a)
        tl.store(VSCR + (n * 2) * C + o_c, v0, mask=m_c)
        tl.store(VSCR + (n * 2 + 1) * C + o_c, v1, mask=m_c)
        tl.store(IDXP + n * C + o_c, v_idx, mask=m_c)
        tl.store(DA + n * C + o_c, da, mask=m_c)
        if not TWO_LAYER:
            tl.store(DPRE + (n * 2) * C + o_c, da, mask=m_c)
            if POOL == 0:
                tl.store(DPRE + (n * 2 + 1) * C + o_c, da, mask=m_c)
            else:
                tl.store(DPRE + (n * 2 + 1) * C + o_c, tl.zeros([BLOCK_C], dtype=acc_ty), mask=m_c)
    if TWO_LAYER:
        tl.debug_barrier()  # this program's rows above, read back below by other threads
        for h0 in range(0, HID, BLOCK_H):
            o_h = h0 + tl.arange(0, BLOCK_H)
            m_h = o_h < HID
            dh = tl.zeros([BLOCK_H], dtype=acc_ty)
            pre0 = tl.zeros([BLOCK_H], dtype=acc_ty)
            pre1 = tl.zeros([BLOCK_H], dtype=acc_ty)
            for c0 in range(c_start, c_end, BLOCK_C):
                o_c = c0 + tl.arange(0, BLOCK_C)
                m_c = o_c < c_end
                m_hc = m_h[:, None] & m_c[None, :]
                w1 = tl.load(W1 + o_h.to(tl.int64)[:, None] * C + o_c[None, :], mask=m_hc, other=0.0).to(acc_ty)
                w2 = tl.load(W2 + o_c.to(tl.int64)[None, :] * HID + o_h[:, None], mask=m_hc, other=0.0).to(acc_ty)
                da = tl.load(DA + n * C + o_c, mask=m_c, other=0.0)
                v0 = tl.load(VSCR + (n * 2) * C + o_c, mask=m_c, other=0.0)
                dh += tl.sum(w2 * da[None, :], axis=1)
                pre0 += tl.sum(w1 * v0[None, :], axis=1)
                if POOL == 0:
                    v1 = tl.load(VSCR + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
                    pre1 += tl.sum(w1 * v1[None, :], axis=1)
            o_part = n * n_csplits + cs
            tl.store(DHP + o_part * HID + o_h, dh, mask=m_h)
            tl.store(PREP + o_part * 2 * HID + o_h, pre0, mask=m_h)
            tl.store(PREP + o_part * 2 * HID + HID + o_h, pre1, mask=m_h)


@triton.jit
def _mlp_backward_sample(B1, DHP, PREP, DPRE, HS, n, HID, n_csplits,
                         POOL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sample n's hidden layer, once every channel chunk's partial products are in (fixed order):
    ``dL/d(first-layer output)`` through the ReLUs (recomputed pre-activations; the gradient
    passes where pre > 0 or pre is NaN, as torch's threshold_backward) and the summed hidden
    activation (NaN kept, as torch.relu)."""
    acc_ty = DPRE.dtype.element_ty
    for h0 in range(0, HID, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m_h = o_h < HID
        row0 = n * n_csplits
        dh = sum_rows(DHP, row0, n_csplits, HID, o_h, m_h, BLOCK_S)
        pre0 = sum_rows(PREP, row0, n_csplits, 2 * HID, o_h, m_h, BLOCK_S)
        pre1 = sum_rows(PREP + HID, row0, n_csplits, 2 * HID, o_h, m_h, BLOCK_S)
        if HAS_BIAS:
            b1 = tl.load(B1 + o_h, mask=m_h, other=0.0).to(acc_ty)
            pre0 += b1
            pre1 += b1
        dp0 = tl.where(pre0 <= 0.0, 0.0, dh)
        hs = tl.where(pre0 < 0.0, 0.0, pre0)
        dp1 = tl.zeros([BLOCK_H], dtype=acc_ty)
        if POOL == 0:
            dp1 = tl.where(pre1 <= 0.0, 0.0, dh)
            hs += tl.where(pre1 < 0.0, 0.0, pre1)
        tl.store(DPRE + (n * 2) * HID + o_h, dp0, mask=m_h)
        tl.store(DPRE + (n * 2 + 1) * HID + o_h, dp1, mask=m_h)
        tl.store(HS + n * HID + o_h, hs, mask=m_h)


# split counts and counter offsets vary with the shape: not specialised (fewer variants to compile)
@triton.jit(do_not_specialize=["n_csplits", "cnt_b", "H", "W"])
def bwd_spatial_kernel(
    X, DZ, SMAP, SIDX, WC, PDCG, DS, PDW, PDWN,
    PSUM, PMAX, PIDX, A, W1, B1, W2, VSCR, DA, IDXP, DHP, PREP, DPRE, HS, CNT,
    ZHAT, BNSUM, STATS, BNW,
    C, P, H, W, HID, c_per_split, n_csplits, cnt_b, bn_count,
    s_xn, s_xc, s_xp,
    X_LAYOUT: tl.constexpr, KSIZE: tl.constexpr, CONV_FORM: tl.constexpr, BN: tl.constexpr,
    BN_AFFINE: tl.constexpr, POOL: tl.constexpr, TWO_LAYER: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_CM: tl.constexpr, BLOCK_R: tl.constexpr, NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr,
):
    """Backward pass 2 (reads x) and the channel MLP's backward (its own, smaller channel tile
    BLOCK_CM: two [BLOCK_H, BLOCK_CM] weight tiles live at once). Grid ``(N * n_csplits * NPB,)`` (sample by sample:
    :func:`sample_major`, REVERSE descending);
    program (n, pb, cs):

    * ``ds[n, 0, p]`` = dL/d max-map, ``ds[n, 1, p]`` = dL/d mean-map / C (transpose conv of dz,
      taken through the spatial BatchNorm first: :func:`_bn_grad_input`, with the scale
      ``weight * invstd`` and, for batch statistics, the means of pass 1's ``BNSUM`` over
      ``bn_count`` = N * H * W values; stored by the first split), and (first split) this
      block's share of the conv weight and bias gradient, ``pdw[n * NPB + pb, :]`` (``2 * K * K``
      taps in the kernels' [max, mean] order, then the bias);
    * ``pdcg[n, pb, c] += sum_{p in block} x * (ds_mean / C + [c == sidx] ds_max)`` for its
      channels, completing the block's partial of dL/dcg;
    * the last block of (n, cs) (ticket on ``CNT[n * n_csplits + cs]``) runs the MLP backward of
      its channel chunk (:func:`_mlp_backward_chunk`) and, for the first split, sums sample n's
      conv-gradient rows into ``PDWN[n]``; the last chunk of sample n (ticket on
      ``CNT[cnt_b + n]``) finishes its hidden layer (:func:`_mlp_backward_sample`).
    """
    acc_ty = SMAP.dtype.element_ty
    KK: tl.constexpr = KSIZE * KSIZE
    n_pb = tl.cdiv(P, BLOCK_P)
    n, pb, cs = _stream_program(n_pb, n_csplits, REVERSE)
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    gi = 1.0
    c0 = 0.0
    c1 = 0.0
    if BN != 0:
        gi = tl.load(STATS)
        if BN_AFFINE:
            gi = gi * tl.load(BNW).to(acc_ty)
        if BN == 1:
            c0 = tl.load(BNSUM) / bn_count.to(acc_ty)
            c1 = tl.load(BNSUM + 1) / bn_count.to(acc_ty)
    dz = _bn_grad_input(DZ, ZHAT, n * P + o_p, m_p, gi, c0, c1, BN)
    ds_max, ds_mean = _conv_same(DZ, WC, n, o_p, m_p, P, H, W, KSIZE, True, CONV_FORM, ZHAT, gi, c0, c1, BN)
    ds_mean = ds_mean / C
    first = (o_p * 0 + cs) == 0
    tl.store(DS + (n * 2) * P + o_p, ds_max, mask=m_p & first)
    tl.store(DS + (n * 2 + 1) * P + o_p, ds_mean, mask=m_p & first)
    if cs == 0:  # conv weight and bias gradient, this block's share
        o_row = (n * n_pb + pb) * (2 * KK + 1)
        for kh in tl.static_range(KSIZE):
            o_kw, m_kw, o_q, m_q = _tap_row(o_p, m_p, H, W, kh, KSIZE, 1)
            s_max = tl.load(SMAP + (n * 2) * P + o_q, mask=m_q, other=0.0)
            tl.store(PDW + o_row + kh * KSIZE + o_kw, tl.sum(s_max * dz[:, None], axis=0), mask=m_kw)
            s_mean = tl.load(SMAP + (n * 2 + 1) * P + o_q, mask=m_q, other=0.0)
            tl.store(PDW + o_row + KK + kh * KSIZE + o_kw, tl.sum(s_mean * dz[:, None], axis=0), mask=m_kw)
        tl.store(PDW + o_row + 2 * KK, tl.sum(dz, axis=0))

    sidx = tl.load(SIDX + n * P + o_p, mask=m_p, other=-1)
    c_start = cs * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=NUM_STAGES):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, X_LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_first").to(acc_ty)  # the backward's last read of x
        coef = ds_mean[None, :] + tl.where(o_c[:, None] == sidx[None, :], ds_max[None, :], 0.0)
        o_part = (n * n_pb + pb) * C + o_c
        part = tl.load(PDCG + o_part, mask=m_c, other=0.0)
        tl.store(PDCG + o_part, part + tl.sum(v * coef, axis=1), mask=m_c)

    if ticket(CNT, n * n_csplits + cs, n_pb):
        if cs == 0:  # sample n's conv-gradient rows, in block order
            NR: tl.constexpr = 2 * KK + 1
            o_r = tl.arange(0, BLOCK_R)
            acc_w = sum_rows(PDW, n * n_pb, n_pb, NR, o_r, o_r < NR, BLOCK_S)
            tl.store(PDWN + n * NR + o_r, acc_w, mask=o_r < NR)
        _mlp_backward_chunk(PDCG, PSUM, PMAX, PIDX, A, W1, W2, VSCR, DA, IDXP, DPRE, DHP, PREP,
                            n, cs, n_pb, C, P, HID, n_csplits, c_start, c_end,
                            POOL, TWO_LAYER, BLOCK_CM, BLOCK_S, BLOCK_H)
        if TWO_LAYER:
            if ticket(CNT, cnt_b + n, n_csplits):
                _mlp_backward_sample(B1, DHP, PREP, DPRE, HS, n, HID, n_csplits, POOL, HAS_BIAS, BLOCK_H, BLOCK_S)


@triton.jit
def bwd_dx_kernel(
    DY, DX, A, Z, DS, SIDX, W1, DPRE, IDXP, DV,
    C, P, HID, c_per_split,
    s_gn, s_gc, s_gp, s_dn, s_dc, s_dp,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, POOL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, NUM_STAGES: tl.constexpr, REVERSE: tl.constexpr,
):
    """Backward pass 3 (reads dy, writes dx; x itself is not needed). Grid ``(N * n_csplits * NPB,)`` (sample by sample:
    :func:`sample_major`, REVERSE descending).

    ``dx = (dy sg + ds_mean/C + [c == sidx] ds_max) cg + davg/P + [p == argmax_p] dmax``, where
    the pooled vectors' gradients come through the first layer, ``dv_j = W1^T dL/dpre_j`` (one
    ``[HID, BLOCK_C]`` slab of W1 per channel tile, before the stream loop: every position block
    of (n, cs) writes the same ``DV`` ``[N, 2, C]`` values, read back in the loop, which then
    holds only the loads of dy and so pipelines); every other term from small saved or pass-2
    tensors. dx is allocated in x's memory format, so its layout is ``X_LAYOUT``.
    """
    acc_ty = Z.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    n_csplits = tl.cdiv(C, c_per_split)
    n, pb, cs = _stream_program(n_pb, n_csplits, REVERSE)
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    sg = sigmoid(tl.load(Z + n * P + o_p, mask=m_p, other=0.0))
    ds_max = tl.load(DS + (n * 2) * P + o_p, mask=m_p, other=0.0)
    ds_mean = tl.load(DS + (n * 2 + 1) * P + o_p, mask=m_p, other=0.0)
    sidx = tl.load(SIDX + n * P + o_p, mask=m_p, other=-1)
    c_start = cs * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    for c0 in range(c_start, c_end, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        d_avg, d_max = pool_grads(W1, DPRE, n, o_c, m_c, C, HID, acc_ty, POOL, BLOCK_H)
        tl.store(DV + (n * 2) * C + o_c, d_avg / P, mask=m_c)
        tl.store(DV + (n * 2 + 1) * C + o_c, d_max, mask=m_c)
    tl.debug_barrier()  # this program's rows of DV, read back by other threads
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=NUM_STAGES):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < c_end
        m = m_c[:, None] & m_p[None, :]
        g = tl.load(DY + tile_offsets(n, o_c, o_p, s_gn, s_gc, s_gp, DY_LAYOUT), mask=m, other=0.0,
                    eviction_policy="evict_first").to(acc_ty)  # the last read of dy
        cg = sigmoid(tl.load(A + n * C + o_c, mask=m_c, other=0.0))
        d_avg = tl.load(DV + (n * 2) * C + o_c, mask=m_c, other=0.0)
        d_max = tl.load(DV + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
        idxp = tl.load(IDXP + n * C + o_c, mask=m_c, other=-1)
        dx1 = g * sg[None, :] + ds_mean[None, :] + tl.where(o_c[:, None] == sidx[None, :], ds_max[None, :], 0.0)
        dx = dx1 * cg[:, None] + d_avg[:, None] + tl.where(o_p[None, :] == idxp[:, None], d_max[:, None], 0.0)
        tl.store(DX + tile_offsets(n, o_c, o_p, s_dn, s_dc, s_dp, X_LAYOUT), dx.to(DX.dtype.element_ty), mask=m)
