"""cbam_fast.convert by PyTorch's conventions (issue 14): ``model = cbam_fast.convert(model)``; a
module reached from several places becomes one cbam_fast.CBAM; nothing about training changes
(requires_grad, modes, dtypes, hooks); one module never aborts the walk and every refusal gives
its true reason; checkpoints are interchangeable with the original model's; seed document 000's
CBAM is recognised by structure (any attribute names, or a pair in an nn.Sequential) and its
composition is confirmed, not guessed.

Most tests run cbam_fast's PyTorch path (the kernels are not their point); the few that go
through the Triton kernels take the ``triton_backend`` fixture and small shapes.
"""

import copy
import logging
import warnings
from itertools import chain

import pytest
import torch
from torch import nn

import cbam_fast
from originals import luuuyi_cbam, mmyolo_cbam, official, seed_tutorial, timm_cbam, ultralytics_cbam
from test_dropin import C, check_from_module, original_names, randomize
from utils import assert_close_three_way, module_gate_fn, tie_free_input

R = 4
# name -> (factory of a module convert replaces, implementation)
HOLDERS = {
    "official": (lambda: official.CBAM(C, R), "official"),
    "official-avg": (lambda: official.CBAM(C, R, pool_types=["avg"]), "official"),
    "timm": (lambda: timm_cbam.CbamModule(C, rd_ratio=1 / 5), "timm"),
    "timm_light": (lambda: timm_cbam.LightCbamModule(C, spatial_kernel_size=3), "timm_light"),
    "ultralytics": (lambda: ultralytics_cbam.CBAM(C, 3), "ultralytics"),
    "mmyolo": (lambda: mmyolo_cbam.CBAM(C, R, 5), "mmyolo"),
    "luuuyi": (lambda: luuuyi_cbam.CBAMPair(C), "luuuyi"),
    "tutorial-channel_attention": (lambda: seed_tutorial.CBAM(C, R), "tutorial"),
    "tutorial-ca-sa": (lambda: seed_tutorial.CBAMBlock(C, R), "tutorial"),
    "tutorial-cam-sam": (lambda: seed_tutorial.CBAMLayer(C, R), "tutorial"),
    "tutorial-sequential": (lambda: seed_tutorial.sequential_cbam(C, R), "tutorial"),
    "tutorial-conv-mlp": (lambda: seed_tutorial.ConvCBAM(C, R), "tutorial"),
}
TUTORIALS = [n for n in HOLDERS if n.startswith("tutorial")]
# document 000's math, as cbam_fast.CBAM keywords
TUTORIAL_KW = dict(hidden_channels=C // R, channel_pool="avg", mlp_bias=True, spatial_pool="mean_max",
                   conv_bias=True, kernel_size=7)


def _model(name):
    """A small model holding the module; "tutorial-pair": document 000's two halves consecutive in
    an nn.Sequential."""
    if name == "tutorial-pair":
        return nn.Sequential(nn.Conv2d(3, C, 1), seed_tutorial.ChannelAttention(C, R), seed_tutorial.SpatialAttention(),
                             nn.ReLU())
    return nn.Sequential(nn.Conv2d(3, C, 1), HOLDERS[name][0]())


