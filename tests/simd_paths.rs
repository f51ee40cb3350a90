//! Every SIMD path of the CPU GEMM this machine supports (AVX-512F,
//! AVX2+FMA, portable) computes the dense products and all three
//! convolution kernels correctly, so no path goes untested because of
//! which CPU the tests land on. One test function: the path is
//! process-wide, and this binary runs nothing else.
//!
//! References are computed in f64 by direct loops. Tolerance: relative L2
//! error 1e-5 against f64; the products here sum up to ~4700 terms (a
//! 3x3x520 window), whose f32 rounding error is a few 1e-7 relative for
//! this well-conditioned data; any wrong index, missed tile edge or
//! dropped k-block gives errors of order 1e-2 or more. The same shapes are
//! also compared across paths, which must agree to the same tolerance.

use frostgrad::backend::cpu::simd::{self, SimdPath};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::{BackendStorage, Conv2dGeometry};

const TOLERANCE: f64 = 1e-5;

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
        .collect()
}

fn f32s(s: &CpuStorage) -> Vec<f32> {
    s.as_f32("test").unwrap().to_vec()
}

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

/// (m, k, n, lhs_transposed, rhs_transposed): tile edges (m not a multiple
/// of 12 or 6, n not of 32 or 16), k above one 256-deep block, m above one
/// 144-row block, n above one 2048-column block, and products big enough
/// to be split across threads.
const MATMULS: &[(usize, usize, usize, bool, bool)] = &[
    (1, 1, 1, false, false),
    (13, 7, 33, false, false),
    (7, 300, 17, true, false),
    (150, 260, 40, false, true),
    (37, 513, 2100, true, true),
    (200, 600, 300, false, false),
];

fn matmul_reference(
    a: &[f32],
    b: &[f32],
    (m, k, n, ta, tb): (usize, usize, usize, bool, bool),
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = f64::from(if ta { a[p * m + i] } else { a[i * k + p] });
            for j in 0..n {
                let bv = f64::from(if tb { b[j * k + p] } else { b[p * n + j] });
                c[i * n + j] += av * bv;
            }
        }
    }
    c
}

/// (input, weight, stride, padding, dilation): ResNet's kinds of layer at
/// small sizes, plus odd channel counts, dilation and a deep 3x3 whose
/// taps (4680) span many k-blocks.
type ConvCase = ([usize; 4], [usize; 4], usize, usize, usize);
const CONVS: &[ConvCase] = &[
    ([2, 3, 23, 19], [8, 3, 7, 7], 2, 3, 1),
    ([3, 5, 9, 11], [13, 5, 3, 3], 1, 1, 1),
    ([2, 6, 10, 10], [7, 6, 3, 3], 2, 1, 2),
    ([2, 16, 12, 12], [33, 16, 1, 1], 1, 0, 1),
    ([3, 8, 9, 9], [12, 8, 1, 1], 2, 0, 1),
    ([2, 520, 5, 5], [40, 520, 3, 3], 1, 1, 1),
];

struct ConvRef {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

fn conv_reference(g: &Conv2dGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> ConvRef {
    let (n, c, h, wd) = (g.batch, g.in_channels, g.in_h, g.in_w);
    let (o, kh, kw, oh, ow) = (g.out_channels, g.kernel_h, g.kernel_w, g.out_h, g.out_w);
    let mut y = vec![0f64; n * o * oh * ow];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    for b in 0..n {
        for co in 0..o {
            for r in 0..oh {
                for s in 0..ow {
                    let yi = ((b * o + co) * oh + r) * ow + s;
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let ih = (r * g.stride.0 + i * g.dilation.0) as isize
                                    - g.padding.0 as isize;
                                let iw = (s * g.stride.1 + j * g.dilation.1) as isize
                                    - g.padding.1 as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + ci) * h + ih as usize) * wd + iw as usize;
                                let wi = ((co * c + ci) * kh + i) * kw + j;
                                y[yi] += f64::from(x[xi]) * f64::from(w[wi]);
                                dx[xi] += f64::from(dy[yi]) * f64::from(w[wi]);
                                dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
                            }
                        }
                    }
                }
            }
        }
    }
    ConvRef { y, dx, dw }
}

/// Runs every case on the active path; returns the failures and the
/// outputs (for the cross-path comparison).
fn check_active_path(path: SimdPath) -> (Vec<String>, Vec<Vec<f32>>) {
    let mut failures = Vec::new();
    let mut outputs = Vec::new();
    let mut check = |what: String, got: Vec<f32>, want: &[f64]| {
        let err = rel_l2(&got, want);
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!("{}: {what}: rel L2 {err:e}", path.name()));
        }
        outputs.push(got);
    };
    for (i, &case) in MATMULS.iter().enumerate() {
        let (m, k, n, ta, tb) = case;
        let a = data(m * k, i);
        let b = data(k * n, i + 100);
        let want = matmul_reference(&a, &b, case);
        let got = CpuStorage::F32(a)
            .matmul(&CpuStorage::F32(b), m, k, n, ta, tb)
            .unwrap();
        check(format!("matmul {case:?}"), f32s(&got), &want);
    }
    for (i, &(input, weight, s, p, d)) in CONVS.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, (s, s), (p, p), (d, d)).unwrap();
        let x = data(input.iter().product(), i);
        let w = data(weight.iter().product(), i + 50);
        let dy = data(g.output_shape().iter().product(), i + 70);
        let r = conv_reference(&g, &x, &w, &dy);
        let (xs, ws, dys) = (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(dy));
        let name = format!("conv {input:?} {weight:?} s{s} p{p} d{d}");
        check(
            format!("{name} forward"),
            f32s(&xs.conv2d(&ws, None, &g).unwrap()),
            &r.y,
        );
        check(
            format!("{name} input grad"),
            f32s(&dys.conv2d_input_grad(&ws, &g).unwrap()),
            &r.dx,
        );
        check(
            format!("{name} weight grad"),
            f32s(&dys.conv2d_weight_grad(&xs, &g).unwrap()),
            &r.dw,
        );
    }
    (failures, outputs)
}

#[test]
fn every_supported_simd_path_matches_f64_references() {
    let paths = simd::supported();
    assert!(paths.contains(&SimdPath::Portable));
    eprintln!(
        "SIMD paths on this machine: {:?}",
        paths.iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    let mut first: Option<(SimdPath, Vec<Vec<f32>>)> = None;
    for &path in &paths {
        simd::force(path).unwrap();
        assert_eq!(simd::active(), path);
        let (f, outputs) = check_active_path(path);
        failures.extend(f);
        // The paths round differently (tile shapes, FMA), but all within
        // f32 accuracy of each other.
        if let Some((p0, ref o0)) = first {
            for (i, (a, b)) in o0.iter().zip(&outputs).enumerate() {
                let b64: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
                let err = rel_l2(a, &b64);
                if err.is_nan() || err > TOLERANCE {
                    failures.push(format!(
                        "{} vs {}: output {i} differs by rel L2 {err:e}",
                        p0.name(),
                        path.name()
                    ));
                }
            }
        } else {
            first = Some((path, outputs));
        }
    }
    // A path this CPU lacks cannot be forced.
    for p in SimdPath::ALL {
        assert_eq!(simd::force(p).is_ok(), paths.contains(&p), "{}", p.name());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
