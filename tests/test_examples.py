"""The README's attention-map example runs and writes a PNG."""

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "attention_overlay.py"


def test_attention_overlay_example_writes_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the example draws with matplotlib (installed by scripts/run.sh)")
    monkeypatch.setenv("CBAM_FAST_BACKEND", "auto")
    main = runpy.run_path(str(EXAMPLE))["main"]
    out = tmp_path / "attention.png"
    assert main(str(out)) == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
