"""The presets mirror their originals: constructor signature (names, order, defaults), hidden-width
rule over a grid of channel counts and ratios, the arguments they refuse (and why), and for the
tutorial CBAM (seed document 000) exact outputs, gradients and state dicts.

The originals are the re-implementations in tests/originals/ (always run) and, where timm
imports, timm itself (only those cases skip without it)."""

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbam_fast
from originals import official, seed_tutorial, timm_cbam
from utils import module_gate_fn, tie_free_input

CHANNELS = [1, 2, 3, 7, 15, 16, 17, 45, 64, 100, 255, 256]
RD_RATIOS = [0, 1 / 32, 1 / 16, 1 / 8, 0.2, 0.25, 1 / 3, 0.5, 0.7, 1.0]
RD_DIVISORS = [1, 8]
REDUCTIONS = [1, 2, 3, 4, 8, 16, 32]


def _params(fn, drop_first=True):
    """(name, kind, default) of a callable's parameters, without self/cls and **kwargs."""
    params = list(inspect.signature(fn).parameters.values())
    return [(p.name, p.kind, p.default) for p in params if p.kind != p.VAR_KEYWORD]


def _preset_params(preset):
    """A preset's parameters (the bound classmethod drops cls); only a trailing **kw (cbam_fast's
    own options, keep_attention, ...) may come on top of the original's."""
    params = list(inspect.signature(preset).parameters.values())
    extra = [p for p in params if p.kind in (p.VAR_POSITIONAL, p.KEYWORD_ONLY)]
    assert not extra, f"{preset.__name__} has parameters the original does not: {extra}"
    return _params(preset)


def _init_params(cls):
    return _params(cls.__init__)[1:]  # drop self


def _same_signature(preset, original_cls):
    assert _preset_params(preset) == _init_params(original_cls)


# ----------------------------------------------------------------------------- seed document 000
# tests/originals/seed_tutorial.py: ChannelAttention, SpatialAttention and seed_tutorial.CBAM
# (channel_attention, then spatial_attention), as the document writes them


def _seed_keys_to_preset(state):
    """The document's parameter names -> cbam_fast.CBAM's (same shapes: Linear layers, 7x7 conv)."""
    rename = {"channel_attention.fc.0.": "fc1.", "channel_attention.fc.2.": "fc2.", "spatial_attention.conv.": "conv."}
    out = {}
    for key, value in state.items():
        prefix = next(p for p in rename if key.startswith(p))
        out[rename[prefix] + key[len(prefix):]] = value
    return out


# ----------------------------------------------------------------------------- signatures


def test_timm_signatures_are_timms():
    """CBAM.timm / timm_light take CbamModule's / LightCbamModule's arguments in timm's order with
    timm's defaults: (channels, rd_ratio=1/16, rd_channels=None, rd_divisor=1,
    spatial_kernel_size=7, act_layer=nn.ReLU, gate_layer='sigmoid', mlp_bias=False)."""
    _same_signature(cbam_fast.CBAM.timm, timm_cbam.CbamModule)
    _same_signature(cbam_fast.CBAM.timm_light, timm_cbam.LightCbamModule)
    names = [n for n, _, _ in _preset_params(cbam_fast.CBAM.timm)]
    assert names == ["channels", "rd_ratio", "rd_channels", "rd_divisor", "spatial_kernel_size", "act_layer",
                     "gate_layer", "mlp_bias", "device", "dtype"]
    m = cbam_fast.CBAM.timm(32, dtype=torch.float64)
    assert m.fc1.weight.dtype == m.bn.running_var.dtype == torch.float64


def _same_as_real_timm(preset, original_cls):
    """timm >= 1.0.2x ends with the factory arguments (device=None, dtype=None); an older timm
    lacks them: then the rest must match."""
    ours, theirs = _preset_params(preset), _init_params(original_cls)
    if "device" not in [n for n, _, _ in theirs]:
        assert [n for n, _, _ in ours[len(theirs):]] == ["device", "dtype"]
        ours = ours[:len(theirs)]
    assert ours == theirs


def test_official_signature_is_the_authors():
    _same_signature(cbam_fast.CBAM.official, official.CBAM)
    assert [(n, d) for n, _, d in _preset_params(cbam_fast.CBAM.official)] == [
        ("gate_channels", inspect.Parameter.empty), ("reduction_ratio", 16), ("pool_types", ["avg", "max"]),
        ("no_spatial", False)]


