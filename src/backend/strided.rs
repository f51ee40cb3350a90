//! The kernels behind the general op set (`ops::{mul, sub, div, exp,
//! matmul, permute, sum_dims, ...}`): five primitives that every device
//! implements, from which the ops compose broadcasting, transposes and
//! reductions over any dims.
//!
//! - [`StridedLayout`]: reading a contiguous buffer as another shape through
//!   element strides. A stride of 0 repeats a dim (NumPy broadcasting), a
//!   permuted stride order transposes. `strided_copy` materialises such a
//!   view; `binary` reads both operands through one each, so `a * b` with
//!   broadcasting allocates only its output.
//! - `unary`: elementwise maps (`exp`, `tanh`, `pow` with a scalar exponent, ...).
//! - `reduce_rows`: sum or max of each row of `[rows, cols]`; an op reduces
//!   arbitrary dims by first permuting them to the end.
//! - `batched_matmul`: `[b, m, k] @ [b, k, n]`, either side transposed.

use crate::error::{Error, Result};

/// At most this many dims in a strided kernel (the CUDA kernels' fixed arrays).
pub const MAX_DIMS: usize = 8;

/// A shape read from a contiguous source through element strides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StridedLayout {
    pub shape: Vec<usize>,
    /// Source elements between consecutive indices of each dim; 0 repeats it.
    pub strides: Vec<usize>,
}

/// Row-major strides of a contiguous `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for (d, stride) in shape.iter().zip(strides.iter_mut()).rev() {
        *stride = s;
        s *= *d;
    }
    strides
}

impl StridedLayout {
    pub fn contiguous(shape: &[usize]) -> Self {
        StridedLayout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
        }
    }

    /// A contiguous `shape` broadcast to `out` (NumPy's rules: align the
    /// trailing dims; each is equal or 1, which repeats).
    pub fn broadcast(op: &'static str, shape: &[usize], out: &[usize]) -> Result<Self> {
        if shape.len() > out.len() {
            return Err(Error::shape(
                op,
                format!("cannot broadcast {shape:?} to {out:?}"),
            ));
        }
        let own = contiguous_strides(shape);
        let lead = out.len() - shape.len();
        let mut strides = vec![0; out.len()];
        for (i, &d) in shape.iter().enumerate() {
            if d == out[lead + i] {
                strides[lead + i] = if d == 1 { 0 } else { own[i] };
            } else if d != 1 {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {shape:?} to {out:?}"),
                ));
            }
        }
        Ok(StridedLayout {
            shape: out.to_vec(),
            strides,
        })
    }

    /// `shape` with its dims reordered: dim `i` of the result is dim
    /// `perm[i]` of the source.
    pub fn permuted(op: &'static str, shape: &[usize], perm: &[usize]) -> Result<Self> {
        let mut seen = vec![false; shape.len()];
        if perm.len() != shape.len()
            || perm
                .iter()
                .any(|&p| p >= shape.len() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                op,
                format!(
                    "{perm:?} is not a permutation of the {} dims of {shape:?}",
                    shape.len()
                ),
            ));
        }
        let own = contiguous_strides(shape);
        Ok(StridedLayout {
            shape: perm.iter().map(|&p| shape[p]).collect(),
            strides: perm.iter().map(|&p| own[p]).collect(),
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Validates the layout against a source of `len` elements: ranks
    /// agree and within [`MAX_DIMS`], and every element it reads exists.
    pub fn check(&self, op: &'static str, what: &str, len: usize) -> Result<()> {
        if self.shape.len() != self.strides.len() || self.shape.len() > MAX_DIMS {
            return Err(Error::invalid(
                op,
                format!(
                    "{what}: {} dims and {} strides (at most {MAX_DIMS} dims)",
                    self.shape.len(),
                    self.strides.len()
                ),
            ));
        }
        if self.shape.contains(&0) {
            return Ok(());
        }
        let mut last = 0usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|o| o.checked_add(last))
                .ok_or_else(|| Error::shape(op, format!("{what}: offsets overflow")))?;
        }
        if last >= len {
            return Err(Error::shape(
                op,
                format!("{what}: reads element {last} of a buffer of {len}"),
            ));
        }
        Ok(())
    }

    /// The source offset of each element, in row-major order of `shape`.
    pub fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.numel();
        let rank = self.shape.len();
        let mut index = vec![0usize; rank];
        let mut offset = 0usize;
        (0..n).map(move |i| {
            if i > 0 {
                // Odometer increment, updating the offset incrementally.
                for d in (0..rank).rev() {
                    index[d] += 1;
                    offset += self.strides[d];
                    if index[d] < self.shape[d] {
                        break;
                    }
                    offset -= self.strides[d] * self.shape[d];
                    index[d] = 0;
                }
            }
            offset
        })
    }
}

/// Elementwise binary ops. Codes are the CUDA kernel's `op` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    /// 1 where equal, else 0 (the mask of `max`'s backward).
    Eq = 4,
}

impl BinaryOp {
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Eq => (a == b) as u8 as f32,
        }
    }
}

/// Elementwise maps. Codes are the CUDA kernel's `op` argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    /// `x^p` for a scalar `p`.
    Pow(f32),
}

impl UnaryOp {
    /// The kernel's op code and scalar argument.
    pub fn code(self) -> (i32, f32) {
        match self {
            UnaryOp::Neg => (0, 0.0),
            UnaryOp::Exp => (1, 0.0),
            UnaryOp::Log => (2, 0.0),
            UnaryOp::Tanh => (3, 0.0),
            UnaryOp::Sigmoid => (4, 0.0),
            UnaryOp::Pow(p) => (5, p),
        }
    }

    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            // 1 / (1 + e^-x), written so neither side overflows.
            UnaryOp::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            UnaryOp::Pow(p) => x.powf(p),
        }
    }
}

/// Row reductions. Codes are the CUDA kernel's `op` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Accumulated in f64, rounded once (as every reduction here).
    Sum = 0,
    /// NaN wins, as in PyTorch's `amax`.
    Max = 1,
}
