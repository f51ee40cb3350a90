//! Op-level parity with PyTorch.
//!
//! Every file in `tests/fixtures/ops/` (written by
//! `scripts/gen_references.py`) holds f32 inputs, a fixed cotangent `R`, and
//! PyTorch's float64 output and gradients of `sum(out * R)`. We run the op
//! on the CPU in f32 on the same inputs, backpropagate `sum(out * R)`, and
//! compare outputs and every input gradient by relative L2 error.
//!
//! Tolerance: [`TOLERANCE`] = 1e-5. The inputs are identical bit for bit, so
//! the only difference is f32 rounding (unit roundoff 6e-8) in our kernels.
//! The longest accumulations here are ~300 terms (a 7x7x3 conv window, a
//! batch-norm channel of 45 values summed twice), whose rounding error grows
//! like sqrt(k)·u to a few 1e-7 for well-conditioned data; 1e-5 leaves a
//! 10-30x margin for unlucky cancellation, while any wrong index, missed
//! padding, wrong tie-break or missing term shows up as an error of order
//! 1e-2..1.

mod common;

use common::{contract, grad_of, rel_l2, widen, Fixture};
use frostgrad::ops::{self, BatchNormOptions, Conv2dOptions, MaxPool2dOptions};
use frostgrad::Tensor;

const TOLERANCE: f64 = 1e-5;

/// The `grad_fn` name PyTorch printed. (PyTorch lowers
/// `adaptive_avg_pool2d(x, 1)` to `x.mean((-2, -1))` and prints
/// `MeanBackward1`; frostgrad's node takes that name for a 1x1 output so
/// graphs compare node for node.)
fn expected_grad_fn_name(fixture: &Fixture) -> &str {
    match (fixture.meta("op"), fixture.meta("torch_grad_fn")) {
        // PyTorch runs `relu(a + b)` as two nodes, ReluBackward0 on top;
        // frostgrad's fused op is one node reporting the ReLU it absorbed.
        ("add_relu", "ReluBackward0") => "AddReluBackward0",
        (_, name) => name,
    }
}

fn pair(fixture: &Fixture, key: &str) -> (usize, usize) {
    let v: Vec<usize> = fixture
        .meta(key)
        .split(',')
        .map(|s| s.trim().parse().expect("integer parameter"))
        .collect();
    assert_eq!(
        v.len(),
        2,
        "{}: `{key}` should be two integers",
        fixture.name
    );
    (v[0], v[1])
}

