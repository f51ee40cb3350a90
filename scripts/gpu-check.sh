#!/usr/bin/env bash
# GPU check in two halves, for a GPU machine with no Rust toolchain and no
# network:
#
#   scripts/gpu-check.sh bundle [DIR]   (here, with cargo) builds DIR
#       (default target/gpu-bundle): the release `frostgrad` binary, the CUDA
#       test executables, scripts/bench_pytorch.py when present, and run.sh.
#       Binaries are stripped; the bundle must stay under 64 MiB.
#   DIR/run.sh                          (there) runs, on the real GPU:
#       every CUDA test (each kernel vs the CPU backend, the ResNet-18 step
#       vs the CPU in four freezing modes, with their skip counts),
#       `frostgrad bench --device cuda` and `scripts/bench_pytorch.py
#       --device cuda` (PyTorch + cuDNN, TF32 off) side by side, and writes
#       a report to $OUT/gpu-report.md (or ./gpu-report/gpu-report.md).
#       Whatever is missing there (a bench command, PyTorch) is reported as
#       missing, never as passed.
#
# Bundle settings: FROSTGRAD_GPU_CHECK_BIN (a built frostgrad binary) and
# FROSTGRAD_GPU_CHECK_TESTS (space-separated test executables) skip the
# cargo builds. run.sh settings: FROSTGRAD_CUDA (default `real`; `emu` with
# the emulation on LD_LIBRARY_PATH runs everything through it, as
# tests/gpu_check.rs does), PYTHON (default python3), FROSTGRAD_BENCH_ARGS,
# FROSTGRAD_GPU_CHECK_TEST_ARGS (extra arguments for every test executable,
# e.g. a name filter), FROSTGRAD_GPU_CHECK_SWEEP_SIZES (sizes of the accuracy
# sweep, default 57,96,128; empty: no sweep).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

case "${1:-}" in
  bundle) ;;
  *) echo "usage: $0 bundle [DIR]   (then run DIR/run.sh on the GPU machine)" >&2; exit 2 ;;
esac
dir=${2:-$root/target/gpu-bundle}
rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/tests" "$dir/scripts"
cd "$root"

if [ -n "${FROSTGRAD_GPU_CHECK_BIN:-}" ]; then
  cp "$FROSTGRAD_GPU_CHECK_BIN" "$dir/bin/frostgrad"
else
  cargo build --release --bin frostgrad
  cp target/release/frostgrad "$dir/bin/"
fi
if [ -n "${FROSTGRAD_GPU_CHECK_TESTS+set}" ]; then
  for t in $FROSTGRAD_GPU_CHECK_TESTS; do cp "$t" "$dir/tests/$(basename "$t" | sed 's/-[0-9a-f]*$//')"; done
