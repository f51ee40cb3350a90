//! Reverse-mode automatic differentiation, PyTorch's semantics.
//!
//! Reading order for the curious:
//! 1. [`grad_mode`]: the `no_grad` switch.
//! 2. [`graph`]: what an op records (a [`Node`] with a [`BackwardOp`]) and,
//!    crucially, *when* it records nothing at all.
//! 3. [`engine`]: the backward pass, which runs each node once, asks it only
//!    for the input gradients someone needs, and counts what it skipped.
//!
//! The op side of the contract lives next to each op in `crate::ops`.

mod engine;
pub mod grad_mode;
mod graph;
mod stats;

pub use engine::backward;
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use graph::{record, record_view, BackwardOp, GradFn, NextFunction, Node};
pub use stats::BackwardStats;
