//! `torch.matmul` for operands of 2 or more dims: `[..., m, k] @ [..., k, n]`
//! with the leading (batch) dims broadcast. 2-d operands record PyTorch's
//! `MmBackward0`, batched ones `BmmBackward0`.
//!
//! dA = g Bᵀ needs B, dB = Aᵀ g needs A: as in `linear`, each operand is
//! saved only when the other's gradient is needed.

use crate::autograd::{record, BackwardOp};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::ops::broadcast::{broadcast_shape, expand, reduce_to};
use crate::ops::{flops, same_device, saved};
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
struct Dims {
    batch_shape: Vec<usize>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
}

impl Dims {
    fn macs(&self) -> u64 {
        (self.batch * self.m * self.k * self.n) as u64
    }
}

pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("matmul", a, b)?;
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "operands need at least 2 dims, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!("{:?} @ {:?}: inner dims differ", a.shape(), b.shape()),
        ));
    }
    let batch_shape = broadcast_shape("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let d = Dims {
        batch: batch_shape.iter().product(),
        batch_shape,
        m,
        k,
        n,
    };
    let out = if ra == 2 && rb == 2 {
        a.storage().matmul(&b.storage(), m, k, n, false, false)?
    } else {
        let (ea, eb) = (expand(a, &d.shaped(m, k))?, expand(b, &d.shaped(k, n))?);
        let out = ea
            .storage()
            .batched_matmul(&eb.storage(), d.batch, m, k, n, false, false)?;
        out
    };
    flops::add_macs(d.macs());
    let batched = ra > 2 || rb > 2;
    record(out, d.shaped(m, n), &[Some(a), Some(b)], |needs, _| {
        Box::new(MatmulBackward {
            dims: d.clone(),
            batched,
            shapes: [a.shape().to_vec(), b.shape().to_vec()],
            this: needs[1].then(|| a.detach()),
            other: needs[0].then(|| b.detach()),
        })
    })
}

impl Dims {
    fn shaped(&self, rows: usize, cols: usize) -> Vec<usize> {
        let mut s = self.batch_shape.clone();
        s.extend([rows, cols]);
        s
    }
}

struct MatmulBackward {
    dims: Dims,
    batched: bool,
    shapes: [Vec<usize>; 2],
    this: Option<Tensor>,
    other: Option<Tensor>,
}

impl BackwardOp for MatmulBackward {
    fn name(&self) -> &'static str {
        if self.batched {
            "BmmBackward0"
        } else {
            "MmBackward0"
        }
    }
    fn op(&self) -> &'static str {
        "matmul"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["self", "mat2"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("self", &self.this), ("mat2", &self.other)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward_flops(&self, needs: &[bool]) -> u64 {
        2 * needs.iter().filter(|&&n| n).count() as u64 * self.dims.macs()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let d = &self.dims;
        let (m, k, n) = (d.m, d.k, d.n);
        let name = self.name();
        let g = grad_output.storage();
        let mut grads = vec![None, None];
        if needs[0] {
            // dA [.., m, k] = g [.., m, n] @ Bᵀ
            let b = expand(saved(&self.other, name, "mat2")?, &d.shaped(k, n))?;
            let da = g.batched_matmul(&b.storage(), d.batch, m, n, k, false, true)?;
            flops::add_macs(d.macs());
            grads[0] = Some(reduce_to(
                &Tensor::from_storage(da, d.shaped(m, k))?,
                &self.shapes[0],
            )?);
        }
        if needs[1] {
            // dB [.., k, n] = Aᵀ @ g
            let a = expand(saved(&self.this, name, "self")?, &d.shaped(m, k))?;
            let db = a
                .storage()
                .batched_matmul(&g, d.batch, k, m, n, true, false)?;
            flops::add_macs(d.macs());
            grads[1] = Some(reduce_to(
                &Tensor::from_storage(db, d.shaped(k, n))?,
                &self.shapes[1],
            )?);
        }
        Ok(grads)
    }
}
