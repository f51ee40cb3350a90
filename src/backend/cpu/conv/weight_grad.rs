//! The weight gradient `dW = Σ_images dy · colᵀ`: the entry point, the
//! column-matrix form and the shifted form of stride-1 layers.

use super::super::buffer_pool;
use super::super::gemm::{sgemm, Lhs, MatRef, Par, Rhs};
use super::super::scratch::{with_scratch, Slot};
use super::checked_numel;
use super::columns::{gather, Columns};
use super::weight_grad_taps::{by_classes, weight_grad_classes};
use super::winograd::weight_grad as winograd;
use super::winograd::BLOCKS;
use super::{
    batch_images, for_image_groups, unset_sum, Beta, Chunk, Limits, Output, Plan, FORWARD_LIMITS,
    LIMITS,
};
use crate::backend::Conv2dGeometry;
use crate::error::Result;
use winograd::PARTIALS_BYTES;

/// `dW = Σ_images dy · colᵀ`.
pub(in super::super) fn conv2d_weight_grad(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    // (Before the choice of form, which multiplies the output pixels.)
    super::check_sizes("conv2d_weight_grad", g)?;
    if winograd::chosen(g) {
        return winograd::weight_grad_winograd(dy, x, g, BLOCKS, PARTIALS_BYTES);
    }
    weight_grad_with(dy, x, g, weight_grad_limits(g))
}

/// Weights up to this many elements (1 MiB) take the forward's one image
/// group per thread in the weight gradient.
const SMALL_WEIGHT_ELEMS: usize = 1 << 18;

/// The weight gradient's limits. Two groups per thread by default: with
/// one, layer4's 9 MiB weight gradient needs a partial sum as large per
/// thread (measured slower, BENCHMARKS.md). A small weight's partial costs
/// little, while the split chunk it would otherwise run (all images in one
/// chunk) divides its GEMM by rows, each row block packing the same im2col
/// again: ResNet's 1x1 stride-2 weight gradients (32K and 128K elements)
/// took 0.67-0.69x the CPU time with one group per thread (BENCHMARKS.md,
/// issue 9, "What each change bought").
pub(super) fn weight_grad_limits(g: &Conv2dGeometry) -> Limits {
    let elems = g.out_channels * g.in_channels * g.kernel_h * g.kernel_w;
    if elems <= SMALL_WEIGHT_ELEMS {
        // Its im2col is stored whole per group (the GEMM's depth is the
        // pixels): groups stay bounded by `block_elems`.
        Limits {
            group_pack_elems: None,
            ..FORWARD_LIMITS
        }
    } else {
        LIMITS
    }
}

pub(super) fn weight_grad_with(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    if by_classes(g) {
        return weight_grad_classes(dy, x, g, limits);
    }
    match shifted_rows(g) {
        Some(rows) => weight_grad_shifted(dy, x, g, &rows, limits),
        None => weight_grad_im2col(dy, x, g, limits),
    }
}

/// The weight gradient as `dy · colsᵀ` over the full column matrix: every
/// geometry (the shifted form covers only some, see [`shifted_rows`]).
pub(super) fn weight_grad_im2col(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    let op = "conv2d_weight_grad";
    let plan = Plan::new(op, g, limits)?;
    let mut dw = unset_sum(op, g.out_channels * plan.taps)?;
    for_image_groups(
        op,
        &plan,
        g,
        &mut dw,
        Output::Sum,
        |first, count, rows, dw, par, beta| {
            let dy = batch_images(dy, plan.out_image, first, count);
            let x = batch_images(x, plan.in_image, first, count);
            weight_grad_images(dy, x, g, &plan, dw, (count, rows), par, beta)
        },
    )?;
    Ok(dw)
}

/// The weight gradient of `batch` images, into `dw` (overwritten with
/// `beta` 0, see [`Beta`]).
#[allow(clippy::too_many_arguments)]
fn weight_grad_images(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    plan: &Plan,
    dw: &mut [f32],
    (batch, rows): (usize, (usize, usize)),
    par: Par,
    beta: Beta,
) -> Result<()> {
    let (m, n) = (g.out_channels, plan.taps);
    sum_chunks(plan, g, (batch, rows), dw, beta, |chunk, dw, beta| {
        let width = chunk.columns(g);
        let images = chunk.images_of(x, plan.in_image);
        let columns = Columns::new(images, g, plan, chunk, true);
        let col_t = if plan.pointwise {
            let pixels = &images[chunk.rows.0 * g.out_w..];
            Rhs::View(MatRef::transposed(pixels, plan.pixels))
        } else {
            Rhs::Source(&columns)
        };
        with_grad_out(g, plan, &chunk, dy, |grad_out| {
            sgemm(par, m, width, n, Lhs::View(grad_out), col_t, beta, dw, n)
        })
    })
}

