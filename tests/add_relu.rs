//! `ops::add_relu` (the fused residual tail) against `ops::relu(ops::add(..))`
//! on the CPU: values, gradients, which gradients are skipped, backward
//! statistics and graph counts (identical, so benchmarks stay comparable
//! with PyTorch's two nodes), and the in-place path: it is taken exactly
//! when nothing else can read the left operand's buffer, and then changes
//! nothing anybody can see. The fused kernels do the same f32 arithmetic as
//! the unfused ones (the sum rounded once, then the clamp), so every
//! comparison is exact.

mod common;

use frostgrad::ops;
use frostgrad::tensor::memory;
use frostgrad::{no_grad, Device, Tensor};
use std::sync::Mutex;

/// The memory counters are process-wide and one test reads them: every
/// test allocates under this lock, so they take turns.
static MEMORY: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

const SHAPE: [usize; 3] = [2, 3, 5];

fn values(seed: usize) -> Vec<f32> {
    // Integer-valued in [-2, 2]: many sums exactly 0 (the ReLU's kink,
    // where the gradient is 0), negatives and positives.
    (0..30)
        .map(|i| ((i * 7 + seed * 3) % 5) as f32 - 2.0)
        .collect()
}

fn leaf(v: Vec<f32>, requires_grad: bool) -> Tensor {
    Tensor::from_vec(v, &SHAPE, Device::Cpu)
        .and_then(|t| t.requires_grad_(requires_grad))
        .expect("leaf")
}

