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
//! column matrix of the `(c, kh)` taps only (`weight_grad::weight_grad_shifted`;
//! `FROSTGRAD_DW_SHIFTED=0` turns it off, for comparison). Otherwise the
//! weight gradient's transposed column matrix (depth = output pixels) is
//! packed one input patch row at a time on the AVX-512 path
//! ([`im2col::fill_patches`]; `FROSTGRAD_DW_PATCHES=0` turns it off, for
//! comparison). Over small images where enough of the column matrix is
//! padding (ResNet's 14x14 to 4x4 stages, and 20x20 at 320x320 input, see
//! [`by_classes`]) the weight gradient
//! runs one kernel tap at a time over only the output pixels that tap sees
//! real input at ([`weight_grad_classes`]; `FROSTGRAD_DW_CLASSES=0` turns
//! it off, for comparison).
//!
//! The stride-1, padding-1 3x3 forward and flipped input gradient (all of
//! ResNet-18's stride-1 3x3 layers) run through Winograd's F(2x2, 3x3)
//! where it pays ([`winograd`]): 16 multiplications per 2x2 output tile
//! and channel pair instead of 36, as 16 GEMMs over channels on the same
//! micro-kernels, between an input and an output transform. Those layers
//! were at the FMA roofline (~100 of the 104 GF/s one-thread probe on Zen
//! 2), so only fewer multiplications could make them faster: 0.67-0.89x
//! (forward) and 0.70-0.94x (input gradient) the CPU time of the direct
//! or im2col path at batch 8, 224x224 (one thread; commit c4de002,
//! BENCHMARKS.md issue 9 item 47). Chosen on the AVX2 path from 32 output
//! tiles up (below that the per-call weight transform costs more than it
//! saves; with few tiles per thread the work splits by output channels);
//! `FROSTGRAD_CONV_WINOGRAD=0` never, `=1` wherever the shape allows (for
//! comparison). Precedence: `FROSTGRAD_CONV_DIRECT=1` (forced direct
//! convolution) keeps these layers off Winograd unless
//! `FROSTGRAD_CONV_WINOGRAD=1` is also set, which wins.
//! The weight gradient of the same layers runs through
//! F(2x2, 3x3) too where it pays (`winograd/weight_grad.rs`): 16 GEMMs
//! `M_ξ = dŶ_ξ · V_ξᵀ` summed over the tiles (`V` the forward's
//! transformed input, `dŶ = A dY Aᵀ`), then `Gᵀ M G` per channel pair; on
//! AVX2, from 40 tiles per thread, and not at 7x7 (whose tiles cover 64
//! pixels for 49), and where the threads' partial sums of `M` fit 8 MiB
//! (else the positions would be split and every thread transform every
//! tile); the same `FROSTGRAD_CONV_WINOGRAD` switch
//! (`FROSTGRAD_CONV_DIRECT` does not concern it). On the layers it takes,
//! `FROSTGRAD_DW_SHIFTED`, `_DW_PATCHES` and `_DW_CLASSES` compare their
//! forms only with `FROSTGRAD_CONV_WINOGRAD=0`.
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
//! convolution skips. `forward::skip_order` decides where;
//! `FROSTGRAD_CONV_SKIP_PADDING=0` turns it off, `=1` on wherever possible
//! (for comparison).
//!
//! Parallelism: with enough image groups (the images of one chunk) per
//! rayon thread, whole groups run as parallel tasks, each with its own
//! im2col and a single-threaded GEMM; otherwise (the 7x7 stage, small
//! batches) chunks run one at a time with their im2col rows and GEMM
//! blocks split across threads. See [`Plan::parallel_groups`].
//!
//! Files, one job each: this one holds the chunk plan ([`Plan`],
//! [`Chunk`], [`Limits`]) and the group drivers every direction shares;
//! `columns.rs` packs im2col panels for the GEMM ([`Columns`]);
//! `col2im.rs` scatters the input gradient's columns back onto images;
//! `forward.rs` is the forward and its padding-tap skip; `direct.rs` the
//! direct convolution (no column matrix) of stride-1 layers;
//! `input_grad.rs` the input gradient (flipped forward or col2im);
//! `weight_grad.rs` the weight gradient's im2col and shifted forms, and
//! `weight_grad_taps.rs` its tap-by-tap form for small padded images;
//! `winograd.rs` F(2x2, 3x3) for the stride-1 3x3 forward and input
//! gradient, `winograd/weight_grad.rs` for their weight gradient;
//! each file's `tests` module checks its code against the float64
//! reference loops in `test_support.rs`, which they share.
//!
//! [`input_grad_flipped`]: input_grad::input_grad_flipped
//! [`im2col::fill_patches`]: super::im2col::fill_patches
//! [`by_classes`]: weight_grad_taps::by_classes
//! [`weight_grad_classes`]: weight_grad_taps::weight_grad_classes
//! [`Columns`]: columns::Columns
//! [`winograd`]: winograd

