"""The static model's PREDICTIONS for the cbam_fast rows a GPU run measures, in a side file the
report puts beside the measurements, so the first measurement can correct the model.

    python -m benchmarks.predict --out PREDICTED.json [--profile targets|quick|full] [--budget-s S]
                                 [--cases ...] [--dtypes ...] [--formats ...] [--modes ...]

For every cbam_fast configuration of the profile (default ``targets``: the bf16 ResNet-50 rows,
24 calls), :func:`benchmarks.plan.report` of the same call (:class:`benchmarks.launched.Call`:
shape, dtype, memory format, the default preset, eval, forward or forward+backward): predicted
time (us), predicted speedup vs eager (the model's eager time / its cbam_fast time), predicted %
of the floor (the model's floor / its time) and predicted launches (Triton kernels + ATen ops),
with its per-launch times. EVERY NUMBER IN THE FILE IS A PREDICTION of a model
(:data:`benchmarks.plan.MODEL`), not a measurement. It compiles the kernels with Triton for sm_90
and reads them with cuobjdump: it needs no GPU (a GPU machine runs it beside the measurements),
and must run without ``TRITON_INTERPRET``. About 1 s per call once the kernels are compiled.

The file is rewritten after every call, so a run stopped by its time budget (or killed) leaves
the predictions made so far; a call whose prediction fails is listed with its error and the
others go on. Exit status: 0 every call predicted, 1 a call failed, 2 refused (TRITON_INTERPRET),
3 nothing failed but the budget ended first. Schema::

    {"what": str, "model": {constant: value}, "arch": int, "git_sha": str, "date": str,
     "torch": str, "triton": str, "complete": bool, "seconds": float,
     "rows": [{"case", "shape", "dtype", "memory_format", "mode", "impl": "cbam_fast", "call": str,
               "pred_us", "pred_eager_us", "pred_vs_eager", "pred_floor_us", "pred_pct_floor",
               "pred_launches", "pred_eager_launches", "launch_rows": [{"part", "role", "kernel", "us"}]}],
     "failed": [{"case", "dtype", "memory_format", "mode", "call", "error"}],
     "not_reached": [config id, ...]}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/predict.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from . import cases, results  # noqa: E402

WHAT = ("PREDICTIONS of the static model (python -m benchmarks.plan; constants under 'model'), NOT "
        "measurements: predicted time, speedup vs eager, % of floor and launches of each cbam_fast row")
KEY_FIELDS = ("case", "dtype", "memory_format", "mode")
EXIT_NOT_REACHED = 3  # nothing failed, but the time budget ended before every call was predicted


def config_call(cfg: cases.Config):
    """The :class:`benchmarks.launched.Call` of a benchmark configuration (the default preset:
    ``cbam_fast.cbam`` with CBAM(C, 16, 7)'s parameters in x's dtype, as benchmarks/bench.py; an SE
    block's case: the gate preset of that name)."""
    from .launched import Call

    preset = "default" if cfg.case.block == "cbam" else cfg.case.block
    return Call(tuple(cfg.case.shape), cases.DTYPES[cfg.dtype], cases.FORMATS[cfg.memory_format], preset, False,
                cfg.mode)


def _launches(rep, mode: str) -> int:
    return rep.launches("fwd") + (rep.launches("bwd") if mode == "fwd_bwd" else 0)


def prediction(cfg: cases.Config, rep) -> dict:
    """A predictions row from a :class:`benchmarks.plan.CallReport` of the configuration."""
    total, eager, floor = float(rep.total_us), float(rep.eager_us), float(rep.floor_us)
    eager_launches = getattr(rep, "eager_launches", None)
    launch_rows = []
    for r in getattr(rep, "rows", []) or []:
        if cfg.mode == "fwd" and getattr(r, "part", "fwd") != "fwd":
            continue
        launch_rows.append({"part": getattr(r, "part", None), "role": getattr(r, "role", None),
                            "kernel": getattr(r, "kernel", None), "us": float(getattr(r, "us", float("nan")))})
    return {
        "case": cfg.case.name, "shape": list(cfg.case.shape), "dtype": cfg.dtype,
        "memory_format": cfg.memory_format, "mode": cfg.mode, "impl": cfg.impl,
        "call": getattr(rep.call, "id", str(rep.call)),
        "pred_us": total,
        "pred_eager_us": eager,
        "pred_vs_eager": eager / total if total > 0 else None,
        "pred_floor_us": floor,
        "pred_pct_floor": 100.0 * floor / total if total > 0 else None,
        "pred_launches": int(_launches(rep, cfg.mode)),
        "pred_eager_launches": None if eager_launches is None else int(eager_launches),
        "launch_rows": launch_rows,
    }


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def predict(configs, out: Path, budget_s: float | None = None, report_fn=None, log=print) -> dict:
    """Predict every configuration (cbam_fast rows only) and write ``out`` after each; returns
    the document. ``report_fn(call, cache)`` defaults to :func:`benchmarks.plan.report` (the
    tests pass a stand-in). A failing call is recorded and skipped; past ``budget_s`` the rest is
    listed as not reached."""
    t0 = time.monotonic()
    model, arch = {}, None
    if report_fn is None:
        from . import plan

        report_fn = plan.report
        model, arch = dict(plan.MODEL), getattr(plan, "ARCH", None)
    try:
        import torch
        import triton

        versions = {"torch": torch.__version__, "triton": triton.__version__}
    except Exception:  # noqa: BLE001 (only for the stamp)
        versions = {"torch": "unknown", "triton": "unknown"}
    doc = {"what": WHAT, "model": model, "arch": arch, "git_sha": results.git_sha(), "date": results.utc_now(),
           **versions, "complete": False, "seconds": 0.0, "rows": [], "failed": [], "not_reached": []}
    cache: dict = {}
    todo = [c for c in configs if c.impl == "cbam_fast"]
    for i, cfg in enumerate(todo):
        if budget_s is not None and time.monotonic() - t0 > budget_s:
            doc["not_reached"] = [c.id for c in todo[i:]]
            log(f"benchmarks.predict: time budget of {budget_s:.0f} s spent: {len(todo) - i} call(s) not predicted")
            break
        t = time.monotonic()
        error = None
        try:
            call = config_call(cfg)
            row = prediction(cfg, report_fn(call, cache))
        except Exception as exc:  # one failing call must not cost the others
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            doc["rows"].append(row)
            log(f"predicted (static model) {cfg.id}: {row['pred_us']:.1f} us, {row['pred_vs_eager']:.2f}x eager, "
                f"{row['pred_pct_floor']:.0f}% of floor, {row['pred_launches']} launches "
                f"({time.monotonic() - t:.1f} s)")
        else:
            doc["failed"].append({**{k: getattr(cfg, k) for k in ("dtype", "memory_format", "mode")},
                                  "case": cfg.case.name, "call": cfg.id, "error": error})
            log(f"benchmarks.predict: {cfg.id}: FAILED: {error}")
        doc["seconds"] = round(time.monotonic() - t0, 1)
        _write(out, doc)
    else:
        doc["complete"] = not doc["failed"]
    doc["seconds"] = round(time.monotonic() - t0, 1)
    _write(out, doc)
    return doc


def load(path) -> dict:
    """A predictions file, as written by :func:`predict` (checked for the fields the report reads)."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{path}: not a predictions file (no 'rows' list)")
    for i, row in enumerate(doc["rows"]):
        missing = [k for k in (*KEY_FIELDS, "pred_us", "pred_vs_eager", "pred_pct_floor", "pred_launches")
                   if k not in row]
        if missing:
            raise ValueError(f"{path}: rows[{i}] lacks {missing}")
    return doc


def by_key(doc: dict) -> dict:
    """Predictions rows by (case, dtype, memory_format, mode)."""
    return {tuple(r[k] for k in KEY_FIELDS): r for r in doc["rows"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the predictions file to write")
    ap.add_argument("--profile", default="targets", choices=list(cases.PROFILES),
                    help="predict the cbam_fast rows of this benchmark profile (default: targets)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new calls after this many seconds")
    for name, what in (("cases", "case or group names"), ("dtypes", "bf16, fp16, fp32"), ("formats", "nchw, cl"),
                       ("modes", "fwd, fwd_bwd")):
        ap.add_argument(f"--{name}", default=None, help=f"comma-separated {what} (default: all of the profile)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("benchmarks.predict: unset TRITON_INTERPRET (the static model compiles the kernels); nothing predicted")
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    def csv(v):
        return None if v is None else [x.strip() for x in v.split(",") if x.strip()]

    configs = cases.select(args.profile, cases=csv(args.cases), dtypes=csv(args.dtypes), formats=csv(args.formats),
                           modes=csv(args.modes), impls=["cbam_fast"])
    print(f"benchmarks.predict: {len(configs)} cbam_fast configuration(s) of profile {args.profile}; "
          "every number below is a PREDICTION of the static model, not a measurement", flush=True)
    try:
        doc = predict(configs, args.out, args.budget_s, log=lambda m: print(m, flush=True))
    except Exception as exc:  # the model itself failed to load: say so, leave a file that says so
        _write(args.out, {"what": WHAT, "model": {}, "arch": None, "git_sha": results.git_sha(),
                          "date": results.utc_now(), "torch": "unknown", "triton": "unknown", "complete": False,
                          "seconds": 0.0, "rows": [], "failed": [{"case": "*", "dtype": "*", "memory_format": "*",
                                                                  "mode": "*", "call": "*",
                                                                  "error": f"{type(exc).__name__}: {exc}"}],
                          "not_reached": [c.id for c in configs]})
        print(f"benchmarks.predict: FAILED before any prediction: {type(exc).__name__}: {exc}")
        return 1
    print(f"benchmarks.predict: {len(doc['rows'])} predicted, {len(doc['failed'])} failed, "
          f"{len(doc['not_reached'])} not reached, in {doc['seconds']:.0f} s -> {args.out}")
    if doc["failed"] or not doc["rows"] and not doc["not_reached"]:
        return 1
    return EXIT_NOT_REACHED if doc["not_reached"] else 0


if __name__ == "__main__":
    sys.exit(main())
