//! `Tensor::graph()`: the recorded backward graph as data, checked against
//! PyTorch's graph of the same model (node names and counts per freezing
//! mode, tests/fixtures/graph/resnet18_nodes.txt from
//! scripts/gen_graph_nodes.py), against what backward then reports
//! (statistics, FLOPs), and against the memory accounting (saved bytes).

use std::collections::BTreeMap;
use std::sync::Mutex;

use frostgrad::autograd::NodeKind;
use frostgrad::nn::{resnet18, Module, ParamPatterns, ResNet};
use frostgrad::ops::{self, flops, Conv2dOptions};
use frostgrad::tensor::memory;
use frostgrad::{Device, Tensor};
use rand::SeedableRng;

mod common;

/// The memory test reads process-wide counters: every test here allocates
/// tensors, so they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct FixtureMode {
    name: String,
    globs: String,
    train: bool,
    counts: BTreeMap<String, usize>,
}

fn fixture_modes() -> Vec<FixtureMode> {
    let path = common::fixture_dir("graph").join("resnet18_nodes.txt");
    let text = std::fs::read_to_string(&path).expect("resnet18_nodes.txt");
    let mut modes: Vec<FixtureMode> = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let words: Vec<&str> = line.split(' ').collect();
        if words[0] == "mode" {
            modes.push(FixtureMode {
                name: words[1].into(),
                globs: words[2].into(),
                train: words[3] == "train",
                counts: BTreeMap::new(),
            });
        } else {
            let mode = modes.last_mut().expect("a mode line first");
            mode.counts
                .insert(words[0].into(), words[1].parse().expect("count"));
        }
    }
    assert_eq!(modes.len(), 10, "five modes, train and eval");
    modes
}

fn model(globs: &str, train: bool) -> ResNet {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = resnet18(10, &mut rng).expect("resnet18");
    model
        .set_trainable(&ParamPatterns::parse(globs).expect("globs"))
        .expect("set_trainable");
    if train {
        model.train();
    } else {
        model.eval();
    }
    model
}

fn batch() -> (Tensor, Tensor) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let images = Tensor::randn(&[2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).expect("images");
    let labels = Tensor::from_vec_i64(vec![1, 2], &[2], Device::Cpu).expect("labels");
    (images, labels)
}

/// Each mode's graph has PyTorch's nodes, a fused batch norm + ReLU counted
/// as both, apart from `TBackward0` (PyTorch's `Linear` records a transpose
/// of the weight; frostgrad's linear node uses the weight directly). Then
/// backward reports exactly what the graph predicted: nodes, gradients
/// computed and skipped per op input, FLOPs.
#[test]
fn resnet18_graph_has_pytorchs_nodes_in_every_mode() {
    let _serial = serial();
    for mode in fixture_modes() {
        let what = format!(
            "{} ({})",
            mode.name,
            if mode.train { "train" } else { "eval" }
        );
        let model = model(&mode.globs, mode.train);
        let (images, labels) = batch();
        let loss =
            ops::cross_entropy(&model.forward(&images).expect("forward"), &labels).expect("loss");
        let mut graph = loss.graph();

        let mut expected = mode.counts.clone();
        expected.remove("TBackward0");
        let got: BTreeMap<String, usize> = graph
            .name_counts()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(got, expected, "{what}: nodes by grad_fn name");

        // The headline numbers of the issue.
        let summary = graph.summary();
        let op_nodes: usize = expected.values().sum::<usize>() - expected["AccumulateGrad"];
        assert_eq!(summary.nodes, op_nodes, "{what}: op nodes");
        assert_eq!(
            summary.accumulate_grad, expected["AccumulateGrad"],
            "{what}"
        );
        match mode.name.as_str() {
            "finetune" => assert_eq!((summary.nodes + 1, summary.accumulate_grad), (72, 62)),
            "layer4" => assert_eq!((summary.nodes + 1, summary.accumulate_grad), (22, 17)),
            "transfer" => assert_eq!((summary.nodes + 1, summary.accumulate_grad), (4, 2)),
            _ => {}
        }

        // Every AccumulateGrad node is a trainable parameter, each once.
        graph.name_leaves(model.named_parameters());
        let patterns = ParamPatterns::parse(&mode.globs).expect("globs");
        let mut leaves: Vec<String> = graph
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::AccumulateGrad)
            .map(|n| n.label.clone().expect("every leaf is a parameter"))
            .collect();
        leaves.sort();
        let mut trainable: Vec<String> = model
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| patterns.matches(n))
            .collect();
        trainable.sort();
        assert_eq!(leaves, trainable, "{what}: AccumulateGrad leaves");

        // Edges point at real nodes, and `to` is set exactly for computed inputs.
        for node in &graph.nodes {
            for input in &node.inputs {
                assert_eq!(input.computed, input.to.is_some(), "{what}: {}", node.name);
                if let Some(to) = input.to {
                    assert!(to < graph.nodes.len() && to != node.id);
                }
            }
        }

        let predicted = graph.expected_stats();
        flops::reset();
        let stats = loss.backward().expect("backward");
        assert_eq!(
            stats, predicted,
            "{what}: backward statistics as the graph predicted"
        );
        assert_eq!(
            flops::executed(),
            summary.backward_flops,
            "{what}: backward FLOPs"
        );
    }
}

