//! Winograd's minimal filtering F(2x2, 3x3) for the stride-1, padding-1
//! 3x3 convolution (the forward, and the input gradient as the forward of
//! `dy` with the flipped weight): each 2x2 tile of the output is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` over its 4x4 input patch `d`, 16 products
//! per input/output channel pair instead of 36 (2.25x fewer FMAs).
//!
//! Summed over input channels, the 16 element-wise products become 16
//! independent GEMMs `M_k = U_k · V_k` (`k` the position in the 4x4 tile):
//! `U_k` is the transformed weight `[C_out, C_in]`, computed once per call,
//! `V_k` the transformed input `[C_in, tiles]` of a block of tiles. So the
//! GEMM runs on the existing micro-kernels (every SIMD path, the portable
//! one through `matrixmultiply`), and only the transforms are new. They use
//! only 0, ±1 and ±1/2 (in `G`), so their float32 rounding adds little to
//! the direct sum's (the tests report both errors against float64).
//!
//! Work: rows of tiles (2 output rows of one image each) are split evenly
//! across rayon's threads (one contiguous part per thread, so each asks
//! for the same scratch in every call); a thread runs its part in blocks
//! of whole tile rows sized so that the block's `V` and `M` stay in L2
//! ([`BLOCK_BYTES`]): input transform, 16 GEMMs, output transform (+ bias).
//! With few tiles per thread (a batch of one or two at 14x14 or 7x7) the
//! output channels are split instead ([`forward_by_channels`]): each
//! thread transforms and multiplies only its own rows of the weight, after
//! the input transform (split by input channels) and the packing of `V`
//! (split by planes). `FROSTGRAD_WINOGRAD_SPLIT=rows|channels` forces
//! either split ([`split_forced`]).

use rayon::prelude::*;

use super::super::buffer_pool;
use super::super::check::{checked_numel, checked_sum};
use super::super::gemm::{sgemm_rows, with_packed_lhs, Lhs, MatRef, Rhs};
use super::super::scratch::{with_scratch, Slot};
use super::{part_per_thread, SharedOut};
use crate::backend::Conv2dGeometry;
use crate::error::Result;

/// The bytes of one block's transformed input `V` (`16 x C_in x tiles`)
/// and products `M` (`16 x C_out x tiles`) together: 3/4 of Zen 2's
/// 512 KiB L2, the rest for the GEMM's packed panels. It binds only where
/// more than [`MIN_BLOCK_TILES`] tiles fit, i.e. `C_in` plus the padded
/// `C_out` under 32 (64 bytes per tile and channel): on every real layer
/// (ResNet-18's have 64 + 64 and up) the block is [`MIN_BLOCK_TILES`]
/// tiles, whose `V` and `M` (1.5 MiB at 64 channels, 12 MiB at 512)
/// overflow L2.
pub(super) const BLOCK_BYTES: usize = 384 << 10;

/// The fewest tiles per block (the GEMMs' column count) whatever the
/// channels: below a few micro-kernel panels the GEMMs' per-call costs
/// (packing, edge tiles) grow, and for wide layers each block re-reads the
/// whole transformed weight (16 MiB at 512 channels) from memory.
pub(super) const MIN_BLOCK_TILES: usize = 192;

/// Whether `g` is a convolution F(2x2, 3x3) computes: 3x3, stride 1,
/// padding 1, dilation 1 (groups are always 1 here), output as large as
/// the input, nothing empty.
pub(super) fn applies(g: &Conv2dGeometry) -> bool {
    g.kernel_h == 3
        && g.kernel_w == 3
        && g.stride == (1, 1)
        && g.padding == (1, 1)
        && g.dilation == (1, 1)
        && g.batch > 0
        && g.in_h > 0
        && g.in_w > 0
        && g.in_channels > 0
        && g.out_channels > 0
        && g.out_h == g.in_h
        && g.out_w == g.in_w
}

/// Whether the convolution `g` (a forward, or the flipped geometry of an
/// input gradient) runs through F(2x2, 3x3): `FROSTGRAD_CONV_WINOGRAD=0`
/// never, `=1` wherever it [`applies`] (on every SIMD path; for
/// comparison), unset (or any other value) where [`pays`] says, except
/// when `FROSTGRAD_CONV_DIRECT=1` forces the direct convolution: an
/// explicitly forced direct path wins over the measured rule, and only an
/// explicit `FROSTGRAD_CONV_WINOGRAD=1` wins over it.
pub(super) fn chosen(g: &Conv2dGeometry) -> bool {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    static DIRECT: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let mode = super::super::env_switch::forced(&MODE, "FROSTGRAD_CONV_WINOGRAD", "1", "0");
    let direct = super::super::env_switch::forced(&DIRECT, "FROSTGRAD_CONV_DIRECT", "1", "0");
    chosen_by(mode, direct, super::super::simd::active(), g)
}

/// [`chosen`]'s rule without the environment: `mode` the value of
/// `FROSTGRAD_CONV_WINOGRAD` (`Some(on)` forced), `direct` that of
/// `FROSTGRAD_CONV_DIRECT`, on SIMD path `path`.
pub(super) fn chosen_by(
    mode: Option<bool>,
    direct: Option<bool>,
    path: super::super::simd::SimdPath,
    g: &Conv2dGeometry,
) -> bool {
    applies(g) && mode.unwrap_or_else(|| direct != Some(true) && pays(path, g))
}

/// Whether `g` runs through F(2x2, 3x3) with `force` (tests): `Some(on)`
/// `on` wherever it [`applies`], `None` where [`chosen`].
pub(super) fn wanted(g: &Conv2dGeometry, force: Option<bool>) -> bool {
    match force {
        Some(on) => on && applies(g),
        None => chosen(g),
    }
}

/// The fewest 2x2 output tiles (all images, any thread count) for which
/// F(2x2, 3x3) is chosen: the weight transform costs the same at any batch
/// (9 reads and 16 writes per channel pair, and the weight streamed from
/// memory), and below a few dozen tiles it is more than the 2.25x fewer
/// FMAs save. With few tiles the work is split by output channels
/// ([`split_by_channels`]), so each thread transforms only its own rows of
/// the weight and the count per thread no longer matters. Measured (CPU
/// time against the direct or im2col path it replaces, forward / input
/// gradient, `scripts/ab_layers.py`, Zen 2, AVX2, load 4-6; BENCHMARKS.md
/// issue 9 item 47 and the commits that split by channels and vectorised
/// the weight transform): 512@7 at batch 2 (32 tiles), two threads 0.73x /
/// 0.78x, one thread 0.93x / 0.95x; 512@7 at batch 1 (16 tiles) 1.11x /
/// 1.13x and 1.14x / 1.22x; 256@14 at batch 1 (49 tiles) 0.78x / 0.79x
/// and 0.93x / 1.00x (before the vectorised weight transform); 512@7 at
/// batch 4 (64 tiles) 0.74x / 0.81x and 0.90x / 0.90x. Split by tile rows
/// (each thread transforming and re-reading the whole weight), 256@14 at
/// batch 1 on two threads had taken 1.25x / 1.29x (commit c4de002).
const MIN_TILES: usize = 32;

/// The measured rule: on the AVX2 path (the only one measured; AVX-512 is
/// not, and the portable path's `matrixmultiply` GEMM neither) from
/// [`MIN_TILES`] up. Forward and flipped input gradient alike: they
/// measured within a few percent of each other on every ResNet-18 shape.
fn pays(path: super::super::simd::SimdPath, g: &Conv2dGeometry) -> bool {
    // (A tile count that overflows is no shape to run: not chosen, the
    // other paths report it.)
    let tiles = checked_numel(
        "winograd",
        &[g.batch, g.out_h.div_ceil(2), g.out_w.div_ceil(2)],
    );
    path == super::super::simd::SimdPath::Avx2 && tiles.is_ok_and(|t| t >= MIN_TILES)
}

/// Whether [`forward_winograd`] splits its work by output channels
/// ([`forward_by_channels`]) rather than by tile rows: below
/// [`BY_CHANNELS_TILES_PER_THREAD`] tiles per thread, counted for at least
/// two threads. Split by rows, every thread transforms and reads the whole
/// weight, a cost the same at any tile count; split by channels, each its
/// own rows only, but every thread reads every tile's transformed input
/// and the GEMMs run on all tiles at once. Measured (CPU time, by channels
/// / by rows, forward / input gradient, Zen 2, AVX2, load ~4, `ab_layers.py
/// --rounds 3 --reps 5`): two threads, 512@7 at batch 1 (8 tiles per
/// thread) 0.56x / 0.53x, 256@14 at batch 1 (25) 0.89x / 0.84x, at batch 2
/// (49) 0.94x / 0.78x, 512@7 at batch 8 (64) 0.94x / 1.02x, 256@14 at
/// batch 8 (196) 1.11x / 1.10x; one thread 256@14 at batch 2 (98 tiles)
/// 0.83x / 0.82x, 512@7 at batch 8 (128) 1.04x / 1.02x, 256@14 at batch 8
/// (392) 1.16x / 1.21x. Only with at least one row tile of the
/// micro-kernel (`units`, the padded output channels over its rows) per
/// thread: with fewer, some threads would have no channels and sit idle
/// (ResNet-18's 64 output channels are 11 row tiles on AVX2, so from 12
/// threads up; only one and two threads were measured).
pub(super) fn split_by_channels(tiles: usize, threads: usize, units: usize) -> bool {
    tiles < BY_CHANNELS_TILES_PER_THREAD.saturating_mul(threads.max(2)) && units >= threads
}

