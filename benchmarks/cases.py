"""What the benchmarks measure: cases, configurations, the bytes model, profiles, targets.

Pure data and small functions (no torch import), shared by the pytest suite, the runner
(``python -m benchmarks.run``), the report and the tests of these tools.

A *configuration* is one (case, dtype, memory format, mode, implementation); it gives one row of
the results file. Configurations are listed in priority order (:func:`tier`), so a run cut short by
its time budget has measured the most important ones: the performance targets' rows first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One input shape. ``group`` names the family the targets and the report aggregate over;
    ``block`` the attention block timed (:data:`BLOCKS`)."""

    name: str
    group: str
    shape: tuple[int, int, int, int]  # N, C, H, W
    modes: tuple[str, ...]
    block: str = "cbam"


# What a case times: the full CBAM (cbam_fast.cbam against reference.cbam), or the channel gate
# alone, a squeeze-and-excitation gate (cbam_fast.channel_attention against
# reference.channel_attention): timm's SEModule (rd_ratio 1/16, rd_divisor 8: SE-ResNet-50) or
# with rd = C / 4 (RegNetY's se_ratio 0.25, on the block width).
BLOCKS = {"cbam": "CBAM", "se": "SE gate, rd = C/16 (timm SEModule)", "se-rd4": "SE gate, rd = C/4 (RegNetY)"}


GROUPS = {
    "r50-b32": "ResNet-50 CBAM stages, batch 32",
    "r50-b1": "ResNet-50 CBAM stages, batch-1 inference",
    "yolo-b16": "YOLO-neck-like maps, batch 16",
    "se-r50-b32": "SE-ResNet-50 SE gates, batch 32",
    "se-r50-b1": "SE-ResNet-50 SE gates, batch-1 inference",
    "se-regnety-b32": "RegNetY-1.6GF SE gates, batch 32",
}
_R50_CHW = ((256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7))
_YOLO_CHW = ((128, 80, 80), (256, 40, 40), (512, 20, 20))
_REGNETY_CHW = ((48, 56, 56), (120, 28, 28), (336, 14, 14), (888, 7, 7))  # RegNetY-1.6GF stage widths

CASES: tuple[Case, ...] = (
    *(Case(f"r50-s{i}-b32", "r50-b32", (32, *chw), ("fwd", "fwd_bwd")) for i, chw in enumerate(_R50_CHW, 1)),
    *(Case(f"r50-s{i}-b1", "r50-b1", (1, *chw), ("fwd",)) for i, chw in enumerate(_R50_CHW, 1)),
    *(Case(f"yolo-p{i}-b16", "yolo-b16", (16, *chw), ("fwd", "fwd_bwd")) for i, chw in enumerate(_YOLO_CHW, 3)),
    # (names that contain no CBAM case's name: -k filters match substrings)
    *(Case(f"seresnet50-s{i}-b32", "se-r50-b32", (32, *chw), ("fwd", "fwd_bwd"), "se")
      for i, chw in enumerate(_R50_CHW, 1)),
    *(Case(f"seresnet50-s{i}-b1", "se-r50-b1", (1, *chw), ("fwd",), "se") for i, chw in enumerate(_R50_CHW, 1)),
    *(Case(f"regnety16-s{i}-b32", "se-regnety-b32", (32, *chw), ("fwd", "fwd_bwd"), "se-rd4")
      for i, chw in enumerate(_REGNETY_CHW, 1)),
)
CASE_BY_NAME = {c.name: c for c in CASES}

# JSON name -> short name used in test ids and command-line filters
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
ELEMENT_SIZE = {"bfloat16": 2, "float16": 2, "float32": 4}
FORMATS = {"contiguous": "nchw", "channels_last": "cl"}
MODES = {"fwd": "forward (inference, no grad)", "fwd_bwd": "forward + backward (dx and every parameter gradient)"}
IMPLS = ("cbam_fast", "eager", "compile", "compile_max_autotune")
IMPL_LABELS = {
    "cbam_fast": "cbam_fast",
    "eager": "eager reference",
    "compile": "torch.compile (default)",
    "compile_max_autotune": "torch.compile (max-autotune-no-cudagraphs)",
}
# torch.compile mode of each compiled implementation
COMPILE_MODES = {"compile": "default", "compile_max_autotune": "max-autotune-no-cudagraphs"}
# compulsory traffic in units of S = |x| in bytes: read x + write y; + read x, read dy, write dx
TRAFFIC_FACTOR = {"fwd": 2, "fwd_bwd": 5}


def compulsory_bytes(shape: Iterable[int], dtype: str, mode: str) -> int:
    """Bytes a CBAM (or gate) call must move at least: 2 S forward, 5 S forward+backward (S = |x|
    in bytes)."""
    return TRAFFIC_FACTOR[mode] * math.prod(shape) * ELEMENT_SIZE[dtype]


