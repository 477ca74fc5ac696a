"""The pooled-gate family (cbam_fast.channel_attention / spatial_attention and their modules)
against the reference in the package: forward and backward, every option, dtype and memory
format, on fresh tie-free random inputs with NaN-poisoned buffers (tests/conftest.py), fp16/bf16
judged against an fp64 reference (tests/utils.py assert_close_three_way). Plus the structure of
a call (its launches), determinism, strided incoming gradients, errors, and PyTorch integration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbam_fast
from cbam_fast import reference
from cbam_fast.kernels import plan
from utils import DTYPES, FORMATS, assert_close_three_way, distinct_rows as _distinct_rows

CH_CONFIGS = {  # pool, act, gate, two layers, biases
    "avg-relu-sigmoid": ("avg", "relu", "sigmoid", True, True),
    "avg_max-silu-sigmoid-nobias": ("avg_max", "silu", "sigmoid", True, False),
    "light-relu-hard_sigmoid": ("light", "relu", "hard_sigmoid", True, True),
    "avg-single-hard_sigmoid": ("avg", "relu", "hard_sigmoid", False, True),
    "light-single-sigmoid-nobias": ("light", "relu", "sigmoid", False, False),
    "avg_max-relu-sigmoid": ("avg_max", "relu", "sigmoid", True, True),  # CBAM's: b2 counted twice
    "avg_max-single-sigmoid": ("avg_max", "relu", "sigmoid", False, True),
}


def _ch_params(C, two_layer, bias, hidden=5):
    hid = hidden if two_layer else C
    p = [torch.randn(hid, C) / math.sqrt(C), torch.randn(hid) * 0.3 if bias else None,
         torch.randn(C, hid) / math.sqrt(hid) * 2 if two_layer else None, torch.randn(C) * 0.3 if bias and two_layer else None]
    return [None if t is None else t.requires_grad_() for t in p]


def _grads(y, inputs, dy):
    want = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(y, want, dy)


def _check_against_reference(name, fn_gate, fn_ref, x, params, dtype):
    """y and every gradient of the gate (x in dtype) against the reference in dtype and in fp64."""
    xs = x.detach().clone().requires_grad_()
    y = fn_gate(xs, params)
    dy = torch.randn(y.shape, dtype=torch.float64, device=x.device).to(dtype)
    g = _grads(y, [xs, *params], dy)
    outs = {}
    for tag, dt in (("same", dtype), ("hi", torch.float64)):
        xr = x.detach().to(dt).requires_grad_()
        pr = [None if p is None else p.detach().to(dt).requires_grad_() for p in params]
        yr = fn_ref(xr, pr)
        outs[tag] = (yr, _grads(yr, [xr, *pr], dy.to(dt)))
    assert_close_three_way(f"{name} y", y, outs["same"][0], outs["hi"][0])
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    for i, (a, b, c) in enumerate(zip(g, outs["same"][1], outs["hi"][1])):
        assert a.dtype == b.dtype
        assert_close_three_way(f"{name} grad {i}", a, b, c)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("config", list(CH_CONFIGS))
def test_channel_gate_matches_reference(triton_backend, device, config, dtype, fmt):
    pool, act, gate, two, bias = CH_CONFIGS[config]
    C = 12
    x = _distinct_rows((2, C, 5, 7), DTYPES[dtype], device, FORMATS[fmt], "channel")
    params = [None if p is None else p.detach().to(device=device, dtype=DTYPES[dtype]).requires_grad_()
              for p in _ch_params(C, two, bias)]

    def run(xx, ps):
        return cbam_fast.channel_attention(xx, *ps, pool=pool, act=act, gate=gate)

    def ref(xx, ps):
        return reference.channel_attention(xx, *ps, pool=pool, act=act, gate=gate)

    _check_against_reference(config, run, ref, x, params, DTYPES[dtype])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("pool,k,bias,bn", [("mean_max", 7, True, None), ("max_mean", 3, False, "eval"),
                                             ("light", 5, True, None), ("mean_max", 3, False, "train")],
                         ids=["mean_max-7-bias", "max_mean-3-bn-eval", "light-5-bias", "mean_max-3-bn-train"])
def test_spatial_gate_matches_reference(triton_backend, device, pool, k, bias, bn, dtype, fmt):
    dt = DTYPES[dtype]
    x = _distinct_rows((2, 10, 6, 5), dt, device, FORMATS[fmt], "spatial")
    w = (torch.randn(1, 1 if pool == "light" else 2, k, k) / k).to(device=device, dtype=dt).requires_grad_()
    b = (torch.randn(1) * 0.3).to(device=device, dtype=dt).requires_grad_() if bias else None
    norms = {}

    def make_bn(tag):
        if bn is None:
            return None
        m = nn.BatchNorm2d(1).to(device)
        with torch.no_grad():
            m.weight.fill_(1.3), m.bias.fill_(-0.2), m.running_mean.fill_(0.1), m.running_var.fill_(0.8)
        m.train(bn == "train")
        return norms.setdefault(tag, m)

    def run(xx, ps):
        return cbam_fast.spatial_attention(xx, *ps, pool=pool, bn=make_bn("kernel"))

    def ref(xx, ps):
        return reference.spatial_attention(xx, *ps, pool=pool, bn=make_bn(f"ref{xx.dtype}"))

    _check_against_reference(f"spatial {pool}", run, ref, x, [w, b], dt)
    if bn == "train":  # one running-statistics update per call, as nn.BatchNorm2d
        ours, theirs = norms["kernel"], norms[f"ref{torch.float64}"]
        assert int(ours.num_batches_tracked) == 1
        torch.testing.assert_close(ours.running_mean, theirs.running_mean.float(), rtol=1e-2, atol=1e-2)


def test_fp64_is_exact_to_rounding(triton_backend, device):
    """fp64 through the kernels equals the fp64 reference to a few ulps, every gradient."""
    for axis in ("channel", "spatial"):
        x = _distinct_rows((3, 9, 4, 6), torch.float64, device, torch.contiguous_format, axis).requires_grad_()
        if axis == "channel":
            ps = [p.detach().to(device, torch.float64).requires_grad_() for p in _ch_params(9, True, True)]
            y, yr = (f(x, *ps, pool="avg_max", act="silu") for f in (cbam_fast.channel_attention,
                                                                       reference.channel_attention))
        else:
            ps = [torch.randn(1, 2, 7, 7, dtype=torch.float64, device=device).requires_grad_(),
                  torch.randn(1, dtype=torch.float64, device=device).requires_grad_()]
            y, yr = (f(x, *ps) for f in (cbam_fast.spatial_attention, reference.spatial_attention))
        dy = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, [x, *ps], dy), torch.autograd.grad(yr, [x, *ps], dy)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(y, yr, rtol=1e-13, atol=1e-14)


def test_callable_excitation_eca(triton_backend, device):
    """ECA through the callable path: the module's own Conv1d over the pooled channels (PyTorch ops
    between the fused passes), its weight's gradient included."""
    conv = nn.Conv1d(1, 1, 5, padding=2, bias=False).double().to(device)
    x = _distinct_rows((2, 16, 5, 5), torch.float64, device, torch.channels_last, "channel").requires_grad_()

    def excite(v):
        return conv(v.unsqueeze(1)).squeeze(1)

    y = cbam_fast.channel_attention(x, excite=excite, params=list(conv.parameters()))
    yr = reference.channel_attention(x, excite=excite)
    dy = torch.randn_like(y)
    g = torch.autograd.grad(y, [x, conv.weight], dy)
    gr = torch.autograd.grad(yr, [x, conv.weight], dy)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-13)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    assert g[1].abs().sum() > 0
    # an nn.Module excitation: its parameters are found without `params`
    y2 = cbam_fast.channel_attention(x, excite=nn.Sequential(nn.Linear(16, 16).double().to(device)), pool="light")
    assert y2.shape == x.shape


