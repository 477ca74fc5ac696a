"""Triton kernels of the spatial branch and the full-size backward passes.

Shapes (N batch, C channels, P = H*W positions, K the odd conv size, NPB = cdiv(P, BLOCK_P)):

* ``x``, ``y``, ``dy``, ``dx``: ``[N, C, P]`` views (layouts in :mod:`common`), fp16/bf16/fp32/fp64.
* ``cg``: ``[N, C]`` channel gate (forward), ``a`` its pre-activation (saved for the backward,
  which recomputes ``cg = sigmoid(a)``); ``smap``: ``[N, 2, P]`` spatial pools of ``x * cg``
  (channel 0 the max over C, channel 1 the mean, the official order); ``sidx``: ``[N, P]`` int32,
  the channel holding each spatial max; ``z``: ``[N, P]`` the spatial gate's pre-activation
  (``sg = sigmoid(z)``; kept instead of sg so ``sg * (1 - sg)`` is ``sigmoid(z) * sigmoid(-z)``,
  free of cancellation near saturation). All small, acc dtype.
* ``wc``: ``[2 * K * K]`` conv weight (``[max-taps, mean-taps]``), ``bc``: ``[1]`` conv bias.

Every kernel here runs one program per (sample, block of BLOCK_P positions) and loops over the
channels, so each full-size tensor is streamed once per kernel. The grid is one-dimensional,
``N * NPB`` programs, a sample's blocks consecutive: CUDA caps a grid's second dimension at
65535, which NPB passes from H*W = 2**21 (channels_last, 32-position blocks). The k x k conv
reads only the ``[N, 2, P]`` map (or ``[N, P]`` dz in the backward), which stays in L1/L2.
"""

import triton
import triton.language as tl

from .common import first_argmax, merge_argmax, sigmoid, tile_offsets


