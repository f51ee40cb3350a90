//! Hand-written single-threaded SGEMM for x86-64: BLIS-style blocking
//! (pack a `KC x NC` block of B and an `MC x KC` block of A into panels,
//! then run a register-tile micro-kernel over them), with an AVX-512F
//! 12x32 and an AVX2+FMA 6x16 micro-kernel.
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

/// Depth of one packed block (A panel width, B panel height).
const KC: usize = 256;
/// Rows of A packed at once (a multiple of both kernels' MR).
const MC: usize = 144;
/// Columns of B packed at once (a multiple of both kernels' NR).
const NC: usize = 2048;

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

/// One micro-kernel per instruction set, from the same body: an `MR x 2`
/// grid of vector accumulators (`NR` = two vectors), one broadcast of A and
/// two FMAs per row per depth step. A macro rather than a generic over a
/// vector trait so that each instance is one `#[target_feature]` function
/// whose intrinsics inline into it (BENCHMARKS.md, Zen 4: 24 FMAs per depth
/// step and no spills in the AVX-512 instance's inner loop).
macro_rules! micro_kernel {
    (
        $kernel:ident, $fn:ident, $feature:literal, MR = $mr:literal, LANES = $lanes:literal,
        $setzero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident
    ) => {
        pub(super) struct $kernel;

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
                unsafe { $fn(kc, a, b, c, rsc, beta, mr, nr) }
            }
        }

        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $fn(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            rsc: usize,
            beta: f32,
            mr: usize,
            nr: usize,
        ) {
            const MR: usize = $mr;
            const L: usize = $lanes;
            const NR: usize = 2 * L;
            let mut acc = [[$setzero(); 2]; MR];
            for p in 0..kc {
                // SAFETY: p < kc, so the loads stay inside the packed panels.
                unsafe {
                    let b0 = $load(b.add(p * NR));
                    let b1 = $load(b.add(p * NR + L));
                    let ap = a.add(p * MR);
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = $set1(*ap.add(i));
                        row[0] = $fmadd(av, b0, row[0]);
                        row[1] = $fmadd(av, b1, row[1]);
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
                let mut tile = [0f32; MR * NR];
                for (i, row) in acc.iter().enumerate() {
                    for (h, &v) in row.iter().enumerate() {
                        // SAFETY: L floats at i*NR + h*L lie inside `tile`.
                        unsafe { $store(tile.as_mut_ptr().add(i * NR + h * L), v) };
                    }
                }
                // SAFETY: the caller's contract for `c`, `mr`, `nr`.
                unsafe { store_partial::<NR>(&tile, c, rsc, beta, mr, nr) };
            }
        }
    };
}

micro_kernel!(
    Avx512,
    kernel_avx512,
    "avx512f",
    MR = 12,
    LANES = 16,
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

/// A raw strided matrix view: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(super) struct Raw {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// Packs rows `0..mc` x depth `0..kc` of `a` into MR-row panels (zero
/// padded), `kc * MR` floats per panel.
///
/// # Safety
/// Every `(i, p)` with `i < mc`, `p < kc` is readable through `a`.
unsafe fn pack_a(a: Raw, mc: usize, kc: usize, mr_full: usize, out: &mut [f32]) {
    #[allow(non_snake_case)]
    let MR = mr_full;
    for (panel, dst) in out
        .chunks_exact_mut(kc * MR)
        .take(mc.div_ceil(MR))
        .enumerate()
    {
        let i0 = panel * MR;
        let rows = MR.min(mc - i0);
        if rows < MR {
            dst.fill(0.0);
        }
        for i in 0..rows {
            // SAFETY: i0 + i < mc and p < kc (caller's contract).
            let row = unsafe { a.ptr.add((i0 + i) * a.rs) };
            for p in 0..kc {
                dst[p * MR + i] = unsafe { *row.add(p * a.cs) };
            }
        }
    }
}

/// Packs depth `0..kc` x columns `0..nc` of `b` into NR-column panels
/// (zero padded), `kc * NR` floats per panel.
///
/// # Safety
/// Every `(p, j)` with `p < kc`, `j < nc` is readable through `b`.
unsafe fn pack_b(b: Raw, kc: usize, nc: usize, nr_full: usize, out: &mut [f32]) {
    #[allow(non_snake_case)]
    let NR = nr_full;
    for (panel, dst) in out
        .chunks_exact_mut(kc * NR)
        .take(nc.div_ceil(NR))
        .enumerate()
    {
        let j0 = panel * NR;
        let cols = NR.min(nc - j0);
        if b.cs == 1 {
            for p in 0..kc {
                let d = &mut dst[p * NR..(p + 1) * NR];
                // SAFETY: p < kc, j0 + cols <= nc (caller's contract).
                let src = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.rs + j0), cols) };
                d[..cols].copy_from_slice(src);
                d[cols..].fill(0.0);
            }
        } else {
            if cols < NR {
                dst.fill(0.0);
            }
            for j in 0..cols {
                // SAFETY: as above.
                let col = unsafe { b.ptr.add((j0 + j) * b.cs) };
                for p in 0..kc {
                    dst[p * NR + j] = unsafe { *col.add(p * b.rs) };
                }
            }
        }
    }
}

