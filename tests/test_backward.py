"""Backward of the fused kernels against autograd through the reference."""

import copy

import pytest
import torch

import cbam_fast
from cbam_fast import reference
from cbam_fast.kernels import launch
from cbam_fast.kernels.common import LAYOUT_STRIDED
from utils import (
    DTYPES, FORMATS, PARAM_NAMES, assert_close_three_way, make_params, run_cbam, run_reference, tie_free_input,
)

SHAPES = [
    (2, 24, 13, 17, 5),
    (2, 64, 7, 7, 16),
    (1, 3, 1, 1, 16),
    (2, 1, 13, 17, 16),
    (2, 80, 6, 5, 16),
]


def _id(shape):
    n, c, h, w, r = shape
    return f"{n}x{c}x{h}x{w}-r{r}"


def _leaves(x, params, dtype=None):
    """Fresh leaf copies requiring grad (optionally cast, keeping x's memory format)."""
    def leaf(t):
        t = t.detach().clone()
        if dtype is not None:
            t = t.to(dtype)
        return t.requires_grad_()

    return leaf(x), {n: None if p is None else leaf(p) for n, p in params.items()}


def _grads(fn, x, params, loss_weight):
    y = fn(x, params)
    loss = y.sum() if loss_weight is None else (y * loss_weight.to(y.dtype)).sum()
    loss.backward()
    return y, {"x": x.grad, **{n: p.grad for n, p in params.items() if p is not None}}


def check_backward(x, params, loss, device):
    """dx and every parameter gradient: kernel vs fp64 reference, bounded by 2x PyTorch's own error."""
    # the loss weight is rounded to x's dtype first, so every path sees the same dy exactly
    w = torch.randn(x.shape, device=device).to(x.dtype) if loss == "weighted" else None
    xk, pk = _leaves(x, params)
    _, g_kernel = _grads(run_cbam, xk, pk, w)
    xs, ps = _leaves(x, params)
    _, g_same = _grads(run_reference, xs, ps, w)
    xh, ph = _leaves(x, params, torch.float64)
    _, g_hi = _grads(run_reference, xh, ph, None if w is None else w.double())
    assert set(g_kernel) == set(g_hi)
    for name in g_hi:
        assert_close_three_way(f"grad {name}", g_kernel[name], g_same[name], g_hi[name])
    return g_kernel


@pytest.mark.parametrize("loss", ["weighted", "sum"])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_reference(triton_backend, device, dtype, fmt, shape, k, loss):
    N, C, H, W, r = shape
    params = make_params(C, r, k, device)
    x = tie_free_input((N, C, H, W), DTYPES[dtype], params, device, FORMATS[fmt])
    g = check_backward(x, params, loss, device)
    assert g["x"].is_contiguous(memory_format=FORMATS[fmt]), "dx must keep the input's memory format"


@pytest.mark.parametrize(
    "mlp_bias,conv_bias", [(False, False), (True, True)], ids=["no-bias", "conv-bias"]
)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_backward_bias_variants(triton_backend, device, fmt, mlp_bias, conv_bias):
    params = make_params(24, 4, 7, device, mlp_bias=mlp_bias, conv_bias=conv_bias)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device, FORMATS[fmt])
    check_backward(x, params, "weighted", device)


@pytest.mark.parametrize("dy_kind", ["nchw", "channels_last", "sliced", "expanded-channel"])
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_incoming_gradient_strides(triton_backend, device, fmt, dy_kind):
    """dy in any strides: either memory format, a non-contiguous view, broadcast over channels."""
    params = make_params(24, 4, 5, device)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device, FORMATS[fmt])
    shape = x.shape
    if dy_kind == "nchw":
        dy = torch.randn(shape, device=device)
    elif dy_kind == "channels_last":
        dy = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
    elif dy_kind == "sliced":
        dy = torch.randn(shape[0], shape[1] * 2, shape[2], shape[3] + 3, device=device)[:, ::2, :, 1:-2]
    else:
        dy = torch.randn(shape[0], 1, shape[2], shape[3], device=device).expand(shape)
    results = []
    for fn, dtype in ((run_cbam, None), (run_reference, None), (run_reference, torch.float64)):
        xx, pp = _leaves(x, params, dtype)
        fn(xx, pp).backward(dy if dtype is None else dy.to(dtype))
        results.append({"x": xx.grad, **{n: p.grad for n, p in pp.items() if p is not None}})
    kernel, same, hi = results
    for name in hi:
        assert_close_three_way(f"grad {name}", kernel[name], same[name], hi[name])


