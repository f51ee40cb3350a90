//! The column matrix without storing it: [`Columns`] packs the GEMM's
//! panels straight from the images (im2col), plus the gathers and
//! transposes its packing and the staging buffers use.

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;

use super::super::gemm::{panels, PackB, Source};
use super::super::im2col;
use super::super::scratch::{reserve_list, with_scratch, Slot};
use super::super::simd;
use super::super::tap_classes::ClassOrder;
use super::{valid_outputs, Chunk, Plan};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// Where tap `(kh, kw)` reads for output rows `rows` of one image plane:
/// calls `visit(out_row_index_in_block, in_row, ow_lo, ow_hi, iw_lo)` for
/// every output row that sees a real input row; output columns
/// `ow_lo..ow_hi` read input columns `iw_lo, iw_lo + stride_w, ...`.
/// Rows and columns outside those ranges see padding.
pub(super) fn for_each_tap_row(
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

/// Splits a column-matrix row index into `(channel, kh, kw)`.
fn tap(g: &Conv2dGeometry, r: usize) -> (usize, usize, usize) {
    let per_channel = g.kernel_h * g.kernel_w;
    (
        r / per_channel,
        (r % per_channel) / g.kernel_w,
        r % g.kernel_w,
    )
}

/// The chunk's column matrix `col[taps, columns]` (or its transpose), never
/// stored: it packs the GEMM's panels straight from the images, so the
/// gathered values are written once, into the panel the micro-kernel
/// reads, instead of into a column matrix that the GEMM copies again.
pub(super) struct Columns<'a> {
    images: &'a [f32],
    g: &'a Conv2dGeometry,
    in_image: usize,
    taps: usize,
    chunk: Chunk,
    /// `col` is the GEMM's left-to-right operand `[taps, columns]` (the
    /// forward), or its transpose `[columns, taps]` (the weight gradient).
    transposed: bool,
    /// The SIMD path whose fills pack (the GEMM's, [`simd::active`]; tests
    /// set each path the CPU supports).
    path: simd::SimdPath,
    /// The forward's columns in class order, so that the GEMM skips the
    /// padding taps ([`ClassOrder`]; `None`: image by image, row by row).
    order: Option<ClassOrder>,
}

/// A run of consecutive columns of the column matrix that lie in one
/// output row of one image.
#[derive(Clone, Copy)]
struct Run {
    image: usize,
    oh: usize,
    ow: usize,
    len: usize,
}

impl<'a> Columns<'a> {
    pub(super) fn new(
        images: &'a [f32],
        g: &'a Conv2dGeometry,
        plan: &Plan,
        chunk: Chunk,
        transposed: bool,
    ) -> Self {
        // The vector fills read through raw pointers: every pixel a tap
        // sees lies in the chunk's images, which must all be here.
        assert!(images.len() >= chunk.images * plan.in_image);
        Self {
            images,
            g,
            in_image: plan.in_image,
            taps: plan.taps,
            chunk,
            transposed,
            path: simd::active(),
            order: None,
        }
    }

    /// The same columns in `order` (whole images only, not transposed).
    pub(super) fn ordered(self, order: Option<ClassOrder>) -> Self {
        let order = order.filter(|_| !self.transposed && self.chunk.rows == (0, self.g.out_h));
        Self { order, ..self }
    }

    /// Where column-matrix row `r`, tap `(c, kh, kw)`, reads.
    fn tap_read(&self, r: usize) -> im2col::Tap {
        let (c, kh, kw) = tap(self.g, r);
        im2col::Tap::new(self.g, c, kh, kw)
    }

    /// `run` in the chunk's images, as [`im2col::fill_taps`] takes it.
    fn run_at(&self, run: Run) -> im2col::Run {
        im2col::Run::new(self.g, self.in_image, run.image, run.oh, run.ow, run.len)
    }

