//! `frostgrad step` end to end on a tiny batch (2 images, 32x32, 10 classes):
//! the backward statistics for each freezing mode, which gradients are
//! written, what the step changes, and one-line errors for bad input.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/scratch.rs"]
mod scratch;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cli::{frostgrad, host, random_images, resnet18_state, step_args, write_batch};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{safetensors, HostTensor, StateDict};
use frostgrad::nn::{resnet18, Module};
use rand::rngs::StdRng;
use rand::SeedableRng;
use scratch::scratch_dir;

const CLASSES: usize = 10;

/// A seeded 10-class ResNet-18 state dict, written once for all tests.
fn weights() -> &'static (PathBuf, StateDict) {
    static WEIGHTS: OnceLock<(PathBuf, StateDict)> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let sd = resnet18_state(CLASSES, 2024);
        let path = scratch_dir("shared").join("weights.safetensors");
        safetensors::save(&sd, &path).unwrap();
        (path, sd)
    })
}

/// Two random 32x32 images (seed 5) labelled 3 and 7.
fn tiny_batch(dir: &Path) -> PathBuf {
    cli::tiny_batch(dir, 5, [3, 7])
}

struct StepRun {
    out: StateDict,
    stats_json: String,
}

fn step(test: &str, trainable: &str, extra: &[&str]) -> StepRun {
    let dir = scratch_dir(test);
    let batch = tiny_batch(&dir);
    let (out, stats) = (dir.join("out.safetensors"), dir.join("stats.json"));
    let mut args = step_args(
        weights().0.to_str().unwrap(),
        batch.to_str().unwrap(),
        trainable,
        out.to_str().unwrap(),
    );
    args.extend_from_slice(&[
        "--momentum",
        "0.9",
        "--weight-decay",
        "0.0001",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    cli::ok(&frostgrad(&args));
    let run = StepRun {
        out: safetensors::load(&out).unwrap(),
        stats_json: std::fs::read_to_string(&stats).unwrap(),
    };
    std::fs::remove_dir_all(&dir).unwrap();
    run
}

/// The count under `key` in the `"computed"` or `"skipped"` map of the stats JSON (0 if absent).
fn stat(json: &str, section: &str, key: &str) -> usize {
    let start = json.find(&format!("\"{section}\": {{")).expect("section") + section.len() + 5;
    let map = &json[start..start + json[start..].find('}').expect("end of map")];
    map.split(',')
        .filter_map(|kv| kv.split_once(':'))
        .find(|(k, _)| k.trim().trim_matches('"') == key)
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap_or(0)
}

fn f32s(t: &HostTensor) -> &[f32] {
    match &t.data {
        CpuStorage::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

fn param_names() -> Vec<String> {
    let (_, sd) = weights();
    let model = resnet18(CLASSES, &mut StdRng::seed_from_u64(0)).unwrap();
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().all(|n| sd.contains(n)));
    names
}

fn buffer_names() -> Vec<String> {
    let model = resnet18(CLASSES, &mut StdRng::seed_from_u64(0)).unwrap();
    model.named_buffers().into_iter().map(|(n, _)| n).collect()
}

/// Checks the outputs every run must have and the freeze/train contract.
fn check_outputs(run: &StepRun, is_trainable: impl Fn(&str) -> bool, bn_updated: bool) {
    let (_, before) = weights();
    let out = &run.out;
    assert_eq!(out.get("logits").unwrap().shape, [2, CLASSES]);
    let loss = out.get("loss").unwrap();
    assert!(
        loss.shape.is_empty(),
        "loss must be 0-d, got {:?}",
        loss.shape
    );
    assert!(f32s(loss)[0].is_finite() && f32s(loss)[0] > 0.0);

    for name in param_names() {
        let grad = out.get(&format!("grad.{name}"));
        let after = out
            .get(&format!("param.{name}"))
            .unwrap_or_else(|| panic!("no param.{name}"));
        let original = before.get(&name).unwrap();
        assert_eq!(after.shape, original.shape, "{name}");
        if is_trainable(&name) {
            let grad = grad.unwrap_or_else(|| panic!("no grad.{name} for a trainable parameter"));
            assert_eq!(grad.shape, original.shape, "{name}");
            assert!(
                f32s(grad).iter().any(|&g| g != 0.0),
                "grad.{name} is all zero"
            );
            assert_ne!(
                f32s(after),
                f32s(original),
                "trainable {name} did not change"
            );
        } else {
            assert!(grad.is_none(), "grad.{name} written for a frozen parameter");
            assert_eq!(after, original, "frozen {name} changed");
        }
    }
    let grads = out.names().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        grads,
        param_names().iter().filter(|n| is_trainable(n)).count()
    );

    for name in buffer_names() {
        let after = out
            .get(&format!("buffer.{name}"))
            .unwrap_or_else(|| panic!("no buffer.{name}"));
        let original = before.get(&name).unwrap();
        if name.ends_with("num_batches_tracked") {
            let want = if bn_updated { 1 } else { 0 };
            assert_eq!(after.data, CpuStorage::I64(vec![want]), "{name}");
            assert!(after.shape.is_empty());
        } else if bn_updated {
            assert_ne!(after, original, "{name} not updated in train mode");
        } else {
            assert_eq!(after, original, "{name} changed in eval mode");
        }
    }
}

#[test]
fn partial_freeze_computes_one_weight_gradient_and_nineteen_input_gradients() {
    let run = step("partial", "conv1.*,bn1.*,fc.*", &[]);
    let j = &run.stats_json;
    assert_eq!(stat(j, "computed", "conv2d.weight"), 1, "{j}");
    assert_eq!(stat(j, "skipped", "conv2d.weight"), 19, "{j}");
    assert_eq!(stat(j, "computed", "conv2d.input"), 19, "{j}");
    assert_eq!(
        stat(j, "skipped", "conv2d.input"),
        1,
        "conv1's input is the image: {j}"
    );
    assert_eq!(stat(j, "computed", "batch_norm.weight"), 1, "{j}");
    assert_eq!(stat(j, "skipped", "batch_norm.weight"), 19, "{j}");
    assert_eq!(stat(j, "computed", "linear.weight"), 1, "{j}");
    assert!(j.starts_with("{\"nodes\": "), "{j}");
    // Top-level `conv1.*`/`bn1.*` must not catch `layer1.0.conv1.weight`.
    check_outputs(
        &run,
        |n| n.starts_with("conv1.") || n.starts_with("bn1.") || n.starts_with("fc."),
        true,
    );
}

#[test]
fn transfer_learning_runs_no_conv_or_batch_norm_backward() {
    let run = step("transfer", "fc.*", &[]);
    let j = &run.stats_json;
    assert!(!j.contains("conv2d") && !j.contains("batch_norm"), "{j}");
    assert_eq!(stat(j, "computed", "linear.weight"), 1, "{j}");
    assert_eq!(stat(j, "computed", "linear.bias"), 1, "{j}");
    assert_eq!(stat(j, "skipped", "linear.input"), 1, "{j}");
    // Frozen backbone, but train mode: running statistics still move.
    check_outputs(&run, |n| n.starts_with("fc."), true);
}

#[test]
fn fine_tuning_trains_everything() {
    let run = step("finetune", "*", &[]);
    let j = &run.stats_json;
    assert_eq!(stat(j, "computed", "conv2d.weight"), 20, "{j}");
    assert_eq!(stat(j, "skipped", "conv2d.weight"), 0, "{j}");
    assert_eq!(stat(j, "skipped", "conv2d.input"), 1, "{j}");
    check_outputs(&run, |_| true, true);
}

#[test]
fn eval_mode_keeps_running_statistics() {
    let run = step("eval", "layer4.*,fc.*", &["--eval"]);
    check_outputs(
        &run,
        |n| n.starts_with("layer4.") || n.starts_with("fc."),
        false,
    );
}

#[test]
fn int32_labels_are_accepted() {
    let dir = scratch_dir("i32");
    let batch = dir.join("batch.safetensors");
    // I32 is not a frostgrad dtype, so write it with the safetensors crate directly.
    let images = random_images(&[2, 3, 32, 32], 5);
    let image_bytes: Vec<u8> = f32s(&images).iter().flat_map(|v| v.to_le_bytes()).collect();
    let label_bytes: Vec<u8> = [1i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    use ::safetensors::tensor::{Dtype, TensorView};
    let views = [
        (
            "images",
            TensorView::new(Dtype::F32, vec![2, 3, 32, 32], &image_bytes).unwrap(),
        ),
        (
            "labels",
            TensorView::new(Dtype::I32, vec![2], &label_bytes).unwrap(),
        ),
    ];
    ::safetensors::tensor::serialize_to_file(views, None, &batch).unwrap();
    let out = dir.join("out.safetensors");
    let mut args = step_args(
        weights().0.to_str().unwrap(),
        batch.to_str().unwrap(),
        "fc.*",
        out.to_str().unwrap(),
    );
    args.extend_from_slice(&["--momentum", "0", "--weight-decay", "0"]);
    let r = frostgrad(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(safetensors::load(&out).unwrap().contains("grad.fc.weight"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether this machine has an NVIDIA kernel driver (the same test as
/// `tests/common/cuda_emu.rs` uses to pick the real CUDA backend).
fn has_nvidia_driver() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
}

/// [`frostgrad`], with `LD_LIBRARY_PATH` removed on a machine without an
/// NVIDIA driver: a host emulation a developer exported there
/// (`scripts/build-cuda-emu.sh`) must not stand in for the missing driver
/// that the `--device cuda` case below is about.
fn frostgrad_without_emulation(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_frostgrad"));
    cmd.args(args);
    if !has_nvidia_driver() {
        cmd.env_remove("LD_LIBRARY_PATH");
    }
    cmd.output().expect("run frostgrad")
}

/// Runs a step expected to fail and returns its one-line error.
fn step_error(dir: &Path, weights: &Path, batch: &Path, trainable: &str, extra: &[&str]) -> String {
    let out = dir.join("out.safetensors");
    let mut args = vec![
        "step",
        "--weights",
        weights.to_str().unwrap(),
        "--batch",
        batch.to_str().unwrap(),
        "--trainable",
        trainable,
        "--momentum",
        "0.9",
        "--weight-decay",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    if !extra.iter().any(|a| a.starts_with("--lr")) {
        args.extend_from_slice(&["--lr", "0.1"]);
    }
    let r = frostgrad_without_emulation(&args);
    let stderr = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(!r.status.success(), "expected failure, got success");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one-line error expected: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!out.exists(), "no output may be written on failure");
    stderr
}

#[test]
fn bad_inputs_fail_with_one_line_errors() {
    let dir = scratch_dir("errors");
    let good_batch = tiny_batch(&dir);
    let w = weights().0.as_path();

    let e = step_error(
        &dir,
        Path::new("/nonexistent/w.safetensors"),
        &good_batch,
        "*",
        &[],
    );
    assert!(e.contains("/nonexistent/w.safetensors"), "{e}");
    let e = step_error(&dir, w, Path::new("/nonexistent/b.safetensors"), "*", &[]);
    assert!(e.contains("/nonexistent/b.safetensors"), "{e}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let e = step_error(&dir, &garbage, &good_batch, "*", &[]);
    assert!(e.contains("not a safetensors file"), "{e}");

    let mut not_resnet = StateDict::new();
    not_resnet.insert(
        "encoder.weight",
        host(&[2, 2], CpuStorage::F32(vec![0.0; 4])),
    );
    let not_resnet_path = dir.join("not_resnet.safetensors");
    safetensors::save(&not_resnet, &not_resnet_path).unwrap();
    let e = step_error(&dir, &not_resnet_path, &good_batch, "*", &[]);
    assert!(e.contains("not a ResNet-18"), "{e}");

    let mut incomplete = weights().1.clone();
    incomplete.remove("layer2.1.conv1.weight");
    let incomplete_path = dir.join("incomplete.safetensors");
    safetensors::save(&incomplete, &incomplete_path).unwrap();
    let e = step_error(&dir, &incomplete_path, &good_batch, "*", &[]);
    assert!(e.contains("missing key `layer2.1.conv1.weight`"), "{e}");

    let bad_labels = write_batch(
        &dir,
        random_images(&[2, 3, 32, 32], 5),
        host(&[2], CpuStorage::I64(vec![3, 10])),
    );
    let e = step_error(&dir, w, &bad_labels, "*", &[]);
    assert!(e.contains("label 10") && e.contains("out of range"), "{e}");

    let rank3 = write_batch(
        &dir,
        random_images(&[3, 32, 32], 5),
        host(&[3], CpuStorage::I64(vec![0, 1, 2])),
    );
    let e = step_error(&dir, w, &rank3, "*", &[]);
    assert!(e.contains("[N, 3, H, W]"), "{e}");

    let too_small = write_batch(
        &dir,
        random_images(&[2, 3, 0, 0], 5),
        host(&[2], CpuStorage::I64(vec![0, 1])),
    );
    let e = step_error(&dir, w, &too_small, "*", &[]);
    assert!(e.contains("forward pass failed"), "{e}");

    let e = step_error(&dir, w, &good_batch, "fc.*,layer5.*", &[]);
    assert!(
        e.contains("`layer5.*`") && e.contains("matches no parameter"),
        "{e}"
    );

    let e = step_error(&dir, w, &good_batch, "*", &["--lr=-1"]);
    assert!(e.contains("learning rate"), "{e}");

    if has_nvidia_driver() {
        // With a driver the same step runs (its values are checked against
        // the CPU by the CUDA tests); it must not be refused.
        let out = dir.join("cuda.safetensors");
        let mut args = step_args(
            w.to_str().unwrap(),
            good_batch.to_str().unwrap(),
            "*",
            out.to_str().unwrap(),
        );
        args.extend_from_slice(&["--device", "cuda"]);
        let r = frostgrad(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    } else {
        let e = step_error(&dir, w, &good_batch, "*", &["--device", "cuda"]);
        assert!(e.contains("not available"), "{e}");
    }

    std::fs::remove_dir_all(&dir).unwrap();
}
