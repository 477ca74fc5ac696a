"""convert() / from_module() for the pooled-gate family: every module people have converts
exactly (output, dx, every parameter gradient, BatchNorm statistics; train and eval, fp32 and
bf16, NCHW and channels_last, the three-way rule of tests/utils.py), keeps the original's
state-dict keys and shapes, and loads into the matching preset; options cbam_fast cannot serve
are refused by name. The originals are re-implemented in tests/originals (the CPU machines have
no timm); the real timm is checked where it imports (the `timm` marker)."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import cbam_fast
from cbam_fast import ChannelAttention, SpatialAttention
from originals import official, seed_tutorial, timm_se, ultralytics_cbam
from test_dropin import _run, randomize
from utils import FORMATS, assert_close_three_way, distinct_rows

C = 16

FAMILY = {  # name -> (the original, convert's implementation key, the matching preset or None)
    "timm-se": (lambda: timm_se.SEModule(C, rd_ratio=1 / 4), "timm_se", lambda: ChannelAttention.timm_se(C, rd_ratio=1 / 4)),
    "timm-se-maxpool-silu-bn-nobias": (
        lambda: timm_se.SEModule(C, rd_ratio=1 / 4, add_maxpool=True, bias=False, act_layer=nn.SiLU,
                                 norm_layer=nn.BatchNorm2d), "timm_se",
        lambda: ChannelAttention.timm_se(C, rd_ratio=1 / 4, add_maxpool=True, bias=False, act_layer=nn.SiLU,
                                         norm_layer=nn.BatchNorm2d)),
    "timm-se-rd-divisor4": (lambda: timm_se.SEModule(C, rd_ratio=1 / 8, rd_divisor=4), "timm_se",
                            lambda: ChannelAttention.timm_se(C, rd_ratio=1 / 8, rd_divisor=4)),
    "timm-se-rd-hard-sigmoid": (lambda: timm_se.SEModule(C, rd_channels=5, gate_layer="hard_sigmoid"), "timm_se",
                                lambda: ChannelAttention.timm_se(C, rd_channels=5, gate_layer="hard_sigmoid")),
    "timm-effective-se": (lambda: timm_se.EffectiveSEModule(C), "timm_effective_se",
                          lambda: ChannelAttention.timm_effective_se(C)),
    "timm-effective-se-maxpool-sigmoid": (lambda: timm_se.EffectiveSEModule(C, add_maxpool=True, gate_layer="sigmoid"),
                                          "timm_effective_se",
                                          lambda: ChannelAttention.timm_effective_se(C, True, "sigmoid")),
    "efficientnet-se-silu": (lambda: timm_se.SqueezeExcite(C, act_layer=nn.SiLU), "timm_squeeze_excite",
                             lambda: ChannelAttention.timm_squeeze_excite(C, act_layer=nn.SiLU)),
    "mobilenetv3-se-hard-sigmoid": (
        lambda: timm_se.SqueezeExcite(C, rd_channels=8, gate_layer=nn.Hardsigmoid), "timm_squeeze_excite",
        lambda: ChannelAttention.timm_squeeze_excite(C, rd_channels=8, gate_layer=nn.Hardsigmoid)),
    "timm-se-timm-hard-sigmoid-layer": (lambda: timm_se.SqueezeExcite(C, gate_layer=timm_se.HardSigmoid),
                                        "timm_squeeze_excite", None),
    "timm-eca": (lambda: timm_se.EcaModule(C), "timm_eca", lambda: ChannelAttention.timm_eca(C)),
    "timm-eca-k5": (lambda: timm_se.EcaModule(kernel_size=5), "timm_eca", lambda: ChannelAttention.timm_eca(kernel_size=5)),
    "official-no-spatial": (lambda: official.CBAM(C, 4, no_spatial=True), "official_no_spatial",
                            lambda: cbam_fast.CBAM.official(C, 4, no_spatial=True)),
    "official-no-spatial-avg": (lambda: official.CBAM(C, 4, ["avg"], no_spatial=True), "official_no_spatial",
                                lambda: ChannelAttention.official(C, 4, ["avg"])),
    "ultralytics-channel": (lambda: ultralytics_cbam.ChannelAttention(C), "ultralytics",
                            lambda: ChannelAttention.ultralytics(C)),
    "ultralytics-spatial": (lambda: ultralytics_cbam.SpatialAttention(7), "ultralytics",
                            lambda: SpatialAttention.ultralytics(7)),
    "ultralytics-spatial-k3": (lambda: ultralytics_cbam.SpatialAttention(3), "ultralytics",
                               lambda: SpatialAttention.ultralytics(3)),
    "seed-channel": (lambda: seed_tutorial.ChannelAttention(C, 4), "tutorial", lambda: ChannelAttention(C, 4)),
    "seed-channel-conv-mlp": (lambda: seed_tutorial.ConvChannelAttention(C, 4), "tutorial", None),
    "seed-spatial": (lambda: seed_tutorial.SpatialAttention(), "tutorial", lambda: SpatialAttention()),
}


def _axis(m):
    return "spatial" if isinstance(m, SpatialAttention) else "channel"


def _bns(m):
    return [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]


def check_converts(orig, kind, device, mode, dtype, fmt):
    """from_module(orig) against the original in dtype and its fp64 copy (the three-way rule)."""
    orig = orig.to(device)
    orig.train(mode == "train")
    orig = orig.to(dtype)
    hi = copy.deepcopy(orig).double()
    from cbam_fast.convert import from_module

    fast = from_module(orig)
    assert isinstance(fast, (ChannelAttention, SpatialAttention)) and fast.converted_from == kind
    assert fast.training == orig.training
    assert list(fast.state_dict()) == list(orig.state_dict())
    assert all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
               for a, b in zip(fast.state_dict().values(), orig.state_dict().values()))
    # batch 4, each sample scaled by its own power of two (exact): a training-mode BatchNorm over
    # the hidden vector normalises over the batch, and samples with nearly equal pooled vectors
    # (2 samples, or rows of the same value set) leave it ill-conditioned: any rounding blows up
    x = distinct_rows((4, C, 9, 11), dtype, device, FORMATS[fmt], _axis(fast))
    x = x * torch.tensor([0.5, 1.0, 2.0, 4.0], device=device, dtype=dtype).view(4, 1, 1, 1)
    w = torch.randn(x.shape, device=device).to(dtype)
    y_fast, dx_fast, g_fast = _run(fast, x, w)
    y_same, dx_same, g_same = _run(orig, x, w)
    y_hi, dx_hi, g_hi = _run(hi, x.double(), w.double())
    assert y_fast.is_contiguous(memory_format=FORMATS[fmt])
    assert_close_three_way("y", y_fast, y_same, y_hi)
    assert_close_three_way("dx", dx_fast, dx_same, dx_hi)
    assert set(g_fast) == set(g_hi)
    for name, g in g_hi.items():
        assert_close_three_way(f"grad {name}", g_fast[name], g_same[name], g)
    for b_fast, b_hi in zip(_bns(fast), _bns(hi)):
        for buf in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(b_fast, buf).double(), getattr(b_hi, buf),
                                       rtol=1e-5 if dtype == torch.float32 else 2e-2, atol=1e-6)
        assert b_fast.num_batches_tracked.item() == b_hi.num_batches_tracked.item() == (4 if mode == "train" else 3)
    return fast


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", FAMILY)
def test_converts_exactly(triton_backend, device, name, mode, dtype, fmt):
    make, kind, _ = FAMILY[name]
    check_converts(randomize(make()), kind, device, mode, dtype, fmt)


@pytest.mark.parametrize("name", [n for n, v in FAMILY.items() if v[2] is not None])
def test_state_dicts_are_interchangeable(triton_backend, device, name):
    """The original's state dict loads into the preset and the preset's into the original; the same
    outputs (eval mode, fp32)."""
    make, _, preset = FAMILY[name]
    orig = randomize(make()).to(device).eval()
    fast = preset().to(device).eval()
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in orig.state_dict().items()}
    fast.load_state_dict(orig.state_dict())
    x = distinct_rows((2, C, 6, 7), torch.float32, device, axis=_axis(fast))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), orig(x), rtol=1e-5, atol=1e-5)
    back = make().to(device).eval()
    back.load_state_dict(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), orig(x), rtol=1e-6, atol=1e-6)


class _SENet(nn.Module):
    """A small model holding gates of several kinds, a shared one, and a CBAM."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.se = timm_se.SEModule(C, rd_ratio=1 / 4)
        self.block = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), timm_se.SqueezeExcite(C, act_layer=nn.SiLU),
                                   nn.ReLU(), timm_se.EcaModule(C))
        self.seed = nn.Sequential(seed_tutorial.ChannelAttention(C, 4), nn.Conv2d(C, C, 1), seed_tutorial.SpatialAttention())
        self.head = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.head(self.seed(self.block(self.se(self.stem(x)))))


