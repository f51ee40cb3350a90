//! col2im: scattering the input gradient's column rows (`Wᵀ · dy`) back
//! onto the input planes.

use super::super::tap_classes::ClassOrder;
use super::columns::for_each_tap_row;
use super::{valid_outputs, Chunk, Plan};
use crate::backend::Conv2dGeometry;

/// Adds a block of the chunk's column-matrix gradient back onto the
/// input-image gradients it came from: `col[rows, columns]` holds the rows
/// (taps) of whole input channels `c0..`, and `planes[j]` is image `j`'s
/// gradient for those channels (as many planes as the block has channels).
///
/// With `merge` and a row of three taps at stride 2 or 1
/// ([`merges_tap_rows`]), the three taps of one kernel row are added onto
/// each input row in one pass ([`add_tap_row_triple`] at stride 2,
/// [`add_tap_row_triple_s1`] at stride 1).
pub(super) fn col2im_add(
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
                        let taps = [
                            &c0[at..][..g.out_w],
                            &c1[at..][..g.out_w],
                            &c2[at..][..g.out_w],
                        ];
                        let row = &mut plane[ih * g.in_w..(ih + 1) * g.in_w];
                        if stride_w == 1 {
                            add_tap_row_triple_s1(taps, row);
                        } else {
                            add_tap_row_triple(taps, row);
                        }
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
/// 3 wide, padding 1, no dilation, with every output column live for the
/// middle tap: at stride 2 (ResNet's stride-2 3x3 layers) input column
/// `2 * ow`, where at 7- and 4-value rows a call and a pass per tap and row
/// were a fifth of these input gradients' time (`perf`); at stride 1
/// (rows as wide as the input's: the stride-1 3x3 input gradients that do
/// not flip, such as layer3's 256->256 on AVX2) input column `ow`, where
/// the tap-by-tap scatter was ~10 % of the samples of 3x3 256->256 at
/// 14x14, batch 8, and merged ~5 % (`perf`, one thread, Zen 2;
/// BENCHMARKS.md issue 9 item 45, commit fb19b3e).
/// `FROSTGRAD_COL2IM_MERGE=0` adds tap by tap (for comparison; the tests
/// run both).
fn merges_tap_rows(g: &Conv2dGeometry) -> bool {
    g.kernel_w == 3
        && g.padding.1 == 1
        && g.dilation.1 == 1
        && match g.stride.1 {
            1 => g.out_w == g.in_w,
            2 => valid_outputs(g.out_w, g.in_w, 2, 1, 1) == (0, g.out_w),
            _ => false,
        }
}

/// Adds one kernel row's three taps (`taps[kw][ow]`, stride 1, padding 1,
/// rows as wide as `row`) onto input row `row`: `row[iw]` gets
/// `taps[0][iw + 1]`, then `taps[1][iw]`, then `taps[2][iw - 1]` (those
/// that exist), the order in which the tap-by-tap loop adds them, so the
/// sums are the same bit for bit. One pass over the row instead of three;
/// the inner loop is plain slices, which the compiler vectorises.
fn add_tap_row_triple_s1(taps: [&[f32]; 3], row: &mut [f32]) {
    let [t0, t1, t2] = taps;
    let n = row.len();
    assert!(t0.len() == n && t1.len() == n && t2.len() == n);
    match n {
        0 => {}
        1 => row[0] += t1[0],
        _ => {
            row[0] = row[0] + t0[1] + t1[0];
            let (inner, last) = row[1..].split_at_mut(n - 2);
            for (((d, &a), &b), &c) in inner
                .iter_mut()
                .zip(&t0[2..])
                .zip(&t1[1..n - 1])
                .zip(&t2[..n - 2])
            {
                *d = *d + a + b + c;
            }
            last[0] = last[0] + t1[n - 1] + t2[n - 2];
        }
    }
}

/// Whether the input gradient merges tap rows where it can
/// ([`merges_tap_rows`]): unless `FROSTGRAD_COL2IM_MERGE=0`.
pub(super) fn merge_tap_rows_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::super::env_switch::on_unless_zero(&ON, "FROSTGRAD_COL2IM_MERGE")
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

/// [`col2im_add`] for a 1x1, unpadded kernel (`input_grad::overwrites_dx`), which
/// writes every element of the chunk's rows of `planes` instead of adding
/// onto them: input pixel `(oh * sh, ow * sw)` takes the gradient of
/// output `(oh, ow)` (at most one, the taps do not overlap) and every other
/// pixel of those rows is 0. So `dx` needs no zeroing pass first: for the
/// 1x1 stride-2 layers three quarters of it are those zeros, and the
/// zeroing, then adding onto it, was a second and third pass over it.
pub(super) fn col2im_set(
    col: &[f32],
    g: &Conv2dGeometry,
    chunk: &Chunk,
    planes: &mut [&mut [f32]],
) {
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
///
/// [`gather_even`]: super::columns::gather_even
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
pub(super) fn restage(
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

#[cfg(test)]
mod tests {
    use super::super::super::simd;
    use super::super::input_grad::input_grad_col2im;
    use super::super::test_support::{
        assert_close, col2im_limits, for_each_case, thread_pool, Case, Seeds,
    };
    use super::super::Limits;
    use super::*;
    use crate::backend::cpu::test_data::pseudo_random;

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
        // tap-by-tap one bit for bit and both match the f64 loops. Stride 1
        // too (rows as wide as the input's): widths 14, 2 and 1 (no left or
        // right tap), kernel height 1, vertical stride 2. On every SIMD
        // path this CPU has (the columns `Wᵀ · dy` come from its GEMM).
        let cases: &[Case] = &[
            ([2, 5, 14, 14], [3, 5, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([3, 4, 6, 2], [5, 4, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([2, 3, 5, 1], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)),
            ([2, 3, 6, 23], [2, 3, 1, 3], (1, 1), (0, 1), (1, 1)),
            ([2, 3, 9, 17], [4, 3, 3, 3], (2, 1), (1, 1), (1, 1)),
            ([2, 5, 14, 14], [3, 5, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([3, 4, 7, 7], [5, 4, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([2, 3, 9, 45], [4, 3, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([2, 3, 6, 46], [2, 3, 1, 3], (1, 2), (0, 1), (1, 1)),
            ([1, 2, 5, 1], [3, 2, 3, 3], (2, 2), (1, 1), (1, 1)),
            ([1, 2, 4, 2], [3, 2, 3, 3], (2, 2), (1, 1), (1, 1)),
        ];
        let pool = thread_pool(2);
        let seeds = Seeds::new(31, 130, None, 330);
        for_each_case(cases, seeds, |case, _, d| {
            let (g, w, dy) = (&d.g, &d.w, &d.dy);
            assert!(merges_tap_rows(g), "case {case}");
            simd::on_every_path(&pool, |path| {
                for limits in col2im_limits() {
                    let Limits {
                        block_elems,
                        min_columns,
                        ..
                    } = limits;
                    let [merged, by_tap] = [true, false].map(|merge| {
                        pool.install(|| input_grad_col2im(dy, w, g, limits, false, merge).unwrap())
                    });
                    let what = format!(
                        "case {case} {path:?} blocks {block_elems} columns {min_columns} dx"
                    );
                    assert_close(&what, &merged, &d.r.dx, 1e-5);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(bits(&merged) == bits(&by_tap), "{what}: merged differs");
                }
            });
        });
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
}
