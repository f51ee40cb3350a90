//! `σ(x) = 1 / (1 + e^-x)`: d/dx = g·y·(1 - y) from the output y (saved).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, scalar_like};
use crate::tensor::Tensor;

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Sigmoid)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, y| {
        Box::new(SigmoidBackward { result: y.clone() })
    })
}

struct SigmoidBackward {
    result: Tensor,
}

impl BackwardOp for SigmoidBackward {
    fn name(&self) -> &'static str {
        "SigmoidBackward0"
    }
    fn op(&self) -> &'static str {
        "sigmoid"
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
        let one_minus = binary_tensor(&scalar_like(1.0, y)?, y, BinaryOp::Sub)?;
        let dy = binary_tensor(y, &one_minus, BinaryOp::Mul)?;
        Ok(vec![Some(binary_tensor(grad_output, &dy, BinaryOp::Mul)?)])
    }
}
