//! A safe, bounds-checked face on the single-threaded SGEMM of the active
//! SIMD path ([`super::simd`]): the hand-written AVX-512F or AVX2+FMA
//! kernels of [`super::microkernel`], or `matrixmultiply::sgemm`.
//!
//! A matrix operand is a slice plus row/column strides, so a transposed
//! operand is just the same buffer with its strides swapped, and a block
//! of columns of a larger matrix is a sub-slice with the big matrix's row
//! stride. The kernels pack their operands themselves; large products are
//! split across rayon's threads here.

use super::scratch::{with_scratch, Slot};
use super::simd::{self, SimdPath};
use crate::error::Result;

/// A read-only `rows x cols` matrix view: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major `[cols, rows]` buffer, seen as `[rows, cols]`.
    pub fn transposed(data: &'a [f32], rows: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: rows,
        }
    }
    /// A row-major matrix with an explicit row stride (a column block of a wider matrix).
    pub fn strided(data: &'a [f32], row_stride: usize) -> Self {
        Self {
            data,
            row_stride,
            col_stride: 1,
        }
    }
    /// Whether every element of a `rows x cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || {
            let last = (rows - 1)
                .checked_mul(self.row_stride)
                .zip((cols - 1).checked_mul(self.col_stride))
                .and_then(|(a, b)| a.checked_add(b));
            last.is_some_and(|l| l < self.data.len())
        }
    }
}

/// Products with fewer multiply-adds than this run on the calling thread:
/// below it (about 50 µs of one core) splitting costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Parts per rayon thread when a product is split: more than one, so that
/// work stealing evens out a core that is slowed down by other work.
const PARTS_PER_THREAD: usize = 3;

/// On the portable path, what part widths (rows or columns) are multiples
/// of: a multiple of every `matrixmultiply` micro-kernel's tile. (Ours
/// split at their own tile, [`split_side`].)
const PART_ALIGN: usize = 64;

/// A right operand shared by the row blocks of a split product is packed
/// by all threads from this many elements (256 KiB) up, by the calling
/// thread alone below: for the 1x1 256->512 stride-2 forward at batch 1
/// (256 x 49) the extra dispatch cost more than the packing (0.12 ms
/// against 0.10).
const PARALLEL_PACK_MIN: usize = 1 << 16;

/// A right operand that packs itself: the convolutions' im2col, which
/// writes the GEMM's `NR`-column panels straight from the image instead of
/// filling a column matrix that the GEMM then copies again.
pub(super) trait PackB: Sync {
    /// Writes depth `pc..pc + kc` x columns `jc..jc + nc` as `nr`-column
    /// panels (zero padded), `kc * nr` floats each, into `out`. With `nr =
    /// nc` that is the row-major `kc x nc` block itself.
    ///
    /// # Safety
    /// The ranges lie inside the operand's shape (its [`Source::shape`])
    /// and `out` holds at least `nc.div_ceil(nr) * nr * kc` floats.
    /// (Implementations written in safe code need not rely on it; the
    /// raw-pointer view of the kernels does.)
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize, out: &mut [f32]);

    /// Makes room on this thread for whatever working storage a
    /// [`Self::pack`] of `kc`-deep, `nr`-wide panels needs, or says why it
    /// cannot ([`crate::error::Error::OutOfMemory`]). The portable GEMM packs
    /// a whole block as one panel (gemm.rs `serial`), so its room grows with
    /// the operand and is made here, fallibly, first; the micro-kernels'
    /// blocks are at most `KC` deep and `NR` wide (32 KiB at `KC` = 256,
    /// `NR` = 32), whose room may grow in place where this fails.
    fn reserve(&self, _kc: usize, _nr: usize) -> Result<()> {
        Ok(())
    }

    /// The same block already packed, when the operand holds it in exactly
    /// the layout [`Self::pack`] would write (a [`with_packed_rhs`]
    /// operand), so the GEMM reads it in place instead of copying it.
    /// Answered from the arguments alone: the micro-kernel GEMM asks once
    /// per block before writing any, to take its B buffer only where some
    /// block needs it, and again per block.
    fn packed(&self, _pc: usize, _kc: usize, _jc: usize, _nc: usize, _nr: usize) -> Option<&[f32]> {
        None
    }

    /// The period of the operand's zero pattern along the depth, when it
    /// has one that [`Self::panel_mask`] describes (a padded convolution's
    /// column matrix: depth row `r` is tap `r % (KH*KW)`, and a tap that
    /// sees only padding is zero over a whole panel). At most 64. The
    /// micro-kernel GEMM then multiplies each panel by its live depth rows
    /// only (`microkernel::gemm`).
    fn depth_period(&self) -> Option<usize> {
        None
    }

    /// For the panel of columns `j0..j0 + cols`: bit `t` is clear only when
    /// every depth row `r` with `r % period == t` is zero in all of them.
    fn panel_mask(&self, _j0: usize, _cols: usize) -> u64 {
        u64::MAX
    }

    /// As [`Self::pack`], but panel `p` (at `out[p * kc * nr..]`, as there)
    /// holds only the depth rows `r` in `pc..pc + kc` whose bit `r %
    /// period` is set in `masks[p]` (one mask per panel), in order, `nr`
    /// floats each; the rest of the panel's `kc * nr` floats are scratch.
    ///
    /// # Safety
    /// As [`Self::pack`]; [`Self::depth_period`] is `Some(period)` and
    /// `masks` holds `nc.div_ceil(nr)` masks.
    unsafe fn pack_live(
        &self,
        (pc, kc): (usize, usize),
        (jc, nc): (usize, usize),
        nr: usize,
        masks: &[u64],
        out: &mut [f32],
    ) {
        // The generic way: pack whole panels, then move the live rows up.
        // SAFETY: the caller's contract is `pack`'s.
        unsafe { self.pack(pc, kc, jc, nc, nr, out) };
        let period = self.depth_period().unwrap_or(1).clamp(1, 64);
        for (panel, &mask) in out.chunks_exact_mut(kc * nr).zip(masks) {
            let mut live = 0;
            for r in 0..kc {
                if mask >> ((pc + r) % period) & 1 == 1 {
                    panel.copy_within(r * nr..(r + 1) * nr, live * nr);
                    live += 1;
                }
            }
        }
    }
}

