//! Criterion benches of the CPU convolution kernels at ResNet-18's conv
//! shapes, batch 8, 224x224 input: forward, input gradient and weight
//! gradient measured separately, through the public `BackendStorage` trait.
//! `cargo bench --bench conv`; sample counts are kept small so the whole
//! run takes a couple of minutes on the 2-vCPU machine of BENCHMARKS.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::{BackendStorage, Conv2dGeometry};

/// (name, input [N, C, H, W], weight [O, C, KH, KW], stride, padding)
type Shape = (&'static str, [usize; 4], [usize; 4], usize, usize);

const SHAPES: &[Shape] = &[
    ("stem_7x7s2_3-64_224", [8, 3, 224, 224], [64, 3, 7, 7], 2, 3),
    ("3x3_64-64_56", [8, 64, 56, 56], [64, 64, 3, 3], 1, 1),
    ("3x3s2_64-128_56", [8, 64, 56, 56], [128, 64, 3, 3], 2, 1),
    ("1x1s2_64-128_56", [8, 64, 56, 56], [128, 64, 1, 1], 2, 0),
    ("3x3_128-128_28", [8, 128, 28, 28], [128, 128, 3, 3], 1, 1),
    ("3x3_256-256_14", [8, 256, 14, 14], [256, 256, 3, 3], 1, 1),
    ("3x3_512-512_7", [8, 512, 7, 7], [512, 512, 3, 3], 1, 1),
];

/// Deterministic values in [-0.5, 0.5).
fn filled(n: usize) -> CpuStorage {
    CpuStorage::F32(
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect(),
    )
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for &(name, input, weight, s, p) in SHAPES {
        let g = Conv2dGeometry::new(input, weight, (s, s), (p, p), (1, 1)).expect("geometry");
        let x = filled(input.iter().product());
        let w = filled(weight.iter().product());
        let dy = filled(g.output_shape().iter().product());
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| x.conv2d(&w, None, &g).expect("forward"))
        });
        group.bench_function(BenchmarkId::new("input_grad", name), |b| {
            b.iter(|| dy.conv2d_input_grad(&w, &g).expect("input grad"))
        });
        group.bench_function(BenchmarkId::new("weight_grad", name), |b| {
            b.iter(|| dy.conv2d_weight_grad(&x, &g).expect("weight grad"))
        });
    }
    group.finish();
}

criterion_group!(benches, conv);
criterion_main!(benches);
