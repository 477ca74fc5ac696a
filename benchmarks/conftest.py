"""pytest side of the benchmark suite: options, selection, the GPU session, the summary.

With CUDA: every configuration of :mod:`benchmarks.cases` is a test, in priority order; the
selected ones are timed (pytest-benchmark's ``pedantic`` driven by a CUDA-event clock, or the
same loop without pytest-benchmark), each row is written to the results file as soon as it is
measured, and the summary writes ``BENCHMARKS.md`` and the PNG and prints the targets.

Without CUDA: a small-shape correctness mode through the Triton interpreter; no timing is taken
and none is reported.

Options (CUDA only): ``--bench-profile targets|quick|full`` (default full), ``--bench-budget-s S`` (skip
configurations that would not fit), ``--bench-out DIR`` (default ``benchmarks/results``),
``--bench-skip-done RESULTS.json`` (repeatable: skip rows already measured), ``--bench-rounds N``.
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
    "cbam_fast benchmarks: no CUDA device here, so this run checked the benchmarked calls for "
    "correctness on small shapes (cbam_fast through the Triton interpreter, torch.compile entries "
    "traced with backend='eager': Inductor code generation and max-autotune need a GPU). "
    "Timings need a GPU: none were taken."
)
SESSION = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("cbam_fast benchmarks (CUDA only)")
    group.addoption("--bench-profile", default="full", choices=list(cases.PROFILES),
                    help="targets: the targets' rows only (gpu_check.sh's default); quick: those, every "
                         "cbam_fast/eager row, max-autotune on the batch-32 targets; full: every configuration "
                         "(default)")
    group.addoption("--bench-budget-s", type=float, default=None,
                    help="wall-time budget in seconds: configurations that would not fit are skipped")
    group.addoption("--bench-out", default=None, help="output folder (default: benchmarks/results)")
    group.addoption("--bench-skip-done", action="append", default=[], metavar="RESULTS.json",
                    help="skip configurations already measured in this results file (repeatable)")
    group.addoption("--bench-rounds", type=int, default=50, help="timed calls per configuration")


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
    if not HAS_CUDA:
        terminalreporter.write_line(NO_GPU_NOTE, yellow=True)
        return
    terminalreporter.section("cbam_fast benchmarks")
    for line in config.stash[SESSION].finish().splitlines():
        terminalreporter.write_line(line)