/// Whether [`forward_winograd`] splits by output channels: `test` (a
/// test's [`Blocks::by_channels`]) if set, else `env` (the value of
/// `FROSTGRAD_WINOGRAD_SPLIT`, [`split_forced`]) if set, else
/// [`split_by_channels`]'s rule for `tiles`, `threads` and `units`.
fn split_chosen(
    test: Option<bool>,
    env: Option<bool>,
    tiles: usize,
    threads: usize,
    units: usize,
) -> bool {
    test.or(env)
        .unwrap_or_else(|| split_by_channels(tiles, threads, units))
}

/// See [`split_by_channels`].
const BY_CHANNELS_TILES_PER_THREAD: usize = 64;

/// `FROSTGRAD_WINOGRAD_SPLIT`, read once: `channels` splits every
/// F(2x2, 3x3) forward and input gradient by output channels
/// ([`forward_by_channels`]), `rows` by tile rows, unset (or any other
/// value) as [`split_by_channels`] says; for comparison (BENCHMARKS.md
/// issue 9 item 50 compares the two splits). It decides the split only,
/// not whether F(2x2, 3x3) runs (`FROSTGRAD_CONV_WINOGRAD`). Its memory
/// cost: `channels` at any tile count, so the transformed input, its
/// packing and each thread's products hold every tile, tens of MB at
/// batch 8 on 56x56 (64@56: 6 272 tiles, V and its packing 25.7 MB each
/// on the calling thread, each thread's products 19.3 MB with AVX2's
/// 48-channel blocks), where the rule's split holds at most a few MB.
fn split_forced() -> Option<bool> {
    static SPLIT: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    super::super::env_switch::forced(&SPLIT, "FROSTGRAD_WINOGRAD_SPLIT", "channels", "rows")
}

/// The block sizing of one call: bytes of `V` and `M` per block, and the
/// fewest tiles per block. Tests shrink them to run many blocks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocks {
    pub(super) bytes: usize,
    pub(super) min_tiles: usize,
    /// `Some(true)` splits the work by output channels
    /// ([`forward_by_channels`]), `Some(false)` by tile rows, `None` as
    /// `FROSTGRAD_WINOGRAD_SPLIT` forces ([`split_forced`]), else as
    /// [`split_by_channels`] says.
    pub(super) by_channels: Option<bool>,
    /// The bytes of one block of transformed weight rows in
    /// [`forward_by_channels`] (at least one row tile of the micro-kernel).
    pub(super) channel_bytes: usize,
}

pub(super) const BLOCKS: Blocks = Blocks {
    bytes: BLOCK_BYTES,
    min_tiles: MIN_BLOCK_TILES,
    by_channels: None,
    channel_bytes: CHANNEL_BLOCK_BYTES,
};

/// The bytes of one block of `U`'s rows (`16 x rows x C_in` floats) in
/// [`forward_by_channels`]: written by the weight transform and read back
/// by the block's 16 GEMMs while still in L2 (half of Zen 2's 512 KiB,
/// the rest for the packed `V` panels and the products).
pub(super) const CHANNEL_BLOCK_BYTES: usize = 192 << 10;

