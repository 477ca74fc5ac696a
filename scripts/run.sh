#!/usr/bin/env bash
# Set up the project's virtual environment (idempotent) and run the tests, the benchmarks or the linter.
#
#   bash scripts/run.sh test  [pytest args]   # tests/      (CPU: Triton interpreter; CUDA: compiled kernels)
#   bash scripts/run.sh bench [pytest args]   # benchmarks/ (CUDA: timings; CPU: small-shape correctness only)
#   bash scripts/run.sh timm  [pytest args]   # the checks against the real timm (the tests marked `timm`),
#                                             # where timm imports: there a skip fails (CBAM_FAST_REQUIRE_TIMM=1)
#   bash scripts/run.sh lint  [ruff args]     # ruff check . (rules: pyproject.toml [tool.ruff])
#   (on a GPU machine, benchmarks/gpu_check.sh OUTDIR runs the target benchmarks, the end-to-end row,
#    the GPU tests and compute-sanitizer in one call of at most ~6 minutes)
#
# CPU machine: installs the CPU wheel torch==2.13.0. CUDA machine: the venv sees the system's
# torch/triton (--system-site-packages) and installs only what is missing.
#
# timm on a CPU machine: timm imports torchvision, and no torchvision loads beside the CPU wheel
# torch 2.13.0. So the timm job has a venv of its own, .venv-timm (CBAM_FAST_TIMM_VENV), with the
# pair torch==2.14.1 + torchvision==0.29.1 (a CUDA build that runs on the CPU: ~5.5 GB, from this
# machine's local wheel index, about 2-3 minutes to install; cached per machine, below) and timm;
# there it runs only the tests that import timm, in the Triton interpreter like every CPU test run.
# CUDA machine: the main venv.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
shift || true
case "$job" in
  test|bench|timm|lint) ;;
  *) echo "usage: bash scripts/run.sh {test|bench|timm|lint} [args]" >&2; exit 2 ;;
esac

venv=${CBAM_FAST_VENV:-.venv}
timm_venv=${CBAM_FAST_TIMM_VENV:-.venv-timm}
python=${PYTHON:-python3}
timm_spec="timm>=1.0,<2"
ruff_spec="ruff>=0.16,<0.17"  # pinned: a newer ruff may add findings (pyproject.toml's lint extra says the same)

has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }
setuptools_ok() {  # >= 77: PEP 639 license metadata in pyproject.toml
  python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null
}
install_project() {
  python -c "import importlib.metadata as m; m.version('cbam_fast')" 2>/dev/null \
    || pip_install --no-deps --no-build-isolation -e .
}

enter_venv() {  # the main venv, created if missing
  if [ ! -x "$venv/bin/python" ]; then
    if has_cuda; then "$python" -m venv --system-site-packages "$venv"; else "$python" -m venv "$venv"; fi
  fi
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
}

setup_main() {
  if ! python -c "import torch" 2>/dev/null; then
    if has_cuda; then pip_install "torch>=2.4"; else pip_install "torch==2.13.0"; fi
  fi
  python -c "import triton" 2>/dev/null || pip_install "triton>=3.1"
  python -c "import pytest, pytest_benchmark, numpy" 2>/dev/null || pip_install "pytest>=8" "pytest-benchmark>=4" numpy
  setuptools_ok || pip_install "setuptools>=77"
  # matplotlib draws the benchmark plot (benchmarks/report.py; tests/test_bench_tools.py checks it).
  # Without it (e.g. a GPU machine with no network) only the plot is skipped, so a failed install is not fatal.
  python -c "import matplotlib" 2>/dev/null || pip_install --timeout 20 --retries 1 matplotlib \
    || echo "cbam_fast env: matplotlib could not be installed: benchmark plots will be skipped" >&2
  # Optional test extras, each test that needs one skips with its reason where it cannot be had:
  # onnx/onnxruntime/onnxscript (ONNX export test), hypothesis (fuzz), pytest-xdist (parallel run).
  python -c "import onnx, onnxruntime, onnxscript, hypothesis, xdist" 2>/dev/null \
    || pip_install --timeout 30 --retries 1 onnx onnxruntime onnxscript hypothesis pytest-xdist \
    || echo "cbam_fast env: optional test extras could not be installed" >&2
  # CPU machines: the GPU machine's Triton (3.6.0), installed beside the venv's own, so the compile
  # check (tests/test_compile.py) also builds every kernel with the compiler that runs them there.
  local device_triton=3.6.0
  if [ "$job" = test ] && ! has_cuda && [ ! -f "$venv/triton-$device_triton/triton/__init__.py" ]; then
    pip_install --no-deps --target "$venv/triton-$device_triton" "triton==$device_triton"
  fi
  install_project
}

