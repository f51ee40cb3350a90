//! The weight gradient of a stride-1, padding-1 3x3 convolution through
//! F(2x2, 3x3).
//!
//! The forward computes each 2x2 output tile as `Y = Aᵀ [(G g Gᵀ) ⊙
//! (Bᵀ d B)] A` (the parent module), so by the chain rule the gradient of
//! the 3x3 filter `g` of one (output, input) channel pair is
//!
//! `dg = Gᵀ [ Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B) ] G`
//!
//! with `dY` the tile's 2x2 output gradient (0 past the output's edge,
//! where the forward drops the tile's second row or column). Summed over
//! tiles, the 16 element-wise products become 16 independent GEMMs
//! `M_ξ[C_out, C_in] = dŶ_ξ[C_out, tiles] · V_ξ[C_in, tiles]ᵀ` (`ξ` the
//! position in the 4x4 tile): `V` is exactly the forward's transformed
//! input ([`transform_input`](super::transform_input)), `dŶ = A dY Aᵀ` the transformed output
//! gradient ([`transform_grad`]), and a 3x3 output transform `Gᵀ M G` per
//! channel pair gives `dW`. 16 multiplications per tile and channel pair
//! instead of the direct form's 36.
//!
//! Work: every thread runs its part in blocks of whole tile rows (as the
//! forward): both transforms, then the 16 GEMMs of the block adding onto
//! the part's `M`. The parts split either the tiles (each with its own
//! partial `M`, summed in the output transform) or, where `threads`
//! partial sums would take more than [`PARTIALS_BYTES`], the 16
//! positions `ξ` (each thread all tiles, its own `M_ξ`; both transforms
//! are then run by every thread over every tile, about a fifth of a
//! thread's time at 8x224, so the measured rule never takes that split on
//! more than one thread: only `FROSTGRAD_CONV_WINOGRAD=1` reaches it).

use rayon::prelude::*;

use super::{applies, input_twin, Avx2Fma, Blocks};
use crate::backend::cpu::buffer_pool;
use crate::backend::cpu::check::{checked_numel, checked_sum};
use crate::backend::cpu::conv::{part_per_thread, SharedOut};
use crate::backend::cpu::gemm::{sgemm, Lhs, MatRef, Par, Rhs};
use crate::backend::cpu::scratch::{with_scratch, Slot};
use crate::backend::cpu::simd::SimdPath;
use crate::backend::Conv2dGeometry;
use crate::error::{Error, Result};

/// The most bytes that the per-thread partial sums of `M` (`16 x C_out x
/// C_in` floats each) may take together before the parts split the
/// positions `ξ` instead of the tiles: 8 MiB, i.e. on two threads the
/// tiles are split up to 256 x 256 channels (2 x 4 MiB), the positions
/// from 512 x 512 (one `M` of 16 MiB instead of two). Measured on 256@14
/// at batch 8, two threads (Zen 2, AVX2, CPU time against the form it
/// replaces, BENCHMARKS.md issue 9 item 51): 0.75x with the tiles split,
/// 0.96x with the positions split, where each thread transforms every
/// tile; so the measured rule ([`pays`]) takes a layer on several threads
/// only where the tiles split.
pub(in crate::backend::cpu::conv) const PARTIALS_BYTES: usize = 8 << 20;

/// Whether the weight gradient of `g` runs through F(2x2, 3x3):
/// `FROSTGRAD_CONV_WINOGRAD=0` never, `=1` wherever it [`applies`] (on
/// every SIMD path; for comparison), unset where [`pays`] says, as for the
/// forward and the input gradient (the parent's `chosen`).
/// `FROSTGRAD_CONV_DIRECT` does not concern it: the weight gradient has no
/// direct form.
pub(in crate::backend::cpu::conv) fn chosen(g: &Conv2dGeometry) -> bool {
    let mode = crate::backend::cpu::conv::winograd_mode();
    let threads = rayon::current_num_threads();
    chosen_by(mode, crate::backend::cpu::simd::active(), g, threads)
}

/// [`chosen`]'s rule without the environment: `mode` the value of
/// `FROSTGRAD_CONV_WINOGRAD` (`Some(on)` forced), on SIMD path `path` with
/// `threads` rayon threads.
pub(in crate::backend::cpu::conv) fn chosen_by(
    mode: Option<bool>,
    path: SimdPath,
    g: &Conv2dGeometry,
    threads: usize,
) -> bool {
    applies(g) && mode.unwrap_or_else(|| pays(path, g, threads))
}

