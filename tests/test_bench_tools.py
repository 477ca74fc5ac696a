"""The benchmark suite's tools, checked without a GPU: case selection and priority, the time
budget, the timer protocol pytest-benchmark must follow, a benchmark session driven with stand-in
measurements, the results schema, the report (markdown, plot, targets, README block), the
command lines, the sanitizer workload script, and gpu_check.sh's plumbing with stand-ins for
python and compute-sanitizer.

Every results file here is SYNTHETIC (device "SYNTHETIC TEST DATA"), made up to exercise the
tools, written under pytest's tmp_path and never into benchmarks/results/. The GPU-only pieces
(the CUDA-event clock, the flush, launch counting, peak memory, real measured configurations)
run in the last test, where CUDA is present.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import bench, cases, measure, report, results, sanitize  # noqa: E402

COPY_GBPS = 3000.0
SYNTHETIC_DEVICE = "SYNTHETIC TEST DATA"


# ----------------------------------------------------------------------------- synthetic results


def _floor_ms(case: cases.Case, mode: str, dtype="bfloat16") -> float:
    return cases.compulsory_bytes(case.shape, dtype, mode) / (COPY_GBPS * 1e9) * 1e3


# cbam_fast's % of floor, and the other implementations' times relative to cbam_fast's
PCT = {"fwd": 80.0, "fwd_bwd": 50.0}
RELATIVE = {"eager": 4.0, "compile": 2.0, "compile_max_autotune": 1.25}
LOSS_KEY = ("r50-s4-b32", "bfloat16", "channels_last", "fwd")  # where max-autotune beats cbam_fast
LOSS_RELATIVE = 0.8
B1_LAUNCHES = {"r50-s1-b1": 2, "r50-s2-b1": 3, "r50-s3-b1": 5, "r50-s4-b1": 3}


def synthetic_stamp(**overrides) -> dict:
    s = {"device": SYNTHETIC_DEVICE, "cuda": "0.0", "torch": "0.0", "triton": "0.0", "git_sha": "0" * 40,
         "date": "2099-01-01T00:00:00Z", "copy_gbps": COPY_GBPS}
    s.update(overrides)
    return s


def synthetic_rows(groups=("r50-b32", "r50-b1")) -> list[dict]:
    """bf16 rows with known ratios: cbam_fast at PCT % of floor; eager 4x, compile 2x,
    max-autotune 1.25x its time (0.8x at LOSS_KEY); batch 1 has no max-autotune row."""
    rows = []
    for case in cases.CASES:
        if case.group not in groups:
            continue
        for mode in case.modes:
            for fmt in cases.FORMATS:
                cf_ms = _floor_ms(case, mode) / (PCT[mode] / 100)
                for impl in cases.IMPLS:
                    if impl == "compile_max_autotune" and case.group == "r50-b1":
                        continue
                    rel = 1.0 if impl == "cbam_fast" else RELATIVE[impl]
                    if impl == "compile_max_autotune" and (case.name, "bfloat16", fmt, mode) == LOSS_KEY:
                        rel = LOSS_RELATIVE
                    launches = B1_LAUNCHES[case.name] if case.group == "r50-b1" and impl == "cbam_fast" else 11
                    cfg = cases.Config(case, "bfloat16", fmt, mode, impl)
                    peak = 100.0 if mode == "fwd_bwd" else None
                    rows.append(results.make_row(cfg, cf_ms * rel, COPY_GBPS, peak, launches))
    return rows


def write_synthetic(path: Path, rows=None, **stamp_overrides) -> Path:
    results.write(path, synthetic_stamp(**stamp_overrides), synthetic_rows() if rows is None else rows)
    return path


@pytest.fixture(autouse=True, scope="module")
def _repo_results_untouched():
    """No test here may write into the repository's benchmarks/results or BENCHMARKS.md."""
    def snapshot():
        files = sorted(p.name for p in results.RESULTS_DIR.glob("*")) if results.RESULTS_DIR.exists() else []
        md = ROOT / "benchmarks" / "BENCHMARKS.md"
        return files, md.read_text() if md.exists() else None

    before = snapshot()
    yield
    assert snapshot() == before, "a test wrote into benchmarks/results or benchmarks/BENCHMARKS.md"


