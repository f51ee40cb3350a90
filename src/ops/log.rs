//! Natural log: d/dx = g / x, which needs the input (saved).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::binary_tensor;
use crate::tensor::Tensor;

pub fn log(x: &Tensor) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Log)?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, _| {
        Box::new(LogBackward { input: x.detach() })
    })
}

struct LogBackward {
    input: Tensor,
}

impl BackwardOp for LogBackward {
    fn name(&self) -> &'static str {
        "LogBackward0"
    }
    fn op(&self) -> &'static str {
        "log"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("self", &self.input)]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(binary_tensor(
            grad_output,
            &self.input,
            BinaryOp::Div,
        )?)])
    }
}
