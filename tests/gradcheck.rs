//! Central finite-difference checks of every op's backward.
//!
//! For each op we take L = sum(out * R) with a fixed random cotangent R,
//! get dL/dx from our backward (through `common::contract`), and compare it
//! with (L(x + h e_j) - L(x - h e_j)) / (2h) for every element j of every
//! differentiable input, with the forward run in f32 and L accumulated on
//! the host in f64.
//!
//! Step and tolerance. The engine is f32 only, so the forward output carries
//! a relative rounding error of about 1e-7..1e-6; a difference quotient with
//! step h turns that into an absolute error of ~1e-6·|L-terms|/h, while the
//! truncation error of the central difference is ~h²·|f'''|/6. Inputs are of
//! magnitude ~1, so h = 1e-2 balances the two at ~1e-4 relative (observed:
//! at most 1.2e-4, in the end-to-end network's input gradient). We require a
//! relative L2 error of at most 2e-3 over each whole gradient: over 10x above
//! the observed noise, while a wrong or missing backward term is an O(1)
//! error. The denominator uses the f32-rounded perturbed values
//! actually fed in, not 2h. ReLU and max-pool are only piecewise
//! differentiable, so their inputs are built to stay > h away from kinks
//! (|x| >= 0.1 for ReLU; window values at least 0.05 apart for max-pool);
//! their tie behaviour is covered by the PyTorch fixtures instead.

mod common;

use common::{contract, rel_l2, widen};
use frostgrad::ops::{self, BatchNormOptions, Conv2dOptions, MaxPool2dOptions};
use frostgrad::{no_grad, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const STEP: f32 = 1e-2;
const TOLERANCE: f64 = 2e-3;

/// One differentiable input: a name for messages, its shape and values.
struct Input {
    name: &'static str,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn normal(name: &'static str, shape: &[usize], std: f32, rng: &mut StdRng) -> Input {
    let values = Tensor::randn(shape, 0.0, std, rng, Device::Cpu)
        .and_then(|t| t.to_vec_f32())
        .expect("randn");
    Input {
        name,
        shape: shape.to_vec(),
        values,
    }
}

fn leaves(inputs: &[Input], requires_grad: bool) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|i| {
            Tensor::from_vec(i.values.clone(), &i.shape, Device::Cpu)
                .and_then(|t| t.requires_grad_(requires_grad))
                .expect("leaf")
        })
        .collect()
}

/// sum(out * R) on the host, in f64.
fn host_loss(out: &Tensor, cotangent: &[f32]) -> f64 {
    let v = out.to_vec_f32().expect("f32 output");
    v.iter()
        .zip(cotangent)
        .map(|(&o, &r)| o as f64 * r as f64)
        .sum()
}