def test_callable_with_unlisted_tensor_is_refused(triton_backend, device):  # (the kernels' path)
    w = torch.randn(8, 8, device=device, requires_grad=True)
    x = torch.randn(2, 8, 3, 3, device=device)
    with pytest.raises(ValueError, match="not among its params"):
        cbam_fast.channel_attention(x, excite=lambda v: v @ w)
    with pytest.raises(ValueError, match="returned shape"):
        cbam_fast.channel_attention(x, excite=lambda v: v[:, :3])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("pool,k,bias", [("mean_max", 7, True), ("max_mean", 3, False), ("light", 5, True)])
def test_spatial_gate_inference_in_two_launches(triton_backend, device, pool, k, bias, dtype, fmt):
    """With nothing to differentiate the spatial gate runs in 2 launches and no ATen op (the gate
    pool pass, then CBAM's gate pass convolving the maps: no channel gate); each pool order's
    weights reach the right map. Against the reference: fp64 to rounding, 16-bit judged against
    the fp64 reference beside PyTorch's own error."""
    dt = DTYPES[dtype]
    x = _distinct_rows((2, 10, 6, 5), dt, device, FORMATS[fmt], "spatial")
    w = (torch.randn(1, 1 if pool == "light" else 2, k, k) / k).to(device=device, dtype=dt)
    b = (torch.randn(1) * 0.3).to(device=device, dtype=dt) if bias else None
    with torch.no_grad(), plan.recording(dry=False) as rec:
        y = cbam_fast.spatial_attention(x, w, b, pool=pool)
    assert [r.launch.role for r in rec] == ["gate_pool", "spatial_gate"]
    assert not rec[1].launch.constexprs["HAS_CG"]
    assert y.is_contiguous(memory_format=FORMATS[fmt])
    hi = reference.spatial_attention(x.double(), w.double(), None if b is None else b.double(), pool=pool)
    if dt == torch.float64:
        torch.testing.assert_close(y, hi, rtol=1e-12, atol=1e-12)
    else:
        assert_close_three_way("y", y, reference.spatial_attention(x, w, b, pool=pool), hi)
    # with grad wanted, the pooled-gate path with the conv in PyTorch (it keeps the tiny graph),
    # held to the same reference: it convolves in x's dtype, the fused path in the accumulation
    # dtype, so in 16 bits the two agree only within the error PyTorch's own run allows
    wg = w.detach().requires_grad_()
    with plan.recording(dry=False) as rec:
        yg = cbam_fast.spatial_attention(x, wg, b, pool=pool).detach()
    assert [r.launch.role for r in rec] == ["gate_pool", "gate_scale"]
    if dt == torch.float64:
        torch.testing.assert_close(y, yg, rtol=1e-12, atol=1e-12)
    else:
        assert_close_three_way("y (grad path)", yg, reference.spatial_attention(x, w, b, pool=pool), hi)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_spatial_gate_inference_reads_fp32_weights(triton_backend, device, dtype):
    """The usual mixed case, fp32 conv parameters (an fp32 module) with a 16-bit input under
    no_grad: the fused inference path reads them in fp32, as the fp64 reference does; PyTorch's
    16-bit run (the parameters rounded to x's dtype) sets the error allowed."""
    dt = DTYPES[dtype]
    x = _distinct_rows((2, 12, 7, 6), dt, device, torch.channels_last, "spatial")
    w = (torch.randn(1, 2, 7, 7) / 7).to(device)
    b = (torch.randn(1) * 0.3).to(device)
    with torch.no_grad(), plan.recording(dry=False) as rec:
        y = cbam_fast.spatial_attention(x, w, b)
    assert [r.launch.role for r in rec] == ["gate_pool", "spatial_gate"]
    assert y.dtype == dt
    hi = reference.spatial_attention(x.double(), w.double(), b.double())
    assert_close_three_way("y", y, reference.spatial_attention(x, w, b), hi)