/// Runs `add(chunk, out, beta)` for the chunks of output rows `rows` of
/// `batch` images ([`Plan::chunks_rows`]), each adding its product onto the
/// sum `out`: the first chunk with the caller's `beta` (0 overwrites it, see
/// [`Beta`]; a GEMM of depth 0 writes zeros), the others with 1; with no
/// chunk at all, `out` is zeroed when `beta` is 0. The loop of the im2col
/// and the shifted weight gradients.
fn sum_chunks(
    plan: &Plan,
    g: &Conv2dGeometry,
    (batch, rows): (usize, (usize, usize)),
    out: &mut [f32],
    beta: Beta,
    mut add: impl FnMut(Chunk, &mut [f32], Beta) -> Result<()>,
) -> Result<()> {
    let chunks = plan.chunks_rows(g, batch, rows);
    if chunks.is_empty() && beta == 0.0 {
        out.fill(0.0);
    }
    for (i, chunk) in chunks.into_iter().enumerate() {
        add(chunk, out, if i == 0 { beta } else { 1.0 })?;
    }
    Ok(())
}

/// The geometry of the shifted weight gradient's row taps (see
/// [`weight_grad_shifted`]): the convolution with its kernel reduced to
/// one column, unpadded and undilated along the width, so that tap
/// `(c, kh)` at output `(oh, w)` reads input pixel `(c, oh + kh * d - p,
/// w)`. `None` where the shifted form does not apply: strides other than
/// 1, output rows narrower or wider than the input's, 1-wide kernels, more
/// than [`SHIFTED_MAX_ROW_TAPS`] row taps, or `FROSTGRAD_DW_SHIFTED=0`
/// (for comparison).
pub(super) fn shifted_rows(g: &Conv2dGeometry) -> Option<Conv2dGeometry> {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = super::super::env_switch::on_unless_zero(&ENABLED, "FROSTGRAD_DW_SHIFTED");
    let row_taps = g.in_channels.saturating_mul(g.kernel_h);
    (enabled
        && row_taps > 0
        && g.stride == (1, 1)
        && g.kernel_w > 1
        && g.out_w == g.in_w
        && row_taps <= SHIFTED_MAX_ROW_TAPS)
        .then_some(Conv2dGeometry {
            kernel_w: 1,
            padding: (g.padding.0, 0),
            dilation: (g.dilation.0, 1),
            ..*g
        })
}

/// The most row taps (`C_in * KH`, the shifted weight gradient's GEMM
/// columns) for which it is used: up to 512, one 256-deep block of its
/// packed right operand (512 KiB) stays in L2 while the micro-kernels walk
/// the `KW * C_out` rows of `A`. ResNet's 3x3 512->512 at 7x7 (1536 row
/// taps) took 1.14x the CPU time of the im2col form (its packed block of
/// 1.2 MB streamed from L3 for each of 11 row blocks), 256->256 at 14x14
/// (768) 0.97x, i.e. within noise; 64 and 128 channels 0.91x and 0.96x
/// (BENCHMARKS.md item 24).
const SHIFTED_MAX_ROW_TAPS: usize = 512;