def _convert_quietly(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cbam_fast.convert(model, **kw)


def _same_output(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-6)


def _train_step(model, x, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------- convert()


def test_convert_returns_the_model_and_reports_on_request(caplog):
    model = _model("timm")
    with caplog.at_level(logging.INFO, logger="cbam_fast"):
        out = cbam_fast.convert(model)
    assert out is model and isinstance(model[1], cbam_fast.CBAM) and model[1].converted_from == "timm"
    assert "replaced 1 (timm CBAM)" in caplog.text
    other = _model("official")
    out, replaced = cbam_fast.convert(other, return_replaced=True)
    assert out is other and replaced == [("1", "official")]
    root = official.CBAM(C, R)  # the model itself is a CBAM: its replacement comes back
    new = cbam_fast.convert(root)
    assert isinstance(new, cbam_fast.CBAM) and new is not root
    assert cbam_fast.convert(new) is new


def test_convert_leaves_the_global_rng_alone():
    """Converting draws no random number: the data order, dropout masks, ... of the training that
    follows are those of the unconverted model."""
    model = nn.Sequential(_model("timm"), _model("tutorial-ca-sa"), _model("tutorial-pair"))
    state = torch.random.get_rng_state()
    _convert_quietly(model)
    assert sum(isinstance(m, cbam_fast.CBAM) for m in model.modules()) == 3
    assert torch.equal(torch.random.get_rng_state(), state)


class SharedNet(nn.Module):
    """One module object at several places: in two nn.Sequentials, twice in one parent, and as
    ``p.cbam is q.cbam``."""

    def __init__(self):
        super().__init__()
        tied = timm_cbam.CbamModule(C, rd_ratio=1 / 5)
        self.a = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), tied)
        self.b = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), tied)
        twice = official.CBAM(C, R)
        self.c = nn.Sequential(twice, nn.ReLU(), twice)
        self.p, self.q = nn.Module(), nn.Module()
        self.p.cbam = self.q.cbam = seed_tutorial.CBAMBlock(C, R)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.c(self.b(self.a(x)))
        return self.head(self.q.cbam(self.p.cbam(x)).mean((2, 3)))


def test_a_module_used_in_several_places_becomes_one_cbam():
    model = randomize(SharedNet()).train()
    reference = copy.deepcopy(model)  # deepcopy keeps the sharing
    n_params = len(list(model.parameters()))
    out, replaced = _convert_quietly(model, return_replaced=True)
    assert out is model
    assert replaced == [("a.1", "timm"), ("c.0", "official"), ("p.cbam", "tutorial")]
    assert model.a[1] is model.b[1] and model.c[0] is model.c[2] and model.p.cbam is model.q.cbam
    assert all(isinstance(m, cbam_fast.CBAM) for m in (model.a[1], model.c[0], model.p.cbam))
    assert len(list(model.parameters())) == n_params  # one set of weights per shared module
    gen = torch.Generator().manual_seed(5)
    for step in range(3):
        x = torch.randn(2, 3, 6, 7, generator=gen)
        losses = [_train_step(m, x, lr=0.05) for m in (reference, model)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6), f"step {step}: {losses}"
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)


def test_parts_shared_with_the_rest_of_the_model_are_never_untied():
    m1, m2 = timm_cbam.CbamModule(C), timm_cbam.CbamModule(C)
    m2.channel = m1.channel  # a shared submodule
    m3, m4 = official.CBAM(C, R), official.CBAM(C, R)
    m4.SpatialGate.spatial.conv.weight = m3.SpatialGate.spatial.conv.weight  # a tied weight
    ca, sa = seed_tutorial.ChannelAttention(C, R), seed_tutorial.SpatialAttention()
    pair = nn.Sequential(nn.Conv2d(C, C, 1), ca, sa, nn.ReLU(), ca)  # a half also used on its own
    model = nn.Sequential(m1, m2, m3, m4, pair)
    with pytest.warns(UserWarning) as record:
        out, replaced = cbam_fast.convert(model, return_replaced=True)
    # the CBAMs stay (each would untie something); their halves alone are served where that unties
    # nothing: the shared timm channel half becomes one ChannelAttention at both places, the
    # seed halves each their own module (ca at both of its places)
    assert replaced == [("0.channel", "tutorial"), ("4.1", "tutorial"), ("4.2", "tutorial")]
    assert [out[i] for i in range(4)] == [m1, m2, m3, m4]
    assert isinstance(m1.channel, cbam_fast.ChannelAttention) and m1.channel is m2.channel
    assert isinstance(pair[1], cbam_fast.ChannelAttention) and pair[1] is pair[4]
    assert isinstance(pair[2], cbam_fast.SpatialAttention)
    messages = "\n".join(str(w.message) for w in record)
    for where, why in (("0", "CbamModule: its submodule channel is also used elsewhere in the model"),
                       ("1", "CbamModule: its submodule channel is also used elsewhere in the model"),
                       ("2", "CBAM: its tensor SpatialGate.spatial.conv.weight is shared with a module outside it"),
                       ("3", "CBAM: its tensor SpatialGate.spatial.conv.weight is shared with a module outside it"),
                       ("4.1 and 4.2", "Sequential: 1 is also used elsewhere in the model (fusing it would untie them)")):
        assert f"left {where} untouched: {why}" in messages, messages


