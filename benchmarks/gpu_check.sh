#!/usr/bin/env bash
# One call on a GPU machine: the test suite on CUDA, compute-sanitizer on a few shapes (forward and
# backward), and the benchmark suite, with every result and log written under OUTDIR.
#
#   bash benchmarks/gpu_check.sh [options] OUTDIR
#
#   --budget-s S        wall-time budget of the whole script, seconds (default 520: with the last
#                       configuration's overrun and the report, the script ends within ~9.5 minutes)
#   --profile P         benchmark profile: quick (default) or full (see benchmarks/cases.py)
#   --skip-done F.json  benchmark only what F.json lacks, and report F.json's rows merged with the new
#                       ones (repeatable): for a second call that completes a first one
#   --bench-only        benchmarks only (no tests, no sanitizer)
#   --no-bench          tests and sanitizer only
#   --full              every benchmark configuration, no time budget, sanitizer tools memcheck,
#                       racecheck and synccheck (an hour or more: not for a 10-minute call)
#
# Environment: PYTHON (the interpreter; default: the first of .venv/bin/python, python3, python that
# imports torch with CUDA), CBAM_FAST_GIT_SHA (the commit to stamp when the tree has no .git: pass
# the sha of the commit the tree was copied from), SANITIZER_TOOLS (overrides the tool list).
# Installs nothing (the GPU machine may have no network): a missing module is reported, and the
# steps that need it are skipped or fall back (no pytest-benchmark: the suite times with its own
# loop; no pytest: python -m benchmarks.run; no matplotlib: no PNG, redraw later with
# python -m benchmarks.report).
#
# OUTDIR gets: summary.txt (each step's status and seconds, then the targets), env.txt, tests.log,
# tests.xml, sanitizer-<tool>.log, bench.log, bench/<date>-<device>.json with its .png,
# bench/BENCHMARKS.md and bench/pytest-benchmark.json. Exit status 0 when every step run passed.
#
# Time on an H100 (estimates; summary.txt records the real ones): environment ~15 s; tests 2-4 min
# (capped so the later steps keep their share); memcheck ~1 min (capped); benchmarks: the rest, at
# least ~2.5 min. Benchmark configurations run in priority order (benchmarks/cases.py:tier): the
# targets' bf16 rows with torch.compile's default mode (~4 min: 16 compiles of ~5-20 s), then
# max-autotune on the targets' forward rows (~30 s or more each), every other cbam_fast/eager row
# (~1 s each), max-autotune on the targets' forward+backward rows (~1 min or more each). Each is
# admitted only if its estimated cost still fits, and written to the results file at once. The
# quick profile does not fit in one call: summary.txt lists what was left out, and a second call
# adds it and reports both runs merged (OUT2/bench/BENCHMARKS.md):
#   CBAM_FAST_GIT_SHA=<sha> bash benchmarks/gpu_check.sh OUT1
#   CBAM_FAST_GIT_SHA=<sha> bash benchmarks/gpu_check.sh --bench-only --skip-done OUT1/bench/<date>-<device>.json OUT2
# (When the two calls run on separate machines, the first call's results file must travel with the
# tree: copy it into benchmarks/results/ and pass that path to --skip-done.)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUDGET=520
PROFILE=quick
FULL=0
RUN_TESTS=1
RUN_BENCH=1
SKIP_DONE=()
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-s) BUDGET=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --skip-done) SKIP_DONE+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
    --bench-only) RUN_TESTS=0; shift ;;
    --no-bench) RUN_BENCH=0; shift ;;
    --full) FULL=1; PROFILE=full; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash benchmarks/gpu_check.sh [options] OUTDIR (see --help)" >&2; exit 2; }
mkdir -p "$OUT/bench"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
: > "$OUT/summary.txt"

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
note() { echo "gpu_check: $*" | tee -a "$OUT/summary.txt"; }
STATUS=0
record() {  # step, rc, seconds, log
  local what
  case "$2" in
    0) what=passed ;;
    124|137) what="TIMED OUT"; STATUS=1 ;;
    5) what="nothing to run" ;;  # pytest: every configuration deselected (already measured)
    skip) what=skipped ;;
    *) what="FAILED (exit $2)"; STATUS=1 ;;
  esac
  printf '%-26s %-18s %5ss  %s\n' "$1" "$what" "$3" "$4" | tee -a "$OUT/summary.txt"
}

