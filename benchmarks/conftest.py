"""Benchmarks: timings on CUDA only; without CUDA, a small-shape correctness mode through the
Triton interpreter that never reports interpreter timings as performance."""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

NO_GPU_NOTE = (
    "cbam_fast benchmarks: no CUDA device here, so this run checked the benchmarked paths for "
    "correctness on small shapes through the Triton interpreter. Timings need a GPU: none were taken."
)


def pytest_report_header(config):
    if HAS_CUDA:
        import triton

        return (f"cbam_fast benchmarks on {torch.cuda.get_device_name()} "
                f"(torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda})")
    return NO_GPU_NOTE


def pytest_terminal_summary(terminalreporter):
    if not HAS_CUDA:
        terminalreporter.write_line(NO_GPU_NOTE, yellow=True)
