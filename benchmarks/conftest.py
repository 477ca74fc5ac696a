"""pytest side of the benchmark suite: options, selection, the GPU session, the summary.

With CUDA: every configuration of :mod:`benchmarks.cases` is a test, in priority order; the
selected ones are timed (pytest-benchmark's ``pedantic`` driven by a CUDA-event clock, or the
same loop without pytest-benchmark), each row is written to the results file as soon as it is
measured, and the summary writes ``BENCHMARKS.md`` and the PNG and prints the targets.

Without CUDA: a small-shape correctness mode through the Triton interpreter; no timing is taken
and none is reported.

Options (registered in the repository's root ``conftest.py``, which also makes
``pytest --benchmark`` run this suite): ``--bench-profile targets|quick|full`` (default full),
``--bench-budget-s S`` (skip configurations that would not fit), ``--bench-out DIR`` (default
``benchmarks/results``), ``--bench-skip-done RESULTS.json`` (repeatable: skip rows already
measured), ``--bench-rounds N``.

The footer that counts what actually ran (configurations timed, checked for correctness only,
skipped, failed; the next step when nothing was timed) is :mod:`benchmarks.footer`, printed by
the root ``conftest.py`` so that it also appears under pytest-xdist, where this conftest is loaded
only by the workers.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before cbam_fast (and its kernels) is imported
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402

from benchmarks import cases, results  # noqa: E402

NO_GPU_NOTE = (
    "cbam_fast benchmarks: no CUDA device here, so this run is the correctness mode: each benchmarked "
    "call is checked on a small shape (cbam_fast through the Triton interpreter, torch.compile entries "
    "traced with backend='eager': Inductor code generation and max-autotune need a GPU), and no timing "
    "is taken."
)
SESSION = pytest.StashKey()


def pytest_configure(config):
    if HAS_CUDA:
        from benchmarks.bench import BenchSession

        config.stash[SESSION] = BenchSession(
            out_dir=config.getoption("--bench-out"), budget_s=config.getoption("--bench-budget-s"),
            rounds=config.getoption("--bench-rounds"),
        )


def pytest_report_header(config):
    if not HAS_CUDA:
        return NO_GPU_NOTE
    import triton

    return (f"cbam_fast benchmarks on {torch.cuda.get_device_name()} (torch {torch.__version__}, "
            f"triton {triton.__version__}, CUDA {torch.version.cuda}); profile {config.getoption('--bench-profile')}, "
            f"budget {config.getoption('--bench-budget-s') or 'none'}")


def pytest_collection_modifyitems(config, items):
    """With CUDA, deselect the configurations outside the profile or already measured."""
    if not HAS_CUDA:
        return
    wanted = {cfg.key for cfg in cases.select(
        config.getoption("--bench-profile"), skip_done=results.done_keys(config.getoption("--bench-skip-done")))}
    keep, drop = [], []
    for item in items:
        cfg = getattr(item, "callspec", None) and item.callspec.params.get("cfg")
        (drop if isinstance(cfg, cases.Config) and cfg.key not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def bench_session(request):
    return request.config.stash[SESSION]


def pytest_terminal_summary(terminalreporter, config):
    """CUDA: the session's summary (targets, files, configurations left for time or failed). What
    ran, counted (timed, checked, skipped, failed) with the next step when nothing was timed, is
    the root conftest's footer (benchmarks/footer.py), printed on every run of these cases."""
    if HAS_CUDA:
        terminalreporter.section("cbam_fast benchmarks")
        for line in config.stash[SESSION].finish().splitlines():
            terminalreporter.write_line(line)
