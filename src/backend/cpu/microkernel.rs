//! Hand-written single-threaded SGEMM for x86-64: BLIS-style blocking
//! (pack a `KC x NC` block of B and an `MC x KC` block of A into panels,
//! then run a register-tile micro-kernel over them), with an AVX-512F
//! 8x32 and an AVX2+FMA 6x16 micro-kernel.
//!
//! Why not `matrixmultiply` everywhere: it allocates its packing buffers
//! on every call (page faults in every training step, see buffer_pool.rs)
//! and its AVX-512 path ran ResNet-18's convolutions slower than these
//! kernels on the machines measured (BENCHMARKS.md). It remains the
//! portable path.
//!
//! Packing buffers are per thread and reused, so a steady-state GEMM
//! allocates nothing.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::Cell;

use super::gemm::{panels, PackB};
use super::simd::SimdPath;
use crate::error::Result;
use rayon::prelude::*;

/// Depth of one packed block (A panel width, B panel height).
pub(super) const KC: usize = 256;

/// Packed operands of at least this many floats (1 MiB) are packed by
/// several threads; below it a rayon dispatch costs more than it saves.
const PARALLEL_PACK_ELEMS: usize = 1 << 18;
/// Rows of A packed at once (a multiple of both kernels' MR).
const MC: usize = 144;
/// Columns of B packed at once (a multiple of both kernels' NR).
const NC: usize = 2048;
// Packed A's row blocks and B's column blocks hold whole register tiles
// only if MC and NC are multiples of every kernel's tile (PackedA::panels
// only debug-asserts it): checked here so that a retuned constant cannot
// break a path this CPU does not run. Tiles: AVX2 6 x 16, AVX-512 8 x 32.
const _: () = assert!(
    MC.is_multiple_of(<Avx2 as Kernel>::MR)
        && MC.is_multiple_of(<Avx512 as Kernel>::MR)
        && NC.is_multiple_of(<Avx2 as Kernel>::NR)
        && NC.is_multiple_of(<Avx512 as Kernel>::NR)
);

/// A register-tile micro-kernel: `MR x NR` of C from packed panels.
pub(super) trait Kernel {
    const MR: usize;
    const NR: usize;
    /// `C[0..mr, 0..nr] = A·B + beta * C` (C not read when beta is 0) for
    /// panels `a` (`kc x MR`, MR values per step) and `b` (`kc x NR`).
    ///
    /// # Safety
    /// The CPU supports the kernel's instructions; `a` holds `kc * MR` and
    /// `b` `kc * NR` readable floats; `c` points at an `mr x nr` block
    /// (`mr <= MR`, `nr <= NR`) with row stride `rsc`, writable, that no
    /// one else accesses meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        mr: usize,
        nr: usize,
    );

    /// As [`Kernel::run`], with A read where it lies instead of from a
    /// packed panel: `A[i][p]` at `a + i*rs + p*cs` (see [`InPlace`]).
    ///
    /// # Safety
    /// As [`Kernel::run`] for `b` and `c`; every `(i, p)` with `i < mr`,
    /// `p < kc` is readable at `a + i*rs + p*cs`; `mr >= 1`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_in_place(
        kc: usize,
        a: *const f32,
        strides: (usize, usize),
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        mr: usize,
        nr: usize,
    );

    /// As [`Kernel::run`], with A read where it lies through a depth table:
    /// `A[i][p]` at `a + i*rs + offsets[p]` (see [`ByTable`]); `prefetch[p]`
    /// is the offset from `a` of what step `p` hints the cache to fetch.
    ///
    /// # Safety
    /// As [`Kernel::run`] for `b` and `c`; `offsets` and `prefetch` hold
    /// `kc` values each; every `(i, p)` with `i < mr`, `p < kc` is readable
    /// at `a + i*rs + offsets[p]`; `mr >= 1`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_indexed(
        kc: usize,
        a: *const f32,
        rs: usize,
        tables: (*const u32, *const u32),
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        mr: usize,
        nr: usize,
    );

    /// As [`Kernel::run_indexed`], with one pointer per row instead of a
    /// row stride and no prefetch (see [`ByPixel`]): `A[i][p]` at
    /// `rows[i] + offsets[p]`.
    ///
    /// # Safety
    /// As [`Kernel::run`] for `b` and `c`; `offsets` holds `kc` values;
    /// `1 <= mr <= rows.len()`; every `(i, p)` with `i < mr`, `p < kc` is
    /// readable at `rows[i] + offsets[p]`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_indexed_rows(
        kc: usize,
        rows: &[*const f32],
        offsets: *const u32,
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        mr: usize,
        nr: usize,
    );
}

/// How a micro-kernel reads its `MR x kc` block of A: element `(i, p)`,
/// `i < MR`, `p < kc`.
pub(super) trait ARead: Copy {
    /// # Safety
    /// `i < MR`, `p < kc` of the block the reader was made for.
    unsafe fn at(self, i: usize, p: usize) -> f32;

    /// A hint to fetch what depth step `p` + some distance will read.
    #[inline(always)]
    fn prefetch(self, _p: usize) {}
}

/// A packed panel: `MR` values per depth step, contiguous.
#[derive(Clone, Copy)]
pub(super) struct Packed<const MR: usize>(*const f32);

impl<const MR: usize> ARead for Packed<MR> {
    #[inline(always)]
    unsafe fn at(self, i: usize, p: usize) -> f32 {
        // SAFETY: the panel holds kc * MR floats (caller's contract).
        unsafe { *self.0.add(p * MR + i) }
    }
}

/// A read where it lies (no packing): one pointer per row and the depth
/// stride. For a row-major weight (`cs = 1`, `ROWS`) each row is a
/// sequential stream; for a transposed one (`rs = 1`) a depth step's `MR`
/// values are adjacent. Rows at or past the tile's `mr` valid rows point
/// at row `mr - 1` (so every address read is inside the operand); what
/// they compute is discarded by the partial store.
#[derive(Clone, Copy)]
pub(super) struct InPlace<const MR: usize, const ROWS: bool> {
    rows: [*const f32; MR],
    cs: usize,
}

impl<const MR: usize, const ROWS: bool> InPlace<MR, ROWS> {
    /// # Safety
    /// `1 <= mr`, `cs == 1` if `ROWS`, and every `(i, p)` with `i < mr`,
    /// `p < kc` is readable at `a + i*rs + p*cs`.
    #[inline(always)]
    unsafe fn new(a: *const f32, rs: usize, cs: usize, mr: usize) -> Self {
        // SAFETY: row min(i, mr - 1) < mr starts inside the operand.
        let rows = std::array::from_fn(|i| unsafe { a.add(i.min(mr - 1) * rs) });
        Self { rows, cs }
    }
}

impl<const MR: usize, const ROWS: bool> ARead for InPlace<MR, ROWS> {
    #[inline(always)]
    unsafe fn at(self, i: usize, p: usize) -> f32 {
        let step = if ROWS { p } else { p * self.cs };
        // SAFETY: row pointer i is a valid row (clamped in `new`), p < kc.
        unsafe { *self.rows[i].add(step) }
    }

    /// `A_PREFETCH` steps ahead. Row streams: every row once per 8 steps
    /// (half a cache line of each). Otherwise the one line that step's
    /// `MR` adjacent values lie in, every step. (One row per step chosen
    /// by `p % MR` cost a division per step at `MR = 6` and made the AVX2
    /// kernel 1.5x slower.)
    #[inline(always)]
    fn prefetch(self, p: usize) {
        let hint = |row: *const f32, step: usize| {
            // SAFETY: a prefetch never faults; the address is formed with
            // wrapping arithmetic and only hinted at.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(step).cast::<i8>()) }
        };
        if ROWS {
            if p.is_multiple_of(8) {
                for &row in &self.rows {
                    hint(row, p + A_PREFETCH);
                }
            }
        } else {
            hint(self.rows[0], (p + A_PREFETCH) * self.cs);
        }
    }
}

/// Depth steps ahead that an in-place A is prefetched: without the
/// prefetch, reading in place lost 5–18 % against packed panels on some
/// batch-8 shapes (the stem, 1x1 downsamples, Wᵀ of layer 4), as the
/// hardware followed `MR` interleaved streams late; with it, within ±3 %.
const A_PREFETCH: usize = 24;

/// A read where it lies through a depth table: one pointer per row and,
/// per depth step, the offset of that step's element from each row's
/// start (`at(i, p) = rows[i][offsets[p]]`). For operands whose depth
/// index is not affine in memory: the input gradient's flipped,
/// transposed weight (conv/input_grad.rs), where depth `(o, kh, kw)` of row `c` is
/// `W[o, c, KH-1-kh, KW-1-kw]`. A broadcast does not need its value's
/// neighbours, so the table costs one scalar load per depth step, shared
/// by the `MR` rows. Rows at or past `mr` point at row `mr - 1`, as for
/// [`InPlace`]. What it reads is [`ByPixel`]'s, rows `rs` apart; it adds
/// a prefetch.
#[derive(Clone, Copy)]
pub(super) struct ByTable<const MR: usize> {
    pixels: ByPixel<MR>,
    /// Per depth step, the offset from row 0 to hint (see [`Indexed`]'s
    /// `prefetch_table`).
    prefetch: *const u32,
}

impl<const MR: usize> ByTable<MR> {
    /// # Safety
    /// `1 <= mr`; `offsets` and `prefetch` hold `kc` values; every `(i, p)`
    /// with `i < mr`, `p < kc` is readable at `a + i*rs + offsets[p]`.
    #[inline(always)]
    unsafe fn new(
        a: *const f32,
        rs: usize,
        offsets: *const u32,
        prefetch: *const u32,
        mr: usize,
    ) -> Self {
        // SAFETY: row min(i, mr - 1) < mr starts inside the operand.
        let rows = std::array::from_fn(|i| unsafe { a.add(i.min(mr - 1) * rs) });
        Self {
            pixels: ByPixel { rows, offsets },
            prefetch,
        }
    }
}

impl<const MR: usize> ARead for ByTable<MR> {
    #[inline(always)]
    unsafe fn at(self, i: usize, p: usize) -> f32 {
        // SAFETY: the same contract as ByPixel's (rows clamped in `new`).
        unsafe { self.pixels.at(i, p) }
    }

    /// One line per step, from the prefetch table: it cycles through the
    /// rows so that every row of a step `A_PREFETCH` ahead is hinted once
    /// per `MR` steps, without a division in the loop.
    #[inline(always)]
    fn prefetch(self, p: usize) {
        // SAFETY: p < kc: the table entry exists. A prefetch never faults;
        // the address is formed with wrapping arithmetic and only hinted at.
        unsafe {
            let at = self.pixels.rows[0].wrapping_add(*self.prefetch.add(p) as usize);
            _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>());
        }
    }
}

/// A read where it lies through a depth table, with one pointer per row
/// however far apart (`at(i, p) = rows[i][offsets[p]]`) and no prefetch:
/// the direct convolution's tiles of output pixels that wrap from one
/// output row to the next (`direct_rows`). What they read is a block of
/// the padded input already in L1 or L2 (`forward_direct`), and
/// [`ByTable`]'s prefetch (a table load and a hint per depth step) cost it
/// 5 % at 3x3 128->128, 28x28, forward and input gradient (CPU time, one
/// thread, Zen 2; BENCHMARKS.md issue 9 item 38).
#[derive(Clone, Copy)]
pub(super) struct ByPixel<const MR: usize> {
    rows: [*const f32; MR],
    offsets: *const u32,
}

impl<const MR: usize> ByPixel<MR> {
    /// A reader whose row `i` starts at `rows[i]` (rows at or past `mr` at
    /// `rows[mr - 1]`).
    ///
    /// # Safety
    /// `1 <= mr <= rows.len()`; `offsets` holds `kc` values; every `(i,
    /// p)` with `i < mr`, `p < kc` is readable at `rows[i] + offsets[p]`.
    #[inline(always)]
    unsafe fn new(rows: &[*const f32], offsets: *const u32, mr: usize) -> Self {
        // SAFETY: min(i, mr - 1) < mr <= rows.len() (the caller's contract).
        let rows = std::array::from_fn(|i| unsafe { *rows.get_unchecked(i.min(mr - 1)) });
        Self { rows, offsets }
    }
}

impl<const MR: usize> ARead for ByPixel<MR> {
    #[inline(always)]
    unsafe fn at(self, i: usize, p: usize) -> f32 {
        // SAFETY: p < kc, so the table entry exists, and (i, p) is readable
        // at row i plus it (the caller's contract; rows clamped in `new`).
        unsafe { *self.rows[i].add(*self.offsets.add(p) as usize) }
    }
}

/// Writes `acc + beta * C` for the valid `mr x nr` part of a tile held in
/// `acc` (row-major, `NR` per row).
///
/// # Safety
/// As [`Kernel::run`] for `c`.
#[inline(always)]
unsafe fn store_partial<const NR: usize>(
    acc: &[f32],
    c: *mut f32,
    rsc: usize,
    beta: f32,
    mr: usize,
    nr: usize,
) {
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: i < mr, j < nr: inside the caller's block.
            unsafe {
                let p = c.add(i * rsc + j);
                let v = acc[i * NR + j];
                *p = if beta == 0.0 { v } else { v + beta * *p };
            }
        }
    }
}

/// Prefetches the rows `0..mr` of an `NR`-wide C tile (row stride `rsc`)
/// into L1 for the update that ends a micro-kernel call.
///
/// Why: the tile's rows lie `rsc` floats apart in an output far larger than
/// L2, so without it every call ended with 8–16 cache misses that the
/// out-of-order window could not overlap with FMAs (a dense 1152 x 1024 x
/// 2048 product went from 95 to 100 GFLOP/s on Zen 4, BENCHMARKS.md). The
/// kernels issue it `PREFETCH_C_AHEAD` depth steps (about 800 cycles)
/// before the end: enough to cover a miss to DRAM, and late enough that
/// the A and B panels streaming through L1 do not evict the lines first.
/// A prefetch never faults, and the addresses are formed with wrapping
/// arithmetic, so a tile at the edge of C is safe.
#[inline(always)]
fn prefetch_c<const NR: usize>(c: *mut f32, rsc: usize, mr: usize) {
    for i in 0..mr {
        let row = c.wrapping_add(i * rsc).cast::<i8>().cast_const();
        // SAFETY: `_mm_prefetch` is a hint that never faults (SSE, part of
        // x86-64's baseline); it only reads the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(4 * NR - 4));
        }
    }
}

/// Rows a micro-kernel call computes when the tile has at most this many
/// valid ones (the last row tile of a product whose `m` is not a multiple
/// of `MR`): the AVX2 kernel's 6-row tiles end 64 output channels with 4
/// rows and 128 with 2, and computing all 6 cost the forward ~3 % of its
/// FMAs at 64 and 128 channels (BENCHMARKS.md, "The AVX2 forward: plain
/// loads in the panel fill, short row tiles"). Four rows still keep 8
/// accumulators, enough to hide the FMA latency.
const SHORT_ROWS: usize = 4;

