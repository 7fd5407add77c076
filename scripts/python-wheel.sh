#!/usr/bin/env bash
# Builds the Python module's wheel as it is published: manylinux_2_28 (glibc 2.28 and newer, as
# PyTorch's wheels; linked with zig against glibc 2.28's symbols, since this machine's glibc is
# newer), then checks it: the platform tag auditwheel finds, and that the extension links only
# glibc's libraries (drivers are opened at run time). Sets up the virtual environment
# target/py-venv (maturin, ziglang, auditwheel, mypy, pytest, numpy) on first use.
#
#   bash scripts/python-wheel.sh [--release] [-o DIR]     (default DIR: target/wheels)
#
# Prints the wheel's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/wheels profile=()
while (($#)); do
  case $1 in
    --release) profile=(--release) ;;
    -o) out=$2; shift ;;
    *) echo "usage: $0 [--release] [-o DIR]" >&2; exit 2 ;;
  esac
  shift
done
venv=target/py-venv
py=$venv/bin/python
# Always `python -m`: a venv copied from another checkout has scripts whose first line names
# that checkout's interpreter (and would install there).
if ! "$py" -c 'import maturin, ziglang, auditwheel, mypy, pytest, numpy' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$py" -m pip install -q "maturin>=1.9,<2" "ziglang>=0.13,<1" "auditwheel>=6" "mypy>=1.18" pytest numpy
fi
mkdir -p "$out"
rm -f "$out"/lava_flow-*.whl
# maturin finds zig through `python -m ziglang` of the Python on PATH.
PATH="$PWD/$venv/bin:$PATH" "$py" -m maturin build -q "${profile[@]}" -m crates/lava-flow-py/Cargo.toml \
  --zig --compatibility manylinux_2_28 -o "$out" >&2
wheel=$(ls "$out"/lava_flow-*.whl)
"$py" - "$wheel" >&2 <<'PY'
import subprocess, sys, zipfile, io
from elftools.elf.elffile import ELFFile  # auditwheel's dependency

wheel = sys.argv[1]
name = wheel.rsplit("/", 1)[-1]
assert name.endswith("-cp311-abi3-manylinux_2_28_x86_64.whl"), f"{name}: not an abi3 manylinux_2_28 wheel"
shown = " ".join(subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel],
                                capture_output=True, text=True, check=True).stdout.split())
assert 'consistent with the following platform tag: "manylinux_2_28_x86_64"' in shown, shown
# glibc's own libraries only: no libstdc++, no driver library (Vulkan, CUDA, GL, OpenCL are
# opened at run time), nothing bundled.
glibc = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2", "libgcc_s.so.1"}
with zipfile.ZipFile(wheel) as z:
    members = z.namelist()
    extensions = [m for m in members if m.endswith(".so")]
    assert extensions == ["lava_flow/_lava_flow.abi3.so"], extensions
    for stub in ("lava_flow/__init__.py", "lava_flow/__init__.pyi", "lava_flow/ipc.pyi", "lava_flow/py.typed"):
        assert stub in members, f"{stub} missing from the wheel"
    elf = ELFFile(io.BytesIO(z.read(extensions[0])))
    needed = {t.needed for t in elf.get_section_by_name(".dynamic").iter_tags() if t.entry.d_tag == "DT_NEEDED"}
assert needed <= glibc, f"links more than glibc: {sorted(needed - glibc)}"
print(f"{name}: manylinux_2_28_x86_64, links {', '.join(sorted(needed))}")
PY
echo "$wheel"
