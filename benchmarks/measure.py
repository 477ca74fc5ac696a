"""How one thing is timed on a GPU. Every function here except :func:`count_device_ops`,
:func:`device_ops` and :func:`median` needs CUDA.

Timing protocol (shared by the pytest suite and the runner, so both give the same numbers):

* warm-up calls first, so compilation and autotuning (Triton JIT, torch.compile, max-autotune)
  are never timed;
* before every timed call, :class:`L2Flush` writes a buffer several times the L2 size, so no
  call reads its inputs from a cache the previous call filled;
* each call is bracketed by CUDA events (:class:`GpuClock`): the time is GPU time from the
  first to the last of the call's GPU work. The flush is enqueued before the start event and
  keeps the GPU busy while the host launches the call, so the host's launch latency of the
  first kernel is hidden (as in ``triton.testing.do_bench``); gaps between the call's own
  kernels, when the host launches them slower than the GPU runs them, are counted;
* the statistic reported is the median over the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def median(values) -> float:
    return float(statistics.median(values))


class GpuClock:
    """A clock reading GPU time, usable as pytest-benchmark's ``timer``.

    Calls come in pairs, as a harness times one call: ``t0 = clock(); fn(); t1 = clock()``.
    The first call of a pair records a CUDA start event and returns the clock's current reading
    without waiting for the GPU; the second records an end event, waits for it, and advances the
    reading by the GPU time between the two events. So ``t1 - t0`` is the GPU time of ``fn``, in
    seconds, and each pair's time (ms) is appended to :attr:`durations_ms`. The clock only
    advances inside pairs: time between pairs (the L2 flush, the harness) is not counted.
    """

    def __init__(self):
        self.durations_ms: list[float] = []
        self._start = None
        self._reading_s = 0.0

    def _mark(self):
        """Record a point in the GPU's stream (not waited for)."""
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _elapsed_ms(self, start, end) -> float:
        """Wait for ``end``; the GPU time from ``start`` to ``end`` in ms."""
        end.synchronize()
        return start.elapsed_time(end)

    def __call__(self) -> float:
        mark = self._mark()
        if self._start is None:
            self._start = mark
            return self._reading_s
        elapsed_ms = self._elapsed_ms(self._start, mark)
        self._start = None
        self.durations_ms.append(elapsed_ms)
        self._reading_s += elapsed_ms / 1e3
        return self._reading_s

    def reset(self) -> None:
        self.durations_ms = []
        self._start = None

    def __repr__(self) -> str:  # how pytest-benchmark names its timer
        return f"benchmarks.measure.{type(self).__name__}(CUDA events)"


class L2Flush:
    """Overwrites a buffer of at least 256 MiB and 4x the device's L2 cache (H100: 50 MB) when
    called; enqueued on the current stream, not waited for."""

    def __init__(self, device=None):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 0
        self.nbytes = max(256 * 2**20, 4 * l2)
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.int32, device=device or "cuda")

    def __call__(self) -> None:
        self.buffer.zero_()


def timed_rounds(step: Callable[[], None], setup: Callable[[], None], rounds: int, clock: GpuClock) -> list[float]:
    """Time ``rounds`` calls of ``step``, each after ``setup()`` (the L2 flush); returns the GPU
    times in ms. The same sequence pytest-benchmark's ``pedantic(step, setup=setup,
    rounds=rounds)`` runs with ``clock`` as its timer: the runner and the pytest suite share it."""
    clock.reset()
    for _ in range(rounds):
        setup()
        clock()
        step()
        clock()
    return list(clock.durations_ms)


def copy_bandwidth_gbps(nbytes: int = 2**30, rounds: int = 20, warmup: int = 3) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes/s), bytes read + written: the median
    time of ``dst.copy_(src)`` between two ``nbytes`` buffers (1 GiB each: far larger than L2,
    so no flush is needed). This is the floor's bandwidth."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").fill_(1.0)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    for _ in range(warmup):
        copy()
    times = timed_rounds(copy, lambda: None, rounds, GpuClock())
    return 2 * nbytes / (median(times) / 1e3) / 1e9


def count_device_ops(events) -> int:
    """GPU operations among profiler events: kernels, memsets and copies (events whose
    ``device_type`` is CUDA), not GPU-side user annotations (``record_function`` ranges)."""
    from torch.autograd import DeviceType

    return sum(
        1 for e in events
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    )


def device_ops(events) -> list[dict]:
    """The GPU operations among profiler events (as :func:`count_device_ops` counts them), in
    start order: ``{"name": kernel name, "us": device time in microseconds}`` each (the span of
    the operation on the GPU, from CUPTI)."""
    from torch.autograd import DeviceType

    ops = []
    for e in events:
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        tr = getattr(e, "time_range", None)
        us = tr.elapsed_us() if tr is not None else getattr(e, "device_time", 0.0)
        start = tr.start if tr is not None else 0
        ops.append((start, {"name": str(e.name), "us": float(us)}))
    ops.sort(key=lambda t: t[0])
    return [op for _, op in ops]


def profile_call(step: Callable[[], None], setup: Callable[[], None] | None = None) -> tuple[int | None, list | None]:
    """One profiled call of ``step`` (after ``setup()``, the L2 flush, outside the profile), from
    ``torch.profiler`` with CUDA activity: ``(GPU operations it enqueued: kernels, memsets,
    copies; their names and device times, see :func:`device_ops`)``. ``(None, None)`` (with a
    warning) if the profiler fails."""
    from torch.profiler import ProfilerActivity, profile

    if setup is not None:
        setup()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        events = prof.events()
        return count_device_ops(events), device_ops(events)
    except Exception as exc:  # CUPTI unavailable or busy: report no count rather than a wrong one
        import warnings

        warnings.warn(f"launch count unavailable: torch.profiler failed ({type(exc).__name__}: {exc})", stacklevel=2)
        return None, None


def count_launches(step: Callable[[], None]) -> int | None:
    """GPU operations (kernel launches, memsets, copies) one call of ``step`` enqueues, from
    ``torch.profiler`` with CUDA activity; None (with a warning) if the profiler fails."""
    return profile_call(step)[0]


def peak_memory_mb(step: Callable[[], None], resident_bytes: int) -> float:
    """Peak memory of one call of ``step``, in MiB: ``torch.cuda.max_memory_allocated`` during
    the call, less what was allocated before it, plus ``resident_bytes`` (the call's own inputs,
    which are allocated before it). The harness's buffers (the L2 flush buffer, other rows'
    leftovers) are so excluded; the inputs, the outputs, what autograd saves and the gradients
    are counted."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before + resident_bytes) / 2**20
