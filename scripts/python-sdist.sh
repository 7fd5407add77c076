#!/usr/bin/env bash
# The Python module's source distribution: `maturin sdist`, its contents checked, then a wheel
# built from it as pip would on a machine without a wheel for it, and that wheel imported and
# used (allocate, write, read: lavapipe will do). Uses target/py-venv (scripts/python-wheel.sh
# makes it). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/py-venv/bin/python ] || bash scripts/python-wheel.sh >/dev/null
py=$PWD/target/py-venv/bin/python
rm -rf target/sdist target/sdist-wheel
"$py" -m maturin sdist -m crates/lava-flow-py/Cargo.toml -o target/sdist >&2
sdist=$(ls target/sdist/lava_flow-*.tar.gz)
"$py" - "$sdist" <<'PY'
import sys, tarfile
sdist = sys.argv[1]
root = sdist.rsplit("/", 1)[-1].removesuffix(".tar.gz")
names = {n.removeprefix(root + "/") for n in tarfile.open(sdist).getnames()}
for need in ("pyproject.toml", "README.md", "Cargo.toml", "Cargo.lock", "lava_flow/__init__.py",
             "lava_flow/__init__.pyi", "lava_flow/ipc.pyi", "lava_flow/py.typed",
             "crates/lava-flow/Cargo.toml", "crates/lava-flow/README.md", "crates/lava-flow/build.rs",
             "crates/lava-flow-py/Cargo.toml", "crates/lava-flow-py/src/lib.rs"):
    assert need in names, f"{sdist}: {need} missing"
print(f"{sdist}: {len(names)} files")
PY
# The build pip runs from the sdist (maturin as the PEP 517 backend, found on PATH), in debug
# mode and with this tree's target/ so that the dependencies are not compiled again.
PATH="$PWD/target/py-venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" MATURIN_PEP517_ARGS="--profile dev" \
  "$py" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w target/sdist-wheel "$sdist"
wheel=$(ls target/sdist-wheel/lava_flow-*.whl)
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$py" -m zipfile -e "$wheel" "$site"
(cd "$site" && PYTHONPATH="$site" "$py" -c '
import os, lava_flow
assert os.path.exists(os.path.join(os.path.dirname(lava_flow.__file__), "py.typed"))
data = os.urandom(4096)
with lava_flow.MemoryAllocator().allocate(4096) as buffer:
    buffer.write(data)
    assert buffer.read() == data
print("the wheel built from the sdist imports and moves bytes: lava_flow", lava_flow.__version__)
')
