//! The weight gradient tap by tap over small, padded images: each kernel
//! tap's GEMM over only the output pixels that see real input.

use super::super::buffer_pool;
use super::super::gemm::{sgemm, with_indexed_lhs, PackB, Par, Rhs, Source};
use super::super::scratch::{with_scratch, Slot};
use super::super::simd;
use super::columns::transpose;
use super::{
    batch_images, checked_numel, checked_sum, part_per_thread, unset_sum, valid_outputs, Beta,
    Limits, Plan, SharedOut,
};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// Output images up to this many pixels may take the weight gradient tap
/// by tap ([`by_classes`]): up to 20x20, ResNet's layer3 at 320x320 input
/// (3x3 256->256, 6.6 % padding), the largest size it was measured at: at
/// batch 4 it took 0.90x the CPU time of the column-matrix form at 2
/// threads, 0.94x at one (Zen 2, BENCHMARKS.md issue 9 item 40). Each
/// thread's channels-last copy of its channels of a block of images
/// together are as large as that block of `x`.
const CLASSES_MAX_PIXELS: usize = 400;

/// The fewest output pixels of a whole batch (a tap's GEMM depth, less its
/// padding) for [`by_classes`]: shallower, the nine products per call each
/// write all of their per-tap sums for little work, and those are reordered
/// into `dW` after. Measured again once the threads each wrote their own
/// columns of `dW` (BENCHMARKS.md issue 9 item 40; Zen 2, 2 threads,
/// build vs build, CPU time): at batch 1 x 224, 256->256 at 14x14 (196
/// pixels) 0.93x, but 512->512 at 7x7 (49) 1.16x; at batch 2, 512->512 at
/// 7x7 (98) 0.91x; at 2 x 112, 256->256 at 7x7 (98) 0.85x; at 8 x 112 the
/// 4x4 stage (128) 0.79-0.82x (one thread 0.73-0.84x); at batch 4, 512->512
/// at 7x7 (196) 0.91x. (Before, with the reorder on one thread, the bound
/// was 256: batch 1 at 7x7 took 2.0x, batch 2 1.47x, 8 x 112's 4x4 stage
/// 1.33x.)
const CLASSES_MIN_DEPTH: usize = 96;

/// Whether the weight gradient runs tap by tap ([`weight_grad_classes`]):
/// kernels of more than one tap over small output images
/// ([`CLASSES_MAX_PIXELS`]) with at least 32 input channels (one
/// AVX-512 panel), where at least an eighth of the column matrix is
/// padding, or, for stride 1 and at least 256 input channels, a sixteenth;
/// on the AVX paths; never with `FROSTGRAD_DW_CLASSES=0` (for comparison).
///
/// Measured on Zen 4, batch 32 at 112x112 (BENCHMARKS.md issue 9 item 31),
/// CPU time against the column-matrix form: 3x3 512->512 at 4x4 (31 %
/// padding) and 256->512 stride 2 to 4x4 (31 %) 0.82x, 256->256 at 7x7
/// (18 %) 0.80x, but 128->256 stride 2 to 7x7 (9 %) 1.07x; on the AVX2
/// path 0.70x, 0.74x (and 512->512 at 7x7, batch 8: 0.87x). The portable
/// path, which writes each tap's operands out for `matrixmultiply`, ranged
/// from 0.84x to 1.18x (noisy): it keeps the column-matrix form. At batch
/// 8 x 224 (load 7.7): 256->256 at 14x14 (9 %) 0.86-0.88x in two runs
/// (where skipped packing adds to skipped padding), but the stride-2
/// layers to 7x7 (9 %) 1.01-1.04x, 128->128 at 28x28 (5 %, shifted form)
/// 0.96x and 64->64 at 56x56 (2 %) 1.09x.
pub(super) fn by_classes(g: &Conv2dGeometry) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = super::super::env_switch::on_unless_zero(&ENABLED, "FROSTGRAD_DW_CLASSES");
    if !enabled
        || simd::active() == simd::SimdPath::Portable
        || g.kernel_h * g.kernel_w < 2
        || g.out_h * g.out_w > CLASSES_MAX_PIXELS
        || g.batch * g.out_h * g.out_w < CLASSES_MIN_DEPTH
        || g.in_channels < 32
    {
        return false;
    }
    // Products with a real input pixel, of all kernel taps x output pixels.
    let valid = |out: usize, input: usize, stride: usize, k: usize, d: usize, pad: usize| {
        (0..k)
            .map(|t| {
                let (lo, hi) = valid_outputs(out, input, stride, t * d, pad);
                hi - lo
            })
            .sum::<usize>()
    };
    let rows = valid(
        g.out_h,
        g.in_h,
        g.stride.0,
        g.kernel_h,
        g.dilation.0,
        g.padding.0,
    );
    let cols = valid(
        g.out_w,
        g.in_w,
        g.stride.1,
        g.kernel_w,
        g.dilation.1,
        g.padding.1,
    );
    let all = g.kernel_h * g.out_h * g.kernel_w * g.out_w;
    let padding = all - rows * cols;
    8 * padding >= all || (g.stride == (1, 1) && g.in_channels >= 256 && 16 * padding >= all)
}

