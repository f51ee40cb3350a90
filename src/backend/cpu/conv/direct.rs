//! The direct convolution: the forward (and flipped input gradient) of
//! small-channel layers without a column matrix.

use rayon::prelude::*;

use super::super::buffer_pool;
use super::super::scratch::{with_scratch, Slot};
use super::super::simd;
use super::columns::{transpose, transpose_raw};
use super::{checked_numel, part_per_thread, Plan, SharedOut};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// The most output channels for which a forward of whole images runs as a
/// direct convolution ([`forward_direct`]): there the weight is the
/// GEMM's small operand, and the im2col panels it packs are multiplied by
/// only `C_out` rows each, so packing them is a large share of the time
/// (3x3 64->64 at 28x28: 13 % of the samples next to the micro-kernel's
/// 71 %, `perf`, one thread). Measured (CPU time against the im2col GEMM,
/// AVX-512, 2 threads, BENCHMARKS.md issue 9 item 35): 3x3 64->64 at 28x28
/// (batch 32) 0.90x forward and input gradient, at 56x56 (batch 8) 0.89x
/// and 0.94x; 128->128 at 28x28 (batch 8) 0.92x and 0.95x. Wider: on AVX2
/// (Zen 2) with the walking kernel, 256->256 at 14x14, batch 8, took
/// 0.95-0.98x the im2col GEMM's time when timed alone, but 1.08x forward
/// when timed beside its own input and weight gradients, and a whole
/// training step's forward took ~3 ms longer (187-189 against 184-187 ms,
/// 3 alternating runs of `frostgrad bench`); so not taken (BENCHMARKS.md
/// issue 9 item 41).
const DIRECT_MAX_OUT_CHANNELS: usize = 128;

/// The most floats of a direct convolution's product block
/// ([`forward_direct`]: whole output rows x `C_out`), 256 KiB, so that it
/// stays in L2 next to the padded image and the weight panels while the
/// depth blocks accumulate into it (at 56x56 the whole image's product is
/// 784 KiB at 64 channels; large images would take their whole product
/// as scratch).
const DIRECT_BLOCK_ELEMS: usize = 1 << 16;

/// The micro-kernel panel width with which the forward of `g` (planned as
/// `plan`) runs as a direct convolution ([`forward_direct`]), or `None`:
/// on the AVX paths, for stride-1 kernels of more than one tap over whole
/// images one at a time (not the grouped small images, whose padding taps
/// the class order skips, except on AVX2 from [`DIRECT_MIN_GROUPED_PIXELS`]
/// up), and at most [`DIRECT_MAX_OUT_CHANNELS`] output channels, at any
/// batch: with fewer images than threads, [`forward_direct`] splits each
/// image's output rows across them. That split was measured at batch 1 on
/// two threads only (Zen 2, per layer at 1 x 224 against the im2col
/// forward and col2im input gradient it replaced, wall time: forward 3x3
/// 64@56 0.96x, 128@28 0.94x, flipped input gradient 0.79x and 0.91x;
/// commit a4d81a1, BENCHMARKS.md issue 9 item 45); with more threads (e.g.
/// batch 2-15 on 16) it is unmeasured. Not for an empty input (zero
/// height, width or batch). `force` (tests), else
/// `FROSTGRAD_CONV_DIRECT=0` never, `=1` wherever the path and shape allow
/// it, whatever the output channels (for comparison; `=1` also keeps the
/// stride-1 3x3 layers off Winograd unless `FROSTGRAD_CONV_WINOGRAD=1` is
/// set too, which then wins: `winograd::chosen`, asked first).
pub(super) fn direct_width(
    g: &Conv2dGeometry,
    plan: &Plan,
    force: Option<bool>,
) -> Option<DirectTile> {
    direct_width_in(g, plan, force.or_else(direct_mode))
}

/// `FROSTGRAD_CONV_DIRECT`: `Some(true)` at `1`, `Some(false)` at `0`,
/// else `None` (the rule), read once.
fn direct_mode() -> Option<bool> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    super::super::env_switch::forced(&MODE, "FROSTGRAD_CONV_DIRECT", "1", "0")
}

