//! The general op set: PyTorch parity (float64 references from
//! scripts/gen_general_ops.py, broadcasting included), finite differences,
//! CPU vs CUDA (a real GPU, else the host emulation), operators, errors.
//!
//! Tolerances. Against PyTorch's float64 the f32 result differs by f32
//! rounding: a relative L2 error of ~1e-7 per op, a few times that through
//! the composed backward formulas (tanh's 1 - y², div's a/b²); 1e-5, as in
//! tests/ops_parity.rs, is far below what a wrong term (O(1)) would give.
//! CPU vs CUDA: the same f32 formulas, different libm and summation order:
//! 1e-5 as well.

mod common;
#[path = "common/cuda_emu.rs"]
mod cuda_emu;

use common::{rel_l2, widen, Fixture};
use frostgrad::ops;
use frostgrad::{no_grad, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOLERANCE: f64 = 1e-5;

fn ints(s: &str) -> Vec<isize> {
    s.split(',')
        .map(|v| v.trim().parse().expect("integer"))
        .collect()
}

/// Runs the fixture's op on `inputs` (in the fixture's order).
fn run(f: &Fixture, x: &[Tensor]) -> frostgrad::Result<Tensor> {
    let name = f.name.as_str();
    let op = name.split('_').next().unwrap_or(name);
    match op {
        "add" => &x[0] + &x[1],
        "sub" => &x[0] - &x[1],
        "mul" => &x[0] * &x[1],
        "div" => &x[0] / &x[1],
        "neg" => -&x[0],
        "pow" => ops::pow(&x[0], f.meta("exponent").parse().expect("exponent")),
        "exp" => ops::exp(&x[0]),
        "log" => ops::log(&x[0]),
        "tanh" => ops::tanh(&x[0]),
        "sigmoid" => ops::sigmoid(&x[0]),
        "matmul" => ops::matmul(&x[0], &x[1]),
        "transpose" => {
            let d = ints(f.meta("dims"));
            ops::transpose(&x[0], d[0], d[1])
        }
        "permute" => {
            let p: Vec<usize> = ints(f.meta("perm")).iter().map(|&v| v as usize).collect();
            ops::permute(&x[0], &p)
        }
        "sum" | "mean" | "max" => {
            let dims = ints(f.meta("dims"));
            let keepdim = f.meta("keepdim") == "1";
            match op {
                "sum" => ops::sum_dims(&x[0], &dims, keepdim),
                "mean" => ops::mean_dims(&x[0], &dims, keepdim),
                _ => ops::max_dims(&x[0], &dims, keepdim),
            }
        }
        other => panic!("{name}: no op `{other}`"),
    }
}

fn input_names(f: &Fixture) -> Vec<String> {
    f.meta("inputs").split(',').map(str::to_string).collect()
}

/// The op's output and its inputs' gradients of sum(out * R), on `device`.
fn forward_backward(f: &Fixture, device: Device) -> (Vec<f32>, Vec<Vec<f32>>, String) {
    let leaves: Vec<Tensor> = input_names(f)
        .iter()
        .map(|n| {
            let key = format!("in.{n}");
            Tensor::from_vec(f.f32(&key), &f.shape(&key), device)
                .and_then(|t| t.requires_grad_(true))
                .expect("leaf")
        })
        .collect();
    let out = run(f, &leaves).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    let name = out.grad_fn().expect("grad_fn").name().to_string();
    let r = Tensor::from_vec(f.f32("cotangent"), out.shape(), device).expect("R");
    let loss = ops::sum(&(&out * &r).expect("out * R")).expect("sum");
    loss.backward().expect("backward");
    let grads = leaves
        .iter()
        .map(|l| l.grad().expect("grad").to_vec_f32().expect("f32"))
        .collect();
    (out.to_vec_f32().expect("out"), grads, name)
}

#[test]
fn matches_pytorch() {
    let fixtures = Fixture::load_dir(&common::fixture_dir("general"));
    assert_eq!(
        fixtures.len(),
        24,
        "fixtures from scripts/gen_general_ops.py"
    );
    let mut failures = Vec::new();
    for f in &fixtures {
        let (out, grads, grad_fn) = forward_backward(f, Device::Cpu);
        // PyTorch's matmul of batched operands records a view over a bmm
        // (UnsafeViewBackward0 -> BmmBackward0); ours is one BmmBackward0 node.
        let expected_name = match f.meta("torch_grad_fn") {
            "UnsafeViewBackward0" => "BmmBackward0",
            n => n,
        };
        if grad_fn != expected_name {
            failures.push(format!(
                "{}: grad_fn {grad_fn}, PyTorch {expected_name}",
                f.name
            ));
        }
        let err = rel_l2(&widen(&out), &f.f64("out"));
        if !common::within(err, TOLERANCE) {
            failures.push(format!("{}: output rel L2 {err:.2e}", f.name));
        }
        for (n, g) in input_names(f).iter().zip(&grads) {
            let err = rel_l2(&widen(g), &f.f64(&format!("grad.{n}")));
            if !common::within(err, TOLERANCE) {
                failures.push(format!("{}: d/d{n} rel L2 {err:.2e}", f.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every fixture's forward and backward on CUDA equal the CPU's.
#[test]
fn cuda_matches_cpu() {
    cuda_emu::cuda_test("cuda_matches_cpu", || {
        let mut failures = Vec::new();
        for f in &Fixture::load_dir(&common::fixture_dir("general")) {
            let (c_out, c_grads, _) = forward_backward(f, Device::Cpu);
            let (g_out, g_grads, _) = forward_backward(f, Device::Cuda(0));
            let err = rel_l2(&widen(&g_out), &widen(&c_out));
            if !common::within(err, TOLERANCE) {
                failures.push(format!("{}: output rel L2 {err:.2e}", f.name));
            }
            for ((c, g), n) in c_grads.iter().zip(&g_grads).zip(input_names(f)) {
                let err = rel_l2(&widen(g), &widen(c));
                if !common::within(err, TOLERANCE) {
                    failures.push(format!("{}: d/d{n} rel L2 {err:.2e}", f.name));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

/// Central differences, as tests/gradcheck.rs (step 1e-2, relative L2 2e-3;
/// see there for why): `f` of f32 leaves, L = sum(out * R) in f64 on the host.
fn gradcheck(
    op: &str,
    inputs: &[(Vec<usize>, Vec<f32>)],
    f: impl Fn(&[Tensor]) -> frostgrad::Result<Tensor>,
) {
    const STEP: f32 = 1e-2;
    const TOL: f64 = 2e-3;
    let leaves = |grad: bool| -> Vec<Tensor> {
        inputs
            .iter()
            .map(|(s, v)| {
                Tensor::from_vec(v.clone(), s, Device::Cpu)
                    .and_then(|t| t.requires_grad_(grad))
                    .expect("leaf")
            })
            .collect()
    };
    let xs = leaves(true);
    let out = f(&xs).unwrap_or_else(|e| panic!("{op}: {e}"));
    let mut rng = StdRng::seed_from_u64(5);
    let r: Vec<f32> = (0..out.numel())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    common::contract(&out, &r).backward().expect("backward");
    let loss = |x: &[Tensor]| -> f64 {
        let out = no_grad(|| f(x)).expect("forward");
        out.to_vec_f32()
            .expect("f32")
            .iter()
            .zip(&r)
            .map(|(&o, &r)| o as f64 * r as f64)
            .sum()
    };
    for (k, (shape, values)) in inputs.iter().enumerate() {
        let analytic = common::grad_of(&xs[k]);
        let numeric: Vec<f64> = (0..values.len())
            .map(|j| {
                let eval = |delta: f32| {
                    let mut x = leaves(false);
                    let mut v = values.clone();
                    v[j] += delta;
                    x[k] = Tensor::from_vec(v.clone(), shape, Device::Cpu).expect("leaf");
                    (loss(&x), v[j])
                };
                let ((p, xp), (m, xm)) = (eval(STEP), eval(-STEP));
                (p - m) / (xp as f64 - xm as f64)
            })
            .collect();
        let err = rel_l2(&analytic, &numeric);
        assert!(
            common::within(err, TOL),
            "{op}: d/dinput{k}: rel L2 {err:.2e}"
        );
    }
}

fn normal(shape: &[usize], seed: u64) -> (Vec<usize>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let v = (0..shape.iter().product())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    (shape.to_vec(), v)
}

fn positive(shape: &[usize], seed: u64) -> (Vec<usize>, Vec<f32>) {
    let (s, v) = normal(shape, seed);
    (s, v.iter().map(|x| x.abs() + 0.5).collect())
}

#[test]
fn finite_differences() {
    let ab = [normal(&[2, 3, 4], 1), normal(&[3, 1], 2)];
    gradcheck("add", &ab, |x| &x[0] + &x[1]);
    gradcheck("sub", &ab, |x| &x[0] - &x[1]);
    gradcheck("mul", &ab, |x| &x[0] * &x[1]);
    gradcheck("div", &[normal(&[4, 3], 3), positive(&[3], 4)], |x| {
        &x[0] / &x[1]
    });
    gradcheck("neg", &[normal(&[5], 5)], |x| -&x[0]);
    gradcheck("pow", &[positive(&[3, 4], 6)], |x| ops::pow(&x[0], 2.5));
    gradcheck("exp", &[normal(&[3, 4], 7)], |x| ops::exp(&x[0]));
    gradcheck("log", &[positive(&[3, 4], 8)], |x| ops::log(&x[0]));
    gradcheck("tanh", &[normal(&[3, 4], 9)], |x| ops::tanh(&x[0]));
    gradcheck("sigmoid", &[normal(&[3, 4], 10)], |x| ops::sigmoid(&x[0]));
    gradcheck(
        "matmul",
        &[normal(&[2, 1, 3, 5], 11), normal(&[4, 5, 2], 12)],
        |x| ops::matmul(&x[0], &x[1]),
    );
    gradcheck("permute", &[normal(&[2, 3, 4], 13)], |x| {
        ops::permute(&x[0], &[2, 0, 1])
    });
    gradcheck("sum_dims", &[normal(&[3, 4, 5], 14)], |x| {
        ops::sum_dims(&x[0], &[0, 2], false)
    });
    gradcheck("mean_dims", &[normal(&[3, 4, 5], 15)], |x| {
        ops::mean_dims(&x[0], &[1], true)
    });
    // Distinct values more than 2 steps apart: max is differentiable there.
    let spread: Vec<f32> = (0..12).map(|i| ((i * 7) % 12) as f32 * 0.1).collect();
    gradcheck("max_dims", &[(vec![3, 4], spread)], |x| {
        ops::max_dims(&x[0], &[1], false)
    });
}

/// micrograd's first experiment, with operators: d/da (a*b + c) = b, etc.
#[test]
fn micrograd_expression() {
    let leaf = |v: f32| {
        Tensor::from_vec(vec![v], &[1], Device::Cpu)
            .and_then(|t| t.requires_grad_(true))
            .expect("leaf")
    };
    let (a, b, c) = (leaf(2.0), leaf(-3.0), leaf(10.0));
    let y = ops::sum(&(&(&a * &b).expect("mul") + &c).expect("add")).expect("sum");
    assert_eq!(y.to_scalar_f32().expect("value"), 4.0);
    y.backward().expect("backward");
    let g = |t: &Tensor| t.grad().expect("grad").to_vec_f32().expect("f32")[0];
    assert_eq!((g(&a), g(&b), g(&c)), (-3.0, 2.0, 1.0));
}

#[test]
fn shape_errors_are_errors() {
    let t = |s: &[usize]| Tensor::zeros(s, Device::Cpu).expect("zeros");
    assert!(
        (&t(&[2, 3]) + &t(&[4])).is_err(),
        "3 vs 4 does not broadcast"
    );
    assert!(ops::matmul(&t(&[2, 3]), &t(&[4, 2])).is_err(), "inner dims");
    assert!(ops::matmul(&t(&[3]), &t(&[3, 2])).is_err(), "1-d operand");
    assert!(
        ops::sum_dims(&t(&[2, 3]), &[2], false).is_err(),
        "dim out of range"
    );
    assert!(
        ops::sum_dims(&t(&[2, 3]), &[1, -1], false).is_err(),
        "dim twice"
    );
    assert!(
        ops::permute(&t(&[2, 3]), &[0, 0]).is_err(),
        "not a permutation"
    );
    assert!(
        ops::max_dims(&t(&[2, 0]), &[1], false).is_err(),
        "empty reduction"
    );
}

/// Each elementwise op keeps only what the gradients it will compute use,
/// under PyTorch's saved names (`self`, `other`, `result`): `x * frozen_w`
/// keeps `w` and not `x`, `a / b` keeps `b` for either gradient and `a`
/// only for b's, `exp`/`sigmoid`/`tanh` their output, `log` its input.
#[test]
fn elementwise_ops_save_what_their_needed_gradients_use() {
    let t = |v: &[f32], grad: bool| {
        Tensor::from_vec(v.to_vec(), &[v.len()], Device::Cpu)
            .and_then(|t| t.requires_grad_(grad))
            .expect("tensor")
    };
    let root = |out: frostgrad::Result<Tensor>| {
        let node = out.expect("op").graph().nodes.remove(0);
        let saved: Vec<&str> = node.saved.iter().map(|s| s.name).collect();
        (node.grad_fn, saved)
    };
    let (a, b) = ([0.5, 2.0], [4.0, -1.5]);
    for (ga, gb, mul, div) in [
        (true, true, vec!["self", "other"], vec!["self", "other"]),
        (true, false, vec!["other"], vec!["other"]),
        (false, true, vec!["self"], vec!["self", "other"]),
    ] {
        let (x, y) = (t(&a, ga), t(&b, gb));
        assert_eq!(root(&x * &y), ("MulBackward0", mul), "{ga} {gb}");
        assert_eq!(root(&x / &y), ("DivBackward0", div), "{ga} {gb}");
    }
    let x = t(&a, true);
    assert_eq!(root(ops::exp(&x)), ("ExpBackward0", vec!["result"]));
    assert_eq!(root(ops::log(&x)), ("LogBackward0", vec!["self"]));
    assert_eq!(root(ops::sigmoid(&x)), ("SigmoidBackward0", vec!["result"]));
    assert_eq!(root(ops::tanh(&x)), ("TanhBackward0", vec!["result"]));
}
