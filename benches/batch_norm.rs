//! Criterion benches of the CPU batch norm (training forward and the full
//! backward) and of the small ops around it (relu, relu backward, add,
//! max pool) at ResNet-18's sizes, batch 8, 224x224 input, through the
//! public `BackendStorage` trait. `cargo bench --bench batch_norm`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::{
    BackendStorage, BatchNormGeometry, BatchNormParams, BatchNormSaved, BatchNormStats, Epilogue,
    Pool2dGeometry,
};

/// (name, [N, C, H, W])
const SHAPES: &[(&str, [usize; 4])] = &[
    ("64x112x112", [8, 64, 112, 112]),
    ("64x56x56", [8, 64, 56, 56]),
    ("512x7x7", [8, 512, 7, 7]),
];

/// Deterministic values in [-0.5, 0.5).
fn filled(n: usize, seed: usize) -> CpuStorage {
    CpuStorage::F32(
        (0..n)
            .map(|i| (((i + seed) * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect(),
    )
}

fn batch_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &(name, [n, ch, h, w]) in SHAPES {
        let g = BatchNormGeometry {
            batch: n,
            channels: ch,
            spatial: h * w,
        };
        let x = filled(g.numel(), 0);
        let dy = filled(g.numel(), 1);
        let gamma = filled(ch, 2);
        let beta = filled(ch, 3);
        let params = BatchNormParams {
            geometry: g,
            eps: 1e-5,
            epilogue: Epilogue::None,
        };
        let train = || {
            x.batch_norm(Some(&gamma), Some(&beta), BatchNormStats::Batch, &params)
                .expect("bn")
        };
        let stats = train().batch_stats.expect("batch statistics");
        let saved = BatchNormSaved {
            input: Some(&x),
            weight: Some(&gamma),
            mean: &stats.mean,
            invstd: &stats.invstd,
            batch_stats: true,
            output: None,
        };
        group.bench_function(BenchmarkId::new("train_forward", name), |b| b.iter(train));
        group.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| {
                dy.batch_norm_backward(&saved, &params, [true; 3])
                    .expect("bn backward")
            })
        });
    }
    group.finish();
}

fn small_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("small_ops");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let (name, shape) = SHAPES[0];
    let numel = shape.iter().product();
    let x = filled(numel, 0);
    let dy = filled(numel, 1);
    group.bench_function(BenchmarkId::new("relu", name), |b| {
        b.iter(|| x.relu().expect("relu"))
    });
    group.bench_function(BenchmarkId::new("relu_backward", name), |b| {
        b.iter(|| dy.relu_backward(&x).expect("relu backward"))
    });
    group.bench_function(BenchmarkId::new("add", name), |b| {
        b.iter(|| x.add(&dy).expect("add"))
    });
    // The stem's 3x3/2 max pool, 112 -> 56.
    let g = Pool2dGeometry::new(shape, (3, 3), (2, 2), (1, 1), (1, 1)).expect("pool");
    let (pooled, indices) = x.max_pool2d(&g).expect("max pool");
    group.bench_function(BenchmarkId::new("max_pool_3x3s2", name), |b| {
        b.iter(|| x.max_pool2d(&g).expect("max pool"))
    });
    group.bench_function(BenchmarkId::new("max_pool_3x3s2_backward", name), |b| {
        b.iter(|| {
            pooled
                .max_pool2d_backward(&indices, &g)
                .expect("max pool backward")
        })
    });
    group.finish();
}

criterion_group!(benches, batch_norm, small_ops);
criterion_main!(benches);
