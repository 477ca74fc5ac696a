"""Repository-wide pytest options (this conftest is loaded by every run under the repository).

* ``pytest --benchmark`` runs the benchmark suite, ``benchmarks/`` (timings on CUDA; without a GPU
  the small-shape correctness mode): with no paths named, the run collects ``benchmarks/``
  instead of the test paths; with paths, it collects those. Plain ``pytest`` runs ``tests/``.
* The benchmark run's footer (:mod:`benchmarks.footer`): what ran, counted, and the next step
  when nothing was timed. Printed here, not in ``benchmarks/conftest.py``, because under
  pytest-xdist only the workers load that one.
* The benchmark suite's own options (``--bench-profile`` ...) are registered here, not in
  ``benchmarks/conftest.py``, so that they are known to the command line however the suite is
  reached (``pytest --benchmark --bench-profile quick`` and ``pytest benchmarks --bench-profile quick``).

No torch or cbam_fast import here: ``benchmarks/conftest.py`` and ``tests/conftest.py`` set
``TRITON_INTERPRET`` first.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import cases, footer  # noqa: E402  (stdlib only: no torch, no cbam_fast)

BENCHMARKS = ROOT / "benchmarks"


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmark suite (benchmarks/) rather than the tests: timings on CUDA, the "
                          "small-shape correctness mode without a GPU (bash benchmarks/gpu_check.sh OUTDIR is the "
                          "GPU run). With paths named, those are collected instead")
    group = parser.getgroup("cbam_fast benchmarks")
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


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """``--benchmark`` with no paths on the command line: collect benchmarks/, not testpaths."""
    if config.getoption("--benchmark") and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [str(BENCHMARKS)]


def _targets_benchmarks(config) -> bool:
    if config.getoption("--benchmark"):
        return True
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        path = (path if path.is_absolute() else config.invocation_params.dir / path).resolve()
        if path == BENCHMARKS or BENCHMARKS in path.parents:
            return True
    return False


def pytest_terminal_summary(terminalreporter, config):
    counts = footer.ran_counts(terminalreporter.stats)
    if not any(counts.values()) and not _targets_benchmarks(config):
        return  # a run of the tests: no footer
    import torch

    terminalreporter.section("cbam_fast benchmarks: what ran")
    lines = footer.summary_lines(counts, torch.cuda.is_available(),
                                 benchmark_only=bool(getattr(config.option, "benchmark_only", False)))
    for line in lines:
        terminalreporter.write_line(line, yellow=counts["timed"] == 0)
