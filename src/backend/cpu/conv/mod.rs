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
//! For stride 1 the input gradient is itself a forward convolution (of
//! `dy`, with the weight flipped and its channels swapped) and runs as
//! one, with no col2im ([`input_grad_flipped`]); col2im remains for the
//! other strides and the portable path. For stride 1 with output rows as
//! wide as the input's and few row taps (ResNet's 3x3 layers up to 128
//! channels) the weight gradient is `KW` shifted products sharing the
//! column matrix of the `(c, kh)` taps only ([`weight_grad_shifted`];
//! `FROSTGRAD_DW_SHIFTED=0` turns it off, for comparison). Otherwise the
//! weight gradient's transposed column matrix (depth = output pixels) is
//! packed one input patch row at a time on the AVX-512 path
//! ([`im2col::fill_patches`]; `FROSTGRAD_DW_PATCHES=0` turns it off, for
//! comparison). Over small images where enough of the column matrix is
//! padding (ResNet's 14x14 to 4x4 stages, see [`by_classes`]) the weight gradient
//! runs one kernel tap at a time over only the output pixels that tap sees
//! real input at ([`weight_grad_classes`]; `FROSTGRAD_DW_CLASSES=0` turns
//! it off, for comparison).
//!
//! The column matrix is never stored for the forward and the weight
//! gradient: [`Columns`] packs the GEMM's panels straight from the images
//! (`gemm::PackB`, the fills in `im2col.rs`). The weight is read by the
//! micro-kernels where it lies, or packed once per call for all chunks and
//! threads where that is faster (`gemm::with_packed_lhs`). The input
//! gradient packs `dy` once per chunk and computes `Wᵀ · dy` in row blocks
//! of whole input channels ([`INPUT_GRAD_BLOCK_ELEMS`], about 256 KiB),
//! each scattered onto its channels' planes (col2im) while still in cache,
//! so no whole column block is ever written out.
//!
//! The columns are processed in [`Chunk`]s that bound the scratch memory
//! ([`COL_BLOCK_ELEMS`]):
//!
//! * a large image is split into blocks of output rows; the GEMM reads or
//!   writes the matching column block of `y`/`dy` in place through its
//!   row stride;
//! * small images (ResNet's 14x14 and 7x7 stages) are put side by side,
//!   several per chunk, so the GEMM sees enough columns to run at full
//!   speed; `y`/`dy` then go through a staging buffer.
//!
//! A 1x1, stride-1, unpadded convolution of large images needs no column
//! matrix at all: the input image already is `col`.
//!
//! The padding taps: a tap `(kh, kw)` that sees only padding at an output
//! pixel gives a zero column entry for every channel, and for small images
//! they are a large share of `col` (3x3, padding 1: 18 % at 7x7, 31 % at
//! 4x4). For grouped images the forward (and so the flipped input
//! gradient) orders its columns by the taps they see
//! ([`super::tap_classes`]: top rows, middle rows, bottom rows, and where
//! it pays the edge columns apart), un-ordered again on the way out of the
//! staging buffer, and the micro-kernel GEMM multiplies each column panel
//! by the depth rows of the taps some column of it sees
//! (`PackB::pack_live`, `microkernel::gemm_live`) — what a direct
//! convolution skips. [`skip_order`] decides where;
//! `FROSTGRAD_CONV_SKIP_PADDING=0` turns it off, `=1` on wherever possible
//! (for comparison).
//!
//! Parallelism: with enough image groups (the images of one chunk) per
//! rayon thread, whole groups run as parallel tasks, each with its own
//! im2col and a single-threaded GEMM; otherwise (the 7x7 stage, small
//! batches) chunks run one at a time with their im2col rows and GEMM
//! blocks split across threads. See [`Plan::parallel_groups`].

use std::cell::Cell;

use rayon::prelude::*;

use super::buffer_pool;
use super::check::checked_numel;
use super::gemm::{
    panels, row_align, sgemm, sgemm_rows, with_indexed_lhs, with_packed_lhs, with_packed_rhs, Lhs,
    MatRef, PackB, Par, Rhs, Source,
};
use super::im2col;
use super::scratch::{with_scratch, Slot};
use super::simd;
use super::tap_classes::ClassOrder;
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// Upper bound on one column chunk, in f32s (4 MiB): big enough for four
/// 7x7 images of ResNet's widest layer (196 GEMM columns), small enough to
/// stay in the last-level cache between im2col and the GEMM. Not tuned
/// finer: the A/B runs of BENCHMARKS.md ("What each optimisation bought")
/// were taken under load and cannot resolve smaller differences.
const COL_BLOCK_ELEMS: usize = 1 << 20;

/// Images with fewer output pixels than this are grouped so one GEMM has
/// at least about this many columns (a few hundred keep `sgemm`'s packing
/// and threading overheads small).
const MIN_GEMM_COLUMNS: usize = 768;

/// The forward's limits. Its image groups write disjoint outputs and share
/// the packed weight, so one group per thread already balances: layer4's
/// 3x3 512->512 at batch 8 (two groups of four 7x7 images) went from 15.6
/// to 11.6 ms at 2 threads (BENCHMARKS.md, "What each change bought"). The
/// gradients keep two per thread (but see [`weight_grad_limits`]).
const FORWARD_LIMITS: Limits = Limits {
    groups_per_thread: 1,
    group_pack_elems: Some(GROUP_PACK_ELEMS),
    ..LIMITS
};

/// The most floats of one depth block of a forward image group's packed
/// columns (1 MiB: Zen 4's L2 per core), in blocks [`GROUP_PACK_DEPTH`]
/// deep. The forward (and the flipped input gradient) stores no column
/// matrix: its GEMM packs the group's columns from the images one depth
/// block at a time (`Columns::pack` / `pack_live`) and multiplies every
/// 144-row block of the weight by that packed block, so the block, not
/// `C_in * KH * KW` rows of columns, is what has to stay in cache. So the
/// group is bounded by `GROUP_PACK_DEPTH * columns`, not by
/// `COL_BLOCK_ELEMS / (taps * pixels)` (which held ResNet's 4x4 and 7x7
/// stages at batch 32 to groups of 8 images: 14 and 9 fit). That allows
/// up to 1024 columns; [`MIN_GEMM_COLUMNS`] and the one-group-per-thread
/// share take 16 images at 4x4 (256 columns, a 256 KiB block) and at 7x7
/// (784 columns, 784 KiB). 16 images at 4x4 let the padding skip separate
/// the corner and edge columns into whole panels (0.750 of the FMAs
/// against 0.833 with 8, `ClassOrder::live_share`); at batch 32 x 112,
/// AVX-512, 3x3 512->512 @4 and 256->256 @7 forwards took 0.96x the CPU
/// time of groups of 8 (BENCHMARKS.md, issue 9 item 35).
const GROUP_PACK_ELEMS: usize = 1 << 18;

/// The depth of the micro-kernel GEMM's packed blocks (`microkernel::KC`).
const GROUP_PACK_DEPTH: usize = 256;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(GROUP_PACK_DEPTH == super::microkernel::KC);

/// The input gradient computes `Wᵀ · dy` in row blocks of whole input
/// channels of about this many floats (256 KiB, a quarter of Zen 4's L2)
/// and scatters each block (col2im) right after its GEMM, while it is
/// still in cache. A whole chunk's column block (4608 x 196 floats, 3.6 MB,
/// at 7x7) went to memory and back: written, re-read and written again by
/// the GEMM's second depth block, then read by col2im.
const INPUT_GRAD_BLOCK_ELEMS: usize = 1 << 16;

