//! Reshape and flatten: views that share storage with their input.

use crate::autograd::{record_view, BackwardOp};
use crate::error::{Error, Result};
use crate::tensor::{numel_of, Tensor};

/// A view of `input` with another shape of the same element count.
pub fn reshape(input: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if numel_of(shape) != input.numel() {
        return Err(Error::shape(
            "reshape",
            format!("cannot view {:?} as {shape:?}", input.shape()),
        ));
    }
    let input_shape = input.shape().to_vec();
    Ok(record_view(input, shape.to_vec(), || {
        Box::new(ViewBackward { input_shape })
    }))
}

/// `torch.flatten(input, start_dim)`: merges dims `start_dim..` into one.
pub fn flatten(input: &Tensor, start_dim: usize) -> Result<Tensor> {
    let shape = input.shape();
    if start_dim >= shape.len().max(1) {
        return Err(Error::shape(
            "flatten",
            format!("start_dim {start_dim} out of range for {shape:?}"),
        ));
    }
    let mut new_shape: Vec<usize> = shape[..start_dim].to_vec();
    new_shape.push(shape[start_dim..].iter().product());
    reshape(input, &new_shape)
}

struct ViewBackward {
    input_shape: Vec<usize>,
}

impl BackwardOp for ViewBackward {
    fn name(&self) -> &'static str {
        "ViewBackward0"
    }
    fn op(&self) -> &'static str {
        "view"
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
        Ok(vec![Some(grad_output.view_with(self.input_shape, None))])
    }
}
