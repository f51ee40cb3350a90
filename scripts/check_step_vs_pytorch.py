#!/usr/bin/env python3
"""Checks `frostgrad step` against PyTorch (float64) on random torchvision
ResNet-18 weights and a random batch, the way the issue's held-out check does.

    /opt/torchenv/bin/python scripts/check_step_vs_pytorch.py --size 57 --batch 3 \
        --trainable 'conv1.*,bn1.*,fc.*' [--eval] [--device cpu|cuda] [--binary target/release/frostgrad]

Prints the worst relative L2 error per output group and exits non-zero when
logits/loss/params/buffers exceed 1e-4 or a gradient exceeds 1e-3, when a
frozen parameter has a `grad.` entry, or when a trainable one lacks it.
"""

import argparse
import fnmatch
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--trainable", default="*")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--binary", default="target/release/frostgrad")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=args.classes)
    # Non-trivial running statistics, so eval mode and the momentum update are tested.
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, args.classes, (args.batch,))

    tmp = tempfile.mkdtemp(prefix="frostgrad-check-")
    wpath, bpath, opath = (os.path.join(tmp, n) for n in ("w.safetensors", "b.safetensors", "o.safetensors"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, wpath)
    save_file({"images": images, "labels": labels}, bpath)

    cmd = [args.binary, "step", "--weights", wpath, "--batch", bpath, "--trainable", args.trainable,
           "--lr", str(args.lr), "--momentum", str(args.momentum), "--weight-decay", str(args.weight_decay),
           "--out", opath, "--device", args.device]
    if args.eval:
        cmd.append("--eval")
    subprocess.run(cmd, check=True)
    ours = load_file(opath)

    # Reference: the same step in float64.
    ref = model.double()
    globs = args.trainable.split(",")
    trainable = set()
    for name, p in ref.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, g) for g in globs))
        if p.requires_grad:
            trainable.add(name)
    ref.train(not args.eval)
    logits = ref(images.double())
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=args.lr,
                          momentum=args.momentum, weight_decay=args.weight_decay)
    opt.step()

    expected = {"logits": logits.detach(), "loss": loss.detach()}
    expected.update({f"grad.{n}": g for n, g in grads.items()})
    expected.update({f"param.{n}": p.detach() for n, p in ref.named_parameters()})
    expected.update({f"buffer.{n}": b for n, b in ref.named_buffers()})

    failures = []
    worst = {}
    for key, want in expected.items():
        if key not in ours:
            failures.append(f"missing output {key}")
            continue
        got = ours[key].double()
        err = ((got - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
        group = key.split(".")[0]
        tol = 1e-3 if group == "grad" else 1e-4
        if err > tol:
            failures.append(f"{key}: relative L2 error {err:.2e} > {tol:.0e}")
        worst[group] = max(worst.get(group, 0.0), err)
    extra = sorted(k for k in ours if k.startswith("grad.") and k[5:] not in trainable)
    failures += [f"frozen parameter has a gradient: {k}" for k in extra]

    for group, err in sorted(worst.items()):
        print(f"{group:>7}: worst relative L2 error {err:.2e}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures[:20]), file=sys.stderr)
        sys.exit(1)
    print("ok: matches PyTorch float64")


if __name__ == "__main__":
    main()
