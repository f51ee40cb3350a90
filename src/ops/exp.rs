//! `e^x`: d/dx = g·e^x, the output itself (saved, not the input).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::binary_tensor;
use crate::tensor::Tensor;

pub fn exp(x: &Tensor) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Exp)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, y| {
        Box::new(ExpBackward { result: y.clone() })
    })
}

struct ExpBackward {
    result: Tensor,
}

impl BackwardOp for ExpBackward {
    fn name(&self) -> &'static str {
        "ExpBackward0"
    }
    fn op(&self) -> &'static str {
        "exp"
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
        Ok(vec![Some(binary_tensor(
            grad_output,
            &self.result,
            BinaryOp::Mul,
        )?)])
    }
}
