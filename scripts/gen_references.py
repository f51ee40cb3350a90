#!/usr/bin/env python3
"""Regenerates the PyTorch reference fixtures the Rust tests compare against.

Run from the repository root with the PyTorch environment on the dev machine
(CI only reads the committed output):

    /opt/torchenv/bin/python scripts/gen_references.py

Written with PyTorch 2.9.1 and torchvision 0.24.1. It writes

- ``tests/fixtures/ops/<case>.safetensors``: one small file per op case, read
  by ``tests/ops_parity.rs``. Inputs (``in.<name>``) and the cotangent ``R``
  are float32 (rounded once from a seeded generator, so both sides use the
  identical values); the references are float64: the forward output ``out``
  and ``grad.<name>`` = d(sum(out * R))/d(input) for every differentiable
  input. Batch norm in training mode also stores the updated running
  statistics as ``out.running_mean`` / ``out.running_var``. Op parameters and
  the ``grad_fn`` name PyTorch prints are in the safetensors metadata.
- ``tests/fixtures/ops/graph_names.txt``: the chain of ``grad_fn`` names of a
  small conv net, for ``tests/autograd_semantics.rs``.
- ``tests/fixtures/resnet/state_dict_layout.txt``: torchvision ResNet-18's
  ``state_dict`` names, shapes and dtypes in order. The formula weights are
  indexed by position in this list, so the Rust test needs exactly it.
- ``tests/fixtures/resnet/<case>.safetensors``: one float64 one-step SGD
  reference per ResNet-18 case, as compact summaries (see ``summarize``),
  read by ``tests/resnet_step_parity.rs``.

It also asserts the PyTorch autograd semantics that
``tests/autograd_semantics.rs`` expects of frostgrad (``check_semantics``), so
the Rust expectations are PyTorch's observed behaviour, not our guess.

The formulas below (``formula_weights``, ``formula_batch``, ``probe``,
``sample_indices``) are mirrored in ``tests/resnet_step_parity.rs``; change both.
"""

import math
import os
import sys
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save_file as _save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS_DIR = os.path.join(ROOT, "tests", "fixtures", "ops")
RESNET_DIR = os.path.join(ROOT, "tests", "fixtures", "resnet")

torch.set_default_dtype(torch.float64)


def save_file(tensors, path, metadata):
    """Writes only when the content changed: safetensors stores metadata in
    hash-map order, so rewriting identical data would still churn the bytes."""
    if os.path.exists(path):
        with safe_open(path, "pt") as f:
            same_meta = f.metadata() == metadata
        old = load_file(path)
        if same_meta and old.keys() == tensors.keys() and all(
            old[k].dtype == v.dtype and torch.equal(old[k], v) for k, v in tensors.items()
        ):
            return
    _save_file(tensors, path, metadata=metadata)


# --------------------------------------------------------------------------
# op fixtures
# --------------------------------------------------------------------------