# ----------------------------------------------------------------------------- cases


def test_configurations_cover_the_issue_matrix():
    configs = cases.all_configs()
    # 4 ResNet-50 and 3 YOLO shapes x 2 modes + 4 batch-1 shapes x forward, x 3 dtypes x 2 formats x 4 impls
    assert len(configs) == (4 * 2 + 3 * 2 + 4) * 3 * 2 * 4
    assert len({c.key for c in configs}) == len(configs)
    shapes = {c.case.name: c.case.shape for c in configs}
    assert shapes["r50-s1-b32"] == (32, 256, 56, 56) and shapes["r50-s4-b32"] == (32, 2048, 7, 7)
    assert shapes["yolo-p3-b16"] == (16, 128, 80, 80) and shapes["yolo-p5-b16"] == (16, 512, 20, 20)
    assert shapes["r50-s2-b1"] == (1, 512, 28, 28)
    assert not any(c.case.group == "r50-b1" and c.mode == "fwd_bwd" for c in configs)


def test_priority_order_puts_the_targets_first():
    configs = cases.all_configs()
    tiers = [cases.tier(c) for c in configs]
    assert tiers == sorted(tiers)
    first = [c for c in configs if cases.tier(c) == 0]
    assert {c.dtype for c in first} == {"bfloat16"}
    assert {(c.case.group, c.impl) for c in first} == {
        ("r50-b32", "cbam_fast"), ("r50-b32", "eager"), ("r50-b32", "compile"), ("r50-b1", "cbam_fast"), ("r50-b1", "eager")}
    assert len(first) == 4 * 2 * 2 * 3 + 4 * 2 * 2
    autotune_targets = [c for c in configs if cases.tier(c) in (1, 3)]
    assert len(autotune_targets) == 16 and {c.impl for c in autotune_targets} == {"compile_max_autotune"}
    assert configs[0].impl == "cbam_fast"  # within a configuration group cbam_fast comes first


def test_select_profiles_filters_and_skip_done():
    quick = cases.select("quick")
    assert {cases.tier(c) for c in quick} == {0, 1, 2, 3}
    assert all(c.impl != "compile_max_autotune" or (c.dtype == "bfloat16" and c.case.group == "r50-b32") for c in quick)
    assert all(c.impl != "compile" or (c.dtype == "bfloat16" and c.case.group == "r50-b32") for c in quick)
    assert {(c.impl, c.case.group, c.dtype) for c in quick if c.impl in ("cbam_fast", "eager")} == {
        (i, g, d) for i in ("cbam_fast", "eager") for g in cases.GROUPS for d in cases.DTYPES}
    assert len(cases.select("full")) == len(cases.all_configs())
    done = {quick[0].key, quick[1].key}
    assert [c.key for c in cases.select("quick", skip_done=done)] == [c.key for c in quick[2:]]
    some = cases.select("full", cases=["r50-b1", "yolo-p3-b16"], dtypes=["bf16"], formats=["cl"], impls=["eager"])
    assert {c.case.name for c in some} == {"r50-s1-b1", "r50-s2-b1", "r50-s3-b1", "r50-s4-b1", "yolo-p3-b16"}
    assert {(c.dtype, c.memory_format, c.impl) for c in some} == {("bfloat16", "channels_last", "eager")}
    with pytest.raises(ValueError, match="unknown dtype"):
        cases.select("full", dtypes=["fp8"])
    with pytest.raises(ValueError, match="unknown case"):
        cases.select("full", cases=["r101"])
    with pytest.raises(ValueError, match="unknown profile"):
        cases.select("fast")


def test_cpu_check_configs_cover_every_code_path():
    configs = cases.cpu_check_configs()
    assert {(c.case.group, c.mode) for c in configs} == {(c.group, m) for c in cases.CASES for m in c.modes}
    assert {(c.impl, c.mode, c.memory_format) for c in configs if c.impl != "compile_max_autotune"} == {
        (i, m, f) for i in ("cbam_fast", "eager", "compile") for m in cases.MODES for f in cases.FORMATS}
    assert {c.impl for c in configs} == set(cases.IMPLS)
    assert {c.memory_format for c in configs} == set(cases.FORMATS)
    assert {c.dtype for c in configs} == set(cases.DTYPES)
    assert cases.small_shape((32, 2048, 7, 7)) == (2, 128, 1, 1)


