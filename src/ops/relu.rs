//! ReLU. Backward needs only where the output is positive, so it saves the
//! output (as PyTorch's in-place ReLU does) rather than the input.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::ops::grad_tensor;
use crate::tensor::Tensor;

pub fn relu(input: &Tensor) -> Result<Tensor> {
    let out = input.storage().relu()?;
    record(out, input.shape().to_vec(), &[Some(input)], |_, output| {
        Box::new(ReluBackward {
            output: output.clone(),
        })
    })
}

struct ReluBackward {
    output: Tensor,
}

impl BackwardOp for ReluBackward {
    fn name(&self) -> &'static str {
        "ReluBackward0"
    }
    fn op(&self) -> &'static str {
        "relu"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("result", &self.output)]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let dx = grad_output
            .storage()
            .relu_backward(&self.output.storage())?;
        Ok(vec![Some(grad_tensor(dx, grad_output.shape())?)])
    }
}