    /// The runs of columns `j0..j0 + count`, each with its offset from
    /// `j0`, appended to `runs`.
    fn runs(&self, j0: usize, count: usize, runs: &mut Vec<(usize, Run)>) {
        let (g, rows) = (self.g, self.chunk.rows);
        if count == 0 || g.out_w == 0 {
            return;
        }
        if let Some(order) = &self.order {
            order.pieces(j0, count, |off, image, oh, ow, len, _| {
                runs.push((off, Run { image, oh, ow, len }))
            });
            return;
        }
        let seg = self.chunk.image_columns(g);
        let (mut image, q) = (j0 / seg, j0 % seg);
        let (mut oh, mut ow) = (rows.0 + q / g.out_w, q % g.out_w);
        let mut done = 0;
        while done < count {
            let len = (g.out_w - ow).min(count - done);
            runs.push((done, Run { image, oh, ow, len }));
            done += len;
            ow += len;
            if ow == g.out_w {
                ow = 0;
                oh += 1;
                if oh == rows.1 {
                    oh = rows.0;
                    image += 1;
                }
            }
        }
    }
}

impl PackB for Columns<'_> {
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize, out: &mut [f32]) {
        // The fills below index `images` through raw pointers from tap and
        // run numbers: check the caller's promise that they are in range.
        let (depth, width) = self.shape();
        assert!(pc + kc <= depth && jc + nc <= width && nr > 0);
        let (path, geo) = (self.path, im2col::Geometry::new(self.g));
        // Reused per thread: a steady-state step allocates nothing. Room
        // for the largest block (KC deep, NR <= 32 wide) from the first use
        // on, so that the lists never grow in a later step on a thread that
        // rayon first hands a larger part then (issue 9, BENCHMARKS.md item 16).
        let mut temp = PACK_TEMP.with(Cell::take);
        let (items, rows_len) = pack_room(kc, nr);
        // (An error leaves the lists to grow as they fill, infallibly: where
        // a pack's size is unbounded, `reserve` made this room fallibly
        // first, so only the micro-kernels' packs, of at most `KC` x `NR`,
        // get here unreserved.)
        if temp.reserve(items, false).is_err() {
            debug_assert!(
                kc <= PACK_TEMP_DEPTH && nr <= PACK_TEMP_WIDTH,
                "an unreserved pack of {kc} x {nr} (only the micro-kernels' bounded ones may be)"
            );
        }
        let PackTemp {
            taps, runs, reads, ..
        } = &mut temp;
        if !self.transposed {
            // Depth = taps, columns = output pixels: each panel is a few
            // runs of output pixels (stretches of one output row), packed
            // for every tap in one call.
            taps.clear();
            taps.extend((pc..pc + kc).map(|r| self.tap_read(r)));
            for (j0, cols, dst) in panels(out, kc, jc, nc, nr) {
                runs.clear();
                self.runs(j0, cols, runs);
                reads.clear();
                reads.extend(runs.iter().map(|&(off, run)| (off, self.run_at(run))));
                // SAFETY: `self.path` is `simd::active()` (tests: one of
                // `simd::supported()`), so the CPU runs it; the taps and
                // runs come from this chunk's geometry over `self.images`,
                // which holds every image of the chunk.
                unsafe { im2col::fill_panel(path, self.images, &geo, taps, reads, cols, dst, nr) };
            }
        } else {
            // Depth = output pixels, columns = taps. Each tap's values over
            // a run are contiguous in the image but one column of the
            // panel: gather them as rows of `rows`, then transpose into
            // the panel in 4x4 blocks (strided scalar stores, one per
            // element, made this the most expensive packing of all).
            runs.clear();
            self.runs(pc, kc, runs);
            if im2col::patches_apply(path, self.g, nr) {
                reads.clear();
                reads.extend(runs.iter().map(|&(off, run)| (off, self.run_at(run))));
                // SAFETY: `patches_apply` holds; the runs cover depth
                // `0..kc` of this chunk over `self.images`, the taps
                // `jc..jc + nc` lie inside its taps and `out` holds the
                // panels (asserted above and by the caller's promise).
                unsafe {
                    im2col::fill_patches(path, self.images, self.g, reads, kc, (jc, nc), nr, out)
                };
                PACK_TEMP.with(|cell| cell.set(temp));
                return;
            }
            // A run is at most the block's depth long, a panel `nr` wide.
            // Per-thread scratch, so that a larger block grows every
            // thread's (and counts as a growth), not whichever thread
            // rayon hands it to first.
            let mut fill_rows = |all_rows: &mut [f32]| {
                for (j0, cols, dst) in panels(out, kc, jc, nc, nr) {
                    if cols < nr {
                        dst.fill(0.0);
                    }
                    taps.clear();
                    taps.extend((j0..j0 + cols).map(|r| self.tap_read(r)));
                    for &(off, run) in runs.iter() {
                        let rows = &mut all_rows[..cols * run.len];
                        // SAFETY: as for `fill_panel` above.
                        unsafe {
                            im2col::fill_taps(
                                path,
                                self.images,
                                &geo,
                                taps,
                                self.run_at(run),
                                rows,
                                run.len,
                            )
                        };
                        transpose(rows, cols, run.len, &mut dst[off * nr..], nr);
                    }
                }
            };
            let taken = with_scratch(Slot::PackRows, rows_len, |all_rows| {
                fill_rows(all_rows);
                Ok(())
            });
            if taken.is_err() {
                debug_assert!(
            kc <= PACK_TEMP_DEPTH && nr <= PACK_TEMP_WIDTH,
            "an unreserved pack of {kc} x {nr} (only the micro-kernels' bounded ones may be)"
        );
                // Only a pack no `reserve` came before (see above): at most
                // `KC` x `NR` floats, allocated as any small Vec.
                fill_rows(&mut vec![0.0; rows_len]);
            }
        }
        PACK_TEMP.with(|cell| cell.set(temp));
    }

    fn reserve(&self, kc: usize, nr: usize) -> Result<()> {
        let (items, rows_len) = pack_room(kc, nr);
        let mut temp = PACK_TEMP.with(Cell::take);
        let reserved = temp.reserve(items, false);
        PACK_TEMP.with(|cell| cell.set(temp));
        reserved?;
        if self.transposed && !im2col::patches_apply(self.path, self.g, nr) {
            with_scratch(Slot::PackRows, rows_len, |_| Ok(()))?;
        }
        Ok(())
    }

    fn depth_period(&self) -> Option<usize> {
        // Depth row r is tap r % (KH*KW) of channel r / (KH*KW) ([`tap`]).
        self.order.map(|_| self.g.kernel_h * self.g.kernel_w)
    }

    fn panel_mask(&self, j0: usize, cols: usize) -> u64 {
        match &self.order {
            Some(order) => order.taps_of(j0, cols),
            None => u64::MAX,
        }
    }

    unsafe fn pack_live(
        &self,
        (pc, kc): (usize, usize),
        (jc, nc): (usize, usize),
        nr: usize,
        masks: &[u64],
        out: &mut [f32],
    ) {
        // As `pack` (the forward's orientation), with each panel's tap list
        // cut to the rows its mask keeps.
        let (depth, width) = self.shape();
        assert!(!self.transposed && pc + kc <= depth && jc + nc <= width && nr > 0);
        assert!(masks.len() >= nc.div_ceil(nr));
        let period = (self.g.kernel_h * self.g.kernel_w).clamp(1, 64);
        let (path, geo) = (self.path, im2col::Geometry::new(self.g));
        let mut temp = PACK_TEMP.with(Cell::take);
        let (items, _) = pack_room(kc, nr);
        // (As in `pack`: only the micro-kernels take this path, with
        // blocks of at most `KC` x `NR`.)
        if temp.reserve(items, true).is_err() {
            debug_assert!(
                kc <= PACK_TEMP_DEPTH && nr <= PACK_TEMP_WIDTH,
                "an unreserved pack of {kc} x {nr} (only the micro-kernels' bounded ones may be)"
            );
        }
        let PackTemp {
            taps,
            runs,
            reads,
            live,
            ..
        } = &mut temp;
        taps.clear();
        taps.extend((pc..pc + kc).map(|r| self.tap_read(r)));
        let mut kept = None;
        for ((j0, cols, dst), &mask) in panels(out, kc, jc, nc, nr).zip(masks) {
            if kept != Some(mask) {
                live.clear();
                live.extend(
                    (pc..pc + kc)
                        .zip(taps.iter())
                        .filter(|&(r, _)| mask >> (r % period) & 1 == 1)
                        .map(|(_, &t)| t),
                );
                kept = Some(mask);
            }
            if live.is_empty() {
                continue;
            }
            runs.clear();
            self.runs(j0, cols, runs);
            reads.clear();
            reads.extend(runs.iter().map(|&(off, run)| (off, self.run_at(run))));
            // SAFETY: as in `pack`: the path runs on this CPU, the taps and
            // runs come from this chunk's geometry over `self.images`; `dst`
            // holds kc >= live.len() rows of nr.
            unsafe { im2col::fill_panel(path, self.images, &geo, live, reads, cols, dst, nr) };
        }
        PACK_TEMP.with(|cell| cell.set(temp));
    }
}

