//! `a / b` with broadcasting. d/da = g / b needs b; d/db = -g·a / b²
//! needs a and b. So b is saved whenever a gradient is needed, a only for
//! b's.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary, binary_tensor, reduce_to, unary_tensor};
use crate::ops::saved;
use crate::tensor::Tensor;

pub fn div(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (out, shape) = binary("div", lhs, rhs, BinaryOp::Div)?;
    record(out, shape, &[Some(lhs), Some(rhs)], |needs, _| {
        Box::new(DivBackward {
            shapes: [lhs.shape().to_vec(), rhs.shape().to_vec()],
            this: needs[1].then(|| lhs.detach()),
            other: Some(rhs.detach()),
        })
    })
}

struct DivBackward {
    shapes: [Vec<usize>; 2],
    this: Option<Tensor>,
    other: Option<Tensor>,
}

impl BackwardOp for DivBackward {
    fn name(&self) -> &'static str {
        "DivBackward0"
    }
    fn op(&self) -> &'static str {
        "div"
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
        let b = saved(&self.other, name, "other")?;
        let g_over_b = binary_tensor(grad_output, b, BinaryOp::Div)?;
        let mut grads = vec![None, None];
        if needs[1] {
            // -(g / b) * (a / b)
            let a = saved(&self.this, name, "self")?;
            let a_over_b = binary_tensor(a, b, BinaryOp::Div)?;
            let db = binary_tensor(
                &unary_tensor(&g_over_b, UnaryOp::Neg)?,
                &a_over_b,
                BinaryOp::Mul,
            )?;
            grads[1] = Some(reduce_to(&db, &self.shapes[1])?);
        }
        if needs[0] {
            grads[0] = Some(reduce_to(&g_over_b, &self.shapes[0])?);
        }
        Ok(grads)
    }
}
