//! One step of `torch.optim.SGD` on one parameter, in place.

use super::check::expect_len;
use crate::backend::SgdConfig;
use crate::error::{Error, Result};

/// PyTorch's `_single_tensor_sgd`, elementwise:
///
/// ```text
/// d = g + weight_decay * p                      (if weight_decay != 0)
/// if momentum != 0:
///     b = d                                     (first step: initialize_buffer)
///     b = momentum * b + (1 - dampening) * d    (later steps)
///     d = nesterov ? d + momentum * b : b
/// p = p - lr * d
/// ```
///
/// The buffer is required (and updated) exactly when momentum is non-zero.
pub(super) fn sgd_step(
    param: &mut [f32],
    grad: &[f32],
    momentum_buffer: Option<&mut [f32]>,
    cfg: &SgdConfig,
    initialize_buffer: bool,
) -> Result<()> {
    let op = "sgd_step";
    expect_len(op, "grad", grad.len(), param.len())?;
    let SgdConfig {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
    } = *cfg;
    let buffer = match (momentum != 0.0, momentum_buffer) {
        (false, _) => None,
        (true, Some(b)) => {
            expect_len(op, "momentum_buffer", b.len(), param.len())?;
            Some(b)
        }
        (true, None) => {
            return Err(Error::invalid(
                op,
                format!("momentum {momentum} needs a momentum buffer"),
            ));
        }
    };
    let decayed = |p: f32, g: f32| {
        if weight_decay != 0.0 {
            g + weight_decay * p
        } else {
            g
        }
    };
    match buffer {
        None => {
            for (p, &g) in param.iter_mut().zip(grad) {
                *p -= lr * decayed(*p, g);
            }
        }
        Some(buf) => {
            for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let d = decayed(*p, g);
                *b = if initialize_buffer {
                    d
                } else {
                    momentum * *b + (1.0 - dampening) * d
                };
                let step = if nesterov { d + momentum * *b } else { *b };
                *p -= lr * step;
            }
        }
    }
    Ok(())
}
