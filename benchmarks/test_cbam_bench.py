"""Forward and forward+backward of cbam_fast against the eager reference (official semantics).

CUDA: pytest-benchmark timings (each call synchronised, warm-up rounds first), with the bytes
model of the README in ``extra_info``: compulsory traffic is 2 S forward and 5 S forward+backward,
S = |x| in bytes. Without CUDA: the same cases at small sizes, checked against the reference.
"""

import os

import pytest
import torch

import cbam_fast
from cbam_fast import reference

HAS_CUDA = torch.cuda.is_available()

# (case, N, C, H, W): ResNet-50 CBAM stages at batch 32, batch-1 inference, a YOLO-neck map.
CASES = [
    ("r50-s1", 32, 256, 56, 56),
    ("r50-s2", 32, 512, 28, 28),
    ("r50-s3", 32, 1024, 14, 14),
    ("r50-s4", 32, 2048, 7, 7),
    ("r50-s1-b1", 1, 256, 56, 56),
    ("yolo-p3", 16, 128, 80, 80),
]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
IMPLS = ("eager", "cbam_fast")


def _setup(shape, dtype, fmt, device, requires_grad):
    N, C, H, W = shape
    module = cbam_fast.CBAM(C).to(device)
    x = torch.randn(N, C, H, W, device=device, dtype=dtype).to(memory_format=FORMATS[fmt])
    x.requires_grad_(requires_grad)
    params = (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias, module.conv.weight, module.conv.bias)
    return module, x, params


def _impl(name, params):
    if name == "eager":
        # the reference runs in the input's dtype, as the eager modules it stands for do
        return lambda x: reference.cbam(x, *params)
    return lambda x: cbam_fast.cbam(x, *params)


@pytest.fixture(autouse=True)
def _kernels_backend(monkeypatch):
    monkeypatch.setenv("CBAM_FAST_BACKEND", "triton")


# batch 1 is an inference case: forward only
RUNS = [(case, mode) for case in CASES for mode in ("fwd", "fwd_bwd") if not (mode == "fwd_bwd" and case[1] == 1)]


def small_shape(shape):
    """The correctness mode's stand-in for a case: C / 16, H / 7, W / 7, at most 2 samples."""
    N, C, H, W = shape
    return min(N, 2), max(1, C // 16), max(1, H // 7), max(1, W // 7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case,mode", RUNS, ids=[f"{c[0]}-{m}" for c, m in RUNS])
def test_cbam(request, case, mode, fmt, impl):
    name, *shape = case
    if not HAS_CUDA:
        _check_small(small_shape(shape), impl, fmt, mode)
        return
    benchmark = request.getfixturevalue("benchmark")
    dtype = torch.bfloat16
    _, x, params = _setup(shape, dtype, fmt, "cuda", mode == "fwd_bwd")
    fn = _impl(impl, params)
    dy = torch.randn_like(x)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn(x)
        else:
            fn(x).backward(dy)
        torch.cuda.synchronize()

    for _ in range(3):
        step()
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
    S = x.numel() * x.element_size()
    median_s = benchmark.stats.stats.median
    compulsory = (2 if mode == "fwd" else 5) * S
    benchmark.group = f"{name} {fmt} {mode}"
    benchmark.extra_info.update(
        case=name, shape=list(shape), dtype="bfloat16", memory_format=fmt, mode=mode, impl=impl,
        gbps=compulsory / median_s / 1e9, peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20,
        device=torch.cuda.get_device_name(),
    )


def _check_small(shape, impl, fmt, mode):
    """Correctness mode: the benchmarked call on a small shape, against the fp64 reference."""
    torch.manual_seed(0)
    module, x, params = _setup(shape, torch.float32, fmt, "cpu", mode == "fwd_bwd")
    y = _impl(impl, params)(x)
    assert y.is_contiguous(memory_format=FORMATS[fmt])
    x64 = x.detach().double().requires_grad_(mode == "fwd_bwd")
    p64 = [None if p is None else p.detach().double().requires_grad_(mode == "fwd_bwd") for p in params]
    y64 = reference.cbam(x64, *p64)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-6)
    if mode == "fwd_bwd":
        dy = torch.randn_like(y)
        y.backward(dy)
        y64.backward(dy.double())
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
        for p, p_ref in zip(params, p64):
            if p is not None:
                torch.testing.assert_close(p.grad.double(), p_ref.grad, rtol=1e-4, atol=1e-5)