def test_bytes_model():
    assert cases.compulsory_bytes((2, 3, 4, 5), "bfloat16", "fwd") == 2 * 120 * 2
    assert cases.compulsory_bytes((2, 3, 4, 5), "float32", "fwd_bwd") == 5 * 120 * 4


# ----------------------------------------------------------------------------- budget, profiler


def test_budget_admits_what_fits_and_learns_costs():
    now = [0.0]
    budget = bench.Budget(100.0, clock=lambda: now[0])
    r50 = cases.CASE_BY_NAME["r50-s1-b32"]
    eager = cases.Config(r50, "bfloat16", "contiguous", "fwd", "eager")
    autotune = cases.Config(r50, "bfloat16", "contiguous", "fwd_bwd", "compile_max_autotune")
    assert budget.admit(eager) is None
    assert "time budget" in budget.admit(autotune)  # 180 s estimated > 100 s
    budget.record(autotune, 30.0)
    budget.record(autotune, 50.0)
    assert budget.estimate(autotune) == 40.0 and budget.admit(autotune) is None
    now[0] = 95.0
    assert budget.admit(eager) is None and budget.admit(autotune) is not None
    assert bench.Budget(None).admit(autotune) is None


def test_count_device_ops_counts_gpu_work_only():
    from torch.autograd import DeviceType

    events = [
        SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=False),  # a kernel
        SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=False),  # a memset
        SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=True),  # a record_function range
        SimpleNamespace(device_type=DeviceType.CPU, is_user_annotation=False),  # cudaLaunchKernel
        SimpleNamespace(device_type=DeviceType.CUDA),  # older torch: no is_user_annotation attribute
    ]
    assert measure.count_device_ops(events) == 3


def test_compiled_implementations_use_the_named_modes(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append((fn, kw)) or fn)
    bench.make_impl("compile")
    bench.make_impl("compile_max_autotune")
    bench.make_impl("compile", compile_backend="eager")
    from cbam_fast import reference

    assert all(fn is reference.cbam and kw["fullgraph"] and kw["dynamic"] is False for fn, kw in seen)
    assert [kw.get("mode") for _, kw in seen] == ["default", "max-autotune-no-cudagraphs", None]
    assert seen[2][1]["backend"] == "eager"
    with pytest.raises(ValueError):
        bench.make_impl("cudnn")


PAIRING_TEST = """
import pytest
from benchmarks import cases, measure


class StepClock(measure.GpuClock):
    \"\"\"GpuClock's pairing logic on a stand-in stream: each mark is 10 ms after the last.\"\"\"

    def __init__(self):
        super().__init__()
        self.now_ms = 0.0

    def _mark(self):
        self.now_ms += 10.0
        return self.now_ms

    def _elapsed_ms(self, start, end):
        return end - start


CFG = cases.Config(cases.CASES[0], "bfloat16", "channels_last", "fwd", "cbam_fast")


@pytest.mark.parametrize("cfg", [CFG], ids=[CFG.id])
def test_pedantic_drives_the_clock_in_pairs(request, cfg):
    clock = StepClock()
    request.node.add_marker(pytest.mark.benchmark(timer=clock, disable_gc=True))
    benchmark = request.getfixturevalue("benchmark")
    calls = []
    benchmark.pedantic(lambda: calls.append("call"), setup=lambda: calls.append("flush"), rounds=7,
                       warmup_rounds=0, iterations=1)
    assert calls == ["flush", "call"] * 7
    assert clock.durations_ms == [10.0] * 7
    assert abs(benchmark.stats.stats.median - 0.010) < 1e-12
    benchmark.extra_info.update(row="a results row", median_ms=10.0)
"""


