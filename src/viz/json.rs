//! `--format json`: the graph as
//! `{"nodes": [{"id", "name", "fused", "inputs": [{"name", "computed", "to"}],
//! "saved": [{"name", "shape", "bytes"}], ...}], "summary": {...}}`.

use crate::autograd::{Graph, NodeKind};

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn shape(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", d.join(", "))
}

/// The graph as one JSON object. `meta` adds string fields at the top
/// (`"trainable"`, `"mode"`, ...); `compare` nests a second graph's object
/// under `"compare"`.
pub fn to_json(graph: &Graph, meta: &[(&str, String)], compare: Option<String>) -> String {
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let fused: Vec<String> = node.fused.iter().map(|f| string(f.name)).collect();
        let inputs: Vec<String> = node
            .inputs
            .iter()
            .map(|i| match i.to {
                Some(to) => format!(
                    "{{\"name\": {}, \"computed\": true, \"to\": {to}}}",
                    string(i.name)
                ),
                None => format!("{{\"name\": {}, \"computed\": false}}", string(i.name)),
            })
            .collect();
        let saved: Vec<String> = node
            .saved
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\": {}, \"shape\": {}, \"dtype\": {}, \"bytes\": {}}}",
                    string(s.name),
                    shape(&s.shape),
                    string(&format!("{:?}", s.dtype).to_lowercase()),
                    s.bytes
                )
            })
            .collect();
        let mut fields = vec![
            format!("\"id\": {}", node.id),
            format!("\"name\": {}", string(node.name)),
            format!("\"grad_fn\": {}", string(node.grad_fn)),
            format!("\"fused\": [{}]", fused.join(", ")),
            format!("\"shape\": {}", shape(&node.shape)),
            format!("\"inputs\": [{}]", inputs.join(", ")),
            format!("\"saved\": [{}]", saved.join(", ")),
            format!("\"saved_bytes\": {}", node.saved_bytes()),
            format!("\"backward_flops\": {}", node.backward_flops),
        ];
        if node.kind == NodeKind::AccumulateGrad {
            if let Some(label) = &node.label {
                fields.push(format!("\"variable\": {}", string(label)));
            }
        }
        nodes.push(format!("    {{{}}}", fields.join(", ")));
    }
    let s = graph.summary();
    let summary = format!(
        "{{\"nodes\": {}, \"recorded_nodes\": {}, \"accumulate_grad\": {}, \"saved_bytes\": {}, \
         \"backward_flops\": {}, \"gradients_computed\": {}, \"gradients_skipped\": {}}}",
        s.nodes,
        s.recorded_nodes,
        s.accumulate_grad,
        s.saved_bytes,
        s.backward_flops,
        s.gradients_computed,
        s.gradients_skipped
    );
    let mut top: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("  {}: {}", string(k), string(v)))
        .collect();
    top.push(format!("  \"nodes\": [\n{}\n  ]", nodes.join(",\n")));
    top.push(format!("  \"summary\": {summary}"));
    if let Some(c) = compare {
        top.push(format!("  \"compare\": {c}"));
    }
    format!("{{\n{}\n}}", top.join(",\n"))
}
