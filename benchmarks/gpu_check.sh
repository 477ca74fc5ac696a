#!/usr/bin/env bash
# One call on a GPU machine, sized for the device budget (15 minutes of device time a session, a
# machine start included; 10 minutes a command): benchmarks of the targets, an end-to-end
# training step, the tests only a GPU can run and compute-sanitizer, every result and log under OUTDIR.
#
#   bash benchmarks/gpu_check.sh [options] OUTDIR
#
# Default run: a 360 s budget, so at most ~6 minutes of wall time (every part runs under a
# timeout). Parts, in order, each with its share of the budget: a part gets what is left of the
# budget less the shares of the parts after it (so at least its share, more when an earlier part
# used less or was left out) and is stopped there, so a slow part cannot eat the rest:
#   environment       one python call                                                         ~10 s
#   predictions       in the background, on the CPU, from the start: the static model's
#                     PREDICTIONS for the cbam_fast rows (python -m benchmarks.predict)
#                     -> OUTDIR/predicted.json; waited for before the report   (no wall time of its own)
#   benchmarks        profile "targets": the bf16 ResNet-50 CBAM stages, batch 32 forward and
#                     forward+backward for cbam_fast, eager and torch.compile (default mode),
#                     batch 1 forward for cbam_fast and eager; cbam_fast and eager rows first,
#                     then the torch.compile rows as far as the time goes; per-kernel GPU times
#                     of one profiled call per row                                  share 170 s
#   end to end        timm ResNet-50 with CBAM in every block, a bf16 training step at batch
#                     32: eager, cbam_fast.convert, CBAM removed (its share of the step);
#                     torch.compile of each only if it fits (python -m benchmarks.e2e)  share 70 s
#   tests (GPU)       the part of tests/ only a GPU can run: the compiled kernels against the
#                     reference and the CUDA-only tests (forward, backward, integration,
#                     backend, the benchmark tools' GPU paths, drop-in with the real timm,
#                     hardening; not the slow 2^31-element test), with pytest-xdist if
#                     present; a first run is likely cut at its share: summary.txt counts
#                     what passed and failed so far                                 share 55 s
#   compute-sanitizer memcheck, forward and backward on the first 5 sanitizer shapes    share 40 s
#   report            OUTDIR/bench/BENCHMARKS.md with the predictions beside the measured
#                     rows and the end-to-end row; the targets into summary.txt    reserve 15 s
# summary.txt says what ran, what was skipped or cut for time, and the seconds each part used
# of what it was given.
#
# Modes (or GPU_CHECK_MODE=default|long|full):
#   --long              ~9.5 minutes (540 s): profile quick (every cbam_fast/eager row, max-autotune
#                       on the targets), larger shares, the slow GPU test, every sanitizer shape
#   --full              everything, no caps: profile full, tests/ whole, memcheck, racecheck and
#                       synccheck, every end-to-end variant (an hour or more: not for one call)
# Options:
#   --budget-s S        the whole run's budget in seconds; the parts' shares scale with it
#   --cap PART=S        one part's share, and its maximum, in seconds (PART: bench, e2e, tests, sanitizer)
#   --skip PART         leave a part out (bench, predict, e2e, tests, sanitizer); repeatable
#   --profile P         benchmark profile: targets (default), quick (--long) or full
#   --skip-done F.json  benchmark only what F.json lacks, and report F.json's rows merged with the new
#                       ones (repeatable): for a later call that completes an earlier one
#   --bench-only        benchmarks, predictions and report only
#   --no-bench          tests and sanitizer only
#   --archive FILE      at the end, write OUTDIR as one .tar.gz (for a remote runner that brings back
#                       only a few files: e.g. --archive "$OUT/gpu_check.tgz" /tmp/gc)
#
# Environment: PYTHON (the interpreter; default: the first of .venv/bin/python, python3, python that
# imports torch with CUDA), CBAM_FAST_GIT_SHA (the commit to stamp when the tree has no .git: pass
# the sha of the commit the tree was copied from), SANITIZER_TOOLS (overrides the tool list),
# TEST_WORKERS (pytest-xdist workers for the tests, default 8; 0: serial).
# Installs nothing (the GPU machine may have no network): a missing module is reported, and the
# parts that need it are skipped or fall back (no pytest-benchmark: the suite times with its own
# loop; no pytest: python -m benchmarks.run; no matplotlib: no PNG; no timm: the end-to-end row is
# skipped, which is never a pass).
#
# OUTDIR gets: summary.txt, env.txt, predict.log, predicted.json, bench.log, bench/<date>-<device>.json
# with its .png and .kernels.json (per-kernel GPU times), bench/BENCHMARKS.md,
# bench/pytest-benchmark.json, e2e.log, e2e.json, tests.log, tests.xml, sanitizer-<tool>.log.
# Exit status: 0 when every part ran to its end and passed; 1 when something failed; 3 when nothing
# failed but something was skipped or cut for time (the default run may leave torch.compile rows
# for a later call, whose --bench-only gives the benchmarks the whole budget:
#   bash benchmarks/gpu_check.sh --bench-only --budget-s 540 --skip-done OUT1/bench/<date>-<device>.json OUT2
# When the two calls run on separate machines, the first call's results file must travel with the
# tree: copy it into benchmarks/results/ and pass that path to --skip-done.)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${GPU_CHECK_MODE:-default}
BUDGET=""
PROFILE=""
SKIP_DONE=()
SKIP_PARTS=" "
CAP_OVERRIDES=()
ARCHIVE=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --long) MODE=long; shift ;;
    --full) MODE=full; shift ;;
    --budget-s) BUDGET=$2; shift 2 ;;
    --cap) CAP_OVERRIDES+=("$2"); shift 2 ;;
    --skip) SKIP_PARTS+="$2 "; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --skip-done) SKIP_DONE+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
    --bench-only) SKIP_PARTS+="e2e tests sanitizer "; shift ;;
    --no-bench) SKIP_PARTS+="bench predict e2e "; shift ;;
    --archive) ARCHIVE=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash benchmarks/gpu_check.sh [options] OUTDIR (see --help)" >&2; exit 2; }

