"""CPU timings: cbam_fast's CPU path against each original CBAM it replaces.

    python -m benchmarks.cpu_bench [--presets timm,official,...] [--shapes 1x256x56x56,...]
                                   [--modes fwd,fwd_bwd] [--reps 15] [--threads 1]
                                   [--formats nchw,cl] [--with-reference] [--markdown]

Each row: one original module (the re-implementations in ``tests/originals``, fp32, seeded
weights) and the module :func:`cbam_fast.convert.from_module` makes of it (the same weights, run
by the CPU path, ``CBAM_FAST_BACKEND`` auto), on one input shape, in one mode:

* ``fwd``: inference, both modules in ``eval()`` under ``torch.no_grad()``;
* ``fwd_bwd``: training, both in ``train()`` (BatchNorm on batch statistics, running statistics
  updated), ``x.requires_grad``, then ``torch.autograd.grad(y, [x, *parameters], dy)``.

Timing: each call is timed twice over, by the calling thread's CPU time (``time.thread_time``:
with one intra-op thread all of the call's compute runs on it, and other processes taking turns
on the cores do not inflate it; the primary figure) and by elapsed time (``time.perf_counter``),
the modules called in turn (rotating who goes first), after warm-up calls, with the garbage
collector off; each figure is the median of ``reps`` calls, and each ``speedup`` the median of the
per-pair ratios ``original / cbam_fast`` (above 1: cbam_fast is faster). Before timing, the pair's
outputs (and for ``fwd_bwd`` every gradient) are checked equal within fp32 tolerances. These are CPU
measurements: the rows carry the CPU model, thread count and torch version.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # ResNet-50 CBAM stages
    "1x256x56x56": (1, 256, 56, 56), "1x512x28x28": (1, 512, 28, 28),
    "1x1024x14x14": (1, 1024, 14, 14), "1x2048x7x7": (1, 2048, 7, 7),
    "8x256x56x56": (8, 256, 56, 56), "8x512x28x28": (8, 512, 28, 28),
    "8x1024x14x14": (8, 1024, 14, 14), "8x2048x7x7": (8, 2048, 7, 7),
}
MODES = {"fwd": "inference (eval, no_grad)", "fwd_bwd": "training (train, forward + backward)"}
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _originals():
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from originals import luuuyi_cbam, mmyolo_cbam, official, timm_cbam, ultralytics_cbam

    return {
        "timm": ("timm CbamModule", timm_cbam.CbamModule),
        "timm_light": ("timm LightCbamModule", timm_cbam.LightCbamModule),
        "official": ("authors' CBAM", official.CBAM),
        "ultralytics": ("Ultralytics CBAM", ultralytics_cbam.CBAM),
        "mmyolo": ("mmyolo CBAM", mmyolo_cbam.CBAM),
        "luuuyi": ("luuuyi ca + sa", luuuyi_cbam.CBAMPair),
    }


PRESETS = ("timm", "timm_light", "official", "ultralytics", "mmyolo", "luuuyi")


def cpu_label() -> str:
    """``<CPU model>, <threads> thread(s), torch <version>``: what a CPU row was measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{model}, {n} thread{'s' if n != 1 else ''}, torch {torch.__version__}"


@dataclasses.dataclass
class Row:
    """One measured row; ``*_ms`` are medians per call (``cpu``: the calling thread's CPU time;
    ``wall``: elapsed time), ``speedup*`` the median of the per-pair ratios original / cbam_fast."""

    preset: str
    shape: str
    mode: str
    memory_format: str
    original_ms: float
    cbam_fast_ms: float
    speedup: float
    original_wall_ms: float
    cbam_fast_wall_ms: float
    speedup_wall: float
    reference_ms: float | None = None  # the previous fallback (reference.cbam), when asked for
    device: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_pair(preset: str, shape, seed: int = 0):
    """(original module, converted cbam_fast module), fp32, the same weights."""
    from cbam_fast.convert import from_module

    _, cls = _originals()[preset]
    torch.manual_seed(seed)
    original = cls(shape[1])
    for m in original.modules():  # non-trivial BatchNorm state, as after some training
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return original, from_module(original)


def _reference_module(fast):
    """A callable running ``fast``'s parameters through reference.cbam (the previous CPU fallback)."""
    from cbam_fast import reference

    def call(x):
        fc2 = fast.fc2
        return reference.cbam(x, fast.fc1.weight, fast.fc1.bias, None if fc2 is None else fc2.weight,
                              None if fc2 is None else fc2.bias, fast.conv.weight, fast.conv.bias,
                              channel_pool=fast.channel_pool, spatial_pool=fast.spatial_pool, bn=fast.bn)

    call.parameters = fast.parameters
    return call


def make_step(module, x, mode: str, dy=None) -> Callable[[], object]:
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return module(x)
    else:
        leaves = [x, *(p for p in module.parameters() if p.requires_grad)]

        def step():
            y = module(x)
            return torch.autograd.grad(y, leaves, dy)
    return step


