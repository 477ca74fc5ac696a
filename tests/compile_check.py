"""The launch-exact compile check: compile, for sm_80 and sm_90, exactly the kernel
specialisations cbam_fast launches, and require that none spills. Needs no GPU.

The specialisations come from the calls' plans (``benchmarks/launched.py``): each call of
:func:`benchmarks.launched.benchmark_calls` (the ResNet-50 stages at batch 32 and 1, both memory
formats, bf16/fp16/fp32, the default call and the timm preset in train and eval mode) and of
:func:`~benchmarks.launched.coverage_calls` (fp64, every preset, k = 3/5, strided incoming
gradients) is dry-run; every recorded launch is specialised by Triton's own binder from its
real arguments (signature, integers equal to 1 as constexprs, divisibility by 16 of integers
and pointers) for each architecture, deduplicated, compiled with ``triton.compile`` and read
with ``cuobjdump`` (registers, STACK/LOCAL spills); its PTX must use the L2 hint ``evict_first``
exactly where the plan declares it (``KernelLaunch.evict_first``: loads, and stores where it names
a written tensor; for sm_80, where Triton drops it from pipelined loads, a load may lack it), which
the static report's reuse model takes on trust. Run WITHOUT TRITON_INTERPRET
(tests/test_compile.py runs it in a subprocess, once per Triton version).

Usage: python tests/compile_check.py [--jobs N] [--arch 80 --arch 90] [--set ci|targets|bf16|full] [--sass]
       [--hints exact|subset]

Sets: ``full`` every benchmark call (bf16, fp16, fp32; default and timm train/eval), every
coverage call and the gate family's calls (:func:`benchmarks.launched.gate_calls`: the SE gate,
the spatial gate); ``ci`` (the default, what CI runs with the venv's Triton) the bf16 benchmark
calls, fp16/fp32 at the last stage, one call of each other path and the bf16 gate calls
(:func:`benchmarks.launched.ci_calls`); ``bf16`` the bf16 benchmark calls; ``targets`` those of
the default preset, the performance targets' rows, the timm preset in training mode at two
stages (the end-to-end row's module), the SE gate's bf16 rows and the spatial gate at two stages
(what CI runs with the GPU machine's Triton 3.6). Each distinct
specialisation costs about a CPU-second per build, so the sets keep CI within its time budget;
benchmarks/NOTES.md records the last ``full`` run.
Prints one line per compiled specialisation and exits 1 if any fails to compile, spills or
uses L2 hints other than its plan declares.
``--sass`` also disassembles each build and prints its load widths, LDGSTS and BAR.SYNC counts
(about 0.8 CPU-seconds a build, more than the build itself when Triton's cache holds it, so CI
reads only the resource usage, which decides the verdict; ``python -m benchmarks.plan`` reads the
SASS of the launches it reports).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


# The end-to-end row's CBAM (timm's, training, channels_last) at its first and last stage: the
# GPU machine's Triton must also build the BatchNorm kernels (statistics, running update).
E2E_STAGES = ((256, 56, 56), (2048, 7, 7))


def _hints(launch) -> tuple[bool, bool]:
    """What the plan says of a launch's L2 hints (``KernelLaunch.evict_first``, which the static
    report's reuse model takes from it): whether it loads a full-size tensor with
    ``evict_first``, and whether it so stores one."""
    return bool(set(launch.evict_first) & set(launch.reads)), bool(set(launch.evict_first) & set(launch.writes))


def _specs_of(job):
    """(call id, [(arch, Spec, hints)]) for one call."""
    call, archs = job
    from benchmarks import launched

    cap = launched.capture(call, count_aten=False)
    return call.id, [(arch, launched.specialize(r, arch), _hints(r.launch)) for r in cap.records for arch in archs]


def _compile(job):
    arch, spec, sass, hints, hint_rule = job
    from benchmarks import launched

    name = f"{spec.describe()} sm_{arch}"
    try:
        c = launched.compile_spec(spec, arch, sass=sass)
        # the plan's evict_first declarations are what the PTX does: the static report's model,
        # made with the venv's Triton for sm_90, relies on them. Elsewhere a load may lack the
        # hint (a pipelined load is a cp.async, which Triton 3.6, and 3.9 for sm_80, emit
        # without it), never have it undeclared.
        exact = arch >= 90 and hint_rule == "exact"
        loads_ok = (c.evict_first_loads > 0) == hints[0] if exact else c.evict_first_loads == 0 or hints[0]
        hinted = loads_ok and (c.evict_first_stores > 0) == hints[1]
        ok = not c.spills and hinted
        verdict = "ok  " if ok else "SPILL" if c.spills else "HINT"
        line = (f"{verdict} {name}: REG {c.regs} STACK {c.stack} LOCAL {c.local} "
                f"occupancy {launched.occupancy(c, arch)}")
        if not hinted:
            line += (f" plan says evict_first loads {hints[0]}, stores {hints[1]}; PTX has "
                     f"{c.evict_first_loads} loads, {c.evict_first_stores} stores")
        if sass:
            widths = ",".join(f"{w}B x{n}" for w, n in sorted(c.ldg.items()))
            line += f" LDG {widths} LDGSTS {c.ldgsts} BAR.SYNC {c.bar_sync}"
        return ok, line
    except Exception as e:  # report every failure, not only the first
        msg = str(e).splitlines()[0] if str(e) else ""
        return False, f"FAIL {name}: {type(e).__name__}: {msg}"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arch", type=int, action="append")
    parser.add_argument("--set", dest="which", choices=("ci", "targets", "bf16", "full"), default="ci")
    parser.add_argument("--hints", choices=("exact", "subset"), default="exact",
                        help="exact: for sm_90 the PTX's evict_first loads are as planned (the venv's Triton); "
                             "subset: a load may lack its hint (Triton 3.6)")
    parser.add_argument("--sass", action="store_true", help="also read each build's SASS (load widths, LDGSTS, BAR.SYNC)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter does not compile)")
    import triton

    from benchmarks import launched

    print(f"compile_check: triton {triton.__version__} from {os.path.dirname(triton.__file__)}", flush=True)
    archs = tuple(args.arch or [80, 90])
    calls = {"bf16": lambda: launched.benchmark_calls(dtypes=("bf16",)), "ci": launched.ci_calls,
             "targets": lambda: [c for c in launched.benchmark_calls(dtypes=("bf16",)) if c.preset == "default"]
             + [c for c in launched.gate_calls(dtypes=("bf16",)) if c.preset == "se"
                or (c.preset == "spatial" and c.shape[2] in (56, 7))]
             + [launched.Call((32, *chw), "bf16", "cl", "timm", True, "fwd_bwd") for chw in E2E_STAGES],
             "full": lambda: launched.benchmark_calls() + launched.coverage_calls() + launched.gate_calls()}[args.which]()
    specs, kernels = {}, set()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for _call_id, found in pool.map(_specs_of, [(c, archs) for c in calls], chunksize=4):
            for arch, spec, hints in found:
                if specs.setdefault((arch, spec), hints) != hints:
                    print(f"FAIL compile_check: {spec.describe()}: two plans declare different L2 hints", flush=True)
                    return 1
                kernels.add(spec.kernel_name)
    print(f"compile_check: {len(calls)} calls planned, {len(specs)} distinct specialisations launched "
          f"({len(kernels)} kernels: {', '.join(sorted(kernels))})", flush=True)
    failures = 0
    jobs = [(arch, spec, args.sass, hints, args.hints) for (arch, spec), hints in specs.items()]
    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for ok, line in pool.map(_compile, jobs):
                print(line, flush=True)
                failures += not ok
    except BrokenProcessPool as e:  # a compiler crash (an LLVM abort) takes its worker down
        print(f"FAIL compile_check: a compiler process died: {e}", flush=True)
        return 1
    print(f"compile_check: {len(jobs) - failures} of {len(jobs)} kernel builds compiled without spills, "
          f"their L2 hints as planned")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