def test_spatial_gate_inference_path_only_without_anything_to_differentiate(triton_backend, device):
    """The fused inference path is taken only with no BatchNorm, the sigmoid gate and nothing
    that wants a gradient: a hard-sigmoid gate, a BatchNorm (eval mode) and an input that
    requires grad each take the pooled-gate path, whose result is the reference's."""
    x = _distinct_rows((2, 10, 6, 5), torch.float64, device, torch.contiguous_format, "spatial")
    w = (torch.randn(1, 2, 7, 7, dtype=torch.float64) / 7).to(device)
    bn = nn.BatchNorm2d(1).double().to(device).eval()
    bn.running_mean.fill_(0.1)
    bn.running_var.fill_(0.7)
    xg = x.detach().requires_grad_()
    cases = [(torch.no_grad, x, dict(gate="hard_sigmoid")), (torch.no_grad, x, dict(bn=bn)),
             (torch.enable_grad, xg, {})]
    for mode, inp, kw in cases:
        with mode(), plan.recording(dry=False) as rec:
            y = cbam_fast.spatial_attention(inp, w, None, **kw)
        roles = [r.launch.role for r in rec]
        assert "spatial_gate" not in roles and roles[0] == "gate_pool", (kw, roles)
        ref = reference.spatial_attention(x, w, None, **kw)
        torch.testing.assert_close(y.detach(), ref, rtol=1e-12, atol=1e-12)


def test_launches_of_a_call(triton_backend, device):
    """The plain MLP (SE): forward two full-size passes (CBAM's channel pooling with the MLP's first
    layer, the scale pass with the second layer and the gate), x read twice and y written once;
    backward three (the reduce reads x and dy, pools x again and runs the MLP's backward; the
    parameter gradients; dx reads dy and writes dx), no ATen op. A callable excitation: the gate
    pool pass, the callable, the scale pass."""
    x = torch.randn(2, 12, 5, 7, device=device, requires_grad=True)
    w1, b1, w2, b2 = [p.to(device).detach().requires_grad_() if p is not None else None for p in _ch_params(12, True, True)]
    with plan.recording(dry=False) as rec:
        y = cbam_fast.channel_attention(x, w1, b1, w2, b2, pool="avg_max")
    assert [r.launch.role for r in rec] == ["channel_pool", "gate_scale"]
    assert [r.launch.reads for r in rec] == [("x",), ("x",)] and rec[1].launch.writes == ("y",)
    dy = torch.randn_like(y)
    with plan.recording(dry=False) as rec:
        y.backward(dy)
    assert [r.launch.role for r in rec] == ["gate_bwd_reduce", "param_grads", "gate_bwd_dx"]
    assert rec[0].launch.reads == ("x", "dy") and rec[2].launch.writes == ("dx",)
    assert rec[0].launch.constexprs["POOLS"] == 2  # the pools again: the forward kept none
    assert rec[0].launch.constexprs["MLP"] and rec[2].launch.constexprs["MLP"]
    # only x's gradient wanted: no parameter-gradient launch
    xx = x.detach().requires_grad_()
    y = cbam_fast.channel_attention(xx, *(p.detach() for p in (w1, b1, w2, b2)), pool="avg_max")
    with plan.recording(dry=False) as rec:
        y.backward(dy)
    assert [r.launch.role for r in rec] == ["gate_bwd_reduce", "gate_bwd_dx"]
    conv = nn.Conv1d(1, 1, 3, padding=1, bias=False).to(device)
    with plan.recording(dry=False) as rec:
        cbam_fast.channel_attention(x, excite=lambda v: conv(v[:, None]).squeeze(1), params=list(conv.parameters()))
    assert [r.launch.role for r in rec] == ["gate_pool", "gate_scale"]


