//! `frostgrad graph` end to end: the JSON has PyTorch's nodes per mode
//! (tests/fixtures/graph/resnet18_nodes.txt, TBackward0 aside) and is
//! internally consistent; SVG and DOT draw every node and edge; bad input
//! gets a one-line error and no output file.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/scratch.rs"]
mod scratch;
use std::collections::BTreeMap;

use cli::frostgrad;
use scratch::scratch_dir;
use serde_json::Value;

mod common;

fn graph_json(args: &[&str], dir: &std::path::Path, name: &str) -> Value {
    let out = dir.join(name);
    let out_s = out.to_str().expect("utf-8 path");
    let mut all = vec!["graph", "--batch", "2", "--size", "32", "--out", out_s];
    all.extend_from_slice(args);
    let run = frostgrad(&all);
    assert!(
        run.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&out).expect("output")).expect("valid JSON")
}

/// PyTorch's counts for one mode, TBackward0 removed (frostgrad's linear
/// node uses the weight directly).
fn pytorch_counts(mode: &str, train: bool) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(common::fixture_dir("graph").join("resnet18_nodes.txt"))
        .expect("fixture");
    let header = format!("mode {mode} ");
    let suffix = if train { " train" } else { " eval" };
    let mut counts = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.starts_with("mode ") {
            inside = line.starts_with(&header) && line.ends_with(suffix);
        } else if inside {
            let (name, n) = line.split_once(' ').expect("name count");
            if name != "TBackward0" {
                counts.insert(name.to_string(), n.parse().expect("count"));
            }
        }
    }
    assert!(!counts.is_empty(), "mode {mode} in the fixture");
    counts
}

/// Node counts from the JSON, a fused node counted as each of its ops.
fn json_counts(graph: &Value) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for node in graph["nodes"].as_array().expect("nodes") {
        *counts
            .entry(node["name"].as_str().expect("name").to_string())
            .or_insert(0) += 1;
        for f in node["fused"].as_array().expect("fused") {
            *counts
                .entry(f.as_str().expect("fused name").to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// The schema of the issue, and that ids, edges and the summary agree.
fn check_consistent(graph: &Value) {
    let nodes = graph["nodes"].as_array().expect("nodes");
    let mut saved_total = 0;
    let (mut computed, mut skipped) = (0, 0);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["id"].as_u64(), Some(i as u64));
        let name = node["name"].as_str().expect("name");
        for input in node["inputs"].as_array().expect("inputs") {
            input["name"].as_str().expect("input name");
            if input["computed"].as_bool().expect("computed") {
                let to = input["to"].as_u64().expect("`to` for a computed input") as usize;
                assert!(to < nodes.len() && to != i, "{name}: edge to {to}");
                computed += 1;
            } else {
                assert!(
                    input.get("to").is_none(),
                    "{name}: a skipped input has no `to`"
                );
                skipped += 1;
            }
        }
        computed += node["fused"].as_array().expect("fused").len();
        for saved in node["saved"].as_array().expect("saved") {
            let shape: Vec<u64> = saved["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            let per = if saved["dtype"] == "i64" { 8 } else { 4 };
            assert_eq!(
                saved["bytes"].as_u64(),
                Some(shape.iter().product::<u64>() * per)
            );
            saved_total += saved["bytes"].as_u64().expect("bytes");
        }
        if name == "AccumulateGrad" {
            assert!(
                node["variable"].as_str().is_some(),
                "a leaf names its parameter"
            );
        }
    }
    let s = &graph["summary"];
    assert_eq!(s["gradients_computed"].as_u64(), Some(computed as u64));
    assert_eq!(s["gradients_skipped"].as_u64(), Some(skipped as u64));
    // Storages shared between nodes (a ReLU's output saved by the next
    // conv too) are counted once in the summary.
    assert!(s["saved_bytes"].as_u64().expect("saved_bytes") <= saved_total);
}

#[test]
fn json_has_pytorchs_nodes_per_mode() {
    let dir = scratch_dir("json");
    for (mode, globs) in [
        ("finetune", "*"),
        ("layer4", "layer4.*,fc.*"),
        ("transfer", "fc.*"),
        ("stem", "conv1.*,bn1.*"),
    ] {
        for train in [true, false] {
            let mut args = vec!["--trainable", globs];
            if !train {
                args.push("--eval");
            }
            let graph = graph_json(&args, &dir, "g.json");
            assert_eq!(graph["trainable"], globs);
            assert_eq!(graph["mode"], if train { "train" } else { "eval" });
            assert_eq!(
                json_counts(&graph),
                pytorch_counts(mode, train),
                "{mode} {train}"
            );
            check_consistent(&graph);
            let expected = pytorch_counts(mode, train);
            let ops: u64 = expected.values().sum::<u64>() - expected["AccumulateGrad"];
            assert_eq!(graph["summary"]["nodes"].as_u64(), Some(ops));
        }
    }
}

/// `--compare` nests the second mode; the fused batch norm + ReLU is
/// reported under PyTorch's names; transfer learning saves only the fc input.
#[test]
fn json_compare_and_details() {
    let dir = scratch_dir("compare");
    let graph = graph_json(&["--trainable", "*", "--compare", "fc.*"], &dir, "c.json");
    let transfer = &graph["compare"];
    assert_eq!(transfer["trainable"], "fc.*");
    let names: Vec<&str> = transfer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "NllLossBackward0",
            "LogSoftmaxBackward0",
            "AddmmBackward0",
            "AccumulateGrad",
            "AccumulateGrad"
        ]
    );
    let addmm = &transfer["nodes"][2];
    assert_eq!(addmm["inputs"][0]["name"], "input");
    assert_eq!(addmm["inputs"][0]["computed"], false);
    let saved: Vec<&str> = addmm["saved"]
        .as_array()
        .expect("saved")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        saved,
        ["input"],
        "dW needs the input; nothing needs the weight"
    );
    assert_eq!(addmm["saved"][0]["shape"], serde_json::json!([2, 512]));

    let fused = graph["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["grad_fn"] == "NativeBatchNormReluBackward0")
        .expect("a fused node");
    assert_eq!(fused["name"], "NativeBatchNormBackward0");
    assert_eq!(fused["fused"], serde_json::json!(["ReluBackward0"]));
}

