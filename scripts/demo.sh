#!/usr/bin/env bash
# lava-flow's main job: what this machine can share (`lava-flow info`), then the zero-copy
# pipeline demo (`lava-flow demo`: Vulkan compute → OpenGL compute, every frame verified, timed
# against staging through host memory). Extra arguments go to the demo (see `lava-flow demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p lava-flow-cli
./target/release/lava-flow info
./target/release/lava-flow demo "$@"
