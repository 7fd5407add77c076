#!/usr/bin/env bash
# lava-flow's main job, for now: allocate exportable memory, export an fd, import it into a second
# Vulkan device and verify every byte both ways (see crates/lava-flow/examples/share.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo run --release --example share -- "$@"
