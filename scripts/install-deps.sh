#!/usr/bin/env bash
# Installs what lava-flow's tests and examples need on a Debian or Ubuntu machine that has only
# Rust: Mesa's Vulkan (lavapipe) and GL (llvmpipe) drivers, the Vulkan/EGL/OpenCL loaders, PoCL
# (an OpenCL platform) and the Khronos validation layer, and any packages named as arguments
# (`scripts/windows-check.sh` adds Wine's). Does nothing when everything is present. Needs root or sudo.
set -euo pipefail

packages=(
  mesa-vulkan-drivers   # lavapipe: Vulkan on the CPU, exports opaque fds
  libvulkan1            # the Vulkan loader
  vulkan-validationlayers
  libegl1 libegl-mesa0 libgl1-mesa-dri libgl1  # EGL/GL loaders and llvmpipe
  ocl-icd-libopencl1    # the OpenCL ICD loader
  pocl-opencl-icd       # an OpenCL platform without external memory, as the GPU machine also has
  gcc                   # the linker Rust uses
)

packages+=("$@")

# Python with venv, for the Python module's tests (any python3 that can make a venv will do).
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  packages+=(python3 python3-venv)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
