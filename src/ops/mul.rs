//! `a * b` with broadcasting. d/da = g·b needs b, d/db = g·a needs a: each
//! operand is saved only if the *other* one's gradient is needed, so
//! `x * frozen_w` keeps `w` and not `x`. (What every binary elementwise op
//! shares, broadcasting and summing gradients back, is in `elementwise.rs`.)

use crate::backend::BinaryOp;
use crate::error::Result;
use crate::ops::broadcast::binary_tensor;
use crate::ops::elementwise::{self, Binary, Grads, Operands};
use crate::tensor::Tensor;

pub fn mul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    elementwise::binary(lhs, rhs, &MUL)
}

static MUL: Binary = Binary {
    name: "MulBackward0",
    op: "mul",
    forward: BinaryOp::Mul,
    keep,
    backward,
};

/// `a` for b's gradient, `b` for a's.
fn keep([da, db]: [bool; 2]) -> [bool; 2] {
    [db, da]
}

fn backward(g: &Tensor, kept: &Operands, [da, db]: [bool; 2]) -> Result<Grads> {
    let mut grads = [None, None];
    if da {
        grads[0] = Some(binary_tensor(g, kept.b()?, BinaryOp::Mul)?);
    }
    if db {
        grads[1] = Some(binary_tensor(g, kept.a()?, BinaryOp::Mul)?);
    }
    Ok(grads)
}