def check_pair(original, fast, x, mode, dy) -> None:
    """The pair computes the same numbers (fp32 tolerances) before it is timed."""
    import copy

    a, b = copy.deepcopy(original), copy.deepcopy(fast)  # running statistics stay untouched
    xa = x.detach().clone().requires_grad_(mode == "fwd_bwd")
    xb = x.detach().clone().requires_grad_(mode == "fwd_bwd")
    if mode == "fwd":
        with torch.no_grad():
            pairs = [(a(xa), b(xb))]
    else:
        ya, yb = a(xa), b(xb)
        pa, pb = list(a.parameters()), list(b.parameters())
        ga = torch.autograd.grad(ya, [xa, *pa], dy)
        gb = torch.autograd.grad(yb, [xb, *pb], dy)
        pairs = [(ya, yb), (ga[0], gb[0])]
        unused = [g.flatten() for g in gb[1:]]
        for g in ga[1:]:  # every parameter gradient of the original has its match in the converted module
            g = g.flatten()
            match = next((i for i, h in enumerate(unused) if h.numel() == g.numel()
                          and float((h - g).abs().max()) <= 1e-4 * max(1.0, float(g.abs().max()))), None)
            assert match is not None, f"a parameter gradient of the original ({g.numel()} values) has no match"
            unused.pop(match)
    for u, v in pairs:
        scale = max(1.0, float(u.detach().abs().max()))
        err = float((u - v).detach().abs().max())
        assert err <= 1e-4 * scale, f"cbam_fast differs from the original by {err:.3e}"


def time_pair(steps: dict[str, Callable], reps: int, warmup: int = 3) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each step, called in turn (rotating who goes first): ``wall``
    (``time.perf_counter``) and ``cpu`` (``time.thread_time``: the calling thread's CPU time,
    which with one intra-op thread is all of the call's compute, and which other processes
    taking the cores in turns do not inflate)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times = {n: {"wall": [], "cpu": []} for n in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(reps):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                c0, t0 = time.thread_time(), time.perf_counter()
                steps[n]()
                t1, c1 = time.perf_counter(), time.thread_time()
                times[n]["wall"].append(t1 - t0)
                times[n]["cpu"].append(c1 - c0)
    finally:
        if enabled:
            gc.enable()
    return times


def measure(preset: str, shape_name: str, mode: str, memory_format: str = "nchw", reps: int = 15,
            with_reference: bool = False, check: bool = True) -> Row:
    shape = SHAPES[shape_name] if isinstance(shape_name, str) else tuple(shape_name)
    original, fast = build_pair(preset, shape)
    train = mode == "fwd_bwd"
    original.train(train)
    fast.train(train)
    torch.manual_seed(1)
    x = torch.randn(shape).contiguous(memory_format=FORMATS[memory_format])
    dy = torch.randn_like(x) if train else None
    if check:
        check_pair(original, fast, x, mode, dy)
    x.requires_grad_(train)
    steps = {"original": make_step(original, x, mode, dy), "cbam_fast": make_step(fast, x, mode, dy)}
    if with_reference:
        steps["reference"] = make_step(_reference_module(fast), x, mode, dy)
    times = time_pair(steps, reps)
    med = {n: {k: statistics.median(v) * 1e3 for k, v in t.items()} for n, t in times.items()}
    ratio = {k: statistics.median(o / f for o, f in zip(times["original"][k], times["cbam_fast"][k], strict=True))
             for k in ("wall", "cpu")}
    return Row(preset, "x".join(map(str, shape)), mode, memory_format,
               med["original"]["cpu"], med["cbam_fast"]["cpu"], ratio["cpu"],
               med["original"]["wall"], med["cbam_fast"]["wall"], ratio["wall"],
               med["reference"]["cpu"] if with_reference else None, cpu_label())


def markdown(rows: list[Row]) -> str:
    ref = any(r.reference_ms is not None for r in rows)
    head = ("| original | shape | mode | layout | original ms | cbam_fast ms | speedup (CPU time) | speedup (wall) |"
            + (" previous fallback ms |" if ref else ""))
    sep = "|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if ref else "")
    names = {k: v[0] for k, v in _originals().items()}
    lines = [head, sep]
    for r in rows:
        line = (f"| {names[r.preset]} | {r.shape} | {r.mode} | {r.memory_format} | {r.original_ms:.3f} | "
                f"{r.cbam_fast_ms:.3f} | {r.speedup:.2f}x | {r.speedup_wall:.2f}x |")
        if ref:
            line += f" {r.reference_ms:.3f} |" if r.reference_ms is not None else " |"
        lines.append(line)
    return "\n".join(lines)


def _csv(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", type=_csv, default=list(PRESETS))
    ap.add_argument("--shapes", type=_csv, default=list(SHAPES))
    ap.add_argument("--modes", type=_csv, default=list(MODES))
    ap.add_argument("--formats", type=_csv, default=["nchw"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--with-reference", action="store_true", help="also time the old fallback (reference.cbam)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# cbam_fast CPU path vs the originals, measured on {cpu_label()}", flush=True)
    rows = []
    for shape in args.shapes:
        for mode in args.modes:
            for fmt in args.formats:
                for preset in args.presets:
                    r = measure(preset, shape, mode, fmt, args.reps, args.with_reference)
                    rows.append(r)
                    extra = f"  previous fallback {r.reference_ms:8.3f}" if r.reference_ms is not None else ""
                    print(f"{preset:12s} {r.shape:13s} {mode:8s} {fmt:5s} cpu ms: original {r.original_ms:8.3f} "
                          f"cbam_fast {r.cbam_fast_ms:8.3f} speedup {r.speedup:5.2f}x | wall speedup "
                          f"{r.speedup_wall:5.2f}x{extra}", flush=True)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
