//! `-x`: the gradient is `-g`; nothing is saved.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::unary_tensor;
use crate::tensor::Tensor;

pub fn neg(x: &Tensor) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Neg)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, _| {
        Box::new(NegBackward)
    })
}

struct NegBackward;

impl BackwardOp for NegBackward {
    fn name(&self) -> &'static str {
        "NegBackward0"
    }
    fn op(&self) -> &'static str {
        "neg"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        Vec::new()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(unary_tensor(grad_output, UnaryOp::Neg)?)])
    }
}
