//! The inner loop of the convolution's im2col packing (`conv::columns::Columns`):
//! what a list of weight taps sees over one run of output pixels, written
//! as rows of a packed GEMM panel.
//!
//! A run is a stretch of consecutive output pixels of one output row of one
//! image, at most one panel wide in the forward (`NR` = 32 or 16 columns).
//! For each tap it is one strided read of an input row, clipped by the
//! padding on the left and right, and zero when the tap's input row is
//! padding. The first version did that per (tap, run) with bounds
//! arithmetic, two `fill(0.0)` and a libc `memmove` of <= 32 floats: about
//! 17 % of the inference forward's samples (`perf`, BENCHMARKS.md issue 9).
//! Here the per-run and per-tap constants are computed once ([`Run`],
//! [`Tap`]); the padding masks depend only on the tap's `kw`, so a run
//! computes them once per `kw`; and the AVX paths read and write a run with
//! masked vector loads and stores: the load mask zeroes the padding and
//! never touches memory outside the input row, the store mask stops at the
//! run's end. A tap then costs a row check, a table look-up and two (four
//! for stride 2) vector loads and two stores.
//!
//! Strides 1 and 2 (every convolution of ResNet) take the vector paths;
//! other strides, and the portable path, take the scalar loop.

use super::conv::valid_outputs;
use super::simd::SimdPath;
use crate::backend::Conv2dGeometry;

/// Kernel widths up to this take the per-`kw` mask tables of the vector
/// paths; wider kernels compute each tap's masks on their own.
const KW_TABLE: usize = 16;

/// What every tap of a convolution shares.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    in_h: usize,
    stride_w: usize,
    kernel_w: usize,
    /// `kw_ranges[kw]`: output columns `lo..hi` where tap column `kw` sees
    /// real input columns (for `kw < kernel_w <= KW_TABLE`).
    kw_ranges: [(usize, usize); KW_TABLE],
}

impl Geometry {
    pub(super) fn new(g: &Conv2dGeometry) -> Self {
        let mut kw_ranges = [(0, 0); KW_TABLE];
        for (kw, r) in kw_ranges.iter_mut().enumerate().take(g.kernel_w) {
            *r = valid_outputs(g.out_w, g.in_w, g.stride.1, kw * g.dilation.1, g.padding.1);
        }
        Self {
            in_h: g.in_h,
            stride_w: g.stride.1,
            kernel_w: g.kernel_w,
            kw_ranges,
        }
    }

    fn tables(&self) -> bool {
        self.kernel_w <= KW_TABLE
    }
}

/// One weight tap `(c, kh, kw)`: where it reads, relative to a [`Run`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Tap {
    /// `c * H * W + dh * W + kw * dilation_w - padding_w`: added to
    /// [`Run::base`] it gives the input index of the run's first pixel
    /// (outside the plane when that pixel sees padding).
    off: isize,
    /// `kh * dilation_h - padding_h`: the input row is `Run::oh_s + dh`.
    dh: isize,
    kw: usize,
    /// Output columns `w_lo..w_hi` see real input columns (the rest see
    /// the left and right padding).
    w_lo: usize,
    w_hi: usize,
}

impl Tap {
    pub(super) fn new(g: &Conv2dGeometry, c: usize, kh: usize, kw: usize) -> Self {
        let dh = (kh * g.dilation.0) as isize - g.padding.0 as isize;
        let (w_lo, w_hi) =
            valid_outputs(g.out_w, g.in_w, g.stride.1, kw * g.dilation.1, g.padding.1);
        Self {
            off: (c * g.in_h * g.in_w) as isize
                + dh * g.in_w as isize
                + (kw * g.dilation.1) as isize
                - g.padding.1 as isize,
            dh,
            kw,
            w_lo,
            w_hi,
        }
    }

    /// Whether the tap's input row over `run` is a real row (not padding).
    #[inline(always)]
    fn row_ok(&self, run: &Run, in_h: usize) -> bool {
        // A negative row wraps to a huge usize: one comparison for both edges.
        ((run.oh_s + self.dh) as usize) < in_h
    }

    /// Columns `lo..hi` of the run (`0 <= lo <= hi <= len`) that see a real
    /// input pixel; an empty range when the tap's input row is padding.
    #[inline(always)]
    fn valid(&self, run: &Run, in_h: usize) -> (usize, usize) {
        let (lo, hi) = columns(self.w_lo, self.w_hi, run);
        if self.row_ok(run, in_h) {
            (lo, hi)
        } else {
            (lo, lo)
        }
    }

    /// Input index of the run's first column. Only read through at the
    /// columns of [`Tap::valid`]'s range.
    #[inline(always)]
    fn start(&self, run: &Run) -> isize {
        run.base as isize + self.off
    }
}

/// Output columns `w_lo..w_hi` as columns of `run`: `lo..hi`, `lo <= hi <= len`.
#[inline(always)]
fn columns(w_lo: usize, w_hi: usize, run: &Run) -> (usize, usize) {
    let lo = w_lo.saturating_sub(run.ow).min(run.len);
    (lo, w_hi.saturating_sub(run.ow).min(run.len).max(lo))
}

/// A run of `len` consecutive output pixels `ow..ow + len` of output row
/// `oh` of one image.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    /// `image * in_image + oh * stride_h * W + ow * stride_w`.
    base: usize,
    /// `oh * stride_h`.
    oh_s: isize,
    ow: usize,
    len: usize,
}

impl Run {
    /// Output pixels `ow..ow + len` of row `oh` of image `image` (of
    /// `in_image` input floats each).
    pub(super) fn new(
        g: &Conv2dGeometry,
        in_image: usize,
        image: usize,
        oh: usize,
        ow: usize,
        len: usize,
    ) -> Self {
        let oh_s = oh * g.stride.0;
        Self {
            base: image * in_image + oh_s * g.in_w + ow * g.stride.1,
            oh_s: oh_s as isize,
            ow,
            len,
        }
    }
}

/// For every tap `i`: `dst[i * dst_stride..][..run.len]` = the values tap `i`
/// sees over `run` (0 where it sees padding). Nothing else of `dst` is
/// written.
///
/// # Safety
/// The CPU supports `path` (as every path [`super::simd::active`] or
/// [`super::simd::force`] hands out does). `geo`, the taps and the run come
/// from one geometry, with the run inside its output (`ow + len <= out_w`)
/// and the taps' channels inside its input, and `images` holds the run's
/// image: the AVX paths read through raw pointers on that promise (checked
/// in debug builds only).
pub(super) unsafe fn fill_taps(
    path: SimdPath,
    images: &[f32],
    geo: &Geometry,
    taps: &[Tap],
    run: Run,
    dst: &mut [f32],
    dst_stride: usize,
) {
    if taps.is_empty() || run.len == 0 {
        return;
    }
    // Every row written lies inside `dst` (the AVX paths store through raw
    // pointers up to here and no further).
    assert!(run.len <= dst_stride && (taps.len() - 1) * dst_stride + run.len <= dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        let (short, s) = (geo.tables() && run.len <= 32, geo.stride_w);
        // SAFETY (every arm): the CPU supports `path` and `images` holds
        // every pixel the taps can see (this function's contract); `dst`
        // holds every row (asserted above).
        match path {
            SimdPath::Avx512 if short && s == 1 => {
                return unsafe { avx512::short::<1>(images, geo, taps, run, dst, dst_stride) }
            }
            SimdPath::Avx512 if short && s == 2 => {
                return unsafe { avx512::short::<2>(images, geo, taps, run, dst, dst_stride) }
            }
            SimdPath::Avx512 if s == 1 => {
                return unsafe { avx512::long::<1>(images, geo, taps, run, dst, dst_stride) }
            }
            SimdPath::Avx512 if s == 2 => {
                return unsafe { avx512::long::<2>(images, geo, taps, run, dst, dst_stride) }
            }
            SimdPath::Avx2 if s == 1 => {
                return unsafe { avx2::fill::<1>(images, geo, taps, run, dst, dst_stride) }
            }
            SimdPath::Avx2 if s == 2 => {
                return unsafe { avx2::fill::<2>(images, geo, taps, run, dst, dst_stride) }
            }
            _ => {}
        }
    }
    let _ = path;
    fill_scalar(images, geo, taps, run, dst, dst_stride);
}

