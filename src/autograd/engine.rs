//! The backward pass.
//!
//! 1. Walk the graph from the root once to count, for every node, how many
//!    recorded edges point at it (its consumers).
//! 2. Start from the root with dL/dL = 1 and run nodes in dependency order:
//!    a node runs only after all its consumers have handed it their
//!    gradient contribution, so its incoming gradient is complete.
//! 3. Each node gets the mask of inputs that need a gradient (fixed when the
//!    op was recorded) and computes only those. Leaves accumulate into
//!    `.grad`. Every input slot is counted as computed or skipped.
//!    A node that fused several ops (batch norm + ReLU) counts as the
//!    nodes and slots it replaced ([`super::BackwardOp::fused_ops`]).
//! 4. A leaf is PyTorch's `AccumulateGrad` node: its incoming gradients are
//!    summed first, and only when the last one has arrived do its hooks run
//!    (once, on the total) and the result is added to `.grad`.
//!
//! Hooks ([`super::hooks`]) run around each node: the hooks of the tensor
//! it produced and its pre-hooks on the incoming gradient, its post-hooks
//! on the gradients it computed.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use super::grad_mode::NoGradGuard;
use super::graph::{Edge, Node};
use super::hooks::{run_grad_hooks, run_node_hooks};
use super::stats::BackwardStats;
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn node_key(node: &Arc<Node>) -> usize {
    Arc::as_ptr(node) as usize
}

/// The backward pass's bookkeeping: consumer counts, gradients in flight
/// and the work lists.
#[derive(Default)]
struct Bookkeeping {
    consumers: HashMap<usize, usize>,
    leaf_consumers: HashMap<usize, usize>,
    leaf_grads: HashMap<usize, Tensor>,
    pending_grads: HashMap<usize, Tensor>,
    stack: Vec<Arc<Node>>,
    ready: Vec<Arc<Node>>,
}

impl Bookkeeping {
    fn clear(&mut self) {
        self.consumers.clear();
        self.leaf_consumers.clear();
        self.leaf_grads.clear();
        self.pending_grads.clear();
        self.stack.clear();
        self.ready.clear();
    }
}

thread_local! {
    /// The last backward pass's bookkeeping, emptied, for the next one.
    ///
    /// Why: built afresh, its maps grew by rehashing every step, a chain
    /// of heap blocks up to a few KiB freed again at the end, and glibc
    /// served them from newly touched heap pages in otherwise fault-free
    /// training steps (BENCHMARKS.md, issue 9 item 25). A backward run
    /// from inside a hook finds the cell empty and builds its own.
    static BOOKKEEPING: Cell<Option<Bookkeeping>> = const { Cell::new(None) };
}

/// Runs backward from a one-element tensor. See [`Tensor::backward`].
pub fn backward(root: &Tensor) -> Result<BackwardStats> {
    if root.numel() != 1 {
        return Err(Error::Autograd(format!(
            "backward() needs a one-element tensor (a loss), got shape {:?}",
            root.shape()
        )));
    }
    if !root.requires_grad() {
        return Err(Error::Autograd(
            "backward(): the tensor does not require a gradient and has no grad_fn; \
             is every parameter frozen, or was it computed under no_grad?"
                .into(),
        ));
    }
    let _no_grad = NoGradGuard::new();
    let seed = Tensor::ones(root.shape(), root.device())?;
    let mut stats = BackwardStats::default();

    let Some(root_node) = root.grad_fn_node() else {
        // A leaf that requires a gradient: d(root)/d(root) = 1.
        return accumulate_into_leaf(root, seed).map(|()| stats);
    };

    let mut book = BOOKKEEPING.with(Cell::take).unwrap_or_default();
    let result = run_nodes(root_node, seed, &mut book, &mut stats);
    book.clear();
    BOOKKEEPING.with(|cell| cell.set(Some(book)));
    result.map(|()| stats)
}