/// `y = conv2d(x, w) + bias` for a geometry that [`applies`], with the
/// weight `wt`: the forward's, or the input gradient's flipped one.
pub(super) fn forward_winograd(
    op: &'static str,
    x: &[f32],
    wt: Weight<'_>,
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    blocks: Blocks,
) -> Result<Vec<f32>> {
    debug_assert!(applies(g));
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    let (h, w) = (g.in_h, g.in_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    // Each `U_k` padded to whole row tiles of the micro-kernel, so a row
    // block of a packed `U` starts at a multiple of its tile
    // (`gemm::row_align`); the padding rows are zero and their products
    // never read.
    #[cfg(target_arch = "x86_64")]
    let mr = super::super::gemm::tile(super::super::simd::active())
        .0
        .max(1);
    #[cfg(not(target_arch = "x86_64"))]
    let mr = 1;
    let kp = checked_numel(op, &[c_out.div_ceil(mr), mr])?;
    let tile_rows = checked_numel(op, &[g.batch, th])?;
    let columns = checked_numel(op, &[tile_rows, tw])?;
    let threads = rayon::current_num_threads().max(1);
    debug_assert!(x.len() == g.batch * c_in * h * w);
    // Which split, before sizing the row split's blocks (which the channel
    // split does not use): the test's force, else the environment's, else
    // the rule.
    if split_chosen(
        blocks.by_channels,
        split_forced(),
        columns,
        threads,
        kp / mr,
    ) {
        return forward_by_channels(op, x, wt, bias, g, mr, blocks.channel_bytes);
    }
    let u_len = checked_numel(op, &[16, kp, c_in])?;
    let y_len = checked_numel(op, &[g.batch, c_out, h, w])?;
    let per_tile = checked_numel(op, &[16, checked_sum(op, &[c_in, kp])?, 4])?;
    let want_tiles = (blocks.bytes / per_tile).max(blocks.min_tiles);
    // No more than one thread's part (the scratch is sized by the block).
    let part_rows = tile_rows.div_ceil(threads);
    let rows_per_block = (want_tiles / tw).clamp(1, part_rows);
    let block_tiles = rows_per_block * tw;
    let v_len = checked_numel(op, &[16, c_in, block_tiles])?;
    let m_len = checked_numel(op, &[16, kp, block_tiles])?;
    // The transforms' temporaries: the input's split row (`2 (tw + 1)`)
    // and column sums (`16 x tiles`), or the output's (`12 x tiles`).
    let temp_len = checked_sum(op, &[2 * (tw + 1), checked_numel(op, &[16, block_tiles])?])?;
    let staging_len = checked_sum(op, &[m_len, temp_len])?;
    // The parts' bounds `t * tile_rows` (t < threads) below.
    checked_numel(op, &[tile_rows, threads])?;
    let cpu = Avx2Fma::detect();
    let mut y = buffer_pool::uninit(op, y_len)?;
    with_scratch(Slot::PackedLhs, u_len, |u| {
        transform_weight(wt, c_in, c_out, kp, u, cpu);
        let u = &*u;
        with_packed_lhs(MatRef::row_major(u, c_in), 16 * kp, c_in, columns, |lhs| {
            let out = SharedOut(y.as_mut_ptr());
            let parts = (0..threads)
                .map(|t| (t * tile_rows / threads, (t + 1) * tile_rows / threads))
                .collect();
            part_per_thread(parts, |_, (lo, hi)| {
                let out = &out;
                with_scratch(Slot::Columns, v_len, |v| {
                    with_scratch(Slot::Staging, staging_len, |buf| {
                        let (m, temp) = buf.split_at_mut(m_len);
                        for r0 in (lo..hi).step_by(rows_per_block) {
                            let rows = rows_per_block.min(hi - r0);
                            let tiles = rows * tw;
                            let v = &mut v[..16 * c_in * tiles];
                            let m = &mut m[..16 * kp * tiles];
                            input_twin(cpu, x, g, (r0, rows), v, temp);
                            for k in 0..16 {
                                let vk = &v[k * c_in * tiles..(k + 1) * c_in * tiles];
                                let mk = &mut m[k * kp * tiles..(k + 1) * kp * tiles];
                                let vk = Rhs::View(MatRef::row_major(vk, tiles));
                                sgemm_rows(lhs, 16 * kp, (k * kp, kp), c_in, tiles, vk, mk)?;
                            }
                            // SAFETY: this part owns tile rows lo..hi, i.e.
                            // output rows 2 * ty, 2 * ty + 1 of its images
                            // (every channel), disjoint from the other
                            // parts'; `y` (y_len floats) outlives the
                            // broadcast and nothing reads it meanwhile.
                            unsafe {
                                output_twin(cpu, m, (kp, 0, c_out), bias, g, (r0, rows), out, temp)
                            };
                        }
                        Ok(())
                    })
                })
            })
        })
    })?;
    Ok(y)
}

/// [`forward_winograd`] for few tiles, in three parallel parts. The
/// input transform of every tile, its input channels split across the
/// threads ([`transform_split`]); the packing of the 16 planes `V_k` into
/// the micro-kernel's panels, an equal share per thread (both had run on
/// the calling thread alone, about 0.2 of the 2.3 ms of 256@14's forward
/// at batch 1, and left the split's forward at 1.04x of the direct path's
/// wall time on two threads, BENCHMARKS.md issue 9, the eleventh
/// session's quiet A/B; on one thread both still run there, with no
/// broadcast). Then the micro-kernel's row tiles of the output channels
/// split evenly across the threads; each runs its channels in blocks of
/// `channel_bytes` of transformed weight: the weight transform of the
/// block's rows (so no thread transforms, or reads, the others' rows, and
/// the block is read back from L2 rather than memory), 16 GEMMs over all
/// tiles, the output transform of its channels.
fn forward_by_channels(
    op: &'static str,
    x: &[f32],
    wt: Weight<'_>,
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    mr: usize,
    channel_bytes: usize,
) -> Result<Vec<f32>> {
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    let (h, w) = (g.in_h, g.in_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let kp = checked_numel(op, &[c_out.div_ceil(mr), mr])?;
    let tile_rows = checked_numel(op, &[g.batch, th])?;
    let tiles = checked_numel(op, &[tile_rows, tw])?;
    let y_len = checked_numel(op, &[g.batch, c_out, h, w])?;
    let v_plane = checked_numel(op, &[c_in, tiles])?;
    let v_len = checked_numel(op, &[16, v_plane])?;
    // The input transform's temporaries (`transform_input_channels`), and the
    // output transform's (`12 x tiles`).
    let temp_in = checked_sum(op, &[2 * (tw + 1), checked_numel(op, &[16, tiles])?])?;
    let temp_out = checked_numel(op, &[12, tiles])?;
    // Each V_k packed once into the micro-kernel's panels (read in place
    // by every thread's GEMMs); on the portable path read as it lies.
    #[cfg(target_arch = "x86_64")]
    let nr = super::super::gemm::tile(super::super::simd::active()).1;
    #[cfg(not(target_arch = "x86_64"))]
    let nr = 0;
    let vp_plane = if nr > 0 {
        checked_numel(op, &[c_in, tiles.next_multiple_of(nr)])?
    } else {
        0
    };
    let vp_len = checked_numel(op, &[16, vp_plane])?;
    let threads = rayon::current_num_threads().max(1);
    let units = kp / mr;
    // The parts' bounds `t * units`, `t * C_in` and `16 * t` (t < threads).
    checked_numel(op, &[units.max(c_in).max(16), threads])?;
    let row_bytes = checked_numel(op, &[16, c_in, 4])?;
    let cb = (channel_bytes / row_bytes / mr).max(1) * mr;
    let u_len = checked_numel(op, &[16, cb, c_in])?;
    let m_len = checked_numel(op, &[16, cb, tiles])?;
    // One staging buffer per thread, in both parts: the input transform's
    // temporaries, then the block's weight rows, products and output
    // temporaries (the larger whenever `C_in >= 1`; the same request in
    // both, so neither grows the other's buffer). The slot the row split's
    // workers use too (a worker's first request of a slot grows it to that
    // slot's largest on any thread, and `PackedLhs`'s largest is a caller's
    // whole packed weight, megabytes).
    let staging_len = checked_sum(op, &[u_len, m_len, temp_out])?.max(temp_in);
    let cpu = Avx2Fma::detect();
    let mut y = buffer_pool::uninit(op, y_len)?;
    let out = SharedOut(y.as_mut_ptr());
    let out = &out;
    // V of every tile, its packing and, on one thread, the transform's
    // temporaries (on the calling thread: no broadcast before the GEMMs'),
    // in one whole-call request of the calling thread's own slot: in
    // `Columns`, V (all tiles, megabytes where the split is forced on a
    // large layer) would become that slot's largest request, to which
    // every worker's `Columns` grows in the other kernels.
    let inline_temp = if threads == 1 { temp_in } else { 0 };
    let split_len = checked_sum(op, &[v_len, vp_len, inline_temp])?;
    with_scratch(Slot::SplitColumns, split_len, |buf| {
        let (v, rest) = buf.split_at_mut(v_len);
        let (vp, temp) = rest.split_at_mut(vp_len);
        let run = |rhs: &[Rhs<'_>]| {
            let parts = (0..threads)
                .map(|t| (t * units / threads * mr, (t + 1) * units / threads * mr))
                .collect();
            part_per_thread(parts, |_, (lo, hi)| {
                with_scratch(Slot::Staging, staging_len, |buf| {
                    let (u, rest) = buf.split_at_mut(u_len);
                    let (m, temp) = rest.split_at_mut(m_len);
                    for o0 in (lo..hi).step_by(cb) {
                        let rows = cb.min(hi - o0);
                        let u = &mut u[..16 * rows * c_in];
                        let u_out = SharedOut(u.as_mut_ptr());
                        for r in 0..rows {
                            // SAFETY: `u` holds 16 * rows * c_in
                            // floats, this thread's alone; each call
                            // writes its own row `r` of each plane.
                            unsafe { weight_twin(cpu, wt, c_in, c_out, o0 + r, (rows, r), &u_out) };
                        }
                        let u = &*u;
                        let lhs = Lhs::View(MatRef::row_major(u, c_in));
                        let m = &mut m[..16 * rows * tiles];
                        for (k, (mk, &vk)) in m.chunks_exact_mut(rows * tiles).zip(rhs).enumerate()
                        {
                            sgemm_rows(lhs, 16 * rows, (k * rows, rows), c_in, tiles, vk, mk)?;
                        }
                        // SAFETY: this part owns output channels
                        // lo..hi (of every image and row), disjoint
                        // from the other parts'; `y` (y_len floats)
                        // outlives the broadcast and nothing reads
                        // it meanwhile.
                        unsafe {
                            output_twin(
                                cpu,
                                m,
                                (rows, o0, o0 + rows),
                                bias,
                                g,
                                (0, tile_rows),
                                out,
                                temp,
                            )
                        };
                    }
                    Ok(())
                })
            })
        };
        let transform = Transform {
            cpu,
            x,
            g,
            tile_rows,
            staging_len,
            temp_in,
        };
        transform_split(transform, v, v_plane, temp)?;
        let v = &*v;
        #[cfg(target_arch = "x86_64")]
        if nr > 0 {
            use super::super::microkernel::{PackedB, Raw};
            // Each V_k packed by one thread (consecutive planes per
            // thread), read by every thread's GEMMs afterwards.
            let raws: [Raw; 16] = std::array::from_fn(|k| Raw {
                ptr: v[k * v_plane..][..v_plane].as_ptr(),
                rs: tiles,
                cs: 1,
            });
            let mut packed: [Option<PackedB<'_>>; 16] = std::array::from_fn(|_| None);
            let mut parts: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
            let planes = raws.iter().zip(vp.chunks_exact_mut(vp_plane));
            for (k, (plane, slot)) in planes.zip(packed.iter_mut()).enumerate() {
                parts[k * threads / 16].push((plane, slot));
            }
            /// Packs each `raw` (a `c_in x tiles` V_k) into its
            /// `dst` (`PackedB::len(c_in, tiles, nr)` floats).
            type Plane<'a, 's> = ((&'a Raw, &'a mut [f32]), &'s mut Option<PackedB<'a>>);
            fn pack(mine: Vec<Plane<'_, '_>>, (c_in, tiles, nr): (usize, usize, usize)) {
                for ((raw, dst), slot) in mine {
                    // SAFETY: `raw` views V_k, a row-major c_in x tiles
                    // matrix (the caller's plane of `v`, borrowed shared
                    // for as long as the packing); `dst` holds
                    // PackedB::len(c_in, tiles, nr) floats (a plane of
                    // `vp`, vp_plane long).
                    *slot = Some(unsafe { PackedB::pack(raw, c_in, tiles, nr, dst, false) });
                }
            }
            let shape = (c_in, tiles, nr);
            if threads == 1 {
                parts.into_iter().for_each(|mine| pack(mine, shape));
            } else {
                part_per_thread(parts, |_, mine| {
                    pack(mine, shape);
                    Ok(())
                })?;
            }
            let rhs = packed
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| Rhs::Source(p)).ok_or_else(|| {
                        crate::error::Error::invalid(op, "winograd: a plane of V was not packed")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return run(&rhs);
        }
        let _ = vp;
        let rhs: Vec<Rhs<'_>> = v
            .chunks_exact(v_plane)
            .map(|vk| Rhs::View(MatRef::row_major(vk, tiles)))
            .collect();
        run(&rhs)
    })?;
    Ok(y)
}

/// What [`transform_split`] transforms: all `tile_rows` tile rows of `x`
/// in geometry `g`, each thread (of several) with `staging_len` floats of
/// its `Staging` scratch, of which the transform's temporaries take
/// `temp_in`.
#[derive(Clone, Copy)]
struct Transform<'a> {
    cpu: Option<Avx2Fma>,
    x: &'a [f32],
    g: &'a Conv2dGeometry,
    tile_rows: usize,
    staging_len: usize,
    temp_in: usize,
}

/// The input transform of every tile into `v` (`[16][C_in][tiles]`,
/// planes of `v_plane` floats), the input channels split evenly across
/// the threads ([`part_per_thread`]), each writing its own rows of every
/// plane. Split by channels, no work is done twice, and every value is
/// computed as the whole transform computes it. (Split by planes, each
/// thread computing only its planes' columns of `d B`, every thread still
/// split every input row, and half of the planes took 0.93-0.99x of the
/// whole transform's fastest time (0.76-0.80x of its slowest) on 256@14
/// and 512@7 at batch 1 and 2, half of the channels 0.49x (0.39-0.41x); Zen 2, AVX2, under load, the
/// commit message of this change.) On one thread, on the calling thread
/// with the temporaries `temp`.
fn transform_split(
    t: Transform<'_>,
    v: &mut [f32],
    v_plane: usize,
    temp: &mut [f32],
) -> Result<()> {
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 {
        input_twin(t.cpu, t.x, t.g, (0, t.tile_rows), v, &mut temp[..t.temp_in]);
        return Ok(());
    }
    let c_in = t.g.in_channels;
    let tiles = v_plane / c_in.max(1);
    // Per thread its channels and its rows of each plane.
    type Part<'a> = ((usize, usize), Vec<&'a mut [f32]>);
    let mut parts: Vec<Part<'_>> = (0..threads)
        .map(|p| ((p * c_in / threads, (p + 1) * c_in / threads), Vec::new()))
        .collect();
    for plane in v.chunks_exact_mut(v_plane.max(1)).take(16) {
        let mut rest = plane;
        for ((c0, c1), rows) in &mut parts {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut((*c1 - *c0) * tiles);
            rows.push(mine);
            rest = tail;
        }
    }
    part_per_thread(parts, |_, ((c0, c1), rows)| {
        if c0 == c1 {
            return Ok(());
        }
        let mut it = rows.into_iter();
        let mut planes: Planes<'_> = std::array::from_fn(|_| it.next().unwrap_or_default());
        with_scratch(Slot::Staging, t.staging_len, |buf| {
            let temp = &mut buf[..t.temp_in];
            input_channels_twin(
                t.cpu,
                t.x,
                t.g,
                (0, t.tile_rows),
                (c0, c1),
                &mut planes,
                temp,
            );
            Ok(())
        })
    })
}

/// The weight of one Winograd forward: output channel `o`'s taps for input
/// channel `c` are the 9 floats at `o * o_stride + c * c_stride`, in tap
/// order (`kh * 3 + kw`), or reversed with `flip` (the input gradient's
/// flipped weight, whose channels are also swapped through the strides).
#[derive(Clone, Copy)]
pub(super) struct Weight<'a> {
    pub(super) w: &'a [f32],
    pub(super) o_stride: usize,
    pub(super) c_stride: usize,
    pub(super) flip: bool,
}

impl<'a> Weight<'a> {
    /// A forward's `[C_out, C_in, 3, 3]` weight `w`.
    pub(super) fn forward(w: &'a [f32], c_in: usize) -> Self {
        Self {
            w,
            o_stride: c_in * 9,
            c_stride: 9,
            flip: false,
        }
    }

    /// The weight of the input gradient's flipped convolution, read from the
    /// forward's `[C_out, C_in, 3, 3]` weight `w`: its output channels are the
    /// forward's `C_in`, its input channels the forward's `C_out`, its taps
    /// reversed.
    pub(super) fn flipped(w: &'a [f32], c_in: usize) -> Self {
        Self {
            w,
            o_stride: 9,
            c_stride: c_in * 9,
            flip: true,
        }
    }
}

/// `U = G g Gᵀ` for every (output, input) channel pair into `u` as
/// `[16][kp][C_in]` (rows `C_out..kp` of each `U_k` zero), with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
/// In parallel over output channels, vectorised over input channels in
/// chunks of [`WEIGHT_CHUNK`] gathered onto the stack.
fn transform_weight(
    wt: Weight<'_>,
    c_in: usize,
    c_out: usize,
    kp: usize,
    u: &mut [f32],
    cpu: Option<Avx2Fma>,
) {
    assert_eq!(u.len(), 16 * kp * c_in);
    let out = SharedOut(u.as_mut_ptr());
    let out = &out;
    (0..kp).into_par_iter().with_min_len(8).for_each(|o| {
        // SAFETY: `out` points at `u`, 16 * kp * c_in floats (asserted
        // above), which outlives the loop and which nothing else reads or
        // writes meanwhile; task `o` is the only one given row `o`.
        unsafe { weight_twin(cpu, wt, c_in, c_out, o, (kp, o), out) };
    });
}

/// Output channel `o`'s row of every `U_k` from input channel `from` on
/// ([`weight_twin`]), in chunks of [`WEIGHT_CHUNK`] input channels
/// gathered onto the stack.
///
/// # Safety
/// `out` points at `16 * rows * c_in` floats, and while this runs no one
/// else reads or writes row `at_row` of any of its 16 planes (`at_row <
/// rows`).
#[inline(always)]
unsafe fn weight_row(
    wt: Weight<'_>,
    c_in: usize,
    c_out: usize,
    o: usize,
    (rows, at_row): (usize, usize),
    from: usize,
    out: &SharedOut,
) {
    let plane = rows * c_in;
    for c0 in (from..c_in).step_by(WEIGHT_CHUNK) {
        let n = WEIGHT_CHUNK.min(c_in - c0);
        // SAFETY: the contract above: `out` holds 16 * plane floats,
        // whose row `at_row` of each plane (elements
        // k * plane + at_row * c_in + c0..+n) is this call's alone.
        let mut dst: [&mut [f32]; 16] = std::array::from_fn(|k| unsafe {
            std::slice::from_raw_parts_mut(out.0.add(k * plane + at_row * c_in + c0), n)
        });
        if o >= c_out {
            dst.iter_mut().for_each(|d| d.fill(0.0));
            continue;
        }
        let mut gt = [[0f32; WEIGHT_CHUNK]; 9];
        for j in 0..n {
            let at = o * wt.o_stride + (c0 + j) * wt.c_stride;
            let mut taps = [0f32; 9];
            taps.copy_from_slice(&wt.w[at..at + 9]);
            for (t, row) in gt.iter_mut().enumerate() {
                row[j] = taps[if wt.flip { 8 - t } else { t }];
            }
        }
        // Row r of G g (its three columns), then that row times Gᵀ
        // into U[4r..4r + 4].
        let [d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15] = dst;
        let mut mid = [[0f32; WEIGHT_CHUNK]; 3];
        times_gt([d0, d1, d2, d3], [&gt[0], &gt[1], &gt[2]], n);
        for (col, m) in mid.iter_mut().enumerate() {
            let (a, b, c) = (&gt[col], &gt[3 + col], &gt[6 + col]);
            for j in 0..WEIGHT_CHUNK {
                m[j] = 0.5 * (a[j] + b[j] + c[j]);
            }
        }
        times_gt([d4, d5, d6, d7], [&mid[0], &mid[1], &mid[2]], n);
        for (col, m) in mid.iter_mut().enumerate() {
            let (a, b, c) = (&gt[col], &gt[3 + col], &gt[6 + col]);
            for j in 0..WEIGHT_CHUNK {
                m[j] = 0.5 * (a[j] - b[j] + c[j]);
            }
        }
        times_gt([d8, d9, d10, d11], [&mid[0], &mid[1], &mid[2]], n);
        times_gt([d12, d13, d14, d15], [&gt[6], &gt[7], &gt[8]], n);
    }
}

/// The proof `avx2_twin!`'s fast path needs: an [`Avx2Fma`] exists
/// only where the CPU runs AVX2 + FMA code, so a safe caller cannot reach
/// that code on a CPU without it (a plain `bool` would let one).
mod token {
    /// The CPU runs AVX2 + FMA code. The private field keeps every
    /// constructor but [`Avx2Fma::detect`] out.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2Fma(());

    impl Avx2Fma {
        /// `Some` on the AVX paths (AVX-512F implies AVX2 and FMA there,
        /// `simd::SimdPath::is_supported`) where the CPU reports AVX2 and
        /// FMA; `None` on the portable path, which keeps the baseline build.
        pub(super) fn detect() -> Option<Self> {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::backend::cpu::simd::{active, SimdPath};
                if active() != SimdPath::Portable
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Some(Self(()));
                }
            }
            None
        }
    }
}
use token::Avx2Fma;

