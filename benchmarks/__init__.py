"""cbam_fast's benchmark suite.

Modules (each one job):

* :mod:`benchmarks.cases`   what is measured: cases, dtypes, formats, modes, implementations, the
  bytes model, the selection profiles and their priority order, the performance targets;
* :mod:`benchmarks.measure` how one thing is timed on a GPU: the CUDA-event clock, the L2 flush,
  the copy bandwidth, launch counts, peak memory;
* :mod:`benchmarks.bench`   one configuration end to end (inputs, implementation, forward check,
  warm-up, timing, row), the CPU correctness mode, and the session that collects rows;
* :mod:`benchmarks.results` the results file: its exact schema, the stamp, writing and reading;
* :mod:`benchmarks.report`  results -> ``BENCHMARKS.md``, a PNG plot, the targets summary, the README block;
* :mod:`benchmarks.run`     the same measurements without pytest (``python -m benchmarks.run``);
* :mod:`benchmarks.sanitize` the small workload run under compute-sanitizer by ``gpu_check.sh``;
* :mod:`benchmarks.predict` the static model's PREDICTIONS for the cbam_fast rows, a side file the
  report puts beside the measurements (from :mod:`benchmarks.plan`, which needs no GPU);
* :mod:`benchmarks.e2e`     the end-to-end row: a training step of timm's ResNet-50 with CBAM,
  eager against ``cbam_fast.convert``, and the CBAM share of the step.

``pytest benchmarks/`` is the suite (``test_cbam_bench.py``, ``conftest.py``); ``gpu_check.sh`` runs
the target benchmarks, the end-to-end row, the GPU tests and compute-sanitizer on a GPU machine in
one call of at most ~6 minutes.

This package must not import cbam_fast at import time: the CPU mode sets ``TRITON_INTERPRET``
(in ``conftest.py``) before cbam_fast loads its kernels.
"""
