//! Reverse-mode automatic differentiation, PyTorch's semantics.
//!
//! Reading order for the curious:
//! 1. [`grad_mode`]: the `no_grad` switch.
//! 2. `graph`: what an op records (a [`Node`] with a [`BackwardOp`]) and,
//!    crucially, *when* it records nothing at all.
//! 3. `engine`: the backward pass, which runs each node once, asks it only
//!    for the input gradients someone needs, and counts what it skipped.
//! 4. `inspect`: [`Tensor::graph`](crate::Tensor::graph), the recorded
//!    graph as data (what each node saved, which gradients it will skip);
//!    `hooks`: gradient hooks on tensors and nodes.
//!
//! The op side of the contract lives next to each op in `crate::ops`.

mod engine;
pub mod grad_mode;
mod graph;
mod hooks;
mod inspect;
mod stats;

pub use engine::backward;
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub(crate) use graph::record_in_place;
pub use graph::{record, record_view, BackwardOp, FusedOp, GradFn, NextFunction, Node};
pub use hooks::HookHandle;
pub(crate) use hooks::{GradHookFn, HookList};
pub(crate) use inspect::walk as inspect_graph;
pub use inspect::{Graph, GraphInput, GraphNode, GraphSummary, NodeKind, SavedTensor};
pub use stats::BackwardStats;
