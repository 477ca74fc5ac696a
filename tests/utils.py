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


def _spatial_ties(x, params, margin):
    """Mask [N, P] of positions whose max over channels of x*cg is within margin of the runner-up."""
    if x.shape[1] == 1:
        return torch.zeros(x.shape[0], x.shape[2] * x.shape[3], dtype=torch.bool)
    p64 = {k: None if v is None else v.detach().double().cpu() for k, v in params.items()}
    cg = reference.channel_gate(x, p64["fc1_weight"], p64["fc1_bias"], p64["fc2_weight"], p64["fc2_bias"])
    x1 = (x * cg[:, :, None, None]).flatten(2)
    top2 = x1.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) < margin


def tie_free_input(shape, dtype, params, device, memory_format=torch.contiguous_format, margin=1e-3):
    """Fresh random x with no ties in either max pool.

    Each (n, c) row holds distinct multiples of 1/64 in [-4, 4), exact in every float dtype, so the
    max over H*W is unique. Positions where the max over C of x*cg is within ``margin`` of the
    runner-up get their top element swapped with another position of the same row: a row keeps
    its values (so cg does not change) until every position has a clear spatial maximum.
    """
    N, C, H, W = shape
    P = H * W
    assert P <= 512, "distinct-grid construction covers H*W <= 512"
    x = (torch.rand(N * C, 512).argsort(dim=1)[:, :P] - 256).double().div(64).view(N, C, H, W)
    x = x.to(dtype).double()  # exact
    for _ in range(100):
        ties = _spatial_ties(x, params, margin)
        if not ties.any():
            break
        p64 = {k: None if v is None else v.detach().double().cpu() for k, v in params.items()}
        cg = reference.channel_gate(x, p64["fc1_weight"], p64["fc1_bias"], p64["fc2_weight"], p64["fc2_bias"])
        flat = x.view(N, C, P)
        top = (flat * cg[:, :, None]).argmax(dim=1)
        for n, p in ties.nonzero().tolist():
            c = top[n, p].item()
            q = torch.randint(P, ()).item()
            flat[n, c, p], flat[n, c, q] = flat[n, c, q].clone(), flat[n, c, p].clone()
    else:
        raise AssertionError("could not draw a tie-free input")
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
