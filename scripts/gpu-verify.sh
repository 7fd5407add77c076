#!/usr/bin/env bash
# One device call's worth of GPU verification, under the GPU runner (which installs the loaders
# and sets LAVA_FLOW_REQUIRE_GPU=1):
#
#   bash .gpu/run exec bash scripts/gpu-verify.sh
#
# 1. Every staged test binary, each run whole (its tests in parallel, as cargo runs them) under
#    a time limit of LIMIT seconds (default 300), a hung one backtraced (scripts/gpu-each-test.sh).
# 2. The CUDA tests with their non-measuring tests in parallel threads
#    (LAVA_FLOW_CUDA_PARALLEL=1), again and again for STRESS seconds (default 120; 0 skips):
#    whether parallel runs still hang (RELIABILITY.md, ADR 0017/0018).
# 3. The Python tests (scripts/gpu-python.sh), where a wheel is staged in .gpu/.
# 4. `lava-flow bench` with the arguments in BENCH (e.g. BENCH="--peer-only"; unset: skipped).
#
# Set REQUIRE_GPUS=2 on a two-GPU machine (LAVA_FLOW_REQUIRE_GPUS). Summaries go to $OUT/verify,
# every log into $OUT/verify-logs.tgz (both come back with the reply); the output ends with one
# line per part and the totals.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}/verify
mkdir -p "$out"
[ -n "${REQUIRE_GPUS:-}" ] && export LAVA_FLOW_REQUIRE_GPUS=$REQUIRE_GPUS
summary=()

# 1. Every test binary.
bins=$(ls .gpu/bin/test-* .gpu/bin/lib-* 2>/dev/null)
LIMIT=${LIMIT:-300} LOGS="$out/tests" WHOLE=1 bash scripts/gpu-each-test.sh $bins | tee "$out/tests.txt"
summary+=("tests: $(tail -1 "$out/tests.txt")")

# 2. The CUDA tests in parallel, repeatedly.
cuda=.gpu/bin/test-gpu_cuda
if [ -x "$cuda" ] && [ "${STRESS:-120}" -gt 0 ]; then
  runs=0 hung=0 bad=0 end=$((SECONDS + ${STRESS:-120}))
  while [ $SECONDS -lt $end ]; do
    runs=$((runs + 1))
    LAVA_FLOW_CUDA_PARALLEL=1 LIMIT=120 LOGS="$out/parallel/$runs" WHOLE=1 \
      bash scripts/gpu-each-test.sh "$cuda" >"$out/parallel-$runs.txt" 2>&1
    grep -q '^HUNG' "$out/parallel-$runs.txt" && hung=$((hung + 1))
    grep -q '^FAILED' "$out/parallel-$runs.txt" && bad=$((bad + 1))
  done
  summary+=("gpu_cuda in parallel: $runs runs, $hung hung, $bad failed")
fi

# 3. Python.
if ls .gpu/lava_flow-*.whl >/dev/null 2>&1; then
  bash scripts/gpu-python.sh >"$out/python.txt" 2>&1
  summary+=("python: rc=$? $(grep -E '^=+ .*(passed|failed)' "$out/python.txt" | sed 's/=//g' | tr '\n' ';')")
fi

# 4. Benchmarks.
if [ -n "${BENCH:-}" ] && [ -x .gpu/bin/bin-lava-flow ]; then
  # shellcheck disable=SC2086 # BENCH is a list of arguments.
  timeout 500 .gpu/bin/bin-lava-flow bench $BENCH >"$out/bench.txt" 2>&1
  summary+=("bench $BENCH: rc=$?")
fi

# The device tool brings back a few files, and none deep in folders: every log goes back in one
# archive (a hung run's backtrace included); the per-part summaries stay beside it.
tar -C "$out" -czf "${OUT:-/tmp/gpu-out}/verify-logs.tgz" . && rm -rf "$out/tests" "$out/parallel" "$out"/parallel-*.txt

printf '%s\n' "${summary[@]}"