/// One micro-kernel per instruction set, from the same body: an `MR x 2`
/// grid of vector accumulators (`NR` = two vectors), one broadcast of A and
/// two FMAs per row per depth step. A macro rather than a generic over a
/// vector trait so that each instance is one `#[target_feature]` function
/// whose intrinsics inline into it (BENCHMARKS.md, Zen 4: no spills in the
/// AVX-512 instance's inner loop).
macro_rules! micro_kernel {
    (
        $kernel:ident, $fn:ident, $feature:literal, MR = $mr:literal, LANES = $lanes:literal,
        NARROW = $narrow:literal, PREFETCH_C_AHEAD = $ahead:literal, $setzero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident
    ) => {
        pub(super) struct $kernel;

        // A short tile computes fewer rows than a full one.
        const _: () = assert!(SHORT_ROWS < $mr);

        impl Kernel for $kernel {
            const MR: usize = $mr;
            const NR: usize = 2 * $lanes;
            unsafe fn run(
                kc: usize,
                a: *const f32,
                b: *const f32,
                c: *mut f32,
                rsc: usize,
                beta: f32,
                mr: usize,
                nr: usize,
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe { Self::rows(kc, Packed::<$mr>(a), b, c, rsc, beta, mr, nr) }
            }

            unsafe fn run_in_place(
                kc: usize,
                a: *const f32,
                (rs, cs): (usize, usize),
                b: *const f32,
                c: *mut f32,
                rsc: usize,
                beta: f32,
                mr: usize,
                nr: usize,
            ) {
                // SAFETY: forwarded from the caller's contract (mr >= 1,
                // rows < mr and depth < kc readable).
                unsafe {
                    if cs == 1 {
                        let a = InPlace::<$mr, true>::new(a, rs, cs, mr);
                        Self::rows(kc, a, b, c, rsc, beta, mr, nr)
                    } else {
                        let a = InPlace::<$mr, false>::new(a, rs, cs, mr);
                        Self::rows(kc, a, b, c, rsc, beta, mr, nr)
                    }
                }
            }

            unsafe fn run_indexed(
                kc: usize,
                a: *const f32,
                rs: usize,
                (offsets, prefetch): (*const u32, *const u32),
                b: *const f32,
                c: *mut f32,
                rsc: usize,
                beta: f32,
                mr: usize,
                nr: usize,
            ) {
                // SAFETY: forwarded from the caller's contract (mr >= 1,
                // tables of kc entries, rows < mr and depth < kc readable).
                unsafe {
                    let a = ByTable::<$mr>::new(a, rs, offsets, prefetch, mr);
                    Self::rows(kc, a, b, c, rsc, beta, mr, nr)
                }
            }

            unsafe fn run_indexed_rows(
                kc: usize,
                rows: &[*const f32],
                offsets: *const u32,
                b: *const f32,
                c: *mut f32,
                rsc: usize,
                beta: f32,
                mr: usize,
                nr: usize,
            ) {
                // SAFETY: forwarded from the caller's contract (1 <= mr <=
                // rows.len(), a table of kc entries, (i, p) readable).
                unsafe {
                    let a = ByPixel::<$mr>::new(rows, offsets, mr);
                    Self::rows(kc, a, b, c, rsc, beta, mr, nr)
                }
            }
        }

        impl $kernel {
            /// The kernel body for a tile of `mr` valid rows: [`SHORT_ROWS`]
            /// of them computed when that covers them, `MR` otherwise.
            ///
            /// # Safety
            /// As [`Kernel::run`], with `a` a reader valid for `mr` rows and
            /// `kc` depth steps.
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn rows<A: ARead>(
                kc: usize,
                a: A,
                b: *const f32,
                c: *mut f32,
                rsc: usize,
                beta: f32,
                mr: usize,
                nr: usize,
            ) {
                // SAFETY: the caller's contract; both instances compute at
                // most the `MR` rows the reader was made for.
                unsafe {
                    if mr <= SHORT_ROWS {
                        $fn::<_, SHORT_ROWS>(kc, a, b, c, rsc, beta, mr, nr)
                    } else {
                        $fn::<_, $mr>(kc, a, b, c, rsc, beta, mr, nr)
                    }
                }
            }
        }

        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $fn<A: ARead, const MR: usize>(
            kc: usize,
            a: A,
            b: *const f32,
            c: *mut f32,
            rsc: usize,
            beta: f32,
            mr: usize,
            nr: usize,
        ) {
            const L: usize = $lanes;
            const NR: usize = 2 * L;
            if nr <= $narrow {
                // SAFETY: forwarded from the caller's contract; the CPU
                // has AVX2 and FMA (implied by this kernel's features).
                unsafe { narrow_tail::<MR, NR, A>(kc, a, b, c, rsc, beta, mr, nr) };
                return;
            }
            if nr <= L {
                // The last panel of a product whose width leaves at most
                // one vector of columns (e.g. 196 = 6 x 32 + 4, ResNet's
                // 7x7 layers): half the FMAs of a full tile.
                let mut acc = [$setzero(); MR];
                for p in 0..kc {
                    // SAFETY: p < kc and i < MR, so the loads stay inside
                    // the B panel (NR wide; its first L floats) and the A
                    // block (packed or in place: `ARead`).
                    unsafe {
                        let b0 = $load(b.add(p * NR));
                        for (i, v) in acc.iter_mut().enumerate() {
                            *v = $fmadd($set1(a.at(i, p)), b0, *v);
                        }
                    }
                }
                let mut tile = [[0f32; NR]; MR];
                for (t, &v) in tile.iter_mut().zip(&acc) {
                    // SAFETY: L <= NR floats fit in `t`.
                    unsafe { $store(t.as_mut_ptr(), v) };
                }
                // SAFETY: the caller's contract for `c`, `mr <= MR`, `nr`;
                // only the first nr <= L columns of each tile row are read.
                unsafe { store_partial::<NR>(tile.as_flattened(), c, rsc, beta, mr, nr) };
                return;
            }
            let mut acc = [[$setzero(); 2]; MR];
            // The depth loop in two parts with a prefetch of the C tile
            // between them (see PREFETCH_C_AHEAD).
            let split = kc.saturating_sub($ahead);
            for (lo, hi) in [(0, split), (split, kc)] {
                if lo == split {
                    prefetch_c::<NR>(c, rsc, mr);
                }
                for p in lo..hi {
                    a.prefetch(p);
                    // SAFETY: p < kc and i < MR, so the loads stay inside
                    // the B panel and the A block (`ARead`).
                    unsafe {
                        let b0 = $load(b.add(p * NR));
                        let b1 = $load(b.add(p * NR + L));
                        for (i, row) in acc.iter_mut().enumerate() {
                            let av = $set1(a.at(i, p));
                            row[0] = $fmadd(av, b0, row[0]);
                            row[1] = $fmadd(av, b1, row[1]);
                        }
                    }
                }
            }
            if mr == MR && nr == NR {
                let vb = $set1(beta);
                for (i, row) in acc.iter().enumerate() {
                    for (h, &v) in row.iter().enumerate() {
                        // SAFETY: a full tile: rows < MR, columns < NR are
                        // inside the caller's block.
                        unsafe {
                            let p = c.add(i * rsc + h * L);
                            let out = if beta != 0.0 {
                                $fmadd($load(p), vb, v)
                            } else {
                                v
                            };
                            $store(p, out);
                        }
                    }
                }
            } else {
                let mut tile = [[0f32; NR]; MR];
                for (t, row) in tile.iter_mut().zip(&acc) {
                    for (h, &v) in row.iter().enumerate() {
                        // SAFETY: L floats at h*L < NR lie inside `t`.
                        unsafe { $store(t.as_mut_ptr().add(h * L), v) };
                    }
                }
                // SAFETY: the caller's contract for `c`, `mr <= MR`, `nr`.
                unsafe { store_partial::<NR>(tile.as_flattened(), c, rsc, beta, mr, nr) };
            }
        }
    };
}

/// `C = A·B + beta * C` for a tile of at most 8 valid columns (`nr <= 8`)
/// of an `MR x NR` panel pair, on 256-bit vectors: the AVX-512 kernel's
/// narrow last panel.
///
/// # Safety
/// As [`Kernel::run`]; the CPU supports AVX2 and FMA; `NR >= 8`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn narrow_tail<const MR: usize, const NR: usize, A: ARead>(
    kc: usize,
    a: A,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    beta: f32,
    mr: usize,
    nr: usize,
) {
    let mut acc = [_mm256_setzero_ps(); MR];
    for p in 0..kc {
        // SAFETY: p < kc and i < MR, so the loads stay inside the A block
        // (`ARead`) and the B panel (the first 8 floats of its row p).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            for (i, v) in acc.iter_mut().enumerate() {
                *v = _mm256_fmadd_ps(_mm256_set1_ps(a.at(i, p)), b0, *v);
            }
        }
    }
    let mut tile = [[0f32; 8]; MR];
    for (t, &v) in tile.iter_mut().zip(&acc) {
        // SAFETY: 8 floats fit in `t`.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
    }
    // SAFETY: the caller's contract for `c`, `mr`, `nr`; nr <= 8.
    unsafe { store_partial::<8>(tile.as_flattened(), c, rsc, beta, mr, nr) };
}

micro_kernel!(
    Avx512,
    kernel_avx512,
    "avx512f",
    // 8 rows, not 12: every channel count in ResNet (64..512, and the 9x/1x
    // multiples the input gradient's GEMM has as rows) is a multiple of 8,
    // so no partial row tile; with 12, m = 64 computed 72 rows (12.5 %
    // wasted FMAs plus the slow partial store). 16 accumulators still hide
    // the FMA latency. Measured: BENCHMARKS.md, "What each change bought" 5.
    MR = 8,
    LANES = 16,
    // A last panel of at most 8 columns (196 = 6 x 32 + 4 at 7x7, 392 =
    // 12 x 32 + 8 at 14x14) runs on 256-bit vectors: the same FMA count as
    // the 512-bit half path but twice the rate (two 256-bit FMAs per cycle
    // against one 512-bit, on Zen 4 and on Intel's AVX-512 cores alike).
    NARROW = 8,
    // 48 depth steps of 16 FMA cycles: ~770 cycles.
    PREFETCH_C_AHEAD = 48,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
micro_kernel!(
    Avx2,
    kernel_avx2,
    "avx2,fma",
    MR = 6,
    LANES = 8,
    // 128-bit FMAs run at the 256-bit rate: nothing to gain.
    NARROW = 0,
    // 128 depth steps of 6 cycles (12 FMAs, two per cycle): ~770 cycles.
    PREFETCH_C_AHEAD = 128,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);

thread_local! {
    static PACK_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The left operand `A` (`m x k`) as the GEMM consumes it: packed panels of
/// `MR` rows.
pub(super) trait PackA: Sync {
    /// The `MR`-row panels (zero padded, `kc * MR` floats each) of rows
    /// `ic..ic + mc`, depth `pc..pc + kc`: packed into `buf` (which holds
    /// `MC.div_ceil(MR) * MR * KC` floats), or already packed elsewhere.
    ///
    /// # Safety
    /// The ranges lie inside the operand; `ic` and `pc` are block starts of
    /// the GEMM (multiples of `MR` and of [`KC`] from the operand's row 0).
    unsafe fn panels<'s>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        mr: usize,
        buf: &'s mut [f32],
    ) -> &'s [f32];

    /// The operand itself when the kernels should read it where it lies
    /// ([`Kernel::run_in_place`]) instead of from packed panels, for a
    /// product with `n` columns on kernels of `mr` rows.
    fn in_place(&self, _n: usize, _mr: usize) -> Option<Raw> {
        None
    }

    /// The operand itself when the kernels read it through a depth table
    /// ([`Kernel::run_indexed`]).
    fn indexed(&self) -> Option<Indexed> {
        None
    }
}

/// A raw strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(super) struct Raw {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a `Raw` is only built from a borrowed slice (gemm.rs, and
// conv/winograd.rs's channel split over its transformed input) and only
// read through; sharing it between threads is sharing a `&[f32]`.
unsafe impl Sync for Raw {}
// SAFETY: as above.
unsafe impl Send for Raw {}

impl Raw {
    /// The element `(i, j)`'s address.
    ///
    /// # Safety
    /// `(i, j)` lies inside the view.
    unsafe fn at(&self, i: usize, j: usize) -> *const f32 {
        // SAFETY: the caller's contract.
        unsafe { self.ptr.add(i * self.rs + j * self.cs) }
    }
}

impl PackA for Raw {
    unsafe fn panels<'s>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        mr: usize,
        buf: &'s mut [f32],
    ) -> &'s [f32] {
        // SAFETY: (ic, pc) and the mc x kc block after it lie inside the
        // view (the caller's contract).
        unsafe { pack_a(self.at(ic, pc), self.rs, self.cs, mc, kc, mr, buf) };
        buf
    }

    fn in_place(&self, n: usize, mr: usize) -> Option<Raw> {
        reads_in_place(self.rs, self.cs, n, mr).then_some(*self)
    }
}

/// A left operand whose depth index is not affine in memory, read through
/// a table: element `(i, p)` at `ptr + i*rs + offsets[p]` (see
/// [`ByTable`]; gemm.rs `with_indexed_lhs` builds it and checks it).
#[derive(Clone, Copy)]
pub(super) struct Indexed {
    pub ptr: *const f32,
    pub rs: usize,
    /// `depth` offsets, then `depth` prefetch offsets ([`prefetch_table`]).
    pub offsets: *const u32,
    pub prefetch: *const u32,
}

// SAFETY: an `Indexed` is only built from borrowed slices (gemm.rs) and
// only read through; sharing it between threads is sharing `&[f32]` and
// `&[u32]`.
unsafe impl Sync for Indexed {}
// SAFETY: as above.
unsafe impl Send for Indexed {}

impl PackA for Indexed {
    unsafe fn panels<'s>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        mr: usize,
        buf: &'s mut [f32],
    ) -> &'s [f32] {
        // Not used by `gemm` (which reads it in place), but a valid
        // packing: zero-padded MR-row panels.
        for (panel, dst) in buf
            .chunks_exact_mut(kc * mr)
            .take(mc.div_ceil(mr))
            .enumerate()
        {
            for p in 0..kc {
                for i in 0..mr {
                    let row = ic + panel * mr + i;
                    dst[p * mr + i] = if row < ic + mc {
                        // SAFETY: row < ic + mc and pc + p < pc + kc lie
                        // inside the operand (the caller's contract).
                        unsafe {
                            *self
                                .ptr
                                .add(row * self.rs + *self.offsets.add(pc + p) as usize)
                        }
                    } else {
                        0.0
                    };
                }
            }
        }
        buf
    }

    fn indexed(&self) -> Option<Indexed> {
        Some(*self)
    }
}

/// Fills `out[p]` (one entry per depth step of an [`Indexed`] operand with
/// the given `offsets` and row stride `rs`) with what [`ByTable`] hints at
/// step `p` for kernels of `mr` rows: row `p % mr` of step `p +
/// A_PREFETCH` (the last step's past the end), as an offset from row 0.
/// Cycling through the rows touches every line of a step's `mr` values
/// once per `mr` steps (the flipped weight's are `mr * KH*KW` adjacent
/// floats, used over `KH*KW` steps), at one prefetch per step.
pub(super) fn prefetch_table(offsets: &[u32], rs: usize, mr: usize, out: &mut [u32]) {
    let last = offsets.len().saturating_sub(1);
    for (p, v) in out.iter_mut().enumerate().take(offsets.len()) {
        let ahead = offsets[(p + A_PREFETCH).min(last)] as usize;
        // Only a hint: an offset past u32 (impossible for operands that
        // `with_indexed_lhs` accepts) is cut to the step's own.
        *v = u32::try_from((p % mr.max(1)) * rs + ahead).unwrap_or(offsets[p]);
    }
}

