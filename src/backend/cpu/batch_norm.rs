//! Batch normalisation over `[N, C, S]` (channel `c` of image `n` is the
//! contiguous segment `x[(n*C + c)*S ..][..S]`).
//!
//! Per-channel statistics are reduced over `N*S` values with f64
//! accumulators in one pass over shifted values (see
//! [`channel_mean_var`]), so the variance stays accurate when the mean is
//! large relative to the spread.
//! Reductions run one channel per task; the elementwise passes run over
//! the `N*C` segments.
//!
//! Batch norm followed by ReLU is fused here (`relu` / `relu_output`
//! arguments): the forward clamps in the normalising pass, and the backward
//! masks dy by `output > 0` as it reads it, so neither direction makes a
//! separate pass over the activation. The mask is exactly
//! [`super::elementwise::relu_backward`]'s.

use std::cell::Cell;

use rayon::prelude::*;

use super::buffer_pool;
use super::elementwise::{min_len, note_task};
use super::simd::{active, SimdPath};
use crate::backend::BatchNormGeometry;
use crate::error::Result;

/// Segments per parallel task in the elementwise passes: small segments
/// (S = 49 in ResNet's last stage) are grouped so a task has real work.
fn segments_per_task(g: &BatchNormGeometry) -> usize {
    (1 << 12) / g.spatial.max(1) + 1
}

/// Calls `f(segment)` for each of channel `c`'s `N` segments of `x`.
fn channel_segments<'a>(
    x: &'a [f32],
    g: &BatchNormGeometry,
    c: usize,
) -> impl Iterator<Item = &'a [f32]> {
    let (cs, s) = (g.channels * g.spatial, g.spatial);
    (0..g.batch).map(move |n| &x[n * cs + c * s..n * cs + (c + 1) * s])
}

/// An output that per-channel tasks write in parallel, each only its own
/// channel's `N` segments (which are interleaved with the other channels',
/// so no safe split of the slice hands them out without building a list
/// of `N*C` slices per call).
#[derive(Clone, Copy)]
struct ChannelWriter {
    ptr: *mut f32,
}

// SAFETY: a ChannelWriter only hands out memory through `segments`, whose
// callers (one task per channel) touch disjoint elements.
unsafe impl Send for ChannelWriter {}
// SAFETY: as above.
unsafe impl Sync for ChannelWriter {}

impl ChannelWriter {
    /// `out` must hold exactly `N*C*S` elements (the callers allocate it so).
    fn new(out: &mut [f32], g: &BatchNormGeometry) -> Result<Self> {
        if out.len() != g.numel() {
            return Err(crate::error::Error::invalid(
                "batch_norm",
                format!("output of {} elements for {} values", out.len(), g.numel()),
            ));
        }
        Ok(Self {
            ptr: out.as_mut_ptr(),
        })
    }

    /// Channels `c0..c0 + count`: per image, their `count * S` consecutive
    /// elements.
    ///
    /// # Safety
    /// `c0 + count <= C`; the buffer given to [`Self::new`] outlives the
    /// slices and is not otherwise accessed while they live; no two live
    /// calls share a channel.
    unsafe fn blocks<'a>(
        self,
        g: &BatchNormGeometry,
        (c0, count): (usize, usize),
    ) -> impl Iterator<Item = &'a mut [f32]> + 'a {
        let (cs, s) = (g.channels * g.spatial, g.spatial);
        (0..g.batch).map(move |n| {
            // SAFETY: `n*C*S + (c0 + count)*S <= N*C*S` elements, checked
            // in `new`; the caller guarantees exclusive use of the channels.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(n * cs + c0 * s), count * s) }
        })
    }
}

/// Channels per parallel task in the per-channel passes: as many
/// consecutive channels as make about [`BLOCK_VALUES`] values of each
/// input over all `N` images (1 for planes of that size and more), at most
/// [`MAX_BLOCK_CHANNELS`], and few enough that there are at least four
/// tasks per thread to balance.
///
/// Why blocks: one channel at a time, a 4x4 channel is 16 values in each
/// of `N` images 32 KiB apart: the reductions waited on those scattered
/// loads and on their own accumulators, a chain through memory from one
/// 16-value segment to the next (`perf annotate`), 2.6x PyTorch's time for
/// the backward at batch 32. A block's sums also run as one loop compiled
/// for the SIMD path ([`with_sum_features`]) instead of one dispatched call
/// per segment, whose entry, accumulator loads and scalar tail were a
/// large part of a 14x14 or 7x7 segment's cost.
///
/// Why this size: blocks of about 256 values per image (what this was
/// before) left ResNet's 14x14 planes at one channel per task; blocks of
/// 2^14 values over the batch took 0.82x the CPU time of that for the
/// backward at 256x14x14, 0.89x at 512x7x7, 0.97x at 128x28x28 (batch 8 x
/// 224), 0.88x at 128x14x14 (batch 32 x 112) and 0.67x at 256x14x14
/// (batch 1), the forward alike, and the same elsewhere within the noise
/// (Zen 2, one thread, alternating runs of `examples/layer_timing`; commit
/// message). A block then is 64 KiB of each input and of the output, so
/// its inputs are still in L2 when the pass that writes `dx` reads them
/// again.
///
/// Within a block the images are the outer loop and the channels the inner
/// one, so each channel's segments are still summed in image order: the
/// same operations in the same order as one channel at a time, so the same
/// results whatever the split.
fn channels_per_task(g: &BatchNormGeometry) -> usize {
    let per_block = BLOCK_VALUES / (g.spatial.max(1) * g.batch.max(1));
    let spread = g.channels / (4 * rayon::current_num_threads().max(1));
    per_block.min(spread).clamp(1, MAX_BLOCK_CHANNELS)
}

/// Values of each input a block of channels spans over the batch (see
/// [`channels_per_task`]).
const BLOCK_VALUES: usize = 1 << 14;

/// The most channels [`channels_per_task`] puts in a block (their
/// accumulators live on the stack).
const MAX_BLOCK_CHANNELS: usize = 32;

/// Channel `c`'s segment of image `n`.
fn segment<'a>(x: &'a [f32], g: &BatchNormGeometry, n: usize, c: usize) -> &'a [f32] {
    let s = g.spatial;
    &x[(n * g.channels + c) * s..][..s]
}

/// Independent f64 accumulators per reduction: a single running f64 sum
/// is one dependent add per element (latency-bound at a few GB/s); eight
/// lanes let the adds pipeline and vectorise. Lanes are combined at the
/// end, a pairwise-style order that is at least as accurate.
const LANES: usize = 8;

