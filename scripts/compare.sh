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

"$PYTHON" - "$OUT/frostgrad.json" "$OUT/pytorch.json" <<'PY'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
t = {m["name"]: m for m in theirs["modes"]}
print(f"\nfrostgrad vs {theirs['framework']} on {ours['device']}, batch {ours['batch']} at {ours['size']}px (median ms per step)")
print(f"{'mode':<10} {'frostgrad':>10} {'PyTorch':>10} {'ours/theirs':>12} {'fwd':>14} {'bwd':>14} {'peak MiB':>9}")
for m in ours["modes"]:
    p = t.get(m["name"])
    if p is None:
        continue
    a, b = m["step_ms"]["median"], p["step_ms"]["median"]
    print(f"{m['name']:<10} {a:>10.1f} {b:>10.1f} {a / b:>11.2f}x "
          f"{m['forward_ms']:>6.1f}/{p['forward_ms']:<7.1f} {m['backward_ms']:>6.1f}/{p['backward_ms']:<7.1f} "
          f"{m['peak_bytes'] / 2**20:>9.1f}")
def speedup(d):
    by = {m["name"]: m["step_ms"]["median"] for m in d["modes"]}
    return by["finetune"] / by["transfer"] if "finetune" in by and "transfer" in by else float("nan")
print(f"\nfinetune/transfer step-time ratio: frostgrad {speedup(ours):.2f}x, PyTorch {speedup(theirs):.2f}x")
PY