#[derive(Debug, PartialEq)]
struct Run {
    output: Vec<f32>,
    grads: [Option<Vec<f32>>; 2],
    stats: frostgrad::autograd::BackwardStats,
    name_counts: Vec<(&'static str, usize)>,
    summary: (usize, usize, usize, usize, usize),
    grad_fn: Option<&'static str>,
}

/// One forward + backward. `through_node`: the left operand is `a * 1`, a
/// fresh tensor only this forward holds (so the fused op may overwrite it,
/// as in ResNet's block), rather than the leaf `a` itself.
fn run(fused: bool, through_node: bool, requires: [bool; 2]) -> Run {
    let a = leaf(values(1), requires[0]);
    let b = leaf(values(2), requires[1]);
    let one = Tensor::from_vec(vec![1.0], &[1], Device::Cpu).expect("one");
    let lhs = if through_node {
        ops::mul(&a, &one).expect("mul")
    } else {
        a.clone()
    };
    let out = if fused {
        ops::add_relu(lhs, &b)
    } else {
        ops::add(&lhs, &b).and_then(|s| ops::relu(&s))
    }
    .expect("forward");
    let graph = out.graph();
    let s = graph.summary();
    let output = out.to_vec_f32().expect("output");
    let grad_fn = out.grad_fn().map(|g| g.name());
    let stats = if out.requires_grad() {
        let cotangent: Vec<f32> = (0..30).map(|i| i as f32 * 0.25 - 3.0).collect();
        common::contract(&out, &cotangent)
            .backward()
            .expect("backward")
    } else {
        Default::default()
    };
    let grad = |t: &Tensor| t.grad().map(|g| g.to_vec_f32().expect("grad"));
    Run {
        output,
        grads: [grad(&a), grad(&b)],
        stats,
        name_counts: graph.name_counts().into_iter().collect(),
        summary: (
            s.nodes,
            s.accumulate_grad,
            s.saved_bytes,
            s.gradients_computed,
            s.gradients_skipped,
        ),
        grad_fn,
    }
}

#[test]
fn fused_matches_the_unfused_composition_exactly() {
    let _turn = serial();
    for through_node in [false, true] {
        for requires in [[true, true], [true, false], [false, true], [false, false]] {
            let what = format!("through_node={through_node} requires={requires:?}");
            let mut fused = run(true, through_node, requires);
            let unfused = run(false, through_node, requires);
            let trainable = requires[0] || requires[1];
            assert_eq!(
                fused.grad_fn,
                trainable.then_some("AddReluBackward0"),
                "{what}"
            );
            assert_eq!(
                unfused.grad_fn,
                trainable.then_some("ReluBackward0"),
                "{what}"
            );
            // The ReLU both passes and blocks, and some sums are exactly 0.
            assert!(fused.output.contains(&0.0), "{what}");
            assert!(fused.output.iter().any(|&v| v > 0.0), "{what}");
            // A frozen operand gets no gradient; a trainable one does.
            for (i, g) in fused.grads.iter().enumerate() {
                assert_eq!(g.is_some(), requires[i], "{what}: operand {i}");
            }
            if trainable {
                assert_eq!(fused.stats.computed("relu.input"), 1, "{what}");
                assert_eq!(
                    fused.stats.skipped("add.input") + fused.stats.skipped("add.other"),
                    usize::from(!(requires[0] && requires[1])),
                    "{what}"
                );
            }
            fused.grad_fn = unfused.grad_fn;
            assert_eq!(fused, unfused, "{what}");
        }
    }
}

#[test]
fn the_graph_shows_one_node_reporting_the_relu() {
    let _turn = serial();
    let a = leaf(values(1), true);
    let b = leaf(values(2), false);
    let out = ops::add_relu(a.clone(), &b).expect("forward");
    let graph = out.graph();
    let root = &graph.nodes[0];
    assert_eq!(root.grad_fn, "AddReluBackward0");
    assert_eq!(root.name, "AddBackward0");
    assert_eq!(root.op, "add");
    assert_eq!(
        root.fused.iter().map(|f| f.name).collect::<Vec<_>>(),
        ["ReluBackward0"]
    );
    let inputs: Vec<(&str, bool)> = root.inputs.iter().map(|i| (i.name, i.computed)).collect();
    assert_eq!(inputs, [("input", true), ("other", false)]);
    // Only the output (the mask) is saved, as by ReluBackward0; never the sum.
    let saved: Vec<&str> = root.saved.iter().map(|s| s.name).collect();
    assert_eq!(saved, ["result"]);
    assert!(root.saved[0].tensor.shares_storage_with(&out));
}

#[test]
fn no_graph_without_a_trainable_operand_or_under_no_grad() {
    let _turn = serial();
    let a = leaf(values(1), true);
    let b = leaf(values(2), true);
    let out = no_grad(|| ops::add_relu(a.clone(), &b)).expect("forward");
    assert!(out.grad_fn().is_none() && !out.requires_grad());
    let out = ops::add_relu(leaf(values(1), false), &leaf(values(2), false)).expect("forward");
    assert!(out.grad_fn().is_none() && !out.requires_grad());
}

#[test]
fn a_buffer_anyone_can_still_read_is_never_overwritten() {
    let _turn = serial();
    let a_values = values(1);
    let b = leaf(values(2), false);
    let expected = ops::relu(&ops::add(&leaf(a_values.clone(), false), &b).unwrap())
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let check = |kept: &Tensor, out: Tensor, what: &str| {
        assert_eq!(
            kept.to_vec_f32().unwrap(),
            a_values,
            "{what}: operand changed"
        );
        assert_eq!(out.to_vec_f32().unwrap(), expected, "{what}: result");
        assert!(!out.shares_storage_with(kept), "{what}");
    };
    // The caller keeps a handle.
    let a = leaf(a_values.clone(), false);
    check(&a, ops::add_relu(a.clone(), &b).unwrap(), "kept handle");
    // The caller keeps a view (a reshape shares the storage).
    let a = leaf(a_values.clone(), false);
    let flat = ops::flatten(&a, 0).unwrap();
    check(
        &a,
        ops::add_relu(ops::reshape(&flat, &SHAPE).unwrap(), &b).unwrap(),
        "view",
    );
    // A leaf that requires a gradient, even when passed as its last handle:
    // the graph still shows it.
    let out = ops::add_relu(leaf(a_values.clone(), true), &b).unwrap();
    let graph = out.graph();
    let leaf_node = graph
        .nodes
        .iter()
        .find_map(|n| n.variable.clone())
        .expect("the leaf's AccumulateGrad node");
    check(&leaf_node, out, "trainable leaf");
    // A backward node saved it: ReLU saves its output, which must survive
    // for that ReLU's own backward.
    let x = leaf(a_values.iter().map(|v| v - 0.5).collect(), true);
    let r = ops::relu(&x).unwrap();
    let saved = r.graph().nodes[0].saved[0].tensor.clone();
    let before = saved.to_vec_f32().unwrap();
    let out = ops::add_relu(r, &b).unwrap();
    assert_eq!(saved.to_vec_f32().unwrap(), before, "saved tensor changed");
    common::contract(&out, &[1.0; 30]).backward().unwrap();
    let unfused = {
        let x2 = leaf(a_values.iter().map(|v| v - 0.5).collect(), true);
        let o = ops::add(&ops::relu(&x2).unwrap(), &b).and_then(|s| ops::relu(&s));
        common::contract(&o.unwrap(), &[1.0; 30])
            .backward()
            .unwrap();
        x2.grad().unwrap().to_vec_f32().unwrap()
    };
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), unfused);
}

