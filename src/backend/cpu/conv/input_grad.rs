//! The input gradient `dx`: flipped into a forward convolution for stride
//! 1, else `col2im(Wᵀ · dy)`.

use rayon::prelude::*;

use super::super::buffer_pool;
use super::super::gemm::{
    row_align, sgemm, sgemm_rows, with_indexed_lhs, with_packed_lhs, with_packed_rhs, Lhs, MatRef,
    Par, Rhs,
};
use super::super::scratch::{with_scratch, Slot};
use super::super::simd;
use super::checked_numel;
use super::col2im::{col2im_add, col2im_set, merge_tap_rows_on};
use super::direct::{direct_width, forward_direct};
use super::forward::{forward_lhs, Skip};
use super::weight_grad::with_grad_out;
use super::winograd;
use super::{batch_images, for_image_groups, lcm, Limits, Output, Plan, FORWARD_LIMITS, LIMITS};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// `dx` for every image: the forward convolution of `dy` with the flipped
/// weight where [`flipped_geometry`] allows it and [`flip_input_grad`]
/// chooses it, else `col2im(Wᵀ · dy)`.
pub(in super::super) fn conv2d_input_grad(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    // (Before the choice of form, which multiplies the plane's pixels.)
    super::check_sizes("conv2d_input_grad", g)?;
    match flipped_geometry(g) {
        Some(flipped) if flip_input_grad(g, &flipped) => {
            input_grad_flipped(dy, w, g, &flipped, FORWARD_LIMITS)
        }
        _ => input_grad_with(dy, w, g, LIMITS),
    }
}

/// Whether the input gradient runs as a forward convolution
/// ([`input_grad_flipped`]) for a geometry that allows it.
/// `FROSTGRAD_CONV_DX=flip` forces it wherever the geometry allows it,
/// `=col2im` never (for comparison).
///
/// The rule: for kernels of more than one tap (a 1x1, stride-1, unpadded
/// input gradient already is one GEMM with no col2im), on the AVX-512 path
/// always, on the AVX2 path for images of at most
/// [`FLIP_AVX2_MAX_PIXELS`] or where the flipped forward runs as a direct
/// convolution ([`direct_width`] of `flipped`) or through Winograd's
/// F(2x2, 3x3) ([`winograd::chosen`] of `flipped`, which replaces both the
/// im2col forward and col2im there: commit c4de002). Measured on Zen 4, batch
/// 8, medians of 12 alternating runs under load (BENCHMARKS.md, issue 9
/// item 26): AVX-512 0.88-0.98x the CPU time of col2im on all four
/// stride-1 3x3 layers at 1 and 2 threads; AVX2 0.90-0.95x at 7x7 but
/// 1.02-1.08x at 14x14 to 56x56 through the im2col forward, which on AVX2
/// is itself slower than its col2im input gradient. Through the direct
/// convolution the AVX2 flipped input gradient is faster: 0.88x (64@56,
/// batch 8), 0.96x (128@28, batch 8), 0.86x (64@28, batch 32) the CPU time
/// of col2im (one thread, medians of 5-6 alternating runs, load 6.5,
/// BENCHMARKS.md issue 9 item 37). On the portable path the flipped weight
/// would have to be written out first (`matrixmultiply` takes only
/// strided operands).
fn flip_input_grad(g: &Conv2dGeometry, flipped: &Conv2dGeometry) -> bool {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = super::super::env_switch::forced(&MODE, "FROSTGRAD_CONV_DX", "flip", "col2im");
    forced.unwrap_or_else(|| {
        let pixels = g.in_h * g.in_w;
        g.kernel_h * g.kernel_w > 1
            && pixels >= FLIP_MIN_PIXELS
            && match simd::active() {
                simd::SimdPath::Avx512 => true,
                simd::SimdPath::Avx2 => {
                    pixels <= FLIP_AVX2_MAX_PIXELS
                        || flips_direct(flipped)
                        || winograd::chosen(flipped)
                }
                simd::SimdPath::Portable => false,
            }
    })
}

