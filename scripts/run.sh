#!/usr/bin/env bash
# Set up the project's virtual environment (idempotent) and run the tests or the benchmarks.
#
#   bash scripts/run.sh test  [pytest args]   # tests/      (CPU: Triton interpreter; CUDA: compiled kernels)
#   bash scripts/run.sh bench [pytest args]   # benchmarks/ (CUDA: timings; CPU: small-shape correctness only)
#   (on a GPU machine, benchmarks/gpu_check.sh OUTDIR runs the target benchmarks, the end-to-end row,
#    the GPU tests and compute-sanitizer in one call of at most ~6 minutes)
#
# CPU machine: installs the CPU wheel torch==2.13.0. CUDA machine: the venv sees the system's
# torch/triton (--system-site-packages) and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
shift || true
case "$job" in
  test) target=tests ;;
  bench) target=benchmarks ;;
  *) echo "usage: bash scripts/run.sh {test|bench} [pytest args]" >&2; exit 2 ;;
esac

venv=${CBAM_FAST_VENV:-.venv}
python=${PYTHON:-python3}
has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ ! -x "$venv/bin/python" ]; then
  if has_cuda; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }

if ! python -c "import torch" 2>/dev/null; then
  if has_cuda; then pip_install "torch>=2.4"; else pip_install "torch==2.13.0"; fi
fi
python -c "import triton" 2>/dev/null || pip_install "triton>=3.1"
python -c "import pytest, pytest_benchmark, numpy" 2>/dev/null || pip_install "pytest>=8" "pytest-benchmark>=4" numpy
python -c "import setuptools" 2>/dev/null || pip_install "setuptools>=64"
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
device_triton=3.6.0
if [ "$job" = test ] && ! has_cuda && [ ! -f "$venv/triton-$device_triton/triton/__init__.py" ]; then
  pip_install --no-deps --target "$venv/triton-$device_triton" "triton==$device_triton"
fi
python -c "import importlib.metadata as m; m.version('cbam_fast')" 2>/dev/null \
  || pip_install --no-deps --no-build-isolation -e .

python -c "import torch, triton; print(f'cbam_fast env: torch {torch.__version__}, triton {triton.__version__}, cuda {torch.cuda.is_available()}')"
parallel=()
if [ "$job" = test ] && python -c "import xdist" 2>/dev/null; then
  parallel=(-n "${CBAM_FAST_TEST_WORKERS:-2}")  # the interpreter is single-threaded: one worker per core
fi
exec python -m pytest "$target" "${parallel[@]}" "$@"