/// The leaves that require a gradient, by input name.
type Leaves = Vec<(&'static str, Tensor)>;

/// The differentiable inputs of an op, in the order the fixture names them.
const DIFFERENTIABLE: [&str; 4] = ["input", "weight", "bias", "other"];

/// Runs the fixture's op on leaves built from its inputs and returns the
/// output plus the leaves that require a gradient (by name).
fn run_op(fx: &Fixture) -> (Tensor, Leaves) {
    let leaves: Vec<(&'static str, Tensor)> = DIFFERENTIABLE
        .iter()
        .filter(|n| fx.has(&format!("in.{n}")))
        .map(|&n| (n, fx.tensor(&format!("in.{n}"), true)))
        .collect();
    let get = |n: &str| leaves.iter().find(|(k, _)| *k == n).map(|(_, t)| t);
    let input = get("input").expect("every op case has an input");
    let out = match fx.meta("op") {
        "conv2d" => {
            let opts = Conv2dOptions {
                stride: pair(fx, "stride"),
                padding: pair(fx, "padding"),
                dilation: pair(fx, "dilation"),
            };
            ops::conv2d(input, get("weight").expect("weight"), get("bias"), opts)
        }
        "batch_norm" => unreachable!("batch norm is run by run_batch_norm"),
        "relu" => ops::relu(input),
        "max_pool2d" => ops::max_pool2d(
            input,
            MaxPool2dOptions {
                kernel: pair(fx, "kernel"),
                stride: pair(fx, "stride"),
                padding: pair(fx, "padding"),
                dilation: pair(fx, "dilation"),
            },
        ),
        "adaptive_avg_pool2d" => ops::adaptive_avg_pool2d(input, pair(fx, "output_size")),
        "linear" => ops::linear(input, get("weight").expect("weight"), get("bias")),
        "add" => ops::add(input, get("other").expect("other")),
        "add_relu" => ops::add_relu(input.clone(), get("other").expect("other")),
        "sum" => ops::sum(input),
        "mean" => ops::mean(input),
        "flatten" => ops::flatten(input, fx.meta("start_dim").parse().expect("start_dim")),
        "log_softmax" => ops::log_softmax(input),
        "nll_loss" => ops::nll_loss(input, &fx.tensor_i64("in.labels")),
        "cross_entropy" => ops::cross_entropy(input, &fx.tensor_i64("in.labels")),
        other => panic!("{}: unknown op `{other}`", fx.name),
    };
    (
        out.unwrap_or_else(|e| panic!("{}: forward failed: {e}", fx.name)),
        leaves,
    )
}

/// Batch norm also takes running statistics (not differentiable, updated in
/// place in training mode); returns them too so they can be compared.
fn run_batch_norm(fx: &Fixture) -> (Tensor, Leaves, Option<(Tensor, Tensor)>) {
    let leaves: Vec<(&'static str, Tensor)> = ["input", "weight", "bias"]
        .iter()
        .filter(|n| fx.has(&format!("in.{n}")))
        .map(|&n| (n, fx.tensor(&format!("in.{n}"), true)))
        .collect();
    let get = |n: &str| leaves.iter().find(|(k, _)| *k == n).map(|(_, t)| t);
    let running = fx.has("in.running_mean").then(|| {
        (
            fx.tensor("in.running_mean", false),
            fx.tensor("in.running_var", false),
        )
    });
    let opts = BatchNormOptions {
        training: fx.meta("training") == "1",
        momentum: fx.meta("momentum").parse().expect("momentum"),
        eps: fx.meta("eps").parse().expect("eps"),
    };
    let out = ops::batch_norm(
        get("input").expect("input"),
        get("weight"),
        get("bias"),
        running.as_ref().map(|r| &r.0),
        running.as_ref().map(|r| &r.1),
        opts,
    )
    .unwrap_or_else(|e| panic!("{}: forward failed: {e}", fx.name));
    (out, leaves, running)
}

/// `|| gamma_c * invstd_c * R ||`: the size of the terms whose cancellation
/// is batch norm's input gradient. Used instead of the gradient's own norm
/// for the case the script marks as cancelling almost completely (two
/// values per channel), where float32 can only promise accuracy relative to
/// these terms (PyTorch's own float32 result is 8e-3 off relative to the
/// tiny gradient).
fn batch_norm_input_grad_terms(fx: &Fixture) -> f64 {
    let shape = fx.shape("in.input");
    let x = fx.f64("in.input");
    let gamma = fx.f64("in.weight");
    let r = fx.f64("cotangent");
    let (channels, spatial): (usize, usize) = (shape[1], shape[2..].iter().product());
    let eps: f64 = fx.meta("eps").parse().expect("eps");
    let channel_of = |i: usize| (i / spatial) % channels;
    let mut sum = vec![0.0; channels];
    let mut sq = vec![0.0; channels];
    let count = (x.len() / channels) as f64;
    for (i, v) in x.iter().enumerate() {
        sum[channel_of(i)] += v;
        sq[channel_of(i)] += v * v;
    }
    let invstd: Vec<f64> = (0..channels)
        .map(|c| {
            let mean = sum[c] / count;
            1.0 / (sq[c] / count - mean * mean + eps).sqrt()
        })
        .collect();
    let terms: Vec<f64> = r
        .iter()
        .enumerate()
        .map(|(i, v)| gamma[channel_of(i)] * invstd[channel_of(i)] * v)
        .collect();
    common::l2(&terms)
}

/// Compares one fixture; returns a line per failed check.
fn check(fx: &Fixture) -> Vec<String> {
    let mut failures = Vec::new();
    let compare = |failures: &mut Vec<String>, what: &str, actual: &[f64], expected: &[f64]| {
        if actual.len() != expected.len() {
            failures.push(format!(
                "{}: {what}: {} values, expected {}",
                fx.name,
                actual.len(),
                expected.len()
            ));
            return;
        }
        let err = rel_l2(actual, expected);
        if !common::within(err, TOLERANCE) {
            failures.push(format!(
                "{}: {what}: relative L2 error {err:.3e} > {TOLERANCE:.0e}",
                fx.name
            ));
        }
    };
    let (out, leaves, running) = if fx.meta("op") == "batch_norm" {
        run_batch_norm(fx)
    } else {
        let (o, l) = run_op(fx);
        (o, l, None)
    };

    let expected_shape = fx.shape("out");
    if out.shape() != expected_shape.as_slice() {
        failures.push(format!(
            "{}: output shape {:?}, expected {expected_shape:?}",
            fx.name,
            out.shape()
        ));
        return failures;
    }
    compare(
        &mut failures,
        "output",
        &widen(&out.to_vec_f32().expect("f32 output")),
        &fx.f64("out"),
    );
    if let Some((mean, var)) = &running {
        if fx.has("out.running_mean") {
            compare(
                &mut failures,
                "running_mean",
                &widen(&mean.to_vec_f32().expect("f32")),
                &fx.f64("out.running_mean"),
            );
            compare(
                &mut failures,
                "running_var",
                &widen(&var.to_vec_f32().expect("f32")),
                &fx.f64("out.running_var"),
            );
        } else {
            // Eval mode: the running statistics are read, never written.
            compare(
                &mut failures,
                "running_mean (unchanged)",
                &widen(&mean.to_vec_f32().expect("f32")),
                &fx.f64("in.running_mean"),
            );
            compare(
                &mut failures,
                "running_var (unchanged)",
                &widen(&var.to_vec_f32().expect("f32")),
                &fx.f64("in.running_var"),
            );
        }
    }

    let name = out.grad_fn().map(|g| g.name()).unwrap_or("<none>");
    if name != expected_grad_fn_name(fx) {
        failures.push(format!(
            "{}: grad_fn {name}, PyTorch prints {}",
            fx.name,
            fx.meta("torch_grad_fn")
        ));
    }

    if let Err(e) = contract(&out, &fx.f32("cotangent")).backward() {
        failures.push(format!("{}: backward failed: {e}", fx.name));
        return failures;
    }
    for (input_name, leaf) in &leaves {
        let key = format!("grad.{input_name}");
        if !fx.has(&key) {
            failures.push(format!("{}: fixture lacks {key}", fx.name));
            continue;
        }
        if leaf.grad().is_none() {
            failures.push(format!("{}: no gradient for `{input_name}`", fx.name));
            continue;
        }
        let actual = grad_of(leaf);
        let expected = fx.f64(&key);
        if *input_name == "input" && fx.meta_opt("input_grad_error_scale") == Some("terms") {
            let scale = batch_norm_input_grad_terms(fx);
            let diff: Vec<f64> = actual.iter().zip(&expected).map(|(a, e)| a - e).collect();
            let err = common::l2(&diff) / scale;
            if !common::within(err, TOLERANCE) {
                failures.push(format!(
                    "{}: d/dinput: L2 error {err:.3e} of the terms' size > {TOLERANCE:.0e}",
                    fx.name
                ));
            }
            continue;
        }
        compare(
            &mut failures,
            &format!("d/d{input_name}"),
            &actual,
            &expected,
        );
    }
    failures
}

/// Checks every fixture of `op` (at least `min_cases`, so a missing fixture
/// directory cannot pass vacuously) and reports all failures at once.
fn check_op(op: &str, min_cases: usize) {
    let fixtures: Vec<Fixture> = Fixture::load_dir(&common::fixture_dir("ops"))
        .into_iter()
        .filter(|f| f.meta_opt("op") == Some(op))
        .collect();
    assert!(
        fixtures.len() >= min_cases,
        "expected at least {min_cases} `{op}` fixtures, found {}; run scripts/gen_references.py",
        fixtures.len()
    );
    let failures: Vec<String> = fixtures.iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `f` once on every SIMD path of the CPU GEMM this machine supports
/// (the path is process-wide, so the tests that switch it take turns).
fn on_every_simd_path(f: impl Fn()) {
    use frostgrad::backend::cpu::simd;
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let before = simd::active();
    for path in simd::supported() {
        simd::force(path).unwrap();
        f();
    }
    simd::force(before).unwrap();
}

#[test]
fn conv2d_matches_pytorch() {
    on_every_simd_path(|| check_op("conv2d", 9));
}

#[test]
fn batch_norm_matches_pytorch() {
    check_op("batch_norm", 8);
}

#[test]
fn relu_matches_pytorch_including_exact_zeros() {
    check_op("relu", 2);
}

#[test]
fn max_pool2d_matches_pytorch_including_ties() {
    check_op("max_pool2d", 6);
}

#[test]
fn adaptive_avg_pool2d_matches_pytorch() {
    check_op("adaptive_avg_pool2d", 5);
}

#[test]
fn linear_matches_pytorch() {
    on_every_simd_path(|| check_op("linear", 3));
}

#[test]
fn add_relu_matches_pytorch_including_exact_zeros() {
    check_op("add_relu", 2);
}

#[test]
fn add_sum_mean_flatten_match_pytorch() {
    for op in ["add", "sum", "mean", "flatten"] {
        check_op(op, 1);
    }
}

#[test]
fn softmax_family_matches_pytorch_including_large_logits() {
    check_op("log_softmax", 2);
    check_op("cross_entropy", 2);
    check_op("nll_loss", 1);
}

/// The fixture set as a whole: every op the engine exports has cases, and
/// the directory stays small enough to commit.
#[test]
fn fixtures_cover_every_op_and_stay_small() {
    let dir = common::fixture_dir("ops");
    let fixtures = Fixture::load_dir(&dir);
    let mut ops: Vec<&str> = fixtures.iter().map(|f| f.meta("op")).collect();
    ops.sort();
    ops.dedup();
    for op in [
        "adaptive_avg_pool2d",
        "add",
        "add_relu",
        "batch_norm",
        "conv2d",
        "cross_entropy",
        "flatten",
        "linear",
        "log_softmax",
        "max_pool2d",
        "mean",
        "nll_loss",
        "relu",
        "sum",
    ] {
        assert!(ops.contains(&op), "no fixture for {op}");
    }
    let bytes: u64 = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    assert!(
        bytes < 1 << 20,
        "tests/fixtures/ops is {bytes} bytes; keep it under 1 MiB"
    );
}

/// Inputs of zero height or width (or batch 0, or no input channels) with
/// enough padding for a non-empty output: every window sees padding only,
/// so `y` is the bias (0 without one), `dW` is 0, `db` the cotangent's sum
/// per channel, `dx` empty. (PyTorch 2.9.1 raises "Only zero batch or zero
/// channel inputs are supported" for a zero-height or zero-width input of
/// batch > 0, and gives these values for batch 0 and for no input
/// channels; this engine gives them for all.) On pools of 1 to 4 threads,
/// so that both the direct convolution's whole-image form (batch >= threads)
/// and its row split (batch < threads) would be asked: before
/// `direct_width` turned these shapes away, its chunks of zero input
/// floats panicked there; with no input channels the im2col GEMM's depth
/// blocks of zero floats panicked (the forward now returns the bias).
#[test]
fn conv2d_of_empty_inputs_gives_the_bias_without_panicking() {
    let t = |v: Vec<f32>, shape: &[usize]| {
        Tensor::from_vec(v, shape, frostgrad::Device::Cpu)
            .and_then(|t| t.requires_grad_(true))
            .expect("leaf")
    };
    type Case = ([usize; 4], [usize; 4], (usize, usize));
    let cases: &[Case] = &[
        ([1, 3, 0, 0], [4, 3, 2, 2], (1, 1)),
        ([2, 3, 0, 0], [4, 3, 2, 2], (1, 1)),
        ([3, 3, 0, 0], [5, 3, 3, 3], (2, 2)),
        ([1, 3, 0, 5], [4, 3, 2, 3], (1, 1)),
        ([2, 5, 4, 0], [6, 5, 3, 2], (1, 1)),
        ([0, 3, 4, 4], [4, 3, 2, 2], (1, 1)),
        ([1, 0, 4, 4], [4, 0, 3, 3], (1, 1)),
    ];
    on_every_simd_path(|| {
        for threads in 1..=4 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            for &(input, weight, padding) in cases {
                let what =
                    format!("{input:?} * {weight:?}, padding {padding:?}, {threads} threads");
                let x = t(vec![], &input);
                let w_len = weight.iter().product();
                let w = t((0..w_len).map(|i| i as f32 * 0.25 - 1.0).collect(), &weight);
                let b_vals: Vec<f32> = (0..weight[0]).map(|i| i as f32 + 0.5).collect();
                let b = t(b_vals.clone(), &[weight[0]]);
                let opts = Conv2dOptions {
                    stride: (1, 1),
                    padding,
                    dilation: (1, 1),
                };
                pool.install(|| {
                    let out_h = input[2] + 2 * padding.0 + 1 - weight[2];
                    let out_w = input[3] + 2 * padding.1 + 1 - weight[3];
                    let shape = [input[0], weight[0], out_h, out_w];
                    let pixels = out_h * out_w;
                    let y = ops::conv2d(&x, &w, Some(&b), opts)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(y.shape(), &shape[..], "{what}: shape");
                    let y_vals = y.to_vec_f32().expect("y");
                    let want: Vec<f32> = (0..y_vals.len())
                        .map(|i| b_vals[i / pixels % weight[0]])
                        .collect();
                    assert_eq!(y_vals, want, "{what}: y is the bias");
                    let unbiased = ops::conv2d(&x, &w, None, opts).expect("no bias");
                    let zeros = unbiased.to_vec_f32().expect("y");
                    assert!(zeros.iter().all(|&v| v == 0.0), "{what}: y without bias");
                    // Backward of sum(y * R), R = 1, 2, 3, ...
                    let r: Vec<f32> = (0..y_vals.len()).map(|i| i as f32 + 1.0).collect();
                    contract(&y, &r)
                        .backward()
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(grad_of(&x).is_empty(), "{what}: dx");
                    assert_eq!(grad_of(&w), vec![0.0; w_len], "{what}: dW");
                    let mut db = vec![0.0; weight[0]];
                    for (i, &v) in r.iter().enumerate() {
                        db[i / pixels % weight[0]] += f64::from(v);
                    }
                    assert_eq!(grad_of(&b), db, "{what}: db");
                });
            }
        }
    });
}