/// Runs per panel up to which [`fill_panel`] gathers a panel row in
/// registers (a 32-wide panel of images at least 5 columns wide).
const PANEL_RUNS: usize = 8;

/// Packs one `nr`-wide panel of the forward's column matrix: `runs` (each
/// with its first column in the panel, in order, together `cols <= nr`
/// columns) for every tap, one row of `nr` floats per tap in `dst`, zero
/// past `cols`.
///
/// On the AVX-512 and AVX2 paths with their kernels' panel widths (32, 16)
/// each tap's row is put together in registers from every run's masked
/// loads and stored whole, once; per run with masked stores ([`fill_taps`])
/// cost about twice as much (`perf`: 7.8 % of the inference forward's
/// samples, against the micro-kernel's 65 %). Other paths and widths, and
/// panels of many short runs, fill run by run.
///
/// # Safety
/// As for [`fill_taps`], for every run.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn fill_panel(
    path: SimdPath,
    images: &[f32],
    geo: &Geometry,
    taps: &[Tap],
    runs: &[(usize, Run)],
    cols: usize,
    dst: &mut [f32],
    nr: usize,
) {
    assert!(cols <= nr && dst.len() >= taps.len() * nr);
    #[cfg(target_arch = "x86_64")]
    if runs.len() > PANEL_RUNS && !taps.is_empty() {
        // Many short runs (the class order of the padding skip, `conv/forward.rs`,
        // cuts rows at every column class): one gather per half panel and
        // tap, whatever the runs, instead of a masked load and store per
        // run and tap; on the kernels' own panel widths.
        let gather_width = match path {
            SimdPath::Avx512 => 32,
            SimdPath::Avx2 => 16,
            SimdPath::Portable => 0,
        };
        let lanes = (nr == gather_width)
            .then(|| Lanes::new(geo, images, runs, cols, nr))
            .flatten();
        if let Some(lanes) = lanes {
            assert!(runs.iter().all(|(off, r)| off + r.len <= cols));
            // SAFETY: the CPU supports `path` (this function's contract)
            // and `nr` is its gather's width; `Lanes::new` checked that
            // every index fits i32; `dst` holds `taps.len()` rows of `nr`
            // (asserted above); every pixel a tap sees lies in `images`.
            unsafe {
                if path == SimdPath::Avx512 {
                    avx512::gather(images, geo, taps, &lanes, dst)
                } else {
                    avx2::gather(images, geo, taps, &lanes, dst)
                }
            }
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The panel width each kernel's B panels have; AVX2's mask table
        // also bounds how many (run, kw) masks one panel may need.
        let width = match path {
            SimdPath::Avx512 => Some(32),
            SimdPath::Avx2 if geo.kernel_w * runs.len() <= avx2::PANEL_MASKS => Some(16),
            _ => None,
        };
        if width == Some(nr)
            && geo.tables()
            && runs.len() <= PANEL_RUNS
            && matches!(geo.stride_w, 1 | 2)
        {
            // Every run inside the panel: its row stores cover exactly the
            // panel's columns, and the fill's raw-pointer reads rely on it.
            assert!(runs.iter().all(|(off, r)| off + r.len <= cols));
            // SAFETY: the CPU supports `path` and `images` holds every
            // pixel the taps see over the runs (this function's contract);
            // `dst` holds `taps.len()` rows of `nr` (asserted above), the
            // width the chosen fill writes.
            unsafe {
                match (path, geo.stride_w) {
                    (SimdPath::Avx512, 1) => avx512::panel::<1>(images, geo, taps, runs, dst),
                    (SimdPath::Avx512, _) => avx512::panel::<2>(images, geo, taps, runs, dst),
                    (_, 1) => avx2::panel::<1>(images, geo, taps, runs, dst),
                    (_, _) => avx2::panel::<2>(images, geo, taps, runs, dst),
                }
            }
            return;
        }
    }
    for &(off, run) in runs {
        // SAFETY: this function's contract is `fill_taps`'s, run by run.
        unsafe { fill_taps(path, images, geo, taps, run, &mut dst[off..], nr) };
    }
    if cols < nr {
        for row in dst.chunks_exact_mut(nr).take(taps.len()) {
            row[cols..].fill(0.0);
        }
    }
}

/// Kernel widths from which the weight gradient's transposed panels are
/// packed patch by patch ([`fill_patches`]); 1- and 2-wide kernels (the
/// 1x1 stride-2 layers, the shifted weight gradient's row taps) gather tap
/// rows and transpose them (`conv::columns::Columns::pack`): their patch rows are a
/// value or two each, and patch by patch the 1x1 64->128 stride-2 layer
/// took 1.22x and the shifted 128->128 one 1.06x the CPU time (batch 32 at
/// 112x112, BENCHMARKS.md issue 9 item 31).
pub(super) const PATCH_MIN_KW: usize = 3;

/// Pieces [`fill_patches`] prepares at once.
const PATCH_PIECES: usize = 64;

/// The part of one `(c, kh)` row of `KW` taps of a patch that falls in one
/// panel, for [`fill_patches`]: where it reads (relative to a pixel's
/// [`Run::base`]) and where it goes (relative to a depth row).
#[derive(Clone, Copy, Default)]
struct Piece {
    /// `c * H * W + dh * W - padding_w`.
    src: isize,
    /// `kh * dilation_h - padding_h`.
    dh: isize,
    /// Its taps in the panel (bits over `kw`).
    lanes: u8,
    /// Where lane 0 would be stored, from the depth row's start in the
    /// first panel (the lanes are stored, not all in the row).
    dst: isize,
}

/// Whether [`fill_patches`] packs this geometry's transposed panels of
/// width `nr` on `path`: kernels from [`PATCH_MIN_KW`] to 8 taps wide
/// (one 256-bit masked vector per patch row) with undilated rows, on the
/// AVX-512 path (with AVX-512VL); never with `FROSTGRAD_DW_PATCHES=0` (for
/// comparison).
pub(super) fn patches_apply(path: SimdPath, g: &Conv2dGeometry, nr: usize) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = super::env_switch::choice(&ENABLED, "FROSTGRAD_DW_PATCHES", |v| {
        // The fill uses AVX-512VL's 256-bit masked loads and stores.
        #[cfg(target_arch = "x86_64")]
        let vl = std::arch::is_x86_feature_detected!("avx512vl");
        #[cfg(not(target_arch = "x86_64"))]
        let vl = false;
        vl && super::env_switch::unless_zero(v)
    });
    enabled
        && path == SimdPath::Avx512
        && (PATCH_MIN_KW..=8).contains(&g.kernel_w)
        && g.dilation.1 == 1
        && nr > 0
}

