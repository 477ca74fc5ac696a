"""Drop-in replacement of the CBAM modules people already have (re-implemented in tests/originals).

For each implementation: from_module / convert keep the weights and buffers, outputs and every
gradient match the original in train and eval mode, fp32 and bf16, both memory formats, through
the Triton kernels; BatchNorm running statistics follow; original state dicts load; options
cbam_fast does not serve are refused.
"""

import copy

import pytest
import torch
from torch import nn

import cbam_fast
from originals import luuuyi_cbam, mmyolo_cbam, official, timm_cbam, ultralytics_cbam
from utils import FORMATS, assert_close_three_way, module_gate_fn, tie_free_input

C = 24
# name -> (factory of the original module, implementation key, preset building the same CBAM)
IMPLS = {
    "official": (lambda: official.CBAM(C, 4), "official", lambda: cbam_fast.CBAM.official(C, 4)),
    "official-avg": (lambda: official.CBAM(C, 4, pool_types=("avg",)), "official",
                     lambda: cbam_fast.CBAM.official(C, 4, channel_pool="avg")),
    "timm": (lambda: timm_cbam.CbamModule(C, rd_ratio=1 / 5), "timm", lambda: cbam_fast.CBAM.timm(C, rd_ratio=1 / 5)),
    "timm-bias-k5": (lambda: timm_cbam.CbamModule(C, spatial_kernel_size=5, mlp_bias=True), "timm",
                     lambda: cbam_fast.CBAM.timm(C, spatial_kernel_size=5, mlp_bias=True)),
    "timm_light": (lambda: timm_cbam.LightCbamModule(C, spatial_kernel_size=3), "timm_light",
                   lambda: cbam_fast.CBAM.timm_light(C, spatial_kernel_size=3)),
    "ultralytics": (lambda: ultralytics_cbam.CBAM(C, 7), "ultralytics", lambda: cbam_fast.CBAM.ultralytics(C, 7)),
    "ultralytics-k3": (lambda: ultralytics_cbam.CBAM(C, 3), "ultralytics", lambda: cbam_fast.CBAM.ultralytics(C, 3)),
    "mmyolo": (lambda: mmyolo_cbam.CBAM(C, 4, 5), "mmyolo", lambda: cbam_fast.CBAM.mmyolo(C, 4, 5)),
    "luuuyi": (lambda: luuuyi_cbam.CBAMPair(C), "luuuyi", lambda: cbam_fast.CBAM.luuuyi(C)),
}


def make_original(name):
    """The original module with every parameter and BN buffer drawn at random (no zeros, no ones)."""
    return randomize(IMPLS[name][0]())


