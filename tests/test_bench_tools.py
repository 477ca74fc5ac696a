"""The benchmark suite's tools, checked without a GPU: case selection and priority, the time
budget, the timer protocol pytest-benchmark must follow, a benchmark session driven with stand-in
measurements, the results schema, the report (markdown, plot, targets, README block, the static
model's predictions beside the measurements, the end-to-end section), the command lines, the
sanitizer workload script, the predictions side file, the end-to-end training-step row on a toy
CNN on CPU, and gpu_check.sh's plumbing (parts, caps, budget) with stand-ins for python and
compute-sanitizer.

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

from benchmarks import bench, cases, e2e, measure, predict, report, results, sanitize  # noqa: E402

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


def synthetic_rows(groups=("r50-b32", "r50-b1", "se-r50-b32", "se-r50-b1")) -> list[dict]:
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
                    if impl == "compile_max_autotune" and case.group in ("r50-b1", "se-r50-b1"):
                        continue
                    rel = 1.0 if impl == "cbam_fast" else RELATIVE[impl]
                    if impl == "compile_max_autotune" and (case.name, "bfloat16", fmt, mode) == LOSS_KEY:
                        rel = LOSS_RELATIVE
                    launches = B1_LAUNCHES.get(case.name, 11) if case.group == "r50-b1" and impl == "cbam_fast" else 11
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
    # CBAM: 4 ResNet-50 and 3 YOLO shapes x 2 modes + 4 batch-1 shapes x forward; the SE gate: 4
    # SE-ResNet-50 and 4 RegNetY shapes x 2 modes + 4 batch-1 shapes; x 3 dtypes x 2 formats x 4 impls
    assert len(configs) == (4 * 2 + 3 * 2 + 4 + 4 * 2 + 4 * 2 + 4) * 3 * 2 * 4
    assert len({c.key for c in configs}) == len(configs)
    shapes = {c.case.name: c.case.shape for c in configs}
    assert shapes["r50-s1-b32"] == (32, 256, 56, 56) and shapes["r50-s4-b32"] == (32, 2048, 7, 7)
    assert shapes["yolo-p3-b16"] == (16, 128, 80, 80) and shapes["yolo-p5-b16"] == (16, 512, 20, 20)
    assert shapes["r50-s2-b1"] == (1, 512, 28, 28)
    assert not any(c.case.group == "r50-b1" and c.mode == "fwd_bwd" for c in configs)
    assert shapes["seresnet50-s4-b32"] == (32, 2048, 7, 7) and shapes["regnety16-s1-b32"] == (32, 48, 56, 56)
    names = [c.name for c in cases.CASES]
    assert not any(a != b and a in b for a in names for b in names)  # -k filters match substrings
    assert {c.case.block for c in configs if c.case.group.startswith("se-")} == {"se", "se-rd4"}


def test_priority_order_puts_the_targets_first():
    configs = cases.all_configs()
    tiers = [cases.tier(c) for c in configs]
    assert tiers == sorted(tiers)
    first = [c for c in configs if cases.tier(c) == 0]
    assert {c.dtype for c in first} == {"bfloat16"}
    assert {(c.case.group, c.impl) for c in first} == {
        (p + g, i) for p in ("", "se-") for g, i in (("r50-b32", "cbam_fast"), ("r50-b32", "eager"),
                                                    ("r50-b32", "compile"), ("r50-b1", "cbam_fast"), ("r50-b1", "eager"))}
    assert len(first) == 2 * (4 * 2 * 2 * 3 + 4 * 2 * 2)  # CBAM's and the SE gate's
    autotune_targets = [c for c in configs if cases.tier(c) in (1, 3)]
    assert len(autotune_targets) == 32 and {c.impl for c in autotune_targets} == {"compile_max_autotune"}
    assert configs[0].impl == "cbam_fast"  # within a configuration group cbam_fast comes first


def test_select_profiles_filters_and_skip_done():
    quick = cases.select("quick")
    assert {cases.tier(c) for c in quick} == {0, 1, 2, 3}
    assert all(c.impl != "compile_max_autotune" or (c.dtype == "bfloat16" and c.case.group in cases.B32_TARGET_GROUPS)
               for c in quick)
    assert all(c.impl != "compile" or (c.dtype == "bfloat16" and c.case.group in cases.B32_TARGET_GROUPS) for c in quick)
    assert {(c.impl, c.case.group, c.dtype) for c in quick if c.impl in ("cbam_fast", "eager")} == {
        (i, g, d) for i in ("cbam_fast", "eager") for g in cases.GROUPS for d in cases.DTYPES}
    assert len(cases.select("full")) == len(cases.all_configs())
    targets = cases.select("targets")
    assert {cases.tier(c) for c in targets} == {0} and len(targets) == 2 * (4 * 2 * 2 * 3 + 4 * 2 * 2)
    # inside the targets: every row that compiles nothing first, then torch.compile forward, then forward+backward
    compiled = [c.impl == "compile" for c in targets]
    assert compiled == sorted(compiled) and compiled.count(True) == 32
    assert [c.mode for c in targets if c.impl == "compile"] == ["fwd"] * 16 + ["fwd_bwd"] * 16
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
    profiled = []

    def profile_call(step, setup=None):
        profiled.append(setup)
        return 4, [{"name": "kernel_a", "us": 1.5}, {"name": "kernel_b", "us": 2.5}]

    monkeypatch.setattr(measure, "profile_call", profile_call)
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
    assert len(profiled) == 3 and all(callable(f) for f in profiled)  # the profiled call follows a flush
    kernels = json.loads(session.kernels_path.read_text())
    assert session.kernels_path.name == session.path.stem + ".kernels.json"
    assert "MEASURED" in kernels["what"] and len(kernels["rows"]) == 3
    first = kernels["rows"][0]
    assert first["kernels"][1] == {"name": "kernel_b", "us": 2.5} and first["device_us"] == 4.0
    assert not results.is_results_file(session.kernels_path) and results.is_results_file(session.path)
    session.budget = bench.Budget(0.0)
    assert session.admit(cases.Config(tiny, "float32", "contiguous", "fwd", "eager")) is not None
    summary = session.finish()
    assert "cbam_fast performance targets" in summary and "1 configuration(s) not measured" in summary
    assert "per-kernel GPU times" in summary
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


# ----------------------------------------------------------------------------- static-model predictions


def _stand_in_report(call, cache):
    """A stand-in for benchmarks.plan.report: fixed PREDICTED numbers; one call fails."""
    if call.shape == (32, 1024, 14, 14) and call.fmt == "cl" and call.mode == "fwd" and call.preset == "default":
        raise RuntimeError("stand-in failure")
    rows = [SimpleNamespace(part="fwd", role="pool", kernel="k_fwd", us=3.0),
            SimpleNamespace(part="bwd", role="dx", kernel="k_bwd", us=4.0)]
    return SimpleNamespace(call=call, total_us=10.0, eager_us=30.0, floor_us=5.0, eager_launches=17, rows=rows,
                           launches=lambda part: 4 if part == "fwd" else 5)


def test_predictions_side_file_with_a_stand_in_model(tmp_path):
    configs = cases.select("targets")
    out = tmp_path / "predicted.json"
    logged = []
    doc = predict.predict(configs, out, report_fn=_stand_in_report, log=logged.append)
    assert doc == json.loads(out.read_text()) and "PREDICTIONS" in doc["what"] and "NOT measurements" in doc["what"]
    # 48 cbam_fast rows: CBAM's 24 and the SE gate's 24
    assert len(doc["rows"]) == 47 and len(doc["failed"]) == 1 and doc["complete"] is False
    assert "stand-in failure" in doc["failed"][0]["error"] and any("FAILED" in line for line in logged)
    rows = predict.by_key(predict.load(out))
    fwd = rows[("r50-s1-b32", "bfloat16", "contiguous", "fwd")]
    both = rows[("r50-s1-b32", "bfloat16", "contiguous", "fwd_bwd")]
    assert fwd["pred_us"] == 10.0 and fwd["pred_vs_eager"] == 3.0 and fwd["pred_pct_floor"] == 50.0
    assert fwd["pred_launches"] == 4 and both["pred_launches"] == 9 and fwd["pred_eager_launches"] == 17
    assert [r["kernel"] for r in fwd["launch_rows"]] == ["k_fwd"] and len(both["launch_rows"]) == 2
    call = predict.config_call(cases.Config(cases.CASE_BY_NAME["r50-s2-b1"], "bfloat16", "channels_last", "fwd",
                                            "cbam_fast"))
    assert (call.shape, call.dtype, call.fmt, call.preset, call.train, call.mode) == (
        (1, 512, 28, 28), "bf16", "cl", "default", False, "fwd")
    late = predict.predict(configs, tmp_path / "late.json", budget_s=-1.0, report_fn=_stand_in_report, log=logged.append)
    assert late["rows"] == [] and len(late["not_reached"]) == 48  # past its budget: listed, not predicted
    se = predict.config_call(cases.Config(cases.CASE_BY_NAME["seresnet50-s1-b32"], "bfloat16", "contiguous", "fwd",
                                          "cbam_fast"))
    assert (se.shape, se.preset) == ((32, 256, 56, 56), "se")


def test_predictions_refuse_the_interpreter(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert predict.main(["--out", str(tmp_path / "p.json")]) == 2
    assert "unset TRITON_INTERPRET" in capsys.readouterr().out and not (tmp_path / "p.json").exists()


def test_predictions_from_the_real_static_model(tmp_path):
    """benchmarks.predict on the real benchmarks.plan, for the cheapest target call (compiles its
    kernels for sm_90 in a fresh process without TRITON_INTERPRET; no GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / "predicted.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.predict", "--out", str(out), "--cases", "r50-s4-b1",
                           "--formats", "cl"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = predict.load(out)
    (row,) = doc["rows"]
    assert (row["case"], row["memory_format"], row["mode"]) == ("r50-s4-b1", "channels_last", "fwd")
    assert row["pred_us"] > 0 and row["pred_launches"] >= 1 and row["pred_pct_floor"] > 0
    assert doc["model"] and doc["arch"] == 90 and "PREDICTION" in proc.stdout


# ----------------------------------------------------------------------------- report: predictions, end to end


def test_report_puts_predictions_beside_measurements_and_the_e2e_row(tmp_path):
    src = write_synthetic(tmp_path / "2099-01-01-synthetic.json")
    side = _stub_side_files(tmp_path)
    kernels = tmp_path / "2099-01-01-synthetic.kernels.json"
    kernels.write_text("{}")
    md = tmp_path / "BENCHMARKS.md"
    lines = report.generate([src, kernels], md_path=md, png_path=tmp_path / "p.png",
                            predicted_path=Path(side["STUB_PREDICTED"]), e2e_path=Path(side["STUB_E2E"]))
    text = "\n".join(lines)
    assert f"left out {kernels}" in text
    assert "static model vs measurement (48 cbam_fast rows" in text and "not a measurement" in text
    assert "r50-b32 bf16 forward+backward (8 rows): measured/predicted time 2.00x" in text
    assert "cbam_fast vs eager 1.25x" in text
    body = md.read_text()
    assert "## Static model: predicted vs measured" in body and "PREDICTIONS of `python -m benchmarks.plan`" in body
    assert "| predicted us (static model) |" in body and "| measured us |" in body and "| 3.25x |" in body
    assert "cbam_fast us: predicted (static model)" in body
    assert "## End to end: a training step" in body and "| compile_eager | not measured: time budget" in body
    # an unreadable predictions file: the report goes on and says so
    bad = tmp_path / "predicted-bad.json"
    bad.write_text('{"rows": [{"case": "x"}]}')
    lines = report.generate([src], md_path=md, png_path=tmp_path / "p.png", predicted_path=bad)
    assert any("predictions (static model) not used" in line for line in lines)
    assert "## Static model" not in md.read_text()


# ----------------------------------------------------------------------------- end to end (CPU: code path only)


class _ToyCBAMNet(torch.nn.Module):
    """A small CNN with two timm-style CBAM modules (tests/originals) that cbam_fast.convert replaces."""

    def __init__(self, num_classes=10):
        super().__init__()
        if str(ROOT / "tests") not in sys.path:
            sys.path.insert(0, str(ROOT / "tests"))
        from originals.timm_cbam import CbamModule

        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1.add_module("se", CbamModule(16))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    CbamModule(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


def test_e2e_training_step_code_path_on_cpu(tmp_path, monkeypatch):
    """benchmarks.e2e end to end on CPU with a toy CNN: every variant, the JSON, the derived
    ratios, the summary. CPU TIMINGS ARE NOT PERFORMANCE CLAIMS: this checks the code path only
    (cbam_fast runs its PyTorch path here; torch.compile traces with backend="eager")."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "torch")
    out = tmp_path / "e2e.json"
    logged = []
    doc = e2e.run(_ToyCBAMNet, model_name="toy CNN", out=out, batch=2, image_size=16, num_classes=10, device="cpu",
                  steps=2, warmup=1, compile_backend="eager", log=logged.append)
    assert doc == json.loads(out.read_text())
    assert doc["status"] == "measured" and doc["cpu_mode"] is True and "NOT performance claims" in doc["note"]
    assert set(doc["variants"]) == set(e2e.VARIANTS) and not doc["failed"] and not doc["skipped"]
    assert doc["cbam_modules"] == 2 and doc["cbam_module_names"] == ["block1.se", "block2.3"]
    for entry in doc["variants"].values():
        assert entry["median_ms"] > 0 and len(entry["step_ms"]) == 2 and math.isfinite(entry["first_loss"])
    assert doc["first_loss_rel_diff"] < 1e-2  # same weights, same batch: the same loss
    d = doc["derived"]
    assert d["speedup_cbam_fast_vs_eager"] and d["cbam_share_of_eager_step"] is not None
    assert "by removal" in d["cbam_share_method"]
    assert any("NOT performance claims" in line for line in logged)
    assert "CPU mode" in "\n".join(report.e2e_markdown(doc))
    # a budget too small for anything: every variant skipped for time, none measured
    late = e2e.run(_ToyCBAMNet, model_name="toy CNN", batch=2, image_size=16, num_classes=10, device="cpu",
                   budget_s=0.0, log=logged.append)
    assert set(late["skipped"]) == set(e2e.VARIANTS) and late["status"] == "failed"
    assert all("time budget" in why for why in late["skipped"].values())


def test_e2e_converts_with_the_model_returning_convert(monkeypatch):
    """cbam_fast.convert returns the model (PyTorch's convention): the e2e row's cbam_fast
    variant is that model, with both CBAM modules replaced."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "torch")
    doc = e2e.run(_ToyCBAMNet, model_name="toy CNN", batch=2, image_size=16, num_classes=10, device="cpu",
                  amp_dtype=None, channels_last=False, steps=1, warmup=1, variants=("cbam_fast", "no_cbam"),
                  log=lambda _: None)
    assert set(doc["variants"]) == {"cbam_fast", "no_cbam"} and doc["cbam_modules"] == 2


def test_e2e_without_timm_is_skipped_never_passed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    out = tmp_path / "e2e.json"
    assert e2e.main(["--out", str(out), "--device", "cpu"]) == e2e.EXIT_SKIPPED
    doc = json.loads(out.read_text())
    assert doc["status"] == "skipped" and "timm is not importable" in doc["reason"] and not doc["variants"]
    assert "SKIPPED (not a pass)" in capsys.readouterr().out
    assert "SKIPPED (not a pass)" in report.e2e_lines(doc)[0]


def test_e2e_timm_model_has_a_convertible_cbam_in_every_block():
    pytest.importorskip("timm", reason="timm is not importable here (the GPU machine's image has it)")
    names = e2e.convertible_names(lambda: e2e.timm_resnet50_cbam(num_classes=10))
    assert len(names) == 3 + 4 + 6 + 3  # one per bottleneck block of ResNet-50


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
  "-c # gpu_check env"*)
    echo "torch stub, CUDA stub, triton stub, device STUB GPU"
    echo "git sha: stub-sha"
    echo "have: torch triton ${STUB_NO_PYTEST-pytest} pytest_benchmark xdist matplotlib ${STUB_NO_TIMM-timm}" ;;
  "-m pytest tests"*) echo "tests/test_forward.py::test_a PASSED"; sleep "${STUB_TESTS_SLEEP:-0}"
                      echo "=== 1 passed in 0.01s ===" ;;
  "-m benchmarks.sanitize"*)
    if [ -n "${STUB_SAN_UNSUPPORTED:-}" ]; then echo "========= Error: Device not supported"; exit 1; fi
    echo "stub sanitizer workload" ;;
  "-m benchmarks.predict"*)
    while [ $# -gt 0 ]; do
      case "$1" in --out) cp "$STUB_PREDICTED" "$2" ;; esac
      shift
    done
    echo "benchmarks.predict: stub" ;;
  "-m benchmarks.e2e"*)
    if [ "${STUB_NO_TIMM+set}" = set ]; then echo "e2e: SKIPPED (not a pass): timm is not importable (stub)"; exit 3; fi
    while [ $# -gt 0 ]; do
      case "$1" in --out) cp "$STUB_E2E" "$2" ;; esac
      shift
    done
    echo "e2e compile_eager: skipped (time budget: needs about 150 s, 40 s left)"
    echo "e2e (stub model, batch 32): median step ms over 10 steps"
    echo "  eager 100.00 ms" ;;
  "-m pytest benchmarks"*|"-m benchmarks.run --profile"*)
    while [ $# -gt 0 ]; do
      case "$1" in --bench-out|--out) cp "$STUB_RESULTS" "$2/$STUB_NAME" ;; esac
      shift
    done
    echo "3 configuration(s) not measured for lack of time (stub)" ;;
  "-m benchmarks.report"*|"-m benchmarks.run --list"*) exec "$REAL_PYTHON" "$@" ;;
  *) echo "stub python: unexpected call: $*"; exit 3 ;;
