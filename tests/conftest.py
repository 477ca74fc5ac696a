"""One suite for both worlds: compiled Triton kernels on CUDA when a GPU is present, the Triton
interpreter on CPU otherwise.

* ``TRITON_INTERPRET=1`` is set here, before cbam_fast (and so the kernels) is imported, when no
  CUDA device is present.
* Every test is seeded, and every buffer the launchers allocate is filled with NaN (or an
  out-of-range index) first, so an element a kernel never writes fails the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns when unset

import pytest  # noqa: E402

import cbam_fast  # noqa: E402
from cbam_fast.kernels import launch  # noqa: E402

# The checks against the real timm: the `timm` marker, and CBAM_FAST_REQUIRE_TIMM=1 (tests/timm_gate.py)
from timm_gate import (  # noqa: E402, F401
    pytest_collection_modifyitems, pytest_configure, pytest_report_header, pytest_runtest_makereport, pytest_unconfigure,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed_and_poison(monkeypatch):
    torch.manual_seed(1234)
    monkeypatch.setattr(launch, "POISON", True)
    yield


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def triton_backend(monkeypatch):
    """Route cbam_fast through the Triton kernels (compiled on CUDA, interpreted on CPU)."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "triton")
    assert cbam_fast.backend() == "triton"
    if DEVICE == "cpu":
        assert cbam_fast.functional.kernels_interpreted()
    yield


@pytest.fixture(scope="module")
def captured():
    """Benchmark calls as planned for a 132-SM GPU (benchmarks/launched.py ``capture``, cached per
    module), without the suite's NaN poisoning of the launchers' buffers (a fill per buffer,
    which the library itself never launches): for the structural tests."""
    from benchmarks import launched

    cache = {}

    def get(call):
        if call not in cache:
            poison, launch.POISON = launch.POISON, False
            try:
                cache[call] = launched.capture(call)
            finally:
                launch.POISON = poison
        return cache[call]

    return get