/// The `nr`-column panels of a packed `kc x nc` block of columns
/// `jc..jc + nc`, `kc * nr` floats each: `(first column, columns, panel)`.
pub(super) fn panels(
    out: &mut [f32],
    kc: usize,
    jc: usize,
    nc: usize,
    nr: usize,
) -> impl Iterator<Item = (usize, usize, &mut [f32])> {
    out.chunks_exact_mut(kc * nr)
        .take(nc.div_ceil(nr))
        .enumerate()
        .map(move |(p, panel)| {
            let j0 = jc + p * nr;
            (j0, nr.min(jc + nc - j0), panel)
        })
}

/// A [`PackB`] that knows its shape `(k, n)`.
pub(super) trait Source: PackB {
    fn shape(&self) -> (usize, usize);
}

/// The left operand of [`sgemm`].
#[derive(Clone, Copy)]
pub(super) enum Lhs<'a> {
    View(MatRef<'a>),
    /// Packed once for the micro-kernel of `path` (see [`with_packed_lhs`]).
    #[cfg(target_arch = "x86_64")]
    Packed {
        packed: &'a super::microkernel::PackedA<'a>,
        rows: usize,
        depth: usize,
        path: SimdPath,
    },
    /// Read where it lies through a depth table (see [`with_indexed_lhs`]).
    #[cfg(target_arch = "x86_64")]
    Indexed(IndexedRef<'a>),
}

/// A `rows x depth` left operand whose element `(i, p)` is `data[i *
/// row_stride + tables[p]]`, for the micro-kernel of `path`; `tables[depth
/// + p]` is what the kernel prefetches at step `p`
/// (`microkernel::prefetch_table`). Built and bounds-checked by
/// [`with_indexed_lhs`] only.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct IndexedRef<'a> {
    data: &'a [f32],
    row_stride: usize,
    tables: &'a [u32],
    rows: usize,
    depth: usize,
    path: SimdPath,
}

