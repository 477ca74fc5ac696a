"""Hardening (issue 7): no silent wrong answer for any input.

* NaN and Inf in the input, the incoming gradient or a parameter propagate into the output and
  every gradient exactly where the fp64 reference puts them; the max pools follow torch.max(dim)
  (a NaN wins and its first index is reported; an all -inf row reports index 0).
* fp16 inputs at the top of their range do not overflow inside (fp32 arithmetic).
* int64 offsets: the kernels, run through the interpreter, read a tensor whose element offsets
  pass 2**31 (a small view with large strides over a sparse, file-backed storage: nothing of that
  size is allocated); the launchers, run with stub kernels on "meta" tensors, handle a real
  > 2**31-element shape (grids within CUDA's limits, no full-size temporaries); too-large shapes
  raise before any launch. With a GPU, a real 1 x 64 x 8192 x 4100 fp16 input runs against the
  reference on a slice.
* Bad inputs raise TypeError/ValueError before any launch (complementing tests/test_errors.py).
* No leak over 1,000 forward+backward calls; nothing full-size allocated besides y and dx.
* torch.no_grad, torch.inference_mode, frozen parameters with an input without requires_grad
  take the lean path (forward kernels only) and give bitwise the same numbers; a partial
  requires_grad skips the backward work nobody asked for.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import gc

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_fast
from cbam_fast import reference
from cbam_fast.kernels import launch
from cbam_fast.kernels.common import LAYOUT_CCONTIG, LAYOUT_PCONTIG
from cbam_fast.kernels.spatial import spatial_pool_kernel
from utils import (
    DTYPES, FORMATS, PARAM_NAMES, assert_close_three_way, make_params, module_gate_fn, run_cbam,
    run_reference, tie_free_input,
)

KERNELS = sorted(name for name in dir(launch) if name.endswith("_kernel"))
# launched only for a spatial BatchNorm in training mode (batch statistics, running-stat update)
BN_TRAIN_KERNELS = {"spatial_stats_kernel", "bn_running_update_kernel"}
FORWARD_KERNELS = {"channel_pool_kernel", "spatial_pool_kernel", "spatial_gate_kernel"}
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Launch:
    kernel: str
    grid: tuple
    args: dict
    constexprs: dict


class _Spy:
    """Stands in for a @triton.jit kernel in kernels.launch: records each launch, then runs it
    (or not: stub mode, for meta tensors and the cheap leak test)."""

    def __init__(self, name, kernel, calls, run, keep_args):
        self.name, self.kernel, self.calls, self.run, self.keep_args = name, kernel, calls, run, keep_args

    def __getitem__(self, grid):
        def go(*args, **kwargs):
            named = dict(zip(self.kernel.arg_names, args)) if self.keep_args else {}
            self.calls.append(Launch(self.name, tuple(grid), named, kwargs if self.keep_args else {}))
            if self.run:
                return self.kernel[grid](*args, **kwargs)
            return None

        return go


@pytest.fixture
def launches(monkeypatch):
    """install(run=True, keep_args=True) -> the list every kernel launch of kernels.launch is
    appended to (without its arguments when keep_args is False: they would keep tensors alive)."""
    def install(run=True, keep_args=True):
        calls = []
        for name in KERNELS:
            monkeypatch.setattr(launch, name, _Spy(name, getattr(launch, name), calls, run, keep_args))
        return calls

    return install


@pytest.fixture
def no_launch(monkeypatch):
    """Any kernel launch fails the test: the checks must come first."""
    class Boom:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched for a bad input")

    for name in KERNELS:
        monkeypatch.setattr(launch, name, Boom())


class AllocationRecorder(TorchDispatchMode):
    """Every tensor an ATen op allocates (an output that aliases no input), as (op, shape, bytes)."""

    def __init__(self):
        super().__init__()
        self.allocs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, value in zip(func._schema.returns, outs):
            if isinstance(value, torch.Tensor) and ret.alias_info is None:
                self.allocs.append((str(func), tuple(value.shape), value.numel() * value.element_size()))
        return out


def _leaf(t, dtype=None):
    t = t.detach().clone()
    return (t if dtype is None else t.to(dtype)).requires_grad_()


def _grads(fn, x, params, dy, dtype=None):
    """(y, {name: grad}) of fn on fresh leaves (optionally cast to dtype)."""
    xl = _leaf(x, dtype)
    pl = {n: None if p is None else _leaf(p, dtype) for n, p in params.items()}
    y = fn(xl, pl)
    y.backward(dy if dtype is None else dy.to(dtype))
    return y.detach(), {"x": xl.grad, **{n: p.grad for n, p in pl.items() if p is not None}}


def _nonfinite_class(t):
    t = t.double()
    return torch.where(t.isnan(), 3, torch.where(t.isposinf(), 1, torch.where(t.isneginf(), 2, 0)))


def assert_same_nonfinite(name, out, ref, rtol):
    """NaN, +inf and -inf exactly where the reference has them; the finite parts close."""
    cls_out, cls_ref = _nonfinite_class(out), _nonfinite_class(ref)
    diff = (cls_out != cls_ref).sum().item()
    assert diff == 0, (
        f"{name}: {diff} of {out.numel()} elements differ in NaN/Inf (kernel classes "
        f"{cls_out.unique().tolist()}, reference {cls_ref.unique().tolist()}; 1 +inf, 2 -inf, 3 NaN)"
    )
    finite = cls_ref == 0
    if finite.any():
        a, b = out.double()[finite], ref.double()[finite]
        scale = max(1.0, b.abs().max().item())
        err = (a - b).abs().max().item()
        assert err <= rtol * scale, f"{name}: finite part off by {err:.3e} (scale {scale:.3e})"


def _params64(params):
    return {n: None if p is None else p.double() for n, p in params.items()}


# ----------------------------------------------------------------------------- NaN and Inf

# (what to poison, where): NaN/Inf in x, dy and each kind of parameter. Padding taps: the conv
# follows the fp64 reference (zero padding multiplied in, so a NaN tap makes a border output
# NaN); PyTorch's fp32 CPU conv skips padded taps, so the reference is taken in fp64 throughout.
NONFINITE = {
    "x-nan": lambda x, dy, p: x.__setitem__((0, 3, 2, 2), NAN),
    "x-posinf": lambda x, dy, p: x.__setitem__((0, 3, 2, 2), INF),
    "x-neginf": lambda x, dy, p: x.__setitem__((1, 0, 4, 5), -INF),
    "x-row-neginf": lambda x, dy, p: x.__setitem__((0, 3), -INF),
    "x-position-posinf": lambda x, dy, p: x[0, :, 2, 2].fill_(INF),
    "dy-nan": lambda x, dy, p: dy.__setitem__((0, 3, 2, 2), NAN),
    "dy-inf": lambda x, dy, p: dy.__setitem__((1, 7, 0, 0), -INF),
    "fc1_bias-nan": lambda x, dy, p: p["fc1_bias"].__setitem__(0, NAN),
    "fc1_weight-inf": lambda x, dy, p: p["fc1_weight"].__setitem__((1, 2), INF),
    "fc2_weight-nan": lambda x, dy, p: p["fc2_weight"].__setitem__((1, 0), NAN),
    "conv_weight-nan": lambda x, dy, p: p["conv_weight"].__setitem__((0, 0, 0, 0), NAN),
    "conv_weight-corner-inf": lambda x, dy, p: p["conv_weight"].__setitem__((0, 1, 0, 2), INF),
    "conv_bias-neginf": lambda x, dy, p: p["conv_bias"].__setitem__(0, -INF),
}
NONFINITE_CASES = [(s, "fp32") for s in NONFINITE] + [(s, "fp16") for s in NONFINITE] + [
    ("x-nan", "fp64"), ("x-nan", "bf16"), ("fc1_bias-nan", "fp64"), ("fc1_bias-nan", "bf16"),
    ("x-position-posinf", "fp64"), ("dy-nan", "bf16"),
]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:All-NaN slice encountered")  # numpy, interpreter
@pytest.mark.parametrize("scenario,dtype", NONFINITE_CASES, ids=[f"{s}-{d}" for s, d in NONFINITE_CASES])
def test_nonfinite_values_propagate_like_the_reference(triton_backend, device, scenario, dtype):
    """Output and every gradient: NaN/+inf/-inf exactly where the fp64 reference has them (the
    reference run on the same, exactly representable values), the rest close."""
    dtype = {"fp64": torch.float64, **DTYPES}[dtype]
    fmt = torch.channels_last if len(scenario) % 2 else torch.contiguous_format  # both layouts
    params = make_params(8, 2, 3, device, conv_bias=True)
    x = tie_free_input((2, 8, 5, 6), dtype, params, device, fmt).clone()
    dy = torch.randn(x.shape, device=device).to(dtype)
    NONFINITE[scenario](x, dy, params)
    y, g = _grads(run_cbam, x, params, dy)
    y_ref, g_ref = _grads(run_reference, x, params, dy, torch.float64)
    assert_same_nonfinite("y", y, y_ref, RTOL[dtype])
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_same_nonfinite(f"grad {name}", g[name], g_ref[name], RTOL[dtype])


def test_nan_in_one_sample_leaves_the_others_exact(triton_backend, device):
    params = make_params(24, 4, 7, device)
    x = tie_free_input((3, 24, 7, 9), torch.float32, params, device).clone()
    clean = x.clone()
    x[1, 5, 3, 3] = NAN
    dy = torch.randn(x.shape, device=device)
    y, g = _grads(run_cbam, x, params, dy)
    y_clean, g_clean = _grads(run_cbam, clean, params, dy)
    assert y[1].isnan().all() and g["x"][1].isnan().all()
    for n in (0, 2):
        assert torch.equal(y[n], y_clean[n]) and torch.equal(g["x"][n], g_clean["x"][n])


def _max_cases(x, dim):
    """torch.max(dim)'s values and indices: the rule the kernels follow."""
    values, indices = torch.max(x, dim=dim)
    return values, indices.to(torch.int32)


