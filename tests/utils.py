"""Test inputs and the comparison rule shared by the test modules."""

from __future__ import annotations

import math

import torch

import cbam_fast
from cbam_fast import reference

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Added to 2x the same-dtype PyTorch error, relative to the output's scale.
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}

PARAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "conv_weight", "conv_bias")


def make_params(C, reduction, k, device, mlp_bias=True, conv_bias=False, dtype=torch.float32):
    """Fresh random parameters (not the zeros-prone default init), as a dict of leaf tensors."""
    hidden = max(1, C // reduction)
    p = {
        "fc1_weight": torch.randn(hidden, C) / math.sqrt(C),
        "fc1_bias": torch.randn(hidden) * 0.2 if mlp_bias else None,
        "fc2_weight": torch.randn(C, hidden) / math.sqrt(hidden),
        "fc2_bias": torch.randn(C) * 0.2 if mlp_bias else None,
        "conv_weight": torch.randn(1, 2, k, k) / k,
        "conv_bias": torch.randn(1) * 0.2 if conv_bias else None,
    }
    return {name: None if t is None else t.to(device=device, dtype=dtype) for name, t in p.items()}


def _gate_fn(params):
    """x [N, C, H, W] fp64 -> channel gate [N, C] fp64, from a parameter dict (official MLP) or a
    callable returned as is."""
    if callable(params):
        return params
    p64 = {k: None if v is None else v.detach().double().cpu() for k, v in params.items()}
    return lambda x: reference.channel_gate(x, p64["fc1_weight"], p64["fc1_bias"], p64["fc2_weight"], p64["fc2_bias"])


def module_gate_fn(m):
    """The channel gate of a cbam_fast.CBAM, for tie_free_input."""
    def gate(x):
        fc2 = m.fc2
        w = [None if t is None else t.detach().double().cpu()
             for t in (m.fc1.weight, m.fc1.bias, None if fc2 is None else fc2.weight, None if fc2 is None else fc2.bias)]
        return reference.channel_gate(x, *w, pool=m.channel_pool)
    return gate


def tie_free_input(shape, dtype, params, device, memory_format=torch.contiguous_format, margin=1e-3):
    """Fresh random x with no ties in either max pool.

    ``params``: the parameter dict of an official-semantics call, or a function x -> channel gate.
    Each (n, c) row holds distinct multiples of 1/64 in [-4, 4), exact in every float dtype, so the
    max over H*W is unique. Positions where the max over C of x*cg is within ``margin`` of the
    runner-up get their top element swapped with another position of the same row: a row keeps
    its values (so cg does not change) until every position has a clear spatial maximum.
    """
    gate = _gate_fn(params)
    N, C, H, W = shape
    P = H * W
    assert P <= 512, "distinct-grid construction covers H*W <= 512"
    x = (torch.rand(N * C, 512).argsort(dim=1)[:, :P] - 256).double().div(64).view(N, C, H, W)
    for _ in range(100):
        if C == 1:
            break
        cg = gate(x)
        x1 = (x * cg[:, :, None, None]).flatten(2)
        top2 = x1.topk(2, dim=1)
        ties = (top2.values[:, 0] - top2.values[:, 1]) < margin
        if not ties.any():
            break
        flat = x.view(N, C, P)
        for n, p in ties.nonzero().tolist():
            c = top2.indices[n, 0, p].item()
            q = torch.randint(P, ()).item()
            flat[n, c, p], flat[n, c, q] = flat[n, c, q].clone(), flat[n, c, p].clone()
    else:
        raise AssertionError("could not draw a tie-free input")
    return x.to(dtype).to(device=device, memory_format=memory_format)


def distinct_rows(shape, dtype, device, memory_format=torch.contiguous_format, axis="channel"):
    """Fresh random x whose max along a gate's pooled axis is unique with a margin (exact values in
    every dtype): rows of distinct multiples of 1/64 along H*W (``axis="channel"``: the channel
    gate pools over H*W) or along C (``"spatial"``)."""
    if axis == "channel":
        return tie_free_input(shape, dtype, lambda x: torch.ones(x.shape[:2], dtype=x.dtype), device, memory_format)
    N, C, H, W = shape
    assert C <= 512
    v = (torch.rand(N * H * W, 512).argsort(dim=1)[:, :C] - 256).double().div(64)
    x = v.view(N, H, W, C).permute(0, 3, 1, 2)
    return x.to(dtype).to(device=device, memory_format=memory_format)


def run_reference(x, params):
    return reference.cbam(x, *(params[n] for n in PARAM_NAMES))


def run_cbam(x, params):
    return cbam_fast.cbam(x, *(params[n] for n in PARAM_NAMES))


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_close_three_way(name, out, ref_same_dtype, ref_hi):
    """The kernel's error against the fp64 reference may be at most twice the error of PyTorch
    running the same math in the input's dtype, plus a small atol at the output's scale."""
    assert out.dtype == ref_same_dtype.dtype, f"{name}: dtype {out.dtype}, expected {ref_same_dtype.dtype}"
    assert out.shape == ref_hi.shape, f"{name}: shape {tuple(out.shape)}, expected {tuple(ref_hi.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output (an element left unwritten?)"
    scale = max(1.0, ref_hi.abs().max().item())
    err = max_err(out, ref_hi)
    err_torch = max_err(ref_same_dtype, ref_hi)
    bound = 2 * err_torch + ATOL[out.dtype] * scale
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (PyTorch {out.dtype} error {err_torch:.3e})"