def test_convert_a_model(triton_backend, device):
    model = randomize(_SENet()).to(device).eval()
    x = torch.randn(2, 3, 7, 8, device=device)
    with torch.no_grad():
        want = model(x)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    new, replaced = cbam_fast.convert(copy.deepcopy(model), return_replaced=True)
    assert sorted(replaced) == sorted([("se", "timm_se"), ("block.1", "timm_squeeze_excite"), ("block.3", "timm_eca"),
                                       ("seed.0", "tutorial"), ("seed.2", "tutorial")])
    assert isinstance(new.se, ChannelAttention) and isinstance(new.seed[2], SpatialAttention)
    assert {k: v.shape for k, v in new.state_dict().items()} == keys
    with torch.no_grad():
        torch.testing.assert_close(new(x), want, rtol=1e-5, atol=1e-5)
    again, replaced_again = cbam_fast.convert(new, return_replaced=True)
    assert again is new and replaced_again == []
    new.load_state_dict(model.state_dict())


@pytest.mark.parametrize("factory,option", [
    (lambda: timm_se.SEModule(C, act_layer=nn.GELU), "act_layer=GELU"),
    (lambda: timm_se.SEModule(C, gate_layer="tanh"), "gate_layer=Tanh"),
    (lambda: timm_se.SEModule(C, norm_layer=lambda n: nn.GroupNorm(2, n)), "norm_layer=GroupNorm"),
    (lambda: timm_se.EcaModule(C, use_mlp=True), "use_mlp=True"),
    (lambda: official.CBAM(C, 4, ["avg", "lp"], no_spatial=True), "pool_types"),
], ids=["se-gelu", "se-tanh-gate", "se-groupnorm", "eca-mlp", "official-no-spatial-lp"])
def test_unserved_options_are_refused(factory, option):
    m = factory()
    from cbam_fast.convert import from_module

    with pytest.raises(cbam_fast.UnsupportedModule, match=option):
        from_module(m)
    wrapper = nn.Sequential(nn.Identity(), m)
    with pytest.warns(UserWarning, match=f"left 1 untouched.*{option}"):
        out, replaced = cbam_fast.convert(wrapper, return_replaced=True)
    assert out[1] is m and replaced == []


