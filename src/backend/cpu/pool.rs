//! Max pooling (with PyTorch's arg-max convention) and adaptive average
//! pooling, one `(n, c)` plane per parallel task.

use std::cell::Cell;

use rayon::prelude::*;

use super::buffer_pool;
use super::check::checked_numel;
use crate::backend::{AdaptivePool2dGeometry, Pool2dGeometry};
use crate::error::{Error, Result};

/// Window start and (exclusive) end along one axis for output `o`, clipped
/// to the input: `start` is advanced past the padding in steps of the
/// dilation so it lands on a real tap (PyTorch's `cpu_max_pool` loop).
fn max_window(
    o: usize,
    stride: usize,
    pad: usize,
    kernel: usize,
    dilation: usize,
    input: usize,
) -> (usize, usize) {
    let first = (o * stride) as isize - pad as isize;
    let end = (first + ((kernel - 1) * dilation) as isize + 1).min(input as isize);
    let mut start = first;
    while start < 0 {
        start += dilation as isize;
    }
    (start as usize, end.max(start) as usize)
}

/// Pooled values and arg-max indices (flat `h*W + w` into the input plane).
///
/// Within a window, taps are scanned row-major and the running maximum is
/// replaced when `v > max || v.is_nan()`, exactly PyTorch's rule: the first
/// of equal maxima wins, and a NaN wins over every number (the last NaN in
/// the window if there are several). A window of only `-inf` reports its
/// first tap.
pub(super) fn max_pool2d(x: &[f32], g: &Pool2dGeometry) -> Result<(Vec<f32>, Vec<i64>)> {
    let op = "max_pool2d";
    let planes = checked_numel(op, &[g.batch, g.channels])?;
    checked_numel(op, &[g.in_h, g.in_w])?;
    let out_plane = checked_numel(op, &[g.out_h, g.out_w])?;
    // Every element of both is written below.
    let mut values = buffer_pool::uninit(op, checked_numel(op, &[planes, out_plane])?)?;
    let mut indices = buffer_pool::uninit(op, values.len())?;
    if values.is_empty() {
        return Ok((values, indices));
    }
    max_pool_planes(x, g, &mut values, &mut indices)?;
    Ok((values, indices))
}