def test_tutorial_signature_and_se_style_alias():
    params = _preset_params(cbam_fast.CBAM.tutorial)
    assert [(n, d) for n, _, d in params] == [("channels", inspect.Parameter.empty), ("reduction_ratio", 16),
                                              ("kernel_size", 7)]
    # the document's ChannelAttention(in_channels, reduction_ratio=16): the same ratio default
    assert dict((n, d) for n, _, d in _init_params(seed_tutorial.ChannelAttention))["reduction_ratio"] == 16
    assert _preset_params(cbam_fast.CBAM.se_style) == params


def test_real_timm_signatures():
    cbam = pytest.importorskip("timm.layers.cbam", reason="timm is not importable here (it imports torchvision)")
    _same_as_real_timm(cbam_fast.CBAM.timm, cbam.CbamModule)
    _same_as_real_timm(cbam_fast.CBAM.timm_light, cbam.LightCbamModule)
    # and the re-implementation in tests/originals is timm's too (the newest timm's, device/dtype included)
    for ours, theirs in ((timm_cbam.CbamModule, cbam.CbamModule), (timm_cbam.LightCbamModule, cbam.LightCbamModule)):
        want = _init_params(theirs)
        assert _init_params(ours)[:len(want)] == want


# ----------------------------------------------------------------------------- hidden widths


def _timm_grid():
    for c in CHANNELS:
        for r in RD_RATIOS:
            for d in RD_DIVISORS:
                yield c, r, d


@pytest.mark.parametrize("light", [False, True], ids=["CbamModule", "LightCbamModule"])
def test_timm_hidden_width_is_timms(light):
    """Over the grid, the preset's hidden width is the width of timm's module built with the same
    arguments, positionally and by keyword; rd_channels, when given, wins."""
    preset = cbam_fast.CBAM.timm_light if light else cbam_fast.CBAM.timm
    original = timm_cbam.LightCbamModule if light else timm_cbam.CbamModule
    for c, r, d in _timm_grid():
        want = original(c, r, None, d).channel.fc1.out_channels
        assert preset(c, r, None, d).hidden_channels == want, (c, r, d)
        assert preset(c, rd_ratio=r, rd_divisor=d).hidden_channels == want, (c, r, d)
    assert preset(45, rd_ratio=0.7).hidden_channels == 31  # timm rounds 45 * 0.7, not 45 / (1 / 0.7)
    assert preset(45, rd_ratio=0).hidden_channels == 1  # timm's floor (rd_divisor)
    assert preset(45, rd_ratio=0, rd_divisor=8).hidden_channels == 8
    assert preset(40, 0.25, 7).hidden_channels == original(40, 0.25, 7).channel.fc1.out_channels == 7
    assert preset(40, 0.25, 0).hidden_channels == original(40, 0.25, 0).channel.fc1.out_channels == 10  # 0: computed
    assert preset(32, 0.25, None, 8, 5).kernel_size == 5  # spatial_kernel_size is the 5th positional argument


def test_real_timm_hidden_width():
    cbam = pytest.importorskip("timm.layers.cbam", reason="timm is not importable here (it imports torchvision)")
    for c, r, d in _timm_grid():
        assert cbam_fast.CBAM.timm(c, r, None, d).hidden_channels == cbam.CbamModule(c, r, None, d).channel.fc1.out_channels
        assert (cbam_fast.CBAM.timm_light(c, r, None, d).hidden_channels
                == cbam.LightCbamModule(c, r, None, d).channel.fc1.out_channels)


def test_official_hidden_width_is_the_authors():
    """C // r exactly; where the authors' module gets a width of 0 (C < r) the preset refuses
    with a clear ValueError (not a crash deep inside)."""
    for c in CHANNELS:
        for r in REDUCTIONS:
            want = official.CBAM(c, r).ChannelGate.mlp[1].out_features
            if want == 0:
                with pytest.raises(ValueError, match="hidden width gate_channels // reduction_ratio"):
                    cbam_fast.CBAM.official(c, r)
            else:
                assert cbam_fast.CBAM.official(c, r).hidden_channels == want, (c, r)