/// The weight gradient one tap `(kh, kw)` at a time, over only the output
/// pixels where that tap sees a real input pixel:
///
/// `dW[:, :, kh, kw] = Σ_{valid p} dy[:, p] · x(kh, kw)[:, p]ᵀ`
///
/// (`[C_out, C_in]`, depth = the valid output pixels of every image). The
/// column matrix multiplies the padding's zeros too: at ResNet's 4x4 stage
/// 31 % of a 3x3 kernel's products (7x7: 18 %). Here each tap's depth is a
/// rectangle of output pixels per image; `dy` is read where it lies through
/// a table of those pixels (`gemm::with_indexed_lhs`) and `x`, transposed
/// to channels-last, gives each depth row as consecutive floats
/// ([`TapRows`]), so packing is a copy.
///
/// Parallelism: thread `t` of the pool ([`part_per_thread`]) takes whole
/// column panels of every tap (input channels `c0..c1`,
/// [`tap_column_parts`]) over all images: it transposes those channels of
/// the images itself (in blocks of at most `limits.block_elems` floats of
/// `x` and at least one image, every block after the first adding onto its per-tap sums, see
/// [`Beta`]), multiplies, and writes those columns of `dW` in their final
/// `[C_out, C_in, KH, KW]` order. So each thread owns a disjoint part of
/// `dW` and reads only the part of `x` it transposed: one parallel call, no
/// partial sums, and no pass left to one thread.
///
/// Why: as image groups (each thread a partial sum of all per-tap blocks
/// over its images, the partials then added and the blocks reordered into
/// `dW` on the calling thread alone), ResNet's 3x3 256->256 weight gradient
/// at 14x14 spent ~7 % of its wall time in that reorder with both workers
/// idle, and layer4's 512->512 at 7x7 (split GEMMs, one per tap, each its
/// own fork-join) transposed `x` and reordered its 9 MiB `dW` on one thread
/// (`perf record -e cpu-clock`, batch 8 x 224, 2 threads, Zen 2;
/// BENCHMARKS.md issue 9 item 40).
pub(super) fn weight_grad_classes(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    let op = "conv2d_weight_grad";
    let plan = Plan::new(op, g, limits)?;
    let (c_out, c_in, taps) = (g.out_channels, g.in_channels, g.kernel_h * g.kernel_w);
    let plane = g.in_h * g.in_w;
    let mut dw = unset_sum(op, taps * c_out * c_in)?;
    if g.batch * plan.pixels == 0 || dw.is_empty() || plane == 0 {
        dw.fill(0.0);
        return Ok(dw);
    }
    let images = (limits.block_elems / plan.in_image).clamp(1, g.batch);
    let tables = TapTables::new(op, g, &plan, images)?;
    // Thread t's per-tap sums, `[KH * KW, C_out, c1 - c0]`, side by side.
    let mut by_tap = unset_sum(op, taps * c_out * c_in)?;
    let mut pieces = vec![];
    let mut rest = &mut by_tap[..];
    for (c0, c1) in tap_column_parts(c_in, rayon::current_num_threads()) {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(taps * c_out * (c1 - c0));
        pieces.push(((c0, c1), piece));
        rest = tail;
    }
    let dw_out = SharedOut(dw.as_mut_ptr());
    part_per_thread(pieces, |_, ((c0, c1), sums)| {
        let width = c1 - c0;
        if width == 0 {
            return Ok(());
        }
        // (`width` channels of `images` images: within the input.)
        with_scratch(Slot::Staging, images * plane * width, |xt| {
            for first in (0..g.batch).step_by(images) {
                let count = images.min(g.batch - first);
                // Channels c0..c1, last: xt[(n * H * W + pixel) * width + c - c0].
                let x = batch_images(x, plan.in_image, first, count);
                for (image, t) in x
                    .chunks_exact(plan.in_image)
                    .zip(xt.chunks_exact_mut(plane * width))
                {
                    transpose(&image[c0 * plane..c1 * plane], width, plane, t, width);
                }
                let dy = batch_images(dy, plan.out_image, first, count);
                let xt = &xt[..count * plane * width];
                let beta = if first == 0 { 0.0 } else { 1.0 };
                weight_grad_tap_columns(dy, xt, g, &plan, &tables, sums, (count, width), beta)?;
            }
            Ok(())
        })?;
        // SAFETY: `dw` outlives this call and nothing else touches it
        // meanwhile; each thread writes the elements of its own input
        // channels c0..c1 (disjoint: `tap_column_parts`) of each row.
        unsafe { reorder_tap_columns(sums, g, (c0, c1), &dw_out) };
        Ok(())
    })?;
    tables.recycle();
    buffer_pool::recycle(by_tap);
    Ok(dw)
}

