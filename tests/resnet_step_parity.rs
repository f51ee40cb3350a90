//! One `frostgrad step` on ResNet-18 against PyTorch in float64.
//!
//! `scripts/gen_references.py` builds torchvision's ResNet-18 (10 classes)
//! with weights and a batch given by formulas (mirrored below), runs one
//! train-mode step (cross-entropy, backward, SGD lr 0.1, momentum 0.9,
//! weight decay 1e-4) in float64 in several freezing modes, and commits
//! compact summaries of every output tensor to `tests/fixtures/resnet/`.
//! This test writes the same weights and batch as safetensors, runs the real
//! `frostgrad step` binary, and checks:
//!
//! - logits and loss (stored in full): relative L2 error <= 1e-4;
//! - every `param.*` and `buffer.*`: summaries within 1e-4, and frozen
//!   parameters bit-identical to what was written (no decay, no update);
//! - every `grad.*`: summaries within 1e-3; no `grad.*` for a frozen
//!   parameter, and one for every trainable one;
//! - the backward statistics: per `op.input` computed/skipped counts for
//!   conv2d, batch_norm and linear equal the script's, which it derives
//!   from PyTorch's own `requires_grad` propagation (forward hooks).
//!
//! What the summaries bound. For a tensor x with reference r and tolerance
//! tol, `||x - r|| <= tol ||r||` implies by the triangle and Cauchy-Schwarz
//! inequalities |‖x‖ - ‖r‖| <= tol‖r‖, |Σx - Σr| <= tol‖r‖√n,
//! |p·x - p·r| <= tol‖r‖‖p‖, and |x_i - r_i| <= tol‖r‖ for every i. We
//! check the first three exactly as stated, and the 16 sampled values more
//! tightly, per element: |x_i - r_i| <= tol (|r_i| + ‖r‖/√n), i.e. relative
//! to the element or the tensor's RMS. Summaries cannot prove the L2 bound,
//! but an error large enough to break it would have to hide from the norm,
//! a pseudo-random probe direction and 16 scattered elements at once.
//!
//! Case sizes (33, 40, 45 px) put layer4 at 2x2 as in the 57/64 px target;
//! see the script for why 32x32 is ill-conditioned in float32.

mod common;

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{decode, rel_l2, Fixture, HostValues};
use safetensors::{Dtype, SafeTensors};

const VALUE_TOLERANCE: f64 = 1e-4;
const GRAD_TOLERANCE: f64 = 1e-3;
const NUM_SAMPLES: usize = 16;

// ----- the formulas (mirror scripts/gen_references.py) ----------------------

/// One `state_dict` entry of tests/fixtures/resnet/state_dict_layout.txt.
struct Entry {
    name: String,
    shape: Vec<usize>,
    is_int: bool,
}

fn layout() -> Vec<Entry> {
    let text = std::fs::read_to_string(common::fixture_dir("resnet").join("state_dict_layout.txt"))
        .expect("state_dict_layout.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "layout line `{l}`");
            let shape = if parts[2] == "scalar" {
                vec![]
            } else {
                parts[2]
                    .split('x')
                    .map(|d| d.parse().expect("dimension"))
                    .collect()
            };
            Entry {
                name: parts[0].to_string(),
                shape,
                is_int: parts[1] == "i64",
            }
        })
        .collect()
}

/// Tensor `k`'s values; see `formula_weights` in the script.
fn formula_values(k: usize, entry: &Entry) -> Vec<f32> {
    let n: usize = entry.shape.iter().product();
    let leaf = entry.name.rsplit('.').next().expect("name");
    let is_bn = entry.name.contains("bn") || entry.name.contains(".downsample.1.");
    let (scale, offset) = match leaf {
        "weight" if !is_bn => {
            let fan_in = (n / entry.shape[0]) as f64;
            let gain = if entry.name.starts_with("fc.") {
                (1.0 / fan_in).sqrt()
            } else {
                (2.0 / fan_in).sqrt()
            };
            (gain * 2f64.sqrt(), 0.0)
        }
        "weight" => (0.2, 1.0),
        "bias" | "running_mean" => (0.1, 0.0),
        "running_var" => (0.5, 1.0),
        other => panic!("no formula for {other}"),
    };
    (0..n)
        .map(|i| {
            let s = (0.37 * i as f64 + 1.3 * k as f64 + 0.013 * ((i * i) % 1009) as f64).sin();
            let v = if offset == 0.0 {
                scale * s
            } else {
                offset + scale * s
            };
            v as f32
        })
        .collect()
}

/// The formula state dict, built once per test process: name -> values.
fn weights() -> &'static (Vec<Entry>, Vec<Vec<f32>>) {
    static WEIGHTS: OnceLock<(Vec<Entry>, Vec<Vec<f32>>)> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let entries = layout();
        let values = entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                if e.is_int {
                    Vec::new()
                } else {
                    formula_values(k, e)
                }
            })
            .collect();
        (entries, values)
    })
}