def test_requires_grad_mode_dtype_and_device_are_kept():
    orig = randomize(official.CBAM(C, R))
    orig.ChannelGate.mlp[1].weight.requires_grad_(False)
    for p in orig.SpatialGate.spatial.bn.parameters():  # a frozen spatial BatchNorm
        p.requires_grad_(False)
    orig.to(torch.bfloat16)
    orig.SpatialGate.spatial.bn.float().eval()  # a bf16 model keeping its BatchNorm in fp32, frozen
    model = nn.Sequential(nn.Identity(), orig).train()
    orig.SpatialGate.spatial.bn.eval()
    theirs = orig.state_dict(keep_vars=True)
    _convert_quietly(model)
    fast = model[1]
    assert fast.training and not fast.bn.training
    ours = dict(chain(fast.named_parameters(), fast.named_buffers()))
    for foreign, mine in original_names(fast).items():
        t, o = theirs[foreign], ours[mine]
        assert (o.dtype, o.device, o.requires_grad) == (t.dtype, t.device, t.requires_grad), foreign
    frozen = [fast.fc1.weight, fast.bn.weight, fast.bn.bias]
    before = [p.detach().clone() for p in frozen]
    _train_step(model, torch.randn(2, C, 5, 6, dtype=torch.bfloat16))
    assert all(torch.equal(p, b) for p, b in zip(frozen, before)) and fast.fc1.weight.grad is None


def test_forward_and_backward_hooks_move_to_the_replacement():
    orig = randomize(timm_cbam.CbamModule(C)).eval()
    model = nn.Sequential(nn.Conv2d(3, C, 1), orig).eval()
    calls = []
    pre = orig.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    orig.register_forward_hook(lambda m, args, kwargs, out: calls.append(("forward", type(m).__name__)), with_kwargs=True)
    orig.register_full_backward_hook(lambda m, gin, gout: calls.append(("backward", type(m).__name__)))
    double = orig.register_forward_hook(lambda m, args, out: out * 2)  # a hook that changes the output
    x = torch.randn(2, 3, 6, 7)
    want = model(x)
    calls.clear()
    _convert_quietly(model)
    assert isinstance(model[1], cbam_fast.CBAM)
    got = model(x)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert calls == [("pre", "CBAM"), ("forward", "CBAM"), ("backward", "CBAM")]
    pre.remove(), double.remove()  # the handles the user holds still work
    calls.clear()
    torch.testing.assert_close(model(x), want / 2, rtol=1e-5, atol=1e-6)
    assert calls == [("forward", "CBAM")]


def test_a_hook_on_a_submodule_leaves_the_module_untouched():
    orig = timm_cbam.CbamModule(C)
    orig.spatial.register_forward_hook(lambda m, args, out: None)  # e.g. reading the attention map
    with pytest.warns(UserWarning, match="left 0 untouched.*a forward hook on its submodule spatial"):
        out = cbam_fast.convert(nn.Sequential(orig))
    assert out[0] is orig


# ----------------------------------------------------------------------------- refusals


def _official_without_flatten():
    m = official.CBAM(C, R)
    m.ChannelGate.mlp = nn.Sequential(*list(m.ChannelGate.mlp)[1:])  # keys mlp.0 / mlp.2
    return m


def _official_without_spatial_basic_conv():
    m = official.CBAM(C, R)
    m.SpatialGate = nn.Identity()  # recognised by its ChannelGate, then an attribute is missing
    return m


