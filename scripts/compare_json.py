#!/usr/bin/env python3
"""Prints frostgrad's and PyTorch's benchmark JSON side by side (the schema
`frostgrad bench --json` and `scripts/bench_pytorch.py --json` share):
ours / PyTorch per mode, the phase split, and each side's speedup of
transfer learning over fine-tuning. Standard library only.

    python3 scripts/compare_json.py frostgrad.json pytorch.json
"""
import json
import sys


def speedup(d):
    by = {m["name"]: m["step_ms"]["median"] for m in d["modes"]}
    return by["finetune"] / by["transfer"] if "finetune" in by and "transfer" in by else float("nan")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
    t = {m["name"]: m for m in theirs["modes"]}
    print(f"frostgrad vs {theirs['framework']} on {theirs['device']}, "
          f"batch {ours['batch']} at {ours['size']}px (median ms per step)")
    isa = theirs.get("cpu_isa")
    if isa:
        print(f"ISA: frostgrad {ours.get('simd_path', '?')}; PyTorch ATen {isa['aten']}, "
              f"oneDNN {isa['onednn_isa']} (convolution {isa['onednn_conv']}); CPU {ours.get('cpu_model', '?')}")
    if "conv_winograd" in ours or "conv_winograd" in theirs:
        print(f"Winograd 3x3: frostgrad {ours.get('conv_winograd', '?')}, "
              f"PyTorch {theirs.get('conv_winograd', '?')}; GFLOP counted "
              f"{ours.get('flop_count', '?')} / {theirs.get('flop_count', '?')}")
    print(f"{'mode':<10} {'frostgrad':>10} {'PyTorch':>10} {'ours/theirs':>12} "
          f"{'fwd ours/theirs':>16} {'bwd ours/theirs':>16} {'peak MiB ours/theirs':>21}")
    for m in ours["modes"]:
        p = t.get(m["name"])
        if p is None:
            continue
        a, b = m["step_ms"]["median"], p["step_ms"]["median"]
        peak_theirs = "-" if p.get("peak_bytes") is None else f"{p['peak_bytes'] / 2**20:.1f}"
        print(f"{m['name']:<10} {a:>10.1f} {b:>10.1f} {a / b:>11.2f}x "
              f"{m['forward_ms']:>7.1f}/{p['forward_ms']:<8.1f} {m['backward_ms']:>7.1f}/{p['backward_ms']:<8.1f} "
              f"{m['peak_bytes'] / 2**20:>10.1f}/{peak_theirs:<10}")
    print(f"\nfinetune/transfer step-time ratio: frostgrad {speedup(ours):.2f}x, PyTorch {speedup(theirs):.2f}x")


if __name__ == "__main__":
    main()
