"""Every kernel specialisation the launchers use compiles for sm_80 and sm_90 without spills.

Runs tests/compile_check.py in a fresh process without TRITON_INTERPRET (the interpreter does not
compile): triton.compile with GPUTarget("cuda", cc, 32) and cuobjdump's STACK/LOCAL counts.
Needs no GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

from cbam_fast.kernels.launch import specializations


def test_all_kernels_compile_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_check.py")
    out = subprocess.run(
        [sys.executable, str(script), "--arch", "80", "--arch", "90"],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    report = out.stdout + out.stderr
    expected = 2 * len(specializations())
    assert f"compile_check: {expected} of {expected} kernel builds compiled without spills" in out.stdout, report[-5000:]
    assert out.returncode == 0, report[-5000:]