/// The right operand of [`sgemm`].
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    View(MatRef<'a>),
    Source(&'a dyn Source),
}

/// The register tile (`MR`, `NR`) of `path`'s micro-kernel; (0, 0) for
/// the portable path, which has none of ours.
#[cfg(target_arch = "x86_64")]
pub(super) fn tile(path: SimdPath) -> (usize, usize) {
    use super::microkernel::{Avx2, Avx512, Kernel};
    match path {
        SimdPath::Avx512 => (Avx512::MR, Avx512::NR),
        SimdPath::Avx2 => (Avx2::MR, Avx2::NR),
        SimdPath::Portable => (0, 0),
    }
}

/// Runs `f` with `a` (`m x k`) packed once for the active micro-kernel, so
/// that the many GEMMs of one convolution (its chunks and threads) share
/// one packing of the weight instead of each re-packing it; `n` is the
/// total of the columns `f` multiplies it with. When the kernels read `a`
/// in place for that many columns (`microkernel::reads_in_place`: always
/// for a row-major `a` unless `FROSTGRAD_A_IN_PLACE=0`), and on the
/// portable path, `f` gets the view
/// itself.
pub(super) fn with_packed_lhs<R>(
    a: MatRef<'_>,
    m: usize,
    k: usize,
    n: usize,
    f: impl FnOnce(Lhs<'_>) -> Result<R>,
) -> Result<R> {
    assert!(a.fits(m, k), "gemm: lhs view {m}x{k} exceeds its buffer");
    #[cfg(target_arch = "x86_64")]
    {
        use super::microkernel::{reads_in_place, PackedA, Raw};
        let path = simd::active();
        let (mr, _) = tile(path);
        if mr > 0 && m > 0 && k > 0 && !reads_in_place(a.row_stride, a.col_stride, n, mr) {
            let raw = Raw {
                ptr: a.data.as_ptr(),
                rs: a.row_stride,
                cs: a.col_stride,
            };
            return with_scratch(Slot::PackedLhs, PackedA::len(m, k, mr), |buf| {
                // SAFETY: `fits` checked every (i, p), i < m, p < k.
                let packed = unsafe { PackedA::pack(raw, m, k, mr, buf) };
                f(Lhs::Packed {
                    packed: &packed,
                    rows: m,
                    depth: k,
                    path,
                })
            });
        }
    }
    f(Lhs::View(a))
}

/// Runs `f` with the `rows x depth` left operand whose element `(i, p)` is
/// `data[i * row_stride + offset(p)]`: an operand whose depth index is not
/// affine in memory (the input gradient's flipped, transposed weight,
/// conv/input_grad.rs), so no [`MatRef`] can describe it. The micro-kernels read it
/// where it lies through a table of the `depth` offsets
/// (`microkernel::ByTable`), built here once per call: no copy of the
/// operand. On the portable path, and with `FROSTGRAD_A_IN_PLACE=0`, it is
/// written out row-major once instead (`f` gets that view).
///
/// Panics unless every element lies inside `data` (a bug in the caller).
pub(super) fn with_indexed_lhs<R>(
    data: &[f32],
    row_stride: usize,
    (rows, depth): (usize, usize),
    offset: impl Fn(usize) -> usize,
    f: impl FnOnce(Lhs<'_>) -> Result<R>,
) -> Result<R> {
    let last_row = rows.saturating_sub(1).checked_mul(row_stride);
    let fits = rows == 0
        || depth == 0
        || last_row.is_some_and(|last_row| {
            (0..depth).all(|p| {
                offset(p)
                    .checked_add(last_row)
                    .is_some_and(|end| end < data.len())
            })
        });
    assert!(fits, "gemm: indexed lhs {rows}x{depth} exceeds its buffer");
    #[cfg(target_arch = "x86_64")]
    {
        use super::microkernel::{prefetch_table, reads_in_place};
        let path = simd::active();
        let (mr, _) = tile(path);
        // (`reads_in_place` of a row-major operand: true unless
        // `FROSTGRAD_A_IN_PLACE=0` asks for packing.)
        let in_place = mr > 0 && reads_in_place(row_stride, 1, depth, mr);
        let offsets_fit = u32::try_from(data.len()).is_ok();
        if in_place && offsets_fit && rows > 0 && depth > 0 {
            return with_scratch(Slot::Tables, 2 * depth, |buf| {
                // SAFETY: f32 and u32 have the same size and alignment and
                // every bit pattern is a valid u32; `buf` is borrowed
                // mutably for the view's whole life.
                let tables = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u32>(), buf.len())
                };
                let (offsets, prefetch) = tables.split_at_mut(depth);
                for (p, o) in offsets.iter_mut().enumerate() {
                    // offset(p) < data.len() <= u32::MAX (checked above).
                    *o = offset(p) as u32;
                }
                prefetch_table(offsets, row_stride, mr, prefetch);
                f(Lhs::Indexed(IndexedRef {
                    data,
                    row_stride,
                    tables,
                    rows,
                    depth,
                    path,
                }))
            });
        }
    }
    // (Saturating, as in `serial`: a product past usize is a request no
    // allocator meets, so an out-of-memory error instead of a wrapped,
    // too-small buffer.)
    with_scratch(Slot::PackedLhs, rows.saturating_mul(depth), |buf| {
        for (i, row) in buf.chunks_exact_mut(depth.max(1)).enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = data[i * row_stride + offset(p)];
            }
        }
        f(Lhs::View(MatRef::row_major(buf, depth)))
    })
}

