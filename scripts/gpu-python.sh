#!/usr/bin/env bash
# The Python tests on the GPU machine, against the wheel staged in .gpu/ (that machine cannot
# install anything: the wheel is unpacked onto PYTHONPATH). Run through the GPU runner, which
# sets LAVA_FLOW_REQUIRE_GPU=1 so that a test that would skip fails:
#
#   bash .gpu/run exec bash scripts/gpu-python.sh [pytest arguments]
#
# Each test file runs in its own process under a time limit (LIMIT seconds, default 120); a test
# still running after 30 s has every thread's Python stack printed (faulthandler), so that a hang
# says where it is.
set -uo pipefail
cd "$(dirname "$0")/.."
site=$(mktemp -d)
wheel=$(ls .gpu/lava_flow-*.whl | head -1)
python3 -m zipfile -e "$wheel" "$site"
python3 -c 'import sys, torch, cupy, jax, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "cupy", cupy.__version__, "jax", jax.__version__, "numpy", numpy.__version__)'
status=0
for file in crates/lava-flow-py/tests/test_*.py; do
  PYTHONPATH="$site" timeout "${LIMIT:-120}" python3 -m pytest -p no:cacheprovider -o faulthandler_timeout=30 \
    -v -rs --tb=short "$file" "$@"
  rc=$?
  # 5: nothing collected to run here (a file whose tests all skip at import, e.g. the stub check
  # without mypy).
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then echo "$file: rc=$rc"; status=1; fi
done
exit $status
