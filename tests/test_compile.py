"""Every kernel specialisation cbam_fast launches compiles for sm_80 and sm_90 without spills.

Runs tests/compile_check.py in a fresh process without TRITON_INTERPRET (the interpreter does not
compile): the benchmark and coverage calls are planned and dry-run, each recorded launch is
specialised by Triton's own binder from its real arguments, and each distinct specialisation is
built with triton.compile(GPUTarget("cuda", cc, 32)) and checked with cuobjdump's STACK/LOCAL
counts. Needs no GPU.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cbam_fast.kernels import gate_launch, launch


# The venv's own Triton, and on CPU machines also the GPU machine's (scripts/run.sh installs it
# beside the venv as triton-<version>/): both must build every kernel without spills (seen:
# triton 3.6 spilled a kernel that 3.9 did not).
TRITONS = {"venv-triton": None}
TRITONS.update({d.name: d for d in sorted(Path(sys.prefix).glob("triton-*")) if (d / "triton" / "__init__.py").is_file()})


@pytest.mark.parametrize("triton_dir", TRITONS.values(), ids=list(TRITONS))
def test_all_kernels_compile_for_sm80_and_sm90_without_spills(triton_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(triton_dir), *filter(None, [env.get("PYTHONPATH")])])
    script = Path(__file__).with_name("compile_check.py")
    # the venv's Triton builds the CI set (every path); the GPU machine's 3.6 the target rows
    # (what a GPU session measures first); `compile_check.py --set full` builds every dtype and preset.
    # The L2 hints: exact for sm_90 with the venv's Triton (the static report's model uses them);
    # 3.6 emits pipelined loads (cp.async) without them
    which = "ci" if triton_dir is None else "targets"
    out = subprocess.run(
        [sys.executable, str(script), "--arch", "80", "--arch", "90", "--set", which,
         "--hints", "exact" if triton_dir is None else "subset"],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    report = out.stdout + out.stderr
    if triton_dir is not None:
        assert f"compile_check: triton {triton_dir.name.removeprefix('triton-')}" in out.stdout, report[-5000:]
    assert out.returncode == 0, report[-5000:]
    planned = re.search(r"compile_check: (\d+) calls planned, (\d+) distinct specialisations launched \(\d+ kernels: ([^)]*)\)",
                        out.stdout)
    assert planned, report[-5000:]
    n_specs = int(planned.group(2))
    assert (f"compile_check: {n_specs} of {n_specs} kernel builds compiled without spills, their L2 hints as planned"
            in out.stdout), report[-5000:]
    # every kernel the launchers can launch was among those compiled
    launched = set(planned.group(3).split(", "))
    known = {name for mod in (launch, gate_launch) for name in dir(mod) if name.endswith("_kernel")}
    assert launched == known, f"kernels never planned by the compile check's calls: {sorted(known - launched)}"
