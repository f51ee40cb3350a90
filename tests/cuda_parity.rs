//! Every CUDA kernel against the CPU backend, on seeded random data with odd
//! sizes (tiles only partly filled, splits of uneven length), plus op-level
//! checks that freezing skips the same gradient kernels on both devices.
//!
//! Runs on a real GPU when one is present, otherwise on the host emulation
//! (`cuda-emu/`, see tests/common/cuda_emu.rs). With neither a GPU nor g++
//! to build the emulation, each test prints that it was skipped and why (and
//! fails under `CI`, where the CUDA tests must run).
//!
//! Tolerance: fp32, with the two devices summing in different orders (tiled
//! GEMM vs. the CPU's GEMM, block trees vs. sequential sums), so values are
//! compared as `|cuda - cpu| <= RTOL * max(|cpu|, 1)`, RTOL = 1e-4: about
//! 1000 ulps of float epsilon, ample for sums of a few thousand terms,
//! far below any indexing mistake (which is O(1)). Integer outputs (max-pool
//! indices) must match exactly.

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

use std::io::Write;

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::cuda::CudaStorage;
use frostgrad::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormParams, BatchNormSaved,
    BatchNormStats, BatchStats, Conv2dGeometry, Epilogue, Pool2dGeometry, SgdConfig,
};
use frostgrad::ops;
use frostgrad::{Device, Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RTOL: f32 = 1e-4;

fn bn_params(g: &BatchNormGeometry, relu: bool) -> BatchNormParams {
    BatchNormParams {
        geometry: *g,
        eps: 1e-5,
        epilogue: if relu { Epilogue::Relu } else { Epilogue::None },
    }
}

/// Training-mode batch norm: the output and the batch statistics.
fn bn_train<S: BackendStorage>(
    x: &S,
    w: Option<&S>,
    b: Option<&S>,
    g: &BatchNormGeometry,
    relu: bool,
) -> (S, BatchStats<S>) {
    let r = x
        .batch_norm(w, b, BatchNormStats::Batch, &bn_params(g, relu))
        .unwrap();
    (r.output, r.batch_stats.expect("batch statistics"))
}

/// Eval-mode batch norm with running statistics `rm`, `rv`.
fn bn_eval<S: BackendStorage>(
    x: &S,
    w: Option<&S>,
    b: Option<&S>,
    (rm, rv): (&S, &S),
    g: &BatchNormGeometry,
    relu: bool,
) -> S {
    let stats = BatchNormStats::Running { mean: rm, var: rv };
    let r = x.batch_norm(w, b, stats, &bn_params(g, relu)).unwrap();
    assert!(r.batch_stats.is_none());
    r.output
}

/// Batch-norm backward; `relu_output` selects the ReLU epilogue.
#[allow(clippy::too_many_arguments)]
fn bn_backward<S: BackendStorage>(
    dy: &S,
    relu_output: Option<&S>,
    x: &S,
    w: Option<&S>,
    stats: &BatchStats<S>,
    g: &BatchNormGeometry,
    training: bool,
    needs: [bool; 3],
) -> [Option<S>; 3] {
    let saved = BatchNormSaved {
        input: Some(x),
        weight: w,
        mean: &stats.mean,
        invstd: &stats.invstd,
        batch_stats: training,
        output: relu_output,
    };
    dy.batch_norm_backward(&saved, &bn_params(g, relu_output.is_some()), needs)
        .unwrap()
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The same data on both backends.
fn pair(data: Vec<f32>) -> (CpuStorage, CudaStorage) {
    let cpu = CpuStorage::F32(data);
    let cuda = CudaStorage::from_cpu(&cpu, 0).expect("copy to cuda:0");
    (cpu, cuda)
}

fn host(s: &CudaStorage) -> CpuStorage {
    s.to_cpu().expect("copy to host")
}

#[track_caller]
fn assert_close(what: &str, cuda: &CpuStorage, cpu: &CpuStorage) {
    match (cuda, cpu) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: lengths differ");
            let mut worst = (0usize, 0.0f32);
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let err = (x - y).abs() / y.abs().max(1.0);
                if err.is_nan() || err > worst.1 {
                    worst = (i, err);
                }
            }
            let (i, err) = worst;
            assert!(
                err <= RTOL,
                "{what}: element {i} differs: cuda {} vs cpu {} (scaled error {err:e} > {RTOL:e})",
                a[i],
                b[i]
            );
        }
        (CpuStorage::I64(a), CpuStorage::I64(b)) => {
            assert_eq!(a, b, "{what}: integer outputs differ")
        }
        _ => panic!("{what}: dtypes differ"),
    }
}

#[track_caller]
fn check(what: &str, cuda: &CudaStorage, cpu: &CpuStorage) {
    assert_close(what, &host(cuda), cpu);
}