/// [`Columns::pack`]'s working lists are reserved for at least this depth
/// (the AVX kernels' `KC`) and panel width (the AVX-512 kernel's `NR`).
const PACK_TEMP_DEPTH: usize = 256;
const PACK_TEMP_WIDTH: usize = 32;

/// The most items any thread's [`PackTemp`] lists were asked to hold:
/// every thread's grow to it ([`reserve_list`]).
static PACK_TEMP_LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The items each of [`PackTemp`]'s lists holds for a pack of `kc`-deep,
/// `nr`-wide panels, and the floats of its transposed rows ([`Slot::PackRows`]).
fn pack_room(kc: usize, nr: usize) -> (usize, usize) {
    let (depth, width) = (kc.max(PACK_TEMP_DEPTH), nr.max(PACK_TEMP_WIDTH));
    (depth.max(width), depth.saturating_mul(width))
}

impl PackTemp {
    /// Room for `items` in each list (and in `live` with `live`), or the
    /// allocator's refusal.
    fn reserve(&mut self, items: usize, live: bool) -> Result<()> {
        reserve_list("pack taps", &PACK_TEMP_LARGEST, &mut self.taps, items)?;
        if live {
            reserve_list("pack live taps", &PACK_TEMP_LARGEST, &mut self.live, items)?;
        }
        reserve_list("pack runs", &PACK_TEMP_LARGEST, &mut self.runs, items)?;
        reserve_list("pack reads", &PACK_TEMP_LARGEST, &mut self.reads, items)
    }
}