def test_pytest_benchmark_times_with_the_gpu_clock_protocol(tmp_path):
    """The suite relies on pytest-benchmark's pedantic calling the marker's timer once before and
    once after each round, the setup outside: checked against the installed pytest-benchmark,
    in a separate pytest run (its table would otherwise show the stand-in clock's numbers)."""
    pytest.importorskip("pytest_benchmark")
    (tmp_path / "test_pairing.py").write_text(PAIRING_TEST)
    report_json = tmp_path / "pytest-benchmark.json"
    # a plain, serial pytest: under an xdist worker's environment pytest-benchmark would run one round
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path),
                          f"--benchmark-json={report_json}", "--benchmark-columns", "median,min,max,iqr,rounds",
                          "--benchmark-sort", "name"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (entry,) = json.loads(report_json.read_text())["benchmarks"]  # the Config parameter serialises
    assert math.isclose(entry["stats"]["median"], 0.010) and entry["extra_info"]["median_ms"] == 10.0


class _HostClock(measure.GpuClock):
    """GpuClock's pairing on the host clock: a CPU stand-in for the session test below."""

    def _mark(self):
        return time.perf_counter()

    def _elapsed_ms(self, start, end):
        return (end - start) * 1e3


def test_bench_session_end_to_end_with_cpu_stand_ins(tmp_path, monkeypatch):
    """BenchSession's flow without a GPU: the GPU measurements are replaced by stand-ins (host
    clock, no flush, fixed bandwidth, launches and peak), everything else is the real code: inputs,
    implementations, the forward check, the timing loop, rows, the file rewritten after every row,
    the budget's skips, and the final report."""
    monkeypatch.setattr(measure, "GpuClock", _HostClock)
    monkeypatch.setattr(measure, "L2Flush", lambda: (lambda: None))
    monkeypatch.setattr(measure, "copy_bandwidth_gbps", lambda: 1000.0)
    monkeypatch.setattr(measure, "count_launches", lambda step: 4)
    monkeypatch.setattr(measure, "peak_memory_mb", lambda step, resident: 12.5)
    monkeypatch.setattr(results, "stamp", lambda copy_gbps: synthetic_stamp(copy_gbps=copy_gbps))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setenv("CBAM_FAST_BACKEND", "auto")  # restored at the end (the session sets it)
    logged = []
    session = bench.BenchSession(out_dir=tmp_path, rounds=4, warmup=1, log=logged.append, device="cpu")
    monkeypatch.setenv("CBAM_FAST_BACKEND", "torch")  # cbam_fast's PyTorch path: this tests the session
    tiny = cases.Case("tiny-test", "r50-b32", (2, 8, 5, 5), ("fwd", "fwd_bwd"))
    for n, (impl, mode) in enumerate([("cbam_fast", "fwd"), ("eager", "fwd"), ("cbam_fast", "fwd_bwd")], start=1):
        row = session.measure(cases.Config(tiny, "float32", "channels_last", mode, impl))
        assert len(results.load(session.path)["rows"]) == n  # written at once
        assert row["launches"] == 4 and row["peak_mem_mb"] == (12.5 if mode == "fwd_bwd" else None)
        assert math.isclose(row["pct_floor"], row["gbps"] / 10.0)
    assert session.path.parent == tmp_path and len(logged) == 4
    session.budget = bench.Budget(0.0)
    assert session.admit(cases.Config(tiny, "float32", "contiguous", "fwd", "eager")) is not None
    summary = session.finish()
    assert "cbam_fast performance targets" in summary and "1 configuration(s) not measured" in summary
    assert (tmp_path / "BENCHMARKS.md").exists()


# ----------------------------------------------------------------------------- results schema


def test_results_roundtrip_and_schema(tmp_path):
    path = write_synthetic(tmp_path / "r.json")
    doc = results.load(path)
    assert doc["device"] == SYNTHETIC_DEVICE and len(doc["rows"]) == len(synthetic_rows())
    row = doc["rows"][0]
    assert list(row) == list(results.ROW_FIELDS)
    assert not path.with_name("r.json.tmp").exists()

    def broken(mutate):
        d = json.loads(path.read_text())
        mutate(d)
        return d

    bad = {
        "extra top-level key": lambda d: d.update(note="x"),
        "missing stamp field": lambda d: d.pop("triton"),
        "copy_gbps as string": lambda d: d.update(copy_gbps="3000"),
        "unknown impl": lambda d: d["rows"][0].update(impl="liger"),
        "unknown dtype": lambda d: d["rows"][0].update(dtype="fp8"),
        "3-d shape": lambda d: d["rows"][0].update(shape=[1, 2, 3]),
        "float launches": lambda d: d["rows"][0].update(launches=3.0),
        "zero median": lambda d: d["rows"][0].update(median_ms=0),
        "extra row key": lambda d: d["rows"][0].update(speedup=2.0),
    }
    for what, mutate in bad.items():
        with pytest.raises(ValueError):
            results.validate(broken(mutate))
            pytest.fail(f"accepted: {what}")