# ---------------------------------------------------------------- the plan of the run
# CAP: each part's share of the budget in seconds (its wall time, its startup included). A part
# gets what is left of the budget less the shares of the enabled parts after it and the report's
# reserve: at least its share, more when earlier parts used less or were skipped; an explicit
# --cap is also its maximum. A part offered less than MIN is skipped for time.
declare -A CAP MIN XCAP
case "$MODE" in
  default) TOTAL=360; CAP=([bench]=170 [e2e]=70 [tests]=55 [sanitizer]=40); PROFILE=${PROFILE:-targets}
           TESTS_MARK="not slow"; SAN_SHAPES=5; TOOLS=${SANITIZER_TOOLS:-memcheck} ;;
  long)    TOTAL=540; CAP=([bench]=280 [e2e]=80 [tests]=100 [sanitizer]=60); PROFILE=${PROFILE:-quick}
           TESTS_MARK=""; SAN_SHAPES=""; TOOLS=${SANITIZER_TOOLS:-memcheck} ;;
  full)    TOTAL=1000000; CAP=([bench]=1000000 [e2e]=1000000 [tests]=1000000 [sanitizer]=1000000)
           PROFILE=${PROFILE:-full}; TESTS_MARK=""; SAN_SHAPES=""; TOOLS=${SANITIZER_TOOLS:-memcheck racecheck synccheck} ;;
  *) echo "gpu_check: unknown mode $MODE (default, long, full)" >&2; exit 2 ;;
