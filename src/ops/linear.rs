//! `y = x Wᵀ + b` for `x [N, in]`, `W [out, in]`, `b [out]`.
//!
//! dL/dx = dy W needs W; dL/dW = dyᵀ x needs x; dL/db = Σ_rows dy needs
//! neither. As in conv2d, each is saved only when its gradient is needed:
//! a transfer-learning `fc` keeps its input (for dW) but never needs W.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::ops::{flops, grad_tensor, same_device, saved, BIAS, INPUT, WEIGHT};
use crate::tensor::Tensor;

pub fn linear(input: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let [rows, in_features] = input.dims2("linear")?;
    let [out_features, w_in] = weight.dims2("linear")?;
    if w_in != in_features {
        return Err(Error::shape(
            "linear",
            format!(
                "input {:?} does not match weight {:?}",
                input.shape(),
                weight.shape()
            ),
        ));
    }
    same_device("linear", input, weight)?;
    if let Some(b) = bias {
        same_device("linear", input, b)?;
        if b.shape() != [out_features] {
            return Err(Error::shape(
                "linear",
                format!("bias shape {:?} != [{out_features}]", b.shape()),
            ));
        }
    }
    flops::add_macs((rows * in_features * out_features) as u64);
    let out = {
        let xw = input.storage().matmul(
            &weight.storage(),
            rows,
            in_features,
            out_features,
            false,
            true,
        )?;
        match bias {
            Some(b) => {
                let out = xw.add_row_vector(&b.storage(), rows, out_features);
                // `xw` never became a tensor: back to the pool, or a
                // steady-state step misses it for the next buffer of its
                // size (the head's 8 x 10 logits at batch 8).
                xw.recycle();
                out?
            }
            None => xw,
        }
    };
    record(
        out,
        vec![rows, out_features],
        &[Some(input), Some(weight), bias],
        |needs, _| {
            Box::new(LinearBackward {
                rows,
                in_features,
                out_features,
                input: needs[WEIGHT].then(|| input.detach()),
                weight: needs[INPUT].then(|| weight.detach()),
                has_bias: bias.is_some(),
            })
        },
    )
}

struct LinearBackward {
    rows: usize,
    in_features: usize,
    out_features: usize,
    input: Option<Tensor>,
    weight: Option<Tensor>,
    /// Only for the name: PyTorch's node differs with and without a bias.
    has_bias: bool,
}

impl BackwardOp for LinearBackward {
    /// PyTorch records `addmm` for a linear layer with bias, `mm` without.
    fn name(&self) -> &'static str {
        if self.has_bias {
            "AddmmBackward0"
        } else {
            "MmBackward0"
        }
    }
    fn op(&self) -> &'static str {
        "linear"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "weight", "bias"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("input", &self.input), ("weight", &self.weight)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward_flops(&self, needs: &[bool]) -> u64 {
        let gemms = needs.iter().take(2).filter(|&&n| n).count() as u64;
        2 * gemms * (self.rows * self.in_features * self.out_features) as u64
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let (n, i, o) = (self.rows, self.in_features, self.out_features);
        let gy = grad_output.storage();
        let mut grads = vec![None; needs.len()];
        let macs = (n * i * o) as u64;
        if needs[INPUT] {
            flops::add_macs(macs);
            let w = saved(&self.weight, self.name(), "weight")?;
            grads[INPUT] = Some(grad_tensor(
                gy.matmul(&w.storage(), n, o, i, false, false)?,
                &[n, i],
            )?);
        }
        if needs[WEIGHT] {
            flops::add_macs(macs);
            let x = saved(&self.input, self.name(), "input")?;
            grads[WEIGHT] = Some(grad_tensor(
                gy.matmul(&x.storage(), o, n, i, true, false)?,
                &[o, i],
            )?);
        }
        if needs[BIAS] {
            grads[BIAS] = Some(grad_tensor(gy.sum_rows(n, o)?, &[o])?);
        }
        Ok(grads)
    }
}