/// Runs `f` with `b` (`k x n`) packed once, whole, for the active
/// micro-kernel, so that several GEMMs over it ([`sgemm_rows`] on row blocks
/// of one left operand, on any thread) read the packed panels in place
/// instead of each packing `b` again. It is packed into the calling
/// thread's B packing buffer, of a fixed size; when it does not fit there,
/// and on the portable path, `f` gets `b` itself. Where it fits but that
/// buffer cannot grow to its size, the buffer's OutOfMemory is returned
/// and `f` does not run.
pub(super) fn with_packed_rhs<R>(
    b: Rhs<'_>,
    k: usize,
    n: usize,
    f: impl FnOnce(Rhs<'_>) -> Result<R>,
) -> Result<R> {
    let fits = match b {
        Rhs::View(v) => v.fits(k, n),
        Rhs::Source(s) => s.shape() == (k, n),
    };
    assert!(fits, "gemm: rhs {k}x{n} exceeds its buffer");
    #[cfg(target_arch = "x86_64")]
    {
        let (_, nr) = tile(simd::active());
        if nr > 0 && k > 0 && n > 0 {
            // SAFETY: `b` is `k x n` (checked above).
            return unsafe { with_whole_packed(b, k, n, nr, false, f) };
        }
    }
    f(b)
}

/// Runs `f` with `b` (`k x n`) packed whole for panel width `nr` into this
/// thread's packing buffer (in pieces on all threads with `parallel`), or
/// with `b` itself where it does not fit there, or returns the
/// OutOfMemory of that buffer, without running `f`, where it fits but
/// cannot grow ([`super::microkernel::with_thread_packed_b`]).
///
/// # Safety
/// `b` is a `k x n` operand.
#[cfg(target_arch = "x86_64")]
unsafe fn with_whole_packed<R>(
    b: Rhs<'_>,
    k: usize,
    n: usize,
    nr: usize,
    parallel: bool,
    f: impl FnOnce(Rhs<'_>) -> Result<R>,
) -> Result<R> {
    use super::microkernel::{with_thread_packed_b, Raw};
    let raw;
    let source: &dyn PackB = match b {
        Rhs::View(v) => {
            raw = Raw {
                ptr: v.data.as_ptr(),
                rs: v.row_stride,
                cs: v.col_stride,
            };
            &raw
        }
        Rhs::Source(s) => s,
    };
    // SAFETY: `source` is `b`, `k x n` (the caller's contract).
    unsafe {
        with_thread_packed_b(source, k, n, nr, parallel, |packed| match packed {
            Some(packed) => f(Rhs::Source(packed)),
            None => f(b),
        })
    }
}

#[cfg(target_arch = "x86_64")]
impl Source for super::microkernel::PackedB<'_> {
    fn shape(&self) -> (usize, usize) {
        self.shape()
    }
}

/// What a block of `a`'s rows handed to [`sgemm_rows`] must start at a
/// multiple of: the row tile `a` was packed for, or 1.
pub(super) fn row_align(a: Lhs<'_>) -> usize {
    match a {
        Lhs::View(_) => 1,
        #[cfg(target_arch = "x86_64")]
        Lhs::Packed { packed, .. } => packed.mr(),
        #[cfg(target_arch = "x86_64")]
        Lhs::Indexed(_) => 1,
    }
}

/// `c = a[i0..i0 + m] @ b` on the calling thread: rows `i0..i0 + m` of the
/// `rows x k` left operand `a` times the `k x n` right operand, into the
/// row-major `m x n` block `c` (row stride `n`), overwritten. For callers
/// that consume a product block by block while it is still in cache (the
/// input gradient's col2im) and run the blocks in parallel themselves.
///
/// Panics unless the operands fit and `i0` is a multiple of
/// [`row_align`]`(a)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm_rows(
    a: Lhs<'_>,
    rows: usize,
    (i0, m): (usize, usize),
    k: usize,
    n: usize,
    b: Rhs<'_>,
    c: &mut [f32],
) -> Result<()> {
    assert!(
        i0.checked_add(m).is_some_and(|end| end <= rows) && i0.is_multiple_of(row_align(a)),
        "gemm: row block {i0}+{m} of {rows} rows"
    );
    check_views(rows, k, n, a, b, &[], 0, false);
    let c_view = MatRef::row_major(c, n);
    assert!(
        c_view.fits(m, n),
        "gemm: output view {m}x{n} exceeds its buffer"
    );
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: `check_views` and the asserts above: rows i0..i0 + m of `a`
    // (starting at a multiple of a packed `a`'s row tile), all of `b`, and
    // the m x n block of `c` lie inside their operands; `c` is borrowed
    // mutably, so nothing else accesses it.
    unsafe { serial(a, (i0, m), b, (0, n), k, 0.0, c.as_mut_ptr(), n) }
}

/// How a product's work is run: split across rayon's threads, or all on
/// the calling thread (for callers that are already one task of a
/// parallel loop).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Par {
    Split,
    Serial,
}

/// `c = a @ b + beta * c` where `a` is `m x k`, `b` is `k x n` and `c` is
/// the row-major `m x n` block with row stride `c_row_stride` at the start
/// of `c`.
///
/// With [`Par::Split`], large products are split into blocks of output
/// columns (or rows, when `m > n`), one single-threaded GEMM per block on
/// rayon's pool. Splitting along the longer side keeps the cost of
/// re-packing the shared operand small. (`matrixmultiply`'s own threading
/// splits every cache block between two threads that then spin-wait for
/// each other: ≈23% of forward samples, and 1478 → 952 ms for a no-grad
/// forward without it, per BENCHMARKS.md, "What each optimisation bought",
/// item 1; so the crate is built without it.)
///
/// Callers size the buffers from a validated geometry; a view that does not
/// fit its slice is a bug in this backend, so it panics here rather than
/// letting the kernels read or write out of bounds.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm(
    par: Par,
    m: usize,
    k: usize,
    n: usize,
    a: Lhs<'_>,
    b: Rhs<'_>,
    beta: f32,
    c: &mut [f32],
    c_row_stride: usize,
) -> Result<()> {
    check_views(m, k, n, a, b, c, c_row_stride, true);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let parts = match par {
        Par::Split => {
            let (_, len, align) = split_side(m, n, a);
            part_count(m, k, n, len.div_ceil(align), rayon::current_num_threads())
        }
        Par::Serial => 1,
    };
    in_parts(parts, m, k, n, a, b, beta, c, c_row_stride)
}

