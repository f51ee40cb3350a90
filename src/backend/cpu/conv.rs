//! 2-d convolution (groups = 1) as im2col + GEMM.
//!
//! For one image, the "column" matrix `col[K, P]` has one row per weight
//! tap `(c, kh, kw)` (`K = C_in*KH*KW`) and one column per output pixel
//! (`P = OH*OW`); entry = the input pixel that tap sees at that output
//! position, or 0 in the padding. Then, with the weight as `W[C_out, K]`:
//!
//! * forward:      `y = W · col`                      (`[C_out, P]`)
//! * input grad:   `dx = col2im(Wᵀ · dy)`             (scatter-add back)
//! * weight grad:  `dW = Σ_images dy · colᵀ`          (GEMM with beta = 1)
//!
//! The column matrix is built for a block of output rows at a time
//! ([`COL_BLOCK_ELEMS`] bounds it), in a per-thread scratch buffer; the
//! GEMM then reads or writes the matching column block of `y`/`dy` in
//! place through its row stride. A 1x1, stride-1, unpadded convolution
//! needs no column matrix at all: the input image already is `col`.

use rayon::prelude::*;

use super::check::{checked_numel, expect_len};
use super::gemm::{sgemm, MatRef};
use super::scratch::with_scratch;
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// Upper bound on one column block, in f32s (4 MiB): large enough that the
/// GEMM sees a few hundred columns even for the widest ResNet layers,
/// small enough to stay in the last-level cache between im2col and GEMM.
const COL_BLOCK_ELEMS: usize = 1 << 20;

/// Sizes derived once from the geometry.
struct Plan {
    /// Rows of the column matrix: `C_in * KH * KW`.
    taps: usize,
    /// Output pixels per image: `OH * OW`.
    pixels: usize,
    in_image: usize,
    out_image: usize,
    /// Output rows per column block.
    rows_per_block: usize,
    /// 1x1, stride 1, no padding: the input image is its own column matrix.
    pointwise: bool,
}

impl Plan {
    /// `block_elems` caps the column block ([`COL_BLOCK_ELEMS`] outside tests).
    fn new(op: &'static str, g: &Conv2dGeometry, block_elems: usize) -> Result<Self> {
        let taps = checked_numel(op, &[g.in_channels, g.kernel_h, g.kernel_w])?;
        let pixels = checked_numel(op, &[g.out_h, g.out_w])?;
        let in_image = checked_numel(op, &[g.in_channels, g.in_h, g.in_w])?;
        let out_image = checked_numel(op, &[g.out_channels, pixels])?;
        checked_numel(op, &[g.batch, in_image.max(out_image)])?;
        let row_elems = (taps * g.out_w).max(1);
        let rows_per_block = (block_elems / row_elems).clamp(1, g.out_h.max(1));
        let pointwise =
            g.kernel_h == 1 && g.kernel_w == 1 && g.stride == (1, 1) && g.padding == (0, 0);
        Ok(Self {
            taps,
            pixels,
            in_image,
            out_image,
            rows_per_block,
            pointwise,
        })
    }

    /// `(first, end)` output rows of each column block.
    fn blocks(&self, out_h: usize) -> impl Iterator<Item = (usize, usize)> {
        let step = self.rows_per_block;
        (0..out_h)
            .step_by(step)
            .map(move |r| (r, (r + step).min(out_h)))
    }
}