def test_make_row_derives_gbps_and_floor():
    cfg = cases.Config(cases.CASE_BY_NAME["r50-s1-b32"], "bfloat16", "contiguous", "fwd_bwd", "cbam_fast")
    S = 32 * 256 * 56 * 56 * 2
    row = results.make_row(cfg, 1.0, 2500.0, 123.4, 7)
    assert math.isclose(row["gbps"], 5 * S / 1e-3 / 1e9)
    assert math.isclose(row["pct_floor"], 100 * row["gbps"] / 2500.0)
    assert row["shape"] == [32, 256, 56, 56] and row["launches"] == 7 and row["peak_mem_mb"] == 123.4


def test_results_file_name_and_git_sha(tmp_path, monkeypatch):
    stamp = synthetic_stamp(device="NVIDIA H100 80GB HBM3", date="2099-02-03T04:05:06Z")
    assert results.device_slug(stamp["device"]) == "nvidia-h100-80gb-hbm3"
    first = results.results_path(tmp_path, stamp)
    assert first.name == "2099-02-03-nvidia-h100-80gb-hbm3.json"
    first.write_text("{}")
    assert results.results_path(tmp_path, stamp).name == "2099-02-03-nvidia-h100-80gb-hbm3-2.json"
    not_a_repo = tmp_path / "copy"
    not_a_repo.mkdir()
    monkeypatch.setenv("CBAM_FAST_GIT_SHA", "abc123")
    assert results.git_sha(not_a_repo) == "abc123"
    monkeypatch.delenv("CBAM_FAST_GIT_SHA")
    assert results.git_sha(not_a_repo) == "unknown"


# ----------------------------------------------------------------------------- report


def test_targets_are_geometric_means_against_the_goals():
    evs = {ev["target"].label: ev["formats"] for ev in report.evaluate_targets(synthetic_rows())}
    fwd_floor = evs["forward: % of floor"]["both"]
    assert math.isclose(fwd_floor["value"], 80.0) and fwd_floor["met"] is True and fwd_floor["n"] == 8
    assert evs["forward+backward: % of floor"]["both"]["met"] is False  # 50% < 60%
    assert math.isclose(evs["forward: speedup vs eager"]["contiguous"]["value"], 4.0)
    # vs the faster compile mode: 1.25x everywhere but 0.8x at one channels_last shape
    cl = evs["forward: speedup vs torch.compile"]["channels_last"]
    assert math.isclose(cl["value"], (1.25 ** 3 * 0.8) ** 0.25) and cl["met"] is False
    launches = evs["batch-1 forward: launches per call (max)"]["both"]
    assert launches["value"] == 5 and launches["met"] is False
    assert evs["batch-1 forward: speedup vs eager"]["both"]["met"] is True
    # a missing shape makes the verdict incomplete, never a pass
    rows = [r for r in synthetic_rows() if r["case"] != "r50-s2-b32"]
    ev = {e["target"].label: e["formats"] for e in report.evaluate_targets(rows)}["forward: % of floor"]["both"]
    assert ev["n"] == 6 and ev["expected"] == 8 and ev["met"] is None


