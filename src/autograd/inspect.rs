//! The recorded backward graph as plain data: [`Tensor::graph`].
//!
//! PyTorch users walk `loss.grad_fn.next_functions` (or reach for
//! torchviz) to see the graph; here one call returns every node reachable
//! from a tensor, each with PyTorch's `grad_fn` name, where each input's
//! gradient goes (or that it will be skipped), what the node saved for its
//! backward and how much memory that holds, so a learner can print it, and
//! `frostgrad graph` can draw it.
//!
//! A leaf that requires a gradient appears as PyTorch's `AccumulateGrad`
//! node, once per tensor however many ops use it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::graph::{Edge, FusedOp, Node};
use super::stats::BackwardStats;
use crate::tensor::{DType, Tensor};

/// What a node of the graph is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A recorded op (`ConvolutionBackward0`, ...).
    Op,
    /// A leaf that requires a gradient: backward adds into its `.grad`.
    AccumulateGrad,
}

/// One input slot of an op node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphInput {
    /// The op's name for the input: `input`, `weight`, `bias`, `other`, ...
    pub name: &'static str,
    /// Whether backward will compute this input's gradient.
    pub computed: bool,
    /// The id of the node the gradient flows to; `None` when skipped.
    pub to: Option<usize>,
}

/// A tensor a node holds for its backward.
#[derive(Clone, Debug)]
pub struct SavedTensor {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub bytes: usize,
    /// The saved tensor itself (sharing storage: holding it keeps it alive).
    pub tensor: Tensor,
}

/// One node of [`Graph`].
#[derive(Clone, Debug)]
pub struct GraphNode {
    /// Index in [`Graph::nodes`]; the root (the tensor walked from) is 0.
    pub id: usize,
    /// PyTorch's `grad_fn` name, or `"AccumulateGrad"` for a leaf. For a
    /// fused node, the name of the op the others were folded into
    /// (`NativeBatchNormBackward0`; the ReLU is in [`fused`](Self::fused)).
    pub name: &'static str,
    /// The name `tensor.grad_fn()` prints (`NativeBatchNormReluBackward0`
    /// for the fused node); same as `name` otherwise.
    pub grad_fn: &'static str,
    pub kind: NodeKind,
    /// The op's name in backward statistics (`conv2d`, ...); empty for a leaf.
    pub op: &'static str,
    /// Ops folded into this node (the ReLU of batch norm + ReLU).
    pub fused: Vec<FusedOp>,
    /// One per recorded input, in order; empty for a leaf.
    pub inputs: Vec<GraphInput>,
    /// What the node holds for its backward; empty for a leaf, and for a
    /// node whose backward has already run (it freed its state).
    pub saved: Vec<SavedTensor>,
    /// The shape of the op's output, or of the leaf.
    pub shape: Vec<usize>,
    /// FLOPs its backward will execute (conv2d and linear only, as
    /// [`crate::ops::flops`] counts).
    pub backward_flops: u64,
    /// False once backward has run the node.
    pub pending: bool,
    /// The leaf tensor of an `AccumulateGrad` node.
    pub variable: Option<Tensor>,
    /// A name for display: the parameter name of a leaf once
    /// [`Graph::name_leaves`] gave one.
    pub label: Option<String>,
}

impl GraphNode {
    /// True when some input's gradient flows to a leaf (a trainable parameter).
    pub fn computes_leaf_grad(&self, graph: &Graph) -> bool {
        self.inputs.iter().any(|i| {
            i.to.is_some_and(|to| graph.nodes[to].kind == NodeKind::AccumulateGrad)
        })
    }

    /// Bytes of the saved tensors (each storage once).
    pub fn saved_bytes(&self) -> usize {
        let mut seen = Vec::new();
        let mut total = 0;
        for s in &self.saved {
            let key = s.tensor.storage_key();
            if !seen.contains(&key) {
                seen.push(key);
                total += s.bytes;
            }
        }
        total
    }
}

