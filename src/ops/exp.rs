//! `e^x`: d/dx = g·e^x, the output itself (saved, not the input). (What
//! every unary elementwise op shares is in `elementwise.rs`.)

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::binary_tensor;
use crate::ops::elementwise::{self, Keep, Unary};
use crate::tensor::Tensor;

pub fn exp(x: &Tensor) -> Result<Tensor> {
    elementwise::unary(x, &EXP)
}

static EXP: Unary = Unary {
    name: "ExpBackward0",
    op: "exp",
    forward: UnaryOp::Exp,
    keep: Keep::Output,
    // g · y
    backward: |g, y| binary_tensor(g, y, BinaryOp::Mul),
};
