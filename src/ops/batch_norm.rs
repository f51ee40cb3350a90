//! Batch normalisation over the channel axis of `[N, C, ...]`.
//!
//! Training mode normalises with the batch's mean and biased variance and
//! updates the running statistics in place (momentum, unbiased variance),
//! exactly as `model.train()` does in PyTorch, frozen affine parameters or
//! not. Eval mode normalises with the running statistics.
//!
//! Backward: dγ needs x̂ (so the input), dβ needs only dL/dy, dx needs γ and
//! (in training) x̂ again. Each is computed only when its mask bit is set.
//!
//! # Fused batch norm + ReLU
//!
//! [`batch_norm_relu`] is `relu(batch_norm(..))` as one op: the forward
//! clamps while it normalises (no separate pass over the activation to
//! apply ReLU), and the backward masks dL/dy by `output > 0` as the
//! batch-norm kernels read it (no separate `relu_backward` pass and no
//! masked-gradient tensor). It records one node,
//! `NativeBatchNormReluBackward0`, which saves the post-ReLU output (the
//! mask, which the unfused `ReluBackward0` saves too) plus what batch norm
//! saves. PyTorch would show two nodes here, `ReluBackward0` →
//! `NativeBatchNormBackward0`.
//!
//! So that backward statistics stay comparable with PyTorch and with the
//! unfused graph, the node reports the ReLU it absorbed through
//! [`BackwardOp::fused_ops`]: the engine counts it as two nodes and counts
//! `relu.input` as computed once, next to the usual `batch_norm.*` slots.
//! (The unfused ReLU node exists exactly when the batch-norm node does and
//! always computes its input gradient, so these counts are identical.)

use crate::autograd::{record, BackwardOp, FusedOp};
use crate::backend::{
    BackendStorage, BatchNormGeometry, BatchNormParams, BatchNormSaved, BatchNormStats, Epilogue,
};
use crate::error::{Error, Result};
use crate::ops::{grad_tensor, same_device, saved, BIAS, INPUT, WEIGHT};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Batch statistics (and running-stat updates) when true.
    pub training: bool,
    /// PyTorch's default 0.1: `running = (1 - m) running + m batch`.
    pub momentum: f32,
    pub eps: f32,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        Self {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// `F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)`.
/// `running_mean`/`running_var` are updated in place in training mode;
/// in eval mode they are required.
pub fn batch_norm(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: Option<&Tensor>,
    running_var: Option<&Tensor>,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    batch_norm_maybe_relu(input, weight, bias, running_mean, running_var, opts, false)
}

/// `F.relu(F.batch_norm(..))` in one fused op (see the module docs): same
/// arguments, values, gradients and running-statistics update as
/// [`batch_norm`] followed by [`crate::ops::relu`](fn@crate::ops::relu), one
/// pass fewer over the activation in each direction.
pub fn batch_norm_relu(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: Option<&Tensor>,
    running_var: Option<&Tensor>,
    opts: BatchNormOptions,
) -> Result<Tensor> {
    batch_norm_maybe_relu(input, weight, bias, running_mean, running_var, opts, true)
}

/// Batch norm, followed by a fused ReLU when `relu_after`.
fn batch_norm_maybe_relu(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: Option<&Tensor>,
    running_var: Option<&Tensor>,
    opts: BatchNormOptions,
    relu_after: bool,
) -> Result<Tensor> {
    let shape = input.shape().to_vec();
    if shape.len() < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!("expected [N, C, ...], got {shape:?}"),
        ));
    }
    let g = BatchNormGeometry {
        batch: shape[0],
        channels: shape[1],
        spatial: shape[2..].iter().product(),
    };
    for (what, t) in [
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        if let Some(t) = t {
            same_device("batch_norm", input, t)?;
            if t.shape() != [g.channels] {
                return Err(Error::shape(
                    "batch_norm",
                    format!(
                        "{what} has shape {:?}, expected [{}] for input {shape:?}",
                        t.shape(),
                        g.channels
                    ),
                ));
            }
        }
    }
    if running_mean.is_some() != running_var.is_some() {
        return Err(Error::invalid(
            "batch_norm",
            "give both running_mean and running_var, or neither",
        ));
    }

    let params = BatchNormParams {
        geometry: g,
        eps: opts.eps,
        epilogue: if relu_after {
            Epilogue::Relu
        } else {
            Epilogue::None
        },
    };
    let x = input.storage();
    let w = weight.map(|t| t.storage());
    let b = bias.map(|t| t.storage());
    let (w, b) = (w.as_deref(), b.as_deref());
    let (out, mean, invstd) = if opts.training {
        if g.count() < 2 {
            return Err(Error::invalid(
                "batch_norm",
                format!(
                    "expected more than 1 value per channel when training, got input {shape:?}"
                ),
            ));
        }
        let r = x.batch_norm(w, b, BatchNormStats::Batch, &params)?;
        let stats = r.batch_stats.ok_or_else(|| {
            Error::invalid("batch_norm", "the backend returned no batch statistics")
        })?;
        if let (Some(rm), Some(rv)) = (running_mean, running_var) {
            let mut rv_storage = rv.storage_mut();
            rm.storage_mut().update_running_stats(
                &mut rv_storage,
                &stats.mean,
                &stats.var,
                opts.momentum,
                g.count(),
            )?;
        }
        // Back to the CPU buffer pool (dropped plainly, it would be freed
        // and taken afresh every step).
        stats.var.recycle();
        (r.output, stats.mean, stats.invstd)
    } else {
        let (Some(rm), Some(rv)) = (running_mean, running_var) else {
            return Err(Error::invalid(
                "batch_norm",
                "eval mode needs running_mean and running_var",
            ));
        };
        let (rm, rv) = (rm.storage(), rv.storage());
        let stats = BatchNormStats::Running {
            mean: &*rm,
            var: &*rv,
        };
        let out = x.batch_norm(w, b, stats, &params)?.output;
        // Snapshot the statistics: a later training forward may update them in place.
        (out, rm.try_clone()?, rv.inv_std(opts.eps)?)
    };
    // The statistics become tensors now, so that a shape error surfaces
    // here rather than as a missing saved tensor in backward.
    let c = vec![g.channels];
    let mean = Tensor::from_storage(mean, c.clone())?;
    let invstd = Tensor::from_storage(invstd, c.clone())?;
    drop((x, w, b));

    record(out, shape, &[Some(input), weight, bias], |needs, output| {
        let need_dw = needs[WEIGHT];
        let needs_xhat = need_dw || (needs[INPUT] && opts.training);
        Box::new(NativeBatchNormBackward {
            params,
            training: opts.training,
            input: needs_xhat.then(|| input.detach()),
            weight: if needs[INPUT] {
                weight.map(Tensor::detach)
            } else {
                None
            },
            mean: Some(mean),
            invstd: Some(invstd),
            // The ReLU's mask: every gradient this node computes uses it.
            relu_output: relu_after.then(|| output.clone()),
        })
    })
}

