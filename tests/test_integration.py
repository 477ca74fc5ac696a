"""cbam_fast as a PyTorch citizen: registered ops (opcheck), torch.compile, autocast, export, ONNX,
deterministic mode, DistributedDataParallel, save/load, CUDA graphs and multi-GPU (on CUDA)."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cbam_fast
from cbam_fast.functional import CONV_FORMS
from cbam_fast.ops import BN_BATCH, BN_NONE, BN_RUNNING
from utils import module_gate_fn, tie_free_input

HAS_CUDA = torch.cuda.is_available()


def _model(bn=False, seed=0):
    torch.manual_seed(seed)
    block = cbam_fast.CBAM.official(16, 4) if bn else cbam_fast.CBAM(16, 4, 5)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), block, nn.Conv2d(16, 4, 1))


def _op_args(m, x, requires_grad=True):
    """Arguments of torch.ops.cbam_fast.forward for module m (kernel-layout conv weight)."""
    """Arguments of torch.ops.cbam_fast.forward for module m (kernel-layout conv weight; a
    BatchNorm with batch statistics in training mode, folded running statistics in eval mode)."""
    p = [m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias]
    p = [None if t is None else t.detach().clone().requires_grad_(requires_grad) for t in p]
    bn_args = (None, None, None, None, BN_NONE, 0.0)
    if m.bn is not None:
        running = (None, None, BN_BATCH) if m.bn.training else (m.bn.running_mean.clone(), m.bn.running_var.clone(), BN_RUNNING)
        bn_args = (m.bn.weight.detach().clone().requires_grad_(requires_grad),
                   m.bn.bias.detach().clone().requires_grad_(requires_grad), *running, m.bn.eps)
    return (x.clone().requires_grad_(requires_grad), *p, *bn_args, 0, True, CONV_FORMS[m.spatial_pool])


@pytest.mark.parametrize(
    "variant,fmt", [("bn-train", torch.contiguous_format), ("bn-eval", torch.channels_last), ("default", torch.channels_last)],
    ids=["bn-train-nchw", "bn-eval-channels_last", "default-channels_last"]
)
def test_opcheck(triton_backend, device, variant, fmt):
    """Schema, fake (shapes and strides, channels_last included), autograd registration and AOT
    dispatch of the forward op (which calls the backward op)."""
    m = cbam_fast.CBAM(4, 2, 3, conv_bias=True, spatial_bn=variant != "default").to(device).train(variant != "bn-eval")
    if m.bn is not None:
        with torch.no_grad():
            m.bn.running_mean.fill_(0.3)
            m.bn.running_var.fill_(0.8)
    x = tie_free_input((2, 4, 3, 4), torch.float32, module_gate_fn(m), device, fmt)
    torch.library.opcheck(torch.ops.cbam_fast.forward.default, _op_args(m, x))


def test_fake_matches_real_with_one_mlp_bias(triton_backend, device):
    """A two-layer MLP with only fc1's bias: the real and fake ops agree on every output's shape."""
    m = cbam_fast.CBAM(4, 2, 3).to(device)
    x = tie_free_input((2, 4, 3, 4), torch.float32, module_gate_fn(m), device)
    args = list(_op_args(m, x))
    args[4] = None  # no fc2 bias
    torch.library.opcheck(torch.ops.cbam_fast.forward.default, tuple(args),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize(
    "bn,dynamic,backend",
    [(False, False, "inductor"), (False, True, "inductor"), (True, True, "aot_eager")],
    ids=["default-static-inductor", "default-dynamic-inductor", "bn-train-dynamic-aot_eager"],
)
def test_torch_compile_fullgraph(triton_backend, device, bn, dynamic, backend):
    """No graph break (fullgraph=True), forward and backward, the same numbers as eager. (The
    BatchNorm variant uses the aot_eager backend: the same capture and AOT autograd, without the
    minutes of C++ compilation inductor needs on a CPU.)"""
    torch._dynamo.reset()
    eager = _model(bn).to(device).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, dynamic=dynamic, backend=backend)
    for shape in ((2, 3, 9, 10), (3, 3, 7, 11)):
        x = torch.randn(shape, device=device)
        y_c = compiled(x)
        y_e = eager(x)
        torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
        y_c.square().mean().backward()
        y_e.square().mean().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-5, atol=1e-6, msg=name)
    for b_e, b_c in zip(eager.buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b_c, b_e)


@pytest.mark.parametrize("bn", [False, True], ids=["default", "bn-train"])
@pytest.mark.parametrize("dtype", [torch.bfloat16] + ([torch.float16] if HAS_CUDA else []), ids=str)
def test_autocast(triton_backend, device, dtype, bn):
    """Under autocast the output dtype follows the eager reference's (x's dtype, by promotion of
    x * gate), parameters stay fp32, the arithmetic inside stays fp32 (the same numbers as
    without autocast), and the reference under autocast agrees to the autocast dtype's precision."""
    m = cbam_fast.CBAM(16, 4, spatial_bn=bn).to(device).train()
    for x_dtype in (torch.float32, dtype):
        x = tie_free_input((2, 16, 6, 7), x_dtype, module_gate_fn(m), device)
        plain = copy.deepcopy(m)(x)
        ref_module = copy.deepcopy(m)
        with torch.autocast(device_type=device, dtype=dtype):
            y = m(x)
            ref = cbam_fast.reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight,
                                           bn=ref_module.bn)
        assert y.dtype == ref.dtype == x_dtype
        assert m.fc1.weight.dtype == torch.float32
        torch.testing.assert_close(y, plain, rtol=0, atol=0)
        torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_torch_export(triton_backend, device):
    m = _model().to(device).eval()
    x = torch.randn(2, 3, 9, 10, device=device)
    ep = torch.export.export(m, (x,))
    assert any("cbam_fast.forward" in str(n.target) for n in ep.graph.nodes)
    x2 = torch.randn(2, 3, 9, 10, device=device)
    torch.testing.assert_close(ep.module()(x2), m(x2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-exporter", "torchscript-exporter"])
def test_onnx_export_runs_in_onnxruntime(triton_backend, tmp_path, dynamo):
    onnx = pytest.importorskip("onnx", reason="onnx is installed by scripts/run.sh where PyPI is reachable")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is installed by scripts/run.sh where PyPI is reachable")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    m = _model(bn=True).eval()
    with torch.no_grad():
        m[1].bn.running_mean.fill_(0.2)
        m[1].bn.running_var.fill_(1.5)
    x = torch.randn(2, 3, 9, 10)
    path = tmp_path / "cbam.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=dynamo)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any(o.startswith("cbam") or "Adaptive" in o or o in ("MaxPool", "GlobalMaxPool") for o in ops), ops
    assert "ReduceMax" in ops
    sess = ort.InferenceSession(str(path))
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), m(x).detach(), rtol=1e-4, atol=1e-5)


