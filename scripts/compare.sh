#!/usr/bin/env bash
# Runs `frostgrad bench` and scripts/bench_pytorch.py with the same settings,
# one after the other on the same machine, and prints ours / PyTorch per mode
# and each side's speedup of transfer learning over fine-tuning.
#
#   scripts/compare.sh [--device cpu|cuda] [--batch N] [--size S] [--steps K] [--warmup W]
#
# Environment: PYTHON (default python3, must have torch + torchvision),
# FROSTGRAD (default target/release/frostgrad, built if missing), OUT (default target/compare).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu batch="" size=224 steps=5 warmup=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$batch" ] || { [ "$device" = cuda ] && batch=64 || batch=8; }
PYTHON=${PYTHON:-python3}
FROSTGRAD=${FROSTGRAD:-target/release/frostgrad}
OUT=${OUT:-target/compare}
mkdir -p "$OUT"
[ -x "$FROSTGRAD" ] || cargo build --release --quiet

common=(--device "$device" --batch "$batch" --size "$size" --steps "$steps" --warmup "$warmup")
echo "== frostgrad" >&2
"$FROSTGRAD" bench "${common[@]}" --json "$OUT/frostgrad.json" --svg "$OUT/frostgrad.svg"
echo "== PyTorch" >&2
"$PYTHON" scripts/bench_pytorch.py "${common[@]}" --json "$OUT/pytorch.json"

echo
"$PYTHON" scripts/compare_json.py "$OUT/frostgrad.json" "$OUT/pytorch.json"
