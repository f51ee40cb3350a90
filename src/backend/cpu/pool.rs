//! Max pooling (with PyTorch's arg-max convention) and adaptive average
//! pooling, one `(n, c)` plane per parallel task.

use rayon::prelude::*;

use super::check::{checked_numel, expect_len};
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
    let in_plane = checked_numel(op, &[g.in_h, g.in_w])?;
    let out_plane = checked_numel(op, &[g.out_h, g.out_w])?;
    expect_len(
        op,
        "input",
        x.len(),
        checked_numel(op, &[planes, in_plane])?,
    )?;
    let mut values = vec![0.0f32; checked_numel(op, &[planes, out_plane])?];
    let mut indices = vec![0i64; values.len()];
    if values.is_empty() {
        return Ok((values, indices));
    }
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    values
        .par_chunks_mut(out_plane)
        .zip(indices.par_chunks_mut(out_plane))
        .enumerate()
        .for_each(|(p, (vals, idxs))| {
            let plane = &x[p * in_plane..(p + 1) * in_plane];
            for oh in 0..g.out_h {
                let (h0, h1) = max_window(oh, sh, ph, kh, dh, g.in_h);
                for ow in 0..g.out_w {
                    let (w0, w1) = max_window(ow, sw, pw, kw, dw, g.in_w);
                    let mut best = f32::NEG_INFINITY;
                    let mut best_index = h0 * g.in_w + w0;
                    for ih in (h0..h1).step_by(dh) {
                        for iw in (w0..w1).step_by(dw) {
                            let index = ih * g.in_w + iw;
                            let v = plane[index];
                            if v > best || v.is_nan() {
                                best = v;
                                best_index = index;
                            }
                        }
                    }
                    vals[oh * g.out_w + ow] = best;
                    idxs[oh * g.out_w + ow] = best_index as i64;
                }
            }
        });
    Ok((values, indices))
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
    expect_len(op, "grad_output", dy.len(), out_len)?;
    expect_len(op, "indices", indices.len(), out_len)?;
    let mut dx = vec![0.0f32; checked_numel(op, &[planes, in_plane])?];
    if out_len == 0 || in_plane == 0 {
        return Ok(dx);
    }
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(indices.par_chunks(out_plane)))
        .try_for_each(|(dst, (grads, idxs))| {
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
    expect_len(op, "input", x.len(), planes * in_plane)?;
    let mut out = vec![0.0f32; planes * out_plane];
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
    expect_len(op, "grad_output", dy.len(), planes * out_plane)?;
    let mut dx = vec![0.0f32; planes * in_plane];
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
