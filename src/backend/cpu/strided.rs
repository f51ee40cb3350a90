//! The general op set's kernels on the CPU (see `backend::strided`).
//! Plain loops: these ops serve small models and learners' experiments,
//! not ResNet-18's hot path.

use crate::backend::strided::{BinaryOp, ReduceOp, StridedLayout, UnaryOp};
use crate::error::Result;

use super::gemm;

pub(super) fn strided_copy(x: &[f32], layout: &StridedLayout) -> Vec<f32> {
    layout.offsets().map(|o| x[o]).collect()
}

pub(super) fn binary(
    a: &[f32],
    b: &[f32],
    op: BinaryOp,
    a_layout: &StridedLayout,
    b_layout: &StridedLayout,
) -> Vec<f32> {
    a_layout
        .offsets()
        .zip(b_layout.offsets())
        .map(|(i, j)| op.apply(a[i], b[j]))
        .collect()
}

pub(super) fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    x.iter().map(|&v| op.apply(v)).collect()
}

pub(super) fn reduce_rows(x: &[f32], op: ReduceOp, cols: usize) -> Vec<f32> {
    x.chunks_exact(cols)
        .map(|row| match op {
            // In f64 and rounded once, like the other reductions.
            ReduceOp::Sum => row.iter().map(|&v| f64::from(v)).sum::<f64>() as f32,
            ReduceOp::Max => row.iter().copied().fold(f32::NEG_INFINITY, |m, v| {
                if v.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(v)
                }
            }),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batched_matmul(
    a: &[f32],
    b: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(batch * m * n);
    for i in 0..batch {
        out.extend(gemm::matmul(
            &a[i * m * k..(i + 1) * m * k],
            &b[i * k * n..(i + 1) * k * n],
            m,
            k,
            n,
            ta,
            tb,
        )?);
    }
    Ok(out)
}