/// Whether kernels of `mr` rows read a left operand with strides `(rs,
/// cs)`, to be multiplied with `n` columns, where it lies
/// ([`Kernel::run_in_place`]) rather than packing it into panels first.
///
/// Why: packing copies the whole operand (for a convolution, the weight:
/// 44 MB for ResNet-18, in every forward and again as Wᵀ in every
/// backward), a memory-bound pass that pays off only when the panels are
/// read often enough, i.e. for many columns. A row-major operand (`cs =
/// 1`: the forward's W, the weight gradient's dY) is `MR` sequential row
/// streams that the kernel prefetches, as fast to read in place as packed
/// at every size measured, so it is never packed. A transposed one (`rs =
/// 1`: the input gradient's Wᵀ) takes a new cache line (half used) and,
/// for a large weight, a new page per depth step. For the AVX-512 kernel
/// (8 rows: 16 FMA cycles per depth step) in place won at up to ~200
/// columns (layers 3–4 at batch 1–2: 0.77–0.92x of the packed time) and
/// lost from ~800 (1.09–1.16x); for the AVX2 kernel (6 rows: 6 cycles
/// per step) it lost at 196 columns (1.09–1.20x) and broke even at 49, so
/// it packs (BENCHMARKS.md, "What each change bought", item 18).
///
/// `FROSTGRAD_A_IN_PLACE=0` packs every operand, `=1` packs none (for
/// comparison).
pub(super) fn reads_in_place(rs: usize, cs: usize, n: usize, mr: usize) -> bool {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = super::env_switch::forced(&MODE, "FROSTGRAD_A_IN_PLACE", "1", "0");
    let transposed = rs == 1 && mr >= 8 && n <= TRANSPOSED_IN_PLACE_MAX_COLS;
    forced.unwrap_or(cs == 1 || transposed)
}

/// The most columns a transposed left operand is read in place for (see
/// [`reads_in_place`]).
const TRANSPOSED_IN_PLACE_MAX_COLS: usize = 256;

impl PackB for Raw {
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize, out: &mut [f32]) {
        // SAFETY: the kc x nc block at (pc, jc) lies inside the view.
        unsafe { pack_b(self.at(pc, jc), self.rs, self.cs, kc, nc, nr, out) }
    }
}

/// Packs rows `0..mc` x depth `0..kc` of the view at `a` into MR-row panels
/// (zero padded), `kc * MR` floats per panel.
///
/// # Safety
/// Every `(i, p)` with `i < mc`, `p < kc` is readable at `a + i*rs + p*cs`.
unsafe fn pack_a(
    a: *const f32,
    rs: usize,
    cs: usize,
    mc: usize,
    kc: usize,
    mr_full: usize,
    out: &mut [f32],
) {
    #[allow(non_snake_case)]
    let MR = mr_full;
    for (panel, dst) in out
        .chunks_exact_mut(kc * MR)
        .take(mc.div_ceil(MR))
        .enumerate()
    {
        let i0 = panel * MR;
        let rows = MR.min(mc - i0);
        // SAFETY: rows i0..i0 + MR, depth 0..kc lie inside the view when
        // the panel is full (caller's contract).
        let full = rows == MR
            && match MR {
                8 => unsafe { pack_full_panel::<8>(a.add(i0 * rs), rs, cs, kc, dst) },
                6 => unsafe { pack_full_panel::<6>(a.add(i0 * rs), rs, cs, kc, dst) },
                _ => false,
            };
        if full {
            continue;
        }
        if rows < MR {
            dst.fill(0.0);
        }
        if rs == 1 {
            // A transposed operand (the input gradient's Wᵀ): the panel's
            // rows are adjacent in memory, so copy them depth by depth
            // rather than walking each row with a large stride.
            for p in 0..kc {
                // SAFETY: i0 + rows <= mc and p < kc (caller's contract).
                let src = unsafe { std::slice::from_raw_parts(a.add(i0 + p * cs), rows) };
                dst[p * MR..p * MR + rows].copy_from_slice(src);
            }
            continue;
        }
        for i in 0..rows {
            // SAFETY: i0 + i < mc and p < kc (caller's contract).
            let row = unsafe { a.add((i0 + i) * rs) };
            for p in 0..kc {
                dst[p * MR + i] = unsafe { *row.add(p * cs) };
            }
        }
    }
}

/// Packs one full `MR`-row panel (rows `0..MR`, depth `0..kc` of the view
/// at `a`) into `dst` (`kc * MR` floats) when a contiguous side makes a
/// fixed-size copy possible; returns whether it did. With `MR` a constant
/// the compiler keeps the `MR` row streams in registers and stores each
/// depth step's `MR` values as one contiguous group, where the general
/// loop below stored one float per row with a stride of `MR` (≈ 6 cycles a
/// float, 4 % of a large GEMM's time in `perf`).
///
/// # Safety
/// Every `(i, p)` with `i < MR`, `p < kc` is readable at `a + i*rs + p*cs`.
#[inline(always)]
unsafe fn pack_full_panel<const MR: usize>(
    a: *const f32,
    rs: usize,
    cs: usize,
    kc: usize,
    dst: &mut [f32],
) -> bool {
    let dst = &mut dst[..kc * MR];
    if rs == 1 {
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            // SAFETY: MR adjacent floats at depth p < kc (caller's contract).
            let src = unsafe { a.add(p * cs).cast::<[f32; MR]>().read_unaligned() };
            d.copy_from_slice(&src);
        }
        return true;
    }
    if cs != 1 {
        return false;
    }
    // SAFETY: row i < MR starts inside the view (caller's contract).
    let rows: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.add(i * rs) });
    for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
        for (v, row) in d.iter_mut().zip(&rows) {
            // SAFETY: (i, p) with p < kc (caller's contract).
            *v = unsafe { *row.add(p) };
        }
    }
    true
}

/// Packs depth `0..kc` x columns `0..nc` of the view at `b` into NR-column
/// panels (zero padded), `kc * NR` floats per panel.
///
/// # Safety
/// Every `(p, j)` with `p < kc`, `j < nc` is readable at `b + p*rs + j*cs`.
unsafe fn pack_b(
    b: *const f32,
    rs: usize,
    cs: usize,
    kc: usize,
    nc: usize,
    nr_full: usize,
    out: &mut [f32],
) {
    #[allow(non_snake_case)]
    let NR = nr_full;
    for (j0, cols, dst) in panels(out, kc, 0, nc, NR) {
        if cs == 1 && cols == NR && (NR == 32 || NR == 16) {
            // A full panel of a row-major block (the input gradient's
            // output gradient): fixed-size row copies, where a
            // `copy_from_slice` of a run-time length was a `memmove` call
            // per depth step.
            // SAFETY: p < kc, j0 + NR <= nc (caller's contract).
            unsafe {
                if NR == 32 {
                    copy_rows::<32>(b.add(j0), rs, kc, dst)
                } else {
                    copy_rows::<16>(b.add(j0), rs, kc, dst)
                }
            };
        } else if cs == 1 {
            for p in 0..kc {
                let d = &mut dst[p * NR..(p + 1) * NR];
                // SAFETY: p < kc, j0 + cols <= nc (caller's contract).
                let src = unsafe { std::slice::from_raw_parts(b.add(p * rs + j0), cols) };
                d[..cols].copy_from_slice(src);
                d[cols..].fill(0.0);
            }
        } else if rs == 1 && transposes(NR) {
            // A transposed view (the weight gradients' pixels or tiles,
            // `matmul` with a transposed right operand): 8x8 register
            // transposes instead of one float at a time a panel width
            // apart (13 % of the samples of the 64@56 Winograd weight
            // gradient on one thread, see the commit message of fc49be0).
            debug_assert!(cols <= NR);
            // SAFETY: p < kc, j0 + cols <= nc (caller's contract), so every
            // load is one the scalar copy below would make; cols <= NR
            // (`panels`) and `dst` holds kc x NR floats, so every store
            // lies in the panel; AVX2 + FMA: `transposes`.
            unsafe { pack_transposed(b.add(j0 * cs), cs, kc, cols, NR, dst) };
        } else {
            if cols < NR {
                dst.fill(0.0);
            }
            for j in 0..cols {
                // SAFETY: as above.
                let col = unsafe { b.add((j0 + j) * cs) };
                for p in 0..kc {
                    dst[p * NR + j] = unsafe { *col.add(p * rs) };
                }
            }
        }
    }
}

/// Whether [`pack_b`] packs a transposed view (`rs == 1`) of `nr`-wide
/// panels through [`pack_transposed`]: for the AVX2 micro-kernel's panels
/// on the AVX2 path only (the AVX-512 path keeps the scalar gather: not
/// measured, the machine this was written on has no AVX-512).
fn transposes(nr: usize) -> bool {
    nr == <Avx2 as Kernel>::NR
        && super::simd::active() == SimdPath::Avx2
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Depth `0..kc` x columns `0..cols` of the transposed view at `b`
/// (element `(p, j)` at `b + p + j * cs`) into the `nr`-wide panel `dst`
/// (row `p` at `p * nr`), zero past column `cols`: each 8 columns x 8
/// depth steps (8 loads along the depth) transposed in registers and
/// stored as 8 panel rows of 8 columns (contiguous 32-byte stores); the
/// columns and depth steps past the multiples of 8 one float at a time.
///
/// # Safety
/// Every `(p, j)` with `p < kc`, `j < cols` is readable at `b + p + j*cs`;
/// `nr` is a multiple of 8, `cols <= nr`, `dst` holds `kc * nr` floats;
/// the CPU runs AVX2 + FMA code.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_transposed(
    b: *const f32,
    cs: usize,
    kc: usize,
    cols: usize,
    nr: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * nr];
    let (eights, deep) = (cols / 8 * 8, kc / 8 * 8);
    let out = dst.as_mut_ptr();
    for p in (0..deep).step_by(8) {
        for g in (0..eights).step_by(8) {
            // SAFETY: columns g + r < cols, depth p + 0..8 <= kc (the
            // caller's contract).
            let r = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(b.add((g + r) * cs + p)) });
            // SAFETY: AVX (the caller's contract).
            let t = unsafe { super::simd::transpose8x8_avx(r) };
            for (i, t) in t.into_iter().enumerate() {
                // SAFETY: row p + i < kc, columns g..g + 8 <= cols <= nr:
                // inside `dst`'s kc * nr floats, borrowed mutably.
                unsafe { _mm256_storeu_ps(out.add((p + i) * nr + g), t) };
            }
        }
    }
    // The rest: columns eights..cols of depth 0..deep, all columns of depth
    // deep..kc (one column's run at a time), zeros past `cols`.
    let mut rest = |(lo, hi): (usize, usize), from: usize| {
        for j in from..cols {
            // SAFETY: j < cols, depth lo..hi <= kc (the caller's contract).
            let src = unsafe { std::slice::from_raw_parts(b.add(j * cs + lo), hi - lo) };
            for (p, &x) in (lo..hi).zip(src) {
                dst[p * nr + j] = x;
            }
        }
        if cols < nr {
            for row in dst[lo * nr..hi * nr].chunks_exact_mut(nr) {
                row[cols..].fill(0.0);
            }
        }
    };
    rest((0, deep), eights);
    rest((deep, kc), 0);
}

/// Copies `kc` rows of `N` floats, row stride `rs`, from `b` into `dst`.
///
/// # Safety
/// Every `b + p*rs + j`, `p < kc`, `j < N` is readable.
#[inline(always)]
unsafe fn copy_rows<const N: usize>(b: *const f32, rs: usize, kc: usize, dst: &mut [f32]) {
    for (p, d) in dst[..kc * N].chunks_exact_mut(N).enumerate() {
        // SAFETY: the caller's contract.
        let src = unsafe { b.add(p * rs).cast::<[f32; N]>().read_unaligned() };
        d.copy_from_slice(&src);
    }
}

/// A left operand packed once, whole, for kernel `MR` (the convolutions'
/// weight, used by every chunk and thread of one call instead of being
/// re-packed by each GEMM). Layout: for each depth block `pc` (steps of
/// [`KC`]), the `MR`-row panels of all rows, `kc * MR` floats each; block
/// `pc` starts at `pc * m_pad`.
pub(super) struct PackedA<'a> {
    data: &'a [f32],
    m_pad: usize,
    mr: usize,
}

impl<'a> PackedA<'a> {
    /// Floats needed to pack an `m x k` operand for row tile `mr`
    /// (saturating: a size no allocator grants, so never a wrapped one).
    pub fn len(m: usize, k: usize, mr: usize) -> usize {
        m.checked_next_multiple_of(mr)
            .map_or(usize::MAX, |rows| rows.saturating_mul(k))
    }

    /// Packs `a` (`m x k`) into `out` (at least [`Self::len`] floats).
    ///
    /// # Safety
    /// Every `(i, p)` with `i < m`, `p < k` is readable through `a`.
    pub unsafe fn pack(a: Raw, m: usize, k: usize, mr: usize, out: &'a mut [f32]) -> Self {
        let m_pad = m.next_multiple_of(mr);
        let out = &mut out[..m_pad * k];
        // Each depth block packs into its own range of `out`. A layer4
        // weight (512 x 4608, 9 MiB) packed on one thread left the other
        // core idle for a tenth of that convolution (thread scaling 1.34x;
        // BENCHMARKS.md, "What each change bought"), so large operands are
        // packed block-parallel.
        let pack_block = |(block, dst): (usize, &mut [f32])| {
            let pc = block * KC;
            let kc = KC.min(k - pc);
            // SAFETY: the m x kc block at (0, pc) lies inside the view.
            unsafe { pack_a(a.at(0, pc), a.rs, a.cs, m, kc, mr, dst) };
        };
        if out.len() >= PARALLEL_PACK_ELEMS {
            out.par_chunks_mut(KC * m_pad)
                .enumerate()
                .for_each(pack_block);
        } else {
            out.chunks_mut(KC * m_pad).enumerate().for_each(pack_block);
        }
        Self {
            data: out,
            m_pad,
            mr,
        }
    }

    /// The row tile it was packed for.
    pub fn mr(&self) -> usize {
        self.mr
    }
}

impl PackA for PackedA<'_> {
    unsafe fn panels<'s>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        mr: usize,
        _buf: &'s mut [f32],
    ) -> &'s [f32] {
        debug_assert!(mr == self.mr && ic.is_multiple_of(mr) && pc.is_multiple_of(KC));
        let start = pc * self.m_pad + ic * kc;
        &self.data[start..start + mc.div_ceil(mr) * mr * kc]
    }
}

/// A right operand packed once, whole, in the blocks and `nr`-column
/// panels [`gemm`] packs it into (blocks of [`NC`] columns, each in depth
/// blocks of [`KC`]), so that several GEMMs over it (the input gradient's
/// row blocks, gemm.rs `with_packed_rhs`) read it in place instead of each
/// packing it again. Block `(jc, pc)` starts at `jc * k + pc * nc_pad`,
/// `nc_pad` its width rounded up to `nr`.
pub(super) struct PackedB<'a> {
    data: &'a [f32],
    k: usize,
    n: usize,
    nr: usize,
    /// What it was packed from, for a request in another layout.
    source: &'a dyn PackB,
}