/// The weight gradient of a stride-1 convolution whose output rows are as
/// wide as its input's (ResNet's 3x3, padding 1), as `KW` shifted
/// products sharing one right operand:
///
/// `dW[o][c, kh, kw] = Σ_{oh, w} dy[o][oh, w + p - kw·d] · x[c][oh + kh·d - p, w]`
///
/// (`dy` is 0 outside its row). So with depth = the output pixels `(oh,
/// w)`, `A[(kw, o)] = dy[o]` shifted by `p - kw·d` within each row and
/// `B[(c, kh)] = x`'s rows: `dW' = A · Bᵀ` (`[KW·C_out, C_in·KH]`), then
/// reordered into `dW`. `B` is the column matrix of the row taps only (a
/// `KW`-th of the taps), and it is the operand that is packed with a
/// transpose (`Columns`, transposed), which was ~14 % of the samples of
/// ResNet's 3x3 weight gradients (`perf`, BENCHMARKS.md item 24); `A` is a
/// plain shifted copy of `dy`, read by the micro-kernels where it lies.
/// The multiply-adds are the same.
fn weight_grad_shifted(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    rows: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    let op = "conv2d_weight_grad";
    let plan = Plan::new(op, rows, shifted_limits(g, limits))?;
    let (kw_n, c_out, n) = (g.kernel_w, g.out_channels, plan.taps);
    let mut shifted = unset_sum(op, kw_n * c_out * n)?;
    for_image_groups(
        op,
        &plan,
        rows,
        &mut shifted,
        Output::Sum,
        |first, count, out_rows, out, par, beta| {
            let dy = batch_images(dy, plan.out_image, first, count);
            let x = batch_images(x, plan.in_image, first, count);
            sum_chunks(
                &plan,
                rows,
                (count, out_rows),
                out,
                beta,
                |chunk, out, beta| {
                    let width = chunk.columns(rows);
                    let images = chunk.images_of(x, plan.in_image);
                    let columns = Columns::new(images, rows, &plan, chunk, true);
                    // `KW` shifted copies of the chunk's `dy`: more than
                    // `dy` itself holds, so checked.
                    let a_len = checked_numel(op, &[kw_n, c_out, width])?;
                    with_scratch(Slot::Columns, a_len, |a| {
                        shift_grad_out(g, &plan, &chunk, dy, a);
                        let a = MatRef::row_major(a, width);
                        sgemm(
                            par,
                            kw_n * c_out,
                            width,
                            n,
                            Lhs::View(a),
                            Rhs::Source(&columns),
                            beta,
                            out,
                            n,
                        )
                    })
                },
            )
        },
    )?;
    // dW[o][(c, kh), kw] = dW'[(kw, o)][(c, kh)]: every element written.
    let mut dw = buffer_pool::uninit(op, kw_n * c_out * n)?;
    for (o, row) in dw.chunks_exact_mut(n * kw_n).enumerate() {
        for kw in 0..kw_n {
            let from = &shifted[(kw * c_out + o) * n..][..n];
            for (d, &v) in row[kw..].iter_mut().step_by(kw_n).zip(from) {
                *d = v;
            }
        }
    }
    buffer_pool::recycle(shifted);
    Ok(dw)
}

/// The limits of the shifted weight gradient's plan. The plan bounds a
/// chunk's columns by the right operand's rows (`C_in * KH`), but the left
/// operand, built per chunk in the `Columns` slot, has `KW * C_out` rows:
/// the block shrinks so that it too stays within the block size (a 3->64
/// layer's would be 21x larger, and the slot's size is shared by every
/// thread's buffer). ResNet's layers that take this path have `KW * C_out
/// == C_in * KH`: unchanged.
fn shifted_limits(g: &Conv2dGeometry, limits: Limits) -> Limits {
    let row_taps = (g.in_channels * g.kernel_h).max(1);
    let left_rows = g.kernel_w * g.out_channels;
    Limits {
        block_elems: limits.block_elems / left_rows.div_ceil(row_taps).max(1),
        ..limits
    }
}