/// The fewest output pixels (the weight gradient's depth) per thread for
/// [`Plan::row_groups`]: below it writing and adding a partial sum costs
/// about what splitting saves (the 1x1 256->512 stride-2 layer at batch 1,
/// 49 pixels, took 0.17 ms instead of 0.12; at 196 pixels it broke even,
/// at 784 it halved).
const ROW_GROUP_MIN_PIXELS: usize = 128;

/// Tuning knobs of a [`Plan`]; tests shrink them to exercise every path.
#[derive(Clone, Copy)]
struct Limits {
    block_elems: usize,
    min_columns: usize,
    /// Image groups per rayon thread needed to parallelise over groups
    /// (see [`Plan::parallel_groups`]).
    groups_per_thread: usize,
    /// Target size of the input gradient's row blocks
    /// ([`INPUT_GRAD_BLOCK_ELEMS`]).
    dx_block_elems: usize,
    /// For plans whose GEMM packs the columns itself, one depth block at
    /// a time ([`GROUP_PACK_ELEMS`]): the bound on a packed block, which
    /// then sizes image groups instead of `block_elems`.
    group_pack_elems: Option<usize>,
}

const LIMITS: Limits = Limits {
    block_elems: COL_BLOCK_ELEMS,
    min_columns: MIN_GEMM_COLUMNS,
    groups_per_thread: 2,
    dx_block_elems: INPUT_GRAD_BLOCK_ELEMS,
    group_pack_elems: None,
};

/// A set of output columns processed together: output rows `rows` of
/// `images` consecutive images starting at `first_image` (all rows when
/// `images > 1`), laid side by side in the column matrix.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    first_image: usize,
    images: usize,
    rows: (usize, usize),
}

/// Sizes derived once from the geometry.
struct Plan {
    /// Rows of the column matrix: `C_in * KH * KW`.
    taps: usize,
    /// Output pixels per image: `OH * OW`.
    pixels: usize,
    in_image: usize,
    out_image: usize,
    /// Output rows per chunk when an image is split (1 image per chunk).
    rows_per_block: usize,
    /// Images per chunk (> 1 only when whole images are small).
    images_per_chunk: usize,
    /// 1x1, stride 1, no padding, one image per chunk: the input image is
    /// its own column matrix.
    pointwise: bool,
    groups_per_thread: usize,
    dx_block_elems: usize,
}

impl Plan {
    fn new(op: &'static str, g: &Conv2dGeometry, limits: Limits) -> Result<Self> {
        let taps = checked_numel(op, &[g.in_channels, g.kernel_h, g.kernel_w])?;
        let pixels = checked_numel(op, &[g.out_h, g.out_w])?;
        let in_image = checked_numel(op, &[g.in_channels, g.in_h, g.in_w])?;
        let out_image = checked_numel(op, &[g.out_channels, pixels])?;
        checked_numel(op, &[g.batch, in_image.max(out_image)])?;
        let row_elems = (taps * g.out_w).max(1);
        let rows_per_block = (limits.block_elems / row_elems).clamp(1, g.out_h.max(1));
        let images_per_chunk = if rows_per_block < g.out_h {
            1
        } else {
            let wanted = limits.min_columns.div_ceil(pixels.max(1));
            // The portable path's GEMM (`matrixmultiply`) takes the
            // group's whole column matrix stored: there the old bound holds.
            let packs_in_blocks = simd::active() != simd::SimdPath::Portable;
            let fit = match limits.group_pack_elems.filter(|_| packs_in_blocks) {
                Some(elems) => elems / (taps.min(GROUP_PACK_DEPTH) * pixels).max(1),
                None => limits.block_elems / (taps * pixels).max(1),
            };
            // With one group per thread (the forward), at least as many
            // groups as threads: one group of all 8 images (layer4's
            // 256->512 stride-2 forward) ran its GEMM split by rows, each
            // row block re-packing the whole im2col, on 1.4 cores. Not for
            // the gradients (two groups per thread): their groups of two
            // 7x7 images measured slower than one split chunk
            // (BENCHMARKS.md, issue 9, "What each change bought").
            let share = if limits.groups_per_thread == 1 {
                g.batch.div_ceil(rayon::current_num_threads())
            } else {
                g.batch
            };
            let most = wanted.min(fit).min(share).clamp(1, g.batch.max(1));
            balanced_group(g.batch, most, rayon::current_num_threads())
        };
        let pointwise = images_per_chunk == 1
            && g.kernel_h == 1
            && g.kernel_w == 1
            && g.stride == (1, 1)
            && g.padding == (0, 0);
        // Without a column matrix there is nothing to bound: whole images.
        // Nor where no column block is stored (the forward's and weight
        // gradient's im2col packs the GEMM's panels itself; the plans with
        // one group per thread, [`FORWARD_LIMITS`]) and the batch's rows
        // are split across threads (fewer images than threads): there
        // chunks only added a synchronisation each and narrower column
        // blocks. ResNet's 3x3 64->64 forward at batch 1 in one chunk
        // instead of two (32 and 24 rows): 2.33 -> 1.99 ms of CPU time
        // (two threads sharing about one core, load 5).
        let whole_images = limits.groups_per_thread == 1 && g.batch < rayon::current_num_threads();
        let rows_per_block = if pointwise || whole_images {
            g.out_h.max(1)
        } else {
            rows_per_block
        };
        Ok(Self {
            taps,
            pixels,
            in_image,
            out_image,
            rows_per_block,
            images_per_chunk,
            pointwise,
            groups_per_thread: limits.groups_per_thread,
            dx_block_elems: limits.dx_block_elems,
        })
    }

    /// Columns of the widest chunk.
    fn max_columns(&self, g: &Conv2dGeometry) -> usize {
        if self.images_per_chunk > 1 {
            self.images_per_chunk * self.pixels
        } else {
            self.rows_per_block.min(g.out_h) * g.out_w
        }
    }

    /// The chunks covering `batch` images (all of a batch, or one group).
    fn chunks(&self, g: &Conv2dGeometry, batch: usize) -> Vec<Chunk> {
        self.chunks_rows(g, batch, (0, g.out_h))
    }

    /// The chunks covering output rows `rows` of each of `batch` images:
    /// all rows unless [`for_image_groups`] split the images' rows across
    /// threads (then `images_per_chunk` is 1).
    fn chunks_rows(&self, g: &Conv2dGeometry, batch: usize, rows: (usize, usize)) -> Vec<Chunk> {
        debug_assert!(rows == (0, g.out_h) || self.images_per_chunk == 1);
        if self.images_per_chunk > 1 {
            (0..batch)
                .step_by(self.images_per_chunk)
                .map(|n| Chunk {
                    first_image: n,
                    images: self.images_per_chunk.min(batch - n),
                    rows: (0, g.out_h),
                })
                .collect()
        } else {
            let step = self.rows_per_block;
            (0..batch)
                .flat_map(|n| {
                    (rows.0..rows.1).step_by(step).map(move |r| Chunk {
                        first_image: n,
                        images: 1,
                        rows: (r, (r + step).min(rows.1)),
                    })
                })
                .collect()
        }
    }
}

impl Plan {
    /// Whether to run whole image groups (one group = the images of one
    /// chunk) in parallel, each on one thread with a single-threaded GEMM,
    /// rather than one chunk at a time with the work of each chunk split
    /// across threads. Groups keep a thread's column matrix in its own
    /// cache and need one synchronisation per call instead of a few per
    /// chunk; there must be enough of them to balance the threads.
    fn parallel_groups(&self, g: &Conv2dGeometry) -> bool {
        let threads = rayon::current_num_threads();
        threads > 1
            && self.in_image > 0
            && self.out_image > 0
            && g.batch.div_ceil(self.images_per_chunk) >= self.groups_per_thread * threads
    }