#[test]
fn a_sole_handle_is_overwritten_in_place_and_the_memory_accounting_agrees() {
    let _turn = serial();
    let bytes = 30 * 4;
    let a = leaf(values(1), true);
    let b = leaf(values(2), false);
    let one = Tensor::from_vec(vec![1.0], &[1], Device::Cpu).unwrap();
    // Out of place (the caller keeps `lhs`): one more buffer of the result's size.
    let lhs = ops::mul(&a, &one).unwrap();
    let before = memory::live_bytes(Device::Cpu);
    let out = ops::add_relu(lhs.clone(), &b).unwrap();
    assert_eq!(memory::live_bytes(Device::Cpu), before + bytes);
    drop((lhs, out));
    // In place: `lhs`'s buffer becomes the result's, no new one.
    let lhs = ops::mul(&a, &one).unwrap();
    let before = memory::live_bytes(Device::Cpu);
    let out = ops::add_relu(lhs, &b).unwrap();
    assert_eq!(memory::live_bytes(Device::Cpu), before);
    // And the gradient still reaches `a` through `lhs`'s node.
    common::contract(&out, &[1.0; 30]).backward().unwrap();
    let expected: Vec<f32> = out
        .to_vec_f32()
        .unwrap()
        .iter()
        .map(|&y| if y > 0.0 { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(a.grad().unwrap().to_vec_f32().unwrap(), expected);
}

#[test]
fn different_shapes_broadcast_through_the_unfused_ops() {
    let _turn = serial();
    let a = leaf(values(1), true);
    let row = Tensor::from_vec(vec![0.5, -0.5, 1.0, -1.0, 0.0], &[5], Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .unwrap();
    let out = ops::add_relu(a.clone(), &row).unwrap();
    let expected = ops::relu(&ops::add(&a, &row).unwrap()).unwrap();
    assert_eq!(out.to_vec_f32().unwrap(), expected.to_vec_f32().unwrap());
    assert_eq!(out.grad_fn().map(|g| g.name()), Some("ReluBackward0"));
    let wrong = Tensor::zeros(&[4], Device::Cpu).unwrap();
    assert!(ops::add_relu(a, &wrong).is_err());
}

#[test]
fn an_incoming_gradient_someone_still_reads_is_not_masked_in_place() {
    let _turn = serial();
    let expected_grad = |cot: &[f32], out: &[f32]| -> Vec<f32> {
        cot.iter()
            .zip(out)
            .map(|(&c, &y)| if y > 0.0 { c } else { 0.0 })
            .collect()
    };
    let cotangent: Vec<f32> = (0..30).map(|i| i as f32 * 0.25 - 3.0).collect();
    for holder in ["tensor hook", "post-hook", "nobody"] {
        let a = leaf(values(1), true);
        let b = leaf(values(2), true);
        let out = ops::add_relu(a.clone(), &b).expect("forward");
        let seen: std::sync::Arc<Mutex<Vec<Tensor>>> = Default::default();
        let keep = seen.clone();
        match holder {
            // Keeps dL/d(out), the gradient the node receives.
            "tensor hook" => {
                out.register_hook(move |g| {
                    keep.lock().unwrap().push(g.clone());
                    Ok(None)
                })
                .expect("a hook on a tensor with a grad_fn");
            }
            // Is handed dL/d(out) after the node's backward.
            "post-hook" => {
                out.grad_fn().expect("node").register_hook(move |_, g| {
                    keep.lock().unwrap().push(g.clone());
                    Ok(None)
                });
            }
            _ => {}
        }
        let y = out.to_vec_f32().unwrap();
        common::contract(&out, &cotangent).backward().unwrap();
        let want = expected_grad(&cotangent, &y);
        assert_eq!(a.grad().unwrap().to_vec_f32().unwrap(), want, "{holder}");
        assert_eq!(b.grad().unwrap().to_vec_f32().unwrap(), want, "{holder}");
        for g in seen.lock().unwrap().iter() {
            assert_eq!(g.to_vec_f32().unwrap(), cotangent, "{holder}: changed");
        }
    }
}