@pytest.mark.parametrize("factory,reason", [
    (lambda: official.CBAM(C, R, pool_types=["max"]), r"pool_types=\['max'\] \(a max-only channel pool\)"),
    (lambda: official.CBAM(C, R, pool_types=["avg", "lse"]), r"the \['lse'\] pools"),
    (lambda: official.CBAM(8, 16), r"a hidden width of 0 \(gate_channels 8 < reduction_ratio"),
    (_official_without_flatten, r"an MLP without the authors' leading Flatten \(keys mlp.0 / mlp.2"),
    (lambda: seed_tutorial.CBAMBlock(8, 16), r"a hidden width of 0 \(channels 8 < reduction ratio"),
    (lambda: luuuyi_cbam.CBAMPair(8), r"a hidden width of 0"),
], ids=["official-max-only", "official-lse", "official-C<r", "official-no-flatten", "tutorial-C<r", "luuuyi-C<r"])
def test_refusals_give_the_true_reason(factory, reason):
    m = factory()
    with pytest.raises(cbam_fast.UnsupportedModule, match=reason):
        cbam_fast.CBAM.from_module(m)
    with pytest.warns(UserWarning, match=f"left 1 untouched: .*{reason}"):
        out = cbam_fast.convert(nn.Sequential(nn.Identity(), m))
    assert out[1] is m


def test_one_module_never_aborts_convert():
    broken, fine = _official_without_spatial_basic_conv(), timm_cbam.CbamModule(C)
    with pytest.warns(UserWarning, match="left 0 untouched: CBAM: AttributeError while converting it"):
        out, replaced = cbam_fast.convert(nn.Sequential(broken, fine), return_replaced=True)
    assert out[0] is broken and isinstance(out[1], cbam_fast.CBAM) and replaced == [("1", "timm")]


# ----------------------------------------------------------------------------- checkpoints


def _pickled(model, tmp_path):
    torch.save(model, tmp_path / "model.pt")
    return torch.load(tmp_path / "model.pt", weights_only=False)