/// Panics unless every element of the `m x k`, `k x n` and (when
/// `check_c`) `m x n` operands lies inside its buffer and distinct output
/// elements are distinct.
#[allow(clippy::too_many_arguments)]
fn check_views(
    m: usize,
    k: usize,
    n: usize,
    a: Lhs<'_>,
    b: Rhs<'_>,
    c: &[f32],
    c_row_stride: usize,
    check_c: bool,
) {
    let a_fits = match a {
        Lhs::View(a) => a.fits(m, k),
        #[cfg(target_arch = "x86_64")]
        Lhs::Packed { rows, depth, .. } => rows == m && depth == k,
        #[cfg(target_arch = "x86_64")]
        Lhs::Indexed(v) => v.rows == m && v.depth == k,
    };
    assert!(a_fits, "gemm: lhs {m}x{k} exceeds its buffer");
    let b_fits = match b {
        Rhs::View(b) => b.fits(k, n),
        Rhs::Source(s) => s.shape() == (k, n),
    };
    assert!(b_fits, "gemm: rhs {k}x{n} exceeds its buffer");
    if !check_c {
        return;
    }
    let c_view = MatRef::strided(c, c_row_stride);
    assert!(
        c_view.fits(m, n),
        "gemm: output view {m}x{n} exceeds its buffer"
    );
    assert!(
        n <= c_row_stride || m <= 1,
        "gemm: output rows would overlap"
    );
}

/// The side a product is split along (columns when `m <= n`, else
/// rows), its length, and what the parts' widths are multiples of: the
/// micro-kernel's register tile along that side (`NR` columns, or `MR`
/// rows and the row tile of a pre-packed `a`), so no part but the last
/// ends in a partial tile, or [`PART_ALIGN`] on the portable path.
fn split_side(m: usize, n: usize, a: Lhs<'_>) -> (bool, usize, usize) {
    let split_columns = m <= n;
    let len = if split_columns { n } else { m };
    #[cfg(target_arch = "x86_64")]
    {
        let (mr, nr) = tile(lhs_path(a));
        if nr > 0 {
            let align = if split_columns {
                nr
            } else {
                lcm(mr, row_align(a))
            };
            return (split_columns, len, align);
        }
    }
    let align = match a {
        #[cfg(target_arch = "x86_64")]
        Lhs::Packed { packed, .. } if !split_columns => lcm(PART_ALIGN, packed.mr()),
        _ => PART_ALIGN,
    };
    (split_columns, len, align)
}

/// The SIMD path `a` is read on: the one it was prepared for, else the
/// active one.
#[cfg(target_arch = "x86_64")]
fn lhs_path(a: Lhs<'_>) -> SimdPath {
    match a {
        Lhs::View(_) => simd::active(),
        Lhs::Packed { path, .. } => path,
        Lhs::Indexed(v) => v.path,
    }
}