else
# Test executables of the CUDA test targets, found from cargo's JSON messages.
cargo test --release --no-run --message-format=json --test cuda_parity --test cuda_resnet_step \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do cp "$exe" "$dir/tests/$name"; done
fi
cp scripts/bench_pytorch.py scripts/compare_json.py scripts/check_step_vs_pytorch.py "$dir/scripts/"
for f in "$dir"/bin/* "$dir"/tests/*; do strip --strip-debug "$f" 2>/dev/null || true; done
git rev-parse HEAD > "$dir/COMMIT" 2>/dev/null || echo unknown > "$dir/COMMIT"

cat > "$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the CUDA checks of this bundle on this machine's GPU; see the report.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$PWD/gpu-report}
mkdir -p "$out"
report="$out/gpu-report.md"
# Never fall back to the emulation unless asked to (FROSTGRAD_CUDA=emu).
export FROSTGRAD_CUDA=${FROSTGRAD_CUDA:-real}
PYTHON=${PYTHON:-python3}
read -r -a test_args <<< "${FROSTGRAD_GPU_CHECK_TEST_ARGS:-}"
failures=0
section() { printf '\n## %s\n\n' "$1" >> "$report"; }
# run NAME CMD...: runs CMD, keeps its full log, puts the tail and the exit code in the report.
run() {
  local name=$1; shift
  local log="$out/$name.log"
  local start=$(date +%s)
  "$@" > "$log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then echo "- **$name**: passed (${secs} s)" >> "$report";
  else echo "- **$name**: FAILED, exit $rc (${secs} s)" >> "$report"; failures=$((failures + 1)); fi
  { echo; echo '```'; tail -n 40 "$log"; echo '```'; } >> "$report"
  return $rc
}

echo "# frostgrad GPU check ($(cat "$here/COMMIT"), $(date -u +%FT%TZ))" > "$report"
if [ "$FROSTGRAD_CUDA" = emu ]; then
  echo "Run through the host emulation of CUDA (FROSTGRAD_CUDA=emu): results are checked, times are not GPU times." >> "$report"
fi
section "Machine"
{ echo '```'; nvidia-smi 2>&1 | head -n 20 || echo "nvidia-smi not available"; echo '```'; } >> "$report"

section "CUDA tests (every kernel vs the CPU; ResNet-18 step vs the CPU with skip counts)"
ntests=0
for t in "$here"/tests/*; do
  [ -e "$t" ] || continue
  ntests=$((ntests + 1))
  run "test-$(basename "$t")" "$t" --test-threads=1 --nocapture "${test_args[@]}"
done
if [ $ntests -eq 0 ]; then
  echo "- **CUDA tests**: NOT RUN: no test executables in the bundle" >> "$report"
  failures=$((failures + 1))
fi

section "frostgrad step on CUDA vs PyTorch float64, next to PyTorch float32's own error (random torchvision weights)"
have_torch=0
"$PYTHON" -c 'import torch, torchvision, safetensors' > /dev/null 2>&1 && have_torch=1
if [ $have_torch -eq 1 ]; then
  for trainable in '*' 'conv1.*,bn1.*,fc.*' 'fc.*'; do
    run "step-vs-pytorch-$(echo "$trainable" | tr -c 'a-z0-9\n' '_')" "$PYTHON" "$here/scripts/check_step_vs_pytorch.py" \
      --device cuda --binary "$here/bin/frostgrad" --size 64 --batch 4 --trainable "$trainable" --diagnose
  done
  sweep_sizes=${FROSTGRAD_GPU_CHECK_SWEEP_SIZES-57,96,128}
  if [ -n "$sweep_sizes" ]; then
    run "step-vs-pytorch-sweep" "$PYTHON" "$here/scripts/check_step_vs_pytorch.py" --sweep --devices cuda \
      --sizes "$sweep_sizes" --seeds 0,1 --binary "$here/bin/frostgrad" --json "$out/accuracy-sweep.json" --diagnose
  fi
else
  echo "- **step vs PyTorch**: NOT RUN: PyTorch, torchvision or safetensors not available" >> "$report"
  failures=$((failures + 1))
fi

# FROSTGRAD_BENCH_ARGS overrides the settings (e.g. a tiny run through the emulation).
read -r -a bench_args <<< "${FROSTGRAD_BENCH_ARGS:---device cuda --batch 64 --size 224 --steps 20 --warmup 3}"
section "Benchmarks: frostgrad vs PyTorch + cuDNN (fp32, TF32 off): ${bench_args[*]}"
run "frostgrad-bench-cuda" "$here/bin/frostgrad" bench "${bench_args[@]}" \
  --json "$out/frostgrad-cuda.json" --svg "$out/frostgrad-cuda.svg"
if "$PYTHON" -c 'import torch, torchvision; assert torch.cuda.is_available()' > /dev/null 2>&1; then
  run "pytorch-bench-cuda" "$PYTHON" "$here/scripts/bench_pytorch.py" "${bench_args[@]}" --json "$out/pytorch-cuda.json"
  if [ -e "$out/frostgrad-cuda.json" ] && [ -e "$out/pytorch-cuda.json" ]; then
    run "side-by-side" "$PYTHON" "$here/scripts/compare_json.py" "$out/frostgrad-cuda.json" "$out/pytorch-cuda.json"
  fi
else
  echo "- **PyTorch bench**: NOT RUN: PyTorch (with torchvision and CUDA) not available" >> "$report"
  failures=$((failures + 1))
fi

section "Summary"
if [ $failures -eq 0 ]; then echo "All checks passed." >> "$report"; else echo "$failures check(s) failed or did not run." >> "$report"; fi
echo "report: $report"
exit $(( failures > 0 ))
RUN
chmod +x "$dir/run.sh"

size=$(du -sm "$dir" | cut -f1)
echo "bundle: $dir (${size} MiB)"
ls -l "$dir/bin" "$dir/tests"
if [ "$size" -gt 64 ]; then
  echo "gpu-check: bundle is ${size} MiB, over the 64 MiB limit" >&2
  exit 1
fi
echo "copy it to the GPU machine and run: $dir/run.sh   (report in \$OUT or ./gpu-report)"