@triton.jit
def spatial_pool_kernel(
    X, CG, SMAP, SIDX,
    C, P,
    s_n, s_c, s_p,
    LAYOUT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """smap[n, 0, p] = max_c x*cg, smap[n, 1, p] = mean_c x*cg (x*cg never stored), sidx[n, p] the
    first channel reaching the max (a NaN wins, as in torch.max). Grid (N * NPB,)."""
    acc_ty = SMAP.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    b_sum = tl.zeros([BLOCK_P], dtype=acc_ty)
    b_max = tl.full([BLOCK_P], float("-inf"), dtype=acc_ty)
    b_idx = tl.full([BLOCK_P], 2147483647, dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_n, s_c, s_p, LAYOUT), mask=m, other=0.0).to(acc_ty)
        cg = tl.load(CG + n * C + o_c, mask=m_c, other=0.0)
        v = v * cg[:, None]
        b_sum += tl.sum(v, axis=0)
        t_max, t_idx = first_argmax(tl.where(m, v, float("-inf")), o_c[:, None], 0)
        b_max, b_idx = merge_argmax(b_max, b_idx, t_max, t_idx)
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
def _conv_same(MAP, WC, n, o_p, m_p, P, H, W, KSIZE: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The 2->1 'same' k x k correlation of ``MAP`` ([N, 2, P]) at positions o_p, or, with
    TRANSPOSE, its adjoint 1->2 applied to ``MAP`` ([N, P]): returns (channel-0, channel-1)."""
    acc_ty = WC.dtype.element_ty
    out0 = tl.zeros(o_p.shape, dtype=acc_ty)
    out1 = tl.zeros(o_p.shape, dtype=acc_ty)
    for kh in tl.static_range(KSIZE):
        o_kw, m_kw, o_q, m_q = _tap_row(o_p, m_p, H, W, kh, KSIZE, -1 if TRANSPOSE else 1)
        w0 = tl.load(WC + kh * KSIZE + o_kw, mask=m_kw, other=0.0)
        w1 = tl.load(WC + KSIZE * KSIZE + kh * KSIZE + o_kw, mask=m_kw, other=0.0)
        if TRANSPOSE:
            d = tl.load(MAP + n * P + o_q, mask=m_q, other=0.0)
            out0 += tl.sum(d * w0[None, :], axis=1)
            out1 += tl.sum(d * w1[None, :], axis=1)
        else:
            out0 += tl.sum(tl.load(MAP + (n * 2) * P + o_q, mask=m_q, other=0.0) * w0[None, :], axis=1)
            out1 += tl.sum(tl.load(MAP + (n * 2 + 1) * P + o_q, mask=m_q, other=0.0) * w1[None, :], axis=1)
    return out0, out1


@triton.jit
def spatial_gate_kernel(
    X, Y, CG, SMAP, WC, BC, Z,
    C, P, H, W,
    s_xn, s_xc, s_xp, s_yn, s_yc, s_yp,
    LAYOUT: tl.constexpr, KSIZE: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, PRE_ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """z = conv(smap) + bc, stored; y = x * cg * sigmoid(z). Grid (N * NPB,).

    With PRE_ACT, ``SMAP`` is instead the ``[N, P]`` pre-activation (conv and training-mode
    BatchNorm already applied by the caller): ``sg = sigmoid(SMAP)``; WC, BC, KSIZE unused.
    """
    acc_ty = SMAP.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    if PRE_ACT:
        z = tl.load(SMAP + n * P + o_p, mask=m_p, other=0.0)
    else:
        z0, z1 = _conv_same(SMAP, WC, n, o_p, m_p, P, H, W, KSIZE, False)
        z = z0 + z1
        if HAS_CONV_BIAS:
            z += tl.load(BC)
    tl.store(Z + n * P + o_p, z, mask=m_p)  # N*P floats: kept for backward, cheap in inference
    sg = sigmoid(z)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, LAYOUT), mask=m, other=0.0).to(acc_ty)
        cg = tl.load(CG + n * C + o_c, mask=m_c, other=0.0)
        out = (v * cg[:, None]) * sg[None, :]
        tl.store(Y + tile_offsets(n, o_c, o_p, s_yn, s_yc, s_yp, LAYOUT), out.to(Y.dtype.element_ty), mask=m)


@triton.jit
def bwd_reduce_kernel(
    X, DY, A, Z, DZ, PSUM, PMAX, PIDX, PDCG,
    C, P,
    s_xn, s_xc, s_xp, s_gn, s_gc, s_gp,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Backward pass 1 (reads x and dy). Grid (N * NPB,); per program:

    * ``dz[n, p] = sg (1 - sg) sum_c dy * x * cg`` (dL/dz);
    * ``pdcg[n, pb, c] = sum_{p in block} dy * x * sg`` (first term of dL/dcg);
    * the channel-pool partials of x over the block (``[N, NPB, C]``), recomputed here instead of
      being saved by the forward, so nothing of size N*C besides the gate is kept.
    """
    acc_ty = Z.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    z = tl.load(Z + n * P + o_p, mask=m_p, other=0.0)
    sg = sigmoid(z)
    dsg = tl.zeros([BLOCK_P], dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, X_LAYOUT), mask=m, other=0.0).to(acc_ty)
        g = tl.load(DY + tile_offsets(n, o_c, o_p, s_gn, s_gc, s_gp, DY_LAYOUT), mask=m, other=0.0).to(acc_ty)
        cg = sigmoid(tl.load(A + n * C + o_c, mask=m_c, other=0.0))
        gv = g * v
        dsg += tl.sum(gv * cg[:, None], axis=0)
        o_part = (n * n_pb + pb) * C + o_c
        tl.store(PDCG + o_part, tl.sum(gv * sg[None, :], axis=1), mask=m_c)
        tl.store(PSUM + o_part, tl.sum(v, axis=1), mask=m_c)
        t_max, t_idx = first_argmax(tl.where(m, v, float("-inf")), o_p[None, :], 1)
        tl.store(PMAX + o_part, t_max, mask=m_c)
        tl.store(PIDX + o_part, t_idx, mask=m_c)
    tl.store(DZ + n * P + o_p, dsg * sg * sigmoid(-z), mask=m_p)


