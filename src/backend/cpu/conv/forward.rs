//! The forward convolution `y = W · col`: the entry point, the choice of
//! padding-tap skipping and the im2col GEMM over image groups.

use super::super::buffer_pool;
use super::super::gemm::{sgemm, with_packed_lhs, Lhs, MatRef, Par, Rhs};
use super::super::scratch::{with_scratch, Slot};
use super::super::simd;
use super::super::tap_classes::ClassOrder;
use super::col2im::restage;
use super::columns::Columns;
use super::direct::{direct_width, forward_direct};
use super::winograd;
use super::{batch_images, for_image_groups, Limits, Output, Plan, FORWARD_LIMITS};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// `y = conv2d(x, w) + bias`.
pub(in super::super) fn conv2d(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    forward_with(x, w, bias, g, FORWARD_LIMITS)
}

pub(super) fn forward_with(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    forward_skipping(x, w, bias, g, limits, Skip::Auto, None)
}

/// [`forward_with`], skipping the padding taps as `skip` says, and as a
/// direct convolution as `direct` says ([`direct_width`]).
pub(super) fn forward_skipping(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    limits: Limits,
    skip: Skip,
    direct: Option<bool>,
) -> Result<Vec<f32>> {
    let op = "conv2d";
    let plan = Plan::new(op, g, limits)?;
    if plan.taps == 0 {
        // No input channels: a product of depth 0, so `y` is the bias (0
        // without one), as in PyTorch. The GEMM's depth blocks of zero
        // floats would panic.
        let mut y = buffer_pool::zeroed(op, g.batch * plan.out_image)?;
        if let Some(bias) = bias {
            for (plane, &bv) in y
                .chunks_exact_mut(plan.pixels.max(1))
                .zip(bias.iter().cycle())
            {
                plane.fill(bv);
            }
        }
        return Ok(y);
    }
    if direct.is_none() && winograd::chosen(g) {
        let wt = winograd::Weight::forward(w, g.in_channels);
        return winograd::forward_winograd(op, x, wt, bias, g, winograd::BLOCKS);
    }
    if let Some(tile) = direct_width(g, &plan, direct) {
        let taps = plan.taps;
        let kk = g.kernel_h * g.kernel_w;
        return forward_direct(op, x, |o, c, t| w[o * taps + c * kk + t], bias, g, tile);
    }
    let weight = MatRef::row_major(w, plan.taps);
    let columns = g.batch * plan.pixels;
    with_packed_lhs(weight, g.out_channels, plan.taps, columns, |weight| {
        forward_lhs(op, x, weight, bias, g, &plan, skip)
    })
}

/// Whether the forward's GEMM skips the padding taps of grouped small
/// images ([`skip_order`]): `Auto` decides by the share it saves (and
/// `FROSTGRAD_CONV_SKIP_PADDING`); `On` skips wherever it can, in the
/// order `Auto` would choose; `Classes` in the order of every column class
/// (for tests: the gather fill); `Off` never.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Skip {
    Auto,
    On,
    Classes,
    Off,
}

/// Grouped images whose class order ([`ClassOrder`]) leaves at most this
/// share of the GEMM's FMAs skip the padding taps; the rest keep the
/// image-by-image column order, whose panel fill is cheaper.
const SKIP_MAX_LIVE_SHARE: f64 = 0.97;

/// What splitting output rows at their column classes costs in the panel
/// fill, as a share of the GEMM's FMAs: the pieces are then a few pixels
/// long (single pixels for the left and right edges) and the panels are
/// gathered instead of loaded run by run. At 7x7, 256 channels, batch 32
/// that fill took 8 % of the kernel's samples against 4 % for whole rows
/// (`perf`, BENCHMARKS.md issue 9 item 29), so the column classes are
/// kept apart only where they save more than this.
const SPLIT_FILL_SHARE: f64 = 0.08;

/// The column panel width of the micro-kernel that would multiply
/// `weight`, when that GEMM can skip depth rows (`microkernel::gemm_live`):
/// on the AVX paths, with a weight that is not pre-packed.
#[cfg(target_arch = "x86_64")]
fn skipping_panel_width(weight: Lhs<'_>) -> Option<usize> {
    if let Lhs::Packed { .. } = weight {
        return None;
    }
    let (_, nr) = super::super::gemm::tile(simd::active());
    (nr > 0).then_some(nr)
}