/// Adds `Σ f(a[i], b[i], c[i])` into `acc`, element `i` into lane
/// `i % LANES` (two sums per element). The slices are walked in
/// fixed-size arrays, so the lane loop has no bounds checks and
/// vectorises; a reduction reading fewer than three inputs passes one
/// twice.
#[inline(always)]
fn lane_sums(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    acc: &mut [[f64; LANES]; 2],
    f: impl Fn(f32, f32, f32) -> (f64, f64),
) {
    let (a_full, a_rest) = a.as_chunks::<LANES>();
    let (b_full, b_rest) = b.as_chunks::<LANES>();
    let (c_full, c_rest) = c.as_chunks::<LANES>();
    // The sums in locals through the main loop, indexed only by the
    // unrolled lane number, so that they live in registers wherever this is
    // inlined. Kept in `acc` itself, they were loaded, added and stored back
    // every 8 values in some builds (a chain through memory: `perf
    // annotate`, 1.1-1.8x the CPU time of the same loop with the sums in
    // registers, depending on how the compiler split the crate; Zen 2).
    let [mut s0, mut s1] = *acc;
    for ((a, b), c) in a_full.iter().zip(b_full).zip(c_full) {
        for l in 0..LANES {
            let (u, v) = f(a[l], b[l], c[l]);
            s0[l] += u;
            s1[l] += v;
        }
    }
    *acc = [s0, s1];
    for (l, ((&a, &b), &c)) in a_rest.iter().zip(b_rest).zip(c_rest).enumerate() {
        let (u, v) = f(a, b, c);
        acc[0][l] += u;
        acc[1][l] += v;
    }
}

/// [`lane_sums`] compiled for `path`, the SIMD path the CPU kernels run
/// ([`super::simd::active`], so `FROSTGRAD_SIMD` and the tests that force a
/// path cover it), which each call of [`train`] and [`backward`] looks up
/// once: f32 -> f64 conversion and f64 arithmetic are 2 lanes
/// wide at the baseline target, 4 with AVX2 and 8 with AVX-512F, which is
/// what keeps f64 accumulation at memory speed. Same operations in the same
/// order on every path, so the same results. (Compiling the elementwise
/// passes this way too measured 1.1-1.7x slower: only the reductions. On
/// Zen 2 the backward's `dx` pass so compiled measured 1.04-1.11x slower
/// again.)
#[inline(always)]
fn lane_sums_dispatch(
    path: SimdPath,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    acc: &mut [[f64; LANES]; 2],
    f: impl Fn(f32, f32, f32) -> (f64, f64),
) {
    #[cfg(target_arch = "x86_64")]
    match path {
        // SAFETY: `path` came from `active()`, which only returns a path
        // the CPU supports (`SimdPath::is_supported`), and each function
        // enables exactly that path's features.
        SimdPath::Avx512 => return unsafe { lane_sums_avx512(a, b, c, acc, f) },
        // SAFETY: as above.
        SimdPath::Avx2 => return unsafe { lane_sums_avx2(a, b, c, acc, f) },
        SimdPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    lane_sums(a, b, c, acc, f)
}

/// Runs `body` compiled for `path`, as [`lane_sums_dispatch`] does for
/// one call of [`lane_sums`]: for a block of small planes' sums
/// ([`channels_per_task`] > 1), whose `body` calls [`lane_sums`] once per
/// segment. Dispatched per segment, the path check and the call were a
/// tenth of the 4x4 backward's time (`perf`). Not for large planes (one
/// channel per task): there the whole loop compiled this way measured
/// 1.05-1.6x slower than one dispatched call per segment.
#[inline(always)]
fn with_sum_features<R>(path: SimdPath, body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match path {
        // SAFETY: `path` came from `active()`, which only returns a path
        // the CPU supports (`SimdPath::is_supported`), and each function
        // enables exactly that path's features.
        SimdPath::Avx512 => return unsafe { run_avx512(body) },
        // SAFETY: as above.
        SimdPath::Avx2 => return unsafe { run_avx2(body) },
        SimdPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    body()
}

/// Runs `$segments!(mode)`, a block of channels' loop over its segments
/// that sums each with `lane_sums_as!(mode, path, a, b, c, acc, f)` (see
/// [`channels_per_task`]): as one loop compiled for `$path` when the block
/// has several channels (`$blocked`), with one dispatched call per segment
/// otherwise. The one place both reductions ([`block_mean_var`], the
/// backward's sums) choose between the two.
macro_rules! block_lane_sums {
    ($path:expr, $blocked:expr, $segments:ident) => {
        if $blocked {
            with_sum_features(
                $path,
                #[inline(always)]
                || $segments!(inline),
            );
        } else {
            $segments!(dispatch);
        }
    };
}

/// One segment's [`lane_sums`]: `inline` in a loop [`with_sum_features`]
/// compiles, `dispatch` through [`lane_sums_dispatch`] (which takes the
/// path as well).
macro_rules! lane_sums_as {
    (inline, $path:expr, $($arg:expr),*) => {
        lane_sums($($arg),*)
    };
    (dispatch, $path:expr, $($arg:expr),*) => {
        lane_sums_dispatch($path, $($arg),*)
    };
}

/// `body` inside a function compiled with `$features`.
macro_rules! run_with {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
    };
}
run_with!(run_avx512, "avx512f");
run_with!(run_avx2, "avx2,fma");

/// [`lane_sums`] inside a function compiled with `$features`.
macro_rules! lane_sums_with {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            a: &[f32],
            b: &[f32],
            c: &[f32],
            acc: &mut [[f64; LANES]; 2],
            f: impl Fn(f32, f32, f32) -> (f64, f64),
        ) {
            lane_sums(a, b, c, acc, f)
        }
    };
}
lane_sums_with!(lane_sums_avx512, "avx512f");
lane_sums_with!(lane_sums_avx2, "avx2,fma");

fn combine_lanes(acc: &[[f64; LANES]; 2]) -> (f64, f64) {
    (acc[0].iter().sum(), acc[1].iter().sum())
}

/// Per-channel sum of `x`, accumulated in f64.
fn channel_sum_f64(x: &[f32], g: &BatchNormGeometry, c: usize) -> f64 {
    channel_segments(x, g, c)
        .map(|seg| seg.iter().map(|&v| f64::from(v)).sum::<f64>())
        .sum()
}