/// The input channels of [`weight_grad_classes`]'s parts, one per thread:
/// whole column panels of the micro-kernel (the last part may end in a
/// partial one), as equal as whole panels allow; empty parts where there
/// are fewer panels than threads.
fn tap_column_parts(c_in: usize, threads: usize) -> Vec<(usize, usize)> {
    let align = tap_column_align();
    let units = c_in.div_ceil(align);
    let threads = threads.max(1);
    let bound = |t: usize| (t * units / threads * align).min(c_in);
    (0..threads).map(|t| (bound(t), bound(t + 1))).collect()
}

/// The micro-kernel's panel width on the active path (16 elsewhere: the
/// tap-by-tap form runs on the AVX paths only, [`by_classes`]).
fn tap_column_align() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let (_, nr) = super::super::gemm::tile(simd::active());
        if nr > 0 {
            return nr;
        }
    }
    16
}

/// Per tap, for up to `images` images, the offsets of the depth rows of
/// [`weight_grad_classes`]: of `dy`'s pixel (`n * C_out * OH * OW + oh * OW
/// + ow`, the left operand's table) and of `x`'s pixel (`n * H * W + ih * W
/// + iw`, the channels-last row [`TapRows`] copies). Built once per call,
/// without a division per row, and shared by every thread (each had built
/// the left operand's offsets itself, four divisions per row, ~2 % of the
/// samples at 256->256 @14, `perf`). The rows of the first `n` images are
/// the first `n * rows` entries of a tap's table, whatever block of images.
struct TapTables {
    /// Per tap: where its entries start and how many it has per image.
    taps: Vec<(usize, usize)>,
    /// The `dy` offsets of all taps, then the `x` offsets of all taps.
    data: Vec<i64>,
}

