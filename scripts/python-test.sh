#!/usr/bin/env bash
# The Python module's tests: builds the wheel with maturin and runs the pytest suite against it,
# in a virtual environment under target/ (made on first use). Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/maturin" ] || [ ! -x "$venv/bin/pytest" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "maturin>=1.5,<2" pytest numpy
fi
rm -rf target/wheels
"$venv/bin/maturin" build -q -m crates/lava-flow-py/Cargo.toml -o target/wheels
"$venv/bin/pip" install -q --force-reinstall --no-deps target/wheels/lava_flow-*.whl
"$venv/bin/python" -m pytest -p no:cacheprovider -q -rs crates/lava-flow-py/tests
