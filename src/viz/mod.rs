//! Drawing a backward [`Graph`]: JSON for programs, DOT for Graphviz users,
//! and an SVG laid out in pure Rust (the `layout-rs` crate) so that
//! `frostgrad graph` needs nothing installed.
//!
//! One picture holds one or more [`Panel`]s side by side (`--compare`).
//! Gradients flow downwards, from the loss to the parameters. Fill colours
//! tell what freezing did to a node:
//!
//! - green: it computes a gradient for a trainable parameter;
//! - grey-blue, "frozen": it is traversed only to pass the input gradient
//!   on, and skips a parameter's (a frozen conv behind a trainable layer);
//! - white: an op without parameters (ReLU, add, pooling, the loss);
//! - light blue: `AccumulateGrad`, a trainable parameter.

mod dot;
mod json;
mod svg;

pub use dot::to_dot;
pub use json::to_json;
pub use svg::to_svg;

use crate::autograd::{Graph, GraphNode, NodeKind};

/// One graph to draw, with the title shown above it.
#[derive(Clone, Copy, Debug)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub graph: &'a Graph,
}

/// How a node is drawn; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStyle {
    Trainable,
    Frozen,
    Plain,
    Leaf,
}

impl NodeStyle {
    pub fn of(graph: &Graph, node: &GraphNode) -> NodeStyle {
        if node.kind == NodeKind::AccumulateGrad {
            NodeStyle::Leaf
        } else if node.computes_leaf_grad(graph) {
            NodeStyle::Trainable
        } else if node.inputs.iter().any(|i| !i.computed) {
            NodeStyle::Frozen
        } else {
            NodeStyle::Plain
        }
    }

    pub fn fill(self) -> &'static str {
        match self {
            NodeStyle::Trainable => "#b7e1a1",
            NodeStyle::Frozen => "#c9d3de",
            NodeStyle::Plain => "#ffffff",
            NodeStyle::Leaf => "#a7d3f5",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            NodeStyle::Trainable => "computes a parameter gradient",
            NodeStyle::Frozen => "frozen: input gradient only",
            NodeStyle::Plain => "no parameters",
            NodeStyle::Leaf => "AccumulateGrad (trainable parameter)",
        }
    }
}

/// `1.5 MiB`, `37.6 KiB`, `12 B`.
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// The lines drawn in a node's box.
pub fn node_label(node: &GraphNode) -> Vec<String> {
    let mut lines = Vec::new();
    if node.kind == NodeKind::AccumulateGrad {
        lines.push(
            node.label
                .clone()
                .unwrap_or_else(|| "AccumulateGrad".into()),
        );
        lines.push(format!("AccumulateGrad {}", shape_text(&node.shape)));
        return lines;
    }
    let mut title = node.name.to_string();
    for f in &node.fused {
        title.push_str(" + ");
        title.push_str(f.name);
    }
    lines.push(title);
    lines.push(format!("out {}", shape_text(&node.shape)));
    for s in &node.saved {
        lines.push(format!(
            "saved {} {} {}",
            s.name,
            shape_text(&s.shape),
            human_bytes(s.bytes)
        ));
    }
    let skipped: Vec<&str> = node
        .inputs
        .iter()
        .filter(|i| !i.computed)
        .map(|i| i.name)
        .collect();
    if !skipped.is_empty() {
        lines.push(format!("skips d{}", skipped.join(", d")));
    }
    lines
}

/// One line summing a graph up, e.g. for a panel's heading.
pub fn summary_line(graph: &Graph) -> String {
    let s = graph.summary();
    format!(
        "{} nodes + {} AccumulateGrad; saved {}; backward {:.2} GFLOP; {} gradients computed, {} skipped",
        s.nodes,
        s.accumulate_grad,
        human_bytes(s.saved_bytes),
        s.backward_flops as f64 / 1e9,
        s.gradients_computed,
        s.gradients_skipped
    )
}
