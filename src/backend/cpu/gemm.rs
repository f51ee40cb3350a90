//! A safe, bounds-checked face on `matrixmultiply::sgemm`.
//!
//! A matrix operand is a slice plus row/column strides, so a transposed
//! operand is just the same buffer with its strides swapped, and a block
//! of columns of a larger matrix is a sub-slice with the big matrix's row
//! stride. `matrixmultiply` packs its operands itself and, with the
//! `threading` feature, splits large products across cores.

use super::check::expect_len;
use crate::error::Result;

/// A read-only `rows x cols` matrix view: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major `[cols, rows]` buffer, seen as `[rows, cols]`.
    pub fn transposed(data: &'a [f32], rows: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: rows,
        }
    }
    /// A row-major matrix with an explicit row stride (a column block of a wider matrix).
    pub fn strided(data: &'a [f32], row_stride: usize) -> Self {
        Self {
            data,
            row_stride,
            col_stride: 1,
        }
    }
    /// Whether every element of a `rows x cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || {
            let last = (rows - 1)
                .checked_mul(self.row_stride)
                .zip((cols - 1).checked_mul(self.col_stride))
                .and_then(|(a, b)| a.checked_add(b));
            last.is_some_and(|l| l < self.data.len())
        }
    }
}

/// `c = alpha * a @ b + beta * c` where `a` is `m x k`, `b` is `k x n` and
/// `c` is the row-major `m x n` block with row stride `c_row_stride` at the
/// start of `c`.
///
/// Callers size the buffers from a validated geometry; a view that does not
/// fit its slice is a bug in this backend, so it panics here rather than
/// letting `sgemm` read or write out of bounds.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut [f32],
    c_row_stride: usize,
) {
    assert!(a.fits(m, k), "gemm: lhs view {m}x{k} exceeds its buffer");
    assert!(b.fits(k, n), "gemm: rhs view {k}x{n} exceeds its buffer");
    let c_view = MatRef::strided(c, c_row_stride);
    assert!(
        c_view.fits(m, n),
        "gemm: output view {m}x{n} exceeds its buffer"
    );
    assert!(
        n <= c_row_stride || m <= 1,
        "gemm: output rows would overlap"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above guarantee every element `sgemm` touches in
    // `a`, `b` (read) and `c` (read when beta != 0, written) lies inside the
    // respective slice; `c` is borrowed mutably so nothing else aliases it,
    // and `n <= c_row_stride` keeps distinct output elements distinct.
    // Strides are below `isize::MAX` because they index into live slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            c_row_stride as isize,
            1,
        );
    }
}

/// `op(lhs) @ op(rhs)` for the dense layers: `op(lhs)` is `[m, k]`,
/// `op(rhs)` is `[k, n]`; a `*_transposed` buffer holds the transpose.
pub(super) fn matmul(
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
) -> Result<Vec<f32>> {
    let op = "matmul";
    let numel = |a, b| super::check::checked_numel(op, &[a, b]);
    expect_len(op, "lhs", lhs.len(), numel(m, k)?)?;
    expect_len(op, "rhs", rhs.len(), numel(k, n)?)?;
    let a = if lhs_transposed {
        MatRef::transposed(lhs, m)
    } else {
        MatRef::row_major(lhs, k)
    };
    let b = if rhs_transposed {
        MatRef::transposed(rhs, k)
    } else {
        MatRef::row_major(rhs, n)
    };
    let mut out = vec![0.0; numel(m, n)?];
    sgemm(m, k, n, 1.0, a, b, 0.0, &mut out, n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += f64::from(av) * f64::from(bv);
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_for_every_transpose() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let got = matmul(&a, &b, m, k, n, ta, tb).unwrap();
            let want = naive(&a, &b, m, k, n, ta, tb);
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() < 1e-5, "{ta} {tb}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn matmul_rejects_wrong_lengths() {
        assert!(matmul(&[1.0; 6], &[1.0; 6], 2, 3, 3, false, false).is_err());
        assert!(matmul(&[1.0; 5], &[1.0; 6], 2, 3, 2, false, false).is_err());
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        assert_eq!(
            matmul(&[], &[], 2, 0, 2, false, false).unwrap(),
            vec![0.0; 4]
        );
    }
}
