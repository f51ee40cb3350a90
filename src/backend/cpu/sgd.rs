//! One step of `torch.optim.SGD` on one parameter, in place.

use rayon::prelude::*;

use super::elementwise::note_task;

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
    // `check::sgd_step` made sure a buffer of the right length is given
    // whenever momentum is non-zero.
    let buffer = momentum_buffer.filter(|_| cfg.momentum != 0.0);
    // One pass over p, g (and the buffer), split across the threads for a
    // large parameter (ResNet-18's biggest is 2.4M elements) when the pool
    // has more than one thread; on the calling thread otherwise, by the
    // rule of the elementwise in-place passes (`elementwise::on_caller`):
    // each element's update is independent, so the same bits either way.
    if super::elementwise::on_caller(param.len()) {
        note_task();
        step_slice(param, grad, buffer, cfg, initialize_buffer);
        return Ok(());
    }
    let params = param
        .par_chunks_mut(PAR_CHUNK)
        .zip(grad.par_chunks(PAR_CHUNK));
    match buffer {
        None => params.for_each(|(p, g)| {
            note_task();
            step_slice(p, g, None, cfg, initialize_buffer)
        }),
        Some(buf) => params
            .zip(buf.par_chunks_mut(PAR_CHUNK))
            .for_each(|((p, g), b)| {
                note_task();
                step_slice(p, g, Some(b), cfg, initialize_buffer)
            }),
    }
    Ok(())
}

/// Elements per parallel task: enough that rayon's cost per task is noise.
const PAR_CHUNK: usize = 1 << 15;

/// [`sgd_step`] on one run of elements.
fn step_slice(
    param: &mut [f32],
    grad: &[f32],
    buffer: Option<&mut [f32]>,
    cfg: &SgdConfig,
    initialize_buffer: bool,
) {
    let SgdConfig {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
    } = *cfg;
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

    #[test]
    fn a_step_runs_where_on_caller_says() {
        // The step's following the rule (`elementwise::on_caller`), seen
        // through its tasks (`elementwise::note_task`): from a test's own
        // thread (in no pool), up to ON_CALLER_MAX elements in one task
        // here, the empty parameter included; above, none here where the
        // global pool has more than one thread. In a pool: one task (one
        // thread) or one per chunk (two). With and without momentum.
        use super::super::elementwise::{count_tasks, on_caller, ON_CALLER_MAX};
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "a test thread is in no pool"
        );
        let momentum = cfg(0.05, 0.9, 0.0, 0.0, false);
        let plain = cfg(0.05, 0.0, 0.0, 0.0, false);
        let check = |n: usize, pool: &rayon::ThreadPool, inside: bool| {
            for c in [&momentum, &plain] {
                let grad = vec![1.0f32; n];
                let (mut p, mut b) = (vec![2.0f32; n], vec![0.5f32; n]);
                let mut step = || sgd_step(&mut p, &grad, Some(&mut b), c, false).unwrap();
                let (here, on_pool) = if inside {
                    count_tasks(pool, || pool.install(&mut step))
                } else {
                    count_tasks(pool, &mut step)
                };
                // p - lr * (momentum * b + g) with momentum, p - lr * g without.
                let want = if c.momentum != 0.0 {
                    2.0 - 0.05 * 1.45
                } else {
                    2.0 - 0.05
                };
                let what = format!("n {n} momentum {} inside a pool {inside}", c.momentum);
                assert!(p.iter().all(|&v| (v - want).abs() < 1e-6), "{what}");
                let b_want = if c.momentum != 0.0 { 1.45 } else { 0.5 };
                assert!(b.iter().all(|&v| (v - b_want).abs() < 1e-6), "{what}");
                if inside {
                    let one = pool.install(|| on_caller(n));
                    let want = if one { 1 } else { n.div_ceil(PAR_CHUNK) as u64 };
                    assert_eq!(
                        (here, on_pool),
                        (0, want),
                        "{what}: tasks here, on the pool"
                    );
                } else {
                    assert_eq!(here, u64::from(on_caller(n)), "{what}: tasks here");
                }
            }
        };
        let idle = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for n in [0, 1, ON_CALLER_MAX, ON_CALLER_MAX + 1, 3 * PAR_CHUNK + 5] {
            check(n, &idle, false);
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for n in [0, ON_CALLER_MAX, 3 * PAR_CHUNK + 5] {
                check(n, &pool, true);
            }
        }
    }

    #[test]
    fn split_across_threads_matches_one_pass() {
        // Several parallel chunks and a ragged tail: the same bits as one
        // serial pass, every element updated exactly once, in both forms:
        // on the calling thread (a one-thread pool) and split across a
        // two-thread pool (`elementwise::on_caller`), on every SIMD path.
        use super::super::{elementwise::on_caller, simd};
        let n = 3 * PAR_CHUNK + 5;
        let values = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 * 1e-3 - 1.0)
                .collect()
        };
        let c = cfg(0.05, 0.9, 0.1, 0.01, false);
        let grad = values(1);
        let (mut p_serial, mut b_serial) = (values(2), values(3));
        step_slice(&mut p_serial, &grad, Some(&mut b_serial), &c, false);
        let want_plain: Vec<f32> = values(2)
            .iter()
            .zip(&grad)
            .map(|(p, g)| p - 0.05 * g)
            .collect();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            assert_eq!(pool.install(|| on_caller(n)), threads == 1);
            simd::on_every_path(&pool, |path| {
                let what = format!("{} threads {threads}", path.name());
                let (mut p, mut b) = (values(2), values(3));
                let mut p_plain = values(2);
                pool.install(|| {
                    sgd_step(&mut p, &grad, Some(&mut b), &c, false).unwrap();
                    let plain = cfg(0.05, 0.0, 0.0, 0.0, false);
                    sgd_step(&mut p_plain, &grad, None, &plain, false).unwrap();
                });
                assert_eq!(p, p_serial, "{what}");
                assert_eq!(b, b_serial, "{what}");
                assert_eq!(p_plain, want_plain, "{what}");
            });
        }
    }
}