/// Totals over a [`Graph`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphSummary {
    /// Op nodes, a fused node counted as the ops it replaced (the number
    /// PyTorch's graph has, and [`BackwardStats::nodes`] after backward).
    pub nodes: usize,
    /// Op nodes as recorded (a fused node once).
    pub recorded_nodes: usize,
    /// `AccumulateGrad` nodes: leaves that will receive a gradient.
    pub accumulate_grad: usize,
    /// Bytes of every saved tensor, each storage counted once even if
    /// several nodes hold it. Includes saved parameters (a frozen conv's
    /// weight), whose memory exists anyway.
    pub saved_bytes: usize,
    /// FLOPs the backward pass will execute ([`crate::ops::flops`]'s count).
    pub backward_flops: u64,
    /// Input gradients that will be computed and skipped (fused ops' included).
    pub gradients_computed: usize,
    pub gradients_skipped: usize,
}

/// The graph reachable from a tensor; see [`Tensor::graph`].
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
}

fn node_key(node: &Arc<Node>) -> usize {
    Arc::as_ptr(node) as usize
}

/// Breadth-first from `root`'s `grad_fn`, numbering nodes as they are found.
pub(crate) fn walk(root: &Tensor) -> Graph {
    let mut graph = Graph::default();
    if !root.requires_grad() {
        return graph;
    }
    let Some(root_node) = root.grad_fn_node() else {
        graph.nodes.push(leaf_node(0, root));
        return graph;
    };
    let mut ids: HashMap<usize, usize> = HashMap::new();
    let mut leaf_ids: HashMap<usize, usize> = HashMap::new();
    let mut queue: VecDeque<Arc<Node>> = VecDeque::new();
    ids.insert(node_key(root_node), 0);
    graph.nodes.push(placeholder(0));
    queue.push_back(root_node.clone());
    while let Some(node) = queue.pop_front() {
        let id = ids[&node_key(&node)];
        let mut inputs = Vec::with_capacity(node.edges.len());
        let guard = node.op.lock().unwrap_or_else(|p| p.into_inner());
        let (name, op, input_names, fused, saved, flops, pending) = match guard.as_ref() {
            Some(op) => {
                let needs = node.needs();
                let saved = op
                    .saved()
                    .into_iter()
                    .map(|(name, t)| SavedTensor {
                        name,
                        shape: t.shape().to_vec(),
                        dtype: t.dtype(),
                        bytes: t.size_in_bytes(),
                        tensor: t.clone(),
                    })
                    .collect();
                (
                    op.unfused_name(),
                    op.op(),
                    op.input_names(),
                    op.fused_ops().to_vec(),
                    saved,
                    op.backward_flops(&needs),
                    true,
                )
            }
            // Backward already ran: the op (and its names) are gone.
            None => (node.name, "", &[][..], Vec::new(), Vec::new(), 0, false),
        };
        drop(guard);
        let slots = node.edges.iter().zip(&node.present).enumerate();
        for (slot, (edge, _)) in slots.filter(|(_, (_, &present))| present) {
            let name = input_names.get(slot).copied().unwrap_or("input");
            let to = edge.as_ref().map(|edge| match edge {
                Edge::Node(next) => {
                    let next_id = graph.nodes.len();
                    *ids.entry(node_key(next)).or_insert_with(|| {
                        graph.nodes.push(placeholder(next_id));
                        queue.push_back(next.clone());
                        next_id
                    })
                }
                Edge::Leaf(leaf) => {
                    let next_id = graph.nodes.len();
                    *leaf_ids.entry(leaf.id()).or_insert_with(|| {
                        graph.nodes.push(leaf_node(next_id, leaf));
                        next_id
                    })
                }
            });
            inputs.push(GraphInput {
                name,
                computed: to.is_some(),
                to,
            });
        }
        graph.nodes[id] = GraphNode {
            id,
            name,
            grad_fn: node.name,
            kind: NodeKind::Op,
            op,
            fused,
            inputs,
            saved,
            shape: node.shape.clone(),
            backward_flops: flops,
            pending,
            variable: None,
            label: None,
        };
    }
    graph
}

