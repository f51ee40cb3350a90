//! `tanh(x)`: d/dx = g·(1 - y²) from the output y (saved, not the input).
//! (What every unary elementwise op shares is in `elementwise.rs`.)

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, scalar_like};
use crate::ops::elementwise::{self, Keep, Unary};
use crate::tensor::Tensor;

pub fn tanh(x: &Tensor) -> Result<Tensor> {
    elementwise::unary(x, &TANH)
}

static TANH: Unary = Unary {
    name: "TanhBackward0",
    op: "tanh",
    forward: UnaryOp::Tanh,
    keep: Keep::Output,
    backward,
};

fn backward(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    let y2 = binary_tensor(y, y, BinaryOp::Mul)?;
    let one_minus = binary_tensor(&scalar_like(1.0, y)?, &y2, BinaryOp::Sub)?;
    binary_tensor(g, &one_minus, BinaryOp::Mul)
}
