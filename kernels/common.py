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
