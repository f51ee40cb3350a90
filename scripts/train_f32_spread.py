"""How far PyTorch's own float32 runs of `train_reference.py`'s fine-tune
case land from its float64 run, three ways: oneDNN on at 2 and 1 threads,
and oneDNN off (PyTorch's native convolution). Prints, per tensor named
below and over all tensors, ||f32 - f64|| / ||f64||. Used to judge
`tests/train_parity.rs`'s bound (BENCHMARKS.md, issue 9 item 26): the
fixture's `f32err` is the first variant only.

    cd scripts && ../.venv/bin/python train_f32_spread.py

`.venv` (in the repository root) is a virtual environment with PyTorch 2.9.1 (the version the figures
and fixtures were made with):
`python3 -m venv .venv && .venv/bin/pip install torch==2.9.1 torchvision==0.24.1 numpy safetensors`.
"""

import torch

import train_reference as tr

NAMES = ["layer2.1.bn1.running_mean", "layer2.0.bn2.bias", "layer4.1.bn2.weight", "fc.weight", "conv1.weight"]


def main():
    case = tr.CASES[0]
    ref, _ = tr.train(case, torch.float64)
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    runs["onednn, 2 threads"], _ = tr.train(case, torch.float32)
    torch.set_num_threads(1)
    runs["onednn, 1 thread"], _ = tr.train(case, torch.float32)
    torch.set_num_threads(2)
    with torch.backends.mkldnn.flags(enabled=False):
        runs["native conv, 2 threads"], _ = tr.train(case, torch.float32)
    torch.set_num_threads(threads)

    def rel(name, state):
        r = ref[name].double().reshape(-1)
        n = float(r.norm())
        d = float((state[name].double().reshape(-1) - r).norm())
        return d / n if n > 0 else d

    for name in NAMES:
        print(name, {k: f"{rel(name, v):.2e}" for k, v in runs.items()})
    elem = ref["layer2.1.bn1.running_mean"].reshape(-1)[76]
    print("layer2.1.bn1.running_mean[76] float64", f"{float(elem):.6e}",
          {k: f"{float(v['layer2.1.bn1.running_mean'].reshape(-1)[76]):.6e}" for k, v in runs.items()})
    print("worst over all tensors", {k: f"{max(rel(n, v) for n in ref):.2e}" for k, v in runs.items()})


if __name__ == "__main__":
    main()
