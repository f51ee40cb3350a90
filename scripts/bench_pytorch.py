#!/usr/bin/env python3
"""PyTorch side of `frostgrad bench`: the same modes, batch, size and phases,
written in the same JSON schema, so `scripts/compare.sh` can put both side
by side.

Each step: forward in train mode (BatchNorm uses batch statistics), mean
cross-entropy, backward, SGD(lr=0.01, momentum=0.9) over the trainable
parameters. `inference` is a forward under `torch.no_grad()` in eval mode.
Timing is wall-clock per phase (with `torch.cuda.synchronize()` on CUDA).

    python3 scripts/bench_pytorch.py --device cpu --batch 8 --size 224 --json out.json

On CUDA, cuDNN is used with TF32 off (fp32 arithmetic, like ours).
On the CPU the JSON's `cpu_isa` records what ATen and oneDNN actually ran
(scripts/torch_isa.py); `scripts/compare.sh --isa avx2` limits both through
the environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA).

`flop_count` is "direct-equivalent", as in `frostgrad bench --json`: the
GFLOP fields count 2 per multiply-add of a direct convolution
(`forward_macs`), whichever algorithm ran. `conv_winograd` says whether
PyTorch ran the stride-1 3x3 convolution through Winograd: on the CPU, "on"
or "off" from oneDNN's implementation of the probed 3x3 stride-1
convolution (`cpu_isa.onednn_conv`, e.g. "jit:avx2"; "unknown" where it
could not be read); on CUDA "unknown" (cuDNN picks its algorithm per shape
and it is not read back). Ours is "auto", "on" or "off" (the switch).
"""

import argparse
import fnmatch
import json
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    import torchvision
except ImportError as e:  # the GPU box may lack PyTorch
    print(f"error: PyTorch/torchvision not available: {e}", file=sys.stderr)
    sys.exit(2)

import torch_isa  # noqa: E402  (scripts/, next to this file)

MODES = {
    "finetune": "*",
    "partial": "layer3.*,layer4.*,fc.*",
    "layer4": "layer4.*,fc.*",
    "transfer": "fc.*",
    "inference": None,
}


def glob_match(name, globs):
    # frostgrad's globs: `*` matches any characters, dots included; fnmatch agrees.
    return any(fnmatch.fnmatchcase(name, g) for g in globs.split(","))


def forward_macs(model, images):
    """Multiply-accumulates of conv and linear layers for one forward pass."""
    macs = []

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        macs.append(out.numel() * k)

    def linear_hook(m, inp, out):
        macs.append(out.numel() * m.in_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model.eval()
        model(images)
    for h in hooks:
        h.remove()
    return sum(macs)


def winograd_of(cpu_isa):
    """"on"/"off": whether oneDNN ran the probed stride-1 3x3 convolution
    through Winograd (its implementation name says "wino"); "unknown" where
    that was not read (CUDA, or no verbose line)."""
    impl = (cpu_isa or {}).get("onednn_conv", "?")
    if impl == "?":
        return "unknown"
    return "on" if "wino" in impl else "off"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_mode(name, globs, model, images, labels, steps, warmup, device):
    for p_name, p in model.named_parameters():
        p.requires_grad_(globs is not None and glob_match(p_name, globs))
        p.grad = None
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.01, momentum=0.9) if trainable else None

    fwd, bwd, optm, total = [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        if globs is None:
            model.eval()
            with torch.no_grad():
                model(images)
            sync(device)
            t1 = t2 = t3 = time.perf_counter()
        else:
            model.train()
            loss = F.cross_entropy(model(images), labels)
            sync(device)
            t1 = time.perf_counter()
            loss.backward()
            sync(device)
            t2 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            t3 = time.perf_counter()
        if i >= warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            optm.append((t3 - t2) * 1e3)
            total.append((t3 - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "name": name,
        "trainable": globs,
        "step_ms": {"median": statistics.median(total), "min": min(total), "max": max(total)},
        "forward_ms": statistics.median(fwd),
        "backward_ms": statistics.median(bwd),
        "optimizer_ms": statistics.median(optm),
        "peak_bytes": peak,
        "computed": None,
        "skipped": None,
        "trainable_parameters": sum(p.numel() for p in trainable),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="finetune,partial,layer4,transfer,inference")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            sys.exit(2)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    fwd_gflop = 2 * forward_macs(model, images) / 1e9

    results = []
    for name in args.modes.split(","):
        if name not in MODES:
            print(f"error: unknown mode {name!r}; choose from {', '.join(MODES)}", file=sys.stderr)
            sys.exit(2)
        r = run_mode(name, MODES[name], model, images, labels, args.steps, args.warmup, device)
        r["forward_gflop"] = fwd_gflop
        results.append(r)
        print(f"{name:>10}: {r['step_ms']['median']:8.1f} ms/step  (fwd {r['forward_ms']:.1f}, "
              f"bwd {r['backward_ms']:.1f}, opt {r['optimizer_ms']:.1f})", file=sys.stderr)

    cpu_isa = torch_isa.report() if args.device == "cpu" else None
    out = {
        "framework": f"pytorch {torch.__version__}",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_isa": cpu_isa,
        "conv_winograd": winograd_of(cpu_isa),
        "flop_count": "direct-equivalent",
        "batch": args.batch,
        "size": args.size,
        "modes": results,
    }
    text = json.dumps(out, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