impl<'a> PackedB<'a> {
    /// Floats needed to pack a `k x n` operand for panel width `nr`
    /// (saturating: [`with_thread_packed_b`] compares it with its buffer's
    /// size, which a wrapped product could pass).
    pub fn len(k: usize, n: usize, nr: usize) -> usize {
        n.checked_next_multiple_of(nr)
            .map_or(usize::MAX, |cols| cols.saturating_mul(k))
    }

    /// Packs the `k x n` operand `source` into `out` (at least
    /// [`Self::len`] floats); with `parallel`, in pieces on rayon's
    /// threads (for a product split by rows, whose parts all wait for the
    /// whole packing: on one thread the others sat idle meanwhile).
    ///
    /// # Safety
    /// `source` is a `k x n` operand (every block request inside it is
    /// valid).
    pub unsafe fn pack(
        source: &'a dyn PackB,
        k: usize,
        n: usize,
        nr: usize,
        out: &'a mut [f32],
        parallel: bool,
    ) -> Self {
        // The pieces: each block `(jc, pc)` (at `jc * k + pc * nc_pad`,
        // consecutive in `out`) in runs of whole `nr`-column panels, a few
        // per thread when parallel, so that the split below hands out
        // disjoint, consecutive slices of `out`.
        let threads = if parallel {
            rayon::current_num_threads().max(1)
        } else {
            1
        };
        let blocks = n.div_ceil(NC) * k.div_ceil(KC);
        let pieces_per_block = (4 * threads).div_ceil(blocks.max(1));
        let mut pieces: Vec<(usize, usize, usize, usize, &mut [f32])> = Vec::new();
        let mut rest = &mut out[..Self::len(k, n, nr)];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let panels = nc.div_ceil(nr);
            let split = if threads > 1 {
                pieces_per_block.min(panels)
            } else {
                1
            };
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                for s in 0..split {
                    let (p0, p1) = (s * panels / split, (s + 1) * panels / split);
                    let (j0, j1) = (jc + p0 * nr, (jc + p1 * nr).min(jc + nc));
                    let (piece, tail) = std::mem::take(&mut rest).split_at_mut((p1 - p0) * nr * kc);
                    rest = tail;
                    pieces.push((pc, kc, j0, j1 - j0, piece));
                }
            }
        }
        let pack = |(pc, kc, jc, nc, out): (usize, usize, usize, usize, &mut [f32])| {
            // SAFETY: each piece's kc x nc block at (pc, jc) lies inside
            // the operand (`source` is k x n); its slice holds its panels,
            // `nc.div_ceil(nr) * nr * kc` floats.
            unsafe { source.pack(pc, kc, jc, nc, nr, out) }
        };
        if threads > 1 && pieces.len() > 1 {
            pieces.into_par_iter().for_each(pack);
        } else {
            pieces.into_iter().for_each(pack);
        }
        Self {
            data: &out[..Self::len(k, n, nr)],
            k,
            n,
            nr,
            source,
        }
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

impl PackB for PackedB<'_> {
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize, out: &mut [f32]) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { self.source.pack(pc, kc, jc, nc, nr, out) }
    }

    // (Forwarded as `pack` is: a request in another layout packs from
    // the source, whose working room is reserved fallibly first.)
    fn reserve(&self, kc: usize, nr: usize) -> crate::error::Result<()> {
        self.source.reserve(kc, nr)
    }

    fn packed(&self, pc: usize, kc: usize, jc: usize, nc: usize, nr: usize) -> Option<&[f32]> {
        let whole_block = nr == self.nr
            && jc.is_multiple_of(NC)
            && jc < self.n
            && nc == NC.min(self.n - jc)
            && pc.is_multiple_of(KC)
            && pc < self.k
            && kc == KC.min(self.k - pc);
        whole_block.then(|| {
            let nc_pad = nc.next_multiple_of(nr);
            let at = jc * self.k + pc * nc_pad;
            &self.data[at..at + nc_pad * kc]
        })
    }
}

/// `C = A·B + beta * C` on the calling thread with kernel `K`, for rows
/// `i0..i0 + m` of `a` and columns `j0..j0 + n` of `b`; `c` points at the
/// block's top-left element.
///
/// # Safety
/// The CPU supports `K`; the `m x k` block of `a` at row `i0` (a multiple
/// of `K::MR` when `a` is pre-packed) and the `k x n` block of `b` at
/// column `j0` lie inside their operands; `c` is a writable `m x n` block
/// with row stride `rsc >= n` (or `m <= 1`) that nothing else accesses
/// meanwhile.
///
/// # Errors
/// [`crate::error::Error::OutOfMemory`] naming "micro-kernel A packing",
/// "micro-kernel B packing" (or, through [`gemm_live`], "micro-kernel
/// live-row tables") when this thread's buffer of that name cannot grow to
/// its fixed size; every buffer is taken before the first block is
/// written, so `c` is then untouched and the thread keeps its buffers.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<K: Kernel, A: PackA + ?Sized, B: PackB + ?Sized>(
    a: &A,
    (i0, m): (usize, usize),
    b: &B,
    (j0, n): (usize, usize),
    k: usize,
    beta: f32,
    c: *mut f32,
    rsc: usize,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // SAFETY: the m x n block is the caller's (this function's contract).
        unsafe { scale_block(c, rsc, m, n, beta) };
        return Ok(());
    }
    let indexed = a.indexed();
    let in_place = match indexed {
        Some(_) => None,
        None => a.in_place(n, K::MR),
    };
    if let Some(period) = b.depth_period() {
        let a_table = match (indexed, in_place) {
            (Some(t), _) => Some(TableA::Indexed(t)),
            (None, Some(v)) => TableA::strided(v, k),
            (None, None) => None,
        };
        if let Some(a_table) = a_table.filter(|_| (1..=64).contains(&period)) {
            // SAFETY: the caller's contract, forwarded.
            return unsafe {
                gemm_live::<K, B>(a_table, (i0, m), b, (j0, n), k, period, beta, c, rsc)
            };
        }
    }
    // Taken even where `a` is read in place or through a table and the
    // buffer stays unused: its size is fixed, so a thread grows it once,
    // in whichever product it meets first, and a steady-state step never
    // grows it later (`tests/cpu_buffer_pool.rs`).
    let mut apack = take_grown(&PACK_A, "micro-kernel A packing", pack_a_len(K::MR), 0.0)?;
    // B's buffer is taken only when some block of `b` is not packed
    // already (a `PackedB` may live in this very buffer, see
    // `with_thread_packed_b`), and before any block is written, so that its
    // refusal leaves `c` untouched (a `PackedB` over part of its columns
    // has its last block unpacked). `packed` is asked once per block here,
    // not per element.
    let needs_b = (0..n).step_by(NC).any(|jc| {
        (0..k).step_by(KC).any(|pc| {
            b.packed(pc, KC.min(k - pc), j0 + jc, NC.min(n - jc), K::NR)
                .is_none()
        })
    });
    let mut bpack: Option<Vec<f32>> = None;
    if needs_b {
        match take_pack_b(K::NR) {
            Ok(taken) => bpack = Some(taken),
            Err(e) => {
                PACK_A.with(|cell| cell.set(apack));
                return Err(e);
            }
        }
    }
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_block = if pc == 0 { beta } else { 1.0 };
            let bpanels = match b.packed(pc, kc, j0 + jc, nc, K::NR) {
                Some(panels) => panels,
                None => {
                    let bpack = match &mut bpack {
                        Some(taken) => taken,
                        // Not met: `needs_b` saw this block unpacked
                        // (`PackB::packed` answers from its arguments).
                        slot @ None => match take_pack_b(K::NR) {
                            Ok(taken) => slot.insert(taken),
                            Err(e) => {
                                PACK_A.with(|cell| cell.set(apack));
                                return Err(e);
                            }
                        },
                    };
                    // SAFETY: the kc x nc block at (pc, j0 + jc) lies
                    // inside b; bpack holds nc.div_ceil(NR) * NR * kc floats.
                    unsafe { b.pack(pc, kc, j0 + jc, nc, K::NR, bpack) };
                    bpack
                }
            };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let ap: &[f32] = if in_place.is_some() || indexed.is_some() {
                    &[]
                } else {
                    // SAFETY: the mc x kc block at (i0 + ic, pc) lies
                    // inside a; i0 + ic is a multiple of MR when i0 is (MC
                    // is).
                    unsafe { a.panels(i0 + ic, mc, pc, kc, K::MR, &mut apack) }
                };
                for jr in (0..nc).step_by(K::NR) {
                    let nr = K::NR.min(nc - jr);
                    let bp = &bpanels[(jr / K::NR) * kc * K::NR..][..kc * K::NR];
                    for ir in (0..mc).step_by(K::MR) {
                        let mr = K::MR.min(mc - ir);
                        // SAFETY: the mr x nr tile at (ic+ir, jc+jr) is
                        // inside c; the B panel holds kc*NR floats.
                        let tile = unsafe { c.add((ic + ir) * rsc + jc + jr) };
                        if let Some(t) = indexed {
                            // SAFETY: rows i0+ic+ir.. (mr >= 1 of them) at
                            // the table's depth offsets pc..pc+kc lie inside
                            // the operand, and both tables hold pc+kc
                            // entries (the caller's contract for a); as
                            // below for b and c.
                            unsafe {
                                K::run_indexed(
                                    kc,
                                    t.ptr.add((i0 + ic + ir) * t.rs),
                                    t.rs,
                                    (t.offsets.add(pc), t.prefetch.add(pc)),
                                    bp.as_ptr(),
                                    tile,
                                    rsc,
                                    beta_block,
                                    mr,
                                    nr,
                                )
                            };
                            continue;
                        }
                        match in_place {
                            // SAFETY: rows i0+ic+ir.. (mr >= 1 of them),
                            // depth pc..pc+kc lie inside the operand (the
                            // caller's contract for a); as above for b, c.
                            Some(v) => unsafe {
                                K::run_in_place(
                                    kc,
                                    v.at(i0 + ic + ir, pc),
                                    (v.rs, v.cs),
                                    bp.as_ptr(),
                                    tile,
                                    rsc,
                                    beta_block,
                                    mr,
                                    nr,
                                )
                            },
                            None => {
                                let ap = &ap[(ir / K::MR) * kc * K::MR..][..kc * K::MR];
                                // SAFETY: the panel holds kc*MR floats; as
                                // above for b and c.
                                unsafe {
                                    K::run(
                                        kc,
                                        ap.as_ptr(),
                                        bp.as_ptr(),
                                        tile,
                                        rsc,
                                        beta_block,
                                        mr,
                                        nr,
                                    )
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    PACK_A.with(|cell| cell.set(apack));
    if let Some(bpack) = bpack {
        PACK_B.with(|cell| cell.set(bpack));
    }
    Ok(())
}

/// A left operand read where it lies, as [`gemm_live`] reads it: element
/// `(i, p)` at `ptr + i*rs + offset(p)`.
#[derive(Clone, Copy)]
enum TableA {
    /// `offset(p) = p * cs` (an in-place [`Raw`] view: the forward's weight).
    Strided(Raw),
    /// `offset(p) = offsets[p]` (the flipped input gradient's weight).
    Indexed(Indexed),
}

impl TableA {
    /// An in-place view whose depth offsets (`p * cs`, `p < k`) fit the
    /// kernels' `u32` tables.
    fn strided(v: Raw, k: usize) -> Option<Self> {
        let last = k.saturating_sub(1).checked_mul(v.cs)?;
        u32::try_from(last).ok().map(|_| Self::Strided(v))
    }

    fn base(self) -> (*const f32, usize) {
        match self {
            Self::Strided(v) => (v.ptr, v.rs),
            Self::Indexed(t) => (t.ptr, t.rs),
        }
    }

    /// The offset of depth step `p` from a row's start.
    ///
    /// # Safety
    /// `p` is a depth step of the operand (`p < k`).
    unsafe fn offset(self, p: usize) -> u32 {
        match self {
            // `p * cs <= (k - 1) * cs` fits u32 (checked in `strided`).
            Self::Strided(v) => (p * v.cs) as u32,
            // SAFETY: the table holds `k` entries (`Indexed`'s contract).
            Self::Indexed(t) => unsafe { *t.offsets.add(p) },
        }
    }
}

/// Distinct panel masks [`gemm_live`] keeps depth tables for at once:
/// every panel of an `NC`-column block may have its own.
const LIVE_CLASSES: usize = NC / 16;

thread_local! {
    /// [`gemm_live`]'s depth tables: per class of panels, `KC` offsets of
    /// its live depth rows and `KC` prefetch offsets. Sized for the most
    /// classes from the first use on, so it never grows in a later step.
    static LIVE_TABLES: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Calls of [`gemm_live`] on this thread (unit tests: whether a
    /// product took the padding skip at all).
    pub(super) static LIVE_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// [`gemm`] for a right operand whose panels are zero on some depth rows
/// (`PackB::depth_period`, a padded convolution's column matrix): each
/// panel is packed with its live depth rows only (`PackB::pack_live`) and
/// multiplied with the same rows of `a`, read where it lies through a
/// table of their offsets ([`Kernel::run_indexed`]). A panel whose live
/// rows are all of them runs exactly as in [`gemm`]. The first depth block
/// with a live row takes `beta`; a panel with none gets `beta * C`.
///
/// Why: the padding taps of a small image are up to a third of its
/// column matrix (3x3, padding 1: 18 % at 7x7, 31 % at 4x4), and multiplying
/// them made ResNet's last stages 1.2-1.4x PyTorch's time, whose direct
/// convolution skips them (BENCHMARKS.md, issue 9 items 21 and 29).
///
/// # Safety
/// As [`gemm`]; `period` is `b`'s (`1..=64`), and `a` reads the `m x k`
/// block at row `i0` in place.
///
/// # Errors
/// As [`gemm`]: the OutOfMemory of this thread's "micro-kernel live-row
/// tables" or "micro-kernel B packing", both taken before any write to
/// `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_live<K: Kernel, B: PackB + ?Sized>(
    a: TableA,
    (i0, m): (usize, usize),
    b: &B,
    (j0, n): (usize, usize),
    k: usize,
    period: usize,
    beta: f32,
    c: *mut f32,
    rsc: usize,
) -> Result<()> {
    #[cfg(test)]
    LIVE_CALLS.with(|n| n.set(n.get() + 1));
    let every = if period == 64 {
        u64::MAX
    } else {
        (1u64 << period) - 1
    };
    let live_rows = |mask: u64, pc: usize, kc: usize| {
        (pc..pc + kc).filter(move |&r| mask >> (r % period) & 1 == 1)
    };
    let (a_ptr, rs) = a.base();
    let mut tables = take_grown(
        &LIVE_TABLES,
        "micro-kernel live-row tables",
        LIVE_CLASSES * 2 * KC,
        0,
    )?;
    let mut bpack = match take_pack_b(K::NR) {
        Ok(bpack) => bpack,
        Err(e) => {
            LIVE_TABLES.with(|cell| cell.set(tables));
            return Err(e);
        }
    };
    const PANELS: usize = NC / 16;
    let mut masks = [0u64; PANELS];
    let mut class_of = [0usize; PANELS];
    let mut first_live = [usize::MAX; PANELS];
    // The distinct partial masks of a column block, with their live rows
    // in the current depth block.
    let mut class_list = [(0u64, 0usize); LIVE_CLASSES];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(K::NR);
        debug_assert!(panels <= PANELS);
        let mut count = 0;
        for p in 0..panels {
            let cols = K::NR.min(nc - p * K::NR);
            let mask = b.panel_mask(j0 + jc + p * K::NR, cols) & every;
            masks[p] = mask;
            // A panel whose every row is live keeps the dense kernels.
            class_of[p] = if mask == every {
                usize::MAX
            } else {
                match class_list[..count].iter().position(|&(m, _)| m == mask) {
                    Some(i) => i,
                    None if count < LIVE_CLASSES => {
                        class_list[count] = (mask, 0);
                        count += 1;
                        count - 1
                    }
                    // More distinct masks than tables: computed densely.
                    None => {
                        masks[p] = every;
                        usize::MAX
                    }
                }
            };
            // The residues repeat every `period` rows: the first live row,
            // if any, is among the first `period`.
            first_live[p] = live_rows(masks[p], 0, k.min(period))
                .next()
                .map_or(usize::MAX, |r| r / KC * KC);
        }
        let classes = &mut class_list[..count];
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            for (ci, (mask, live)) in classes.iter_mut().enumerate() {
                let (offsets, prefetch) = tables[ci * 2 * KC..][..2 * KC].split_at_mut(KC);
                *live = 0;
                for r in live_rows(*mask, pc, kc) {
                    // SAFETY: r < pc + kc <= k.
                    offsets[*live] = unsafe { a.offset(r) };
                    *live += 1;
                }
                prefetch_table(&offsets[..*live], rs, K::MR, &mut prefetch[..*live]);
            }
            // SAFETY: the kc x nc block at (pc, j0 + jc) lies inside b;
            // bpack holds nc.div_ceil(NR) * NR * kc floats; one mask per
            // panel.
            unsafe { b.pack_live((pc, kc), (j0 + jc, nc), K::NR, &masks[..panels], &mut bpack) };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                for p in 0..panels {
                    if first_live[p] > pc {
                        continue; // no live row yet (or at all)
                    }
                    let jr = p * K::NR;
                    let nr = K::NR.min(nc - jr);
                    let beta_block = if first_live[p] == pc { beta } else { 1.0 };
                    let bp = bpack[p * kc * K::NR..][..kc * K::NR].as_ptr();
                    let class = match class_of[p] {
                        usize::MAX => None,
                        ci => Some((ci, classes[ci].1)),
                    };
                    if class.is_some_and(|(_, live)| live == 0) {
                        continue;
                    }
                    for ir in (0..mc).step_by(K::MR) {
                        let mr = K::MR.min(mc - ir);
                        let row = i0 + ic + ir;
                        // SAFETY: the mr x nr tile at (ic+ir, jc+jr) is
                        // inside c; the panel holds its live rows (kc of
                        // them for a dense panel), NR floats each; rows
                        // row..row+mr of `a` at the tables' offsets (of
                        // depth steps below k) lie inside it (the caller's
                        // contract for a), and each table holds as many
                        // entries as the kernel takes steps.
                        unsafe {
                            let tile = c.add((ic + ir) * rsc + jc + jr);
                            let a_row = a_ptr.add(row * rs);
                            match (class, a) {
                                (Some((ci, live)), _) => {
                                    let t = tables[ci * 2 * KC..].as_ptr();
                                    K::run_indexed(
                                        live,
                                        a_row,
                                        rs,
                                        (t, t.add(KC)),
                                        bp,
                                        tile,
                                        rsc,
                                        beta_block,
                                        mr,
                                        nr,
                                    )
                                }
                                (None, TableA::Indexed(t)) => K::run_indexed(
                                    kc,
                                    a_row,
                                    rs,
                                    (t.offsets.add(pc), t.prefetch.add(pc)),
                                    bp,
                                    tile,
                                    rsc,
                                    beta_block,
                                    mr,
                                    nr,
                                ),
                                (None, TableA::Strided(v)) => K::run_in_place(
                                    kc,
                                    a_row.add(pc * v.cs),
                                    (v.rs, v.cs),
                                    bp,
                                    tile,
                                    rsc,
                                    beta_block,
                                    mr,
                                    nr,
                                ),
                            }
                        }
                    }
                }
            }
        }
        // Panels without a live row: C = beta * C.
        for p in (0..panels).filter(|&p| first_live[p] == usize::MAX) {
            let jr = p * K::NR;
            // SAFETY: the panel's columns jc + jr.. (at most nc - jr of
            // them) over all m rows lie inside the m x n block.
            unsafe { scale_block(c.add(jc + jr), rsc, m, K::NR.min(nc - jr), beta) };
        }
    }
    LIVE_TABLES.with(|cell| cell.set(tables));
    PACK_B.with(|cell| cell.set(bpack));
    Ok(())
}

/// The direct convolution's product (conv/direct.rs `forward_direct`): output
/// pixels as the rows of `C` (`C[q][o]`, row stride `rsc`), the output
/// channels as its `n` columns, for one image whose padded input `a` the
/// kernels read where it lies: pixel `ow` of output row `oh` at depth `p`
/// is `a[oh * row_step + ow * rs + offsets[p]]`. The pixels are cut into
/// tiles of `MR` (see [`DirectTiles`] for how), each multiplied by the
/// `k`-deep panels of `b` (the kernel's `NR` columns each, `k` rows of them
/// per panel, panel after panel), depth block by depth block, so a
/// 32 KiB block of a weight panel stays in L1 over all the image's tiles.
/// `prefetch` (see [`prefetch_table`]) is read only where
/// [`direct_reads_prefetch`] says so, and may be empty elsewhere.
///
/// # Safety
/// The CPU supports `path` (not portable); `offsets` holds `k` entries,
/// and so does `prefetch` where it is read; every `(oh, ow, p)` with `oh <
/// rows`, `ow < cols`, `p < k` is readable at that address; `b` holds
/// `n.div_ceil(NR) * k * NR` floats; `c` holds `rows * cols` rows of `rsc
/// >= n` floats, writable, accessed by nothing else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn direct_rows(
    path: SimdPath,
    a: *const f32,
    (rows, cols, row_step, rs): (usize, usize, usize, usize),
    (offsets, prefetch): (&[u32], &[u32]),
    b: &[f32],
    (k, n): (usize, usize),
    c: *mut f32,
    rsc: usize,
) {
    let tiles = match path {
        SimdPath::Avx2 => direct_tiles_avx2(),
        _ => DirectTiles::PerRow,
    };
    // SAFETY: forwarded.
    unsafe {
        direct_rows_tiled(
            path,
            tiles,
            a,
            (rows, cols, row_step, rs),
            (offsets, prefetch),
            b,
            (k, n),
            c,
            rsc,
        )
    }
}

/// [`direct_rows`] in the given tiling: walking ones on the AVX2 kernel
/// only, and only where the table [`walks`] (elsewhere wrapping).
///
/// # Safety
/// As [`direct_rows`]; `prefetch` holds `k` entries for the row tiles.
#[allow(clippy::too_many_arguments)]
unsafe fn direct_rows_tiled(
    path: SimdPath,
    tiles: DirectTiles,
    a: *const f32,
    geometry: (usize, usize, usize, usize),
    (offsets, prefetch): (&[u32], &[u32]),
    b: &[f32],
    (k, n): (usize, usize),
    c: *mut f32,
    rsc: usize,
) {
    assert!(offsets.len() >= k);
    // SAFETY: forwarded (the CPU supports the kernel of `path`).
    unsafe {
        match path {
            SimdPath::Avx512 => direct_rows_with::<Avx512>(
                a,
                geometry,
                (offsets, prefetch),
                b,
                (k, n),
                c,
                rsc,
                tiles,
            ),
            SimdPath::Avx2 => {
                if tiles == DirectTiles::Walking && walks(&offsets[..k]) {
                    direct_rows_walking(a, geometry, offsets, b, (k, n), c, rsc);
                } else {
                    direct_rows_with::<Avx2>(
                        a,
                        geometry,
                        (offsets, prefetch),
                        b,
                        (k, n),
                        c,
                        rsc,
                        tiles,
                    )
                }
            }
            SimdPath::Portable => unreachable!("direct_rows on the portable path"),
        }
    }
}

/// Whether [`direct_rows`] on `path` reads its prefetch table: only the
/// row tiles do ([`ByTable`]); the AVX2 default tiles read none, so the
/// caller need not build it.
pub(super) fn direct_reads_prefetch(path: SimdPath) -> bool {
    match path {
        SimdPath::Avx512 => true,
        SimdPath::Avx2 => direct_tiles_avx2() == DirectTiles::PerRow,
        SimdPath::Portable => false,
    }
}

/// How [`direct_rows`] cuts its block of output pixels into tiles of `MR`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum DirectTiles {
    /// Each output row on its own: a short last tile per row where the
    /// width is not a multiple of `MR`, each tile's rows `rs` apart
    /// ([`Kernel::run_indexed`]).
    PerRow,
    /// The block's pixels in row-major order, `MR` at a time, a tile
    /// wrapping from the end of one output row to the start of the next
    /// (one pointer per pixel, [`Kernel::run_indexed_rows`]): one short
    /// tile per block instead of one per row.
    Wrapping,
    /// The tiles of `Wrapping`, with a kernel that reads the table once
    /// per [`WALK`] depth steps: where every table entry `3g` is followed
    /// by `+1` and `+2` (a kernel row of 3 taps, dilation 1, as in
    /// ResNet's 3x3 layers; [`walks`]), the kernel reads those steps at
    /// fixed offsets from one table load ([`walk_kernel_avx2`]). AVX2
    /// only; elsewhere as `Wrapping`.
    Walking,
}

