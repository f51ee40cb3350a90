//! Times a whole ResNet-18 training step on the CPU at batch 8, 224x224
//! (run with `cargo run --release --example step_profile`), in the three
//! trainable-parameter modes of the frozen-backward benchmarks plus a
//! no-grad forward. Prints the best wall-clock time of `REPS` steps and the
//! process CPU time of that step: on a shared machine the wall clock moves
//! with the load, the CPU time much less. Asserts nothing.

use std::time::Instant;

use frostgrad::nn::{resnet18, Module, ParamPatterns};
use frostgrad::optim::{Sgd, SgdConfig};
use frostgrad::{no_grad, ops, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

const BATCH: usize = 8;
const SIZE: usize = 224;

/// CPU time of every thread of this process so far, in seconds (Linux
/// `/proc/self/task/*/schedstat`, first field = nanoseconds on a CPU);
/// `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 * 1e-9)
}

/// Best of `reps` runs of `f`: (wall ms, CPU ms of that run).
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut best = (f64::INFINITY, f64::NAN);
    for _ in 0..reps {
        let cpu0 = process_cpu_seconds();
        let t = Instant::now();
        f()?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let cpu = process_cpu_seconds()
            .zip(cpu0)
            .map_or(f64::NAN, |(a, b)| (a - b) * 1e3);
        if wall < best.0 {
            best = (wall, cpu);
        }
    }
    Ok(best)
}

fn main() -> Result<()> {
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("MODES").unwrap_or_default();
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = resnet18(10, &mut rng)?;
    model.train();
    let images = Tensor::randn(&[BATCH, 3, SIZE, SIZE], 0.0, 1.0, &mut rng, Device::Cpu)?;
    let labels: Vec<i64> = (0..BATCH as i64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec_i64(labels, &[BATCH], Device::Cpu)?;
    println!("{:<10} {:>10} {:>10}", "mode", "wall ms", "cpu ms");
    let modes = [
        ("finetune", "*"),
        ("partial", "layer3.*,layer4.*,fc.*"),
        ("transfer", "fc.*"),
    ];
    for (name, trainable) in modes {
        if !only.is_empty() && !only.split(',').any(|m| m == name) {
            continue;
        }
        model.set_trainable(&ParamPatterns::parse(trainable)?)?;
        let mut sgd = Sgd::new(
            model.parameters().into_iter().filter(|p| p.requires_grad()),
            SgdConfig::new(0.01).momentum(0.9),
        )?;
        let (wall, cpu) = best_of(reps, || {
            sgd.zero_grad(true)?;
            let loss = ops::cross_entropy(&model.forward(&images)?, &labels)?;
            loss.backward()?;
            sgd.step()?;
            Ok(())
        })?;
        println!("{name:<10} {wall:>10.1} {cpu:>10.1}");
    }
    if only.is_empty() || only.split(',').any(|m| m == "forward") {
        let (wall, cpu) = best_of(reps, || {
            no_grad(|| model.forward(&images))?;
            Ok(())
        })?;
        println!("{:<10} {wall:>10.1} {cpu:>10.1}", "no-grad fwd");
    }
    Ok(())
}
