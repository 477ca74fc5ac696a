"""The benchmark suite without pytest: the same configurations, measurements and files.

    python -m benchmarks.run [--profile targets|quick|full] [--budget-s S] [--out DIR]
                             [--skip-done RESULTS.json ...] [--cases ...] [--dtypes ...]
                             [--formats ...] [--modes ...] [--impls ...] [--rounds N] [--list]

For machines without pytest-benchmark (``pytest benchmarks/`` is the usual entry point; it
falls back to the same timing loop when pytest-benchmark is missing, so this runner is for
machines without pytest at all, or for scripted runs). ``--list`` prints the selected
configurations and the time they are estimated to take, and needs no GPU. Needs CUDA to measure:
without it, it says so and exits with status 2 (the CPU correctness mode is ``pytest benchmarks/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from . import cases, results  # noqa: E402

NO_GPU = ("cbam_fast benchmarks: no CUDA device here, so no timing was taken (timings need a GPU). "
          "For the CPU correctness mode run: pytest benchmarks/")


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full", choices=list(cases.PROFILES),
                    help="targets: the targets' rows only (bf16 ResNet-50 stages; gpu_check.sh's default); "
                         "quick: those, every cbam_fast/eager row, max-autotune on the batch-32 targets; "
                         "full: everything (default)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-time budget: configurations that would not fit are skipped (listed at the end)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results)")
    ap.add_argument("--skip-done", type=Path, nargs="+", default=[], metavar="RESULTS.json",
                    help="skip the configurations already measured in these results files")
    for name, what in (("cases", "case or group names"), ("dtypes", "bf16, fp16, fp32"),
                       ("formats", "nchw, cl"), ("modes", "fwd, fwd_bwd"), ("impls", ", ".join(cases.IMPLS))):
        ap.add_argument(f"--{name}", type=_csv, default=None, help=f"comma-separated {what}")
    ap.add_argument("--rounds", type=int, default=50, help="timed calls per configuration (median reported)")
    ap.add_argument("--list", action="store_true", help="print the selected configurations and exit")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    configs = cases.select(args.profile, skip_done=results.done_keys(args.skip_done), cases=args.cases,
                           dtypes=args.dtypes, formats=args.formats, modes=args.modes, impls=args.impls)
    if args.list:
        from .bench import INITIAL_COST_S  # no GPU needed

        for cfg in configs:
            print(f"tier {cases.tier(cfg)}  {cfg.id}")
        total = sum(INITIAL_COST_S[(c.impl, c.mode)] for c in configs)
        print(f"{len(configs)} configurations, about {total / 60:.0f} min at the initial per-configuration estimates")
        return 0

    import torch

    if not torch.cuda.is_available():
        print(NO_GPU)
        return 2
    from .bench import BenchSession

    session = BenchSession(out_dir=args.out, budget_s=args.budget_s, rounds=args.rounds)
    print(f"cbam_fast benchmarks: {len(configs)} configurations (profile {args.profile})", flush=True)
    t0 = time.monotonic()
    for cfg in configs:
        if session.admit(cfg) is not None:
            continue
        error = None
        try:
            session.measure(cfg)
        except Exception as exc:  # one failing configuration must not cost the rest of the run
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:  # outside the except block: the traceback (and its tensors) is gone
            session.failed.append((cfg.id, error))
            print(f"{cfg.id}: FAILED: {error}", flush=True)
            torch.cuda.empty_cache()
    print(session.finish())
    print(f"cbam_fast benchmarks: {len(session.rows)} rows in {time.monotonic() - t0:.0f} s")
    return 1 if session.failed else 0


if __name__ == "__main__":
    sys.exit(main())