/// images[i] = sin(0.731 i + 0.2) + 0.5 cos(0.0123 i); labels[n] = (3n + 1) mod 10.
fn formula_batch(batch: usize, size: usize) -> (Vec<f32>, Vec<i64>) {
    let n = batch * 3 * size * size;
    let images = (0..n)
        .map(|i| {
            let i = i as f64;
            ((0.731 * i + 0.2).sin() + 0.5 * (0.0123 * i).cos()) as f32
        })
        .collect();
    let labels = (0..batch as i64).map(|b| (3 * b + 1) % 10).collect();
    (images, labels)
}

fn probe(n: usize) -> Vec<f64> {
    (0..n).map(|i| (1.1 * i as f64 + 0.4).sin()).collect()
}

fn sample_indices(n: usize) -> Vec<usize> {
    if n <= NUM_SAMPLES {
        return (0..n).collect();
    }
    (0..NUM_SAMPLES as u64)
        .map(|j| ((j * 2_654_435_761 + 12_345) % n as u64) as usize)
        .collect()
}

// ----- files ---------------------------------------------------------------

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// A per-case scratch directory, removed when the test ends (pass or fail).
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "frostgrad-resnet-parity-{}-{case}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `{"nodes": N, "computed": {"k": v, ...}, "skipped": {...}}` -> the two maps.
fn parse_stats(json: &str) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let section = |key: &str| -> BTreeMap<String, usize> {
        let start = json
            .find(&format!("\"{key}\""))
            .unwrap_or_else(|| panic!("stats JSON lacks {key}: {json}"));
        let open = start + json[start..].find('{').expect("{");
        let close = open + json[open..].find('}').expect("}");
        json[open + 1..close]
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(|item| {
                let (k, v) = item.split_once(':').expect("key: value");
                (
                    k.trim().trim_matches('"').to_string(),
                    v.trim().parse().expect("count"),
                )
            })
            .collect()
    };
    (section("computed"), section("skipped"))
}

fn parse_counts(list: &str) -> BTreeMap<String, usize> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (k, v) = item.split_once('=').expect("key=value");
            (k.to_string(), v.parse().expect("count"))
        })
        .collect()
}

