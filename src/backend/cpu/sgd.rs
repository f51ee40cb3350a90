//! One step of `torch.optim.SGD` on one parameter, in place.

use crate::backend::SgdConfig;
use crate::error::Result;

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
    let SgdConfig {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
    } = *cfg;
    // `check::sgd_step` made sure a buffer of the right length is given
    // whenever momentum is non-zero.
    let buffer = momentum_buffer.filter(|_| momentum != 0.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lr: f32, momentum: f32, dampening: f32, weight_decay: f32, nesterov: bool) -> SgdConfig {
        SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        }
    }

    /// Three steps on p0 = 1 with a constant gradient 0.5; returns p after each.
    fn three_steps(c: SgdConfig) -> Vec<f32> {
        let mut p = [1.0f32];
        let mut buf = [0.0f32];
        (0..3)
            .map(|step| {
                let b = (c.momentum != 0.0).then_some(&mut buf[..]);
                sgd_step(&mut p, &[0.5], b, &c, step == 0).unwrap();
                p[0]
            })
            .collect()
    }

    fn assert_steps(got: Vec<f32>, want: [f32; 3]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    // Expected values worked by hand from torch.optim.SGD's update rule
    // (lr 0.1, p0 = 1, grad 0.5 every step).
    #[test]
    fn plain_sgd() {
        assert_steps(
            three_steps(cfg(0.1, 0.0, 0.0, 0.0, false)),
            [0.95, 0.9, 0.85],
        );
    }

    #[test]
    fn momentum_initialises_buffer_with_first_gradient() {
        // b: 0.5, 0.95, 1.355
        assert_steps(
            three_steps(cfg(0.1, 0.9, 0.0, 0.0, false)),
            [0.95, 0.855, 0.7195],
        );
    }

    #[test]
    fn nesterov_looks_ahead() {
        // d = g + 0.9 b: 0.95, 1.355, 1.7195
        assert_steps(
            three_steps(cfg(0.1, 0.9, 0.0, 0.0, true)),
            [0.905, 0.7695, 0.59755],
        );
    }

    #[test]
    fn weight_decay_and_dampening() {
        // d = 0.5 + 0.1 p: 0.6, 0.594, 0.58563
        // b = d (first step, undampened), then 0.9 b + 0.5 d: 0.6, 0.837, 1.046115
        assert_steps(
            three_steps(cfg(0.1, 0.9, 0.5, 0.1, false)),
            [0.94, 0.8563, 0.7516885],
        );
    }
}