/// Elsewhere the portable path's `matrixmultiply` multiplies every row.
#[cfg(not(target_arch = "x86_64"))]
fn skipping_panel_width(_weight: Lhs<'_>) -> Option<usize> {
    None
}

/// The class order for the columns of a chunk of `images` whole images,
/// when the GEMM is to skip the padding taps: on the micro-kernel paths
/// (the portable path's `matrixmultiply` multiplies every row), with the
/// weight read in place or through a table (a packed weight has no depth
/// table to skip through), and, unless forced, only where the order leaves
/// at most [`SKIP_MAX_LIVE_SHARE`] of the FMAs.
/// `FROSTGRAD_CONV_SKIP_PADDING=0` never skips, `=1` skips wherever it can
/// (for comparison).
fn skip_order(
    g: &Conv2dGeometry,
    images: usize,
    weight: Lhs<'_>,
    skip: Skip,
) -> Option<ClassOrder> {
    static MODE: std::sync::OnceLock<Skip> = std::sync::OnceLock::new();
    let mode = match skip {
        Skip::Auto => {
            super::super::env_switch::choice(&MODE, "FROSTGRAD_CONV_SKIP_PADDING", |v| match v {
                Some("0") => Skip::Off,
                Some("1") => Skip::On,
                _ => Skip::Auto,
            })
        }
        forced => forced,
    };
    let nr = skipping_panel_width(weight)?;
    if mode == Skip::Off || images < 2 {
        return None;
    }
    let taps = g.kernel_h * g.kernel_w;
    let columns = images * g.out_h * g.out_w;
    let share = |o: &ClassOrder| o.live_share(columns, nr, taps);
    if mode == Skip::Classes {
        return ClassOrder::new(g, images, true);
    }
    let rows = ClassOrder::new(g, images, false)?;
    let mut best = (share(&rows), rows);
    if let Some(split) = ClassOrder::new(g, images, true) {
        let s = share(&split);
        if s + SPLIT_FILL_SHARE < best.0 {
            best = (s, split);
        }
    }
    (mode == Skip::On || best.0 <= SKIP_MAX_LIVE_SHARE).then_some(best.1)
}

/// The forward of the whole batch with the weight as the GEMM's left
/// operand `weight` (`[C_out, taps]`).
pub(super) fn forward_lhs(
    op: &'static str,
    x: &[f32],
    weight: Lhs<'_>,
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    plan: &Plan,
    skip: Skip,
) -> Result<Vec<f32>> {
    // Every element is written by a GEMM with beta = 0 (or onto the bias)
    // unless there is no tap to sum over.
    let mut y = if plan.taps > 0 {
        buffer_pool::uninit(op, g.batch * plan.out_image)?
    } else {
        buffer_pool::zeroed(op, g.batch * plan.out_image)?
    };
    let per_image = Output::PerImage(plan.out_image);
    for_image_groups(
        op,
        plan,
        g,
        &mut y,
        per_image,
        |first, count, _, y, par, _| {
            let x = batch_images(x, plan.in_image, first, count);
            forward_images(x, weight, bias, g, plan, y, count, par, skip)
        },
    )?;
    Ok(y)
}