/// [`Columns::pack`]'s working lists, kept per thread.
#[derive(Default)]
struct PackTemp {
    taps: Vec<im2col::Tap>,
    /// [`Columns::pack_live`]'s taps of one panel.
    live: Vec<im2col::Tap>,
    runs: Vec<(usize, Run)>,
    /// `runs` as the fills take them.
    reads: Vec<(usize, im2col::Run)>,
}

thread_local! {
    static PACK_TEMP: Cell<PackTemp> = const {
        Cell::new(PackTemp {
            taps: Vec::new(),
            live: Vec::new(),
            runs: Vec::new(),
            reads: Vec::new(),
        })
    };
}

/// `out[e] = src[2 * e]`: the stride-2 im2col gather (the stem, the
/// stride-2 3x3 and 1x1 layers). One scalar load, store and bounds check
/// per value made it most of the im2col fill's time (`perf`); SSE (part of
/// x86-64) picks four even values out of two loads.
#[inline(never)]
pub(in super::super) fn gather_even(src: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(n == 0 || src.len() > 2 * (n - 1));
    let mut e = 0;
    #[cfg(target_arch = "x86_64")]
    while e + 4 < n {
        // SAFETY: e + 4 < n, so the loads read src[2e .. 2e + 8], and
        // 2e + 8 <= 2(n - 1) < src.len() (asserted above); the store writes
        // out[e .. e + 4] with e + 4 < n.
        unsafe {
            use std::arch::x86_64::*;
            let a = _mm_loadu_ps(src.as_ptr().add(2 * e));
            let b = _mm_loadu_ps(src.as_ptr().add(2 * e + 4));
            _mm_storeu_ps(
                out.as_mut_ptr().add(e),
                _mm_shuffle_ps::<0b10_00_10_00>(a, b),
            );
        }
        e += 4;
    }
    for (i, v) in out.iter_mut().enumerate().skip(e) {
        *v = src[2 * i];
    }
}

/// `dst[e * dst_stride + j] = src[j * len + e]` for `j < rows`, `e < len`.
pub(super) fn transpose(src: &[f32], rows: usize, len: usize, dst: &mut [f32], dst_stride: usize) {
    if rows > 0 && len > 0 {
        assert!(src.len() >= rows * len && dst.len() > (len - 1) * dst_stride + rows - 1);
    }
    // SAFETY: `dst` holds every element written (asserted) and is borrowed
    // mutably for the call.
    unsafe { transpose_raw(src, rows, len, dst.as_mut_ptr(), dst_stride) }
}