/// Whether the flipped input gradient of geometry `flipped` would run as
/// a direct convolution ([`input_grad_flipped_skipping`] asks the same
/// [`direct_width`] with the same plan).
fn flips_direct(flipped: &Conv2dGeometry) -> bool {
    Plan::new("conv2d_input_grad", flipped, FORWARD_LIMITS)
        .is_ok_and(|plan| direct_width(flipped, &plan, None).is_some())
}

/// The smallest image (`H * W` of `dx`) whose input gradient is run
/// flipped ([`flip_input_grad`]). At 2x2 (ResNet's layer 4 at 40x40
/// inputs), where five of a 3x3 kernel's nine taps see only padding, the
/// flipped one measured within noise of col2im (0.97x, batch 8), so it
/// keeps col2im. (`tests/train_parity.rs`'s fine-tune case, whose layer 4
/// runs at 2x2, was first too ill-conditioned to tell the two apart: 1-ulp
/// noise there moved it 12x its bound. Its learning rate is now one at
/// which PyTorch's own float32 paths agree, and it passes with every 2x2
/// layer flipped too; BENCHMARKS.md, issue 9 item 26.)
const FLIP_MIN_PIXELS: usize = 9;

/// The largest image (`H * W` of `dx`) whose input gradient the AVX2 path
/// runs flipped through the im2col forward ([`flip_input_grad`]):
/// between ResNet's 7x7 (flipped faster) and 14x14 (slower).
const FLIP_AVX2_MAX_PIXELS: usize = 100;

/// For stride 1, the input gradient is the forward convolution of `dy`
/// with the weight flipped in space and with input and output channels
/// swapped, `W'[c, o, kh, kw] = W[o, c, KH-1-kh, KW-1-kw]`, padded by
/// `d(k-1) - p` (dilation `d` kept): its geometry, when that padding is not
/// negative and `dy` is not empty.
pub(super) fn flipped_geometry(g: &Conv2dGeometry) -> Option<Conv2dGeometry> {
    if g.stride != (1, 1) || g.batch == 0 || g.in_h * g.in_w == 0 {
        return None;
    }
    let pad = |d: usize, k: usize, p: usize| (d * (k - 1)).checked_sub(p);
    let padding = (
        pad(g.dilation.0, g.kernel_h, g.padding.0)?,
        pad(g.dilation.1, g.kernel_w, g.padding.1)?,
    );
    let input = [g.batch, g.out_channels, g.out_h, g.out_w];
    let weight = [g.in_channels, g.out_channels, g.kernel_h, g.kernel_w];
    let flipped = Conv2dGeometry::new(input, weight, (1, 1), padding, g.dilation).ok()?;
    (flipped.out_h == g.in_h && flipped.out_w == g.in_w).then_some(flipped)
}

/// `dx` as the forward convolution of `dy` under the `flipped` geometry
/// ([`flipped_geometry`]), with the forward's machinery: the self-packing
/// im2col over `dy`, image groups, the GEMM writing `dx` directly. No
/// col2im scatter, no zeroing of `dx`, no staging of the GEMM's output.
///
/// The flipped weight is never written out: as the GEMM's `[C_in, C_out *
/// KH*KW]` left operand, row `c` at depth `(o, t)` (`t = kh*KW + kw`, the
/// im2col's tap order) is `w[o*C_in*KH*KW + c*KH*KW + (KH*KW-1-t)]`: row
/// stride `KH*KW`, and a depth offset that is not affine in the depth
/// index, so the micro-kernels read it through a table of offsets
/// (`gemm::with_indexed_lhs`).
pub(super) fn input_grad_flipped(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    flipped: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    input_grad_flipped_skipping(dy, w, g, flipped, limits, Skip::Auto, None, None)
}