/// [`sgemm`]'s body after the checks: the product in about `parts` blocks
/// along its longer side, of whole tiles ([`split_side`]) and as equal as
/// whole tiles allow. Split by rows, every block multiplies all of `b`:
/// it is packed once, by all threads, into this thread's packing buffer
/// and read there by every block (each block packed it again itself: the
/// four row blocks of layer 4's 512-channel convolutions at batch 1 packed
/// the same im2col four times).
#[allow(clippy::too_many_arguments)]
fn in_parts(
    parts: usize,
    m: usize,
    k: usize,
    n: usize,
    a: Lhs<'_>,
    b: Rhs<'_>,
    beta: f32,
    c: &mut [f32],
    c_row_stride: usize,
) -> Result<()> {
    let (split_columns, len, align) = split_side(m, n, a);
    let out = OutPtr(c.as_mut_ptr());
    let block = |b: Rhs<'_>, lo: usize, hi: usize| {
        // The block: columns lo..hi of `b` and `c`, or rows lo..hi of `a`
        // and `c`.
        let (rows, cols, c_off) = if split_columns {
            ((0, m), (lo, hi - lo), lo)
        } else {
            ((lo, hi - lo), (0, n), lo * c_row_stride)
        };
        // SAFETY: `check_views` (called by `sgemm`) guarantees every
        // element of the full `m x k`, `k x n` and `m x n` operands lies
        // inside `a`, `b` and `c` (a packed `b` is the same `k x n`
        // operand); a block is a sub-block of them, so its offsets stay in
        // bounds, and row blocks of a pre-packed `a` start at multiples of
        // its row tile (`align`). Distinct blocks write disjoint elements
        // of `c` (distinct columns, or distinct rows, and `n <=
        // c_row_stride` keeps those distinct), and `c` is borrowed mutably
        // for the whole call, so no two calls and nothing outside race on
        // an element.
        unsafe {
            serial(
                a,
                rows,
                b,
                cols,
                k,
                beta,
                out.get().add(c_off),
                c_row_stride,
            )
        }
    };
    let units = len.div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    if parts <= 1 {
        return block(b, 0, len);
    }
    // Part p: tiles p * units / parts .. (p + 1) * units / parts.
    let bounds = |p: usize| ((p * units / parts) * align).min(len);
    let run = |b: Rhs<'_>| {
        use rayon::prelude::*;
        (0..parts)
            .into_par_iter()
            .try_for_each(|p| block(b, bounds(p), bounds(p + 1)))
    };
    // A source that can skip all-zero depth rows per panel (the padding
    // taps of class-ordered convolution columns, `depth_period`) is not
    // packed whole: the shared packing keeps no live rows, so every part
    // would multiply the padding again (18-31 % of a 7x7 or 4x4 layer's
    // products) to save a packing that costs a few percent.
    #[cfg(target_arch = "x86_64")]
    if !split_columns && k > 0 && !matches!(b, Rhs::Source(s) if s.depth_period().is_some()) {
        let (_, nr) = tile(lhs_path(a));
        if nr > 0 {
            let parallel = k * n >= PARALLEL_PACK_MIN;
            // SAFETY: `b` is `k x n` (`check_views`).
            return unsafe { with_whole_packed(b, k, n, nr, parallel, run) };
        }
    }
    run(b)
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// Rows `i0..i0 + m` of `a` times columns `j0..j0 + n` of `b` on the
/// calling thread, on the active SIMD path (or the one `a` was packed for).
///
/// # Safety
/// The blocks lie inside the operands (checked by `check_views`), `i0` is a
/// multiple of the row tile of a pre-packed `a`, and `c` is a writable
/// `m x n` block with row stride `rsc` whose rows do not overlap, accessed
/// by nobody else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    a: Lhs<'_>,
    (i0, m): (usize, usize),
    b: Rhs<'_>,
    (j0, n): (usize, usize),
    k: usize,
    beta: f32,
    c: *mut f32,
    rsc: usize,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::microkernel::{gemm, Avx2, Avx512, Indexed, PackA, Raw};
        let raw = |v: MatRef<'_>| Raw {
            ptr: v.data.as_ptr(),
            rs: v.row_stride,
            cs: v.col_stride,
        };
        let (a_op, path): (Raw, SimdPath);
        let a_indexed: Indexed;
        let a_dyn: &dyn PackA = match a {
            Lhs::Indexed(v) => {
                path = v.path;
                a_indexed = Indexed {
                    ptr: v.data.as_ptr(),
                    rs: v.row_stride,
                    offsets: v.tables.as_ptr(),
                    prefetch: v.tables[v.depth..].as_ptr(),
                };
                &a_indexed
            }
            Lhs::View(v) => {
                (a_op, path) = (raw(v), simd::active());
                &a_op
            }
            Lhs::Packed {
                packed, path: p, ..
            } => {
                path = p;
                packed
            }
        };
        let b_op: Raw;
        let b_dyn: &dyn PackB = match b {
            Rhs::View(v) => {
                b_op = raw(v);
                &b_op
            }
            Rhs::Source(s) => s,
        };
        let (rows, cols) = ((i0, m), (j0, n));
        match path {
            // SAFETY: the path is only active (or packed for) when the CPU
            // supports it (`simd::active`/`force` check); operands as the
            // caller promised.
            SimdPath::Avx512 => {
                return unsafe { gemm::<Avx512, _, _>(a_dyn, rows, b_dyn, cols, k, beta, c, rsc) };
            }
            // SAFETY: as above.
            SimdPath::Avx2 => {
                return unsafe { gemm::<Avx2, _, _>(a_dyn, rows, b_dyn, cols, k, beta, c, rsc) };
            }
            SimdPath::Portable => {}
        }
    }
    let Lhs::View(a) = a else {
        unreachable!("the left operand is only pre-packed for a micro-kernel path")
    };
    let a_ptr = a.data[i0 * a.row_stride..].as_ptr();
    match b {
        Rhs::View(b) => {
            // SAFETY: the caller's contract is matrixmultiply's; strides
            // index live slices so they fit in isize.
            unsafe {
                portable(
                    m,
                    k,
                    n,
                    (a_ptr, a.row_stride, a.col_stride),
                    (
                        b.data[j0 * b.col_stride..].as_ptr(),
                        b.row_stride,
                        b.col_stride,
                    ),
                    beta,
                    c,
                    rsc,
                )
            };
            Ok(())
        }
        Rhs::Source(s) => with_scratch(Slot::Dense, k.saturating_mul(n), |dense| {
            // One panel as deep and as wide as the whole block: the
            // packing's own working room grows with it, so it is made
            // here, where a refusal can be returned.
            s.reserve(k, n)?;
            // SAFETY: the k x n block at column j0 lies inside `s`, and
            // `dense` holds k * n floats: one n-wide panel, i.e. the
            // row-major block.
            unsafe { s.pack(0, k, j0, n, n, dense) };
            // SAFETY: as above, with `dense` a row-major k x n matrix.
            unsafe {
                portable(
                    m,
                    k,
                    n,
                    (a_ptr, a.row_stride, a.col_stride),
                    (dense.as_ptr(), n, 1),
                    beta,
                    c,
                    rsc,
                )
            };
            Ok(())
        }),
    }
}

/// `matrixmultiply::sgemm` with alpha = 1.
///
/// # Safety
/// matrixmultiply's: `a` (`m x k`) and `b` (`k x n`) readable, `c` a
/// writable `m x n` block with row stride `rsc`.
#[allow(clippy::too_many_arguments)]
unsafe fn portable(
    m: usize,
    k: usize,
    n: usize,
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
    beta: f32,
    c: *mut f32,
    rsc: usize,
) {
    // Its packing buffers' faults are counted apart (see the function).
    super::simd::counting_portable_faults(|| {
        // SAFETY: the caller's contract; strides index live slices so they
        // fit in isize.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.0,
                a.1 as isize,
                a.2 as isize,
                b.0,
                b.1 as isize,
                b.2 as isize,
                beta,
                c,
                rsc as isize,
                1,
            )
        }
    })
}