impl TapTables {
    fn new(op: &'static str, g: &Conv2dGeometry, plan: &Plan, images: usize) -> Result<Self> {
        let mut taps = Vec::with_capacity(g.kernel_h * g.kernel_w);
        let mut total = 0;
        for kh in 0..g.kernel_h {
            let h = valid_outputs(g.out_h, g.in_h, g.stride.0, kh * g.dilation.0, g.padding.0);
            for kw in 0..g.kernel_w {
                let w = valid_outputs(g.out_w, g.in_w, g.stride.1, kw * g.dilation.1, g.padding.1);
                // (Within an output plane, checked at entry.)
                let rows = (h.1 - h.0) * (w.1 - w.0);
                taps.push((total, rows));
                // The valid pixels of every tap and image: up to `KH * KW`
                // times the images' output pixels, so checked (once per
                // tap, not per element).
                total = checked_numel(op, &[images, rows])
                    .and_then(|more| checked_sum(op, &[total, more]))?;
            }
        }
        let mut data = buffer_pool::uninit::<i64>(op, checked_numel(op, &[2, total])?)?;
        let (dy_at, x_at) = data.split_at_mut(total);
        let mut i = 0;
        for kh in 0..g.kernel_h {
            let h = valid_outputs(g.out_h, g.in_h, g.stride.0, kh * g.dilation.0, g.padding.0);
            for kw in 0..g.kernel_w {
                let w = valid_outputs(g.out_w, g.in_w, g.stride.1, kw * g.dilation.1, g.padding.1);
                for n in 0..images {
                    for oh in h.0..h.1 {
                        let ih = oh * g.stride.0 + kh * g.dilation.0 - g.padding.0;
                        for ow in w.0..w.1 {
                            let iw = ow * g.stride.1 + kw * g.dilation.1 - g.padding.1;
                            dy_at[i] = (n * plan.out_image + oh * g.out_w + ow) as i64;
                            x_at[i] = ((n * g.in_h + ih) * g.in_w + iw) as i64;
                            i += 1;
                        }
                    }
                }
            }
        }
        debug_assert_eq!(i, total);
        Ok(Self { taps, data })
    }

    /// Tap `t`'s `dy` and `x` offsets for the first `images` images.
    fn tap(&self, t: usize, images: usize) -> (&[i64], &[i64]) {
        let (start, rows) = self.taps[t];
        let total = self.data.len() / 2;
        let len = images * rows;
        (
            &self.data[start..start + len],
            &self.data[total + start..total + start + len],
        )
    }

    fn recycle(self) {
        buffer_pool::recycle(self.data);
    }
}

/// One part of [`weight_grad_classes`]: input channels `c0..c1` (`width`
/// of them) of every tap's sum over `batch` images, from those channels of
/// the images, channels-last (`xt`), into `sums` (`[KH * KW, C_out,
/// width]`; overwritten with `beta` 0, see [`Beta`]).
#[allow(clippy::too_many_arguments)]
fn weight_grad_tap_columns(
    dy: &[f32],
    xt: &[f32],
    g: &Conv2dGeometry,
    plan: &Plan,
    tables: &TapTables,
    sums: &mut [f32],
    (batch, width): (usize, usize),
    beta: Beta,
) -> Result<()> {
    let c_out = g.out_channels;
    let block = c_out * width;
    for (t, out) in sums
        .chunks_exact_mut(block.max(1))
        .take(g.kernel_h * g.kernel_w)
        .enumerate()
    {
        let (dy_at, x_at) = tables.tap(t, batch);
        let depth = dy_at.len();
        if depth == 0 {
            if beta == 0.0 {
                out.fill(0.0);
            }
            continue;
        }
        let rows = TapRows::new(xt, x_at, width);
        with_indexed_lhs(
            dy,
            plan.pixels,
            (c_out, depth),
            |p| dy_at[p] as usize,
            |a| {
                sgemm(
                    Par::Serial,
                    c_out,
                    depth,
                    width,
                    a,
                    Rhs::Source(&rows),
                    beta,
                    out,
                    width,
                )
            },
        )?;
    }
    Ok(())
}