def _poison_rows(x, along):
    """Plant the hard cases of a max along dim ``along`` of the [N, C, P] tensor x."""
    L = x.shape[along]

    def line(n, i):
        return x[n, :, i] if along == 1 else x[n, i, :]

    cases = [
        {L - 25: NAN, L - 5: NAN},             # two NaNs in later blocks: the first wins
        {j: -INF for j in range(L)},           # all -inf: index 0
        {3: 9.0, L - 3: 9.0},                  # a tie across blocks/splits: the first
        {1: INF, L - 2: NAN},                  # NaN beats +inf
        {j: NAN for j in range(L)},            # all NaN: index 0
        {L - 1: 8.0},                          # the max in the last, partial block
        {j: -1.0 for j in range(L)} | {4: -0.0, 9: 0.0},  # -0.0 == 0.0: the first
        {0: NAN, 2: 50.0},                     # NaN at index 0
    ]
    for i, case in enumerate(cases):
        row = line(i % x.shape[0], i)
        for j, v in case.items():
            row[j] = v


def _max_pool_case(N, C, P, along, layout, device):
    """(block sizes, x [N, C, P] with NaN/Inf/tie rows along ``along``, x in the layout's strides)."""
    x = torch.randn(N, C, P)
    _poison_rows(x, along=along)
    x = x.to(device)
    xk = x if layout == LAYOUT_PCONTIG else x.transpose(1, 2).contiguous().transpose(1, 2)
    return launch.blocks_for(layout, torch.float32), x, xk


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered")  # the interpreter's numpy max
@pytest.mark.parametrize("reverse", [0, 1], ids=["ascending", "descending"])
@pytest.mark.parametrize("layout", [LAYOUT_PCONTIG, LAYOUT_CCONTIG], ids=["nchw", "channels_last"])
def test_spatial_max_pool_follows_torch_max(device, layout, reverse):
    """spatial_pool_kernel (max over C of x * cg, several channel tiles per program and three
    channel splits merged by the last program's ticket): NaN wins, first index, whichever
    direction the grid walks the batch in."""
    N, C, P = 2, 70, 12
    blk, x, xk = _max_pool_case(N, C, P, 1, layout, device)
    dev = dict(device=device)
    smap = torch.full((N, 2, P), NAN, **dev)
    sidx = torch.full((N, P), -1, dtype=torch.int32, **dev)
    block_c, c_per_split = 16, 32  # two channel tiles per program, three splits
    n_cs = triton_cdiv(C, c_per_split)
    n_pb = triton_cdiv(P, blk.stream_p)
    spart = torch.full((N, n_cs, 2, P), NAN, **dev)
    spidx = torch.full((N, n_cs, P), -1, dtype=torch.int32, **dev)
    a = torch.full((N, C), INF, **dev)  # cg = sigmoid(inf) = 1: the pools of x itself
    cnt = torch.zeros(N * n_pb, dtype=torch.int32, **dev)
    spatial_pool_kernel[(N * n_cs * n_pb,)](
        xk, a, a, a, a, spart, spidx, smap, sidx, cnt, C, P, C, c_per_split, n_cs, *xk.stride(),
        LAYOUT=layout, POOL=1, TWO_LAYER=False, HAS_BIAS=False, BLOCK_C=block_c, BLOCK_P=blk.stream_p,
        BLOCK_H=16, BLOCK_S=2, NUM_STAGES=launch.NUM_STAGES, REVERSE=reverse, num_warps=blk.warps,
    )
    assert n_cs == 3 and torch.equal(cnt, torch.zeros_like(cnt)), "the ticket counters must end at zero"
    values, indices = _max_cases(x.cpu(), 1)
    smap, sidx = smap.cpu(), sidx.cpu()
    torch.testing.assert_close(smap[:, 0], values, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(sidx, indices), f"kernel {sidx.tolist()}\ntorch  {indices.tolist()}"


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered")  # the interpreter's numpy max
@pytest.mark.parametrize("layout", [LAYOUT_PCONTIG, LAYOUT_CCONTIG], ids=["nchw", "channels_last"])
def test_channel_max_pool_follows_torch_max(device, layout):
    """The backward's channel max pool: bwd_reduce_kernel's per-position-block partials and their
    fixed-order merge by the last block's ticket in bwd_spatial_kernel (the pooled max and its
    index, read from the plan's buffers): NaN wins, first index, as torch.max(dim)."""
    N, C, P = 2, 9, 300
    _, x, xk = _max_pool_case(N, C, P, 2, layout, device)
    xk = xk.reshape(N, C, 20, 15) if layout == LAYOUT_PCONTIG else xk.transpose(1, 2).reshape(N, 20, 15, C).permute(0, 3, 1, 2)
    assert launch.layout_of(xk)[0] == layout
    dev = dict(device=device)
    w1, wc = torch.eye(C, **dev), torch.zeros(2 * 3 * 3, **dev)
    saved = launch.Saved(a=torch.zeros(N, C, **dev), z=torch.zeros(N, P, **dev), smap=torch.zeros(N, 2, P, **dev),
                         sidx=torch.zeros(N, P, dtype=torch.int32, **dev))
    plan = launch.plan_backward(torch.zeros_like(xk), xk, saved, w1, None, None, wc, need_x=True, need_mlp=True,
                                need_conv=True, mlp=launch.ChannelMLP(launch.POOL_AVG_MAX, two_layer=False))
    spatial = next(s_ for s_ in plan.launches if s_.role == "bwd_spatial")
    assert spatial.grid[0] > N, "several position blocks per sample: the merge is exercised"
    launch.execute(plan)
    args = dict(zip([n for n in spatial.kernel.arg_names if n not in spatial.constexprs], spatial.args))
    vmax, idxp = args["VSCR"][:, 1].cpu(), args["IDXP"].cpu()
    values, indices = _max_cases(x.cpu(), 2)
    torch.testing.assert_close(vmax, values, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(idxp, indices), f"kernel {idxp.tolist()}\ntorch  {indices.tolist()}"


def triton_cdiv(a, b):
    return -(-a // b)


# ----------------------------------------------------------------------------- fp16 range


def _top_of_range_input(N, C, H, W, gate, device, fmt):
    """Positive fp16 values up to 65408 (distinct multiples of 128 per row: exact, tie-free
    channel max), redrawn until the spatial max over C of x * cg has a clear winner."""
    P = H * W
    for _ in range(50):
        x = (torch.rand(N * C, 511).argsort(dim=1)[:, :P] + 1).double().mul(128).view(N, C, H, W)
        x1 = (x * gate(x)[:, :, None, None]).flatten(2)
        top2 = x1.topk(2, dim=1).values
        if ((top2[:, 0] - top2[:, 1]) > 1.0).all():
            return x.to(torch.float16).to(device=device, memory_format=fmt)
    raise AssertionError("could not draw a tie-free input")


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_fp16_top_of_range_does_not_overflow_inside(triton_backend, device, fmt):
    """x up to 65408 (fp16 max 65504): sums over H*W and over C pass 65504, so any fp16
    accumulation inside would give inf. Output and gradients finite and as accurate as the fp16
    rounding of the result allows, against the fp64 reference."""
    N, C, H, W = 2, 16, 8, 8
    s = 2.0**-15  # weights scaled so the gates' pre-activations stay O(1)
    params = make_params(C, 4, 7, device)
    params["fc1_weight"] = params["fc1_weight"] * s
    params["conv_weight"] = params["conv_weight"] * s
    p64 = _params64(params)
    gate = lambda x: reference.channel_gate(x, p64["fc1_weight"], p64["fc1_bias"], p64["fc2_weight"], p64["fc2_bias"])  # noqa: E731
    x = _top_of_range_input(N, C, H, W, gate, device, FORMATS[fmt])
    assert x.float().sum(dim=(2, 3)).max() > 65504 and x.float().sum(dim=1).max() > 65504
    dy = (torch.randn(x.shape, device=device) * 2**-4).half()
    y, g = _grads(run_cbam, x, params, dy)
    y_ref, g_ref = _grads(run_reference, x, params, dy, torch.float64)
    assert y.isfinite().all()
    torch.testing.assert_close(y.double(), y_ref, rtol=2**-10, atol=1e-3)
    for name, ref in g_ref.items():
        got = g[name]
        assert got.isfinite().all(), f"grad {name} not finite"
        scale = ref.abs().max().item()
        tol = (2**-9 if got.dtype == torch.float16 else 1e-4) * scale + 1e-12
        err = (got.double() - ref).abs().max().item()
        assert err <= tol, f"grad {name}: error {err:.3e} > {tol:.3e}"


# ----------------------------------------------------------------------------- int64 offsets

# Small views whose element offsets pass 2**31 along one dimension while every stride stays below
# 2**31 (so the JIT passes it as int32 and the kernel itself must widen index * stride to int64).
# Element (n, c, h, w) sits at BASE + n*s_n + c*s_c + h*s_h + w*s_w; the views do not overlap.
BIG_VIEWS = {
    "sample-stride": ((3, 3, 2, 5), (2**30 + 2**20, 10, 5, 1)),  # n = 2: 2**31 + 2**21
    "channel-stride": ((2, 3, 2, 5), (64, 2**30 + 2**20, 5, 1)),  # c = 2: 2**31 + 2**21
    "position-stride": ((2, 3, 2, 3), (4, 1, 3 * (2**29 + 2**19), 2**29 + 2**19)),  # channels_last, p = 5
}
BASE = 2**31  # an offset wrapped to int32 lands in [BASE - 2**31, BASE): inside the mapping, zeros


@pytest.mark.parametrize("view", BIG_VIEWS)
def test_kernels_address_past_2_31_elements(triton_backend, device, tmp_path, view):
    """Forward and backward through the interpreter on a view with element offsets past 2**31,
    over a sparse file-backed storage (a few pages touched, nothing of that size allocated). The
    interpreter computes int32 arithmetic as int32 (wrapping), so a kernel that formed
    index * stride in int32 would read zeros from the wrong place (verified by removing the
    int64 casts of tile_offsets: every case then fails)."""
    if device != "cpu":
        pytest.skip("the interpreter check; a GPU runs test_gpu_input_past_2_31_elements")
    shape, strides = BIG_VIEWS[view]
    reach = sum((n - 1) * s for n, s in zip(shape, strides))
    assert reach >= 2**31 and max(strides) < 2**31
    path = tmp_path / "sparse.bin"
    size = BASE + reach + 1
    with open(path, "wb") as f:
        f.truncate(size * 4)
    try:
        storage = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32)
        x = storage.as_strided(shape, strides, BASE)
        assert launch.layout_of(x)[0] in (LAYOUT_PCONTIG, LAYOUT_CCONTIG), "the view must be served without a copy"
        params = make_params(shape[1], 2, 3, device, conv_bias=True)
        x_small = tie_free_input(shape, torch.float32, params, device)
        x.copy_(x_small)
        dy = torch.randn(shape, device=device)
        xk = x.requires_grad_()
        pk = {n: None if p is None else _leaf(p) for n, p in params.items()}
        y = run_cbam(xk, pk)
        y.backward(dy)
        g = {"x": xk.grad, **{n: p.grad for n, p in pk.items() if p is not None}}
        y_same, g_same = _grads(run_reference, x_small, params, dy)
        y_hi, g_hi = _grads(run_reference, x_small, params, dy, torch.float64)
        assert_close_three_way("y", y.detach(), y_same, y_hi)
        for name in g_hi:
            assert_close_three_way(f"grad {name}", g[name], g_same[name], g_hi[name])
        del x, xk, y, g, storage
    finally:
        path.unlink()


def _cuda_grid_ok(grid):
    return grid[0] <= 2**31 - 1 and all(d <= 65535 for d in grid[1:]) and len(grid) <= 3


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_launchers_for_a_shape_past_2_31_elements(launches, fmt):
    """1 x 64 x 8192 x 4100 fp16 (2.15e9 elements) through cbam_forward and cbam_backward with stub
    kernels on meta tensors (no memory): every grid within CUDA's limits (the position blocks
    alone number 524,800), every int32 kernel argument below 2**31, the strides past 2**31
    passed as they are (the JIT types them int64), and nothing full-size allocated besides y
    and dx (the rest is printed; the largest piece, the conv weight gradient partials, is
    under 1/8 of |x|: 9.7% with channels_last, where a block holds 32 positions)."""
    N, C, H, W = 1, 64, 8192, 4100
    x = torch.empty((N, C, H, W), dtype=torch.float16, device="meta", memory_format=FORMATS[fmt])
    assert x.numel() > 2**31
    hid, k = 4, 7
    meta = dict(device="meta", dtype=torch.float32)
    w1, b1, w2, b2 = torch.empty(hid, C, **meta), torch.empty(hid, **meta), torch.empty(C, hid, **meta), torch.empty(C, **meta)
    wc = torch.empty(2 * k * k, **meta)
    dy = torch.empty_like(x)
    calls = launches(run=False)
    with AllocationRecorder() as rec:
        y, saved = launch.cbam_forward(x, w1, b1, w2, b2, wc, None)
        n_fwd = len(rec.allocs)
        dx, _, _, _, _ = launch.cbam_backward(dy, x, saved, w1, b1, w2, wc, need_x=True, need_mlp=True, need_conv=True)
    assert y.shape == x.shape and dx.shape == x.shape
    assert {c.kernel for c in calls} == set(KERNELS) - BN_TRAIN_KERNELS
    int32_args = {"C", "P", "H", "W", "N", "HID", "p_per_split", "n_splits"}
    x_reach = 0
    for c in calls:
        assert _cuda_grid_ok(c.grid), f"{c.kernel}: grid {c.grid} exceeds CUDA's limits"
        for name, value in c.args.items():
            if name in int32_args:
                assert 0 < value < 2**31, f"{c.kernel}: {name} = {value}"
            if name == "X":
                x_reach = max(x_reach, sum((n - 1) * s for n, s in zip(value.shape, value.stride())))
    assert x_reach >= 2**31, "the shape must need int64 offsets"
    assert any(v >= 2**31 for c in calls for n, v in c.args.items() if n.startswith("s_")), "a stride past 2**31 is passed"
    x_bytes = x.numel() * x.element_size()
    full = [i for i, a in enumerate(rec.allocs) if a[2] >= x_bytes]
    assert [rec.allocs[i][1] for i in full] == [tuple(x.shape)] * 2, f"full-size allocations: {[rec.allocs[i] for i in full]}"
    assert full[0] < n_fwd <= full[1], "y in the forward, dx in the backward"
    rest = [a for i, a in enumerate(rec.allocs) if i not in full]
    largest = max(rest, key=lambda a: a[2])
    assert largest[2] <= x_bytes / 8, f"a temporary of {largest[2] / x_bytes:.1%} of |x|: {largest}"
    fwd = sum(a[2] for i, a in enumerate(rec.allocs[:n_fwd]) if i not in full)
    bwd = sum(a[2] for i, a in enumerate(rec.allocs) if i >= n_fwd and i not in full)
    print(f"\n{fmt}: besides y and dx, the forward allocates {fwd / x_bytes:.1%} of |x|, the backward {bwd / x_bytes:.1%}")


@pytest.mark.parametrize("shape", [(1, 1, 2**15, 2**14 + 1), (1, 2**29 + 1, 1, 1), (2**26, 1, 64, 33)],
                         ids=["positions", "channels", "grid"])
def test_too_large_shapes_raise_before_any_launch(no_launch, shape):
    x = torch.empty(shape, dtype=torch.float16, device="meta")
    C = shape[1]
    meta = dict(device="meta", dtype=torch.float32)
    w1 = torch.empty(1, C, **meta)
    with pytest.raises(ValueError, match="cbam: .*(limit|too large)"):
        launch.cbam_forward(x, w1, None, torch.empty(C, 1, **meta), None, torch.empty(18, **meta), None)


def test_too_many_positions_through_the_public_api(triton_backend, no_launch, device):
    """H*W = 2**29 + 2**15 positions: a ValueError naming the limit (the 1 GiB input is never touched)."""
    x = torch.empty(1, 1, 2**15, 2**14 + 1, dtype=torch.float16, device=device)
    params = make_params(1, 1, 3, device)
    with pytest.raises(ValueError, match="H\\*W = .* exceeds the kernels' limit"):
        run_cbam(x, params)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_gpu_input_past_2_31_elements(triton_backend, fmt):
    """A real 1 x 64 x 8192 x 4100 fp16 input (2.15e9 elements) on the GPU. Forward: the last 16
    rows (element offsets past 2**31) against the fp64 reference (channel gate from fp64 pools of
    the whole input, the spatial part on the slice plus the conv's halo). Backward: finite, and
    against autograd through the fp16 reference with a loose bound (fp16 reference)."""
    N, C, H, W = 1, 64, 8192, 4100
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:
        pytest.skip(f"needs 48 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((N, C, H, W), device="cuda", dtype=torch.float16, generator=g).to(memory_format=FORMATS[fmt])
    params = make_params(C, 16, 7, "cuda")
    y = run_cbam(x, params)
    torch.cuda.synchronize()
    p64 = _params64(params)
    avg = torch.stack([x[:, c].double().mean(dim=(1, 2)) for c in range(C)], dim=1)
    mx = torch.stack([x[:, c].double().amax(dim=(1, 2)) for c in range(C)], dim=1)

    def mlp(v):
        return F.linear(F.relu(F.linear(v, p64["fc1_weight"], p64["fc1_bias"])), p64["fc2_weight"], p64["fc2_bias"])

    cg = torch.sigmoid(mlp(avg) + mlp(mx))
    rows, halo = 16, 3
    xs = x[:, :, H - rows - halo:].double() * cg[:, :, None, None]
    pools = torch.cat([xs.amax(dim=1, keepdim=True), xs.mean(dim=1, keepdim=True)], dim=1)
    sg = torch.sigmoid(F.conv2d(pools, p64["conv_weight"], padding=3))[:, :, halo:]
    y_ref = xs[:, :, halo:] * sg
    first = x[:, :, H - rows:]
    last = first.storage_offset() + sum((n - 1) * s for n, s in zip(first.shape, first.stride()))
    assert last >= 2**31, "the checked slice must lie past 2**31 elements"
    torch.testing.assert_close(y[:, :, H - rows:].double(), y_ref, rtol=2e-3, atol=2e-3)
    del xs, pools, sg, y_ref, y
    # backward
    dy = torch.randn((N, C, H, W), device="cuda", dtype=torch.float16, generator=g).mul_(0.01)
    xk = x.detach().requires_grad_()
    pk = {n: None if p is None else p.detach().clone().requires_grad_() for n, p in params.items()}
    run_cbam(xk, pk).backward(dy)
    assert xk.grad.isfinite().all()
    dx = xk.grad[:, :, H - rows:].float().clone()
    grads = {n: p.grad.clone() for n, p in pk.items() if p is not None}
    del xk, pk
    torch.cuda.empty_cache()
    xr = x.detach().requires_grad_()
    pr = {n: None if p is None else p.detach().clone().requires_grad_() for n, p in params.items()}
    run_reference(xr, pr).backward(dy)
    ref_dx = xr.grad[:, :, H - rows:].float()
    assert (dx - ref_dx).abs().max() <= 2e-2 * ref_dx.abs().max()
    for n, p in pr.items():
        if p is not None:
            assert (grads[n] - p.grad).abs().max() <= 2e-2 * p.grad.abs().max() + 1e-6, f"grad {n}"


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex128, torch.int16])
def test_unsupported_input_dtypes(triton_backend, no_launch, device, dtype):
    x = torch.ones(1, 8, 5, 5, device=device).to(dtype)
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        run_cbam(x, make_params(8, 4, 3, device))


@pytest.mark.parametrize("name", PARAM_NAMES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.float8_e4m3fn, torch.int32])
def test_unsupported_parameter_dtypes(triton_backend, no_launch, device, name, dtype):
    params = make_params(8, 4, 3, device, conv_bias=True)
    params[name] = params[name].to(dtype)
    with pytest.raises(TypeError, match=f"{name} must be float16, bfloat16, float32 or float64"):
        run_cbam(torch.randn(1, 8, 5, 5, device=device), params)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_input_and_parameter_on_different_devices(triton_backend, no_launch, device, name):
    """The input on meta, one parameter on the test device (the opposite of test_errors' case)."""
    params = {n: p if p is None or n == name else p.to("meta")
              for n, p in make_params(8, 4, 3, device, conv_bias=True).items()}
    with pytest.raises(ValueError, match=f"{name} is on {device}.* but the input is on meta"):
        run_cbam(torch.empty(1, 8, 5, 5, device="meta"), params)