/// Defines `$name`, which runs the `#[inline(always)]` function `$body`
/// compiled for AVX2 + FMA when its first argument holds an [`Avx2Fma`]
/// (from [`Avx2Fma::detect`]), else as built: the crate's baseline is
/// SSE2, where the transforms' loops are vectorised only 4 wide. With
/// `unsafe` before the name, `$body` is an `unsafe fn` and so is `$name`,
/// with `$body`'s contract.
macro_rules! avx2_twin {
    ($(#[$m:meta])* unsafe $name:ident = $body:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(cpu: Option<Avx2Fma>, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if cpu.is_some() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn twin($($arg: $ty),*) {
                    // SAFETY: `$body`'s contract, passed on by the caller.
                    unsafe { $body($($arg),*) }
                }
                // SAFETY: an `Avx2Fma` exists only where the CPU runs
                // AVX2 + FMA code (`Avx2Fma::detect`); `$body`'s contract
                // is the caller's.
                return unsafe { twin($($arg),*) };
            }
            let _ = cpu;
            // SAFETY: `$body`'s contract, passed on by the caller.
            unsafe { $body($($arg),*) }
        }
    };
    ($(#[$m:meta])* $name:ident = $body:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name(cpu: Option<Avx2Fma>, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if cpu.is_some() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn twin($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: an `Avx2Fma` exists only where the CPU runs
                // AVX2 + FMA code (`Avx2Fma::detect`).
                return unsafe { twin($($arg),*) };
            }
            let _ = cpu;
            $body($($arg),*)
        }
    };
}

avx2_twin!(
    /// [`transform_input`], for AVX2 where the CPU runs it.
    input_twin = transform_input(
        x: &[f32],
        g: &Conv2dGeometry,
        block: (usize, usize),
        v: &mut [f32],
        temp: &mut [f32]
    )
);

avx2_twin!(
    /// [`transform_input_channels`], for AVX2 where the CPU runs it.
    input_channels_twin = transform_input_channels(
        x: &[f32],
        g: &Conv2dGeometry,
        block: (usize, usize),
        channels: (usize, usize),
        planes: &mut Planes<'_>,
        temp: &mut [f32]
    )
);

avx2_twin!(
    /// [`transform_output`], for AVX2 where the CPU runs it.
    ///
    /// # Safety
    /// [`transform_output`]'s.
    unsafe output_twin = transform_output(
        m: &[f32],
        channels: (usize, usize, usize),
        bias: Option<&[f32]>,
        g: &Conv2dGeometry,
        block: (usize, usize),
        out: &SharedOut,
        temp: &mut [f32]
    )
);

