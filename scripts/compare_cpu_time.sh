#!/usr/bin/env bash
# CPU time of one steady-state training step, frostgrad's and PyTorch's, for
# a machine shared with other jobs, where wall-clock steps (compare.sh)
# measure the other jobs as much as either engine.
#
#   scripts/compare_cpu_time.sh [--isa native|avx2|avx512] [--threads N]
#       [--batch N] [--size S] [--modes a,b] [--steps S1,S2] [--warmup W]
#
# Each side runs `bench` twice per mode, with W warm-up and S1, then S2,
# timed steps, under /usr/bin/time; (CPU2 - CPU1) / (S2 - S1) is one step's
# user + system time, start-up (model build, FMA probe, warm-up) cancelling.
# Runs alternate ours, PyTorch's, ours, PyTorch's. Default one thread per
# side: with more, PyTorch's idle OpenMP threads spin and count as CPU time
# (so the figure is fair only at one thread). --isa as in compare.sh.
# Environment: PYTHON (default python3), FROSTGRAD (default
# target/release/frostgrad), OUT (default target/compare_cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

isa=native threads=1 batch=8 size=224 modes=finetune,transfer,inference steps=2,6 warmup=1
while [ $# -gt 0 ]; do
  case "$1" in
    --isa) isa=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
s1=${steps%,*} s2=${steps#*,}
[ "$s2" -gt "$s1" ] 2>/dev/null || { echo "error: --steps S1,S2 needs S2 > S1" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
FROSTGRAD=${FROSTGRAD:-target/release/frostgrad}
OUT=${OUT:-target/compare_cpu}
mkdir -p "$OUT"
[ -x "$FROSTGRAD" ] || cargo build --release --quiet

ours_env=(RAYON_NUM_THREADS="$threads") torch_env=()
case "$isa" in
  native) ;;
  avx2) ours_env+=(FROSTGRAD_SIMD=avx2) torch_env=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) ;;
  avx512) ours_env+=(FROSTGRAD_SIMD=avx512) torch_env=(ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE) ;;
  *) echo "error: --isa $isa: choose native, avx2 or avx512" >&2; exit 2 ;;
esac

# CPU seconds (user + system) of one command, its output in $OUT/last.log.
# A failed run stops the script: GNU time still writes its times (after a
# "Command exited with non-zero status" line), which would otherwise give a
# ratio of nothing.
cpu() {
  if ! /usr/bin/time -f "%U %S" -o "$OUT/time" "$@" > "$OUT/last.log" 2>&1; then
    echo "error: '$*' failed; its output is in $OUT/last.log" >&2
    return 1
  fi
  tail -n 1 "$OUT/time" | awk '{ print $1 + $2 }'
}

echo "CPU $(lscpu | sed -n 's/^Model name: *//p'); isa $isa; $threads thread(s) per side;" \
  "batch $batch at ${size}px; steps $s1 and $s2 after $warmup warm-up; load average" \
  "$(cut -d' ' -f1 /proc/loadavg) at start"
printf '%-10s %14s %14s %8s\n' mode "ours CPU ms" "PyTorch CPU ms" ratio
IFS=, read -r -a list <<< "$modes"
for mode in "${list[@]}"; do
  declare -A t=()
  for s in "$s1" "$s2"; do
    common=(--device cpu --batch "$batch" --size "$size" --steps "$s" --warmup "$warmup" --modes "$mode")
    t[ours$s]=$(cpu env "${ours_env[@]}" "$FROSTGRAD" bench "${common[@]}")
    t[torch$s]=$(cpu env "${torch_env[@]}" "$PYTHON" scripts/bench_pytorch.py "${common[@]}" --threads "$threads")
  done
  awk -v a1="${t[ours$s1]}" -v a2="${t[ours$s2]}" -v b1="${t[torch$s1]}" -v b2="${t[torch$s2]}" \
    -v n=$((s2 - s1)) -v m="$mode" 'BEGIN {
      a = (a2 - a1) / n * 1000; b = (b2 - b1) / n * 1000
      printf "%-10s %14.1f %14.1f %7.2fx\n", m, a, b, a / b }'
  unset t
done
echo "load average $(cut -d' ' -f1 /proc/loadavg) at end"