fn placeholder(id: usize) -> GraphNode {
    GraphNode {
        id,
        name: "",
        grad_fn: "",
        kind: NodeKind::Op,
        op: "",
        fused: Vec::new(),
        inputs: Vec::new(),
        saved: Vec::new(),
        shape: Vec::new(),
        backward_flops: 0,
        pending: true,
        variable: None,
        label: None,
    }
}

fn leaf_node(id: usize, leaf: &Tensor) -> GraphNode {
    GraphNode {
        id,
        name: "AccumulateGrad",
        grad_fn: "AccumulateGrad",
        kind: NodeKind::AccumulateGrad,
        op: "",
        fused: Vec::new(),
        inputs: Vec::new(),
        saved: Vec::new(),
        shape: leaf.shape().to_vec(),
        backward_flops: 0,
        pending: true,
        variable: Some(leaf.clone()),
        label: None,
    }
}

impl Graph {
    /// Recorded op nodes (not `AccumulateGrad`).
    pub fn op_nodes(&self) -> impl Iterator<Item = &GraphNode> {
        self.nodes.iter().filter(|n| n.kind == NodeKind::Op)
    }

    /// Gives each `AccumulateGrad` node the name of the tensor it
    /// accumulates into, e.g. from `model.named_parameters()`.
    pub fn name_leaves<I>(&mut self, named: I)
    where
        I: IntoIterator<Item = (String, Tensor)>,
    {
        let names: HashMap<usize, String> = named.into_iter().map(|(n, t)| (t.id(), n)).collect();
        for node in &mut self.nodes {
            if let Some(v) = &node.variable {
                if let Some(name) = names.get(&v.id()) {
                    node.label = Some(name.clone());
                }
            }
        }
    }

    /// How many nodes of each `grad_fn` name, a fused node counted as each
    /// of its ops (so the counts compare with PyTorch's graph);
    /// `AccumulateGrad` included.
    pub fn name_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.name).or_insert(0) += 1;
            for f in &node.fused {
                *counts.entry(f.name).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The statistics backward will report from this graph (every node
    /// still pending): nodes and per `op.input` gradients computed and
    /// skipped.
    pub fn expected_stats(&self) -> BackwardStats {
        let mut stats = BackwardStats::default();
        for node in self.op_nodes() {
            stats.nodes += 1;
            for input in &node.inputs {
                stats.count(node.op, input.name, input.computed);
            }
        }
        // Fused ops: one more node each, every input computed (see BackwardOp::fused_ops).
        for node in self.op_nodes() {
            for fused in &node.fused {
                stats.nodes += 1;
                for input in fused.inputs {
                    stats.count(fused.op, input, true);
                }
            }
        }
        stats
    }

    pub fn summary(&self) -> GraphSummary {
        let mut s = GraphSummary::default();
        let mut storages = HashSet::new();
        for node in &self.nodes {
            match node.kind {
                NodeKind::AccumulateGrad => s.accumulate_grad += 1,
                NodeKind::Op => {
                    s.recorded_nodes += 1;
                    s.nodes += 1 + node.fused.len();
                    s.backward_flops += node.backward_flops;
                    for i in &node.inputs {
                        if i.computed {
                            s.gradients_computed += 1;
                        } else {
                            s.gradients_skipped += 1;
                        }
                    }
                    s.gradients_computed +=
                        node.fused.iter().map(|f| f.inputs.len()).sum::<usize>();
                    for saved in &node.saved {
                        if storages.insert(saved.tensor.storage_key()) {
                            s.saved_bytes += saved.bytes;
                        }
                    }
                }
            }
        }
        s
    }
}
