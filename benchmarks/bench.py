"""One benchmark configuration end to end, the CPU correctness mode, and the session of a GPU run.

Shared by the pytest suite (``test_cbam_bench.py``) and the runner (``run.py``): both build the
same inputs and implementations, check the same forward, time with the same protocol
(:mod:`benchmarks.measure`) and write the same rows (:mod:`benchmarks.results`).

Setup of every configuration: ``x = randn(N, C, H, W)`` in the configuration's dtype and memory
format; the block's parameters (CBAM: ``reduction_ratio=16``, ``kernel_size=7``; the SE gate:
timm's ``SEModule`` widths, :data:`benchmarks.cases.BLOCKS`; PyTorch's default init, seeded) in
the same dtype, as after ``module.to(dtype)``; for forward+backward, ``dy = randn_like(y)`` and
``torch.autograd.grad`` for x and every parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from collections.abc import Callable

import torch

import cbam_fast
from cbam_fast import reference

from . import cases, measure, results

FORMAT = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
PARAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "conv_weight", "conv_bias")
GATE_PARAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
# block -> (cbam_fast's function, the eager reference, its parameters' names)
BLOCK_FNS = {
    "cbam": (cbam_fast.cbam, reference.cbam, PARAM_NAMES),
    "se": (cbam_fast.channel_attention, reference.channel_attention, GATE_PARAM_NAMES),
    "se-rd4": (cbam_fast.channel_attention, reference.channel_attention, GATE_PARAM_NAMES),
}
SE_WIDTHS = {"se": dict(rd_ratio=1 / 16), "se-rd4": dict(rd_ratio=1 / 4, rd_divisor=1)}
# the forward check's atol, relative to the output's scale, added to 2x the same-dtype eager error
CHECK_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


# ----------------------------------------------------------------------------- inputs and calls


@dataclasses.dataclass
class Inputs:
    """x ``[N, C, H, W]``; params ``(fc1_weight [hid, C], fc1_bias [hid], fc2_weight [C, hid],
    fc2_bias [C], conv_weight [1, 2, 7, 7], conv_bias None)``, all in x's dtype; ``dy`` (like
    the output) only for forward+backward."""

    x: torch.Tensor
    params: tuple
    dy: torch.Tensor | None

    @property
    def grad_inputs(self) -> list[torch.Tensor]:
        return [self.x, *(p for p in self.params if p is not None)]

    @property
    def nbytes(self) -> int:
        tensors = [self.x, *(p for p in self.params if p is not None)] + ([self.dy] if self.dy is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def make_inputs(shape, dtype: str, memory_format: str, mode: str, device, seed: int = 0,
                block: str = "cbam") -> Inputs:
    """Fresh seeded inputs for one configuration (see the module docstring)."""
    torch.manual_seed(seed)
    N, C, H, W = shape
    tdtype = getattr(torch, dtype)
    grad = mode == "fwd_bwd"
    if block == "cbam":
        module = cbam_fast.CBAM(C, reduction_ratio=16, kernel_size=7).to(device=device, dtype=tdtype)
        layers = (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias, module.conv.weight,
                  module.conv.bias)
    else:  # timm's SEModule: 1x1 convs, as [out, in] matrices
        module = cbam_fast.ChannelAttention.timm_se(C, **SE_WIDTHS[block]).to(device=device, dtype=tdtype)
        layers = (module.fc1.weight.flatten(1), module.fc1.bias, module.fc2.weight.flatten(1), module.fc2.bias)
    params = tuple(None if p is None else p.detach().clone().requires_grad_(grad) for p in layers)
    x = torch.randn(N, C, H, W, device=device, dtype=tdtype).contiguous(memory_format=FORMAT[memory_format])
    x.requires_grad_(grad)
    dy = torch.randn_like(x) if grad else None  # randn_like keeps x's memory format, as y has it
    return Inputs(x, params, dy)


def make_impl(name: str, compile_backend: str = "inductor", block: str = "cbam") -> Callable:
    """The function an implementation runs, with cbam_fast.cbam's signature (the SE blocks:
    cbam_fast.channel_attention's).

    * ``cbam_fast``: :func:`cbam_fast.cbam` (the session sets ``CBAM_FAST_BACKEND=triton``);
      for the SE blocks :func:`cbam_fast.channel_attention`;
    * ``eager``: :func:`cbam_fast.reference.cbam`, the official semantics as PyTorch ops (the SE
      blocks: :func:`cbam_fast.reference.channel_attention`, timm's SEModule as PyTorch ops);
    * ``compile`` / ``compile_max_autotune``: ``torch.compile`` of that reference (modes
      ``default`` / ``max-autotune-no-cudagraphs``), ``fullgraph=True`` (a graph break fails the
      configuration) and ``dynamic=False`` (specialised to the shape, as a fixed-shape network is).
      Dynamo's caches are reset first, so every configuration gets a fresh static compile rather
      than a recompile that turns shapes dynamic or falls back to eager at the recompile limit.
      ``compile_backend="eager"`` (the CPU mode) traces the graph without generating code.
    """
    if block not in BLOCK_FNS:
        raise ValueError(f"unknown block {block!r}")
    fast, eager, _ = BLOCK_FNS[block]
    if name == "cbam_fast":
        return fast
    if name == "eager":
        return eager
    if name not in cases.COMPILE_MODES:
        raise ValueError(f"unknown implementation {name!r}")
    torch._dynamo.reset()
    if compile_backend == "inductor":
        return torch.compile(eager, mode=cases.COMPILE_MODES[name], fullgraph=True, dynamic=False)
    return torch.compile(eager, backend=compile_backend, fullgraph=True, dynamic=False)


def make_call(fn: Callable, inp: Inputs, mode: str) -> Callable[[], tuple]:
    """The benchmarked call; returns ``(y, grads)`` (grads None for ``fwd``).

    ``fwd``: ``fn(x, *params)`` under ``torch.no_grad()``. ``fwd_bwd``: the forward, then
    ``torch.autograd.grad(y, [x, *params], dy)`` (no accumulation into ``.grad``)."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(inp.x, *inp.params), None
    elif mode == "fwd_bwd":
        def call():
            y = fn(inp.x, *inp.params)
            return y, torch.autograd.grad(y, inp.grad_inputs, inp.dy)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return call


# ----------------------------------------------------------------------------- correctness


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def check_against_reference(label: str, inp: Inputs, y: torch.Tensor, grads=None, block: str = "cbam") -> None:
    """Assert an implementation's output (and, if given, its gradients for x and every parameter)
    is as close to the fp64 reference as PyTorch's own same-dtype computation is: error at most
    2x the eager reference's error in x's dtype plus a small atol at the output's scale."""
    want_grads = grads is not None
    _, ref_fn, names = BLOCK_FNS[block]

    def reference_run(cast):
        xs = cast(inp.x.detach()).requires_grad_(want_grads)
        ps = [None if p is None else cast(p.detach()).requires_grad_(want_grads) for p in inp.params]
        with torch.set_grad_enabled(want_grads):
            out = ref_fn(xs, *ps)
        if not want_grads:
            return out, None
        leaves = [xs, *(p for p in ps if p is not None)]
        return out, torch.autograd.grad(out, leaves, cast(inp.dy))

    y64, g64 = reference_run(lambda t: t.double())
    y_same, g_same = reference_run(lambda t: t)
    atol = CHECK_ATOL[inp.x.dtype]
    pairs = [("output", y, y_same, y64)]
    if want_grads:
        labels = ["dx"] + [f"d {name}" for name, p in zip(names, inp.params, strict=True) if p is not None]
        pairs += list(zip(labels, grads, g_same, g64, strict=True))
    for what, got, same, hi in pairs:
        assert got.shape == hi.shape and got.dtype == same.dtype, f"{label}: {what} is {got.dtype} {tuple(got.shape)}"
        assert not torch.isnan(got).any(), f"{label}: NaN in {what}"
        scale = max(1.0, hi.abs().max().item())
        err, err_same = _max_err(got, hi), _max_err(same, hi)
        bound = 2 * err_same + atol * scale
        assert err <= bound, (
            f"{label}: {what} max error {err:.3e} against the fp64 reference exceeds {bound:.3e} "
            f"(eager {got.dtype} error {err_same:.3e})"
        )


def check_small(cfg: cases.Config) -> None:
    """CPU correctness mode: the configuration's benchmarked call at :func:`cases.small_shape`,
    checked against the fp64 reference (forward, and the gradients for ``fwd_bwd``). cbam_fast
    runs its Triton kernels through the interpreter (the caller sets ``CBAM_FAST_BACKEND=triton``
    and ``TRITON_INTERPRET=1``); torch.compile entries are traced with ``backend="eager"``."""
    block = cfg.case.block
    inp = make_inputs(cases.small_shape(cfg.case.shape), cfg.dtype, cfg.memory_format, cfg.mode, "cpu", block=block)
    y, grads = make_call(make_impl(cfg.impl, compile_backend="eager", block=block), inp, cfg.mode)()
    assert y.is_contiguous(memory_format=FORMAT[cfg.memory_format]), f"{cfg.id}: output lost the input's memory format"
    check_against_reference(cfg.id, inp, y, grads, block)


# ----------------------------------------------------------------------------- time budget

# first guesses of the wall time one configuration costs on an H100 machine (compile, warm-up,
# timing, profiling), in seconds; replaced by the mean observed in the run once there is one
INITIAL_COST_S = {
    ("cbam_fast", "fwd"): 3.0, ("cbam_fast", "fwd_bwd"): 5.0,
    ("eager", "fwd"): 2.0, ("eager", "fwd_bwd"): 3.0,
    ("compile", "fwd"): 20.0, ("compile", "fwd_bwd"): 40.0,
    ("compile_max_autotune", "fwd"): 90.0, ("compile_max_autotune", "fwd_bwd"): 180.0,
}


class Budget:
    """Wall-time budget of a run: a configuration is admitted only if its estimated cost fits in
    what is left, so a run that cannot measure everything skips the expensive configurations it
    cannot finish and goes on with cheaper ones (the order is :func:`cases.tier`'s)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._start = clock()
        self._observed: dict[tuple[str, str], list[float]] = {}

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (self._clock() - self._start)

    def estimate(self, cfg: cases.Config) -> float:
        seen = self._observed.get((cfg.impl, cfg.mode))
        return sum(seen) / len(seen) if seen else INITIAL_COST_S[(cfg.impl, cfg.mode)]

    def admit(self, cfg: cases.Config) -> str | None:
        """None if the configuration fits, else the reason it is skipped."""
        left, need = self.remaining(), self.estimate(cfg)
        if need <= left:
            return None
        return f"time budget: needs about {need:.0f} s, {max(left, 0):.0f} s left"

    def record(self, cfg: cases.Config, seconds: float) -> None:
        self._observed.setdefault((cfg.impl, cfg.mode), []).append(seconds)


# ----------------------------------------------------------------------------- GPU session

TimeLoop = Callable[[Callable[[], None], Callable[[], None], int], list]
KERNELS_SUFFIX = results.KERNELS_SUFFIX
KERNELS_WHAT = ("per-kernel GPU times, MEASURED: for each results row, one profiled call (torch.profiler with "
                "CUDA activity, after an L2 flush; not one of the timed rounds): every GPU operation it enqueued "
                "(kernels, memsets, copies) with its device time in microseconds, in start order")


class BenchSession:
    """The state of one GPU benchmark run.

    Measures the device-to-device copy bandwidth once (the floor's bandwidth), owns the L2 flush
    buffer and the time budget, measures configurations (:meth:`measure`), and rewrites the
    results file after every row, so a run stopped early still leaves a valid file.

    Output: ``<out_dir>/<date>-<device>.json``, its PNG and ``<date>-<device>.kernels.json``
    (per-kernel GPU times of each row's profiled call); ``BENCHMARKS.md`` in ``out_dir``, or
    ``benchmarks/BENCHMARKS.md`` when ``out_dir`` is the default ``benchmarks/results``.
    """

    def __init__(self, out_dir=None, budget_s: float | None = None, rounds: int = 50, warmup: int = 3,
                 log: Callable[[str], None] = print, device: str = "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("benchmark timings need a CUDA device")
        os.environ["CBAM_FAST_BACKEND"] = "triton"  # cbam_fast rows time the Triton kernels, nothing else
        self.device = device  # "cuda"; the tools' tests drive a session on CPU with stand-in measurements
        self.out_dir = Path(out_dir) if out_dir else results.RESULTS_DIR
        default_out = self.out_dir.resolve() == results.RESULTS_DIR.resolve()
        self.md_path = results.REPO_ROOT / "benchmarks" / "BENCHMARKS.md" if default_out else self.out_dir / "BENCHMARKS.md"
        self.rounds, self.warmup, self.log = rounds, warmup, log
        self.budget = Budget(budget_s)
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []  # (config id, reason)
        self.failed: list[tuple[str, str]] = []
        self.path: Path | None = None
        self.kernels: list[dict] = []  # per-kernel GPU times of each row's profiled call
        self._stamp: dict | None = None
        self._flush: measure.L2Flush | None = None

    # -- lazily, so a run that measures nothing allocates and writes nothing
    def _start(self) -> None:
        if self._stamp is not None:
            return
        copy_gbps = measure.copy_bandwidth_gbps()
        if self.device == "cuda":
            torch.cuda.empty_cache()  # give back the copy test's 2 GiB
        self._stamp = results.stamp(copy_gbps)
        self._flush = measure.L2Flush()
        self.path = results.results_path(self.out_dir, self._stamp)
        self.log(f"cbam_fast benchmarks: {self._stamp['device']}, device-to-device copy {copy_gbps:.0f} GB/s; "
                 f"results -> {self.path}")

    @property
    def copy_gbps(self) -> float:
        self._start()
        return self._stamp["copy_gbps"]

    def admit(self, cfg: cases.Config) -> str | None:
        reason = self.budget.admit(cfg)
        if reason is not None:
            self.skipped.append((cfg.id, reason))
        return reason

    def measure(self, cfg: cases.Config, time_loop: TimeLoop | None = None) -> dict:
        """Measure one configuration and add its row (returned).

        Steps: fresh inputs; the first call (compiles and autotunes) checked against the fp64
        reference (forward); ``warmup`` more calls; ``rounds`` timed calls through ``time_loop``
        (default: :func:`measure.timed_rounds`; the pytest suite passes pytest-benchmark's
        ``pedantic``), each after an L2 flush; one profiled call, after a flush, for the launch
        count and the per-kernel GPU times (:attr:`kernels_path`); for ``fwd_bwd``, one call for
        peak memory."""
        self._start()
        t0 = time.perf_counter()
        block = cfg.case.block
        inp = make_inputs(cfg.case.shape, cfg.dtype, cfg.memory_format, cfg.mode, self.device, block=block)
        call = make_call(make_impl(cfg.impl, block=block), inp, cfg.mode)
        y, _ = call()
        check_against_reference(cfg.id, inp, y, block=block)
        del y
        for _ in range(self.warmup):
            call()
        torch.cuda.synchronize()
        ready_s = time.perf_counter() - t0

        def step():
            call()

        if time_loop is None:
            times = measure.timed_rounds(step, self._flush, self.rounds, measure.GpuClock())
        else:
            times = time_loop(step, self._flush, self.rounds)
        if len(times) != self.rounds:
            raise RuntimeError(f"{cfg.id}: expected {self.rounds} timed calls, the harness reported {len(times)}")
        launches, kernels = measure.profile_call(step, self._flush)
        peak = measure.peak_memory_mb(step, inp.nbytes) if cfg.mode == "fwd_bwd" else None
        row = results.make_row(cfg, measure.median(times), self.copy_gbps, peak, launches)
        spent = time.perf_counter() - t0
        self.budget.record(cfg, spent)
        self.rows.append(row)
        results.write(self.path, self._stamp, self.rows)
        if kernels is not None:
            self.kernels.append({"id": cfg.id, **{k: row[k] for k in ("case", "dtype", "memory_format", "mode", "impl",
                                                                        "median_ms")},
                                 "device_us": sum(k["us"] for k in kernels), "kernels": kernels})
            self._write_kernels()
        self.log(f"{cfg.id}: {row['median_ms']:.4f} ms, {row['gbps']:.0f} GB/s, {row['pct_floor']:.0f}% of floor, "
                 f"launches {launches}, peak {'-' if peak is None else f'{peak:.0f} MiB'} "
                 f"(compile+warm-up {ready_s:.1f} s, total {spent:.1f} s)")
        return row

    @property
    def kernels_path(self) -> Path | None:
        """``<results file>.kernels.json``: for each measured row, the GPU operations of its one
        profiled call (name and device time in us, from torch.profiler), beside the results file."""
        return None if self.path is None else self.path.with_name(self.path.stem + KERNELS_SUFFIX)

    def _write_kernels(self) -> None:
        doc = {
            "what": KERNELS_WHAT,
            **{k: self._stamp[k] for k in ("device", "torch", "triton", "git_sha", "date")},
            "results": self.path.name,
            "rows": self.kernels,
        }
        tmp = self.kernels_path.with_name(self.kernels_path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.kernels_path)

    def finish(self) -> str:
        """Final write, ``BENCHMARKS.md`` and the PNG; returns the summary to print (targets,
        files, skipped configurations)."""
        from . import report

        lines = []
        if self.rows:
            results.write(self.path, self._stamp, self.rows)
            try:
                lines += report.generate([self.path], md_path=self.md_path, png_path=self.path.with_suffix(".png"))
            except Exception as exc:  # the results file is complete: the report can be redone from it
                lines.append(f"report failed ({type(exc).__name__}: {exc}): rerun python -m benchmarks.report {self.path}")
            lines.append(f"results: {self.path}")
            if self.kernels:
                lines.append(f"per-kernel GPU times (one profiled call per row): {self.kernels_path}")
        else:
            lines.append("cbam_fast benchmarks: no configuration was measured; no results file written")
        if self.skipped:
            lines.append(f"{len(self.skipped)} configuration(s) not measured for lack of time (a later run "
                         f"given {self.path or 'the results file'} to skip (pytest --bench-skip-done, "
                         "benchmarks.run --skip-done, gpu_check.sh --skip-done) measures only these):")
            lines += [f"  {cid}: {why}" for cid, why in self.skipped]
        if self.failed:
            lines.append(f"{len(self.failed)} configuration(s) FAILED:")
            lines += [f"  {cid}: {why}" for cid, why in self.failed]
        return "\n".join(lines)