def small_shape(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The CPU correctness mode's stand-in for a case: at most 2 samples, C / 16, H / 7 and W / 7
    capped at 9 (the interpreter's cost grows with the number of kernel programs)."""
    N, C, H, W = shape
    return min(N, 2), max(1, C // 16), min(9, max(1, H // 7)), min(9, max(1, W // 7))


# ----------------------------------------------------------------------------- configurations


@dataclasses.dataclass(frozen=True)
class Config:
    case: Case
    dtype: str  # a key of DTYPES
    memory_format: str  # a key of FORMATS
    mode: str  # a key of MODES
    impl: str  # one of IMPLS

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """Identity of the configuration, as the fields of a results row."""
        return (self.case.name, self.dtype, self.memory_format, self.mode, self.impl)

    @property
    def id(self) -> str:
        return f"{self.case.name}-{DTYPES[self.dtype]}-{FORMATS[self.memory_format]}-{self.mode}-{self.impl}"


def row_key(row: dict) -> tuple[str, str, str, str, str]:
    """The :attr:`Config.key` of a results row."""
    return (row["case"], row["dtype"], row["memory_format"], row["mode"], row["impl"])


TARGET_DTYPE = "bfloat16"
TARGET_GROUPS = ("r50-b32", "r50-b1", "se-r50-b32", "se-r50-b1")
B32_TARGET_GROUPS = ("r50-b32", "se-r50-b32")  # where torch.compile is a target too


def tier(cfg: Config) -> int:
    """Priority of a configuration (0 first), by what it tells per second of GPU time:

    0. the targets' rows: bf16 ResNet-50 stages (CBAM and the SE gate) at batch 32 for cbam_fast,
       eager and torch.compile's default mode; at batch 1 for cbam_fast and eager (the batch-1
       target is against eager);
    1. max-autotune on the batch-32 targets' forward rows (each compile: tens of seconds);
    2. every other cbam_fast and eager row (no compilation: about a second each);
    3. max-autotune on the batch-32 targets' forward+backward rows (a minute or more each);
    4. every other torch.compile default-mode row;
    5. every other max-autotune row.
    """
    target = cfg.dtype == TARGET_DTYPE and cfg.case.group in TARGET_GROUPS
    b32_target = target and cfg.case.group in B32_TARGET_GROUPS
    if cfg.impl in ("cbam_fast", "eager"):
        return 0 if target else 2
    if cfg.impl == "compile":
        return 0 if b32_target else 4
    if b32_target:
        return 1 if cfg.mode == "fwd" else 3
    return 5


def _order(cfg: Config):
    """Sort key: by :func:`tier`; inside a tier the rows that compile nothing (cbam_fast, eager:
    about a second each) before the torch.compile rows (tens of seconds each), so a run cut short
    by its budget has every cheap target row; the compile rows forward first (every shape), then
    forward+backward."""
    compiled = cfg.impl in COMPILE_MODES
    return (
        tier(cfg),
        compiled,
        list(DTYPES).index(cfg.dtype),
        list(MODES).index(cfg.mode) if compiled else 0,
        list(GROUPS).index(cfg.case.group),
        CASES.index(cfg.case),
        list(MODES).index(cfg.mode),
        list(FORMATS).index(cfg.memory_format),
        IMPLS.index(cfg.impl),
    )


def all_configs() -> list[Config]:
    """Every configuration of the suite, in priority order."""
    configs = [
        Config(case, dtype, fmt, mode, impl)
        for case in CASES
        for mode in case.modes
        for dtype in DTYPES
        for fmt in FORMATS
        for impl in IMPLS
    ]
    return sorted(configs, key=_order)


# targets: what gpu_check.sh runs by default (tier 0: the targets' rows, cbam_fast and eager
# first, then torch.compile's default mode as far as the budget goes); quick: gpu_check.sh --long
# (tiers 0-3: the targets, every cbam_fast and eager row, max-autotune on the targets);
# full: everything
PROFILES = {"targets": (0,), "quick": (0, 1, 2, 3), "full": (0, 1, 2, 3, 4, 5)}


def _normalise(values, table, what):
    """Accept long or short names ("bfloat16" or "bf16"); return the long ones."""
    if values is None:
        return None
    short_to_long = {short: long for long, short in table.items()}
    out = set()
    for v in values:
        if v in table:
            out.add(v)
        elif v in short_to_long:
            out.add(short_to_long[v])
        else:
            raise ValueError(f"unknown {what} {v!r}; choose from {', '.join([*table, *short_to_long])}")
    return out


def select(profile: str = "full", *, skip_done: Iterable[tuple] = (), cases=None, dtypes=None,
           formats=None, modes=None, impls=None) -> list[Config]:
    """The configurations of a profile, in priority order, less those whose key is in
    ``skip_done`` (rows already measured), filtered by the optional name lists (``cases`` takes
    case names or group names)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if cases is not None:
        unknown = set(cases) - set(CASE_BY_NAME) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown case(s) {sorted(unknown)}; choose from {', '.join([*GROUPS, *CASE_BY_NAME])}")
    dtypes = _normalise(dtypes, DTYPES, "dtype")
    formats = _normalise(formats, FORMATS, "memory format")
    modes = _normalise(modes, {m: m for m in MODES}, "mode")
    impls = _normalise(impls, {i: i for i in IMPLS}, "implementation")
    done = set(skip_done)
    out = []
    for cfg in all_configs():
        if tier(cfg) not in PROFILES[profile] or cfg.key in done:
            continue
        if cases is not None and cfg.case.name not in cases and cfg.case.group not in cases:
            continue
        if any(allowed is not None and value not in allowed for value, allowed in (
                (cfg.dtype, dtypes), (cfg.memory_format, formats), (cfg.mode, modes), (cfg.impl, impls))):
            continue
        out.append(cfg)
    return out


def cpu_check_configs() -> list[Config]:
    """What the CPU correctness mode checks, each at :func:`small_shape`, forward and gradients.

    Every benchmarked code path (implementation x mode x memory format, and each io dtype) on a
    sample of the shapes, so that it stays fast whatever the interpreter costs per kernel program:

    * the first case of each group (ResNet-50 batch 32, batch 1, YOLO), every mode and memory
      format, in fp32, for cbam_fast (its Triton kernels through the interpreter), the eager
      reference and torch.compile (without a GPU traced with ``backend="eager"``: graph capture,
      ``fullgraph=True``, so a graph break fails);
    * torch.compile's max-autotune entry on the first case, each mode (with ``backend="eager"``
      the mode changes nothing, so more would repeat the same check);
    * cbam_fast in bf16 (channels_last) and fp16 (NCHW) on the first case, forward only: random
      half-precision inputs have near-ties in the max pools, where gradients legitimately route
      differently.

    The kernels themselves, on every shape class, dtype and layout, are the test suite's job
    (``tests/``, with tie-free inputs).
    """
    firsts = []
    for case in CASES:
        if all(f.group != case.group for f in firsts):
            firsts.append(case)
    configs = [
        Config(case, "float32", fmt, mode, impl)
        for case in firsts for mode in case.modes for fmt in FORMATS for impl in ("cbam_fast", "eager", "compile")
    ]
    first = CASES[0]
    configs += [Config(first, "float32", "contiguous", mode, "compile_max_autotune") for mode in first.modes]
    configs += [Config(first, "bfloat16", "channels_last", "fwd", "cbam_fast"),
                Config(first, "float16", "contiguous", "fwd", "cbam_fast")]
    return configs


# ----------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Target:
    """A performance target: the geometric mean (``aggregate="geomean"``) or the maximum
    (``"max"``) over a group's shapes of a per-row metric of cbam_fast, compared with ``goal``.

    metric: ``pct_floor`` (% of the copy-bandwidth floor), ``vs_eager`` / ``vs_compile`` (the
    other implementation's median time over cbam_fast's; vs_compile takes the faster torch.compile
    mode measured) or ``launches`` (GPU operations per call).
    """

    label: str
    group: str
    mode: str
    metric: str
    goal: float
    higher_is_better: bool = True
    aggregate: str = "geomean"

    def met(self, value: float) -> bool:
        return value >= self.goal if self.higher_is_better else value <= self.goal

    @property
    def goal_text(self) -> str:
        unit = "%" if self.metric == "pct_floor" else "x" if self.metric.startswith("vs_") else ""
        return f"{'>=' if self.higher_is_better else '<='} {self.goal:g}{unit}"


TARGETS = (
    Target("forward: % of floor", "r50-b32", "fwd", "pct_floor", 70.0),
    Target("forward: speedup vs eager", "r50-b32", "fwd", "vs_eager", 3.0),
    Target("forward: speedup vs torch.compile", "r50-b32", "fwd", "vs_compile", 1.5),
    Target("forward+backward: % of floor", "r50-b32", "fwd_bwd", "pct_floor", 60.0),
    Target("forward+backward: speedup vs eager", "r50-b32", "fwd_bwd", "vs_eager", 2.5),
    Target("forward+backward: speedup vs torch.compile", "r50-b32", "fwd_bwd", "vs_compile", 1.5),
    Target("batch-1 forward: speedup vs eager", "r50-b1", "fwd", "vs_eager", 2.0),
    Target("batch-1 forward: launches per call (max)", "r50-b1", "fwd", "launches", 3,
           higher_is_better=False, aggregate="max"),
    # the SE gate alone (issue 15): eager needs about 3 S forward and 7-8 S backward
    Target("SE forward: speedup vs eager", "se-r50-b32", "fwd", "vs_eager", 1.3),
    Target("SE forward+backward: speedup vs eager", "se-r50-b32", "fwd_bwd", "vs_eager", 2.0),
    Target("SE forward: launches per call (max)", "se-r50-b32", "fwd", "launches", 2,
           higher_is_better=False, aggregate="max"),
)