/// The tiling of the AVX2 direct convolution: [`DirectTiles::Walking`]
/// (falling back to `Wrapping`). Wrapping, against row tiles: 6-pixel
/// tiles end every row of 56 pixels with a 2-pixel tile (and
/// 14 with 2, 28 with 4), computed as a 4-row short tile whose 8
/// accumulators do not hide the FMA latency: at 3x3 64->64, 56x56, those
/// tiles took 6.9 % of the forward's samples for 3.6 % of its FMAs
/// (`perf`, one thread, Zen 2). Wrapping leaves one short tile per block
/// of rows (at 3x3 64->64, 56x56, a block of 14 rows is 784 = 130 x 6 + 4
/// pixels; at 128->128, 28x28 one of 14 rows is 392 = 65 x 6 + 2). With
/// its reader's prefetch dropped ([`ByPixel`]): 0.93x the CPU time of the
/// row tiles at 3x3 64->64, 56x56 and 128->128, 28x28, forward, 0.94x
/// input gradient (batch 8, one thread, Zen 2; BENCHMARKS.md issue 9 item
/// 38). Walking against wrapping: see [`walk_kernel_avx2`].
/// `FROSTGRAD_CONV_DIRECT_TILES=rows` tiles row by row, `=wrap` wraps
/// without walking (for comparison and tests). The AVX-512 kernel (8
/// pixels: 56 = 7 x 8, while 28 and 14 end in short tiles) keeps its row
/// tiles: not measured there.
fn direct_tiles_avx2() -> DirectTiles {
    static MODE: std::sync::OnceLock<DirectTiles> = std::sync::OnceLock::new();
    super::env_switch::choice(&MODE, "FROSTGRAD_CONV_DIRECT_TILES", |v| match v {
        Some("rows") => DirectTiles::PerRow,
        Some("wrap") => DirectTiles::Wrapping,
        _ => DirectTiles::Walking,
    })
}

/// Depth steps a walking kernel reads from one table entry: the taps of
/// one kernel row of a 3-wide kernel.
const WALK: usize = 3;

/// Depth steps per block of the walking tiles: [`KC`] cut to whole groups
/// of [`WALK`] (255).
const WALK_KC: usize = KC - KC % WALK;

/// Whether a depth table has the walking kernel's shape: whole groups of
/// [`WALK`] entries, each `t, t + 1, t + 2`.
fn walks(offsets: &[u32]) -> bool {
    offsets.len().is_multiple_of(WALK)
        && offsets.chunks_exact(WALK).all(|g| {
            g.iter()
                .enumerate()
                .all(|(j, &v)| u32::try_from(j).ok().and_then(|j| g[0].checked_add(j)) == Some(v))
        })
}

