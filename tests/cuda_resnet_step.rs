//! One `frostgrad step` of a seeded ResNet-18 (batch 3, 32x32, 10 classes)
//! on CUDA against the same step on the CPU, in several freezing modes: the
//! same backward statistics (computed and skipped gradients, node count)
//! and the same logits, loss, gradients, parameters and buffers.
//!
//! Runs on a GPU or the host emulation like tests/cuda_parity.rs; without
//! either it prints that it was skipped (and fails under `CI`).
//!
//! Tolerance, per tensor: `max |cuda - cpu| <= 4e-3 * max(max |cpu|, 1e-3)`.
//! Twenty layers of fp32 sums in different orders, and batch norm over just
//! three values per channel in layer4 (1x1 maps at this input size), amplify
//! rounding differences well beyond a single kernel's; an indexing or
//! skipping mistake still shows as an O(1) relative error. Measured on the
//! emulation: eval mode 1e-6, training mode 1.1e-3 (layer4 batch norm); the
//! margin covers a GPU contracting a*b+c into FMAs, which the emulation does not.

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

#[path = "common/scratch.rs"]
mod scratch;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::cli::step::{run, StepArgs};
use frostgrad::cli::weights::WeightsArgs;
use frostgrad::cli::DeviceArg;
use frostgrad::io::{safetensors, HostTensor, StateDict};
use frostgrad::nn::{resnet18, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scratch::scratch_dir;

const TOLERANCE: f32 = 4e-3;
const BATCH: usize = 3;

/// Weights and batch files, written once per process.
fn inputs() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch_dir("inputs");
        let model = resnet18(10, &mut StdRng::seed_from_u64(77)).unwrap();
        let weights = dir.join("weights.safetensors");
        safetensors::save(&model.state_dict().unwrap(), &weights).unwrap();
        // Images of unlike content (noise, a smooth wave, a coarse checker
        // board): i.i.d. noise images have nearly equal deep features, and
        // batch norm over their tiny differences would amplify rounding.
        let mut rng = StdRng::seed_from_u64(78);
        let mut images = Vec::with_capacity(BATCH * 3 * 32 * 32);
        for n in 0..BATCH {
            for c in 0..3 {
                for h in 0..32 {
                    for w in 0..32 {
                        let noise: f32 = rng.random_range(-1.0..1.0);
                        let (y, x) = (h as f32, w as f32);
                        images.push(match n {
                            0 => noise,
                            1 => {
                                1.5 * ((x + 2.0 * c as f32) / 4.0).sin() * (y / 6.0).cos()
                                    + 0.1 * noise
                            }
                            _ => {
                                2.0 * if (h / 8 + w / 8 + c) % 2 == 0 {
                                    1.0
                                } else {
                                    -1.0
                                } + 0.1 * noise
                            }
                        });
                    }
                }
            }
        }
        let mut batch = StateDict::new();
        batch.insert(
            "images",
            HostTensor::new(vec![BATCH, 3, 32, 32], CpuStorage::F32(images)).unwrap(),
        );
        batch.insert(
            "labels",
            HostTensor::new(vec![BATCH], CpuStorage::I64(vec![4, 9, 0])).unwrap(),
        );
        let batch_path = dir.join("batch.safetensors");
        safetensors::save(&batch, &batch_path).unwrap();
        (weights, batch_path)
    })
}

fn step(dir: &Path, trainable: &str, eval: bool, device: DeviceArg) -> (StateDict, String) {
    let (weights, batch) = inputs();
    let tag = format!("{device:?}");
    let out = dir.join(format!("out-{tag}.safetensors"));
    let stats = dir.join(format!("stats-{tag}.json"));
    let args = StepArgs {
        weights: WeightsArgs {
            weights: weights.clone(),
            ..WeightsArgs::default()
        },
        batch: batch.clone(),
        trainable: trainable.into(),
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        out: out.clone(),
        eval,
        stats_json: Some(stats.clone()),
        device,
    };
    run(&args).unwrap_or_else(|e| panic!("step on {device:?}: {e}"));
    (
        safetensors::load(&out).unwrap(),
        std::fs::read_to_string(&stats).unwrap(),
    )
}

fn compare_step(name: &str, trainable: &str, eval: bool) {
    let dir = scratch_dir(name);
    let (cpu, cpu_stats) = step(&dir, trainable, eval, DeviceArg::Cpu);
    let (cuda, cuda_stats) = step(&dir, trainable, eval, DeviceArg::Cuda);
    assert_eq!(
        cuda_stats, cpu_stats,
        "backward statistics (computed / skipped gradients) differ"
    );
    let cpu_names: Vec<&str> = cpu.names().collect();
    let cuda_names: Vec<&str> = cuda.names().collect();
    assert_eq!(
        cuda_names, cpu_names,
        "the two steps wrote different tensors"
    );
    let mut errors: Vec<(f32, String)> = Vec::new();
    for (tensor, c) in cpu.iter() {
        let g = cuda.get(tensor).unwrap();
        assert_eq!(g.shape, c.shape, "{tensor}: shape");
        match (&g.data, &c.data) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
                let err = a
                    .iter()
                    .zip(b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
                    / scale;
                errors.push((
                    if err.is_nan() { f32::INFINITY } else { err },
                    tensor.to_string(),
                ));
            }
            (a, b) => assert_eq!(a, b, "{tensor}"),
        }
    }
    errors.sort_by(|a, b| b.0.total_cmp(&a.0));
    let bad: Vec<String> = errors
        .iter()
        .filter(|(e, _)| *e > TOLERANCE)
        .map(|(e, t)| format!("{t}: {e:e}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} tensors differ from the CPU by more than {TOLERANCE:e} of their scale:\n{}",
        bad.len(),
        bad.join("\n")
    );
    println!(
        "{name}: {} tensors match; worst relative difference {:e} in {}",
        cpu.len(),
        errors[0].0,
        errors[0].1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resnet18_step_full_finetune_matches_cpu() {
    cuda_emu::cuda_test("resnet18_step_full_finetune_matches_cpu", || {
        compare_step("full", "*", false)
    });
}

#[test]
fn resnet18_step_transfer_fc_only_matches_cpu() {
    cuda_emu::cuda_test("resnet18_step_transfer_fc_only_matches_cpu", || {
        compare_step("fc", "fc.*", false)
    });
}

#[test]
fn resnet18_step_last_stages_matches_cpu() {
    cuda_emu::cuda_test("resnet18_step_last_stages_matches_cpu", || {
        compare_step("layer34", "layer3.*,layer4.*,fc.*", false)
    });
}

#[test]
fn resnet18_step_eval_mode_partial_matches_cpu() {
    cuda_emu::cuda_test("resnet18_step_eval_mode_partial_matches_cpu", || {
        compare_step("eval", "layer4.1.*,fc.*", true)
    });
}