/// Writes input channels `c0..c1` of `dW` (`[C_out, C_in, KH, KW]`) from
/// one part's per-tap sums (`[KH * KW, C_out, c1 - c0]`): for each output
/// channel one contiguous run of `dW`, filled tap by tap from sequential
/// reads while it stays in L1.
///
/// # Safety
/// `dw` points at `C_out * C_in * KH * KW` writable floats that no other
/// thread reads or writes in input channels `c0..c1` meanwhile.
unsafe fn reorder_tap_columns(
    sums: &[f32],
    g: &Conv2dGeometry,
    (c0, c1): (usize, usize),
    dw: &SharedOut,
) {
    let (c_out, c_in, taps) = (g.out_channels, g.in_channels, g.kernel_h * g.kernel_w);
    let width = c1 - c0;
    let block = c_out * width;
    assert!(c0 <= c1 && c1 <= c_in && sums.len() >= taps * block);
    if width == 0 {
        return;
    }
    // The AVX transpose where the active path is a SIMD one (looked up once
    // per call; a forced `portable` path runs the scalar form).
    let avx = simd::active() != simd::SimdPath::Portable && simd::SimdPath::Avx2.is_supported();
    for o in 0..c_out {
        // SAFETY: the run lies inside dW (o < C_out, c1 <= C_in) and is
        // this thread's alone (the caller's contract).
        let row = unsafe {
            std::slice::from_raw_parts_mut(dw.0.add((o * c_in + c0) * taps), width * taps)
        };
        let sums = &sums[o * width..];
        match taps {
            9 => interleave_taps::<9>(sums, block, row, avx),
            _ => {
                for (c, d) in row.chunks_exact_mut(taps).enumerate() {
                    for (t, d) in d.iter_mut().enumerate() {
                        *d = sums[t * block + c];
                    }
                }
            }
        }
    }
}

/// `row[c * T + t] = sums[t * block + c]`: one output channel's run of
/// [`reorder_tap_columns`] with the tap count a constant (3x3 kernels), so
/// the `T` reads per element are fixed offsets (a loop over taps with
/// strided stores took 1.2x the samples of this pass at 3x3 512->512 @7,
/// `perf`, one thread).
///
/// `avx`: the CPU has AVX and the active path is not `portable`.
fn interleave_taps<const T: usize>(sums: &[f32], block: usize, row: &mut [f32], avx: bool) {
    let width = row.len() / T;
    let from: [&[f32]; T] = std::array::from_fn(|t| &sums[t * block..][..width]);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if T == 9 && avx {
        let nine: &[&[f32]; 9] = from[..].try_into().expect("9 taps");
        // SAFETY: AVX is there (`avx`: AVX2 is supported, and every AVX2
        // CPU has AVX); each of `nine`
        // holds `width` floats and `row` 9 * `width`.
        done = unsafe { interleave_nine_avx(nine, row) };
    }
    for (c, d) in row.chunks_exact_mut(T).enumerate().skip(done) {
        let d: &mut [f32; T] = d.try_into().expect("T floats");
        for (t, d) in d.iter_mut().enumerate() {
            *d = from[t][c];
        }
    }
}

/// [`interleave_taps`] for 3x3 kernels, 8 input channels at a time: an
/// 8x8 transpose of taps 0-7 in registers, stored as 8-float rows 9 apart,
/// and tap 8 written beside each. Returns how many channels it wrote (a
/// multiple of 8; the caller writes the rest). The scalar form, ~2 cycles
/// an element, took 6 % of the samples of 3x3 512->512 @7 at 2 threads
/// (`perf`, Zen 2; BENCHMARKS.md issue 9 item 40).
///
/// # Safety
/// The CPU has AVX; every `from[t]` holds `row.len() / 9` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn interleave_nine_avx(from: &[&[f32]; 9], row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let width = row.len() / 9;
    assert!(from.iter().all(|f| f.len() >= width));
    let whole = width - width % 8;
    for c in (0..whole).step_by(8) {
        // SAFETY: c + 8 <= width floats of each tap (asserted above); the 72
        // floats at 9 * c lie inside `row` (9 * (c + 8) <= row.len()).
        unsafe {
            let r = |t: usize| _mm256_loadu_ps(from[t].as_ptr().add(c));
            // Channel k's taps 0-7 (the CPU has AVX: this function's
            // contract).
            let u = crate::backend::cpu::simd::transpose8x8_avx(std::array::from_fn(r));
            let out = row.as_mut_ptr().add(9 * c);
            for (k, &u) in u.iter().enumerate() {
                _mm256_storeu_ps(out.add(9 * k), u);
                *out.add(9 * k + 8) = *from[8].as_ptr().add(c + k);
            }
        }
    }
    whole
}