/// Packs the weight gradient's transposed column matrix (depth = output
/// pixels, columns = taps): for the `kc` pixels of `runs` (each with its
/// depth offset) and taps `jc..jc + nc`, the panels of `nr` columns in
/// `out` (`kc * nr` floats each, zero past `nc`).
///
/// A pixel's taps `(c, kh, kw)`, in column order, are its input patch: for
/// each `(c, kh)` the `KW` consecutive input pixels of one row (undilated
/// rows), whatever the stride. So the part of a patch row that falls in
/// one panel is one masked load (zero in the padding) and one masked store
/// into the pixel's panel row, where gathering each tap's values over a
/// run and transposing them in 4x4 blocks (`conv::columns::Columns::pack`) cost
/// about a fifth of the stem's weight gradient (`perf`, BENCHMARKS.md
/// issue 9 item 31).
///
/// # Safety
/// [`patches_apply`] holds for `path`, `g` and `nr`; the runs come from `g`
/// over `images` (which holds each run's image, `in_image` floats each)
/// with their depth offsets inside `0..kc`; `jc + nc` is at most the number
/// of taps; `out` holds `nc.div_ceil(nr) * nr * kc` floats.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn fill_patches(
    path: SimdPath,
    images: &[f32],
    g: &Conv2dGeometry,
    runs: &[(usize, Run)],
    kc: usize,
    (jc, nc): (usize, usize),
    nr: usize,
    out: &mut [f32],
) {
    assert!(patches_apply(path, g, nr));
    assert!(out.len() >= nc.div_ceil(nr) * nr * kc);
    assert!(runs.iter().all(|(off, r)| off + r.len <= kc));
    if nc == 0 || kc == 0 {
        return;
    }
    // The last panel's columns past `nc` are zero; every other value is
    // written by exactly one piece lane below.
    if nc % nr != 0 {
        out[(nc / nr) * nr * kc..][..nr * kc].fill(0.0);
    }
    let kw_n = g.kernel_w;
    let plane = (g.in_h * g.in_w) as isize;
    let mut pieces = [Piece::default(); PATCH_PIECES];
    // Panel by panel, so that each pixel's panel row is written whole by
    // consecutive stores (patch row by patch row across all panels wrote
    // a few lanes of every panel per pixel, and measured slower).
    for (p, j0) in (0..nc).step_by(nr).enumerate() {
        let j1 = (j0 + nr).min(nc);
        // The patch rows `(c, kh)` with taps in columns `j0..j1`.
        let (first, last) = ((jc + j0) / kw_n, (jc + j1 - 1) / kw_n);
        let mut q = first;
        while q <= last {
            let count = (last + 1 - q).min(PATCH_PIECES);
            for (s, piece) in pieces.iter_mut().enumerate().take(count) {
                let (c, kh) = ((q + s) / g.kernel_h, (q + s) % g.kernel_h);
                let dh = (kh * g.dilation.0) as isize - g.padding.0 as isize;
                // Column of the row's lane 0 among the packed columns.
                let t = ((q + s) * kw_n) as isize - jc as isize;
                let lo = (j0 as isize - t).clamp(0, kw_n as isize) as usize;
                let hi = (j1 as isize - t).clamp(0, kw_n as isize) as usize;
                *piece = Piece {
                    src: c as isize * plane + dh * g.in_w as isize - g.padding.1 as isize,
                    dh,
                    lanes: bits(lo, hi) as u8,
                    // Lane kw lands in column t + kw, i.e. panel p's
                    // column t + kw - j0.
                    dst: (p * nr * kc) as isize + t - j0 as isize,
                };
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `patches_apply` (asserted) means AVX-512F and VL; the
            // pieces read only real input pixels of the runs' images (their
            // load masks are the patch's pixels inside the input) and store
            // only lanes of columns `j0..j1 <= nc` of depth rows `0..kc`
            // (asserted above) of panel `p` of `out`.
            unsafe {
                avx512::patches(images, g, &pieces[..count], runs, out.as_mut_ptr(), nr)
            };
            q += count;
        }
    }
}

/// The columns of one panel, lane by lane, for the gather fills: column
/// `j` (of `cols`) is output pixel `ow[j]` of the output row whose first
/// input row is `oh_s[j]`, and reads input index `base[j] + Tap::off` for
/// a tap that sees input there. Lanes past `cols` are off.
#[cfg(target_arch = "x86_64")]
struct Lanes {
    base: [i32; 32],
    oh_s: [i32; 32],
    ow: [i32; 32],
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl Lanes {
    /// The lanes of `runs` (each `(offset in the panel, run)`), when the
    /// panel is one a gather fill writes (32 wide on AVX-512, 16 on AVX2:
    /// `nr` of those) and every index and coordinate fits i32.
    fn new(
        geo: &Geometry,
        images: &[f32],
        runs: &[(usize, Run)],
        cols: usize,
        nr: usize,
    ) -> Option<Self> {
        let fits = |v: usize| i32::try_from(v).is_ok();
        if !(nr == 32 || nr == 16) || cols > nr || !fits(images.len()) || !fits(geo.in_h) {
            return None;
        }
        let mut lanes = Self {
            base: [0; 32],
            oh_s: [0; 32],
            ow: [0; 32],
            cols,
        };
        for &(off, run) in runs {
            for e in 0..run.len {
                let j = off + e;
                // A lane's input index: only read where a tap sees input,
                // so inside `images`, i.e. below i32::MAX (checked above).
                lanes.base[j] = i32::try_from(run.base + e * geo.stride_w).ok()?;
                lanes.oh_s[j] = i32::try_from(run.oh_s).ok()?;
                lanes.ow[j] = i32::try_from(run.ow + e).ok()?;
            }
        }
        // The taps' column ranges are compared with `ow` as i32 too.
        geo.kw_ranges
            .iter()
            .all(|&(_, hi)| fits(hi))
            .then_some(lanes)
    }
}

/// The portable path (and strides other than 1 and 2), in safe code.
fn fill_scalar(
    images: &[f32],
    geo: &Geometry,
    taps: &[Tap],
    run: Run,
    dst: &mut [f32],
    dst_stride: usize,
) {
    let s = geo.stride_w;
    for (i, t) in taps.iter().enumerate() {
        let row = &mut dst[i * dst_stride..][..run.len];
        let (lo, hi) = t.valid(&run, geo.in_h);
        if lo == hi {
            row.fill(0.0);
            continue;
        }
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let first = (t.start(&run) + (lo * s) as isize) as usize;
        let out = &mut row[lo..hi];
        match s {
            1 => out.copy_from_slice(&images[first..first + out.len()]),
            2 => super::conv::gather_even(&images[first..first + 2 * out.len() - 1], out),
            _ => {
                for (e, v) in out.iter_mut().enumerate() {
                    *v = images[first + e * s];
                }
            }
        }
    }
}

/// Debug check of the AVX paths' promise: the first and last pixel a tap
/// reads over the run lie inside `images`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn debug_check_reads(images: &[f32], geo: &Geometry, t: &Tap, run: &Run) {
    if cfg!(debug_assertions) {
        let (lo, hi) = t.valid(run, geo.in_h);
        if lo < hi {
            let first = t.start(run) + (lo * geo.stride_w) as isize;
            let last = t.start(run) + ((hi - 1) * geo.stride_w) as isize;
            debug_assert!(first >= 0 && (last as usize) < images.len());
        }
    }
}

/// Bits `lo..hi` of a 64-bit mask (`lo <= hi <= 64`).
#[inline(always)]
fn bits(lo: usize, hi: usize) -> u64 {
    let below = |k: usize| if k >= 64 { u64::MAX } else { (1u64 << k) - 1 };
    below(hi) & !below(lo)
}

/// The input positions (relative to the run's first input) that stride `s`
/// reads for output columns `lo..hi`: `s * lo ..= s * (hi - 1)`, as the
/// range `s * lo .. s * hi - s + 1` (empty when `lo == hi`). For stride 2
/// that includes the odd positions between two read ones, which lie in the
/// same input row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn positions(s: usize, lo: usize, hi: usize) -> (usize, usize) {
    if hi > lo {
        (s * lo, s * hi - s + 1)
    } else {
        (0, 0)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{
        bits, columns, debug_check_reads, positions, Geometry, Piece, Run, Tap, KW_TABLE,
        PANEL_RUNS,
    };

    /// [`super::fill_taps`] for runs of at most 32 columns (every run of the
    /// forward's 32-wide panels) and stride `S` (1 or 2): the load masks of
    /// each `kw` computed once per run, then per tap two (stride 2: four)
    /// masked loads, zero in the padding and never touching memory outside
    /// the input row, a permute that keeps the even values for stride 2,
    /// and two masked stores that end at the run's end.
    ///
    /// # Safety
    /// AVX-512F is available; `run.len <= 32`, `geo.kernel_w <= KW_TABLE`;
    /// `dst` holds `(taps.len() - 1) * dst_stride + run.len` floats; every
    /// pixel a tap sees over the run (per [`Tap::valid`]) lies inside
    /// `images`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn short<const S: usize>(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        run: Run,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        // Load masks per kw: 16 input positions each, S * 32 positions.
        let mut table = [[0u16; 4]; KW_TABLE];
        for (m, &(w_lo, w_hi)) in table.iter_mut().zip(&geo.kw_ranges).take(geo.kernel_w) {
            let (lo, hi) = columns(w_lo, w_hi, &run);
            let (p_lo, p_hi) = positions(S, lo, hi);
            let m64 = bits(p_lo, p_hi);
            *m = [
                m64 as u16,
                (m64 >> 16) as u16,
                (m64 >> 32) as u16,
                (m64 >> 48) as u16,
            ];
        }
        let store = bits(0, run.len);
        let (s0, s1) = (store as __mmask16, (store >> 16) as __mmask16);
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (i, t) in taps.iter().enumerate() {
            debug_check_reads(images, geo, t, &run);
            // SAFETY: `o` and `o + 16` address row i of `dst` (the
            // caller's size promise; the stores write only its columns
            // < len <= 32). Loads enable only the positions of
            // `positions`, inside the input row of a real row (else all
            // lanes are off), so inside `images`; `src` is formed with
            // wrapping arithmetic because it may point before the image
            // when the run starts in the padding.
            unsafe {
                let o = out.add(i * dst_stride);
                let m = if t.row_ok(&run, geo.in_h) {
                    table[t.kw]
                } else {
                    [0; 4]
                };
                let src = img.wrapping_offset(t.start(&run));
                let a = _mm512_maskz_loadu_ps(m[0], src);
                let b = _mm512_maskz_loadu_ps(m[1], src.wrapping_add(16));
                if S == 1 {
                    _mm512_mask_storeu_ps(o, s0, a);
                    _mm512_mask_storeu_ps(o.wrapping_add(16), s1, b);
                } else {
                    _mm512_mask_storeu_ps(o, s0, _mm512_permutex2var_ps(a, evens, b));
                    let c = _mm512_maskz_loadu_ps(m[2], src.wrapping_add(32));
                    let d = _mm512_maskz_loadu_ps(m[3], src.wrapping_add(48));
                    let v = _mm512_permutex2var_ps(c, evens, d);
                    _mm512_mask_storeu_ps(o.wrapping_add(16), s1, v);
                }
            }
        }
    }

    /// [`super::fill_panel`] for 32-wide panels of at most `PANEL_RUNS`
    /// runs and stride `S` (1 or 2): per tap, each run's pixels are loaded
    /// with zero-masking straight into their panel lanes (the load
    /// address shifted back by the run's panel offset, so lane `j` reads
    /// the run's column `j - off`), the runs' registers OR-ed together
    /// (their lanes do not overlap, and the others are 0, which also zeroes
    /// the columns past the last run), and the row stored whole.
    ///
    /// # Safety
    /// AVX-512F is available; `dst` holds `taps.len() * 32` floats; the
    /// runs lie inside the panel (`off + len <= 32`), at most `PANEL_RUNS`
    /// of them; `geo.kernel_w <= KW_TABLE`; every pixel a tap sees over a
    /// run (per [`Tap::valid`]) lies inside `images`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel<const S: usize>(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        runs: &[(usize, Run)],
        dst: &mut [f32],
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let nruns = runs.len();
        // Per run: where panel lane 0 would read (`S * off` before the
        // run's first pixel) and the row offset; per kw and run: the load
        // mask over the S * 32 positions from there.
        let mut base = [0isize; PANEL_RUNS];
        let mut oh_s = [0isize; PANEL_RUNS];
        let mut masks = [[0u64; PANEL_RUNS]; KW_TABLE];
        for (r, &(off, run)) in runs.iter().enumerate() {
            base[r] = run.base as isize - (S * off) as isize;
            oh_s[r] = run.oh_s;
            for (kw, &(w_lo, w_hi)) in geo.kw_ranges.iter().enumerate().take(geo.kernel_w) {
                let (lo, hi) = columns(w_lo, w_hi, &run);
                let (p_lo, p_hi) = positions(S, off + lo, off + hi);
                masks[kw][r] = if hi > lo { bits(p_lo, p_hi) } else { 0 };
            }
        }
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let or = |a: __m512, b: __m512| {
            _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(a),
                _mm512_castps_si512(b),
            ))
        };
        for (i, t) in taps.iter().enumerate() {
            let m = &masks[t.kw];
            let mut v = [_mm512_setzero_ps(); 4];
            for r in 0..nruns {
                debug_check_reads(images, geo, t, &runs[r].1);
                // A padding row reads nothing (and gives zeros).
                let ok = ((oh_s[r] + t.dh) as usize) < geo.in_h;
                let m = if ok { m[r] } else { 0 };
                // Wrapping: before the image where the run starts in the
                // padding or at a panel offset; only masked-in positions,
                // the run's valid pixels, are read.
                let p = img.wrapping_offset(base[r] + t.off);
                // SAFETY: the masks enable only positions of the run's
                // valid columns (and for stride 2 the odd positions between
                // two of them, in the same input row): inside `images`.
                unsafe {
                    v[0] = or(v[0], _mm512_maskz_loadu_ps(m as u16, p));
                    v[1] = or(
                        v[1],
                        _mm512_maskz_loadu_ps((m >> 16) as u16, p.wrapping_add(16)),
                    );
                    if S == 2 {
                        v[2] = or(
                            v[2],
                            _mm512_maskz_loadu_ps((m >> 32) as u16, p.wrapping_add(32)),
                        );
                        v[3] = or(
                            v[3],
                            _mm512_maskz_loadu_ps((m >> 48) as u16, p.wrapping_add(48)),
                        );
                    }
                }
            }
            // SAFETY: row i of `dst` holds 32 floats (the caller's promise).
            unsafe {
                let o = out.add(32 * i);
                if S == 1 {
                    _mm512_storeu_ps(o, v[0]);
                    _mm512_storeu_ps(o.add(16), v[1]);
                } else {
                    _mm512_storeu_ps(o, _mm512_permutex2var_ps(v[0], evens, v[1]));
                    _mm512_storeu_ps(o.add(16), _mm512_permutex2var_ps(v[2], evens, v[3]));
                }
            }
        }
    }

    /// [`super::fill_patches`]' loop: per pixel of each run, per piece, a
    /// masked load of the patch row's lanes (zero where they lie in the
    /// padding) and a masked store of the same lanes.
    ///
    /// # Safety
    /// AVX-512F and VL are available; `g.kernel_w <= 8`, undilated rows;
    /// the pieces' lanes address depth rows of `out` below the runs' depth
    /// offsets plus lengths, inside `out`; `images` holds the runs' images.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn patches(
        images: &[f32],
        g: &crate::backend::Conv2dGeometry,
        pieces: &[Piece],
        runs: &[(usize, Run)],
        out: *mut f32,
        nr: usize,
    ) {
        let img = images.as_ptr();
        let (s, pad, kw_n) = (g.stride.1, g.padding.1, g.kernel_w);
        let (in_h, in_w) = (g.in_h, g.in_w);
        for &(off, run) in runs {
            for i in 0..run.len {
                // Input column of the patch's kw = 0 is ow * s - pad: the
                // taps inside the input row are kw in lo..hi.
                let x0 = (run.ow + i) * s;
                let lo = pad.saturating_sub(x0).min(kw_n);
                let hi = (in_w + pad).saturating_sub(x0).clamp(lo, kw_n);
                let cols = bits(lo, hi) as u8;
                let base = img.wrapping_add(run.base + i * s);
                let o = out.wrapping_add((off + i) * nr);
                for piece in pieces {
                    let row_ok = ((run.oh_s + piece.dh) as usize) < in_h;
                    let m = if row_ok { cols & piece.lanes } else { 0 };
                    // SAFETY: the load reads only the patch row's pixels
                    // inside a real input row of the run's image; the store
                    // only the piece's lanes of this depth row (the
                    // caller's promise). Wrapping: the addresses may lie
                    // outside where their masks are empty.
                    unsafe {
                        let v = _mm256_maskz_loadu_ps(m, base.wrapping_offset(piece.src));
                        _mm256_mask_storeu_ps(o.wrapping_offset(piece.dst), piece.lanes, v);
                    }
                }
            }
        }
    }

    /// [`super::fill_panel`] for a 32-wide panel of any columns: per tap
    /// and half panel, the lanes that see input (real row, column inside
    /// the tap's range, lane below `cols`) from three compares, and one
    /// masked gather of `base + off`, zero elsewhere; the row stored whole.
    ///
    /// # Safety
    /// AVX-512F is available; `dst` holds `taps.len() * 32` floats; every
    /// pixel a tap sees over the lanes lies inside `images`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        lanes: &super::Lanes,
        dst: &mut [f32],
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let load = |a: &[i32; 32], h: usize| {
            // SAFETY: 16 i32s at 16 * h, h < 2, inside the array.
            unsafe { _mm512_loadu_si512(a.as_ptr().add(16 * h).cast()) }
        };
        let (base, oh_s, ow) = (
            [load(&lanes.base, 0), load(&lanes.base, 1)],
            [load(&lanes.oh_s, 0), load(&lanes.oh_s, 1)],
            [load(&lanes.ow, 0), load(&lanes.ow, 1)],
        );
        let cols = bits(0, lanes.cols);
        let on = [cols as u16, (cols >> 16) as u16];
        let in_h = _mm512_set1_epi32(geo.in_h as i32);
        for (i, t) in taps.iter().enumerate() {
            let dh = _mm512_set1_epi32(t.dh as i32);
            let (lo, hi) = (
                _mm512_set1_epi32(t.w_lo as i32),
                _mm512_set1_epi32(t.w_hi as i32),
            );
            // Only a hint of where the lanes read: formed with wrapping
            // arithmetic, dereferenced only at the enabled lanes.
            let p = img.wrapping_offset(t.off);
            for h in 0..2 {
                // A negative row is a huge unsigned one: one compare for
                // both edges.
                let row = _mm512_cmplt_epu32_mask(_mm512_add_epi32(oh_s[h], dh), in_h);
                let col = _mm512_cmpge_epi32_mask(ow[h], lo) & _mm512_cmplt_epi32_mask(ow[h], hi);
                let m = on[h] & row & col;
                // SAFETY: an enabled lane is a pixel the tap sees, whose
                // input index `base + off` lies inside `images` (the
                // caller's promise); `dst` holds row i (32 floats).
                unsafe {
                    let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, base[h], p);
                    _mm512_storeu_ps(out.add(32 * i + 16 * h), v);
                }
            }
        }
    }

    /// [`super::fill_taps`] for any run length (the weight gradient's runs
    /// along the depth, kernels wider than `KW_TABLE`) and stride `S` (1 or
    /// 2), 32 columns at a time, each tap's masks computed on their own.
    ///
    /// # Safety
    /// As [`short`], without the limits on `run.len` and `geo.kernel_w`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn long<const S: usize>(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        run: Run,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let len = run.len;
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (i, t) in taps.iter().enumerate() {
            debug_check_reads(images, geo, t, &run);
            let (lo, hi) = t.valid(&run, geo.in_h);
            // Wrapping: see `short`.
            let src = img.wrapping_offset(t.start(&run));
            let mut g0 = 0;
            while g0 < len {
                let n = (len - g0).min(32);
                // Columns g0..g0 + n; the valid ones relative to g0.
                let (vlo, vhi) = (lo.saturating_sub(g0).min(n), hi.saturating_sub(g0).min(n));
                let (p_lo, p_hi) = positions(S, vlo, vhi);
                let m = bits(p_lo, p_hi);
                let store = bits(0, n);
                let p = src.wrapping_add(S * g0);
                // SAFETY: `o` is column g0 < len of row i of `dst`; the
                // stores write its columns g0..g0 + n <= len. Loads as in
                // `short`.
                unsafe {
                    let o = out.add(i * dst_stride + g0);
                    let a = _mm512_maskz_loadu_ps(m as u16, p);
                    let b = _mm512_maskz_loadu_ps((m >> 16) as u16, p.wrapping_add(16));
                    if S == 1 {
                        _mm512_mask_storeu_ps(o, store as u16, a);
                        _mm512_mask_storeu_ps(o.wrapping_add(16), (store >> 16) as u16, b);
                    } else {
                        _mm512_mask_storeu_ps(o, store as u16, _mm512_permutex2var_ps(a, evens, b));
                        if n > 16 {
                            let c = _mm512_maskz_loadu_ps((m >> 32) as u16, p.wrapping_add(32));
                            let d = _mm512_maskz_loadu_ps((m >> 48) as u16, p.wrapping_add(48));
                            let v = _mm512_permutex2var_ps(c, evens, d);
                            _mm512_mask_storeu_ps(o.wrapping_add(16), (store >> 16) as u16, v);
                        }
                    }
                }
                g0 += 32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{columns, debug_check_reads, positions, Geometry, Run, Tap, KW_TABLE, PANEL_RUNS};

    /// Lanes of `p` (positions, as i32) inside `lo..hi`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn within(p: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
        _mm256_andnot_si256(_mm256_cmpgt_epi32(lo, p), _mm256_cmpgt_epi32(hi, p))
    }

    /// `[a0 a2 a4 a6 b0 b2 b4 b6]`: the even values of 16 consecutive ones.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn evens(a: __m256, b: __m256) -> __m256 {
        // [a0 a2 b0 b2 | a4 a6 b4 b6], then swap the middle 64-bit lanes.
        let v = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
    }

    /// Stores the 8 columns `g0..g0 + 8` of a run of `len` at `o`: whole, or
    /// masked to the columns `< len`.
    ///
    /// # Safety
    /// AVX2 is available; `o` is column `g0 < len` of a row that holds the
    /// run's `len` columns.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(o: *mut f32, g0: usize, len: usize, v: __m256) {
        // SAFETY: the caller's; a whole store only when g0 + 8 <= len.
        unsafe {
            if g0 + 8 <= len {
                _mm256_storeu_ps(o, v);
            } else {
                let cols = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let cols = _mm256_add_epi32(cols, _mm256_set1_epi32(g0 as i32));
                _mm256_maskstore_ps(
                    o,
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), cols),
                    v,
                );
            }
        }
    }

    /// Mask vectors [`panel`] keeps per panel: `kernel_w * runs` of them.
    pub(super) const PANEL_MASKS: usize = 32;

    /// The AVX-512 `gather` for a 16-wide panel: per tap and half panel,
    /// the lanes that see input from signed compares (AVX2 has no unsigned
    /// ones), and one masked gather.
    ///
    /// # Safety
    /// AVX2 is available; `dst` holds `taps.len() * 16` floats; every
    /// pixel a tap sees over the lanes lies inside `images`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        lanes: &super::Lanes,
        dst: &mut [f32],
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let load = |a: &[i32; 32], h: usize| {
            // SAFETY: 8 i32s at 8 * h, h < 2, inside the array.
            unsafe { _mm256_loadu_si256(a.as_ptr().add(8 * h).cast()) }
        };
        let (base, oh_s, ow) = (
            [load(&lanes.base, 0), load(&lanes.base, 1)],
            [load(&lanes.oh_s, 0), load(&lanes.oh_s, 1)],
            [load(&lanes.ow, 0), load(&lanes.ow, 1)],
        );
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let cols = _mm256_set1_epi32(lanes.cols as i32);
        let on = [
            _mm256_cmpgt_epi32(cols, iota),
            _mm256_cmpgt_epi32(cols, _mm256_add_epi32(iota, _mm256_set1_epi32(8))),
        ];
        let (in_h, minus_one) = (_mm256_set1_epi32(geo.in_h as i32), _mm256_set1_epi32(-1));
        for (i, t) in taps.iter().enumerate() {
            let dh = _mm256_set1_epi32(t.dh as i32);
            let lo = _mm256_set1_epi32(t.w_lo as i32 - 1);
            let hi = _mm256_set1_epi32(t.w_hi as i32);
            let p = img.wrapping_offset(t.off);
            for h in 0..2 {
                let ih = _mm256_add_epi32(oh_s[h], dh);
                let row = _mm256_and_si256(
                    _mm256_cmpgt_epi32(ih, minus_one),
                    _mm256_cmpgt_epi32(in_h, ih),
                );
                let col =
                    _mm256_and_si256(_mm256_cmpgt_epi32(ow[h], lo), _mm256_cmpgt_epi32(hi, ow[h]));
                let m = _mm256_castsi256_ps(_mm256_and_si256(on[h], _mm256_and_si256(row, col)));
                // SAFETY: as in the AVX-512 `gather`: only enabled lanes,
                // pixels the tap sees, are read; `dst` holds row i.
                unsafe {
                    let v = _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), p, base[h], m);
                    _mm256_storeu_ps(out.add(16 * i + 8 * h), v);
                }
            }
        }
    }

    /// Whether [`panel`] reads a run whose `S * 16` positions from panel
    /// lane 0 lie inside `images` with plain loads, AND-ed with the load
    /// masks (`false`: every run with `vmaskmovps`, for comparison). On
    /// Zen 4 the masked loads were most of the AVX2 panel fill's samples
    /// (`perf annotate`), and the fill took 1.8x the AVX-512 one's time for
    /// the same columns (BENCHMARKS.md, "The AVX2 forward: plain loads in
    /// the panel fill, short row tiles").
    const PLAIN_LOADS: bool = true;

    /// Whether [`panel`] prefetches, per input row of a tap set (at
    /// `kw = 0`), the line the next panel, 16 columns on, reads last from
    /// it. A panel's depth block touches one new line in each of `kc /
    /// KW` input rows (85 at 3x3 with `kc = 256`), more streams than the
    /// hardware prefetchers follow, and `perf annotate` put a third of
    /// the fill's samples on the uses of its image loads. Measured (Zen 4,
    /// FROSTGRAD_SIMD=avx2, batch 8 x 224, one thread, CPU time, medians
    /// of 8 alternating runs under load average 7): the 3x3 forwards took
    /// 0.95-1.00x the time without it; two panels ahead measured no
    /// better. (The AVX-512 fill's 32-wide panels halve the streams' rate.)
    const PREFETCH_NEXT: bool = true;

    /// [`super::fill_panel`] for 16-wide panels and stride `S` (1 or 2):
    /// as the AVX-512 `panel`, with `vmaskmovps` loads (zero in masked-off
    /// lanes, which are not accessed) OR-ed into two (stride 2: four)
    /// registers per tap, stored whole.
    ///
    /// # Safety
    /// AVX2 is available; `dst` holds `taps.len() * 16` floats; the runs
    /// lie inside the panel (`off + len <= 16`), at most `PANEL_RUNS` of
    /// them and `geo.kernel_w * runs.len() <= PANEL_MASKS`; every pixel a
    /// tap sees over a run (per [`Tap::valid`]) lies inside `images`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn panel<const S: usize>(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        runs: &[(usize, Run)],
        dst: &mut [f32],
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let nruns = runs.len();
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let zero = _mm256_setzero_si256();
        // As in the AVX-512 `panel`: per run, where panel lane 0 would
        // read; per (kw, run) the load masks of the S * 16 positions.
        let mut base = [0isize; PANEL_RUNS];
        let mut oh_s = [0isize; PANEL_RUNS];
        let mut masks = [[zero; 4]; PANEL_MASKS];
        for (r, &(off, run)) in runs.iter().enumerate() {
            base[r] = run.base as isize - (S * off) as isize;
            oh_s[r] = run.oh_s;
            for (kw, &(w_lo, w_hi)) in geo.kw_ranges.iter().enumerate().take(geo.kernel_w) {
                let (lo, hi) = columns(w_lo, w_hi, &run);
                let (p_lo, p_hi) = positions(S, off + lo, off + hi);
                let (p_lo, p_hi) = (
                    _mm256_set1_epi32(p_lo as i32),
                    _mm256_set1_epi32(p_hi as i32),
                );
                for (q, m) in masks[kw * nruns + r].iter_mut().enumerate().take(2 * S) {
                    *m = within(
                        _mm256_add_epi32(iota, _mm256_set1_epi32(8 * q as i32)),
                        p_lo,
                        p_hi,
                    );
                }
            }
        }
        let or = |a: __m256, b: __m256| _mm256_or_ps(a, b);
        for (i, t) in taps.iter().enumerate() {
            let mut v = [_mm256_setzero_ps(); 4];
            for r in 0..nruns {
                debug_check_reads(images, geo, t, &runs[r].1);
                // A padding row reads nothing (its lanes stay 0).
                if ((oh_s[r] + t.dh) as usize) >= geo.in_h {
                    continue;
                }
                let m = &masks[t.kw * nruns + r];
                // Wrapping: see the AVX-512 `panel`.
                let p = img.wrapping_offset(base[r] + t.off);
                let q = base[r] + t.off;
                if PREFETCH_NEXT && t.kw == 0 {
                    // The line the next panel (16 columns on) reads last
                    // from this input row: only a hint, never faults.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(S * 32 + 1).cast());
                }
                if PLAIN_LOADS && q >= 0 && q as usize + S * 16 <= images.len() {
                    let and = |a: __m256, m: __m256i| _mm256_and_ps(a, _mm256_castsi256_ps(m));
                    // SAFETY: the S * 16 positions from `q` lie inside
                    // `images` (just checked); the masks keep the run's
                    // valid columns and zero the rest, as the masked loads
                    // below would.
                    unsafe {
                        let p = img.offset(q);
                        v[0] = or(v[0], and(_mm256_loadu_ps(p), m[0]));
                        v[1] = or(v[1], and(_mm256_loadu_ps(p.add(8)), m[1]));
                        if S == 2 {
                            v[2] = or(v[2], and(_mm256_loadu_ps(p.add(16)), m[2]));
                            v[3] = or(v[3], and(_mm256_loadu_ps(p.add(24)), m[3]));
                        }
                    }
                    continue;
                }
                // SAFETY: the masks enable only positions of the run's
                // valid columns (and for stride 2 the odd positions between
                // two of them, in the same input row): inside `images`.
                unsafe {
                    v[0] = or(v[0], _mm256_maskload_ps(p, m[0]));
                    v[1] = or(v[1], _mm256_maskload_ps(p.wrapping_add(8), m[1]));
                    if S == 2 {
                        v[2] = or(v[2], _mm256_maskload_ps(p.wrapping_add(16), m[2]));
                        v[3] = or(v[3], _mm256_maskload_ps(p.wrapping_add(24), m[3]));
                    }
                }
            }
            // SAFETY: row i of `dst` holds 16 floats (the caller's promise).
            unsafe {
                let o = out.add(16 * i);
                if S == 1 {
                    _mm256_storeu_ps(o, v[0]);
                    _mm256_storeu_ps(o.add(8), v[1]);
                } else {
                    _mm256_storeu_ps(o, evens(v[0], v[1]));
                    _mm256_storeu_ps(o.add(8), evens(v[2], v[3]));
                }
            }
        }
    }

    /// [`super::fill_taps`] for stride `S` (1 or 2), 8 output columns at a
    /// time, with `vmaskmovps` loads (zero in the padding, no access outside
    /// the input row); whole groups of 8 stored as they are, the run's last
    /// partial group with a masked store. Runs of at most 16 columns (the
    /// forward's 16-wide panels) look their load masks up per `kw`.
    ///
    /// # Safety
    /// AVX2 is available; `dst` holds `(taps.len() - 1) * dst_stride +
    /// run.len` floats; every pixel a tap sees over the run (per
    /// [`Tap::valid`]) lies inside `images`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill<const S: usize>(
        images: &[f32],
        geo: &Geometry,
        taps: &[Tap],
        run: Run,
        dst: &mut [f32],
        dst_stride: usize,
    ) {
        let (img, out) = (images.as_ptr(), dst.as_mut_ptr());
        let len = run.len;
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let eight = _mm256_set1_epi32(8);
        if len <= 16 && geo.tables() {
            // Load masks per kw, S * 16 positions: four vectors.
            let zero = _mm256_setzero_si256();
            let mut table = [[zero; 4]; KW_TABLE];
            for (m, &(w_lo, w_hi)) in table.iter_mut().zip(&geo.kw_ranges).take(geo.kernel_w) {
                let (lo, hi) = columns(w_lo, w_hi, &run);
                let (p_lo, p_hi) = positions(S, lo, hi);
                let (p_lo, p_hi) = (
                    _mm256_set1_epi32(p_lo as i32),
                    _mm256_set1_epi32(p_hi as i32),
                );
                for (q, v) in m.iter_mut().enumerate() {
                    let p = _mm256_add_epi32(iota, _mm256_set1_epi32(8 * q as i32));
                    *v = within(p, p_lo, p_hi);
                }
            }
            for (i, t) in taps.iter().enumerate() {
                debug_check_reads(images, geo, t, &run);
                let m = if t.row_ok(&run, geo.in_h) {
                    &table[t.kw]
                } else {
                    &[zero; 4]
                };
                // Wrapping: see the AVX-512 path.
                let src = img.wrapping_offset(t.start(&run));
                // SAFETY: `o` is row i of `dst` (the caller's size
                // promise); loads enable only positions of `positions`,
                // inside a real input row, so inside `images`.
                unsafe {
                    let o = out.add(i * dst_stride);
                    let a = _mm256_maskload_ps(src, m[0]);
                    let b = _mm256_maskload_ps(src.wrapping_add(8), m[1]);
                    if S == 1 {
                        store(o, 0, len, a);
                        if len > 8 {
                            store(o.add(8), 8, len, b);
                        }
                    } else {
                        store(o, 0, len, evens(a, b));
                        if len > 8 {
                            let c = _mm256_maskload_ps(src.wrapping_add(16), m[2]);
                            let d = _mm256_maskload_ps(src.wrapping_add(24), m[3]);
                            store(o.add(8), 8, len, evens(c, d));
                        }
                    }
                }
            }
            return;
        }
        for (i, t) in taps.iter().enumerate() {
            debug_check_reads(images, geo, t, &run);
            let (lo, hi) = t.valid(&run, geo.in_h);
            let (p_lo, p_hi) = positions(S, lo, hi);
            let (p_lo, p_hi) = (
                _mm256_set1_epi32(p_lo as i32),
                _mm256_set1_epi32(p_hi as i32),
            );
            // Wrapping: see the AVX-512 path.
            let src = img.wrapping_offset(t.start(&run));
            let mut g0 = 0;
            while g0 < len {
                // Columns g0..g0 + 8 read positions S * g0 + 0..8 * S.
                let pos = _mm256_add_epi32(iota, _mm256_set1_epi32((S * g0) as i32));
                let p = src.wrapping_add(S * g0);
                // SAFETY: as above; `o` is column g0 < len of row i.
                unsafe {
                    let a = _mm256_maskload_ps(p, within(pos, p_lo, p_hi));
                    let v = if S == 1 {
                        a
                    } else {
                        let pos = _mm256_add_epi32(pos, eight);
                        let b = _mm256_maskload_ps(p.wrapping_add(8), within(pos, p_lo, p_hi));
                        evens(a, b)
                    };
                    store(out.add(i * dst_stride + g0), g0, len, v);
                }
                g0 += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::simd;
    use super::super::test_data::pseudo_random;
    use super::*;

    /// Input index of output `(oh, ow)` under tap `(c, kh, kw)` of image
    /// `n`, or `None` in the padding: straight from the definition.
    fn source(
        g: &Conv2dGeometry,
        n: usize,
        (c, kh, kw): (usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Option<usize> {
        let ih = (oh * g.stride.0 + kh * g.dilation.0) as isize - g.padding.0 as isize;
        let iw = (ow * g.stride.1 + kw * g.dilation.1) as isize - g.padding.1 as isize;
        ((0..g.in_h as isize).contains(&ih) && (0..g.in_w as isize).contains(&iw))
            .then(|| ((n * g.in_channels + c) * g.in_h + ih as usize) * g.in_w + iw as usize)
    }

    /// Every run `(oh, ow, len)` of every image of `g`, every tap, on every
    /// path this CPU supports, into a buffer poisoned with NaN with room
    /// around each row: the run's values must be the input pixels (0 in
    /// the padding) and nothing else may change.
    fn check(g: &Conv2dGeometry, max_len: usize) {
        let in_image = g.in_channels * g.in_h * g.in_w;
        let x = pseudo_random(g.batch * in_image, (g.in_w * 7 + g.in_h) as u64);
        let geo = Geometry::new(g);
        let mut taps = vec![];
        let mut ids = vec![];
        for c in 0..g.in_channels {
            for kh in 0..g.kernel_h {
                for kw in 0..g.kernel_w {
                    taps.push(Tap::new(g, c, kh, kw));
                    ids.push((c, kh, kw));
                }
            }
        }
        let pad = 3;
        for path in simd::supported() {
            for n in 0..g.batch {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        for len in 1..=(g.out_w - ow).min(max_len) {
                            let stride = len + 2 * pad + (len % 3);
                            let mut dst = vec![f32::NAN; taps.len() * stride + pad];
                            let run = Run::new(g, in_image, n, oh, ow, len);
                            // SAFETY: a supported path; `x` holds the
                            // geometry's whole batch.
                            unsafe {
                                fill_taps(path, &x, &geo, &taps, run, &mut dst[pad..], stride)
                            };
                            for (i, &tap) in ids.iter().enumerate() {
                                for j in 0..stride {
                                    let got = dst.get(pad + i * stride + j).copied();
                                    let Some(got) = got else { continue };
                                    let what = || {
                                        format!("{path:?} {g:?} image {n} row {oh} ow {ow} len {len} tap {tap:?} column {j}")
                                    };
                                    if j < len {
                                        let want =
                                            source(g, n, tap, (oh, ow + j)).map_or(0.0, |s| x[s]);
                                        assert_eq!(got.to_bits(), want.to_bits(), "{}", what());
                                    } else {
                                        assert!(got.is_nan(), "wrote outside the run: {}", what());
                                    }
                                }
                            }
                            assert!(dst[..pad].iter().all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }

    /// [`fill_panel`] over every stretch of `cols` consecutive output
    /// pixels of `g` (in image, row, column order, so that stretches cross
    /// rows and images), for panel widths of both kernels and ragged ones,
    /// on every path this CPU supports, into poisoned panels: each tap's
    /// row must be the pixels it sees, then zeros up to `nr`, and nothing
    /// past the panel may change.
    fn check_panels(g: &Conv2dGeometry) {
        let in_image = g.in_channels * g.in_h * g.in_w;
        let x = pseudo_random(g.batch * in_image, (g.in_w * 5 + g.in_h) as u64);
        let geo = Geometry::new(g);
        let mut taps = vec![];
        let mut ids = vec![];
        for c in 0..g.in_channels {
            for kh in 0..g.kernel_h {
                for kw in 0..g.kernel_w {
                    taps.push(Tap::new(g, c, kh, kw));
                    ids.push((c, kh, kw));
                }
            }
        }
        let pixels = g.batch * g.out_h * g.out_w;
        let at = |j: usize| {
            let (n, q) = (j / (g.out_h * g.out_w), j % (g.out_h * g.out_w));
            (n, q / g.out_w, q % g.out_w)
        };
        for nr in [32, 16, 8, 5] {
            for j0 in 0..pixels {
                for cols in [nr, (pixels - j0).min(nr), nr / 2 + 1]
                    .into_iter()
                    .filter(|&c| c <= pixels - j0)
                {
                    let mut runs = vec![];
                    let mut done = 0;
                    while done < cols {
                        let (n, oh, ow) = at(j0 + done);
                        let len = (g.out_w - ow).min(cols - done);
                        runs.push((done, Run::new(g, in_image, n, oh, ow, len)));
                        done += len;
                    }
                    for path in simd::supported() {
                        let mut dst = vec![f32::NAN; taps.len() * nr + 3];
                        // SAFETY: as for `fill_taps` in the test above.
                        unsafe { fill_panel(path, &x, &geo, &taps, &runs, cols, &mut dst, nr) };
                        for (i, &tap) in ids.iter().enumerate() {
                            for e in 0..nr {
                                let got = dst[i * nr + e];
                                let want = if e < cols {
                                    let (n, oh, ow) = at(j0 + e);
                                    source(g, n, tap, (oh, ow)).map_or(0.0, |s| x[s])
                                } else {
                                    0.0
                                };
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{path:?} {g:?} nr {nr} pixels {j0}..+{cols} tap {tap:?} column {e}"
                                );
                            }
                        }
                        assert!(
                            dst[taps.len() * nr..].iter().all(|v| v.is_nan()),
                            "wrote past the panel"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn panels_match_the_definition_across_rows_and_images() {
        // Rows of 7 (several runs a panel), 37 and 40 (runs crossing
        // panels), 2 (more runs than the register path takes), strides
        // 1-3, padding at both edges, dilation, two images.
        check_panels(&geometry([2, 2, 4, 7], (3, 3), (1, 1), (1, 1), (1, 1)));
        check_panels(&geometry([2, 1, 3, 37], (3, 3), (1, 2), (1, 1), (1, 1)));
        check_panels(&geometry([2, 1, 3, 40], (2, 3), (1, 1), (1, 2), (2, 2)));
        check_panels(&geometry([2, 1, 5, 11], (3, 3), (2, 3), (1, 1), (1, 1)));
        check_panels(&geometry([2, 1, 2, 2], (3, 3), (1, 1), (1, 1), (1, 1)));
        check_panels(&geometry([1, 1, 9, 23], (7, 7), (2, 2), (3, 3), (1, 1)));
    }

    fn geometry(
        input: [usize; 4],
        k: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
    ) -> Conv2dGeometry {
        let weight = [2, input[1], k.0, k.1];
        Conv2dGeometry::new(input, weight, stride, padding, dilation).unwrap()
    }

    #[test]
    fn runs_match_the_definition_at_strides_1_2_3() {
        for s in 1..=3 {
            // Padding at both edges, 3x3, two images.
            check(&geometry([2, 2, 5, 9], (3, 3), (s, s), (1, 1), (1, 1)), 40);
            // Asymmetric: wide padding, dilation, non-square kernel.
            check(&geometry([1, 2, 6, 11], (2, 3), (1, s), (2, 3), (2, 2)), 40);
        }
    }

    #[test]
    fn long_runs_cross_every_vector_width() {
        // Rows wider than 32 and 64 columns (the weight gradient's runs and
        // the portable path's whole rows), at stride 1 and 2, with padding.
        for s in 1..=2 {
            let g = geometry([1, 1, 3, 70 * s + 1], (3, 3), (1, s), (1, 1), (1, 1));
            check(&g, usize::MAX);
        }
    }

    #[test]
    fn tiny_images_and_taps_that_see_only_padding() {
        // 1-pixel-wide images, a kernel wider than the input, padding
        // beyond the kernel's reach (whole taps of zeros), a 7-wide stem.
        check(&geometry([2, 1, 1, 1], (3, 3), (1, 1), (1, 1), (1, 1)), 40);
        check(&geometry([1, 2, 2, 3], (3, 5), (1, 2), (2, 4), (1, 1)), 40);
        check(&geometry([1, 1, 3, 2], (1, 1), (1, 1), (1, 3), (1, 1)), 40);
        check(&geometry([1, 1, 9, 20], (7, 7), (2, 2), (3, 3), (1, 1)), 40);
        // A kernel wider than the per-kw tables.
        check(
            &geometry([1, 1, 2, 40], (1, 17), (1, 1), (0, 8), (1, 1)),
            40,
        );
    }
}
