//! `sum`, `mean` and `max` (PyTorch's `amax`) over chosen dims, with
//! `keepdim`. An empty dim list reduces over every dim, as `dim=None`.
//!
//! Backward: the gradient is repeated over the reduced dims (divided by
//! their size for `mean`); for `max` it goes to the elements equal to the
//! maximum, split evenly between ties as PyTorch's `amax` does, so `max`
//! saves its input and result while `sum` and `mean` save nothing.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BinaryOp, ReduceOp};
use crate::error::{Error, Result};
use crate::ops::broadcast::{
    binary_tensor, dim_mask, expand, keepdim_shape, reduce, reduce_storage, reshaped, scalar_like,
};
use crate::ops::saved;
use crate::tensor::Tensor;

/// The output shape: the keepdim shape, or without the reduced dims.
fn out_shape(shape: &[usize], mask: &[bool], keepdim: bool) -> Vec<usize> {
    if keepdim {
        keepdim_shape(shape, mask)
    } else {
        shape
            .iter()
            .zip(mask)
            .filter(|(_, &m)| !m)
            .map(|(&d, _)| d)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sum,
    Mean,
    Max,
}

fn reduce_dims(
    op: &'static str,
    x: &Tensor,
    dims: &[isize],
    keepdim: bool,
    kind: Kind,
) -> Result<Tensor> {
    let mask = dim_mask(op, x.rank(), dims)?;
    let count: usize = x
        .shape()
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| m)
        .map(|(&d, _)| d)
        .product();
    if count == 0 {
        return Err(Error::shape(
            op,
            format!("reducing over an empty dim of {:?}", x.shape()),
        ));
    }
    let storage = match kind {
        Kind::Max => reduce_storage(x, &mask, ReduceOp::Max)?,
        Kind::Sum => reduce_storage(x, &mask, ReduceOp::Sum)?,
        // The sum is accumulated in f64 but rounded before the scale, like
        // the full `mean` (PyTorch divides the f32 sum too).
        Kind::Mean => reduce_storage(x, &mask, ReduceOp::Sum)?.scale(1.0 / count as f32)?,
    };
    let shape = out_shape(x.shape(), &mask, keepdim);
    let keep_shape = keepdim_shape(x.shape(), &mask);
    record(storage, shape, &[Some(x)], |_, y| {
        Box::new(ReduceDimsBackward {
            kind,
            input_shape: x.shape().to_vec(),
            keep_shape: keep_shape.clone(),
            count,
            input: (kind == Kind::Max).then(|| x.detach()),
            result: (kind == Kind::Max).then(|| y.clone()),
        })
    })
}

/// `x.sum(dims, keepdim)`.
pub fn sum_dims(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce_dims("sum", x, dims, keepdim, Kind::Sum)
}

/// `x.mean(dims, keepdim)`.
pub fn mean_dims(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce_dims("mean", x, dims, keepdim, Kind::Mean)
}

/// `x.amax(dims, keepdim)`: the maximum over `dims` (NaN if any is NaN).
pub fn max_dims(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce_dims("max", x, dims, keepdim, Kind::Max)
}

struct ReduceDimsBackward {
    kind: Kind,
    input_shape: Vec<usize>,
    keep_shape: Vec<usize>,
    count: usize,
    input: Option<Tensor>,
    result: Option<Tensor>,
}

impl BackwardOp for ReduceDimsBackward {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Sum => "SumBackward1",
            Kind::Mean => "MeanBackward1",
            Kind::Max => "AmaxBackward0",
        }
    }
    fn op(&self) -> &'static str {
        match self.kind {
            Kind::Sum => "sum",
            Kind::Mean => "mean",
            Kind::Max => "max",
        }
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("self", &self.input), ("result", &self.result)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        // The gradient in keepdim shape, then repeated over the reduced dims.
        let g = reshaped(grad_output, &self.keep_shape)?;
        let dx = match self.kind {
            Kind::Sum => expand(&g, &self.input_shape)?,
            Kind::Mean => {
                let scale = scalar_like(1.0 / self.count as f32, &g)?;
                expand(
                    &binary_tensor(&g, &scale, BinaryOp::Mul)?,
                    &self.input_shape,
                )?
            }
            Kind::Max => {
                let name = self.name();
                let x = saved(&self.input, name, "self")?;
                let y = reshaped(saved(&self.result, name, "result")?, &self.keep_shape)?;
                let mask = binary_tensor(x, &y, BinaryOp::Eq)?;
                let all: Vec<bool> = self
                    .input_shape
                    .iter()
                    .zip(&self.keep_shape)
                    .map(|(a, b)| a != b || *a == 1)
                    .collect();
                let ties = reduce(&mask, &all, ReduceOp::Sum)?;
                let share = binary_tensor(&g, &ties, BinaryOp::Div)?;
                binary_tensor(&mask, &share, BinaryOp::Mul)?
            }
        };
        Ok(vec![Some(dx)])
    }
}