def _dy_layouts(monkeypatch):
    """The DY_LAYOUT every launch of the two dy-reading backward kernels was given (real kernels run)."""
    seen = []

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(launch, name)

        def __getitem__(self, grid):
            def go(*args, **kwargs):
                seen.append((self.name, kwargs["DY_LAYOUT"]))
                return self.kernel[grid](*args, **kwargs)
            return go

    for name in ("bwd_reduce_kernel", "bwd_dx_kernel"):
        monkeypatch.setattr(launch, name, Spy(name))
    return seen


@pytest.mark.parametrize("dy_kind", ["channels_last-sliced-c", "nchw-sliced-w"])
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_incoming_gradient_strided_layout(triton_backend, device, monkeypatch, fmt, dy_kind):
    """dy whose channel and position strides are both not 1 (a channels_last tensor sliced along C:
    stride_c 2 < stride_p; an NCHW tensor sliced along W: stride_p 2 < stride_c) is read in place
    through LAYOUT_STRIDED, where the two strides must not be confused."""
    params = make_params(24, 4, 5, device)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device, FORMATS[fmt])
    N, C, H, W = x.shape
    if dy_kind == "channels_last-sliced-c":
        dy = torch.randn(N, 2 * C, H, W, device=device).to(memory_format=torch.channels_last)[:, ::2]
    else:
        dy = torch.randn(N, C, H, 2 * W, device=device)[..., ::2]
    layout, (_, s_c, s_p) = launch.layout_of(dy)
    assert layout == LAYOUT_STRIDED and s_c != 1 and s_p != 1 and s_c != s_p
    seen = _dy_layouts(monkeypatch)
    results = []
    for fn, dtype in ((run_cbam, None), (run_reference, None), (run_reference, torch.float64)):
        xx, pp = _leaves(x, params, dtype)
        fn(xx, pp).backward(dy if dtype is None else dy.to(dtype))
        results.append({"x": xx.grad, **{n: p.grad for n, p in pp.items() if p is not None}})
    assert sorted(seen) == [("bwd_dx_kernel", LAYOUT_STRIDED), ("bwd_reduce_kernel", LAYOUT_STRIDED)], \
        f"dy was not read through the strided layout: {seen}"
    kernel, same, hi = results
    assert set(kernel) == set(hi)
    for name in hi:
        assert_close_three_way(f"grad {name}", kernel[name], same[name], hi[name])


DEAD_BIAS = {  # fc1 bias, fc2 bias of the MLP whose zeroed fc1 rows give pre-activations exactly 0
    "no-mlp-bias": (False, False),
    "fc2-bias-only": (False, True),  # the kernels get a zero-filled fc1 bias
    "fc1-bias-zero-at-dead": (True, True),
}


@pytest.mark.parametrize("bias", DEAD_BIAS)
@pytest.mark.parametrize("channel_pool", ["avg_max", "avg", "light"])
def test_dead_relu_units(triton_backend, device, channel_pool, bias):
    """Hidden units whose pre-activation is exactly 0 for every pooled vector (a zeroed fc1 row,
    no fc1 bias or a zero one: a dead ReLU, in the avg and the max branch alike) get the gradient
    torch.relu's backward gives at 0: none, so their fc1 row (and bias) gradient is exactly 0."""
    C, r, k = 24, 4, 5
    params = make_params(C, r, k, device)
    fc1_bias, fc2_bias = DEAD_BIAS[bias]
    dead = [1, 4]  # of 6 hidden units
    with torch.no_grad():
        params["fc1_weight"][dead] = 0.0
        if fc1_bias:
            params["fc1_bias"][dead] = 0.0
    params["fc1_bias"] = params["fc1_bias"] if fc1_bias else None
    params["fc2_bias"] = params["fc2_bias"] if fc2_bias else None

    def gate(x):
        p = {n: None if v is None else v.double() for n, v in params.items()}
        return reference.channel_gate(x, p["fc1_weight"], p["fc1_bias"], p["fc2_weight"], p["fc2_bias"], channel_pool)

    x = tie_free_input((2, C, 7, 9), torch.float32, gate, device)
    w = torch.randn(x.shape, device=device)
    results = []
    for fn, dtype in ((cbam_fast.cbam, None), (reference.cbam, None), (reference.cbam, torch.float64)):
        xx, pp = _leaves(x, params, dtype)
        y = fn(xx, *(pp[n] for n in PARAM_NAMES), channel_pool=channel_pool)
        (y * w.to(y.dtype)).sum().backward()
        results.append({"x": xx.grad, **{n: p.grad for n, p in pp.items() if p is not None}})
    kernel, same, hi = results
    assert set(kernel) == set(hi)
    assert torch.all(hi["fc1_weight"][dead] == 0)
    for name in hi:
        assert_close_three_way(f"grad {name}", kernel[name], same[name], hi[name])
    assert torch.all(kernel["fc1_weight"][dead] == 0), "a dead ReLU unit let a gradient through"
    if fc1_bias:
        assert torch.all(kernel["fc1_bias"][dead] == 0), "a dead ReLU unit let a gradient through"