/// Sums of `[N, C, S]` over `N` and `S`, giving `[C]` (a conv bias gradient).
pub(super) fn channel_sums(x: &[f32], g: &BatchNormGeometry) -> Result<Vec<f32>> {
    Ok((0..g.channels)
        .into_par_iter()
        .with_min_len(min_len(x.len(), 1))
        .map(|c| {
            note_task();
            channel_sum_f64(x, g, c) as f32
        })
        .collect())
}

/// ReLU as [`super::elementwise::relu`] computes it (NaN propagates).
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

/// dy masked by the fused ReLU's output when `MASK` (as
/// [`super::elementwise::relu_backward`]: zero where `y <= 0`); dy itself
/// otherwise, where `y` is a dummy the compiler drops.
#[inline(always)]
fn masked<const MASK: bool>(dy: f32, y: f32) -> f32 {
    if MASK && y <= 0.0 {
        0.0
    } else {
        dy
    }
}

/// `o = x * a + b`, clamped at zero when `relu_after`.
#[inline(always)]
fn affine_segment(o: &mut [f32], x: &[f32], a: f32, b: f32, relu_after: bool) {
    // Not `mul_add`: without a compile-time `fma` target feature it is a
    // libm call per element (1.5% of a forward pass).
    if relu_after {
        o.iter_mut().zip(x).for_each(|(o, &v)| *o = relu(v * a + b));
    } else {
        o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * a + b);
    }
}

/// `out = x * scale[c] + shift[c]` over every segment, clamped at zero when
/// `relu` (the fused ReLU).
fn affine_per_channel(
    x: &[f32],
    g: &BatchNormGeometry,
    scale: &[f32],
    shift: &[f32],
    relu_after: bool,
) -> Result<Vec<f32>> {
    // Every element is written below.
    let mut out = buffer_pool::uninit("batch_norm", x.len())?;
    if g.spatial == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(g.spatial)
        .zip(x.par_chunks(g.spatial))
        .with_min_len(min_len(x.len(), segments_per_task(g)))
        .enumerate()
        .for_each(|(i, (o, x))| {
            note_task();
            let c = i % g.channels;
            affine_segment(o, x, scale[c], shift[c], relu_after);
        });
    Ok(out)
}

/// Channel `c`'s mean and biased variance in one pass over `x`.
///
/// The values are shifted by the channel's first value `K` and summed in
/// f64: `mean = K + Σ(x-K)/M`, `var = Σ(x-K)²/M - (Σ(x-K)/M)²`. With `K`
/// a sample of the channel, `|mean - K|` is a few standard deviations, so
/// the subtraction loses only a few bits of f64's 53 — far below f32
/// precision — where a two-pass mean-then-squares reads `x` twice.
fn channel_mean_var(path: SimdPath, x: &[f32], g: &BatchNormGeometry, c: usize) -> (f64, f64) {
    let count = g.count() as f64;
    let shift = channel_segments(x, g, c)
        .find_map(|seg| seg.first())
        .map_or(0.0, |&v| f64::from(v));
    let mut acc = [[0f64; LANES]; 2];
    for seg in channel_segments(x, g, c) {
        lane_sums_dispatch(path, seg, seg, seg, &mut acc, |v, _, _| {
            let d = f64::from(v) - shift;
            (d, d * d)
        });
    }
    let (s1, s2) = combine_lanes(&acc);
    let mean_shifted = s1 / count;
    let var = (s2 / count - mean_shifted * mean_shifted).max(0.0);
    (shift + mean_shifted, var)
}

/// [`channel_mean_var`] of channels `c0..c0 + out.len()` (at most
/// [`MAX_BLOCK_CHANNELS`], `S > 0`) into `out`, the images the outer loop
/// (see [`channels_per_task`]): the same sums in the same order. `blocked`:
/// the call's blocks have several channels ([`block_lane_sums`]).
fn block_mean_var(
    path: SimdPath,
    blocked: bool,
    x: &[f32],
    g: &BatchNormGeometry,
    c0: usize,
    out: &mut [(f64, f64)],
) {
    let count = g.count() as f64;
    let channels = out.len();
    let mut acc = [[[0f64; LANES]; 2]; MAX_BLOCK_CHANNELS];
    let mut shift = [0f64; MAX_BLOCK_CHANNELS];
    if g.batch == 0 || g.spatial == 0 {
        for (i, o) in out.iter_mut().enumerate() {
            *o = channel_mean_var(path, x, g, c0 + i);
        }
        return;
    }
    for (i, k) in shift.iter_mut().enumerate().take(channels) {
        *k = f64::from(segment(x, g, 0, c0 + i)[0]);
    }
    macro_rules! sums {
        ($sum:ident) => {
            for n in 0..g.batch {
                for i in 0..channels {
                    let seg = segment(x, g, n, c0 + i);
                    let k = shift[i];
                    lane_sums_as!($sum, path, seg, seg, seg, &mut acc[i], |v, _, _| {
                        let d = f64::from(v) - k;
                        (d, d * d)
                    });
                }
            }
        };
    }
    block_lane_sums!(path, blocked, sums);
    for (i, o) in out.iter_mut().enumerate() {
        let (s1, s2) = combine_lanes(&acc[i]);
        let mean_shifted = s1 / count;
        let var = (s2 / count - mean_shifted * mean_shifted).max(0.0);
        *o = (shift[i] + mean_shifted, var);
    }
}

/// γ and β per channel, defaulting to 1 and 0.
fn gamma_beta(weight: Option<&[f32]>, bias: Option<&[f32]>, c: usize) -> (f32, f32) {
    (weight.map_or(1.0, |w| w[c]), bias.map_or(0.0, |b| b[c]))
}