def test_batchnorm_on_another_device(triton_backend, no_launch, device):
    bn = torch.nn.BatchNorm2d(1).to("meta")
    params = make_params(8, 4, 3, device)
    with pytest.raises(ValueError, match="bn.weight is on meta"):
        cbam_fast.cbam(torch.randn(2, 8, 5, 5, device=device), *(params[n] for n in PARAM_NAMES), bn=bn)


PARAM_DTYPE_MIX = [
    (torch.float16, {"fc1_weight": torch.float64, "conv_weight": torch.bfloat16}),
    (torch.float32, {"fc2_weight": torch.float16, "conv_bias": torch.float64}),
    (torch.bfloat16, {n: torch.float16 for n in PARAM_NAMES}),
    (torch.float64, {n: torch.float32 for n in PARAM_NAMES}),
]


@pytest.mark.parametrize("x_dtype,param_dtypes", PARAM_DTYPE_MIX, ids=["fp16-mixed", "fp32-mixed", "bf16-fp16", "fp64-fp32"])
def test_parameters_in_other_float_dtypes_are_served(triton_backend, device, x_dtype, param_dtypes):
    """No float dtype pair of input and parameters is incompatible: the kernels use every
    parameter in the acc dtype and return each gradient in its parameter's dtype (the
    reference casts the parameters to x's dtype, which the three-way bound allows for)."""
    params = make_params(12, 4, 5, device, conv_bias=True)
    params = {n: None if p is None else p.to(param_dtypes.get(n, p.dtype)) for n, p in params.items()}
    x = tie_free_input((2, 12, 6, 7), x_dtype, params, device)
    dy = torch.randn(x.shape, device=device).to(x_dtype)
    y, g = _grads(run_cbam, x, params, dy)
    y_same, g_same = _grads(run_reference, x, params, dy)
    y_hi, g_hi = _grads(run_reference, x, params, dy, torch.float64)
    assert_close_three_way("y", y, y_same, y_hi)
    for name in g_hi:
        assert g[name].dtype == (x_dtype if name == "x" else param_dtypes.get(name, torch.float32))
        assert_close_three_way(f"grad {name}", g[name], g_same[name], g_hi[name])