@pytest.mark.parametrize("pool,act,gate", [("avg_max", "relu", "sigmoid"), ("light", "silu", "hard_sigmoid"),
                                           ("avg", "relu", "hard_sigmoid")])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_folded_mlp_over_blocks_splits_and_hidden_chunks(triton_backend, device, pool, act, gate, fmt):
    """The folded MLP's backward where its merges are real: several channel blocks per sample (the
    per-sample ticket sums the hidden gradient over them), H*W split across programs (planned for
    a 132-SM GPU), a hidden width over one BLOCK_H chunk; fp64, so any wrong term shows."""
    C = 40 if fmt == "nchw" else 160
    torch.manual_seed(11)
    x = _distinct_rows((2, C, 20, 20), torch.float64, device, FORMATS[fmt], "channel")
    ps = [p.detach().to(device, torch.float64).requires_grad_() for p in _ch_params(C, True, True, hidden=40)]
    xs = x.detach().clone().requires_grad_()
    with plan.recording(dry=False, sm_count=132) as rec:
        y = cbam_fast.channel_attention(xs, *ps, pool=pool, act=act, gate=gate)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, [xs, *ps], dy)
    reduce = next(r.launch for r in rec if r.launch.role == "gate_bwd_reduce")
    dx_pass = next(r.launch for r in rec if r.launch.role == "gate_bwd_dx")
    n_kb = -(-C // reduce.constexprs["BLOCK_K"])
    assert n_kb > 1 and reduce.programs > 2 * n_kb and dx_pass.programs > 2 * n_kb, (n_kb, reduce.programs)
    assert reduce.constexprs["BLOCK_H"] < 40
    xr = x.detach().clone().requires_grad_()
    yr = reference.channel_attention(xr, *ps, pool=pool, act=act, gate=gate)
    want = torch.autograd.grad(yr, [xr, *ps], dy)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=lambda m: f"grad {i}: {m}")