/// [`max_pool2d`]'s loop over planes and output rows.
///
/// Each output row is computed one window tap at a time across all of its
/// outputs: the running maximum and the number of the tap that holds it
/// (`-1`: the window's first real tap) are rows of f32 and i32, so the
/// compare-and-select vectorises and has no data-dependent branch (one per
/// tap mispredicts on real activations). The taps' values come from the
/// input row padded with -inf and split by column modulo the stride, so
/// that tap `j` of every output is one contiguous run; a padding tap reads
/// -inf, which never replaces the maximum. Tap numbers become in-plane
/// indices once per output.
fn max_pool_planes(
    x: &[f32],
    g: &Pool2dGeometry,
    values: &mut [f32],
    indices: &mut [i64],
) -> Result<()> {
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    let (in_w, out_w) = (g.in_w, g.out_w);
    let in_plane = g.in_h * in_w;
    let out_plane = g.out_h * out_w;
    if i32::try_from(kh * kw).is_err() {
        return Err(Error::invalid(
            "max_pool2d",
            format!("a {kh}x{kw} window has more taps than this kernel counts"),
        ));
    }
    // Column `ow*sw + j*dw` of the row padded by `pw` is output `ow`'s tap `j`.
    let padded_len = ((out_w - 1) * sw + (kw - 1) * dw + 1).max(in_w + pw);
    let phase_len = padded_len.div_ceil(sw) + out_w;
    // Tap `t`'s offset in the plane from its window's first row and column
    // (a table: a division per output costs more than the pooling).
    let tap_offset: Vec<usize> = (0..kh * kw)
        .map(|t| (t / kw) * dh * in_w + (t % kw) * dw)
        .collect();
    // The first real tap of each output column's window.
    let first_col: Vec<usize> = (0..out_w)
        .map(|ow| max_window(ow, sw, pw, kw, dw, in_w).0)
        .collect();
    // A few tasks per thread, each with one scratch copy from the buffer
    // pool (a fresh allocation per task would page-fault every step), one
    // per thread taken before the loop (so that a steady-state step never
    // misses the pool however rayon overlaps the tasks). Every plane
    // writes the same (real) positions of the split copy, so its padding
    // stays -inf from here on.
    let planes = values.len() / out_plane;
    let per_task = planes.div_ceil(4 * rayon::current_num_threads()).max(1);
    let scratch =
        buffer_pool::TaskBuffers::new("max_pool2d", g.in_h * sw * phase_len, f32::NEG_INFINITY)?;
    values
        .par_chunks_mut(out_plane * per_task)
        .zip(indices.par_chunks_mut(out_plane * per_task))
        .enumerate()
        .try_for_each(|(k, (vals, idxs))| -> Result<()> {
            scratch.with(|phases| {
                // Reused per thread (a fresh one came from untouched heap
                // pages now and then: BENCHMARKS.md, issue 9 item 16).
                let mut tap = TAP.with(Cell::take);
                tap.clear();
                tap.resize(out_w, 0);
                for (j, (best, idxs)) in vals
                    .chunks_exact_mut(out_plane)
                    .zip(idxs.chunks_exact_mut(out_plane))
                    .enumerate()
                {
                    let p = k * per_task + j;
                    let plane = &x[p * in_plane..(p + 1) * in_plane];
                    // Row `ih`, phase `q`: padded columns `q, q + sw, ...`.
                    for (row, split) in plane
                        .chunks_exact(in_w)
                        .zip(phases.chunks_exact_mut(sw * phase_len))
                    {
                        if sw == 2 && pw % 2 == 1 && in_w % 2 == 0 {
                            // ResNet's 3x3/2 pool, padding 1: column `2m` is
                            // padded column `2m + 1` (phase 1, m) and column
                            // `2m + 1` is phase 0, m + 1. One pass that the
                            // compiler vectorises, where the strided copy below
                            // is a scalar loop.
                            let m0 = pw / 2;
                            let (even, odd) = split.split_at_mut(phase_len);
                            for ((pair, o), e) in row
                                .chunks_exact(2)
                                .zip(&mut odd[m0..])
                                .zip(&mut even[m0 + 1..])
                            {
                                (*o, *e) = (pair[0], pair[1]);
                            }
                            continue;
                        }
                        for (q, phase) in split.chunks_exact_mut(phase_len).enumerate() {
                            // The first real column in phase `q`.
                            let c0 = (q + sw - pw % sw) % sw;
                            let m0 = (c0 + pw) / sw;
                            for (d, &v) in phase[m0..]
                                .iter_mut()
                                .zip(row[c0.min(in_w)..].iter().step_by(sw))
                            {
                                *d = v;
                            }
                        }
                    }
                    for (oh, (best, idxs)) in best
                        .chunks_exact_mut(out_w)
                        .zip(idxs.chunks_exact_mut(out_w))
                        .enumerate()
                    {
                        let (h0, h1) = max_window(oh, sh, ph, kh, dh, g.in_h);
                        best.fill(f32::NEG_INFINITY);
                        tap.fill(-1);
                        for (r, ih) in (h0..h1).step_by(dh).enumerate() {
                            let phases = &phases[ih * sw * phase_len..(ih + 1) * sw * phase_len];
                            for j in 0..kw {
                                let (a, q) = ((j * dw) / sw, (j * dw) % sw);
                                let start = q * phase_len + a;
                                let taps = &phases[start..start + out_w];
                                let number = (r * kw + j) as i32;
                                let (best, tap) = (&mut best[..out_w], &mut tap[..out_w]);
                                for i in 0..out_w {
                                    let (v, b) = (taps[i], best[i]);
                                    // PyTorch's rule: replace when `v > max || isnan(v)`.
                                    // Written as bit masks so that it compiles to
                                    // vector compares and blends, never to a branch.
                                    let take = -i32::from((v > b) | v.is_nan());
                                    let m = take as u32;
                                    best[i] =
                                        f32::from_bits((v.to_bits() & m) | (b.to_bits() & !m));
                                    tap[i] = (number & take) | (tap[i] & !take);
                                }
                            }
                        }
                        for (ow, (o, &t)) in idxs.iter_mut().zip(tap.iter()).enumerate() {
                            let i = match usize::try_from(t) {
                                Ok(t) => h0 * in_w + ow * sw + tap_offset[t] - pw,
                                Err(_) => h0 * in_w + first_col[ow],
                            };
                            *o = i as i64;
                        }
                    }
                }
                TAP.with(|cell| cell.set(tap));
            })
        })
}

thread_local! {
    /// [`max_pool_planes`]' running arg-max taps of one output row.
    static TAP: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
}