    /// Whether a sum (the weight gradient) that is not run as image groups
    /// splits the batch's output rows across threads instead, each thread
    /// summing its rows into its own partial sum with single-threaded
    /// GEMMs, rather than splitting each chunk's product. For a small
    /// weight only (the plans with one group per thread,
    /// [`weight_grad_limits`]), whose partial sums cost little: at batch 1
    /// the stem's product (64 x 147 taps, deep) split into column blocks of
    /// 128 and 19 taps ran on about one thread (2.92 ms against 2.8 on one
    /// thread), and the 3x3 64->64 layer's shifted product (192 columns)
    /// in three blocks on two threads.
    fn row_groups(&self, g: &Conv2dGeometry) -> bool {
        let threads = rayon::current_num_threads();
        threads > 1
            && self.groups_per_thread == 1
            && self.images_per_chunk == 1
            && self.in_image > 0
            && self.out_image > 0
            && g.batch * self.pixels >= threads * ROW_GROUP_MIN_PIXELS
            && g.batch * g.out_h >= threads
    }
}

impl Chunk {
    /// Columns one image contributes.
    fn image_columns(&self, g: &Conv2dGeometry) -> usize {
        (self.rows.1 - self.rows.0) * g.out_w
    }
    /// Columns of the whole chunk (the column matrix's row length).
    fn columns(&self, g: &Conv2dGeometry) -> usize {
        self.images * self.image_columns(g)
    }
    /// The chunk's images within a batch buffer of `per_image` elements each.
    fn images_of<'a>(&self, data: &'a [f32], per_image: usize) -> &'a [f32] {
        &data[self.first_image * per_image..(self.first_image + self.images) * per_image]
    }
    fn images_of_mut<'a>(&self, data: &'a mut [f32], per_image: usize) -> &'a mut [f32] {
        &mut data[self.first_image * per_image..(self.first_image + self.images) * per_image]
    }
}

/// Images per group for `batch` images in groups of at most `most`: the
/// same number of groups, or, when there are more groups than threads, at
/// most the next multiple of `threads` (fewer when equal sizes need fewer),
/// of sizes as equal as can be. Groups of at most
/// 9 images at batch 32 (ResNet's 7x7 stage at 112x112) were 9, 9, 9 and 5,
/// so with two threads one ran 18 images and the other 14; at 4x4, groups
/// of 14, 14 and 4 could not be spread over two threads at all.
fn balanced_group(batch: usize, most: usize, threads: usize) -> usize {
    let mut groups = batch.div_ceil(most.max(1));
    if groups > threads && threads > 1 {
        groups = groups.next_multiple_of(threads).min(batch);
    }
    batch.div_ceil(groups.max(1)).max(1)
}