@pytest.mark.parametrize("pool,act", [("avg_max", "silu"), ("light", "relu")])
def test_folded_mlp_larger_batch(triton_backend, device, pool, act):
    """The folded MLP over a batch of 11 samples (the other tests take at most 3): the hidden
    vector and the pre-activations the backward takes through the activation land in each
    sample's own row."""
    torch.manual_seed(12)
    x = _distinct_rows((11, 24, 9, 9), torch.float64, device, torch.channels_last, "channel")
    ps = [p.detach().to(device, torch.float64).requires_grad_() for p in _ch_params(24, True, True, hidden=6)]
    xs = x.detach().clone().requires_grad_()
    with plan.recording(dry=False) as rec:
        y = cbam_fast.channel_attention(xs, *ps, pool=pool, act=act)
    assert [r.launch.role for r in rec] == ["channel_pool", "gate_scale"]
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, [xs, *ps], dy)
    xr = x.detach().clone().requires_grad_()
    yr = reference.channel_attention(xr, *ps, pool=pool, act=act)
    want = torch.autograd.grad(yr, [xr, *ps], dy)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=lambda m: f"grad {i}: {m}")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gate_output_streamed_past_the_l2(triton_backend, device, fmt):
    """The gate's scale pass stores y with the hint evict_first where x and y exceed 75% of the
    L2 (planned here for a 4 KB L2), elsewhere without: y the same either way, every element
    written (fp64 against the reference)."""
    torch.manual_seed(13)
    x = _distinct_rows((2, 24, 9, 9), torch.float64, device, FORMATS[fmt], "channel")
    ps = [p.detach().to(device, torch.float64) for p in _ch_params(24, True, True, hidden=6)]
    want = reference.channel_attention(x, *ps)
    for l2, streamed in ((4096, True), (None, False)):
        with plan.recording(dry=False, l2_bytes=l2) as rec:
            y = cbam_fast.channel_attention(x, *ps)
        scale = next(r.launch for r in rec if r.launch.role == "gate_scale")
        assert scale.constexprs["STREAM_Y"] is streamed and ("y" in scale.evict_first) is streamed
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["avg_max", "light"])
def test_folded_mlp_dead_relu_and_gate_edges(triton_backend, device, pool):
    """Hidden units whose pre-activation is exactly 0 (zeroed fc1 rows, no bias: dead ReLUs) get
    no gradient through the ReLU, as torch's threshold_backward; the hard-sigmoid gate's slope is
    1/6 strictly inside (-3, 3) and 0 outside (pre-activations pushed far out by fc2's bias)."""
    C, hid = 12, 6
    x = _distinct_rows((2, C, 5, 7), torch.float32, device, torch.contiguous_format, "channel")
    w1, _, w2, _ = [p.detach().to(device) if p is not None else None for p in _ch_params(C, True, True, hidden=hid)]
    dead = [1, 4]
    w1[dead] = 0.0
    b2 = torch.zeros(C, device=device)
    b2[:3] = 30.0  # saturated: gate 1, slope 0
    b2[3:5] = -30.0  # saturated: gate 0, slope 0
    b1 = torch.zeros(hid, device=device)
    for gate in ("sigmoid", "hard_sigmoid"):
        ps = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
        pr = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        dy = torch.randn(x.shape, device=device)
        got = torch.autograd.grad(cbam_fast.channel_attention(xs, *ps, pool=pool, gate=gate), [xs, *ps], dy)
        want = torch.autograd.grad(reference.channel_attention(xr, *pr, pool=pool, gate=gate), [xr, *pr], dy)
        assert torch.all(got[1][dead] == 0) and torch.all(want[1][dead] == 0), "a dead ReLU let a gradient through"
        assert torch.all(got[2][dead] == 0)
        if gate == "hard_sigmoid":
            assert torch.all(got[4][:5] == 0), got[4][:5]  # no slope outside (-3, 3)
        for i, (a, b) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{gate} grad {i}: {m}")