def test_report_writes_markdown_plot_and_readme_block(tmp_path):
    pytest.importorskip("matplotlib", reason="scripts/run.sh installs matplotlib; the plot needs it")
    src = write_synthetic(tmp_path / "results" / "2099-01-01-synthetic.json")
    md, png = tmp_path / "BENCHMARKS.md", tmp_path / "results" / "plot.png"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.README_BEGIN}\nold block\n{report.README_END}\n\nafter\n")
    lines = report.generate([src], md_path=md, png_path=png, readme_path=readme)
    text = "\n".join(lines)
    assert "forward: % of floor" in text and "80.0%" in text and "NO" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    body = md.read_text()
    assert SYNTHETIC_DEVICE in body and "3000 GB/s" in body and "(results/plot.png)" in body
    assert "- r50-s4-b32 bfloat16 channels_last forward: 0.80x vs torch.compile (compile_max_autotune)" in body
    assert "**0.80x**" in body
    assert "### bfloat16, forward+backward" in body and "peak MiB" in body
    new = readme.read_text()
    assert new.startswith("# title\n\nbefore\n\n") and new.endswith("\n\nafter\n") and "old block" not in new
    assert "(BENCHMARKS.md)" in new and "(results/plot.png)" in new and "Where cbam_fast loses" in new
    report.update_readme(readme, report.readme_block(*report.load_many([src]), "BENCHMARKS.md", None))
    assert readme.read_text().count(report.README_BEGIN) == 1


def test_report_merges_runs_of_one_device(tmp_path):
    rows = synthetic_rows()
    first = write_synthetic(tmp_path / "a.json", rows)
    faster = [dict(r, median_ms=r["median_ms"] / 2) if r["impl"] == "cbam_fast" and r["mode"] == "fwd" else r
              for r in rows[:10]]
    second = write_synthetic(tmp_path / "b.json", faster, date="2099-01-02T00:00:00Z")
    stamps, merged = report.load_many([first, second])
    assert len(stamps) == 2 and len(merged) == len(rows)
    by_key = {cases.row_key(r): r for r in merged}
    assert all(by_key[cases.row_key(r)] == r for r in faster)
    other = write_synthetic(tmp_path / "c.json", rows, device="ANOTHER SYNTHETIC DEVICE")
    with pytest.raises(ValueError, match="differs"):
        report.load_many([first, other])


def test_report_and_runner_command_lines(tmp_path):
    src = write_synthetic(tmp_path / "r.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.report", str(src), "--md", str(tmp_path / "B.md"),
                          "--png", str(tmp_path / "p.png")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "cbam_fast performance targets" in out.stdout and (tmp_path / "B.md").exists()
    listing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--list", "--profile", "quick"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert f"{len(cases.select('quick'))} configurations" in listing.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_runner_refuses_to_time_without_cuda(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--out", str(tmp_path), "--impls", "eager"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert out.returncode == 2 and "no timing was taken" in out.stdout
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- sanitizer workload


def test_sanitizer_workload_dry_run_on_cpu(monkeypatch, capsys):
    """The compute-sanitizer workload script end to end on CPU (every shape, forward and backward,
    the None-parameter plumbing, the reference check). cbam_fast.cbam runs its PyTorch path here:
    this checks the script; the kernels themselves are the rest of the suite's job."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "torch")
    sanitize.run(device="cpu")
    assert f"{len(sanitize.SHAPES)} shapes done (fwd, fwd_bwd)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- gpu_check.sh plumbing

STUB_PYTHON = """\
#!/usr/bin/env bash
# Stand-in for python in gpu_check.sh's plumbing test: answers the script's calls, logs them.
echo "python $*" >> "$STUB_LOG"
case "$*" in
  "-c import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)") exit 0 ;;
  "-c import pytest") [ -z "${STUB_NO_PYTEST:-}" ] ;;
  "-c import "*) echo stub; exit 0 ;;
  "-c from benchmarks.results import"*) echo stub-sha ;;
  -V) echo "Python stub" ;;
  "-m pytest tests"*) echo "stub: 1 passed" ;;
  "-m benchmarks.sanitize"*) echo "stub sanitizer workload" ;;
  "-m pytest benchmarks"*|"-m benchmarks.run"*)
    while [ $# -gt 0 ]; do
      case "$1" in --bench-out|--out) cp "$STUB_RESULTS" "$2/$STUB_NAME" ;; esac
      shift
    done ;;
  "-m benchmarks.report"*) exec "$REAL_PYTHON" "$@" ;;
  *) echo "stub python: unexpected call: $*"; exit 3 ;;