struct NativeBatchNormBackward {
    params: BatchNormParams,
    training: bool,
    input: Option<Tensor>,
    weight: Option<Tensor>,
    mean: Option<Tensor>,
    invstd: Option<Tensor>,
    /// The fused forward's (post-ReLU) output; `None` for plain batch norm.
    relu_output: Option<Tensor>,
}

impl BackwardOp for NativeBatchNormBackward {
    fn name(&self) -> &'static str {
        if self.relu_output.is_some() {
            "NativeBatchNormReluBackward0"
        } else {
            "NativeBatchNormBackward0"
        }
    }
    fn op(&self) -> &'static str {
        "batch_norm"
    }
    fn unfused_name(&self) -> &'static str {
        "NativeBatchNormBackward0"
    }
    fn fused_ops(&self) -> &'static [FusedOp] {
        const RELU: [FusedOp; 1] = [FusedOp {
            name: "ReluBackward0",
            op: "relu",
            inputs: &["input"],
        }];
        if self.relu_output.is_some() {
            &RELU
        } else {
            &[]
        }
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [
            ("input", &self.input),
            ("weight", &self.weight),
            ("save_mean", &self.mean),
            ("save_invstd", &self.invstd),
            ("result", &self.relu_output),
        ]
        .into_iter()
        .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
        .collect()
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "weight", "bias"]
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        // Map the recorded slots back onto [input, weight, bias].
        let (need_dx, need_dw, need_db) = (needs[INPUT], needs[WEIGHT], needs[BIAS]);
        let g = &self.params.geometry;
        let name = self.name();
        let mean = saved(&self.mean, name, "mean")?.storage();
        let invstd = saved(&self.invstd, name, "invstd")?.storage();
        // x̂ is needed for dγ always and for dx in training mode; in eval
        // mode dx is γ·invstd·dy and needs no input, so none was saved.
        let x = self.input.as_ref().map(|t| t.storage());
        let w = self.weight.as_ref().map(|t| t.storage());
        let y = self.relu_output.as_ref().map(|t| t.storage());
        let saved_state = BatchNormSaved {
            input: x.as_deref(),
            weight: w.as_deref(),
            mean: &mean,
            invstd: &invstd,
            batch_stats: self.training,
            output: y.as_deref(),
        };
        let dy = grad_output.storage();
        let [dx, dw, db] =
            dy.batch_norm_backward(&saved_state, &self.params, [need_dx, need_dw, need_db])?;
        drop(dy);
        let c = [g.channels];
        Ok(vec![
            dx.map(|s| grad_tensor(s, grad_output.shape()))
                .transpose()?,
            dw.map(|s| grad_tensor(s, &c)).transpose()?,
            db.map(|s| grad_tensor(s, &c)).transpose()?,
        ])
    }
}
