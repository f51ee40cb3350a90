//! `a * b` with broadcasting. d/da = g·b needs b, d/db = g·a needs a: each
//! operand is saved only if the *other* one's gradient is needed, so
//! `x * frozen_w` keeps `w` and not `x`.

use crate::autograd::{record, BackwardOp};
use crate::backend::BinaryOp;
use crate::error::Result;
use crate::ops::broadcast::{binary, binary_tensor, reduce_to};
use crate::ops::saved;
use crate::tensor::Tensor;

pub fn mul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (out, shape) = binary("mul", lhs, rhs, BinaryOp::Mul)?;
    record(out, shape, &[Some(lhs), Some(rhs)], |needs, _| {
        Box::new(MulBackward {
            shapes: [lhs.shape().to_vec(), rhs.shape().to_vec()],
            // d/d(other) = g * self, d/d(self) = g * other.
            this: needs[1].then(|| lhs.detach()),
            other: needs[0].then(|| rhs.detach()),
        })
    })
}

struct MulBackward {
    shapes: [Vec<usize>; 2],
    this: Option<Tensor>,
    other: Option<Tensor>,
}

impl BackwardOp for MulBackward {
    fn name(&self) -> &'static str {
        "MulBackward0"
    }
    fn op(&self) -> &'static str {
        "mul"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "other"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("self", &self.this), ("other", &self.other)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let name = self.name();
        let mut grads = vec![None, None];
        if needs[0] {
            let b = saved(&self.other, name, "other")?;
            grads[0] = Some(reduce_to(
                &binary_tensor(grad_output, b, BinaryOp::Mul)?,
                &self.shapes[0],
            )?);
        }
        if needs[1] {
            let a = saved(&self.this, name, "self")?;
            grads[1] = Some(reduce_to(
                &binary_tensor(grad_output, a, BinaryOp::Mul)?,
                &self.shapes[1],
            )?);
        }
        Ok(grads)
    }
}