def test_luuuyi_style_halves_are_left_alone():
    """Halves that return their gate (not x times it) are parts of a composition: not gates, left
    as they are without a warning."""
    from originals import luuuyi_cbam

    import warnings

    pair = luuuyi_cbam.CBAMPair(C)
    for half in (pair.ca, pair.sa):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out, replaced = cbam_fast.convert(half, return_replaced=True)
        assert out is half and replaced == []


# ----------------------------------------------------------------------------- the real timm

REAL = {  # name -> (module path, factory given the module, implementation key)
    "SEModule": ("timm.layers.squeeze_excite", lambda t: t.SEModule(C, rd_ratio=1 / 4), "timm_se"),
    # (bias=False with the BatchNorm: in training mode the gradient of a bias right before a
    # BatchNorm is 0, so any implementation's value is rounding noise, not comparable by the rule)
    "SEModule-maxpool-bn-silu": ("timm.layers.squeeze_excite", lambda t: t.SEModule(
        C, rd_ratio=1 / 4, add_maxpool=True, bias=False, act_layer=nn.SiLU, norm_layer=nn.BatchNorm2d), "timm_se"),
    "EffectiveSEModule": ("timm.layers.squeeze_excite", lambda t: t.EffectiveSEModule(C), "timm_effective_se"),
    "SqueezeExcite-hard-sigmoid": ("timm.models._efficientnet_blocks", lambda t: t.SqueezeExcite(
        C, act_layer=nn.SiLU, gate_layer="hard_sigmoid"), "timm_squeeze_excite"),
    "EcaModule": ("timm.layers.eca", lambda t: t.EcaModule(C), "timm_eca"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", REAL)
def test_real_timm_modules_convert_exactly(triton_backend, device, name, mode, dtype):
    pytest.importorskip("timm", reason="timm is not installed (it needs torchvision)")
    path, factory, kind = REAL[name]
    mod = importlib.import_module(path)
    check_converts(randomize(factory(mod)), kind, device, mode, dtype, "channels_last")


def test_real_timm_model_converts(triton_backend, device):
    """A whole timm SE model (the README's example): every SE module replaced, the same outputs and
    gradients, the same state-dict keys."""
    timm = pytest.importorskip("timm", reason="timm is not installed (it needs torchvision)")
    model = timm.create_model("seresnet18", pretrained=False, num_classes=10).to(device).eval()
    x = torch.randn(1, 3, 32, 32, device=device)
    ref = copy.deepcopy(model)
    new, replaced = cbam_fast.convert(model, return_replaced=True)
    assert len(replaced) == 8 and all(kind == "timm_se" for _, kind in replaced)
    assert list(new.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(new(x), ref(x), rtol=1e-4, atol=1e-5)