def randomize(m):
    """m with every parameter and BN buffer drawn at random (no zeros, no ones)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.3))
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn_like(mod.running_mean) * 0.3)
                mod.running_var.copy_(torch.rand_like(mod.running_var) + 0.5)
                mod.num_batches_tracked.fill_(3)
    return m


def original_names(fast):
    """{the original's state-dict key: cbam_fast's} of a converted module (what from_module recorded)."""
    return {foreign: ours for group in fast._cbam_fast_keys for foreign, ours, _, _ in group}


def _run(m, x, w):
    x = x.detach().clone().requires_grad_()
    y = m(x)
    (y * w.to(y.dtype)).sum().backward()
    return y, x.grad, {n: p.grad for n, p in m.named_parameters()}


def _bn(m):
    return next((b for b in m.modules() if isinstance(b, nn.BatchNorm2d)), None)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", IMPLS)
def test_from_module_matches_original(triton_backend, device, name, mode, dtype, fmt):
    check_from_module(make_original(name), IMPLS[name][1], device, mode, dtype, fmt)


def check_from_module(orig, kind, device, mode, dtype, fmt):
    """from_module(orig): output, dx, every parameter gradient and the BN running statistics
    against the original in dtype and against its fp64 copy (the three-way rule)."""
    orig = orig.to(device)
    orig.train(mode == "train")
    orig = orig.to(dtype)
    # the fp64 math of the same module: its parameters as rounded to dtype (the rounding of the
    # parameters is the model's, not an error of either implementation)
    hi = copy.deepcopy(orig).double()
    fast = cbam_fast.CBAM.from_module(orig)
    assert isinstance(fast, cbam_fast.CBAM) and fast.training == orig.training and fast.converted_from == kind
    assert next(fast.parameters()).dtype == dtype
    ours = original_names(fast)
    x = tie_free_input((2, C, 9, 11), dtype, module_gate_fn(fast), device, FORMATS[fmt])
    w = torch.randn(x.shape, device=device).to(dtype)

    y_fast, dx_fast, g_fast = _run(fast, x, w)
    y_same, dx_same, g_same = _run(orig, x, w)
    y_hi, dx_hi, g_hi = _run(hi, x.double(), w.double())

    assert y_fast.is_contiguous(memory_format=FORMATS[fmt])
    assert_close_three_way("y", y_fast, y_same, y_hi)
    assert_close_three_way("dx", dx_fast, dx_same, dx_hi)
    assert set(g_hi) <= set(ours) and len(g_fast) == len(g_hi)
    for orig_name, g in g_hi.items():
        assert_close_three_way(f"grad {orig_name}", g_fast[ours[orig_name]].reshape(g.shape), g_same[orig_name], g)
    bn_fast, bn_hi = _bn(fast), _bn(hi)
    if bn_fast is not None:
        for buf in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(bn_fast, buf).double(), getattr(bn_hi, buf),
                                       rtol=1e-5 if dtype == torch.float32 else 2e-2, atol=1e-6)
        assert bn_fast.num_batches_tracked.item() == bn_hi.num_batches_tracked.item() == (4 if mode == "train" else 3)


# The real timm, where it is installed (the GPU machine's image has it). Not on the CPU machines:
# timm imports torchvision, and PyPI's torchvision does not load beside the CPU torch wheel
# ("operator torchvision::nms does not exist"); a matching torch+torchvision pair is a multi-GB
# CUDA build. tests/originals/timm_cbam.py re-implements it for every machine.
REAL_TIMM = {  # name -> (factory given timm.layers.cbam, implementation key, the matching preset)
    "CbamModule": (lambda cbam: cbam.CbamModule(C, rd_ratio=1 / 5), "timm", lambda: cbam_fast.CBAM.timm(C, rd_ratio=1 / 5)),
    "CbamModule-k5-bias": (lambda cbam: cbam.CbamModule(C, spatial_kernel_size=5, mlp_bias=True), "timm",
                           lambda: cbam_fast.CBAM.timm(C, spatial_kernel_size=5, mlp_bias=True)),
    "LightCbamModule": (lambda cbam: cbam.LightCbamModule(C, spatial_kernel_size=3), "timm_light",
                        lambda: cbam_fast.CBAM.timm_light(C, spatial_kernel_size=3)),
}


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", REAL_TIMM)
def test_from_module_matches_real_timm(triton_backend, device, name, mode, dtype, fmt):
    """The real timm modules: recognised by convert(), same numbers as check_from_module asks of
    the re-implementations, and their state dicts load into the presets."""
    real = pytest.importorskip("timm.layers.cbam", reason="timm is not installed (it needs torchvision)")
    factory, kind, preset = REAL_TIMM[name]
    orig = randomize(factory(real))
    assert cbam_fast.convert(nn.Sequential(copy.deepcopy(orig)), return_replaced=True)[1] == [("0", kind)]
    preset().load_state_dict(orig.state_dict())
    check_from_module(orig, kind, device, mode, dtype, fmt)


@pytest.mark.parametrize("name", IMPLS)
def test_original_state_dict_loads_into_preset(triton_backend, device, name):
    orig = make_original(name).to(device).eval()
    fast = IMPLS[name][2]().to(device).eval()
    fast.load_state_dict(orig.state_dict())
    x = tie_free_input((2, C, 6, 7), torch.float32, module_gate_fn(fast), device)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), orig(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "momentum-None"])
def test_batchnorm_running_statistics_over_training_steps(triton_backend, device, momentum):
    orig = make_original("timm").to(device).train()
    orig.spatial.conv.bn.momentum = momentum
    fast = cbam_fast.CBAM.from_module(orig)
    assert fast.bn.momentum == momentum
    opt_o = torch.optim.SGD(orig.parameters(), lr=0.05)
    opt_f = torch.optim.SGD(fast.parameters(), lr=0.05)
    for step in range(3):
        x = tie_free_input((2, C, 5, 6), torch.float32, module_gate_fn(fast), device)
        for m, opt in ((orig, opt_o), (fast, opt_f)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for buf in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast.bn, buf), getattr(orig.spatial.conv.bn, buf), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.conv.weight, orig.spatial.conv.conv.weight, rtol=1e-5, atol=1e-6)


class TinyNet(nn.Module):
    """A small ResNet-style model holding several CBAM variants."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), official.CBAM(C, 4)),
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), timm_cbam.CbamModule(C)),
            nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), ultralytics_cbam.CBAM(C, 3)),
        ])
        self.neck = mmyolo_cbam.CBAM(C, 4, 5)
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.neck(x).mean((2, 3)))