/// The fewest 2x2 tiles per rayon thread for which the weight gradient
/// runs through F(2x2, 3x3) by default: the forward's first rule (item 47,
/// before it split few tiles by output channels); the fewest measured to
/// pay was 49 (256@14 at batch 1, one thread: 0.77x the CPU time of the
/// form it replaces).
const MIN_TILES_PER_THREAD: usize = 40;

/// The measured rule: on the AVX2 path only (AVX-512 cannot be measured
/// on the machine this was written on, and the portable path's GEMM is
/// `matrixmultiply`'s), from [`MIN_TILES_PER_THREAD`] up, where the tiles
/// cover the output with at most 1/8 to spare ([`tiles_fit`]), and where
/// the partial sums allow the tiles to be split ([`partials_fit`]).
/// Measured one thread, CPU time against the im2col / shifted / tap-class
/// forms on Zen 2 (AVX2), `scripts/ab_layers.py` (BENCHMARKS.md issue 9
/// item 51): 0.65-0.80x at
/// 56x56 to 14x14 and 0.93x at 4x4 (512@4, batch 32), but 0.99x and
/// 1.02x at 7x7 (512@7 at batch 8, 256@7 at batch 32), whose 2x2 tiles
/// cover 8x8 pixels for 49 real ones, where the tap-class form skips the
/// padding's taps.
fn pays(path: SimdPath, g: &Conv2dGeometry, threads: usize) -> bool {
    let tiles = checked_numel(
        "winograd",
        &[g.batch, g.out_h.div_ceil(2), g.out_w.div_ceil(2)],
    );
    path == SimdPath::Avx2
        && tiles_fit(g)
        && partials_fit(g, threads, PARTIALS_BYTES)
        && tiles.is_ok_and(|t| t >= MIN_TILES_PER_THREAD.saturating_mul(threads.max(1)))
}

/// Whether the partial sums of `M` (`16 x C_out x C_in` floats a thread)
/// let `threads` threads split the tiles within `bytes`, or, on one
/// thread, its one `M` fits in twice that (16 MiB: ResNet-18's 512 x 512).
/// The rule's bound on the scratch the weight gradient holds (scratch is
/// kept for the next step, never shrunk), and on the split: with more
/// threads than this allows the positions would be split, each thread
/// transforming every tile (0.96x the old form at 256@14 on two threads,
/// against 0.75x with the tiles split).
fn partials_fit(g: &Conv2dGeometry, threads: usize, bytes: usize) -> bool {
    let threads = threads.max(1);
    let limit = if threads == 1 {
        bytes.saturating_mul(2)
    } else {
        bytes
    };
    checked_numel("winograd", &[threads, 16, g.out_channels, g.in_channels, 4])
        .is_ok_and(|b| b <= limit)
}

/// Whether the 2x2 tiles of `g`'s output cover at most 9/8 of its pixels:
/// all even sizes, and odd ones from 17 up (never 7x7, 64 for 49). The
/// 9/8 is set between the measured sizes, not measured itself: 1.0 (even
/// sizes) pays, 64/49 = 1.31 (7x7) does not.
fn tiles_fit(g: &Conv2dGeometry) -> bool {
    let even = |n: usize| n.checked_next_multiple_of(2);
    let covered = even(g.out_h)
        .zip(even(g.out_w))
        .and_then(|(h, w)| h.checked_mul(w));
    let real = g.out_h.checked_mul(g.out_w);
    match (covered, real) {
        (Some(c), Some(r)) => c
            .checked_mul(8)
            .zip(r.checked_mul(9))
            .is_some_and(|(c, r)| c <= r),
        _ => false,
    }
}

/// One thread's part: tile rows `rows.0..rows.1`, positions `xi.0..xi.1`,
/// adding into partial sum `partial`.
#[derive(Clone, Copy, Debug)]
struct Part {
    rows: (usize, usize),
    xi: (usize, usize),
    partial: usize,
}

