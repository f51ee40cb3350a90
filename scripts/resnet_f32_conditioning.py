#!/usr/bin/env python3
"""How far PyTorch's own float32 one-step result is from its float64 one, per
ResNet-18 case in gen_references.RESNET_CASES (max relative L2 error over
logits, loss, gradients, parameters, buffers). A case where float32 PyTorch
is not well inside the 1e-4 / 1e-3 tolerances is ill-conditioned and would
test float32 rounding rather than frostgrad; this is how the case sizes in
gen_references.py were chosen.

    /opt/torchenv/bin/python scripts/resnet_f32_conditioning.py
"""

import os
import sys

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_references as G  # noqa: E402


def step(weights, dtype, size, batch, trainable, eval_mode):
    m = torchvision.models.resnet18(num_classes=G.NUM_CLASSES).to(dtype)
    m.load_state_dict({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in weights.items()})
    globs = trainable.split(",")
    params = []
    for n, p in m.named_parameters():
        p.requires_grad_(G.matches_any(n, globs))
        if p.requires_grad:
            params.append(p)
    m.eval() if eval_mode else m.train()
    x, labels = G.formula_batch(batch, size)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    logits = m(x.to(dtype))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.double().clone() for n, p in m.named_parameters() if p.grad is not None}
    opt.step()
    params = {n: p.detach().double() for n, p in m.named_parameters()}
    buffers = {n: b.double() for n, b in m.named_buffers()}
    return logits.detach().double(), loss.detach().double(), grads, params, buffers


def rel(a, b):
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def main():
    torch.set_default_dtype(torch.float64)
    weights = G.formula_weights(G.resnet_layout())
    for name, *case in G.RESNET_CASES:
        ref = step(weights, torch.float64, *case)
        f32 = step(weights, torch.float32, *case)
        worst = lambda i: max((rel(f32[i][n], ref[i][n]), n) for n in ref[i])  # noqa: E731
        print(f"{name}: logits {rel(f32[0], ref[0]):.1e} loss {rel(f32[1], ref[1]):.1e} "
              f"grad {worst(2)} param {worst(3)} buffer {worst(4)}")


if __name__ == "__main__":
    main()
