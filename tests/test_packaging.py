"""The wheel ships the kernels as cbam_fast.kernels, never as a top-level 'kernels' package."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_layout(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = tmp_path.glob("cbam_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "kernels" not in tops, sorted(tops)
    for f in ("cbam_fast/__init__.py", "cbam_fast/kernels/__init__.py", "cbam_fast/kernels/launch.py",
              "cbam_fast/kernels/channel.py", "cbam_fast/kernels/spatial.py", "cbam_fast/reference.py"):
        assert f in names, f
