//! `ops::batch_norm_relu` (fused) against `ops::relu(ops::batch_norm(..))`
//! (the unfused composition) on the CPU: forward values, running
//! statistics, every gradient, which gradients are skipped, the backward
//! statistics (node and `op.input` counts must be identical so benchmarks
//! stay comparable) and the fused node's name. The CPU computes the fused
//! and unfused paths with the same arithmetic in the same order, so the
//! comparison is exact.

mod common;

use frostgrad::ops::{self, BatchNormOptions};
use frostgrad::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

const SHAPE: [usize; 4] = [3, 4, 5, 2];

/// What one forward + backward produced.
#[derive(Debug, PartialEq)]
struct Run {
    output: Vec<f32>,
    running: Option<(Vec<f32>, Vec<f32>)>,
    grads: [Option<Vec<f32>>; 3],
    stats: frostgrad::autograd::BackwardStats,
    grad_fn: Option<&'static str>,
}

fn values(shape: &[usize], seed: u64, mean: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::randn(shape, mean, 1.0, &mut rng, Device::Cpu)
        .and_then(|t| t.to_vec_f32())
        .expect("randn")
}

/// One forward + backward, fused or not. `requires[i]` for
/// `[input, weight, bias]`; the input goes through a `scale`-like op (an
/// add) first when it requires a gradient so that its gradient flows to a
/// node, as in a network.
fn run(fused: bool, training: bool, affine: bool, requires: [bool; 3]) -> Run {
    let c = SHAPE[1];
    let leaf = |v: Vec<f32>, shape: &[usize], rg: bool| {
        Tensor::from_vec(v, shape, Device::Cpu)
            .and_then(|t| t.requires_grad_(rg))
            .expect("leaf")
    };
    let x = leaf(values(&SHAPE, 1, 0.2), &SHAPE, requires[0]);
    let w = affine.then(|| leaf(values(&[c], 2, 0.5), &[c], requires[1]));
    let b = affine.then(|| leaf(values(&[c], 3, 0.0), &[c], requires[2]));
    let rm = leaf(values(&[c], 4, 0.0), &[c], false);
    let rv = leaf(
        values(&[c], 5, 0.0).iter().map(|v| v.abs() + 0.5).collect(),
        &[c],
        false,
    );
    let opts = BatchNormOptions {
        training,
        ..Default::default()
    };
    let args = (w.as_ref(), b.as_ref(), Some(&rm), Some(&rv));
    let out = if fused {
        ops::batch_norm_relu(&x, args.0, args.1, args.2, args.3, opts)
    } else {
        ops::batch_norm(&x, args.0, args.1, args.2, args.3, opts).and_then(|y| ops::relu(&y))
    }
    .expect("forward");
    let output = out.to_vec_f32().expect("output");
    let grad_fn = out.grad_fn().map(|g| g.name());
    let cotangent = values(&SHAPE, 6, 0.0);
    let stats = if out.requires_grad() {
        common::contract(&out, &cotangent)
            .backward()
            .expect("backward")
    } else {
        Default::default()
    };
    let grad = |t: Option<&Tensor>| {
        t.and_then(|t| t.grad())
            .map(|g| g.to_vec_f32().expect("grad"))
    };
    Run {
        output,
        running: training.then(|| (rm.to_vec_f32().unwrap(), rv.to_vec_f32().unwrap())),
        grads: [grad(Some(&x)), grad(w.as_ref()), grad(b.as_ref())],
        stats,
        grad_fn,
    }
}

const REQUIRES: [[bool; 3]; 7] = [
    [true, true, true],
    [true, false, false], // frozen affine, gradient flowing through
    [false, true, true],  // frozen input (a frozen prefix), trainable affine
    [false, true, false], // frozen bias
    [false, false, true], // frozen weight
    [true, true, false],
    [false, false, false], // nothing trainable: no graph at all
];

#[test]
fn fused_matches_the_unfused_composition_exactly() {
    for training in [true, false] {
        for affine in [true, false] {
            for requires in REQUIRES {
                let what = format!("training={training} affine={affine} requires={requires:?}");
                let mut fused = run(true, training, affine, requires);
                let unfused = run(false, training, affine, requires);
                let trainable = requires[0] || (affine && (requires[1] || requires[2]));
                assert_eq!(
                    fused.grad_fn,
                    trainable.then_some("NativeBatchNormReluBackward0"),
                    "{what}"
                );
                assert_eq!(
                    unfused.grad_fn,
                    trainable.then_some("ReluBackward0"),
                    "{what}"
                );
                // The ReLU must both pass and block somewhere.
                assert!(fused.output.contains(&0.0), "{what}");
                assert!(fused.output.iter().any(|&v| v > 0.0), "{what}");
                for (i, g) in fused.grads.iter().enumerate() {
                    let present = i == 0 || affine;
                    assert_eq!(g.is_some(), present && requires[i], "{what}: slot {i}");
                }
                if trainable {
                    assert_eq!(fused.stats.computed("relu.input"), 1, "{what}");
                    assert_eq!(fused.stats.nodes, unfused.stats.nodes, "{what}");
                }
                fused.grad_fn = unfused.grad_fn;
                assert_eq!(fused, unfused, "{what}");
            }
        }
    }
}

#[test]
fn fused_backward_masks_the_gradient() {
    // A channel whose every output is clamped gets no gradient at all.
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4, 1], Device::Cpu)
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let w = Tensor::from_vec(vec![1.0], &[1], Device::Cpu)
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let b = Tensor::from_vec(vec![-10.0], &[1], Device::Cpu)
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let y = ops::batch_norm_relu(&x, Some(&w), Some(&b), None, None, Default::default()).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), vec![0.0; 4]);
    ops::sum(&y).unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), vec![0.0; 4]);
    assert_eq!(w.grad().unwrap().to_vec_f32().unwrap(), vec![0.0]);
    assert_eq!(b.grad().unwrap().to_vec_f32().unwrap(), vec![0.0]);
}