/// [`input_grad_flipped`], skipping the padding taps as `skip` says, as a
/// direct convolution as `direct` says ([`direct_width`]), and through
/// Winograd's F(2x2, 3x3) as `winograd` says: `Some(false)` never (tests of the im2col path's
/// chunkings, which Winograd, ignoring `limits`, would otherwise take on
/// AVX2), `Some(true)` wherever it applies, `None` where
/// [`winograd::chosen`]; only while `direct` is `None`.
#[allow(clippy::too_many_arguments)]
pub(super) fn input_grad_flipped_skipping(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    flipped: &Conv2dGeometry,
    limits: Limits,
    skip: Skip,
    direct: Option<bool>,
    winograd: Option<bool>,
) -> Result<Vec<f32>> {
    let op = "conv2d_input_grad";
    let plan = Plan::new(op, flipped, limits)?;
    let taps = g.kernel_h * g.kernel_w;
    let per_out = g.in_channels * taps;
    let offset = |p: usize| (p / taps) * per_out + (taps - 1 - p % taps);
    if direct.is_none() && winograd::wanted(flipped, winograd) {
        let wt = winograd::Weight::flipped(w, g.in_channels);
        return winograd::forward_winograd(op, dy, wt, None, flipped, winograd::BLOCKS);
    }
    if let Some(tile) = direct_width(flipped, &plan, direct) {
        // Depth (c, t) of output channel o: offset(c * taps + t), without
        // its divisions.
        let wt = |o: usize, c: usize, t: usize| w[o * taps + c * per_out + (taps - 1 - t)];
        return forward_direct(op, dy, wt, None, flipped, tile);
    }
    with_indexed_lhs(w, taps, (g.in_channels, plan.taps), offset, |weight| {
        forward_lhs(op, dy, weight, None, flipped, &plan, skip)
    })
}

/// `dx = col2im(Wᵀ · dy)` for every image.
pub(super) fn input_grad_with(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    input_grad_col2im(dy, w, g, limits, overwrites_dx(g), merge_tap_rows_on())
}

/// Whether the col2im input gradient writes `dx` whole rather than adding
/// onto a zeroed one ([`col2im_set`]): for 1x1 unpadded kernels (whose
/// taps do not overlap) with at least one output channel (else nothing
/// would be written). `FROSTGRAD_CONV_DX_OVERWRITE=0` keeps the zeroing
/// and adding (for comparison; the tests run both), like the other `=0`
/// switches.
fn overwrites_dx(g: &Conv2dGeometry) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = super::super::env_switch::on_unless_zero(&ON, "FROSTGRAD_CONV_DX_OVERWRITE");
    on && pointwise_taps(g) && g.out_channels > 0
}

/// A 1x1 unpadded kernel: every input pixel is read by at most one output
/// pixel (any stride).
fn pointwise_taps(g: &Conv2dGeometry) -> bool {
    g.kernel_h == 1 && g.kernel_w == 1 && g.padding == (0, 0)
}

/// [`input_grad_with`], writing `dx` whole (`overwrite`, only where
/// [`pointwise_taps`] and `C_out > 0`) or adding onto a zeroed one, with
/// a kernel row's taps added in one pass where `merge` and
/// `col2im::merges_tap_rows`.
pub(super) fn input_grad_col2im(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    limits: Limits,
    overwrite: bool,
    merge: bool,
) -> Result<Vec<f32>> {
    let op = "conv2d_input_grad";
    let plan = Plan::new(op, g, limits)?;
    let overwrite = overwrite && pointwise_taps(g) && g.out_channels > 0;
    let mut dx = if overwrite {
        // Every element is written: by the pointwise GEMM (beta 0) or by
        // `col2im_set` (chunks cover all output rows, blocks all channels).
        buffer_pool::uninit(op, g.batch * plan.in_image)?
    } else {
        buffer_pool::zeroed(op, g.batch * plan.in_image)?
    };
    // Wᵀ as a [taps, C_out] view of the [C_out, taps] weight.
    let weight_t = MatRef::transposed(w, plan.taps);
    let columns = g.batch * plan.pixels;
    with_packed_lhs(weight_t, plan.taps, g.out_channels, columns, |weight_t| {
        let per_image = Output::PerImage(plan.in_image);
        for_image_groups(
            op,
            &plan,
            g,
            &mut dx,
            per_image,
            |first, count, _, dx, par, _| {
                let dy = batch_images(dy, plan.out_image, first, count);
                let form = (overwrite, merge);
                input_grad_images(dy, weight_t, g, &plan, dx, count, par, form)
            },
        )
    })?;
    Ok(dx)
}