@pytest.mark.parametrize("kind", ["sparse_coo", "param-sparse"])
def test_sparse_tensors_are_refused(triton_backend, no_launch, device, kind):
    params = make_params(8, 4, 3, device)
    x = torch.randn(1, 8, 5, 5, device=device)
    if kind == "sparse_coo":
        x = x.to_sparse()
    else:
        params["fc1_weight"] = params["fc1_weight"].to_sparse()
    with pytest.raises(TypeError, match="(dense|strided)"):
        run_cbam(x, params)


def test_batchnorm_with_one_value_per_channel_raises_before_launch(triton_backend, no_launch, device):
    params = make_params(8, 4, 3, device)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cbam_fast.cbam(torch.randn(1, 8, 1, 1, device=device), *(params[n] for n in PARAM_NAMES),
                       bn=torch.nn.BatchNorm2d(1))


def test_empty_batch_forward(triton_backend, device, no_launch):
    """N = 0: an empty output of x's shape, dtype and memory format, no launch (documented)."""
    params = make_params(8, 4, 3, device)
    for fmt in FORMATS.values():
        x = torch.randn(0, 8, 5, 5, device=device).to(memory_format=fmt)
        y = run_cbam(x, params)
        assert y.shape == x.shape and y.dtype == x.dtype


def test_empty_batch_backward_matches_the_reference(triton_backend, device, no_launch):
    params = make_params(8, 4, 3, device)
    x = torch.randn(0, 8, 5, 5, device=device)
    dy = torch.randn(x.shape, device=device)
    y, g = _grads(run_cbam, x, params, dy)
    _, g_ref = _grads(run_reference, x, params, dy)
    for name, ref in g_ref.items():
        assert g[name] is not None and torch.equal(g[name], ref), name


