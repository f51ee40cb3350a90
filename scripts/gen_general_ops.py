"""PyTorch references for the general op set (tests/general_ops.rs).

Each case is computed in float64: the inputs, the output, and the gradient
of L = sum(out * R) for a fixed random cotangent R with respect to every
input, plus the grad_fn name PyTorch prints. Shapes are odd and broadcast.

    .venv/bin/python scripts/gen_general_ops.py

`.venv` (in the repository root) is a virtual environment with PyTorch 2.9.1 (the version the figures
and fixtures were made with):
`python3 -m venv .venv && .venv/bin/pip install torch==2.9.1 torchvision==0.24.1 numpy safetensors`.
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "general")
g = torch.Generator().manual_seed(15)


def randn(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def positive(*shape):
    return torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5


def f32_exact(t):
    """Rounded to float32 and back: both sides start from the same values."""
    return t.float().double()


def case(name, fn, inputs, **meta):
    leaves = {k: f32_exact(v).requires_grad_(True) for k, v in inputs.items()}
    out = fn(*leaves.values())
    r = f32_exact(randn(*out.shape))
    (out * r).sum().backward()
    # Inputs and cotangent as the float32 both sides use; results in float64.
    tensors = {f"in.{k}": v.detach().float().contiguous() for k, v in leaves.items()}
    tensors.update({f"grad.{k}": v.grad.contiguous() for k, v in leaves.items()})
    tensors["out"] = out.detach().contiguous()
    tensors["cotangent"] = r.float().contiguous()
    metadata = {"torch_grad_fn": type(out.grad_fn).__name__, "inputs": ",".join(inputs)}
    metadata.update({k: str(v) for k, v in meta.items()})
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"), metadata=metadata)


os.makedirs(OUT, exist_ok=True)
case("add_broadcast", torch.add, {"a": randn(2, 3, 4), "b": randn(3, 1)})
case("add_trailing", torch.add, {"a": randn(5, 4), "b": randn(4)})
case("sub_broadcast", torch.sub, {"a": randn(3, 1, 5), "b": randn(2, 1)})
case("mul_broadcast", torch.mul, {"a": randn(2, 3), "b": randn(2, 1, 3)})
case("mul_scalar", torch.mul, {"a": randn(3, 4), "b": randn(())})
case("div_broadcast", torch.div, {"a": randn(4, 3), "b": positive(3)})
case("neg", torch.neg, {"a": randn(5, 2)})
case("pow_fractional", lambda a: torch.pow(a, 2.5), {"a": positive(3, 4)}, exponent=2.5)
case("pow_cube", lambda a: torch.pow(a, 3.0), {"a": randn(3, 4)}, exponent=3.0)
case("exp", torch.exp, {"a": randn(3, 4)})
case("log", torch.log, {"a": positive(3, 4)})
case("tanh", torch.tanh, {"a": randn(3, 4) * 2})
case("sigmoid", torch.sigmoid, {"a": torch.cat([randn(10) * 3, torch.tensor([20.0, -20.0], dtype=torch.float64)])})
case("matmul_2d", torch.matmul, {"a": randn(3, 5), "b": randn(5, 4)})
case("matmul_batched", torch.matmul, {"a": randn(2, 3, 5), "b": randn(2, 5, 4)})
case("matmul_broadcast", torch.matmul, {"a": randn(2, 1, 3, 5), "b": randn(4, 5, 2)})
case("matmul_shared_weight", torch.matmul, {"a": randn(3, 2, 5), "b": randn(5, 4)})
case("transpose", lambda a: a.transpose(0, 2), {"a": randn(2, 3, 4)}, dims="0,2")
case("permute", lambda a: a.permute(2, 0, 3, 1), {"a": randn(2, 3, 4, 5)}, perm="2,0,3,1")
case("sum_dims", lambda a: a.sum((0, 2)), {"a": randn(3, 4, 5)}, dims="0,2", keepdim=0)
case("sum_keepdim", lambda a: a.sum(-1, keepdim=True), {"a": randn(3, 4, 5)}, dims="-1", keepdim=1)
case("mean_dims", lambda a: a.mean(1), {"a": randn(3, 4, 5)}, dims="1", keepdim=0)
case("max_dims", lambda a: a.amax((0, 2)), {"a": randn(3, 4, 5)}, dims="0,2", keepdim=0)
# Ties: small integers, so several elements share each maximum and split its gradient.
ties = torch.randint(0, 3, (4, 6), generator=g).double()
case("max_ties", lambda a: a.amax(1, keepdim=True), {"a": ties}, dims="1", keepdim=1)
print("wrote", len(os.listdir(OUT)), "fixtures to", os.path.normpath(OUT))
