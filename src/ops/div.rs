//! `a / b` with broadcasting. d/da = g / b needs b; d/db = -g·a / b²
//! needs a and b. So b is saved whenever a gradient is needed, a only for
//! b's. (What every binary elementwise op shares, broadcasting and summing
//! gradients back, is in `elementwise.rs`.)

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, unary_tensor};
use crate::ops::elementwise::{self, Binary, Grads, Operands};
use crate::tensor::Tensor;

pub fn div(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    elementwise::binary(lhs, rhs, &DIV)
}

static DIV: Binary = Binary {
    name: "DivBackward0",
    op: "div",
    forward: BinaryOp::Div,
    keep,
    backward,
};

/// `b` for either gradient, `a` only for b's.
fn keep([da, db]: [bool; 2]) -> [bool; 2] {
    [db, da || db]
}

fn backward(g: &Tensor, kept: &Operands, [da, db]: [bool; 2]) -> Result<Grads> {
    let b = kept.b()?;
    let g_over_b = binary_tensor(g, b, BinaryOp::Div)?;
    let mut grads = [None, None];
    if db {
        // -(g / b) * (a / b)
        let a_over_b = binary_tensor(kept.a()?, b, BinaryOp::Div)?;
        grads[1] = Some(binary_tensor(
            &unary_tensor(&g_over_b, UnaryOp::Neg)?,
            &a_over_b,
            BinaryOp::Mul,
        )?);
    }
    if da {
        grads[0] = Some(g_over_b);
    }
    Ok(grads)
}