esac
"""
STUB_SANITIZER = """\
#!/usr/bin/env bash
echo "compute-sanitizer $*" >> "$STUB_LOG"
echo "========= ERROR SUMMARY: 0 errors"
"""


def _gpu_check(tmp_path, out: Path, *args, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", STUB_PYTHON), ("compute-sanitizer", STUB_SANITIZER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
                "REAL_PYTHON": sys.executable, "STUB_LOG": str(log), **env}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args, str(out)],
                          capture_output=True, text=True, env=full_env, timeout=300)
    return proc, log.read_text() if log.exists() else ""


def test_gpu_check_plumbing_with_stand_ins(tmp_path):
    pytest.importorskip("matplotlib", reason="scripts/run.sh installs matplotlib; the plot needs it")
    synthetic = write_synthetic(tmp_path / "synthetic.json")
    out1 = tmp_path / "out1"
    proc, calls = _gpu_check(tmp_path, out1, STUB_RESULTS=str(synthetic), STUB_NAME="2099-01-01-synthetic.json")
    summary = (out1 / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("environment", "tests (CUDA)", "sanitizer memcheck", "benchmarks", "report"):
        assert any(line.startswith(step) and "passed" in line for line in summary.splitlines()), (step, summary)
    assert "cbam_fast performance targets" in summary
    assert (out1 / "bench" / "BENCHMARKS.md").exists() and (out1 / "bench" / "2099-01-01-synthetic.png").exists()
    bench_call = next(line for line in calls.splitlines() if line.startswith("python -m pytest benchmarks"))
    assert "--bench-profile quick" in bench_call and f"--bench-out {out1}/bench" in bench_call
    budget = int(float(bench_call.split("--bench-budget-s ")[1].split()[0]))
    assert 380 <= budget <= 520, bench_call  # the stand-ins take seconds: nearly all of 520 s is left
    assert "compute-sanitizer --tool memcheck --error-exitcode 99" in calls
    assert "-m benchmarks.sanitize" in calls and "-m pytest tests" in calls

    # a second call: benchmarks only, through the runner (no pytest), completing the first
    out2 = tmp_path / "out2"
    first_json = out1 / "bench" / "2099-01-01-synthetic.json"
    proc, calls = _gpu_check(tmp_path, out2, "--bench-only", "--skip-done", str(first_json),
                             STUB_RESULTS=str(synthetic), STUB_NAME="2099-01-02-synthetic.json", STUB_NO_PYTEST="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_call = [line for line in calls.splitlines() if "-m benchmarks.run" in line][-1]
    assert f"--skip-done {first_json}" in run_call and "--profile quick" in run_call
    assert "(+1 more run(s))" in (out2 / "summary.txt").read_text()  # the report merged both files
    assert "tests (CUDA)" not in (out2 / "summary.txt").read_text()


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-event clock, flush and profiler need a GPU")
def test_gpu_measurement_path(tmp_path, monkeypatch):
    """On CUDA: the clock times GPU work, the launch count and peak memory are plausible, and one
    small configuration goes through BenchSession.measure into a valid results file."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "triton")  # BenchSession sets it: restored after the test
    clock = measure.GpuClock()
    times = measure.timed_rounds(lambda: torch.cuda._sleep(1_000_000), lambda: None, 3, clock)
    assert len(times) == 3 and all(t > 0.05 for t in times)  # a million cycles: ~0.5 ms at ~2 GHz
    assert measure.count_launches(lambda: torch.ones(1000, device="cuda").mul_(2)) in (2, 3)
    session = bench.BenchSession(out_dir=tmp_path, rounds=5, warmup=1, log=lambda _: None)
    tiny = cases.Case("tiny-test", "r50-b32", (2, 64, 8, 8), ("fwd", "fwd_bwd"))
    for impl in ("cbam_fast", "eager"):
        for mode in tiny.modes:
            row = session.measure(cases.Config(tiny, "bfloat16", "channels_last", mode, impl))
            assert row["median_ms"] > 0 and row["launches"] and row["launches"] > 0
            assert (row["peak_mem_mb"] is None) == (mode == "fwd")
    doc = results.load(session.path)
    assert len(doc["rows"]) == 4 and doc["copy_gbps"] > 100