# ---------------------------------------------------------------- environment
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET CBAM_FAST_BACKEND
cuda_python() { "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && cuda_python "$cand"; then PY=$(command -v "$cand"); break; fi
  done
fi
if [ -z "$PY" ] || ! cuda_python "$PY"; then
  note "no Python here imports torch with a CUDA device (tried \$PYTHON, .venv/bin/python, python3, python): nothing run"
  exit 2
fi
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi -L 2>&1 || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true
  echo "python: $PY ($("$PY" -V 2>&1))"
  "$PY" -c "import torch, triton; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, device {torch.cuda.get_device_name()}')" 2>&1
  for m in torch triton pytest pytest_benchmark numpy matplotlib; do
    if have "$m"; then echo "module $m: $("$PY" -c "import $m; print(getattr($m, '__version__', 'present'))" 2>&1)"
    else echo "module $m: MISSING"; fi
  done
  echo "git sha: $("$PY" -c 'from benchmarks.results import git_sha; print(git_sha())' 2>&1)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
for m in pytest pytest_benchmark matplotlib; do have "$m" || note "module $m is missing (no network to install it): see the steps below"; done
SAN=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
  [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
done
if [ -n "${SANITIZER_TOOLS:-}" ]; then TOOLS=$SANITIZER_TOOLS
elif [ "$FULL" = 1 ]; then TOOLS="memcheck racecheck synccheck"
else TOOLS="memcheck"; fi
[ "$FULL" = 1 ] && BUDGET=100000
N_TOOLS=$(echo "$TOOLS" | wc -w)
record environment 0 "$(elapsed)" "$OUT/env.txt"

# ---------------------------------------------------------------- tests on CUDA
BENCH_RESERVE=$(( RUN_BENCH ? 150 : 0 ))
SAN_RESERVE=$(( RUN_TESTS && ${#SAN} ? 75 * N_TOOLS : 0 ))
if [ "$RUN_TESTS" = 1 ]; then
  if have pytest; then
    cap=$(min 300 $(( $(left) - BENCH_RESERVE - SAN_RESERVE - 20 )))
    [ "$cap" -lt 60 ] && cap=60
    t=$(date +%s)
    note "tests: python -m pytest tests (cap ${cap}s)"
    timeout -k 15 "$cap" "$PY" -m pytest tests -q -ra -p no:cacheprovider --junitxml="$OUT/tests.xml" \
      2>&1 | tee "$OUT/tests.log"
    record "tests (CUDA)" "${PIPESTATUS[0]}" $(( $(date +%s) - t )) "$OUT/tests.log"
  else
    record "tests (CUDA)" skip 0 "pytest is not installed"
  fi

  # ------------------------------------------------------------ compute-sanitizer
  if [ -z "$SAN" ]; then
    record "compute-sanitizer" skip 0 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
  else
    for tool in $TOOLS; do
      cap=$(min $(( 150 * (FULL + 1) )) $(( $(left) - BENCH_RESERVE - 20 )))
      [ "$cap" -lt 45 ] && cap=45
      t=$(date +%s)
      note "compute-sanitizer --tool $tool (cap ${cap}s)"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$cap" "$SAN" --tool "$tool" --error-exitcode 99 \
        --print-limit 100 "$PY" -m benchmarks.sanitize 2>&1 | tee "$OUT/sanitizer-$tool.log"
      record "sanitizer $tool" "${PIPESTATUS[0]}" $(( $(date +%s) - t )) "$OUT/sanitizer-$tool.log"
    done
  fi
fi

# ---------------------------------------------------------------- benchmarks
if [ "$RUN_BENCH" = 1 ]; then
  budget=$(( $(left) - 30 ))
  [ "$budget" -lt 60 ] && budget=60
  hard=$(( budget + 45 ))  # the soft budget admits a configuration only if it should fit; this stops one that does not
  skip_args=()
  for f in ${SKIP_DONE[@]+"${SKIP_DONE[@]}"}; do skip_args+=(--bench-skip-done "$f"); done
  t=$(date +%s)
  if have pytest; then
    bench_args=()
    have pytest_benchmark && bench_args=(--benchmark-json="$OUT/bench/pytest-benchmark.json" \
      --benchmark-columns "median,min,max,iqr,rounds" --benchmark-sort name)
    have pytest_benchmark || note "pytest-benchmark missing: pytest benchmarks/ times with its own loop (same clock and flush)"
    note "benchmarks: pytest benchmarks --bench-profile $PROFILE (budget ${budget}s)"
    timeout -k 15 "$hard" "$PY" -m pytest benchmarks -q -s -rs -p no:cacheprovider --bench-profile "$PROFILE" \
      --bench-budget-s "$budget" --bench-out "$OUT/bench" ${skip_args[@]+"${skip_args[@]}"} ${bench_args[@]+"${bench_args[@]}"} \
      2>&1 | tee "$OUT/bench.log"
    rc=${PIPESTATUS[0]}
  else
    run_skip=()
    [ ${#SKIP_DONE[@]} -gt 0 ] && run_skip=(--skip-done "${SKIP_DONE[@]}")
    note "benchmarks: pytest missing, python -m benchmarks.run --profile $PROFILE (budget ${budget}s)"
    timeout -k 15 "$hard" "$PY" -m benchmarks.run --profile "$PROFILE" --budget-s "$budget" --out "$OUT/bench" \
      ${run_skip[@]+"${run_skip[@]}"} 2>&1 | tee "$OUT/bench.log"
    rc=${PIPESTATUS[0]}
  fi
  record benchmarks "$rc" $(( $(date +%s) - t )) "$OUT/bench.log"

  # The report again, from the files (the run may have been stopped before its own summary),
  # merged with the --skip-done files: the targets go into summary.txt.
  shopt -s nullglob
  files=(${SKIP_DONE[@]+"${SKIP_DONE[@]}"} "$OUT"/bench/*.json)
  shopt -u nullglob
  new=()
  for f in ${files[@]+"${files[@]}"}; do [ "$(basename "$f")" = pytest-benchmark.json ] || new+=("$f"); done
  if [ ${#new[@]} -gt ${#SKIP_DONE[@]} ]; then
    t=$(date +%s)
    last=${new[$(( ${#new[@]} - 1 ))]}
    "$PY" -m benchmarks.report "${new[@]}" --md "$OUT/bench/BENCHMARKS.md" --png "${last%.json}.png" \
      2>&1 | tee -a "$OUT/summary.txt"
    record report "${PIPESTATUS[0]}" $(( $(date +%s) - t )) "$OUT/bench/BENCHMARKS.md"
  else
    record report skip 0 "no results file was written"
  fi
fi

note "done in $(elapsed)s; status $STATUS; files in $OUT"
exit $STATUS