def test_deterministic_mode_bitwise(triton_backend, device):
    m = _model(bn=True).to(device).train()
    x = torch.randn(2, 3, 9, 10, device=device)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            mm = copy.deepcopy(m)
            y = mm(x)
            y.square().mean().backward()
            runs.append((y.detach(), [p.grad for p in mm.parameters()], list(mm.buffers())))
    finally:
        torch.use_deterministic_algorithms(False)
    (y0, g0, b0), (y1, g1, b1) = runs
    assert torch.equal(y0, y1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert all(torch.equal(a, b) for a, b in zip(b0, b1))


def test_save_load_round_trip(triton_backend, device, tmp_path):
    m = _model(bn=True).to(device).eval()
    x = torch.randn(2, 3, 9, 10, device=device)
    with torch.no_grad():
        y = m(x)
    torch.save(m, tmp_path / "model.pt")
    torch.save(m.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    fresh = _model(bn=True, seed=99).to(device).eval()
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
        assert torch.equal(fresh(x), y)


# ----------------------------------------------------------------------------- torch.func, forward AD, double backward, TorchScript
# A custom_op has no forward-mode or functorch rule: under a transform cbam_fast.cbam takes the
# reference ops (exact), and create_graph=True recomputes the backward through them. Each test
# runs on the Triton path (the one that gave zero tangents and misleading errors) and compares
# with the reference math under the same transform, or with the fused path's own plain autograd.


class _ReferenceOf(nn.Module):
    """cbam_fast.reference.cbam over a CBAM's own submodules (the same parameter names), so that
    torch.func.functional_call substitutes the same parameters into both."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.fc1, self.fc2, self.conv, self.bn = m.fc1, m.fc2, m.conv, m.bn

    def forward(self, x):
        return cbam_fast.reference.cbam(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                        self.conv.weight, self.conv.bias, channel_pool=self.m.channel_pool,
                                        spatial_pool=self.m.spatial_pool, bn=self.bn)


def _small_cbam(bn, device, seed=7):
    """fp64 CBAM with every kind of parameter (both MLP biases, a conv bias, the [mean, max]
    conv); bn: "none", "train" (batch statistics) or "eval" (running statistics)."""
    torch.manual_seed(seed)
    m = cbam_fast.CBAM(4, 2, 3, conv_bias=True, spatial_pool="mean_max", spatial_bn=bn != "none").double().to(device)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.shape == (1,) else 0.0))
        if m.bn is not None:
            m.bn.running_mean.fill_(0.2)
            m.bn.running_var.fill_(0.8)
    return m.train(bn == "train")


def _transform_case(bn, device):
    """bn "train": batch statistics without running statistics, as torch.func wants a BatchNorm
    (torch.func.replace_all_batch_norm_modules_: an nn.BatchNorm2d updating captured buffers is
    refused inside grad/vjp/jvp by PyTorch itself)."""
    m = _small_cbam(bn, device)
    if bn == "train":
        torch.func.replace_all_batch_norm_modules_(m)
    ref = _ReferenceOf(copy.deepcopy(m))
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = tie_free_input((2, 4, 3, 3), torch.float64, module_gate_fn(m), device)

    def fast(p, xx):
        return torch.func.functional_call(m, p, (xx,))

    def slow(p, xx):
        return torch.func.functional_call(ref, p, (xx,))

    return m, ref, params, x, fast, slow


def _assert_trees_close(a, b):
    flat_a, spec_a = torch.utils._pytree.tree_flatten(a)
    flat_b, spec_b = torch.utils._pytree.tree_flatten(b)
    assert spec_a == spec_b
    for u, v in zip(flat_a, flat_b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    assert sum(v.abs().sum() for v in flat_b) > 0  # a meaningful comparison: not all zeros


TRANSFORMS = {
    "grad": lambda f, p, x: torch.func.grad(lambda pp, xx: f(pp, xx).square().sum(), argnums=(0, 1))(p, x),
    "vjp": lambda f, p, x: torch.func.vjp(f, p, x)[1](torch.linspace(-1, 1, x.numel(), dtype=x.dtype,
                                                                     device=x.device).view_as(x)),
    "jacrev": lambda f, p, x: torch.func.jacrev(lambda xx: f(p, xx))(x),
    "jvp": lambda f, p, x: torch.func.jvp(f, (p, x), ({n: torch.ones_like(t) for n, t in p.items()},
                                                      torch.cos(torch.arange(x.numel(), dtype=x.dtype,
                                                                             device=x.device)).view_as(x))),
    "jacfwd": lambda f, p, x: torch.func.jacfwd(lambda xx: f(p, xx))(x),
    "hessian": lambda f, p, x: torch.func.hessian(lambda xx: f(p, xx).square().sum())(x[:1, :, :2, :2].contiguous()),
}


@pytest.mark.parametrize("transform,bn", [(t, bn) for t in TRANSFORMS for bn in ("none", "eval", "train")
                                          if t != "hessian" or bn == "none"])
def test_torch_func_transforms_are_exact(triton_backend, device, transform, bn):
    """grad, vjp, jacrev (reverse mode), jvp, jacfwd (forward mode: zero tangents before) and
    hessian through the module on the Triton path equal the same transform of the reference
    math; the module's buffers are left as the reference's."""
    m, ref, params, x, fast, slow = _transform_case(bn, device)
    got = TRANSFORMS[transform](fast, params, x)
    want = TRANSFORMS[transform](slow, params, x)
    _assert_trees_close(got, want)
    for b_fast, b_ref in zip(m.buffers(), ref.m.buffers()):
        torch.testing.assert_close(b_fast, b_ref, rtol=0, atol=0)


def test_batch_norm_updating_buffers_is_refused_as_by_pytorch(triton_backend, device):
    """A training-mode BatchNorm with running statistics under torch.func.grad: PyTorch refuses
    nn.BatchNorm2d's in-place update of captured buffers; cbam_fast gives the same error (no
    silent result)."""
    m, ref, params, x, fast, slow = _transform_case("eval", device)
    m.train()
    ref.train()
    for f in (fast, slow):
        with pytest.raises(RuntimeError, match="in-place operation"):
            torch.func.grad(lambda p, xx: f(p, xx).sum())(params, x)


def test_torch_func_grad_equals_the_fused_backward(triton_backend, device):
    """torch.func.grad (routed to the reference ops) agrees with plain autograd through the
    kernels, and a plain call still runs the kernels (no reference op outside a transform)."""
    m, _, params, x, fast, _ = _transform_case("train", device)
    got = torch.func.grad(lambda p, xx: fast(p, xx).square().sum(), argnums=(0, 1))(params, x)
    m2 = _small_cbam("train", device)
    torch.func.replace_all_batch_norm_modules_(m2)
    xx = x.clone().requires_grad_()
    calls = []
    real = cbam_fast.reference.cbam
    try:
        cbam_fast.reference.cbam = lambda *a, **k: calls.append(1) or real(*a, **k)
        y = m2(xx)
    finally:
        cbam_fast.reference.cbam = real
    assert not calls, "a plain call on the Triton path must not take the reference ops"
    want = torch.autograd.grad(y.square().sum(), [*m2.parameters(), xx])
    for (name, g), w in zip(got[0].items(), want[:-1]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(got[1], want[-1], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bn", ["none", "eval"])
def test_vmap_is_exact(triton_backend, device, bn):
    """vmap over a stack of batches equals the fused module applied to each batch in a loop."""
    m, _, params, x, fast, _ = _transform_case(bn, device)
    xs = torch.stack([x, x.flip(-1), -x])
    got = torch.func.vmap(lambda xx: fast(params, xx))(xs)
    with torch.no_grad():
        want = torch.stack([m(xx) for xx in xs])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_forward_mode_dual_tensors_are_exact(triton_backend, device):
    """torch.autograd.forward_ad dual tensors (input and parameters): the tangent is the
    reference's (before: NotImplementedError from the op's missing jvp)."""
    import torch.autograd.forward_ad as fwAD

    m, ref, params, x, _, slow = _transform_case("eval", device)
    tx = torch.randn_like(x)
    tp = {n: torch.randn_like(p) for n, p in params.items()}
    _, want = torch.func.jvp(slow, (params, x), (tp, tx))
    with fwAD.dual_level():
        dual_params = {n: fwAD.make_dual(p, tp[n]) for n, p in params.items()}
        y = torch.func.functional_call(m, dual_params, (fwAD.make_dual(x, tx),))
        got = fwAD.unpack_dual(y).tangent
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bn", ["none", "train", "eval"])
def test_double_backward_same_on_every_backend(monkeypatch, device, bn):
    """create_graph=True: first and second derivatives (of a gradient penalty) through the
    Triton path equal the torch backend's, fp64; a training-mode BatchNorm updates its running
    statistics once per forward on both (the recomputation in backward updates nothing)."""
    results = {}
    for chosen in ("triton", "torch"):
        monkeypatch.setenv("CBAM_FAST_BACKEND", chosen)
        m = _small_cbam(bn, device)
        x = tie_free_input((2, 4, 3, 3), torch.float64, module_gate_fn(m), device).requires_grad_()
        inputs = [x, *m.parameters()]
        y = m(x)
        first = torch.autograd.grad(y.square().sum(), inputs, create_graph=True)
        penalty = sum((g * torch.linspace(0.5, 1.5, g.numel(), dtype=g.dtype, device=g.device).view_as(g)).square().sum()
                      for g in first)
        second = torch.autograd.grad(penalty, inputs)
        results[chosen] = (y.detach(), [g.detach() for g in first], second, [b.clone() for b in m.buffers()])
    (y_t, g_t, h_t, b_t), (y_r, g_r, h_r, b_r) = results["triton"], results["torch"]
    torch.testing.assert_close(y_t, y_r, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_t + list(h_t), g_r + list(h_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        assert b.abs().sum() > 0
    for a, b in zip(b_t, b_r):
        # the batch statistics are fp64 reductions in two summation orders (the kernels' tiles,
        # PyTorch's), equal to the last bits only by chance: an fp64 rounding apart at most. A
        # second update (the recomputation's) would move them by momentum-sized amounts.
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
        else:
            assert torch.equal(a, b)
    if bn == "train":
        assert int(b_t[-1]) == 1  # num_batches_tracked: one forward, one update


def test_plain_backward_keeps_the_kernels(triton_backend, device, monkeypatch):
    """Only create_graph=True takes the recomputation; a plain backward (also inside
    torch.enable_grad()) runs the kernels' backward."""
    def recompute(*args):
        raise AssertionError("the recomputation ran for a plain backward")

    monkeypatch.setattr(cbam_fast.ops, "_backward_with_graph", recompute)
    m = _small_cbam("train", device)
    x = tie_free_input((2, 4, 3, 3), torch.float64, module_gate_fn(m), device).requires_grad_()
    with torch.enable_grad():
        m(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(AssertionError, match="recomputation ran"):
        torch.autograd.grad(m(x).sum(), x, create_graph=True)


def test_gradgradcheck_on_the_triton_path(triton_backend, device):
    """torch.autograd.gradgradcheck (numerical second derivatives) through the Triton path with a
    training-mode BatchNorm, in x and the conv weight, on a tiny shape."""
    m = cbam_fast.CBAM(2, 1, 3, conv_bias=True, spatial_bn=True).double().to(device).train()
    x = tie_free_input((2, 2, 2, 3), torch.float64, module_gate_fn(m), device).requires_grad_()
    w = m.conv.weight.detach().clone().requires_grad_()

    def f(xx, ww):
        return cbam_fast.cbam(xx, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, ww, m.conv.bias, bn=m.bn)

    assert torch.autograd.gradgradcheck(f, (x, w), fast_mode=True)


def test_torch_jit_script_is_a_clear_error(triton_backend):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), cbam_fast.CBAM(8, 2, 3))
    with pytest.raises(RuntimeError, match=r"does not support torch.jit.script.*torch.jit.trace"):
        torch.jit.script(model)
    assert isinstance(model[1], cbam_fast.CBAM)  # the model is left as it was