/// [`direct_width`] with the mode given (`None`: the rule), reading no
/// environment: a function of the mode, the SIMD path ([`simd::active`])
/// and the geometry alone, so its tests assert the same table whatever
/// `FROSTGRAD_CONV_DIRECT` is set to.
fn direct_width_in(g: &Conv2dGeometry, plan: &Plan, mode: Option<bool>) -> Option<DirectTile> {
    #[cfg(target_arch = "x86_64")]
    let tile = {
        let path = simd::active();
        let (mr, nr) = super::super::gemm::tile(path);
        (nr > 0).then_some(DirectTile { path, mr, nr })
    };
    // Elsewhere no micro-kernel: never (an `Option` rather than an early
    // return, so the checks below compile without warnings there too).
    #[cfg(not(target_arch = "x86_64"))]
    let tile: Option<DirectTile> = None;
    let tile = tile?;
    // Checked: a huge padding must fall back to the im2col path (which
    // reports it), not wrap here.
    let hp = g.in_h.checked_add(g.padding.0.checked_mul(2)?)?;
    let wp = g.in_w.checked_add(g.padding.1.checked_mul(2)?)?;
    let padded = hp.checked_mul(wp)?;
    let shape = g.stride == (1, 1)
        && g.kernel_h * g.kernel_w > 1
        && (plan.images_per_chunk == 1 || grouped_direct(tile, g))
        && plan.taps > 0
        && plan.pixels > 0
        && g.out_channels > 0
        // Not for an empty input (every window padding, or no image): its
        // chunks of zero floats per image or channel would panic below;
        // the im2col path gives the bias there.
        && g.in_h > 0
        && g.in_w > 0
        && g.batch > 0
        && u32::try_from(g.in_channels.checked_mul(padded)?).is_ok();
    let rule = g.out_channels <= DIRECT_MAX_OUT_CHANNELS;
    (shape && mode.unwrap_or(rule)).then_some(tile)
}

/// The fewest output pixels per image at which images small enough to be
/// grouped for the im2col GEMM (`Plan::images_per_chunk` > 1) still run
/// as a direct convolution, on the AVX2 path: the GEMM skips their padding
/// taps (`forward::skip_order`; 9 % of a 3x3 kernel's at 14x14, 18 % at 7x7),
/// which the direct convolution computes, but it packs no panels. At 3x3
/// 128->128, 14x14, batch 32 the direct convolution took 0.91x the CPU
/// time of the grouped GEMM forward, 0.92x input gradient (one thread,
/// Zen 2; BENCHMARKS.md). Smaller images were not measured, nor AVX-512.
const DIRECT_MIN_GROUPED_PIXELS: usize = 14 * 14;

/// Whether images that the im2col GEMM would group run as a direct
/// convolution ([`DIRECT_MIN_GROUPED_PIXELS`]).
fn grouped_direct(tile: DirectTile, g: &Conv2dGeometry) -> bool {
    tile.path == simd::SimdPath::Avx2 && g.out_h * g.out_w >= DIRECT_MIN_GROUPED_PIXELS
}

/// The SIMD path and micro-kernel tile one direct convolution runs with,
/// read once per call: the packing of the weight (`nr` wide), the prefetch
/// table (`mr` rows) and every worker's kernel must agree, even if the
/// process-wide path is switched (`simd::force`) while the call runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct DirectTile {
    path: simd::SimdPath,
    mr: usize,
    nr: usize,
}