/// The right operand of one tap of [`weight_grad_classes`]: `[depth,
/// width]`, row `p` = the input pixel `at[p]` (`width` channels) of
/// channels-last images `xt`: the pixel the tap sees at the `p`-th output
/// pixel of its valid rectangle, image by image ([`TapTables`]).
struct TapRows<'a> {
    xt: &'a [f32],
    at: &'a [i64],
    width: usize,
}

impl<'a> TapRows<'a> {
    fn new(xt: &'a [f32], at: &'a [i64], width: usize) -> Self {
        let fits = at.iter().all(|&a| {
            (a as usize)
                .checked_add(1)
                .and_then(|e| e.checked_mul(width))
                .is_some_and(|e| e <= xt.len())
        });
        assert!(fits, "tap rows outside the images");
        Self { xt, at, width }
    }

    /// Depth row `p`: the channels-last input pixel it reads.
    fn row(&self, p: usize) -> &[f32] {
        &self.xt[self.at[p] as usize * self.width..][..self.width]
    }

    /// [`PackB::pack`] with the panel width a constant, so that a whole
    /// panel row is a few vector moves rather than a `memcpy` call.
    fn pack_panels<const NR: usize>(
        &self,
        pc: usize,
        kc: usize,
        jc: usize,
        nc: usize,
        out: &mut [f32],
    ) {
        let panel = kc * NR;
        for p in 0..kc {
            let row = &self.row(pc + p)[jc..jc + nc];
            let mut whole = row.chunks_exact(NR);
            for (q, values) in whole.by_ref().enumerate() {
                let dst: &mut [f32; NR] = (&mut out[q * panel + p * NR..][..NR])
                    .try_into()
                    .expect("NR floats");
                *dst = values.try_into().expect("NR floats");
            }
            let values = whole.remainder();
            if !values.is_empty() {
                let dst = &mut out[nc / NR * panel + p * NR..][..NR];
                dst[..values.len()].copy_from_slice(values);
                dst[values.len()..].fill(0.0);
            }
        }
    }
}

impl PackB for TapRows<'_> {
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize, out: &mut [f32]) {
        assert!(pc + kc <= self.at.len() && jc + nc <= self.width && nr > 0);
        match nr {
            16 => return self.pack_panels::<16>(pc, kc, jc, nc, out),
            32 => return self.pack_panels::<32>(pc, kc, jc, nc, out),
            _ => {}
        }
        let panel = kc * nr;
        for p in 0..kc {
            let row = &self.row(pc + p)[jc..jc + nc];
            for (q, values) in row.chunks(nr).enumerate() {
                let dst = &mut out[q * panel + p * nr..][..nr];
                dst[..values.len()].copy_from_slice(values);
                dst[values.len()..].fill(0.0);
            }
        }
    }
}

