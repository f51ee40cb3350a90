//! The backward graph: what an op leaves behind for the backward pass.
//!
//! The rule that makes frozen layers free is in [`record`]: an op builds a
//! node only if some input requires a gradient (and grad mode is on). It
//! tells the op *which* inputs do, so the op saves only what those
//! gradients need. A frozen prefix of a network therefore records nothing
//! and keeps no activations alive; a frozen conv after a trainable one
//! saves its weight (for the input gradient) but not its input (which only
//! the weight gradient would need).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

use super::grad_mode::is_grad_enabled;
use super::hooks::{GradHookFn, HookHandle, HookList, NodeHookFn};

/// One op's backward: its saved state and how to turn dL/d(output) into
/// dL/d(input) for the inputs that need it.
///
/// Each op writes one such struct with the tensors it saved as fields
/// (`Option`s, filled only when a needed gradient uses them).
pub trait BackwardOp: Send + Sync {
    /// The name PyTorch prints for `grad_fn`, e.g. `"ConvolutionBackward0"`.
    fn name(&self) -> &'static str;
    /// PyTorch's name for this node without the ops fused into it
    /// (`NativeBatchNormBackward0` for `NativeBatchNormReluBackward0`).
    fn unfused_name(&self) -> &'static str {
        self.name()
    }
    /// The op's name in backward statistics, e.g. `"conv2d"`.
    fn op(&self) -> &'static str;
    /// One name per input, in the order the op recorded them, e.g.
    /// `["input", "weight"]`; statistics report `conv2d.weight` etc.
    fn input_names(&self) -> &'static [&'static str];
    /// Ops folded into this node that would be separate nodes unfused, e.g.
    /// the ReLU of batch norm + ReLU. Statistics count each as one more node
    /// with all its inputs' gradients computed (a fused op must only absorb
    /// ops that compute every input gradient whenever this node runs), so
    /// counts match PyTorch and the unfused graph. Most ops fuse nothing.
    fn fused_ops(&self) -> &'static [FusedOp] {
        &[]
    }
    /// The tensors this node holds for its backward, by name (`"weight"`,
    /// `"input"`, `"indices"`, ...): what [`crate::Tensor::graph`] reports
    /// as saved, and what keeps memory alive until backward. Every op must
    /// list exactly the tensors its struct holds, so the reported bytes
    /// match the memory accounting.
    fn saved(&self) -> Vec<(&'static str, &Tensor)>;
    /// Floating-point operations its backward will execute for the gradients
    /// in `needs`, counted as [`crate::ops::flops`] counts them (only the
    /// GEMM-shaped ops, conv2d and linear; others report 0).
    fn backward_flops(&self, _needs: &[bool]) -> u64 {
        0
    }
    /// Computes the gradients of the inputs with `needs[i]` set and returns
    /// `None` for the others (the engine checks this). Consumes the saved
    /// state: once a node has run, what it saved is freed.
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>>;
    /// [`backward`](Self::backward), called instead when nothing reads
    /// `grad_output` afterwards (the node has no post-hooks, which are given
    /// it), so that an op may write its result over it when this is its only
    /// handle (`Tensor::is_sole_handle`). The default just borrows it.
    fn backward_consuming(
        self: Box<Self>,
        grad_output: Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        self.backward(&grad_output, needs)
    }
}

/// An op folded into another op's node (see [`BackwardOp::fused_ops`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedOp {
    /// PyTorch's `grad_fn` name of the unfused node, e.g. `"ReluBackward0"`.
    pub name: &'static str,
    /// Its name in backward statistics, e.g. `"relu"`.
    pub op: &'static str,
    /// Its input names, all of whose gradients are computed.
    pub inputs: &'static [&'static str],
}

/// Where an input's gradient goes.
pub(crate) enum Edge {
    /// A leaf that requires a gradient: accumulate into its `.grad`.
    Leaf(Tensor),
    /// An intermediate result: hand the gradient to the node that made it.
    Node(Arc<Node>),
}

