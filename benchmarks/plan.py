"""The static performance report: what each benchmark call launches, read off its plan and its
compiled code, and what that predicts on an H200. Runs on a CPU; needs no GPU.

    python -m benchmarks.plan                      # bf16 target rows (R50 batch 32 fwd and fwd+bwd, batch 1 fwd; CBAM and the SE gate)
    python -m benchmarks.plan --cases gates        # the gate family's rows (SE, the spatial gate)
    python -m benchmarks.plan --cases all --detail # every dtype and preset, one line per launch
    python -m benchmarks.plan --markdown FILE      # also write the tables as markdown

EVERY NUMBER IT PRINTS IS A PREDICTION from the model below, not a measurement.

For each call (:mod:`benchmarks.launched`): every launch of the call, Triton kernels (from the
plan, compiled exactly as launched for sm_90) and every ATen op (counted by a dispatch mode, so
parameter casts and clones show): grid, programs per SM, registers and resident programs per SM,
the global load widths in the SASS (16 B = ``LDG.E.128``), bytes in flight per program, whether
the loop is pipelined (``LDGSTS``, cp.async), the full-size passes with the reuse distance of
each re-read against the L2 size, and a predicted time. Next to it eager PyTorch's launches and
bytes (the reference, counted the same way) and the floor.

The model (constants in :data:`MODEL`):

* a kernel launch costs ``launch_us`` of GPU time on its own (the CPU side is not modelled: it is
  assumed to run ahead);
* a Triton launch: ``resident = min(programs, SMs x resident programs per SM)``; one program
  needs ``loads_per_program x latency / in_flight`` (Little's law, ``in_flight = tile x
  (num_stages - 1)`` when the SASS has LDGSTS, num_stages the loop's own ``NUM_STAGES``, else
  one tile; never more than the program loads: :func:`bytes_in_flight`); the launch takes
  ``max(waves x that, total bytes / bandwidth)``, bandwidth and latency blended between those
  of DRAM and of L2 by the share of the pass's full-size reads that hit L2 (all of them for
  small tensors, ``source="l2"``); a pass's reads of a weight slab that many of its programs
  share (``Traffic.shared``, ``shared_per_program``) are L2 hits at L2 latency and bandwidth,
  whatever the stream's source (the first touch of a tensor of at most a few MB is not
  charged); a chain of dependent loads one program makes at the launch's end
  (``Traffic.tail_round_trips``: the second layer in channel_pool's last epilogue) adds its
  round trips at L2 latency. A read hits when its reuse distance is at most ``l2_reach``
  x the L2 size: the distance of sample n's slice of a tensor is the bytes of the distinct
  full-size slices (tensor, sample) touched since its previous access (an LRU stack distance;
  precisely, the deepest the slice sank in the stack since then), on a trace of the call in which
  every pass walks the batch sample by sample in its plan's direction (``REVERSE``;
  kernels/launch.py ``ORDER``), reading then writing each sample's slices. A slice a launch
  accesses with the L2 hint ``evict_first`` (what its plan declares, ``KernelLaunch.evict_first``,
  where the compiled PTX carries it: :func:`benchmarks.launched.l2_hints`; tests/compile_check.py
  holds the two together) drops below every other slice, pushing none of them down: the L2
  victimises such lines first. ``evict_last`` is taken as the default policy (its
  effect without a persisting-L2 set-aside is not established);
* an ATen op: ``bytes / copy bandwidth`` (its reads and writes), no L2 credit, at full
  bandwidth however small (generous to eager at small sizes);
* the floor: compulsory bytes (2 S forward, 5 S forward+backward) / copy bandwidth, or one
  launch, whichever is larger.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import warnings
from collections import Counter

warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")

# Model constants, H200 as seen here (shared/PERF.md): one place for all of them.
MODEL = dict(
    sms=132,                 # streaming multiprocessors
    copy_bw=4.3e12,          # B/s, device-to-device copy (read + write) seen on the H200, 2026-10-28
    l2_bw=7.0e12,            # B/s, assumed L2 hit bandwidth
    dram_latency=650e-9,     # s, assumed (PERF.md: 600-700 ns)
    l2_latency=250e-9,       # s, assumed (PERF.md: 150-300 ns)
    l2_size=50e6,            # B (H100 50 MB; PERF.md gives the H200 60 MB: the smaller is assumed)
    l2_reach=0.75,           # a re-read hits L2 when its reuse distance is at most this share of L2
    launch_us=2.0,           # us of GPU time per launch, however small
)
ARCH = 90


@dataclasses.dataclass
class LaunchRow:
    part: str  # fwd / bwd
    role: str
    kernel: str
    grid: tuple
    programs: int
    regs: int
    resident: int  # programs per SM
    ldg: dict
    stg: dict
    pipelined: bool
    in_flight: int
    passes: str
    reuse: str
    source: str
    us: float


def _compiled(spec, cache):
    from benchmarks import launched

    if spec not in cache:
        cache[spec] = launched.compile_spec(spec, ARCH)
    return cache[spec]


def _widths(d: dict) -> str:
    return " ".join(f"{w}Bx{n}" for w, n in sorted(d.items(), reverse=True)) or "-"


def kernel_rows(cap, cache) -> list[LaunchRow]:
    """One row per Triton launch of a captured call, with its predicted time."""
    from benchmarks import launched

    m = MODEL
    rows = []
    S = cap.x_bytes
    N = cap.call.shape[0]
    l2 = {}  # the (tensor, sample) slices of the full-size tensors on the L2 (:func:`_walk`)
    for part, records in (("fwd", cap.forward), ("bwd", cap.backward)):
        for rec in records:
            ln = rec.launch
            spec = launched.specialize(rec, ARCH)
            c = _compiled(spec, cache)
            occ = launched.occupancy(c, ARCH)
            t = ln.traffic
            in_flight = bytes_in_flight(t, ln.constexprs, c.ldgsts, c.num_stages)
            # where this launch's loads come from: the share of its full-size reads that hit L2
            # the declared evict_first accesses that the compiled code makes so (loads, stores);
            # the PTX says whether a load (a store) carries the hint, not for which pointer, so a
            # launch declares at most one such read and one such write, or the credit is ambiguous
            assert sum(n in ln.reads for n in ln.evict_first) <= 1 and sum(n in ln.writes for n in ln.evict_first) <= 1, (
                f"{ln.role}: evict_first declared on several reads or writes: {ln.evict_first}")
            hinted = tuple(n for n in ln.evict_first if (n in ln.reads and c.evict_first_loads)
                           or (n in ln.writes and c.evict_first_stores))
            dists = _walk(l2, ln, N, S / N, hinted)
            hit = 1.0 if t.source == "l2" else 0.0
            reuse = "-"
            if t.source == "dram" and dists:
                reach = m["l2_reach"] * m["l2_size"]
                hit = sum(d is not None and d <= reach for d in dists) / len(dists)
                known = [d for d in dists if d is not None]
                if known:
                    reuse = f"{min(known) / 1e6:.0f}-{max(known) / 1e6:.0f}MB vs {reach / 1e6:.0f}MB"
            latency = hit * m["l2_latency"] + (1 - hit) * m["dram_latency"]
            resident = min(ln.programs, m["sms"] * max(occ, 1))
            waves = math.ceil(ln.programs / resident)
            # a shared weight slab's reads come from L2 whatever the stream's source
            per_program = (t.loads_per_program * latency + t.shared_per_program * m["l2_latency"]) / max(in_flight, 1)
            seconds = max(waves * per_program,
                          t.total * (hit / m["l2_bw"] + (1 - hit) / m["copy_bw"]) + t.shared / m["l2_bw"])
            seconds += m["launch_us"] * 1e-6 + t.tail_round_trips * m["l2_latency"]
            passes = ",".join([f"r:{n}" for n in ln.reads] + [f"w:{n}" for n in ln.writes]) or "-"
            source = "L2" if hit == 1 else "DRAM" if hit == 0 else f"L2 {100 * hit:.0f}%"
            if ln.reads and "REVERSE" in ln.constexprs:
                passes += " (desc)" if ln.constexprs["REVERSE"] else " (asc)"
            rows.append(LaunchRow(part, ln.role, ln.kernel_name, ln.grid, ln.programs, c.regs, occ, c.ldg, c.stg,
                                  bool(c.ldgsts), in_flight, passes, reuse, source, seconds * 1e6))
    return rows


def bytes_in_flight(t, constexprs: dict, pipelined: bool, option_stages: int) -> int:
    """Bytes one program of a launch has in flight (Little's law's numerator): one tile
    (``t.tile``) per stage ahead of the one in use when the loop is pipelined (the SASS has
    LDGSTS), else one tile. The depth is the loop's own ``tl.range(num_stages=...)``, the
    ``NUM_STAGES`` constexpr, where the kernel has one (its launch option ``option_stages``
    otherwise), and a program never has more in flight than it loads (``t.loads_per_program``)."""
    stages = constexprs.get("NUM_STAGES", option_stages) if pipelined else 2
    ahead = t.tile * max(1, stages - 1)
    return min(ahead, t.loads_per_program) if t.loads_per_program > 0 else ahead


def _walk(l2: dict, ln, N: int, slice_bytes: float, evict_first: tuple = ()) -> list:
    """Run one launch's full-size accesses on the L2 trace ``l2`` (updated in place): sample by
    sample in the launch's direction, its reads, then its writes. Returns the reuse distance in
    bytes of each read (None: first touch in the call): the deepest its (tensor, sample) slice
    sank since its previous access, itself included. Two classes of lines, each least recently
    touched first: ``l2["lru"]``, slices last accessed with the default policy, and
    ``l2["first"]``, those last accessed with the hint ``evict_first`` (``evict_first``),
    which the L2 victimises before any other: a slice of the first class lies below every slice
    of the second and pushes none of them down. ``l2["peak"]``: the deepest each slice sank."""
    lru, first, peak = l2.setdefault("lru", []), l2.setdefault("first", []), l2.setdefault("peak", {})
    order = range(N - 1, -1, -1) if ln.constexprs.get("REVERSE", 0) else range(N)
    dists = []
    for n in order:
        for name, is_read in [(r, True) for r in ln.reads] + [(w, False) for w in ln.writes]:
            key = (name, n)
            d = peak[key] * slice_bytes if key in peak else None
            for stack in (lru, first):
                if key in stack:
                    stack.remove(key)
            (first if name in evict_first else lru).append(key)
            for i, k in enumerate(lru):
                peak[k] = len(lru) - i if k == key else max(peak[k], len(lru) - i)
            for i, k in enumerate(first):
                depth = len(lru) + len(first) - i
                peak[k] = depth if k == key else max(peak[k], depth)
            if is_read:
                dists.append(d)
    return dists


def aten_us(ops) -> float:
    m = MODEL
    return sum(m["launch_us"] + op.bytes / m["copy_bw"] * 1e6 for op in ops)


@dataclasses.dataclass
class CallReport:
    call: object
    rows: list
    aten_fwd: list
    aten_bwd: list
    eager_fwd: list
    eager_bwd: list
    x_bytes: int

    def launches(self, part):
        k = sum(1 for r in self.rows if r.part == part)
        return k + len(self.aten_fwd if part == "fwd" else self.aten_bwd)

    def us(self, part):
        k = sum(r.us for r in self.rows if r.part == part)
        return k + aten_us(self.aten_fwd if part == "fwd" else self.aten_bwd)

    @property
    def total_us(self):
        return self.us("fwd") + (self.us("bwd") if self.call.mode == "fwd_bwd" else 0.0)

    @property
    def eager_us(self):
        return aten_us(self.eager_fwd) + aten_us(self.eager_bwd)

    @property
    def eager_launches(self):
        return len(self.eager_fwd) + len(self.eager_bwd)

    @property
    def eager_bytes_s(self):
        return sum(o.bytes for o in self.eager_fwd + self.eager_bwd) / self.x_bytes

    @property
    def floor_us(self):
        factor = 2 if self.call.mode == "fwd" else 5
        return max(factor * self.x_bytes / MODEL["copy_bw"] * 1e6, MODEL["launch_us"])


def report(call, cache) -> CallReport:
    from benchmarks import launched

    cap = launched.capture(call)
    ef, eb = launched.eager_ops(call)
    return CallReport(call, kernel_rows(cap, cache), cap.aten_forward, cap.aten_backward, ef, eb, cap.x_bytes)


def target_calls(preset="default"):
    """The target rows of a preset: the ResNet-50 stages, bf16, both formats, batch 32 forward and
    forward+backward, batch 1 forward (the SE gate's preset ``se``: the SE-ResNet-50 stages)."""
    from benchmarks.launched import R50_STAGES, Call

    out = []
    for mode, n in (("fwd", 32), ("fwd_bwd", 32), ("fwd", 1)):
        for chw in R50_STAGES:
            for fmt in ("nchw", "cl"):
                out.append(Call((n, *chw), "bf16", fmt, preset, preset == "timm" and mode == "fwd_bwd", mode))
    return out


def _ops_summary(ops) -> str:
    c = Counter(o.name for o in ops)
    return " ".join(f"{k}x{v}" if v > 1 else k for k, v in c.items()) or "-"


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def format_tables(reports, detail=False) -> str:
    out = []
    out.append("PREDICTED (static model, H200 constants in benchmarks/plan.py MODEL; no GPU measurement)")
    hdr = ("| call | launches (kernels+aten) | eager launches | eager bytes | pred. us | eager pred. us | "
           "vs eager | floor us | % of floor | min grid | max in flight/prog |")
    out.append(hdr)
    out.append("|---" * (hdr.count("|") - 1) + "|")
    for r in reports:
        nk = sum(1 for x in r.rows)
        na = len(r.aten_fwd) + len(r.aten_bwd)
        full = [x for x in r.rows if x.source != "L2" or x.passes != "-"]
        min_grid = min((x.programs for x in r.rows if x.passes != "-"), default=0)
        inflight = max((x.in_flight for x in full), default=0)
        out.append(
            f"| {r.call.id} | {nk}+{na} = {nk + na} | {r.eager_launches} | {r.eager_bytes_s:.1f} S | "
            f"{r.total_us:.1f} | {r.eager_us:.1f} | {r.eager_us / r.total_us:.2f}x | {r.floor_us:.1f} | "
            f"{100 * r.floor_us / r.total_us:.0f}% | {min_grid} | {inflight / 1024:.0f} KB |")
    if detail:
        for r in reports:
            out.append("")
            out.append(f"{r.call.id}: S = |x| = {r.x_bytes / 1e6:.1f} MB")
            out.append("| part | launch | grid | programs/SM | regs | resident/SM | LDG widths | STG widths | "
                       "pipelined | in flight | passes | reuse | from | pred. us |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for x in r.rows:
                out.append(
                    f"| {x.part} | {x.role} | {x.grid} | {x.programs / MODEL['sms']:.2f} | {x.regs} | {x.resident} | "
                    f"{_widths(x.ldg)} | {_widths(x.stg)} | {'yes' if x.pipelined else 'no'} | "
                    f"{x.in_flight / 1024:.1f} KB | {x.passes} | {x.reuse} | {x.source} | {x.us:.1f} |")
            out.append(f"| fwd | aten: {_ops_summary(r.aten_fwd)} | | | | | | | | | | | | {aten_us(r.aten_fwd):.1f} |")
            if r.call.mode == "fwd_bwd":
                out.append(f"| bwd | aten: {_ops_summary(r.aten_bwd)} | | | | | | | | | | | | "
                           f"{aten_us(r.aten_bwd):.1f} |")
            out.append(f"eager: fwd {_ops_summary(r.eager_fwd)}; bwd {_ops_summary(r.eager_bwd)}")
    return "\n".join(out)


# (speedup vs eager, % of floor) per group: CBAM's (shared/PERF.md), and the SE gate's (issue 15:
# forward >= 1.3x, forward+backward >= 2x eager, forward in at most 2 launches)
GOALS = {"forward, batch 32": (3.0, 70), "forward+backward, batch 32": (2.5, 60), "forward, batch 1": (2.0, None)}
GATE_GOALS = {"forward, batch 32": (1.3, None), "forward+backward, batch 32": (2.0, None), "forward, batch 1": (1.3, None)}
GATE_MAX_FWD_LAUNCHES = 2


_ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


def vector_note(call) -> "str | None":
    """Why a call's full-size accesses (x, y; dy, dx) are not 16 bytes wide, or None where they
    are. A pass's tile is rows of contiguous elements, H*W of them in NCHW and C in channels_last,
    row r starting r x (the row's bytes) from the sample's start; the compiler vectorises only
    what it can prove aligned, and Triton tells it an integer's divisibility by 16 only (its
    specialisation), so 16-byte accesses need a row of a multiple of 16 elements."""
    _, C, H, W = call.shape
    es = _ELEMENT_BYTES[call.dtype]
    row, what = (H * W, f"H*W = {H} x {W}") if call.fmt == "nchw" else (C, f"C = {C}")
    if row % 16 == 0:
        return None
    head = (f"{'NCHW' if call.fmt == 'nchw' else 'channels_last'} {C}x{H}x{W} {call.dtype}: no 16-byte access to "
            f"x or y: a tile's rows are {what} = {row} elements x {es} B = {row * es} B")
    if row * es % 16 == 0:
        return (head + f", 16-byte aligned, but {row} is not a multiple of 16, all that Triton's specialisation "
                f"tells the compiler, so it emits {es}-byte accesses; a `tl.multiple_of` hint on the row stride "
                f"would let it vectorise (not built)")
    return (head + f", so every other row starts {math.gcd(row * es, 16)}-byte aligned and the compiled accesses are "
            f"{es} B wide (the SASS widths of --detail); a pass over each sample's C x H x W block as one flat run "
            f"({C * H * W * es} B{', a multiple of 16' if C * H * W * es % 16 == 0 else ''}) could have them, at the "
            f"price of a per-element channel index (not built)")


def summary(reports) -> str:
    """The targets (shared/PERF.md) on the model: geometric means over the 4 stages x 2 formats,
    per preset."""
    from benchmarks.launched import GATE_PRESETS

    lines = ["", "Targets on the model (PREDICTED), bf16:"]
    for preset in dict.fromkeys(r.call.preset for r in reports):
        goals = GATE_GOALS if preset in GATE_PRESETS else GOALS
        groups = {
            "forward, batch 32": [r for r in reports if r.call.shape[0] == 32 and r.call.mode == "fwd"],
            "forward+backward, batch 32": [r for r in reports if r.call.shape[0] == 32 and r.call.mode == "fwd_bwd"],
            "forward, batch 1": [r for r in reports if r.call.shape[0] == 1 and r.call.mode == "fwd"],
        }
        for name, rs in groups.items():
            rs = [r for r in rs if r.call.preset == preset]
            if not rs:
                continue
            ve = geomean(r.eager_us / r.total_us for r in rs)
            pf = geomean(100 * r.floor_us / r.total_us for r in rs)
            worst = min(rs, key=lambda r: r.eager_us / r.total_us)
            g_e, g_f = goals[name]
            maxl = max(r.launches("fwd") for r in rs)
            maxb = max((r.launches("bwd") for r in rs if r.call.mode == "fwd_bwd"), default=None)
            line = (f"- {preset}, {name}: {ve:.2f}x eager (goal >= {g_e}x), {pf:.0f}% of floor"
                    + (f" (goal >= {g_f}%)" if g_f else "") + f"; worst {worst.call.id} at "
                    f"{worst.eager_us / worst.total_us:.2f}x; launches at most {maxl} forward"
                    + (f" (goal <= {GATE_MAX_FWD_LAUNCHES})" if preset in GATE_PRESETS else "")
                    + (f", {maxb} backward" if maxb is not None else ""))
            lines.append(line)
    notes = dict.fromkeys(n for n in (vector_note(r.call) for r in reports) if n)
    if notes:
        lines += ["", "Full-size accesses that cannot be 16 bytes wide (every other call's can):"]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", choices=("targets", "timm", "gates", "all"), default="targets",
                        help="targets: CBAM's bf16 target rows and the SE gate's (default); timm: also the timm "
                             "preset's; gates: the gate family's rows only (SE at the SE-ResNet-50 stages, the spatial "
                             "gate); all: every one")
    parser.add_argument("--detail", action="store_true", help="one line per launch")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("benchmarks.plan: unset TRITON_INTERPRET (the report compiles the kernels)")
    calls = target_calls() + target_calls("se") if args.cases != "gates" else target_calls("se")
    if args.cases in ("timm", "all"):
        calls += target_calls("timm")
    if args.cases in ("gates", "all"):
        calls += [c for c in target_calls("spatial") if c.shape[0] == 32]
    cache = {}
    reports = [report(c, cache) for c in calls]
    text = format_tables(reports, args.detail) + "\n" + summary(reports)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
