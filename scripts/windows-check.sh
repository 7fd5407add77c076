#!/usr/bin/env bash
# Windows (issue 16): lava-flow built and linted for x86_64-pc-windows-gnu with every feature,
# then the Windows test binaries run under Wine where Wine can run them.
#
# What runs under Wine (Debian 12's wine 8, whose winevulkan forwards Vulkan to the host's Mesa
# lavapipe; an X server (Xvfb) is needed for Wine's graphics driver to offer Vulkan):
# - every unit test of the library (the platform rules, descriptors, wire format, sub-allocator);
# - `tests/cpu_vulkan.rs` without the validation layer (there is no Windows build of it here) and
#   without the tests that export memory: Wine 8's lavapipe device lists no
#   `VK_KHR_external_memory_win32`/`_semaphore_win32`, so nothing exports an NT handle under Wine.
# Never run: anything on a Windows GPU driver (see the README's status table).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu

echo "== rustup target add $target"
rustup target add "$target" >/dev/null
echo "== cargo check ($target, every feature)"
cargo check --workspace --all-targets --all-features --target "$target"
echo "== cargo clippy ($target, every feature)"
cargo clippy --workspace --all-targets --all-features --target "$target" -- -D warnings

bash "$(dirname "$0")/install-deps.sh" wine wine64 gcc-mingw-w64-x86-64 xvfb xauth

echo "== the Windows test binaries under Wine"
# The test binaries (linked with mingw); their paths from cargo's JSON messages.
mapfile -t exes < <(cargo test -p lava-flow --all-features --target "$target" --lib --test cpu_vulkan --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])
')
dir=$(dirname "${exes[0]#* }")
x86_64-w64-mingw32-gcc -shared -O2 -o "$dir/bcryptprimitives.dll" scripts/wine/bcryptprimitives.c -ladvapi32
export WINEPREFIX="$PWD/target/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wine() { xvfb-run -a /usr/lib/wine/wine64 "$@"; }
for entry in "${exes[@]}"; do
  name=${entry%% *} exe=${entry#* }
  case $name in
    lava_flow) wine "$exe" ;;
    cpu_vulkan)
      # Skipped: the five tests that export memory (no win32 export under Wine, above) and the
      # one that checks the validation layer itself.
      LAVA_FLOW_TEST_NO_VALIDATION_LAYER=1 wine "$exe" --test-threads 2 \
        --skip devices_are_described_and_ordered \
        --skip host_visible_locations_are_mapped_and_round_trip \
        --skip images_of_every_format_round_trip_every_level \
        --skip second_device_shares_suballocated_and_dedicated_memory \
        --skip seed_api_exports_fresh_nt_handles_that_import \
        --skip validation_layer_records_misuse
      ;;
  esac
done
