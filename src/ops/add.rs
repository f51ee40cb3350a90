//! Elementwise addition of equal shapes (the residual connection).
//! The gradient passes unchanged to whichever side needs it.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

pub fn add(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    if lhs.shape() != rhs.shape() {
        return Err(Error::shape(
            "add",
            format!(
                "{:?} + {:?} (broadcasting is not supported)",
                lhs.shape(),
                rhs.shape()
            ),
        ));
    }
    same_device("add", lhs, rhs)?;
    let out = lhs.storage().add(&rhs.storage())?;
    record(
        out,
        lhs.shape().to_vec(),
        &[Some(lhs), Some(rhs)],
        |_, _| Box::new(AddBackward),
    )
}

struct AddBackward;

impl BackwardOp for AddBackward {
    fn name(&self) -> &'static str {
        "AddBackward0"
    }
    fn op(&self) -> &'static str {
        "add"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "other"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        Vec::new()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        // Handing out the same tensor twice is safe: the engine never adds in place.
        Ok(needs
            .iter()
            .map(|&n| n.then(|| grad_output.clone()))
            .collect())
    }
}
