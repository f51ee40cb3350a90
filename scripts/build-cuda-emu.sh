#!/usr/bin/env bash
# Builds the host emulation of the CUDA driver and NVRTC (cuda-emu/) with the
# system's g++ and prints the folder holding libcuda.so.1 and libnvrtc.so.13 as
# its last line:
#
#     LD_LIBRARY_PATH=$(scripts/build-cuda-emu.sh) frostgrad step --device cuda ...
#
# Rebuilds only when a file under cuda-emu/ (or this script) changed.
# Environment: FROSTGRAD_CUDA_EMU_DIR (output folder, default
# $CARGO_TARGET_DIR or target/, then cuda-emu), FROSTGRAD_CUDA_EMU_CXX (g++).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/cuda-emu"
out="${FROSTGRAD_CUDA_EMU_DIR:-${CARGO_TARGET_DIR:-$root/target}/cuda-emu}"
cxx="${FROSTGRAD_CUDA_EMU_CXX:-g++}"

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "build-cuda-emu: '$cxx' not found; the CUDA emulation needs g++ (C++20)" >&2
  exit 1
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Serialise concurrent builds (parallel test binaries) when flock exists.
if command -v flock >/dev/null 2>&1 && [ -z "${FROSTGRAD_CUDA_EMU_LOCKED:-}" ]; then
  export FROSTGRAD_CUDA_EMU_LOCKED=1
  exec flock "$out/.build.lock" "$0" "$@"
fi

stale() { # stale TARGET: true when TARGET is missing or older than any source
  [ ! -e "$1" ] || [ -n "$(find "$src" "${BASH_SOURCE[0]}" -newer "$1" -print -quit)" ]
}

flags=(-std=c++20 -O2 -g -fPIC -Wall -Wextra -Wno-unused-parameter -fvisibility=hidden)

if stale "$out/libcuda.so.1"; then
  "$cxx" "${flags[@]}" -shared -Wl,-soname,libcuda.so.1 -Wl,-z,noexecstack \
    -o "$out/libcuda.so.1.tmp" "$src/driver.cpp" "$src/check.cpp" "$src/stats.cpp" -x c++ -DFG_STUBS_DRIVER "$src/stubs.cpp" -ldl -lpthread
  mv -f "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
fi
if stale "$out/libnvrtc.so.13"; then
  "$cxx" "${flags[@]}" -shared -Wl,-soname,libnvrtc.so.13 -Wl,-z,noexecstack \
    -o "$out/libnvrtc.so.13.tmp" "$src/nvrtc.cpp" "$src/stubs.cpp" -ldl
  mv -f "$out/libnvrtc.so.13.tmp" "$out/libnvrtc.so.13"
fi
if stale "$out/standalone-test"; then
  "$cxx" -std=c++20 -O1 -Wall -o "$out/standalone-test.tmp" "$src/standalone_test.cpp" -ldl
  mv -f "$out/standalone-test.tmp" "$out/standalone-test"
fi

# cudarc tries libcuda.so / libnvrtc.so first: make those names find us too.
ln -sfn libcuda.so.1 "$out/libcuda.so"
ln -sfn libnvrtc.so.13 "$out/libnvrtc.so"

# Headers the emulated NVRTC compiles kernels against.
mkdir -p "$out/include"
for h in "$src"/include/*.h; do
  cmp -s "$h" "$out/include/$(basename "$h")" || cp -p "$h" "$out/include/"
done

echo "$out"