avx2_twin!(
    /// [`weight_row`], for AVX2 where the CPU runs it.
    ///
    /// # Safety
    /// [`weight_row`]'s.
    unsafe weight_rest = weight_row(
        wt: Weight<'_>,
        c_in: usize,
        c_out: usize,
        o: usize,
        rows: (usize, usize),
        from: usize,
        out: &SharedOut
    )
);

/// Output channel `o`'s row of every `U_k` ([`transform_weight`]; zero
/// for a padding row `o >= C_out`), written as row `at_row` of `U` stored
/// as `[16][rows][C_in]` (all of `U`: `rows = kp`, `at_row = o`; a block
/// of its rows: [`forward_by_channels`]): with AVX2, 8 input channels at a
/// time through [`weight_eights_avx2`], the rest through [`weight_rest`].
///
/// # Safety
/// `out` points at `16 * rows * c_in` floats, and while this runs no one
/// else reads or writes row `at_row` of any of its 16 planes (`at_row <
/// rows`).
unsafe fn weight_twin(
    cpu: Option<Avx2Fma>,
    wt: Weight<'_>,
    c_in: usize,
    c_out: usize,
    o: usize,
    rows: (usize, usize),
    out: &SharedOut,
) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cpu.is_some() && o < c_out {
        // SAFETY: an `Avx2Fma` exists only where the CPU runs AVX2 + FMA
        // code (`Avx2Fma::detect`); `out` as this function's contract.
        done = unsafe { weight_eights_avx2(wt, c_in, o, rows, out) };
    }
    // SAFETY: this function's contract.
    unsafe { weight_rest(cpu, wt, c_in, c_out, o, rows, done, out) };
}

/// [`weight_twin`]'s rows for input channels `0..8 * (C_in / 8)`, 8 at a
/// time: each of the 8 channel pairs' 9 taps loaded as one row (taps 0-7,
/// or 1-8 when flipped), an 8x8 transpose in registers (as
/// `weight_grad_taps.rs` `interleave_nine_avx`) and the odd tap beside, so
/// each tap of 8 pairs is one vector; then `G g Gᵀ` on vectors, 16
/// stores. Returns how many input channels it wrote. The scalar gather
/// onto the stack it replaces stored 9 floats one by one per pair and was
/// the weight transform's cost (the transform took 1.5x the GEMMs' samples
/// of 512@7's input gradient at batch 1, `perf`, Zen 2).
///
/// # Safety
/// The CPU runs AVX2 and FMA; `out` as [`weight_twin`]'s, and `o <
/// C_out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_eights_avx2(
    wt: Weight<'_>,
    c_in: usize,
    o: usize,
    (rows, at_row): (usize, usize),
    out: &SharedOut,
) -> usize {
    use std::arch::x86_64::*;
    let whole = c_in - c_in % 8;
    if whole == 0 {
        return 0;
    }
    // Every pair's 9 taps lie inside the weight (a bug in the caller if
    // not: the loads below rely on it): the last pair's end is the largest.
    let last = o * wt.o_stride + (whole - 1) * wt.c_stride + 9;
    assert!(last <= wt.w.len(), "winograd: weight too short");
    let plane = rows * c_in;
    let (load_at, odd_at) = if wt.flip { (1, 0) } else { (0, 8) };
    let half = _mm256_set1_ps(0.5);
    let w = wt.w.as_ptr();
    for c0 in (0..whole).step_by(8) {
        let at: [usize; 8] = std::array::from_fn(|j| o * wt.o_stride + (c0 + j) * wt.c_stride);
        // SAFETY: each pair's 9 taps at[j]..at[j] + 9 lie inside the weight
        // (asserted above: c0 + j < whole); the 8 loaded from load_at and
        // the one at odd_at are among them.
        let (r, odd) = unsafe {
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(w.add(at[j] + load_at)));
            let odd = _mm256_setr_ps(
                *w.add(at[0] + odd_at),
                *w.add(at[1] + odd_at),
                *w.add(at[2] + odd_at),
                *w.add(at[3] + odd_at),
                *w.add(at[4] + odd_at),
                *w.add(at[5] + odd_at),
                *w.add(at[6] + odd_at),
                *w.add(at[7] + odd_at),
            );
            (r, odd)
        };
        // Column t of the 8 loaded rows: loaded tap t of the 8 pairs.
        // SAFETY: the CPU has AVX2 (this function's contract), so AVX.
        let col = unsafe { crate::backend::cpu::simd::transpose8x8_avx(r) };
        // The taps in the forward's order: flipped, tap t is the weight's
        // 8 - t (loaded columns hold taps 1-8, the odd one tap 0).
        let g: [__m256; 9] = if wt.flip {
            [
                col[7], col[6], col[5], col[4], col[3], col[2], col[1], col[0], odd,
            ]
        } else {
            [
                col[0], col[1], col[2], col[3], col[4], col[5], col[6], col[7], odd,
            ]
        };
        // Rows of G g (each 3 columns), as `weight_row`: r0, (r0 + r1 +
        // r2) / 2, (r0 - r1 + r2) / 2, r2; then each row times Gᵀ.
        let sum = |col: usize| {
            _mm256_mul_ps(
                half,
                _mm256_add_ps(_mm256_add_ps(g[col], g[3 + col]), g[6 + col]),
            )
        };
        let dif = |col: usize| {
            _mm256_mul_ps(
                half,
                _mm256_add_ps(_mm256_sub_ps(g[col], g[3 + col]), g[6 + col]),
            )
        };
        let gg = [
            [g[0], g[1], g[2]],
            [sum(0), sum(1), sum(2)],
            [dif(0), dif(1), dif(2)],
            [g[6], g[7], g[8]],
        ];
        for (i, [a, b, c]) in gg.into_iter().enumerate() {
            let u = [
                a,
                _mm256_mul_ps(half, _mm256_add_ps(_mm256_add_ps(a, b), c)),
                _mm256_mul_ps(half, _mm256_add_ps(_mm256_sub_ps(a, b), c)),
                c,
            ];
            for (j, u) in u.into_iter().enumerate() {
                let k = 4 * i + j;
                // SAFETY: row `at_row` of plane k, channels c0..c0 + 8 (<=
                // c_in), lies inside `out`'s 16 * rows * c_in floats and is
                // this call's alone (the contract).
                unsafe { _mm256_storeu_ps(out.0.add(k * plane + at_row * c_in + c0), u) };
            }
        }
    }
    whole
}

/// One row `(a, b, c)` of `G g` times `Gᵀ`: `(a, (a + b + c) / 2,
/// (a - b + c) / 2, c)`, for the first `n` channels of a chunk.
#[inline(always)]
fn times_gt(dst: [&mut [f32]; 4], [a, b, c]: [&[f32; WEIGHT_CHUNK]; 3], n: usize) {
    let [d0, d1, d2, d3] = dst;
    let (d0, d1, d2, d3) = (&mut d0[..n], &mut d1[..n], &mut d2[..n], &mut d3[..n]);
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    for j in 0..n {
        d0[j] = a[j];
        d1[j] = 0.5 * (a[j] + b[j] + c[j]);
        d2[j] = 0.5 * (a[j] - b[j] + c[j]);
        d3[j] = c[j];
    }
}

/// Input channels per chunk of the weight transform (its temporaries are
/// arrays of this length on the stack).
const WEIGHT_CHUNK: usize = 64;

/// `V = Bᵀ d B` of tile rows `r0..r0 + rows` into `v` as
/// `[16][C_in][tiles]`: [`transform_input_channels`] of every channel.
#[inline(always)]
fn transform_input(
    x: &[f32],
    g: &Conv2dGeometry,
    (r0, rows): (usize, usize),
    v: &mut [f32],
    temp: &mut [f32],
) {
    let c_in = g.in_channels;
    let plane = c_in * rows * g.in_w.div_ceil(2);
    let mut it = v[..16 * plane].chunks_exact_mut(plane.max(1));
    let mut planes: Planes<'_> = std::array::from_fn(|_| it.next().unwrap_or_default());
    transform_input_channels(x, g, (r0, rows), (0, c_in), &mut planes, temp);
}

/// The 16 planes `V_k` of [`transform_input_channels`], each the rows
/// (input channels) `c0..c1` of its `[C_in][tiles]` matrix.
type Planes<'a> = [&'a mut [f32]; 16];

