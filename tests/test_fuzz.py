"""Property-based fuzzing (hypothesis) of the Triton path against the reference, forward and
backward: shapes (N, C, H, W with 1s and primes), strides (channels_last, sliced and offset views,
stride-0 expanded inputs and incoming gradients), dtypes (fp64 most often, fp32, bf16, fp16),
parameter dtypes, kernel sizes and the module's variants (channel pools, single-layer MLP,
spatial pools, biases, BatchNorm in train and eval mode).

Every case checks y, dx and every parameter gradient with the three-way rule of
tests/utils.py (the kernel's error against the fp64 reference at most twice PyTorch's own error in
the same dtype, plus a small atol, here at the scale of the summed terms: see _assert_close) on
tie-free inputs (max ties have measure zero; the index rule is tested where ties are built in:
the expanded inputs below, and tests/test_hardening.py).

Deterministic: ``derandomize=True`` (the examples are a function of the test alone), no example
database, each example seeds torch from a drawn seed. 500 examples per run (200 + 160 + 140,
the three tests' ``max_examples``): 2 min 20 s under the interpreter on a 2-core CPU machine;
``CBAM_FAST_FUZZ_SCALE=4`` runs four times as many.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, Phase, assume, given, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cbam_fast  # noqa: E402
from cbam_fast import reference  # noqa: E402
from utils import (  # noqa: E402
    ATOL, PARAM_NAMES, _gate_fn, assert_close_three_way, make_params, module_gate_fn, tie_free_input,
)

SCALE = float(os.environ.get("CBAM_FAST_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples):
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),  # no "explain": minutes on a failure
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


C_VALUES = [1, 2, 3, 5, 7, 8, 13, 16, 17, 24, 31, 37, 40]
HW_VALUES = [1, 2, 3, 5, 7, 8, 11, 13]
DTYPES = [torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16]  # fp64 twice as often
KSIZES = [3, 3, 5, 7]  # every size; 3 more often: the interpreter's cost grows with k
MAX_P = 49  # H*W up to 7 x 7 (and 13 x 3, 11 x 4, ...)
FUZZ_ATOL_FACTOR = 4


@st.composite
def shapes(draw, max_n=2, min_p=1):
    N = draw(st.sampled_from([1, 1, max_n]))  # the interpreter's cost grows with N
    C = draw(st.sampled_from(C_VALUES))
    H = draw(st.sampled_from(HW_VALUES))
    W = draw(st.sampled_from([w for w in HW_VALUES if H * w <= MAX_P]))
    assume(N * H * W >= min_p)
    return N, C, H, W


def _tie_free(*args, **kwargs):
    """tie_free_input, the example rejected in the rare case its swapping finds no tie-free
    arrangement (tiny H*W)."""
    try:
        return tie_free_input(*args, **kwargs)
    except AssertionError as e:
        if "could not draw a tie-free input" not in str(e):
            raise
        reject()


def _seed(draw):
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))


def _leaf(t, dtype=None):
    t = t.detach().clone()
    return (t if dtype is None else t.to(dtype)).requires_grad_()


def _incoming_gradient(kind, shape, dtype):
    N, C, H, W = shape
    if kind == "nchw":
        dy = torch.randn(shape)
    elif kind == "channels_last":
        dy = torch.randn(shape).to(memory_format=torch.channels_last)
    elif kind == "sliced":
        dy = torch.randn(N, 2 * C, H, W + 2)[:, 1::2, :, 1:-1]
    elif kind == "expanded-channel":
        dy = torch.randn(N, 1, H, W).expand(shape)
    else:  # expanded-batch
        dy = torch.randn(1, C, H, W).expand(shape)
    return dy.to(dtype)


def _assert_close(name, out, same, hi, terms):
    """tests/utils.py's three-way rule, the atol term taken at the scale of the summands rather
    than of the result alone: ``terms`` is the same quantity computed (fp64 reference) with x, dy
    and the parameters replaced by their absolute values, about the sum of the magnitudes of what
    is summed. A gradient that cancels (a conv-bias gradient of 0.45 summing terms of 24, say) has
    a rounding error at the terms' scale, in PyTorch as in the kernels; where PyTorch happens to
    round luckily, the atol at the result's scale alone is tighter than fp32 can promise. The atol
    is also taken FUZZ_ATOL_FACTOR times larger: hundreds of random cases reach the tail of the
    rounding that the fixed cases of test_forward/test_backward do not (seen: fp32 errors of 2e-6
    to 6e-6 at scale 1 to 3 where PyTorch's own error was 1e-6; a real defect, a wrong element
    or index, is off by 1e-2 or more)."""
    try:
        assert_close_three_way(name, out, same, hi)
        return
    except AssertionError:
        pass
    assert not torch.isnan(out).any(), f"{name}: NaN in output"
    scale = max(1.0, hi.abs().max().item(), terms.abs().max().item())
    err = (out.double() - hi.double()).abs().max().item()
    err_torch = (same.double() - hi.double()).abs().max().item()
    bound = 2 * err_torch + FUZZ_ATOL_FACTOR * ATOL[out.dtype] * scale
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (PyTorch {out.dtype} error {err_torch:.3e}, terms scale {scale:.3e})"


def _check_three_way(run, dtype, names):
    """The checks below, run in a worker thread: a fresh, shallow Python stack. On pytest's and
    hypothesis' deep stack, CPython 3.11 maps and unmaps a 16 KiB frame-stack chunk tens of
    thousands of times per example (the interpreter's calls keep crossing a chunk boundary),
    which took 40% of the suite's time in the kernel (sys); the thread saves about a quarter of
    the run time. Grad mode is on in a new thread, the torch generator is shared; exceptions
    come back through result()."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_check_three_way_here, run, dtype, names).result()


def _check_three_way_here(run, dtype, names):
    """run(cast) -> (y, {name: grad}) with the inputs as given (cast None: the kernels), as given
    through the reference ("same"), cast to fp64 through the reference, or ("abs") in fp64 with
    every input's absolute value (the magnitude of the terms, see _assert_close). A gradient held
    in a finer dtype than x's (fp64 parameters, fp16 input) is computed in x's precision by both
    PyTorch and the kernels, so it is compared in x's dtype (the atol of the arithmetic used)."""
    y, g = run(None)
    y_same, g_same = run("same")
    y_hi, g_hi = run(torch.float64)
    y_abs, g_abs = run("abs")
    _assert_close("y", y, y_same, y_hi, y_abs)
    assert set(g) == set(g_hi) == set(names), (sorted(g), sorted(g_hi))
    for name in names:
        out, same = g[name], g_same[name]
        if out.dtype.itemsize > dtype.itemsize:
            out, same = out.to(dtype), same.to(dtype)
        _assert_close(f"grad {name}", out, same, g_hi[name], g_abs[name])
    return y, g


def _cast(t, cast):
    """t as the run ``cast`` sees it (None / "same": as given)."""
    if t is None or cast in (None, "same"):
        return t
    return t.to(torch.float64).abs() if cast == "abs" else t.to(cast)


# ----------------------------------------------------------------------------- functional API


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_functional(triton_backend, device, data):
    """cbam_fast.cbam (official semantics): shape, dtype, memory format, k, reduction, biases,
    parameter dtype, incoming-gradient strides."""
    draw = data.draw
    _seed(draw)
    shape = draw(shapes())
    N, C, H, W = shape
    dtype = draw(st.sampled_from(DTYPES))
    fmt = draw(st.sampled_from([torch.contiguous_format, torch.channels_last]))
    k = draw(st.sampled_from(KSIZES))
    r = draw(st.sampled_from([1, 2, 3, 4, 16]))
    mlp_bias, conv_bias = draw(st.booleans()), draw(st.booleans())
    param_dtype = draw(st.sampled_from([torch.float32, dtype, torch.float64]))
    dy_kind = draw(st.sampled_from(["nchw", "channels_last", "sliced", "expanded-channel", "expanded-batch"]))
    params = make_params(C, r, k, device, mlp_bias=mlp_bias, conv_bias=conv_bias, dtype=param_dtype)
    x = _tie_free(shape, dtype, params, device, fmt)
    dy = _incoming_gradient(dy_kind, shape, dtype).to(device)

    def run(cast):
        xl = _leaf(_cast(x, cast))
        pl = {n: None if p is None else _leaf(_cast(p, cast)) for n, p in params.items()}
        fn = cbam_fast.cbam if cast is None else reference.cbam
        y = fn(xl, *(pl[n] for n in PARAM_NAMES))
        y.backward(_cast(dy, cast))
        return y.detach(), {"x": xl.grad, **{n: p.grad for n, p in pl.items() if p is not None}}

    names = ["x"] + [n for n in PARAM_NAMES if params[n] is not None]
    y, g = _check_three_way(run, dtype, names)
    assert y.is_contiguous(memory_format=fmt) and g["x"].is_contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------- module variants


def _bn_leaves(bn, cast):
    """A fresh copy of the BatchNorm for one reference run (its own running statistics)."""
    bn = copy.deepcopy(bn)
    if cast not in (None, "same"):
        bn = bn.to(torch.float64)
    with torch.no_grad():
        for p in bn.parameters():
            if cast == "abs":
                p.abs_()
            p.requires_grad_(True)
            p.grad = None
    return bn


@fuzz_settings(160)
@given(data=st.data())
def test_fuzz_module_variants(triton_backend, device, data):
    """cbam_fast.CBAM with every option (channel pool, single-layer MLP, hidden width and
    rounding, spatial pool, biases, spatial BatchNorm in train or eval mode), parameters in fp32
    or the input's dtype: output, every gradient (BatchNorm's included) and, in training mode,
    the running statistics, against the reference with the same options."""
    draw = data.draw
    _seed(draw)
    bn_mode = draw(st.sampled_from([None, None, "train", "eval"]))
    shape = draw(shapes(min_p=2 if bn_mode == "train" else 1))
    N, C, H, W = shape
    dtype = draw(st.sampled_from(DTYPES))
    fmt = draw(st.sampled_from([torch.contiguous_format, torch.channels_last]))
    opts = dict(
        channel_pool=draw(st.sampled_from(["avg_max", "avg", "light"])),
        mlp=draw(st.sampled_from(["reduce", "reduce", "single"])),
        mlp_bias=draw(st.booleans()),
        hidden_rounding=draw(st.sampled_from(["floor", "round"])),
        spatial_pool=draw(st.sampled_from(["max_mean", "mean_max", "light"])),
        conv_bias=draw(st.booleans()),
        spatial_bn=bn_mode is not None,
        bn_momentum=draw(st.sampled_from([0.1, 0.01, None])),
    )
    k = draw(st.sampled_from(KSIZES))
    r = draw(st.sampled_from([1, 2, 4, 16]))
    m = cbam_fast.CBAM(C, r, k, **opts).to(device)
    with torch.no_grad():  # random, not the zeros-prone default init
        for p in m.parameters():
            p.normal_(0.0, 0.5)
        if m.bn is not None:
            m.bn.running_mean.normal_(0.0, 0.2)
            m.bn.running_var.uniform_(0.5, 1.5)
    if bn_mode == "eval":
        m.eval()
    if dtype == torch.float64 or draw(st.booleans()):
        # a model converted with .half() / .bfloat16() / .double(); an fp64 input always gets fp64
        # parameters (gradcheck-style): an eval BatchNorm is folded into the conv in the
        # parameters' dtype, whose rounding an fp64 input would otherwise measure
        m = m.to(dtype)
    x = _tie_free(shape, dtype, module_gate_fn(m), device, fmt)
    dy = torch.randn(shape, device=device).to(dtype)
    fc2 = m.fc2
    named = {"fc1_weight": m.fc1.weight, "fc1_bias": m.fc1.bias, "fc2_weight": None if fc2 is None else fc2.weight,
             "fc2_bias": None if fc2 is None else fc2.bias, "conv_weight": m.conv.weight, "conv_bias": m.conv.bias}
    kernel_module = copy.deepcopy(m)
    bns = {}

    def run(cast):
        if cast is None:
            mk = kernel_module
            mk.zero_grad(set_to_none=True)
            xl = _leaf(x)
            y = mk(xl)
            y.backward(dy)
            ps = {"fc1_weight": mk.fc1.weight, "fc1_bias": mk.fc1.bias,
                  "fc2_weight": None if mk.fc2 is None else mk.fc2.weight,
                  "fc2_bias": None if mk.fc2 is None else mk.fc2.bias,
                  "conv_weight": mk.conv.weight, "conv_bias": mk.conv.bias}
            bn = mk.bn
        else:
            xl = _leaf(_cast(x, cast))
            ps = {n: None if p is None else _leaf(_cast(p, cast)) for n, p in named.items()}
            bn = None if m.bn is None else _bn_leaves(m.bn, cast)
            y = reference.cbam(xl, *(ps[n] for n in PARAM_NAMES), channel_pool=m.channel_pool,
                               spatial_pool=m.spatial_pool, bn=bn)
            y.backward(_cast(dy, cast))
        bns[cast] = bn
        grads = {"x": xl.grad, **{n: p.grad for n, p in ps.items() if p is not None}}
        if bn is not None and bn.weight is not None:
            grads["bn_weight"], grads["bn_bias"] = bn.weight.grad, bn.bias.grad
        return y.detach(), grads

    names = ["x"] + [n for n, p in named.items() if p is not None] + (["bn_weight", "bn_bias"] if m.bn is not None else [])
    _check_three_way(run, dtype, names)
    if bn_mode == "train":  # running statistics updated as nn.BatchNorm2d does
        for stat in ("running_mean", "running_var"):
            got, ref = getattr(bns[None], stat), getattr(bns[torch.float64], stat)
            tol = 1e-10 if got.dtype == torch.float64 and dtype == torch.float64 else 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
            torch.testing.assert_close(got.double(), ref.double(), rtol=tol, atol=tol)
        assert torch.equal(bns[None].num_batches_tracked, bns[torch.float64].num_batches_tracked)


# ----------------------------------------------------------------------------- strided views


def _view(kind, xt):
    """(base, view) for a tie-free x: the view of ``base`` holds exactly xt's values, through
    strides the kernels serve without a copy (channel/batch slices, a storage offset, channels_last
    slices, stride-0 batch or channel expansion) or through a copy (W slice, H x W crop)."""
    N, C, H, W = xt.shape
    if kind == "channel-slice":
        base = torch.randn(N, 2 * C, H, W).to(xt.dtype)
        base[:, 1::2] = xt
        return base, lambda b: b[:, 1::2]
    if kind == "batch-slice":
        base = torch.randn(2 * N, C, H, W).to(xt.dtype)
        base[1::2] = xt
        return base, lambda b: b[1::2]
    if kind == "storage-offset":
        base = torch.randn(xt.numel() + 7).to(xt.dtype)
        base[7:] = xt.flatten()
        return base, lambda b: b[7:].view(N, C, H, W)
    if kind == "channels_last-slice":
        base = torch.randn(N, C + 3, H, W).to(xt.dtype).to(memory_format=torch.channels_last)
        base[:, 2:C + 2] = xt
        return base, lambda b: b[:, 2:C + 2]
    if kind == "w-slice":
        base = torch.randn(N, C, H, 2 * W).to(xt.dtype)
        base[..., ::2] = xt
        return base, lambda b: b[..., ::2]
    if kind == "hw-crop":
        base = torch.randn(N, C, H + 2, W + 3).to(xt.dtype)
        base[:, :, 1:-1, 2:-1] = xt
        return base, lambda b: b[:, :, 1:-1, 2:-1]
    raise ValueError(kind)


@fuzz_settings(140)
@given(data=st.data())
def test_fuzz_strided_and_expanded_inputs(triton_backend, device, data):
    """Inputs that are views (sliced, offset, channels_last slices) or stride-0 expansions, forward
    and backward into the viewed base tensor.

    Expanded inputs hold ties by construction: expanding over W (or H) repeats each value of a
    channel's row, so the channel max pool ties between the copies, and expanding over C repeats a
    position's value, so the spatial max over C of x * cg ties wherever x = 0. The reference's
    torch.max(dim) sends the gradient to the first maximal element and so do the kernels (the
    index rule), and exact copies stay exact in every dtype, so the three-way check holds as is.
    Over C, other positions need cg itself untied: cases where x * cg has a near-tie over C
    (relative gap below 1e-3) are skipped."""
    draw = data.draw
    _seed(draw)
    kind = draw(st.sampled_from(["channel-slice", "batch-slice", "storage-offset", "channels_last-slice", "w-slice",
                                 "hw-crop", "expanded-batch", "expanded-channel", "expanded-w", "expanded-h"]))
    shape = draw(shapes())
    N, C, H, W = shape
    dtype = draw(st.sampled_from(DTYPES))
    k = draw(st.sampled_from(KSIZES))
    params = make_params(C, draw(st.sampled_from([1, 2, 4])), k, device, conv_bias=draw(st.booleans()))
    if kind.startswith("expanded"):
        small = {"expanded-batch": (1, C, H, W), "expanded-channel": (N, 1, H, W),
                 "expanded-w": (N, C, H, 1), "expanded-h": (N, C, 1, W)}[kind]
        gate = _gate_fn(params)
        if kind == "expanded-channel":
            base = _tie_free(small, dtype, lambda x: torch.ones(x.shape[:2], dtype=x.dtype), device)
            x1 = (base.double().expand(shape) * gate(base.double().expand(shape))[:, :, None, None]).flatten(2)
            if C > 1:
                top2 = x1.topk(2, dim=1).values
                gap = top2[:, 0] - top2[:, 1]
                assume(bool(((gap > 1e-3 * top2[:, 0].abs()) | (top2[:, 0] == 0)).all()))
        else:
            # expanding over W or H keeps every channel's mean and max, so the gate, and with it
            # the tie-free construction, carries over from the small tensor
            base = _tie_free(small, dtype, gate, device)
        view = lambda b: b.expand(shape)  # noqa: E731
    else:
        xt = _tie_free(shape, dtype, params, device)
        base, view = _view(kind, xt)
        base = base.to(device)
    dy = torch.randn(shape, device=device).to(dtype)
    assert torch.equal(view(base).double(), view(base.double()))

    def run(cast):
        bl = _leaf(_cast(base, cast))
        pl = {n: None if p is None else _leaf(_cast(p, cast)) for n, p in params.items()}
        fn = cbam_fast.cbam if cast is None else reference.cbam
        y = fn(view(bl), *(pl[n] for n in PARAM_NAMES))
        y.backward(_cast(dy, cast))
        return y.detach(), {"x": bl.grad, **{n: p.grad for n, p in pl.items() if p is not None}}

    names = ["x"] + [n for n in PARAM_NAMES if params[n] is not None]
    _check_three_way(run, dtype, names)