#[test]
fn elementwise_and_reductions_match_cpu() {
    cuda_emu::cuda_test("elementwise_and_reductions_match_cpu", || {
        let mut r = rng(1);
        // 1, one partial block, and several blocks of the two-level sum.
        for n in [1usize, 257, 5003, 70_001] {
            let (a, ga) = pair(randn(&mut r, n));
            let (b, gb) = pair(randn(&mut r, n));
            check("add", &ga.add(&gb).unwrap(), &a.add(&b).unwrap());
            let mut summed = ga.try_clone().unwrap();
            summed.add_assign(&gb).unwrap();
            check("add_assign", &summed, &a.add(&b).unwrap());
            check("scale", &ga.scale(-0.37).unwrap(), &a.scale(-0.37).unwrap());
            let y = a.relu().unwrap();
            let gy = ga.relu().unwrap();
            check("relu", &gy, &y);
            check(
                "relu_backward",
                &gb.relu_backward(&gy).unwrap(),
                &b.relu_backward(&y).unwrap(),
            );
            let mut masked = gb.try_clone().unwrap();
            masked.relu_backward_assign(&gy).unwrap();
            check(
                "relu_backward_assign",
                &masked,
                &b.relu_backward(&y).unwrap(),
            );
            // The fused residual tail, out of place and over the left operand.
            let fused = a.add_relu(&b).unwrap();
            check("add_relu", &ga.add_relu(&gb).unwrap(), &fused);
            let mut assigned = ga.try_clone().unwrap();
            assigned.add_relu_assign(&gb).unwrap();
            check("add_relu_assign", &assigned, &fused);
            check("sum_all", &ga.sum_all().unwrap(), &a.sum_all().unwrap());
            let s = a.sum_all().unwrap();
            let gs = ga.sum_all().unwrap();
            check(
                "broadcast_scalar",
                &gs.broadcast_scalar(n + 3).unwrap(),
                &s.broadcast_scalar(n + 3).unwrap(),
            );
            let (v, gv) = pair(a.as_f32("t").unwrap().iter().map(|x| x * x).collect());
            check(
                "inv_std",
                &gv.inv_std(1e-5).unwrap(),
                &v.inv_std(1e-5).unwrap(),
            );
        }
    });
}

#[test]
fn matmul_all_transposes_match_cpu() {
    cuda_emu::cuda_test("matmul_all_transposes_match_cpu", check_matmul_cases);
}

fn check_matmul_cases() {
    let mut r = rng(2);
    for &(m, k, n) in &[
        (1usize, 1usize, 1usize),
        (7, 37, 67),
        (65, 19, 130),
        (3, 200, 10),
        // Every extent a multiple of 4: float4 loads of both operands in
        // all four layouts, with partial tiles and a K tail.
        (68, 36, 72),
        (8, 20, 12),
        // m and n multiples of 4, k odd: each layout mixes a vectorised
        // operand with a scalar one.
        (12, 37, 8),
    ] {
        let (a, ga) = pair(randn(&mut r, m * k));
        let (b, gb) = pair(randn(&mut r, k * n));
        for (lt, rt) in [(false, false), (false, true), (true, false), (true, true)] {
            let what = format!("matmul {m}x{k}x{n} lhs_t={lt} rhs_t={rt}");
            check(
                &what,
                &ga.matmul(&gb, m, k, n, lt, rt).unwrap(),
                &a.matmul(&b, m, k, n, lt, rt).unwrap(),
            );
        }
        let (row, grow) = pair(randn(&mut r, n));
        let (x, gx) = pair(randn(&mut r, m * n));
        check(
            "add_row_vector",
            &gx.add_row_vector(&grow, m, n).unwrap(),
            &x.add_row_vector(&row, m, n).unwrap(),
        );
        check(
            "sum_rows",
            &gx.sum_rows(m, n).unwrap(),
            &x.sum_rows(m, n).unwrap(),
        );
    }
}

/// (input [N, C, H, W], weight [O, C, KH, KW], stride, padding, dilation)
type ConvCase = (
    [usize; 4],
    [usize; 4],
    (usize, usize),
    (usize, usize),
    (usize, usize),
);