/// How many blocks to split an `m x k x n` product into along a side of
/// `units` tiles, with `threads` rayon threads: a multiple of `threads`
/// when there are more parts than threads, since a part left over ran
/// alone at the end (3 parts on 2 threads: 1.5x, not 2x).
fn part_count(m: usize, k: usize, n: usize, units: usize, threads: usize) -> usize {
    let macs = m.saturating_mul(k).saturating_mul(n);
    if threads <= 1 || macs < PARALLEL_MIN_MACS {
        return 1;
    }
    let parts = (threads * PARTS_PER_THREAD)
        .min(macs / (PARALLEL_MIN_MACS / 2))
        .min(units)
        .max(1);
    if parts > threads {
        parts - parts % threads
    } else {
        parts
    }
}

/// The output pointer, shared by the blocks of one product.
struct OutPtr(*mut f32);
// SAFETY: blocks write disjoint elements through it (see `sgemm`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only read.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `op(lhs) @ op(rhs)` for the dense layers: `op(lhs)` is `[m, k]`,
/// `op(rhs)` is `[k, n]`; a `*_transposed` buffer holds the transpose.
pub(super) fn matmul(
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
) -> Result<Vec<f32>> {
    let a = if lhs_transposed {
        MatRef::transposed(lhs, m)
    } else {
        MatRef::row_major(lhs, k)
    };
    let b = if rhs_transposed {
        MatRef::transposed(rhs, k)
    } else {
        MatRef::row_major(rhs, n)
    };
    let mut out = super::buffer_pool::zeroed("matmul", m * n)?;
    sgemm(
        Par::Split,
        m,
        k,
        n,
        Lhs::View(a),
        Rhs::View(b),
        0.0,
        &mut out,
        n,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_indexed_lhs_too_large_to_pack_is_an_error() {
        // 2^40 rows of 2^24 (all reading the one element: row stride 0):
        // 2^64 floats to pack on the portable path, which wrapped to an
        // empty buffer before the product saturated.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let got = simd::on_path(&pool, simd::SimdPath::Portable, || {
            pool.install(|| {
                with_indexed_lhs(
                    &[1.0],
                    0,
                    (1 << 40, 1 << 24),
                    |_| 0,
                    |lhs| match lhs {
                        Lhs::View(v) => Ok(v.data.len()),
                        _ => Ok(usize::MAX),
                    },
                )
            })
        });
        assert!(
            matches!(got, Err(crate::error::Error::OutOfMemory { .. })),
            "{got:?}"
        );
    }

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += f64::from(av) * f64::from(bv);
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_for_every_transpose() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let got = matmul(&a, &b, m, k, n, ta, tb).unwrap();
            let want = naive(&a, &b, m, k, n, ta, tb);
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() < 1e-5, "{ta} {tb}: {g} vs {w}");
            }
        }
    }

    /// A row-major matrix that packs itself through [`PackB`], in safe
    /// code, as the convolutions' im2col source does.
    struct Packing<'a>(&'a [f32], usize, usize);

    impl PackB for Packing<'_> {
        unsafe fn pack(
            &self,
            pc: usize,
            kc: usize,
            jc: usize,
            nc: usize,
            nr: usize,
            out: &mut [f32],
        ) {
            for (panel, dst) in out
                .chunks_exact_mut(kc * nr)
                .take(nc.div_ceil(nr))
                .enumerate()
            {
                for p in 0..kc {
                    for j in 0..nr {
                        let col = jc + panel * nr + j;
                        dst[p * nr + j] = if col < jc + nc {
                            self.0[(pc + p) * self.2 + col]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }

    impl Source for Packing<'_> {
        fn shape(&self) -> (usize, usize) {
            (self.1, self.2)
        }
    }

    #[test]
    fn packed_lhs_and_self_packing_rhs_match_naive() {
        // A left operand prepared once (transposed, as the input gradient's
        // Wᵀ: on the AVX-512 path read in place for n <= 256 columns,
        // packed for more, on AVX2 packed; or
        // row-major, as the forward's W: read in place), a right operand
        // that packs itself, split by rows (m > n: row blocks of the
        // operand) and by columns, k above one 256-deep block, m a multiple
        // of neither kernel's row tile, on the active SIMD path.
        for &(m, k, n, ta) in &[
            (700, 300, 90, true),
            (40, 270, 800, true),
            (13, 5, 7, true),
            (700, 300, 90, false),
            (37, 259, 300, false),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, k, n, ta, false);
            let source = Packing(&b, k, n);
            let view = if ta {
                MatRef::transposed(&a, m)
            } else {
                MatRef::row_major(&a, k)
            };
            for parts in [1, 2, 5] {
                let mut c = vec![1.0f32; m * n];
                with_packed_lhs(view, m, k, n, |lhs| {
                    in_parts(parts, m, k, n, lhs, Rhs::Source(&source), 1.0, &mut c, n)
                })
                .unwrap();
                for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    let got = f64::from(got);
                    assert!(
                        (got - w - 1.0).abs() < 1e-4,
                        "{m}x{k}x{n} ta {ta} parts {parts}: [{i}] {got} vs {}",
                        w + 1.0
                    );
                }
            }
        }
    }

    #[test]
    fn row_blocks_over_a_packed_rhs_match_naive() {
        // The input gradient's use: one left operand packed once, the right
        // operand packed once for all row blocks (or, too large for the
        // thread's packing buffer, as 600 x 1000 is, left to each block),
        // blocks at multiples of the packed row tile, the last one short,
        // each written into a dirty buffer; on the active SIMD path.
        for &(m, k, n) in &[(40, 300, 90), (27, 5, 7), (24, 600, 1000)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, k, n, true, false);
            // `a` read in place (few columns) and packed (many).
            for columns in [n, 1 << 20] {
                with_packed_lhs(MatRef::transposed(&a, m), m, k, columns, |lhs| {
                    with_packed_rhs(Rhs::View(MatRef::row_major(&b, n)), k, n, |rhs| {
                        let step = row_align(lhs) * 2;
                        for i0 in (0..m).step_by(step) {
                            let rows = step.min(m - i0);
                            let mut c = vec![f32::NAN; rows * n];
                            sgemm_rows(lhs, m, (i0, rows), k, n, rhs, &mut c)?;
                            for (i, (&got, &w)) in c.iter().zip(&want[i0 * n..]).enumerate() {
                                assert!(
                                    (f64::from(got) - w).abs() < 1e-4,
                                    "{m}x{k}x{n} rows {i0}+{rows}: [{i}] {got} vs {w}"
                                );
                            }
                        }
                        Ok(())
                    })
                })
                .unwrap();
            }
        }
    }

    #[test]
    fn split_products_match_naive() {
        // Both split directions (m <= n splits columns, m > n rows), with
        // transposed operands, a strided output block and beta = 1; sizes
        // that do not divide into PART_ALIGN-wide blocks.
        for &(m, k, n, ta, tb) in &[
            (9, 13, 200, false, true),
            (150, 7, 70, true, false),
            (130, 5, 129, true, true),
            // A transposed left operand for more columns than it is read
            // in place for (packed per block), and a deep row-major one
            // (read in place over two depth blocks).
            (21, 300, 600, true, false),
            (21, 300, 600, false, false),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, k, n, ta, tb);
            let av = if ta {
                MatRef::transposed(&a, m)
            } else {
                MatRef::row_major(&a, k)
            };
            let bv = if tb {
                MatRef::transposed(&b, k)
            } else {
                MatRef::row_major(&b, n)
            };
            // Parts of whole tiles, as equal as tiles allow, and the
            // shared packing of `b` for a row split in pieces per thread:
            // at 1, 2 and 3 threads.
            for (parts, threads) in [(1, 2), (2, 1), (2, 2), (3, 3), (4, 2), (64, 3)] {
                let stride = n + 3;
                let mut c = vec![1.0f32; m * stride];
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    in_parts(
                        parts,
                        m,
                        k,
                        n,
                        Lhs::View(av),
                        Rhs::View(bv),
                        1.0,
                        &mut c,
                        stride,
                    )
                })
                .unwrap();
                for i in 0..m {
                    for j in 0..stride {
                        let got = f64::from(c[i * stride + j]);
                        let expect = if j < n { want[i * n + j] + 1.0 } else { 1.0 };
                        assert!(
                            (got - expect).abs() < 1e-4,
                            "{m}x{k}x{n} parts {parts}: ({i},{j}) {got} vs {expect}"
                        );
                    }
                }
            }
        }
    }

    /// The packing of a right operand in pieces on several threads
    /// (several `NC`-column blocks and `KC`-deep blocks, ragged at both
    /// ends) lays out exactly what one thread's does.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn parallel_packing_matches_serial() {
        use super::super::microkernel::PackedB;
        let (k, n) = (600, 4200);
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let source = Packing(&b, k, n);
        for nr in [16, 32] {
            let len = PackedB::len(k, n, nr);
            let mut serial = vec![f32::NAN; len];
            // SAFETY: `source` is k x n; the buffers hold `len` floats.
            unsafe { PackedB::pack(&source, k, n, nr, &mut serial, false) };
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut parallel = vec![f32::NAN; len];
                // SAFETY: as above.
                pool.install(|| unsafe {
                    PackedB::pack(&source, k, n, nr, &mut parallel, true);
                });
                assert!(
                    serial
                        .iter()
                        .zip(&parallel)
                        .all(|(s, p)| s.to_bits() == p.to_bits()),
                    "nr {nr} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn part_count_respects_size_and_threads() {
        assert_eq!(part_count(64, 64, 64, 64, 2), 1, "too small to split");
        assert_eq!(part_count(512, 512, 512, 512, 1), 1, "one thread");
        let parts = part_count(512, 512, 512, 16, 2);
        assert!((2..=2 * PARTS_PER_THREAD).contains(&parts), "{parts}");
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        assert_eq!(
            matmul(&[], &[], 2, 0, 2, false, false).unwrap(),
            vec![0.0; 4]
        );
    }
}
