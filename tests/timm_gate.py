"""The checks against the real timm: found, marked, and never skipped where timm must import.

Loaded by tests/conftest.py (a plain pytest plugin: no torch import here).

* Every test that imports timm (``pytest.importorskip("timm...")``, ``import timm`` or
  ``from timm ...`` in its function, or at the top of its module) gets the ``timm`` marker, so
  ``-m timm`` selects exactly the checks against the real timm.
* On the CPU machines timm does not import beside the CPU torch wheel (it needs torchvision), and
  those checks skip there. ``bash scripts/run.sh timm`` runs them in a second environment where it
  does import, with ``CBAM_FAST_REQUIRE_TIMM=1``: then ``pytest.importorskip`` of a timm module is
  a plain import (a missing or broken timm is an error, not a skip), and a timm-marked test that
  skips for any reason fails, so that run cannot go green without running them.
"""

import importlib
import inspect
import os
import re

import pytest

REQUIRE_ENV = "CBAM_FAST_REQUIRE_TIMM"
_IN_FUNCTION = re.compile(r"""importorskip\(\s*["']timm\b|^\s*(?:import|from)\s+timm\b""", re.M)
_AT_MODULE_TOP = re.compile(r"""^(?:import|from)\s+timm\b|^\w+\s*=\s*pytest\.importorskip\(\s*["']timm\b""", re.M)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError):
        return ""


def uses_timm(item) -> bool:
    if item.get_closest_marker("timm") is not None:
        return True
    function = getattr(item, "function", None)
    module = getattr(item, "module", None)
    return bool(_IN_FUNCTION.search(_source(function)) or _AT_MODULE_TOP.search(_source(module)))


def _is_timm(modname: str) -> bool:
    return modname == "timm" or modname.startswith("timm.")


_original_importorskip = pytest.importorskip


def _importorskip_timm_required(modname, *args, **kwargs):
    if _is_timm(modname):
        return importlib.import_module(modname)  # CBAM_FAST_REQUIRE_TIMM=1: a plain import
    return _original_importorskip(modname, *args, **kwargs)


def pytest_configure(config):
    config.addinivalue_line("markers", "timm: a check against the real timm (set on every test that imports timm)")
    if required():
        pytest.importorskip = _importorskip_timm_required


def pytest_unconfigure(config):
    if pytest.importorskip is _importorskip_timm_required:
        pytest.importorskip = _original_importorskip


def pytest_report_header(config):
    if required():
        return f"{REQUIRE_ENV}=1: the checks against the real timm must run here (a skip fails)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if uses_timm(item) and item.get_closest_marker("timm") is None:
            item.add_marker(pytest.mark.timm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (required() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("timm") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"{REQUIRE_ENV}=1: this check against the real timm may not skip here, "
                           f"but it skipped: {reason}")
    return report