def test_tutorial_hidden_width_is_the_documents():
    for c in CHANNELS:
        for r in REDUCTIONS:
            want = seed_tutorial.ChannelAttention(c, r).fc[0].out_features
            if want == 0:
                with pytest.raises(ValueError, match="hidden width channels // reduction_ratio"):
                    cbam_fast.CBAM.tutorial(c, r)
            else:
                assert cbam_fast.CBAM.tutorial(c, r).hidden_channels == want, (c, r)


# ----------------------------------------------------------------------------- refused arguments


@pytest.mark.parametrize("preset", ["timm", "timm_light"])
@pytest.mark.parametrize("kwargs,match", [
    (dict(act_layer=nn.SiLU), "act_layer=SiLU"),
    (dict(act_layer=nn.GELU), "act_layer=GELU"),
    (dict(gate_layer="hard_sigmoid"), "gate_layer=hard_sigmoid"),
    (dict(gate_layer=nn.Hardsigmoid), "gate_layer=Hardsigmoid"),
    (dict(rd_divisor=0), "rd_divisor must be an int >= 1"),
])
def test_timm_refuses_what_it_cannot_serve(preset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(cbam_fast.CBAM, preset)(32, **kwargs)


def test_timm_accepts_its_default_layers():
    for act, gate in ((nn.ReLU, "sigmoid"), (nn.ReLU, nn.Sigmoid)):
        m = cbam_fast.CBAM.timm(32, act_layer=act, gate_layer=gate)
        assert m.hidden_channels == 2 and m.spatial_pool == "mean_max" and m.bn is not None


@pytest.mark.parametrize("pool_types,match", [
    (["avg", "max", "lp"], "'lp'"),
    (["lse"], "'lse'"),
    (["avg", "lp", "lse"], "'lp', 'lse'"),
    (["max"], "'max' alone"),
    (["avg", "avg"], "repeated pool types"),
    ([], "an empty list"),
    ("avg", "must be a list"),
])
def test_official_refuses_pool_types(pool_types, match):
    with pytest.raises(ValueError, match=match):
        cbam_fast.CBAM.official(32, 4, pool_types)


def test_official_serves_pool_types():
    assert cbam_fast.CBAM.official(32, 4, ["avg", "max"]).channel_pool == "avg_max"
    assert cbam_fast.CBAM.official(32, 4, ["max", "avg"]).channel_pool == "avg_max"  # summed: either order
    assert cbam_fast.CBAM.official(32, 4, ("avg",)).channel_pool == "avg"
    assert cbam_fast.CBAM.official(32, 4, channel_pool="avg").channel_pool == "avg"  # the keyword use of today
    with pytest.raises(ValueError, match="contradicts"):
        cbam_fast.CBAM.official(32, 4, ["avg"], channel_pool="avg_max")


def test_official_no_spatial_is_the_channel_gate_alone():
    """The authors' no_spatial=True: a ChannelAttention with the authors' ChannelGate keys."""
    m = cbam_fast.CBAM.official(32, 4, no_spatial=True)
    assert isinstance(m, cbam_fast.ChannelAttention)
    theirs = official.CBAM(32, 4, no_spatial=True)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    m.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(m(x), theirs(x), rtol=1e-5, atol=1e-6)
    assert cbam_fast.CBAM.official(32, 4, ["avg"], True).pooling == "avg"
    with pytest.raises(ValueError, match="no cbam_fast keywords"):
        cbam_fast.CBAM.official(32, 4, no_spatial=True, keep_attention=True)


def test_presets_keep_their_keywords():
    m = cbam_fast.CBAM.timm(24, rd_ratio=1 / 5, spatial_kernel_size=5, mlp_bias=True, keep_attention=True)
    assert (m.hidden_channels, m.kernel_size, m.fc1.bias is not None, m.keep_attention) == (5, 5, True, True)
    m = cbam_fast.CBAM.official(gate_channels=24, reduction_ratio=4, keep_attention=True)
    assert (m.hidden_channels, m.bn.momentum, m.keep_attention) == (6, 0.01, True)
    m = cbam_fast.CBAM.tutorial(channels=24, reduction_ratio=4, kernel_size=3)
    assert (m.hidden_channels, m.kernel_size) == (6, 3)


# ----------------------------------------------------------------------------- the original's weights load


def test_timm_state_dict_with_timms_width_loads():
    """timm's CbamModule(45, rd_ratio=0.7) has 31 hidden channels: its state dict loads strictly
    into the preset built with the same arguments, and the two compute the same."""
    torch.manual_seed(0)
    original = timm_cbam.CbamModule(45, rd_ratio=0.7).double().eval()
    with torch.no_grad():
        original.spatial.conv.bn.running_mean.fill_(0.1)
        original.spatial.conv.bn.running_var.fill_(1.3)
    fast = cbam_fast.CBAM.timm(45, rd_ratio=0.7).double().eval()
    fast.load_state_dict(original.state_dict(), strict=True)
    x = tie_free_input((2, 45, 4, 5), torch.float64, module_gate_fn(fast), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), original(x))


