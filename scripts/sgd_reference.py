#!/usr/bin/env python3
"""Prints torch.optim.SGD's parameters after 3 steps, for src/optim/sgd.rs's tests.

    /opt/torchenv/bin/python scripts/sgd_reference.py

Written with PyTorch 2.9.1. The same initial parameter and per-step gradients
are hard-coded in the Rust test; the printed values are pasted there.
"""

import torch

P0 = [1.0, -2.0, 0.5, 0.0]
GRADS = [[0.5, 0.25, -1.0, 2.0], [-0.75, 0.5, 0.125, 1.0], [0.3, -0.6, 0.9, -1.2]]
CASES = {
    "plain": dict(lr=0.1),
    "momentum_weight_decay": dict(lr=0.1, momentum=0.9, weight_decay=0.1),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "dampening": dict(lr=0.2, momentum=0.5, dampening=0.3, weight_decay=0.01),
}

for name, kw in CASES.items():
    p = torch.tensor(P0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.SGD([p], **kw)
    out = []
    for g in GRADS:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        out.append([float(x) for x in p.detach()])
    print(name, kw)
    for step in out:
        print("    [" + ", ".join(f"{v:.9e}" for v in step) + "],")