@triton.jit
def bwd_spatial_kernel(
    X, DZ, SMAP, SIDX, WC, PDCG, DS, PDW,
    C, P, H, W,
    s_xn, s_xc, s_xp,
    X_LAYOUT: tl.constexpr, KSIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Backward pass 2 (reads x). Grid (N * NPB,); per program:

    * ``ds[n, 0, p]`` = dL/d max-map, ``ds[n, 1, p]`` = dL/d mean-map / C (transpose conv of dz);
    * ``pdw[n * NPB + pb, :]``: this block's share of the conv weight gradient
      (``2 * K * K`` taps) and, in the last slot, of the conv bias gradient;
    * ``pdcg[n, pb, c] += sum_{p in block} x * (ds_mean / C + [c == sidx] ds_max)``, completing the
      block's partial of dL/dcg (dL/d(x*cg) times x).
    """
    acc_ty = SMAP.dtype.element_ty
    KK: tl.constexpr = KSIZE * KSIZE
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    dz = tl.load(DZ + n * P + o_p, mask=m_p, other=0.0)
    ds_max, ds_mean = _conv_same(DZ, WC, n, o_p, m_p, P, H, W, KSIZE, True)
    ds_mean = ds_mean / C
    tl.store(DS + (n * 2) * P + o_p, ds_max, mask=m_p)
    tl.store(DS + (n * 2 + 1) * P + o_p, ds_mean, mask=m_p)

    # conv weight and bias gradient, this block's share
    o_row = (n * n_pb + pb) * (2 * KK + 1)
    for kh in tl.static_range(KSIZE):
        o_kw, m_kw, o_q, m_q = _tap_row(o_p, m_p, H, W, kh, KSIZE, 1)
        s_max = tl.load(SMAP + (n * 2) * P + o_q, mask=m_q, other=0.0)
        tl.store(PDW + o_row + kh * KSIZE + o_kw, tl.sum(s_max * dz[:, None], axis=0), mask=m_kw)
        s_mean = tl.load(SMAP + (n * 2 + 1) * P + o_q, mask=m_q, other=0.0)
        tl.store(PDW + o_row + KK + kh * KSIZE + o_kw, tl.sum(s_mean * dz[:, None], axis=0), mask=m_kw)
    tl.store(PDW + o_row + 2 * KK, tl.sum(dz, axis=0))

    sidx = tl.load(SIDX + n * P + o_p, mask=m_p, other=-1)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_c[:, None] & m_p[None, :]
        v = tl.load(X + tile_offsets(n, o_c, o_p, s_xn, s_xc, s_xp, X_LAYOUT), mask=m, other=0.0).to(acc_ty)
        coef = ds_mean[None, :] + tl.where(o_c[:, None] == sidx[None, :], ds_max[None, :], 0.0)
        o_part = (n * n_pb + pb) * C + o_c
        part = tl.load(PDCG + o_part, mask=m_c, other=0.0)
        tl.store(PDCG + o_part, part + tl.sum(v * coef, axis=1), mask=m_c)


@triton.jit
def bwd_dx_kernel(
    DY, DX, A, Z, DS, SIDX, DPOOL, IDXP,
    C, P,
    s_gn, s_gc, s_gp, s_dn, s_dc, s_dp,
    X_LAYOUT: tl.constexpr, DY_LAYOUT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Backward pass 3 (reads dy, writes dx; x itself is not needed). Grid (N * NPB,).

    ``dx = (dy sg + ds_mean/C + [c == sidx] ds_max) cg + davg/P + [p == argmax_p] dmax``:
    every term other than dy comes from small saved or pass-2 tensors. dx is allocated in x's
    memory format, so its layout is ``X_LAYOUT``.
    """
    acc_ty = Z.dtype.element_ty
    n_pb = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pb = pid % n_pb
    o_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    sg = sigmoid(tl.load(Z + n * P + o_p, mask=m_p, other=0.0))
    ds_max = tl.load(DS + (n * 2) * P + o_p, mask=m_p, other=0.0)
    ds_mean = tl.load(DS + (n * 2 + 1) * P + o_p, mask=m_p, other=0.0)
    sidx = tl.load(SIDX + n * P + o_p, mask=m_p, other=-1)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_c[:, None] & m_p[None, :]
        g = tl.load(DY + tile_offsets(n, o_c, o_p, s_gn, s_gc, s_gp, DY_LAYOUT), mask=m, other=0.0).to(acc_ty)
        cg = sigmoid(tl.load(A + n * C + o_c, mask=m_c, other=0.0))
        d_avg = tl.load(DPOOL + (n * 2) * C + o_c, mask=m_c, other=0.0)
        d_max = tl.load(DPOOL + (n * 2 + 1) * C + o_c, mask=m_c, other=0.0)
        idxp = tl.load(IDXP + n * C + o_c, mask=m_c, other=-1)
        dx1 = g * sg[None, :] + ds_mean[None, :] + tl.where(o_c[:, None] == sidx[None, :], ds_max[None, :], 0.0)
        dx = dx1 * cg[:, None] + d_avg[:, None] + tl.where(o_p[None, :] == idxp[:, None], d_max[:, None], 0.0)
        tl.store(DX + tile_offsets(n, o_c, o_p, s_dn, s_dc, s_dp, X_LAYOUT), dx.to(DX.dtype.element_ty), mask=m)