/// `V = Bᵀ d B` of input channels `c0..c1` of tile rows `r0..r0 + rows`
/// (row `r` is tile row `r % th` of image `r / th`) into `planes` (plane
/// `k`'s channel `c` at `planes[k][(c - c0) * tiles..]`), tile `i * tw +
/// tx` of the block at column `i * tw + tx`, with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
/// Each input row (of the padded image, zero outside) is split into its
/// even and odd columns, so that the column transform of all tiles of a
/// row reads contiguous slices (vectorised over the row's tiles). Channels
/// are transformed independently: a part of them is bitwise that part of
/// the whole.
#[inline(always)]
fn transform_input_channels(
    x: &[f32],
    g: &Conv2dGeometry,
    (r0, rows): (usize, usize),
    (c0, c1): (usize, usize),
    planes: &mut Planes<'_>,
    temp: &mut [f32],
) {
    let (c_in, h, w) = (g.in_channels, g.in_h, g.in_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = rows * tw;
    let (half, sums) = temp.split_at_mut(2 * (tw + 1));
    // The column sums of patch row j, column `col` of every tile of the
    // block at `sums[(4 j + col) * tiles..][..tiles]`, so that the row
    // transform runs over the whole block at once (long loops, where a
    // row's few tiles, 4 at 7x7, would leave scalar remainders).
    let sums = &mut sums[..16 * tiles];
    for c in c0..c1 {
        for i in 0..rows {
            let r = r0 + i;
            let (n, ty) = (r / th, r % th);
            let plane = &x[(n * c_in + c) * h * w..][..h * w];
            // Row j of the tile's padded 4x4 patch is input row 2 ty - 1 + j;
            // rows 2 and 3 of the previous tile row of the same image are
            // this one's rows 0 and 1: their column sums are copied.
            let first = if i > 0 && ty > 0 {
                for jc in 0..8 {
                    let from = (8 + jc) * tiles + (i - 1) * tw;
                    sums.copy_within(from..from + tw, jc * tiles + i * tw);
                }
                2
            } else {
                0
            };
            for j in first..4 {
                let (even, odd) = half.split_at_mut(tw + 1);
                let row = (2 * ty + j)
                    .checked_sub(1)
                    .filter(|&r| r < h)
                    .map(|r| &plane[r * w..][..w]);
                split_row(row, even, odd);
                // Column transform (d B) of the patch row, for all tiles.
                let s = &mut sums[4 * j * tiles..][..4 * tiles];
                let (s0, rest) = s.split_at_mut(tiles);
                let (s1, rest) = rest.split_at_mut(tiles);
                let (s2, s3) = rest.split_at_mut(tiles);
                let at = i * tw..(i + 1) * tw;
                let (s0, s1) = (&mut s0[at.clone()], &mut s1[at.clone()]);
                let (s2, s3) = (&mut s2[at.clone()], &mut s3[at]);
                let (even, odd) = (&*even, &*odd);
                for t in 0..tw {
                    // The patch row is (even[t], odd[t], even[t + 1], odd[t + 1]).
                    let (d0, d1, d2, d3) = (even[t], odd[t], even[t + 1], odd[t + 1]);
                    s0[t] = d0 - d2;
                    s1[t] = d1 + d2;
                    s2[t] = d2 - d1;
                    s3[t] = d1 - d3;
                }
            }
        }
        // Row transform (Bᵀ ·) of the 4 rows of each column sum, all tiles:
        // plane 4 r + col is row r of Bᵀ applied to column col.
        let at = (c - c0) * tiles;
        let [v0, v1, v2, v3, rest @ ..] = &mut *planes;
        let [v4, v5, v6, v7, rest @ ..] = rest;
        let [v8, v9, v10, v11, v12, v13, v14, v15] = rest;
        let by_col = [
            [v0, v4, v8, v12],
            [v1, v5, v9, v13],
            [v2, v6, v10, v14],
            [v3, v7, v11, v15],
        ];
        for (col, [p0, p1, p2, p3]) in by_col.into_iter().enumerate() {
            let row = |j: usize| &sums[(4 * j + col) * tiles..][..tiles];
            let (a, b, cc, d) = (row(0), row(1), row(2), row(3));
            zip2(&mut p0[at..][..tiles], a, cc, |a, c| a - c);
            zip2(&mut p1[at..][..tiles], b, cc, |b, c| b + c);
            zip2(&mut p2[at..][..tiles], cc, b, |c, b| c - b);
            zip2(&mut p3[at..][..tiles], b, d, |b, d| b - d);
        }
    }
}

/// `dst[t] = f(a[t], b[t])`, vectorised by the compiler.
#[inline(always)]
fn zip2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (&a, &b)) in dst.iter_mut().zip(a.iter().zip(b)) {
        *o = f(a, b);
    }
}

/// `dst[t] = f(a[t], b[t], c[t])`, vectorised by the compiler.
#[inline(always)]
fn zip3(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (o, (&a, (&b, &c))) in dst.iter_mut().zip(a.iter().zip(b.iter().zip(c))) {
        *o = f(a, b, c);
    }
}

/// Splits one row of the zero-padded input (`row`, or zeros for a padding
/// row) into the even and odd columns of its padded form: padded column
/// `p` is input column `p - 1`, so `even[m]` = column `2m - 1`, `odd[m]` =
/// column `2m` (zero outside the row).
#[inline(always)]
fn split_row(row: Option<&[f32]>, even: &mut [f32], odd: &mut [f32]) {
    let Some(row) = row else {
        even.fill(0.0);
        odd.fill(0.0);
        return;
    };
    // (`tw + 1` long each; only the ends are padding.)
    let tw = even.len() - 1;
    even[0] = 0.0;
    odd[tw] = 0.0;
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        odd[tw - 1] = *last;
        even[tw] = 0.0;
    }
    for (m, pair) in pairs.enumerate() {
        odd[m] = pair[0];
        even[m + 1] = pair[1];
    }
}