# eps, running variance ("equal": eps itself; "random": U(1e-5, 3e-5)), BN weight scale: the variance
# is at or below eps, where the fold's sqrt(var + eps) differs from sqrt(var) by 1.4x (var = eps) to
# 6-10x (var ~ 2e-5, eps 1e-3); the small BN weight keeps the normalised conv output at a scale where
# the spatial gate is not saturated. Dropping eps fails the fp32 cases by > 6e4x the bound.
SMALL_VAR_BN = {
    "var=eps=1e-5": (1e-5, "equal", 0.01),
    "var~2e-5-eps=1e-3": (1e-3, "random", 0.03),
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("case", SMALL_VAR_BN)
def test_eval_batchnorm_small_running_variance(triton_backend, device, case, dtype):
    """Eval-mode spatial BatchNorm (folded into the conv) with a running variance near or below
    eps: the output and every gradient (the BatchNorm's too) depend on eps at first order."""
    eps, var_kind, gamma = SMALL_VAR_BN[case]
    dtype = DTYPES[dtype]
    params = make_params(24, 4, 7, device, conv_bias=True)
    bn = torch.nn.BatchNorm2d(1, eps=eps).to(device).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.full((1,), eps) if var_kind == "equal" else torch.empty(1).uniform_(1e-5, 3e-5))
        bn.running_mean.normal_(0.0, 0.3)
        bn.weight.copy_(gamma * (0.75 + 0.5 * torch.rand(1)))
        bn.bias.normal_(0.0, 0.3)
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    x = tie_free_input((2, 24, 7, 9), dtype, params, device)
    w = torch.randn(x.shape, device=device).to(dtype)
    results = []
    for fn, cast in ((cbam_fast.cbam, None), (reference.cbam, None), (reference.cbam, torch.float64)):
        xx, pp = _leaves(x, params, cast)
        b = copy.deepcopy(bn)
        if cast is not None:
            b = b.to(cast)
        b.zero_grad(set_to_none=True)
        y = fn(xx, *(pp[n] for n in PARAM_NAMES), bn=b)
        (y * w.to(y.dtype)).sum().backward()
        results.append((y.detach(), {"x": xx.grad, **{n: p.grad for n, p in pp.items() if p is not None},
                                     "bn_weight": b.weight.grad, "bn_bias": b.bias.grad}))
        assert torch.equal(b.running_mean, stats[0].to(b.running_mean.dtype))
        assert torch.equal(b.running_var, stats[1].to(b.running_var.dtype))
    (y_k, kernel), (y_same, same), (y_hi, hi) = results
    assert_close_three_way("y", y_k, y_same, y_hi)
    assert set(kernel) == set(hi)
    for name in hi:
        assert_close_three_way(f"grad {name}", kernel[name], same[name], hi[name])