/// [`transpose`] through a pointer, for outputs that several threads write
/// at disjoint elements (the direct convolution's row parts).
///
/// # Safety
/// `dst.add(e * dst_stride + j)` for `e < len`, `j < rows` is writable and
/// written by nothing else meanwhile.
pub(super) unsafe fn transpose_raw(
    src: &[f32],
    rows: usize,
    len: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let (rows4, len4) = (rows - rows % 4, len - len % 4);
    assert!(src.len() >= rows * len);
    for j in (0..rows4).step_by(4) {
        for e in (0..len4).step_by(4) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: rows j..j+4 of src hold elements e..e+4 (e + 4 <=
            // len, j + 4 <= rows, src holds rows * len); rows e..e+4 of dst
            // hold elements j..j+4 (the caller's contract). SSE is part of
            // x86-64.
            unsafe {
                use std::arch::x86_64::*;
                let at = |r: usize| _mm_loadu_ps(src.as_ptr().add((j + r) * len + e));
                let (r0, r1, r2, r3) = (at(0), at(1), at(2), at(3));
                let t0 = _mm_unpacklo_ps(r0, r1);
                let t1 = _mm_unpacklo_ps(r2, r3);
                let t2 = _mm_unpackhi_ps(r0, r1);
                let t3 = _mm_unpackhi_ps(r2, r3);
                let out = dst.add(e * dst_stride + j);
                _mm_storeu_ps(out, _mm_movelh_ps(t0, t1));
                _mm_storeu_ps(out.add(dst_stride), _mm_movehl_ps(t1, t0));
                _mm_storeu_ps(out.add(2 * dst_stride), _mm_movelh_ps(t2, t3));
                _mm_storeu_ps(out.add(3 * dst_stride), _mm_movehl_ps(t3, t2));
            }
            #[cfg(not(target_arch = "x86_64"))]
            for jj in j..j + 4 {
                for ee in e..e + 4 {
                    // SAFETY: ee < len, jj < rows (the caller's contract).
                    unsafe { *dst.add(ee * dst_stride + jj) = src[jj * len + ee] };
                }
            }
        }
    }
    // The edges: columns len4.. of the blocked rows, then the last rows.
    for j in 0..rows {
        let from = if j < rows4 { len4 } else { 0 };
        for e in from..len {
            // SAFETY: e < len, j < rows (the caller's contract).
            unsafe { *dst.add(e * dst_stride + j) = src[j * len + e] };
        }
    }
}

impl Source for Columns<'_> {
    fn shape(&self) -> (usize, usize) {
        let columns = self.chunk.columns(self.g);
        if self.transposed {
            (columns, self.taps)
        } else {
            (self.taps, columns)
        }
    }
}

/// Gathers the chunk's images of `[N, C_out, P]` `batch` into `staging[C_out, images * P]`.
pub(super) fn gather(
    g: &Conv2dGeometry,
    plan: &Plan,
    chunk: &Chunk,
    batch: &[f32],
    staging: &mut [f32],
) {
    let (p, width) = (plan.pixels, chunk.columns(g));
    for (j, image) in chunk
        .images_of(batch, plan.out_image)
        .chunks_exact(plan.out_image)
        .enumerate()
    {
        for co in 0..g.out_channels {
            staging[co * width + j * p..][..p].copy_from_slice(&image[co * p..(co + 1) * p]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::forward_with;
    use super::super::test_support::{assert_close, column_entry, reference, thread_pool, Case};
    use super::super::weight_grad::weight_grad_with;
    use super::super::{Limits, LIMITS};
    use super::*;
    use crate::backend::cpu::scratch::{with_scratch, Slot};
    use crate::backend::cpu::test_data::pseudo_random;

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
                let col = |r: usize, j: usize| column_entry(&g, &x, tap(&g, r), pixel[j]);
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
                                    for r in
                                        (pc..pc + kc).filter(|&r| mask >> (r % period) & 1 == 0)
                                    {
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
            let nan = |col: &mut [f32]| {
                col.fill(f32::NAN);
                Ok(())
            };
            with_scratch(Slot::Columns, 1 << 16, nan).unwrap();
            with_scratch(Slot::Dense, 1 << 16, nan).unwrap();
        };
        poison();
        let y = thread_pool(1).install(|| {
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
                        let (n, q) = (chunk.first_image + j / seg, j % seg);
                        let (oh, ow) = (chunk.rows.0 + q / g.out_w, q % g.out_w);
                        column_entry(&g, &x, tap(&g, r), (n, oh, ow))
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
                                        let (p, k, jj) =
                                            (i / (kc * nr), i % (kc * nr) / nr, i % nr);
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
}