/// `Y = Aᵀ M A` (+ bias) of output channels `o0..o1` (those below
/// `C_out`) of tile rows `r0..r0 + rows` from `m` (`[16][m_rows][tiles]`,
/// channel `o` at row `o - o0`) into the output through `out`, with
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`; the second row or column of the
/// last tiles is dropped where the output's height or width is odd.
///
/// # Safety
/// `out` points at the `[N, C_out, H, W]` output, and the caller alone
/// writes output rows `2 ty, 2 ty + 1` of channels `o0..o1` of the images
/// of these tile rows while this runs.
#[inline(always)]
unsafe fn transform_output(
    m: &[f32],
    (m_rows, o0, o1): (usize, usize, usize),
    bias: Option<&[f32]>,
    g: &Conv2dGeometry,
    (r0, rows): (usize, usize),
    out: &SharedOut,
    temp: &mut [f32],
) {
    let (c_out, h, w) = (g.out_channels, g.out_h, g.out_w);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = rows * tw;
    let plane_len = m_rows * tiles;
    // Over all the block's tiles at once (one output channel's products
    // are contiguous across its tile rows): long loops, vectorised whole
    // where a row's few tiles (4 at 7x7) would leave scalar remainders.
    let (y0, rest) = temp.split_at_mut(tiles);
    let (y1, rest) = rest.split_at_mut(tiles);
    let (y2, rest) = rest.split_at_mut(tiles);
    let (y3, rest) = rest.split_at_mut(tiles);
    // The column sums: for each of the 4 columns, rows 0 + 1 + 2 and
    // 1 - 2 - 3.
    let sums = &mut rest[..8 * tiles];
    for o in o0..o1.min(c_out) {
        let b = bias.map_or(0.0, |b| b[o]);
        let mk = |k: usize| &m[k * plane_len + (o - o0) * tiles..][..tiles];
        // Aᵀ ·: rows 0 + 1 + 2 and 1 - 2 - 3 of each column.
        for (j, sd) in sums.chunks_exact_mut(2 * tiles).enumerate() {
            let (s, d) = sd.split_at_mut(tiles);
            zip3(s, mk(j), mk(4 + j), mk(8 + j), |a, b, c| a + b + c);
            zip3(d, mk(4 + j), mk(8 + j), mk(12 + j), |a, b, c| a - b - c);
        }
        // · A, plus the bias.
        for (row, (left, right)) in [(&mut *y0, &mut *y1), (&mut *y2, &mut *y3)]
            .into_iter()
            .enumerate()
        {
            let col = |j: usize| &sums[2 * tiles * j + tiles * row..][..tiles];
            zip3(left, col(0), col(1), col(2), |a, bb, c| a + bb + c + b);
            zip3(right, col(1), col(2), col(3), |a, bb, c| a - bb - c + b);
        }
        for i in 0..rows {
            let at = i * tw..(i + 1) * tw;
            let (y0, y1) = (&y0[at.clone()], &y1[at.clone()]);
            let (y2, y3) = (&y2[at.clone()], &y3[at]);
            let r = r0 + i;
            let (n, ty) = (r / th, r % th);
            for (dy, (left, right)) in [(y0, y1), (y2, y3)].into_iter().enumerate() {
                let oh = 2 * ty + dy;
                if oh >= h {
                    break;
                }
                // SAFETY: output row oh of channel o of image n lies inside
                // the output (n < batch, o < C_out, oh < H) and is this
                // caller's alone (the function's contract).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.0.add(((n * c_out + o) * h + oh) * w), w)
                };
                let mut pairs = dst.chunks_exact_mut(2);
                for (pair, (&a, &bb)) in (&mut pairs).zip(left.iter().zip(right.iter())) {
                    pair[0] = a;
                    pair[1] = bb;
                }
                if let [last] = pairs.into_remainder() {
                    *last = left[tw - 1];
                }
            }
        }
    }
}

// (After `avx2_twin!`, which it uses.)
pub(super) mod weight_grad;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::input_grad::flipped_geometry;
    use crate::backend::cpu::conv::test_support::{
        max_err, poison_pooled, poison_scratch, reference,
    };
    use crate::backend::cpu::simd;
    use crate::backend::cpu::test_data::pseudo_random;

    /// Fills the scratch the Winograd path uses with NaN on every thread of
    /// `pool`, and hands the buffer pool a NaN-filled buffer of the
    /// output's `len` for the next call's `y`: a transform that reads
    /// scratch it did not write, or leaves an output element unwritten,
    /// then fails the comparison.
    fn poison(pool: &rayon::ThreadPool, len: usize) {
        poison_scratch(
            pool,
            &[
                Slot::PackedLhs,
                Slot::Columns,
                Slot::SplitColumns,
                Slot::Staging,
            ],
            1 << 16,
        );
        poison_pooled(len);
    }

    /// The forward and flipped input gradient through F(2x2, 3x3) of
    /// `[n, c, h, w]` -> `o` channels, against the float64 loops.
    fn check(n: usize, c: usize, o: usize, h: usize, w: usize, blocks: Blocks, threads: usize) {
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
        let flipped = flipped_geometry(&g).unwrap();
        assert!(applies(&flipped));
        simd::on_every_path(&pool, |path| {
            let what = format!("{n}x{c}x{h}x{w} -> {o}, {threads} threads, {blocks:?}, {path:?}");
            let (y, dx) = pool.install(|| {
                let wt = Weight::forward(&wgt, c);
                poison(&pool, n * o * h * w);
                let y = forward_winograd("test", &x, wt, Some(&b), &g, blocks).unwrap();
                // The flipped, channel-swapped weight of the input gradient.
                let wt = Weight::flipped(&wgt, c);
                poison(&pool, n * c * h * w);
                let dx = forward_winograd("test", &dy, wt, None, &flipped, blocks).unwrap();
                (y, dx)
            });
            let ey = max_err(&y, &r.y);
            let edx = max_err(&dx, &r.dx);
            assert!(ey <= 1e-5, "{what}: y error {ey:e}");
            assert!(edx <= 1e-5, "{what}: dx error {edx:e}");
        });
    }

    #[test]
    fn winograd_matches_direct_loops_on_odd_shapes() {
        // Tiny blocks (one tile row each) and the default sizing; odd and
        // even sizes (partial last tiles), 1x1, 2x2 and 1-wide images,
        // channels not multiples of the kernels' 6- or 8-row tiles.
        // Each split forced: by tile rows, and by output channels with
        // blocks of one row tile and of the default size.
        let tiny = Blocks {
            bytes: 0,
            min_tiles: 1,
            by_channels: Some(false),
            channel_bytes: 0,
        };
        let rows = Blocks {
            by_channels: Some(false),
            ..BLOCKS
        };
        let channels = Blocks {
            by_channels: Some(true),
            ..BLOCKS
        };
        let channels_tiny = Blocks {
            by_channels: Some(true),
            ..tiny
        };
        for (threads, blocks) in [
            (1, rows),
            (2, tiny),
            (3, rows),
            (4, tiny),
            (1, channels),
            (2, channels_tiny),
            (3, channels),
            (1, channels_tiny),
            (2, channels),
            (4, channels_tiny),
            // More threads than planes of V (and than input channels):
            // some pack none (and transform none).
            (17, channels),
        ] {
            for &(n, c, o, h, w) in &[
                (1, 3, 5, 1, 1),
                (2, 4, 7, 2, 2),
                (3, 5, 3, 7, 9),
                (1, 2, 13, 5, 1),
                (2, 17, 10, 6, 5),
                (1, 1, 1, 3, 4),
                (1, 70, 20, 7, 7),
                // Whole groups of 8 input channels for the AVX2 weight
                // transform (its flipped form: 9 = 8 + 1).
                (1, 16, 9, 5, 5),
                // More input channels than the GEMM's depth block (256),
                // several blocks of weight rows.
                (1, 300, 20, 5, 6),
            ] {
                check(n, c, o, h, w, blocks, threads);
            }
        }
    }

    #[test]
    fn the_entry_points_take_winograd_where_it_pays() {
        // 5 images of 8x7 (80 tiles: from `MIN_TILES` up, split by output
        // channels on two threads) and of 8x13 (140 tiles: split by tile
        // rows), so on AVX2 the forward and the input gradient (flipped)
        // run through F(2x2, 3x3) from the crate's entry points, each
        // split once; on the other paths they keep their own, and must
        // agree all the same. 12 channels: two row tiles of AVX2's 6-row
        // micro-kernel, one per thread for the channel split, and a group
        // of 8 input channels plus 4 for the weight transform.
        const C: usize = 12;
        if split_forced().is_some() {
            // Both shapes then run the forced split: the results are still
            // checked, but not that each split runs once.
            eprintln!("SKIPPED (in part): FROSTGRAD_WINOGRAD_SPLIT forces the split");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (w_px, by_channels) in [(7, true), (13, false)] {
            let g =
                Conv2dGeometry::new([5, C, 8, w_px], [C, C, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
            let tiles = 5 * 4 * w_px.div_ceil(2);
            assert_eq!(
                split_by_channels(tiles, 2, C / 6),
                by_channels,
                "{tiles} tiles"
            );
            let x = pseudo_random(5 * C * 8 * w_px, 11);
            let w = pseudo_random(C * C * 9, 12);
            let b = pseudo_random(C, 13);
            let dy = pseudo_random(5 * C * 8 * w_px, 14);
            let r = reference(&g, &x, &w, &b, &dy);
            simd::on_every_path(&pool, |path| {
                let flipped = flipped_geometry(&g).unwrap();
                let want = path == simd::SimdPath::Avx2;
                // The rule as the entry points ask it (the environment's
                // switches unset; `chosen_by_table` tests them).
                for g in [&g, &flipped] {
                    assert_eq!(chosen_by(None, None, path, g), want, "{path:?}");
                }
                let (y, dx) = pool.install(|| {
                    poison(&pool, 5 * C * 8 * w_px);
                    let y = super::super::conv2d(&x, &w, Some(&b), &g).unwrap();
                    poison(&pool, 5 * C * 8 * w_px);
                    (y, super::super::conv2d_input_grad(&dy, &w, &g).unwrap())
                });
                assert!(max_err(&y, &r.y) <= 1e-5, "{path:?} {w_px} y");
                assert!(max_err(&dx, &r.dx) <= 1e-5, "{path:?} {w_px} dx");
            });
        }
    }

    /// `V = Bᵀ d B` of every tile and input channel of `x` (geometry `g`,
    /// padding 1) in float64 from the definition, laid out as
    /// [`transform_input_channels`] writes it: plane `4 i + j` (element
    /// `(i, j)` of a tile's `V`), row `c`, column `(image * th + ty) * tw
    /// + tx`.
    fn input_transform_f64(x: &[f32], g: &Conv2dGeometry) -> Vec<f64> {
        const BT: [[f64; 4]; 4] = [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ];
        let (n, c_in, h, w) = (g.batch, g.in_channels, g.in_h, g.in_w);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = n * th * tw;
        let mut v = vec![0.0; 16 * c_in * tiles];
        for img in 0..n {
            for c in 0..c_in {
                for ty in 0..th {
                    for tx in 0..tw {
                        let d = |a: usize, b: usize| -> f64 {
                            let (r, q) = ((2 * ty + a) as isize - 1, (2 * tx + b) as isize - 1);
                            if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                                0.0
                            } else {
                                x[((img * c_in + c) * h + r as usize) * w + q as usize] as f64
                            }
                        };
                        let col = (img * th + ty) * tw + tx;
                        for i in 0..4 {
                            for j in 0..4 {
                                let sum = (0..16)
                                    .map(|ab| BT[i][ab / 4] * d(ab / 4, ab % 4) * BT[j][ab % 4])
                                    .sum();
                                v[((4 * i + j) * c_in + c) * tiles + col] = sum;
                            }
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn the_split_input_transform_is_bitwise_the_whole_one() {
        // The channel split's input transform (its channels across the
        // threads; 17 threads leave some without channels) against the
        // whole transform on one thread, bit for bit, and both against
        // `Bᵀ d B` in float64 from the definition, on every path; odd
        // sizes (partial last tiles), several images, a 1-wide image.
        // Each side starts from its own NaN, so an element either leaves
        // unwritten fails against the reference.
        let (whole_fill, split_fill) = (f32::from_bits(0x7fc0_beef), f32::from_bits(0x7fc0_cafe));
        for &(n, c, h, w) in &[(1, 5, 7, 9), (2, 17, 6, 5), (3, 4, 5, 1), (1, 40, 14, 14)] {
            let g =
                Conv2dGeometry::new([n, c, h, w], [c, c, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
            let x = pseudo_random(n * c * h * w, (n * 100 + c * 10 + h) as u64);
            let (tile_rows, tw) = (n * h.div_ceil(2), w.div_ceil(2));
            let tiles = tile_rows * tw;
            let temp_in = 2 * (tw + 1) + 16 * tiles;
            let exact = input_transform_f64(&x, &g);
            let near = |what: &str, v: &[f32]| {
                assert_eq!(v.len(), exact.len(), "{what}");
                for (i, (&a, &e)) in v.iter().zip(&exact).enumerate() {
                    assert!(
                        (a as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{what}: element {i} is {a}, want {e}"
                    );
                }
            };
            for threads in [1, 2, 3, 17] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                simd::on_every_path(&pool, |path| {
                    let what = format!("{n}x{c}x{h}x{w}, {threads} threads, {path:?}");
                    let cpu = Avx2Fma::detect();
                    let mut want = vec![whole_fill; 16 * c * tiles];
                    let mut temp = vec![f32::NAN; temp_in];
                    input_twin(cpu, &x, &g, (0, tile_rows), &mut want, &mut temp);
                    near(&format!("{what}, whole"), &want);
                    let got = pool.install(|| {
                        poison_scratch(&pool, &[Slot::Staging], 1 << 12);
                        let mut v = vec![split_fill; 16 * c * tiles];
                        let t = Transform {
                            cpu,
                            x: &x,
                            g: &g,
                            tile_rows,
                            staging_len: temp_in + 3,
                            temp_in,
                        };
                        transform_split(t, &mut v, c * tiles, &mut temp).unwrap();
                        v
                    });
                    near(&format!("{what}, split"), &got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}");
                });
            }
        }
    }

    #[test]
    fn split_chosen_takes_the_test_then_the_environment_then_the_rule() {
        // 16 tiles on 2 threads with 86 row tiles: the rule splits by
        // channels; 784 tiles on 2 threads: by rows.
        for (test, env, tiles, want) in [
            (None, None, 16, true),
            (None, None, 784, false),
            (None, Some(false), 16, false),
            (None, Some(true), 784, true),
            (Some(false), Some(true), 16, false),
            (Some(true), Some(false), 784, true),
            (Some(true), None, 784, true),
            (Some(false), None, 16, false),
        ] {
            assert_eq!(
                split_chosen(test, env, tiles, 2, 86),
                want,
                "test {test:?}, env {env:?}, {tiles} tiles"
            );
        }
    }

    #[test]
    fn split_by_channels_table() {
        // (tiles, threads, row tiles of output channels, split by output
        // channels): below 64 tiles per thread, counted for at least two
        // threads, and a row tile for each thread; ResNet-18's stride-1
        // 3x3 layers at 224x224 have 784, 196, 49 and 16 tiles per image.
        for (tiles, threads, units, want) in [
            (1, 1, 1, true),
            (16, 2, 86, true),
            (49, 1, 43, true),
            (98, 2, 2, true),
            (98, 2, 1, false),
            (127, 1, 1, true),
            (128, 1, 11, false),
            (128, 2, 11, false),
            (191, 3, 3, true),
            (191, 3, 2, false),
            (192, 3, 11, false),
            (196, 2, 22, false),
            (392, 1, 11, false),
            (784, 16, 11, false),
            (784, 16, 16, true),
            (usize::MAX, 0, 0, false),
        ] {
            assert_eq!(
                split_by_channels(tiles, threads, units),
                want,
                "{tiles} tiles, {threads} threads, {units} row tiles"
            );
        }
    }

    #[test]
    fn chosen_by_table() {
        use simd::SimdPath::{Avx2, Avx512, Portable};
        let conv = |n: usize, c: usize, h: usize, w: usize, stride: usize| {
            Conv2dGeometry::new([n, c, h, w], [c, c, 3, 3], (stride, stride), (1, 1), (1, 1))
                .unwrap()
        };
        // (geometry, whether the measured rule takes it on AVX2): 31 and
        // 32 tiles (2 rows of 61 / 63 pixels; 1 x 62 / 1 x 64 images), and
        // ResNet-18's stride-1 3x3 layers at 224x224, batch 1 and 8 (tiles
        // 784, 196, 49, 16 per image; 512@7 at batch 2: 32): the thread
        // count does not matter.
        let mut table = vec![
            (conv(1, 8, 2, 61, 1), false),
            (conv(1, 8, 2, 63, 1), true),
            (conv(1, 8, 1, 62, 1), false),
            (conv(1, 8, 1, 64, 1), true),
            (conv(2, 512, 7, 7, 1), true),
            // Not F(2x2, 3x3)'s shape: never, whatever is forced.
            (conv(8, 64, 56, 56, 2), false),
        ];
        for (c, size, batch1) in [
            (64, 56, true),
            (128, 28, true),
            (256, 14, true),
            (512, 7, false),
        ] {
            table.push((conv(1, c, size, size, 1), batch1));
            table.push((conv(8, c, size, size, 1), true));
        }
        for (g, pays) in &table {
            let fits = applies(g);
            for path in [Avx512, Avx2, Portable] {
                for direct in [None, Some(false), Some(true)] {
                    let what = format!("{g:?} {path:?} direct {direct:?}");
                    let auto = *pays && path == Avx2 && direct != Some(true);
                    assert_eq!(chosen_by(None, direct, path, g), auto, "{what}");
                    assert_eq!(chosen_by(Some(true), direct, path, g), fits, "{what}");
                    assert!(!chosen_by(Some(false), direct, path, g), "{what}");
                }
            }
        }
    }

    /// `y[o]` (every pixel) of the 3x3, stride-1, padding-1 convolution of
    /// the `[c, size, size]` image `x` for output channel `o`, whose tap `t`
    /// of input channel `i` is `wt(o, i, t)`, in float64.
    fn reference_channel(
        x: &[f32],
        c: usize,
        size: usize,
        o: usize,
        wt: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut y = vec![0f64; size * size];
        for i in 0..c {
            let plane = &x[i * size * size..][..size * size];
            for t in 0..9 {
                let wv = f64::from(wt(o, i, t));
                let (kh, kw) = (t / 3, t % 3);
                for oh in 0..size {
                    let Some(ih) = (oh + kh).checked_sub(1).filter(|&r| r < size) else {
                        continue;
                    };
                    for ow in 0..size {
                        if let Some(iw) = (ow + kw).checked_sub(1).filter(|&q| q < size) {
                            y[oh * size + ow] += wv * f64::from(plane[ih * size + iw]);
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn winograd_error_is_comparable_to_the_direct_paths() {
        // ResNet-18's stride-1 3x3 layers at 224x224 input, one image,
        // with realistic magnitudes: post-ReLU-like inputs and gradients
        // (|U(-1, 1)| x 1.7) and Kaiming-uniform weights (U(+-sqrt(6 /
        // fan_in))). F(2x2, 3x3)'s largest error against float64 next to
        // the direct / im2col path's on the same case, forward and input
        // gradient (`cargo test -- --nocapture` prints them); checked on
        // every 8th channel, to keep the float64 loops short. Measured
        // ratios (review of c4de002, Zen 2, AVX2): 0.56-1.99x forward,
        // 0.65-1.66x input gradient; the bound is 2.5x.
        use super::super::forward::{forward_skipping, Skip};
        use super::super::input_grad::input_grad_flipped_skipping;
        use super::super::FORWARD_LIMITS;
        const STEP: usize = 8;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (c, size) in [(64, 56), (256, 14), (512, 7)] {
            let g = Conv2dGeometry::new([1, c, size, size], [c, c, 3, 3], (1, 1), (1, 1), (1, 1))
                .unwrap();
            let flipped = flipped_geometry(&g).unwrap();
            let relu_like = |seed| -> Vec<f32> {
                let v = pseudo_random(c * size * size, seed);
                v.into_iter().map(|v| v.abs() * 1.7).collect()
            };
            let (x, dy) = (relu_like(31), relu_like(34));
            let bound = (6.0 / (c * 9) as f32).sqrt();
            let w: Vec<f32> = pseudo_random(c * c * 9, 32)
                .into_iter()
                .map(|v| v * bound)
                .collect();
            let b: Vec<f32> = pseudo_random(c, 33).into_iter().map(|v| v * 0.1).collect();
            let pixels = size * size;
            let sampled: Vec<usize> = (0..c).step_by(STEP).collect();
            let want_y: Vec<f64> = sampled
                .iter()
                .flat_map(|&o| {
                    let y = reference_channel(&x, c, size, o, |o, i, t| w[(o * c + i) * 9 + t]);
                    let bias = f64::from(b[o]);
                    y.into_iter().map(move |v| v + bias)
                })
                .collect();
            // dx is the forward of dy with the flipped, channel-swapped weight.
            let want_dx: Vec<f64> = sampled
                .iter()
                .flat_map(|&i| {
                    reference_channel(&dy, c, size, i, |i, o, t| w[(o * c + i) * 9 + 8 - t])
                })
                .collect();
            let pick = |v: &[f32]| -> Vec<f32> {
                sampled
                    .iter()
                    .flat_map(|&o| v[o * pixels..][..pixels].iter().copied())
                    .collect()
            };
            simd::on_every_path(&pool, |path| {
                let [wy, oy, wdx, odx] = pool.install(|| {
                    let wt = Weight::forward(&w, c);
                    let wy = forward_winograd("test", &x, wt, Some(&b), &g, BLOCKS).unwrap();
                    let wt = Weight::flipped(&w, c);
                    let wdx = forward_winograd("test", &dy, wt, None, &flipped, BLOCKS).unwrap();
                    // The direct convolution (im2col on the portable path).
                    let limits = FORWARD_LIMITS;
                    let oy = forward_skipping(&x, &w, Some(&b), &g, limits, Skip::Auto, Some(true))
                        .unwrap();
                    let odx = input_grad_flipped_skipping(
                        &dy,
                        &w,
                        &g,
                        &flipped,
                        limits,
                        Skip::Auto,
                        Some(true),
                        None,
                    )
                    .unwrap();
                    [wy, oy, wdx, odx].map(|v| pick(&v))
                });
                for (what, win, other, want) in [("y", wy, oy, &want_y), ("dx", wdx, odx, &want_dx)]
                {
                    let (ew, eo) = (max_err(&win, want), max_err(&other, want));
                    println!(
                        "{c}@{size} {path:?} {what}: winograd {ew:.2e}, direct/im2col {eo:.2e}, \
                         ratio {:.2}",
                        ew / eo
                    );
                    assert!(
                        ew <= 2.5 * eo + 1e-7,
                        "{c}@{size} {path:?} {what}: {ew:e} vs {eo:e}"
                    );
                }
            });
        }
    }
}
