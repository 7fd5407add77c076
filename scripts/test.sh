#!/usr/bin/env bash
# Runs lava-flow's test suite: installs what is missing, then every test of the workspace with the
# Khronos validation layer on (any warning or error it reports fails the test that caused it).
# On a machine without a GPU the Vulkan tests run on Mesa's lavapipe. Then the Python module's
# tests (pytest, against the wheel built from this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export LAVA_FLOW_VALIDATION=1
cargo test --workspace --all-features "$@"
bash scripts/python-test.sh
