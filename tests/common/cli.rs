//! Helpers shared by the tests of the `frostgrad` command line (`cli_*.rs`):
//! running the binary, and the tiny batch files and seeded ResNet-18 weights
//! they feed it.
//!
//! ```ignore
//! #[path = "common/cli.rs"]
//! mod cli;
//! ```
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{safetensors, HostTensor, StateDict};
use frostgrad::nn::{resnet18, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Runs the `frostgrad` binary this test run built, in the current folder.
pub fn frostgrad<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frostgrad"))
        .args(args)
        .output()
        .expect("run frostgrad")
}

/// [`frostgrad`] with `dir` as the working folder (for relative paths).
pub fn frostgrad_in<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frostgrad"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run frostgrad")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run's stdout, after asserting it succeeded (both streams on failure).
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "frostgrad failed:\nstdout: {stdout}\nstderr: {}",
        stderr(out)
    );
    stdout
}

/// Fails with exit status 1 (no panic) and a one-line `error:` that
/// contains every one of `needles`.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    for n in needles {
        assert!(line.contains(n), "`{n}` not in `{line}`");
    }
}

/// `frostgrad step` reading `weights` and `batch`, training what `trainable`
/// matches at learning rate 0.1 and writing `out`; add the rest.
pub fn step_args<'a>(
    weights: &'a str,
    batch: &'a str,
    trainable: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "step",
        "--weights",
        weights,
        "--batch",
        batch,
        "--trainable",
        trainable,
        "--lr",
        "0.1",
        "--out",
        out,
    ]
}

pub fn host(shape: &[usize], data: CpuStorage) -> HostTensor {
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Uniform(-1, 1) images of `shape`, from `seed`.
pub fn random_images(shape: &[usize], seed: u64) -> HostTensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    host(
        shape,
        CpuStorage::F32((0..n).map(|_| rng.random_range(-1.0..1.0)).collect()),
    )
}

/// `dir/batch.safetensors` holding `images` and `labels`, as `frostgrad
/// step --batch` reads it.
pub fn write_batch(dir: &Path, images: HostTensor, labels: HostTensor) -> PathBuf {
    let mut sd = StateDict::new();
    sd.insert("images", images);
    sd.insert("labels", labels);
    let path = dir.join("batch.safetensors");
    safetensors::save(&sd, &path).unwrap();
    path
}

/// A batch of two random 32x32 images ([`random_images`] from `seed`) with
/// int64 `labels`, written to `dir/batch.safetensors`.
pub fn tiny_batch(dir: &Path, seed: u64, labels: [i64; 2]) -> PathBuf {
    write_batch(
        dir,
        random_images(&[2, 3, 32, 32], seed),
        host(&[2], CpuStorage::I64(labels.to_vec())),
    )
}

/// The state dict of torchvision's ResNet-18 initialisation with `classes`
/// outputs, from `seed`.
pub fn resnet18_state(classes: usize, seed: u64) -> StateDict {
    resnet18(classes, &mut StdRng::seed_from_u64(seed))
        .unwrap()
        .state_dict()
        .unwrap()
}
