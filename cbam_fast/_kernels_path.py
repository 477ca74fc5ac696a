"""Make ``cbam_fast.kernels`` importable from a source checkout.

An installed cbam_fast (wheel or editable) has ``cbam_fast.kernels``: pyproject maps the
repository's top-level ``kernels/`` folder there. When Python instead finds the ``cbam_fast/``
folder of a checkout directly (the checkout on ``sys.path``), that mapping is not consulted, so
the same folder is loaded under the same name here. It is never imported as top-level ``kernels``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def ensure_kernels_importable() -> None:
    name = "cbam_fast.kernels"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "kernels"
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cbam_fast.kernels not found (looked in {folder}); reinstall cbam_fast")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
