//! Differentiable ops. Each file holds one op family: its forward (which
//! calls the backend and records a node via `autograd::record`), its
//! backward struct with exactly the state it saved, and the gradient mask
//! logic that decides what to save and what to compute. The elementwise
//! ops (`exp`, `log`, `sigmoid`, `tanh`, `mul`, `div`) share one backward
//! struct per arity (`elementwise.rs`); their files hold the kernel, what
//! to save and the gradient formula.
//!
//! `conv2d.rs` is the one to read first: it shows how a frozen weight costs
//! no weight gradient while the input gradient still flows through.

mod adaptive_avg_pool2d;
mod add;
mod add_relu;
mod batch_norm;
pub(crate) mod broadcast;
mod conv2d;
mod div;
mod elementwise;
mod exp;
pub mod flops;
mod linear;
mod log;
mod loss;
mod matmul;
mod max_pool2d;
mod mul;
mod neg;
mod operators;
mod permute;
mod pow;
mod reduce;
mod reduce_dims;
mod relu;
mod sigmoid;
mod sub;
mod tanh;
mod view;

pub use adaptive_avg_pool2d::adaptive_avg_pool2d;
pub use add::add;
pub use add_relu::add_relu;
pub use batch_norm::{batch_norm, batch_norm_relu, BatchNormOptions};
pub use conv2d::{conv2d, Conv2dOptions};
pub use linear::linear;
pub use loss::{cross_entropy, log_softmax, nll_loss};
pub use max_pool2d::{max_pool2d, MaxPool2dOptions};
pub use reduce::{mean, sum};
pub use relu::relu;
pub use view::{flatten, reshape};

// The general op set: broadcasting elementwise ops, maps, matmul,
// transposes and reductions over chosen dims (see `broadcast`).
pub use div::div;
pub use exp::exp;
pub use log::log;
pub use matmul::matmul;
pub use mul::mul;
pub use neg::neg;
pub use permute::{permute, transpose};
pub use pow::pow;
pub use reduce_dims::{max_dims, mean_dims, sum_dims};
pub use sigmoid::sigmoid;
pub use sub::sub;
pub use tanh::tanh;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The input slots of the ops taking `(input, weight, bias)` (conv2d,
/// linear, batch norm). An absent weight or bias keeps its slot
/// ([`crate::autograd::record`]), so these are fixed.
pub(crate) const INPUT: usize = 0;
pub(crate) const WEIGHT: usize = 1;
pub(crate) const BIAS: usize = 2;

/// A tensor a backward struct saved, or an engine-bug error if the forward
/// did not save it although the mask says the gradient that uses it is needed.
pub(crate) fn saved<'a>(t: &'a Option<Tensor>, op: &str, what: &str) -> Result<&'a Tensor> {
    t.as_ref().ok_or_else(|| {
        Error::Autograd(format!(
            "{op}: `{what}` was not saved but a gradient needs it"
        ))
    })
}

/// Wraps backend output as a gradient tensor of `shape`.
pub(crate) fn grad_tensor(storage: crate::tensor::Storage, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_storage(storage, shape.to_vec())
}

pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    Ok(())
}
