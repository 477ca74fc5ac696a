"""The backend switch: auto (Triton on CUDA, PyTorch on CPU), triton, torch."""

import os
import subprocess
import sys

import pytest
import torch

import cbam_fast
import cbam_fast.ops as ops
from utils import PARAM_NAMES, make_params, tie_free_input


def _spy(monkeypatch):
    calls = []
    real = ops.cbam_forward

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ops, "cbam_forward", spy)
    return calls


@pytest.mark.parametrize("value,expect_kernels_on_cpu", [("auto", False), ("", False), ("torch", False), ("triton", True), (" Triton ", True)])
def test_dispatch(monkeypatch, value, expect_kernels_on_cpu):
    monkeypatch.setenv("CBAM_FAST_BACKEND", value)
    calls = _spy(monkeypatch)
    params = make_params(8, 4, 3, "cpu")
    x = tie_free_input((1, 8, 5, 5), torch.float32, params, "cpu")
    y = cbam_fast.cbam(x, *(params[n] for n in PARAM_NAMES))
    assert bool(calls) == expect_kernels_on_cpu
    ref = cbam_fast.reference.cbam(x, *(params[n] for n in PARAM_NAMES))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("CBAM_FAST_BACKEND", raising=False)
    assert cbam_fast.backend() == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_uses_kernels_on_cuda(monkeypatch):
    monkeypatch.setenv("CBAM_FAST_BACKEND", "auto")
    calls = _spy(monkeypatch)
    m = cbam_fast.CBAM(8, 4, 3).cuda()
    m(torch.randn(1, 8, 5, 5, device="cuda"))
    assert calls


def test_auto_cpu_model_trains_without_triton():
    """A model holding cbam_fast.CBAM trains on CPU through the PyTorch path, no interpreter needed."""
    code = (
        "import torch, cbam_fast;"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), cbam_fast.CBAM(16, 4));"
        "x = torch.randn(2, 3, 8, 8); m(x).square().mean().backward();"
        "assert m[1].fc1.weight.grad is not None; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CBAM_FAST_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-without-interpreter case")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = (
        "import torch, cbam_fast;"
        "m = cbam_fast.CBAM(8, 4, 3); m(torch.randn(1, 8, 4, 4))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CBAM_FAST_BACKEND"] = "triton"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "needs the Triton interpreter: set TRITON_INTERPRET=1" in out.stderr