esac
MIN=([bench]=40 [e2e]=30 [tests]=30 [sanitizer]=25)
RESERVE=15  # the report and the list of what is left to measure
ENV_EST=10
if [ -n "$BUDGET" ] && [ "$MODE" != full ]; then  # scale the shares to the budget asked for
  parts_sum=$(( CAP[bench] + CAP[e2e] + CAP[tests] + CAP[sanitizer] ))
  avail=$(( BUDGET - RESERVE - ENV_EST ))
  [ "$avail" -lt 60 ] && avail=60
  for p in bench e2e tests sanitizer; do CAP[$p]=$(( CAP[$p] * avail / parts_sum )); done
  TOTAL=$BUDGET
fi
for o in ${CAP_OVERRIDES[@]+"${CAP_OVERRIDES[@]}"}; do
  p=${o%%=*}; v=${o#*=}
  case "$p" in
    bench|e2e|tests|sanitizer) CAP[$p]=$v; XCAP[$p]=$v; [ "$v" -lt "${MIN[$p]}" ] && MIN[$p]=$v ;;
    *) echo "gpu_check: --cap $o: unknown part (bench, e2e, tests, sanitizer)" >&2; exit 2 ;;
  esac
done
enabled() { case "$SKIP_PARTS" in *" $1 "*) return 1 ;; esac; return 0; }