/// Output positions `o` in `0..out` whose input coordinate
/// `o * stride + offset - pad` falls inside `0..input`, as a range `lo..hi`
/// (empty when none do).
fn valid_outputs(
    out: usize,
    input: usize,
    stride: usize,
    offset: usize,
    pad: usize,
) -> (usize, usize) {
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    let hi = if input + pad > offset {
        ((input + pad - offset - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Where tap `(kh, kw)` reads for output rows `rows` of one image plane:
/// calls `visit(out_row_index_in_block, in_row, ow_lo, ow_hi, iw_lo)` for
/// every output row that sees a real input row; output columns
/// `ow_lo..ow_hi` read input columns `iw_lo, iw_lo + stride_w, ...`.
/// Rows and columns outside those ranges see padding.
fn for_each_tap_row(
    g: &Conv2dGeometry,
    kh: usize,
    kw: usize,
    rows: (usize, usize),
    mut visit: impl FnMut(usize, usize, usize, usize, usize),
) {
    let (h_lo, h_hi) = valid_outputs(g.out_h, g.in_h, g.stride.0, kh * g.dilation.0, g.padding.0);
    let (w_lo, w_hi) = valid_outputs(g.out_w, g.in_w, g.stride.1, kw * g.dilation.1, g.padding.1);
    if w_lo == w_hi {
        return;
    }
    let iw_lo = w_lo * g.stride.1 + kw * g.dilation.1 - g.padding.1;
    for oh in rows.0.max(h_lo)..rows.1.min(h_hi) {
        let ih = oh * g.stride.0 + kh * g.dilation.0 - g.padding.0;
        visit(oh - rows.0, ih, w_lo, w_hi, iw_lo);
    }
}

/// Splits a column-matrix index into `(channel, kh, kw)`.
fn tap(g: &Conv2dGeometry, r: usize) -> (usize, usize, usize) {
    let per_channel = g.kernel_h * g.kernel_w;
    (
        r / per_channel,
        (r % per_channel) / g.kernel_w,
        r % g.kernel_w,
    )
}

/// Fills `col[taps, block_pixels]` for output rows `rows` of one image.
fn im2col(image: &[f32], g: &Conv2dGeometry, rows: (usize, usize), col: &mut [f32]) {
    let block_pixels = (rows.1 - rows.0) * g.out_w;
    let plane_len = g.in_h * g.in_w;
    let stride_w = g.stride.1;
    col.par_chunks_mut(block_pixels)
        .with_min_len((1 << 12) / block_pixels.max(1) + 1)
        .enumerate()
        .for_each(|(r, dst)| {
            let (c, kh, kw) = tap(g, r);
            let plane = &image[c * plane_len..(c + 1) * plane_len];
            // Padding reads as zero; the real pixels overwrite it below.
            dst.fill(0.0);
            for_each_tap_row(g, kh, kw, rows, |i, ih, lo, hi, iw| {
                let out_row = &mut dst[i * g.out_w + lo..i * g.out_w + hi];
                let in_row = &plane[ih * g.in_w..(ih + 1) * g.in_w];
                if stride_w == 1 {
                    out_row.copy_from_slice(&in_row[iw..iw + out_row.len()]);
                } else {
                    for (j, v) in out_row.iter_mut().enumerate() {
                        *v = in_row[iw + j * stride_w];
                    }
                }
            });
        });
}

/// Adds `col[taps, block_pixels]` (a column-matrix gradient for output
/// rows `rows`) back onto the input-image gradient it came from.
fn col2im_add(col: &[f32], g: &Conv2dGeometry, rows: (usize, usize), image: &mut [f32]) {
    let block_pixels = (rows.1 - rows.0) * g.out_w;
    let plane_len = g.in_h * g.in_w;
    let taps_per_channel = g.kernel_h * g.kernel_w;
    let stride_w = g.stride.1;
    if plane_len == 0 {
        return;
    }
    // One task per input channel: its taps write only its own plane.
    image
        .par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(c, plane)| {
            for t in 0..taps_per_channel {
                let r = c * taps_per_channel + t;
                let (_, kh, kw) = tap(g, r);
                let src = &col[r * block_pixels..(r + 1) * block_pixels];
                for_each_tap_row(g, kh, kw, rows, |i, ih, lo, hi, iw| {
                    let grads = &src[i * g.out_w + lo..i * g.out_w + hi];
                    let in_row = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                    if stride_w == 1 {
                        in_row[iw..iw + grads.len()]
                            .iter_mut()
                            .zip(grads)
                            .for_each(|(d, &s)| *d += s);
                    } else {
                        for (j, &s) in grads.iter().enumerate() {
                            in_row[iw + j * stride_w] += s;
                        }
                    }
                });
            }
        });
}

fn check_buffers(
    op: &'static str,
    g: &Conv2dGeometry,
    plan: &Plan,
    image_like: (&str, usize, usize),
    weight_len: Option<usize>,
) -> Result<()> {
    let (what, got, per_image) = image_like;
    expect_len(op, what, got, g.batch * per_image)?;
    if let Some(w) = weight_len {
        expect_len(op, "weight", w, g.out_channels * plan.taps)?;
    }
    Ok(())
}

/// `y = conv2d(x, w) + bias`.
pub(super) fn conv2d(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    forward_blocked(x, w, bias, g, COL_BLOCK_ELEMS)
}

fn forward_blocked(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    block_elems: usize,
) -> Result<Vec<f32>> {
    let op = "conv2d";
    let plan = Plan::new(op, g, block_elems)?;
    check_buffers(
        op,
        g,
        &plan,
        ("input", x.len(), plan.in_image),
        Some(w.len()),
    )?;
    if let Some(b) = bias {
        expect_len(op, "bias", b.len(), g.out_channels)?;
    }
    let mut y = vec![0.0; g.batch * plan.out_image];
    let weight = MatRef::row_major(w, plan.taps);
    // With a bias, pre-fill each output row with it and accumulate onto it.
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    for n in 0..g.batch {
        let image = &x[n * plan.in_image..(n + 1) * plan.in_image];
        let out = &mut y[n * plan.out_image..(n + 1) * plan.out_image];
        if let Some(b) = bias {
            for (co, &bv) in b.iter().enumerate() {
                out[co * plan.pixels..(co + 1) * plan.pixels].fill(bv);
            }
        }
        if plan.pointwise {
            let col = MatRef::row_major(image, plan.pixels);
            sgemm(
                g.out_channels,
                plan.taps,
                plan.pixels,
                1.0,
                weight,
                col,
                beta,
                out,
                plan.pixels,
            );
            continue;
        }
        for rows in plan.blocks(g.out_h) {
            let block_pixels = (rows.1 - rows.0) * g.out_w;
            with_scratch(plan.taps * block_pixels, |col| {
                im2col(image, g, rows, col);
                let col = MatRef::row_major(col, block_pixels);
                let out_block = &mut out[rows.0 * g.out_w..];
                sgemm(
                    g.out_channels,
                    plan.taps,
                    block_pixels,
                    1.0,
                    weight,
                    col,
                    beta,
                    out_block,
                    plan.pixels,
                );
            });
        }
    }
    Ok(y)
}

/// `dx = col2im(Wᵀ · dy)` for every image.
pub(super) fn conv2d_input_grad(dy: &[f32], w: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    input_grad_blocked(dy, w, g, COL_BLOCK_ELEMS)
}

fn input_grad_blocked(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    block_elems: usize,
) -> Result<Vec<f32>> {
    let op = "conv2d_input_grad";
    let plan = Plan::new(op, g, block_elems)?;
    check_buffers(
        op,
        g,
        &plan,
        ("grad_output", dy.len(), plan.out_image),
        Some(w.len()),
    )?;
    let mut dx = vec![0.0; g.batch * plan.in_image];
    // Wᵀ as a [taps, C_out] view of the [C_out, taps] weight.
    let weight_t = MatRef::transposed(w, plan.taps);
    for n in 0..g.batch {
        let grad_out = &dy[n * plan.out_image..(n + 1) * plan.out_image];
        let grad_in = &mut dx[n * plan.in_image..(n + 1) * plan.in_image];
        if plan.pointwise {
            let grad_out = MatRef::row_major(grad_out, plan.pixels);
            sgemm(
                plan.taps,
                g.out_channels,
                plan.pixels,
                1.0,
                weight_t,
                grad_out,
                0.0,
                grad_in,
                plan.pixels,
            );
            continue;
        }
        for rows in plan.blocks(g.out_h) {
            let block_pixels = (rows.1 - rows.0) * g.out_w;
            with_scratch(plan.taps * block_pixels, |col| {
                let grad_block = MatRef::strided(&grad_out[rows.0 * g.out_w..], plan.pixels);
                sgemm(
                    plan.taps,
                    g.out_channels,
                    block_pixels,
                    1.0,
                    weight_t,
                    grad_block,
                    0.0,
                    col,
                    block_pixels,
                );
                col2im_add(col, g, rows, grad_in);
            });
        }
    }
    Ok(dx)
}

/// `dW = Σ_images dy · colᵀ`.
pub(super) fn conv2d_weight_grad(dy: &[f32], x: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
    weight_grad_blocked(dy, x, g, COL_BLOCK_ELEMS)
}

fn weight_grad_blocked(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    block_elems: usize,
) -> Result<Vec<f32>> {
    let op = "conv2d_weight_grad";
    let plan = Plan::new(op, g, block_elems)?;
    check_buffers(
        op,
        g,
        &plan,
        ("grad_output", dy.len(), plan.out_image),
        None,
    )?;
    check_buffers(op, g, &plan, ("input", x.len(), plan.in_image), None)?;
    let mut dw = vec![0.0; g.out_channels * plan.taps];
    for n in 0..g.batch {
        let grad_out = &dy[n * plan.out_image..(n + 1) * plan.out_image];
        let image = &x[n * plan.in_image..(n + 1) * plan.in_image];
        if plan.pointwise {
            let grad_out = MatRef::row_major(grad_out, plan.pixels);
            let image_t = MatRef::transposed(image, plan.pixels);
            sgemm(
                g.out_channels,
                plan.pixels,
                plan.taps,
                1.0,
                grad_out,
                image_t,
                1.0,
                &mut dw,
                plan.taps,
            );
            continue;
        }
        for rows in plan.blocks(g.out_h) {
            let block_pixels = (rows.1 - rows.0) * g.out_w;
            with_scratch(plan.taps * block_pixels, |col| {
                im2col(image, g, rows, col);
                let grad_block = MatRef::strided(&grad_out[rows.0 * g.out_w..], plan.pixels);
                let col_t = MatRef::transposed(col, block_pixels);
                sgemm(
                    g.out_channels,
                    block_pixels,
                    plan.taps,
                    1.0,
                    grad_block,
                    col_t,
                    1.0,
                    &mut dw,
                    plan.taps,
                );
            });
        }
    }
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::super::test_data::pseudo_random;
    use super::*;

    /// Input coordinate of output `o` and tap `k`, if it is not padding.
    fn source(
        o: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        len: usize,
    ) -> Option<usize> {
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
                                    let ih = source(
                                        oh,
                                        kh,
                                        g.stride.0,
                                        g.padding.0,
                                        g.dilation.0,
                                        g.in_h,
                                    );
                                    let iw = source(
                                        ow,
                                        kw,
                                        g.stride.1,
                                        g.padding.1,
                                        g.dilation.1,
                                        g.in_w,
                                    );
                                    if let (Some(ih), Some(iw)) = (ih, iw) {
                                        let xi =
                                            ((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw;
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
            // Block caps: the default (one block), and tiny ones that force
            // one or two output rows per block to exercise the block seams.
            for cap in [
                COL_BLOCK_ELEMS,
                1,
                2 * g.kernel_h * g.kernel_w * g.in_channels * g.out_w,
            ] {
                let what = |k: &str| format!("case {case} cap {cap} {k}");
                assert_close(
                    &what("y"),
                    &forward_blocked(&x, &w, Some(&b), &g, cap).unwrap(),
                    &r.y,
                    1e-5,
                );
                assert_close(
                    &what("dx"),
                    &input_grad_blocked(&dy, &w, &g, cap).unwrap(),
                    &r.dx,
                    1e-5,
                );
                assert_close(
                    &what("dw"),
                    &weight_grad_blocked(&dy, &x, &g, cap).unwrap(),
                    &r.dw,
                    1e-5,
                );
            }
            // Without a bias the output is the reference minus the bias.
            let no_bias: Vec<f64> =
                r.y.iter()
                    .enumerate()
                    .map(|(i, &v)| v - f64::from(b[(i / (g.out_h * g.out_w)) % g.out_channels]))
                    .collect();
            assert_close(
                &format!("case {case} no-bias y"),
                &conv2d(&x, &w, None, &g).unwrap(),
                &no_bias,
                1e-5,
            );
        }
    }

    #[test]
    fn conv_rejects_mismatched_buffers() {
        let g = Conv2dGeometry::new([2, 3, 5, 5], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        let (x, w, dy) = (vec![0.0; 150], vec![0.0; 108], vec![0.0; 200]);
        assert!(conv2d(&x[1..], &w, None, &g).is_err());
        assert!(conv2d(&x, &w[1..], None, &g).is_err());
        assert!(conv2d(&x, &w, Some(&[0.0; 3]), &g).is_err());
        assert!(conv2d_input_grad(&dy[1..], &w, &g).is_err());
        assert!(conv2d_input_grad(&dy, &w[1..], &g).is_err());
        assert!(conv2d_weight_grad(&dy, &x[1..], &g).is_err());
        assert!(conv2d_weight_grad(&dy[1..], &x, &g).is_err());
    }
}