def test_fp64_eval_batchnorm_is_folded_in_fp64(triton_backend, device):
    """gradcheck-style fp64 model with an eval-mode spatial BatchNorm: y exact to fp64 rounding."""
    m = cbam_fast.CBAM.timm(24, spatial_kernel_size=5).double().to(device).eval()
    with torch.no_grad():
        m.bn.running_mean.fill_(0.3)
        m.bn.running_var.fill_(0.7)
        m.bn.weight.fill_(1.3)
        m.bn.bias.fill_(-0.2)
    x = tie_free_input((2, 24, 6, 7), torch.float64, module_gate_fn(m), device)
    with torch.no_grad():
        y = m(x)
        y_ref = reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias,
                               channel_pool=m.channel_pool, spatial_pool=m.spatial_pool, bn=m.bn)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- leaks and allocation


def _live_objects():
    """(object counts by type, live tensors, their storage bytes). The first snapshot of a
    process creates objects of its own (the first ``untyped_storage()`` call sets up its
    UntypedStorage wrapper: weak references, sets, builtins), so a baseline must come after a
    warm-up snapshot: see :func:`_baseline`."""
    gc.collect()
    objects = gc.get_objects()
    counts = collections.Counter(type(o).__name__ for o in objects)
    tensors = [o for o in objects if type(o) in (torch.Tensor, torch.nn.Parameter)]
    return counts, len(tensors), sum(t.untyped_storage().nbytes() for t in tensors if t.device.type != "meta")