const CONV_CASES: &[ConvCase] = &[
    ([2, 3, 11, 9], [5, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
    // Non-square everything; more output channels than one 64-row tile.
    ([3, 5, 13, 10], [70, 5, 3, 2], (2, 1), (1, 0), (1, 2)),
    // Dilation along both axes, padding larger along one.
    ([1, 3, 12, 11], [4, 3, 3, 3], (1, 2), (2, 1), (2, 3)),
    // 1x1 projection with stride 2 (ResNet downsample).
    ([2, 17, 9, 9], [9, 17, 1, 1], (2, 2), (0, 0), (1, 1)),
    // ResNet stem shape, small: 7x7 stride 2 padding 3.
    ([1, 3, 19, 17], [8, 3, 7, 7], (2, 2), (3, 3), (1, 1)),
    // Long reduction for the weight gradient: split-K with an uneven tail.
    // C*KH*KW = 36: float4 weight rows in the forward.
    ([2, 4, 27, 25], [6, 4, 3, 3], (1, 1), (1, 1), (1, 1)),
    // The rest pick the kernels' float4 paths (see `vec4` in
    // src/backend/cuda/storage.rs) or their scalar fallbacks:
    // 3x3, C*KH*KW = 72 and OH*OW = 72: float4 weight rows and dy rows.
    ([2, 8, 9, 8], [8, 8, 3, 3], (1, 1), (1, 1), (1, 1)),
    // Strided 3x3 with C multiple of 4 but OH*OW = 25: float4 weight rows,
    // scalar dy rows.
    ([2, 8, 10, 10], [6, 8, 3, 3], (2, 2), (1, 1), (1, 1)),
    // Pointwise (1x1, stride 1, no padding), H*W = 84 and C = 36: every
    // operand as float4; O > one tile, a K tail, and a split-K weight
    // gradient whose chunk boundary falls inside an image.
    ([3, 36, 7, 12], [66, 36, 1, 1], (1, 1), (0, 0), (1, 1)),
    // Pointwise with C = 5 and H*W = 15: the pointwise kernels' scalar
    // fallbacks (dilation has no effect on a 1x1 kernel).
    ([3, 5, 5, 3], [7, 5, 1, 1], (1, 1), (0, 0), (2, 2)),
    // Pointwise with C = 6 (scalar weights) but H*W = 16 (float4
    // activations).
    ([2, 6, 4, 4], [5, 6, 1, 1], (1, 1), (0, 0), (1, 1)),
];

#[test]
fn conv2d_forward_and_gradients_match_cpu() {
    cuda_emu::cuda_test("conv2d_forward_and_gradients_match_cpu", check_conv_cases);
}

fn check_conv_cases() {
    let mut r = rng(3);
    for (case, &(input, weight, stride, padding, dilation)) in CONV_CASES.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let (x, gx) = pair(randn(&mut r, input.iter().product()));
        let (w, gw) = pair(randn(&mut r, weight.iter().product()));
        let (b, gb) = pair(randn(&mut r, g.out_channels));
        let (dy, gdy) = pair(randn(&mut r, g.output_shape().iter().product()));
        let what = |k: &str| format!("case {case} {g:?}: {k}");
        check(
            &what("forward"),
            &gx.conv2d(&gw, None, &g).unwrap(),
            &x.conv2d(&w, None, &g).unwrap(),
        );
        check(
            &what("forward+bias"),
            &gx.conv2d(&gw, Some(&gb), &g).unwrap(),
            &x.conv2d(&w, Some(&b), &g).unwrap(),
        );
        check(
            &what("input grad"),
            &gdy.conv2d_input_grad(&gw, &g).unwrap(),
            &dy.conv2d_input_grad(&w, &g).unwrap(),
        );
        check(
            &what("weight grad"),
            &gdy.conv2d_weight_grad(&gx, &g).unwrap(),
            &dy.conv2d_weight_grad(&x, &g).unwrap(),
        );
        let per_channel = BatchNormGeometry {
            batch: g.batch,
            channels: g.out_channels,
            spatial: g.out_h * g.out_w,
        };
        check(
            &what("bias grad"),
            &gdy.channel_sums(&per_channel).unwrap(),
            &dy.channel_sums(&per_channel).unwrap(),
        );
    }
}

/// The tiled kernels stage each K slice through one of two shared buffers
/// with a single barrier per slice (double buffering). Thread-index order
/// can hide a missing barrier, so rerun the GEMM and conv cases on the
/// emulation with the threads of each block in a seeded random order
/// between barriers: a race shows up as a wrong result.
#[test]
fn tiled_kernels_match_cpu_in_shuffled_thread_order() {
    let name = "tiled_kernels_match_cpu_in_shuffled_thread_order";
    if !cuda_emu::is_child(name) && !cuda_emu::gxx_available() {
        cuda_emu::skip_cuda_test(name, "no g++ to build the CUDA emulation");
        return;
    }
    cuda_emu::with_emulation(name, &[("FROSTGRAD_CUDA_EMU_SHUFFLE", "11")], || {
        check_matmul_cases();
        check_conv_cases();
    });
}

#[test]
fn conv2d_weight_grad_is_reproducible() {
    cuda_emu::cuda_test("conv2d_weight_grad_is_reproducible", || {
        // Split-K sums its chunks in a fixed order: bit-identical reruns.
        let mut r = rng(4);
        let (input, weight, stride, padding, dilation) = CONV_CASES[5];
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let (_, gx) = pair(randn(&mut r, input.iter().product()));
        let (_, gdy) = pair(randn(&mut r, g.output_shape().iter().product()));
        let first = host(&gdy.conv2d_weight_grad(&gx, &g).unwrap());
        let second = host(&gdy.conv2d_weight_grad(&gx, &g).unwrap());
        assert_eq!(first, second);
    });
}

#[test]
fn batch_norm_matches_cpu() {
    cuda_emu::cuda_test("batch_norm_matches_cpu", || {
        let mut r = rng(5);
        for g in [
            BatchNormGeometry {
                batch: 3,
                channels: 5,
                spatial: 7 * 9,
            },
            BatchNormGeometry {
                batch: 2,
                channels: 3,
                spatial: 1,
            },
            BatchNormGeometry {
                batch: 4,
                channels: 2,
                spatial: 31 * 33,
            },
        ] {
            let n = g.numel();
            // Offset and scale so mean and variance are far from 0 and 1.
            let (x, gx) = pair(
                randn(&mut r, n)
                    .into_iter()
                    .map(|v| 3.0 * v + 1.5)
                    .collect(),
            );
            let (w, gw) = pair(randn(&mut r, g.channels));
            let (b, gb) = pair(randn(&mut r, g.channels));
            let (dy, gdy) = pair(randn(&mut r, n));
            for affine in [true, false] {
                let (cw, cb) = if affine {
                    (Some(&w), Some(&b))
                } else {
                    (None, None)
                };
                let (kw, kb) = if affine {
                    (Some(&gw), Some(&gb))
                } else {
                    (None, None)
                };
                let what = |k: &str| format!("{g:?} affine={affine}: {k}");
                let (c_out, c) = bn_train(&x, cw, cb, &g, false);
                let (k_out, k) = bn_train(&gx, kw, kb, &g, false);
                check(&what("train output"), &k_out, &c_out);
                check(&what("mean"), &k.mean, &c.mean);
                check(&what("var"), &k.var, &c.var);
                check(&what("invstd"), &k.invstd, &c.invstd);
                for training in [true, false] {
                    for mask in 1u8..8 {
                        let needs = [
                            mask & 1 != 0,
                            mask & 2 != 0 && affine,
                            mask & 4 != 0 && affine,
                        ];
                        let cg = bn_backward(&dy, None, &x, cw, &c, &g, training, needs);
                        let kg = bn_backward(&gdy, None, &gx, kw, &k, &g, training, needs);
                        for (i, name) in ["dx", "dweight", "dbias"].iter().enumerate() {
                            match (&kg[i], &cg[i]) {
                                (Some(kv), Some(cv)) => check(
                                    &what(&format!(
                                        "backward training={training} {needs:?} {name}"
                                    )),
                                    kv,
                                    cv,
                                ),
                                (None, None) => {}
                                _ => panic!(
                                    "{}: {name} computed on one device only",
                                    what("backward")
                                ),
                            }
                            assert_eq!(kg[i].is_some(), needs[i], "{name} computed iff asked for");
                        }
                    }
                }
                let (rm, grm) = pair(randn(&mut r, g.channels));
                let (rv, grv) = pair(
                    randn(&mut r, g.channels)
                        .into_iter()
                        .map(|v| v.abs() + 0.5)
                        .collect(),
                );
                check(
                    &what("eval output"),
                    &bn_eval(&gx, kw, kb, (&grm, &grv), &g, false),
                    &bn_eval(&x, cw, cb, (&rm, &rv), &g, false),
                );
                let (mut rm_c, mut rv_c) = (rm.clone(), rv.clone());
                let (mut rm_k, mut rv_k) = (grm.try_clone().unwrap(), grv.try_clone().unwrap());
                rm_c.update_running_stats(&mut rv_c, &c.mean, &c.var, 0.1, g.count())
                    .unwrap();
                rm_k.update_running_stats(&mut rv_k, &k.mean, &k.var, 0.1, g.count())
                    .unwrap();
                check(&what("running mean"), &rm_k, &rm_c);
                check(&what("running var"), &rv_k, &rv_c);
            }
        }
    });
}

/// The fused batch-norm + ReLU kernels (`fuse_relu` / `mask` flags in
/// kernels/batch_norm.cu) against the CPU's fused loops, and against the
/// unfused composition on the same device.
#[test]
fn batch_norm_relu_matches_cpu() {
    cuda_emu::cuda_test("batch_norm_relu_matches_cpu", || {
        let mut r = rng(15);
        for g in [
            BatchNormGeometry {
                batch: 3,
                channels: 5,
                spatial: 7 * 9,
            },
            BatchNormGeometry {
                batch: 2,
                channels: 3,
                spatial: 1,
            },
            BatchNormGeometry {
                batch: 4,
                channels: 2,
                spatial: 31 * 33,
            },
        ] {
            let n = g.numel();
            let (x, gx) = pair(
                randn(&mut r, n)
                    .into_iter()
                    .map(|v| 3.0 * v + 1.5)
                    .collect(),
            );
            let (w, gw) = pair(randn(&mut r, g.channels));
            let (b, gb) = pair(randn(&mut r, g.channels));
            let (dy, gdy) = pair(randn(&mut r, n));
            let (rm, grm) = pair(randn(&mut r, g.channels));
            let (rv, grv) = pair(
                randn(&mut r, g.channels)
                    .into_iter()
                    .map(|v| v.abs() + 0.5)
                    .collect(),
            );
            for affine in [true, false] {
                let (cw, cb) = if affine {
                    (Some(&w), Some(&b))
                } else {
                    (None, None)
                };
                let (kw, kb) = if affine {
                    (Some(&gw), Some(&gb))
                } else {
                    (None, None)
                };
                let what = |k: &str| format!("{g:?} affine={affine}: {k}");
                let (c_out, c) = bn_train(&x, cw, cb, &g, true);
                let (k_out, k) = bn_train(&gx, kw, kb, &g, true);
                check(&what("fused train output"), &k_out, &c_out);
                check(&what("fused mean"), &k.mean, &c.mean);
                check(&what("fused invstd"), &k.invstd, &c.invstd);
                // The fused kernel on the device equals its own composition.
                let (unfused, _) = bn_train(&gx, kw, kb, &g, false);
                check(
                    &what("fused vs unfused train output on cuda"),
                    &k_out,
                    &host(&unfused.relu().unwrap()),
                );
                let ce = bn_eval(&x, cw, cb, (&rm, &rv), &g, true);
                let ke = bn_eval(&gx, kw, kb, (&grm, &grv), &g, true);
                check(&what("fused eval output"), &ke, &ce);
                let masked_out = host(&k_out);
                let CpuStorage::F32(v) = &masked_out else {
                    panic!("f32")
                };
                assert!(
                    v.contains(&0.0) && v.iter().any(|&y| y > 0.0),
                    "{}: the mask must both pass and block",
                    what("data")
                );
                for training in [true, false] {
                    let (cy, ky) = if training {
                        (&c_out, &k_out)
                    } else {
                        (&ce, &ke)
                    };
                    for mask in 1u8..8 {
                        let needs = [
                            mask & 1 != 0,
                            mask & 2 != 0 && affine,
                            mask & 4 != 0 && affine,
                        ];
                        let cg = bn_backward(&dy, Some(cy), &x, cw, &c, &g, training, needs);
                        let kg = bn_backward(&gdy, Some(ky), &gx, kw, &k, &g, training, needs);
                        // The device's unfused path: relu_backward, then batch norm.
                        let masked = gdy.relu_backward(ky).unwrap();
                        let ku = bn_backward(&masked, None, &gx, kw, &k, &g, training, needs);
                        for (i, name) in ["dx", "dweight", "dbias"].iter().enumerate() {
                            let label = what(&format!(
                                "fused backward training={training} {needs:?} {name}"
                            ));
                            match (&kg[i], &cg[i], &ku[i]) {
                                (Some(kv), Some(cv), Some(uv)) => {
                                    check(&label, kv, cv);
                                    check(&format!("{label} (vs unfused on cuda)"), kv, &host(uv));
                                }
                                (None, None, None) => {}
                                _ => panic!("{label}: computed on one path only"),
                            }
                            assert_eq!(kg[i].is_some(), needs[i], "{name} computed iff asked for");
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn pooling_matches_cpu() {
    cuda_emu::cuda_test("pooling_matches_cpu", || {
        let mut r = rng(6);
        let max_cases = [
            (
                [2usize, 3, 11, 9],
                (3usize, 3usize),
                (2usize, 2usize),
                (1usize, 1usize),
                (1usize, 1usize),
            ),
            ([1, 4, 8, 10], (2, 2), (2, 2), (0, 0), (1, 1)),
            ([2, 2, 13, 12], (3, 2), (1, 2), (1, 1), (2, 1)),
        ];
        for (input, kernel, stride, padding, dilation) in max_cases {
            let g = Pool2dGeometry::new(input, kernel, stride, padding, dilation).unwrap();
            let (x, gx) = pair(randn(&mut r, input.iter().product()));
            let (v, i) = x.max_pool2d(&g).unwrap();
            let (gv, gi) = gx.max_pool2d(&g).unwrap();
            check(&format!("{g:?} max values"), &gv, &v);
            check(&format!("{g:?} max indices"), &gi, &i);
            let (dy, gdy) = pair(randn(&mut r, g.output_shape().iter().product()));
            check(
                &format!("{g:?} max backward"),
                &gdy.max_pool2d_backward(&gi, &g).unwrap(),
                &dy.max_pool2d_backward(&i, &g).unwrap(),
            );
        }
        for (input, out) in [
            ([2usize, 3, 7, 5], (1usize, 1usize)),
            ([1, 2, 7, 5], (3, 2)),
            ([2, 1, 4, 4], (5, 3)),
        ] {
            let g = AdaptivePool2dGeometry::new(input, out).unwrap();
            let (x, gx) = pair(randn(&mut r, input.iter().product()));
            check(
                &format!("{g:?} avg"),
                &gx.adaptive_avg_pool2d(&g).unwrap(),
                &x.adaptive_avg_pool2d(&g).unwrap(),
            );
            let (dy, gdy) = pair(randn(&mut r, g.output_shape().iter().product()));
            check(
                &format!("{g:?} avg backward"),
                &gdy.adaptive_avg_pool2d_backward(&g).unwrap(),
                &dy.adaptive_avg_pool2d_backward(&g).unwrap(),
            );
        }
    });
}

#[test]
fn loss_matches_cpu_and_rejects_bad_labels() {
    cuda_emu::cuda_test("loss_matches_cpu_and_rejects_bad_labels", || {
        let mut r = rng(7);
        for (rows, cols) in [(1usize, 1usize), (5, 10), (3, 1000), (37, 3)] {
            let (x, gx) = pair(
                randn(&mut r, rows * cols)
                    .into_iter()
                    .map(|v| 8.0 * v)
                    .collect(),
            );
            let y = x.log_softmax(rows, cols).unwrap();
            let gy = gx.log_softmax(rows, cols).unwrap();
            check("log_softmax", &gy, &y);
            let (dy, gdy) = pair(randn(&mut r, rows * cols));
            check(
                "log_softmax_backward",
                &gdy.log_softmax_backward(&gy, rows, cols).unwrap(),
                &dy.log_softmax_backward(&y, rows, cols).unwrap(),
            );
            let labels: Vec<i64> = (0..rows).map(|_| r.random_range(0..cols as i64)).collect();
            let l = CpuStorage::I64(labels);
            let gl = CudaStorage::from_cpu(&l, 0).unwrap();
            check(
                "nll_loss",
                &gy.nll_loss(&gl, rows, cols).unwrap(),
                &y.nll_loss(&l, rows, cols).unwrap(),
            );
            let (g, gg) = pair(vec![0.7]);
            check(
                "nll_loss_backward",
                &gg.nll_loss_backward(&gl, rows, cols).unwrap(),
                &g.nll_loss_backward(&l, rows, cols).unwrap(),
            );
        }
        let (_, gy) = pair(vec![0.0; 6]);
        let bad = CudaStorage::from_cpu(&CpuStorage::I64(vec![1, 3]), 0).unwrap();
        let err = gy.nll_loss(&bad, 2, 3).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "label 3 of 3 classes: {err}"
        );
    });
}

/// PyTorch: `F.cross_entropy(torch.empty(0, 3), torch.empty(0, dtype=long))`
/// is `nan` (a mean over no rows) and its input gradient is an empty
/// `[0, 3]` tensor. Both devices must say the same, not one of them an error.
#[test]
fn nll_loss_over_zero_rows_is_nan_on_both_devices() {
    cuda_emu::cuda_test("nll_loss_over_zero_rows_is_nan_on_both_devices", || {
        let (x, gx) = pair(Vec::new());
        let l = CpuStorage::I64(Vec::new());
        let gl = CudaStorage::from_cpu(&l, 0).unwrap();
        for (device, loss) in [
            ("cpu", x.nll_loss(&l, 0, 3).unwrap()),
            ("cuda", host(&gx.nll_loss(&gl, 0, 3).unwrap())),
        ] {
            let v = loss.as_f32("loss").unwrap();
            assert!(v.len() == 1 && v[0].is_nan(), "{device}: {v:?}");
        }
        let (g, gg) = pair(vec![1.0]);
        check(
            "nll_loss_backward over zero rows",
            &gg.nll_loss_backward(&gl, 0, 3).unwrap(),
            &g.nll_loss_backward(&l, 0, 3).unwrap(),
        );

        // Through the ops and autograd, as a training step would reach it.
        for device in [Device::Cpu, Device::Cuda(0)] {
            let logits = Tensor::from_vec(Vec::new(), &[0, 3], device)
                .unwrap()
                .requires_grad_(true)
                .unwrap();
            let labels = Tensor::from_vec_i64(Vec::new(), &[0], device).unwrap();
            let loss = ops::cross_entropy(&logits, &labels).unwrap();
            let v = loss.to_vec_f32().unwrap();
            assert!(v.len() == 1 && v[0].is_nan(), "{device:?}: {v:?}");
            loss.backward().unwrap();
            let grad = logits.grad().expect("logits gradient");
            assert_eq!(grad.shape(), [0, 3], "{device:?}");
        }
    });
}

#[test]
fn sgd_step_matches_cpu() {
    cuda_emu::cuda_test("sgd_step_matches_cpu", || {
        let mut r = rng(8);
        let n = 1001;
        let configs = [
            SgdConfig {
                lr: 0.1,
                momentum: 0.0,
                dampening: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                dampening: 0.0,
                weight_decay: 1e-4,
                nesterov: false,
            },
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                dampening: 0.0,
                weight_decay: 5e-4,
                nesterov: true,
            },
            SgdConfig {
                lr: 0.01,
                momentum: 0.5,
                dampening: 0.3,
                weight_decay: 0.0,
                nesterov: false,
            },
        ];
        for cfg in configs {
            let (mut p, mut gp) = pair(randn(&mut r, n));
            let (g, gg) = pair(randn(&mut r, n));
            if cfg.momentum == 0.0 {
                p.sgd_step(&g, None, &cfg, false).unwrap();
                gp.sgd_step(&gg, None, &cfg, false).unwrap();
            } else {
                let (mut b, mut gb) = pair(vec![0.0; n]);
                for step in 0..3 {
                    p.sgd_step(&g, Some(&mut b), &cfg, step == 0).unwrap();
                    gp.sgd_step(&gg, Some(&mut gb), &cfg, step == 0).unwrap();
                }
                check(&format!("{cfg:?} momentum buffer"), &gb, &b);
            }
            check(&format!("{cfg:?} parameter"), &gp, &p);
        }
    });
}

#[test]
fn mixed_devices_are_an_error() {
    cuda_emu::cuda_test("mixed_devices_are_an_error", || {
        let a = Tensor::from_vec(vec![1.0, 2.0], &[2], Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1.0, 2.0], &[2], Device::Cuda(0)).unwrap();
        let err = ops::add(&a, &b).unwrap_err();
        assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
        // An ordinal the machine does not have is a clear error, not a panic.
        let err = Tensor::from_vec(vec![1.0], &[1], Device::Cuda(64)).unwrap_err();
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
        // Round trip.
        assert_eq!(
            b.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap(),
            vec![1.0, 2.0]
        );
    });
}

/// A small conv -> relu -> conv -> bn -> relu -> pool -> linear -> cross-entropy graph with the
/// middle conv frozen: both devices must skip exactly the same gradient
/// kernels and agree on every gradient they do compute.
#[test]
fn frozen_graph_backward_matches_cpu_and_skips_the_same_kernels() {
    cuda_emu::cuda_test(
        "frozen_graph_backward_matches_cpu_and_skips_the_same_kernels",
        || {
            let mut r = rng(9);
            let x = randn(&mut r, 2 * 3 * 10 * 10);
            let w1 = randn(&mut r, 6 * 3 * 3 * 3);
            let w2 = randn(&mut r, 4 * 6 * 3 * 3);
            let gamma = randn(&mut r, 4);
            let beta = randn(&mut r, 4);
            let fc = randn(&mut r, 5 * 4);
            let fcb = randn(&mut r, 5);
            let labels = vec![3i64, 1];
            let run = |device: Device| {
                let t = |v: &Vec<f32>, shape: &[usize], grad: bool| {
                    Tensor::from_vec(v.clone(), shape, device)
                        .unwrap()
                        .requires_grad_(grad)
                        .unwrap()
                };
                let x = t(&x, &[2, 3, 10, 10], false);
                let w1 = t(&w1, &[6, 3, 3, 3], true);
                // Frozen between two trainable layers: its input gradient flows
                // (w1 needs it), its weight gradient must never be computed.
                let w2 = t(&w2, &[4, 6, 3, 3], false);
                let gamma = t(&gamma, &[4], true);
                let beta = t(&beta, &[4], false);
                let fc = t(&fc, &[5, 4], true);
                let fcb = t(&fcb, &[5], true);
                let rm = Tensor::zeros(&[4], device).unwrap();
                let rv = Tensor::ones(&[4], device).unwrap();
                let opts = ops::Conv2dOptions {
                    stride: (1, 1),
                    padding: (1, 1),
                    dilation: (1, 1),
                };
                let h = ops::relu(&ops::conv2d(&x, &w1, None, opts).unwrap()).unwrap();
                let h = ops::conv2d(
                    &h,
                    &w2,
                    None,
                    ops::Conv2dOptions {
                        stride: (2, 2),
                        ..opts
                    },
                )
                .unwrap();
                let h = ops::batch_norm(
                    &h,
                    Some(&gamma),
                    Some(&beta),
                    Some(&rm),
                    Some(&rv),
                    Default::default(),
                )
                .unwrap();
                let h = ops::relu(&h).unwrap();
                let h = ops::max_pool2d(&h, ops::MaxPool2dOptions::new(2)).unwrap();
                let h = ops::flatten(&ops::adaptive_avg_pool2d(&h, (1, 1)).unwrap(), 1).unwrap();
                let logits = ops::linear(&h, &fc, Some(&fcb)).unwrap();
                let labels = Tensor::from_vec_i64(labels.clone(), &[2], device).unwrap();
                let loss = ops::cross_entropy(&logits, &labels).unwrap();
                let stats = loss.backward().unwrap();
                let grads: Vec<Vec<f32>> = [&w1, &gamma, &fc, &fcb]
                    .iter()
                    .map(|p| p.grad().expect("trainable").to_vec_f32().unwrap())
                    .collect();
                assert!(beta.grad().is_none() && w2.grad().is_none());
                (
                    loss.to_scalar_f32().unwrap(),
                    grads,
                    stats,
                    rm.to_vec_f32().unwrap(),
                    rv.to_vec_f32().unwrap(),
                )
            };
            let (cpu_loss, cpu_grads, cpu_stats, cpu_rm, cpu_rv) = run(Device::Cpu);
            let (cuda_loss, cuda_grads, cuda_stats, cuda_rm, cuda_rv) = run(Device::Cuda(0));
            assert_eq!(
                cuda_stats.computed, cpu_stats.computed,
                "computed gradient kernels"
            );
            assert_eq!(
                cuda_stats.skipped, cpu_stats.skipped,
                "skipped gradient kernels"
            );
            assert_eq!(cuda_stats.nodes, cpu_stats.nodes);
            // conv1: weight gradient only (x needs none); conv2: input gradient only.
            assert_eq!(cuda_stats.computed("conv2d.weight"), 1);
            assert_eq!(
                cuda_stats.skipped("conv2d.weight"),
                1,
                "the frozen conv's weight gradient is skipped"
            );
            assert_eq!(cuda_stats.computed("conv2d.input"), 1);
            assert_close(
                "loss",
                &CpuStorage::F32(vec![cuda_loss]),
                &CpuStorage::F32(vec![cpu_loss]),
            );
            for (i, (a, b)) in cuda_grads.into_iter().zip(cpu_grads).enumerate() {
                assert_close(
                    &format!("grad {i}"),
                    &CpuStorage::F32(a),
                    &CpuStorage::F32(b),
                );
            }
            assert_close(
                "running mean",
                &CpuStorage::F32(cuda_rm),
                &CpuStorage::F32(cpu_rm),
            );
            assert_close(
                "running var",
                &CpuStorage::F32(cuda_rv),
                &CpuStorage::F32(cpu_rv),
            );
        },
    );
}

/// Without a driver (this process, when no GPU is present: the emulation is
/// only loaded into the child processes), asking for CUDA is an error that
/// says why, never a panic.
#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    if cuda_emu::backend() == cuda_emu::Backend::Real
        || std::env::var_os("LD_LIBRARY_PATH").is_some_and(|p| {
            p.to_string_lossy()
                .split(':')
                .any(|d| std::path::Path::new(d).join("libcuda.so").exists())
        })
    {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED cuda_without_a_driver_is_a_clear_error: a CUDA driver is loadable here"
        );
        return;
    }
    let err = Tensor::from_vec(vec![1.0], &[1], Device::Cuda(0)).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("libcuda"),
        "the error names what is missing: {err}"
    );
    let (device, reason) = frostgrad::backend::cuda::auto_device();
    assert_eq!(device, Device::Cpu);
    assert!(reason.is_some_and(|r| !r.is_empty()));
}

/// A bad argument reads the same on both devices: both backends run the
/// checks of `backend::check` before any kernel, so the messages must be
/// identical, not merely both errors.
#[test]
fn argument_errors_read_the_same_on_both_devices() {
    cuda_emu::cuda_test("argument_errors_read_the_same_on_both_devices", || {
        fn same<A, B>(what: &str, cpu: frostgrad::Result<A>, cuda: frostgrad::Result<B>) {
            let (Err(c), Err(k)) = (cpu, cuda) else {
                panic!("{what}: expected an error on both devices");
            };
            assert_eq!(c.to_string(), k.to_string(), "{what}");
        }
        let v = |n: usize| pair(vec![0.5; n]);
        let ((c1, k1), (c2, k2), (c6, k6)) = (v(1), v(2), v(6));
        same("add", c1.add(&c2), k1.add(&k2));
        same("add_relu", c1.add_relu(&c2), k1.add_relu(&k2));
        same(
            "relu_backward_assign",
            c1.try_clone().unwrap().relu_backward_assign(&c2),
            k1.try_clone().unwrap().relu_backward_assign(&k2),
        );
        same(
            "add_assign",
            c1.try_clone().unwrap().add_assign(&c2),
            k1.try_clone().unwrap().add_assign(&k2),
        );
        same(
            "add_relu_assign",
            c1.try_clone().unwrap().add_relu_assign(&c2),
            k1.try_clone().unwrap().add_relu_assign(&k2),
        );
        same(
            "broadcast_scalar",
            c2.broadcast_scalar(3),
            k2.broadcast_scalar(3),
        );
        same(
            "matmul",
            c6.matmul(&c6, 2, 3, 3, false, false),
            k6.matmul(&k6, 2, 3, 3, false, false),
        );
        same("sum_rows", c6.sum_rows(4, 2), k6.sum_rows(4, 2));

        let g = Conv2dGeometry::new([2, 3, 5, 5], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        let ((cx, kx), (cw, kw)) = (v(150), v(108));
        same(
            "conv2d bias",
            cx.conv2d(&cw, Some(&c2), &g),
            kx.conv2d(&kw, Some(&k2), &g),
        );
        same(
            "conv2d_weight_grad",
            c6.conv2d_weight_grad(&cx, &g),
            k6.conv2d_weight_grad(&kx, &g),
        );

        let geometry = BatchNormGeometry {
            batch: 2,
            channels: 3,
            spatial: 1,
        };
        same(
            "batch_norm weight",
            c6.batch_norm(
                Some(&c2),
                None,
                BatchNormStats::Batch,
                &bn_params(&geometry, false),
            ),
            k6.batch_norm(
                Some(&k2),
                None,
                BatchNormStats::Batch,
                &bn_params(&geometry, false),
            ),
        );
        let ((cm, km), (cs, ks)) = (v(3), v(3));
        fn saved<'a, S>(mean: &'a S, invstd: &'a S, training: bool) -> BatchNormSaved<'a, S> {
            BatchNormSaved {
                input: None,
                weight: None,
                mean,
                invstd,
                batch_stats: training,
                output: None,
            }
        }
        same(
            "batch_norm_backward without the input",
            c6.batch_norm_backward(
                &saved(&cm, &cs, true),
                &bn_params(&geometry, false),
                [true; 3],
            ),
            k6.batch_norm_backward(
                &saved(&km, &ks, true),
                &bn_params(&geometry, false),
                [true; 3],
            ),
        );
        same(
            "batch_norm_backward without the ReLU output",
            c6.batch_norm_backward(
                &saved(&cm, &cs, false),
                &bn_params(&geometry, true),
                [true, false, false],
            ),
            k6.batch_norm_backward(
                &saved(&km, &ks, false),
                &bn_params(&geometry, true),
                [true, false, false],
            ),
        );
        let ((mut crm, mut krm), (mut crv, mut krv)) = (v(3), v(3));
        same(
            "update_running_stats",
            crm.update_running_stats(&mut crv, &cm, &cs, 0.1, 1),
            krm.update_running_stats(&mut krv, &km, &ks, 0.1, 1),
        );

        let labels = CpuStorage::I64(vec![0, 3]);
        let klabels = CudaStorage::from_cpu(&labels, 0).unwrap();
        same(
            "nll_loss label",
            c6.nll_loss(&labels, 2, 3),
            k6.nll_loss(&klabels, 2, 3),
        );
        same(
            "nll_loss_backward",
            c2.nll_loss_backward(&labels, 2, 3),
            k2.nll_loss_backward(&klabels, 2, 3),
        );

        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let ((mut cp, mut kp), (cg, kg)) = (v(2), v(2));
        same(
            "sgd_step without a buffer",
            cp.sgd_step(&cg, None, &cfg, true),
            kp.sgd_step(&kg, None, &cfg, true),
        );
        same(
            "sgd_step grad",
            cp.sgd_step(&c1, None, &cfg, true),
            kp.sgd_step(&k1, None, &cfg, true),
        );
    });
}

#[test]
fn conv2d_of_empty_inputs_matches_cpu() {
    // Images of zero height or width whose padding still gives an output,
    // batch 0 and no input channels (tests/ops_parity.rs has the CPU side
    // on every SIMD path): the output is the bias, dW is 0, db the sum of
    // the output gradient, on both devices, and nothing panics.
    cuda_emu::cuda_test("conv2d_of_empty_inputs_matches_cpu", || {
        type Case = ([usize; 4], [usize; 4], (usize, usize));
        let cases: &[Case] = &[
            ([1, 3, 0, 0], [4, 3, 2, 2], (1, 1)),
            ([2, 3, 0, 5], [4, 3, 2, 3], (1, 1)),
            ([0, 3, 4, 4], [4, 3, 2, 2], (1, 1)),
            ([1, 0, 4, 4], [4, 0, 3, 3], (1, 1)),
        ];
        for &(input, weight, padding) in cases {
            let opts = ops::Conv2dOptions {
                stride: (1, 1),
                padding,
                dilation: (1, 1),
            };
            let run = |device: Device| {
                let leaf = |v: Vec<f32>, shape: &[usize]| {
                    Tensor::from_vec(v, shape, device)
                        .and_then(|t| t.requires_grad_(true))
                        .unwrap()
                };
                let x = leaf(vec![], &input);
                let w_len: usize = weight.iter().product();
                let w = leaf((0..w_len).map(|i| i as f32 * 0.25 - 1.0).collect(), &weight);
                let b = leaf(
                    (0..weight[0]).map(|i| i as f32 + 0.5).collect(),
                    &[weight[0]],
                );
                let y = ops::conv2d(&x, &w, Some(&b), opts)
                    .unwrap_or_else(|e| panic!("{device:?} {input:?}: {e}"));
                let y_vals = y.to_vec_f32().unwrap();
                let r: Vec<f32> = (0..y_vals.len()).map(|i| i as f32 + 1.0).collect();
                let r = Tensor::from_vec(r, y.shape(), device).unwrap();
                ops::sum(&ops::mul(&y, &r).unwrap())
                    .unwrap()
                    .backward()
                    .unwrap_or_else(|e| panic!("{device:?} {input:?}: {e}"));
                let grad = |t: &Tensor| t.grad().map(|g| g.to_vec_f32().unwrap());
                (y.shape().to_vec(), y_vals, grad(&x), grad(&w), grad(&b))
            };
            let cpu = run(Device::Cpu);
            let cuda = run(Device::Cuda(0));
            assert_eq!(cuda, cpu, "{input:?} * {weight:?}");
            assert!(cpu.3.as_ref().unwrap().iter().all(|&v| v == 0.0), "dW");
        }
    });
}