/// Scatters `dy` onto the arg-max positions, adding where windows overlap.
pub(super) fn max_pool2d_backward(
    dy: &[f32],
    indices: &[i64],
    g: &Pool2dGeometry,
) -> Result<Vec<f32>> {
    let op = "max_pool2d_backward";
    let planes = checked_numel(op, &[g.batch, g.channels])?;
    let in_plane = checked_numel(op, &[g.in_h, g.in_w])?;
    let out_plane = checked_numel(op, &[g.out_h, g.out_w])?;
    let out_len = checked_numel(op, &[planes, out_plane])?;
    let dx_len = checked_numel(op, &[planes, in_plane])?;
    // (Checked by the caller too; here because a short `dy` would leave
    // planes of the unzeroed output unwritten.)
    if dy.len() != out_len || indices.len() != out_len {
        return Err(Error::invalid(
            op,
            format!(
                "{} gradients and {} indices for {out_len} pooled values",
                dy.len(),
                indices.len()
            ),
        ));
    }
    if out_len == 0 || in_plane == 0 {
        return buffer_pool::zeroed(op, dx_len);
    }
    // Every plane is zeroed by its own task just before its scatter, while
    // it is in that core's cache: zeroed up front (`buffer_pool::zeroed`),
    // the whole 25 MiB gradient of ResNet's stem pool at batch 8 x 224 was
    // one more pass over memory, on the calling thread alone.
    let mut dx = buffer_pool::uninit(op, dx_len)?;
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(indices.par_chunks(out_plane)))
        .try_for_each(|(dst, (grads, idxs))| {
            dst.fill(0.0);
            for (&gv, &i) in grads.iter().zip(idxs) {
                let slot = usize::try_from(i)
                    .ok()
                    .and_then(|i| dst.get_mut(i))
                    .ok_or_else(|| {
                        Error::invalid(
                            op,
                            format!(
                                "arg-max index {i} is outside the {in_plane}-element input plane"
                            ),
                        )
                    })?;
                *slot += gv;
            }
            Ok(())
        })?;
    Ok(dx)
}

fn adaptive_sizes(op: &'static str, g: &AdaptivePool2dGeometry) -> Result<(usize, usize, usize)> {
    let planes = checked_numel(op, &[g.batch, g.channels])?;
    let in_plane = checked_numel(op, &[g.in_h, g.in_w])?;
    let out_plane = checked_numel(op, &[g.out_h, g.out_w])?;
    checked_numel(op, &[planes, in_plane.max(out_plane)])?;
    Ok((planes, in_plane, out_plane))
}

/// Averages each output cell's window ([`AdaptivePool2dGeometry::window`]).
pub(super) fn adaptive_avg_pool2d(x: &[f32], g: &AdaptivePool2dGeometry) -> Result<Vec<f32>> {
    let op = "adaptive_avg_pool2d";
    let (planes, in_plane, out_plane) = adaptive_sizes(op, g)?;
    let mut out = buffer_pool::zeroed(op, planes * out_plane)?;
    if out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(out_plane)
        .enumerate()
        .for_each(|(p, dst)| {
            let plane = &x[p * in_plane..(p + 1) * in_plane];
            for oh in 0..g.out_h {
                let (h0, h1) = AdaptivePool2dGeometry::window(oh, g.in_h, g.out_h);
                for ow in 0..g.out_w {
                    let (w0, w1) = AdaptivePool2dGeometry::window(ow, g.in_w, g.out_w);
                    // One running f32 sum in row-major order, then `/ kh / kw`:
                    // the same rounding as PyTorch's `cpu_adaptive_avg_pool`.
                    let mut sum = 0.0f32;
                    for ih in h0..h1 {
                        sum = plane[ih * g.in_w + w0..ih * g.in_w + w1]
                            .iter()
                            .fold(sum, |s, &v| s + v);
                    }
                    dst[oh * g.out_w + ow] = sum / (h1 - h0) as f32 / (w1 - w0) as f32;
                }
            }
        });
    Ok(out)
}

