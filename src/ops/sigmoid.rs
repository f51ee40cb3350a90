//! `σ(x) = 1 / (1 + e^-x)`: d/dx = g·y·(1 - y) from the output y (saved).
//! (What every unary elementwise op shares is in `elementwise.rs`.)

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, scalar_like};
use crate::ops::elementwise::{self, Keep, Unary};
use crate::tensor::Tensor;

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    elementwise::unary(x, &SIGMOID)
}

static SIGMOID: Unary = Unary {
    name: "SigmoidBackward0",
    op: "sigmoid",
    forward: UnaryOp::Sigmoid,
    keep: Keep::Output,
    backward,
};

fn backward(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    let one_minus = binary_tensor(&scalar_like(1.0, y)?, y, BinaryOp::Sub)?;
    let dy = binary_tensor(y, &one_minus, BinaryOp::Mul)?;
    binary_tensor(g, &dy, BinaryOp::Mul)
}