def test_gradcheck_float64(triton_backend, device):
    params = make_params(3, 2, 3, device, dtype=torch.float64, conv_bias=True)
    x = tie_free_input((2, 3, 3, 4), torch.float64, params, device)
    inputs = (x.requires_grad_(),) + tuple(params[n].requires_grad_() for n in PARAM_NAMES)
    assert torch.autograd.gradcheck(cbam_fast.cbam, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gradcheck_float64_channels_last(triton_backend, device):
    params = make_params(5, 2, 5, device, dtype=torch.float64)
    x = tie_free_input((1, 5, 4, 3), torch.float64, params, device, torch.channels_last)
    inputs = (x.requires_grad_(),) + tuple(None if params[n] is None else params[n].requires_grad_() for n in PARAM_NAMES)
    assert torch.autograd.gradcheck(cbam_fast.cbam, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_is_bitwise_deterministic(triton_backend, device, dtype):
    params = make_params(64, 16, 7, device)
    x = tie_free_input((3, 64, 13, 17), DTYPES[dtype], params, device, torch.channels_last)
    w = torch.randn(x.shape, device=device)
    runs = []
    for _ in range(2):
        xk, pk = _leaves(x, params)
        runs.append(_grads(run_cbam, xk, pk, w))
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1)
    for name in g0:
        assert torch.equal(g0[name], g1[name]), f"grad {name} differs between two identical runs"


def test_runs_under_deterministic_algorithms(triton_backend, device):
    params = make_params(24, 4, 7, device)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device)
    torch.use_deterministic_algorithms(True)
    try:
        g = check_backward(x, params, "weighted", device)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(not torch.isnan(t).any() for t in g.values())


@pytest.mark.parametrize("frozen", ["x", "mlp", "conv", "all-params"])
def test_partial_requires_grad(triton_backend, device, frozen):
    """Inputs without requires_grad get no gradient (and their work is skipped); the rest match."""
    params = make_params(24, 4, 5, device, conv_bias=True)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device)
    frozen_names = {
        "x": ["x"], "mlp": ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"],
        "conv": ["conv_weight", "conv_bias"], "all-params": list(PARAM_NAMES),
    }[frozen]
    w = torch.randn(x.shape, device=device)
    results = []
    for fn, dtype in ((run_cbam, None), (run_reference, None), (run_reference, torch.float64)):
        xx, pp = _leaves(x, params, dtype)
        tensors = {"x": xx, **pp}
        for name in frozen_names:
            tensors[name].requires_grad_(False)
        (fn(xx, pp) * w.to(xx.dtype)).sum().backward()
        results.append({n: t.grad for n, t in tensors.items()})
    kernel, same, hi = results
    for name in tensors:
        if name in frozen_names:
            assert kernel[name] is None
        else:
            assert_close_three_way(f"grad {name}", kernel[name], same[name], hi[name])


def test_no_grad_and_inference_mode_take_the_lean_path(triton_backend, device):
    params = make_params(24, 4, 5, device)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device)
    pk = {n: None if p is None else p.clone().requires_grad_() for n, p in params.items()}
    with_grad = run_cbam(x.clone().requires_grad_(), pk)
    assert with_grad.grad_fn is not None
    with torch.no_grad():
        y0 = run_cbam(x, pk)
    with torch.inference_mode():
        y1 = run_cbam(x, pk)
    assert y0.grad_fn is None and y1.grad_fn is None
    assert torch.equal(y0, with_grad.detach()) and torch.equal(y1, y0)


RESNET50_STAGES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


@pytest.mark.parametrize("chw", RESNET50_STAGES, ids=lambda s: "x".join(map(str, s)))
def test_memory_kept_for_backward(triton_backend, device, chw):
    """Beyond x (which the caller holds anyway) and the parameters, backward keeps < 5% of |x|
    (bf16 input, the tightest case). Measured on the tensors saved on the autograd node."""
    C, H, W = chw
    params = make_params(C, 16, 7, device)
    x = torch.randn(1, C, H, W, device=device, dtype=torch.bfloat16).requires_grad_()
    pk = {n: None if p is None else p.requires_grad_() for n, p in params.items()}
    y = run_cbam(x, pk)
    held = {id(x)} | {id(p) for p in pk.values() if p is not None}
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert any(t is x or t.data_ptr() == x.data_ptr() for t in saved)
    extra = sum(t.numel() * t.element_size() for t in saved if id(t) not in held and t.data_ptr() != x.data_ptr())
    x_bytes = x.numel() * x.element_size()
    assert extra <= 0.05 * x_bytes, f"{extra} bytes kept beyond x = {extra / x_bytes:.2%} of |x|"
