//! `tanh(x)`: d/dx = g·(1 - y²) from the output y (saved, not the input).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, scalar_like};
use crate::tensor::Tensor;

pub fn tanh(x: &Tensor) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Tanh)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, y| {
        Box::new(TanhBackward { result: y.clone() })
    })
}

struct TanhBackward {
    result: Tensor,
}

impl BackwardOp for TanhBackward {
    fn name(&self) -> &'static str {
        "TanhBackward0"
    }
    fn op(&self) -> &'static str {
        "tanh"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("result", &self.result)]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let y = &self.result;
        let y2 = binary_tensor(y, y, BinaryOp::Mul)?;
        let one_minus = binary_tensor(&scalar_like(1.0, y)?, &y2, BinaryOp::Sub)?;
        Ok(vec![Some(binary_tensor(
            grad_output,
            &one_minus,
            BinaryOp::Mul,
        )?)])
    }
}