def _baseline():
    """A snapshot to compare a later one with, taken after a discarded warm-up snapshot, so the
    verdict does not depend on whether another test took the process's first snapshot."""
    _live_objects()
    return _live_objects()


def _train_steps(m, x, dy, steps):
    for _ in range(steps):
        xk = x.detach().requires_grad_()
        m(xk).backward(dy)
        m.zero_grad(set_to_none=True)


def _assert_no_growth(before, after, steps):
    (c0, n0, b0), (c1, n1, b1) = before, after
    grown = {k: c1[k] - c0[k] for k in c1 if c1[k] - c0[k] > 0}
    grown.pop("Launch", None)  # the test's own launch log
    assert max(grown.values(), default=0) < steps // 10, f"objects accumulating over {steps} calls: {grown}"
    assert n1 <= n0 and b1 <= b0, f"live tensors {n0} -> {n1}, bytes {b0} -> {b1}"


@pytest.mark.parametrize("variant", ["default", "official-bn-train", "keep-attention"])
def test_no_leak_over_1000_calls(triton_backend, device, launches, variant):
    """1,000 forward+backward calls through the module, autograd and the launchers (kernels
    stubbed: the leak question is about what Python holds; test_no_leak_real_kernels runs the
    interpreter, test_no_leak_gpu the compiled kernels): live tensors, their bytes and every
    object type stay level."""
    m = {"default": lambda: cbam_fast.CBAM(16, 4, 3),
         "official-bn-train": lambda: cbam_fast.CBAM.official(16, 4),
         "keep-attention": lambda: cbam_fast.CBAM(16, 4, 5, keep_attention=True)}[variant]().to(device)
    calls = launches(run=False, keep_args=False)
    x = torch.randn(2, 16, 4, 5, device=device)
    dy = torch.randn(x.shape, device=device)
    _train_steps(m, x, dy, 20)
    before = _baseline()
    _train_steps(m, x, dy, 1000)
    after = _live_objects()
    assert len(calls) >= 1000 * 7  # 3 forward + 4 backward launches a step
    _assert_no_growth(before, after, 1000)


