"""The CPU path (cbam_fast/cpu.py) against the reference: outputs, gates, every gradient and the
BatchNorm state, over the option grid, both memory formats and every dtype; the tie rule of the
max pools; double backward, retain_graph, torch.func; the dispatch in functional.cbam; and the
structural facts that make it fast (no max indices in inference, one full-size tensor kept for
the backward, no scalar max-with-index kernel in NCHW training).

Inputs are fresh, NaN-free and tie-free (``utils.tie_free_input``), except in the tie tests,
which build ties on purpose.
"""

import copy
import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_fast
from cbam_fast import cpu, functional, reference
from utils import FORMATS, assert_close_three_way, tie_free_input

CHANNEL_POOLS = ("avg_max", "avg", "light")
SPATIAL_POOLS = ("max_mean", "mean_max", "light")
BN_MODES = (None, "train", "eval")
# fp64/fp32 against the same-dtype reference (the same math, other rounding: tight)
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-6)}
SHAPE = (3, 16, 5, 6)


def _params(C, channel_pool, spatial_pool, mlp, dtype, mlp_bias=True, conv_bias=True, k=5):
    hidden = C if mlp == "single" else 4
    maps = 1 if spatial_pool == "light" else 2
    p = {
        "fc1_weight": torch.randn(hidden, C) / math.sqrt(C),
        "fc1_bias": torch.randn(hidden) * 0.2 if mlp_bias else None,
        "fc2_weight": None if mlp == "single" else torch.randn(C, hidden) / math.sqrt(hidden),
        "fc2_bias": torch.randn(C) * 0.2 if mlp_bias and mlp != "single" else None,
        "conv_weight": torch.randn(1, maps, k, k) / k,
        "conv_bias": torch.randn(1) * 0.2 if conv_bias else None,
    }
    return {n: None if t is None else t.to(dtype) for n, t in p.items()}


def _bn(mode, dtype=torch.float32, affine=True, track=True):
    if mode is None:
        return None
    bn = torch.nn.BatchNorm2d(1, momentum=0.3, affine=affine, track_running_stats=track).to(dtype)
    with torch.no_grad():
        if affine:
            bn.weight.fill_(1.3)
            bn.bias.fill_(-0.2)
        if track:
            bn.running_mean.fill_(0.1)
            bn.running_var.fill_(1.7)
    return bn.train(mode == "train")


def _gate(params, channel_pool):
    p = {k: None if v is None else v.double() for k, v in params.items()}
    return lambda x: reference.channel_gate(x, p["fc1_weight"], p["fc1_bias"], p["fc2_weight"], p["fc2_bias"],
                                            channel_pool)


def _run(fn, x, params, bn, channel_pool, spatial_pool, grad=True, dtype=None, with_gates=True):
    """(outputs and gradients, bn state after) of one call on fresh copies of the inputs, cast to ``dtype``."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    xs = cast(x.detach()).requires_grad_(grad)
    ps = {k: None if v is None else cast(v.detach()).requires_grad_(grad) for k, v in params.items()}
    bn = copy.deepcopy(bn)
    if bn is not None and dtype is not None and bn.weight is not None and dtype == torch.float64:
        bn = bn.double()
    with torch.set_grad_enabled(grad):
        y, cg, sg = fn(xs, *ps.values(), channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn,
                       return_gates=True)
    outs = {"y": y, "cg": cg, "sg": sg}
    if grad:
        leaves = {"x": xs, **{k: v for k, v in ps.items() if v is not None}}
        if bn is not None and bn.weight is not None:
            leaves.update({"bn.weight": bn.weight, "bn.bias": bn.bias})
        torch.manual_seed(99)
        dy = torch.randn_like(y)
        loss = (y * dy).sum() + ((cg * 0.3).sum() + (sg * 0.7).sum() if with_gates else 0.0)
        outs.update({f"d {k}": g for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values())))})
    state = None if bn is None or bn.running_mean is None else (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    return outs, state, y


def _assert_same(got, want, dtype, what="", zero=()):
    """Every entry within the dtype's tolerance of the reference's. ``zero``: gradients that are
    identically zero in exact arithmetic (a conv bias under training-mode BatchNorm, which
    subtracts the batch mean): both sides are the rounding noise of a cancelling sum, so they are
    checked to be zero at the dtype's resolution (``sqrt(eps)``) instead of equal to each other."""
    rtol, atol = TOL[dtype]
    assert got.keys() == want.keys()
    for name in want:
        a, b = got[name], want[name]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert not torch.isnan(a).any(), f"{what}{name}: NaN"
        if name in zero:
            bound = math.sqrt(torch.finfo(dtype).eps)
            assert a.abs().max().item() <= bound and b.abs().max().item() <= bound, f"{what}{name}: not zero"
            continue
        scale = max(1.0, b.abs().max().item())
        err = (a.double() - b.double()).abs().max().item()
        assert err <= atol * scale + rtol * b.abs().max().item(), f"{what}{name}: max error {err:.3e}"


