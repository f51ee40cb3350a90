#!/usr/bin/env python3
"""1 -> N thread scaling of a frostgrad training step, per phase and per layer (issue 9, item 4).

Step: runs `frostgrad bench --device cpu` with RAYON_NUM_THREADS=1 and =N
alternately (`--rounds` times each), and prints per mode and phase the
median milliseconds at 1 and N threads, the speedup and the parallel
efficiency (speedup / N). Per layer (`--layers`): the same for every case
of `examples/layer_timing.rs`, so that a kernel that leaves a core idle
shows up by name (speedup near 1).

    cargo build --release --bin frostgrad --example layer_timing
    python3 scripts/thread_scaling.py [--threads 2] [--modes finetune,transfer]
        [--steps 3] [--rounds 2] [--layers] [--filter bn]

On a machine shared with other work the N-thread figures are the ones
disturbed first (a busy core is one the step cannot have): say so with the
numbers, and read them with the load average this prints.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "frostgrad"
LAYERS = ROOT / "target" / "release" / "examples" / "layer_timing"


def bench(threads, modes, steps):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        cmd = [str(BIN), "bench", "--device", "cpu", "--modes", modes,
               "--steps", str(steps), "--warmup", "1", "--json", f.name]
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        return json.loads(Path(f.name).read_text())


def layers(threads, reps, flt):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(LAYERS), str(reps)] + ([flt] if flt else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["cases"]


def row(name, one, many, n):
    a, b = statistics.median(one), statistics.median(many)
    speedup = a / b if b > 0 else float("nan")
    print(f"{name:<32} {a:>9.2f} {b:>9.2f} {speedup:>7.2f}x {speedup / n:>6.0%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", default="finetune,transfer")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", action="store_true", help="also per layer_timing case")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--filter")
    args = ap.parse_args()
    n = args.threads
    head = f"{'':<32} {'1 thr ms':>9} {n:>2} thr ms {'speedup':>8} {'eff':>6}"
    phases = {}
    for _ in range(args.rounds):
        for t in (1, n):
            for m in bench(t, args.modes, args.steps)["modes"]:
                for ph in ("step", "forward", "backward", "optimizer"):
                    v = m["step_ms"]["median"] if ph == "step" else m[f"{ph}_ms"]
                    phases.setdefault((m["name"], ph), {1: [], n: []})[t].append(v)
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} alternating runs")
    print(head)
    for (mode, ph), s in phases.items():
        row(f"{mode} {ph}", s[1], s[n], n)
    if args.layers:
        cases = {}
        for _ in range(args.rounds):
            for t in (1, n):
                for c in layers(t, args.reps, args.filter):
                    cases.setdefault((c["op"], c["shape"]), {1: [], n: []})[t] += c["wall_ms"]
        print("\nper layer_timing case (wall ms)")
        print(head)
        for (op, shape), s in cases.items():
            row(f"{op} {shape}", s[1], s[n], n)


if __name__ == "__main__":
    main()