/// The bytes the graph says its nodes saved are exactly the bytes the
/// forward pass left alive (the memory accounting), apart from the loss
/// itself: nothing else is kept, and nothing saved is missed.
#[test]
fn saved_bytes_match_memory_accounting() {
    let _serial = serial();
    for (globs, train) in [
        ("*", true),
        ("layer4.*,fc.*", true),
        ("fc.*", true),
        ("conv1.*,bn1.*", false),
    ] {
        let model = model(globs, train);
        let (images, labels) = batch();
        let before = memory::live_bytes(Device::Cpu);
        let loss =
            ops::cross_entropy(&model.forward(&images).expect("forward"), &labels).expect("loss");
        let after = memory::live_bytes(Device::Cpu);
        let graph = loss.graph();
        let summary = graph.summary();

        // Saved tensors that existed before the forward: parameters (a
        // frozen conv's weight), the labels. Each storage once.
        let existing: Vec<Tensor> = model
            .named_parameters()
            .into_iter()
            .chain(model.named_buffers())
            .map(|(_, t)| t)
            .chain([images.clone(), labels.clone()])
            .collect();
        let mut seen: Vec<Tensor> = Vec::new();
        let (mut new_bytes, mut old_bytes) = (0, 0);
        for saved in graph.nodes.iter().flat_map(|n| &n.saved) {
            if seen.iter().any(|t| t.shares_storage_with(&saved.tensor)) {
                continue;
            }
            seen.push(saved.tensor.clone());
            if existing
                .iter()
                .any(|t| t.shares_storage_with(&saved.tensor))
            {
                old_bytes += saved.bytes;
            } else {
                new_bytes += saved.bytes;
            }
        }
        assert_eq!(summary.saved_bytes, new_bytes + old_bytes, "{globs}");
        assert_eq!(
            after - before,
            new_bytes + loss.size_in_bytes(),
            "{globs}: live bytes after the forward vs saved activations"
        );
        drop(graph);
        loss.backward().expect("backward");
    }
}

/// A frozen conv behind a trainable input: its node saves the weight (for
/// the input gradient) and not the input, and marks the weight skipped.
#[test]
fn frozen_conv_node_saves_weight_only() {
    let _serial = serial();
    let x = Tensor::ones(&[1, 2, 5, 5], Device::Cpu)
        .expect("x")
        .requires_grad_(true)
        .expect("leaf");
    let w = Tensor::full(&[3, 2, 3, 3], 0.5, Device::Cpu).expect("w");
    let y = ops::conv2d(&x, &w, None, Conv2dOptions::default()).expect("conv");
    let loss = ops::sum(&y).expect("sum");
    let graph = loss.graph();
    let names: Vec<&str> = graph.nodes.iter().map(|n| n.name).collect();
    assert_eq!(
        names,
        ["SumBackward0", "ConvolutionBackward0", "AccumulateGrad"]
    );
    let conv = &graph.nodes[1];
    assert_eq!(conv.shape, [1, 3, 3, 3]);
    let inputs: Vec<(&str, bool, Option<usize>)> = conv
        .inputs
        .iter()
        .map(|i| (i.name, i.computed, i.to))
        .collect();
    assert_eq!(inputs, [("input", true, Some(2)), ("weight", false, None)]);
    let saved: Vec<(&str, Vec<usize>, usize)> = conv
        .saved
        .iter()
        .map(|s| (s.name, s.shape.clone(), s.bytes))
        .collect();
    assert_eq!(saved, [("weight", vec![3, 2, 3, 3], 3 * 2 * 9 * 4)]);
    assert!(
        conv.computes_leaf_grad(&graph),
        "x is a leaf that requires a gradient"
    );
    // dL/dx of a 3x3x3 output conv: 2 * MACs of the forward.
    assert_eq!(conv.backward_flops, 2 * (3 * 3 * 3 * 2 * 9));
    assert!(conv.pending);

    loss.backward().expect("backward");
    let after = loss.graph();
    assert!(after.op_nodes().all(|n| !n.pending && n.saved.is_empty()));
    assert_eq!(after.nodes.len(), 3, "the structure survives backward");
}

/// A tensor that needs no gradient has an empty graph; a leaf that needs
/// one is its own AccumulateGrad.
#[test]
fn graph_of_leaves() {
    let _serial = serial();
    let plain = Tensor::ones(&[2], Device::Cpu).expect("t");
    assert!(plain.graph().nodes.is_empty());
    let leaf = plain.detach().requires_grad_(true).expect("leaf");
    let g = leaf.graph();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].name, "AccumulateGrad");
    assert_eq!(g.summary().accumulate_grad, 1);
}