/// The forward of every image as a direct convolution: each image's input
/// copied once into a zero-bordered plane per channel, which the
/// micro-kernels read where it lies as the left operand (output pixels as
/// rows, broadcast one at a time; depth `(c, kh, kw)` through a table of
/// offsets into the padded planes), against the weight as a right operand
/// packed once per call (`wt(o, c, t)` is output channel `o`, input
/// channel `c`, tap `t = kh * KW + kw`, i.e. depth `c * KH * KW + t`); the
/// `pixels x C_out` product, in blocks of whole output rows of at most
/// [`DIRECT_BLOCK_ELEMS`], is then transposed into the image's output.
/// What this saves is the im2col panels (`C_in * KH * KW` rows of every
/// pixel, packed per image); what it adds is the padded copy, the
/// transpose, and short tiles: one per output row whose width is not a
/// multiple of the kernel's rows, or on AVX2, whose tiles wrap from one
/// output row to the next (`microkernel::DirectTiles`), one per block of
/// rows. Only where [`direct_width`] says so.
pub(super) fn forward_direct(
    op: &'static str,
    x: &[f32],
    wt: impl Fn(usize, usize, usize) -> f32 + Sync,
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    tile: DirectTile,
) -> Result<Vec<f32>> {
    let DirectTile { path, mr, nr } = tile;
    let (k, n) = (g.in_channels * g.kernel_h * g.kernel_w, g.out_channels);
    let pixels = g.out_h * g.out_w;
    let (hp, wp) = (g.in_h + 2 * g.padding.0, g.in_w + 2 * g.padding.1);
    let plane = hp * wp;
    let in_image = g.in_channels * g.in_h * g.in_w;
    let out_image = n * pixels;
    // Output rows per block, as equal as the block size allows.
    let most = (DIRECT_BLOCK_ELEMS / (g.out_w * n).max(1)).clamp(1, g.out_h.max(1));
    let block_rows = g.out_h.div_ceil(g.out_h.div_ceil(most).max(1)).max(1);
    let mut y = buffer_pool::uninit(op, g.batch * out_image)?;
    let panels = n.div_ceil(nr);
    // The weight's floats with the output channels rounded up to whole
    // panels: up to `nr` times the weight, so checked. The other sizes
    // here are bounded by the geometry's checks: the padded planes fit u32
    // (`direct_width`), a block of output rows holds at most
    // `max(DIRECT_BLOCK_ELEMS, out_w * C_out)` floats, and `2 * k` is at
    // most twice the weight.
    let packed_len = checked_numel(op, &[panels, k, nr])?;
    with_scratch(Slot::PackedLhs, packed_len, |b| {
        // Panel jp, depth p = (c, t): output channels jp * nr.., zero past
        // n. Depth as (c, t) so that `wt` needs no division by the taps
        // (the flipped input gradient's did two per element: at 3x3
        // 128->128, 28x28, batch 1 its packing cost ~0.5 ms of 3.3, Zen 2).
        // Panels packed in parallel: serial, the packing of 3x3 128->128
        // (147 K strided reads) took ~2 % of the forward's CPU time at one
        // thread (`perf`, batch 8, Zen 2), ahead of the images' parallel
        // part (BENCHMARKS.md issue 9 item 41).
        let taps = g.kernel_h * g.kernel_w;
        b.par_chunks_exact_mut(k * nr)
            .enumerate()
            .for_each(|(jp, panel)| {
                let full = (jp + 1) * nr <= n;
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    let (c, t) = (p / taps, p % taps);
                    // A full 16-wide panel row (the AVX2 kernel's) as one
                    // fixed-size array: the loop unrolled, no bounds test
                    // or channel test per element.
                    if let (true, Ok(row)) = (full, <&mut [f32; 16]>::try_from(&mut *row)) {
                        *row = std::array::from_fn(|j| wt(jp * 16 + j, c, t));
                        continue;
                    }
                    for (j, v) in row.iter_mut().enumerate() {
                        let o = jp * nr + j;
                        *v = if o < n { wt(o, c, t) } else { 0.0 };
                    }
                }
            });
        let b = &*b;
        with_scratch(Slot::Tables, 2 * k, |buf| {
            // SAFETY: f32 and u32 have the same size and alignment and
            // every bit pattern is a valid u32; `buf` is borrowed mutably
            // for the tables' whole life.
            let tables = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u32>(), buf.len())
            };
            let (offsets, prefetch) = tables.split_at_mut(k);
            let taps = g.kernel_h * g.kernel_w;
            for (p, o) in offsets.iter_mut().enumerate() {
                let (c, t) = (p / taps, p % taps);
                let (kh, kw) = (t / g.kernel_w, t % g.kernel_w);
                // < in_channels * plane, which fits u32 (`direct_width`).
                *o = (c * plane + kh * g.dilation.0 * wp + kw * g.dilation.1) as u32;
            }
            // The prefetch table only for the kernels that read it (not
            // the AVX2 default tiles): otherwise left empty.
            #[cfg(target_arch = "x86_64")]
            let prefetch = if super::super::microkernel::direct_reads_prefetch(path) {
                super::super::microkernel::prefetch_table(offsets, 1, mr, prefetch);
                prefetch
            } else {
                &mut prefetch[..0]
            };
            let (offsets, prefetch) = (&*offsets, &*prefetch);
            // Read only by the x86_64 micro-kernel calls below.
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (mr, path, b, offsets, prefetch);
            // The product of output rows r0..r0 + rows (of an image whose
            // zero-bordered copy is `padded`) with the packed weight, into
            // `c` as rows * out_w rows of n.
            let product = |padded: &[f32], r0: usize, rows: usize, c: &mut [f32]| {
                debug_assert!(c.len() >= rows * g.out_w * n);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU supports `path` (the active path, read
                // once by `direct_width`, which only returns one with a
                // tile) and `b` was packed `nr` wide for that same path;
                // pixel (oh, ow) at depth (ch, kh, kw) reads padded row oh +
                // kh * d_h, column ow + kw * d_w of plane ch, inside
                // `padded` (one image's C_in padded planes) since the output
                // size leaves (out - 1) + d (k - 1) < the padded size (stride
                // 1) and r0 + rows <= out_h; the tables hold k entries, `b`
                // the panels, `c` at least rows * out_w rows of n (every
                // caller takes it `block_rows * out_w * n` long).
                unsafe {
                    super::super::microkernel::direct_rows(
                        path,
                        padded.as_ptr().add(r0 * wp),
                        (rows, g.out_w, wp, 1),
                        (offsets, prefetch),
                        b,
                        (k, n),
                        c.as_mut_ptr(),
                        n,
                    );
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (padded, r0, rows, c);
            };
            // Adds each output channel's bias to its plane of one image.
            let add_bias = |y: &mut [f32]| {
                if let Some(bias) = bias {
                    for (row, &bv) in y.chunks_exact_mut(pixels).zip(bias) {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
            };
            let image = |i: usize, y: &mut [f32]| {
                let x = &x[i * in_image..][..in_image];
                let block = block_rows * g.out_w * n;
                with_scratch(Slot::Staging, g.in_channels * plane + block, |buf| {
                    let (padded, c) = buf.split_at_mut(g.in_channels * plane);
                    pad_planes(x, g, padded);
                    for r0 in (0..g.out_h).step_by(block_rows) {
                        let rows = block_rows.min(g.out_h - r0);
                        product(padded, r0, rows, c);
                        let q = rows * g.out_w;
                        transpose(&c[..q * n], q, n, &mut y[r0 * g.out_w..], pixels);
                    }
                    add_bias(y);
                    Ok(())
                })
            };
            let threads = rayon::current_num_threads().max(1);
            if g.batch < threads {
                // Fewer images than threads (batch 1 on two): each image
                // padded once, in parallel by channels, then its output
                // rows split across the threads.
                let most = (DIRECT_BLOCK_ELEMS / (g.out_w * n).max(1)).max(1);
                let part_rows = g.out_h.div_ceil(threads);
                let block_rows = part_rows.div_ceil(part_rows.div_ceil(most).max(1)).max(1);
                let block = block_rows * g.out_w * n;
                return with_scratch(Slot::Staging, g.in_channels * plane, |padded| {
                    for (x, y) in x.chunks_exact(in_image).zip(y.chunks_exact_mut(out_image)) {
                        let per_task = g.in_channels.div_ceil(threads).max(1);
                        padded
                            .par_chunks_mut(per_task * plane)
                            .zip(x.par_chunks(per_task * g.in_h * g.in_w))
                            .for_each(|(padded, x)| pad_planes(x, g, padded));
                        let padded = &*padded;
                        let out = SharedOut(y.as_mut_ptr());
                        let parts = (0..threads)
                            .map(|t| (t * g.out_h / threads, (t + 1) * g.out_h / threads))
                            .collect();
                        part_per_thread(parts, |_, (lo, hi)| {
                            let out = &out;
                            with_scratch(Slot::Staging, block, |c| {
                                for r0 in (lo..hi).step_by(block_rows) {
                                    let rows = block_rows.min(hi - r0);
                                    product(padded, r0, rows, c);
                                    let q = rows * g.out_w;
                                    // SAFETY: this part writes output pixels
                                    // r0 * out_w..(r0 + rows) * out_w of every
                                    // channel plane of this image (inside
                                    // `y`, which outlives the broadcast);
                                    // the parts' row ranges are disjoint, so
                                    // no element is written by two threads,
                                    // and nothing reads `y` meanwhile.
                                    unsafe {
                                        transpose_raw(
                                            &c[..q * n],
                                            q,
                                            n,
                                            out.0.add(r0 * g.out_w),
                                            pixels,
                                        );
                                    }
                                }
                                Ok(())
                            })
                        })?;
                        add_bias(y);
                    }
                    Ok(())
                });
            }
            // Thread t of the pool runs images t * batch / threads.. of
            // the batch ([`part_per_thread`]), so each thread asks for the
            // same scratch in every call: handed out by work stealing, a
            // worker that had run no image of this layer in one step took
            // its first (and grew its buffer) in a later one, now and then
            // (`tests/cpu_buffer_pool.rs`, AVX2).
            let mut rest = &mut *y;
            let runs: Vec<(usize, &mut [f32])> = (0..threads)
                .map(|t| {
                    let (lo, hi) = (t * g.batch / threads, (t + 1) * g.batch / threads);
                    let (part, tail) =
                        std::mem::take(&mut rest).split_at_mut((hi - lo) * out_image);
                    rest = tail;
                    (lo, part)
                })
                .collect();
            part_per_thread(runs, |_, (first, y)| {
                for (j, y) in y.chunks_exact_mut(out_image).enumerate() {
                    image(first + j, y)?;
                }
                Ok(())
            })
        })
    })?;
    Ok(y)
}

/// Copies the `C_in` planes of one image `x` into `padded`, each inside a
/// border of `g.padding` zeros.
fn pad_planes(x: &[f32], g: &Conv2dGeometry, padded: &mut [f32]) {
    let (ph, pw) = g.padding;
    let wp = g.in_w + 2 * pw;
    let plane = (g.in_h + 2 * ph) * wp;
    for (src, dst) in x
        .chunks_exact(g.in_h * g.in_w)
        .zip(padded.chunks_exact_mut(plane))
    {
        dst[..ph * wp].fill(0.0);
        dst[(ph + g.in_h) * wp..].fill(0.0);
        for (r, row) in src.chunks_exact(g.in_w).enumerate() {
            let out = &mut dst[(ph + r) * wp..][..wp];
            let (left, rest) = out.split_at_mut(pw);
            let (mid, right) = rest.split_at_mut(g.in_w);
            left.iter_mut().for_each(|v| *v = 0.0);
            copy_short(row, mid);
            right.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// `dst.copy_from_slice(src)` for short rows, in fixed 8-float pieces
/// that compile to vector moves: `copy_from_slice` and `fill` of a
/// runtime length call libc's `memmove`/`memset`, three calls per row of
/// 14-56 floats in [`pad_planes`] (with them it took ~2 % of the direct
/// forward's samples at 3x3 128->128, 28x28, `perf`, Zen 2).
/// A tail of under 8 is copied as the last 8 (again over some already
/// copied), since a loop over it compiles to a `memcpy` call too.
fn copy_short(src: &[f32], dst: &mut [f32]) {
    let len = src.len().min(dst.len());
    let (src, dst) = (&src[..len], &mut dst[..len]);
    let copy8 = |d: &mut [f32], s: &[f32]| {
        if let (Ok(d), Ok(s)) = (<&mut [f32; 8]>::try_from(d), <&[f32; 8]>::try_from(s)) {
            *d = *s;
        }
    };
    if len < 8 {
        dst.copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        copy8(d, s);
    }
    if !len.is_multiple_of(8) {
        copy8(&mut dst[len - 8..], &src[len - 8..]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::{forward_skipping, Skip};
    use super::super::input_grad::{flipped_geometry, input_grad_flipped_skipping};
    use super::super::test_support::{
        assert_close, for_each_case, poison_scratch, thread_pool, Case, Seeds,
    };
    use super::super::{Limits, FORWARD_LIMITS};
    use super::*;

    #[test]
    fn direct_convolution_matches_direct_loops_on_every_path() {
        // The forward and the flipped input gradient as direct
        // convolutions (forced), against float64 loops, on every micro-
        // kernel path this CPU has: output channels ragged for both panel
        // widths (21, 40: AVX-512's narrow last panel; 29), rows not a multiple
        // of either kernel's tile (13, 5 and 2 wide: short tiles), depths
        // above one 256-deep block (30 x 9), 5x5 with padding 2, dilation
        // 2, a 3x2 kernel with padding on one axis only, no padding; batch
        // 1 and 3 on two threads, 1 and 2 on three, 1 to 3 on four; an
        // image in two blocks of output rows; into a dirty output scratch; the flipped input gradient checked
        // to take the direct path too. The rule: taken for ResNet's 3x3
        // 64->64 at 28x28, batch 32, 128->128, and 64->64 at 56x56, batch
        // 8; not for 256 output channels, grouped small images or a stride
        // of 2. Each case with the threads of its pool: the row split (fewer
        // images than threads) on 2, 3 and 4 threads.
        let cases: &[(Case, usize)] = &[
            (([3, 7, 9, 13], [21, 7, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            (([1, 30, 6, 5], [40, 30, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            (([3, 4, 9, 8], [5, 4, 5, 5], (1, 1), (2, 2), (1, 1)), 2),
            (([3, 3, 7, 9], [6, 3, 3, 3], (1, 1), (2, 2), (2, 2)), 2),
            (([3, 5, 6, 3], [9, 5, 3, 2], (1, 1), (1, 0), (1, 1)), 2),
            (([3, 6, 8, 8], [33, 6, 3, 3], (1, 1), (0, 0), (1, 1)), 2),
            // A last panel of 13 columns (29 = 16 + 13) for the AVX2
            // walking kernel's partial store; 1-pixel output rows.
            (([3, 5, 6, 7], [29, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            (([3, 4, 5, 1], [16, 4, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            // Two product blocks of 21 and 20 output rows (41 x 64 floats
            // per row against DIRECT_BLOCK_ELEMS).
            (([2, 3, 41, 41], [64, 3, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            // One image for two threads: its output rows split across them,
            // two blocks of 20 rows each (80 rows); rows 0..0 and 0..1 (one
            // output row: one thread without a part); 7 rows (3 and 4).
            (([1, 3, 80, 41], [64, 3, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            (([1, 4, 1, 7], [19, 4, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            (([1, 5, 7, 9], [16, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            // 81 rows: parts of 40 and 41 rows, each in two blocks with a
            // short last one (21 + 19, 21 + 20).
            (([1, 3, 81, 41], [64, 3, 3, 3], (1, 1), (1, 1), (1, 1)), 2),
            // Three threads: 7 rows in parts of 2, 2 and 3; batch 2 (the
            // loop over images, reusing the padded scratch and adding the
            // bias to each); 5 input channels padded in three chunks
            // (2, 2, 1).
            (([1, 5, 7, 9], [16, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 3),
            (([2, 5, 7, 9], [16, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 3),
            (([2, 4, 7, 6], [21, 4, 3, 3], (1, 1), (1, 1), (1, 1)), 3),
            // Four threads: 2 output rows (parts 0..0, 0..1, 1..1, 1..2:
            // two empty) at batch 1 and 2; batch 3; 5 input channels
            // padded in three chunks (2, 2, 1), 7 in four (2, 2, 2, 1);
            // 81 rows in four parts of 20-21 rows.
            (([1, 4, 2, 6], [19, 4, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
            (([2, 5, 2, 9], [16, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
            (([3, 5, 6, 7], [29, 5, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
            (([3, 7, 9, 5], [17, 7, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
            (([1, 3, 81, 41], [64, 3, 3, 3], (1, 1), (1, 1), (1, 1)), 4),
        ];
        // Pools of 0 (unused) to 4 threads, indexed by their threads.
        let pools: Vec<rayon::ThreadPool> = (0..=4).map(thread_pool).collect();
        let seeds = Seeds::new(51, 151, Some(251), 351);
        for_each_case(cases, seeds, |case, &(_, threads), d| {
            let pool = &pools[threads];
            let (g, x, w, b, dy) = (&d.g, &d.x, &d.w, &d.b, &d.dy);
            let flipped = flipped_geometry(g);
            simd::on_every_path(pool, |path| {
                let what = |k: &str| format!("case {case} {g:?} {threads} threads {path:?} {k}");
                let limits = Limits {
                    min_columns: 1,
                    ..FORWARD_LIMITS
                };
                let taken = pool.install(|| {
                    let plan = Plan::new("test", g, limits).unwrap();
                    direct_width(g, &plan, Some(true)).is_some()
                });
                assert_eq!(taken, path != simd::SimdPath::Portable, "{}", what("taken"));
                let y = pool.install(|| {
                    poison_scratch(pool, &[Slot::Staging], 1 << 14);
                    forward_skipping(x, w, Some(b), g, limits, Skip::Auto, Some(true)).unwrap()
                });
                assert_close(&what("y"), &y, &d.r.y, 1e-5);
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
                            dy,
                            w,
                            g,
                            flipped,
                            limits,
                            Skip::Auto,
                            Some(true),
                            None,
                        )
                        .unwrap()
                    });
                    assert_close(&what("dx"), &dx, &d.r.dx, 1e-5);
                }
            });
        });
        // Where the rule takes it: the table on each path (none on the
        // portable one, which has no micro-kernel), and what either forced
        // mode makes of it, whatever FROSTGRAD_CONV_DIRECT is set to.
        let geometry = |batch: usize, c: usize, size: usize, stride: usize| {
            let g = Conv2dGeometry::new(
                [batch, c, size, size],
                [c, c, 3, 3],
                (stride, stride),
                (1, 1),
                (1, 1),
            )
            .unwrap();
            let plan = Plan::new("test", &g, FORWARD_LIMITS).unwrap();
            (g, plan)
        };
        let resnet = |batch: usize, c: usize, size: usize, stride: usize, mode: Option<bool>| {
            let (g, plan) = geometry(batch, c, size, stride);
            direct_width_in(&g, &plan, mode).is_some()
        };
        // (batch, channels, size, stride, whether the rule takes it on the
        // micro-kernel paths).
        simd::on_every_path(&pools[2], |path| {
            let micro = path != simd::SimdPath::Portable;
            let table = [
                (32, 64, 28, 1, micro),
                (32, 128, 28, 1, micro),
                // 56x56 at batch 8 (a whole image per chunk only once the
                // image is split into blocks of output rows).
                (8, 64, 56, 1, micro),
                // Batch 1 on two threads: rows split across them.
                (1, 64, 56, 1, micro),
                (1, 128, 28, 1, micro),
                (1, 256, 14, 1, false),
                (32, 256, 28, 1, false),
                (32, 64, 7, 1, false),
                // 14x14 images, grouped for the im2col GEMM: direct on
                // AVX2 only (DIRECT_MIN_GROUPED_PIXELS).
                (32, 128, 14, 1, path == simd::SimdPath::Avx2),
                (32, 64, 28, 2, false),
            ];
            for (batch, c, size, stride, want) in table {
                let what = format!("{path:?} {batch}x{c}@{size} stride {stride}");
                pools[2].install(|| {
                    assert_eq!(resnet(batch, c, size, stride, None), want, "{what} rule");
                    assert!(!resnet(batch, c, size, stride, Some(false)), "{what} off");
                    // Forced on: every shape the path allows, whatever the
                    // channels (256 included); never stride 2, nor a grouped
                    // 7x7 or a portable path.
                    let allowed = micro
                        && stride == 1
                        && (size != 7 && (size != 14 || path == simd::SimdPath::Avx2)
                            || batch == 1);
                    assert_eq!(
                        resnet(batch, c, size, stride, Some(true)),
                        allowed,
                        "{what} on"
                    );
                    // The switch in effect, read once, gives what its mode does.
                    let (g, plan) = geometry(batch, c, size, stride);
                    assert_eq!(
                        direct_width(&g, &plan, None).is_some(),
                        resnet(batch, c, size, stride, direct_mode()),
                        "{what} FROSTGRAD_CONV_DIRECT={:?}",
                        std::env::var("FROSTGRAD_CONV_DIRECT").ok()
                    );
                });
            }
        });
    }
}
