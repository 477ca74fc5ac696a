"""End to end: how much faster does a model with CBAM train with cbam_fast?

    python -m benchmarks.e2e --out E2E.json [--budget-s S] [--batch 32] [--image-size 224]
                             [--steps 10] [--warmup 3] [--variants eager,cbam_fast,no_cbam,...]

The model: timm's ResNet-50 with CBAM in every block (``timm.create_model('resnet50',
pretrained=False, block_args=dict(attn_layer='cbam'))``: random init, nothing downloaded). One
training step: ``optimizer.zero_grad(set_to_none=True)``, the forward under bf16 autocast,
cross-entropy on random labels, backward, ``SGD(lr=0.01, momentum=0.9).step()``; inputs are one
fixed random batch (``batch x 3 x image_size x image_size``), model and inputs channels_last.
The time of a step is host wall time from a ``torch.cuda.synchronize()`` before it to one after
it; the row reports the median of ``steps`` such steps after ``warmup`` untimed ones (the first
of which compiles: Triton kernels, torch.compile).

Variants, each a fresh model from the same seed (the same weights), in this order:

* ``eager``: the model as created (timm's CbamModule, PyTorch ops);
* ``cbam_fast``: ``cbam_fast.convert(model)`` (every CBAM replaced by cbam_fast.CBAM, same weights);
* ``no_cbam``: every module that convert replaces put to ``nn.Identity``: the CBAM share of the
  eager step is measured BY REMOVAL, ``1 - t(no_cbam) / t(eager)`` (this also removes the CBAM
  parameters from the optimizer step; no profiler is involved), and ``t(eager) / t(no_cbam)`` is
  the most any CBAM implementation could speed the step up;
* ``compile_eager``, ``compile_cbam_fast``: ``torch.compile(model)`` (default mode) of the first two,
  admitted only if their estimated cost (minutes: a whole-model compile) fits the time budget.

A variant is admitted only if its estimated cost fits what is left of ``--budget-s``; the file is
rewritten after every variant, so a run stopped by its budget keeps what it measured. If timm is
not importable the row is SKIPPED (status ``"skipped"``, exit status 3): never a pass.

:func:`run` takes any model factory, so the tests drive the same code on CPU with a toy CNN;
timings taken on a CPU (``"cpu_mode": true``) are not performance claims.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/e2e.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch  # noqa: E402
from torch import nn  # noqa: E402

VARIANTS = ("eager", "cbam_fast", "no_cbam", "compile_eager", "compile_cbam_fast")
DEFAULT_VARIANTS = VARIANTS
# first guesses of a variant's wall time on an H100/H200 machine (model build, warm-up with its
# compiles, timed steps), seconds; a later variant of the same kind uses what was observed
INITIAL_COST_S = {"eager": 20.0, "cbam_fast": 35.0, "no_cbam": 15.0, "compile_eager": 150.0,
                  "compile_cbam_fast": 150.0}
TIMM_MODEL = "timm.create_model('resnet50', pretrained=False, block_args=dict(attn_layer='cbam'))"
CPU_NOTE = ("CPU mode: these timings were taken on a CPU to check the code path; they are NOT "
            "performance claims")
SHARE_METHOD = ("by removal: 1 - t(no_cbam) / t(eager), no_cbam = the eager model with every module "
                "cbam_fast.convert replaces put to nn.Identity (its parameters leave the optimizer too)")
EXIT_SKIPPED = 3
LOSS_TOLERANCE = 0.02  # relative difference of the first step's loss, cbam_fast vs eager, worth a warning


def timm_resnet50_cbam(num_classes: int = 1000) -> nn.Module:
    """timm's ResNet-50 with a CBAM module in every bottleneck block, randomly initialised."""
    import timm

    return timm.create_model("resnet50", pretrained=False, num_classes=num_classes,
                             block_args=dict(attn_layer="cbam"))


def _convert(model: nn.Module) -> nn.Module:
    """``cbam_fast.convert(model)``: the model, converted in place."""
    import cbam_fast

    return cbam_fast.convert(model)