@pytest.mark.parametrize("name", [*HOLDERS, "tutorial-pair"])
def test_checkpoints_are_interchangeable(name, tmp_path):
    """A converted, trained model's state dict loads into the original model (strict, same keys,
    shapes and order, BatchNorm buffers included) and the converted model loads the original's;
    deepcopy and pickling keep that; a converted module loads its own state dict."""
    original = randomize(_model(name)).train()
    converted = _convert_quietly(copy.deepcopy(original))
    assert sum(isinstance(m, cbam_fast.CBAM) for m in converted.modules()) == 1
    x = torch.randn(2, 3, 6, 7)
    _train_step(converted.train(), x)  # weights and BatchNorm statistics move
    saved = converted.state_dict()
    fresh = randomize(_model(name))
    expected = fresh.state_dict()
    assert list(saved) == list(expected)
    assert [v.shape for v in saved.values()] == [v.shape for v in expected.values()]
    fresh.load_state_dict(saved, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
    _same_output(fresh, converted, x)

    other = randomize(_model(name))
    converted.load_state_dict(other.state_dict(), strict=True)
    _same_output(other, converted, x)
    converted.load_state_dict(converted.state_dict(), strict=True)
    for copied in (copy.deepcopy(converted), _pickled(converted, tmp_path)):
        assert list(copied.state_dict()) == list(expected)
        copied.load_state_dict(randomize(_model(name)).state_dict(), strict=True)
        copied.load_state_dict(other.state_dict(), strict=True)
        _same_output(other, copied, x)


def test_a_cbam_built_directly_keeps_its_own_keys():
    mlp_conv = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "conv.weight"}
    bn = {f"bn.{b}" for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert set(cbam_fast.CBAM(C).state_dict()) == mlp_conv
    assert set(cbam_fast.CBAM.official(C, R).state_dict()) == mlp_conv | bn
    assert set(cbam_fast.CBAM(C, **TUTORIAL_KW).state_dict()) == mlp_conv | {"conv.bias"}


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_state_dicts_load_into_a_cbam(name):
    orig = randomize(HOLDERS[name][0]()).eval()
    fast = cbam_fast.CBAM(C, **TUTORIAL_KW).eval()
    fast.load_state_dict(orig.state_dict(), strict=True)
    _same_output(orig, fast, torch.randn(2, C, 6, 7))


# ----------------------------------------------------------------------------- document 000's CBAM


@pytest.mark.parametrize("name", [*TUTORIALS, "luuuyi"])
def test_structural_forms_are_recognised_and_exact(device, name):
    """Recognised by structure, whatever the attribute names (ca/sa included: not luuuyi's
    recogniser), with no warning; output and every gradient as the original's."""
    factory, kind = HOLDERS[name]
    out, replaced = _convert_quietly(nn.Sequential(factory()), return_replaced=True)
    assert replaced == [("0", kind)] and isinstance(out[0], cbam_fast.CBAM)
    check_from_module(randomize(factory()), kind, device, "train", torch.float32, "nchw")


@pytest.mark.parametrize("name,dtype,fmt", [
    ("tutorial-ca-sa", torch.float32, "nchw"),
    ("tutorial-conv-mlp", torch.bfloat16, "channels_last"),
], ids=["ca-sa-fp32", "conv-mlp-bf16-channels_last"])
def test_tutorial_forms_through_the_kernels(triton_backend, device, name, dtype, fmt):
    factory, kind = HOLDERS[name]
    check_from_module(randomize(factory()), kind, device, "train", dtype, fmt)


@pytest.mark.parametrize("kernels", [False, True], ids=["torch", "triton"])
def test_sequential_pair_is_exact(request, device, kernels):
    """Consecutive halves in an nn.Sequential: one cbam_fast.CBAM at the first index, nn.Identity at
    the second (indices stay); output, dx and every parameter gradient as the original's."""
    if kernels:
        request.getfixturevalue("triton_backend")
    seq = randomize(nn.Sequential(seed_tutorial.ChannelAttention(C, R), seed_tutorial.SpatialAttention(),
                                  nn.Identity())).to(device)
    same, hi = copy.deepcopy(seq), copy.deepcopy(seq).double()
    out, replaced = _convert_quietly(seq, return_replaced=True)
    assert out is seq and replaced == [("0", "tutorial")] and len(seq) == 3
    assert isinstance(seq[0], cbam_fast.CBAM) and type(seq[1]) is nn.Identity
    x = tie_free_input((2, C, 7, 9), torch.float32, module_gate_fn(seq[0]), device)
    w = torch.randn(x.shape, device=device)
    results = []
    for m, dtype in ((seq, torch.float32), (same, torch.float32), (hi, torch.float64)):
        xi = x.detach().to(dtype).clone().requires_grad_()
        y = m(xi)
        (y * w.to(dtype)).sum().backward()
        results.append((y, xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (y_fast, dx_fast, g_fast), (y_same, dx_same, g_same), (y_hi, dx_hi, g_hi) = results
    assert_close_three_way("y", y_fast, y_same, y_hi)
    assert_close_three_way("dx", dx_fast, dx_same, dx_hi)
    ours = {f: o for group in seq._cbam_fast_keys for f, o, _, _ in group}
    assert set(g_hi) == set(ours) and len(g_fast) == len(g_hi)
    for name, g in g_hi.items():
        assert_close_three_way(f"grad {name}", g_fast[ours[name]].reshape(g.shape), g_same[name], g)


def test_several_pairs_in_one_sequential():
    seq = nn.Sequential(nn.Conv2d(3, C, 1), seed_tutorial.ChannelAttention(C, R), seed_tutorial.SpatialAttention(),
                        nn.ReLU(), seed_tutorial.ChannelAttention(C, R), seed_tutorial.SpatialAttention(),
                        seed_tutorial.SpatialAttention(), seed_tutorial.ChannelAttention(C, R)).eval()
    out, replaced = _convert_quietly(seq, return_replaced=True)
    # the two pairs: one CBAM each; the spatial half before a channel half is not a CBAM: each is
    # served alone, as a SpatialAttention and a ChannelAttention
    assert out is seq and len(seq) == 8
    assert replaced == [("1", "tutorial"), ("4", "tutorial"), ("6", "tutorial"), ("7", "tutorial")]
    assert not any(m.training for m in seq.modules())  # eval mode kept, the new modules' too
    assert [type(m).__name__ for m in seq] == ["Conv2d", "CBAM", "Identity", "ReLU", "CBAM", "Identity",
                                               "SpatialAttention", "ChannelAttention"]
    assert isinstance(seq[6], cbam_fast.SpatialAttention) and isinstance(seq[7], cbam_fast.ChannelAttention)


class _Holder(nn.Module):
    def __init__(self, forward, ca=None, sa=None):
        super().__init__()
        self.ca = ca if ca is not None else seed_tutorial.ChannelAttention(C, R)
        self.sa = sa if sa is not None else seed_tutorial.SpatialAttention()
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x)


class _DoubledGate(seed_tutorial.ChannelAttention):
    def forward(self, x):
        avg = self.avg_pool(x).view(x.size(0), -1)
        return x * self.sigmoid(self.fc(avg) * 2).unsqueeze(2).unsqueeze(3)


class _ScrambledSpatial(seed_tutorial.SpatialAttention):
    """Traces as [mean, max] -> conv -> sigmoid -> x * gate, but views H x W as W x H in between."""

    def forward(self, x):
        n, _, h, w = x.shape
        avg = torch.mean(x, dim=1, keepdim=True).view(n, 1, w, h)
        mx = torch.max(x, dim=1, keepdim=True)[0].view(n, 1, w, h)
        gate = self.sigmoid(self.conv(torch.cat([avg, mx], dim=1))).view(n, 1, h, w)
        return x * gate


def _branchy(m, x):
    if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
        return m.sa(m.ca(x))
    return x


class _LuuuyiReversed(luuuyi_cbam.CBAMPair):
    def forward(self, x):
        x = self.sa(x) * x
        return self.ca(x) * x


class _UltralyticsReversed(ultralytics_cbam.CBAM):
    def forward(self, x):
        return self.channel_attention(self.spatial_attention(x))


@pytest.mark.parametrize("factory,reason", [
    (lambda: _Holder(lambda m, x: m.ca(m.sa(x))), r"its forward is not sa\(ca\(x\)\) .*: it computes sa, ca$"),
    (lambda: _Holder(lambda m, x: x + m.sa(m.ca(x))), r"its forward is not sa\(ca\(x\)\) .*: it computes ca, sa, add$"),
    (lambda: _Holder(lambda m, x: m.sa(m.ca(x)) * 2), r"its forward is not sa\(ca\(x\)\) .*: it computes ca, sa, mul$"),
    (lambda: _Holder(_branchy), r"cannot confirm that its forward is sa\(ca\(x\)\): torch.fx cannot trace its forward"),
    (lambda: _LuuuyiReversed(C), r"its forward is not x = ca\(x\) \* x; sa\(x\) \* x"),
    (lambda: _UltralyticsReversed(C), r"its forward is not spatial_attention\(channel_attention\(x\)\) "),
    (lambda: _Holder(lambda m, x: m.sa(m.ca(x)), ca=_DoubledGate(C, R)),
     r"cannot confirm what its half ca computes: its forward computes `%mul"),
    (lambda: _Holder(lambda m, x: m.sa(m.ca(x)), sa=_ScrambledSpatial()),
     r"its output differs from the CBAM its structure describes \(fp64 probe"),
], ids=["reversed", "residual", "scaled", "untraceable", "luuuyi-reversed", "ultralytics-reversed", "other-channel-math",
         "other-spatial-math"])
def test_composition_and_halves_are_confirmed_not_guessed(factory, reason):
    m = factory()
    with pytest.raises(cbam_fast.UnsupportedModule, match=reason):
        cbam_fast.CBAM.from_module(m)
    with pytest.warns(UserWarning, match=f"left 0 untouched: .*{reason}"):
        out = cbam_fast.convert(nn.Sequential(m))
    assert out[0] is m
