"""The project's commands as a user types them: ``pytest --benchmark`` and its footer, and the gate
that makes the checks against the real timm run (never skip) where CI gives them timm.

Each check runs pytest in a subprocess, on a tiny selection."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cases, footer  # noqa: E402


def _pytest(*args, cwd=ROOT, extra_env=None, timeout=600):
    """A plain, serial pytest run in a subprocess (no xdist worker's environment leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CBAM_FAST_REQUIRE_TIMM"}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _cheap_case():
    """The cheapest CPU correctness case: the eager reference's forward (no interpreter)."""
    return next(c for c in cases.cpu_check_configs() if c.impl == "eager" and c.mode == "fwd")


CPU_MODE = {"CUDA_VISIBLE_DEVICES": ""}  # the correctness mode on every machine


# ----------------------------------------------------------------------------- pytest --benchmark


def test_benchmark_flag_collects_the_benchmark_suite():
    """``pytest --benchmark`` from the repository root (the design card's words) collects
    benchmarks/, not the test paths, and takes the suite's own options (registered by the root
    conftest, which every run loads)."""
    out = _pytest("--benchmark", "--bench-profile", "quick", "--bench-budget-s", "5", "--co", "-q", extra_env=CPU_MODE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert ids and all(i.startswith("benchmarks/") for i in ids), [i for i in ids if not i.startswith("benchmarks/")][:5]
    suite = [i for i in ids if i.startswith("benchmarks/test_cbam_bench.py::test_cbam[")]
    assert len(suite) == len(cases.cpu_check_configs())


def test_benchmark_footer_counts_the_correctness_checks():
    cfg = _cheap_case()
    out = _pytest("--benchmark", "-q", "-k", cfg.id, extra_env=CPU_MODE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert ("cbam_fast benchmarks: 0 timed on the GPU, 1 checked for correctness (small shapes, no timing), "
            "0 CPU rows timed on the CPU, 0 skipped, 0 failed.") in out.stdout, out.stdout[-3000:]
    assert "GPU timings need a GPU, and none were taken" in out.stdout
    assert footer.GPU_NEXT_STEP in out.stdout and "benchmarks/gpu_check.sh" in footer.GPU_NEXT_STEP
    assert "Nothing was checked" not in out.stdout


def test_benchmark_only_on_cpu_says_nothing_was_checked():
    """``--benchmark-only`` without a GPU skips every case: the footer says so, claims no
    correctness check, and names the next step (the GPU script)."""
    cfg = _cheap_case()
    out = _pytest("benchmarks", "-q", "--benchmark-only", "-k", cfg.id, extra_env=CPU_MODE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert ("cbam_fast benchmarks: 0 timed on the GPU, 0 checked for correctness (small shapes, no timing), "
            "0 CPU rows timed on the CPU, 1 skipped, 0 failed.") in out.stdout, out.stdout[-3000:]
    assert "Nothing was checked for correctness in this run (--benchmark-only" in out.stdout
    assert footer.GPU_NEXT_STEP in out.stdout
    assert "this run checked" not in out.stdout  # the old footer's false claim


def test_footer_lines_for_a_timed_run():
    lines = footer.summary_lines(dict(timed=3, checked=0, cpu_timed=0, passed=0, skipped=1, failed=0), has_cuda=True)
    assert lines == ["cbam_fast benchmarks: 3 timed on the GPU, 0 checked for correctness (small shapes, no timing), "
                     "0 CPU rows timed on the CPU, 1 skipped, 0 failed."]
    lines = footer.summary_lines(dict(timed=0, checked=0, cpu_timed=0, passed=0, skipped=4, failed=0), has_cuda=True)
    assert lines[-1] == footer.GPU_NEXT_STEP


def test_footer_counts_each_case_once_by_what_it_did():
    def rep(nodeid, when="call", props=()):
        return SimpleNamespace(nodeid=nodeid, when=when, user_properties=list(props))

    gpu, cpu = "benchmarks/test_cbam_bench.py::test_cbam[", "benchmarks/test_cpu_bench.py::test_cpu_row["
    stats = {
        "passed": [rep(gpu + "a]", props=[(footer.RAN, "checked")]), rep(gpu + "b]", props=[(footer.RAN, "timed")]),
                   rep(gpu + "c]", "setup"), rep(gpu + "c]", props=[(footer.RAN, "checked")]), rep(cpu + "d]"),
                   rep(gpu + "e]")],
        "failed": [rep(gpu + "c]", "teardown")],
        "skipped": [rep(gpu + "f]", "setup"), rep(cpu + "g]", "setup")],
        "": [rep("tests/test_x.py::test_y")],
    }
    assert footer.ran_counts(stats) == dict(timed=1, checked=1, cpu_timed=1, passed=1, skipped=2, failed=1)


# ----------------------------------------------------------------------------- the real timm


GATE_CONFTEST = '''
import sys
sys.modules["timm"] = None  # no timm in this run, whatever this environment has
'''
GATE_TESTS = '''
import pytest

def test_against_timm():
    layers = pytest.importorskip("timm.layers", reason="timm is not importable")

@pytest.mark.timm
def test_marked_that_skips():
    pytest.skip("for another reason")

def test_unrelated():
    pass
'''


def _gate_run(tmp_path, *args, require=False):
    (tmp_path / "conftest.py").write_text(GATE_CONFTEST)
    (tmp_path / "test_gate.py").write_text(GATE_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {"PYTHONPATH": str(TESTS)}
    if require:
        env["CBAM_FAST_REQUIRE_TIMM"] = "1"
    return _pytest("-p", "timm_gate", "-rs", *args, str(tmp_path), cwd=tmp_path, extra_env=env)


def test_timm_checks_are_marked_and_selected(tmp_path):
    out = _gate_run(tmp_path, "-m", "timm", "--co", "-q")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = sorted(line.split("::")[-1] for line in out.stdout.splitlines() if "::" in line)
    assert ids == ["test_against_timm", "test_marked_that_skips"], out.stdout


def test_timm_checks_skip_where_timm_is_not_required(tmp_path):
    out = _gate_run(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 passed, 2 skipped" in out.stdout, out.stdout[-3000:]


def test_timm_checks_fail_rather_than_skip_where_timm_is_required(tmp_path):
    """CBAM_FAST_REQUIRE_TIMM=1 (scripts/run.sh timm): importorskip of timm is a plain import and a
    timm-marked test that skips fails, so that run cannot pass without running them."""
    out = _gate_run(tmp_path, "-m", "timm", require=True)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 failed" in out.stdout, out.stdout[-3000:]
    assert "ModuleNotFoundError" in out.stdout or "ImportError" in out.stdout
    assert "CBAM_FAST_REQUIRE_TIMM=1: this check against the real timm may not skip here, but it skipped: " \
           "for another reason" in out.stdout


def test_the_suite_marks_its_real_timm_checks():
    """tests/conftest.py loads the gate: the suite's checks against the real timm carry the marker.
    (And a run of the tests prints no benchmark footer.)"""
    out = _pytest("tests/test_bench_tools.py", "-m", "timm", "--co", "-q")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cbam_fast benchmarks" not in out.stdout
    assert "tests/test_bench_tools.py::test_e2e_timm_model_has_a_convertible_cbam_in_every_block" in out.stdout
    assert len([line for line in out.stdout.splitlines() if "::" in line]) == 1, out.stdout