/// The forward of `batch` images of `x` into `y`.
#[allow(clippy::too_many_arguments)]
fn forward_images(
    x: &[f32],
    weight: Lhs<'_>,
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    plan: &Plan,
    y: &mut [f32],
    batch: usize,
    par: Par,
    skip: Skip,
) -> Result<()> {
    for chunk in plan.chunks(g, batch) {
        let width = chunk.columns(g);
        let images = chunk.images_of(x, plan.in_image);
        let (m, k) = (g.out_channels, plan.taps);
        if chunk.images > 1 {
            // Whole images, several side by side (never the pointwise
            // case), through the staging buffer, which also lets the
            // columns run in class order so the GEMM skips padding taps.
            let order = skip_order(g, chunk.images, weight, skip);
            let columns = Columns::new(images, g, plan, chunk, false).ordered(order);
            let col = Rhs::Source(&columns);
            with_scratch(Slot::Staging, g.out_channels * width, |staging| {
                sgemm(par, m, k, width, weight, col, 0.0, staging, width)?;
                restage(g, plan, &chunk, y, staging, bias, order.as_ref());
                Ok(())
            })?;
            continue;
        }
        let columns = Columns::new(images, g, plan, chunk, false);
        let col = if plan.pointwise {
            Rhs::View(MatRef::row_major(images, plan.pixels))
        } else {
            Rhs::Source(&columns)
        };
        // One image (or a block of its rows): the GEMM writes straight into
        // `y`; with a bias, pre-fill the rows with it and accumulate onto it.
        let out = &mut chunk.images_of_mut(y, plan.out_image)[chunk.rows.0 * g.out_w..];
        let beta = match bias {
            Some(b) => {
                for (co, &bv) in b.iter().enumerate() {
                    out[co * plan.pixels..][..width].fill(bv);
                }
                1.0
            }
            None => 0.0,
        };
        sgemm(par, m, k, width, weight, col, beta, out, plan.pixels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::input_grad::{flipped_geometry, input_grad_flipped_skipping};
    use super::super::test_support::{
        assert_close, for_each_case, poison_scratch, thread_pool, Case, Seeds,
    };
    use super::super::LIMITS;
    use super::*;
    use crate::backend::cpu::test_data::pseudo_random;

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
        let pool = thread_pool(2);
        let seeds = Seeds::new(41, 141, Some(241), 341);
        for_each_case(cases, seeds, |case, &((_, weight, ..), images), d| {
            let (g, x, w, b, dy) = (&d.g, &d.x, &d.w, &d.b, &d.dy);
            let flipped = flipped_geometry(g);
            // On this test's threads only (not `simd::force`, which
            // the other tests running meanwhile would see).
            simd::on_every_path(&pool, |path| {
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
                            poison_scratch(&pool, &[Slot::Staging], 1 << 12);
                            forward_skipping(x, w, Some(b), g, limits_y, skip, Some(false)).unwrap()
                        });
                        assert_close(&what("y"), &y, &d.r.y, 1e-5);
                        if let Some(flipped) = &flipped {
                            let limits_dx = limits(g.in_h * g.in_w);
                            let dx = pool.install(|| {
                                input_grad_flipped_skipping(
                                    dy,
                                    w,
                                    g,
                                    flipped,
                                    limits_dx,
                                    skip,
                                    Some(false),
                                    None,
                                )
                                .unwrap()
                            });
                            assert_close(&what("dx"), &dx, &d.r.dx, 1e-5);
                        }
                    }
                }
                // Where the order is taken: grouped images on the
                // micro-kernel paths, with the weight read in place.
                let weight = Lhs::View(MatRef::row_major(w, w.len() / weight[0]));
                for skip in [Skip::On, Skip::Classes] {
                    let taken = skip_order(g, images, weight, skip).is_some();
                    assert_eq!(
                        taken,
                        path != simd::SimdPath::Portable,
                        "case {case} {path:?}"
                    );
                }
                assert!(skip_order(g, images, weight, Skip::Off).is_none());
            });
        });
    }

    /// The padding skip also runs when a group's product is split across
    /// threads by rows (more output channels than columns): there the
    /// split used to pack the columns once for all parts, keeping no live
    /// rows, so the skip was silently lost (review of this session's diff).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_row_split_product_still_skips_the_padding() {
        use crate::backend::cpu::microkernel::LIVE_CALLS;
        let pool = thread_pool(2);
        let g =
            Conv2dGeometry::new([4, 256, 4, 4], [512, 256, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        let x = pseudo_random(4 * 256 * 16, 7);
        let w = pseudo_random(512 * 256 * 9, 8);
        let calls = || -> usize { pool.broadcast(|_| LIVE_CALLS.with(Cell::get)).iter().sum() };
        simd::on_every_path(&pool, |path| {
            if path == simd::SimdPath::Portable {
                return; // the skip runs on the micro-kernel paths only
            }
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
        });
    }
}
