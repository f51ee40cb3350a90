//! Shape logic shared by the general op set: NumPy/PyTorch broadcasting,
//! the reduction of a broadcast gradient back to its input's shape, and
//! reductions over chosen dims (on any backend, through the five kernels
//! of `backend::strided`).

use crate::backend::{BackendStorage, BinaryOp, ReduceOp, Storage, StridedLayout, UnaryOp};
use crate::error::{Error, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// The shape `a` and `b` broadcast to, or an error naming `op`.
pub(crate) fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| -> usize {
        let lead = rank - s.len();
        if i < lead {
            1
        } else {
            s[i - lead]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::shape(
                op,
                format!("shapes {a:?} and {b:?} cannot be broadcast together"),
            )),
        })
        .collect()
}

/// `op(a, b)` elementwise with broadcasting: the output and its shape.
pub(crate) fn binary(
    op_name: &'static str,
    a: &Tensor,
    b: &Tensor,
    op: BinaryOp,
) -> Result<(Storage, Vec<usize>)> {
    same_device(op_name, a, b)?;
    let shape = broadcast_shape(op_name, a.shape(), b.shape())?;
    let la = StridedLayout::broadcast(op_name, a.shape(), &shape)?;
    let lb = StridedLayout::broadcast(op_name, b.shape(), &shape)?;
    let out = a.storage().binary(&b.storage(), op, &la, &lb)?;
    Ok((out, shape))
}

/// `op(a, b)` as a plain tensor (no graph): for backward formulas.
pub(crate) fn binary_tensor(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let (s, shape) = binary("binary", a, b, op)?;
    Tensor::from_storage(s, shape)
}

/// `op(x)` as a plain tensor.
pub(crate) fn unary_tensor(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    Tensor::from_storage(x.storage().unary(op)?, x.shape().to_vec())
}

/// A 0-d constant on `like`'s device.
pub(crate) fn scalar_like(value: f32, like: &Tensor) -> Result<Tensor> {
    Tensor::full(&[], value, like.device())
}

/// `x` repeated to `shape` (broadcasting), materialised.
pub(crate) fn expand(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.detach());
    }
    let layout = StridedLayout::broadcast("expand", x.shape(), shape)?;
    Tensor::from_storage(x.storage().strided_copy(&layout)?, shape.to_vec())
}

/// Normalises dims (negative counts from the end) into a mask over `rank`
/// dims; empty `dims` means all of them, as PyTorch's `dim=None`.
pub(crate) fn dim_mask(op: &'static str, rank: usize, dims: &[isize]) -> Result<Vec<bool>> {
    let mut mask = vec![dims.is_empty(); rank];
    for &d in dims {
        let i = if d < 0 { d + rank as isize } else { d };
        if i < 0 || i as usize >= rank.max(1) || rank == 0 {
            return Err(Error::shape(
                op,
                format!("dim {d} is out of range for a tensor of {rank} dims"),
            ));
        }
        if std::mem::replace(&mut mask[i as usize], true) {
            return Err(Error::invalid(op, format!("dim {d} appears twice")));
        }
    }
    Ok(mask)
}

/// The shape after reducing the dims in `mask`, keeping them as 1s.
pub(crate) fn keepdim_shape(shape: &[usize], mask: &[bool]) -> Vec<usize> {
    shape
        .iter()
        .zip(mask)
        .map(|(&d, &m)| if m { 1 } else { d })
        .collect()
}

/// Reduces `x` over the dims in `mask` (sum or max); the result has the
/// keepdim shape. Kept dims are permuted to the front, the reduced ones to
/// the back, so each output is one row of a `[rows, cols]` reduction.
pub(crate) fn reduce(x: &Tensor, mask: &[bool], op: ReduceOp) -> Result<Tensor> {
    Tensor::from_storage(reduce_storage(x, mask, op)?, keepdim_shape(x.shape(), mask))
}

/// [`reduce`]'s data, in the keepdim shape's order.
pub(crate) fn reduce_storage(x: &Tensor, mask: &[bool], op: ReduceOp) -> Result<Storage> {
    let shape = x.shape();
    let kept: Vec<usize> = (0..shape.len()).filter(|&i| !mask[i]).collect();
    let reduced: Vec<usize> = (0..shape.len()).filter(|&i| mask[i]).collect();
    let rows: usize = kept.iter().map(|&i| shape[i]).product();
    let cols: usize = reduced.iter().map(|&i| shape[i]).product();
    let perm: Vec<usize> = kept.iter().chain(&reduced).copied().collect();
    let identity = perm.iter().enumerate().all(|(i, &p)| i == p);
    if identity {
        x.storage().reduce_rows(op, rows, cols)
    } else {
        let layout = StridedLayout::permuted("reduce", shape, &perm)?;
        x.storage()
            .strided_copy(&layout)?
            .reduce_rows(op, rows, cols)
    }
}

/// Sums a broadcast gradient back to `shape` (the input's): over the
/// leading dims broadcasting added and the dims where the input had 1.
pub(crate) fn reduce_to(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let lead = grad.rank() - shape.len();
    let mask: Vec<bool> = (0..grad.rank())
        .map(|i| i < lead || (shape[i - lead] == 1 && grad.shape()[i] != 1))
        .collect();
    reshaped(&reduce(grad, &mask, ReduceOp::Sum)?, shape)
}

/// `t`'s data under another shape of the same size, with no graph.
pub(crate) fn reshaped(t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if shape.iter().product::<usize>() != t.numel() {
        return Err(Error::shape(
            "reshape",
            format!("cannot view {:?} as {shape:?}", t.shape()),
        ));
    }
    Ok(t.view_with(shape.to_vec(), None))
}