/// Checks `f`'s backward against central differences for every input.
fn gradcheck(op: &str, inputs: Vec<Input>, f: impl Fn(&[Tensor]) -> frostgrad::Result<Tensor>) {
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9);
    // Analytic gradients.
    let xs = leaves(&inputs, true);
    let out = f(&xs).unwrap_or_else(|e| panic!("{op}: forward: {e}"));
    let cotangent: Vec<f32> = (0..out.numel())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    contract(&out, &cotangent)
        .backward()
        .unwrap_or_else(|e| panic!("{op}: backward: {e}"));

    let mut failures = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let analytic = widen(
            &xs[k]
                .grad()
                .expect("leaf gradient")
                .to_vec_f32()
                .expect("f32"),
        );
        let numeric: Vec<f64> = (0..input.values.len())
            .map(|j| {
                let eval = |delta: f32| -> (f64, f32) {
                    let mut perturbed: Vec<Tensor> = leaves(&inputs, false);
                    let mut values = input.values.clone();
                    values[j] += delta;
                    perturbed[k] =
                        Tensor::from_vec(values.clone(), &input.shape, Device::Cpu).expect("leaf");
                    let out = no_grad(|| f(&perturbed)).expect("forward");
                    (host_loss(&out, &cotangent), values[j])
                };
                let (plus, x_plus) = eval(STEP);
                let (minus, x_minus) = eval(-STEP);
                (plus - minus) / (x_plus as f64 - x_minus as f64)
            })
            .collect();
        let err = rel_l2(&analytic, &numeric);
        if !common::within(err, TOLERANCE) {
            failures.push(format!(
                "{op}: d/d{}: relative L2 error {err:.3e} > {TOLERANCE:.0e}",
                input.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv2d_stride_padding_dilation_bias() {
    let mut rng = StdRng::seed_from_u64(1);
    for opts in [
        Conv2dOptions {
            stride: (2, 1),
            padding: (1, 1),
            dilation: (1, 1),
        },
        Conv2dOptions {
            stride: (1, 1),
            padding: (2, 1),
            dilation: (2, 1),
        },
    ] {
        let inputs = vec![
            normal("input", &[2, 2, 5, 4], 1.0, &mut rng),
            normal("weight", &[3, 2, 3, 2], 0.5, &mut rng),
            normal("bias", &[3], 1.0, &mut rng),
        ];
        gradcheck("conv2d", inputs, |t| {
            ops::conv2d(&t[0], &t[1], Some(&t[2]), opts)
        });
    }
}

#[test]
fn conv2d_without_bias() {
    let mut rng = StdRng::seed_from_u64(2);
    let inputs = vec![
        normal("input", &[1, 3, 4, 4], 1.0, &mut rng),
        normal("weight", &[2, 3, 1, 1], 0.5, &mut rng),
    ];
    let opts = Conv2dOptions {
        stride: (2, 2),
        ..Default::default()
    };
    gradcheck("conv2d (no bias, 1x1 stride 2)", inputs, |t| {
        ops::conv2d(&t[0], &t[1], None, opts)
    });
}

#[test]
fn batch_norm_training() {
    let mut rng = StdRng::seed_from_u64(3);
    let inputs = vec![
        normal("input", &[3, 2, 3, 2], 1.0, &mut rng),
        normal("weight", &[2], 1.0, &mut rng),
        normal("bias", &[2], 1.0, &mut rng),
    ];
    let opts = BatchNormOptions::default();
    // No running statistics: their in-place update would make repeated
    // forwards differ (it does not feed the training-mode output anyway).
    gradcheck("batch_norm (train)", inputs, |t| {
        ops::batch_norm(&t[0], Some(&t[1]), Some(&t[2]), None, None, opts)
    });
}

#[test]
fn batch_norm_training_without_affine() {
    let mut rng = StdRng::seed_from_u64(4);
    let inputs = vec![normal("input", &[4, 3, 2, 1], 1.0, &mut rng)];
    let opts = BatchNormOptions::default();
    gradcheck("batch_norm (train, no affine)", inputs, |t| {
        ops::batch_norm(&t[0], None, None, None, None, opts)
    });
}

#[test]
fn batch_norm_eval() {
    let mut rng = StdRng::seed_from_u64(5);
    let inputs = vec![
        normal("input", &[2, 3, 2, 2], 1.0, &mut rng),
        normal("weight", &[3], 1.0, &mut rng),
        normal("bias", &[3], 1.0, &mut rng),
    ];
    let mean = Tensor::from_vec(vec![0.3, -0.2, 0.1], &[3], Device::Cpu).expect("mean");
    let var = Tensor::from_vec(vec![0.5, 1.5, 2.0], &[3], Device::Cpu).expect("var");
    let opts = BatchNormOptions {
        training: false,
        ..Default::default()
    };
    gradcheck("batch_norm (eval)", inputs, |t| {
        ops::batch_norm(
            &t[0],
            Some(&t[1]),
            Some(&t[2]),
            Some(&mean),
            Some(&var),
            opts,
        )
    });
}

#[test]
fn relu_away_from_the_kink() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut input = normal("input", &[2, 3, 4], 1.0, &mut rng);
    for v in &mut input.values {
        // |x| >= 0.1 > STEP: a perturbation never crosses zero.
        *v = v.signum() * (v.abs() + 0.1);
    }
    gradcheck("relu", vec![input], |t| ops::relu(&t[0]));
}

#[test]
fn add_relu_away_from_the_kink() {
    let mut rng = StdRng::seed_from_u64(16);
    let input = normal("input", &[2, 3, 4], 1.0, &mut rng);
    let mut other = normal("other", &[2, 3, 4], 1.0, &mut rng);
    for (o, &x) in other.values.iter_mut().zip(&input.values) {
        // |x + o| >= 0.1 > 2 * STEP: no perturbation of either crosses zero.
        let s = x + *o;
        if s.abs() < 0.1 {
            *o += 0.2f32.copysign(s);
        }
    }
    let inputs = || {
        [&input, &other]
            .map(|i| Input {
                name: i.name,
                shape: i.shape.clone(),
                values: i.values.clone(),
            })
            .into()
    };
    // The leaves are kept, so this runs out of place ...
    gradcheck("add_relu", inputs(), |t| ops::add_relu(t[0].clone(), &t[1]));
    // ... and through `x * 1` (a new tensor no one else holds) in place.
    gradcheck("add_relu (in place)", inputs(), |t| {
        let one = Tensor::from_vec(vec![1.0], &[1], Device::Cpu)?;
        ops::add_relu(ops::mul(&t[0], &one)?, &t[1])
    });
}

#[test]
fn max_pool2d_with_distinct_window_values() {
    let mut rng = StdRng::seed_from_u64(7);
    let shape = [2, 2, 7, 6];
    let n: usize = shape.iter().product();
    // Distinct values 0.05 apart, shuffled: a ±STEP perturbation cannot
    // change which element of a window is the maximum.
    let mut values: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    values.shuffle(&mut rng);
    let input = Input {
        name: "input",
        shape: shape.to_vec(),
        values,
    };
    let opts = MaxPool2dOptions {
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 1),
        dilation: (1, 1),
    };
    gradcheck("max_pool2d", vec![input], |t| ops::max_pool2d(&t[0], opts));
}

#[test]
fn adaptive_avg_pool2d_non_divisible_and_global() {
    let mut rng = StdRng::seed_from_u64(8);
    for size in [(3, 2), (1, 1), (4, 4)] {
        let input = normal("input", &[2, 2, 5, 7], 1.0, &mut rng);
        gradcheck("adaptive_avg_pool2d", vec![input], |t| {
            ops::adaptive_avg_pool2d(&t[0], size)
        });
    }
}

#[test]
fn linear_with_and_without_bias() {
    let mut rng = StdRng::seed_from_u64(9);
    let inputs = vec![
        normal("input", &[3, 5], 1.0, &mut rng),
        normal("weight", &[4, 5], 0.5, &mut rng),
        normal("bias", &[4], 1.0, &mut rng),
    ];
    gradcheck("linear", inputs, |t| ops::linear(&t[0], &t[1], Some(&t[2])));
    let inputs = vec![
        normal("input", &[2, 3], 1.0, &mut rng),
        normal("weight", &[5, 3], 0.5, &mut rng),
    ];
    gradcheck("linear (no bias)", inputs, |t| {
        ops::linear(&t[0], &t[1], None)
    });
}

#[test]
fn add_and_reductions() {
    let mut rng = StdRng::seed_from_u64(10);
    let inputs = vec![
        normal("input", &[2, 3], 1.0, &mut rng),
        normal("other", &[2, 3], 1.0, &mut rng),
    ];
    gradcheck("add", inputs, |t| ops::add(&t[0], &t[1]));
    gradcheck("sum", vec![normal("input", &[3, 4], 1.0, &mut rng)], |t| {
        ops::sum(&t[0])
    });
    gradcheck("mean", vec![normal("input", &[3, 4], 1.0, &mut rng)], |t| {
        ops::mean(&t[0])
    });
    gradcheck(
        "flatten",
        vec![normal("input", &[2, 3, 2], 1.0, &mut rng)],
        |t| ops::flatten(&t[0], 1),
    );
}

#[test]
fn softmax_family() {
    let mut rng = StdRng::seed_from_u64(11);
    let labels = Tensor::from_vec_i64(vec![2, 0, 4], &[3], Device::Cpu).expect("labels");
    gradcheck(
        "log_softmax",
        vec![normal("input", &[3, 5], 2.0, &mut rng)],
        |t| ops::log_softmax(&t[0]),
    );
    gradcheck(
        "nll_loss",
        vec![normal("input", &[3, 5], 1.0, &mut rng)],
        |t| ops::nll_loss(&t[0], &labels),
    );
    gradcheck(
        "cross_entropy",
        vec![normal("input", &[3, 5], 2.0, &mut rng)],
        |t| ops::cross_entropy(&t[0], &labels),
    );
}

/// A smooth composition (no ReLU or max-pool kinks), so the whole chain's
/// backward, including the engine's gradient routing, is checked at once.
#[test]
fn smooth_network_end_to_end() {
    let mut rng = StdRng::seed_from_u64(12);
    let inputs = vec![
        normal("input", &[2, 2, 5, 5], 1.0, &mut rng),
        normal("conv.weight", &[3, 2, 3, 3], 0.4, &mut rng),
        normal("bn.weight", &[3], 1.0, &mut rng),
        normal("fc.weight", &[4, 12], 0.5, &mut rng),
    ];
    let labels = Tensor::from_vec_i64(vec![1, 3], &[2], Device::Cpu).expect("labels");
    gradcheck("conv-bn-pool-linear-cross_entropy", inputs, |t| {
        let h = ops::conv2d(
            &t[0],
            &t[1],
            None,
            Conv2dOptions {
                stride: (2, 2),
                padding: (1, 1),
                dilation: (1, 1),
            },
        )?;
        let h = ops::batch_norm(
            &h,
            Some(&t[2]),
            None,
            None,
            None,
            BatchNormOptions::default(),
        )?;
        let h = ops::add(&h, &h)?;
        let h = ops::adaptive_avg_pool2d(&h, (2, 2))?;
        let h = ops::flatten(&h, 1)?;
        ops::cross_entropy(&ops::linear(&h, &t[3], None)?, &labels)
    });
}

/// Inputs for the fused batch norm + ReLU, drawn from successive seeds
/// until every pre-ReLU value (the plain batch norm `pre`) is at least 0.25
/// from the kink, with both signs present so the mask both passes and
/// blocks. A step of h = 1e-2 moves a pre-ReLU value by well under 0.1
/// (|γ|·invstd·h·(1 + |x̂|) with γ, x̂ of order 1), so no perturbation
/// crosses zero.
fn away_from_bn_relu_kink(
    make: impl Fn(&mut StdRng) -> Vec<Input>,
    pre: impl Fn(&[Tensor]) -> frostgrad::Result<Tensor>,
) -> Vec<Input> {
    for seed in 0..10_000 {
        let inputs = make(&mut StdRng::seed_from_u64(seed));
        let y = pre(&leaves(&inputs, false))
            .and_then(|t| t.to_vec_f32())
            .expect("forward");
        let clear = y.iter().all(|v| v.abs() >= 0.25);
        if clear && y.iter().any(|&v| v > 0.0) && y.iter().any(|&v| v < 0.0) {
            return inputs;
        }
    }
    panic!("no seed gave batch-norm outputs away from the ReLU kink")
}

#[test]
fn batch_norm_relu_training() {
    let make = |rng: &mut StdRng| {
        vec![
            normal("input", &[3, 2, 2, 1], 1.0, rng),
            normal("weight", &[2], 1.0, rng),
            normal("bias", &[2], 1.0, rng),
        ]
    };
    let opts = BatchNormOptions::default();
    let inputs = away_from_bn_relu_kink(make, |t| {
        ops::batch_norm(&t[0], Some(&t[1]), Some(&t[2]), None, None, opts)
    });
    gradcheck("batch_norm_relu (train)", inputs, |t| {
        ops::batch_norm_relu(&t[0], Some(&t[1]), Some(&t[2]), None, None, opts)
    });
}

#[test]
fn batch_norm_relu_eval() {
    let make = |rng: &mut StdRng| {
        vec![
            normal("input", &[2, 3, 2, 1], 1.0, rng),
            normal("weight", &[3], 1.0, rng),
            normal("bias", &[3], 1.0, rng),
        ]
    };
    let mean = Tensor::from_vec(vec![0.3, -0.2, 0.1], &[3], Device::Cpu).expect("mean");
    let var = Tensor::from_vec(vec![0.5, 1.5, 2.0], &[3], Device::Cpu).expect("var");
    let opts = BatchNormOptions {
        training: false,
        ..Default::default()
    };
    let bn = |t: &[Tensor], fused: bool| {
        let f = if fused {
            ops::batch_norm_relu
        } else {
            ops::batch_norm
        };
        f(
            &t[0],
            Some(&t[1]),
            Some(&t[2]),
            Some(&mean),
            Some(&var),
            opts,
        )
    };
    let inputs = away_from_bn_relu_kink(make, |t| bn(t, false));
    gradcheck("batch_norm_relu (eval)", inputs, |t| bn(t, true));
}
