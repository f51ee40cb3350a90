//! Elementwise addition with NumPy/PyTorch broadcasting (and ResNet's
//! residual connection, where both shapes are equal). The gradient passes
//! unchanged to whichever side needs it, summed back over the dims that
//! side was broadcast along; nothing is saved.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary, reduce_to};
use crate::ops::same_device;
use crate::tensor::Tensor;

pub fn add(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (out, shape) = if lhs.shape() == rhs.shape() {
        // Equal shapes: the contiguous kernel, no index arithmetic.
        same_device("add", lhs, rhs)?;
        (lhs.storage().add(&rhs.storage())?, lhs.shape().to_vec())
    } else {
        binary("add", lhs, rhs, BinaryOp::Add)?
    };
    let shapes = [lhs.shape().to_vec(), rhs.shape().to_vec()];
    record(out, shape, &[Some(lhs), Some(rhs)], |_, _| {
        Box::new(AddBackward { shapes })
    })
}

struct AddBackward {
    shapes: [Vec<usize>; 2],
}

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
        needs
            .iter()
            .zip(&self.shapes)
            .map(|(&n, shape)| n.then(|| reduce_to(grad_output, shape)).transpose())
            .collect()
    }
}