#[allow(clippy::too_many_arguments)]
unsafe fn direct_rows_with<K: Kernel>(
    a: *const f32,
    (rows, cols, row_step, rs): (usize, usize, usize, usize),
    (offsets, prefetch): (&[u32], &[u32]),
    b: &[f32],
    (k, n): (usize, usize),
    c: *mut f32,
    rsc: usize,
    tiles: DirectTiles,
) {
    assert!(b.len() >= n.div_ceil(K::NR) * k * K::NR);
    assert!(offsets.len() >= k && (tiles != DirectTiles::PerRow || prefetch.len() >= k));
    assert!(K::MR <= MAX_MR);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let beta = if pc == 0 { 0.0 } else { 1.0 };
        // SAFETY: the offsets hold kc entries from pc (asserted). The
        // prefetch table, read by the row tiles only, may be empty in the
        // others: its pointer is formed with wrapping arithmetic.
        let tables = (
            unsafe { offsets.as_ptr().add(pc) },
            prefetch.as_ptr().wrapping_add(pc),
        );
        for jp in 0..n.div_ceil(K::NR) {
            let nr = K::NR.min(n - jp * K::NR);
            let bp = b[(jp * k + pc) * K::NR..][..kc * K::NR].as_ptr();
            match tiles {
                DirectTiles::PerRow => {
                    for oh in 0..rows {
                        for ow in (0..cols).step_by(K::MR) {
                            let mr = K::MR.min(cols - ow);
                            // SAFETY: the tile's pixels (oh, ow..ow + mr) at
                            // depth pc..pc + kc are readable (the caller's
                            // contract), the panel holds kc * NR floats
                            // (asserted), and the C tile (rows oh * cols +
                            // ow.., columns jp * NR..) lies inside `c`.
                            unsafe {
                                K::run_indexed(
                                    kc,
                                    a.add(oh * row_step + ow * rs),
                                    rs,
                                    tables,
                                    bp,
                                    c.add((oh * cols + ow) * rsc + jp * K::NR),
                                    rsc,
                                    beta,
                                    mr,
                                    nr,
                                );
                            }
                        }
                    }
                }
                // Walking where the table does not walk: its tiles, the
                // table read at every step.
                DirectTiles::Wrapping | DirectTiles::Walking => {
                    let (mut oh, mut ow) = (0, 0);
                    let mut ptrs = [a; MAX_MR];
                    for q in (0..rows * cols).step_by(K::MR) {
                        let mr = K::MR.min(rows * cols - q);
                        for ptr in &mut ptrs[..mr] {
                            // SAFETY: pixel q + i = (oh, ow) is inside the
                            // block (q + i < rows * cols), so its row of the
                            // padded input is inside `a` (the caller's
                            // contract).
                            *ptr = unsafe { a.add(oh * row_step + ow * rs) };
                            ow += 1;
                            if ow == cols {
                                (oh, ow) = (oh + 1, 0);
                            }
                        }
                        // SAFETY: each of the tile's pixels, at depth pc..pc
                        // + kc, is readable from its pointer (the caller's
                        // contract), the panel holds kc * NR floats
                        // (asserted), and the C tile (rows q.., columns jp *
                        // NR..) lies inside `c`.
                        unsafe {
                            K::run_indexed_rows(
                                kc,
                                &ptrs[..mr],
                                tables.0,
                                bp,
                                c.add(q * rsc + jp * K::NR),
                                rsc,
                                beta,
                                mr,
                                nr,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The most rows of any micro-kernel here.
const MAX_MR: usize = 8;

/// [`direct_rows`] in [`DirectTiles::Walking`] on the AVX2 kernel: the
/// wrapping tiles of [`direct_rows_with`], each run by
/// [`walk_kernel_avx2`] in depth blocks of [`WALK_KC`].
///
/// # Safety
/// As [`direct_rows`], on a CPU with AVX2 and FMA, for a table that
/// [`walks`] (`offsets[..k]`).
#[allow(clippy::too_many_arguments)]
unsafe fn direct_rows_walking(
    a: *const f32,
    (rows, cols, row_step, rs): (usize, usize, usize, usize),
    offsets: &[u32],
    b: &[f32],
    (k, n): (usize, usize),
    c: *mut f32,
    rsc: usize,
) {
    const MR: usize = Avx2::MR;
    const NR: usize = Avx2::NR;
    assert!(b.len() >= n.div_ceil(NR) * k * NR);
    assert!(offsets.len() >= k && walks(&offsets[..k]));
    for pc in (0..k).step_by(WALK_KC) {
        // A multiple of WALK: k and WALK_KC both are.
        let kc = WALK_KC.min(k - pc);
        let beta = if pc == 0 { 0.0 } else { 1.0 };
        let table = &offsets[pc..pc + kc];
        for jp in 0..n.div_ceil(NR) {
            let nr = NR.min(n - jp * NR);
            let bp = b[(jp * k + pc) * NR..][..kc * NR].as_ptr();
            let (mut oh, mut ow) = (0, 0);
            let mut ptrs = [a; MR];
            for q in (0..rows * cols).step_by(MR) {
                let mr = MR.min(rows * cols - q);
                for ptr in &mut ptrs[..mr] {
                    // SAFETY: pixel q + i = (oh, ow) is inside the block
                    // (q + i < rows * cols), so its row of the padded
                    // input is inside `a` (the caller's contract).
                    *ptr = unsafe { a.add(oh * row_step + ow * rs) };
                    ow += 1;
                    if ow == cols {
                        (oh, ow) = (oh + 1, 0);
                    }
                }
                let last = ptrs[mr - 1];
                ptrs[mr..].fill(last);
                // SAFETY: each of the tile's pixels (and the rows past mr,
                // copies of the last), at depth pc..pc + kc, is readable
                // from its pointer (the caller's contract), the table
                // walks (asserted), the panel holds kc * NR floats
                // (asserted), and the C tile (rows q.., columns jp * NR..)
                // lies inside `c`; the CPU has AVX2 and FMA.
                unsafe {
                    let c = c.add(q * rsc + jp * NR);
                    if nr <= NR / 2 {
                        // A half-width last panel (no ResNet layer has
                        // one): the non-walking kernel's half path.
                        Avx2::run_indexed_rows(
                            kc,
                            &ptrs[..mr],
                            table.as_ptr(),
                            bp,
                            c,
                            rsc,
                            beta,
                            mr,
                            nr,
                        );
                    } else if mr <= SHORT_ROWS {
                        walk_kernel_avx2::<SHORT_ROWS>(kc, &ptrs, table, bp, c, rsc, beta, mr, nr);
                    } else {
                        walk_kernel_avx2::<MR>(kc, &ptrs, table, bp, c, rsc, beta, mr, nr);
                    }
                }
            }
        }
    }
}

/// The AVX2 6x16 micro-kernel ([`Avx2`]) for a tile of pixels `rows` (row
/// `i` of A at `rows[i] + table[p]`) whose depth table [`walks`]: per
/// group of [`WALK`] depth steps, one table load, then the steps' `R`
/// broadcasts at fixed offsets `+0, +1, +2` from it, two panel loads and
/// `2R` FMAs each. The [`ByPixel`] kernel loads the table every step.
/// Measured in a kernel-only loop on L1/L2-resident data (3x3 128->128 at
/// 28x28, one thread, Zen 2): 99.8 GF/s against 97.0 for [`ByPixel`] and
/// 101 for packed panels (a throwaway harness, not in the repository);
/// the layers, measured with `scripts/ab_layers.py`: BENCHMARKS.md issue 9
/// item 41.
///
/// # Safety
/// The CPU has AVX2 and FMA; `R <= rows.len()`, `1 <= mr <= R`, `NR / 2 <
/// nr <= NR`; `kc` is a multiple of [`WALK`] and `table` holds `kc`
/// entries that [`walks`]; every `(i, p)` with `i < R`, `p < kc` is
/// readable at `rows[i] + table[p]`; `b` holds `kc * NR` floats; `c` as
/// for [`Kernel::run`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn walk_kernel_avx2<const R: usize>(
    kc: usize,
    rows: &[*const f32],
    table: &[u32],
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    beta: f32,
    mr: usize,
    nr: usize,
) {
    const L: usize = 8;
    const NR: usize = 2 * L;
    // PREFETCH_C_AHEAD of the Avx2 kernel (128 depth steps), in groups.
    const AHEAD: usize = 128 / WALK;
    let rows: [*const f32; R] = std::array::from_fn(|i| rows[i]);
    let groups = kc / WALK;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let split = groups.saturating_sub(AHEAD);
    for (lo, hi) in [(0, split), (split, groups)] {
        if lo == split {
            prefetch_c::<NR>(c, rsc, mr);
        }
        for g in lo..hi {
            // SAFETY: g * WALK < kc entries of the table.
            let off = unsafe { *table.get_unchecked(g * WALK) } as usize;
            for t in 0..WALK {
                // SAFETY: step p = g * WALK + t < kc: the panel's row p
                // lies inside `b`, and (i, p) is readable at rows[i] +
                // table[p] = rows[i] + off + t (the table walks).
                unsafe {
                    let bp = b.add((g * WALK + t) * NR);
                    let b0 = _mm256_loadu_ps(bp);
                    let b1 = _mm256_loadu_ps(bp.add(L));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*rows[i].add(off + t));
                        row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                        row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                    }
                }
            }
        }
    }
    if mr == R && nr == NR {
        let vb = _mm256_set1_ps(beta);
        for (i, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: a full tile: rows < R, columns < NR are inside
                // the caller's block.
                unsafe {
                    let p = c.add(i * rsc + h * L);
                    let out = if beta != 0.0 {
                        _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, v)
                    } else {
                        v
                    };
                    _mm256_storeu_ps(p, out);
                }
            }
        }
    } else {
        let mut tile = [[0f32; NR]; R];
        for (t, row) in tile.iter_mut().zip(&acc) {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: L floats at h*L < NR lie inside `t`.
                unsafe { _mm256_storeu_ps(t.as_mut_ptr().add(h * L), v) };
            }
        }
        // SAFETY: the caller's contract for `c`, `mr <= R`, `nr`.
        unsafe { store_partial::<NR>(tile.as_flattened(), c, rsc, beta, mr, nr) };
    }
}

/// `C = beta * C` for an `m x n` block (a product with nothing to sum):
/// zeros when `beta` is 0, so whatever `C` held (NaN included) is not read.
///
/// # Safety
/// `c` points at a writable `m x n` block with row stride `rsc` that
/// nothing else accesses meanwhile.
unsafe fn scale_block(c: *mut f32, rsc: usize, m: usize, n: usize, beta: f32) {
    for i in 0..m {
        for j in 0..n {
            // SAFETY: inside the m x n block (the caller's contract).
            unsafe {
                let p = c.add(i * rsc + j);
                *p = if beta == 0.0 { 0.0 } else { beta * *p };
            }
        }
    }
}

/// This thread's buffer `cell`, taken out of it and grown to at least
/// `len` items of `fill` where it holds fewer: one of the micro-kernels'
/// fixed-size buffers ([`PACK_A`], [`PACK_B`], [`LIVE_TABLES`]), whose
/// growth the allocator may refuse ([`crate::error::Error::OutOfMemory`] naming buffer
/// `name`; the cell keeps the buffer as it was).
fn take_grown<T: Clone>(
    cell: &'static std::thread::LocalKey<Cell<Vec<T>>>,
    name: &'static str,
    len: usize,
    fill: T,
) -> Result<Vec<T>> {
    let mut buf = cell.with(Cell::take);
    match super::scratch::grow_fixed(name, &mut buf, len, fill) {
        Ok(()) => Ok(buf),
        Err(e) => {
            cell.with(|c| c.set(buf));
            Err(e)
        }
    }
}

/// This thread's B packing buffer, at least [`pack_b_len`] floats.
fn take_pack_b(nr: usize) -> Result<Vec<f32>> {
    take_grown(&PACK_B, "micro-kernel B packing", pack_b_len(nr), 0.0)
}

/// The size of every thread's A packing buffer: one `MC x KC` block in
/// panels of `mr` rows.
fn pack_a_len(mr: usize) -> usize {
    MC.div_ceil(mr) * mr * KC
}

/// The size of every thread's B packing buffer: the largest B block any
/// product packs (NC is a multiple of NR), not one call's. Sized to what a
/// call needed, the buffer grew on a worker thread the first time rayon
/// handed it a wider part, in whichever step that happened (~60 faults;
/// BENCHMARKS.md, issue 9 item 16). 2 MiB per thread, once.
fn pack_b_len(nr: usize) -> usize {
    NC.next_multiple_of(nr) * KC
}

/// Runs `f` with `b` (`k x n`) packed whole, for panel width `nr`, into
/// this thread's B packing buffer, when it fits there (`None` when not).
/// Where it fits but the buffer cannot grow to its fixed size, the
/// buffer's OutOfMemory is returned without running `f`, rather than
/// `f(None)`: the GEMMs `f` would run then need a buffer of that size on
/// their own threads, this one's included.
/// The GEMMs `f` runs on it, on any thread, read it in place and leave
/// their own threads' buffers alone; the buffer's size never changes, so a
/// steady-state step allocates nothing however rayon schedules (a scratch
/// buffer sized to each call grew on whichever worker first ran a larger
/// image group, `tests/cpu_buffer_pool.rs`).
///
/// # Safety
/// `b` is a `k x n` operand.
pub(super) unsafe fn with_thread_packed_b<R>(
    b: &dyn PackB,
    k: usize,
    n: usize,
    nr: usize,
    parallel: bool,
    f: impl FnOnce(Option<&PackedB<'_>>) -> Result<R>,
) -> Result<R> {
    if PackedB::len(k, n, nr) > pack_b_len(nr) {
        return f(None);
    }
    let mut bpack = take_pack_b(nr)?;
    // SAFETY: the caller's contract; the buffer holds `PackedB::len` floats.
    let result = f(Some(&unsafe {
        PackedB::pack(b, k, n, nr, &mut bpack, parallel)
    }));
    PACK_B.with(|cell| cell.set(bpack));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::SimdPath;

    #[test]
    fn a_packed_b_reserves_through_its_source() {
        // A source whose working room for packs deeper than 10 the
        // allocator refuses: the packed operand, asked in another layout,
        // packs from it, so its `reserve` is the source's (the trait's
        // default said Ok to everything).
        struct Refusing;
        impl PackB for Refusing {
            unsafe fn pack(
                &self,
                _: usize,
                _: usize,
                _: usize,
                _: usize,
                _: usize,
                out: &mut [f32],
            ) {
                out.fill(0.0);
            }
            fn reserve(&self, kc: usize, _nr: usize) -> crate::error::Result<()> {
                if kc > 10 {
                    Err(crate::error::Error::OutOfMemory {
                        what: "test".into(),
                        shape: vec![kc],
                        bytes: None,
                    })
                } else {
                    Ok(())
                }
            }
        }
        let mut out = vec![1.0; PackedB::len(4, 4, 8)];
        // SAFETY: `Refusing` packs any block into an `out` of its size.
        let packed = unsafe { PackedB::pack(&Refusing, 4, 4, 8, &mut out, false) };
        assert!(packed.reserve(4, 8).is_ok());
        assert!(packed.reserve(20, 8).is_err());
    }

    /// Every tile shape a kernel can be handed (each `mr <= MR`, each
    /// `nr <= NR`: the full tile, the half-width and narrow last panels, the
    /// partial stores), at depths either side of the C prefetch point,
    /// with and without `beta`, against a float64 reference; with A read
    /// from a packed panel and in place ([`Kernel::run_in_place`]) as a
    /// row-major block (`cs = 1`), a transposed one (`rs = 1`) and a
    /// general strided one, with strides that are multiples of nothing in
    /// particular. The in-place operand's buffer ends at its last valid
    /// element (row `mr - 1`, depth `kc - 1`) and every gap between
    /// elements holds NaN, so reading a row past `mr` or a wrong element
    /// shows up in the result.
    fn check_kernel<K: Kernel>() {
        for kc in [1, 7, 47, 48, 49, 127, 128, 129, 300] {
            let av = |i: usize, p: usize| ((p * K::MR + i) as f32 * 0.37).sin();
            let a: Vec<f32> = (0..kc * K::MR).map(|x| av(x % K::MR, x / K::MR)).collect();
            let b: Vec<f32> = (0..kc * K::NR).map(|i| (i as f32 * 0.11).cos()).collect();
            let dot: Vec<f64> = (0..K::MR * K::NR)
                .map(|x| {
                    let (i, j) = (x / K::NR, x % K::NR);
                    (0..kc)
                        .map(|p| f64::from(av(i, p)) * f64::from(b[p * K::NR + j]))
                        .sum()
                })
                .collect();
            for mr in 1..=K::MR {
                let strided = [(kc + 3, 1), (1, mr + 3), (2, 2 * mr + 5)];
                for variant in 0..=strided.len() {
                    let in_place = variant.checked_sub(1).map(|v| {
                        let (rs, cs) = strided[v];
                        let mut buf = vec![f32::NAN; (mr - 1) * rs + (kc - 1) * cs + 1];
                        for i in 0..mr {
                            for p in 0..kc {
                                buf[i * rs + p * cs] = av(i, p);
                            }
                        }
                        (buf, rs, cs)
                    });
                    for nr in 1..=K::NR {
                        for beta in [0.0f32, 0.5] {
                            let rsc = K::NR + 3;
                            let c0: Vec<f32> = (0..K::MR * rsc).map(|i| i as f32 * 0.01).collect();
                            let mut c = c0.clone();
                            match &in_place {
                                // SAFETY: the panels hold kc*MR and kc*NR
                                // floats, c holds MR rows of rsc >= NR
                                // floats; the test only runs the kernel
                                // when the CPU supports it.
                                None => unsafe {
                                    K::run(
                                        kc,
                                        a.as_ptr(),
                                        b.as_ptr(),
                                        c.as_mut_ptr(),
                                        rsc,
                                        beta,
                                        mr,
                                        nr,
                                    )
                                },
                                // SAFETY: as above; `buf` holds every
                                // (i, p), i < mr, p < kc at i*rs + p*cs.
                                Some((buf, rs, cs)) => unsafe {
                                    K::run_in_place(
                                        kc,
                                        buf.as_ptr(),
                                        (*rs, *cs),
                                        b.as_ptr(),
                                        c.as_mut_ptr(),
                                        rsc,
                                        beta,
                                        mr,
                                        nr,
                                    )
                                },
                            }
                            for i in 0..K::MR {
                                for j in 0..rsc {
                                    let got = f64::from(c[i * rsc + j]);
                                    let old = f64::from(c0[i * rsc + j]);
                                    let want = if i < mr && j < nr {
                                        dot[i * K::NR + j] + f64::from(beta) * old
                                    } else {
                                        old
                                    };
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (kc as f64).sqrt() * 4.0,
                                        "variant {variant} kc {kc} mr {mr} nr {nr} beta {beta}: \
                                         ({i},{j}) {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Kernel::run_indexed`] ([`ByTable`]) against a float64 reference
    /// for every tile shape, with A laid out as conv/input_grad.rs's flipped weight:
    /// rows `9` apart, depth `(o, t)` at `o * S + 8 - t`, with `S` leaving
    /// a gap after the rows; every other element is NaN, so a read of a
    /// wrong element, or of a row past `mr`, shows up in the result.
    fn check_indexed<K: Kernel>() {
        let (taps, rows) = (9, K::MR + 2);
        let (rs, s) = (taps, rows * taps + 5);
        for kc in [1, 8, 9, 47, 49, 300] {
            let offsets: Vec<u32> = (0..kc)
                .map(|p| ((p / taps) * s + taps - 1 - p % taps) as u32)
                .collect();
            let mut prefetch = vec![0; kc];
            prefetch_table(&offsets, rs, K::MR, &mut prefetch);
            let av = |i: usize, p: usize| ((p * K::MR + i) as f32 * 0.29).sin();
            let b: Vec<f32> = (0..kc * K::NR).map(|i| (i as f32 * 0.13).cos()).collect();
            for mr in 1..=K::MR {
                let mut a = vec![f32::NAN; kc.div_ceil(taps) * s];
                for i in 0..mr {
                    for (p, &o) in offsets.iter().enumerate() {
                        a[i * rs + o as usize] = av(i, p);
                    }
                }
                for nr in [1, 3, 8, 9, K::NR / 2, K::NR / 2 + 1, K::NR] {
                    for beta in [0.0f32, 0.5] {
                        let rsc = K::NR + 3;
                        let c0: Vec<f32> = (0..K::MR * rsc).map(|i| i as f32 * 0.01).collect();
                        let mut c = c0.clone();
                        // SAFETY: `a` holds every (i, p), i < mr, p < kc at
                        // i*rs + offsets[p]; both tables hold kc entries;
                        // the B panel kc*NR floats; c MR rows of rsc >= NR.
                        // The test only runs the kernel when the CPU can.
                        unsafe {
                            K::run_indexed(
                                kc,
                                a.as_ptr(),
                                rs,
                                (offsets.as_ptr(), prefetch.as_ptr()),
                                b.as_ptr(),
                                c.as_mut_ptr(),
                                rsc,
                                beta,
                                mr,
                                nr,
                            )
                        };
                        for i in 0..K::MR {
                            for j in 0..rsc {
                                let (got, old) =
                                    (f64::from(c[i * rsc + j]), f64::from(c0[i * rsc + j]));
                                let want = if i < mr && j < nr {
                                    let dot: f64 = (0..kc)
                                        .map(|p| f64::from(av(i, p)) * f64::from(b[p * K::NR + j]))
                                        .sum();
                                    dot + f64::from(beta) * old
                                } else {
                                    old
                                };
                                assert!(
                                    (got - want).abs() <= 1e-5 * (kc as f64).sqrt() * 4.0,
                                    "kc {kc} mr {mr} nr {nr} beta {beta}: ({i},{j}) {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn indexed_reads_match_reference_for_every_tile_shape() {
        for path in [SimdPath::Avx512, SimdPath::Avx2] {
            if !path.is_supported() {
                // Not a pass: nothing was checked for this path here.
                eprintln!("SKIPPED: this CPU has no {} path", path.name());
                continue;
            }
            match path {
                SimdPath::Avx512 => check_indexed::<Avx512>(),
                _ => check_indexed::<Avx2>(),
            }
        }
    }

    /// `Indexed`'s packing (the `PackA` fallback `gemm` does not take, as
    /// it reads the operand in place): each panel row is the table's
    /// element, rows past the block are zero, for ragged blocks at a
    /// depth offset inside the table.
    #[test]
    fn indexed_panels_follow_the_table_and_zero_pad() {
        let (rows, depth, rs) = (11, 23, 70);
        // A permuted depth, as the flipped weight's: offsets not monotone.
        let offsets: Vec<u32> = (0..depth as u32).map(|p| (p * 7) % 23 * 3).collect();
        let data: Vec<f32> = (0..rows * rs).map(|x| x as f32 * 0.5).collect();
        let a = Indexed {
            ptr: data.as_ptr(),
            rs,
            offsets: offsets.as_ptr(),
            prefetch: offsets.as_ptr(),
        };
        for (ic, mc, pc, kc, mr) in [
            (0, 11, 0, 23, 8),
            (3, 5, 4, 9, 8),
            (6, 5, 20, 3, 6),
            (0, 1, 0, 1, 6),
        ] {
            let mut buf = vec![f32::NAN; usize::div_ceil(mc, mr) * mr * kc];
            // SAFETY: rows ic..ic+mc < 11 and depth pc..pc+kc <= 23 lie inside
            // the table and the data (every offset + row * rs < 11 * 70).
            let panels = unsafe { a.panels(ic, mc, pc, kc, mr, &mut buf) };
            for (panel, dst) in panels.chunks_exact(kc * mr).enumerate() {
                for p in 0..kc {
                    for i in 0..mr {
                        let row = ic + panel * mr + i;
                        let want = if row < ic + mc {
                            data[row * rs + offsets[pc + p] as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            dst[p * mr + i],
                            want,
                            "block {ic},{mc},{pc},{kc},{mr} row {row} step {p}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn prefetch_table_cycles_rows_ahead() {
        let offsets: Vec<u32> = (0..40).map(|p| 3 * p as u32 + 1).collect();
        let mut out = vec![0; 40];
        prefetch_table(&offsets, 100, 8, &mut out);
        for (p, &v) in out.iter().enumerate() {
            let ahead = offsets[(p + A_PREFETCH).min(39)];
            assert_eq!(v, (p % 8) as u32 * 100 + ahead, "step {p}");
        }
    }

    #[test]
    fn avx512_kernel_matches_reference_for_every_tile_shape() {
        if SimdPath::Avx512.is_supported() {
            check_kernel::<Avx512>();
        } else {
            // Not a pass: this CPU cannot run the kernel, so nothing was
            // checked here (CI on another CPU, or a by-hand run there, does).
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx512.name());
        }
    }

    /// [`direct_rows`] in every tiling ([`DirectTiles`]) on every kernel
    /// this CPU has, against float64 loops: blocks whose rows (13, 7, 5, 2
    /// and 1 pixels wide) are no multiple of either kernel's tile, so tiles
    /// wrap across rows and end short (full and 4-row short tiles); a
    /// padded row (`row_step`) and pixel stride (`rs`) wider than the
    /// block's; a depth above one `KC` block; two tables, one that is not
    /// affine and one that walks ([`walks`]: groups `t, t + 1, t + 2` at
    /// scattered `t`) where the depth allows it; output channels ragged
    /// for both panel widths (a last panel of 5, 8, 13 columns); into a C
    /// block of NaN (beta 0 on the first depth block), its padding columns
    /// left as they were.
    fn check_direct_rows(path: SimdPath, tiles: DirectTiles) {
        let nr = super::super::gemm::tile(path).1;
        // (5, 2): 2-pixel rows, so one tile spans 3 (AVX2) or 4 (AVX-512)
        // output rows; (4, 1): 1-pixel rows.
        let cases = [
            (3, 13, 1, 300, 21),
            (2, 5, 2, 40, 40),
            (1, 1, 1, 9, 7),
            (5, 2, 3, 20, 16),
            (4, 7, 1, 33, 29),
            (4, 1, 2, 27, 32),
        ];
        for (rows, cols, rs, k, n) in cases {
            let scattered: Vec<u32> = (0..k).map(|p| ((p * 7) % 31 + p / 3) as u32).collect();
            let walking: Vec<u32> = (0..k - k % WALK)
                .map(|p| ((p / WALK * 13) % 37 + p / WALK / 2 + p % WALK) as u32)
                .collect();
            assert!(walks(&walking) && !walks(&scattered));
            for offsets in [scattered, walking] {
                let k = offsets.len();
                if k == 0 {
                    continue;
                }
                let row_step = cols * rs + 4;
                let len = (rows - 1) * row_step
                    + (cols - 1) * rs
                    + *offsets.iter().max().unwrap() as usize
                    + 1;
                let a: Vec<f32> = (0..len).map(|x| (x as f32 * 0.37).sin()).collect();
                let w = |p: usize, o: usize| ((p * n + o) as f32 * 0.11).cos();
                let panels = n.div_ceil(nr);
                let b: Vec<f32> = (0..panels * k * nr)
                    .map(|x| {
                        let (jp, p, j) = (x / (k * nr), x / nr % k, x % nr);
                        let o = jp * nr + j;
                        if o < n {
                            w(p, o)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let rsc = n + 3;
                let mut c = vec![f32::NAN; rows * cols * rsc];
                // The prefetch table only where it is read.
                let prefetch = if tiles == DirectTiles::PerRow {
                    offsets.clone()
                } else {
                    Vec::new()
                };
                // SAFETY: the CPU supports `path` (the callers check);
                // every pixel (oh < rows, ow < cols) at every depth lies
                // inside `a` (its length is the largest such address + 1);
                // `b` holds the panels; `c` rows * cols rows of rsc >= n.
                unsafe {
                    direct_rows_tiled(
                        path,
                        tiles,
                        a.as_ptr(),
                        (rows, cols, row_step, rs),
                        (&offsets, &prefetch),
                        &b,
                        (k, n),
                        c.as_mut_ptr(),
                        rsc,
                    );
                }
                for q in 0..rows * cols {
                    let at = (q / cols) * row_step + (q % cols) * rs;
                    for o in 0..rsc {
                        let got = c[q * rsc + o];
                        if o >= n {
                            assert!(got.is_nan(), "{tiles:?} padding column {o} written");
                            continue;
                        }
                        let want: f64 = (0..k)
                            .map(|p| f64::from(a[at + offsets[p] as usize]) * f64::from(w(p, o)))
                            .sum();
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-4,
                            "{path:?} {tiles:?} rows {rows} cols {cols} k {k} n {n}: ({q}, {o}) \
                             {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn direct_rows_match_reference_in_every_tiling() {
        let paths: Vec<SimdPath> = [SimdPath::Avx2, SimdPath::Avx512]
            .into_iter()
            .filter(|p| p.is_supported())
            .collect();
        if paths.is_empty() {
            // Not a pass: the direct convolution has no portable form, and
            // this CPU runs neither kernel, so nothing was checked here.
            eprintln!("SKIPPED: this CPU has neither the avx2 nor the avx512 path");
        }
        for path in paths {
            for tiles in [
                DirectTiles::PerRow,
                DirectTiles::Wrapping,
                DirectTiles::Walking,
            ] {
                check_direct_rows(path, tiles);
            }
        }
    }

    #[test]
    fn walks_only_on_groups_of_adjacent_taps() {
        assert!(walks(&[]));
        assert!(walks(&[5, 6, 7, 0, 1, 2]));
        assert!(!walks(&[5, 6, 7, 0, 1]));
        assert!(!walks(&[5, 6, 8]));
        assert!(!walks(&[u32::MAX, 0, 1]));
    }

    #[test]
    fn avx2_kernel_matches_reference_for_every_tile_shape() {
        if SimdPath::Avx2.is_supported() {
            check_kernel::<Avx2>();
        } else {
            // Not a pass: this CPU cannot run the kernel, so nothing was
            // checked here (CI on another CPU, or a by-hand run there, does).
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx2.name());
        }
    }

    /// A `k x n` right operand that is zero on the depth rows `r` whose bit
    /// `r % period` is clear in its column's mask, with that pattern
    /// declared (`PackB::depth_period`), and packed by the trait's generic
    /// `pack_live`.
    struct Periodic {
        data: Vec<f32>,
        masks: Vec<u64>,
        n: usize,
        period: usize,
    }

    impl Periodic {
        fn at(&self, r: usize, j: usize) -> f32 {
            if self.masks[j] >> (r % self.period) & 1 == 1 {
                self.data[r * self.n + j]
            } else {
                0.0
            }
        }
    }

    impl PackB for Periodic {
        unsafe fn pack(
            &self,
            pc: usize,
            kc: usize,
            jc: usize,
            nc: usize,
            nr: usize,
            out: &mut [f32],
        ) {
            for (j0, cols, dst) in panels(out, kc, jc, nc, nr) {
                for p in 0..kc {
                    for j in 0..nr {
                        dst[p * nr + j] = if j < cols {
                            self.at(pc + p, j0 + j)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }

        fn depth_period(&self) -> Option<usize> {
            Some(self.period)
        }

        fn panel_mask(&self, j0: usize, cols: usize) -> u64 {
            self.masks[j0..j0 + cols].iter().fold(0, |m, &c| m | c)
        }
    }

    /// [`gemm_live`] against float64 on kernel `K`: depths below, at and
    /// above `KC` (ragged last blocks, some shorter than the period), more
    /// than `NC` columns, ragged panels and row tiles, panels with every
    /// row live (the dense kernels), some live, none (beta * C), and more
    /// distinct masks than fit one table per panel; A read in place
    /// (row-major and transposed) and through an offset table; beta 0 into
    /// NaN and beta 0.5.
    fn check_live<K: Kernel>() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for &(m, k, n, period) in &[
            (13, 9, 40, 9),
            (20, 300, 70, 9),
            (9, 517, 2100, 9),
            (17, 40, 33, 64),
            (5, 3, 50, 7),
        ] {
            let every = if period == 64 {
                u64::MAX
            } else {
                (1 << period) - 1
            };
            // Column masks in runs, as a class order makes them: all,
            // some, none; and in the widest case also every column its own.
            let masks: Vec<u64> = (0..n)
                .map(|j| match (j / 24) % 4 {
                    0 => every,
                    1 => every & 0b1011_0110,
                    2 => 0,
                    _ if n > NC => next() & every,
                    _ => every & !1,
                })
                .collect();
            let data: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b = Periodic {
                data,
                masks,
                n,
                period,
            };
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|x| {
                    let (i, j) = (x / n, x % n);
                    (0..k)
                        .map(|r| f64::from(a[i * k + r]) * f64::from(b.at(r, j)))
                        .sum()
                })
                .collect();
            // The same A as a table read of a buffer with its depth reversed.
            let reversed: Vec<f32> = (0..m * k).map(|x| a[(x / k) * k + k - 1 - x % k]).collect();
            let mut tables: Vec<u32> = (0..k).map(|p| (k - 1 - p) as u32).collect();
            let mut prefetch = vec![0; k];
            prefetch_table(&tables, k, K::MR, &mut prefetch);
            tables.extend(prefetch);
            let transposed: Vec<f32> = (0..m * k).map(|x| a[(x % m) * k + x / m]).collect();
            for variant in 0..3 {
                for beta in [0.0f32, 0.5] {
                    let rsc = n + 3;
                    let c0: Vec<f32> = (0..m * rsc)
                        .map(|i| {
                            if beta == 0.0 {
                                f32::NAN
                            } else {
                                i as f32 * 0.01
                            }
                        })
                        .collect();
                    let mut c = c0.clone();
                    let row_major = Raw {
                        ptr: a.as_ptr(),
                        rs: k,
                        cs: 1,
                    };
                    let by_columns = Raw {
                        ptr: transposed.as_ptr(),
                        rs: 1,
                        cs: m,
                    };
                    let indexed = Indexed {
                        ptr: reversed.as_ptr(),
                        rs: k,
                        offsets: tables.as_ptr(),
                        prefetch: tables[k..].as_ptr(),
                    };
                    // SAFETY: every operand holds the m x k / k x n block it
                    // is described as, c holds m rows of rsc >= n; the test
                    // only runs kernels the CPU supports.
                    unsafe {
                        let a = match variant {
                            0 => TableA::Strided(row_major),
                            1 => TableA::Strided(by_columns),
                            _ => TableA::Indexed(indexed),
                        };
                        gemm_live::<K, _>(
                            a,
                            (0, m),
                            &b,
                            (0, n),
                            k,
                            period,
                            beta,
                            c.as_mut_ptr(),
                            rsc,
                        )
                        .unwrap()
                    };
                    for i in 0..m {
                        for j in 0..rsc {
                            let got = f64::from(c[i * rsc + j]);
                            let old = f64::from(c0[i * rsc + j]);
                            if j >= n {
                                assert!(
                                    got.to_bits() == old.to_bits()
                                        || (got.is_nan() && old.is_nan())
                                );
                                continue;
                            }
                            let w = want[i * n + j]
                                + if beta == 0.0 {
                                    0.0
                                } else {
                                    f64::from(beta) * old
                                };
                            assert!(
                                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                "{m}x{k}x{n} period {period} variant {variant} beta {beta}: ({i},{j}) {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The micro-kernels' per-thread packing buffers and depth tables grow
    /// fallibly: on a fresh thread whose growth of one of them the
    /// allocator refuses (the scratch module's test hook), [`gemm`] and
    /// [`gemm_live`] return the [`crate::error::Error::OutOfMemory`]
    /// naming that buffer (a `Vec::resize` aborted the process there),
    /// with `c` untouched (`beta = 1`: a block accumulated before the
    /// error would show) and the buffers taken before the refused one put
    /// back grown (the call succeeds with their growth refused); once the
    /// refusal is lifted the same call on the same thread gives the right
    /// product, and then needs no growth at all. The dense `a` is
    /// column-major, so `gemm` packs it into the regrown A buffer rather
    /// than reading it in place.
    #[test]
    fn a_refused_packing_buffer_is_an_error_naming_it() {
        use crate::backend::cpu::scratch::{refusing_growth, Refusal};
        use crate::error::Error;
        if !SimdPath::Avx2.is_supported() {
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx2.name());
            return;
        }
        let (m, k, n, period) = (7, 20, 19, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        // The same `a`, column-major: not read in place on AVX2
        // (`reads_in_place`: MR = 6 < 8).
        let a_t: Vec<f32> = (0..k * m).map(|i| a[i % m * k + i / m]).collect();
        if std::env::var_os("FROSTGRAD_A_IN_PLACE").is_none() {
            assert!(!reads_in_place(1, m, n, Avx2::MR), "a_col is packed");
        }
        let b = Periodic {
            data: (0..k * n).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect(),
            masks: (0..n as u64).map(|j| j % 7 + 1).collect(),
            n,
            period,
        };
        let dense_b: Vec<f32> = (0..k * n).map(|i| b.at(i / n, i % n)).collect();
        let c0: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        // C = A·B + C, in float64.
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let dot: f64 = (0..k)
                    .map(|p| a[i / n * k + p] as f64 * dense_b[p * n + i % n] as f64)
                    .sum();
                (dot + c0[i] as f64) as f32
            })
            .collect();
        let a_row = Raw {
            ptr: a.as_ptr(),
            rs: k,
            cs: 1,
        };
        let a_col = Raw {
            ptr: a_t.as_ptr(),
            rs: 1,
            cs: m,
        };
        let b_raw = Raw {
            ptr: dense_b.as_ptr(),
            rs: n,
            cs: 1,
        };
        // (dense: `gemm`; live rows: `gemm_live`), C = A·B + C.
        let run = |live: bool, c: &mut [f32]| {
            // SAFETY: a is m x k (either layout), b (either form) k x n,
            // c m x n with row stride n; the AVX2 kernel runs only where
            // supported (above).
            unsafe {
                if live {
                    gemm_live::<Avx2, _>(
                        TableA::Strided(a_row),
                        (0, m),
                        &b,
                        (0, n),
                        k,
                        period,
                        1.0,
                        c.as_mut_ptr(),
                        n,
                    )
                } else {
                    gemm::<Avx2, _, _>(&a_col, (0, m), &b_raw, (0, n), k, 1.0, c.as_mut_ptr(), n)
                }
            }
        };
        let check = |what: &str, c: &[f32]| {
            for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                assert!(
                    (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{what} ({i}): {got} vs {w}"
                );
            }
        };
        // (live, the refused buffer, the one taken before it)
        for (live, name, before) in [
            (false, "micro-kernel A packing", None),
            (
                false,
                "micro-kernel B packing",
                Some("micro-kernel A packing"),
            ),
            (true, "micro-kernel live-row tables", None),
            (
                true,
                "micro-kernel B packing",
                Some("micro-kernel live-row tables"),
            ),
        ] {
            // A fresh thread: its buffers are empty, so the call must grow
            // them.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let refusing = |only: Option<&'static str>, c: &mut [f32]| {
                let refusal = Refusal { only, above: 0 };
                refusing_growth(&pool, refusal, || pool.install(|| run(live, c)))
            };
            let mut c = c0.clone();
            let err = refusing(Some(name), &mut c).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::OutOfMemory { .. }), "{name}: {msg}");
            assert!(msg.contains(&format!("{name:?}")), "{name}: {msg}");
            assert!(msg.contains("fewer threads"), "{name}: {msg}");
            assert!(
                c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: C written before the error"
            );
            match before {
                // Put back grown: it needs no growth now.
                Some(before) => refusing(Some(before), &mut c)
                    .unwrap_or_else(|e| panic!("{name}: {before} not put back: {e}")),
                None => pool.install(|| run(live, &mut c)).unwrap(),
            }
            check(name, &c);
            // Every buffer put back after a product: none grows again.
            let mut c = c0.clone();
            refusing(None, &mut c).unwrap_or_else(|e| panic!("{name}: a buffer not put back: {e}"));
            check(name, &c);
        }
    }

    /// A right operand packed whole ([`PackedB`]) but multiplied over part
    /// of its columns has its last column block unpacked: [`gemm`] takes
    /// its B buffer before writing the first block, so a refused B buffer
    /// leaves `c` untouched (a take at the unpacked block came after the
    /// first block's `NC` columns were accumulated).
    #[test]
    fn a_refused_b_buffer_leaves_c_untouched_over_part_of_a_packed_b() {
        use crate::backend::cpu::scratch::{refusing_growth, Refusal};
        if !SimdPath::Avx2.is_supported() {
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx2.name());
            return;
        }
        // Columns 0..n of a k x n_all operand: one packed block of NC
        // columns, then one of 8 that `packed` does not answer.
        let (m, k, n_all, n) = (5, 20, NC + 16, NC + 8);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n_all).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let c0: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let a_raw = Raw {
            ptr: a.as_ptr(),
            rs: k,
            cs: 1,
        };
        let b_raw = Raw {
            ptr: b.as_ptr(),
            rs: n_all,
            cs: 1,
        };
        let mut buf = vec![0.0; PackedB::len(k, n_all, Avx2::NR)];
        // SAFETY: b_raw is k x n_all.
        let packed = unsafe { PackedB::pack(&b_raw, k, n_all, Avx2::NR, &mut buf, false) };
        assert!(packed.packed(0, k, 0, NC, Avx2::NR).is_some());
        assert!(packed.packed(0, k, NC, n - NC, Avx2::NR).is_none());
        let run = |c: &mut [f32]| {
            // SAFETY: a is m x k, packed k x n_all (n <= n_all), c m x n
            // with row stride n; the AVX2 kernel runs only where
            // supported (above).
            unsafe {
                gemm::<Avx2, _, _>(&a_raw, (0, m), &packed, (0, n), k, 1.0, c.as_mut_ptr(), n)
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut c = c0.clone();
        let refusal = Refusal {
            only: Some("micro-kernel B packing"),
            above: 0,
        };
        let err = refusing_growth(&pool, refusal, || pool.install(|| run(&mut c))).unwrap_err();
        assert!(err.to_string().contains("micro-kernel B packing"), "{err}");
        assert!(
            c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()),
            "C written before the error"
        );
        pool.install(|| run(&mut c)).unwrap();
        for (idx, &got) in c.iter().enumerate() {
            let (i, j) = (idx / n, idx % n);
            let dot: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n_all + j] as f64)
                .sum();
            let w = (dot + c0[idx] as f64) as f32;
            assert!(
                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "({i}, {j}): {got} vs {w}"
            );
        }
    }

    #[test]
    fn live_rows_gemm_matches_reference_on_every_kernel() {
        for path in [SimdPath::Avx512, SimdPath::Avx2] {
            if !path.is_supported() {
                // Not a pass: nothing was checked for this kernel here.
                eprintln!("SKIPPED: this CPU has no {} path", path.name());
                continue;
            }
            match path {
                SimdPath::Avx512 => check_live::<Avx512>(),
                _ => check_live::<Avx2>(),
            }
        }
    }

    #[test]
    fn a_transposed_view_packs_the_same_through_the_transposes() {
        // `pack_b` of a transposed view (rs = 1) on the AVX2 path (8x8
        // register transposes, `pack_transposed`) against the same request
        // on the portable path (the one-float gather), bit for bit, on
        // NaN-filled outputs: every block a GEMM asks for (depth blocks at
        // 0, inside, and past KC = 256 with remainders; column blocks at any
        // start; the AVX2 kernel's panel width 16 and others), so a float
        // left unwritten, a wrong lane or a missing zero fails.
        if !SimdPath::Avx2.is_supported() {
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx2.name());
            return;
        }
        let (k, n) = (301, 37);
        let v = crate::backend::cpu::test_data::pseudo_random(k * n, 7);
        let raw = Raw {
            ptr: v.as_ptr(),
            rs: 1,
            cs: k,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (pc, kc) in [
            (0usize, 45usize),
            (0, 40),
            (8, 24),
            (3, 17),
            (40, 5),
            (0, 7),
            (0, 256),
            (256, 45),
            (256, 37),
            (259, 42),
        ] {
            for (jc, nc) in [
                (0usize, 37usize),
                (0, 32),
                (16, 21),
                (5, 19),
                (32, 5),
                (8, 8),
                // Panels of 9 to 15 columns: one group of 8 through the
                // transposes and the rest of the row one at a time.
                (0, 13),
                (3, 29),
                (0, 31),
            ] {
                for nr in [16usize, 32, 8, 6, 37] {
                    let len = nc.div_ceil(nr) * nr * kc;
                    let pack = |path| {
                        crate::backend::cpu::simd::on_path(&pool, path, || {
                            assert_eq!(transposes(nr), path == SimdPath::Avx2 && nr == 16);
                            let mut out = vec![f32::NAN; len];
                            // SAFETY: the block lies inside the 301 x 37
                            // view, `out` holds its panels.
                            unsafe { raw.pack(pc, kc, jc, nc, nr, &mut out) };
                            out
                        })
                    };
                    assert!(
                        bits(&pack(SimdPath::Avx2)) == bits(&pack(SimdPath::Portable)),
                        "depth {pc}+{kc}, columns {jc}+{nc}, nr {nr}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_transposed_right_operand_multiplies_as_its_row_major_copy() {
        // Through the real AVX2 GEMM, the product with a transposed right
        // operand (packed through the transposes) against the product with
        // a row-major copy of it (packed by row copies): the same panels,
        // so the same floats to the bit (a float64 comparison this deep
        // would be float32 rounding's). The shapes reach the second and
        // third depth blocks (pc = 256, 512) with remainders of 1 to 7,
        // which accumulate onto the first (beta 1), a second column block
        // (n = 2100 > NC = 2048), and columns past the groups of 8; beta =
        // 1 on a random C checks the accumulation too.
        use crate::backend::cpu::gemm::{sgemm, Lhs, MatRef, Par, Rhs};
        use crate::backend::cpu::test_data::pseudo_random;
        if !SimdPath::Avx2.is_supported() {
            eprintln!("SKIPPED: this CPU has no {} path", SimdPath::Avx2.name());
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        crate::backend::cpu::simd::on_path(&pool, SimdPath::Avx2, || {
            assert!(transposes(<Avx2 as Kernel>::NR));
            for &(m, k, n) in &[
                (6, 300, 21),
                (13, 517, 37),
                (3, 257, 8),
                (7, 300, 29),
                (5, 263, 2100),
            ] {
                let a = pseudo_random(m * k, 3);
                let bt = pseudo_random(n * k, 4);
                let mut b = vec![0.0; k * n];
                for (j, col) in bt.chunks_exact(k).enumerate() {
                    for (p, &x) in col.iter().enumerate() {
                        b[p * n + j] = x;
                    }
                }
                let c0 = pseudo_random(m * n, 5);
                let mut want = c0.clone();
                let mut got = c0.clone();
                let lhs = || Lhs::View(MatRef::row_major(&a, k));
                sgemm(
                    Par::Serial,
                    m,
                    k,
                    n,
                    lhs(),
                    Rhs::View(MatRef::row_major(&b, n)),
                    1.0,
                    &mut want,
                    n,
                )
                .unwrap();
                sgemm(
                    Par::Serial,
                    m,
                    k,
                    n,
                    lhs(),
                    Rhs::View(MatRef::transposed(&bt, k)),
                    1.0,
                    &mut got,
                    n,
                )
                .unwrap();
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(bits(&got) == bits(&want), "{m} x {k} x {n}");
                // Both sides could share a mistake (a depth offset taken
                // from the block, not `pc`): against float64 too, within
                // the float32 bound of a k-term dot product, k x eps x
                // (|c| + sum |a b|) (a wrong block is off by O(sum |a b|)).
                for (idx, &g) in got.iter().enumerate() {
                    let (i, j) = (idx / n, idx % n);
                    let (mut dot, mut size) = (c0[idx] as f64, c0[idx].abs() as f64);
                    for p in 0..k {
                        let t = a[i * k + p] as f64 * bt[j * k + p] as f64;
                        dot += t;
                        size += t.abs();
                    }
                    let bound = (k + 1) as f64 * f32::EPSILON as f64 * size;
                    assert!(
                        (g as f64 - dot).abs() <= bound,
                        "{m} x {k} x {n}: ({i}, {j}) {g} against {dot} (bound {bound})"
                    );
                }
            }
        });
    }
}
