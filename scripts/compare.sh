#!/usr/bin/env bash
# Runs `frostgrad bench` and scripts/bench_pytorch.py with the same settings,
# one after the other on the same machine, and prints ours / PyTorch per mode
# and each side's speedup of transfer learning over fine-tuning.
#
#   scripts/compare.sh [--device cpu|cuda] [--batch N] [--size S] [--steps K] [--warmup W]
#                      [--modes a,b] [--isa native|avx2|avx512] [--threads N]
#
# --threads N runs both sides on N threads (RAYON_NUM_THREADS for ours,
# torch.set_num_threads for PyTorch); default: each side's own default. On a
# machine shared with other jobs, one thread per side is the steadier
# comparison: PyTorch's OpenMP threads wait for each other at every
# parallel region, so another job's load costs it far more than its share.
#
# --isa avx2 limits both sides to AVX2+FMA: ours with FROSTGRAD_SIMD=avx2,
# PyTorch with ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2. On an
# AVX-512 machine that is a proxy for an AVX2-only CPU (same cores, caches,
# memory and clocks; a real AVX2-only CPU differs in all of those). Both
# JSON files record what ran: `simd_path` (ours), `cpu_isa` (PyTorch's ATen
# capability and oneDNN's convolution implementation, read back, not assumed).
#
# Environment: PYTHON (default python3, must have torch + torchvision),
# FROSTGRAD (default target/release/frostgrad, built if missing), OUT (default target/compare).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu batch="" size=224 steps=5 warmup=1 isa=native modes="" threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --isa) isa=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$batch" ] || { [ "$device" = cuda ] && batch=64 || batch=8; }
PYTHON=${PYTHON:-python3}
FROSTGRAD=${FROSTGRAD:-target/release/frostgrad}
OUT=${OUT:-target/compare}
mkdir -p "$OUT"
[ -x "$FROSTGRAD" ] || cargo build --release --quiet

# Each side gets only its own variables, so neither run sees the other's.
ours_env=() torch_env=()
case "$isa" in
  native) ;;
  avx2) ours_env=(FROSTGRAD_SIMD=avx2) torch_env=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) ;;
  avx512) ours_env=(FROSTGRAD_SIMD=avx512) torch_env=(ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE) ;;
  *) echo "error: --isa $isa: choose native, avx2 or avx512" >&2; exit 2 ;;
esac

common=(--device "$device" --batch "$batch" --size "$size" --steps "$steps" --warmup "$warmup")
[ -z "$modes" ] || common+=(--modes "$modes")
torch_threads=()
if [ -n "$threads" ]; then
  ours_env+=(RAYON_NUM_THREADS="$threads")
  torch_threads=(--threads "$threads")
fi
echo "== frostgrad (isa $isa)" >&2
env "${ours_env[@]}" "$FROSTGRAD" bench "${common[@]}" --json "$OUT/frostgrad.json" --svg "$OUT/frostgrad.svg"
echo "== PyTorch (isa $isa)" >&2
env "${torch_env[@]}" "$PYTHON" scripts/bench_pytorch.py "${common[@]}" "${torch_threads[@]}" --json "$OUT/pytorch.json"

echo
"$PYTHON" scripts/compare_json.py "$OUT/frostgrad.json" "$OUT/pytorch.json"
