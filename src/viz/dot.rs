//! `--format dot`: Graphviz input, for `dot -Tsvg` or `-Tpng` if installed.

use super::{node_label, summary_line, NodeStyle, Panel};

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `digraph`, each panel a cluster (side by side with `--compare`).
pub fn to_dot(panels: &[Panel<'_>]) -> String {
    let mut out = String::from(
        "digraph frostgrad {\n  rankdir=TB;\n  node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=11];\n  edge [color=\"#555555\"];\n",
    );
    for (p, panel) in panels.iter().enumerate() {
        out.push_str(&format!("  subgraph cluster_{p} {{\n"));
        out.push_str(&format!(
            "    label={};\n    labelloc=t;\n",
            quote(&format!("{}\n{}", panel.title, summary_line(panel.graph)))
        ));
        for node in &panel.graph.nodes {
            let style = NodeStyle::of(panel.graph, node);
            out.push_str(&format!(
                "    n{p}_{} [label={}, fillcolor={}];\n",
                node.id,
                quote(&node_label(node).join("\n")),
                quote(style.fill())
            ));
        }
        for node in &panel.graph.nodes {
            for input in &node.inputs {
                if let Some(to) = input.to {
                    out.push_str(&format!(
                        "    n{p}_{} -> n{p}_{to} [label={}];\n",
                        node.id,
                        quote(input.name)
                    ));
                }
            }
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}