mkdir -p "$OUT/bench"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
: > "$OUT/summary.txt"

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( TOTAL - $(elapsed) )); }
note() { echo "gpu_check: $*" | tee -a "$OUT/summary.txt"; }
STATUS=0      # 1: something failed
INCOMPLETE=0  # 1: something skipped or cut for time
FOR_TIME=()   # what was skipped or cut for time
USED=()       # part: seconds used / cap
record() {  # part, outcome (rc or a word), seconds, detail
  local what
  case "$2" in
    0) what=passed ;;
    124|137) what="CUT AT ITS CAP"; INCOMPLETE=1 ;;
    5) what="nothing to run" ;;  # pytest: every configuration deselected (already measured)
    skip) what=skipped ;;
    skip-time) what="SKIPPED FOR TIME"; INCOMPLETE=1 ;;
    partial) what="PARTLY, FOR TIME"; INCOMPLETE=1 ;;
    not-a-pass) what="SKIPPED (not a pass)" ;;
    unavailable) what="UNAVAILABLE here" ;;
    *) what="FAILED (exit $2)"; STATUS=1 ;;
  esac
  printf '%-22s %-20s %5ss  %s\n' "$1" "$what" "$3" "$4" | tee -a "$OUT/summary.txt"
}
# the cap a part gets now (see CAP above)
cap_for() {  # part, the parts after it...
  local part=$1 reserve=$RESERVE p cap
  shift
  for p in "$@"; do enabled "$p" && reserve=$(( reserve + CAP[$p] )); done
  cap=$(( $(left) - reserve ))
  [ "$MODE" = full ] && cap=${CAP[$part]}
  [ -n "${XCAP[$part]:-}" ] && [ "${XCAP[$part]}" -lt "$cap" ] && cap=${XCAP[$part]}
  echo "$cap"
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
ENV_PY='# gpu_check env: one python start for the whole environment report
import importlib.metadata as md, importlib.util as iu, platform, sys
mods = ["torch", "triton", "pytest", "pytest_benchmark", "xdist", "numpy", "matplotlib", "timm", "torchvision"]
dists = {"pytest_benchmark": "pytest-benchmark", "xdist": "pytest-xdist"}
have = [m for m in mods if iu.find_spec(m) is not None]
print(f"python: {sys.executable} ({platform.python_version()})")
for m in mods:
    try:
        v = md.version(dists.get(m, m)) if m in have else "MISSING"
    except Exception:
        v = "present"
    print(f"module {m}: {v}")
import torch, triton
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, device {dev}")
from benchmarks.results import git_sha
print(f"git sha: {git_sha()}")
print("have: " + " ".join(have))'
t=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "mode: $MODE, budget ${TOTAL}s, shares: bench ${CAP[bench]}s, e2e ${CAP[e2e]}s, tests ${CAP[tests]}s, sanitizer ${CAP[sanitizer]}s; profile $PROFILE"
  nvidia-smi -L 2>&1 || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true
  timeout -k 5 90 "$PY" -c "$ENV_PY" 2>&1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
HAVE=" $(sed -n 's/^have: //p' "$OUT/env.txt") "
if ! grep -q '^have: ' "$OUT/env.txt"; then  # the environment report failed (see env.txt): ask for the modules alone
  note "the environment report failed (see $OUT/env.txt)"
  HAVE=" $("$PY" -c 'import importlib.util as u; print(" ".join(m for m in ("pytest", "pytest_benchmark", "xdist", "matplotlib", "timm") if u.find_spec(m)))' 2>/dev/null) "
fi
have() { case "$HAVE" in *" $1 "*) return 0 ;; esac; return 1; }
for m in pytest pytest_benchmark matplotlib timm; do have "$m" || note "module $m is missing (no network to install it): see the parts below"; done
SAN=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
  [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
done
record environment 0 $(( $(date +%s) - t )) "$OUT/env.txt; mode $MODE, budget ${TOTAL}s"

# ---------------------------------------------------------------- predictions (background, CPU)
PRED_PID=""
if enabled bench && enabled predict; then
  pred_limit=$(( TOTAL - $(elapsed) - RESERVE ))
  [ "$pred_limit" -lt 30 ] && pred_limit=30
  nice -n 10 timeout -k 5 "$pred_limit" "$PY" -m benchmarks.predict --out "$OUT/predicted.json" \
    --profile "$PROFILE" --budget-s $(( pred_limit - 15 )) > "$OUT/predict.log" 2>&1 &
  PRED_PID=$!
  PRED_T0=$(date +%s)
  note "predictions (static model, CPU) started in the background: python -m benchmarks.predict --profile $PROFILE (limit ${pred_limit}s) -> $OUT/predicted.json"
fi

# ---------------------------------------------------------------- benchmarks
if enabled bench; then
  cap=$(cap_for bench e2e tests sanitizer)
  if [ "$cap" -lt "${MIN[bench]}" ]; then
    record benchmarks skip-time 0 "only ${cap}s left for it"; FOR_TIME+=("benchmarks (all)")
  else
    soft=$(( cap - 25 ))
    [ "$MODE" = full ] && soft=""
    skip_args=()
    for f in ${SKIP_DONE[@]+"${SKIP_DONE[@]}"}; do skip_args+=(--bench-skip-done "$f"); done
    budget_args=()
    [ -n "$soft" ] && budget_args=(--bench-budget-s "$soft")
    t=$(date +%s)
    if have pytest; then
      bench_args=()
      have pytest_benchmark && bench_args=(--benchmark-json="$OUT/bench/pytest-benchmark.json" \
        --benchmark-columns "median,min,max,iqr,rounds" --benchmark-sort name)
      have pytest_benchmark || note "pytest-benchmark missing: pytest benchmarks/ times with its own loop (same clock and flush)"
      note "benchmarks: pytest benchmarks --bench-profile $PROFILE (cap ${cap}s, admits configurations for ${soft:-unlimited}s)"
      timeout -k 10 "$cap" "$PY" -m pytest benchmarks -q -s -rs -p no:cacheprovider --bench-profile "$PROFILE" \
        ${budget_args[@]+"${budget_args[@]}"} --bench-out "$OUT/bench" ${skip_args[@]+"${skip_args[@]}"} \
        ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$OUT/bench.log"
      rc=${PIPESTATUS[0]}
    else
      run_skip=()
      [ ${#SKIP_DONE[@]} -gt 0 ] && run_skip=(--skip-done "${SKIP_DONE[@]}")
      run_budget=()
      [ -n "$soft" ] && run_budget=(--budget-s "$soft")
      note "benchmarks: pytest missing, python -m benchmarks.run --profile $PROFILE (cap ${cap}s)"
      timeout -k 10 "$cap" "$PY" -m benchmarks.run --profile "$PROFILE" ${run_budget[@]+"${run_budget[@]}"} \
        --out "$OUT/bench" ${run_skip[@]+"${run_skip[@]}"} 2>&1 | tee "$OUT/bench.log"
      rc=${PIPESTATUS[0]}
    fi
    used=$(( $(date +%s) - t ))
    USED+=("benchmarks ${used}/${cap}s")
    record benchmarks "$rc" "$used" "$OUT/bench.log"
    not_measured=$(grep -o '[0-9]* configuration(s) not measured for lack of time' "$OUT/bench.log" | tail -1)
    [ -n "$not_measured" ] && { FOR_TIME+=("benchmarks: $not_measured (bench.log lists them)"); INCOMPLETE=1; }
  fi
fi

# ---------------------------------------------------------------- end to end
if enabled e2e; then
  cap=$(cap_for e2e tests sanitizer)
  if [ "$cap" -lt "${MIN[e2e]}" ]; then
    record "end to end" skip-time 0 "only ${cap}s left for it"; FOR_TIME+=("end to end (all)")
  else
    e2e_budget=()
    [ "$MODE" != full ] && e2e_budget=(--budget-s $(( cap - 15 )))
    t=$(date +%s)
    note "end to end: python -m benchmarks.e2e (timm ResNet-50 + CBAM, bf16 training step, batch 32; cap ${cap}s)"
    timeout -k 10 "$cap" "$PY" -m benchmarks.e2e --out "$OUT/e2e.json" ${e2e_budget[@]+"${e2e_budget[@]}"} \
      2>&1 | tee "$OUT/e2e.log"
    rc=${PIPESTATUS[0]}
    used=$(( $(date +%s) - t ))
    USED+=("end to end ${used}/${cap}s")
    if [ "$rc" = 3 ]; then
      record "end to end" not-a-pass "$used" "$(grep -m1 'SKIPPED' "$OUT/e2e.log" | sed 's/^e2e: //')"
    else
      record "end to end" "$rc" "$used" "$OUT/e2e.log, $OUT/e2e.json"
      sed -n '/^e2e (/,$p' "$OUT/e2e.log" >> "$OUT/summary.txt"
      [ "$rc" = 124 ] || [ "$rc" = 137 ] && FOR_TIME+=("end to end: cut at the cap of ${cap}s ($OUT/e2e.json holds the variants measured)")
    fi
    while IFS= read -r line; do FOR_TIME+=("$line"); INCOMPLETE=1; done \
      < <(sed -n 's/^e2e \([a-z_]*\): skipped (\(time budget.*\))$/end to end: \1 (\2)/p' "$OUT/e2e.log")
  fi
fi

# ---------------------------------------------------------------- tests only a GPU can run
if enabled tests; then
  cap=$(cap_for tests sanitizer)
  if ! have pytest; then
    record "tests (GPU)" skip 0 "pytest is not installed"
  elif [ "$cap" -lt "${MIN[tests]}" ]; then
    record "tests (GPU)" skip-time 0 "only ${cap}s left for it"; FOR_TIME+=("tests (all)")
  else
    if [ "$MODE" = full ]; then
      test_args=(tests)
    else
      # in order of what a first GPU run most needs to know (pytest-xdist hands tests out in this
      # order): the compiled kernels' forward and backward against the reference (nothing else
      # checks the compiled backward), the CUDA-only tests, the drop-in modules (the real timm
      # included), the hardening cases
      test_args=(tests/test_forward.py tests/test_backward.py tests/test_integration.py tests/test_backend.py
                 "tests/test_bench_tools.py::test_gpu_measurement_path"
                 "tests/test_bench_tools.py::test_e2e_on_cuda_with_a_toy_cnn" tests/test_dropin.py
                 tests/test_hardening.py)
    fi
    [ -n "$TESTS_MARK" ] && test_args+=(-m "$TESTS_MARK")
    workers=${TEST_WORKERS:-8}
    have xdist && [ "$workers" -gt 0 ] && test_args+=(-n "$workers")
    t=$(date +%s)
    note "tests: python -m pytest ${test_args[*]} (cap ${cap}s)"
    timeout -k 10 "$cap" "$PY" -m pytest "${test_args[@]}" -v -ra -p no:cacheprovider --junitxml="$OUT/tests.xml" \
      2>&1 | tee "$OUT/tests.log"
    rc=${PIPESTATUS[0]}
    used=$(( $(date +%s) - t ))
    USED+=("tests ${used}/${cap}s")
    # pytest's last line when it finished; else the outcomes printed so far (-v: one line per test)
    count() { grep -cE "^(\[gw[0-9]+\] \[ *[0-9]+%\] $1 |[^ ].*::.* $1( |$))" "$OUT/tests.log"; }
    counts=$(grep -E '^=+ .*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' "$OUT/tests.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    [ -n "$counts" ] || counts="$(count PASSED) passed, $(count FAILED) failed, $(count ERROR) errors, $(count SKIPPED) skipped, as far as it got (from tests.log)"
    record "tests (GPU)" "$rc" "$used" "$counts"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      FOR_TIME+=("tests: cut at the cap of ${cap}s after: $counts")
      [ "$(count FAILED)" -gt 0 ] || [ "$(count ERROR)" -gt 0 ] && STATUS=1
    fi
  fi
fi

# ---------------------------------------------------------------- compute-sanitizer
if enabled sanitizer; then
  if [ -z "$SAN" ]; then
    record "compute-sanitizer" skip 0 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
  else
    n_tools=$(echo "$TOOLS" | wc -w)
    k=0
    for tool in $TOOLS; do
      k=$(( k + 1 ))
      cap=$(cap_for sanitizer)
      [ "$MODE" != full ] && cap=$(( cap / (n_tools - k + 1) ))
      if [ "$cap" -lt "${MIN[sanitizer]}" ]; then
        record "sanitizer $tool" skip-time 0 "only ${cap}s left for it"; FOR_TIME+=("sanitizer $tool"); continue
      fi
      san_args=()
      [ -n "$SAN_SHAPES" ] && san_args=(--max-shapes "$SAN_SHAPES")
      t=$(date +%s)
      note "compute-sanitizer --tool $tool, python -m benchmarks.sanitize ${san_args[*]} (cap ${cap}s)"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$cap" "$SAN" --tool "$tool" --error-exitcode 99 \
        --print-limit 100 "$PY" -m benchmarks.sanitize ${san_args[@]+"${san_args[@]}"} 2>&1 | tee "$OUT/sanitizer-$tool.log"
      rc=${PIPESTATUS[0]}
      used=$(( $(date +%s) - t ))
      USED+=("sanitizer $tool ${used}/${cap}s")
      if [ "$rc" != 0 ] && grep -qiE "device not supported|unable to find injection library|not supported on this platform" \
          "$OUT/sanitizer-$tool.log"; then
        record "sanitizer $tool" unavailable "$used" "compute-sanitizer cannot run on this machine (see the log): no check made"
      else
        record "sanitizer $tool" "$rc" "$used" "$OUT/sanitizer-$tool.log"
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && FOR_TIME+=("sanitizer $tool: cut at the cap of ${cap}s")
      fi
    done
  fi
fi

# ---------------------------------------------------------------- predictions: wait, then the report
if [ -n "$PRED_PID" ]; then
  wait_until=$(( TOTAL - 5 ))
  [ "$MODE" = full ] && wait_until=$(( $(elapsed) + 100000 ))
  while kill -0 "$PRED_PID" 2>/dev/null && [ "$(elapsed)" -lt "$wait_until" ]; do sleep 1; done
  if kill -0 "$PRED_PID" 2>/dev/null; then
    kill -TERM "$PRED_PID" 2>/dev/null
    wait "$PRED_PID" 2>/dev/null
    rc=124
  else
    wait "$PRED_PID"
    rc=$?
  fi
  used=$(( $(date +%s) - PRED_T0 ))
  USED+=("predictions ${used}s in the background")
  last=$(tail -1 "$OUT/predict.log" 2>/dev/null)
  [ "$rc" = 3 ] && rc=partial  # benchmarks.predict: nothing failed, its time ran out first
  if [ -f "$OUT/predicted.json" ]; then
    record "predictions (model)" "$rc" "$used" "$OUT/predicted.json: $last"
  else
    record "predictions (model)" "$rc" "$used" "no predictions file: $last (the run went on without them)"
  fi
  case "$rc" in 124|137|partial) FOR_TIME+=("predictions: not every call predicted in time ($OUT/predicted.json holds those made)") ;; esac
fi

if enabled bench; then
  # The report again, from the files (the run may have been stopped before its own summary),
  # merged with the --skip-done files, with the predictions and the end-to-end row.
  shopt -s nullglob
  files=(${SKIP_DONE[@]+"${SKIP_DONE[@]}"} "$OUT"/bench/*.json)
  shopt -u nullglob
  new=()
  for f in ${files[@]+"${files[@]}"}; do
    case "$(basename "$f")" in pytest-benchmark.json|*.kernels.json|predicted*.json|e2e*.json) ;; *) new+=("$f") ;; esac
  done
  if [ ${#new[@]} -gt ${#SKIP_DONE[@]} ]; then
    t=$(date +%s)
    last=${new[$(( ${#new[@]} - 1 ))]}
    extra=()
    [ -f "$OUT/predicted.json" ] && extra+=(--predicted "$OUT/predicted.json")
    [ -f "$OUT/e2e.json" ] && extra+=(--e2e "$OUT/e2e.json")
    timeout -k 5 90 "$PY" -m benchmarks.report "${new[@]}" --md "$OUT/bench/BENCHMARKS.md" --png "${last%.json}.png" \
      ${extra[@]+"${extra[@]}"} 2>&1 | tee -a "$OUT/summary.txt"
    record report "${PIPESTATUS[0]}" $(( $(date +%s) - t )) "$OUT/bench/BENCHMARKS.md"
    left_out=$(timeout -k 5 60 "$PY" -m benchmarks.run --list --profile "$PROFILE" --skip-done "${new[@]}" 2>/dev/null | tail -1)
    [ -n "$left_out" ] && note "benchmarks not yet measured (profile $PROFILE): $left_out"
  else
    record report skip 0 "no results file was written"
  fi
fi

# ---------------------------------------------------------------- what the budget went to
used_text=""
for u in ${USED[@]+"${USED[@]}"}; do used_text+="${used_text:+; }$u"; done
note "budget: $(elapsed)s used of ${TOTAL}s (mode $MODE); by part (used/cap): ${used_text:-none}"
if [ ${#FOR_TIME[@]} -gt 0 ]; then
  note "skipped or cut for time:"
  for f in "${FOR_TIME[@]}"; do echo "  - $f" | tee -a "$OUT/summary.txt"; done
else
  note "nothing was skipped or cut for time"
fi
final=$STATUS
[ "$final" = 0 ] && [ "$INCOMPLETE" = 1 ] && final=3
note "done in $(elapsed)s; exit status $final (0 all ran and passed, 1 something failed, 3 nothing failed but something was left for time); files in $OUT"
if [ -n "$ARCHIVE" ]; then
  mkdir -p "$(dirname "$ARCHIVE")"
  tar czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")" && echo "gpu_check: archive $ARCHIVE"
fi
exit $final
