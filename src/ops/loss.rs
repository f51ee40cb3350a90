//! Cross-entropy as PyTorch composes it: `nll_loss(log_softmax(x))`, so the
//! graph shows `NllLossBackward0` after `LogSoftmaxBackward0`, as in PyTorch.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::ops::{grad_tensor, same_device};
use crate::tensor::{DType, Tensor};

/// Row-wise log-softmax of a `[N, C]` matrix (dim = 1), computed stably.
pub fn log_softmax(input: &Tensor) -> Result<Tensor> {
    let [rows, cols] = input.dims2("log_softmax")?;
    let out = input.storage().log_softmax(rows, cols)?;
    record(out, vec![rows, cols], &[Some(input)], |_, output| {
        Box::new(LogSoftmaxBackward {
            rows,
            cols,
            output: output.clone(),
        })
    })
}

/// Mean negative log-likelihood of log-probabilities `[N, C]` at i64 labels `[N]`.
pub fn nll_loss(log_probs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let [rows, cols] = log_probs.dims2("nll_loss")?;
    if labels.dtype() != DType::I64 {
        return Err(Error::DType {
            op: "nll_loss",
            expected: DType::I64,
            got: labels.dtype(),
        });
    }
    if labels.shape() != [rows] {
        return Err(Error::shape(
            "nll_loss",
            format!("labels shape {:?} != [{rows}]", labels.shape()),
        ));
    }
    same_device("nll_loss", log_probs, labels)?;
    let out = log_probs
        .storage()
        .nll_loss(&labels.storage(), rows, cols)?;
    record(out, vec![], &[Some(log_probs)], |_, _| {
        Box::new(NllLossBackward {
            rows,
            cols,
            labels: labels.detach(),
        })
    })
}

/// `F.cross_entropy(logits, labels)` with mean reduction.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    nll_loss(&log_softmax(logits)?, labels)
}

struct LogSoftmaxBackward {
    rows: usize,
    cols: usize,
    output: Tensor,
}

impl BackwardOp for LogSoftmaxBackward {
    fn name(&self) -> &'static str {
        "LogSoftmaxBackward0"
    }
    fn op(&self) -> &'static str {
        "log_softmax"
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
        let dx = grad_output.storage().log_softmax_backward(
            &self.output.storage(),
            self.rows,
            self.cols,
        )?;
        Ok(vec![Some(grad_tensor(dx, &[self.rows, self.cols])?)])
    }
}

struct NllLossBackward {
    rows: usize,
    cols: usize,
    labels: Tensor,
}

impl BackwardOp for NllLossBackward {
    fn name(&self) -> &'static str {
        "NllLossBackward0"
    }
    fn op(&self) -> &'static str {
        "nll_loss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("target", &self.labels)]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let dx = grad_output.storage().nll_loss_backward(
            &self.labels.storage(),
            self.rows,
            self.cols,
        )?;
        Ok(vec![Some(grad_tensor(dx, &[self.rows, self.cols])?)])
    }
}