use rayon::prelude::*;

use super::buffer_pool;
use super::check::{checked_numel, checked_sum};
use super::gemm::Par;
use super::simd;
use crate::backend::Conv2dGeometry;
use crate::error::Result;

mod col2im;
mod columns;
mod direct;
mod forward;
mod input_grad;
#[cfg(test)]
mod test_support;
mod weight_grad;
mod weight_grad_taps;
mod winograd;

pub(super) use columns::gather_even;
pub(super) use forward::conv2d;
pub(super) use input_grad::conv2d_input_grad;
pub(super) use weight_grad::conv2d_weight_grad;

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
///
/// [`weight_grad_limits`]: weight_grad::weight_grad_limits
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

/// Checks the size products that the three kernels' entry points and
/// plans derive from the geometry (a plane of input or output pixels, the
/// batch's output pixels, the taps of a kernel, the taps of all output
/// channels): the geometry's own checks bound the input, weight and output
/// element counts, but with no input channel or no image those are 0
/// whatever the other sizes, so a hostile shape could overflow these.
/// Once per call, at entry (`conv2d_input_grad` and `conv2d_weight_grad`
/// before choosing a form; the forward and every form through
/// [`Plan::new`]). Products of these with each other (a chunk's columns of
/// all taps) are checked where a buffer is sized from them.
fn check_sizes(op: &'static str, g: &Conv2dGeometry) -> Result<()> {
    checked_numel(op, &[g.in_h, g.in_w])?;
    checked_numel(op, &[g.batch, g.out_h, g.out_w])?;
    checked_numel(op, &[g.in_channels, g.kernel_h, g.kernel_w])?;
    checked_numel(op, &[g.out_channels, g.kernel_h, g.kernel_w])?;
    Ok(())
}

