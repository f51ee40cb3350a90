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
pub(super) fn skip_order(
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
            forward_images(x, weight, bias, g, plan, y, count, par, skip);
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
) {
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
                sgemm(par, m, k, width, weight, col, 0.0, staging, width);
                restage(g, plan, &chunk, y, staging, bias, order.as_ref());
            });
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
        sgemm(par, m, k, width, weight, col, beta, out, plan.pixels);
    }
}
