#!/usr/bin/env python3
"""Per-layer comparison of frostgrad's CPU kernels with PyTorch's (issue 9, item 6).

Times every distinct ResNet-18 layer of a training step at batch 8, 224x224
(or `--batch N --size S`):
each convolution shape (forward, input gradient, weight gradient), batch norm
(training forward with the running-statistics update, and the full backward;
plain and followed by a fused ReLU), the residual tail (add + ReLU, ReLU
backward, the gradient sum at a block's input), the stem's max pool (forward
and backward) and SGD with momentum over all parameters: frostgrad's half
with `examples/layer_timing.rs`, PyTorch's here, in one run, with the same
thread count on both sides. Rounds alternate the two sides so that a change
in the machine's load falls on both; each figure is the median of all
repeats of all rounds.

Prints per case the medians, ours/PyTorch, and the achieved GFLOP/s
(convolutions) or GB/s (compulsory bytes: every input read once and every
output written once, the same count for both sides), then per op kind the
total a step spends (occurrences x median).

    .venv/bin/python scripts/compare_layers.py [--reps 5] [--rounds 2]
        [--threads N] [--filter bn] [--batch 8] [--size 224] [--json out.json] [--no-build]
        [--isa native|avx2|avx512]

`--isa avx2` limits both sides to AVX2+FMA (ours: FROSTGRAD_SIMD=avx2;
PyTorch: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, see
scripts/torch_isa.py); on an AVX-512 machine that is a proxy for an
AVX2-only CPU, not one. The header and the JSON name what each side ran.

It asserts nothing: speed is reported, never tested.

`.venv` (in the repository root) is a virtual environment with PyTorch 2.9.1 (the version the figures
and fixtures were made with):
`python3 -m venv .venv && .venv/bin/pip install torch==2.9.1 torchvision==0.24.1 numpy safetensors`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch_isa  # scripts/, next to this file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "target" / "release" / "examples" / "layer_timing"


def run_frostgrad(reps, threads, flt, batch, size):
    env = dict(
        os.environ,
        RAYON_NUM_THREADS=str(threads),
        LAYER_BATCH=str(batch),
        LAYER_SIZE=str(size),
    )
    cmd = [str(EXAMPLE), str(reps)] + ([flt] if flt else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def torch_case(torch, case):
    """A closure running the PyTorch equivalent of one frostgrad case."""
    aten = torch.ops.aten
    op, p = case["op"], case["params"]

    def rand(*shape):
        return torch.rand(*shape) - 0.5

    if op.startswith("conv"):
        x, w = rand(*p["input"]), rand(*p["weight"])
        s, pad = [p["stride"]] * 2, [p["padding"]] * 2
        y = torch.nn.functional.conv2d(x, w, None, s, pad)
        dy = rand(*y.shape)
        if op == "conv_fwd":
            return lambda: torch.nn.functional.conv2d(x, w, None, s, pad)
        mask = [op == "conv_dx", op == "conv_dw", False]
        # What autograd runs for a convolution's backward.
        return lambda: aten.convolution_backward(
            dy, x, w, None, s, pad, [1, 1], False, [0, 0], 1, mask
        )
    if op.startswith("maxpool"):
        x = rand(*p["input"])
        k, s, pad = [p["kernel"]] * 2, [p["stride"]] * 2, [p["padding"]] * 2
        y, idx = aten.max_pool2d_with_indices(x, k, s, pad)
        dy = rand(*y.shape)
        if op == "maxpool_fwd":
            return lambda: aten.max_pool2d_with_indices(x, k, s, pad)
        return lambda: aten.max_pool2d_with_indices_backward(
            dy, x, k, s, pad, [1, 1], False, idx
        )
    if op == "sgd_momentum":
        params = [torch.nn.Parameter(rand(n)) for n in p["sizes"]]
        for q in params:
            q.grad = rand(q.numel())
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        opt.step()  # creates the momentum buffers, as frostgrad's warm-up does
        return opt.step
    x = rand(*p["input"])
    dy = rand(*p["input"])
    c = p["input"][1]
    gamma, beta = rand(c), rand(c)
    rm, rv = torch.zeros(c), torch.ones(c)
    if op in ("bn_fwd", "bn_relu_fwd"):
        relu = op == "bn_relu_fwd"

        def fwd():
            y = aten.native_batch_norm(x, gamma, beta, rm, rv, True, 0.1, 1e-5)[0]
            # torchvision's ReLU is in place.
            return torch.relu_(y) if relu else y

        return fwd
    if op in ("bn_bwd", "bn_relu_bwd"):
        y, mean, invstd = aten.native_batch_norm(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
        y = torch.relu(y)
        relu = op == "bn_relu_bwd"

        def bwd():
            g = aten.threshold_backward(dy, y, 0) if relu else dy
            return aten.native_batch_norm_backward(
                g, x, gamma, rm, rv, mean, invstd, True, 1e-5, [True, True, True]
            )

        return bwd
    if op == "add_relu_fwd":
        out = x.clone()

        def tail():
            # torchvision's BasicBlock: `out += identity; out = relu(out)`, in place.
            out.add_(dy)
            return torch.relu_(out)

        return tail
    if op == "relu_bwd":
        return lambda: aten.threshold_backward(dy, x, 0)
    if op == "grad_add":
        # Autograd's InputBuffer::accumulate adds in place into a gradient it
        # holds the last reference to (the conv path's), as frostgrad's does.
        acc = x.clone()
        return lambda: acc.add_(dy)
    raise SystemExit(f"compare_layers.py: no PyTorch equivalent for op {op!r}")


def time_torch(torch, cases, reps):
    out = []
    for case in cases:
        f = torch_case(torch, case)
        f()
        wall, cpu = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            f()
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
        out.append({"wall_ms": wall, "cpu_ms": cpu})
    return out


def rate(case, ms):
    """GFLOP/s for convolutions, GB/s for the memory-bound ops."""
    if case["flops"]:
        return f"{case['flops'] / ms / 1e6:7.1f} GF/s"
    return f"{case['bytes'] / ms / 1e6:7.1f} GB/s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--filter", help="only cases whose op or shape contains this")
    ap.add_argument("--json", help="write both sides' medians here")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="input resolution")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--isa", default="native", choices=sorted(torch_isa.ISA_ENV))
    args = ap.parse_args()
    # Before `import torch`: ATen and oneDNN read their limits when they load.
    torch_isa.request(args.isa)
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "--example", "layer_timing"], cwd=ROOT, check=True
        )
    import torch

    torch.set_num_threads(args.threads)
    isa = torch_isa.report()
    ours, theirs, meta = {}, {}, None
    for _ in range(args.rounds):
        doc = run_frostgrad(args.reps, args.threads, args.filter, args.batch, args.size)
        meta = doc
        for case in doc["cases"]:
            key = (case["op"], case["shape"])
            ours.setdefault(key, {"case": case, "wall": [], "cpu": []})
            ours[key]["wall"] += case["wall_ms"]
            ours[key]["cpu"] += case["cpu_ms"]
        for case, t in zip(doc["cases"], time_torch(torch, doc["cases"], args.reps)):
            key = (case["op"], case["shape"])
            theirs.setdefault(key, {"wall": [], "cpu": []})
            theirs[key]["wall"] += t["wall_ms"]
            theirs[key]["cpu"] += t["cpu_ms"]

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if "Model name" in l), "?")
    print(
        f"CPU {model}; batch {args.batch} at {args.size}x{args.size}; "
        f"{args.threads} threads both sides; frostgrad SIMD path {meta['simd']}; "
        f"PyTorch {torch.__version__} (ATen {isa['aten']}, oneDNN {isa['onednn_isa']}, "
        f"convolution {isa['onednn_conv']}); medians of {args.rounds} rounds x {args.reps} repeats; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    head = (
        f"{'op':<13} {'shape':<17} {'n':>2} {'ours ms':>8} {'torch ms':>8} {'ratio':>6} "
        f"{'cpu ratio':>9}  {'ours':>12}  {'torch':>12}"
    )
    print(head)
    rows, kinds = [], {}
    for key, o in ours.items():
        case = o["case"]
        a, b = statistics.median(o["wall"]), statistics.median(theirs[key]["wall"])
        ac, bc = statistics.median(o["cpu"]), statistics.median(theirs[key]["cpu"])
        print(
            f"{case['op']:<13} {case['shape']:<17} {case['count']:>2} {a:>8.2f} {b:>8.2f} "
            f"{a / b:>5.2f}x {ac / bc if bc else float('nan'):>8.2f}x  {rate(case, a)}  {rate(case, b)}"
        )
        k = kinds.setdefault(case["op"], [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((a, b, ac, bc)):
            k[i] += case["count"] * v
        rows.append(
            {
                "op": case["op"],
                "shape": case["shape"],
                "count": case["count"],
                "bytes": case["bytes"],
                "flops": case["flops"],
                "frostgrad_wall_ms": a,
                "pytorch_wall_ms": b,
                "frostgrad_cpu_ms": ac,
                "pytorch_cpu_ms": bc,
            }
        )
    print("\nper training step (occurrences x median; CPU time = all threads):")
    print(
        f"{'op':<13} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'ours-torch':>11} "
        f"{'ours cpu':>9} {'torch cpu':>9} {'cpu ratio':>9}"
    )
    tot = [0.0, 0.0, 0.0, 0.0]
    for op, k in list(kinds.items()) + [("total", None)]:
        if k is None:
            k = tot
        else:
            tot = [t + v for t, v in zip(tot, k)]
        a, b, ac, bc = k
        if b > 0 and bc > 0:
            print(
                f"{op:<13} {a:>9.1f} {b:>9.1f} {a / b:>5.2f}x {a - b:>+11.1f} "
                f"{ac:>9.1f} {bc:>9.1f} {ac / bc:>8.2f}x"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cpu": model,
                    "threads": args.threads,
                    "simd": meta["simd"],
                    "torch": torch.__version__,
                    "isa_requested": args.isa,
                    "torch_isa": isa,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