@pytest.mark.parametrize("axis", ["channel", "spatial"])
def test_grids_fill_the_gpu(axis):
    """Planned for a 132-SM GPU: every pass of the SE-ResNet-50 stages at batch 32 and batch 1 has
    at least 4 programs per SM (R split across programs where the blocks alone are too few), and
    its tile spans at least 64 contiguous elements where the contiguous axis is that long."""
    from cbam_fast.kernels import gate_launch

    ax = gate_launch.AXIS_CHANNEL if axis == "channel" else gate_launch.AXIS_SPATIAL
    for N in (32, 1):
        for C, H in ((256, 56), (512, 28), (1024, 14), (2048, 7)):
            for fmt in FORMATS.values():
                x = torch.empty(N, C, H, H, dtype=torch.bfloat16, device="meta").to(memory_format=fmt)
                with plan.recording(dry=True, sm_count=132) as rec:
                    gate_launch.gate_pool(x, ax, True)
                    gate_launch.gate_scale(x, torch.empty(N, C if ax == 0 else H * H, device="meta"), ax)
                for r in rec:
                    programs = r.launch.programs
                    assert programs >= min(4 * 132, N * C * H * H // 2048), (r.launch.role, N, C, H, programs)
                    v = gate_launch.gate_view(x, ax)
                    c = r.launch.constexprs
                    contig = c["BLOCK_R"] if v.layout == 0 else c["BLOCK_K"]
                    assert contig >= min(64, triton_next_pow2(v.R if v.layout == 0 else v.K))


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def test_deterministic_bitwise(triton_backend, device):
    torch.manual_seed(3)
    x = torch.randn(3, 20, 6, 6, device=device)
    ps = [p.to(device).detach().requires_grad_() for p in _ch_params(20, True, True)]
    results = []
    for _ in range(2):
        xx = x.clone().requires_grad_()
        y = cbam_fast.channel_attention(xx, *ps, pool="avg_max")
        results.append((y, *torch.autograd.grad(y, [xx, *ps], torch.ones_like(y))))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    # the tiny step's convolutions run with deterministic cuDNN; the caller's settings come back
    flags = torch.backends.cudnn
    before = flags.deterministic, flags.benchmark
    xs = x.clone().requires_grad_()
    w = torch.randn(1, 2, 3, 3, device=device, requires_grad=True)
    cbam_fast.spatial_attention(xs, w).sum().backward()
    assert (flags.deterministic, flags.benchmark) == before and w.grad is not None


@pytest.mark.parametrize("axis", ["channel", "spatial"])
def test_strided_incoming_gradients(triton_backend, device, axis):
    """dy in strides other than x's: channels_last sliced along C (neither stride 1), and an
    expanded stride-0 dy; x in a layout the kernels copy (a transposed view)."""
    x = _distinct_rows((2, 6, 9, 11), torch.float64, device, torch.contiguous_format, axis)
    x = x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()  # H, W strides swapped: copied
    if axis == "channel":
        ps = [p.detach().to(device, torch.float64).requires_grad_() for p in _ch_params(6, True, True)]
        run, ref = (lambda xx: f(xx, *ps, pool="avg_max") for f in (cbam_fast.channel_attention,
                                                                      reference.channel_attention))
    else:
        ps = [torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device).requires_grad_()]
        run, ref = (lambda xx: f(xx, *ps) for f in (cbam_fast.spatial_attention, reference.spatial_attention))
    big = torch.randn(2, 12, 9, 11, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    for dy in (big[:, ::2], torch.randn(1, 1, 1, 1, dtype=torch.float64, device=device).expand(2, 6, 9, 11)):
        got = torch.autograd.grad(run(x), [x, *ps], dy)
        want = torch.autograd.grad(ref(x), [x, *ps], dy)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_empty_batch_and_cpu_path(device, monkeypatch):
    x = torch.randn(0, 8, 3, 3, device=device, requires_grad=True)
    w = torch.randn(8, 8, device=device, requires_grad=True)
    y = cbam_fast.channel_attention(x, w)
    assert y.shape == x.shape
    y.sum().backward()
    assert w.grad is not None and torch.all(w.grad == 0)
    monkeypatch.setenv("CBAM_FAST_BACKEND", "auto")  # a CPU tensor: the reference ops
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(cbam_fast.channel_attention(x, w.detach().cpu()), reference.channel_attention(x, w.detach().cpu()))


@pytest.mark.parametrize("call,error,match", [
    (lambda x, w: cbam_fast.channel_attention(x[0], w), ValueError, "4-D"),
    (lambda x, w: cbam_fast.channel_attention(x.int(), w), TypeError, "float16"),
    (lambda x, w: cbam_fast.channel_attention(x, w, pool="max"), ValueError, "pool must be one of"),
    (lambda x, w: cbam_fast.channel_attention(x, w, gate="tanh"), ValueError, "gate must be one of"),
    (lambda x, w: cbam_fast.channel_attention(x, w, act="gelu"), ValueError, "act must be one of"),
    (lambda x, w: cbam_fast.channel_attention(x, w[:4]), ValueError, r"single-layer MLP .*\[C, C\]"),
    (lambda x, w: cbam_fast.channel_attention(x, w[:, :4]), ValueError, "channels"),
    (lambda x, w: cbam_fast.channel_attention(x, w, excite=lambda v: v), ValueError, "either"),
    (lambda x, w: cbam_fast.channel_attention(x, excite=3), TypeError, "callable"),
    (lambda x, w: cbam_fast.channel_attention(x), ValueError, "fc1_weight"),
    (lambda x, w: cbam_fast.spatial_attention(x, torch.randn(1, 2, 4, 4)), ValueError, "odd"),
    (lambda x, w: cbam_fast.spatial_attention(x, torch.randn(1, 2, 3, 3), pool="light"), ValueError, "shape"),
    (lambda x, w: cbam_fast.spatial_attention(x, torch.randn(1, 2, 3, 3), bn=nn.BatchNorm2d(2)), TypeError, "BatchNorm2d"),
    (lambda x, w: cbam_fast.ChannelAttention(8)(x), ValueError, "hidden width"),
    (lambda x, w: cbam_fast.ChannelAttention(16)(x), ValueError, "built for 16"),
    (lambda x, w: cbam_fast.ChannelAttention.timm_se(8, act_layer=nn.GELU), ValueError, "act_layer=GELU"),
    (lambda x, w: cbam_fast.ChannelAttention.timm_se(8, gate_layer="tanh"), ValueError, "gate_layer=tanh"),
    (lambda x, w: cbam_fast.ChannelAttention.timm_se(8, norm_layer=nn.LayerNorm), ValueError, "norm_layer"),
    (lambda x, w: cbam_fast.SpatialAttention.ultralytics(5), ValueError, "3 or 7"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_is_a_clear_error(call, error, match):
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(error, match=match):
        call(x, torch.randn(8, 8))


def test_modules_drop_in_for_the_seed_halves(triton_backend, device):
    """ChannelAttention(C, r) and SpatialAttention() are the seed document's modules: same state-dict
    keys and shapes, and the same outputs and gradients once loaded with the seed's weights."""
    from originals import seed_tutorial

    for ours, theirs in ((cbam_fast.ChannelAttention(32, 4), seed_tutorial.ChannelAttention(32, 4)),
                         (cbam_fast.SpatialAttention(), seed_tutorial.SpatialAttention())):
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
        ours.load_state_dict(theirs.state_dict())
        ours, theirs = ours.double().to(device), theirs.double().to(device)
        axis = "channel" if isinstance(ours, cbam_fast.ChannelAttention) else "spatial"
        x = _distinct_rows((2, 32, 5, 6), torch.float64, device, torch.contiguous_format, axis).requires_grad_()
        y, yr = ours(x), theirs(x)
        torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-13)
        dy = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, [x, *ours.parameters()], dy),
                        torch.autograd.grad(yr, [x, *theirs.parameters()], dy)):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_double_backward_and_retain_graph(triton_backend, device):
    """create_graph=True recomputes through the reference math (second derivatives exact, fp64);
    a refusal where the excitation updates state; backward twice with retain_graph."""
    m = cbam_fast.ChannelAttention(6, 2, pool="avg_max", act="silu").double().to(device)
    x = _distinct_rows((2, 6, 3, 4), torch.float64, device, torch.contiguous_format, "channel").requires_grad_()
    assert torch.autograd.gradgradcheck(lambda xx: m(xx), (x,), fast_mode=True)
    s = cbam_fast.SpatialAttention(3).double().to(device)
    xs = _distinct_rows((2, 5, 3, 4), torch.float64, device, torch.contiguous_format, "spatial").requires_grad_()
    assert torch.autograd.gradgradcheck(lambda xx: s(xx), (xs,), fast_mode=True)
    y = m(x)
    g1 = torch.autograd.grad(y.sum(), x, retain_graph=True)[0]
    g2 = torch.autograd.grad(y.sum(), x)[0]
    assert torch.equal(g1, g2)
    se = cbam_fast.ChannelAttention.timm_se(6, rd_channels=3, norm_layer=nn.BatchNorm2d).double().to(device).train()
    with pytest.raises(RuntimeError, match="updates state"):
        torch.autograd.grad(se(x).square().sum(), x, create_graph=True)


def test_registered_ops_pass_opcheck(triton_backend, device):
    x = torch.randn(2, 6, 5, 3, device=device).to(memory_format=torch.channels_last)
    g = torch.rand(2, 6, device=device)
    for axis in (0, 1):
        K = 6 if axis == 0 else 15
        torch.library.opcheck(torch.ops.cbam_fast.gate_pool.default, (x, axis, True))
        torch.library.opcheck(torch.ops.cbam_fast.gate_pool.default, (x, axis, False))
        gk = torch.rand(2, K, device=device)
        torch.library.opcheck(torch.ops.cbam_fast.gate_scale.default, (x, gk, axis))
        dmean, dmax = torch.randn(2, K, device=device), torch.randn(2, K, device=device)
        idx = torch.randint(0, 15 if axis == 0 else 6, (2, K), dtype=torch.int32, device=device)
        dy = torch.randn_like(x)
        torch.library.opcheck(torch.ops.cbam_fast.gate_bwd_dx.default, (dy, x, gk, dmean, dmax, idx, axis))
        torch.library.opcheck(torch.ops.cbam_fast.gate_bwd_dx.default,
                              (dy, x, gk, dmean, dmean.new_empty(0), idx.new_empty(0), axis))
        for pools in (0, 1, 2):
            torch.library.opcheck(torch.ops.cbam_fast.gate_bwd_reduce.default, (dy, x, axis, pools))
    w1, b1, w2, b2 = (torch.randn(3, 6, device=device), torch.randn(3, device=device), torch.randn(6, 3, device=device),
                      torch.randn(6, device=device))
    for args in ((w1, b1, w2, b2, 0, 1, 0), (torch.randn(6, 6, device=device), None, None, None, 2, 0, 1)):
        torch.library.opcheck(torch.ops.cbam_fast.gate_mlp_forward.default, (x, *args))
    for wc, bc, pool in ((torch.randn(1, 2, 3, 3, device=device), torch.randn(1, device=device), "max_mean"),
                         (torch.randn(1, 1, 5, 5, device=device), None, "light")):
        torch.library.opcheck(torch.ops.cbam_fast.spatial_gate.default, (x, wc, bc, pool))
    del g


def test_torch_compile_and_export_take_the_reference(triton_backend, device):
    """torch.compile(fullgraph=True) and torch.export trace the reference math (no graph break); the
    same numbers as eager, forward and backward."""
    torch._dynamo.reset()
    eager = cbam_fast.ChannelAttention.timm_se(8, rd_channels=4, add_maxpool=True).to(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 5, 5, device=device)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
    compiled(x).square().sum().backward()
    eager(x).square().sum().backward()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    s = cbam_fast.SpatialAttention(3).to(device)
    ep = torch.export.export(s, (x,))
    torch.testing.assert_close(ep.module()(x), s(x), rtol=1e-5, atol=1e-6)


def test_torch_func_transforms_are_exact(triton_backend, device):
    m = cbam_fast.ChannelAttention(8, 2).double().to(device)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64, device=device)
    params = dict(m.named_parameters())

    def f(p, xx):
        return torch.func.functional_call(m, p, (xx,)).square().sum()

    got = torch.func.grad(f)(params, x)
    x2 = x.clone().requires_grad_()
    ref = torch.autograd.grad(f(params, x2), list(params.values()))
    for a, b in zip(got.values(), ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    batched = torch.func.vmap(lambda xx: m(xx[None])[0])(x)
    torch.testing.assert_close(batched, m(x), rtol=1e-12, atol=1e-13)


def test_autocast_follows_eager(triton_backend, device):
    """Under autocast the tiny step's ops are autocast as in eager; the output keeps x's dtype."""
    m = cbam_fast.ChannelAttention.timm_squeeze_excite(16, act_layer=nn.SiLU).to(device)
    x = torch.randn(2, 16, 4, 4, device=device, dtype=torch.bfloat16)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    F.mse_loss(y.float(), torch.zeros_like(y, dtype=torch.float32)).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_nan_and_inplace_parameter_changes(triton_backend, device):
    """A NaN in x gives NaN where the reference has it (the folded MLP's hard_sigmoid keeps NaN, as
    F.hardsigmoid); a parameter changed in place between forward and backward is an error (the
    folded backward recomputes the MLP from the parameters), not other gradients."""
    x = torch.randn(2, 8, 3, 4, device=device)
    x[1, 3, 2, 1] = float("nan")
    ps = [p.to(device).detach().requires_grad_() for p in _ch_params(8, True, True)]
    for gate in ("sigmoid", "hard_sigmoid"):
        y = cbam_fast.channel_attention(x, *ps, gate=gate)
        yr = reference.channel_attention(x, *ps, gate=gate)
        assert torch.equal(torch.isnan(y), torch.isnan(yr)) and torch.isnan(y).any()
    x = torch.randn(2, 8, 3, 4, device=device, requires_grad=True)
    y = cbam_fast.channel_attention(x, *ps)
    with torch.no_grad():
        ps[0].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_no_spatial_with_a_channel_pool_keyword_and_dropout_purity(triton_backend, device):
    assert cbam_fast.CBAM.official(16, 4, no_spatial=True, channel_pool="avg").pooling == "avg"
    with pytest.raises(ValueError, match="no_spatial=True with channel_pool='light'"):
        cbam_fast.CBAM.official(16, 4, no_spatial=True, channel_pool="light")
    excite = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).double().to(device).train()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="updates state"):
        torch.autograd.grad(cbam_fast.channel_attention(x, excite=excite).sum(), x, create_graph=True)


