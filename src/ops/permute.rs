//! `permute` and `transpose`: every tensor here is contiguous, so the
//! output is a reordered copy. The gradient is permuted back; nothing is
//! saved.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, StridedLayout};
use crate::error::Result;
use crate::ops::broadcast::dim_mask;
use crate::tensor::Tensor;

/// `x.permute(perm)`: dim `i` of the result is dim `perm[i]` of `x`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    permute_named(x, perm, "PermuteBackward0")
}

/// `x.transpose(dim0, dim1)`; negative dims count from the end.
pub fn transpose(x: &Tensor, dim0: isize, dim1: isize) -> Result<Tensor> {
    let rank = x.rank();
    let index = |d: isize| -> Result<usize> {
        let m = dim_mask("transpose", rank, &[d])?;
        Ok(m.iter().position(|&b| b).unwrap_or(0))
    };
    let (a, b) = (index(dim0)?, index(dim1)?);
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(a, b);
    permute_named(x, &perm, "TransposeBackward0")
}

fn permute_named(x: &Tensor, perm: &[usize], name: &'static str) -> Result<Tensor> {
    let layout = StridedLayout::permuted("permute", x.shape(), perm)?;
    let out = x.storage().strided_copy(&layout)?;
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    record(out, layout.shape.clone(), &[Some(x)], |_, _| {
        Box::new(PermuteBackward { name, inverse })
    })
}

struct PermuteBackward {
    name: &'static str,
    inverse: Vec<usize>,
}

impl BackwardOp for PermuteBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn op(&self) -> &'static str {
        "permute"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        Vec::new()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let layout = StridedLayout::permuted("permute", grad_output.shape(), &self.inverse)?;
        let dx = grad_output.storage().strided_copy(&layout)?;
        Ok(vec![Some(Tensor::from_storage(dx, layout.shape)?)])
    }
}
