#!/usr/bin/env bash
# Runs every test of the given libtest binaries alone, each under a time limit, and prints one
# line per test ("ok", "FAILED rc=N" or "HUNG") and a summary. A hung test's threads are
# backtraced (with gdb or cuda-gdb, where one exists) before it is killed, so that one GPU call
# says where it hangs. Meant for the GPU machine:
#
#   bash .gpu/run exec bash scripts/gpu-each-test.sh .gpu/bin/test-*
#
# LIMIT (seconds per test, default 60), LOGS (folder for per-test logs, default /tmp/logs), and
# WHOLE=1 to run each binary whole (its tests in parallel) instead of test by test.
set -u
limit=${LIMIT:-60}
logs=${LOGS:-/tmp/logs}
mkdir -p "$logs"
debugger=$(command -v gdb || command -v cuda-gdb || true)
passed=0 failed=0
# Runs one command in the background under the limit; prints its verdict and sets `outcome`.
run_limited() {
  local label=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  local pid=$! ticks=$((limit * 10)) rc
  while [ $ticks -gt 0 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.1
    ticks=$((ticks - 1))
  done
  if kill -0 $pid 2>/dev/null; then
    echo "HUNG   $label (over ${limit}s)"
    if [ -n "$debugger" ]; then
      timeout 60 "$debugger" -p $pid -batch -ex 'thread apply all bt 25' >"${log%.log}.bt" 2>&1
    fi
    kill -9 $pid
    wait $pid 2>/dev/null
    outcome=hung
    return
  fi
  wait $pid
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "ok     $label"
    outcome=ok
  else
    echo "FAILED $label (rc=$rc)"
    grep -m3 -E 'panicked|Error|error' "$log" | cut -c1-400
    outcome=failed
  fi
}
for bin in "$@"; do
  name=${bin##*/}
  if [ "${WHOLE:-0}" = 1 ]; then
    # The whole binary at once, its tests in parallel as cargo runs them.
    run_limited "$name" "$logs/$name.log" "$bin" --nocapture
    read -r p f < <(awk '/^test result:/ {for (i = 1; i < NF; i++) {if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i}} END {print p + 0, f + 0}' "$logs/$name.log")
    [ $outcome = ok ] || [ $f -gt 0 ] || f=1
    passed=$((passed + p)) failed=$((failed + f))
    continue
  fi
  for test in $("$bin" --list --format terse 2>/dev/null | sed -n 's/: test$//p'); do
    run_limited "$name $test" "$logs/$name.$test.log" "$bin" --exact "$test" --nocapture --test-threads=1
    if [ $outcome = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  done
done
echo "GPU tests: $passed passed, $failed failed"
[ $failed -eq 0 ]