esac
"""
STUB_SANITIZER = """\
#!/usr/bin/env bash
echo "compute-sanitizer $*" >> "$STUB_LOG"
shift 6  # --tool T --error-exitcode 99 --print-limit 100
"$@" || exit $?
echo "========= ERROR SUMMARY: 0 errors"
"""


def _gpu_check(tmp_path, out: Path, *args, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", STUB_PYTHON), ("compute-sanitizer", STUB_SANITIZER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    if log.exists():
        log.unlink()
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
                "REAL_PYTHON": sys.executable, "STUB_LOG": str(log), **env}
    full_env.pop("GPU_CHECK_MODE", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args, str(out)],
                          capture_output=True, text=True, env=full_env, timeout=300)
    return proc, log.read_text() if log.exists() else ""


def _stub_side_files(tmp_path) -> dict:
    """A predictions file and an end-to-end file, SYNTHETIC, for the stand-in python to copy."""
    pred_rows = []
    for row in synthetic_rows():
        if row["impl"] == "cbam_fast":
            pred_rows.append({**{k: row[k] for k in ("case", "shape", "dtype", "memory_format", "mode", "impl")},
                              "call": "synthetic", "pred_us": row["median_ms"] * 1e3 / 2, "pred_eager_us": 1.0,
                              "pred_vs_eager": 3.25, "pred_floor_us": 1.0, "pred_pct_floor": 55.5,
                              "pred_launches": 9, "pred_eager_launches": 20, "launch_rows": []})
    pred = tmp_path / "stub-predicted.json"
    pred.write_text(json.dumps({"what": predict.WHAT, "model": {}, "rows": pred_rows, "failed": [],
                                "not_reached": [], "complete": True}))
    e2e_doc = e2e.skipped_doc("unused", "SYNTHETIC")
    e2e_doc.update(status="measured", batch=32, image_size=224, amp_dtype="bfloat16", channels_last=True,
                   device=SYNTHETIC_DEVICE, steps=10, warmup=3, cpu_mode=False, note="",
                   variants={"eager": {"median_ms": 100.0, "first_step_s": 2.0, "peak_mem_mb": 1.0},
                             "cbam_fast": {"median_ms": 80.0, "first_step_s": 9.0, "peak_mem_mb": 1.0}},
                   skipped={"compile_eager": "time budget: needs about 150 s, 40 s left"})
    e2e_doc["derived"] = e2e.derived(e2e_doc["variants"])
    path = tmp_path / "stub-e2e.json"
    path.write_text(json.dumps(e2e_doc))
    return {"STUB_PREDICTED": str(pred), "STUB_E2E": str(path)}


def _summary_line(summary: str, step: str) -> str:
    return next((line for line in summary.splitlines() if line.startswith(step)), f"no line for {step!r}")


def test_gpu_check_plumbing_with_stand_ins(tmp_path):
    pytest.importorskip("matplotlib", reason="scripts/run.sh installs matplotlib; the plot needs it")
    synthetic = write_synthetic(tmp_path / "synthetic.json")
    side = _stub_side_files(tmp_path)
    out1 = tmp_path / "out1"
    archive = tmp_path / "back" / "gc.tgz"
    proc, calls = _gpu_check(tmp_path, out1, "--archive", str(archive), STUB_RESULTS=str(synthetic),
                             STUB_NAME="2099-01-01-synthetic.json", **side)
    summary = (out1 / "summary.txt").read_text()
    # nothing failed; the stand-ins report configurations and an e2e variant skipped for time: status 3
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("environment", "benchmarks", "end to end", "tests (GPU)", "sanitizer memcheck",
                 "predictions (model)", "report"):
        assert "passed" in _summary_line(summary, step), (step, summary)
    assert "1 passed" in _summary_line(summary, "tests (GPU)")
    assert "cbam_fast performance targets" in summary
    assert "static model vs measurement" in summary and "measured/predicted time 2.00x" in summary
    assert "end to end (SYNTHETIC" in summary and "cbam_fast vs eager 1.25x" in summary
    assert "budget:" in summary and "of 360s (mode default)" in summary and "benchmarks " in summary
    assert "skipped or cut for time:" in summary
    assert "benchmarks: 3 configuration(s) not measured for lack of time" in summary
    assert "end to end: compile_eager (time budget" in summary
    assert "benchmarks not yet measured (profile targets): 0 configurations" in summary
    md = (out1 / "bench" / "BENCHMARKS.md").read_text()
    assert "## Static model: predicted vs measured" in md and "predicted us (static model)" in md
    assert "cbam_fast us: predicted (static model)" in md and "## End to end: a training step" in md
    assert (out1 / "bench" / "2099-01-01-synthetic.png").exists()
    assert archive.exists() and archive.stat().st_size > 0
    lines = calls.splitlines()
    bench_call = next(line for line in lines if line.startswith("python -m pytest benchmarks"))
    assert "--bench-profile targets" in bench_call and f"--bench-out {out1}/bench" in bench_call
    soft = int(float(bench_call.split("--bench-budget-s ")[1].split()[0]))
    # 360 s less the later parts' shares and the report's reserve (180 s), less 25 s for the last
    # configuration's overrun; the stand-ins' environment takes a second, a real one ~10 s
    assert 145 <= soft <= 160, bench_call
    pred_call = next(line for line in lines if "-m benchmarks.predict" in line)
    assert "--profile targets" in pred_call and f"--out {out1}/predicted.json" in pred_call
    e2e_call = next(line for line in lines if "-m benchmarks.e2e" in line)
    assert f"--out {out1}/e2e.json --budget-s" in e2e_call
    test_call = next(line for line in lines if line.startswith("python -m pytest tests"))
    assert "tests/test_forward.py" in test_call and "tests/test_packaging.py" not in test_call
    assert "-m not slow" in test_call and "-n 8" in test_call
    assert "compute-sanitizer --tool memcheck --error-exitcode 99" in calls
    assert "-m benchmarks.sanitize --max-shapes 5" in calls
    # the order of the parts: benchmarks, end to end, tests, sanitizer, report
    order = [next(i for i, line in enumerate(lines) if key in line) for key in
             ("-m pytest benchmarks", "-m benchmarks.e2e", "-m pytest tests", "-m benchmarks.sanitize",
              "-m benchmarks.report")]
    assert order == sorted(order), calls

    # a second call: benchmarks only, through the runner (no pytest), completing the first
    out2 = tmp_path / "out2"
    first_json = out1 / "bench" / "2099-01-01-synthetic.json"
    proc, calls = _gpu_check(tmp_path, out2, "--bench-only", "--skip-done", str(first_json), "--skip", "predict",
                             STUB_RESULTS=str(synthetic), STUB_NAME="2099-01-02-synthetic.json", STUB_NO_PYTEST="",
                             **side)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_call = [line for line in calls.splitlines() if "-m benchmarks.run --profile" in line][-1]
    assert f"--skip-done {first_json}" in run_call and "--profile targets" in run_call
    summary2 = (out2 / "summary.txt").read_text()
    assert "(+1 more run(s))" in summary2  # the report merged both files
    assert "tests (GPU)" not in summary2 and "end to end" not in summary2 and "-m benchmarks.predict" not in calls
    soft2 = float(run_call.split("--budget-s ")[1].split()[0])
    assert soft2 > 250, run_call  # the parts left out leave their shares to the benchmarks


def test_gpu_check_caps_skips_and_unavailable_tools(tmp_path):
    """A part cut at its cap, timm missing (never a pass), compute-sanitizer unable to run here,
    the long mode's choices, and a budget too small for a part."""
    out = tmp_path / "out"
    proc, calls = _gpu_check(tmp_path, out, "--skip", "bench", "--cap", "tests=2", STUB_TESTS_SLEEP="20",
                             STUB_NO_TIMM="", STUB_SAN_UNSUPPORTED="1")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CUT AT ITS CAP" in _summary_line(summary, "tests (GPU)")
    assert "1 passed, 0 failed, 0 errors, 0 skipped, as far as it got" in _summary_line(summary, "tests (GPU)")
    assert "tests: cut at the cap of 2s" in summary
    assert "SKIPPED (not a pass)" in _summary_line(summary, "end to end") and "timm is not importable" in summary
    assert "UNAVAILABLE here" in _summary_line(summary, "sanitizer memcheck")
    assert "passed" not in _summary_line(summary, "end to end") + _summary_line(summary, "sanitizer memcheck")
    assert "-m benchmarks.predict" not in calls and not any(line.startswith("report") for line in summary.splitlines())

    out = tmp_path / "out-long"
    proc, calls = _gpu_check(tmp_path, out, "--long", "--skip", "bench", "--skip", "e2e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    test_call = next(line for line in calls.splitlines() if line.startswith("python -m pytest tests"))
    assert "not slow" not in test_call
    assert "-m benchmarks.sanitize" in calls and "--max-shapes" not in calls
    assert "of 540s (mode long)" in (out / "summary.txt").read_text()

    out = tmp_path / "out-small"
    proc, calls = _gpu_check(tmp_path, out, "--budget-s", "30", "--skip", "bench", "--skip", "e2e")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SKIPPED FOR TIME" in _summary_line(summary, "tests (GPU)")
    assert "SKIPPED FOR TIME" in _summary_line(summary, "sanitizer memcheck")
    assert "-m pytest tests" not in calls and "  - tests (all)" in summary


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
    kernels = json.loads(session.kernels_path.read_text())["rows"]
    assert [k["id"] for k in kernels] == [cases.Config(tiny, "bfloat16", "channels_last", r["mode"], r["impl"]).id
                                          for r in doc["rows"]]
    for k, r in zip(kernels, doc["rows"], strict=True):
        assert len(k["kernels"]) == r["launches"] and all(op["us"] >= 0 and op["name"] for op in k["kernels"])
    launches, ops = measure.profile_call(lambda: torch.ones(1000, device="cuda").mul_(2))
    assert launches == len(ops) and launches in (2, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the end-to-end row's CUDA path needs a GPU")
def test_e2e_on_cuda_with_a_toy_cnn(monkeypatch):
    """benchmarks.e2e's CUDA path (synchronised steps, the Triton kernels, peak memory) on the toy CNN."""
    monkeypatch.setenv("CBAM_FAST_BACKEND", "triton")  # e2e.run sets it on CUDA: restored after the test
    doc = e2e.run(_ToyCBAMNet, model_name="toy CNN", batch=4, image_size=32, num_classes=10, device="cuda",
                  steps=3, warmup=2, variants=("eager", "cbam_fast", "no_cbam"), log=lambda _: None)
    assert set(doc["variants"]) == {"eager", "cbam_fast", "no_cbam"} and not doc["failed"], doc["failed"]
    assert doc["cpu_mode"] is False and all(v["peak_mem_mb"] > 0 for v in doc["variants"].values())
    assert doc["first_loss_rel_diff"] < 2e-2


def _pass(reads=(), writes=(), reverse=0):
    return SimpleNamespace(reads=reads, writes=writes, constexprs=dict(REVERSE=reverse))


def test_l2_trace_reuse_distances_and_evict_first():
    """The static report's L2 trace (benchmarks/plan.py _walk), the forward's three passes over 4
    samples of 1 byte: a pass's re-read of sample n is as far as the slices touched since, and a
    line accessed evict_first displaces none (it drops below every other line)."""
    from benchmarks import plan

    def forward(gate_hints):
        l2 = {}
        plan._walk(l2, _pass(("x",)), 4, 1.0)
        spool = plan._walk(l2, _pass(("x",), reverse=1), 4, 1.0)
        gate = plan._walk(l2, _pass(("x",), ("y",)), 4, 1.0, gate_hints)
        return spool, gate

    spool, gate = forward(())
    assert spool == [1.0, 2.0, 3.0, 4.0]  # x[3] was touched last, x[0] first
    assert gate == [1.0, 3.0, 5.0, 7.0]  # x[0..n], y[0..n-1] since
    # either hint keeps x[n] n + 1 deep: y's lines, or the read x lines, are the victims
    for hints in (("x", "y"), ("y",), ("x",)):
        assert forward(hints)[1] == [1.0, 2.0, 3.0, 4.0], hints
    # an evict_first line lies below every default one: re-read after a default pass, it has sunk
    l2 = {}
    plan._walk(l2, _pass(("x",)), 2, 1.0, ("x",))
    plan._walk(l2, _pass(("dy",)), 2, 1.0)
    assert plan._walk(l2, _pass(("x",)), 2, 1.0) == [4.0, 4.0]


def test_vector_note_says_why_no_16_byte_access():
    """The report's reason for a call without 16-byte full-size accesses: rows of a multiple of 16
    elements have them; NCHW 7 x 7 and 14 x 14 do not, and the reason names the row's bytes."""
    from benchmarks import plan
    from benchmarks.launched import Call

    for shape, fmt in (((32, 256, 56, 56), "nchw"), ((32, 512, 28, 28), "nchw"), ((32, 2048, 7, 7), "cl")):
        assert plan.vector_note(Call(shape, "bf16", fmt)) is None
    note = plan.vector_note(Call((32, 2048, 7, 7), "bf16", "nchw"))
    assert "49 elements x 2 B = 98 B" in note and "2-byte aligned" in note
    note = plan.vector_note(Call((32, 1024, 14, 14), "bf16", "nchw"))
    assert "392 B" in note and "8-byte aligned" in note
    note = plan.vector_note(Call((32, 1024, 14, 14), "fp32", "nchw"))
    assert "16-byte aligned, but 196 is not a multiple of 16" in note
    text = plan.summary([])
    assert "16 bytes" not in text  # no calls, no notes


def test_bytes_in_flight_follows_the_loops_own_depth():
    """The static report's bytes in flight per program (benchmarks/plan.py bytes_in_flight): a
    pipelined loop holds NUM_STAGES - 1 tiles ahead (the loop's own depth, not the launch
    option), an unpipelined one a tile, and never more than the program loads."""
    from benchmarks import plan
    from kernels.plan import Traffic

    t = Traffic(total=1 << 20, loads_per_program=32 * 1024, tile=4096)
    assert plan.bytes_in_flight(t, dict(NUM_STAGES=3), True, 3) == 8192
    assert plan.bytes_in_flight(t, dict(NUM_STAGES=2), True, 3) == 4096  # bwd_reduce's depth, option 3
    assert plan.bytes_in_flight(t, dict(NUM_STAGES=5), True, 3) == 16384
    assert plan.bytes_in_flight(t, {}, True, 4) == 12288  # no constexpr: the launch option
    assert plan.bytes_in_flight(t, dict(NUM_STAGES=5), False, 3) == 4096  # not pipelined: one tile
    short = Traffic(total=1 << 20, loads_per_program=6 * 1024, tile=4096)  # 1.5 tiles to load
    assert plan.bytes_in_flight(short, dict(NUM_STAGES=5), True, 3) == 6 * 1024
    one = Traffic(total=1 << 20, loads_per_program=1024, tile=4096)  # a tile mostly masked
    assert plan.bytes_in_flight(one, dict(NUM_STAGES=3), True, 3) == 1024
    assert plan.bytes_in_flight(one, {}, False, 3) == 1024
