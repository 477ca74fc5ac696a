"""Forward of the fused kernels against the reference, every dtype, layout, odd shape and k."""

import pytest
import torch

import cbam_fast

from utils import DTYPES, FORMATS, assert_close_three_way, make_params, run_cbam, run_reference, tie_free_input

# (N, C, H, W, reduction): H*W = 1, 7x7, 13x17 (more than one pooling split and position block),
# C = 1, 3, 24, 64, 80 (several and partial channel blocks), reductions that do not divide C.
SHAPES = [
    (2, 24, 13, 17, 5),
    (2, 64, 7, 7, 16),
    (1, 3, 1, 1, 16),
    (3, 24, 1, 1, 16),
    (2, 1, 13, 17, 16),
    (2, 80, 6, 5, 16),
]


def _id(shape):
    n, c, h, w, r = shape
    return f"{n}x{c}x{h}x{w}-r{r}"


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(triton_backend, device, dtype, fmt, shape, k):
    N, C, H, W, r = shape
    dtype, memory_format = DTYPES[dtype], FORMATS[fmt]
    params = make_params(C, r, k, device)
    x = tie_free_input((N, C, H, W), dtype, params, device, memory_format)

    y = run_cbam(x, params)

    assert y.is_contiguous(memory_format=memory_format), "output must keep the input's memory format"
    ref_hi = run_reference(x.double(), {n: None if p is None else p.double() for n, p in params.items()})
    ref_same = run_reference(x, params)
    assert_close_three_way("y", y, ref_same, ref_hi)


@pytest.mark.parametrize(
    "mlp_bias,conv_bias", [(False, False), (True, True), (False, True)], ids=["no-bias", "conv-bias", "conv-bias-only"]
)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_forward_bias_variants(triton_backend, device, fmt, mlp_bias, conv_bias):
    params = make_params(24, 4, 7, device, mlp_bias=mlp_bias, conv_bias=conv_bias)
    x = tie_free_input((2, 24, 9, 11), torch.float32, params, device, FORMATS[fmt])
    y = run_cbam(x, params)
    ref_hi = run_reference(x.double(), {n: None if p is None else p.double() for n, p in params.items()})
    assert_close_three_way("y", y, run_reference(x, params), ref_hi)


def test_forward_fp64_is_exact_to_rounding(triton_backend, device):
    params = make_params(24, 5, 5, device, dtype=torch.float64, conv_bias=True)
    x = tie_free_input((2, 24, 13, 17), torch.float64, params, device)
    torch.testing.assert_close(run_cbam(x, params), run_reference(x, params), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_half_parameters(triton_backend, device, fmt):
    """A model converted with .half()/.bfloat16() holds parameters in the input's dtype."""
    for dtype in (torch.float16, torch.bfloat16):
        params32 = make_params(24, 4, 7, device)
        params = {n: None if p is None else p.to(dtype) for n, p in params32.items()}
        x = tie_free_input((2, 24, 9, 11), dtype, params, device, FORMATS[fmt])
        ref_hi = run_reference(x.double(), {n: None if p is None else p.double() for n, p in params.items()})
        assert_close_three_way("y", run_cbam(x, params), run_reference(x, params), ref_hi)


def test_non_dense_input_is_served(triton_backend, device):
    """A channel slice keeps its strides (no copy); a W slice cannot merge H and W and is copied."""
    params = make_params(24, 4, 3, device)
    base = tie_free_input((2, 48, 9, 22), torch.float32, make_params(48, 4, 3, device), device)
    for x in (base[:, ::2], base[:, :24, :, ::2]):
        ref_hi = run_reference(x.double(), {n: None if p is None else p.double() for n, p in params.items()})
        assert_close_three_way("y", run_cbam(x, params), run_reference(x, params), ref_hi)


def test_module_matches_functional(triton_backend, device):
    import cbam_fast

    m = cbam_fast.CBAM(24, reduction_ratio=5, kernel_size=5).to(device)
    params = dict(zip(
        ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "conv_weight", "conv_bias"),
        (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias),
    ))
    x = tie_free_input((2, 24, 6, 7), torch.float32, params, device)
    with torch.no_grad():
        torch.testing.assert_close(m(x), run_reference(x, params), rtol=1e-5, atol=1e-6)
    assert m.fc1.out_features == 4 and m.conv.bias is None