def test_torch_jit_trace_keeps_working(triton_backend, device):
    """The trace records the fused op; the traced model gives the eager numbers and gradients."""
    model = _model(bn=True).to(device).eval()
    x = torch.randn(2, 3, 5, 6, device=device)
    traced = torch.jit.trace(model, (x,))
    assert "cbam_fast::forward" in str(traced.graph) or "cbam_fast::forward" in str(traced.inlined_graph)
    x2 = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    y_t, y_e = traced(x2), model(x2)
    torch.testing.assert_close(y_t, y_e, rtol=1e-6, atol=1e-7)
    (g_t,) = torch.autograd.grad(y_t.square().sum(), x2)
    (g_e,) = torch.autograd.grad(y_e.square().sum(), x2)
    torch.testing.assert_close(g_t, g_e, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, port, x, target, state, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        model.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        per = x.shape[1] // world
        for step in range(x.shape[0]):
            opt.zero_grad()
            xs, ts = x[step, rank * per:(rank + 1) * per], target[step, rank * per:(rank + 1) * per]
            (ddp(xs) - ts).square().mean().backward()
            opt.step()
        torch.save({n: p.detach() for n, p in model.named_parameters()}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel(triton_backend, tmp_path):
    """2 gloo processes on CPU train through the Triton kernels (interpreter); both ranks end with
    the same parameters as one process trained on the same global batches."""
    gen = torch.Generator().manual_seed(5)
    steps, batch = 2, 4
    x = torch.randn(steps, batch, 3, 5, 6, generator=gen)
    target = torch.randn(steps, batch, 4, 5, 6, generator=gen)
    state = _model().state_dict()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "params")
    mp.spawn(_ddp_worker, args=(2, port, x, target, state, out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    single = _model()
    single.load_state_dict(state)
    opt = torch.optim.SGD(single.parameters(), lr=0.1)
    for step in range(steps):
        opt.zero_grad()
        (single(x[step]) - target[step]).square().mean().backward()
        opt.step()
    for name, p in single.named_parameters():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs across ranks"
        torch.testing.assert_close(ranks[0][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device")
def test_cuda_graph_capture_and_replay():
    m = cbam_fast.CBAM(64, 16).cuda()
    x = torch.randn(4, 64, 14, 14, device="cuda", requires_grad=True)
    static_dy = torch.randn(4, 64, 14, 14, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up (compiles kernels) outside the capture
            m(x).backward(static_dy)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    for p in m.parameters():
        p.grad = None
    with torch.cuda.graph(graph):
        y = m(x)
        y.backward(static_dy)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    x_ref = x.detach().clone().requires_grad_()
    ref = cbam_fast.reference.cbam(x_ref, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight)
    ref.backward(static_dy)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="streams need a CUDA device")
def test_concurrent_streams_and_repeated_graph_replays():
    """The tickets' counters: calls on two streams at once (each stream has its own counters),
    and a captured graph replayed several times (its counters, zeroed inside the graph, are
    reset by its own kernels), all equal to the reference."""
    torch.manual_seed(0)
    mods = [cbam_fast.CBAM(c, 16).cuda() for c in (256, 2048)]
    xs = [torch.randn(8, 256, 28, 28, device="cuda"), torch.randn(4, 2048, 7, 7, device="cuda")]
    refs = [cbam_fast.reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight)
            for m, x in zip(mods, xs)]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = [[], []]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(20):
        for i, (m, x, s) in enumerate(zip(mods, xs, streams)):
            with torch.cuda.stream(s):
                outs[i].append(m(x))
    torch.cuda.synchronize()
    for i in range(2):
        for y in outs[i]:
            torch.testing.assert_close(y, refs[i], rtol=1e-4, atol=1e-5)
    m, x = mods[1], xs[1].clone()
    m(x)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = m(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        ref = cbam_fast.reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device")
def test_compile_reduce_overhead():
    m = _model().cuda()
    compiled = torch.compile(m, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        x = torch.randn(2, 3, 16, 16, device="cuda")
        y = compiled(x)
        y.square().mean().backward()
    torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    m = cbam_fast.CBAM(32, 8).to("cuda:1")
    x = torch.randn(2, 32, 9, 9, device="cuda:1", requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.device == x.grad.device == torch.device("cuda:1")
    ref = cbam_fast.reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