/// Spreads each output gradient evenly over its window (adding where
/// windows overlap).
pub(super) fn adaptive_avg_pool2d_backward(
    dy: &[f32],
    g: &AdaptivePool2dGeometry,
) -> Result<Vec<f32>> {
    let op = "adaptive_avg_pool2d_backward";
    let (planes, in_plane, out_plane) = adaptive_sizes(op, g)?;
    let mut dx = buffer_pool::zeroed(op, planes * in_plane)?;
    if dx.is_empty() {
        return Ok(dx);
    }
    dx.par_chunks_mut(in_plane)
        .enumerate()
        .for_each(|(p, dst)| {
            let grads = &dy[p * out_plane..(p + 1) * out_plane];
            for oh in 0..g.out_h {
                let (h0, h1) = AdaptivePool2dGeometry::window(oh, g.in_h, g.out_h);
                for ow in 0..g.out_w {
                    let (w0, w1) = AdaptivePool2dGeometry::window(ow, g.in_w, g.out_w);
                    let share = grads[oh * g.out_w + ow] / (h1 - h0) as f32 / (w1 - w0) as f32;
                    for ih in h0..h1 {
                        dst[ih * g.in_w + w0..ih * g.in_w + w1]
                            .iter_mut()
                            .for_each(|d| *d += share);
                    }
                }
            }
        });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::super::test_data::pseudo_random;
    use super::*;

    /// Direct definition: scan the full (dilated) window, skip taps in the
    /// padding, keep `v > best || isnan(v)`; a window starts at its first
    /// real tap.
    fn naive_max_pool(x: &[f32], g: &Pool2dGeometry) -> (Vec<f32>, Vec<i64>) {
        let (mut vals, mut idxs) = (vec![], vec![]);
        for p in 0..g.batch * g.channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let (mut best, mut best_i) = (f32::NEG_INFINITY, None);
                    for kh in 0..g.kernel.0 {
                        for kw in 0..g.kernel.1 {
                            let ih = (oh * g.stride.0 + kh * g.dilation.0) as isize
                                - g.padding.0 as isize;
                            let iw = (ow * g.stride.1 + kw * g.dilation.1) as isize
                                - g.padding.1 as isize;
                            if ih < 0 || iw < 0 || ih >= g.in_h as isize || iw >= g.in_w as isize {
                                continue;
                            }
                            let i = ih as usize * g.in_w + iw as usize;
                            let v = x[p * g.in_h * g.in_w + i];
                            // The first real tap is the default answer (all -inf window).
                            best_i.get_or_insert(i);
                            if v > best || v.is_nan() {
                                best = v;
                                best_i = Some(i);
                            }
                        }
                    }
                    vals.push(best);
                    idxs.push(best_i.unwrap() as i64);
                }
            }
        }
        (vals, idxs)
    }

    fn geometry(
        input: [usize; 4],
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
    ) -> Pool2dGeometry {
        Pool2dGeometry::new(input, k, s, p, d).unwrap()
    }

    #[test]
    fn max_pool_matches_direct_scan() {
        let cases = [
            geometry([2, 3, 9, 8], (3, 3), (2, 2), (1, 1), (1, 1)), // ResNet's pool, odd size
            geometry([1, 2, 10, 7], (3, 2), (2, 1), (1, 1), (2, 3)), // dilation, asymmetric
            // 2 x 2 x 5 x 6 = 120 floats: the input gradient is at least
            // buffer_pool::MIN_POOLED_BYTES, so the dirty pass below pools it.
            geometry([2, 2, 5, 6], (2, 2), (2, 2), (0, 0), (1, 1)),
        ];
        for (i, g) in cases.iter().enumerate() {
            let x = pseudo_random(g.input_shape().iter().product(), 7 + i as u64);
            let (vals, idxs) = max_pool2d(&x, g).unwrap();
            let (want_vals, want_idxs) = naive_max_pool(&x, g);
            assert_eq!(vals, want_vals, "case {i}");
            assert_eq!(idxs, want_idxs, "case {i}");

            let dy = pseudo_random(vals.len(), 50 + i as u64);
            let plane = g.in_h * g.in_w;
            let mut want = vec![0f64; x.len()];
            for (j, (&d, &ix)) in dy.iter().zip(&want_idxs).enumerate() {
                want[(j / (g.out_h * g.out_w)) * plane + ix as usize] += f64::from(d);
            }
            // The gradient's buffer is zeroed plane by plane by the tasks
            // that scatter into it: the second time, the buffer pool holds
            // one of its size full of NaN (what a previous user could
            // leave), which the backward takes unless a test running
            // meanwhile takes it first. (Every case's gradient is at least
            // MIN_POOLED_BYTES; smaller buffers are never pooled.)
            for dirty in [false, true] {
                if dirty {
                    let mut junk = buffer_pool::uninit::<f32>("test", x.len()).unwrap();
                    junk.fill(f32::NAN);
                    buffer_pool::recycle(junk);
                }
                let dx = max_pool2d_backward(&dy, &idxs, g).unwrap();
                assert_eq!(dx.len(), want.len());
                for (a, b) in dx.iter().zip(&want) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-6,
                        "case {i} backward, dirty {dirty}"
                    );
                }
            }
        }
    }

    #[test]
    fn max_pool_ties_pick_first_and_nan_propagates() {
        // 3x3 plane, 2x2 windows, stride 1.
        let g = geometry([1, 1, 3, 3], (2, 2), (1, 1), (0, 0), (1, 1));
        #[rustfmt::skip]
        let x = [
            5.0, 5.0, 1.0,
            5.0, f32::NAN, 2.0,
            0.0, 3.0, 3.0,
        ];
        let (vals, idxs) = max_pool2d(&x, &g).unwrap();
        assert!(
            vals.iter().all(|v| v.is_nan()),
            "every window holds the NaN: {vals:?}"
        );
        assert_eq!(idxs, vec![4, 4, 4, 4]);

        let x = [1.0, 7.0, 7.0, 7.0, 7.0, 2.0, 3.0, 3.0, 3.0];
        let (vals, idxs) = max_pool2d(&x, &g).unwrap();
        assert_eq!(vals, vec![7.0, 7.0, 7.0, 7.0]);
        assert_eq!(
            idxs,
            vec![1, 1, 3, 4],
            "first maximum in row-major order wins"
        );

        // Two NaNs in one window: PyTorch's rule keeps replacing, so the last wins.
        let g = geometry([1, 1, 1, 3], (1, 3), (1, 1), (0, 0), (1, 1));
        let (vals, idxs) = max_pool2d(&[f32::NAN, 9.0, f32::NAN], &g).unwrap();
        assert!(vals[0].is_nan());
        assert_eq!(idxs, vec![2]);

        // An all -inf window reports its first real tap (the padding is skipped).
        let g = geometry([1, 1, 2, 2], (3, 3), (2, 2), (1, 1), (1, 1));
        let (vals, idxs) = max_pool2d(&[f32::NEG_INFINITY; 4], &g).unwrap();
        assert_eq!(vals, vec![f32::NEG_INFINITY]);
        assert_eq!(idxs, vec![0]);
    }

    #[test]
    fn max_pool_rejects_bad_buffers_and_indices() {
        let g = geometry([1, 1, 3, 3], (2, 2), (1, 1), (0, 0), (1, 1));
        assert!(max_pool2d_backward(&[1.0; 4], &[0, 1, 9, 2], &g).is_err());
        assert!(max_pool2d_backward(&[1.0; 4], &[0, -1, 2, 2], &g).is_err());
        // Fewer gradients or indices than pooled values.
        assert!(max_pool2d_backward(&[1.0; 3], &[0, 1, 2], &g).is_err());
        assert!(max_pool2d_backward(&[1.0; 4], &[0, 1, 2], &g).is_err());
    }

    #[test]
    fn adaptive_avg_pool_matches_window_rule() {
        // 7x5 -> 3x2 has overlapping, unequal windows; 4x4 -> 1x1 is global.
        for (i, (input, out)) in [
            ([2, 3, 7, 5], (3, 2)),
            ([1, 2, 4, 4], (1, 1)),
            ([1, 1, 3, 2], (5, 4)),
        ]
        .into_iter()
        .enumerate()
        {
            let g = AdaptivePool2dGeometry::new(input, out).unwrap();
            let x = pseudo_random(input.iter().product(), 90 + i as u64);
            let y = adaptive_avg_pool2d(&x, &g).unwrap();
            let dy = pseudo_random(y.len(), 95 + i as u64);
            let dx = adaptive_avg_pool2d_backward(&dy, &g).unwrap();
            let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
            let mut want_dx = vec![0f64; x.len()];
            for p in 0..g.batch * g.channels {
                for oh in 0..g.out_h {
                    for ow in 0..g.out_w {
                        // PyTorch: start = floor(o*I/O), end = ceil((o+1)*I/O).
                        let (h0, h1) =
                            (oh * g.in_h / g.out_h, ((oh + 1) * g.in_h).div_ceil(g.out_h));
                        let (w0, w1) =
                            (ow * g.in_w / g.out_w, ((ow + 1) * g.in_w).div_ceil(g.out_w));
                        let count = ((h1 - h0) * (w1 - w0)) as f64;
                        let mut sum = 0f64;
                        for ih in h0..h1 {
                            for iw in w0..w1 {
                                sum += f64::from(x[p * ip + ih * g.in_w + iw]);
                                want_dx[p * ip + ih * g.in_w + iw] +=
                                    f64::from(dy[p * op + oh * g.out_w + ow]) / count;
                            }
                        }
                        assert!(
                            (f64::from(y[p * op + oh * g.out_w + ow]) - sum / count).abs() < 1e-6,
                            "case {i}"
                        );
                    }
                }
            }
            for (a, b) in dx.iter().zip(&want_dx) {
                assert!((f64::from(*a) - b).abs() < 1e-6, "case {i} backward");
            }
        }
    }
}