#[test]
fn svg_and_dot_draw_every_node() {
    let dir = scratch_dir("draw");
    let json = graph_json(&["--trainable", "layer4.*,fc.*"], &dir, "l4.json");
    let nodes = json["nodes"].as_array().expect("nodes").len();
    let edges: usize = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            n["inputs"]
                .as_array()
                .expect("inputs")
                .iter()
                .filter(|i| i["computed"] == true)
                .count()
        })
        .sum();

    for ext in ["svg", "dot"] {
        let out = dir.join(format!("l4.{ext}"));
        let run = frostgrad(&[
            "graph",
            "--trainable",
            "layer4.*,fc.*",
            "--compare",
            "fc.*",
            "--batch",
            "2",
            "--size",
            "32",
            "--out",
            out.to_str().expect("path"),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(stdout.contains("21 nodes + 17 AccumulateGrad"), "{stdout}");
        assert!(stdout.contains("3 nodes + 2 AccumulateGrad"), "{stdout}");
        let text = std::fs::read_to_string(&out).expect("output");
        // The transfer panel adds 5 nodes and 4 edges.
        match ext {
            "svg" => {
                assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"));
                // One box per node (plus the 4 legend swatches and the background).
                assert_eq!(text.matches("<rect").count(), nodes + 5 + 5, "boxes");
                assert!(text.contains("layer4.1.conv2.weight"));
                assert!(text.contains("--trainable fc.* (train mode)"));
                assert!(text.contains("skips dinput"));
            }
            _ => {
                assert!(text.starts_with("digraph"));
                assert_eq!(text.matches(" -> ").count(), edges + 4, "edges");
                assert_eq!(text.matches("subgraph cluster_").count(), 2);
            }
        }
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = scratch_dir("bad");
    let out = dir.join("never.svg");
    let out_s = out.to_str().expect("path");
    let missing_dir = dir.join("no/such/dir/g.svg");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--batch", "0", "--out", out_s], "positive"),
        (vec!["--size", "100000", "--out", out_s], "too large"),
        (
            vec![
                "--batch",
                "100000000000",
                "--size",
                "100000000000",
                "--out",
                out_s,
            ],
            "too large",
        ),
        (
            vec!["--trainable", "nothing.*", "--size", "32", "--out", out_s],
            "nothing.*",
        ),
        (vec!["--compare", "", "--size", "32", "--out", out_s], ""),
        (
            vec!["--weights", "/no/such/file.safetensors", "--out", out_s],
            "/no/such/file",
        ),
        (
            vec!["--size", "32", "--out", missing_dir.to_str().expect("path")],
            "no/such/dir",
        ),
    ];
    // An output that is the input: refused before any work, the input intact.
    let weights = dir.join("w.safetensors");
    std::fs::write(&weights, b"not really weights").expect("write");
    let w = weights.to_str().expect("path");
    let run = frostgrad(&["graph", "--weights", w, "--out", w]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).starts_with("error:"));
    assert_eq!(
        std::fs::read(&weights).expect("read"),
        b"not really weights"
    );

    for (args, needle) in cases {
        let mut all = vec!["graph"];
        all.extend_from_slice(&args);
        let run = frostgrad(&all);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} should fail");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote an output");
    }
}