impl Source for TapRows<'_> {
    fn shape(&self) -> (usize, usize) {
        (self.at.len(), self.width)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_close, for_each_case, thread_pool, Case, Seeds};
    use super::super::weight_grad::weight_grad_with;
    use super::super::LIMITS;
    use super::*;

    #[test]
    fn tap_by_tap_weight_grad_matches_direct_loops_with_many_channels() {
        // More input channels than one panel (ragged at 40), strides 1 and
        // 2, against the float64 loops; the default limits and one group
        // per thread, on a 2-thread pool: parallel image groups, split
        // GEMMs, and (one 16x16 image) output rows split across threads,
        // on every SIMD path this CPU has.
        let pool = thread_pool(2);
        let cases: Vec<Case> = [([3, 40, 4, 5], 1), ([2, 40, 7, 7], 2), ([1, 40, 16, 16], 1)]
            .map(|(input, s)| (input, [33, input[1], 3, 3], (s, s), (1, 1), (1, 1)))
            .into();
        let seeds = Seeds::new(31, 41, None, 51);
        for_each_case(&cases, seeds, |case, _, d| {
            let (g, x, dy, r) = (&d.g, &d.x, &d.dy, &d.r);
            // None is chosen (the 16x16 image is too large, the others'
            // batches have too few output pixels, CLASSES_MIN_DEPTH), but
            // each is correct.
            simd::on_every_path(&pool, |path| {
                assert!(!by_classes(g), "{g:?} {path:?}");
                for limits in [
                    LIMITS,
                    Limits {
                        min_columns: 1,
                        groups_per_thread: 1,
                        ..LIMITS
                    },
                ] {
                    let plan = Plan::new("test", g, limits).unwrap();
                    let split_rows = pool.install(|| plan.row_groups(g));
                    assert_eq!(split_rows, case == 2 && limits.groups_per_thread == 1);
                    let dw = pool.install(|| weight_grad_classes(dy, x, g, limits).unwrap());
                    assert_close(&format!("case {case} {path:?}"), &dw, &r.dw, 1e-5);
                    let dw = pool.install(|| weight_grad_with(dy, x, g, limits).unwrap());
                    assert_close(&format!("case {case} {path:?} chosen"), &dw, &r.dw, 1e-5);
                }
            });
            // The packed right operand at column offsets and ragged widths.
            let xt: Vec<f32> = (0..g.batch)
                .flat_map(|n| {
                    let plane = g.in_h * g.in_w;
                    let image = &x[n * g.in_channels * plane..][..g.in_channels * plane];
                    (0..plane)
                        .flat_map(move |q| (0..g.in_channels).map(move |c| image[c * plane + q]))
                })
                .collect();
            let plan = Plan::new("test", g, LIMITS).unwrap();
            let tables = TapTables::new("test", g, &plan, g.batch).unwrap();
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
        });
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
        // an element no part writes fails. On every SIMD path this CPU has
        // (the parts follow its panel width).
        let cases: &[Case] = &[
            ([3, 40, 5, 4], [33, 40, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([2, 72, 7, 7], [17, 72, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([2, 32, 6, 6], [9, 32, 3, 3], (1, 1), (2, 2), (2, 2)),
            ([3, 48, 4, 5], [5, 48, 3, 2], (1, 1), (1, 0), (1, 1)),
            ([4, 33, 1, 1], [6, 33, 3, 3], (1, 1), (1, 1), (1, 1)),
        ];
        let seeds = Seeds::new(61, 71, None, 81);
        for_each_case(cases, seeds, |case, &(input, ..), d| {
            let (g, x, dy, r) = (&d.g, &d.x, &d.dy, &d.r);
            for threads in 1..=5 {
                let pool = thread_pool(threads);
                simd::on_every_path(&pool, |path| {
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
                        let dw = pool.install(|| weight_grad_classes(dy, x, g, limits).unwrap());
                        let what =
                            format!("case {case} {path:?} threads {threads} block {block_elems}");
                        assert_close(&what, &dw, &r.dw, 1e-5);
                    }
                });
            }
        });
    }

    #[test]
    fn tap_by_tap_weight_grad_is_taken_where_padding_is_an_eighth() {
        let geo = |input: [usize; 4], c_out, k, stride, padding| {
            let weight = [c_out, input[1], k, k];
            Conv2dGeometry::new(input, weight, (stride, stride), (padding, padding), (1, 1))
                .unwrap()
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
}