def test_no_leak_real_kernels(triton_backend, device):
    """30 forward+backward calls through the interpreted kernels: nothing accumulates. Passes
    alone or after any other test (the baseline follows a warm-up snapshot)."""
    m = cbam_fast.CBAM(8, 4, 3).to(device)
    x = torch.randn(1, 8, 3, 3, device=device)
    dy = torch.randn(x.shape, device=device)
    _train_steps(m, x, dy, 3)
    before = _baseline()
    _train_steps(m, x, dy, 30)
    _assert_no_growth(before, _live_objects(), 30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_leak_gpu(triton_backend):
    m = cbam_fast.CBAM(256, 16, 7).cuda()
    x = torch.randn(8, 256, 28, 28, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    m = m.to(torch.bfloat16)
    _train_steps(m, x, dy, 20)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    _train_steps(m, x, dy, 1000)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= base, f"{torch.cuda.memory_allocated() - base} bytes more after 1,000 calls"


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_hot_path_allocates_nothing_full_size_but_y_and_dx(triton_backend, device, fmt):
    """Every allocation of one forward and one backward through the public API (interpreter,
    real kernels): the only ones of x's size are y and dx."""
    params = make_params(16, 4, 5, device)
    x = tie_free_input((2, 16, 8, 8), torch.bfloat16, params, device, FORMATS[fmt]).requires_grad_()
    pk = {n: None if p is None else _leaf(p) for n, p in params.items()}
    dy = torch.randn(x.shape, device=device).to(torch.bfloat16).to(memory_format=FORMATS[fmt])
    full_bytes = x.numel() * x.element_size()
    with AllocationRecorder() as fwd:
        y = run_cbam(x, pk)
    with AllocationRecorder() as bwd:
        y.backward(dy)
    for name, rec, expected in (("forward", fwd, 1), ("backward", bwd, 1)):
        full = [a for a in rec.allocs if a[2] >= full_bytes]
        assert len(full) == expected, f"{name}: full-size allocations {full}"


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_full_size_passes_are_those_stated(triton_backend, device, launches, fmt):
    """The passes kernels/launch.py states: forward reads x in 3 kernels and writes y in 1;
    backward reads x in 2 kernels and dy in 2, and writes dx in 1. Counted from the launches'
    arguments: every argument holding a full-size tensor, identified by its storage."""
    params = make_params(24, 4, 5, device, conv_bias=True)
    x = tie_free_input((2, 24, 7, 6), torch.bfloat16, params, device, FORMATS[fmt]).requires_grad_()
    pk = {n: None if p is None else _leaf(p) for n, p in params.items()}
    dy = torch.randn(x.shape, device=device).to(torch.bfloat16).to(memory_format=FORMATS[fmt])
    calls = launches()
    y = run_cbam(x, pk)
    forward = list(calls)
    del calls[:]
    y.backward(dy)
    backward = list(calls)

    def full_size_args(launches_):
        """{kernel: sorted argument names holding a tensor of x's size}, and the storages seen."""
        out, storages = {}, set()
        for c in launches_:
            names = sorted(k for k, v in c.args.items() if isinstance(v, torch.Tensor) and v.numel() == x.numel())
            if names:
                out[c.kernel] = names
            storages |= {c.args[k].untyped_storage().data_ptr() for k in names}
        return out, storages

    fwd, fwd_storages = full_size_args(forward)
    assert fwd == {"channel_pool_kernel": ["X"], "spatial_pool_kernel": ["X"], "spatial_gate_kernel": ["X", "Y"]}, fwd
    assert fwd_storages == {x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()}
    bwd, bwd_storages = full_size_args(backward)
    assert bwd == {"bwd_reduce_kernel": ["DY", "X"], "bwd_spatial_kernel": ["X"], "bwd_dx_kernel": ["DX", "DY"]}, bwd
    # dx: a third storage, the gradient x received (a copy of it: the launch log holds a reference,
    # so autograd cannot take the buffer itself)
    dx = next(c.args["DX"] for c in backward if c.kernel == "bwd_dx_kernel")
    assert bwd_storages == {t.untyped_storage().data_ptr() for t in (x, dy, dx)} and len(bwd_storages) == 3
    assert torch.equal(dx, x.grad)


# ----------------------------------------------------------------------------- lean paths


LEAN_VARIANTS = {
    "default": lambda: cbam_fast.CBAM(24, 4, 5),
    "timm-bn-eval": lambda: cbam_fast.CBAM.timm(24, spatial_kernel_size=3).eval(),
    "official-bn-train": lambda: cbam_fast.CBAM.official(24, 4),
    "ultralytics": lambda: cbam_fast.CBAM.ultralytics(24, 7),
}


@pytest.mark.parametrize("variant", LEAN_VARIANTS)
def test_lean_paths_give_the_same_numbers(triton_backend, device, launches, variant):
    """no_grad, inference_mode, and frozen parameters with an input without requires_grad: the
    forward kernels only, no autograd graph, bitwise the numbers of the differentiable path."""
    torch.manual_seed(7)
    m = LEAN_VARIANTS[variant]().to(device)
    x = tie_free_input((2, 24, 7, 6), torch.float32, module_gate_fn(m), device)
    calls = launches()
    y_grad = m(x.clone().requires_grad_())
    assert y_grad.grad_fn is not None
    frozen = copy.deepcopy(m).requires_grad_(False)

    def inference_mode():
        with torch.inference_mode():
            return m(x.clone())

    def no_grad():
        with torch.no_grad():
            return m(x)

    expected = FORWARD_KERNELS | (BN_TRAIN_KERNELS if m.bn is not None and m.bn.training else set())
    for name, run in (("no_grad", no_grad), ("inference_mode", inference_mode), ("frozen", lambda: frozen(x))):
        del calls[:]
        y = run()
        assert sorted(c.kernel for c in calls) == sorted(expected), f"{name}: {[c.kernel for c in calls]}"
        assert y.grad_fn is None, name
        assert torch.equal(y, y_grad.detach()), f"{name}: differs from the differentiable path"


@pytest.mark.parametrize("trainable", ["x", "conv", "mlp", "x+conv"])
def test_partial_requires_grad_skips_unneeded_backward_work(triton_backend, device, launches, trainable):
    """Only what needs a gradient is computed, and it is bitwise the full run's."""
    params = make_params(24, 4, 5, device, conv_bias=True)
    x = tie_free_input((2, 24, 7, 6), torch.float32, params, device)
    dy = torch.randn(x.shape, device=device)
    _, g_full = _grads(run_cbam, x, params, dy)
    groups = {"x": ["x"], "conv": ["conv_weight", "conv_bias"], "mlp": ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]}
    wanted = [n for part in trainable.split("+") for n in groups[part]]
    xk = x.clone().requires_grad_("x" in wanted)
    pk = {n: None if p is None else p.clone().requires_grad_(n in wanted) for n, p in params.items()}
    y = run_cbam(xk, pk)
    calls = launches()
    y.backward(dy)
    ran = {c.kernel for c in calls}
    assert ("bwd_dx_kernel" in ran) == ("x" in wanted)
    assert ("channel_mlp_wgrad_kernel" in ran) == any(n != "x" for n in wanted)  # every parameter gradient
    got = {"x": xk.grad, **{n: p.grad for n, p in pk.items() if p is not None}}
    for name, g in got.items():
        if name in wanted:
            assert torch.equal(g, g_full[name]), f"grad {name} differs from the full run"
        else:
            assert g is None, name