/// A recorded op in the backward graph.
pub struct Node {
    pub(crate) name: &'static str,
    /// `None` once the backward pass has run this node.
    pub(crate) op: Mutex<Option<Box<dyn BackwardOp>>>,
    /// One entry per input slot; `None` where no gradient is needed (or
    /// the input is absent).
    pub(crate) edges: Vec<Option<Edge>>,
    /// Per slot, whether the op was given that input: an absent optional
    /// input (a missing bias) keeps its slot, so ops index slots by name,
    /// but is not counted in statistics nor listed as a next function.
    pub(crate) present: Vec<bool>,
    /// The shape of the output (and so of the gradient this node receives).
    pub(crate) shape: Vec<usize>,
    /// Hooks registered on the output tensor ([`Tensor::register_hook`]),
    /// run on the incoming gradient before the node's own pre-hooks.
    pub(crate) tensor_hooks: HookList<GradHookFn>,
    /// [`GradFn::register_prehook`].
    pub(crate) pre_hooks: HookList<GradHookFn>,
    /// [`GradFn::register_hook`].
    pub(crate) post_hooks: HookList<NodeHookFn>,
}

impl Node {
    fn new(
        op: Box<dyn BackwardOp>,
        edges: Vec<Option<Edge>>,
        present: Vec<bool>,
        shape: Vec<usize>,
    ) -> Node {
        Node {
            name: op.name(),
            op: Mutex::new(Some(op)),
            edges,
            present,
            shape,
            tensor_hooks: HookList::default(),
            pre_hooks: HookList::default(),
            post_hooks: HookList::default(),
        }
    }

    /// The mask of inputs whose gradient this node must compute.
    pub(crate) fn needs(&self) -> Vec<bool> {
        self.edges.iter().map(Option::is_some).collect()
    }
}

/// What an input contributes to the graph: `None` when no gradient is
/// needed for it (it does not require one, or it is absent).
fn edge_for(input: Option<&Tensor>) -> Option<Edge> {
    let t = input?;
    if !t.requires_grad() {
        return None;
    }
    Some(match t.grad_fn_node() {
        Some(node) => Edge::Node(node.clone()),
        None => Edge::Leaf(t.clone()),
    })
}

/// Wraps an op's output, recording a backward node only when needed.
///
/// `inputs` lists the op's differentiable inputs in order, with `None` for an
/// absent optional input (a missing bias). Every input keeps its slot, so the
/// mask and [`BackwardOp::input_names`] always have the op's full arity and
/// an op reads `needs[BIAS]` whether or not there is a weight before it; an
/// absent input's slot is never needed, and it is left out of statistics
/// and `next_functions`. `make_backward` is called only when a node is recorded,
/// with the mask of inputs that need a gradient and the output itself
/// (detached, for ops such as ReLU whose backward uses it), so the op saves
/// only what those gradients use. When no input needs one, the output is a
/// plain tensor and nothing the op computed is kept alive.
pub fn record(
    output: Storage,
    shape: Vec<usize>,
    inputs: &[Option<&Tensor>],
    make_backward: impl FnOnce(&[bool], &Tensor) -> Box<dyn BackwardOp>,
) -> Result<Tensor> {
    record_output(Tensor::from_storage(output, shape)?, inputs, make_backward)
}

/// Like [`record`] for an op that wrote its result over the storage of
/// `overwritten`, one of its `inputs`, which the op checked nobody else can
/// reach ([`Tensor::is_sole_handle`]): the output keeps that storage (and its
/// place in the memory accounting), the input's edge its history.
pub(crate) fn record_in_place(
    overwritten: &Tensor,
    inputs: &[Option<&Tensor>],
    make_backward: impl FnOnce(&[bool], &Tensor) -> Box<dyn BackwardOp>,
) -> Result<Tensor> {
    let plain = overwritten.view_with(overwritten.shape().to_vec(), None);
    record_output(plain, inputs, make_backward)
}