def test_convert_small_model(triton_backend, device):
    torch.manual_seed(7)
    model = TinyNet().to(device).train()
    reference_model = copy.deepcopy(model)
    n_params = sum(p.numel() for p in model.parameters())
    converted, replaced = cbam_fast.convert(model, return_replaced=True)
    assert converted is model
    assert [kind for _, kind in replaced] == ["official", "timm", "ultralytics", "mmyolo"]
    assert [name for name, _ in replaced] == ["blocks.0.2", "blocks.1.2", "blocks.2.2", "neck"]
    assert sum(isinstance(m, cbam_fast.CBAM) for m in converted.modules()) == 4
    assert sum(p.numel() for p in converted.parameters()) == n_params

    opt_r = torch.optim.SGD(reference_model.parameters(), lr=0.01, momentum=0.9)
    opt_c = torch.optim.SGD(converted.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(2, 3, 7, 6, generator=gen).to(device)
        target = torch.randn(2, 5, generator=gen).to(device)
        losses = []
        for m, opt in ((reference_model, opt_r), (converted, opt_c)):
            opt.zero_grad()
            loss = (m(x) - target).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6), f"step {step}: {losses}"
    converted.eval(), reference_model.eval()
    x = torch.randn(2, 3, 7, 6, generator=gen).to(device)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), reference_model(x), rtol=1e-4, atol=1e-5)


def test_convert_replaces_the_root_and_skips_converted():
    m = official.CBAM(C, 4)
    new, replaced = cbam_fast.convert(m, return_replaced=True)
    assert isinstance(new, cbam_fast.CBAM) and replaced == [("<model>", "official")]
    again, replaced_again = cbam_fast.convert(new, return_replaced=True)
    assert again is new and replaced_again == []


@pytest.mark.parametrize(
    "factory,option",
    [
        (lambda: official.CBAM(C, 4, pool_types=("avg", "max", "lp")), "pool_types"),
        (lambda: timm_cbam.CbamModule(C, gate_layer=nn.Hardsigmoid), "gate_layer=Hardsigmoid"),
        (lambda: timm_cbam.CbamModule(C, act_layer=nn.SiLU), "act_layer=SiLU"),
    ],
    ids=["official-lp-pool", "timm-hard-sigmoid", "timm-silu"],
)
def test_unsupported_options_are_refused(factory, option):
    m = factory()
    with pytest.raises(cbam_fast.UnsupportedModule, match=option):
        cbam_fast.CBAM.from_module(m)
    wrapper = nn.Sequential(nn.Identity(), m)
    with pytest.warns(UserWarning, match=f"left 1 untouched.*{option}"):
        out, replaced = cbam_fast.convert(wrapper, return_replaced=True)
    assert out[1] is m and replaced == []


