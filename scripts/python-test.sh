#!/usr/bin/env bash
# The Python module's tests: builds the manylinux_2_28 wheel (scripts/python-wheel.sh, which
# checks its tag and libraries), installs it into target/py-venv, checks the type stubs against
# the installed module (mypy's stubtest) and runs the pytest suite against it. Called by
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(bash scripts/python-wheel.sh -o target/wheels)
py=target/py-venv/bin/python
"$py" -m pip install -q --force-reinstall --no-deps "$wheel"
echo "== stubtest: lava_flow/__init__.pyi and ipc.pyi against the installed module"
"$py" -m mypy.stubtest lava_flow --allowlist crates/lava-flow-py/stubtest-allowlist.txt
"$py" -m pytest -p no:cacheprovider -q -rs crates/lava-flow-py/tests