/// Passes 1 and 2 of [`backward`] from `root_node`, with `book` empty.
fn run_nodes(
    root_node: &Arc<Node>,
    seed: Tensor,
    book: &mut Bookkeeping,
    stats: &mut BackwardStats,
) -> Result<()> {
    let Bookkeeping {
        consumers,
        leaf_consumers,
        leaf_grads,
        pending_grads,
        stack,
        ready,
    } = book;
    // Pass 1: consumer counts, of nodes and of leaves (by tensor id).
    stack.push(root_node.clone());
    consumers.insert(node_key(root_node), 0);
    while let Some(node) = stack.pop() {
        for edge in node.edges.iter().flatten() {
            match edge {
                Edge::Node(next) => {
                    let count = consumers.entry(node_key(next)).or_insert(0);
                    if *count == 0 {
                        stack.push(next.clone());
                    }
                    *count += 1;
                }
                Edge::Leaf(leaf) => *leaf_consumers.entry(leaf.id()).or_insert(0) += 1,
            }
        }
    }
    // (`leaf_grads`: a leaf's gradient so far, until its last contribution
    // arrives.)

    // Pass 2: run nodes whose incoming gradient is complete.
    pending_grads.insert(node_key(root_node), seed);
    ready.push(root_node.clone());
    while let Some(node) = ready.pop() {
        let key = node_key(&node);
        let grad_output = pending_grads.remove(&key).ok_or_else(|| {
            Error::Autograd(format!("{} ran without an incoming gradient", node.name))
        })?;
        let op = node
            .op
            .lock()
            .map_err(|_| Error::Autograd("a backward node's lock was poisoned".into()))?
            .take()
            .ok_or_else(|| {
                Error::Autograd(format!(
                    "{} has already run: trying to backward through the graph a second time \
                     (its saved tensors were freed); run the forward pass again",
                    node.name
                ))
            })?;
        let grad_output = run_grad_hooks(&node.tensor_hooks, grad_output, node.name)?;
        let grad_output = run_grad_hooks(&node.pre_hooks, grad_output, node.name)?;
        let needs = node.needs();
        let (op_name, input_names) = (op.op(), op.input_names());
        for ((name, &needed), &present) in input_names.iter().zip(&needs).zip(&node.present) {
            if present {
                stats.count(op_name, name, needed);
            }
        }
        stats.nodes += 1;
        for fused in op.fused_ops() {
            for name in fused.inputs {
                stats.count(fused.op, name, true);
            }
            stats.nodes += 1;
        }

        // Post-hooks are handed grad_output after backward; without any, the
        // op may consume it (and write its result over it).
        let (grads, grad_output) = if node.post_hooks.is_empty() {
            (op.backward_consuming(grad_output, &needs)?, None)
        } else {
            (op.backward(&grad_output, &needs)?, Some(grad_output))
        };
        if grads.len() != needs.len() {
            return Err(Error::Autograd(format!(
                "{} returned {} gradients for {} inputs",
                node.name,
                grads.len(),
                needs.len()
            )));
        }
        let grads = match grad_output {
            Some(g) => run_node_hooks(&node.post_hooks, grads, &g, node.name)?,
            None => grads,
        };
        for ((edge, grad), name) in node.edges.iter().zip(grads).zip(input_names) {
            match (edge, grad) {
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(Error::Autograd(format!(
                        "{} computed a gradient for `{name}` that nothing needs",
                        node.name
                    )))
                }
                (Some(_), None) => {
                    return Err(Error::Autograd(format!(
                        "{} did not compute the needed gradient for `{name}`",
                        node.name
                    )))
                }
                (Some(Edge::Leaf(leaf)), Some(g)) => {
                    check_grad_shape(node.name, name, leaf, &g)?;
                    let id = leaf.id();
                    let total = match leaf_grads.remove(&id) {
                        None => g,
                        Some(acc) => sum(acc, g)?,
                    };
                    let count = leaf_consumers
                        .get_mut(&id)
                        .ok_or_else(|| Error::Autograd("graph changed during backward".into()))?;
                    *count -= 1;
                    if *count == 0 {
                        accumulate_into_leaf(leaf, total)?;
                    } else {
                        leaf_grads.insert(id, total);
                    }
                }
                (Some(Edge::Node(next)), Some(g)) => {
                    let next_key = node_key(next);
                    let total = match pending_grads.remove(&next_key) {
                        None => g,
                        Some(acc) => sum(acc, g)?,
                    };
                    pending_grads.insert(next_key, total);
                    let count = consumers
                        .get_mut(&next_key)
                        .ok_or_else(|| Error::Autograd("graph changed during backward".into()))?;
                    *count -= 1;
                    if *count == 0 {
                        ready.push(next.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// `a + b`, written over whichever of the two nobody else can read
/// ([`Tensor::is_sole_handle`]: a conv's input gradient, say), as PyTorch's
/// `InputBuffer::accumulate` adds in place into a buffer it holds the last
/// reference to; a new tensor when both are shared. A gradient may be shared
/// with another input's (the residual add hands one tensor to both operands)
/// or held by a hook, and then it is never updated in place. f32 addition is
/// commutative, so which operand is written over changes no bit.
fn sum(a: Tensor, b: Tensor) -> Result<Tensor> {
    let (mut a, mut b) = (a, b);
    if writable(&mut a) {
        a.storage_mut().add_assign(&b.storage())?;
        return Ok(a);
    }
    if writable(&mut b) {
        b.storage_mut().add_assign(&a.storage())?;
        return Ok(b);
    }
    let s = a.storage().add(&b.storage())?;
    Tensor::from_storage(s, a.shape().to_vec())
}

/// Whether a gradient may be written over: no other handle reaches its data,
/// and it is a plain tensor (not one a hook returned that requires a gradient).
fn writable(t: &mut Tensor) -> bool {
    !t.requires_grad() && t.is_sole_handle()
}

/// PyTorch's `AccumulateGrad`: the leaf's hooks on its total gradient, then `.grad += g`.
fn accumulate_into_leaf(leaf: &Tensor, grad: Tensor) -> Result<()> {
    let grad = run_grad_hooks(leaf.hooks(), grad, "a leaf tensor")?;
    leaf.accumulate_grad(grad)
}

fn check_grad_shape(node: &str, input: &str, leaf: &Tensor, g: &Tensor) -> Result<()> {
    if g.shape() != leaf.shape() {
        return Err(Error::Autograd(format!(
            "{node} produced a gradient of shape {:?} for `{input}` of shape {:?}",
            g.shape(),
            leaf.shape()
        )));
    }
    Ok(())
}