impl Plan {
    fn new(op: &'static str, g: &Conv2dGeometry, limits: Limits) -> Result<Self> {
        check_sizes(op, g)?;
        let taps = checked_numel(op, &[g.in_channels, g.kernel_h, g.kernel_w])?;
        let pixels = checked_numel(op, &[g.out_h, g.out_w])?;
        let in_image = checked_numel(op, &[g.in_channels, g.in_h, g.in_w])?;
        let out_image = checked_numel(op, &[g.out_channels, pixels])?;
        checked_numel(op, &[g.batch, in_image.max(out_image)])?;
        // Saturating: these only divide a block size (an output row of
        // columns larger than usize holds is larger than any block); the
        // buffers are sized from products checked where they are made.
        let row_elems = taps.saturating_mul(g.out_w).max(1);
        let rows_per_block = (limits.block_elems / row_elems).clamp(1, g.out_h.max(1));
        let images_per_chunk = if rows_per_block < g.out_h {
            1
        } else {
            let wanted = limits.min_columns.div_ceil(pixels.max(1));
            // The portable path's GEMM (`matrixmultiply`) takes the
            // group's whole column matrix stored: there the old bound holds.
            let packs_in_blocks = simd::active() != simd::SimdPath::Portable;
            let fit = match limits.group_pack_elems.filter(|_| packs_in_blocks) {
                Some(elems) => elems / taps.min(GROUP_PACK_DEPTH).saturating_mul(pixels).max(1),
                None => limits.block_elems / taps.saturating_mul(pixels).max(1),
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
    ///
    /// [`weight_grad_limits`]: weight_grad::weight_grad_limits
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

/// `FROSTGRAD_CONV_WINOGRAD` as [`winograd::chosen`] reads it: `Some(true)`
/// at `1` (wherever F(2x2, 3x3) applies), `Some(false)` at `0` (never),
/// `None` (unset or any other value: the measured rule), through the same
/// `env_switch::forced`, read once; for `frostgrad bench`'s report
/// (`super::conv_winograd`). The test
/// `winograd_mode_is_the_one_dispatch_reads` holds the two reads together.
pub(super) fn winograd_mode() -> Option<bool> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    super::env_switch::forced(&MODE, "FROSTGRAD_CONV_WINOGRAD", "1", "0")
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
    work: impl Fn(usize, usize, (usize, usize), &mut [f32], Par, Beta) -> Result<()> + Sync,
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
                    work(image, 1, (r0, r1), out, Par::Serial, beta)?;
                    row += r1 - r0;
                }
                Ok(())
            });
        }
        return work(0, g.batch, all_rows, out, Par::Split, 0.0);
    }
    let group = plan.images_per_chunk;
    match output {
        Output::PerImage(per_image) => {
            out.par_chunks_mut(group * per_image)
                .enumerate()
                .try_for_each(|(i, out)| {
                    let count = out.len() / per_image;
                    work(i * group, count, all_rows, out, Par::Serial, 0.0)
                })?;
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
                    work(first, count, all_rows, out, Par::Serial, beta)?;
                }
                Ok(())
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
    run: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    let mut partials = (1..runs)
        .map(|_| unset_sum(op, out.len()))
        .collect::<Result<Vec<_>>>()?;
    let targets: Vec<&mut [f32]> = std::iter::once(&mut *out)
        .chain(partials.iter_mut().map(|p| p.as_mut_slice()))
        .collect();
    let ran = if runs == rayon::current_num_threads() {
        part_per_thread(targets, &run)
    } else {
        targets
            .into_par_iter()
            .enumerate()
            .try_for_each(|(r, out)| run(r, out))
    };
    if let Err(e) = ran {
        partials.into_iter().for_each(buffer_pool::recycle);
        return Err(e);
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

/// An output buffer that several threads of one [`part_per_thread`] call
/// write at once, each at elements no other thread touches: `dW` in
/// `weight_grad_taps::reorder_tap_columns` (each part its own input
/// channels), one image's output in `direct::forward_direct` with fewer
/// images than threads (each part its own output rows). Every write
/// through it is an `unsafe` block that states which elements it owns.
struct SharedOut(*mut f32);

// SAFETY: sharing the pointer across threads is sound because each use
// writes only elements that its thread alone owns (disjoint parts, stated
// at each write), nothing reads the buffer meanwhile, and the buffer
// outlives every use (`part_per_thread` returns after all parts ran).
unsafe impl Sync for SharedOut {}

/// Runs `f(t, part)` for each of `parts` on thread `t` of the current
/// rayon pool (`rayon::broadcast`): one part per thread, which thread gets
/// which never left to work stealing. So each thread meets the same part,
/// and asks for the same scratch, in every call: a worker that ran no part
/// of a layer in one step (the other thread took both) first grew its
/// scratch in a later step (`tests/cpu_buffer_pool.rs`, BENCHMARKS.md
/// issue 9 items 37 and 39). The price: a descheduled thread's part is not
/// taken over by the other. Every part runs; the first error of any part
/// (in thread order) is returned.
fn part_per_thread<T: Send>(
    parts: Vec<T>,
    f: impl Fn(usize, T) -> Result<()> + Sync,
) -> Result<()> {
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
        match part {
            Some(part) => f(ctx.index(), part),
            None => Ok(()),
        }
    })
    .into_iter()
    .collect()
}