def _cbam_names(model: nn.Module) -> list[str]:
    import cbam_fast

    return [name for name, m in model.named_modules() if isinstance(m, cbam_fast.CBAM) and name]


def _replace(model: nn.Module, names, make: Callable[[], nn.Module]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, make())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Step:
    """One training step of a model on a fixed batch (see the module docstring)."""

    def __init__(self, model, x, labels, amp_dtype, device):
        self.model, self.x, self.labels, self.amp_dtype, self.device = model, x, labels, amp_dtype, device
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model(self.x), self.labels)
        loss.backward()
        self.opt.step()
        return loss.detach()


def convertible_names(factory: Callable[[], nn.Module], seed: int = 0) -> list[str]:
    """Qualified names of the modules ``cbam_fast.convert`` replaces in ``factory()``'s model."""
    torch.manual_seed(seed)
    model = factory()
    before = set(_cbam_names(model))
    return [n for n in _cbam_names(_convert(model)) if n not in before]


def _build(variant: str, factory, seed: int, device, channels_last: bool, compile_backend: str,
           names: list[str]) -> nn.Module:
    """A fresh model (same seed, same weights) of a variant, on the device, in training mode."""
    torch.manual_seed(seed)
    model = factory()
    base = variant.removeprefix("compile_")
    if base in ("cbam_fast", "no_cbam") and not names:
        raise RuntimeError("cbam_fast.convert replaces no module of this model: nothing to compare")
    if base == "cbam_fast":
        before = set(_cbam_names(model))
        model = _convert(model)
        got = [n for n in _cbam_names(model) if n not in before]
        if got != names:
            raise RuntimeError(f"cbam_fast.convert replaced {len(got)} modules, {len(names)} expected")
    elif base == "no_cbam":
        _replace(model, names, nn.Identity)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if variant.startswith("compile_"):
        torch._dynamo.reset()  # a fresh compile, not a recompile of the previous variant's model
        model = torch.compile(model) if compile_backend == "inductor" else torch.compile(model, backend=compile_backend)
    return model


