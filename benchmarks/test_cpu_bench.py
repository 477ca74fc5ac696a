"""CPU rows of the benchmark suite: cbam_fast's CPU path against each original CBAM it replaces
(timm CbamModule and LightCbamModule, the authors' CBAM, Ultralytics, mmyolo, luuuyi), inference
and training, one test per (preset, mode, shape). See :mod:`benchmarks.cpu_bench` for what is
timed and how; these are real measurements on this machine's CPU, labelled with its model, the
thread count (1: ``torch.set_num_threads(1)`` for the row) and torch's version.

Runs where there is no CUDA device (``pytest benchmarks/``); on a CUDA machine only with
``CBAM_FAST_CPU_BENCH=1`` (a GPU session's time is for the GPU rows). Knobs (environment):

* ``CBAM_FAST_CPU_BENCH_SHAPES``: comma-separated ``NxCxHxW`` names of
  :data:`benchmarks.cpu_bench.SHAPES`, or ``all`` (default: the first and last ResNet-50 stage at
  batch 1, ``1x256x56x56,1x2048x7x7``);
* ``CBAM_FAST_CPU_BENCH_REPS``: timed calls per implementation (default 9);
* ``CBAM_FAST_CPU_BENCH_MIN_SPEEDUP``: if set, a row whose median speedup (CPU time) is below it
  fails (unset by default: shared CI cores are too noisy for a timing assertion).

Every row checks first that the pair computes the same output and gradients. The rows are printed
at the end of the run (a markdown table) and, with ``--bench-out DIR``, written to
``DIR/cpu_rows.json`` and ``DIR/cpu_rows.md``.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks import cpu_bench

RUN = not torch.cuda.is_available() or os.environ.get("CBAM_FAST_CPU_BENCH") == "1"
_shapes = os.environ.get("CBAM_FAST_CPU_BENCH_SHAPES", "1x256x56x56,1x2048x7x7")
SHAPES = list(cpu_bench.SHAPES) if _shapes.strip() == "all" else [s.strip() for s in _shapes.split(",") if s.strip()]
REPS = int(os.environ.get("CBAM_FAST_CPU_BENCH_REPS", "9"))
ROWS = [(preset, mode, shape) for shape in SHAPES for mode in cpu_bench.MODES for preset in cpu_bench.PRESETS]

pytestmark = pytest.mark.skipif(not RUN, reason="CPU rows: CUDA machine (set CBAM_FAST_CPU_BENCH=1 to time the CPU too)")


@pytest.fixture(scope="module")
def cpu_rows(request):
    rows = []
    yield rows
    if not rows:
        return
    table = cpu_bench.markdown(rows)
    head = (f"cbam_fast CPU path vs the originals, measured on {rows[0].device}: median per-call CPU time "
            f"of {REPS} calls each, speedup = original / cbam_fast (median of pairs)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", "cbam_fast CPU rows")
            reporter.write_line(head)
            for line in table.splitlines():
                reporter.write_line(line)
    out = request.config.getoption("--bench-out", default=None)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu_rows.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
        (folder / "cpu_rows.md").write_text(f"{head}\n\n{table}\n")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def auto_backend(monkeypatch):
    """The converted module runs the CPU path (the default backend on CPU tensors)."""
    monkeypatch.delenv("CBAM_FAST_BACKEND", raising=False)


@pytest.mark.parametrize("preset, mode, shape", ROWS, ids=[f"{p}-{m}-{s}" for p, m, s in ROWS])
def test_cpu_row(preset, mode, shape, cpu_rows, one_thread, auto_backend):
    row = cpu_bench.measure(preset, shape, mode, reps=REPS)
    cpu_rows.append(row)
    assert row.original_ms > 0 and row.cbam_fast_ms > 0
    goal = os.environ.get("CBAM_FAST_CPU_BENCH_MIN_SPEEDUP")
    if goal:
        assert row.speedup >= float(goal), (
            f"{preset} {mode} {shape}: cbam_fast {row.cbam_fast_ms:.3f} ms vs original {row.original_ms:.3f} ms "
            f"({row.speedup:.2f}x < {goal}x) on {row.device}")