def test_unsupported_kernel_size_is_refused_not_raised():
    m = ultralytics_cbam.CBAM(C, 7)
    m.spatial_attention.cv1 = nn.Conv2d(2, 1, 9, padding=4, bias=False)
    with pytest.raises(cbam_fast.UnsupportedModule, match="spatial kernel size 9"):
        cbam_fast.CBAM.from_module(m)
    with pytest.warns(UserWarning, match="spatial kernel size 9"):
        out, replaced = cbam_fast.convert(nn.Sequential(m), return_replaced=True)
    # the CBAM stays; its channel half alone (an SE-like gate) is served exactly, the 9x9 spatial
    # half is left with its own warning
    assert out[0] is m and replaced == [("0.channel_attention", "ultralytics")]
    assert isinstance(m.channel_attention, cbam_fast.ChannelAttention)


def test_frozen_spatial_bn_keeps_its_mode(triton_backend, device):
    """A model in train() whose spatial BatchNorm was put in eval() (frozen statistics)."""
    orig = make_original("official").to(device).train()
    orig.SpatialGate.spatial.bn.eval()
    fast = cbam_fast.CBAM.from_module(orig)
    assert fast.training and not fast.bn.training
    x = tie_free_input((2, C, 5, 6), torch.float32, module_gate_fn(fast), device)
    before = fast.bn.running_mean.clone()
    torch.testing.assert_close(fast(x), orig(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.bn.running_mean, before)


def test_unsupported_spatial_bn_activation():
    m = timm_cbam.CbamModule(C)
    m.spatial.conv.bn.act = nn.ReLU()
    with pytest.raises(cbam_fast.UnsupportedModule, match="activation after the spatial BatchNorm"):
        cbam_fast.CBAM.from_module(m)


def test_unrecognised_module_is_a_type_error():
    with pytest.raises(TypeError, match="not a CBAM module"):
        cbam_fast.CBAM.from_module(nn.Conv2d(3, 3, 1))


def test_tutorial_preset_variant(triton_backend, device):
    """CBAM.tutorial (document 000's structure; se_style is its deprecated alias): avg-only channel
    branch, reducing MLP with biases, biased conv over [mean, max], no BatchNorm."""
    m = cbam_fast.CBAM.tutorial(C, 4).to(device)
    assert m.channel_pool == "avg" and m.mlp == "reduce" and m.conv.bias is not None and m.bn is None
    x = tie_free_input((2, C, 6, 7), torch.float32, module_gate_fn(m), device)
    ref = cbam_fast.reference.cbam(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.conv.weight, m.conv.bias,
                                   channel_pool="avg", spatial_pool="mean_max")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["official", "timm_light", "ultralytics"])
def test_attention_maps(triton_backend, device, name):
    fast = cbam_fast.CBAM.from_module(make_original(name).to(device).eval())
    fast.keep_attention = True
    x = tie_free_input((2, C, 6, 7), torch.float32, module_gate_fn(fast), device)
    with torch.no_grad():
        y = fast(x)
        _, cg, sg = cbam_fast.reference.cbam(
            x, fast.fc1.weight, fast.fc1.bias, None if fast.fc2 is None else fast.fc2.weight,
            None if fast.fc2 is None else fast.fc2.bias, fast.conv.weight, fast.conv.bias,
            channel_pool=fast.channel_pool, spatial_pool=fast.spatial_pool, bn=fast.bn, return_gates=True)
    assert fast.channel_attention.shape == (2, C) and fast.spatial_attention.shape == (2, 1, 6, 7)
    torch.testing.assert_close(fast.channel_attention, cg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.spatial_attention, sg, rtol=1e-5, atol=1e-6)
    assert y.shape == x.shape
