#!/usr/bin/env bash
# One prepared check of klrl on an accelerator machine: environment, a fast subset of the
# tests, the benchmark suites at accelerator sizes, and a summary of every step.
#
#   bash benchmarks/accelerator.sh OUTDIR [--quick]
#
# Runs from a checkout, with the repository root on PYTHONPATH: klrl need not be installed,
# and nothing is installed. It needs jax (with the accelerator's plugin), equinox, optax,
# jaxtyping, numpy, scipy, hypothesis, mpmath and pytest; tests that fail only for want of an
# optional package (chex, safetensors, deeptime, wordfreq, vaderSentiment, matplotlib) are
# reported as skipped (benchmarks/pytest_optional.py), and the chains suite falls back to
# SciPy's baseline without deeptime.
#
# Every step has its own time limit and all of them share one deadline (510 s, 8.5 minutes;
# 300 s with --quick), so the script ends in time whatever hangs; a step that fails or runs
# out of time is recorded and the next one runs. Outputs under OUTDIR: env.txt, tests.log,
# tests.xml (JUnit), bench-<suite>.log, bench/<tag>-<time>.{json,md}, summary.md. The exit
# status is 0 when every step succeeded, 1 otherwise.
#
# --quick: small sizes, few rounds, one test file and two benchmark suites (tilted, chains), for a
# 2-core CPU without an accelerator (about 2 minutes).
#
# Memory: JAX's default (preallocate 75% of the GPU's memory at start) is kept. Each step is a
# single process that has the accelerator to itself (steps run one after another, and the
# sweep suite's 8-device subprocess runs on the CPU), so preallocation takes nothing from
# anyone, and timed calls never wait for cudaMalloc. XLA_PYTHON_CLIENT_PREALLOCATE=false is
# therefore not set. The benchmark steps raise the fraction to 90% instead, so that
# kl_constrained at 64 x 2^24 in float64 (16 GiB of inputs, 8 GiB of output, plus temporaries)
# fits on an 80 GB card.
set -u

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash benchmarks/accelerator.sh OUTDIR [--quick]" >&2
  exit 2
fi
OUT=$1
QUICK=0
[[ "${2:-}" == "--quick" ]] && QUICK=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python || command -v python3)}

START=$(date +%s)
DEADLINE=$((START + (QUICK ? 300 : 510)))
STEPS=()

# run_step NAME BUDGET_S LOG COMMAND...: runs COMMAND with its output in LOG (and a tail on the
# terminal), under min(BUDGET_S, time left before the deadline); records status and seconds.
run_step() {
  local name=$1 budget=$2 log=$3
  shift 3
  local left=$((DEADLINE - $(date +%s) - 15))   # 15 s: the kill grace below, and the summary
  local limit=$((budget < left ? budget : left))
  if ((limit < 5)); then
    STEPS+=("$name|skipped (no time left)|0")
    echo "== $name: skipped, no time left" | tee -a "$log"
    return
  fi
  echo "== $name (limit ${limit} s): $*"
  local t0=$SECONDS rc
  # SIGINT first: pytest and Python end cleanly on it (pytest still writes its JUnit file).
  timeout -s INT -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local took=$((SECONDS - t0)) status
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  STEPS+=("$name|$status|$took")
  tail -n 25 "$log"
  echo "== $name: $status, ${took} s"
}

# (a) the environment
env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  git: $(git rev-parse --short HEAD 2>/dev/null)"
  if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi
  else
    echo "nvidia-smi: not present"
  fi
  timeout 35 "$PY" -c "import jax; print(jax.devices())"
  timeout 35 "$PY" -c "import klrl, json; print(json.dumps(klrl.info(), indent=1))"
}
export -f env_info
export PY
run_step environment 90 "$OUT/env.txt" bash -c env_info

# (b) the tests: the theory modules, fast ones only.
if ((QUICK)); then
  TESTS=(tests/test_divergences.py -k "not row_blocks")   # the row-block tests compile for a minute
  TEST_BUDGET=90
else
  TESTS=(tests/test_tilted.py tests/test_bon.py tests/test_divergences.py tests/test_rlvr.py tests/test_train.py
         tests/test_chains.py tests/test_chains_spectra.py tests/test_memoryless.py tests/test_shard_map.py)
  TEST_BUDGET=150
fi
run_step tests "$TEST_BUDGET" "$OUT/tests.log" "$PY" -m pytest -p no:cacheprovider -p no:randomly \
  -p benchmarks.pytest_optional -m "not slow" -rs --durations=15 --junitxml="$OUT/tests.xml" "${TESTS[@]}"

# (c) the benchmarks; results under OUTDIR/bench.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
bench() {   # bench SUITE BUDGET_S OPTIONS...
  local suite=$1 budget=$2
  shift 2
  run_step "bench $suite" "$budget" "$OUT/bench-$suite.log" "$PY" -m benchmarks.run --suite "$suite" \
    --out-dir "$OUT/bench" --tag "accelerator-$suite" "$@"
}
if ((QUICK)); then
  # two suites only: the check of the script itself (the suites have their own quick tests)
  bench tilted 45 --quick --min-log2v 12 --rounds 2
  bench chains 60 --quick --max-states 64 --rounds 2
else
  # tilted: 64 x 2^16 .. 2^24 (float64: 8 GiB per array at 2^24); the row-by-row SciPy
  # baseline up to 2^20 only (at 2^22 it alone takes about a minute).
  bench tilted 100 --min-log2v 16 --max-log2v 24 --max-baseline-log2v 20 --rounds 2
  bench bon 50 --min-log2v 14 --max-log2v 20 --rounds 2
  # sweep: 10^4 points at V = 2^16 on the accelerator; its second measurement, on simulated CPU
  # devices, is skipped (at this size it alone takes minutes).
  bench sweep 60 --sweep-log2v 16 --sweep-cpu-devices 0
  # chains: dense chains to M = 500 (deeptime's loop over 32 kernels of M = 1000 takes minutes)
  # or 1000 (SciPy's, without deeptime); sparse ones to 10^5 states.
  if "$PY" -c "import deeptime" >/dev/null 2>&1; then MAX_STATES=500; else MAX_STATES=1000; fi
  bench chains 50 --max-states "$MAX_STATES" --rounds 2
  # the exact expected gradients of the KL configurations (to 1e5 sequences) and the Markov-token
  # scaled CGF (to V = 1000) and sequence law
  bench autoregressive 30 --rounds 2
  bench markov 60 --rounds 2 --max-markov-v 1000
fi

# (d) the summary.
{
  echo
  echo "## accelerator check$( ((QUICK)) && echo " (--quick)"), $(( $(date +%s) - START )) s in all"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name status took <<<"$s"
    echo "| $name | $status | $took |"
  done
} | tee "$OUT/summary.md"
for s in "${STEPS[@]}"; do
  [[ "$s" == *"|ok|"* ]] || exit 1
done
