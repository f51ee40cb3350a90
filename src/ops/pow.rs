//! `x^p` for a scalar exponent `p`: d/dx = g·p·x^(p-1), which needs the
//! input (saved).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::ops::broadcast::{binary_tensor, scalar_like, unary_tensor};
use crate::tensor::Tensor;

pub fn pow(x: &Tensor, exponent: f32) -> Result<Tensor> {
    let out = x.storage().unary(UnaryOp::Pow(exponent))?;
    record(out, x.shape().to_vec(), &[Some(x)], |_, _| {
        Box::new(PowBackward {
            input: x.detach(),
            exponent,
        })
    })
}

struct PowBackward {
    input: Tensor,
    exponent: f32,
}

impl BackwardOp for PowBackward {
    fn name(&self) -> &'static str {
        "PowBackward0"
    }
    fn op(&self) -> &'static str {
        "pow"
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
        let p = self.exponent;
        if p == 0.0 {
            // PyTorch: the gradient of x^0 is 0 everywhere (also at x = 0).
            let zero = scalar_like(0.0, grad_output)?;
            return Ok(vec![Some(binary_tensor(
                grad_output,
                &zero,
                BinaryOp::Mul,
            )?)]);
        }
        let x_pm1 = unary_tensor(&self.input, UnaryOp::Pow(p - 1.0))?;
        let scaled = binary_tensor(&x_pm1, &scalar_like(p, grad_output)?, BinaryOp::Mul)?;
        Ok(vec![Some(binary_tensor(
            grad_output,
            &scaled,
            BinaryOp::Mul,
        )?)])
    }
}
