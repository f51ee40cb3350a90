//! `a - b` with broadcasting: d/da = g, d/db = -g, each summed back to
//! its input's shape. Nothing is saved.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary, reduce_to, unary_tensor};
use crate::tensor::Tensor;

pub fn sub(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (out, shape) = binary("sub", lhs, rhs, BinaryOp::Sub)?;
    let shapes = [lhs.shape().to_vec(), rhs.shape().to_vec()];
    record(out, shape, &[Some(lhs), Some(rhs)], |_, _| {
        Box::new(SubBackward { shapes })
    })
}

struct SubBackward {
    shapes: [Vec<usize>; 2],
}

impl BackwardOp for SubBackward {
    fn name(&self) -> &'static str {
        "SubBackward0"
    }
    fn op(&self) -> &'static str {
        "sub"
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
        let da = needs[0]
            .then(|| reduce_to(grad_output, &self.shapes[0]))
            .transpose()?;
        let db = needs[1]
            .then(|| reduce_to(&unary_tensor(grad_output, UnaryOp::Neg)?, &self.shapes[1]))
            .transpose()?;
        Ok(vec![da, db])
    }
}
