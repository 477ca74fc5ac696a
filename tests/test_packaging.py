"""The built wheel: its layout (the kernels ship as cbam_fast.kernels, never as a top-level
'kernels' package), its dependencies (what a plain ``pip install .`` brings) and its license."""

import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from this checkout, as pip builds it for ``pip install .`` (with the
    environment's setuptools: pyproject.toml's build-system floor must hold there too)."""
    out_dir = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out_dir), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = out_dir.glob("cbam_fast-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_wheel_layout(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names}
    assert "kernels" not in tops, sorted(tops)
    for f in ("cbam_fast/__init__.py", "cbam_fast/kernels/__init__.py", "cbam_fast/kernels/launch.py",
              "cbam_fast/kernels/channel.py", "cbam_fast/kernels/spatial.py", "cbam_fast/reference.py"):
        assert f in names, f


def test_plain_install_brings_what_the_interpreter_route_needs(wheel):
    """The README's CPU route to the kernels (CBAM_FAST_BACKEND=triton, TRITON_INTERPRET=1) runs
    in Triton's interpreter, which imports numpy: a plain ``pip install .`` must bring it, so numpy
    is a requirement of the package itself, not of an extra."""
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    unconditional = {re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in requires if ";" not in r}
    assert {"torch", "triton", "numpy"} <= unconditional, requires


def test_wheel_carries_the_license(wheel):
    """PEP 639: the license as an SPDX expression (not the deprecated License field or classifier)
    and the LICENSE file inside the wheel, the same text as the repository's."""
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None, "the deprecated License field is set"
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    (licence,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(licence).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the cbam_fast authors" in text


def test_build_system_floor_supports_the_license_metadata():
    """setuptools reads an SPDX ``license`` string and ``license-files`` from 77 on; older ones
    reject the table-less form, so the build requirement says so."""
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "MIT"$', text, re.M) and re.search(r'^license-files = \["LICENSE"\]$', text, re.M)
    (requires,) = re.findall(r"^requires = (.*)$", text, re.M)  # [build-system]
    assert '"setuptools>=77"' in requires, requires