/// The training forward's output and batch statistics.
#[derive(Debug)]
pub(super) struct TrainOutput {
    pub output: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// Training forward: batch mean and biased variance; ReLU on the output
/// when `relu_after`.
pub(super) fn train(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    g: &BatchNormGeometry,
    eps: f32,
    relu_after: bool,
) -> Result<TrainOutput> {
    // Per channel: statistics, then that channel's output while its input
    // is still in this core's cache (a channel is N*S*4 bytes, 392 KiB at
    // ResNet's largest), so the input comes from memory once, not twice.
    // The coefficients are recomputed below, identically, for the results.
    let coefficients = |c: usize, m: f64, v: f64| {
        let is = 1.0 / (v + f64::from(eps)).sqrt();
        let (gamma, beta) = gamma_beta(weight, bias, c);
        // y = (x - mean) * invstd * γ + β = x * a + (β - mean * a)
        let a = is * f64::from(gamma);
        (is, a as f32, (f64::from(beta) - m * a) as f32)
    };
    // Every element is written below.
    let mut output = buffer_pool::uninit("batch_norm", x.len())?;
    // (Reused per thread, like the backward's sums.)
    let mut stats = CHANNEL_SUMS.with(Cell::take);
    // The SIMD path, looked up once per call.
    let path = active();
    if g.spatial == 0 {
        stats.clear();
        stats.extend((0..g.channels).map(|c| channel_mean_var(path, x, g, c)));
    } else {
        let writer = ChannelWriter::new(&mut output, g)?;
        let per_task = channels_per_task(g);
        let blocked = per_task > 1;
        stats.clear();
        stats.resize(g.channels, (0.0, 0.0));
        stats
            .par_chunks_mut(per_task)
            .with_min_len(min_len(x.len(), 1))
            .enumerate()
            .for_each(|(b, stats)| {
                note_task();
                let c0 = b * per_task;
                block_mean_var(path, blocked, x, g, c0, stats);
                let mut ab = [(0f32, 0f32); MAX_BLOCK_CHANNELS];
                for (i, &(m, v)) in stats.iter().enumerate() {
                    let (_, a, b) = coefficients(c0 + i, m, v);
                    ab[i] = (a, b);
                }
                // SAFETY: one task per block of channels `c0..c0 +
                // stats.len() <= C`; `output` is not touched until every
                // task has finished (`for_each`).
                let out = unsafe { writer.blocks(g, (c0, stats.len())) };
                for (n, o) in out.enumerate() {
                    let x = &x[(n * g.channels + c0) * g.spatial..][..o.len()];
                    for ((o, x), &(a, b)) in o
                        .chunks_exact_mut(g.spatial)
                        .zip(x.chunks_exact(g.spatial))
                        .zip(&ab)
                    {
                        affine_segment(o, x, a, b, relu_after);
                    }
                }
            });
    }
    // From the pool, like every tensor's storage: these small buffers
    // churned through glibc were what still faulted in steady-state steps
    // (BENCHMARKS.md, issue 9 item 25).
    let mut mean = buffer_pool::uninit("batch_norm", g.channels)?;
    let mut var = buffer_pool::uninit("batch_norm", g.channels)?;
    let mut invstd = buffer_pool::uninit("batch_norm", g.channels)?;
    for (c, &(m, v)) in stats.iter().enumerate() {
        mean[c] = m as f32;
        var[c] = v as f32;
        invstd[c] = coefficients(c, m, v).0 as f32;
    }
    CHANNEL_SUMS.with(|cell| cell.set(stats));
    Ok(TrainOutput {
        output,
        mean,
        var,
        invstd,
    })
}

/// Eval forward with the running statistics; ReLU on the output when
/// `relu_after`.
#[allow(clippy::too_many_arguments)]
pub(super) fn eval(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    running_mean: &[f32],
    running_var: &[f32],
    g: &BatchNormGeometry,
    eps: f32,
    relu_after: bool,
) -> Result<Vec<f32>> {
    let (scale, shift): (Vec<f32>, Vec<f32>) = (0..g.channels)
        .map(|c| {
            let (gamma, beta) = gamma_beta(weight, bias, c);
            let is = 1.0 / (f64::from(running_var[c]) + f64::from(eps)).sqrt();
            let a = is * f64::from(gamma);
            (
                a as f32,
                (f64::from(beta) - f64::from(running_mean[c]) * a) as f32,
            )
        })
        .unzip();
    affine_per_channel(x, g, &scale, &shift, relu_after)
}

/// Backward; see [`crate::backend::BackendStorage::batch_norm_backward`].
///
/// Per channel, with `x̂ = (x - mean) * invstd` and `M = N*S`:
/// `dβ = Σ dy`, `dγ = Σ dy·x̂`, and
/// `dx = γ·invstd/M · (M·dy - Σdy - x̂·Σ(dy·x̂))` in training, where the
/// statistics depend on `x`; `dx = γ·invstd·dy` in eval, where they are
/// constants. `input` is read only when `dγ` or the training `dx` is
/// needed; it is an error to ask for those without it.
///
/// With `relu_output` (the fused batch-norm + ReLU forward's output), `dy`
/// is the gradient of the ReLU's output and every read of it is masked by
/// `output > 0`: the result equals running this on
/// `relu_backward(dy, output)` without materialising that tensor.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dy: &[f32],
    relu_output: Option<&[f32]>,
    input: Option<&[f32]>,
    weight: Option<&[f32]>,
    mean: &[f32],
    invstd: &[f32],
    g: &BatchNormGeometry,
    training: bool,
    needs: [bool; 3],
) -> Result<[Option<Vec<f32>>; 3]> {
    // `check::batch_norm_backward` made sure the input is given whenever a
    // requested gradient reads it; otherwise `dy` stands in, unread.
    let input = input.unwrap_or(dy);
    match relu_output {
        Some(y) => backward_impl::<true>(dy, y, input, weight, mean, invstd, g, training, needs),
        // `dy` doubles as the (unread) mask.
        None => backward_impl::<false>(dy, dy, input, weight, mean, invstd, g, training, needs),
    }
}