/// [`record`] with the output already a (graph-less) tensor.
fn record_output(
    plain: Tensor,
    inputs: &[Option<&Tensor>],
    make_backward: impl FnOnce(&[bool], &Tensor) -> Box<dyn BackwardOp>,
) -> Result<Tensor> {
    if !is_grad_enabled() || !inputs.iter().flatten().any(|t| t.requires_grad()) {
        return Ok(plain);
    }
    let edges: Vec<Option<Edge>> = inputs.iter().map(|t| edge_for(*t)).collect();
    let present: Vec<bool> = inputs.iter().map(Option::is_some).collect();
    let needs: Vec<bool> = edges.iter().map(Option::is_some).collect();
    let op = make_backward(&needs, &plain);
    if op.input_names().len() != edges.len() {
        return Err(Error::Autograd(format!(
            "{} names {} inputs but {} were recorded",
            op.name(),
            op.input_names().len(),
            edges.len()
        )));
    }
    let node = Node::new(op, edges, present, plain.shape().to_vec());
    Ok(plain.view_with(plain.shape().to_vec(), Some(Arc::new(node))))
}

/// Like [`record`] for ops whose output shares the input's storage (reshape,
/// flatten): the view gets a node only when the input requires a gradient.
pub fn record_view(
    input: &Tensor,
    shape: Vec<usize>,
    make_backward: impl FnOnce() -> Box<dyn BackwardOp>,
) -> Tensor {
    if !is_grad_enabled() || !input.requires_grad() {
        return input.view_with(shape, None);
    }
    let node = Node::new(
        make_backward(),
        vec![edge_for(Some(input))],
        vec![true],
        shape.clone(),
    );
    input.view_with(shape, Some(Arc::new(node)))
}

/// A handle on a tensor's `grad_fn`, for printing and walking the graph.
#[derive(Clone)]
pub struct GradFn {
    node: Arc<Node>,
}

impl GradFn {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        GradFn { node }
    }

    /// PyTorch's printed name, e.g. `ConvolutionBackward0`.
    pub fn name(&self) -> &'static str {
        self.node.name
    }

    /// PyTorch's `grad_fn.next_functions`, by name: for each input, the node
    /// its gradient flows to (`"AccumulateGrad"` for a leaf), or `None` when
    /// that input needs no gradient.
    pub fn next_functions(&self) -> Vec<Option<NextFunction>> {
        self.node
            .edges
            .iter()
            .zip(&self.node.present)
            .filter(|(_, &present)| present)
            .map(|(e, _)| {
                e.as_ref().map(|e| match e {
                    Edge::Leaf(t) => NextFunction::AccumulateGrad(t.clone()),
                    Edge::Node(n) => NextFunction::Node(GradFn::new(n.clone())),
                })
            })
            .collect()
    }

    /// Whether this node still holds its saved state (false after backward).
    pub fn is_pending(&self) -> bool {
        self.node.op.lock().map(|o| o.is_some()).unwrap_or(false)
    }

    /// PyTorch's `grad_fn.register_prehook(hook)`: `hook(grad_output)` runs
    /// before this node's backward, after the hooks of the tensor it made;
    /// returning `Some(g)` replaces the gradient (same shape).
    pub fn register_prehook(
        &self,
        hook: impl FnMut(&Tensor) -> Result<Option<Tensor>> + Send + 'static,
    ) -> HookHandle {
        self.node.pre_hooks.push(Box::new(hook))
    }

    /// PyTorch's `grad_fn.register_hook(hook)`: `hook(grad_inputs,
    /// grad_output)` runs after this node's backward, with one entry per
    /// input (`None` where no gradient was computed); returning `Some(v)`
    /// replaces the input gradients (the same inputs, the same shapes).
    pub fn register_hook(
        &self,
        hook: impl FnMut(&[Option<Tensor>], &Tensor) -> Result<Option<Vec<Option<Tensor>>>>
            + Send
            + 'static,
    ) -> HookHandle {
        self.node.post_hooks.push(Box::new(hook))
    }
}

impl std::fmt::Debug for GradFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.name())
    }
}

impl std::fmt::Display for GradFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one input of a node sends its gradient.
#[derive(Clone, Debug)]
pub enum NextFunction {
    /// Into the `.grad` of this leaf.
    AccumulateGrad(Tensor),
    Node(GradFn),
}

impl NextFunction {
    pub fn name(&self) -> &'static str {
        match self {
            NextFunction::AccumulateGrad(_) => "AccumulateGrad",
            NextFunction::Node(g) => g.name(),
        }
    }
}
