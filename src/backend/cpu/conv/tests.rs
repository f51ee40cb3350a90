use std::cell::Cell;

use super::super::gemm::{Lhs, MatRef, PackB, Source};
use super::super::scratch::{with_scratch, Slot};
use super::super::tap_classes::ClassOrder;
use super::super::test_data::pseudo_random;
use super::col2im::{col2im_set, merges_tap_rows, scatter_even_add, scatter_even_set};
use super::columns::{tap, transpose, Columns};
use super::direct::direct_width;
use super::forward::{forward_skipping, forward_with, skip_order, Skip};
use super::input_grad::{
    flip_input_grad, flipped_geometry, input_grad_col2im, input_grad_flipped,
    input_grad_flipped_skipping, input_grad_with, pointwise_taps,
};
use super::weight_grad::{
    shifted_limits, shifted_rows, weight_grad_im2col, weight_grad_limits, weight_grad_with,
};
use super::weight_grad_taps::{
    by_classes, tap_column_parts, weight_grad_classes, TapRows, TapTables,
};
use super::*;

/// Input coordinate of output `o` and tap `k`, if it is not padding.
fn source(o: usize, k: usize, stride: usize, pad: usize, dil: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (0..len as isize).contains(&i).then_some(i as usize)
}

/// Calls `f(n, co, oh, ow, c, kh, kw, x_index)` for every multiply of the
/// convolution that reads a real input pixel: the direct 7-loop definition.
fn each_term(
    g: &Conv2dGeometry,
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize, usize),
) {
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    for c in 0..g.in_channels {
                        for kh in 0..g.kernel_h {
                            for kw in 0..g.kernel_w {
                                let ih =
                                    source(oh, kh, g.stride.0, g.padding.0, g.dilation.0, g.in_h);
                                let iw =
                                    source(ow, kw, g.stride.1, g.padding.1, g.dilation.1, g.in_w);
                                if let (Some(ih), Some(iw)) = (ih, iw) {
                                    let xi = ((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw;
                                    f(n, co, oh, ow, c, kh, kw, xi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Reference {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

fn reference(g: &Conv2dGeometry, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> Reference {
    let [n, co, oh, ow] = g.output_shape();
    let mut y: Vec<f64> = (0..n * co * oh * ow)
        .map(|i| f64::from(b[(i / (oh * ow)) % co]))
        .collect();
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    each_term(g, |n, co, oh, ow, c, kh, kw, xi| {
        let wi = ((co * g.in_channels + c) * g.kernel_h + kh) * g.kernel_w + kw;
        let yi = ((n * g.out_channels + co) * g.out_h + oh) * g.out_w + ow;
        y[yi] += f64::from(w[wi]) * f64::from(x[xi]);
        dx[xi] += f64::from(w[wi]) * f64::from(dy[yi]);
        dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
    });
    Reference { y, dx, dw }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

type Case = (
    [usize; 4],
    [usize; 4],
    (usize, usize),
    (usize, usize),
    (usize, usize),
);

const CASES: &[Case] = &[
    // stride 2, padding 1, odd non-square input
    ([2, 3, 7, 9], [5, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
    // asymmetric stride / padding / dilation, non-square kernel
    ([1, 4, 8, 6], [3, 4, 3, 2], (1, 2), (2, 0), (2, 1)),
    // dilation 2 on both axes with padding 2
    ([2, 3, 9, 8], [2, 3, 3, 3], (1, 1), (2, 2), (2, 2)),
    // 1x1 stride 1: the im2col-free path
    ([3, 5, 6, 7], [7, 5, 1, 1], (1, 1), (0, 0), (1, 1)),
    // 1x1 stride 2 (ResNet downsample): goes through im2col
    ([2, 6, 9, 9], [4, 6, 1, 1], (2, 2), (0, 0), (1, 1)),
    // 1x1 with padding: the border sees only zeros
    ([1, 2, 3, 4], [3, 2, 1, 1], (1, 1), (1, 2), (1, 1)),
    // The shifted weight gradient: ResNet's 3x3 padding 1, a 5x5
    // padding 2 (shifts of up to 2 per row), a 2-wide kernel dilated
    // 2, a 1x3 kernel unpadded along the height, 1-pixel-wide images
    // (every shifted value outside its row).
    ([2, 3, 6, 5], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
    ([2, 2, 4, 7], [3, 2, 5, 5], (1, 1), (2, 2), (1, 1)),
    ([1, 2, 5, 6], [2, 2, 2, 2], (1, 1), (1, 1), (2, 2)),
    ([1, 3, 4, 9], [2, 3, 1, 3], (1, 1), (0, 1), (1, 1)),
    ([3, 2, 2, 1], [3, 2, 3, 3], (1, 1), (1, 1), (1, 1)),
    // 7x7 stride 2 padding 3: the ResNet stem shape, shrunk
    ([2, 3, 11, 10], [4, 3, 7, 7], (2, 2), (3, 3), (1, 1)),
    // kernel as large as the input, and padding wider than the kernel reach
    ([1, 2, 5, 5], [3, 2, 5, 5], (1, 1), (0, 0), (1, 1)),
    ([1, 2, 3, 4], [2, 2, 3, 3], (3, 1), (2, 2), (1, 1)),
];

#[test]
fn conv_matches_direct_loops_on_odd_shapes() {
    for (case, &(input, weight, stride, padding, dilation)) in CASES.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 1 + case as u64);
        let w = pseudo_random(weight.iter().product(), 100 + case as u64);
        let b = pseudo_random(weight[0], 200 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 300 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        let pixels = g.out_h * g.out_w;
        let no_bias: Vec<f64> =
            r.y.iter()
                .enumerate()
                .map(|(i, &v)| v - f64::from(b[(i / pixels) % g.out_channels]))
                .collect();
        let taps_row = g.kernel_h * g.kernel_w * g.in_channels * g.out_w;
        let variants = [
            // The defaults: these small images are grouped per chunk.
            LIMITS,
            // One output row per chunk, then two: exercises the block seams.
            Limits {
                block_elems: 1,
                min_columns: 1,
                groups_per_thread: 2,
                dx_block_elems: 1,
                group_pack_elems: None,
            },
            Limits {
                block_elems: 2 * taps_row,
                min_columns: 1,
                groups_per_thread: 2,
                dx_block_elems: 1,
                group_pack_elems: None,
            },
            // One whole image per chunk (the 1x1 case takes the im2col-free path).
            Limits {
                block_elems: usize::MAX / 2,
                min_columns: 1,
                groups_per_thread: 2,
                dx_block_elems: 1,
                group_pack_elems: None,
            },
            // Two images per chunk, so a batch of 3 ends in a partial group.
            Limits {
                block_elems: usize::MAX / 2,
                min_columns: 2 * pixels,
                groups_per_thread: 2,
                dx_block_elems: 1,
                group_pack_elems: None,
            },
        ];
        // Each variant again with image groups run in parallel (on a
        // 2-thread pool, so the group path is taken for any batch), and
        // with the forward's one group per thread (which also caps the
        // images per group so that there are two groups).
        let variants = variants.iter().flat_map(|&l| {
            [0, 1]
                .map(|groups_per_thread| Limits {
                    groups_per_thread,
                    ..l
                })
                .into_iter()
                .chain([l])
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (v, limits) in variants.enumerate() {
            let what = |k: &str| format!("case {case} limits #{v} {k}");
            let (y, y_no_bias, dx, dw) = pool.install(|| {
                (
                    forward_with(&x, &w, Some(&b), &g, limits).unwrap(),
                    forward_with(&x, &w, None, &g, limits).unwrap(),
                    input_grad_with(&dy, &w, &g, limits).unwrap(),
                    weight_grad_with(&dy, &x, &g, limits).unwrap(),
                )
            });
            assert_close(&what("y"), &y, &r.y, 1e-5);
            assert_close(&what("y without bias"), &y_no_bias, &no_bias, 1e-5);
            assert_close(&what("dx"), &dx, &r.dx, 1e-5);
            assert_close(&what("dw"), &dw, &r.dw, 1e-5);
            if shifted_rows(&g).is_some() || by_classes(&g) {
                // The im2col form still serves the layers the shifted
                // one leaves (more row taps): check it here too.
                let dw = pool.install(|| weight_grad_im2col(&dy, &x, &g, limits).unwrap());
                assert_close(&what("dw im2col"), &dw, &r.dw, 1e-5);
            }
            // The tap-by-tap form on every geometry, not only the
            // small padded images it is chosen for.
            let dw = pool.install(|| weight_grad_classes(&dy, &x, &g, limits).unwrap());
            assert_close(&what("dw by taps"), &dw, &r.dw, 1e-5);
            if let Some(flipped) = flipped_geometry(&g) {
                let dx =
                    pool.install(|| input_grad_flipped(&dy, &w, &g, &flipped, limits).unwrap());
                assert_close(&what("dx flipped"), &dx, &r.dx, 1e-5);
            }
        }
    }
}

/// A batch of no images has a weight gradient of zeros: no GEMM call
/// writes the sum (which starts unset, [`Beta`]), so
/// [`for_image_groups`] must.
#[test]
fn weight_grad_of_an_empty_batch_is_zero() {
    for (input, weight, stride, padding) in [
        ([0, 3, 9, 9], [4, 3, 3, 3], (1, 1), (1, 1)),
        ([0, 2, 8, 8], [5, 2, 1, 1], (2, 2), (0, 0)),
    ] {
        let g = Conv2dGeometry::new(input, weight, stride, padding, (1, 1)).unwrap();
        let dw = conv2d_weight_grad(&[], &[], &g).unwrap();
        assert_eq!(dw.len(), weight.iter().product::<usize>());
        assert!(dw.iter().all(|&v| v == 0.0), "{input:?}: {dw:?}");
    }
}

#[test]
fn weight_grad_row_groups_match_direct_loops_at_every_thread_count() {
    // Fewer images than threads: the weight gradient's output rows split
    // across 2, 3 and 4 threads (runs that end mid-image and span two
    // images at batch 2), with one chunk per run and with one row per
    // chunk, on the im2col form (stride 2, the stem's kind; a 1x1
    // stride-1 layer without a column matrix) and the shifted one.
    // (With one group per thread and fewer images than threads, a
    // run is one chunk per image it touches, whatever the block size.)
    // Each with at least 4 x ROW_GROUP_MIN_PIXELS output pixels.
    let cases: &[Case] = &[
        ([1, 3, 48, 46], [4, 3, 7, 7], (2, 2), (3, 3), (1, 1)),
        ([2, 3, 33, 31], [5, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([1, 4, 24, 22], [3, 4, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([2, 3, 17, 16], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([1, 5, 24, 23], [7, 5, 1, 1], (1, 1), (0, 0), (1, 1)),
    ];
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 11 + case as u64);
        let w = pseudo_random(weight.iter().product(), 110 + case as u64);
        let b = pseudo_random(weight[0], 210 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 310 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        for block_elems in [usize::MAX / 2, 1] {
            let limits = Limits {
                block_elems,
                ..FORWARD_LIMITS
            };
            for threads in [1, 2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let plan = Plan::new("test", &g, limits).unwrap();
                    let split = !plan.parallel_groups(&g) && plan.row_groups(&g);
                    let what = format!("case {case} block {block_elems} threads {threads}");
                    assert_eq!(split, threads > g.batch, "{what}: row groups taken");
                    let dw = weight_grad_with(&dy, &x, &g, limits).unwrap();
                    assert_close(&what, &dw, &r.dw, 1e-5);
                    let dw = weight_grad_im2col(&dy, &x, &g, limits).unwrap();
                    assert_close(&format!("{what} im2col"), &dw, &r.dw, 1e-5);
                });
            }
        }
    }
}

#[test]
fn shifted_weight_grad_is_taken_where_it_applies() {
    let geo = |input, weight, stride, padding| {
        Conv2dGeometry::new(input, weight, stride, padding, (1, 1)).unwrap()
    };
    // ResNet's 3x3 stride-1 layers up to 128 channels; the row taps'
    // geometry keeps the output and drops the width's kernel.
    for c in [64, 128] {
        let g = geo([8, c, 56, 56], [c, c, 3, 3], (1, 1), (1, 1));
        let rows = shifted_rows(&g).unwrap();
        assert_eq!((rows.out_h, rows.out_w), (g.out_h, g.out_w));
        assert_eq!((rows.kernel_w, rows.padding.1), (1, 0));
    }
    for g in [
        // Too many row taps, stride 2, a 1x1, output narrower than input.
        geo([8, 256, 14, 14], [256, 256, 3, 3], (1, 1), (1, 1)),
        geo([8, 64, 56, 56], [128, 64, 3, 3], (2, 2), (1, 1)),
        geo([8, 64, 56, 56], [64, 64, 1, 1], (1, 1), (0, 0)),
        geo([8, 64, 56, 56], [64, 64, 3, 3], (1, 1), (0, 0)),
        // No input channels: nothing to shift (and an empty dW).
        geo([2, 0, 5, 5], [4, 0, 3, 3], (1, 1), (1, 1)),
    ] {
        assert!(shifted_rows(&g).is_none(), "{g:?}");
    }
    let empty = geo([2, 0, 5, 5], [4, 0, 3, 3], (1, 1), (1, 1));
    let dy = vec![1.0; empty.output_shape().iter().product()];
    assert!(conv2d_weight_grad(&dy, &[], &empty).unwrap().is_empty());
}

#[test]
fn tap_by_tap_weight_grad_matches_direct_loops_with_many_channels() {
    // More input channels than one panel (ragged at 40), strides 1 and
    // 2, against the float64 loops; the default limits and one group
    // per thread, on a 2-thread pool: parallel image groups, split
    // GEMMs, and (one 16x16 image) output rows split across threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, (input, stride)) in [([3, 40, 4, 5], 1), ([2, 40, 7, 7], 2), ([1, 40, 16, 16], 1)]
        .into_iter()
        .enumerate()
    {
        let weight = [33, input[1], 3, 3];
        let g = Conv2dGeometry::new(input, weight, (stride, stride), (1, 1), (1, 1)).unwrap();
        let x = pseudo_random(input.iter().product(), 31 + case as u64);
        let w = pseudo_random(weight.iter().product(), 41 + case as u64);
        let b = vec![0.0; weight[0]];
        let dy = pseudo_random(g.output_shape().iter().product(), 51 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        // None is chosen (the 16x16 image is too large, the others'
        // batches have too few output pixels, CLASSES_MIN_DEPTH), but
        // each is correct.
        assert!(!by_classes(&g), "{g:?}");
        for limits in [
            LIMITS,
            Limits {
                min_columns: 1,
                groups_per_thread: 1,
                ..LIMITS
            },
        ] {
            let plan = Plan::new("test", &g, limits).unwrap();
            let split_rows = pool.install(|| plan.row_groups(&g));
            assert_eq!(split_rows, case == 2 && limits.groups_per_thread == 1);
            let dw = pool.install(|| weight_grad_classes(&dy, &x, &g, limits).unwrap());
            assert_close(&format!("case {case}"), &dw, &r.dw, 1e-5);
            let dw = pool.install(|| weight_grad_with(&dy, &x, &g, limits).unwrap());
            assert_close(&format!("case {case} chosen"), &dw, &r.dw, 1e-5);
        }
        // The packed right operand at column offsets and ragged widths.
        let xt: Vec<f32> = (0..g.batch)
            .flat_map(|n| {
                let plane = g.in_h * g.in_w;
                let image = &x[n * g.in_channels * plane..][..g.in_channels * plane];
                (0..plane).flat_map(move |q| (0..g.in_channels).map(move |c| image[c * plane + q]))
            })
            .collect();
        let plan = Plan::new("test", &g, LIMITS).unwrap();
        let tables = TapTables::new("test", &g, &plan, g.batch).unwrap();
        let (_, x_at) = tables.tap(2, g.batch);
        let rows = TapRows::new(&xt, x_at, g.in_channels);
        let (depth, cols) = rows.shape();
        for (pc, kc, jc, nc) in [(0, depth, 0, cols), (1, depth - 2, 5, cols - 7)] {
            for nr in [32, 16, 5] {
                let len = nc.div_ceil(nr) * nr * kc;
                let mut out = vec![f32::NAN; len];
                // SAFETY: the block lies inside the shape; `out` holds it.
                unsafe { rows.pack(pc, kc, jc, nc, nr, &mut out) };
                for (i, &got) in out.iter().enumerate() {
                    let (q, p, j) = (i / (kc * nr), i % (kc * nr) / nr, i % nr);
                    let col = q * nr + j;
                    let want = if col < nc {
                        rows.row(pc + p)[jc + col]
                    } else {
                        0.0
                    };
                    assert_eq!(got.to_bits(), want.to_bits(), "case {case} nr {nr} {i}");
                }
            }
        }
    }
}

#[test]
fn tap_by_tap_parts_own_disjoint_columns_at_every_thread_count() {
    // Each thread's part of the tap-by-tap form (its input channels of
    // every tap, written into dW in place) at 1-5 threads, so that
    // parts are uneven, end in a partial panel (40 and 72 channels) or
    // are empty (more threads than panels); with every image in one
    // block, with one image per block (the later blocks adding onto
    // the sums) and with two (batch 3: a last block of one image, so
    // a block shorter than the others); strides 1 and 2, a dilated kernel, a 3x2 kernel, and a
    // 1x1 image whose corner taps see no pixel at all. Against the
    // float64 loops; dW and the per-tap sums start as NaN in tests, so
    // an element no part writes fails.
    let cases: &[Case] = &[
        ([3, 40, 5, 4], [33, 40, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([2, 72, 7, 7], [17, 72, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([2, 32, 6, 6], [9, 32, 3, 3], (1, 1), (2, 2), (2, 2)),
        ([3, 48, 4, 5], [5, 48, 3, 2], (1, 1), (1, 0), (1, 1)),
        ([4, 33, 1, 1], [6, 33, 3, 3], (1, 1), (1, 1), (1, 1)),
    ];
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 61 + case as u64);
        let w = pseudo_random(weight.iter().product(), 71 + case as u64);
        let b = vec![0.0; weight[0]];
        let dy = pseudo_random(g.output_shape().iter().product(), 81 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let parts = tap_column_parts(input[1], threads);
            assert_eq!(parts.len(), threads);
            assert_eq!((parts[0].0, parts[threads - 1].1), (0, input[1]));
            assert!(parts
                .windows(2)
                .all(|p| p[0].1 == p[1].0 && p[0].0 <= p[0].1));
            for block_elems in [usize::MAX / 2, 1, 2 * input[1] * input[2] * input[3]] {
                let limits = Limits {
                    block_elems,
                    ..LIMITS
                };
                let dw = pool.install(|| weight_grad_classes(&dy, &x, &g, limits).unwrap());
                let what = format!("case {case} threads {threads} block {block_elems}");
                assert_close(&what, &dw, &r.dw, 1e-5);
            }
        }
    }
}

#[test]
fn tap_by_tap_weight_grad_is_taken_where_padding_is_an_eighth() {
    let geo = |input: [usize; 4], c_out, k, stride, padding| {
        let weight = [c_out, input[1], k, k];
        Conv2dGeometry::new(input, weight, (stride, stride), (padding, padding), (1, 1)).unwrap()
    };
    // ResNet's 4x4 (31 % padding) and 7x7 (18 %) 3x3 layers.
    for g in [
        geo([32, 512, 4, 4], 512, 3, 1, 1),
        geo([32, 256, 7, 7], 512, 3, 2, 1),
        geo([8, 512, 7, 7], 512, 3, 1, 1),
        geo([8, 256, 7, 7], 256, 3, 1, 1),
        // 9 %, but 256 channels at stride 1.
        geo([8, 256, 14, 14], 256, 3, 1, 1),
        // Batch 1 at 14x14 (196 output pixels), 8 at 4x4 (128), 2 at
        // 7x7 (98): at least CLASSES_MIN_DEPTH.
        geo([1, 256, 14, 14], 256, 3, 1, 1),
        // 20x20 (6.6 %, 256 channels at stride 1): CLASSES_MAX_PIXELS.
        geo([4, 256, 20, 20], 256, 3, 1, 1),
        geo([8, 512, 4, 4], 512, 3, 1, 1),
        geo([2, 512, 7, 7], 512, 3, 1, 1),
        // Exactly CLASSES_MIN_DEPTH output pixels (6 images of 4x4).
        geo([6, 512, 4, 4], 512, 3, 1, 1),
    ] {
        let avx = simd::active() != simd::SimdPath::Portable;
        assert_eq!(by_classes(&g), avx, "{g:?}");
    }
    for g in [
        // 9 % padding (stride 2 to 7x7; and 128 channels at 14x14),
        // 28x28, no padding, a 1x1, the stem's 3 channels, fewer
        // channels than a panel.
        geo([8, 256, 14, 14], 512, 3, 2, 1),
        geo([8, 128, 14, 14], 128, 3, 1, 1),
        geo([8, 256, 28, 28], 256, 3, 1, 1),
        geo([8, 512, 7, 7], 512, 3, 1, 0),
        geo([8, 512, 7, 7], 512, 1, 1, 0),
        geo([8, 3, 8, 8], 64, 7, 2, 3),
        geo([8, 16, 4, 4], 64, 3, 1, 1),
        // Larger than CLASSES_MAX_PIXELS: 21x21 (a 5x5 kernel, 11 %
        // padding).
        geo([4, 256, 21, 21], 256, 5, 1, 2),
        // Too few output pixels in the batch (CLASSES_MIN_DEPTH): batch
        // 1 at 7x7, batch 4 at 4x4.
        geo([1, 512, 7, 7], 512, 3, 1, 1),
        geo([4, 512, 4, 4], 512, 3, 1, 1),
        // One image fewer than CLASSES_MIN_DEPTH needs (80 pixels).
        geo([5, 512, 4, 4], 512, 3, 1, 1),
    ] {
        assert!(!by_classes(&g), "{g:?}");
    }
}

#[test]
fn shifted_weight_grad_chunks_keep_both_operands_within_the_block() {
    // Few input channels, many outputs (a 3->64 layer): the left
    // operand (`KW * C_out` rows) is the larger one.
    for (c_in, c_out) in [(3, 64), (64, 64), (128, 128), (1, 512)] {
        let g = Conv2dGeometry::new(
            [8, c_in, 224, 224],
            [c_out, c_in, 3, 3],
            (1, 1),
            (1, 1),
            (1, 1),
        )
        .unwrap();
        let rows = shifted_rows(&g).unwrap();
        let plan = Plan::new("test", &rows, shifted_limits(&g, LIMITS)).unwrap();
        let columns = plan.max_columns(&rows);
        let left = 3 * c_out * columns;
        let right = c_in * 3 * columns;
        // One output row is the least a chunk holds.
        let least = 3 * c_out.max(c_in) * g.out_w;
        assert!(
            left.max(right) <= COL_BLOCK_ELEMS.max(least),
            "{c_in}->{c_out}: {left} / {right} floats per chunk"
        );
    }
}

#[test]
fn forward_gives_every_thread_an_image_group() {
    // Layer4's 3x3 256->512 stride 2 at batch 8: eight 7x7 outputs fit
    // one chunk, which left one of two threads idle in the forward.
    let g =
        Conv2dGeometry::new([8, 256, 14, 14], [512, 256, 3, 3], (2, 2), (1, 1), (1, 1)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let plan = Plan::new("test", &g, FORWARD_LIMITS).unwrap();
        assert_eq!(plan.images_per_chunk, 4);
        assert!(plan.parallel_groups(&g));
        // The gradients keep one chunk of all eight, split inside.
        let plan = Plan::new("test", &g, weight_grad_limits(&g)).unwrap();
        assert_eq!(plan.images_per_chunk, 8);
        assert!(!plan.parallel_groups(&g));
        // ... but not the 1x1 downsample's small weight gradient.
        let g = Conv2dGeometry::new([8, 256, 14, 14], [512, 256, 1, 1], (2, 2), (0, 0), (1, 1))
            .unwrap();
        let plan = Plan::new("test", &g, weight_grad_limits(&g)).unwrap();
        assert_eq!(plan.images_per_chunk, 4);
        assert!(plan.parallel_groups(&g));
    });
}

#[test]
fn forward_groups_are_bounded_by_the_packed_block() {
    // ResNet's stride-1 3x3 layers at batch 32 x 112: the forward packs
    // one 256-deep block of its columns at a time, so 4x4 and 7x7
    // images go 16 to a group (one per thread), where the whole column
    // matrix (4608 or 2304 taps deep) held them to 14 and 9, i.e.
    // groups of 8; 14x14 stays at 4 (768 columns), 28x28 at one. The
    // portable path, whose GEMM takes the column matrix stored, keeps
    // the old bound.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for path in simd::supported() {
        simd::set_pool_path(&pool, Some(path));
        pool.install(|| forward_groups_for_path(path));
    }
    simd::set_pool_path(&pool, None);
}

fn forward_groups_for_path(path: simd::SimdPath) {
    for (c, size, want, old) in [
        (512, 4, 16, 8),
        (256, 7, 16, 8),
        (128, 14, 4, 4),
        (64, 28, 1, 1),
    ] {
        {
            let g = Conv2dGeometry::new([32, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
                .unwrap();
            let plan = Plan::new("test", &g, FORWARD_LIMITS).unwrap();
            let want = if path == simd::SimdPath::Portable {
                old
            } else {
                want
            };
            assert_eq!(plan.images_per_chunk, want, "{c} @{size} {path:?}");
            assert!(plan.parallel_groups(&g));
            // Bounded by the whole column matrix (what a plan that
            // stores it keeps).
            let limits = Limits {
                group_pack_elems: None,
                ..FORWARD_LIMITS
            };
            let plan = Plan::new("test", &g, limits).unwrap();
            assert_eq!(plan.images_per_chunk, old, "{c} @{size}, stored");
            assert!(want * size * size * GROUP_PACK_DEPTH <= GROUP_PACK_ELEMS);
        }
    }
}

#[test]
fn input_grad_row_blocks_match_direct_loops() {
    // Input channels that the row blocks do not divide (blocks of whole
    // channels starting at multiples of the packed Wᵀ's row tile: 8
    // channels of 9 taps on AVX-512, 2 on AVX2, 1 on portable; AVX-512
    // reads Wᵀ in place, 1 channel per unit, up to 256 columns, so the
    // last two cases have more), block
    // sizes from one unit to all channels, stride 2 and padding, batch
    // 1 and a partial image group, blocks in parallel (split) and on
    // one thread (image groups), into dirty scratch buffers.
    let cases: &[Case] = &[
        ([2, 19, 6, 5], [7, 19, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([3, 13, 7, 7], [6, 13, 1, 1], (2, 2), (0, 0), (1, 1)),
        ([1, 17, 5, 6], [4, 17, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([3, 11, 4, 4], [5, 11, 3, 2], (1, 1), (2, 0), (1, 1)),
        ([3, 19, 10, 10], [7, 19, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([2, 21, 13, 11], [5, 21, 3, 3], (1, 1), (1, 1), (1, 1)),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 11 + case as u64);
        let w = pseudo_random(weight.iter().product(), 110 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 310 + case as u64);
        let r = reference(&g, &x, &w, &vec![0.0; weight[0]], &dy);
        let pixels = g.out_h * g.out_w;
        let taps = weight[1] * weight[2] * weight[3];
        for dx_block_elems in [1, 3 * taps * pixels, 9 * taps * pixels, usize::MAX / 2] {
            for (min_columns, groups_per_thread) in [(1, 0), (1, 2), (2 * pixels, 1)] {
                let limits = Limits {
                    block_elems: usize::MAX / 2,
                    min_columns,
                    groups_per_thread,
                    dx_block_elems,
                    group_pack_elems: None,
                };
                let dx = pool.install(|| {
                    pool.broadcast(|_| {
                        with_scratch(Slot::Columns, 1 << 12, |b| b.fill(f32::NAN));
                        with_scratch(Slot::Staging, 1 << 12, |b| b.fill(f32::NAN));
                    });
                    input_grad_with(&dy, &w, &g, limits).unwrap()
                });
                let what = format!(
                    "case {case} block {dx_block_elems} columns {min_columns} \
                     groups/thread {groups_per_thread} dx"
                );
                assert_close(&what, &dx, &r.dx, 1e-5);
            }
        }
    }
}

#[test]
fn flipped_input_grad_matches_direct_loops() {
    // The input gradient as a forward convolution of dy with the
    // flipped weight, on the active SIMD path (the suites run once per
    // path): kernels 1..7 (square and not), dilation, every padding
    // from 0 to d(k-1) in some combination, C_in != C_out with C_in
    // (the GEMM's rows) ragged for both kernels' row tiles and widths
    // ragged for their panels, batch 1 and several, and chunking and
    // grouping variants on two threads, into dirty scratch buffers.
    let mut cases: Vec<Case> = vec![
        // ResNet-like: 3x3 at 7x7 (grouped images), 1x1 (forced flip).
        ([3, 16, 7, 7], [24, 16, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([2, 8, 4, 5], [16, 8, 1, 1], (1, 1), (0, 0), (1, 1)),
        // Tiny images (ResNet at 40x40: 10, 5, 3 and 2 pixels wide, 1).
        ([4, 16, 10, 10], [16, 16, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([4, 24, 5, 5], [24, 24, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([4, 40, 3, 3], [40, 40, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([4, 64, 2, 2], [64, 64, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([3, 9, 1, 1], [10, 9, 3, 3], (1, 1), (1, 1), (1, 1)),
    ];
    for (kh, kw) in [(1, 1), (3, 3), (5, 5), (7, 7), (3, 2), (1, 3)] {
        for (dh, dw) in [(1, 1), (2, 1)] {
            let (fh, fw) = (dh * (kh - 1), dw * (kw - 1));
            for (ph, pw) in [(0, 0), (fh / 2, fw / 2), (fh, fw), (fh, 0)] {
                for batch in [1, 3] {
                    cases.push((
                        [batch, 13, 14, 11],
                        [5, 13, kh, kw],
                        (1, 1),
                        (ph, pw),
                        (dh, dw),
                    ));
                }
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let Ok(g) = Conv2dGeometry::new(input, weight, stride, padding, dilation) else {
            continue; // an empty output (e.g. 7x7 dilated, unpadded)
        };
        let flipped = flipped_geometry(&g).expect("stride 1, padding <= d(k-1)");
        let x = pseudo_random(input.iter().product(), 21 + case as u64);
        let w = pseudo_random(weight.iter().product(), 121 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 321 + case as u64);
        let r = reference(&g, &x, &w, &vec![0.0; weight[0]], &dy);
        let pixels = g.in_h * g.in_w;
        let taps_row = weight[0] * weight[2] * weight[3] * g.in_w;
        for limits in [
            FORWARD_LIMITS,
            LIMITS,
            // One output row per chunk, then two.
            Limits {
                block_elems: 1,
                min_columns: 1,
                groups_per_thread: 1,
                ..LIMITS
            },
            Limits {
                block_elems: 2 * taps_row,
                min_columns: 1,
                groups_per_thread: 0,
                ..LIMITS
            },
            // Two images per chunk.
            Limits {
                block_elems: usize::MAX / 2,
                min_columns: 2 * pixels,
                groups_per_thread: 2,
                ..LIMITS
            },
        ] {
            let dx = pool.install(|| {
                pool.broadcast(|_| {
                    with_scratch(Slot::Staging, 1 << 12, |b| b.fill(f32::NAN));
                    with_scratch(Slot::PackedLhs, 1 << 12, |b| b.fill(f32::NAN));
                });
                input_grad_flipped(&dy, &w, &g, &flipped, limits).unwrap()
            });
            let what = format!("case {case} {g:?} dx");
            assert_close(&what, &dx, &r.dx, 1e-5);
        }
    }
}

#[test]
fn skipping_padding_taps_matches_direct_loops_on_every_path() {
    // The forward and the flipped input gradient with the columns in
    // class order and the GEMM skipping the taps a panel's columns all
    // miss, forced on (and off), against float64 loops, on every SIMD
    // path this CPU has (the order is taken on the micro-kernel paths
    // only; the portable path checks the plain one under the same
    // calls). Geometries that give every class: 3x3 padding 1 at 4x4
    // and 7x7, stride 2 from 7x7 to 4x4 (both edges padded), 14x14
    // with a ragged last panel, a 5x5 kernel with padding 2, dilation
    // 2, 2x2 and 1x1 images, padding past the kernel's reach (columns
    // that see no tap at all); depths below one 256-deep block and
    // above it by a few rows (C_in not a multiple of it), output
    // channels ragged for both row tiles; groups of 1 to 4 images,
    // with a last group of one; and 16 images.
    let cases: &[(Case, usize)] = &[
        (([5, 19, 4, 4], [21, 19, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
        // 16 images at 4x4: the corner and edge columns fill whole
        // 32-wide panels (the forward's groups at batch 32).
        (([17, 5, 4, 4], [9, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 16),
        (([5, 29, 7, 7], [10, 29, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
        (([4, 30, 7, 7], [9, 30, 3, 3], (2, 2), (1, 1), (1, 1)), 2),
        (([3, 8, 14, 14], [6, 8, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
        (([4, 3, 9, 8], [5, 3, 5, 5], (1, 1), (2, 2), (1, 1)), 3),
        (([3, 4, 6, 7], [3, 4, 3, 3], (1, 1), (2, 2), (2, 2)), 2),
        (([3, 40, 2, 2], [17, 40, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
        (([3, 7, 1, 1], [5, 7, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
        (([3, 2, 3, 3], [4, 2, 3, 3], (1, 1), (3, 3), (1, 1)), 2),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &((input, weight, stride, padding, dilation), images)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 41 + case as u64);
        let w = pseudo_random(weight.iter().product(), 141 + case as u64);
        let b = pseudo_random(weight[0], 241 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 341 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        let flipped = flipped_geometry(&g);
        for path in simd::supported() {
            // On this test's threads only (not `simd::force`, which
            // the other tests running meanwhile would see).
            simd::set_pool_path(&pool, Some(path));
            // Images per group: `images` for the forward, and as many
            // pixels' worth for the flipped gradient's (input-sized)
            // images; groups run in parallel, or one at a time split.
            for groups_per_thread in [0, 1] {
                let limits = |pixels: usize| Limits {
                    block_elems: usize::MAX / 2,
                    min_columns: images * pixels,
                    groups_per_thread,
                    ..LIMITS
                };
                for skip in [Skip::On, Skip::Classes, Skip::Off] {
                    let what = |k: &str| {
                        format!(
                            "case {case} {g:?} {path:?} groups {groups_per_thread} {skip:?} {k}"
                        )
                    };
                    let limits_y = limits(g.out_h * g.out_w);
                    let y = pool.install(|| {
                        pool.broadcast(|_| {
                            with_scratch(Slot::Staging, 1 << 12, |b| b.fill(f32::NAN));
                        });
                        forward_skipping(&x, &w, Some(&b), &g, limits_y, skip, Some(false)).unwrap()
                    });
                    assert_close(&what("y"), &y, &r.y, 1e-5);
                    if let Some(flipped) = &flipped {
                        let limits_dx = limits(g.in_h * g.in_w);
                        let dx = pool.install(|| {
                            input_grad_flipped_skipping(
                                &dy,
                                &w,
                                &g,
                                flipped,
                                limits_dx,
                                skip,
                                Some(false),
                            )
                            .unwrap()
                        });
                        assert_close(&what("dx"), &dx, &r.dx, 1e-5);
                    }
                }
            }
            // Where the order is taken: grouped images on the
            // micro-kernel paths, with the weight read in place.
            let weight = Lhs::View(MatRef::row_major(&w, w.len() / weight[0]));
            for skip in [Skip::On, Skip::Classes] {
                let taken = skip_order(&g, images, weight, skip).is_some();
                assert_eq!(
                    taken,
                    path != simd::SimdPath::Portable,
                    "case {case} {path:?}"
                );
            }
            assert!(skip_order(&g, images, weight, Skip::Off).is_none());
        }
    }
    simd::set_pool_path(&pool, None);
}

#[test]
fn direct_convolution_matches_direct_loops_on_every_path() {
    // The forward and the flipped input gradient as direct
    // convolutions (forced), against float64 loops, on every micro-
    // kernel path this CPU has: output channels ragged for both panel
    // widths (21, 40: AVX-512's narrow last panel; 29), rows not a multiple
    // of either kernel's tile (13, 5 and 2 wide: short tiles), depths
    // above one 256-deep block (30 x 9), 5x5 with padding 2, dilation
    // 2, a 3x2 kernel with padding on one axis only, no padding; batch
    // 1 and 3 on two threads; an image in two blocks of output rows;
    // into a dirty output scratch; the flipped input gradient checked
    // to take the direct path too. The rule: taken for ResNet's 3x3
    // 64->64 at 28x28, batch 32, 128->128, and 64->64 at 56x56, batch
    // 8; not for 256 output channels, grouped small images or a stride
    // of 2.
    let cases: &[Case] = &[
        ([3, 7, 9, 13], [21, 7, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([1, 30, 6, 5], [40, 30, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([3, 4, 9, 8], [5, 4, 5, 5], (1, 1), (2, 2), (1, 1)),
        ([3, 3, 7, 9], [6, 3, 3, 3], (1, 1), (2, 2), (2, 2)),
        ([3, 5, 6, 3], [9, 5, 3, 2], (1, 1), (1, 0), (1, 1)),
        ([3, 6, 8, 8], [33, 6, 3, 3], (1, 1), (0, 0), (1, 1)),
        // A last panel of 13 columns (29 = 16 + 13) for the AVX2
        // walking kernel's partial store; 1-pixel output rows.
        ([3, 5, 6, 7], [29, 5, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([3, 4, 5, 1], [16, 4, 3, 3], (1, 1), (1, 1), (1, 1)),
        // Two product blocks of 21 and 20 output rows (41 x 64 floats
        // per row against DIRECT_BLOCK_ELEMS).
        ([2, 3, 41, 41], [64, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 51 + case as u64);
        let w = pseudo_random(weight.iter().product(), 151 + case as u64);
        let b = pseudo_random(weight[0], 251 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 351 + case as u64);
        let r = reference(&g, &x, &w, &b, &dy);
        let flipped = flipped_geometry(&g);
        for path in simd::supported() {
            simd::set_pool_path(&pool, Some(path));
            let what = |k: &str| format!("case {case} {g:?} {path:?} {k}");
            let limits = Limits {
                min_columns: 1,
                ..FORWARD_LIMITS
            };
            let taken = pool.install(|| {
                let plan = Plan::new("test", &g, limits).unwrap();
                direct_width(&g, &plan, Some(true)).is_some()
            });
            assert_eq!(taken, path != simd::SimdPath::Portable, "{}", what("taken"));
            let y = pool.install(|| {
                pool.broadcast(|_| {
                    with_scratch(Slot::Staging, 1 << 14, |b| b.fill(f32::NAN));
                });
                forward_skipping(&x, &w, Some(&b), &g, limits, Skip::Auto, Some(true)).unwrap()
            });
            assert_close(&what("y"), &y, &r.y, 1e-5);
            if let Some(flipped) = &flipped {
                let taken = pool.install(|| {
                    let plan = Plan::new("test", flipped, limits).unwrap();
                    direct_width(flipped, &plan, Some(true)).is_some()
                });
                assert_eq!(
                    taken,
                    path != simd::SimdPath::Portable,
                    "{}",
                    what("dx taken")
                );
                let dx = pool.install(|| {
                    input_grad_flipped_skipping(
                        &dy,
                        &w,
                        &g,
                        flipped,
                        limits,
                        Skip::Auto,
                        Some(true),
                    )
                    .unwrap()
                });
                assert_close(&what("dx"), &dx, &r.dx, 1e-5);
            }
        }
    }
    simd::set_pool_path(&pool, None);
    // Where the rule takes it (on a micro-kernel path).
    if simd::active() == simd::SimdPath::Portable {
        return;
    }
    pool.install(|| {
        let resnet = |batch: usize, c: usize, size: usize, stride: usize| {
            let g = Conv2dGeometry::new(
                [batch, c, size, size],
                [c, c, 3, 3],
                (stride, stride),
                (1, 1),
                (1, 1),
            )
            .unwrap();
            let plan = Plan::new("test", &g, FORWARD_LIMITS).unwrap();
            direct_width(&g, &plan, None).is_some()
        };
        if std::env::var("FROSTGRAD_CONV_DIRECT").is_err() {
            assert!(resnet(32, 64, 28, 1));
            assert!(resnet(32, 128, 28, 1));
            // 56x56 at batch 8 (a whole image per chunk only once the
            // image is split into blocks of output rows).
            assert!(resnet(8, 64, 56, 1));
            assert!(!resnet(32, 256, 28, 1));
            assert!(!resnet(32, 64, 7, 1));
            // 14x14 images, grouped for the im2col GEMM: direct on
            // AVX2 only (DIRECT_MIN_GROUPED_PIXELS).
            assert_eq!(
                resnet(32, 128, 14, 1),
                simd::active() == simd::SimdPath::Avx2
            );
            assert!(!resnet(32, 64, 28, 2));
        }
    });
}

/// The padding skip also runs when a group's product is split across
/// threads by rows (more output channels than columns): there the
/// split used to pack the columns once for all parts, keeping no live
/// rows, so the skip was silently lost (review of this session's diff).
#[cfg(target_arch = "x86_64")]
#[test]
fn a_row_split_product_still_skips_the_padding() {
    use super::super::microkernel::LIVE_CALLS;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let g = Conv2dGeometry::new([4, 256, 4, 4], [512, 256, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
    let x = pseudo_random(4 * 256 * 16, 7);
    let w = pseudo_random(512 * 256 * 9, 8);
    let calls = || -> usize { pool.broadcast(|_| LIVE_CALLS.with(Cell::get)).iter().sum() };
    for path in simd::supported() {
        if path == simd::SimdPath::Portable {
            continue; // the skip runs on the micro-kernel paths only
        }
        simd::set_pool_path(&pool, Some(path));
        // Two-image groups, one at a time, each split across threads.
        let limits = Limits {
            min_columns: 2 * 16,
            groups_per_thread: 1000,
            ..LIMITS
        };
        let before = calls();
        let y = pool
            .install(|| forward_skipping(&x, &w, None, &g, limits, Skip::On, Some(false)))
            .unwrap();
        assert!(calls() > before, "{path:?}: no product skipped the padding");
        let off = pool
            .install(|| forward_skipping(&x, &w, None, &g, limits, Skip::Off, Some(false)))
            .unwrap();
        let off: Vec<f64> = off.iter().map(|&v| f64::from(v)).collect();
        assert_close(&format!("{path:?} skip vs dense"), &y, &off, 1e-5);
    }
    simd::set_pool_path(&pool, None);
}

#[test]
fn ordered_panels_hold_the_live_rows_of_the_column_matrix_on_every_path() {
    // Columns in class order (whole rows, and every column class:
    // runs of one pixel, so the gather fill), packed whole and with
    // only each panel's live rows, against the column matrix from the
    // definition, for every path's fills at each panel width, blocks
    // that start inside the taps and columns, into a poisoned buffer.
    let cases: &[Case] = &[
        ([3, 2, 4, 4], [1, 2, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([4, 3, 7, 7], [1, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([3, 1, 7, 6], [1, 1, 5, 3], (1, 1), (2, 1), (1, 1)),
        ([5, 2, 2, 2], [1, 2, 3, 3], (1, 1), (1, 1), (1, 1)),
    ];
    for &(input, weight, stride, padding, dilation) in cases {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 23);
        let plan = Plan::new("test", &g, LIMITS).unwrap();
        let chunk = Chunk {
            first_image: 0,
            images: g.batch,
            rows: (0, g.out_h),
        };
        let (taps, width, period) = (plan.taps, chunk.columns(&g), g.kernel_h * g.kernel_w);
        for split in [false, true] {
            let order = ClassOrder::new(&g, g.batch, split).unwrap();
            // The pixel of every column.
            let mut pixel = vec![(0, 0, 0); width];
            order.pieces(0, width, |j, image, oh, ow, len, _| {
                for e in 0..len {
                    pixel[j + e] = (image, oh, ow + e);
                }
            });
            let col = |r: usize, j: usize| {
                let (c, kh, kw) = tap(&g, r);
                let (n, oh, ow) = pixel[j];
                let ih = source(oh, kh, g.stride.0, g.padding.0, g.dilation.0, g.in_h);
                let iw = source(ow, kw, g.stride.1, g.padding.1, g.dilation.1, g.in_w);
                match (ih, iw) {
                    (Some(ih), Some(iw)) => {
                        x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw]
                    }
                    _ => 0.0,
                }
            };
            for (pc, kc, jc, nc) in [(0, taps, 0, width), (1, taps - 2, 3, width - 3)] {
                for nr in [32, 16, 5] {
                    for path in simd::supported() {
                        let mut columns =
                            Columns::new(&x, &g, &plan, chunk, false).ordered(Some(order));
                        columns.path = path;
                        assert_eq!(columns.depth_period(), Some(period));
                        let panels = nc.div_ceil(nr);
                        let masks: Vec<u64> = (0..panels)
                            .map(|p| columns.panel_mask(jc + p * nr, nr.min(nc - p * nr)))
                            .collect();
                        let len = panels * nr * kc;
                        for live in [false, true] {
                            let mut out = vec![f32::NAN; len + 7];
                            // SAFETY: the block lies inside the shape;
                            // `out` holds it; one mask per panel.
                            unsafe {
                                if live {
                                    columns.pack_live((pc, kc), (jc, nc), nr, &masks, &mut out)
                                } else {
                                    columns.pack(pc, kc, jc, nc, nr, &mut out)
                                }
                            };
                            assert!(out[len..].iter().all(|v| v.is_nan()), "wrote past");
                            for (p, &mask) in masks.iter().enumerate() {
                                let rows: Vec<usize> = (pc..pc + kc)
                                    .filter(|&r| !live || mask >> (r % period) & 1 == 1)
                                    .collect();
                                for (i, &r) in rows.iter().enumerate() {
                                    for jj in 0..nr {
                                        let j = p * nr + jj;
                                        let got = out[p * kc * nr + i * nr + jj];
                                        let want = if j < nc { col(r, jc + j) } else { 0.0 };
                                        assert_eq!(
                                            got.to_bits(),
                                            want.to_bits(),
                                            "{g:?} split {split} {path:?} nr {nr} live {live} \
                                             block {:?}: panel {p} row {r} column {jj}",
                                            (pc, kc, jc, nc)
                                        );
                                    }
                                }
                                // The rows a mask drops are zero in
                                // every column of the panel.
                                for r in (pc..pc + kc).filter(|&r| mask >> (r % period) & 1 == 0) {
                                    for j in p * nr..(p * nr + nr).min(nc) {
                                        assert_eq!(
                                            col(r, jc + j),
                                            0.0,
                                            "{g:?}: a live row dropped"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The AVX2 path's rule for the flipped input gradient: small images
/// always, larger ones where the flipped forward runs as a direct
/// convolution (ResNet's 64@56 and 128@28 at batch 8), not where it
/// would run through im2col (256@14; one image for two threads), where
/// col2im is as fast. Says SKIPPED where
/// it cannot check the rule: no AVX2, or the rule overridden by
/// FROSTGRAD_CONV_DIRECT / FROSTGRAD_CONV_DX.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_flips_the_input_gradient_where_the_direct_convolution_takes_it() {
    if !simd::SimdPath::Avx2.is_supported()
        || std::env::var("FROSTGRAD_CONV_DIRECT").is_ok()
        || std::env::var("FROSTGRAD_CONV_DX").is_ok()
    {
        eprintln!(
            "SKIPPED avx2_flips_the_input_gradient_where_the_direct_convolution_takes_it: \
             no AVX2 on this CPU, or FROSTGRAD_CONV_DIRECT / FROSTGRAD_CONV_DX set"
        );
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    simd::set_pool_path(&pool, Some(simd::SimdPath::Avx2));
    pool.install(|| {
        let flips = |batch: usize, c: usize, size: usize| {
            let g =
                Conv2dGeometry::new([batch, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
                    .unwrap();
            flip_input_grad(&g, &flipped_geometry(&g).unwrap())
        };
        assert!(flips(8, 64, 56));
        assert!(flips(8, 128, 28));
        assert!(flips(32, 64, 28));
        assert!(!flips(8, 256, 14));
        assert!(flips(8, 512, 7));
        // One image for two threads: no direct convolution, so col2im.
        assert!(!flips(1, 64, 56));
    });
    simd::set_pool_path(&pool, None);
}

#[test]
fn flipped_geometry_only_for_stride_1_and_padding_within_reach() {
    let geo = |input, weight, stride, padding, dilation| {
        Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap()
    };
    let g = geo([2, 3, 9, 8], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1));
    let f = flipped_geometry(&g).unwrap();
    assert_eq!((f.in_channels, f.out_channels), (4, 3));
    assert_eq!((f.in_h, f.in_w, f.out_h, f.out_w), (9, 8, 9, 8));
    assert_eq!(f.padding, (1, 1));
    // Dilation 2, no padding: padded by d(k-1) = 4.
    let g = geo([1, 2, 9, 9], [2, 2, 3, 3], (1, 1), (0, 0), (2, 2));
    assert_eq!(flipped_geometry(&g).unwrap().padding, (4, 4));
    // Stride 2, or padding past the kernel's reach: col2im.
    assert!(flipped_geometry(&geo([1, 2, 9, 9], [2, 2, 3, 3], (2, 2), (1, 1), (1, 1))).is_none());
    assert!(flipped_geometry(&geo([1, 2, 9, 9], [2, 2, 3, 3], (1, 1), (3, 1), (1, 1))).is_none());
    assert!(flipped_geometry(&geo([1, 2, 3, 4], [3, 2, 1, 1], (1, 1), (1, 2), (1, 1))).is_none());
}

#[test]
fn image_groups_are_balanced_over_threads() {
    // (batch, most per group, threads) -> images per group
    for (batch, most, threads, want) in [
        (32, 9, 2, 8),  // 9, 9, 9, 5 -> four groups of 8
        (32, 14, 2, 8), // 14, 14, 4 -> four groups of 8
        (8, 4, 2, 4),   // already two equal groups
        (8, 2, 2, 2),   // four equal groups
        (7, 3, 2, 2),   // 3, 3, 1 -> 2, 2, 2, 1
        (3, 2, 2, 2),   // two groups for two threads: unchanged
        (5, 1, 4, 1),   // one image per group
        (1, 16, 2, 1),  // batch 1
        (32, 9, 1, 8),  // one thread: only equalised
        (10, 3, 3, 2),  // 4 groups -> 6 groups of 2 (5 used)
    ] {
        assert_eq!(
            balanced_group(batch, most, threads),
            want,
            "batch {batch} most {most} threads {threads}"
        );
        assert!(balanced_group(batch, most, threads) <= most);
    }
}

#[test]
fn scatter_even_add_touches_only_even_elements_at_every_length() {
    for n in 0..20 {
        for extra in [0, 1, 2, 7] {
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            let len = (2 * n).max(1) - 1 + extra;
            // Odd elements hold -0.0 and NaN-free values that must not move.
            let before: Vec<f32> = (0..len)
                .map(|i| if i % 4 == 1 { -0.0 } else { i as f32 * 0.25 })
                .collect();
            let mut dst = before.clone();
            scatter_even_add(&src, &mut dst);
            for (i, (&got, &old)) in dst.iter().zip(&before).enumerate() {
                let want = if i % 2 == 0 && i / 2 < n {
                    old + src[i / 2]
                } else {
                    old
                };
                assert_eq!(got.to_bits(), want.to_bits(), "n {n} len {len} [{i}]");
            }
        }
    }
}

#[test]
fn merged_tap_rows_give_the_tap_by_tap_sums_bit_for_bit() {
    // 3-wide kernels at stride 2, padding 1 (the merged rows): even and
    // odd widths (the last odd input column with or without a right
    // tap), rows long enough for the SSE steps (up to 23 outputs) and
    // as short as 1, kernel heights 3 and 1, vertical strides 2 and 1,
    // whole-image groups and row chunks: the merged form equals the
    // tap-by-tap one bit for bit and both match the f64 loops.
    let cases: &[Case] = &[
        ([2, 5, 14, 14], [3, 5, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([3, 4, 7, 7], [5, 4, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([2, 3, 9, 45], [4, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([2, 3, 6, 46], [2, 3, 1, 3], (1, 2), (0, 1), (1, 1)),
        ([1, 2, 5, 1], [3, 2, 3, 3], (2, 2), (1, 1), (1, 1)),
        ([1, 2, 4, 2], [3, 2, 3, 3], (2, 2), (1, 1), (1, 1)),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        assert!(merges_tap_rows(&g), "case {case}");
        let x = pseudo_random(input.iter().product(), 31 + case as u64);
        let w = pseudo_random(weight.iter().product(), 130 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 330 + case as u64);
        let r = reference(&g, &x, &w, &vec![0.0; weight[0]], &dy);
        for (block_elems, min_columns, groups_per_thread) in
            [(usize::MAX / 2, 1, 0), (1, 1, 2), (usize::MAX / 2, 64, 1)]
        {
            let limits = Limits {
                block_elems,
                min_columns,
                groups_per_thread,
                dx_block_elems: 1 << 10,
                group_pack_elems: None,
            };
            let [merged, by_tap] = [true, false].map(|merge| {
                pool.install(|| input_grad_col2im(&dy, &w, &g, limits, false, merge).unwrap())
            });
            let what = format!("case {case} blocks {block_elems} columns {min_columns} dx");
            assert_close(&what, &merged, &r.dx, 1e-5);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&merged) == bits(&by_tap), "{what}: merged differs");
        }
    }
}

#[test]
fn scatter_even_set_writes_every_element_at_every_length() {
    for n in 0..20 {
        let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
        for len in (2 * n).max(1) - 1..2 * n + 3 {
            let mut dst = vec![f32::NAN; len];
            scatter_even_set(&src, &mut dst);
            for (i, &got) in dst.iter().enumerate() {
                let want = if i % 2 == 0 && i / 2 < n {
                    src[i / 2]
                } else {
                    0.0
                };
                assert_eq!(got.to_bits(), want.to_bits(), "n {n} len {len} [{i}]");
            }
        }
    }
}

#[test]
fn col2im_set_writes_every_element_of_its_rows_into_nan_planes() {
    // `col2im_set` alone, into planes filled with NaN (so a value it
    // failed to write, a zero it skipped, shows): strides 1 to 3 on
    // either axis, sizes the strides do not divide, two images, the
    // output rows whole and split into chunks. Inside the chunk's input
    // rows every element is the one gradient that lands there or 0;
    // outside them nothing is touched.
    for (in_h, in_w, stride) in [
        (7, 7, (2, 2)),
        (14, 14, (2, 2)),
        (8, 9, (2, 2)),
        (10, 11, (3, 2)),
        (7, 5, (1, 3)),
        (5, 6, (1, 1)),
    ] {
        let (c, images) = (3, 2);
        let g = Conv2dGeometry::new(
            [images, c, in_h, in_w],
            [4, c, 1, 1],
            stride,
            (0, 0),
            (1, 1),
        )
        .unwrap();
        let (sh, sw) = stride;
        let splits = [(0, g.out_h), (0, g.out_h / 2), (g.out_h / 2, g.out_h)];
        for rows in splits.into_iter().filter(|r| r.0 < r.1) {
            let chunk = Chunk {
                first_image: 0,
                images,
                rows,
            };
            let (width, seg) = (chunk.columns(&g), chunk.image_columns(&g));
            let col = pseudo_random(c * width, (in_h * 7 + in_w + rows.0) as u64);
            let plane_len = in_h * in_w;
            let mut data = vec![f32::NAN; images * c * plane_len];
            {
                let mut planes: Vec<&mut [f32]> = data.chunks_exact_mut(c * plane_len).collect();
                col2im_set(&col, &g, &chunk, &mut planes);
            }
            let ih0 = rows.0 * sh;
            let ih1 = if rows.1 >= g.out_h { in_h } else { rows.1 * sh };
            for j in 0..images {
                for ch in 0..c {
                    for ih in 0..in_h {
                        for iw in 0..in_w {
                            let got = data[(j * c + ch) * plane_len + ih * in_w + iw];
                            let what = format!("{g:?} rows {rows:?} image {j} c {ch} ({ih}, {iw})");
                            if !(ih0..ih1).contains(&ih) {
                                assert!(got.is_nan(), "{what}: written outside the chunk");
                                continue;
                            }
                            let (oh, ow) = (ih / sh, iw / sw);
                            let lands = ih % sh == 0 && iw % sw == 0 && oh < rows.1 && ow < g.out_w;
                            let want = if lands {
                                col[ch * width + j * seg + (oh - rows.0) * g.out_w + ow]
                            } else {
                                0.0
                            };
                            assert_eq!(got.to_bits(), want.to_bits(), "{what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn pointwise_input_grad_writes_dx_whole_like_the_zeroed_form() {
    // 1x1 unpadded kernels at strides 1 to 3 (the stride-2 one with
    // rows of 4 and 7 values, as ResNet's), odd sizes that the strides
    // do not divide, whole-image groups and row chunks of one image,
    // split and on one thread: `dx` written whole (from a dirty pool
    // buffer) and the zeroed col2im form both match the f64 loops.
    let cases: &[Case] = &[
        ([3, 13, 7, 7], [6, 13, 1, 1], (2, 2), (0, 0), (1, 1)),
        ([2, 9, 14, 14], [5, 9, 1, 1], (2, 2), (0, 0), (1, 1)),
        ([2, 7, 8, 9], [4, 7, 1, 1], (2, 2), (0, 0), (1, 1)),
        ([2, 5, 10, 11], [3, 5, 1, 1], (3, 2), (0, 0), (1, 1)),
        ([3, 6, 7, 5], [4, 6, 1, 1], (1, 3), (0, 0), (1, 1)),
        ([2, 4, 5, 6], [3, 4, 1, 1], (1, 1), (0, 0), (1, 1)),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(input, weight, stride, padding, dilation)) in cases.iter().enumerate() {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        assert!(pointwise_taps(&g));
        let x = pseudo_random(input.iter().product(), 21 + case as u64);
        let w = pseudo_random(weight.iter().product(), 120 + case as u64);
        let dy = pseudo_random(g.output_shape().iter().product(), 320 + case as u64);
        let r = reference(&g, &x, &w, &vec![0.0; weight[0]], &dy);
        let len = input.iter().product();
        for (block_elems, min_columns, groups_per_thread) in
            [(usize::MAX / 2, 1, 0), (1, 1, 2), (usize::MAX / 2, 64, 1)]
        {
            let limits = Limits {
                block_elems,
                min_columns,
                groups_per_thread,
                dx_block_elems: 1 << 10,
                group_pack_elems: None,
            };
            for overwrite in [true, false] {
                // A dirty buffer of dx's size for the pool to hand out.
                let mut dirty = buffer_pool::uninit::<f32>("test", len).unwrap();
                dirty.fill(f32::NAN);
                buffer_pool::recycle(dirty);
                let dx = pool
                    .install(|| input_grad_col2im(&dy, &w, &g, limits, overwrite, true).unwrap());
                let what = format!(
                    "case {case} blocks {block_elems} columns {min_columns} \
                     groups/thread {groups_per_thread} overwrite {overwrite} dx"
                );
                assert_close(&what, &dx, &r.dx, 1e-5);
            }
        }
    }
}

#[test]
fn gather_even_takes_every_other_value_at_every_length() {
    for n in 0..20 {
        let src: Vec<f32> = (0..(2 * n).max(1) - 1).map(|i| i as f32).collect();
        let mut out = vec![f32::NAN; n];
        gather_even(&src, &mut out);
        let want: Vec<f32> = (0..n).map(|e| (2 * e) as f32).collect();
        assert_eq!(out, want, "n = {n}");
    }
}

#[test]
fn transpose_handles_blocks_and_edges() {
    for (rows, len, stride) in [(8, 8, 8), (7, 9, 11), (3, 2, 5), (12, 5, 16)] {
        let src = pseudo_random(rows * len, (rows * 31 + len) as u64);
        let mut dst = vec![f32::NAN; len * stride];
        transpose(&src, rows, len, &mut dst, stride);
        for e in 0..len {
            for j in 0..stride {
                let got = dst[e * stride + j];
                if j < rows {
                    assert_eq!(got, src[j * len + e], "{rows}x{len}: ({e}, {j})");
                } else {
                    assert!(got.is_nan(), "{rows}x{len}: wrote outside ({e}, {j})");
                }
            }
        }
    }
}

#[test]
fn im2col_zeroes_padding_in_a_dirty_scratch_buffer() {
    // im2col writes only the padding zeros and the real pixels, not a
    // full clear: poison this thread's reused scratch buffers (the
    // portable path's dense column block among them) and check that no
    // stale value leaks into a padded convolution.
    let (input, weight) = ([2, 3, 7, 9], [4, 3, 3, 3]);
    let g = Conv2dGeometry::new(input, weight, (2, 1), (2, 1), (1, 1)).unwrap();
    let x = pseudo_random(input.iter().product(), 7);
    let w = pseudo_random(weight.iter().product(), 8);
    let dy = pseudo_random(g.output_shape().iter().product(), 9);
    let r = reference(&g, &x, &w, &vec![0.0; weight[0]], &dy);
    let limits = Limits {
        block_elems: 1,
        min_columns: 1,
        groups_per_thread: 2,
        dx_block_elems: 1,
        group_pack_elems: None,
    };
    let poison = || {
        with_scratch(Slot::Columns, 1 << 16, |col| col.fill(f32::NAN));
        with_scratch(Slot::Dense, 1 << 16, |col| col.fill(f32::NAN));
    };
    poison();
    let y = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| {
            poison();
            forward_with(&x, &w, None, &g, limits).unwrap()
        });
    assert_close("y", &y, &r.y, 1e-5);
    assert_close(
        "dw",
        &weight_grad_with(&dy, &x, &g, limits).unwrap(),
        &r.dw,
        1e-5,
    );
}

#[test]
fn packed_panels_match_the_column_matrix_on_every_path() {
    // Columns::pack against the column matrix from the definition, in
    // both orientations, for blocks that start and end inside a run,
    // an image and the taps, panels of every width the kernels use and
    // ragged ones, into a poisoned buffer: every panel value must be
    // the column matrix's (0 past its edge) and nothing after the
    // panels may be written.
    let cases: &[Case] = &[
        // Padding at both edges; runs cross image boundaries in a chunk.
        ([3, 2, 5, 7], [1, 2, 3, 3], (1, 1), (1, 1), (1, 1)),
        // Stride 2 (and 3 below), padding, dilation, rows wider than 32.
        ([2, 2, 4, 37], [1, 2, 3, 3], (2, 2), (1, 2), (1, 2)),
        ([2, 1, 7, 11], [1, 1, 2, 3], (3, 3), (2, 1), (1, 1)),
        // A tiny image and a 7x7 stem-like tap set.
        ([2, 1, 1, 2], [1, 1, 3, 3], (1, 1), (1, 1), (1, 1)),
        ([1, 1, 9, 9], [1, 1, 7, 7], (2, 2), (3, 3), (1, 1)),
        // The stem's shape with channels, and more patch rows (`C_in *
        // KH` = 70) than `im2col::fill_patches` prepares at once.
        ([2, 3, 11, 10], [1, 3, 7, 7], (2, 2), (3, 3), (1, 1)),
        ([1, 10, 8, 9], [1, 10, 7, 5], (2, 1), (3, 2), (1, 1)),
    ];
    for &(input, weight, stride, padding, dilation) in cases {
        let g = Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap();
        let x = pseudo_random(input.iter().product(), 17);
        for limits in [
            Limits {
                block_elems: usize::MAX / 2,
                min_columns: usize::MAX / 2,
                groups_per_thread: 2,
                ..LIMITS
            },
            Limits {
                block_elems: 2 * g.kernel_h * g.kernel_w * g.in_channels * g.out_w,
                min_columns: 1,
                groups_per_thread: 2,
                ..LIMITS
            },
        ] {
            let plan = Plan::new("test", &g, limits).unwrap();
            for chunk in plan.chunks(&g, g.batch) {
                let (taps, width) = (plan.taps, chunk.columns(&g));
                let seg = chunk.image_columns(&g);
                // col[r][j] from the definition.
                let col = |r: usize, j: usize| {
                    let (c, kh, kw) = tap(&g, r);
                    let (n, q) = (chunk.first_image + j / seg, j % seg);
                    let (oh, ow) = (chunk.rows.0 + q / g.out_w, q % g.out_w);
                    let ih = source(oh, kh, g.stride.0, g.padding.0, g.dilation.0, g.in_h);
                    let iw = source(ow, kw, g.stride.1, g.padding.1, g.dilation.1, g.in_w);
                    match (ih, iw) {
                        (Some(ih), Some(iw)) => {
                            x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw]
                        }
                        _ => 0.0,
                    }
                };
                let images = chunk.images_of(&x, plan.in_image);
                for transposed in [false, true] {
                    let (depth, cols) = if transposed {
                        (width, taps)
                    } else {
                        (taps, width)
                    };
                    let blocks = [(0, depth, 0, cols), (1, depth - 1, 1, cols - 1)];
                    let blocks =
                        blocks
                            .into_iter()
                            .chain([(depth / 3, depth / 2, cols / 3, cols / 2)]);
                    for (pc, kc, jc, nc) in blocks.filter(|b| b.1 > 0 && b.3 > 0) {
                        for nr in [32, 16, 5, 1, nc] {
                            for path in simd::supported() {
                                let mut columns =
                                    Columns::new(images, &g, &plan, chunk, transposed);
                                columns.path = path;
                                let len = nc.div_ceil(nr) * nr * kc;
                                let mut out = vec![f32::NAN; len + 7];
                                // SAFETY: the block lies inside the shape; `out` holds it.
                                unsafe { columns.pack(pc, kc, jc, nc, nr, &mut out) };
                                for (i, &got) in out.iter().enumerate() {
                                    let (p, k, jj) = (i / (kc * nr), i % (kc * nr) / nr, i % nr);
                                    let j = p * nr + jj;
                                    let want = if i >= len {
                                        assert!(got.is_nan(), "wrote past the panels");
                                        continue;
                                    } else if j >= nc {
                                        0.0
                                    } else if transposed {
                                        col(jc + j, pc + k)
                                    } else {
                                        col(pc + k, jc + j)
                                    };
                                    assert_eq!(
                                        got.to_bits(),
                                        want.to_bits(),
                                        "{g:?} {chunk:?} {path:?} transposed {transposed} block {:?} nr {nr}: panel {p} row {k} column {jj}",
                                        (pc, kc, jc, nc)
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn in_runs_runs_run_r_on_thread_r() {
    // Which thread sums which run is not up to work stealing: a worker
    // that ran no weight-gradient run in one step first asked for its
    // `Columns` scratch (and grew it) in a later one
    // (`tests/cpu_buffer_pool.rs`, portable path). Called from inside
    // the pool, where a parallel iterator runs the first part on the
    // calling thread, whatever its index.
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let threads = 3;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        for _ in 0..20 {
            let ran: Vec<AtomicUsize> =
                (0..threads).map(|_| AtomicUsize::new(usize::MAX)).collect();
            let mut out = vec![f32::NAN; 1000];
            in_runs("test", &mut out, threads, |r, out| {
                ran[r].store(rayon::current_thread_index().unwrap_or(usize::MAX), SeqCst);
                out.fill(r as f32 + 1.0);
            })
            .unwrap();
            let ran: Vec<usize> = ran.iter().map(|t| t.load(SeqCst)).collect();
            assert_eq!(ran, (0..threads).collect::<Vec<_>>(), "run r on thread r");
            assert!(out.iter().all(|&v| v == 6.0), "the runs' sum: 1 + 2 + 3");
        }
    });
}