# .venv-timm's third-party packages, built once per machine and then copied into each checkout as
# hard links (seconds, no extra disk): CI on a fresh clone then skips the 5.5 GB install where an
# earlier run left the cache. CBAM_FAST_TIMM_CACHE= (empty) turns it off; a cache that is missing,
# half built or on another filesystem falls back to installing into .venv-timm directly.
timm_cache=${CBAM_FAST_TIMM_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/cbam_fast}
timm_pkgs=("torch==2.14.1" "torchvision==0.29.1" "$timm_spec" "pytest>=8" pytest-xdist numpy "setuptools>=77")

install_timm_pkgs() {  # into the venv whose python is $1
  local start=$SECONDS
  # --no-compile: no .pyc for torch's thousands of modules up front (what the tests import compiles on use)
  "$1" -m pip install --disable-pip-version-check -q --no-compile "${timm_pkgs[@]}"
  echo "cbam_fast env: ${timm_pkgs[*]} installed in $(dirname "$(dirname "$1")") in $((SECONDS - start)) s"
}

seed_timm_venv() {  # .venv-timm as hard links to the machine's cached copy (built first if missing)
  [ -n "$timm_cache" ] || return 1
  local key base
  key="venv-timm-$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')-$(printf '%s\n' "${timm_pkgs[@]}" | md5sum | cut -c1-12)"
  base=$timm_cache/$key
  mkdir -p "$timm_cache" || return 1
  (
    flock 9
    if [ ! -f "$base/.complete" ]; then
      rm -rf "$base"
      "$python" -m venv "$base" && install_timm_pkgs "$base/bin/python" \
        && "$base/bin/python" -c "import torch, torchvision, timm" && touch "$base/.complete"
    fi
  ) 9>"$timm_cache/$key.lock" || return 1
  [ -f "$base/.complete" ] || return 1
  cp -al "$base" "$timm_venv" 2>/dev/null || { rm -rf "$timm_venv"; return 1; }
  rm -f "$timm_venv/.complete"
  echo "cbam_fast env: $timm_venv linked from $base"
}

setup_timm_cpu() {  # .venv-timm: torch 2.14.1 + torchvision 0.29.1 (both from local disk) and timm
  if [ ! -x "$timm_venv/bin/python" ]; then
    seed_timm_venv || "$python" -m venv "$timm_venv"
  fi
  # Not bin/activate: a venv seeded from the cache carries the cache's path in its scripts.
  VIRTUAL_ENV=$(cd "$timm_venv" && pwd)
  export VIRTUAL_ENV PATH=$VIRTUAL_ENV/bin:$PATH
  hash -r
  # by metadata, not import (importing torchvision pulls in torch._dynamo: seconds); the report below imports them
  python - <<'PY' 2>/dev/null || install_timm_pkgs "$timm_venv/bin/python"
import importlib.metadata as m
import sys
want = {"torch": "2.14.1", "torchvision": "0.29.1"}
sys.exit(any(m.version(d).split("+")[0] != v for d, v in want.items())
         or not all(m.version(d) for d in ("timm", "pytest", "pytest-xdist", "numpy")))
PY
  setuptools_ok || pip_install "setuptools>=77"
  install_project
}

workers=()
parallel() {  # the interpreter is single-threaded: one pytest-xdist worker per core
  if python -c "import xdist" 2>/dev/null; then workers=(-n "${CBAM_FAST_TEST_WORKERS:-2}"); fi
}
report_env() {
  python -c "import torch, triton; print(f'cbam_fast env: torch {torch.__version__}, triton {triton.__version__}, cuda {torch.cuda.is_available()}')"
}

case "$job" in
  lint)
    enter_venv
    python -c "import ruff" 2>/dev/null || pip_install "$ruff_spec"
    exec python -m ruff check "$@" . ;;
  test|bench)
    enter_venv
    setup_main
    report_env
    if [ "$job" = test ]; then parallel; exec python -m pytest tests "${workers[@]}" "$@"; fi
    exec python -m pytest benchmarks "$@" ;;
  timm)
    if has_cuda; then
      enter_venv
      setup_main
      python -c "import timm" 2>/dev/null || pip_install "$timm_spec"
    else
      setup_timm_cpu
    fi
    python -c "import torch, torchvision, timm, triton; print(f'cbam_fast env: torch {torch.__version__}, torchvision \
{torchvision.__version__}, timm {timm.__version__}, triton {triton.__version__}, cuda {torch.cuda.is_available()}')"
    # The test files that import timm; tests/timm_gate.py marks each such test `timm`, and with
    # CBAM_FAST_REQUIRE_TIMM=1 a timm that does not import, or a marked test that skips, fails.
    mapfile -t files < <(grep -lE "importorskip\(\s*[\"']timm|^\s*(import|from) timm\b" tests/test_*.py)
    [ "${#files[@]}" -gt 0 ] || { echo "cbam_fast timm: no test file imports timm" >&2; exit 1; }
    parallel
    CBAM_FAST_REQUIRE_TIMM=1 exec python -m pytest "${files[@]}" -m timm "${workers[@]}" "$@" ;;
esac