/// [`backward`] after validation; `MASK` says whether `y` masks `dy`.
#[allow(clippy::too_many_arguments)]
fn backward_impl<const MASK: bool>(
    dy: &[f32],
    y: &[f32],
    input: &[f32],
    weight: Option<&[f32]>,
    mean: &[f32],
    invstd: &[f32],
    g: &BatchNormGeometry,
    training: bool,
    needs: [bool; 3],
) -> Result<[Option<Vec<f32>>; 3]> {
    let [need_dx, need_dw, need_db] = needs;
    let reads_input = need_dw || (need_dx && training);
    let needs_sum_dy = need_db || (need_dx && training);
    // The SIMD path and the split, decided once per call.
    let path = active();
    let per_task = channels_per_task(g);
    let blocked = per_task > 1;
    // Σdy (f64) per channel, and Σ dy·(x - mean) when x̂ is involved, in
    // one pass over dy (and x): of channels `c0..c0 + out.len()`, the
    // images the outer loop ([`channels_per_task`]), each channel's
    // segments in image order.
    let block_sums = |c0: usize, out: &mut [(f64, f64)]| {
        let mut acc = [[[0f64; LANES]; 2]; MAX_BLOCK_CHANNELS];
        macro_rules! sums {
            ($sum:ident) => {
                for n in 0..g.batch {
                    for (i, acc) in acc.iter_mut().enumerate().take(out.len()) {
                        let c = c0 + i;
                        let (d, y) = (segment(dy, g, n, c), segment(y, g, n, c));
                        if reads_input {
                            let m = f64::from(mean[c]);
                            let x = segment(input, g, n, c);
                            lane_sums_as!($sum, path, d, y, x, acc, |d, y, x| {
                                let d = f64::from(masked::<MASK>(d, y));
                                (d, d * (f64::from(x) - m))
                            });
                        } else if needs_sum_dy {
                            lane_sums_as!($sum, path, d, y, d, acc, |d, y, _| {
                                (f64::from(masked::<MASK>(d, y)), 0.0)
                            });
                        }
                    }
                }
            };
        }
        block_lane_sums!(path, blocked, sums);
        for (o, acc) in out.iter_mut().zip(&acc) {
            *o = combine_lanes(acc);
        }
    };
    let m = g.count() as f64;
    // Per channel (PyTorch's CPU kernel uses the same grouping):
    // dx = (dy - Σdy/M - (x - mean)·k) · γ·invstd with k = invstd²·Σ(dy·(x-mean))/M;
    // in eval, dx = dy · γ·invstd.
    let dx_coefficients = |c: usize, (sd, sdx): (f64, f64)| {
        let is = f64::from(invstd[c]);
        let scale = f64::from(weight.map_or(1.0, |w| w[c])) * is;
        let (mean_dy, k) = if training {
            (sd / m, is * is * sdx / m)
        } else {
            (0.0, 0.0)
        };
        (scale as f32, mean_dy as f32, k as f32, mean[c])
    };
    // With dx wanted, each channel's sums and then its dx in one task, while
    // its dy, y and x are still in this core's cache: they come from memory
    // once, not twice. Small planes in blocks of channels
    // ([`channels_per_task`]).
    let (sums, dx) = if need_dx && g.spatial > 0 && g.batch > 0 {
        // Every element is written below.
        let mut dx = buffer_pool::uninit("batch_norm_backward", dy.len())?;
        let writer = ChannelWriter::new(&mut dx, g)?;
        let mut sums = CHANNEL_SUMS.with(Cell::take);
        sums.clear();
        sums.resize(g.channels, (0.0, 0.0));
        let s = g.spatial;
        sums.par_chunks_mut(per_task)
            .with_min_len(min_len(dy.len(), 1))
            .enumerate()
            .for_each(|(b, sums)| {
                note_task();
                let c0 = b * per_task;
                block_sums(c0, sums);
                let mut coefficients = [(0f32, 0f32, 0f32, 0f32); MAX_BLOCK_CHANNELS];
                for (i, &sums) in sums.iter().enumerate() {
                    coefficients[i] = dx_coefficients(c0 + i, sums);
                }
                // SAFETY: one task per block of channels `c0..c0 +
                // sums.len() <= C`; `dx` is not touched until every task
                // has finished (`for_each`).
                let out = unsafe { writer.blocks(g, (c0, sums.len())) };
                for (n, out) in out.enumerate() {
                    let at = (n * g.channels + c0) * s;
                    let len = out.len();
                    let (d, y, x) = (&dy[at..][..len], &y[at..][..len], &input[at..][..len]);
                    for ((((o, d), y), x), &(scale, mean_dy, k, mean)) in out
                        .chunks_exact_mut(s)
                        .zip(d.chunks_exact(s))
                        .zip(y.chunks_exact(s))
                        .zip(x.chunks_exact(s))
                        .zip(&coefficients)
                    {
                        if training {
                            o.iter_mut().zip(d.iter().zip(y).zip(x)).for_each(
                                |(o, ((&d, &y), &x))| {
                                    let d = masked::<MASK>(d, y);
                                    *o = (d - mean_dy - (x - mean) * k) * scale
                                },
                            );
                        } else {
                            o.iter_mut()
                                .zip(d.iter().zip(y))
                                .for_each(|(o, (&d, &y))| *o = masked::<MASK>(d, y) * scale);
                        }
                    }
                }
            });
        (sums, Some(dx))
    } else {
        let mut sums = CHANNEL_SUMS.with(Cell::take);
        sums.clear();
        sums.resize(g.channels, (0.0, 0.0));
        sums.par_chunks_mut(per_task)
            .with_min_len(min_len(dy.len(), 1))
            .enumerate()
            .for_each(|(b, sums)| {
                note_task();
                block_sums(b * per_task, sums)
            });
        // (S = 0 or N = 0: an empty dx.)
        let dx = need_dx
            .then(|| buffer_pool::uninit("batch_norm_backward", dy.len()))
            .transpose()?;
        (sums, dx)
    };
    // From the pool, as `train`'s statistics.
    let per_channel = |f: &dyn Fn(usize) -> f32| -> Result<Vec<f32>> {
        let mut v = buffer_pool::uninit("batch_norm_backward", g.channels)?;
        v.iter_mut().enumerate().for_each(|(c, o)| *o = f(c));
        Ok(v)
    };
    let dw = need_dw
        .then(|| per_channel(&|c| (sums[c].1 * f64::from(invstd[c])) as f32))
        .transpose()?;
    let db = need_db
        .then(|| per_channel(&|c| sums[c].0 as f32))
        .transpose()?;
    CHANNEL_SUMS.with(|cell| cell.set(sums));
    Ok([dx, dw, db])
}

thread_local! {
    /// [`train`]'s statistics and [`backward_impl`]'s per-channel sums,
    /// reused: collected afresh, this small buffer (16 bytes a channel, below the buffer pool's sizes) was
    /// what glibc served from newly touched heap pages in otherwise
    /// fault-free steps (BENCHMARKS.md, issue 9 item 16).
    static CHANNEL_SUMS: Cell<Vec<(f64, f64)>> = const { Cell::new(Vec::new()) };
}

