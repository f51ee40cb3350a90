#!/usr/bin/env python3
"""A/B of two builds of `examples/layer_timing.rs` (what a kernel change bought).

Runs binary A and binary B alternately (A B A B ...), each run timing every
case `--reps` times, and prints per case the medians over all runs of wall
and CPU time (all threads) for A and B and B/A. Alternating spreads a
change in the machine's load over both sides; on a shared machine the CPU
time is the steadier figure.

    git stash; cargo build --release --example layer_timing
    cp target/release/examples/layer_timing target/lt_a; git stash pop
    cargo build --release --example layer_timing
    python3 scripts/ab_layers.py target/lt_a target/release/examples/layer_timing \\
        [--rounds 4] [--reps 5] [--filter bn] [--threads 2]
"""

import argparse
import json
import os
import statistics
import subprocess


def run(binary, reps, flt, threads):
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    cmd = [binary, str(reps)] + ([flt] if flt else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["cases"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--filter")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    samples = {}
    order = []
    for _ in range(args.rounds):
        for side, binary in (("a", args.a), ("b", args.b)):
            for case in run(binary, args.reps, args.filter, args.threads):
                key = (case["op"], case["shape"])
                if key not in samples:
                    order.append(key)
                    samples[key] = {"bytes": case["bytes"], "flops": case["flops"]}
                s = samples[key].setdefault(side, {"wall": [], "cpu": []})
                s["wall"] += case["wall_ms"]
                s["cpu"] += case["cpu_ms"]
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} alternating runs x {args.reps}")
    print(
        f"{'op':<13} {'shape':<17} {'A wall':>8} {'B wall':>8} {'B/A':>6} "
        f"{'A cpu':>8} {'B cpu':>8} {'B/A':>6} {'B GB/s':>7}"
    )
    for key in order:
        s = samples[key]
        if "a" not in s or "b" not in s:
            continue
        aw, bw = (statistics.median(s[x]["wall"]) for x in "ab")
        ac, bc = (statistics.median(s[x]["cpu"]) for x in "ab")
        gbs = s["bytes"] / bw / 1e6 if not s["flops"] else float("nan")
        print(
            f"{key[0]:<13} {key[1]:<17} {aw:>8.2f} {bw:>8.2f} {bw / aw:>5.2f}x "
            f"{ac:>8.2f} {bc:>8.2f} {bc / ac:>5.2f}x {gbs:>7.1f}"
        )


if __name__ == "__main__":
    main()