/// The stats of the ops whose per-slot skipping the issue is about.
fn weighted_ops(m: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("conv2d.") || k.starts_with("batch_norm.") || k.starts_with("linear.")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

// ----- the check -----------------------------------------------------------

/// Checks `actual` against a `[numel, norm, sum, probe, samples...]` summary.
fn check_summary(key: &str, actual: &[f64], summary: &[f64], tol: f64, failures: &mut Vec<String>) {
    let n = actual.len();
    if summary[0] as usize != n {
        failures.push(format!("{key}: {n} elements, PyTorch has {}", summary[0]));
        return;
    }
    let (norm, sum, dot) = (summary[1], summary[2], summary[3]);
    let p = probe(n);
    let a_norm = common::l2(actual);
    let a_sum: f64 = actual.iter().sum();
    let a_dot: f64 = actual.iter().zip(&p).map(|(x, y)| x * y).sum();
    let mut fail = |what: &str, got: f64, want: f64, bound: f64| {
        if !common::within((got - want).abs(), bound) {
            failures.push(format!(
                "{key}: {what} {got:.9e}, PyTorch {want:.9e} (allowed ±{bound:.2e})"
            ));
        }
    };
    fail("L2 norm", a_norm, norm, tol * norm);
    fail("sum", a_sum, sum, tol * norm * (n as f64).sqrt());
    fail("probe dot", a_dot, dot, tol * norm * common::l2(&p));
    let rms = norm / (n as f64).sqrt();
    for (j, &i) in sample_indices(n).iter().enumerate() {
        let want = summary[4 + j];
        fail(&format!("[{i}]"), actual[i], want, tol * (want.abs() + rms));
    }
}

fn run_case(case: &str) {
    run_case_on(case, "cpu");
}

/// Runs fixture `case` through `frostgrad step --device DEVICE` and checks it.
fn run_case_on(case: &str, device: &str) {
    let fx = Fixture::load(&common::fixture_dir("resnet").join(format!("{case}.safetensors")));
    let size: usize = fx.meta("size").parse().expect("size");
    let batch: usize = fx.meta("batch").parse().expect("batch");
    let eval = fx.meta("eval") == "1";

    let scratch = Scratch::new(case);
    let (weights_path, batch_path) = (
        scratch.0.join("weights.safetensors"),
        scratch.0.join("batch.safetensors"),
    );
    let (out_path, stats_path) = (
        scratch.0.join("out.safetensors"),
        scratch.0.join("stats.json"),
    );
    let (entries, values) = weights();
    let tensors = entries
        .iter()
        .zip(values)
        .map(|(e, v)| {
            if e.is_int {
                (
                    e.name.clone(),
                    Dtype::I64,
                    e.shape.clone(),
                    i64_bytes(&vec![0; e.shape.iter().product()]),
                )
            } else {
                (e.name.clone(), Dtype::F32, e.shape.clone(), f32_bytes(v))
            }
        })
        .collect();
    write_safetensors(&weights_path, tensors);
    let (images, labels) = formula_batch(batch, size);
    write_safetensors(
        &batch_path,
        vec![
            (
                "images".into(),
                Dtype::F32,
                vec![batch, 3, size, size],
                f32_bytes(&images),
            ),
            ("labels".into(), Dtype::I64, vec![batch], i64_bytes(&labels)),
        ],
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_frostgrad"));
    cmd.arg("step")
        .arg("--weights")
        .arg(&weights_path)
        .arg("--batch")
        .arg(&batch_path)
        .args(["--trainable", fx.meta("trainable")])
        .args([
            "--lr",
            fx.meta("lr"),
            "--momentum",
            fx.meta("momentum"),
            "--weight-decay",
            fx.meta("weight_decay"),
        ])
        .arg("--out")
        .arg(&out_path)
        .arg("--stats-json")
        .arg(&stats_path)
        .args(["--device", device]);
    if eval {
        cmd.arg("--eval");
    }
    let output = cmd.output().expect("run frostgrad");
    assert!(
        output.status.success(),
        "frostgrad step failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let out_bytes =
        std::fs::read(&out_path).unwrap_or_else(|e| panic!("{case}: no output file: {e}"));
    let out = SafeTensors::deserialize(&out_bytes).expect("output safetensors");
    let get = |key: &str| -> Option<HostValues> {
        out.tensor(key).ok().map(|t| decode(t.dtype(), t.data()))
    };
    let floats = |key: &str| -> Option<Vec<f64>> {
        get(key).map(|v| match v {
            HostValues::Float(v) => v,
            HostValues::Int(v) => v.into_iter().map(|x| x as f64).collect(),
        })
    };

    let mut failures = Vec::new();
    // Logits and loss, in full.
    for key in ["logits", "loss"] {
        match floats(key) {
            None => failures.push(format!("no `{key}` in the output")),
            Some(actual) => {
                let expected = fx.f64(key);
                if actual.len() != expected.len() {
                    failures.push(format!(
                        "{key}: {} values, expected {}",
                        actual.len(),
                        expected.len()
                    ));
                } else {
                    let err = rel_l2(&actual, &expected);
                    if !common::within(err, VALUE_TOLERANCE) {
                        failures.push(format!(
                            "{key}: relative L2 error {err:.3e} > {VALUE_TOLERANCE:.0e}"
                        ));
                    }
                }
            }
        }
    }
    // Every summarised tensor.
    let reference_keys: Vec<String> = fx
        .names()
        .into_iter()
        .filter(|k| k != "logits" && k != "loss")
        .collect();
    for key in &reference_keys {
        let Some(actual) = floats(key) else {
            failures.push(format!("no `{key}` in the output"));
            continue;
        };
        let tol = if key.starts_with("grad.") {
            GRAD_TOLERANCE
        } else {
            VALUE_TOLERANCE
        };
        check_summary(key, &actual, &fx.f64(key), tol, &mut failures);
    }
    // Exactly the trainable parameters have gradients.
    let expected_grads: BTreeSet<&str> = reference_keys
        .iter()
        .filter(|k| k.starts_with("grad."))
        .map(String::as_str)
        .collect();
    let actual_grads: BTreeSet<String> = out
        .names()
        .into_iter()
        .filter(|k| k.starts_with("grad."))
        .map(str::to_string)
        .collect();
    for k in &actual_grads {
        if !expected_grads.contains(k.as_str()) {
            failures.push(format!("`{k}` written for a frozen parameter"));
        }
    }
    // Frozen parameters come back exactly as written: no update, no decay.
    for (e, v) in entries.iter().zip(values) {
        let (param, grad) = (format!("param.{}", e.name), format!("grad.{}", e.name));
        if e.is_int || !fx.has(&param) || fx.has(&grad) {
            continue;
        }
        if let Some(actual) = floats(&param) {
            if actual.iter().zip(v).any(|(a, &w)| *a != w as f64) {
                failures.push(format!("{param}: a frozen parameter changed"));
            }
        }
    }
    // num_batches_tracked: +1 per train-mode step, untouched in eval mode.
    let tracked = if eval { 0 } else { 1 };
    for e in entries.iter().filter(|e| e.is_int) {
        match get(&format!("buffer.{}", e.name)) {
            Some(HostValues::Int(v)) if v == vec![tracked] => {}
            other => failures.push(format!(
                "buffer.{}: {other:?}, expected [{tracked}] (i64)",
                e.name
            )),
        }
    }
    // What the backward pass computed and skipped.
    let json = std::fs::read_to_string(&stats_path).expect("stats JSON");
    let (computed, skipped) = parse_stats(&json);
    let (want_computed, want_skipped) = (
        parse_counts(fx.meta("computed")),
        parse_counts(fx.meta("skipped")),
    );
    if weighted_ops(&computed) != want_computed || weighted_ops(&skipped) != want_skipped {
        failures.push(format!(
            "backward stats differ:\n  computed {:?}\n  expected {want_computed:?}\n  skipped  {:?}\n  expected {want_skipped:?}",
            weighted_ops(&computed),
            weighted_ops(&skipped)
        ));
    }
    assert!(
        failures.is_empty(),
        "{case}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn everything_trainable_40x40() {
    run_case("all_40x40");
}

#[test]
fn everything_trainable_odd_45x45() {
    run_case("all_45x45");
}

#[test]
fn fc_only_33x33() {
    run_case("fc_only_33x33");
    // The backbone is frozen: the pass must not touch a conv or batch norm.
    let fx = Fixture::load(&common::fixture_dir("resnet").join("fc_only_33x33.safetensors"));
    for key in [fx.meta("computed"), fx.meta("skipped")] {
        assert!(
            !key.contains("conv2d") && !key.contains("batch_norm"),
            "reference stats: {key}"
        );
    }
}

#[test]
fn layer3_layer4_fc_45x45() {
    run_case("layer3_layer4_fc_45x45");
}

/// The gradient flows through every frozen layer back to the trainable stem.
#[test]
fn stem_and_fc_through_frozen_layers_45x45() {
    run_case("stem_and_fc_45x45");
    let fx = Fixture::load(&common::fixture_dir("resnet").join("stem_and_fc_45x45.safetensors"));
    let (computed, skipped) = (
        parse_counts(fx.meta("computed")),
        parse_counts(fx.meta("skipped")),
    );
    // 20 convs: only conv1's weight gradient; every input gradient but the image's.
    assert_eq!(
        (computed["conv2d.weight"], skipped["conv2d.weight"]),
        (1, 19)
    );
    assert_eq!((computed["conv2d.input"], skipped["conv2d.input"]), (19, 1));
}

#[test]
fn stem_and_fc_through_frozen_layers_40x40() {
    run_case("stem_and_fc_40x40");
}

#[test]
fn eval_mode_everything_trainable_33x33() {
    run_case("eval_all_33x33");
}

// The same PyTorch references on the CUDA backend: on a GPU when one is
// present, otherwise through the host emulation (see tests/common/cuda_emu.rs).

#[test]
fn cuda_everything_trainable_40x40() {
    cuda_emu::with_cuda("cuda_everything_trainable_40x40", || {
        run_case_on("all_40x40", "cuda")
    });
}

#[test]
fn cuda_stem_and_fc_through_frozen_layers_45x45() {
    cuda_emu::with_cuda("cuda_stem_and_fc_through_frozen_layers_45x45", || {
        run_case_on("stem_and_fc_45x45", "cuda")
    });
}

#[test]
fn cuda_eval_mode_everything_trainable_33x33() {
    cuda_emu::with_cuda("cuda_eval_mode_everything_trainable_33x33", || {
        run_case_on("eval_all_33x33", "cuda")
    });
}

/// The formulas this file mirrors must produce what the script fed PyTorch:
/// a parameter the step leaves frozen is summarised from the formula values
/// themselves, so compare those summaries directly (no binary involved).
#[test]
fn formula_weights_match_the_script() {
    let fx = Fixture::load(&common::fixture_dir("resnet").join("fc_only_33x33.safetensors"));
    let (entries, values) = weights();
    assert_eq!(
        entries.len(),
        122,
        "torchvision ResNet-18 has 62 parameters and 60 buffers"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for (e, v) in entries.iter().zip(values) {
        let key = format!("param.{}", e.name);
        if e.is_int || !fx.has(&key) || fx.has(&format!("grad.{}", e.name)) {
            continue;
        }
        // Frozen in this case, so PyTorch's value after the step is the formula's.
        check_summary(&key, &common::widen(v), &fx.f64(&key), 1e-12, &mut failures);
        checked += 1;
    }
    assert_eq!(
        checked, 60,
        "every parameter but fc.weight and fc.bias is frozen here"
    );
    let (images, _) = formula_batch(2, 33);
    assert!((images[1] as f64 - ((0.731f64 + 0.2).sin() + 0.5 * 0.0123f64.cos())).abs() < 1e-7);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
