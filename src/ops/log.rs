//! Natural log: d/dx = g / x, which needs the input (saved). (What every
//! unary elementwise op shares is in `elementwise.rs`.)

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::binary_tensor;
use crate::ops::elementwise::{self, Keep, Unary};
use crate::tensor::Tensor;

pub fn log(x: &Tensor) -> Result<Tensor> {
    elementwise::unary(x, &LOG)
}

static LOG: Unary = Unary {
    name: "LogBackward0",
    op: "log",
    forward: UnaryOp::Log,
    keep: Keep::Input,
    // g / x
    backward: |g, x| binary_tensor(g, x, BinaryOp::Div),
};