def measure_variant(variant, factory, *, x, labels, amp_dtype, device, steps, warmup, names, seed=0,
                    channels_last=True, compile_backend="inductor") -> dict:
    """Build a variant, run ``warmup`` untimed steps (at least one) and ``steps`` timed ones; its entry."""
    t0 = time.perf_counter()
    model = _build(variant, factory, seed, device, channels_last, compile_backend, names)
    step = _Step(model, x, labels, amp_dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t_first = time.perf_counter()
    first_loss = float(step())
    _sync(device)
    first_step_s = time.perf_counter() - t_first
    if not math.isfinite(first_loss):
        raise RuntimeError(f"{variant}: the first step's loss is {first_loss}")
    for _ in range(max(0, warmup - 1)):
        step()
    _sync(device)
    times_ms = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times_ms.append((time.perf_counter() - t) * 1e3)
    entry = {
        "median_ms": float(statistics.median(times_ms)),
        "step_ms": [round(v, 3) for v in times_ms],
        "first_step_s": round(first_step_s, 2),
        "first_loss": first_loss,
        "peak_mem_mb": float(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    del step, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def derived(variants: dict) -> dict:
    """Ratios of the measured medians (None where a variant is missing)."""
    def t(name):
        return variants.get(name, {}).get("median_ms")

    def ratio(a, b):
        return t(a) / t(b) if t(a) and t(b) else None

    share = 1 - t("no_cbam") / t("eager") if t("no_cbam") and t("eager") else None
    return {
        "speedup_cbam_fast_vs_eager": ratio("eager", "cbam_fast"),
        "speedup_compile_cbam_fast_vs_compile_eager": ratio("compile_eager", "compile_cbam_fast"),
        "speedup_compile_cbam_fast_vs_eager": ratio("eager", "compile_cbam_fast"),
        "speedup_compile_eager_vs_eager": ratio("eager", "compile_eager"),
        "cbam_share_of_eager_step": share,
        "cbam_share_method": SHARE_METHOD,
        "speedup_bound_if_cbam_took_no_time": ratio("eager", "no_cbam"),
    }


def _write(path: Path | None, doc: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def run(factory: Callable[[], nn.Module], *, model_name: str, out: Path | None = None, batch: int = 32,
        image_size: int = 224, num_classes: int = 1000, device="cuda", amp_dtype=torch.bfloat16,
        channels_last: bool = True, steps: int = 10, warmup: int = 3, variants=DEFAULT_VARIANTS,
        budget_s: float | None = None, compile_backend: str = "inductor", seed: int = 0,
        log: Callable[[str], None] = print) -> dict:
    """Measure the variants (module docstring) of ``factory()``'s model; returns the document
    (also written to ``out`` after every variant)."""
    from . import results

    device = torch.device(device)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if device.type == "cuda":
        os.environ["CBAM_FAST_BACKEND"] = "triton"  # the cbam_fast variants run the Triton kernels
    t0 = time.monotonic()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    doc = {
        "what": ("end-to-end training step, MEASURED: median CUDA-synchronised wall time of a step "
                 "(zero_grad, forward under autocast, cross-entropy, backward, SGD step) after warm-up"),
        "model": model_name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_mode": device.type != "cuda",
        "note": CPU_NOTE if device.type != "cuda" else "",
        "torch": torch.__version__, "git_sha": results.git_sha(), "date": results.utc_now(),
        "batch": batch, "image_size": image_size, "num_classes": num_classes,
        "amp_dtype": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "channels_last": channels_last, "optimizer": "SGD(lr=0.01, momentum=0.9)",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "steps": steps, "warmup": warmup, "budget_s": budget_s, "compile_backend": compile_backend,
        "status": "measured", "variants": {}, "skipped": {}, "failed": {}, "derived": {},
    }
    try:
        names = convertible_names(factory, seed)
        doc["cbam_modules"] = len(names)
        doc["cbam_module_names"] = names[:3] + (["..."] if len(names) > 3 else [])
    except Exception as exc:  # convert itself failed: the eager variants still run
        names = []
        doc["cbam_modules"] = None
        doc["failed"]["convert"] = f"{type(exc).__name__}: {exc}"
        log(f"e2e: cbam_fast.convert FAILED: {doc['failed']['convert']}")
    observed: dict[str, float] = {}
    for variant in variants:
        need = INITIAL_COST_S[variant]
        if variant == "no_cbam" and "eager" in observed:
            need = observed["eager"]
        elif variant == "compile_cbam_fast" and "compile_eager" in observed:
            need = observed["compile_eager"]
        left = math.inf if budget_s is None else budget_s - (time.monotonic() - t0)
        if need > left:
            doc["skipped"][variant] = f"time budget: needs about {need:.0f} s, {max(left, 0):.0f} s left"
            log(f"e2e {variant}: skipped ({doc['skipped'][variant]})")
            continue
        log(f"e2e {variant}: measuring (estimated {need:.0f} s)")
        error = None
        try:
            entry = measure_variant(variant, factory, x=x, labels=labels, amp_dtype=amp_dtype, device=device,
                                    steps=steps, warmup=warmup, names=names, seed=seed,
                                    channels_last=channels_last, compile_backend=compile_backend)
        except Exception as exc:  # one failing variant must not cost the others
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            doc["failed"][variant] = error
            log(f"e2e {variant}: FAILED: {error}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            doc["variants"][variant] = entry
            observed[variant] = entry["seconds"]
            log(f"e2e {variant}: median step {entry['median_ms']:.2f} ms over {steps} steps "
                f"(first step {entry['first_step_s']:.1f} s, loss {entry['first_loss']:.4f}"
                + (f", peak {entry['peak_mem_mb']:.0f} MiB" if entry["peak_mem_mb"] is not None else "") + ")")
        doc["derived"] = derived(doc["variants"])
        doc["seconds"] = round(time.monotonic() - t0, 1)
        _write(out, doc)
    if "eager" in doc["variants"] and "cbam_fast" in doc["variants"]:
        a, b = doc["variants"]["eager"]["first_loss"], doc["variants"]["cbam_fast"]["first_loss"]
        doc["first_loss_rel_diff"] = abs(a - b) / max(abs(a), 1e-12)
    if doc["failed"] or not doc["variants"]:
        doc["status"] = "failed" if not doc["variants"] else "partial"
    doc["derived"] = derived(doc["variants"])
    doc["seconds"] = round(time.monotonic() - t0, 1)
    _write(out, doc)
    for line in summary_lines(doc):
        log(line)
    return doc


def skipped_doc(reason: str, model_name: str) -> dict:
    return {"what": "end-to-end training step", "model": model_name, "status": "skipped", "reason": reason,
            "variants": {}, "skipped": {}, "failed": {}, "derived": {}}


def _fmt(v, spec="{:.2f}x") -> str:
    return "-" if v is None else spec.format(v)


def summary_lines(doc: dict) -> list[str]:
    """Plain lines for logs and summary.txt."""
    if doc.get("status") == "skipped":
        return [f"e2e: SKIPPED (not a pass): {doc.get('reason')}"]
    head = (f"e2e ({doc['model']}, batch {doc['batch']}, {doc['image_size']}x{doc['image_size']}, "
            f"autocast {doc['amp_dtype']}, {'channels_last' if doc['channels_last'] else 'NCHW'}, "
            f"{doc['device']}): median step ms over {doc['steps']} steps")
    lines = [head + (f"  [{doc['note']}]" if doc.get("note") else "")]
    for name in VARIANTS:
        if name in doc["variants"]:
            lines.append(f"  {name:<18} {doc['variants'][name]['median_ms']:9.2f} ms")
        elif name in doc["skipped"]:
            lines.append(f"  {name:<18} skipped: {doc['skipped'][name]}")
        elif name in doc["failed"]:
            lines.append(f"  {name:<18} FAILED: {doc['failed'][name]}")
    diff = doc.get("first_loss_rel_diff")
    if diff is not None:
        lines.append(f"  first-step loss, cbam_fast vs eager (same weights and batch): relative difference {diff:.1e}"
                     + (" -- LARGER THAN 2%: check before reading the times" if diff > LOSS_TOLERANCE else ""))
    d = doc.get("derived") or {}
    lines.append(f"  cbam_fast vs eager: {_fmt(d.get('speedup_cbam_fast_vs_eager'))}; "
                 f"compiled: {_fmt(d.get('speedup_compile_cbam_fast_vs_compile_eager'))}; "
                 f"CBAM share of the eager step: {_fmt(d.get('cbam_share_of_eager_step'), '{:.0%}')} "
                 f"(by removal); bound if CBAM took no time: {_fmt(d.get('speedup_bound_if_cbam_took_no_time'))}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-time budget: variants that would not fit are skipped")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, in order (default: {','.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or timm failing inside its own imports (torchvision)
        doc = skipped_doc(f"timm is not importable ({type(exc).__name__}: {exc})", TIMM_MODEL)
        _write(args.out, doc)
        print(summary_lines(doc)[0])
        return EXIT_SKIPPED
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        doc = skipped_doc("no CUDA device here (timings need a GPU; the tests run this code on CPU)", TIMM_MODEL)
        _write(args.out, doc)
        print(summary_lines(doc)[0])
        return EXIT_SKIPPED
    doc = run(timm_resnet50_cbam, model_name=TIMM_MODEL, out=args.out, batch=args.batch,
              image_size=args.image_size, device=args.device, steps=args.steps, warmup=args.warmup,
              variants=variants, budget_s=args.budget_s, log=lambda m: print(m, flush=True))
    ok = "eager" in doc["variants"] and "cbam_fast" in doc["variants"] and not doc["failed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
