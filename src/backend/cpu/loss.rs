//! Row-wise log-softmax and the mean negative log-likelihood loss.

use rayon::prelude::*;

use super::check::labels_in_range;
use crate::error::Result;

/// `x - max - ln Σ exp(x - max)` per row: subtracting the row maximum keeps
/// `exp` from overflowing; the sum is accumulated in f64.
pub(super) fn log_softmax(x: &[f32], cols: usize) -> Result<Vec<f32>> {
    let mut out = super::buffer_pool::zeroed("log_softmax", x.len())?;
    if cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, row)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            let log_sum = sum.ln() as f32;
            o.iter_mut()
                .zip(row)
                .for_each(|(o, &v)| *o = v - max - log_sum);
        });
    Ok(out)
}

/// `g - exp(y) * Σ g` per row, with `y` the log-softmax output.
pub(super) fn log_softmax_backward(grad: &[f32], output: &[f32], cols: usize) -> Result<Vec<f32>> {
    let mut dx = super::buffer_pool::zeroed("log_softmax_backward", grad.len())?;
    if cols == 0 {
        return Ok(dx);
    }
    dx.par_chunks_mut(cols)
        .zip(grad.par_chunks(cols).zip(output.par_chunks(cols)))
        .for_each(|(d, (g, y))| {
            let sum = g.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
            d.iter_mut()
                .zip(g.iter().zip(y))
                .for_each(|(d, (&g, &y))| *d = g - y.exp() * sum);
        });
    Ok(dx)
}

/// Each row's label as a column index, once [`labels_in_range`] has
/// checked them all (labels are data: the shared argument checks see only
/// their length).
fn label_columns(labels: &[i64]) -> impl Iterator<Item = usize> + '_ {
    labels.iter().map(|&l| l as usize)
}

/// `-(1/rows) Σ_r x[r, label[r]]` (PyTorch's `reduction='mean'`; no ignore index).
pub(super) fn nll_loss(log_probs: &[f32], labels: &[i64], rows: usize, cols: usize) -> Result<f32> {
    labels_in_range("nll_loss", labels, cols)?;
    let mut total = 0f64;
    for (row, col) in label_columns(labels).enumerate() {
        total -= f64::from(log_probs[row * cols + col]);
    }
    // 0 rows give 0/0 = NaN, as PyTorch's mean over an empty batch does.
    Ok((total / rows as f64) as f32)
}

/// dL/dx of [`nll_loss`]: `-g/rows` at each row's label, 0 elsewhere.
pub(super) fn nll_loss_backward(
    grad: &[f32],
    labels: &[i64],
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    labels_in_range("nll_loss_backward", labels, cols)?;
    let mut dx = super::buffer_pool::zeroed("nll_loss_backward", rows * cols)?;
    let value = -grad[0] / rows as f32;
    for (row, col) in label_columns(labels).enumerate() {
        dx[row * cols + col] = value;
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_f64_reference_and_is_stable() {
        let (rows, cols) = (3, 5);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.7)
            .collect();
        x[5..10].iter_mut().for_each(|v| *v += 1000.0); // would overflow a naive exp
        let y = log_softmax(&x, cols).unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (f64::from(v) - max).exp())
                    .sum::<f64>()
                    .ln();
            for c in 0..cols {
                let want = f64::from(row[c]) - lse;
                assert!(
                    (f64::from(y[r * cols + c]) - want).abs() < 1e-5,
                    "row {r} col {c}"
                );
            }
        }
    }

    #[test]
    fn log_softmax_backward_formula() {
        let y = log_softmax(&[0.1, -0.4, 2.0, 0.3, 0.0, -1.0], 3).unwrap();
        let g = [1.0, -2.0, 0.5, 0.0, 3.0, 1.0];
        let dx = log_softmax_backward(&g, &y, 3).unwrap();
        for r in 0..2 {
            let s: f32 = g[r * 3..r * 3 + 3].iter().sum();
            for c in 0..3 {
                let i = r * 3 + c;
                assert!((dx[i] - (g[i] - y[i].exp() * s)).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn nll_loss_mean_and_gradient() {
        let lp = [-0.5, -1.0, -2.0, -3.0, -0.25, -4.0];
        let labels = [2, 1];
        assert!((nll_loss(&lp, &labels, 2, 3).unwrap() - (2.0 + 0.25) / 2.0).abs() < 1e-7);
        let dx = nll_loss_backward(&[2.0], &labels, 2, 3).unwrap();
        assert_eq!(dx, vec![0.0, 0.0, -1.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn nll_loss_rejects_out_of_range_labels_by_name() {
        let lp = [0.0; 6];
        for bad in [3i64, -1, -100] {
            let err = nll_loss(&lp, &[0, bad], 2, 3).unwrap_err().to_string();
            assert!(
                err.contains(&format!("label {bad}")) && err.contains("row 1"),
                "{err}"
            );
            assert!(nll_loss_backward(&[1.0], &[bad, 0], 2, 3).is_err());
        }
    }
}
