#!/usr/bin/env python3
"""Writes torchvision ResNet-18's state_dict layout for `tests/nn_resnet.rs`.

Run from the repository root with the PyTorch environment (CI only reads the
committed output):

    /opt/torchenv/bin/python scripts/resnet18_names.py

Written with PyTorch 2.9.1 and torchvision 0.24.1. Output:
``tests/fixtures/nn/resnet18_names.txt``, one line per state_dict entry in
``resnet18().state_dict()`` order: ``<param|buffer> <name> <dtype> <shape>``,
where shape is comma-separated (``-`` for a 0-d tensor). Parameters appear in
the same relative order as ``named_parameters()``, which the script asserts.
"""

import os

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "nn", "resnet18_names.txt")


def main():
    model = torchvision.models.resnet18()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = model.state_dict()
    # named_parameters() must be the parameters of state_dict() in order.
    assert [k for k in state if k in params] == list(params)
    assert [k for k in state if k in buffers] == list(buffers)
    lines = []
    for name, t in state.items():
        kind = "param" if name in params else "buffer"
        dtype = {torch.float32: "f32", torch.int64: "i64"}[t.dtype]
        shape = ",".join(str(d) for d in t.shape) or "-"
        lines.append(f"{kind} {name} {dtype} {shape}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(f"# torchvision {torchvision.__version__} resnet18().state_dict(); scripts/resnet18_names.py\n")
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} entries to {OUT}")


if __name__ == "__main__":
    main()