/// `C = A·B + beta * C` on the calling thread with kernel `K`.
///
/// # Safety
/// The CPU supports `K`; `a` (`m x k`) and `b` (`k x n`) are readable
/// views, `c` a writable `m x n` block with row stride `rsc >= n` (or
/// `m <= 1`) that nothing else accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<K: Kernel>(
    m: usize,
    k: usize,
    n: usize,
    a: Raw,
    b: Raw,
    beta: f32,
    c: *mut f32,
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: inside the m x n block.
                unsafe {
                    let p = c.add(i * rsc + j);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
        return;
    }
    let mut apack = PACK_A.with(Cell::take);
    let mut bpack = PACK_B.with(Cell::take);
    let a_len = MC.div_ceil(K::MR) * K::MR * KC;
    let b_len = NC.min(n.next_multiple_of(K::NR)) * KC;
    if apack.len() < a_len {
        apack.resize(a_len, 0.0);
    }
    if bpack.len() < b_len {
        bpack.resize(b_len, 0.0);
    }
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_block = if pc == 0 { beta } else { 1.0 };
            let bv = Raw {
                // SAFETY: (pc, jc) is inside the k x n view.
                ptr: unsafe { b.ptr.add(pc * b.rs + jc * b.cs) },
                ..b
            };
            // SAFETY: the sub-view kc x nc lies inside b.
            unsafe { pack_b(bv, kc, nc, K::NR, &mut bpack) };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let av = Raw {
                    // SAFETY: (ic, pc) is inside the m x k view.
                    ptr: unsafe { a.ptr.add(ic * a.rs + pc * a.cs) },
                    ..a
                };
                // SAFETY: the sub-view mc x kc lies inside a.
                unsafe { pack_a(av, mc, kc, K::MR, &mut apack) };
                for jr in (0..nc).step_by(K::NR) {
                    let nr = K::NR.min(nc - jr);
                    let bp = &bpack[(jr / K::NR) * kc * K::NR..][..kc * K::NR];
                    for ir in (0..mc).step_by(K::MR) {
                        let mr = K::MR.min(mc - ir);
                        let ap = &apack[(ir / K::MR) * kc * K::MR..][..kc * K::MR];
                        // SAFETY: the panels hold kc*MR and kc*NR floats;
                        // the mr x nr tile at (ic+ir, jc+jr) is inside c.
                        unsafe {
                            K::run(
                                kc,
                                ap.as_ptr(),
                                bp.as_ptr(),
                                c.add((ic + ir) * rsc + jc + jr),
                                rsc,
                                beta_block,
                                mr,
                                nr,
                            )
                        };
                    }
                }
            }
        }
    }
    PACK_A.with(|cell| cell.set(apack));
    PACK_B.with(|cell| cell.set(bpack));
}
