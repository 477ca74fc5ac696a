"""Compile every kernel specialisation for real GPUs (sm_80, sm_90) on any machine, and report
register use and spills from cuobjdump. Run WITHOUT TRITON_INTERPRET (tests/test_compile.py
does so in a subprocess).

Usage: python tests/compile_check.py [--jobs N] [--arch 80 --arch 90]
Prints one line per compiled kernel and exits 1 if any fails to compile or spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

INT_ARGS = {"C", "P", "H", "W", "N", "HID", "p_per_split", "n_splits"}
IO_PTRS = {"X", "Y", "DY", "DX"}
IDX_PTRS = {"PIDX", "SIDX", "IDXP"}
TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def _signature(kernel, constexprs, io_dtype, acc):
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INT_ARGS or name.startswith("s_"):
            sig[name] = "i32"
        elif name in IO_PTRS:
            sig[name] = "*" + TRITON_TYPES[io_dtype]
        elif name in IDX_PTRS:
            sig[name] = "*i32"
        else:
            sig[name] = "*" + TRITON_TYPES[acc]
    return sig


def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_one(job):
    index, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cbam_fast.kernels.launch import acc_dtype, specializations

    kernel, constexprs, dtype, num_warps = specializations()[index]
    io = str(dtype).removeprefix("torch.")
    acc = str(acc_dtype(dtype)).removeprefix("torch.")
    name = f"{kernel.fn.__name__}[{io}, {', '.join(f'{k}={v}' for k, v in constexprs.items())}, warps={num_warps}] sm_{arch}"
    try:
        src = ASTSource(fn=kernel, signature=_signature(kernel, constexprs, io, acc), constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
        reg = int(re.search(r"REG:(\d+)", usage).group(1))
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
        ok = stack == 0 and local == 0
        return ok, f"{'ok  ' if ok else 'SPILL'} {name}: REG {reg} STACK {stack} LOCAL {local}"
    except Exception as e:  # report every failure, not only the first
        return False, f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arch", type=int, action="append")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter does not compile)")
    from cbam_fast.kernels.launch import specializations

    import triton

    print(f"compile_check: triton {triton.__version__} from {os.path.dirname(triton.__file__)}", flush=True)
    archs = args.arch or [80, 90]
    jobs = [(i, arch) for i in range(len(specializations())) for arch in archs]
    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for ok, line in pool.map(compile_one, jobs):
            print(line, flush=True)
            failures += not ok
    print(f"compile_check: {len(jobs) - failures} of {len(jobs)} kernel builds compiled without spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
