//! One ResNet-18 training step per freezing mode (criterion).
//!
//! Batch 4 at 112x112 keeps `cargo bench --bench train_step` to a couple of
//! minutes on the 2-vCPU machine of BENCHMARKS.md; `frostgrad bench` measures the full 8 x 224 x 224
//! step with the per-phase split.

use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;

use frostgrad::bench::standard_modes;
use frostgrad::nn::{resnet18, Module};
use frostgrad::ops;
use frostgrad::optim::{Sgd, SgdConfig};
use frostgrad::{no_grad, Device, Tensor};

fn train_step(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = resnet18(10, &mut rng).expect("ResNet-18 builds");
    let images = Tensor::randn(&[4, 3, 112, 112], 0.0, 1.0, &mut rng, Device::Cpu).expect("images");
    let labels = Tensor::from_vec_i64(vec![1, 3, 5, 7], &[4], Device::Cpu).expect("labels");

    let mut group = c.benchmark_group("resnet18_step_b4_112");
    group.sample_size(10);
    for mode in standard_modes().expect("standard globs parse") {
        match &mode.trainable {
            Some(patterns) => {
                model.set_trainable(patterns).expect("standard globs match");
                model.train();
                let trainable: Vec<Tensor> = model
                    .parameters()
                    .into_iter()
                    .filter(|p| p.requires_grad())
                    .collect();
                let mut sgd = Sgd::new(trainable, SgdConfig::new(0.01).momentum(0.9)).expect("sgd");
                group.bench_function(&mode.name, |b| {
                    b.iter(|| {
                        let logits = model.forward(&images).expect("forward");
                        let loss = ops::cross_entropy(&logits, &labels).expect("loss");
                        loss.backward().expect("backward");
                        sgd.step().expect("sgd step");
                        sgd.zero_grad(true).expect("zero_grad");
                    })
                });
            }
            None => {
                model.requires_grad_(false).expect("freeze");
                model.eval();
                group.bench_function(&mode.name, |b| {
                    b.iter(|| no_grad(|| model.forward(&images)).expect("forward"))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