def test_empty_batch(triton_backend, device):
    """N = 0 gives an empty output that stays in the graph (backward works, zero gradients)."""
    params = {n: None if p is None else p.requires_grad_() for n, p in make_params(8, 4, 3, device).items()}
    x = torch.randn(0, 8, 5, 5, device=device, requires_grad=True)
    y = run_cbam(x, params)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("n,sms", [(11, None), (19, 64)], ids=["11-one-split", "19-split-hw"])
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_forward_larger_batches(triton_backend, device, fmt, n, sms):
    """Batches of 11 and 19 samples (the other tests take at most 3): the tickets of channel_pool
    (per sample and channel block, then per sample) and of spatial_pool over many samples, with
    H*W in one pooling split and split across programs (planned for a 64-SM GPU); fp64, so a
    sample's pools or products landing in another sample's row shows."""
    from cbam_fast.kernels import plan

    params = make_params(24, 4, 7, device, dtype=torch.float64, conv_bias=True)
    x = tie_free_input((n, 24, 17, 17), torch.float64, params, device, FORMATS[fmt])
    with plan.recording(dry=False, sm_count=sms) as rec:
        y = run_cbam(x, params)
    pool = next(r for r in rec if r.launch.role == "channel_pool")
    n_splits = pool.named_args["n_splits"]  # channel_pool_kernel's split count
    assert (n_splits > 1) == (sms is not None), n_splits
    torch.testing.assert_close(y, run_reference(x, params), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", ["bf16", "fp32"], ids=str)
def test_forward_output_streamed_past_the_l2(triton_backend, device, dtype, fmt):
    """Where x and y together exceed 75% of the L2 the gate pass stores y with the hint
    evict_first (STREAM_Y; planned here for a 4 KB L2), elsewhere without: both stores write
    every element of y as the reference has it."""
    from cbam_fast.kernels import plan

    dtype, memory_format = DTYPES[dtype], FORMATS[fmt]
    params = make_params(24, 4, 7, device)
    x = tie_free_input((2, 24, 9, 11), dtype, params, device, memory_format)
    ref_hi = run_reference(x.double(), {n: None if p is None else p.double() for n, p in params.items()})
    for l2, streamed in ((4096, True), (None, False)):
        with plan.recording(dry=False, l2_bytes=l2) as rec:
            y = run_cbam(x, params)
        gate = next(r.launch for r in rec if r.launch.role == "spatial_gate")
        assert gate.constexprs["STREAM_Y"] is streamed and ("y" in gate.evict_first) is streamed, gate.evict_first
        assert y.is_contiguous(memory_format=memory_format)
        assert_close_three_way("y", y, run_reference(x, params), ref_hi)



@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", ["fp64", "bf16"], ids=str)
@pytest.mark.parametrize("c,channel_pool,bias", [(40, "avg_max", True), (40, "avg", False), (40, "light", True),
                                                 (100, "avg_max", True)])
def test_second_layer_in_either_pass(triton_backend, device, monkeypatch, dtype, fmt, c, channel_pool, bias):
    """The MLP's second layer runs once per sample in the channel pool pass or per program in the
    spatial pool pass (kernels/launch.py second_layer_in_pool decides by W2's size, the batch and
    the layout; here each placement is forced in turn): both, forward and backward, against the
    reference (fp64 to rounding; bf16 judged against the fp64 reference beside PyTorch's own
    error), and the launch flags say which pass ran it. C = 100 (HID 25): the pool pass walks W2
    in 4 slabs of 32 channels, the last partial."""
    from cbam_fast import reference
    from cbam_fast.kernels import launch, plan

    dt = {"fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
    params = make_params(c, 4, 7, device, mlp_bias=bias)  # HID 10 or 25: W2 has 400 or 2500 elements
    x0 = tie_free_input((3, c, 9, 11), dt, params, device, FORMATS[fmt])
    names = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "conv_weight", "conv_bias")
    ref_args = [params[n] for n in names]
    hi_args = [None if p is None else p.double() for p in ref_args]
    dy = torch.randn(x0.shape, dtype=torch.float64, device=device).to(dt)
    hi_x = x0.double().requires_grad_()
    hi_y = reference.cbam(hi_x, *hi_args, channel_pool=channel_pool)
    hi_y.backward(dy.double())
    for in_pool in (True, False):
        monkeypatch.setattr(launch, "second_layer_in_pool", lambda mlp, *_, v=in_pool: v and mlp.two_layer)
        x = x0.detach().clone().requires_grad_()
        with plan.recording(dry=False) as rec:
            y = cbam_fast.cbam(x, *ref_args, channel_pool=channel_pool)
        flags = {r.launch.role: r.launch.constexprs for r in rec}
        assert flags["channel_pool"]["SECOND_LAYER"] == in_pool
        assert flags["spatial_pool"]["TWO_LAYER"] == (not in_pool)
        y.backward(dy)
        if dt == torch.float64:
            torch.testing.assert_close(y, hi_y, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(x.grad, hi_x.grad, rtol=1e-10, atol=1e-10)
        else:
            xs = x0.detach().clone().requires_grad_()
            ref_y = reference.cbam(xs, *ref_args, channel_pool=channel_pool)
            ref_y.backward(dy)
            assert_close_three_way("y", y.detach(), ref_y.detach(), hi_y.detach())
            assert_close_three_way("dx", x.grad, xs.grad, hi_x.grad)
