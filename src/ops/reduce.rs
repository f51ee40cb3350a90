//! Full reductions to a 0-d tensor.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::ops::grad_tensor;
use crate::tensor::Tensor;

/// Sum of all elements.
pub fn sum(input: &Tensor) -> Result<Tensor> {
    let out = input.storage().sum_all()?;
    let input_shape = input.shape().to_vec();
    record(out, vec![], &[Some(input)], |_, _| {
        Box::new(SumBackward {
            input_shape,
            scale: None,
        })
    })
}

/// Mean of all elements.
pub fn mean(input: &Tensor) -> Result<Tensor> {
    let n = input.numel();
    if n == 0 {
        return Err(Error::shape("mean", "mean of an empty tensor"));
    }
    let out = input.storage().sum_all()?.scale(1.0 / n as f32)?;
    let input_shape = input.shape().to_vec();
    record(out, vec![], &[Some(input)], |_, _| {
        Box::new(SumBackward {
            input_shape,
            scale: Some(1.0 / n as f32),
        })
    })
}

/// Backward of sum (and, with a scale, of mean): broadcast dL/dy.
struct SumBackward {
    input_shape: Vec<usize>,
    scale: Option<f32>,
}

impl BackwardOp for SumBackward {
    fn name(&self) -> &'static str {
        if self.scale.is_some() {
            "MeanBackward0"
        } else {
            "SumBackward0"
        }
    }
    fn op(&self) -> &'static str {
        if self.scale.is_some() {
            "mean"
        } else {
            "sum"
        }
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
        let numel = self.input_shape.iter().product();
        let g = grad_output.storage();
        let dx = match self.scale {
            Some(s) => g.scale(s)?.broadcast_scalar(numel)?,
            None => g.broadcast_scalar(numel)?,
        };
        Ok(vec![Some(grad_tensor(dx, &self.input_shape)?)])
    }
}