def _seed_pair(device, channels=8, reduction=4):
    torch.manual_seed(3)
    seed = seed_tutorial.CBAM(channels, reduction).double().to(device)
    with torch.no_grad():  # away from PyTorch's small default init, so every term matters
        for p in seed.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    fast = cbam_fast.CBAM.tutorial(channels, reduction).double().to(device)
    fast.load_state_dict(_seed_keys_to_preset(seed.state_dict()), strict=True)
    return seed, fast


def test_tutorial_matches_seed_document_000(triton_backend, device):
    """Outputs and every gradient (x and each parameter) equal the document's module's, fp64."""
    seed, fast = _seed_pair(device)
    assert (fast.channel_pool, fast.spatial_pool, fast.bn) == ("avg", "mean_max", None)
    x = tie_free_input((2, 8, 5, 6), torch.float64, module_gate_fn(fast), device)
    dy = torch.randn(2, 8, 5, 6, dtype=torch.float64, device=device)
    outs = []
    for m in (seed, fast):
        xx = x.clone().requires_grad_()
        y = m(xx)
        grads = torch.autograd.grad(y, [xx, *m.parameters()], dy)
        outs.append((y.detach(), grads))
    (y_seed, g_seed), (y_fast, g_fast) = outs
    torch.testing.assert_close(y_fast, y_seed)
    names = ["x"] + [n for n, _ in seed.named_parameters()]
    for name, a, b in zip(names, g_fast, g_seed):
        torch.testing.assert_close(a, b, msg=name)


def test_se_style_is_the_tutorial_with_a_deprecation_warning(triton_backend, device):
    """se_style used [max, mean] (25% error on the document's weights); it is now an alias of
    tutorial: the same module, exact on the document's weights, and it warns."""
    seed, fast = _seed_pair(device)
    with pytest.warns(DeprecationWarning, match="CBAM.tutorial"):
        old = cbam_fast.CBAM.se_style(8, 4).double().to(device)
    assert repr(old) == repr(fast)
    old.load_state_dict(_seed_keys_to_preset(seed.state_dict()), strict=True)
    x = tie_free_input((2, 8, 5, 6), torch.float64, module_gate_fn(old), device)
    with torch.no_grad():
        torch.testing.assert_close(old(x), seed(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cbam_fast.CBAM.tutorial(8, 4)  # the preset itself does not warn


def test_tutorial_state_dict_round_trips():
    """The preset's weights go back into the document's module (same shapes), strictly."""
    seed, fast = _seed_pair("cpu")
    back = seed_tutorial.CBAM(8, 4).double()
    inverse = {"fc1.": "channel_attention.fc.0.", "fc2.": "channel_attention.fc.2.", "conv.": "spatial_attention.conv."}
    state = {next(inverse[p] + k[len(p):] for p in inverse if k.startswith(p)): v for k, v in fast.state_dict().items()}
    back.load_state_dict(state, strict=True)
    for (n, a), b in zip(seed.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), n


def test_tutorial_refuses_a_zero_width():
    with pytest.raises(ValueError, match=r"hidden width channels // reduction_ratio = 8 // 16 is 0"):
        cbam_fast.CBAM.tutorial(8)


def test_reference_math_of_the_tutorial():
    """The preset's own math, spelled out: avg-only channel gate with a biased Linear MLP, biased
    7x7 conv over [mean, max], no BN (the torch backend's reference path)."""
    _, fast = _seed_pair("cpu")
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        cg = torch.sigmoid(fast.fc2(F.relu(fast.fc1(x.mean((2, 3))))))
        x1 = x * cg[:, :, None, None]
        z = fast.conv(torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1))
        torch.testing.assert_close(fast(x), x1 * torch.sigmoid(z))
