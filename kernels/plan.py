"""A call as a value: the list of launches a launcher decided on, then executed.

The launchers (:mod:`.launch`) decide everything about a call before anything runs: which
kernels, grids, block sizes, constexprs, splits and buffers. That decision is a :class:`Plan`,
a list of :class:`KernelLaunch` steps: one ``@triton.jit`` kernel each, its grid, runtime
arguments (tensors and scalars, in the kernel's parameter order), constexprs and launch
options, and which full-size tensors it reads and writes. (Every call is kernels alone since
the spatial BatchNorm moved into the kernels: no PyTorch step between launches.)

Three readers take the same value, so what is checked is what runs:

* :func:`execute` runs it (the op implementations in ``cbam_fast.ops``);
* :func:`recording` turns execution into a dry run that records each launch with its resolved
  arguments instead of launching: ``tests/compile_check.py`` compiles exactly those
  specialisations (Triton's own binder derives the signature, constexprs and divisibility
  attributes from the recorded arguments) and ``python -m benchmarks.plan`` reports them;
* the structural tests (launch counts, grids, passes over full-size tensors) read the records.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import torch


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What the launcher expects one launch to move (the static report's input; no effect on
    execution). ``total``: bytes the launch reads and writes; ``loads_per_program``: bytes one
    program loads (what it waits for); ``tile``: bytes one program has in flight per loop stage
    (one iteration's loads); ``source``: where its loads come from on first touch, ``"dram"``
    (full-size streams) or ``"l2"`` (small tensors and weights shared by many programs).
    ``shared`` / ``shared_per_program``: bytes of a full-size pass's reads of a small tensor that
    many of its programs share (a weight slab each program reads), in all and per program, not
    counted in ``total`` / ``loads_per_program``: after the first touch they come from L2.
    ``tail_round_trips``: dependent L2 round trips one program makes after the rest of the launch
    (a ticket's epilogue on the last sample: nothing overlaps it), charged at L2 latency."""

    total: int
    loads_per_program: int
    tile: int
    source: str = "dram"
    shared: int = 0
    shared_per_program: int = 0
    tail_round_trips: int = 0


@dataclasses.dataclass
class KernelLaunch:
    """One Triton kernel launch.

    role: what the launch does, for reports and tests ("channel_pool", ...).
    args: runtime arguments in the kernel's parameter order (constexprs excluded); tensors,
      ints or floats.
    constexprs: the kernel's compile-time arguments; options: ``num_warps``, ``num_stages``.
    reads / writes: names of the full-size tensors (``x``, ``dy``, ``y``, ``dx``) the launch
      streams; every other tensor argument is small (``O(N*C + N*H*W)``).
    evict_first: those of them the kernel loads or stores with the L2 hint ``evict_first`` (the
      L2 victimises their lines first: the static report's reuse model lets them displace
      nothing; tests/test_structure.py holds the SASS to it).
    """

    role: str
    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    options: dict
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    traffic: Optional[Traffic] = None
    evict_first: tuple[str, ...] = ()

    @property
    def kernel_name(self) -> str:
        fn = getattr(self.kernel, "fn", None)
        return getattr(fn, "__name__", None) or getattr(self.kernel, "name", type(self.kernel).__name__)

    @property
    def programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n


@dataclasses.dataclass
class Plan:
    """The steps of one call, in order, and its named buffers (``env``)."""

    steps: list = dataclasses.field(default_factory=list)
    env: dict = dataclasses.field(default_factory=dict)

    def launch(self, role, kernel, grid, args, constexprs, *, num_warps, num_stages=None, reads=(), writes=(),
               traffic=None, evict_first=()):
        # An explicit register budget (PTX .maxnreg): without one, ptxas spills a few registers
        # to raise occupancy (seen: STACK 8-32 bytes at 48-80 registers, sm_80 and sm_90); with
        # it, ptxas allocates what the code needs, up to the budget (two programs per SM).
        options = {"num_warps": num_warps, "maxnreg": min(255, 65536 // (32 * num_warps * 2))}
        if num_stages is not None:
            options["num_stages"] = num_stages
        self.steps.append(KernelLaunch(role, kernel, tuple(int(g) for g in grid), tuple(args), dict(constexprs),
                                       options, tuple(reads), tuple(writes), traffic,
                                       tuple(evict_first)))

    @property
    def launches(self) -> list[KernelLaunch]:
        return [s for s in self.steps if isinstance(s, KernelLaunch)]


# ----------------------------------------------------------------------------- execution


@dataclasses.dataclass
class Record:
    """A launch as executed: the step and its runtime arguments."""

    launch: KernelLaunch
    args: tuple

    @property
    def named_args(self) -> dict:
        names = [n for n in self.launch.kernel.arg_names if n not in self.launch.constexprs]
        return dict(zip(names, self.args))


_RECORDER: Optional[list] = None
_DRY = False
_TARGET_SMS: Optional[int] = None
_TARGET_L2: Optional[int] = None
# The L2 of the planning target under recording(sm_count=...) unless given: the H100's 50 MB (the
# H200 has 60 MB; the static report's model assumes the smaller too)
TARGET_L2_BYTES = 50_000_000


@contextlib.contextmanager
def recording(dry: bool = True, sm_count: Optional[int] = None, l2_bytes: Optional[int] = None):
    """Record every launch executed inside the block (a list of :class:`Record`); with ``dry``
    nothing is launched (the arguments may be CPU or meta tensors; outputs stay unwritten).
    ``sm_count``: plan for a GPU with that many SMs whatever device the tensors are on (the
    static report and the compile check plan CPU tensors for a 132-SM H100/H200); ``l2_bytes``:
    and with that much L2 (default with ``sm_count``: :data:`TARGET_L2_BYTES`)."""
    global _RECORDER, _DRY, _TARGET_SMS, _TARGET_L2
    saved = _RECORDER, _DRY, _TARGET_SMS, _TARGET_L2
    if l2_bytes is None and sm_count is not None:
        l2_bytes = TARGET_L2_BYTES
    _RECORDER, _DRY, _TARGET_SMS, _TARGET_L2 = [], dry, sm_count, l2_bytes
    try:
        yield _RECORDER
    finally:
        _RECORDER, _DRY, _TARGET_SMS, _TARGET_L2 = saved


def dry_run() -> bool:
    """True inside ``recording(dry=True)``: launches are recorded, not made."""
    return _DRY


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors the plan is made for: the planning target's under
    :func:`recording` with ``sm_count``, a CUDA device's own, else 2 (the interpreter: few
    programs, but enough to exercise every split)."""
    if _TARGET_SMS is not None:
        return _TARGET_SMS
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def l2_bytes(device: torch.device) -> int:
    """Bytes of L2 the plan is made for: the planning target's under :func:`recording`, a CUDA
    device's own, else :data:`TARGET_L2_BYTES` (the interpreter has no cache; any value works)."""
    if _TARGET_L2 is not None:
        return _TARGET_L2
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", TARGET_L2_BYTES) or TARGET_L2_BYTES
    return TARGET_L2_BYTES


def execute(plan: Plan) -> dict:
    """Run the plan's steps in order; returns its env."""
    for step in plan.steps:
        args = step.args
        if _RECORDER is not None:
            _RECORDER.append(Record(step, args))
        if not _DRY:
            step.kernel[step.grid](*args, **step.constexprs, **step.options)
    return plan.env


def kernel_arguments(record: Record) -> tuple[tuple, dict]:
    """(positional, keyword) arguments exactly as :func:`execute` passes them to the kernel."""
    return record.args, {**record.launch.constexprs, **record.launch.options}

