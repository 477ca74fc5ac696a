"""The results file: its exact schema, the stamp, writing and reading.

One file per GPU run, ``benchmarks/results/<date>-<device>.json`` (or under the run's output
folder), with exactly this shape, so any tool can read it::

    {"device": str, "cuda": str, "torch": str, "triton": str, "git_sha": str, "date": str,
     "copy_gbps": float,
     "rows": [{"case": str, "shape": [N, C, H, W],
               "dtype": "bfloat16" | "float16" | "float32",
               "memory_format": "contiguous" | "channels_last",
               "mode": "fwd" | "fwd_bwd",
               "impl": "eager" | "compile" | "compile_max_autotune" | "cbam_fast",
               "median_ms": float, "gbps": float, "pct_floor": float,
               "peak_mem_mb": float | null, "launches": int | null}]}

``date`` is UTC ISO 8601 (``2025-01-31T12:00:00Z``); ``git_sha`` is ``git rev-parse HEAD`` (with
``-dirty`` when tracked files differ from it), else ``$CBAM_FAST_GIT_SHA``, else ``"unknown"``.
This module imports no torch at import time (the report reads results anywhere).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from pathlib import Path

from . import cases

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# beside a results file X.json: X.kernels.json, the per-kernel GPU times of each row's profiled
# call (benchmarks/bench.py); not a results file
KERNELS_SUFFIX = ".kernels.json"


def is_results_file(path) -> bool:
    """False for the side files that live beside results files (``*.kernels.json``,
    ``pytest-benchmark.json``, ``predicted*.json``, ``e2e*.json``)."""
    name = Path(path).name
    return not (name.endswith(KERNELS_SUFFIX) or name == "pytest-benchmark.json" or name.startswith(("predicted", "e2e")))

STAMP_FIELDS = {"device": str, "cuda": str, "torch": str, "triton": str, "git_sha": str, "date": str, "copy_gbps": float}
ROW_FIELDS = ("case", "shape", "dtype", "memory_format", "mode", "impl", "median_ms", "gbps", "pct_floor",
              "peak_mem_mb", "launches")
ROW_CHOICES = {"dtype": tuple(cases.DTYPES), "memory_format": tuple(cases.FORMATS), "mode": tuple(cases.MODES),
               "impl": cases.IMPLS}


def git_sha(root: Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the checkout at ``root`` (``-dirty`` appended when tracked files
    differ from it); else ``$CBAM_FAST_GIT_SHA``; else ``"unknown"``. A git repository above
    ``root`` (a copy of the tree without its ``.git``) does not count."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == Path(root).resolve():
            head = git("rev-parse", "HEAD")
            if head.returncode == 0:
                sha = head.stdout.strip()
                status = git("status", "--porcelain", "--untracked-files=no")
                return sha + "-dirty" if status.returncode == 0 and status.stdout.strip() else sha
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("CBAM_FAST_GIT_SHA", "").strip() or "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(copy_gbps: float) -> dict:
    """The run's stamp: device, CUDA, torch, triton, commit, date, copy bandwidth (needs CUDA)."""
    import torch
    import triton

    return {
        "device": torch.cuda.get_device_name(),
        "cuda": str(torch.version.cuda),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_sha": git_sha(),
        "date": utc_now(),
        "copy_gbps": float(copy_gbps),
    }


def device_slug(device: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"


def results_path(out_dir: Path, stamp_: dict) -> Path:
    """``<out_dir>/<date>-<device>.json``, with ``-2``, ``-3``, ... appended if taken."""
    base = f"{stamp_['date'][:10]}-{device_slug(stamp_['device'])}"
    path = Path(out_dir) / f"{base}.json"
    n = 2
    while path.exists():
        path = Path(out_dir) / f"{base}-{n}.json"
        n += 1
    return path


def make_row(cfg: cases.Config, median_ms: float, copy_gbps: float, peak_mem_mb, launches) -> dict:
    """A results row; GB/s on compulsory bytes and % of the floor derived from the median."""
    gbps = cases.compulsory_bytes(cfg.case.shape, cfg.dtype, cfg.mode) / (median_ms / 1e3) / 1e9
    return {
        "case": cfg.case.name,
        "shape": list(cfg.case.shape),
        "dtype": cfg.dtype,
        "memory_format": cfg.memory_format,
        "mode": cfg.mode,
        "impl": cfg.impl,
        "median_ms": float(median_ms),
        "gbps": float(gbps),
        "pct_floor": float(100.0 * gbps / copy_gbps),
        "peak_mem_mb": None if peak_mem_mb is None else float(peak_mem_mb),
        "launches": None if launches is None else int(launches),
    }


def validate(doc: dict) -> None:
    """Raise ValueError, naming the first problem, unless ``doc`` has exactly the schema above."""
    if not isinstance(doc, dict):
        raise ValueError("results: top level must be an object")
    expected = set(STAMP_FIELDS) | {"rows"}
    if set(doc) != expected:
        raise ValueError(f"results: keys must be {sorted(expected)}, got {sorted(doc)}")
    for name, typ in STAMP_FIELDS.items():
        value = doc[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float else isinstance(value, typ)
        if not ok:
            raise ValueError(f"results: {name} must be {typ.__name__}, got {value!r}")
    if not isinstance(doc["rows"], list):
        raise ValueError("results: rows must be a list")
    for i, row in enumerate(doc["rows"]):
        where = f"results: rows[{i}]"
        if not isinstance(row, dict) or set(row) != set(ROW_FIELDS):
            got = sorted(row) if isinstance(row, dict) else repr(row)
            raise ValueError(f"{where}: keys must be {sorted(ROW_FIELDS)}, got {got}")
        if not isinstance(row["case"], str):
            raise ValueError(f"{where}: case must be a string")
        shape = row["shape"]
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"{where}: shape must be [N, C, H, W] of positive ints, got {shape!r}")
        for name, choices in ROW_CHOICES.items():
            if row[name] not in choices:
                raise ValueError(f"{where}: {name} must be one of {choices}, got {row[name]!r}")
        for name in ("median_ms", "gbps", "pct_floor"):
            v = row[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{where}: {name} must be a positive number, got {v!r}")
        v = row["peak_mem_mb"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{where}: peak_mem_mb must be a number or null, got {v!r}")
        v = row["launches"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{where}: launches must be an int or null, got {v!r}")


def write(path: Path, stamp_: dict, rows: list[dict]) -> None:
    """Validate and write atomically (a temporary file renamed over ``path``): a run killed
    mid-write leaves the previous complete file."""
    doc = {**stamp_, "rows": rows}
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def load(path) -> dict:
    doc = json.loads(Path(path).read_text())
    validate(doc)
    return doc


def done_keys(paths) -> set:
    """Configuration keys already measured in the given results files (for ``--skip-done``)."""
    return {cases.row_key(row) for p in paths for row in load(p)["rows"]}