def _assert_state(got, want, dtype):
    if want is None:
        assert got is None
        return
    rtol, atol = TOL[dtype if dtype in TOL else torch.float32]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol), (a, b)


@pytest.fixture(params=["function", "lean"])
def path(request, monkeypatch):
    """Both training paths: the custom autograd.Function (x above cpu.LEAN_NUMEL elements) and
    autograd's chain of ops (small x), whatever the test's shape."""
    monkeypatch.setattr(cpu, "LEAN_NUMEL", -1 if request.param == "function" else 2 ** 62)
    return request.param


@pytest.fixture
def function_path(monkeypatch):
    monkeypatch.setattr(cpu, "LEAN_NUMEL", -1)


# ----------------------------------------------------------------------------- the option grid


@pytest.mark.parametrize("path, dtype", [("function", torch.float64), ("function", torch.float32),
                                         ("lean", torch.float32)], ids=["function-fp64", "function-fp32", "lean-fp32"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("bn_mode", BN_MODES, ids=["no_bn", "bn_train", "bn_eval"])
@pytest.mark.parametrize("mlp", ["reduce", "single"])
@pytest.mark.parametrize("spatial_pool", SPATIAL_POOLS)
@pytest.mark.parametrize("channel_pool", CHANNEL_POOLS)
def test_matches_reference(channel_pool, spatial_pool, mlp, bn_mode, fmt, dtype, path, monkeypatch):
    """Training (forward + every gradient, the gates' included) and inference: the reference's
    numbers, the output in x's memory format, the BatchNorm's running statistics updated alike."""
    monkeypatch.setattr(cpu, "LEAN_NUMEL", -1 if path == "function" else 2 ** 62)
    N, C, H, W = SHAPE
    params = _params(C, channel_pool, spatial_pool, mlp, dtype)
    x = tie_free_input(SHAPE, dtype, _gate(params, channel_pool), "cpu", FORMATS[fmt])
    bn = _bn(bn_mode, torch.float64 if dtype == torch.float64 else torch.float32)
    for grad in (True, False):
        got, got_state, y = _run(cpu.cbam, x, params, bn, channel_pool, spatial_pool, grad)
        want, want_state, y_ref = _run(reference.cbam, x, params, bn, channel_pool, spatial_pool, grad)
        _assert_same(got, want, dtype, f"grad={grad}: ", zero=("d conv_bias",) if bn_mode == "train" else ())
        _assert_state(got_state, want_state, dtype)
        assert y.stride() == y_ref.stride(), "the output's memory format differs from the reference's"
        assert y.is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("channel_pool, spatial_pool, mlp, bn_mode", [
    ("avg_max", "max_mean", "reduce", None), ("avg_max", "mean_max", "reduce", "train"),
    ("light", "light", "reduce", "eval"), ("avg", "mean_max", "single", None),
])
def test_half_precision(channel_pool, spatial_pool, mlp, bn_mode, fmt, dtype, path):
    """fp16/bf16 inputs (parameters cast to x's dtype, BatchNorm in fp32, as the reference does):
    the output and every gradient within twice the reference's own same-dtype error of the fp64
    reference."""
    params = _params(SHAPE[1], channel_pool, spatial_pool, mlp, torch.float32)
    x = tie_free_input(SHAPE, dtype, _gate(params, channel_pool), "cpu", FORMATS[fmt])
    bn = _bn(bn_mode)
    for grad in (True, False):
        got, got_state, _ = _run(cpu.cbam, x, params, bn, channel_pool, spatial_pool, grad, dtype=dtype, with_gates=False)
        same, _, _ = _run(reference.cbam, x, params, bn, channel_pool, spatial_pool, grad, dtype=dtype, with_gates=False)
        hi, hi_state, _ = _run(reference.cbam, x, params, None if bn is None else bn.double(), channel_pool,
                               spatial_pool, grad, dtype=torch.float64, with_gates=False)
        for name in hi:
            if name == "d conv_bias" and bn_mode == "train":  # identically zero (see _assert_same):
                # rounding noise no larger than twice the reference's own in this dtype
                assert got[name].abs().max().item() <= 2 * same[name].abs().max().item() + torch.finfo(dtype).eps
                continue
            assert_close_three_way(name, got[name].to(same[name].dtype) if name.startswith("d ") else got[name],
                                   same[name], hi[name])
        if got_state is not None:
            assert torch.allclose(got_state[0].double(), hi_state[0], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("mlp_bias, conv_bias", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_biases_absent(mlp_bias, conv_bias, fmt, path):
    params = _params(SHAPE[1], "avg_max", "mean_max", "reduce", torch.float64, mlp_bias, conv_bias, k=7)
    x = tie_free_input(SHAPE, torch.float64, _gate(params, "avg_max"), "cpu", FORMATS[fmt])
    got, _, _ = _run(cpu.cbam, x, params, None, "avg_max", "mean_max")
    want, _, _ = _run(reference.cbam, x, params, None, "avg_max", "mean_max")
    _assert_same(got, want, torch.float64)


@pytest.mark.parametrize("affine, track", [(False, True), (True, False), (False, False)])
def test_bn_variants(affine, track, path):
    """BatchNorm2d(1) without affine parameters, or without running statistics (batch statistics in eval too)."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float64)
    x = tie_free_input(SHAPE, torch.float64, _gate(params, "avg_max"), "cpu")
    for mode in ("train", "eval"):
        bn = _bn(mode, torch.float64, affine, track)
        got, got_state, _ = _run(cpu.cbam, x, params, bn, "avg_max", "max_mean")
        want, want_state, _ = _run(reference.cbam, x, params, bn, "avg_max", "max_mean")
        _assert_same(got, want, torch.float64)
        _assert_state(got_state, want_state, torch.float64)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 1, 1), (1, 3, 1, 7), (2, 33, 9, 2), (4, 7, 3, 3)])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_shapes(shape, fmt, path):
    """Degenerate and odd shapes: one channel, one position, one row, odd sizes."""
    params = _params(shape[1], "avg_max", "max_mean", "reduce", torch.float64, k=3)
    x = tie_free_input(shape, torch.float64, _gate(params, "avg_max"), "cpu", FORMATS[fmt])
    bn = _bn("train", torch.float64) if shape[0] * shape[2] * shape[3] > 1 else None
    got, got_state, _ = _run(cpu.cbam, x, params, bn, "avg_max", "max_mean")
    want, want_state, _ = _run(reference.cbam, x, params, bn, "avg_max", "max_mean")
    _assert_same(got, want, torch.float64)
    _assert_state(got_state, want_state, torch.float64)


@pytest.mark.parametrize("which", ["x", "mlp", "conv", "bn", "x+conv", "fc1_weight"])
def test_partial_requires_grad(which, path):
    """Frozen layers: only some inputs require a gradient; those get the reference's gradient."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float64)
    x = tie_free_input(SHAPE, torch.float64, _gate(params, "avg_max"), "cpu")
    results = []
    for fn in (cpu.cbam, reference.cbam):
        bn = _bn("train", torch.float64)
        xs = x.clone().requires_grad_("x" in which)
        ps = {k: None if v is None else v.clone() for k, v in params.items()}
        for k, v in ps.items():
            if v is not None:
                v.requires_grad_(k == which or (which == "mlp" and k.startswith("fc")) or ("conv" in which and k.startswith("conv")))
        bn.weight.requires_grad_(which == "bn")
        bn.bias.requires_grad_(which == "bn")
        y = fn(xs, *ps.values(), channel_pool="avg_max", spatial_pool="max_mean", bn=bn)
        leaves = [t for t in (xs, *ps.values(), bn.weight, bn.bias) if t is not None and t.requires_grad]
        assert leaves and y.requires_grad
        results.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), leaves))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the max-pool tie rule


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", ["few_values", "constant_rows", "zeros_signed"])
def test_ties_follow_torch_max(kind, fmt, dtype, path):
    """Ties in both max pools: the gradient goes to the first maximal element, as the reference's
    torch.max(dim) sends it (not spread over the tied elements as amax would)."""
    N, C, H, W = 2, 12, 4, 5
    if kind == "few_values":  # a handful of values: many tied maxima over H*W and over C
        x = torch.randint(-2, 3, (N, C, H, W)).to(dtype)
    elif kind == "constant_rows":  # every (n, c) row constant: all H*W positions tied
        x = torch.randn(N, C, 1, 1).expand(N, C, H, W).to(dtype).contiguous()
    else:  # +0.0 and -0.0 are equal maxima
        x = torch.where(torch.rand(N, C, H, W) < 0.5, torch.tensor(0.0), torch.tensor(-0.0)).to(dtype) - \
            (torch.rand(N, C, H, W) < 0.3).to(dtype)
    x = x.contiguous(memory_format=FORMATS[fmt])
    for channel_pool, spatial_pool in (("avg_max", "max_mean"), ("light", "light")):
        params = _params(C, channel_pool, spatial_pool, "reduce", dtype)
        params["fc2_weight"].zero_()  # one gate value for every channel: x1 keeps x's ties
        got, _, _ = _run(cpu.cbam, x, params, None, channel_pool, spatial_pool)
        want, _, _ = _run(reference.cbam, x, params, None, channel_pool, spatial_pool)
        _assert_same(got, want, dtype, f"{kind} {channel_pool}/{spatial_pool}: ")


def test_first_max_index_matches_torch_max():
    """The vectorised first-maximum index equals torch.max(dim)'s index, ties included."""
    t = torch.randint(-3, 3, (3, 7, 40)).float()
    for dim, size in ((1, 7), (2, 40)):
        mx = t.amax(dim=dim, keepdim=True)
        got = cpu._first_max_index(t, mx, dim, size)
        assert torch.equal(got, t.max(dim=dim, keepdim=True).indices)
    t[0, 0, 0] = float("nan")  # no element equals a NaN maximum: the caller falls back to torch.max
    assert cpu._first_max_index(t, t.amax(dim=2, keepdim=True), 2, 40) is None


def test_nan_input_falls_back(path):
    """A NaN in x: the NaN propagates as in the reference (no out-of-range index)."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    x = torch.randn(SHAPE)
    x[1, 3, 2, 2] = float("nan")
    got, _, y = _run(cpu.cbam, x, params, None, "avg_max", "max_mean")
    want, _, y_ref = _run(reference.cbam, x, params, None, "avg_max", "max_mean")
    for name in want:
        assert torch.equal(torch.isnan(got[name]), torch.isnan(want[name])), name


# ----------------------------------------------------------------------------- autograd features


def _leaves(x, params, bn):
    return [t for t in (x, *params.values(), bn.weight, bn.bias) if t is not None]


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_double_backward(bn_mode, path):
    """create_graph=True: the gradient is differentiable (recomputed through the reference ops),
    and the second-order gradients are the reference's; the running statistics move once per forward."""
    params = _params(SHAPE[1], "avg_max", "mean_max", "reduce", torch.float64)
    x0 = tie_free_input(SHAPE, torch.float64, _gate(params, "avg_max"), "cpu")
    out = []
    for fn in (cpu.cbam, reference.cbam):
        bn = _bn(bn_mode, torch.float64)
        x = x0.clone().requires_grad_()
        ps = {k: None if v is None else v.clone().requires_grad_() for k, v in params.items()}
        y = fn(x, *ps.values(), channel_pool="avg_max", spatial_pool="mean_max", bn=bn)
        leaves = _leaves(x, ps, bn)
        g = torch.autograd.grad((y ** 2).sum(), leaves, create_graph=True)
        gg = torch.autograd.grad(sum((t * t).sum() for t in g), leaves)
        out.append((g, gg, bn.running_mean.clone(), bn.num_batches_tracked.clone()))
    # With batch statistics the BatchNorm subtracts the batch mean, so the conv bias (a constant
    # shift of every position) has a gradient of exactly 0 at every order: both implementations
    # hold rounding noise there, whose size follows the terms that cancel (the largest gradient of
    # that order times fp64's eps), not a fixed atol. Those entries are checked against that
    # analytic zero; every other entry against the reference as before.
    bias_at = [i for i, t in enumerate(leaves) if t is ps["conv_bias"]]  # the same order for both runs
    assert len(bias_at) == 1, "the call under test has a conv bias"
    eps = torch.finfo(torch.float64).eps
    for order in (0, 1):
        scale = max(float(t.detach().abs().max()) for t in out[1][order])
        for i, (a, b) in enumerate(zip(out[0][order], out[1][order], strict=True)):
            if bn_mode == "train" and i in bias_at:
                for t in (a, b):
                    assert float(t.detach().abs().max()) <= 16 * eps * scale, (order, float(t.abs().max()), scale)
            else:
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(out[0][2], out[1][2])
    assert out[0][3] == out[1][3] == (1 if bn_mode == "train" else 0)


def test_retain_graph_twice(path):
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float64)
    x = tie_free_input(SHAPE, torch.float64, _gate(params, "avg_max"), "cpu").requires_grad_()
    ps = {k: v.requires_grad_() for k, v in params.items() if v is not None}
    y = cpu.cbam(x, *params.values(), bn=_bn("train", torch.float64))
    first = torch.autograd.grad(y.sum(), [x, *ps.values()], retain_graph=True)
    second = torch.autograd.grad(y.sum(), [x, *ps.values()])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_backward_accumulates_into_grad(path):
    """loss.backward() (not autograd.grad): .grad of x and of the module's parameters as the reference's."""
    torch.manual_seed(3)
    m = cbam_fast.CBAM.official(32)
    x = tie_free_input((2, 32, 6, 6), torch.float32, lambda t: reference.channel_gate(
        t, *(p.detach().double() for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias))), "cpu")
    grads = []
    for fn in (cpu.cbam, reference.cbam):
        mm = copy.deepcopy(m)
        xs = x.clone().requires_grad_()
        y = fn(xs, mm.fc1.weight, mm.fc1.bias, mm.fc2.weight, mm.fc2.bias, mm.conv.weight, mm.conv.bias, bn=mm.bn)
        (y.square().mean()).backward()
        grads.append([xs.grad] + [p.grad for p in mm.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("transform", ["grad", "vjp", "jvp", "jacrev", "vmap", "forward_ad"])
def test_torch_func_transforms_exact(transform):
    """torch.func transforms and forward-mode AD go to the reference ops: the reference's numbers."""
    params = _params(4, "avg_max", "max_mean", "reduce", torch.float64, k=3)
    x = tie_free_input((2, 4, 3, 3), torch.float64, _gate(params, "avg_max"), "cpu")
    w = list(params.values())

    def f(fn):
        return lambda t: fn(t, *w).sum() if transform in ("grad",) else fn(t, *w)

    tangent = torch.randn_like(x)
    results = []
    for fn in (cpu.cbam, reference.cbam):
        if transform == "grad":
            results.append(torch.func.grad(f(fn))(x))
        elif transform == "vjp":
            y, pull = torch.func.vjp(f(fn), x)
            results.append(pull(torch.ones_like(y))[0])
        elif transform == "jvp":
            results.append(torch.func.jvp(f(fn), (x,), (tangent,))[1])
        elif transform == "jacrev":
            results.append(torch.func.jacrev(f(fn))(x[:1]))
        elif transform == "vmap":
            results.append(torch.func.vmap(lambda t: fn(t[None], *w)[0])(x))
        else:
            import torch.autograd.forward_ad as fwAD

            with fwAD.dual_level():
                results.append(fwAD.unpack_dual(fn(fwAD.make_dual(x, tangent), *w)).tangent)
    assert results[0].abs().max() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_inference_mode_and_no_grad():
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    x = tie_free_input(SHAPE, torch.float32, _gate(params, "avg_max"), "cpu")
    want = reference.cbam(x, *params.values())
    with torch.inference_mode():
        got = cpu.cbam(x, *params.values())
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_functional_uses_cpu_path(monkeypatch, backend):
    """functional.cbam on CPU tensors (backend auto or torch) runs cpu.cbam; an ONNX export still
    records the reference ops."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", backend)
    calls = []
    real = cpu.cbam
    monkeypatch.setattr(cpu, "cbam", lambda *a, **k: calls.append("cpu") or real(*a, **k))
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    x = tie_free_input(SHAPE, torch.float32, _gate(params, "avg_max"), "cpu")
    y = functional.cbam(x, *params.values())
    assert calls == ["cpu"]
    torch.testing.assert_close(y, reference.cbam(x, *params.values()), rtol=2e-5, atol=2e-6)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    functional.cbam(x, *params.values())
    assert calls == ["cpu"], "an ONNX export must record the reference ops"


def test_module_on_cpu_matches_reference():
    """A converted-style module (the timm preset) in train and eval mode, through CBAM.forward."""
    torch.manual_seed(5)
    m = cbam_fast.CBAM.timm(48)
    with torch.no_grad():
        m.bn.weight.fill_(1.2)
    x = tie_free_input((2, 48, 7, 7), torch.float32, lambda t: reference.channel_gate(
        t, m.fc1.weight.detach().double(), None, m.fc2.weight.detach().double(), None), "cpu")
    for train in (True, False):
        a, b = copy.deepcopy(m).train(train), copy.deepcopy(m).train(train)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = a(xa)
        yb = reference.cbam(xb, b.fc1.weight, None, b.fc2.weight, None, b.conv.weight, None,
                            spatial_pool="mean_max", bn=b.bn)
        torch.testing.assert_close(ya, yb, rtol=2e-5, atol=2e-6)
        ga = torch.autograd.grad(ya.sum(), [xa, *a.parameters()])
        gb = torch.autograd.grad(yb.sum(), [xb, *b.parameters()])
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(a.bn.running_mean, b.bn.running_mean)


def test_empty_batch_and_other_strides():
    params = _params(4, "avg_max", "max_mean", "reduce", torch.float32, k=3)
    x = torch.randn(0, 4, 3, 3)
    assert cpu.cbam(x, *params.values()).shape == x.shape
    odd = torch.randn(2, 3, 4, 5).permute(0, 2, 1, 3)  # [2, 4, 3, 5], neither NCHW nor channels-last
    assert not cpu.served(odd)
    torch.testing.assert_close(cpu.cbam(odd, *params.values()), reference.cbam(odd, *params.values()))


# ----------------------------------------------------------------------------- structure


class _OpLog(TorchDispatchMode):
    """The ATen ops a region runs, and each one's output shapes."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        self.ops.append((func.overloadpacket.__name__, func.__name__, shapes))
        return out


INDEX_OPS = {"max": ("dim",), "argmax": None, "adaptive_max_pool2d": None, "max_pool2d_with_indices": None,
             "sort": None, "topk": None, "kthvalue": None}


def _index_ops(log):
    """The ops of ``log`` that compute max indices (torch.max(dim) and its kin)."""
    found = []
    for packet, name, _ in log.ops:
        if packet in INDEX_OPS and (INDEX_OPS[packet] is None or any(o in name for o in INDEX_OPS[packet])):
            found.append(name)
    return found


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("channel_pool, spatial_pool, bn_mode", [
    ("avg_max", "max_mean", "eval"), ("avg_max", "mean_max", "train"), ("light", "light", "eval"),
])
def test_inference_computes_no_max_indices(channel_pool, spatial_pool, bn_mode, fmt):
    """Inference (no gradient needed, even with trainable parameters under grad mode) takes the
    max pools by amax: no op computes max indices (the reference's torch.max(dim) does). With
    fewer than cpu.SMALL_P positions, the NCHW channel max over C is the one exception: adaptive
    max pooling's vectorised channels-last kernel (indices included) beats amax there; still
    never torch.max(dim)'s scalar loop."""
    shape = (2, 16, 9, 8)  # 72 positions: amax everywhere
    params = _params(shape[1], channel_pool, spatial_pool, "reduce", torch.float32)
    for t in params.values():
        if t is not None:
            t.requires_grad_()
    bn = _bn(bn_mode)
    for ctx in (torch.no_grad, torch.inference_mode):
        for shape in ((2, 16, 9, 8), (2, 16, 5, 6)):
            x = torch.randn(shape).contiguous(memory_format=FORMATS[fmt])
            log = _OpLog()
            with ctx(), log:
                cbam_fast.cbam(x, *params.values(), channel_pool=channel_pool, spatial_pool=spatial_pool, bn=bn)
            small = shape[2] * shape[3] < cpu.SMALL_P and fmt == "nchw"
            assert _index_ops(log) == (["adaptive_max_pool2d.default"] if small else []), _index_ops(log)
            assert any(p == "amax" for p, _, _ in log.ops)


def test_training_without_x_grad_computes_no_channel_max_index(function_path):
    """Frozen input (only the parameters train): the channel max's index over H*W feeds only
    x's gradient, so it is not computed; the spatial max's index (which feeds the MLP's gradient)
    is."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    for t in params.values():
        if t is not None:
            t.requires_grad_()
    x = torch.randn(SHAPE)
    log = _OpLog()
    with log:
        y = cbam_fast.cbam(x, *params.values())
    assert _index_ops(log) == ["adaptive_max_pool2d.default"]  # the spatial max over C, one call
    shapes = [s for p, _, s in log.ops if p == "adaptive_max_pool2d"]
    assert shapes == [[(SHAPE[0], SHAPE[2] * SHAPE[3], 1, 1)] * 2]
    y.sum().backward()


def test_nchw_training_uses_no_scalar_max_with_index(function_path):
    """NCHW fp32 training: both max indices come from vectorised kernels (channels-last adaptive
    max pooling over C, a first-maximum mask over H*W), never from torch.max(dim)'s scalar loop."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    x = tie_free_input(SHAPE, torch.float32, _gate(params, "avg_max"), "cpu").requires_grad_()
    log = _OpLog()
    with log:
        y = cbam_fast.cbam(x, *params.values())
        y.sum().backward()
    assert not [n for p, n, _ in log.ops if p == "max" and "dim" in n]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_training_keeps_one_full_size_tensor(fmt, function_path):
    """The autograd graph holds one tensor of x's size for the backward (x itself); the
    reference's chain holds x, x * cg and more."""
    params = _params(SHAPE[1], "avg_max", "max_mean", "reduce", torch.float32)
    x = torch.randn(SHAPE).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    counts = {}
    for name, fn in (("cpu", cpu.cbam), ("reference", reference.cbam)):
        saved = []

        def pack(t):
            if t.numel() == x.numel():
                saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, *params.values(), bn=_bn("train"))
        counts[name] = len({t.data_ptr() for t in saved})
    assert counts["cpu"] == 1
    assert counts["reference"] >= 2


def test_grid_covers_every_option():
    assert set(itertools.product(CHANNEL_POOLS, SPATIAL_POOLS)) == set(
        itertools.product(functional.CHANNEL_POOLS, functional.SPATIAL_POOLS))