class Gen:
    """Seeded inputs, rounded to float32 once (what the Rust side reads)."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape, scale=1.0):
        return (torch.randn(*shape, generator=self.g) * scale).float()

    def randint(self, low, high, *shape):
        """Integer-valued floats: many exact ties (max-pool) and exact zeros (relu)."""
        return torch.randint(low, high, shape, generator=self.g).float()

    def labels(self, n, classes):
        return torch.randint(0, classes, (n,), generator=self.g)


def ints(values):
    return ",".join(str(int(v)) for v in values)


def write_case(name, op, inputs, diff, forward, params, extra_outputs=None):
    """Runs ``forward`` in float64 on ``inputs``, backprops sum(out * R) and saves.

    inputs: name -> float32 (or int64) tensor, as stored.
    diff: names of the inputs that require a gradient.
    forward: fn(dict of float64 tensors) -> output; may also update running
        statistics in the dict (batch norm), which ``extra_outputs`` names.
    """
    x64 = {}
    for k, v in inputs.items():
        t = v.double() if v.is_floating_point() else v.clone()
        if k in diff:
            t.requires_grad_(True)
        x64[k] = t
    out = forward(x64)
    # crc32, not hash(): str hashes are salted per process.
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    cot = torch.randn(out.shape, generator=g).float()
    (out * cot.double()).sum().backward()

    tensors = {f"in.{k}": v.contiguous() for k, v in inputs.items()}
    tensors["cotangent"] = cot.contiguous()
    tensors["out"] = out.detach().contiguous()
    for k in diff:
        tensors[f"grad.{k}"] = x64[k].grad.detach().contiguous()
    for k in extra_outputs or []:
        tensors[f"out.{k}"] = x64[k].detach().contiguous()
    meta = {k: str(v) for k, v in params.items()}
    meta["op"] = op
    meta["torch_grad_fn"] = type(out.grad_fn).__name__
    save_file(tensors, os.path.join(OPS_DIR, f"{name}.safetensors"), metadata=meta)


def conv_cases():
    # (name, N, C, H, W, O, KH, KW, stride, padding, dilation, bias)
    cases = [
        ("conv2d_3x3_pad1_bias", 2, 3, 6, 6, 4, 3, 3, (1, 1), (1, 1), (1, 1), True),
        ("conv2d_3x3_stride2_pad1_odd_7x5", 2, 3, 7, 5, 4, 3, 3, (2, 2), (1, 1), (1, 1), False),
        ("conv2d_7x7_stride2_pad3_stem", 2, 3, 11, 9, 5, 7, 7, (2, 2), (3, 3), (1, 1), False),
        ("conv2d_3x3_dilation2_pad2", 1, 2, 9, 8, 3, 3, 3, (1, 1), (2, 2), (2, 2), True),
        ("conv2d_1x1_stride2_downsample", 2, 4, 7, 7, 6, 1, 1, (2, 2), (0, 0), (1, 1), False),
        ("conv2d_1x1_bias", 3, 5, 3, 4, 2, 1, 1, (1, 1), (0, 0), (1, 1), True),
        ("conv2d_nonsquare_2x3_mixed", 2, 3, 7, 6, 4, 2, 3, (2, 1), (0, 1), (1, 2), True),
        ("conv2d_kernel_covers_input", 2, 2, 5, 4, 3, 5, 4, (1, 1), (0, 0), (1, 1), True),
        ("conv2d_padding_3_on_3x3", 1, 2, 4, 5, 2, 3, 3, (1, 2), (3, 3), (1, 1), False),
    ]
    for i, (name, n, c, h, w, o, kh, kw, s, p, d, bias) in enumerate(cases):
        gen = Gen(100 + i)
        inputs = {"input": gen.randn(n, c, h, w), "weight": gen.randn(o, c, kh, kw, scale=0.5)}
        if bias:
            inputs["bias"] = gen.randn(o)
        diff = list(inputs)

        def fwd(t, s=s, p=p, d=d):
            return F.conv2d(t["input"], t["weight"], t.get("bias"), stride=s, padding=p, dilation=d)

        write_case(name, "conv2d", inputs, diff, fwd, {"stride": ints(s), "padding": ints(p), "dilation": ints(d)})


def batch_norm_cases():
    # (name, shape, training, affine, running stats, momentum)
    cases = [
        ("batch_norm_train_affine", (3, 4, 5, 3), True, True, True, 0.1),
        ("batch_norm_train_no_affine", (2, 3, 4, 4), True, False, True, 0.1),
        ("batch_norm_train_no_running_stats", (4, 3, 2, 3), True, True, False, 0.1),
        ("batch_norm_train_momentum_0_3", (2, 5, 3, 3), True, True, True, 0.3),
        ("batch_norm_train_two_values_per_channel", (2, 3, 1, 1), True, True, True, 0.1),
        ("batch_norm_train_2d_input", (6, 4), True, True, True, 0.1),
        ("batch_norm_eval_affine", (2, 4, 3, 5), False, True, True, 0.1),
        ("batch_norm_eval_no_affine", (3, 3, 2, 2), False, False, True, 0.1),
    ]
    for i, (name, shape, training, affine, running, momentum) in enumerate(cases):
        gen = Gen(200 + i)
        c = shape[1]
        # An offset and scale per channel so the normalisation does real work.
        x = gen.randn(*shape) * 1.7 + 0.6
        inputs = {"input": x.float()}
        if affine:
            inputs["weight"] = (1.0 + gen.randn(c, scale=0.3)).float()
            inputs["bias"] = gen.randn(c, scale=0.3)
        if running:
            inputs["running_mean"] = gen.randn(c, scale=0.2)
            inputs["running_var"] = (1.0 + gen.randn(c, scale=0.2).abs()).float()
        diff = [k for k in ("input", "weight", "bias") if k in inputs]
        eps = 1e-5

        def fwd(t, training=training, momentum=momentum):
            # F.batch_norm updates running_mean/var in place (momentum, unbiased
            # variance) and never touches num_batches_tracked: that counter is
            # nn.BatchNorm2d's, checked in the ResNet step parity test.
            return F.batch_norm(
                t["input"], t.get("running_mean"), t.get("running_var"), t.get("weight"), t.get("bias"),
                training=training, momentum=momentum, eps=eps,
            )

        extra = ["running_mean", "running_var"] if running and training else []
        params = {"training": int(training), "momentum": momentum, "eps": eps}
        if name == "batch_norm_train_two_values_per_channel":
            # With two values per channel x_hat = +-1 up to eps, and dL/dx is
            # the near-total cancellation of terms of size |gamma| invstd |R|
            # (||dL/dx|| is ~1e-5 of them): float32 PyTorch itself is off by
            # 8e-3 relative. The test measures the error against the size of
            # those terms, ||gamma_c invstd_c R||, which is what float32 can promise.
            params["input_grad_error_scale"] = "terms"
        write_case(name, "batch_norm", inputs, diff, fwd, params, extra)


def relu_cases():
    gen = Gen(300)
    write_case("relu_random", "relu", {"input": gen.randn(2, 3, 4, 5)}, ["input"], lambda t: F.relu(t["input"]), {})
    # Integer values: a third of them exactly 0, where PyTorch's gradient is 0.
    write_case("relu_exact_zeros", "relu", {"input": gen.randint(-1, 2, 3, 17)}, ["input"], lambda t: F.relu(t["input"]), {})


def add_relu_cases():
    # frostgrad's fused residual tail `relu(input + other)` (ops::add_relu);
    # PyTorch computes it as two ops, so its grad_fn is ReluBackward0.
    gen = Gen(310)
    write_case("add_relu_random", "add_relu", {"input": gen.randn(2, 3, 4, 5), "other": gen.randn(2, 3, 4, 5)},
               ["input", "other"], lambda t: F.relu(t["input"] + t["other"]), {})
    # Integer values: many sums exactly 0, where both gradients are 0.
    write_case("add_relu_exact_zeros", "add_relu",
               {"input": gen.randint(-1, 2, 3, 17), "other": gen.randint(-1, 2, 3, 17)},
               ["input", "other"], lambda t: F.relu(t["input"] + t["other"]), {})


def max_pool_cases():
    # (name, shape, kernel, stride, padding, dilation, integer-valued)
    cases = [
        ("max_pool2d_3s2p1_ties", (2, 3, 8, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
        ("max_pool2d_3s2p1_ties_odd_7x5", (2, 2, 7, 5), (3, 3), (2, 2), (1, 1), (1, 1), True),
        ("max_pool2d_3s2p1_random_9x9", (1, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
        ("max_pool2d_2x2_default", (2, 2, 6, 4), (2, 2), (2, 2), (0, 0), (1, 1), False),
        ("max_pool2d_overlap_s1_ties", (1, 2, 5, 6), (3, 2), (1, 1), (1, 0), (1, 1), True),
        ("max_pool2d_dilation2", (1, 2, 7, 7), (2, 2), (1, 2), (1, 0), (2, 2), False),
    ]
    for i, (name, shape, k, s, p, d, integer) in enumerate(cases):
        gen = Gen(400 + i)
        # Values in {-1, 0, 1}: most windows hold several maxima, so only the
        # first in scan order (PyTorch's choice) gets the gradient.
        x = gen.randint(-1, 2, *shape) if integer else gen.randn(*shape)
        if name == "max_pool2d_3s2p1_ties":
            x[0, 0] = 0.0  # a plane where every window is all ties
            x[1, 1] = -1.0  # ties below zero: padding must never win
        fwd = lambda t, k=k, s=s, p=p, d=d: F.max_pool2d(t["input"], k, s, p, d)
        params = {"kernel": ints(k), "stride": ints(s), "padding": ints(p), "dilation": ints(d)}
        write_case(name, "max_pool2d", {"input": x}, ["input"], fwd, params)


def adaptive_pool_cases():
    cases = [
        ("adaptive_avg_pool2d_to_1x1", (2, 3, 7, 5), (1, 1)),
        ("adaptive_avg_pool2d_5x7_to_3x2", (2, 3, 5, 7), (3, 2)),
        ("adaptive_avg_pool2d_6x6_to_4x4_overlap", (1, 2, 6, 6), (4, 4)),
        ("adaptive_avg_pool2d_identity", (1, 2, 3, 4), (3, 4)),
        ("adaptive_avg_pool2d_upsample_3x2_to_5x4", (2, 2, 3, 2), (5, 4)),
    ]
    for i, (name, shape, size) in enumerate(cases):
        gen = Gen(500 + i)
        fwd = lambda t, size=size: F.adaptive_avg_pool2d(t["input"], size)
        write_case(name, "adaptive_avg_pool2d", {"input": gen.randn(*shape)}, ["input"], fwd, {"output_size": ints(size)})


def linear_cases():
    for i, (name, n, fin, fout, bias) in enumerate(
        [("linear_bias", 5, 7, 3, True), ("linear_no_bias", 4, 6, 5, False), ("linear_single_row", 1, 9, 10, True)]
    ):
        gen = Gen(600 + i)
        inputs = {"input": gen.randn(n, fin), "weight": gen.randn(fout, fin, scale=0.4)}
        if bias:
            inputs["bias"] = gen.randn(fout)
        write_case(name, "linear", inputs, list(inputs), lambda t: F.linear(t["input"], t["weight"], t.get("bias")), {})


def misc_cases():
    gen = Gen(700)
    write_case("add", "add", {"input": gen.randn(2, 3, 4), "other": gen.randn(2, 3, 4)}, ["input", "other"],
               lambda t: t["input"] + t["other"], {})
    write_case("sum", "sum", {"input": gen.randn(3, 4, 5)}, ["input"], lambda t: t["input"].sum(), {})
    write_case("mean", "mean", {"input": gen.randn(2, 7, 3)}, ["input"], lambda t: t["input"].mean(), {})
    write_case("flatten_start_dim_1", "flatten", {"input": gen.randn(2, 3, 2, 2)}, ["input"],
               lambda t: torch.flatten(t["input"], 1), {"start_dim": 1})

    # Softmax family. "large" logits (hundreds) overflow exp() unless the
    # implementation subtracts the row maximum.
    for name, scale, offset in [("small", 1.0, 0.0), ("large", 300.0, 1000.0)]:
        logits = (gen.randn(4, 10, scale=scale) + offset).float()
        write_case(f"log_softmax_{name}", "log_softmax", {"input": logits}, ["input"],
                   lambda t: F.log_softmax(t["input"], dim=1), {})
        labels = gen.labels(4, 10)
        write_case(f"cross_entropy_{name}", "cross_entropy", {"input": logits, "labels": labels}, ["input"],
                   lambda t: F.cross_entropy(t["input"], t["labels"]), {})
    log_probs = F.log_softmax(gen.randn(5, 6).double(), dim=1).float()
    write_case("nll_loss", "nll_loss", {"input": log_probs, "labels": gen.labels(5, 6)}, ["input"],
               lambda t: F.nll_loss(t["input"], t["labels"]), {})


def graph_names():
    """The grad_fn chain of a small network, following each node's data input.

    Also records, per node, how many trainable leaves (AccumulateGrad) it
    feeds directly or through PyTorch's TBackward0 (linear's transposed
    weight, which frostgrad does not materialise).
    """
    g = Gen(800)
    x = g.randn(2, 3, 8, 8).double()
    conv_w = g.randn(4, 3, 3, 3).double()  # frozen
    conv_b = g.randn(4).double().requires_grad_()
    bn_w = (1 + g.randn(4, scale=0.1)).double().requires_grad_()
    bn_b = g.randn(4, scale=0.1).double().requires_grad_()
    fc_w = g.randn(3, 16).double().requires_grad_()
    fc_b = g.randn(3).double().requires_grad_()
    labels = torch.tensor([0, 2])
    h = F.conv2d(x, conv_w, conv_b, padding=1)
    h = F.batch_norm(h, None, None, bn_w, bn_b, training=True)
    h = F.relu(h)
    h = h + h
    h = F.max_pool2d(h, 3, 2, 1)
    h = F.adaptive_avg_pool2d(h, (2, 2))
    h = torch.flatten(h, 1)
    loss = F.cross_entropy(F.linear(h, fc_w, fc_b), labels)
    data_slot = {"AddmmBackward0": 1}
    lines = []
    node = loss.grad_fn
    while node is not None:
        name = type(node).__name__
        leaves = 0
        for nf, _ in node.next_functions:
            if nf is None:
                continue
            if type(nf).__name__ == "AccumulateGrad":
                leaves += 1
            elif type(nf).__name__ == "TBackward0":
                leaves += sum(1 for f, _ in nf.next_functions if type(f).__name__ == "AccumulateGrad")
        lines.append(f"{name} {leaves}")
        nxt = node.next_functions[data_slot.get(name, 0)][0]
        node = nxt if nxt is not None and type(nxt).__name__ != "AccumulateGrad" else None
    with open(os.path.join(OPS_DIR, "graph_names.txt"), "w") as f:
        f.write("# grad_fn chain from the loss, data input first; 'name trainable-leaf-edges'\n")
        f.write("# generated by scripts/gen_references.py (graph_names)\n")
        f.write("\n".join(lines) + "\n")


def check_semantics():
    """PyTorch behaviour that tests/autograd_semantics.rs expects of frostgrad."""
    leaf = torch.ones(3)
    assert not leaf.requires_grad and leaf.is_leaf and leaf.grad is None
    leaf.requires_grad_(True)
    y = leaf * 2
    assert not y.is_leaf and y.requires_grad
    try:
        y.requires_grad_(False)
        raise AssertionError("non-leaf requires_grad change must fail")
    except RuntimeError:
        pass
    # backward of a non-scalar without a gradient argument is an error.
    try:
        y.backward()
        raise AssertionError("non-scalar backward must fail")
    except RuntimeError:
        pass
    # ... and so is backward when nothing requires a gradient.
    try:
        torch.ones(3).sum().backward()
        raise AssertionError("backward without grad must fail")
    except RuntimeError:
        pass
    # no_grad records nothing.
    with torch.no_grad():
        z = leaf + leaf
    assert z.grad_fn is None and not z.requires_grad
    # detach shares storage and cuts history.
    d = y.detach()
    assert d.data_ptr() == y.data_ptr() and d.grad_fn is None and not d.requires_grad
    # accumulation: used twice in one graph, and across two backward calls.
    a = torch.ones(3, requires_grad=True)
    (a + a).sum().backward()
    assert torch.equal(a.grad, torch.full((3,), 2.0))
    a.sum().backward()
    assert torch.equal(a.grad, torch.full((3,), 3.0))
    a.grad = None
    a.sum().backward()
    assert torch.equal(a.grad, torch.ones(3))
    # no input requires grad -> no grad_fn.
    assert F.relu(torch.ones(3)).grad_fn is None
    # backward through the graph twice is an error.
    b = torch.ones(2, 2, requires_grad=True)
    l = F.relu(b).sum()
    l.backward()
    try:
        l.backward()
        raise AssertionError("second backward must fail")
    except RuntimeError as e:
        assert "second time" in str(e)
    # non-leaf tensors get no .grad.
    c = torch.ones(2, requires_grad=True)
    mid = c * 3
    mid.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns when .grad of a non-leaf is read
        assert mid.grad is None
    # a leaf scalar's own backward gives 1.
    s = torch.tensor(2.0, requires_grad=True)
    s.backward()
    assert s.grad.item() == 1.0
    # next_functions: an input that needs no gradient is None, a leaf is AccumulateGrad.
    x = torch.randn(1, 2, 4, 4)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    bias = torch.randn(3)
    out = F.conv2d(F.relu(x.requires_grad_()), w, bias)
    names = [None if f is None else type(f).__name__ for f, _ in out.grad_fn.next_functions]
    assert names == ["ReluBackward0", "AccumulateGrad", None], names
    assert out.grad_fn.next_functions[1][0].variable is w


# --------------------------------------------------------------------------
# ResNet-18 one-step parity
# --------------------------------------------------------------------------

NUM_CLASSES = 10
NUM_SAMPLES = 16


def formula_weights(layout):
    """Deterministic ResNet-18 weights: tensor k (position in the state dict)
    with n elements gets, for i in 0..n,

        s_i = sin(0.37 i + 1.3 k + 0.013 ((i * i) mod 1009))

    computed in float64 and rounded to float32, scaled per kind:
      conv / fc weight:  w_i = sqrt(2 / fan_in) * sqrt(2) * s_i  (unit-variance
                          sine times He scale; fc uses sqrt(1 / fan_in))
      bn weight:         1 + 0.2 s_i       bn bias / fc bias: 0.1 s_i
      running_mean:      0.1 s_i           running_var: 1 + 0.5 s_i
      num_batches_tracked: 0
    The (i*i mod 1009) term breaks the plain sine's periodicity so channels
    are not copies of one another."""
    out = {}
    for k, (name, shape, dtype) in enumerate(layout):
        n = int(np.prod(shape)) if shape else 1
        if dtype == "i64":
            out[name] = torch.zeros(shape, dtype=torch.int64)
            continue
        i = np.arange(n, dtype=np.int64)
        s = np.sin(0.37 * i.astype(np.float64) + 1.3 * k + 0.013 * ((i * i) % 1009).astype(np.float64))
        leaf = name.rsplit(".", 1)[1]
        is_bn = "bn" in name or ".downsample.1." in name
        if leaf == "weight" and not is_bn:
            fan_in = n // shape[0]
            gain = math.sqrt(1.0 / fan_in) if name.startswith("fc.") else math.sqrt(2.0 / fan_in)
            v = gain * math.sqrt(2.0) * s
        elif leaf == "weight":
            v = 1.0 + 0.2 * s
        elif leaf == "bias":
            v = 0.1 * s
        elif leaf == "running_mean":
            v = 0.1 * s
        elif leaf == "running_var":
            v = 1.0 + 0.5 * s
        else:
            raise ValueError(f"no formula for {name}")
        out[name] = torch.from_numpy(v.astype(np.float32).reshape(shape))
    return out


def formula_batch(batch, size):
    """images[i] = sin(0.731 i + 0.2) + 0.5 cos(0.0123 i) (flat index over
    [N, 3, H, W], float64 rounded to float32); labels[n] = (3 n + 1) mod 10."""
    n = batch * 3 * size * size
    i = np.arange(n, dtype=np.float64)
    img = (np.sin(0.731 * i + 0.2) + 0.5 * np.cos(0.0123 * i)).astype(np.float32)
    images = torch.from_numpy(img.reshape(batch, 3, size, size))
    labels = torch.tensor([(3 * b + 1) % NUM_CLASSES for b in range(batch)], dtype=torch.int64)
    return images, labels


def probe(n):
    """The probe vector p_i = sin(1.1 i + 0.4) for the dot-product summary."""
    return np.sin(1.1 * np.arange(n, dtype=np.float64) + 0.4)


def sample_indices(n):
    """All indices when n <= 16, else (j * 2654435761 + 12345) mod n, j < 16."""
    if n <= NUM_SAMPLES:
        return list(range(n))
    return [(j * 2654435761 + 12345) % n for j in range(NUM_SAMPLES)]


def summarize(t):
    """[numel, L2 norm, sum, probe dot, samples...] in float64."""
    v = t.detach().double().reshape(-1).numpy()
    n = v.size
    head = [float(n), float(np.linalg.norm(v)), float(v.sum()), float(v @ probe(n))]
    return torch.tensor(head + [float(v[j]) for j in sample_indices(n)], dtype=torch.float64)


def matches_any(name, globs):
    import fnmatch

    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def expected_stats(model, images, labels):
    """Per `op.input`, gradients a PyTorch-faithful engine computes or skips.

    A module records a node only if some differentiable input requires a
    gradient; then each slot counts as computed (it requires one) or skipped.
    Uses PyTorch's own requires_grad propagation through forward hooks.
    """
    from collections import Counter

    computed, skipped = Counter(), Counter()

    def hook(module, args, _out):
        x = args[0]
        if isinstance(module, torch.nn.Conv2d):
            op = "conv2d"
        elif isinstance(module, torch.nn.BatchNorm2d):
            op = "batch_norm"
        elif isinstance(module, torch.nn.Linear):
            op = "linear"
        else:
            return
        slots = [("input", x)] + [(n, p) for n, p in module.named_parameters(recurse=False)]
        if not any(t.requires_grad for _, t in slots):
            return
        for n, t in slots:
            (computed if t.requires_grad else skipped)[f"{op}.{n}"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model(images)
    for h in handles:
        h.remove()
    return computed, skipped


def resnet_case(name, layout, size, batch, trainable, eval_mode, lr=0.1, momentum=0.9, weight_decay=1e-4):
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES).double()
    sd = {k: v.double() if v.is_floating_point() else v for k, v in formula_weights(layout).items()}
    model.load_state_dict(sd, strict=True)
    globs = trainable.split(",")
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(matches_any(n, globs))
        if p.requires_grad:
            params.append(p)
    model.eval() if eval_mode else model.train()
    images, labels = formula_batch(batch, size)
    images = images.double()

    stats_model = torchvision.models.resnet18(num_classes=NUM_CLASSES).double()
    stats_model.load_state_dict(sd)
    for n, p in stats_model.named_parameters():
        p.requires_grad_(matches_any(n, globs))
    computed, skipped = expected_stats(stats_model, images, labels)

    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    opt.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    opt.step()

    tensors = {"logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    for n, g in grads.items():
        tensors[f"grad.{n}"] = summarize(g)
    for n, p in model.named_parameters():
        tensors[f"param.{n}"] = summarize(p)
    for n, b in model.named_buffers():
        tensors[f"buffer.{n}"] = summarize(b)
    meta = {
        "size": str(size),
        "batch": str(batch),
        "trainable": trainable,
        "eval": str(int(eval_mode)),
        "lr": repr(lr),
        "momentum": repr(momentum),
        "weight_decay": repr(weight_decay),
        "computed": ",".join(f"{k}={v}" for k, v in sorted(computed.items())),
        "skipped": ",".join(f"{k}={v}" for k, v in sorted(skipped.items())),
    }
    save_file(tensors, os.path.join(RESNET_DIR, f"{name}.safetensors"), metadata=meta)
    print(f"  {name}: loss {loss.item():.6f}, {len(grads)} grads, computed {dict(computed)}, skipped {dict(skipped)}")


def resnet_layout():
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    layout = []
    for n, t in model.state_dict().items():
        dtype = "i64" if t.dtype == torch.int64 else "f32"
        layout.append((n, list(t.shape), dtype))
    # Parameter order check: named_parameters() is the state dict minus the
    # buffers, in the same relative order (what `param.*` keys follow), and the
    # names match torchvision's pretrained checkpoints.
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers()]
    assert [n for n, _, _ in layout if n not in set(buffer_names)] == param_names
    assert len(param_names) == 62 and len(buffer_names) == 60, (len(param_names), len(buffer_names))
    assert param_names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert param_names[-2:] == ["fc.weight", "fc.bias"]
    with open(os.path.join(RESNET_DIR, "state_dict_layout.txt"), "w") as f:
        f.write("# torchvision resnet18(num_classes=10).state_dict(): name dtype shape\n")
        f.write("# generated by scripts/gen_references.py (resnet_layout)\n")
        for n, shape, dtype in layout:
            f.write(f"{n} {dtype} {'x'.join(map(str, shape)) if shape else 'scalar'}\n")
    return layout


# Sizes are chosen so layer4 works on at least 2x2 positions, as it does for
# 57x57 and 64x64 inputs. At 32x32 layer4 is 1x1, so its batch norms see only
# N values per channel and their gradient is dominated by eps/(x1-x2)^2-type
# cancellations: there PyTorch's own float32 step differs from float64 by
# 5e-4 (gradients) and 4e-4 (bn1.bias after the step) at N=3, and by 2e-2 at
# N=2, so a 1e-4 test would measure float32 conditioning, not correctness.
# 33x33 (odd), 40x40 (even) and 45x45 (odd) reach layer4 as 2x2 and PyTorch
# float32 stays below 2e-5 there.
RESNET_CASES = [
    # name, size, batch, trainable globs, eval
    ("all_40x40", 40, 2, "*", False),
    ("all_45x45", 45, 2, "*", False),
    ("fc_only_33x33", 33, 3, "fc.*", False),
    ("layer3_layer4_fc_45x45", 45, 2, "layer3.*,layer4.*,fc.*", False),
    ("stem_and_fc_45x45", 45, 2, "conv1.*,bn1.*,fc.*", False),
    ("stem_and_fc_40x40", 40, 2, "conv1.*,bn1.*,fc.*", False),
    ("eval_all_33x33", 33, 2, "*", True),
]


def main():
    os.makedirs(OPS_DIR, exist_ok=True)
    os.makedirs(RESNET_DIR, exist_ok=True)
    check_semantics()
    conv_cases()
    batch_norm_cases()
    relu_cases()
    add_relu_cases()
    max_pool_cases()
    adaptive_pool_cases()
    linear_cases()
    misc_cases()
    graph_names()
    print("op fixtures written to", OPS_DIR)
    layout = resnet_layout()
    only = set(sys.argv[1:])
    for case in RESNET_CASES:
        if not only or case[0] in only:
            resnet_case(case[0], layout, *case[1:])
    print("resnet fixtures written to", RESNET_DIR)


if __name__ == "__main__":
    main()