/// Output positions `o` in `0..out` whose input coordinate
/// `o * stride + offset - pad` falls inside `0..input`, as a range `lo..hi`
/// (empty when none do).
pub(super) fn valid_outputs(
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
struct Columns<'a> {
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
    fn new(
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
    fn ordered(self, order: Option<ClassOrder>) -> Self {
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
        let PackTemp {
            taps,
            runs,
            reads,
            rows,
            ..
        } = &mut temp;
        // (`rows` written, not just reserved: its pages are touched here.)
        let (depth, width) = (kc.max(PACK_TEMP_DEPTH), nr.max(PACK_TEMP_WIDTH));
        taps.reserve(depth.max(width).saturating_sub(taps.len()));
        runs.reserve(depth.max(width).saturating_sub(runs.len()));
        reads.reserve(depth.max(width).saturating_sub(reads.len()));
        if rows.len() < depth * width {
            rows.resize(depth * width, 0.0);
        }
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
            for (j0, cols, dst) in panels(out, kc, jc, nc, nr) {
                if cols < nr {
                    dst.fill(0.0);
                }
                taps.clear();
                taps.extend((j0..j0 + cols).map(|r| self.tap_read(r)));
                for &(off, run) in runs.iter() {
                    let rows = &mut rows[..cols * run.len];
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
        }
        PACK_TEMP.with(|cell| cell.set(temp));
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
        let PackTemp {
            taps,
            runs,
            reads,
            live,
            ..
        } = &mut temp;
        let (depth, width) = (kc.max(PACK_TEMP_DEPTH), nr.max(PACK_TEMP_WIDTH));
        taps.reserve(depth.saturating_sub(taps.len()));
        live.reserve(depth.saturating_sub(live.len()));
        runs.reserve(width.saturating_sub(runs.len()));
        reads.reserve(width.saturating_sub(reads.len()));
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

/// [`Columns::pack`]'s working lists, kept per thread.
#[derive(Default)]
struct PackTemp {
    taps: Vec<im2col::Tap>,
    /// [`Columns::pack_live`]'s taps of one panel.
    live: Vec<im2col::Tap>,
    runs: Vec<(usize, Run)>,
    /// `runs` as the fills take them.
    reads: Vec<(usize, im2col::Run)>,
    rows: Vec<f32>,
}

thread_local! {
    static PACK_TEMP: Cell<PackTemp> = const {
        Cell::new(PackTemp {
            taps: Vec::new(),
            live: Vec::new(),
            runs: Vec::new(),
            reads: Vec::new(),
            rows: Vec::new(),
        })
    };
}

/// `out[e] = src[2 * e]`: the stride-2 im2col gather (the stem, the
/// stride-2 3x3 and 1x1 layers). One scalar load, store and bounds check
/// per value made it most of the im2col fill's time (`perf`); SSE (part of
/// x86-64) picks four even values out of two loads.
#[inline(never)]
pub(super) fn gather_even(src: &[f32], out: &mut [f32]) {
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
fn transpose(src: &[f32], rows: usize, len: usize, dst: &mut [f32], dst_stride: usize) {
    let (rows4, len4) = (rows - rows % 4, len - len % 4);
    if rows4 > 0 && len4 > 0 {
        assert!(src.len() >= rows * len && dst.len() > (len - 1) * dst_stride + rows - 1);
    }
    for j in (0..rows4).step_by(4) {
        for e in (0..len4).step_by(4) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: rows j..j+4 of src hold elements e..e+4 (e + 4 <=
            // len, j + 4 <= rows, src holds rows * len); rows e..e+4 of dst
            // hold elements j..j+4 (checked above). SSE is part of x86-64.
            unsafe {
                use std::arch::x86_64::*;
                let at = |r: usize| _mm_loadu_ps(src.as_ptr().add((j + r) * len + e));
                let (r0, r1, r2, r3) = (at(0), at(1), at(2), at(3));
                let t0 = _mm_unpacklo_ps(r0, r1);
                let t1 = _mm_unpacklo_ps(r2, r3);
                let t2 = _mm_unpackhi_ps(r0, r1);
                let t3 = _mm_unpackhi_ps(r2, r3);
                let out = dst.as_mut_ptr().add(e * dst_stride + j);
                _mm_storeu_ps(out, _mm_movelh_ps(t0, t1));
                _mm_storeu_ps(out.add(dst_stride), _mm_movehl_ps(t1, t0));
                _mm_storeu_ps(out.add(2 * dst_stride), _mm_movelh_ps(t2, t3));
                _mm_storeu_ps(out.add(3 * dst_stride), _mm_movehl_ps(t3, t2));
            }
            #[cfg(not(target_arch = "x86_64"))]
            for jj in j..j + 4 {
                for ee in e..e + 4 {
                    dst[ee * dst_stride + jj] = src[jj * len + ee];
                }
            }
        }
    }
    // The edges: columns len4.. of the blocked rows, then the last rows.
    for j in 0..rows {
        let from = if j < rows4 { len4 } else { 0 };
        for e in from..len {
            dst[e * dst_stride + j] = src[j * len + e];
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

/// Adds a block of the chunk's column-matrix gradient back onto the
/// input-image gradients it came from: `col[rows, columns]` holds the rows
/// (taps) of whole input channels `c0..`, and `planes[j]` is image `j`'s
/// gradient for those channels (as many planes as the block has channels).
///
/// With `merge` and a row of three taps at stride 2 ([`merges_tap_rows`]),
/// the three taps of one kernel row are added onto each input row in one
/// pass ([`add_tap_row_triple`]).
fn col2im_add(
    col: &[f32],
    g: &Conv2dGeometry,
    chunk: &Chunk,
    planes: &mut [&mut [f32]],
    merge: bool,
) {
    let (width, seg) = (chunk.columns(g), chunk.image_columns(g));
    let plane_len = g.in_h * g.in_w;
    let taps_per_channel = g.kernel_h * g.kernel_w;
    let stride_w = g.stride.1;
    if plane_len == 0 {
        return;
    }
    if merge && merges_tap_rows(g) {
        for (j, image) in planes.iter_mut().enumerate() {
            for (c, plane) in image.chunks_exact_mut(plane_len).enumerate() {
                for kh in 0..g.kernel_h {
                    let r = c * taps_per_channel + kh * 3;
                    let src = |kw: usize| &col[(r + kw) * width + j * seg..][..seg];
                    let (c0, c1, c2) = (src(0), src(1), src(2));
                    // (Every output column of the middle tap is live:
                    // `merges_tap_rows`.)
                    for_each_tap_row(g, kh, 1, chunk.rows, |i, ih, _, _, _| {
                        let at = i * g.out_w;
                        add_tap_row_triple(
                            [
                                &c0[at..][..g.out_w],
                                &c1[at..][..g.out_w],
                                &c2[at..][..g.out_w],
                            ],
                            &mut plane[ih * g.in_w..(ih + 1) * g.in_w],
                        );
                    });
                }
            }
        }
        return;
    }
    for (j, image) in planes.iter_mut().enumerate() {
        for (c, plane) in image.chunks_exact_mut(plane_len).enumerate() {
            for t in 0..taps_per_channel {
                let r = c * taps_per_channel + t;
                let (kh, kw) = (t / g.kernel_w, t % g.kernel_w);
                let src = &col[r * width + j * seg..r * width + (j + 1) * seg];
                for_each_tap_row(g, kh, kw, chunk.rows, |i, ih, lo, hi, iw| {
                    let grads = &src[i * g.out_w + lo..i * g.out_w + hi];
                    let in_row = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                    if stride_w == 1 {
                        in_row[iw..iw + grads.len()]
                            .iter_mut()
                            .zip(grads)
                            .for_each(|(d, &s)| *d += s);
                    } else if stride_w == 2 {
                        scatter_even_add(grads, &mut in_row[iw..]);
                    } else {
                        for (j, &s) in grads.iter().enumerate() {
                            in_row[iw + j * stride_w] += s;
                        }
                    }
                });
            }
        }
    }
}

/// Whether [`col2im_add`] may add a kernel row's three taps in one pass:
/// 3 wide, stride 2, padding 1, no dilation (ResNet's stride-2 3x3
/// layers), with every output column live for the middle tap (input
/// column `2 * ow`). At 7- and 4-value rows, a call and a pass per tap and
/// row were a fifth of these input gradients' time (`perf`).
/// `FROSTGRAD_COL2IM_MERGE=0` adds tap by tap (for comparison; the tests
/// run both).
fn merges_tap_rows(g: &Conv2dGeometry) -> bool {
    g.kernel_w == 3
        && g.stride.1 == 2
        && g.padding.1 == 1
        && g.dilation.1 == 1
        && valid_outputs(g.out_w, g.in_w, 2, 1, 1) == (0, g.out_w)
}

/// Whether the input gradient merges tap rows where it can
/// ([`merges_tap_rows`]): unless `FROSTGRAD_COL2IM_MERGE=0`.
fn merge_tap_rows_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::env_switch::on_unless_zero(&ON, "FROSTGRAD_COL2IM_MERGE")
}

/// Adds one kernel row's three taps (`taps[kw][ow]`, stride 2, padding 1)
/// onto input row `row`: `row[2ow] += taps[1][ow]`, and `row[2ow + 1]`
/// gets `taps[0][ow + 1]` and then `taps[2][ow]`, the order in which the
/// tap-by-tap loop adds them, so the sums are the same bit for bit. SSE
/// does four output columns (eight input columns) a step; the even lanes'
/// second add is of `-0.0`, which leaves every value as it is.
fn add_tap_row_triple(taps: [&[f32]; 3], row: &mut [f32]) {
    let [t0, t1, t2] = taps;
    let n = t1.len();
    let w = row.len();
    assert!(t0.len() == n && t2.len() == n && (n == 0 || 2 * (n - 1) < w));
    let mut e = 0;
    #[cfg(target_arch = "x86_64")]
    while e + 5 <= n && 2 * e + 8 <= w {
        // SAFETY: e + 5 <= n: the loads read t1[e..e + 4], t2[e..e + 4]
        // and t0[e + 1..e + 5]; 2e + 8 <= w: the loads and stores touch
        // row[2e..2e + 8]. SSE is part of x86-64.
        unsafe {
            use std::arch::x86_64::*;
            let v0 = _mm_loadu_ps(t0.as_ptr().add(e + 1));
            let v1 = _mm_loadu_ps(t1.as_ptr().add(e));
            let v2 = _mm_loadu_ps(t2.as_ptr().add(e));
            let keep = _mm_set1_ps(-0.0);
            let out = row.as_mut_ptr().add(2 * e);
            let lo = _mm_add_ps(_mm_loadu_ps(out), _mm_unpacklo_ps(v1, v0));
            let hi = _mm_add_ps(_mm_loadu_ps(out.add(4)), _mm_unpackhi_ps(v1, v0));
            _mm_storeu_ps(out, _mm_add_ps(lo, _mm_unpacklo_ps(keep, v2)));
            _mm_storeu_ps(out.add(4), _mm_add_ps(hi, _mm_unpackhi_ps(keep, v2)));
        }
        e += 4;
    }
    for ow in e..n {
        row[2 * ow] += t1[ow];
        if let Some(odd) = row.get_mut(2 * ow + 1) {
            if ow + 1 < n {
                *odd += t0[ow + 1];
            }
            *odd += t2[ow];
        }
    }
}

/// [`col2im_add`] for a 1x1, unpadded kernel ([`overwrites_dx`]), which
/// writes every element of the chunk's rows of `planes` instead of adding
/// onto them: input pixel `(oh * sh, ow * sw)` takes the gradient of
/// output `(oh, ow)` (at most one, the taps do not overlap) and every other
/// pixel of those rows is 0. So `dx` needs no zeroing pass first: for the
/// 1x1 stride-2 layers three quarters of it are those zeros, and the
/// zeroing, then adding onto it, was a second and third pass over it.
fn col2im_set(col: &[f32], g: &Conv2dGeometry, chunk: &Chunk, planes: &mut [&mut [f32]]) {
    debug_assert!(g.kernel_h == 1 && g.kernel_w == 1 && g.padding == (0, 0));
    let (width, seg) = (chunk.columns(g), chunk.image_columns(g));
    let plane_len = g.in_h * g.in_w;
    let (sh, sw) = g.stride;
    if plane_len == 0 {
        return;
    }
    // The input rows this chunk's output rows cover: from its first
    // output row's, up to the next chunk's (the last one to the end).
    let ih0 = chunk.rows.0 * sh;
    let ih1 = if chunk.rows.1 >= g.out_h {
        g.in_h
    } else {
        chunk.rows.1 * sh
    };
    let rows_out = chunk.rows.1 - chunk.rows.0;
    for (j, image) in planes.iter_mut().enumerate() {
        for (c, plane) in image.chunks_exact_mut(plane_len).enumerate() {
            let src = &col[c * width + j * seg..][..seg];
            if sh == 2 && sw == 2 && g.out_w * 2 <= g.in_w + 1 {
                // The stride-2 layers (rows of 4 or 7 values): one zeroing
                // of the block's rows and one store per value, with no
                // call per row (most of the time at these widths).
                let block = &mut plane[ih0 * g.in_w..ih1 * g.in_w];
                block.fill(0.0);
                for (r, grads) in src.chunks_exact(g.out_w).take(rows_out).enumerate() {
                    let row = &mut block[2 * r * g.in_w..][..g.in_w];
                    for (ow, &v) in grads.iter().enumerate() {
                        row[2 * ow] = v;
                    }
                }
                continue;
            }
            for ih in ih0..ih1 {
                let row = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                let local = ih - ih0;
                if !local.is_multiple_of(sh) {
                    row.fill(0.0);
                    continue;
                }
                let grads = &src[local / sh * g.out_w..][..g.out_w];
                if sw == 1 {
                    row[..grads.len()].copy_from_slice(grads);
                    row[grads.len()..].fill(0.0);
                } else if sw == 2 {
                    scatter_even_set(grads, row);
                } else {
                    row.fill(0.0);
                    for (ow, &v) in grads.iter().enumerate() {
                        row[ow * sw] = v;
                    }
                }
            }
        }
    }
}

/// `dst[2 * e] = src[e]`, every other element of `dst` 0: one row of the
/// 1x1 stride-2 input gradient ([`col2im_set`]). SSE interleaves four
/// values with zeros per step.
#[inline(never)]
fn scatter_even_set(src: &[f32], dst: &mut [f32]) {
    let n = src.len();
    assert!(n == 0 || dst.len() > 2 * (n - 1));
    let mut e = 0;
    #[cfg(target_arch = "x86_64")]
    while e + 4 <= n && 2 * e + 8 <= dst.len() {
        // SAFETY: e + 4 <= n: the load reads src[e .. e + 4]; 2e + 8 <=
        // dst.len(): the stores write dst[2e .. 2e + 8]. SSE is part of
        // x86-64.
        unsafe {
            use std::arch::x86_64::*;
            let v = _mm_loadu_ps(src.as_ptr().add(e));
            let zero = _mm_setzero_ps();
            let out = dst.as_mut_ptr().add(2 * e);
            _mm_storeu_ps(out, _mm_unpacklo_ps(v, zero));
            _mm_storeu_ps(out.add(4), _mm_unpackhi_ps(v, zero));
        }
        e += 4;
    }
    for (i, &v) in src.iter().enumerate().skip(e) {
        dst[2 * i] = v;
        if let Some(odd) = dst.get_mut(2 * i + 1) {
            *odd = 0.0;
        }
    }
    let written = (2 * n).min(dst.len());
    dst[written..].fill(0.0);
}

/// `dst[2 * e] += src[e]`: the stride-2 col2im (the stride-2 3x3 and 1x1
/// layers' input gradients), the mirror of [`gather_even`]. One scalar
/// load, add and store per value were most of `col2im_add`'s samples
/// (`perf annotate`); SSE adds four values interleaved with `-0.0`, which
/// leaves the odd elements exactly as they were (`x + -0.0 == x`, zero signs
/// included).
#[inline(never)]
fn scatter_even_add(src: &[f32], dst: &mut [f32]) {
    let n = src.len();
    assert!(n == 0 || dst.len() > 2 * (n - 1));
    let mut e = 0;
    #[cfg(target_arch = "x86_64")]
    while e + 4 <= n && 2 * e + 8 <= dst.len() {
        // SAFETY: e + 4 <= n: the load reads src[e .. e + 4]; 2e + 8 <=
        // dst.len(): the loads and stores touch dst[2e .. 2e + 8]. SSE is
        // part of x86-64.
        unsafe {
            use std::arch::x86_64::*;
            let v = _mm_loadu_ps(src.as_ptr().add(e));
            let keep = _mm_set1_ps(-0.0);
            let out = dst.as_mut_ptr().add(2 * e);
            let lo = _mm_add_ps(_mm_loadu_ps(out), _mm_unpacklo_ps(v, keep));
            let hi = _mm_add_ps(_mm_loadu_ps(out.add(4)), _mm_unpackhi_ps(v, keep));
            _mm_storeu_ps(out, lo);
            _mm_storeu_ps(out.add(4), hi);
        }
        e += 4;
    }
    for (i, &v) in src.iter().enumerate().skip(e) {
        dst[2 * i] += v;
    }
}

/// Copies the chunk's images of `staging[C_out, images * P]` (the GEMM's
/// output, its columns image by image or in `order`) into their places in
/// the `[N, C_out, P]` buffer `batch`, adding `bias[c]` when given.
#[allow(clippy::too_many_arguments)]
fn restage(
    g: &Conv2dGeometry,
    plan: &Plan,
    chunk: &Chunk,
    batch: &mut [f32],
    staging: &mut [f32],
    bias: Option<&[f32]>,
    order: Option<&ClassOrder>,
) {
    let (p, width) = (plan.pixels, chunk.columns(g));
    let images = chunk.images_of_mut(batch, plan.out_image);
    if let Some(order) = order {
        // Span by span: consecutive columns that are consecutive pixels of
        // one image plane, so every element is still copied once.
        order.spans(0, width, |j, image, oh, ow, len, _| {
            let image = &mut images[image * plan.out_image..][..plan.out_image];
            let at = oh * g.out_w + ow;
            for co in 0..g.out_channels {
                let stage = &staging[co * width + j..][..len];
                let dst = &mut image[co * p + at..][..len];
                match bias {
                    Some(b) => dst.iter_mut().zip(stage).for_each(|(d, &s)| *d = s + b[co]),
                    None => dst.copy_from_slice(stage),
                }
            }
        });
        return;
    }
    for (j, image) in images.chunks_exact_mut(plan.out_image).enumerate() {
        for co in 0..g.out_channels {
            let stage = &mut staging[co * width + j * p..][..p];
            let dst = &mut image[co * p..(co + 1) * p];
            match bias {
                Some(b) => dst
                    .iter_mut()
                    .zip(stage.iter())
                    .for_each(|(d, &s)| *d = s + b[co]),
                None => dst.copy_from_slice(stage),
            }
        }
    }
}

/// Gathers the chunk's images of `[N, C_out, P]` `batch` into `staging[C_out, images * P]`.
fn gather(g: &Conv2dGeometry, plan: &Plan, chunk: &Chunk, batch: &[f32], staging: &mut [f32]) {
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

/// Where a kernel's result goes.
#[derive(Clone, Copy)]
enum Output {
    /// Each image writes its own block of this many elements (`y`, `dx`).
    PerImage(usize),
    /// Every image adds onto the whole buffer (`dW`); see [`Beta`].
    Sum,
}

/// What a call of [`for_image_groups`]'s `work` does with its buffer:
/// `0.0`, the buffer's first call, overwrites it whole (its contents are
/// unspecified: a buffer from the pool, not zeroed); `1.0` adds onto it.
/// For [`Output::Sum`] only (the weight gradient); [`Output::PerImage`]
/// calls get `0.0` and write their own images' block whole anyway.
///
/// Why: the weight gradient's sums started from zeroed buffers, a memset
/// of all of `dW` (9 MiB in layer4's 3x3 512->512) and a GEMM that read
/// the zeros back, for work that is a few hundred multiply-adds per
/// element (the GEMM's depth is the batch's output pixels). Layer4's 3x3
/// 512->512 weight gradient at batch 8 x 224 took 0.97x the CPU time
/// (Zen 2, one thread, in two runs; the other weight gradients at batch 8
/// and 1 0.99-1.00x; BENCHMARKS.md issue 9 item 38).
type Beta = f32;

/// A buffer for an [`Output::Sum`] whose every element its first call
/// writes ([`Beta`]): from the pool, not zeroed. In unit tests and debug
/// builds (`cargo test`'s parity suites) it is filled with NaN, so that
/// the tests that compare every form of the weight gradient with f64
/// loops, or a step with PyTorch's, fail where any element is left
/// unwritten (in a release build a missed element would hold a stale,
/// plausible value from the pool).
fn unset_sum(op: &'static str, len: usize) -> Result<Vec<f32>> {
    #[allow(unused_mut)]
    let mut out = buffer_pool::uninit(op, len)?;
    #[cfg(any(test, debug_assertions))]
    out.fill(f32::NAN);
    Ok(out)
}

/// The one parallel-dispatch skeleton of the three kernels: runs
/// `work(first_image, images, rows, out, par, beta)` over the whole batch
/// (output rows `rows` of each of the images), either as image groups in parallel
/// (see [`Plan::parallel_groups`]), each on one thread with `Par::Serial`,
/// or as one call whose chunks split their work across threads
/// (`Par::Split`), or, for a small sum (see [`Plan::row_groups`]), as runs
/// of output rows, each on one thread.
///
/// `out` is what `work` writes: for [`Output::PerImage`] the block of its
/// images; for [`Output::Sum`] (where `work` overwrites it on its first
/// call and adds onto it after, see [`Beta`]) `out` itself or a partial
/// sum, one per thread's run of groups, added into `out` in run order
/// afterwards so the result does not depend on scheduling. A sum over no
/// images at all is zeroed here.
fn for_image_groups(
    op: &'static str,
    plan: &Plan,
    g: &Conv2dGeometry,
    out: &mut [f32],
    output: Output,
    work: impl Fn(usize, usize, (usize, usize), &mut [f32], Par, Beta) + Sync,
) -> Result<()> {
    let all_rows = (0, g.out_h);
    if matches!(output, Output::Sum) && g.batch * plan.pixels == 0 {
        // No work call would write it.
        out.fill(0.0);
        return Ok(());
    }
    if !plan.parallel_groups(g) {
        if matches!(output, Output::Sum) && plan.row_groups(g) {
            // Thread t sums rows t * total / runs.. of the batch's
            // `batch * out_h` output rows (a run may span images).
            let total = g.batch * g.out_h;
            let runs = rayon::current_num_threads().clamp(1, total);
            return in_runs(op, out, runs, |run, out| {
                let (lo, hi) = (run * total / runs, (run + 1) * total / runs);
                let mut row = lo;
                while row < hi {
                    let (image, r0) = (row / g.out_h, row % g.out_h);
                    let r1 = g.out_h.min(r0 + hi - row);
                    let beta = if row == lo { 0.0 } else { 1.0 };
                    work(image, 1, (r0, r1), out, Par::Serial, beta);
                    row += r1 - r0;
                }
            });
        }
        work(0, g.batch, all_rows, out, Par::Split, 0.0);
        return Ok(());
    }
    let group = plan.images_per_chunk;
    match output {
        Output::PerImage(per_image) => {
            out.par_chunks_mut(group * per_image)
                .enumerate()
                .for_each(|(i, out)| {
                    let count = out.len() / per_image;
                    work(i * group, count, all_rows, out, Par::Serial, 0.0)
                });
        }
        Output::Sum => {
            // The groups in one contiguous run per thread, each run summed
            // in order into its own buffer, thread t running run t (see
            // `in_runs`).
            let groups = g.batch.div_ceil(group);
            let runs = rayon::current_num_threads().clamp(1, groups);
            in_runs(op, out, runs, |run, out| {
                let (lo, hi) = (run * groups / runs, (run + 1) * groups / runs);
                for i in lo..hi {
                    let first = i * group;
                    let count = group.min(g.batch - first);
                    let beta = if i == lo { 0.0 } else { 1.0 };
                    work(first, count, all_rows, out, Par::Serial, beta);
                }
            })?;
        }
    }
    Ok(())
}

/// Runs `run(r, buffer)` for `r` in `0..runs` in parallel, each summing
/// into its own buffer, which it overwrites whole first ([`Beta`]): the
/// first run straight into `out`, the others into partials taken before
/// the parallel part and added into `out` in run order afterwards. So a
/// call holds `runs - 1` partials, a number fixed in advance: with one
/// per group, as many were live as rayon happened to start, and the
/// pool's size class for them still grew now and then in a steady-state
/// step (a few page faults per step, BENCHMARKS.md). The
/// sum's order depends only on `runs`, not on scheduling.
///
/// With one run per thread, thread `r` of the pool runs run `r`
/// ([`part_per_thread`]), so each thread meets the same chunk sizes, and so
/// asks for the same scratch, in every call. Handed out by work stealing,
/// a thread that had run no run in one step first took a scratch buffer
/// in a later one (a steady-state scratch growth in
/// `tests/cpu_buffer_pool.rs`): the output-row runs of
/// [`Plan::row_groups`] at 3 threads, and the image-group runs of the
/// small weight gradients on the portable path at 2 threads (a worker
/// that ran neither shifted 3x3 weight gradient run of layers 1-2 in
/// the two warm-up steps grew its `Columns` buffer from 0 in a later one,
/// 3 runs of 70 under load, BENCHMARKS.md issue 9 item 39).
fn in_runs(
    op: &'static str,
    out: &mut [f32],
    runs: usize,
    run: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<()> {
    let mut partials = (1..runs)
        .map(|_| unset_sum(op, out.len()))
        .collect::<Result<Vec<_>>>()?;
    let targets: Vec<&mut [f32]> = std::iter::once(&mut *out)
        .chain(partials.iter_mut().map(|p| p.as_mut_slice()))
        .collect();
    if runs == rayon::current_num_threads() {
        part_per_thread(targets, &run);
    } else {
        targets
            .into_par_iter()
            .enumerate()
            .for_each(|(r, out)| run(r, out));
    }
    out.par_chunks_mut(1 << 14)
        .enumerate()
        .for_each(|(i, out)| {
            for partial in &partials {
                out.iter_mut()
                    .zip(&partial[i << 14..])
                    .for_each(|(o, &p)| *o += p);
            }
        });
    partials.into_iter().for_each(buffer_pool::recycle);
    Ok(())
}

/// Runs `f(t, part)` for each of `parts` on thread `t` of the current
/// rayon pool (`rayon::broadcast`): one part per thread, which thread gets
/// which never left to work stealing. So each thread meets the same part,
/// and asks for the same scratch, in every call: a worker that ran no part
/// of a layer in one step (the other thread took both) first grew its
/// scratch in a later step (`tests/cpu_buffer_pool.rs`, BENCHMARKS.md
/// issue 9 items 37 and 39). The price: a descheduled thread's part is not
/// taken over by the other.
fn part_per_thread<T: Send>(parts: Vec<T>, f: impl Fn(usize, T) + Sync) {
    debug_assert_eq!(parts.len(), rayon::current_num_threads());
    let parts: Vec<std::sync::Mutex<Option<T>>> = parts
        .into_iter()
        .map(|p| std::sync::Mutex::new(Some(p)))
        .collect();
    rayon::broadcast(|ctx| {
        // Each index is one thread's alone: the lock never waits.
        let part = parts.get(ctx.index()).and_then(|p| {
            p.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        if let Some(part) = part {
            f(ctx.index(), part);
        }
    });
}

/// Images `first..first + count` of a batch buffer of `per_image` elements each.
fn batch_images(data: &[f32], per_image: usize, first: usize, count: usize) -> &[f32] {
    &data[first * per_image..(first + count) * per_image]
}

/// `y = conv2d(x, w) + bias`.
pub(super) fn conv2d(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    forward_with(x, w, bias, g, FORWARD_LIMITS)
}

fn forward_with(
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
fn forward_skipping(
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
enum Skip {
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
    let (_, nr) = super::gemm::tile(simd::active());
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
            super::env_switch::choice(&MODE, "FROSTGRAD_CONV_SKIP_PADDING", |v| match v {
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
/// up), at least one image per thread, and at most
/// [`DIRECT_MAX_OUT_CHANNELS`] output channels. `force` (tests), else
/// `FROSTGRAD_CONV_DIRECT=0` never, `=1` wherever the path and shape allow
/// it regardless of channels and batch (for comparison).
fn direct_width(g: &Conv2dGeometry, plan: &Plan, force: Option<bool>) -> Option<DirectTile> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let mode =
        force.or_else(|| super::env_switch::forced(&MODE, "FROSTGRAD_CONV_DIRECT", "1", "0"));
    #[cfg(target_arch = "x86_64")]
    let tile = {
        let path = simd::active();
        let (mr, nr) = super::gemm::tile(path);
        (nr > 0).then_some(DirectTile { path, mr, nr })?
    };
    #[cfg(not(target_arch = "x86_64"))]
    let tile: DirectTile = return None;
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
        && u32::try_from(g.in_channels.checked_mul(padded)?).is_ok();
    let rule = g.out_channels <= DIRECT_MAX_OUT_CHANNELS && g.batch >= rayon::current_num_threads();
    (shape && mode.unwrap_or(rule)).then_some(tile)
}

/// The fewest output pixels per image at which images small enough to be
/// grouped for the im2col GEMM (`Plan::images_per_chunk` > 1) still run
/// as a direct convolution, on the AVX2 path: the GEMM skips their padding
/// taps ([`skip_order`]; 9 % of a 3x3 kernel's at 14x14, 18 % at 7x7),
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
struct DirectTile {
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
fn forward_direct(
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
    with_scratch(Slot::PackedLhs, panels * k * nr, |b| {
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
            let prefetch = if super::microkernel::direct_reads_prefetch(path) {
                super::microkernel::prefetch_table(offsets, 1, mr, prefetch);
                prefetch
            } else {
                &mut prefetch[..0]
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (mr, path);
            let (offsets, prefetch) = (&*offsets, &*prefetch);
            let image = |i: usize, y: &mut [f32]| {
                let x = &x[i * in_image..][..in_image];
                let block = block_rows * g.out_w * n;
                with_scratch(Slot::Staging, g.in_channels * plane + block, |buf| {
                    let (padded, c) = buf.split_at_mut(g.in_channels * plane);
                    pad_planes(x, g, padded);
                    for r0 in (0..g.out_h).step_by(block_rows) {
                        let rows = block_rows.min(g.out_h - r0);
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the CPU supports `path` (the active
                        // path, read once by `direct_width`, which only
                        // returns one with a tile) and `b` was packed `nr`
                        // wide for that same path; pixel (oh,
                        // ow) at depth (ch, kh, kw) reads padded row oh +
                        // kh * d_h, column ow + kw * d_w of plane ch,
                        // inside it since the output size leaves (out - 1)
                        // + d (k - 1) < the padded size (stride 1); the
                        // tables hold k entries, `b` the panels, `c` the
                        // block's rows * out_w rows of n.
                        unsafe {
                            super::microkernel::direct_rows(
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
                        let q = rows * g.out_w;
                        transpose(&c[..q * n], q, n, &mut y[r0 * g.out_w..], pixels);
                    }
                    if let Some(bias) = bias {
                        for (row, &bv) in y.chunks_exact_mut(pixels).zip(bias) {
                            row.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                });
            };
            // Thread t of the pool runs images t * batch / threads.. of
            // the batch ([`part_per_thread`]), so each thread asks for the
            // same scratch in every call: handed out by work stealing, a
            // worker that had run no image of this layer in one step took
            // its first (and grew its buffer) in a later one, now and then
            // (`tests/cpu_buffer_pool.rs`, AVX2).
            let threads = rayon::current_num_threads().max(1);
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
                    image(first + j, y);
                }
            });
        });
    });
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

/// The forward of the whole batch with the weight as the GEMM's left
/// operand `weight` (`[C_out, taps]`).
fn forward_lhs(
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

/// `dx` for every image: the forward convolution of `dy` with the flipped
/// weight where [`flipped_geometry`] allows it and [`flip_input_grad`]
/// chooses it, else `col2im(Wᵀ · dy)`.
pub(super) fn conv2d_input_grad(dy: &[f32], w: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
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
/// convolution ([`direct_width`] of `flipped`). Measured on Zen 4, batch
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
    let forced = super::env_switch::forced(&MODE, "FROSTGRAD_CONV_DX", "flip", "col2im");
    forced.unwrap_or_else(|| {
        let pixels = g.in_h * g.in_w;
        g.kernel_h * g.kernel_w > 1
            && pixels >= FLIP_MIN_PIXELS
            && match simd::active() {
                simd::SimdPath::Avx512 => true,
                simd::SimdPath::Avx2 => pixels <= FLIP_AVX2_MAX_PIXELS || flips_direct(flipped),
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
fn flipped_geometry(g: &Conv2dGeometry) -> Option<Conv2dGeometry> {
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
fn input_grad_flipped(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    flipped: &Conv2dGeometry,
    limits: Limits,
) -> Result<Vec<f32>> {
    input_grad_flipped_skipping(dy, w, g, flipped, limits, Skip::Auto, None)
}

/// [`input_grad_flipped`], skipping the padding taps as `skip` says, and
/// as a direct convolution as `direct` says ([`direct_width`]).
fn input_grad_flipped_skipping(
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeometry,
    flipped: &Conv2dGeometry,
    limits: Limits,
    skip: Skip,
    direct: Option<bool>,
) -> Result<Vec<f32>> {
    let op = "conv2d_input_grad";
    let plan = Plan::new(op, flipped, limits)?;
    let taps = g.kernel_h * g.kernel_w;
    let per_out = g.in_channels * taps;
    let offset = |p: usize| (p / taps) * per_out + (taps - 1 - p % taps);
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
fn input_grad_with(dy: &[f32], w: &[f32], g: &Conv2dGeometry, limits: Limits) -> Result<Vec<f32>> {
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
    let on = super::env_switch::on_unless_zero(&ON, "FROSTGRAD_CONV_DX_OVERWRITE");
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
/// [`merges_tap_rows`].
fn input_grad_col2im(
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
                input_grad_images(dy, weight_t, g, &plan, dx, count, par, form);
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
) {
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
            );
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
        let mut channels = (plan.dx_block_elems / (widest * per_channel))
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
        let block_len = channels.min(g.in_channels) * per_channel * widest;
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
                    sgemm_rows(weight_t, m, rows, k, width, grad_out, col);
                    if overwrite {
                        col2im_set(col, g, &chunk, planes);
                    } else {
                        col2im_add(col, g, &chunk, planes, merge);
                    }
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
                        with_scratch(Slot::SplitColumns, threads * block_len, |cols| {
                            let cols: Vec<std::sync::Mutex<&mut [f32]>> = cols
                                .chunks_mut(block_len)
                                .map(std::sync::Mutex::new)
                                .collect();
                            targets.par_iter_mut().enumerate().for_each(|(b, planes)| {
                                let mine = rayon::current_thread_index().unwrap_or(0) % threads;
                                let mut col = cols[mine]
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                                block(b, planes, &mut col);
                            });
                        })
                    }
                    Par::Serial => with_scratch(Slot::Columns, block_len, |col| {
                        for (b, planes) in targets.iter_mut().enumerate() {
                            block(b, planes, col);
                        }
                    }),
                }
            })
        });
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// `dW = Σ_images dy · colᵀ`.
pub(super) fn conv2d_weight_grad(dy: &[f32], x: &[f32], g: &Conv2dGeometry) -> Result<Vec<f32>> {
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
fn weight_grad_limits(g: &Conv2dGeometry) -> Limits {
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

fn weight_grad_with(dy: &[f32], x: &[f32], g: &Conv2dGeometry, limits: Limits) -> Result<Vec<f32>> {
    if by_classes(g) {
        return weight_grad_classes(dy, x, g, limits);
    }
    match shifted_rows(g) {
        Some(rows) => weight_grad_shifted(dy, x, g, &rows, limits),
        None => weight_grad_im2col(dy, x, g, limits),
    }
}

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
fn by_classes(g: &Conv2dGeometry) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = super::env_switch::on_unless_zero(&ENABLED, "FROSTGRAD_DW_CLASSES");
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
fn weight_grad_classes(
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
            return;
        }
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
                weight_grad_tap_columns(dy, xt, g, &plan, &tables, sums, (count, width), beta);
            }
        });
        // SAFETY: `dw` outlives this call and nothing else touches it
        // meanwhile; each thread writes the elements of its own input
        // channels c0..c1 (disjoint: `tap_column_parts`) of each row.
        unsafe { reorder_tap_columns(sums, g, (c0, c1), &dw_out) };
    });
    tables.recycle();
    buffer_pool::recycle(by_tap);
    Ok(dw)
}

/// `dW`'s buffer, written by several threads at once at disjoint
/// elements ([`reorder_tap_columns`]).
struct SharedOut(*mut f32);
// SAFETY: the threads that share it write disjoint elements (see its uses).
unsafe impl Sync for SharedOut {}

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
        let (_, nr) = super::gemm::tile(simd::active());
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
                let rows = (h.1 - h.0) * (w.1 - w.0);
                taps.push((total, rows));
                total += images * rows;
            }
        }
        let mut data = buffer_pool::uninit::<i64>(op, 2 * total)?;
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
) {
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
        );
    }
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
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            // Channel k's taps 0-7.
            let u = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
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

/// The weight gradient as `dy · colsᵀ` over the full column matrix: every
/// geometry (the shifted form covers only some, see [`shifted_rows`]).
fn weight_grad_im2col(
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
            weight_grad_images(dy, x, g, &plan, dw, (count, rows), par, beta);
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
) {
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
        });
    });
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
    mut add: impl FnMut(Chunk, &mut [f32], Beta),
) {
    let chunks = plan.chunks_rows(g, batch, rows);
    if chunks.is_empty() && beta == 0.0 {
        out.fill(0.0);
    }
    for (i, chunk) in chunks.into_iter().enumerate() {
        add(chunk, out, if i == 0 { beta } else { 1.0 });
    }
}

/// The geometry of the shifted weight gradient's row taps (see
/// [`weight_grad_shifted`]): the convolution with its kernel reduced to
/// one column, unpadded and undilated along the width, so that tap
/// `(c, kh)` at output `(oh, w)` reads input pixel `(c, oh + kh * d - p,
/// w)`. `None` where the shifted form does not apply: strides other than
/// 1, output rows narrower or wider than the input's, 1-wide kernels, more
/// than [`SHIFTED_MAX_ROW_TAPS`] row taps, or `FROSTGRAD_DW_SHIFTED=0`
/// (for comparison).
fn shifted_rows(g: &Conv2dGeometry) -> Option<Conv2dGeometry> {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = super::env_switch::on_unless_zero(&ENABLED, "FROSTGRAD_DW_SHIFTED");
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
                    with_scratch(Slot::Columns, kw_n * c_out * width, |a| {
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
                    });
                },
            );
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
fn with_grad_out<R>(
    g: &Conv2dGeometry,
    plan: &Plan,
    chunk: &Chunk,
    dy: &[f32],
    f: impl FnOnce(MatRef<'_>) -> R,
) -> R {
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
        for (case, (input, stride)) in
            [([3, 40, 4, 5], 1), ([2, 40, 7, 7], 2), ([1, 40, 16, 16], 1)]
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
                    (0..plane)
                        .flat_map(move |q| (0..g.in_channels).map(move |c| image[c * plane + q]))
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
        let g = Conv2dGeometry::new([8, 256, 14, 14], [512, 256, 3, 3], (2, 2), (1, 1), (1, 1))
            .unwrap();
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
                let g =
                    Conv2dGeometry::new([32, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
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
        for (case, &((input, weight, stride, padding, dilation), images)) in
            cases.iter().enumerate()
        {
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
                            format!("case {case} {g:?} {path:?} groups {groups_per_thread} {skip:?} {k}")
                        };
                        let limits_y = limits(g.out_h * g.out_w);
                        let y = pool.install(|| {
                            pool.broadcast(|_| {
                                with_scratch(Slot::Staging, 1 << 12, |b| b.fill(f32::NAN));
                            });
                            forward_skipping(&x, &w, Some(&b), &g, limits_y, skip, Some(false))
                                .unwrap()
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
        let g =
            Conv2dGeometry::new([4, 256, 4, 4], [512, 256, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
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
                let g = Conv2dGeometry::new(
                    [batch, c, size, size],
                    [c, c, 3, 3],
                    (1, 1),
                    (1, 1),
                    (1, 1),
                )
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
                    let mut planes: Vec<&mut [f32]> =
                        data.chunks_exact_mut(c * plane_len).collect();
                    col2im_set(&col, &g, &chunk, &mut planes);
                }
                let ih0 = rows.0 * sh;
                let ih1 = if rows.1 >= g.out_h { in_h } else { rows.1 * sh };
                for j in 0..images {
                    for ch in 0..c {
                        for ih in 0..in_h {
                            for iw in 0..in_w {
                                let got = data[(j * c + ch) * plane_len + ih * in_w + iw];
                                let what =
                                    format!("{g:?} rows {rows:?} image {j} c {ch} ({ih}, {iw})");
                                if !(ih0..ih1).contains(&ih) {
                                    assert!(got.is_nan(), "{what}: written outside the chunk");
                                    continue;
                                }
                                let (oh, ow) = (ih / sh, iw / sw);
                                let lands =
                                    ih % sh == 0 && iw % sw == 0 && oh < rows.1 && ow < g.out_w;
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
                    let dx = pool.install(|| {
                        input_grad_col2im(&dy, &w, &g, limits, overwrite, true).unwrap()
                    });
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
}