/// In-place running-statistics update with momentum and the unbiased variance.
pub(super) fn update_running_stats(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    batch_mean: &[f32],
    batch_var: &[f32],
    momentum: f32,
    count: usize,
) -> Result<()> {
    let c = running_mean.len();
    let m = f64::from(momentum);
    let correction = count as f64 / (count - 1) as f64;
    for i in 0..c {
        running_mean[i] =
            ((1.0 - m) * f64::from(running_mean[i]) + m * f64::from(batch_mean[i])) as f32;
        running_var[i] = ((1.0 - m) * f64::from(running_var[i])
            + m * f64::from(batch_var[i]) * correction) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_data::pseudo_random;
    use super::*;

    const EPS: f64 = 1e-5;

    /// f64 training-mode batch norm, straight from the definition.
    fn reference_train(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        g: &BatchNormGeometry,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, c, s) = (g.batch, g.channels, g.spatial);
        let at = |n_: usize, c_: usize, s_: usize| (n_ * c + c_) * s + s_;
        let mut y = vec![0f64; x.len()];
        let (mut means, mut vars) = (vec![], vec![]);
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..s).map(move |j| (i, j)))
                .map(|(i, j)| x[at(i, ch, j)])
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for i in 0..n {
                for j in 0..s {
                    y[at(i, ch, j)] =
                        (x[at(i, ch, j)] - mean) / (var + EPS).sqrt() * gamma[ch] + beta[ch];
                }
            }
            means.push(mean);
            vars.push(var);
        }
        (y, means, vars)
    }

    fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn train_forward_matches_definition_with_large_mean() {
        let g = BatchNormGeometry {
            batch: 3,
            channels: 5,
            spatial: 7,
        };
        // An offset of 100 makes a one-pass E[x²]-E[x]² variance in f32 lose digits.
        let x: Vec<f32> = pseudo_random(g.numel(), 3)
            .iter()
            .map(|v| v + 100.0)
            .collect();
        let gamma = pseudo_random(5, 4);
        let beta = pseudo_random(5, 5);
        let r = train(&x, Some(&gamma), Some(&beta), &g, EPS as f32, false).unwrap();
        let (y, mean, var) = reference_train(&to_f64(&x), &to_f64(&gamma), &to_f64(&beta), &g);
        assert_close("mean", &r.mean, &mean, 1e-7);
        assert_close("var", &r.var, &var, 1e-6);
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
        assert_close("invstd", &r.invstd, &invstd, 1e-6);
        assert_close("output", &r.output, &y, 1e-4);

        // No affine parameters: γ = 1, β = 0.
        let r = train(&x, None, None, &g, EPS as f32, false).unwrap();
        let (y, _, _) = reference_train(&to_f64(&x), &[1.0; 5], &[0.0; 5], &g);
        assert_close("output without affine", &r.output, &y, 1e-4);
    }

    #[test]
    fn every_simd_path_gives_the_same_bits() {
        // The f64 reductions are compiled per SIMD path; the operations and
        // their order are the same, so the results must be identical: one
        // channel a task (29 values, not a multiple of the 8 lanes) and
        // blocks of channels (70 channels of 3 values: 8 of 8 and one of 6,
        // on these 2 threads), with and without the ReLU; on the calling
        // thread (`elementwise::min_len`) and, 70 channels of 300 values,
        // split across the threads.
        use super::super::simd;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (batch, channels, spatial, relu) in [
            (3, 4, 29, true),
            (3, 4, 29, false),
            (3, 70, 3, true),
            (3, 70, 3, false),
            (2, 70, 300, true),
            (2, 70, 300, false),
        ] {
            let g = BatchNormGeometry {
                batch,
                channels,
                spatial,
            };
            let x: Vec<f32> = pseudo_random(g.numel(), 41)
                .iter()
                .map(|v| v + 3.0)
                .collect();
            let dy = pseudo_random(g.numel(), 42);
            let gamma = pseudo_random(channels, 43);
            let run = || {
                let f = train(&x, Some(&gamma), None, &g, EPS as f32, relu).unwrap();
                let grads = backward(
                    &dy,
                    relu.then_some(&f.output[..]),
                    Some(&x),
                    Some(&gamma),
                    &f.mean,
                    &f.invstd,
                    &g,
                    true,
                    [true; 3],
                )
                .unwrap();
                (f.output, f.mean, f.var, grads)
            };
            // Each path on this test's own threads (not `simd::force`, which
            // the other tests running meanwhile would see).
            let reference = pool.install(run);
            simd::on_every_path(&pool, |path| {
                let got = pool.install(run);
                assert!(
                    got == reference,
                    "{} differs at {batch}x{channels}x{spatial} relu {relu}",
                    path.name()
                );
            });
        }
    }

    #[test]
    fn each_pass_runs_where_min_len_says() {
        // Not only the rule (`elementwise::min_len`) but each pass's
        // following it, seen through its tasks (`elementwise::note_task`),
        // from a test's own thread, which is in no pool: up to
        // ON_CALLER_MAX values (64 channels of 2 x 256 in 8 blocks here,
        // which a split would hand to the global pool) every task of the
        // training forward, the eval forward, the backward with and
        // without `dx` and the channel sums runs here; above it (70
        // channels of 2 x 300; 2 of 20 000), none where the global pool
        // has more than one thread. The tasks are the same either way
        // (blocks of channels, segments, channels), so they are counted.
        use super::super::elementwise::{count_tasks, on_caller};
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "a test thread is in no pool"
        );
        let idle = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for (batch, channels, spatial) in [(2, 64, 256), (2, 70, 300), (1, 2, 20_000)] {
            let g = BatchNormGeometry {
                batch,
                channels,
                spatial,
            };
            let x = pseudo_random(g.numel(), 61);
            let dy = pseudo_random(g.numel(), 62);
            let gamma = pseudo_random(channels, 63);
            let blocks = channels.div_ceil(channels_per_task(&g)) as u64;
            let here = on_caller(g.numel());
            let what = format!("{batch}x{channels}x{spatial}");
            let mut out = None;
            let (train_tasks, _) = count_tasks(&idle, || {
                out = Some(train(&x, Some(&gamma), None, &g, 1e-5, false).unwrap());
            });
            let t = out.unwrap();
            let (eval_tasks, _) = count_tasks(&idle, || {
                eval(&x, Some(&gamma), None, &t.mean, &t.var, &g, 1e-5, true).unwrap();
            });
            let backward_tasks = |needs| {
                count_tasks(&idle, || {
                    let args = (&t.mean, &t.invstd, &g);
                    backward(
                        &dy,
                        None,
                        Some(&x),
                        Some(&gamma),
                        args.0,
                        args.1,
                        args.2,
                        true,
                        needs,
                    )
                    .unwrap();
                })
                .0
            };
            let with_dx = backward_tasks([true, true, true]);
            let without_dx = backward_tasks([false, true, true]);
            let (sum_tasks, _) = count_tasks(&idle, || {
                channel_sums(&x, &g).unwrap();
            });
            let counts = [train_tasks, eval_tasks, with_dx, without_dx, sum_tasks];
            let all = [
                blocks,
                (batch * channels) as u64,
                blocks,
                blocks,
                channels as u64,
            ];
            let want = if here { all } else { [0; 5] };
            assert_eq!(
                counts, want,
                "{what}: tasks on the calling thread (caller {here})"
            );
        }
        assert!(on_caller(2 * 64 * 256), "the small case is within the rule");
    }

    #[test]
    fn channel_blocks_match_the_definition_in_f64() {
        // Small planes run in blocks of channels (`channels_per_task`; on
        // these 2 threads at most C/8 channels a block): the forward, the
        // backward with and without the ReLU mask and the backward without
        // `dx`, against f64 loops from the definition, on every SIMD path.
        // The shapes cover blocks with a short last one (70 channels of 3
        // values: 8 blocks of 8 and one of 6; 300 of 7 values, fewer than a
        // vector: 9 of 32, the most a block holds, and one of 12), batch 1
        // (33 channels of 16: 8 of 4 and one of 1; 64 of 49: 8 of 8),
        // planes of one value (37 channels: 9 of 4 and one of 1), and one
        // channel a task (9 channels of 100, 2 of 9000 values in one image).
        // All of these run on the calling thread (at most 32 768 values:
        // `elementwise::min_len`); split across the threads: blocks with a
        // short last one (70 channels of 2 x 300 values: 8 of 8 and one of
        // 6) and one channel a task (2 of 20 000 values).
        use super::super::elementwise::{on_caller, ON_CALLER_MAX};
        use super::super::simd;
        let cases = [
            (3, 70, 3),
            (4, 300, 7),
            (1, 33, 16),
            (1, 64, 49),
            (5, 37, 1),
            (2, 9, 100),
            (1, 2, 9000),
            (2, 70, 300),
            (1, 2, 20_000),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut splits = vec![];
        for (batch, channels, spatial) in cases {
            let g = BatchNormGeometry {
                batch,
                channels,
                spatial,
            };
            let per_task = pool.install(|| channels_per_task(&g));
            let caller = pool.install(|| on_caller(g.numel()));
            assert_eq!(
                caller,
                g.numel() <= ON_CALLER_MAX,
                "{batch}x{channels}x{spatial}"
            );
            splits.push((per_task, channels % per_task, caller));
            let x: Vec<f32> = pseudo_random(g.numel(), 51)
                .iter()
                .map(|v| v + 2.0)
                .collect();
            let gamma = pseudo_random(channels, 52);
            let beta = pseudo_random(channels, 53);
            let dy = pseudo_random(g.numel(), 54);
            let (ry, mean, var) = reference_train(&to_f64(&x), &to_f64(&gamma), &to_f64(&beta), &g);
            for relu in [true, false] {
                let y: Vec<f64> = if relu {
                    ry.iter().map(|&v| v.max(0.0)).collect()
                } else {
                    ry.clone()
                };
                // dx = γ·invstd/M · (M·d - Σd - x̂·Σ(d·x̂)) with d = dy
                // (masked by the ReLU's output with the ReLU); dγ = Σ d·x̂,
                // dβ = Σ d.
                let (cs, m) = (channels * spatial, (batch * spatial) as f64);
                let at = |n: usize, c: usize, s: usize| n * cs + c * spatial + s;
                let mut dx = vec![0f64; g.numel()];
                let (mut dw, mut db) = (vec![0f64; channels], vec![0f64; channels]);
                for c in 0..channels {
                    let is = 1.0 / (var[c] + EPS).sqrt();
                    let idx: Vec<usize> = (0..batch)
                        .flat_map(|n| (0..spatial).map(move |s| at(n, c, s)))
                        .collect();
                    let d = |i: usize| {
                        if relu && y[i] <= 0.0 {
                            0.0
                        } else {
                            f64::from(dy[i])
                        }
                    };
                    let xh = |i: usize| (f64::from(x[i]) - mean[c]) * is;
                    db[c] = idx.iter().map(|&i| d(i)).sum();
                    dw[c] = idx.iter().map(|&i| d(i) * xh(i)).sum();
                    for &i in &idx {
                        dx[i] = f64::from(gamma[c]) * is / m * (m * d(i) - db[c] - xh(i) * dw[c]);
                    }
                }
                simd::on_every_path(&pool, |path| {
                    let (f, grads, sums_only) = pool.install(|| {
                        let f = train(&x, Some(&gamma), Some(&beta), &g, EPS as f32, relu).unwrap();
                        let args = |need_dx| {
                            backward(
                                &dy,
                                relu.then_some(&f.output[..]),
                                Some(&x),
                                Some(&gamma),
                                &f.mean,
                                &f.invstd,
                                &g,
                                true,
                                [need_dx, true, true],
                            )
                            .unwrap()
                        };
                        let (grads, sums_only) = (args(true), args(false));
                        (f, grads, sums_only)
                    });
                    let what = |k: &str| {
                        format!(
                            "{batch}x{channels}x{spatial} relu {relu} {} {k}",
                            path.name()
                        )
                    };
                    assert_close(&what("mean"), &f.mean, &mean, 1e-6);
                    assert_close(&what("var"), &f.var, &var, 1e-6);
                    assert_close(&what("output"), &f.output, &y, 1e-5);
                    let [gx, gw, gb] = grads;
                    assert_close(&what("dx"), &gx.unwrap(), &dx, 1e-4);
                    assert_close(&what("dgamma"), &gw.unwrap(), &dw, 1e-4);
                    assert_close(&what("dbeta"), &gb.unwrap(), &db, 1e-4);
                    let [none, sw, sb] = sums_only;
                    assert!(none.is_none());
                    assert_close(&what("dgamma without dx"), &sw.unwrap(), &dw, 1e-4);
                    assert_close(&what("dbeta without dx"), &sb.unwrap(), &db, 1e-4);
                });
            }
        }
        // The shapes do cover what the comment says: one channel a task,
        // blocks with a short last one, and full blocks of the most channels.
        // And both forms of the first two.
        for caller in [true, false] {
            assert!(splits.contains(&(1, 0, caller)), "{splits:?}");
            assert!(
                splits
                    .iter()
                    .any(|&(k, r, c)| k > 1 && r > 0 && c == caller),
                "{splits:?}"
            );
        }
        assert!(
            splits.iter().any(|&(k, _, _)| k == MAX_BLOCK_CHANNELS),
            "{splits:?}"
        );
    }

    #[test]
    fn train_backward_matches_finite_differences() {
        let g = BatchNormGeometry {
            batch: 2,
            channels: 3,
            spatial: 4,
        };
        let x = pseudo_random(g.numel(), 11);
        let gamma = pseudo_random(3, 12);
        let beta = pseudo_random(3, 13);
        let dy = pseudo_random(g.numel(), 14);
        let fwd = train(&x, Some(&gamma), Some(&beta), &g, EPS as f32, false).unwrap();
        let [dx, dw, db] = backward(
            &dy,
            None,
            Some(&x),
            Some(&gamma),
            &fwd.mean,
            &fwd.invstd,
            &g,
            true,
            [true; 3],
        )
        .unwrap();

        // L = Σ dy·y(x, γ, β) in f64; central differences with h = 1e-6.
        let loss = |x: &[f64], gm: &[f64], bt: &[f64]| -> f64 {
            reference_train(x, gm, bt, &g)
                .0
                .iter()
                .zip(&dy)
                .map(|(y, &d)| y * f64::from(d))
                .sum()
        };
        let (x64, g64, b64) = (to_f64(&x), to_f64(&gamma), to_f64(&beta));
        let h = 1e-6;
        let numeric = |which: usize, i: usize| {
            let mut args = [x64.clone(), g64.clone(), b64.clone()];
            args[which][i] += h;
            let up = loss(&args[0], &args[1], &args[2]);
            args[which][i] -= 2.0 * h;
            let down = loss(&args[0], &args[1], &args[2]);
            (up - down) / (2.0 * h)
        };
        let want_dx: Vec<f64> = (0..x.len()).map(|i| numeric(0, i)).collect();
        let want_dw: Vec<f64> = (0..3).map(|i| numeric(1, i)).collect();
        let want_db: Vec<f64> = (0..3).map(|i| numeric(2, i)).collect();
        assert_close("dx", &dx.unwrap(), &want_dx, 1e-4);
        assert_close("dw", &dw.unwrap(), &want_dw, 1e-4);
        assert_close("db", &db.unwrap(), &want_db, 1e-4);
    }

    #[test]
    fn backward_computes_only_what_is_needed() {
        let g = BatchNormGeometry {
            batch: 2,
            channels: 3,
            spatial: 5,
        };
        let x = pseudo_random(g.numel(), 21);
        let dy = pseudo_random(g.numel(), 22);
        let gamma = pseudo_random(3, 23);
        let fwd = train(&x, Some(&gamma), None, &g, EPS as f32, false).unwrap();
        let all = backward(
            &dy,
            None,
            Some(&x),
            Some(&gamma),
            &fwd.mean,
            &fwd.invstd,
            &g,
            true,
            [true; 3],
        )
        .unwrap();
        for needs in [
            [true, false, false],
            [false, true, false],
            [false, false, true],
            [false, true, true],
        ] {
            let got = backward(
                &dy,
                None,
                Some(&x),
                Some(&gamma),
                &fwd.mean,
                &fwd.invstd,
                &g,
                true,
                needs,
            )
            .unwrap();
            for k in 0..3 {
                assert_eq!(got[k].is_some(), needs[k], "{needs:?}");
                if let Some(v) = &got[k] {
                    assert_eq!(Some(v), all[k].as_ref(), "{needs:?} slot {k}");
                }
            }
        }
    }

    #[test]
    fn eval_forward_and_backward_use_running_stats() {
        let g = BatchNormGeometry {
            batch: 2,
            channels: 3,
            spatial: 4,
        };
        let x = pseudo_random(g.numel(), 31);
        let dy = pseudo_random(g.numel(), 32);
        let gamma = pseudo_random(3, 33);
        let beta = pseudo_random(3, 34);
        let rm = [0.5f32, -0.25, 0.1];
        let rv = [1.5f32, 0.2, 0.9];
        let y = eval(
            &x,
            Some(&gamma),
            Some(&beta),
            &rm,
            &rv,
            &g,
            EPS as f32,
            false,
        )
        .unwrap();
        let invstd = elementwise_inv_std(&rv);
        let c_of = |i: usize| (i / g.spatial) % g.channels;
        let want: Vec<f64> = (0..x.len())
            .map(|i| {
                let c = c_of(i);
                (f64::from(x[i]) - f64::from(rm[c])) / (f64::from(rv[c]) + EPS).sqrt()
                    * f64::from(gamma[c])
                    + f64::from(beta[c])
            })
            .collect();
        assert_close("eval output", &y, &want, 1e-5);

        // dx alone must not read the input: none is given.
        let [dx, dw, db] = backward(
            &dy,
            None,
            None,
            Some(&gamma),
            &rm,
            &invstd,
            &g,
            false,
            [true, false, false],
        )
        .unwrap();
        assert!(dw.is_none() && db.is_none());
        let want_dx: Vec<f64> = (0..x.len())
            .map(|i| f64::from(dy[i]) * f64::from(gamma[c_of(i)]) * f64::from(invstd[c_of(i)]))
            .collect();
        assert_close("eval dx", &dx.unwrap(), &want_dx, 1e-6);

        let [_, dw, db] = backward(
            &dy,
            None,
            Some(&x),
            None,
            &rm,
            &invstd,
            &g,
            false,
            [false, true, true],
        )
        .unwrap();
        let mut want_dw = [0f64; 3];
        let mut want_db = [0f64; 3];
        for i in 0..x.len() {
            let c = c_of(i);
            want_dw[c] +=
                f64::from(dy[i]) * (f64::from(x[i]) - f64::from(rm[c])) * f64::from(invstd[c]);
            want_db[c] += f64::from(dy[i]);
        }
        assert_close("eval dw", &dw.unwrap(), &want_dw, 1e-6);
        assert_close("eval db", &db.unwrap(), &want_db, 1e-6);
    }

    fn elementwise_inv_std(v: &[f32]) -> Vec<f32> {
        v.iter()
            .map(|&v| (1.0 / (f64::from(v) + EPS).sqrt()) as f32)
            .collect()
    }

    #[test]
    fn running_stats_use_unbiased_variance() {
        let (mut rm, mut rv) = (vec![0.0f32, 1.0], vec![1.0f32, 2.0]);
        update_running_stats(&mut rm, &mut rv, &[2.0, -1.0], &[3.0, 0.5], 0.1, 4).unwrap();
        // rm = 0.9 rm + 0.1 mean; rv = 0.9 rv + 0.1 var * 4/3
        assert_close("rm", &rm, &[0.2, 0.8], 1e-7);
        assert_close("rv", &rv, &[0.9 + 0.4, 1.8 + 0.1 * 0.5 * 4.0 / 3.0], 1e-7);
    }

    #[test]
    fn channel_sums_per_channel() {
        let g = BatchNormGeometry {
            batch: 2,
            channels: 2,
            spatial: 2,
        };
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(
            channel_sums(&x, &g).unwrap(),
            vec![1.0 + 2.0 + 5.0 + 6.0, 3.0 + 4.0 + 7.0 + 8.0]
        );
    }
}