/// `dW` (`[C_out, C_in, 3, 3]`) of the convolution `g` (one that
/// [`applies`]) with input `x` and output gradient `dy`; `blocks` sizes
/// the blocks of tiles, `partials_bytes` bounds the partial sums (see
/// [`PARTIALS_BYTES`]).
pub(in crate::backend::cpu::conv) fn weight_grad_winograd(
    dy: &[f32],
    x: &[f32],
    g: &Conv2dGeometry,
    blocks: Blocks,
    partials_bytes: usize,
) -> Result<Vec<f32>> {
    let op = "conv2d_weight_grad";
    if !applies(g) {
        return Err(Error::shape(
            op,
            "not a stride-1, padding-1 3x3 convolution",
        ));
    }
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    let (h, w) = (g.in_h, g.in_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    if x.len() != checked_numel(op, &[g.batch, c_in, h, w])?
        || dy.len() != checked_numel(op, &[g.batch, c_out, h, w])?
    {
        return Err(Error::shape(
            op,
            "input or output gradient of the wrong size",
        ));
    }
    let tile_rows = checked_numel(op, &[g.batch, th])?;
    let plane = checked_numel(op, &[c_out, c_in])?;
    let m_len = checked_numel(op, &[16, plane])?;
    let dw_len = checked_numel(op, &[plane, 9])?;
    let threads = rayon::current_num_threads().max(1);
    // The parts' bounds `t * tile_rows` and `t * 16` (t < threads) below.
    checked_numel(op, &[tile_rows, threads, 16])?;
    // The rule's own test of the split ([`partials_fit`]); one thread runs
    // all tiles and all positions whichever is "split".
    let tile_split = threads == 1 || partials_fit(g, threads, partials_bytes);
    let groups = if tile_split { threads } else { 1 };
    let parts: Vec<Part> = (0..threads)
        .map(|t| {
            if tile_split {
                Part {
                    rows: (t * tile_rows / threads, (t + 1) * tile_rows / threads),
                    xi: (0, 16),
                    partial: t,
                }
            } else {
                Part {
                    rows: (0, tile_rows),
                    xi: (t * 16 / threads, (t + 1) * 16 / threads),
                    partial: 0,
                }
            }
        })
        .collect();
    // The block: whole tile rows, `V` and `dŶ` of its tiles within
    // `blocks.bytes` but at least `blocks.min_tiles` tiles (less a
    // row's remainder: the rows are whole), no more than one part's rows;
    // each part cuts its rows into equal blocks of at most this many.
    let per_tile = checked_numel(op, &[16, checked_sum(op, &[c_in, c_out])?, 4])?;
    let want_tiles = (blocks.bytes / per_tile).max(blocks.min_tiles);
    let part_rows = tile_rows.div_ceil(groups);
    let rows_per_block = (want_tiles / tw).clamp(1, part_rows.max(1));
    let block_tiles = checked_numel(op, &[rows_per_block, tw])?;
    let v_len = checked_numel(op, &[16, c_in, block_tiles])?;
    let d_len = checked_numel(op, &[16, c_out, block_tiles])?;
    // The input transform's temporaries (split row and column sums, see
    // `transform_input`); the gradient's (4 split rows) are fewer.
    let temp_len = checked_sum(op, &[2 * (tw + 1), checked_numel(op, &[16, block_tiles])?])?;
    let staging_len = checked_sum(op, &[d_len, temp_len])?;
    let partials_len = checked_numel(op, &[groups, m_len])?;
    let cpu = Avx2Fma::detect();
    let mut dw = buffer_pool::uninit(op, dw_len)?;
    with_scratch(Slot::SplitColumns, partials_len, |partials| {
        let out = SharedOut(partials.as_mut_ptr());
        let out = &out;
        part_per_thread(parts, |_, part| {
            let (xi_lo, xi_hi) = part.xi;
            if xi_lo == xi_hi {
                return Ok(());
            }
            // SAFETY: `out` points at the partial sums (`groups * m_len`
            // floats, `partial < groups`), which outlive the broadcast; the
            // parts' regions (partial `partial`, positions xi_lo..xi_hi)
            // are disjoint: with the tiles split each part has its own
            // partial, with the positions split each its own positions of
            // the one partial. Nothing else reads them meanwhile.
            let m = unsafe {
                std::slice::from_raw_parts_mut(
                    out.0.add(part.partial * m_len + xi_lo * plane),
                    (xi_hi - xi_lo) * plane,
                )
            };
            let (lo, hi) = part.rows;
            if lo == hi {
                // (Fewer tile rows than threads: this partial adds nothing.)
                m.fill(0.0);
                return Ok(());
            }
            with_scratch(Slot::Columns, v_len, |v| {
                with_scratch(Slot::Staging, staging_len, |buf| {
                    let (d, temp) = buf.split_at_mut(d_len);
                    // The part's rows in equal blocks of at most
                    // `rows_per_block`: every block reads and writes all
                    // of the part's `M` (16 x 256 x 256 floats at 256@14),
                    // so a last block of a row or two (1 of 28 at 256@14
                    // on two threads, batch 8) cost about as much as a
                    // full one for a few tiles' products.
                    let len = hi - lo;
                    let count = len.div_ceil(rows_per_block);
                    let (base, extra) = (len / count, len % count);
                    let mut r0 = lo;
                    for b in 0..count {
                        let rows = base + usize::from(b < extra);
                        let tiles = rows * tw;
                        let v = &mut v[..16 * c_in * tiles];
                        let d = &mut d[..16 * c_out * tiles];
                        input_twin(cpu, x, g, (r0, rows), v, temp);
                        grad_twin(cpu, dy, g, (r0, rows), d, temp);
                        // The first block overwrites the part's `M`.
                        let beta = if b == 0 { 0.0 } else { 1.0 };
                        for xi in xi_lo..xi_hi {
                            let a =
                                MatRef::row_major(&d[xi * c_out * tiles..][..c_out * tiles], tiles);
                            // V_ξᵀ, a transposed view: the GEMM packs it
                            // through 8x8 register transposes on the AVX2
                            // path (microkernel.rs `pack_transposed`).
                            let vt =
                                MatRef::transposed(&v[xi * c_in * tiles..][..c_in * tiles], tiles);
                            let mk = &mut m[(xi - xi_lo) * plane..][..plane];
                            sgemm(
                                Par::Serial,
                                c_out,
                                tiles,
                                c_in,
                                Lhs::View(a),
                                Rhs::View(vt),
                                beta,
                                mk,
                                c_in,
                            )?;
                        }
                        r0 += rows;
                    }
                    Ok(())
                })
            })
        })?;
        let partials = &*partials;
        dw.par_chunks_mut(9 * c_in)
            .enumerate()
            .with_min_len(4)
            .for_each(|(o, row)| out_twin(cpu, partials, groups, m_len, c_in, o, row));
        Ok(())
    })?;
    Ok(dw)
}

avx2_twin!(
    /// [`transform_grad`], for AVX2 where the CPU runs it.
    grad_twin = transform_grad(
        dy: &[f32],
        g: &Conv2dGeometry,
        block: (usize, usize),
        d: &mut [f32],
        temp: &mut [f32]
    )
);

avx2_twin!(
    /// [`output_row`], for AVX2 where the CPU runs it.
    out_twin = output_row(
        partials: &[f32],
        groups: usize,
        m_len: usize,
        c_in: usize,
        o: usize,
        row: &mut [f32]
    )
);

/// `dŶ = A dY Aᵀ` of tile rows `r0..r0 + rows` (row `r` is tile row `r %
/// th` of image `r / th`) into `d` as `[16][C_out][tiles]`, tile `i * tw +
/// tx` of the block at column `i * tw + tx`, with `A = [[1, 0], [1, 1],
/// [1, -1], [0, -1]]`; `dY` is 0 past the output's last row or column.
/// Each tile's 2x2 gradient `(e0, o0; e1, o1)` (even and odd columns of
/// its two rows, split over the whole block first, so that the 16 loops
/// run over all its tiles) gives, row by row of `A dY` (`(a, b)` = `(e0,
/// o0)`, `(e0 + e1, o0 + o1)`, `(e0 - e1, o0 - o1)`, `(-e1, -o1)`), the
/// four values `(a, a + b, a - b, -b)`.
#[inline(always)]
fn transform_grad(
    dy: &[f32],
    g: &Conv2dGeometry,
    (r0, rows): (usize, usize),
    d: &mut [f32],
    temp: &mut [f32],
) {
    let (c_out, h, w) = (g.out_channels, g.out_h, g.out_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = rows * tw;
    let plane_len = c_out * tiles;
    let (e0, rest) = temp.split_at_mut(tiles);
    let (o0, rest) = rest.split_at_mut(tiles);
    let (e1, rest) = rest.split_at_mut(tiles);
    let o1 = &mut rest[..tiles];
    for k in 0..c_out {
        for i in 0..rows {
            let r = r0 + i;
            let (n, ty) = (r / th, r % th);
            let plane = &dy[(n * c_out + k) * h * w..][..h * w];
            let at = i * tw..(i + 1) * tw;
            split_pair(
                Some(&plane[2 * ty * w..][..w]),
                &mut e0[at.clone()],
                &mut o0[at.clone()],
            );
            let second = (2 * ty + 1 < h).then(|| &plane[(2 * ty + 1) * w..][..w]);
            split_pair(second, &mut e1[at.clone()], &mut o1[at]);
        }
        let (e0, o0, e1, o1) = (&*e0, &*o0, &*e1, &*o1);
        let at = k * tiles;
        macro_rules! put {
            ($xi:expr, |$a:ident, $b:ident, $c:ident, $e:ident| $body:expr) => {{
                let out = &mut d[$xi * plane_len + at..][..tiles];
                for (t, o) in out.iter_mut().enumerate() {
                    let ($a, $b, $c, $e) = (e0[t], o0[t], e1[t], o1[t]);
                    *o = $body;
                }
            }};
        }
        // Row 0 of A dY: (e0, o0).
        put!(0, |e0, _o0, _e1, _o1| e0);
        put!(1, |e0, o0, _e1, _o1| e0 + o0);
        put!(2, |e0, o0, _e1, _o1| e0 - o0);
        put!(3, |_e0, o0, _e1, _o1| -o0);
        // Row 1: (e0 + e1, o0 + o1).
        put!(4, |e0, _o0, e1, _o1| e0 + e1);
        put!(5, |e0, o0, e1, o1| (e0 + e1) + (o0 + o1));
        put!(6, |e0, o0, e1, o1| (e0 + e1) - (o0 + o1));
        put!(7, |_e0, o0, _e1, o1| -(o0 + o1));
        // Row 2: (e0 - e1, o0 - o1).
        put!(8, |e0, _o0, e1, _o1| e0 - e1);
        put!(9, |e0, o0, e1, o1| (e0 - e1) + (o0 - o1));
        put!(10, |e0, o0, e1, o1| (e0 - e1) - (o0 - o1));
        put!(11, |_e0, o0, _e1, o1| o1 - o0);
        // Row 3: (-e1, -o1).
        put!(12, |_e0, _o0, e1, _o1| -e1);
        put!(13, |_e0, _o0, e1, o1| -(e1 + o1));
        put!(14, |_e0, _o0, e1, o1| o1 - e1);
        put!(15, |_e0, _o0, _e1, o1| o1);
    }
}

/// Splits one output gradient row (`row`, or none past the last row) into
/// the first (`even[t]` = column `2t`) and second (`odd[t]` = column `2t +
/// 1`, 0 past the last column) columns of its `tw` tiles.
#[inline(always)]
fn split_pair(row: Option<&[f32]>, even: &mut [f32], odd: &mut [f32]) {
    let Some(row) = row else {
        even.fill(0.0);
        odd.fill(0.0);
        return;
    };
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[even.len() - 1] = *last;
        odd[odd.len() - 1] = 0.0;
    }
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// Input channels per chunk of [`output_row`] (its temporaries are arrays
/// of this length on the stack).
const OUT_CHUNK: usize = 64;

/// Row `o` of `dW` (`[C_in, 3, 3]`, into `row`): for every input channel
/// `c`, `Gᵀ M G` of the 4x4 `M[ξ] = Σ_p partials[p][ξ][o][c]` (the `groups`
/// partial sums, `m_len` floats each), with `G = [[1, 0, 0], [1/2, 1/2,
/// 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`: rows `(m0 + (m1 + m2) / 2, (m1 -
/// m2) / 2, (m1 + m2) / 2 + m3)` of each column, then the same along rows.
#[inline(always)]
fn output_row(
    partials: &[f32],
    groups: usize,
    m_len: usize,
    c_in: usize,
    o: usize,
    row: &mut [f32],
) {
    let plane = m_len / 16;
    for c0 in (0..c_in).step_by(OUT_CHUNK) {
        let n = OUT_CHUNK.min(c_in - c0);
        let mut s = [[0f32; OUT_CHUNK]; 16];
        for (xi, sx) in s.iter_mut().enumerate() {
            let sx = &mut sx[..n];
            for p in 0..groups {
                let src = &partials[p * m_len + xi * plane + o * c_in + c0..][..n];
                if p == 0 {
                    sx.copy_from_slice(src);
                } else {
                    sx.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
                }
            }
        }
        // Gᵀ ·: r[4 a + q] is row `a` (of 3), column `q` (of 4).
        let mut r = [[0f32; OUT_CHUNK]; 12];
        for q in 0..4 {
            for j in 0..n {
                let (m0, m1, m2, m3) = (s[q][j], s[4 + q][j], s[8 + q][j], s[12 + q][j]);
                let half = 0.5 * (m1 + m2);
                r[q][j] = m0 + half;
                r[4 + q][j] = 0.5 * (m1 - m2);
                r[8 + q][j] = half + m3;
            }
        }
        // · G, into the channel's 9 taps.
        let taps = &mut row[c0 * 9..(c0 + n) * 9];
        for (j, t) in taps.chunks_exact_mut(9).enumerate() {
            for a in 0..3 {
                let (x0, x1, x2, x3) = (
                    r[4 * a][j],
                    r[4 * a + 1][j],
                    r[4 * a + 2][j],
                    r[4 * a + 3][j],
                );
                let half = 0.5 * (x1 + x2);
                t[3 * a] = x0 + half;
                t[3 * a + 1] = 0.5 * (x1 - x2);
                t[3 * a + 2] = half + x3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::test_support::{
        max_err, poison_pooled, poison_scratch, reference,
    };
    use crate::backend::cpu::simd;
    use crate::backend::cpu::test_data::pseudo_random;

    /// Fills the scratch this path uses with NaN on every thread of `pool`
    /// (and the calling thread's, which holds the partial sums), and hands
    /// the buffer pool a NaN-filled buffer of `dW`'s `len`: a transform or
    /// GEMM that reads scratch it did not write, or an element of `dW` left
    /// unwritten, then fails the comparison.
    fn poison(pool: &rayon::ThreadPool, len: usize) {
        let slots = [Slot::SplitColumns, Slot::Columns, Slot::Staging];
        poison_scratch(pool, &slots, 1 << 16);
        for slot in slots {
            with_scratch(slot, 1 << 16, |b| {
                b.fill(f32::NAN);
                Ok(())
            })
            .unwrap();
        }
        poison_pooled(len);
    }

    /// `dW` through F(2x2, 3x3) of `[n, c, h, w]` -> `o` channels against
    /// the float64 loops, on every SIMD path, with the partial sums bounded
    /// by `partials_bytes` (0: the positions are split across threads).
    fn check(
        (n, c, o, h, w): (usize, usize, usize, usize, usize),
        blocks: Blocks,
        partials_bytes: usize,
        threads: usize,
    ) {
        let g = Conv2dGeometry::new([n, c, h, w], [o, c, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        assert!(applies(&g));
        let seed = (n * 1000 + c * 100 + o * 10 + h * 3 + w) as u64;
        let x = pseudo_random(n * c * h * w, seed);
        let wgt = pseudo_random(o * c * 9, seed + 1);
        let b = pseudo_random(o, seed + 2);
        let dy = pseudo_random(n * o * h * w, seed + 3);
        let r = reference(&g, &x, &wgt, &b, &dy);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        simd::on_every_path(&pool, |path| {
            let what = format!(
                "{n}x{c}x{h}x{w} -> {o}, {threads} threads, {blocks:?}, \
                 partials {partials_bytes}, {path:?}"
            );
            let dw = pool.install(|| {
                poison(&pool, o * c * 9);
                weight_grad_winograd(&dy, &x, &g, blocks, partials_bytes).unwrap()
            });
            let e = max_err(&dw, &r.dw);
            assert!(e <= 1e-5, "{what}: dW error {e:e}");
        });
    }

    #[test]
    fn winograd_weight_grad_matches_direct_loops_on_odd_shapes() {
        // Tiny blocks (one tile row each) and the default sizing; the tiles
        // or the positions split across threads; odd and even sizes
        // (partial last tiles), 1x1, 2x2 and 1-wide images, fewer tile rows
        // than threads, channels not multiples of the kernels' tiles.
        let tiny = Blocks {
            bytes: 0,
            min_tiles: 1,
            ..super::super::BLOCKS
        };
        // Blocks of at least `min_tiles` tiles, cut into equal blocks of
        // whole rows: 8 tile rows of 3 at most as 3 + 3 + 2 (4x9x4x4, one
        // thread), 3 rows of 2 at most as 2 + 1 (2x21x9x17, three threads).
        let at_least = |min_tiles| Blocks {
            bytes: 0,
            min_tiles,
            ..super::super::BLOCKS
        };
        for (threads, blocks, partials) in [
            (1, super::super::BLOCKS, PARTIALS_BYTES),
            (1, at_least(7), PARTIALS_BYTES),
            (3, at_least(19), PARTIALS_BYTES),
            (2, tiny, PARTIALS_BYTES),
            (2, super::super::BLOCKS, 0),
            (3, tiny, 0),
            (4, super::super::BLOCKS, PARTIALS_BYTES),
            (5, tiny, 0),
            // More threads than the 16 positions: some parts get none
            // (an empty position range), and with the tiles split most
            // get no tile rows.
            (17, tiny, 0),
            (20, super::super::BLOCKS, 0),
            (17, super::super::BLOCKS, PARTIALS_BYTES),
        ] {
            for &shape in &[
                (1, 3, 5, 1, 1),
                (2, 4, 7, 2, 2),
                (3, 5, 3, 7, 9),
                (1, 2, 13, 5, 1),
                (2, 17, 10, 6, 5),
                (1, 1, 1, 3, 4),
                (4, 9, 70, 4, 4),
                // Enough input channels and tiles for the GEMM's 8x8
                // transposes of `V_ξᵀ` (two groups of 8 channels and a
                // remainder of 5; 9 tiles a row: 8 transposed, one left
                // over).
                (2, 21, 6, 9, 17),
            ] {
                check(shape, blocks, partials, threads);
            }
        }
    }

    #[test]
    fn weight_grad_chosen_by_table() {
        use simd::SimdPath::{Avx2, Avx512, Portable};
        let conv = |n: usize, c: usize, h: usize, w: usize, stride: usize| {
            Conv2dGeometry::new([n, c, h, w], [c, c, 3, 3], (stride, stride), (1, 1), (1, 1))
                .unwrap()
        };
        // (geometry, threads, whether the measured rule takes it on AVX2).
        let table = [
            // 39 and 40 tiles per thread (2 rows of 77 / 79 / 157 / 159
            // pixels: 39, 40, 79, 80 tiles).
            (conv(1, 8, 2, 77, 1), 1, false),
            (conv(1, 8, 2, 79, 1), 1, true),
            (conv(1, 8, 2, 157, 1), 2, false),
            (conv(1, 8, 2, 159, 1), 2, true),
            // ResNet-18's stride-1 3x3 layers at 224x224, batch 8 and 1
            // (784, 196, 49 and 16 tiles per image); 7x7 never (64 tile
            // pixels for 49), 4x4 (512@4 at 112x112, batch 32) does.
            (conv(8, 64, 56, 56, 1), 1, true),
            (conv(8, 128, 28, 28, 1), 2, true),
            (conv(8, 256, 14, 14, 1), 2, true),
            (conv(8, 512, 7, 7, 1), 1, false),
            (conv(1, 64, 56, 56, 1), 2, true),
            (conv(1, 128, 28, 28, 1), 2, true),
            (conv(1, 256, 14, 14, 1), 1, true),
            (conv(1, 256, 14, 14, 1), 2, false),
            (conv(32, 256, 7, 7, 1), 2, false),
            // Partial sums: two of 16 MiB at 512 x 512 would exceed the
            // 8 MiB bound (the positions would be split, each thread
            // transforming every tile), one of 16 MiB is allowed on one
            // thread, one of 64 MiB (1024 x 1024) is not.
            (conv(32, 512, 4, 4, 1), 2, false),
            (conv(32, 512, 4, 4, 1), 1, true),
            (conv(32, 1024, 4, 4, 1), 1, false),
            (conv(64, 256, 14, 14, 1), 4, false),
            // 17 wide: 18 x 18 tile pixels for 17 x 17 (1.12x) fit, 15 do not.
            (conv(8, 8, 17, 17, 1), 1, true),
            (conv(8, 8, 15, 15, 1), 1, false),
            // Not F(2x2, 3x3)'s shape: never, whatever is forced.
            (conv(8, 64, 56, 56, 2), 1, false),
        ];
        for (g, threads, pays) in &table {
            let fits = applies(g);
            for path in [Avx512, Avx2, Portable] {
                let what = format!("{g:?} {threads} threads {path:?}");
                let auto = *pays && path == Avx2;
                assert_eq!(chosen_by(None, path, g, *threads), auto, "{what}");
                assert_eq!(chosen_by(Some(true), path, g, *threads), fits, "{what}");
                assert!(!chosen_by(Some(false), path, g, *threads), "{what}");
            }
        }
    }

    #[test]
    fn the_entry_point_takes_winograd_where_it_pays() {
        // 5 images of 8x8: 80 tiles, 40 per thread on 2, so on AVX2 the
        // crate's weight gradient runs through F(2x2, 3x3); on the other
        // paths it keeps its own forms, and must agree all the same.
        let g = Conv2dGeometry::new([5, 4, 8, 8], [6, 4, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        let x = pseudo_random(5 * 4 * 8 * 8, 21);
        let w = pseudo_random(6 * 4 * 9, 22);
        let b = pseudo_random(6, 23);
        let dy = pseudo_random(5 * 6 * 8 * 8, 24);
        let r = reference(&g, &x, &w, &b, &dy);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        simd::on_every_path(&pool, |path| {
            assert_eq!(
                chosen_by(None, path, &g, 2),
                path == simd::SimdPath::Avx2,
                "{path:?}"
            );
            let dw = pool.install(|| {
                let mut dirty = buffer_pool::uninit::<f32>("test", 6 * 4 * 9).unwrap();
                dirty.fill(f32::NAN);
                buffer_pool::recycle(dirty);
                super::super::super::conv2d_weight_grad(&dy, &x, &g).unwrap()
            });
            assert!(max_err(&dw, &r.dw) <= 1e-5, "{path:?} dW");
            // The route, not only the numbers (every form agrees on them):
            // where the rule takes the layer, the entry point's result is
            // F(2x2, 3x3)'s to the bit.
            if crate::backend::cpu::conv::winograd_mode().is_none() && path == simd::SimdPath::Avx2
            {
                let own = pool.install(|| {
                    weight_grad_winograd(&dy, &x, &g, super::super::BLOCKS, PARTIALS_BYTES).unwrap()
                });
                assert_eq!(
                    dw, own,
                    "{path:?}: the entry point did not take F(2x2, 3x3)"
                );
            }
        });
    }

    #[test]
    fn winograd_weight_grad_error_is_comparable_to_the_other_forms() {
        // ResNet-18's stride-1 3x3 layers at 224x224 input (batch 2 at
        // 56x56: 1568 tiles summed), with realistic magnitudes:
        // post-ReLU-like inputs (|U(-1, 1)| x 1.7) and signed output
        // gradients (U(-1, 1) x 0.01). F(2x2, 3x3)'s largest error against
        // float64 next to the im2col / shifted / tap-class form's on the
        // same case (`cargo test -- --nocapture` prints them); checked on
        // every 8th output channel, to keep the float64 loops short.
        use super::super::super::weight_grad::{weight_grad_limits, weight_grad_with};
        const STEP: usize = 8;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (n, c, size) in [(2, 64, 56), (1, 128, 28), (2, 256, 14), (4, 512, 7)] {
            let g = Conv2dGeometry::new([n, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
                .unwrap();
            let x: Vec<f32> = pseudo_random(n * c * size * size, 41)
                .into_iter()
                .map(|v| v.abs() * 1.7)
                .collect();
            let dy: Vec<f32> = pseudo_random(n * c * size * size, 42)
                .into_iter()
                .map(|v| v * 0.01)
                .collect();
            let pixels = size * size;
            let sampled: Vec<usize> = (0..c).step_by(STEP).collect();
            let mut want = vec![0f64; sampled.len() * c * 9];
            for (s, &o) in sampled.iter().enumerate() {
                for img in 0..n {
                    let dyp = &dy[(img * c + o) * pixels..][..pixels];
                    for i in 0..c {
                        let xp = &x[(img * c + i) * pixels..][..pixels];
                        for t in 0..9 {
                            let (kh, kw) = (t / 3, t % 3);
                            let mut sum = 0f64;
                            for oh in 0..size {
                                let Some(ih) = (oh + kh).checked_sub(1).filter(|&r| r < size)
                                else {
                                    continue;
                                };
                                for ow in 0..size {
                                    if let Some(iw) = (ow + kw).checked_sub(1).filter(|&q| q < size)
                                    {
                                        sum += f64::from(dyp[oh * size + ow])
                                            * f64::from(xp[ih * size + iw]);
                                    }
                                }
                            }
                            want[(s * c + i) * 9 + t] += sum;
                        }
                    }
                }
            }
            let pick = |v: &[f32]| -> Vec<f32> {
                sampled
                    .iter()
                    .flat_map(|&o| v[o * c * 9..][..c * 9].iter().copied())
                    .collect()
            };
            simd::on_every_path(&pool, |path| {
                let (win, other) = pool.install(|| {
                    let win =
                        weight_grad_winograd(&dy, &x, &g, super::super::BLOCKS, PARTIALS_BYTES)
                            .unwrap();
                    let other = weight_grad_with(&dy, &x, &g, weight_grad_limits(&g)).unwrap();
                    (pick(&win), pick(&other))
                });
                let (ew, eo) = (max_err(&win, &want), max_err(&other, &want));
                println!(
                    "{n}x{c}@{size} {path:?} dW: winograd {ew:.2e}, other {eo:.2e}, ratio {:.2}",
                    ew / eo
                );
                assert!(
                    ew <= 2.5 * eo + 1e-7,
                    "{c}@{size} {path:?}: {ew:e} vs {eo:e}"
                );
            });
        }
    }
}