/// Images `first..first + count` of a batch buffer of `per_image` elements each.
fn batch_images(data: &[f32], per_image: usize, first: usize, count: usize) -> &[f32] {
    &data[first * per_image..(first + count) * per_image]
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

#[cfg(test)]
mod tests {
    use super::forward::forward_with;
    use super::input_grad::{flipped_geometry, input_grad_flipped, input_grad_with};
    use super::test_support::{assert_close, for_each_case, thread_pool, Case, Seeds};
    use super::weight_grad::{
        shifted_rows, weight_grad_im2col, weight_grad_limits, weight_grad_with,
    };
    use super::weight_grad_taps::{by_classes, weight_grad_classes};
    use super::*;
    use crate::error::Error;

    /// The mode the bench reports is the one the dispatch follows: 512@7
    /// at batch 1 (16 tiles) where F(2x2, 3x3) applies but never pays, so
    /// it runs there only when forced on; 64@56 at batch 8 (6 272 tiles),
    /// which pays on AVX2, so it runs there unless forced off.
    #[test]
    fn winograd_mode_is_the_one_dispatch_reads() {
        let mode = winograd_mode();
        let geo = |batch, c, size| {
            Conv2dGeometry::new([batch, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
                .unwrap()
        };
        let pool = thread_pool(2);
        simd::on_every_path(&pool, |path| {
            pool.install(|| {
                let what = format!("{path:?} FROSTGRAD_CONV_WINOGRAD {mode:?}");
                assert_eq!(
                    winograd::chosen(&geo(1, 512, 7)),
                    mode == Some(true),
                    "{what}"
                );
                let pays = path == simd::SimdPath::Avx2;
                assert_eq!(
                    winograd::chosen(&geo(8, 64, 56)),
                    mode.unwrap_or(pays),
                    "{what}"
                );
            });
        });
    }

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
        let pool = thread_pool(2);
        let seeds = Seeds::new(1, 100, Some(200), 300);
        for_each_case(CASES, seeds, |case, _, d| {
            let (g, x, w, b, dy, r) = (&d.g, &d.x, &d.w, &d.b, &d.dy, &d.r);
            let pixels = g.out_h * g.out_w;
            let no_bias: Vec<f64> =
                r.y.iter()
                    .enumerate()
                    .map(|(i, &v)| v - f64::from(b[(i / pixels) % g.out_channels]))
                    .collect();
            let taps_row = g.kernel_h * g.kernel_w * g.in_channels * g.out_w;
            // One output row per chunk: exercises the block seams.
            let one_row = Limits {
                block_elems: 1,
                min_columns: 1,
                groups_per_thread: 2,
                dx_block_elems: 1,
                group_pack_elems: None,
            };
            let variants = [
                // The defaults: these small images are grouped per chunk.
                LIMITS,
                one_row,
                // Two output rows per chunk.
                Limits {
                    block_elems: 2 * taps_row,
                    ..one_row
                },
                // One whole image per chunk (the 1x1 case takes the im2col-free path).
                Limits {
                    block_elems: usize::MAX / 2,
                    ..one_row
                },
                // Two images per chunk, so a batch of 3 ends in a partial group.
                Limits {
                    block_elems: usize::MAX / 2,
                    min_columns: 2 * pixels,
                    ..one_row
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
            // All of it on every SIMD path this CPU has.
            simd::on_every_path(&pool, |path| {
                for (v, limits) in variants.clone().enumerate() {
                    let what = |k: &str| format!("case {case} {path:?} limits #{v} {k}");
                    let (y, y_no_bias, dx, dw) = pool.install(|| {
                        (
                            forward_with(x, w, Some(b), g, limits).unwrap(),
                            forward_with(x, w, None, g, limits).unwrap(),
                            input_grad_with(dy, w, g, limits).unwrap(),
                            weight_grad_with(dy, x, g, limits).unwrap(),
                        )
                    });
                    assert_close(&what("y"), &y, &r.y, 1e-5);
                    assert_close(&what("y without bias"), &y_no_bias, &no_bias, 1e-5);
                    assert_close(&what("dx"), &dx, &r.dx, 1e-5);
                    assert_close(&what("dw"), &dw, &r.dw, 1e-5);
                    if shifted_rows(g).is_some() || by_classes(g) {
                        // The im2col form still serves the layers the shifted
                        // one leaves (more row taps): check it here too.
                        let dw = pool.install(|| weight_grad_im2col(dy, x, g, limits).unwrap());
                        assert_close(&what("dw im2col"), &dw, &r.dw, 1e-5);
                    }
                    // The tap-by-tap form on every geometry, not only the
                    // small padded images it is chosen for.
                    let dw = pool.install(|| weight_grad_classes(dy, x, g, limits).unwrap());
                    assert_close(&what("dw by taps"), &dw, &r.dw, 1e-5);
                    if let Some(flipped) = flipped_geometry(g) {
                        let dx = pool
                            .install(|| input_grad_flipped(dy, w, g, &flipped, limits).unwrap());
                        assert_close(&what("dx flipped"), &dx, &r.dx, 1e-5);
                    }
                }
            });
        });
    }

    #[test]
    fn forward_gives_every_thread_an_image_group() {
        // Layer4's 3x3 256->512 stride 2 at batch 8: eight 7x7 outputs fit
        // one chunk, which left one of two threads idle in the forward.
        let g = Conv2dGeometry::new([8, 256, 14, 14], [512, 256, 3, 3], (2, 2), (1, 1), (1, 1))
            .unwrap();
        let pool = thread_pool(2);
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
        let pool = thread_pool(2);
        simd::on_every_path(&pool, |path| pool.install(|| forward_groups_for_path(path)));
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
    fn in_runs_runs_run_r_on_thread_r() {
        // Which thread sums which run is not up to work stealing: a worker
        // that ran no weight-gradient run in one step first asked for its
        // `Columns` scratch (and grew it) in a later one
        // (`tests/cpu_buffer_pool.rs`, portable path). Called from inside
        // the pool, where a parallel iterator runs the first part on the
        // calling thread, whatever its index.
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let threads = 3;
        let pool = thread_pool(threads);
        pool.install(|| {
            for _ in 0..20 {
                let ran: Vec<AtomicUsize> =
                    (0..threads).map(|_| AtomicUsize::new(usize::MAX)).collect();
                let mut out = vec![f32::NAN; 1000];
                in_runs("test", &mut out, threads, |r, out| {
                    ran[r].store(rayon::current_thread_index().unwrap_or(usize::MAX), SeqCst);
                    out.fill(r as f32 + 1.0);
                    Ok(())
                })
                .unwrap();
                let ran: Vec<usize> = ran.iter().map(|t| t.load(SeqCst)).collect();
                assert_eq!(ran, (0..threads).collect::<Vec<_>>(), "run r on thread r");
                assert!(out.iter().all(|&v| v == 6.0), "the runs' sum: 1 + 2 + 3");
            }
        });
    }

    /// With the growth of one scratch buffer or working list refused (as
    /// the allocator refuses a request too large for the machine) and the
    /// others' allowed, so that the outer requests succeed and the inner
    /// ones (a parallel part's) fail, each entry point on each path returns
    /// the out-of-memory error naming that buffer, from whichever thread
    /// met it, or, where it needed no such buffer, the right result: no
    /// abort, no panic, no result computed in a buffer it did not get. And
    /// the buffers each path's kernels use meet the refusal, so their
    /// errors are really propagated (a kernel that dropped one would fail
    /// here).
    #[test]
    fn a_refused_scratch_buffer_is_an_error_from_every_entry_point() {
        use crate::backend::cpu::scratch::{refusing_growth, Refusal};
        const NAMES: [&str; 14] = [
            "Columns",
            "SplitColumns",
            "Staging",
            "PackedLhs",
            "Tables",
            "Dense",
            "PackRows",
            "pack taps",
            "pack live taps",
            "pack runs",
            "pack reads",
            // The micro-kernels' fixed-size buffers (microkernel.rs).
            "micro-kernel A packing",
            "micro-kernel B packing",
            "micro-kernel live-row tables",
        ];
        let mut cases: Vec<Case> = CASES.to_vec();
        // Winograd-sized 3x3 layers, several images and one.
        cases.push(([4, 16, 12, 12], [16, 16, 3, 3], (1, 1), (1, 1), (1, 1)));
        cases.push(([1, 16, 12, 12], [16, 16, 3, 3], (1, 1), (1, 1), (1, 1)));
        for path in simd::supported() {
            let mut table = Vec::new();
            for name in NAMES {
                // A fresh pool for each buffer: its threads have none yet,
                // so the refused one is never there from an earlier case
                // (whatever the process-wide largest requests are).
                let pool = thread_pool(2);
                let mut refused = [0; 3];
                simd::on_path(&pool, path, || {
                    for_each_case(&cases, Seeds::new(31, 32, Some(33), 34), |case, _, d| {
                        let refusal = Refusal {
                            only: Some(name),
                            above: 0,
                        };
                        let got = refusing_growth(&pool, refusal, || {
                            pool.install(|| {
                                [
                                    forward::conv2d(&d.x, &d.w, Some(&d.b), &d.g),
                                    input_grad::conv2d_input_grad(&d.dy, &d.w, &d.g),
                                    weight_grad::conv2d_weight_grad(&d.dy, &d.x, &d.g),
                                ]
                            })
                        });
                        let want = [&d.r.y, &d.r.dx, &d.r.dw];
                        for (k, (got, want)) in got.into_iter().zip(want).enumerate() {
                            let what = format!("{path:?} {name} case {case} kernel {k}");
                            match got {
                                Ok(v) => assert_close(&what, &v, want, 1e-4),
                                Err(e @ Error::OutOfMemory { .. }) => {
                                    let msg = e.to_string();
                                    assert!(
                                        msg.contains(&format!("scratch buffer {name:?}")),
                                        "{what}: {msg}"
                                    );
                                    refused[k] += 1;
                                }
                                Err(e) => panic!("{what}: {e}"),
                            }
                        }
                    });
                    // Lifted, the same pool runs them again.
                    let d = super::test_support::case_data(
                        0,
                        &cases[0],
                        Seeds::new(31, 32, Some(33), 34),
                    )
                    .unwrap();
                    let y = pool
                        .install(|| forward::conv2d(&d.x, &d.w, Some(&d.b), &d.g))
                        .unwrap();
                    assert_close("after the refusal", &y, &d.r.y, 1e-4);
                });
                table.push((name, refused));
            }
            // The buffers each path uses on these cases (those not named
            // are refused with no error: the path does not use them, or,
            // as the AVX kernels' pack lists, reserves them for a bounded
            // pack and lets them grow in place where refused; columns.rs).
            // (AVX-512 could not be run where this was written: only the
            // kernels' part is asserted there.)
            // The route matters too: the live-row GEMM (microkernel.rs
            // `gemm_live`) multiplies the padded column matrices of the
            // stride-1 3x3 cases here, which `FROSTGRAD_CONV_WINOGRAD=1`
            // sends through F(2x2, 3x3) instead (forward and input
            // gradient; the weight gradient takes the shifted form), so
            // no entry point asks for its tables then.
            use simd::SimdPath;
            let winograd_forced = winograd_mode() == Some(true);
            const AVX2_USED: [&str; 8] = [
                "Columns",
                "SplitColumns",
                "Staging",
                "PackedLhs",
                "Tables",
                "micro-kernel A packing",
                "micro-kernel B packing",
                // Last, so that the forced-Winograd route drops only it.
                "micro-kernel live-row tables",
            ];
            let used: &[&str] = match path {
                SimdPath::Avx2 if winograd_forced => &AVX2_USED[..AVX2_USED.len() - 1],
                SimdPath::Avx2 => &AVX2_USED,
                SimdPath::Portable => &[
                    "Columns",
                    "SplitColumns",
                    "Staging",
                    "Dense",
                    "PackRows",
                    "pack taps",
                    "pack runs",
                    "pack reads",
                ],
                SimdPath::Avx512 => &[],
            };
            for (name, refused) in &table {
                assert!(
                    !used.contains(name) || refused.iter().any(|&n| n > 0),
                    "{path:?}: {name} never refused: {table:?}"
                );
            }
            for k in 0..3 {
                assert!(
                    table.iter().any(|(_, refused)| refused[k] > 0),
                    "{path:?}: kernel {k} met no refusal: {table:?}"
                );
            }
        }
    }
}
