"""cbam_fast against the eager reference (official semantics) and torch.compile of it (default and
max-autotune-no-cudagraphs): forward and forward+backward, bf16/fp16/fp32, NCHW and
channels_last, on the cases of :mod:`benchmarks.cases`.

CUDA: one test per configuration (in priority order; ``--bench-profile``, ``--bench-budget-s``
select). Each is timed with pytest-benchmark's ``pedantic`` (one round = one call, the L2 flush as
its ``setup``) on a CUDA-event clock, so pytest-benchmark's statistics are GPU times; its
``extra_info`` holds the results row (median ms, GB/s, % of floor, launches, peak memory).
Without pytest-benchmark the same loop runs without it. Every configuration's first call is
checked against the fp64 reference before it is timed.

No CUDA: the correctness mode, :func:`benchmarks.bench.check_small` on
:func:`benchmarks.cases.cpu_check_configs`; it takes no timing.
"""

import pytest
import torch

import cbam_fast
from benchmarks import bench, cases, footer, measure

HAS_CUDA = torch.cuda.is_available()
CONFIGS = cases.all_configs() if HAS_CUDA else cases.cpu_check_configs()


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch):
    """cbam_fast rows run the Triton kernels (interpreted on CPU), never the torch fallback."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "triton")
    if not HAS_CUDA:
        assert cbam_fast.functional.kernels_interpreted(), "TRITON_INTERPRET=1 must be set before cbam_fast is imported"


def _pytest_benchmark_loop(request, cfg):
    """A time loop for :meth:`BenchSession.measure` that runs through pytest-benchmark: the test
    gets a :class:`measure.GpuClock` as its timer (the ``benchmark`` marker's documented ``timer``
    option), and ``pedantic`` runs one call per round after the flush."""
    clock = measure.GpuClock()
    group = f"{cfg.case.name} {cases.DTYPES[cfg.dtype]} {cases.FORMATS[cfg.memory_format]} {cfg.mode}"
    request.node.add_marker(pytest.mark.benchmark(timer=clock, group=group, disable_gc=True))
    benchmark = request.getfixturevalue("benchmark")  # skips the test under --benchmark-skip
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled (--benchmark-disable): no timing taken")

    def loop(step, setup, rounds):
        clock.reset()
        benchmark.pedantic(step, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
        return list(clock.durations_ms)

    return loop, benchmark


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.id for c in CONFIGS])
def test_cbam(request, cfg):
    if not HAS_CUDA:
        bench.check_small(cfg)
        request.node.user_properties.append((footer.RAN, "checked"))  # what the footer counts
        return
    session = request.getfixturevalue("bench_session")
    reason = session.admit(cfg)
    if reason is not None:
        pytest.skip(reason)
    if request.config.pluginmanager.hasplugin("benchmark"):
        loop, benchmark = _pytest_benchmark_loop(request, cfg)
        row = session.measure(cfg, loop)
        benchmark.extra_info.update(row)
    else:
        session.measure(cfg)
    request.node.user_properties.append((footer.RAN, "timed"))
