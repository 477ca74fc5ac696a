"""The benchmark run's footer: what actually ran, counted from the run's own reports.

Each benchmark case counts once:

* a case of ``test_cbam_bench.py`` (the GPU suite) as *timed* (CUDA: measured on the GPU) or
  *checked* (no CUDA: the small-shape correctness check, no timing), which ``test_cbam`` records
  as a user property (:data:`RAN`), else *skipped* or *failed*;
* a row of ``test_cpu_bench.py`` that passed as *timed on the CPU* (a real CPU measurement, labelled
  with the CPU in its own table), else skipped or failed.

When nothing was timed on a GPU the footer names the next step, the GPU script. Printed by the
repository's root ``conftest.py`` (loaded by the pytest-xdist controller too); no torch import here.
"""

from __future__ import annotations

RAN = "cbam_fast_bench"  # the user property test_cbam sets: "timed" or "checked"
GPU_SUITE = "test_cbam_bench.py::"
CPU_ROWS = "test_cpu_bench.py::"
GPU_NEXT_STEP = ("Next step for GPU timings: on a GPU machine, bash benchmarks/gpu_check.sh OUTDIR (the target rows, "
                 "at most ~6 min), or pytest --benchmark there.")
KINDS = ("timed", "checked", "cpu_timed", "passed", "skipped", "failed")


def _passed_as(nodeid: str, rep) -> str:
    if CPU_ROWS in nodeid:
        return "cpu_timed"
    ran = dict(getattr(rep, "user_properties", ())).get(RAN)
    return ran if ran in ("timed", "checked") else "passed"


def ran_counts(stats: dict) -> dict[str, int]:
    """Each benchmark case of the run once, from the terminal reporter's ``stats`` (outcome ->
    reports): failed (any phase) over skipped over what its passing call did ("passed" for a
    pass of the GPU suite that recorded neither a timing nor a check)."""
    outcome: dict[str, str] = {}
    for key, reports in stats.items():
        for rep in reports:
            nodeid = getattr(rep, "nodeid", "") or ""
            if GPU_SUITE not in nodeid and CPU_ROWS not in nodeid:
                continue
            if key in ("failed", "error"):
                outcome[nodeid] = "failed"
            elif key == "skipped" and outcome.get(nodeid) != "failed":
                outcome[nodeid] = "skipped"
            elif key == "passed" and getattr(rep, "when", "") == "call" and nodeid not in outcome:
                outcome[nodeid] = _passed_as(nodeid, rep)
    counts = dict.fromkeys(KINDS, 0)
    for kind in outcome.values():
        counts[kind] += 1
    return counts


def summary_lines(counts: dict[str, int], has_cuda: bool, benchmark_only: bool = False) -> list[str]:
    line = (f"cbam_fast benchmarks: {counts['timed']} timed on the GPU, {counts['checked']} checked for correctness "
            f"(small shapes, no timing), {counts['cpu_timed']} CPU rows timed on the CPU, "
            f"{counts['skipped']} skipped, {counts['failed']} failed")
    if counts["passed"]:
        line += f", {counts['passed']} passed with neither a timing nor a check recorded"
    lines = [line + "."]
    if not has_cuda:
        lines.append("No CUDA device here: GPU timings need a GPU, and none were taken.")
        if counts["checked"] == 0:
            why = (" (--benchmark-only keeps only the cases timed through pytest-benchmark, and without a GPU "
                   "there are none: run without it for the correctness mode)") if benchmark_only else ""
            lines.append(f"Nothing was checked for correctness in this run{why}.")
    if counts["timed"] == 0:
        lines.append(GPU_NEXT_STEP)
    return lines