/// The input gradient of `batch` images of `dy`, added onto `dx`.
#[allow(clippy::too_many_arguments)]
fn input_grad_images(
    dy: &[f32],
    weight_t: Lhs<'_>,
    g: &Conv2dGeometry,
    plan: &Plan,
    dx: &mut [f32],
    batch: usize,
    par: Par,
    (overwrite, merge): (bool, bool),
) -> Result<()> {
    let (m, k) = (plan.taps, g.out_channels);
    for chunk in plan.chunks(g, batch) {
        let width = chunk.columns(g);
        let grad_in = chunk.images_of_mut(dx, plan.in_image);
        if plan.pointwise {
            let grad_out = MatRef::row_major(chunk.images_of(dy, plan.out_image), plan.pixels);
            let grad_out = Rhs::View(grad_out);
            sgemm(
                par,
                m,
                k,
                plan.pixels,
                weight_t,
                grad_out,
                0.0,
                grad_in,
                plan.pixels,
            )?;
            continue;
        }
        let plane = g.in_h * g.in_w;
        if width == 0 || plane == 0 || m == 0 || k == 0 {
            continue; // nothing to add onto the zeroed `dx` (or an empty one)
        }
        // Row blocks of `Wᵀ · dy` of `channels` whole input channels (so
        // each block scatters onto its own channel planes, and blocks can
        // run in parallel), starting at multiples of the packed `Wᵀ`'s row
        // tile; `dy` packed once for all of them.
        // Sized from the plan's widest chunk, so that every block of every
        // chunk of a call asks its thread for the same scratch: blocks of
        // different sizes let a worker that had only run small ones grow
        // its buffer in a later step (`tests/cpu_buffer_pool.rs`).
        let per_channel = g.kernel_h * g.kernel_w;
        let unit = lcm(per_channel, row_align(weight_t)) / per_channel;
        let widest = plan.max_columns(g);
        let mut channels = (plan.dx_block_elems / widest.saturating_mul(per_channel).max(1))
            .max(1)
            .next_multiple_of(unit)
            .min(g.in_channels.next_multiple_of(unit));
        let threads = rayon::current_num_threads();
        if par == Par::Split && threads > 1 {
            // Split across threads: a multiple of the thread count of
            // blocks as equal as `unit` allows (blocks of 148 and 108
            // channels for the 256->512 stride-2 layer at batch 1 kept one
            // thread waiting for the other a sixth of the time).
            let blocks = g.in_channels.div_ceil(channels).next_multiple_of(threads);
            channels = g
                .in_channels
                .div_ceil(blocks)
                .next_multiple_of(unit)
                .min(channels);
        }
        let blocks = g.in_channels.div_ceil(channels);
        // A block of one channel's taps over the widest chunk's columns:
        // `KH * KW` times a row of output pixels, a product the geometry's
        // checks do not bound (nor the thread count's copies of it below).
        let op = "conv2d_input_grad";
        let block_len = checked_numel(op, &[channels.min(g.in_channels), per_channel, widest])?;
        // Per block, each image's planes of the block's channels.
        let mut targets: Vec<Vec<&mut [f32]>> = (0..blocks)
            .map(|_| Vec::with_capacity(chunk.images))
            .collect();
        for image in grad_in.chunks_exact_mut(plan.in_image) {
            for (b, planes) in image.chunks_mut(channels * plane).enumerate() {
                targets[b].push(planes);
            }
        }
        with_grad_out(g, plan, &chunk, dy, |grad_out| {
            with_packed_rhs(Rhs::View(grad_out), k, width, |grad_out| {
                let block = |b: usize, planes: &mut Vec<&mut [f32]>, col: &mut [f32]| {
                    let c0 = b * channels;
                    let rows = channels.min(g.in_channels - c0) * per_channel;
                    let col = &mut col[..rows * width];
                    let rows = (c0 * per_channel, rows);
                    sgemm_rows(weight_t, m, rows, k, width, grad_out, col)?;
                    if overwrite {
                        col2im_set(col, g, &chunk, planes);
                    } else {
                        col2im_add(col, g, &chunk, planes, merge);
                    }
                    Ok(())
                };
                // By reference: the lists are freed here, on the thread
                // that made them. Moved into the tasks, a worker freed them
                // into its own malloc cache and the main heap crept by
                // their size every step until a page faulted (issue 9).
                match par {
                    // One column buffer per rayon thread, taken here on the
                    // calling thread, rather than each worker's own
                    // scratch: which worker runs a block is up to rayon, so
                    // a worker's own buffer could first meet this (often
                    // the largest) size in any step, and grow then (a
                    // steady-state growth in `tests/cpu_buffer_pool.rs`
                    // once the stride-1 input gradients, which used to
                    // grow every worker's buffer early, stopped using it).
                    // A block holds its buffer without waiting on other
                    // tasks, so the lock never waits.
                    Par::Split => {
                        let threads = rayon::current_num_threads().max(1);
                        let all = checked_numel(op, &[threads, block_len])?;
                        with_scratch(Slot::SplitColumns, all, |cols| {
                            let cols: Vec<std::sync::Mutex<&mut [f32]>> = cols
                                .chunks_mut(block_len)
                                .map(std::sync::Mutex::new)
                                .collect();
                            targets
                                .par_iter_mut()
                                .enumerate()
                                .try_for_each(|(b, planes)| {
                                    let mine = rayon::current_thread_index().unwrap_or(0) % threads;
                                    let mut col = cols[mine]
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                                    block(b, planes, &mut col)
                                })
                        })
                    }
                    Par::Serial => with_scratch(Slot::Columns, block_len, |col| {
                        for (b, planes) in targets.iter_mut().enumerate() {
                            block(b, planes, col)?;
                        }
                        Ok(())
                    }),
                }
            })
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        assert_close, case_data, col2im_limits, for_each_case, poison_pooled, poison_scratch,
        thread_pool, Case, Seeds,
    };
    use super::*;

    #[test]
    fn input_grad_row_blocks_match_direct_loops() {
        // Input channels that the row blocks do not divide (blocks of whole
        // channels starting at multiples of the packed Wᵀ's row tile: 8
        // channels of 9 taps on AVX-512, 2 on AVX2, 1 on portable; AVX-512
        // reads Wᵀ in place, 1 channel per unit, up to 256 columns, so the
        // last two cases have more), block
        // sizes from one unit to all channels, stride 2 and padding, batch
        // 1 and a partial image group, blocks in parallel (split) and on
        // one thread (image groups), into dirty scratch buffers, on every
        // SIMD path this CPU has.
        let cases: &[Case] = &[
            ([2, 19, 6, 5], [7, 19, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([3, 13, 7, 7], [6, 13, 1, 1], (2, 2), (0, 0), (1, 1)),
            ([1, 17, 5, 6], [4, 17, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([3, 11, 4, 4], [5, 11, 3, 2], (1, 1), (2, 0), (1, 1)),
            ([3, 19, 10, 10], [7, 19, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([2, 21, 13, 11], [5, 21, 3, 3], (1, 1), (1, 1), (1, 1)),
        ];
        let pool = thread_pool(2);
        let seeds = Seeds::new(11, 110, None, 310);
        for_each_case(cases, seeds, |case, &(_, weight, ..), d| {
            let (g, w, dy) = (&d.g, &d.w, &d.dy);
            let pixels = g.out_h * g.out_w;
            let taps = weight[1] * weight[2] * weight[3];
            simd::on_every_path(&pool, |path| {
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
                            poison_scratch(&pool, &[Slot::Columns, Slot::Staging], 1 << 12);
                            input_grad_with(dy, w, g, limits).unwrap()
                        });
                        let what = format!(
                            "case {case} {path:?} block {dx_block_elems} columns {min_columns} \
                             groups/thread {groups_per_thread} dx"
                        );
                        assert_close(&what, &dx, &d.r.dx, 1e-5);
                    }
                }
            });
        });
    }

    #[test]
    fn flipped_input_grad_matches_direct_loops() {
        // The input gradient as a forward convolution of dy with the
        // flipped weight, on every SIMD path this CPU has: kernels 1..7
        // (square and not), dilation, every padding from 0 to d(k-1) in
        // some combination, C_in != C_out with C_in (the GEMM's rows)
        // ragged for both kernels' row tiles and widths ragged for their
        // panels, batch 1 and several, and chunking and grouping variants
        // on two threads, into dirty scratch buffers.
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
        let pool = thread_pool(2);
        let seeds = Seeds::new(21, 121, None, 321);
        for (case, item) in cases.iter().enumerate() {
            let weight = item.1;
            let Some(d) = case_data(case, item, seeds) else {
                continue; // an empty output (e.g. 7x7 dilated, unpadded)
            };
            let (g, w, dy) = (&d.g, &d.w, &d.dy);
            let flipped = flipped_geometry(g).expect("stride 1, padding <= d(k-1)");
            let pixels = g.in_h * g.in_w;
            let taps_row = weight[0] * weight[2] * weight[3] * g.in_w;
            simd::on_every_path(&pool, |path| {
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
                    // Winograd off: it ignores `limits`, and has its own
                    // tests (winograd.rs).
                    let dx = pool.install(|| {
                        poison_scratch(&pool, &[Slot::Staging, Slot::PackedLhs], 1 << 12);
                        input_grad_flipped_skipping(
                            dy,
                            w,
                            g,
                            &flipped,
                            limits,
                            Skip::Auto,
                            None,
                            Some(false),
                        )
                        .unwrap()
                    });
                    let what = format!("case {case} {g:?} {path:?} dx");
                    assert_close(&what, &dx, &d.r.dx, 1e-5);
                }
            });
        }
    }

    /// The flipped input gradient's rule ([`flip_input_grad`]) on every
    /// path this CPU runs: never on the portable path, always on AVX-512;
    /// on AVX2 small images always, larger ones where the flipped forward
    /// runs as a direct convolution (ResNet's 64@56 and 128@28) or through
    /// Winograd F(2x2, 3x3) (winograd.rs: 256@14 at batch 8 and 1), else
    /// col2im (256@14 at batch 1 with Winograd forced off); one image for
    /// two threads included (the direct convolution splits its rows).
    /// The rule reads FROSTGRAD_CONV_DX, FROSTGRAD_CONV_DIRECT and
    /// FROSTGRAD_CONV_WINOGRAD: the table below says what each of their
    /// modes must give, and the test asserts the one in effect (read
    /// through the same `env_switch::forced` as the code), so it checks
    /// something under every setting instead of skipping.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_flips_the_input_gradient_where_the_direct_convolution_takes_it() {
        use std::sync::OnceLock;
        static DX: OnceLock<Option<bool>> = OnceLock::new();
        static DIRECT: OnceLock<Option<bool>> = OnceLock::new();
        static WINOGRAD: OnceLock<Option<bool>> = OnceLock::new();
        let env = super::super::super::env_switch::forced;
        let dx = env(&DX, "FROSTGRAD_CONV_DX", "flip", "col2im");
        let direct = env(&DIRECT, "FROSTGRAD_CONV_DIRECT", "1", "0");
        let winograd = env(&WINOGRAD, "FROSTGRAD_CONV_WINOGRAD", "1", "0");
        // AVX2 is what this test is about; CI's machines all have it.
        assert!(
            simd::SimdPath::Avx2.is_supported() || std::env::var("CI").as_deref() != Ok("true"),
            "no AVX2 under CI=true: the AVX2 rule goes unchecked"
        );
        // (batch, channels, size; on AVX2: small enough to flip through
        // the im2col forward (FLIP_AVX2_MAX_PIXELS), direct by the rule,
        // direct where forced on (any channels), Winograd by the rule (at
        // least MIN_TILES 2x2 tiles)).
        let table = [
            (8, 64, 56, false, true, true, true),
            (8, 128, 28, false, true, true, true),
            (32, 64, 28, false, true, true, true),
            (8, 256, 14, false, false, true, true),
            (8, 512, 7, true, false, false, true),
            (1, 64, 56, false, true, true, true),
            (1, 128, 28, false, true, true, true),
            (1, 256, 14, false, false, true, true),
        ];
        let pool = thread_pool(2);
        simd::on_every_path(&pool, |path| {
            pool.install(|| {
                for (batch, c, size, small, by_rule, forced_on, tiles) in table {
                    let g = Conv2dGeometry::new(
                        [batch, c, size, size],
                        [c, c, 3, 3],
                        (1, 1),
                        (1, 1),
                        (1, 1),
                    )
                    .unwrap();
                    let flips = flip_input_grad(&g, &flipped_geometry(&g).unwrap());
                    let takes_direct = direct.map_or(by_rule, |on| on && forced_on);
                    // Forced on, F(2x2, 3x3) applies to every one of them.
                    let takes_winograd = winograd.unwrap_or(tiles);
                    let want = dx.unwrap_or(match path {
                        simd::SimdPath::Portable => false,
                        simd::SimdPath::Avx512 => true,
                        simd::SimdPath::Avx2 => small || takes_direct || takes_winograd,
                    });
                    assert_eq!(
                        flips, want,
                        "{path:?} {batch}x{c}@{size}: DX {dx:?}, DIRECT {direct:?}, \
                         WINOGRAD {winograd:?}"
                    );
                }
            });
        });
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
        assert!(
            flipped_geometry(&geo([1, 2, 9, 9], [2, 2, 3, 3], (2, 2), (1, 1), (1, 1))).is_none()
        );
        assert!(
            flipped_geometry(&geo([1, 2, 9, 9], [2, 2, 3, 3], (1, 1), (3, 1), (1, 1))).is_none()
        );
        assert!(
            flipped_geometry(&geo([1, 2, 3, 4], [3, 2, 1, 1], (1, 1), (1, 2), (1, 1))).is_none()
        );
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
        let pool = thread_pool(2);
        let seeds = Seeds::new(21, 120, None, 320);
        for_each_case(cases, seeds, |case, &(input, ..), d| {
            let (g, w, dy) = (&d.g, &d.w, &d.dy);
            assert!(pointwise_taps(g));
            let len = input.iter().product();
            for limits in col2im_limits() {
                let Limits {
                    block_elems,
                    min_columns,
                    groups_per_thread,
                    ..
                } = limits;
                for overwrite in [true, false] {
                    // A dirty buffer of dx's size for the pool to hand out.
                    poison_pooled(len);
                    let dx = pool
                        .install(|| input_grad_col2im(dy, w, g, limits, overwrite, true).unwrap());
                    let what = format!(
                        "case {case} blocks {block_elems} columns {min_columns} \
                         groups/thread {groups_per_thread} overwrite {overwrite} dx"
                    );
                    assert_close(&what, &dx, &d.r.dx, 1e-5);
                }
            }
        });
    }
}