/// The shifted weight gradient's left operand for one chunk (see
/// [`weight_grad_shifted`]): `a[(kw, o)][j]` for the chunk's columns `j`,
/// i.e. `dy[o]` of the column's image at `(oh, w + p - kw·d)`, 0 where
/// that lies outside the row.
fn shift_grad_out(g: &Conv2dGeometry, plan: &Plan, chunk: &Chunk, dy: &[f32], a: &mut [f32]) {
    let (w, c_out, width) = (g.out_w, g.out_channels, chunk.columns(g));
    let seg = chunk.image_columns(g);
    let images = chunk.images_of(dy, plan.out_image);
    for kw in 0..g.kernel_w {
        // a[.., j] = dy[.., j + shift] within each row.
        let shift = g.padding.1 as isize - (kw * g.dilation.1) as isize;
        let skip = shift.unsigned_abs().min(w);
        for o in 0..c_out {
            let dst_row = &mut a[(kw * c_out + o) * width..][..width];
            for (image, dst) in images
                .chunks_exact(plan.out_image)
                .zip(dst_row.chunks_exact_mut(seg))
            {
                let src = &image[o * plan.pixels + chunk.rows.0 * w..][..seg];
                // One copy of the whole block, offset by the shift; then
                // the `skip` columns of each row that would have come from
                // the next or previous row (or outside the block) are 0.
                let len = seg - skip.min(seg);
                if shift >= 0 {
                    dst[..len].copy_from_slice(&src[seg - len..]);
                    for row in dst.chunks_exact_mut(w) {
                        row[w - skip..].fill(0.0);
                    }
                } else {
                    dst[seg - len..].copy_from_slice(&src[..len]);
                    for row in dst.chunks_exact_mut(w) {
                        row[..skip].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Runs `f` on the chunk's `dy` as a `[C_out, columns]` matrix: a view of
/// `dy` itself for one image (or a block of its rows), or its images
/// gathered side by side into a staging buffer.
pub(super) fn with_grad_out<R>(
    g: &Conv2dGeometry,
    plan: &Plan,
    chunk: &Chunk,
    dy: &[f32],
    f: impl FnOnce(MatRef<'_>) -> Result<R>,
) -> Result<R> {
    let width = chunk.columns(g);
    if chunk.images > 1 {
        with_scratch(Slot::Staging, g.out_channels * width, |staging| {
            gather(g, plan, chunk, dy, staging);
            f(MatRef::row_major(staging, width))
        })
    } else {
        let grad_out = &chunk.images_of(dy, plan.out_image)[chunk.rows.0 * g.out_w..];
        f(MatRef::strided(grad_out, plan.pixels))
    }
}

#[cfg(test)]
mod tests {
    use super::super::simd;
    use super::super::test_support::{assert_close, for_each_case, thread_pool, Case, Seeds};
    use super::super::COL_BLOCK_ELEMS;
    use super::*;

    /// A batch of no images has a weight gradient of zeros: no GEMM call
    /// writes the sum (which starts unset, [`Beta`]), so
    /// [`for_image_groups`] must.
    #[test]
    fn weight_grad_of_an_empty_batch_is_zero() {
        let pool = thread_pool(2);
        for (input, weight, stride, padding) in [
            ([0, 3, 9, 9], [4, 3, 3, 3], (1, 1), (1, 1)),
            ([0, 2, 8, 8], [5, 2, 1, 1], (2, 2), (0, 0)),
        ] {
            let g = Conv2dGeometry::new(input, weight, stride, padding, (1, 1)).unwrap();
            simd::on_every_path(&pool, |path| {
                let dw = pool.install(|| conv2d_weight_grad(&[], &[], &g).unwrap());
                assert_eq!(dw.len(), weight.iter().product::<usize>());
                assert!(dw.iter().all(|&v| v == 0.0), "{input:?} {path:?}: {dw:?}");
            });
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
        // Each with at least 4 x ROW_GROUP_MIN_PIXELS output pixels, on
        // every SIMD path this CPU has.
        let cases: &[Case] = &[
            ([1, 3, 48, 46], [4, 3, 7, 7], (2, 2), (3, 3), (1, 1)),
            ([2, 3, 33, 31], [5, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([1, 4, 24, 22], [3, 4, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([2, 3, 17, 16], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([1, 5, 24, 23], [7, 5, 1, 1], (1, 1), (0, 0), (1, 1)),
        ];
        let seeds = Seeds::new(11, 110, Some(210), 310);
        for_each_case(cases, seeds, |case, _, d| {
            let (g, x, dy, r) = (&d.g, &d.x, &d.dy, &d.r);
            for block_elems in [usize::MAX / 2, 1] {
                let limits = Limits {
                    block_elems,
                    ..FORWARD_LIMITS
                };
                for threads in [1, 2, 3, 4] {
                    let pool = thread_pool(threads);
                    simd::on_every_path(&pool, |path| {
                        pool.install(|| {
                            let plan = Plan::new("test", g, limits).unwrap();
                            let split = !plan.parallel_groups(g) && plan.row_groups(g);
                            let what = format!(
                                "case {case} {path:?} block {block_elems} threads {threads}"
                            );
                            assert_eq!(split, threads > g.batch, "{what}: row groups taken");
                            let dw = weight_grad_with(dy, x, g, limits).unwrap();
                            assert_close(&what, &dw, &r.dw, 1e-5);
                            let dw = weight_grad_im2col(dy, x, g, limits).unwrap();
                            assert_close(&format!("{what} im2col"), &dw, &r.dw, 1e-5);
                        });
                    });
                }
            }
        });
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
}