MEMORY_BLOCKS = ("se", "se-avg_max", "se-single", "spatial")


@pytest.mark.parametrize("block", MEMORY_BLOCKS)
@pytest.mark.parametrize("chw", [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
                         ids=lambda s: "x".join(map(str, s)))
def test_memory_kept_for_backward(triton_backend, device, chw, block):
    """Beyond x and the parameters, a gate's backward keeps < 5% of |x| (bf16 input, the tightest
    case), at the ResNet-50 stages: every tensor saved anywhere in the call's graph (the gate's
    own node and the ops of a tiny step recorded inside it, through saved-tensor hooks) and the
    tiny step's graph the node holds, each storage counted once."""
    C, H, W = chw
    torch.manual_seed(0)
    x = torch.randn(1, C, H, W, device=device, dtype=torch.bfloat16).requires_grad_()
    if block == "spatial":
        params = [(torch.randn(1, 2, 7, 7, device=device) * 0.1).requires_grad_(),
                  torch.zeros(1, device=device, requires_grad=True)]
    else:
        hid = C if block == "se-single" else C // 16
        params = [(torch.randn(hid, C, device=device) / math.sqrt(C)).requires_grad_(),
                  torch.zeros(hid, device=device, requires_grad=True)]
        params += [(torch.randn(C, hid, device=device) / math.sqrt(hid)).requires_grad_(),
                   torch.zeros(C, device=device, requires_grad=True)] if block != "se-single" else [None, None]
    held = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in params if p is not None}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if block == "spatial":
            y = cbam_fast.spatial_attention(x, *params)
        else:
            y = cbam_fast.channel_attention(x, *params, pool="avg_max" if block == "se-avg_max" else "avg")
    for t in getattr(y.grad_fn, "graph", None) or ():
        if isinstance(t, torch.Tensor):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    assert x.untyped_storage().data_ptr() in saved  # x itself is what the backward reads
    extra = sum(n for p, n in saved.items() if p not in held)
    x_bytes = x.numel() * x.element_size()
    assert extra <= 0.05 * x_bytes, f"{block}: {extra} bytes kept beyond x = {extra / x_bytes:.2%} of |x|"
