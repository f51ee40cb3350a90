//! `requires_grad` semantics, checked against what PyTorch does.
//!
//! Each behaviour here is also asserted on PyTorch itself by
//! `check_semantics` in `scripts/gen_references.py`, and the `grad_fn`
//! chain is compared with `tests/fixtures/ops/graph_names.txt`, which that
//! script writes from a real PyTorch graph.

mod common;

use frostgrad::autograd::{NextFunction, NoGradGuard};
use frostgrad::ops::{self, BatchNormOptions, Conv2dOptions, MaxPool2dOptions};
use frostgrad::{no_grad, Device, Error, Tensor};

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, Device::Cpu).expect("tensor")
}

fn trainable(values: &[f32], shape: &[usize]) -> Tensor {
    t(values, shape).requires_grad_(true).expect("leaf")
}

/// Values 0.1, 0.2, ... with alternating signs: deterministic, no ties.
fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 + 1.0) * 0.1 * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect()
}

fn grad_values(x: &Tensor) -> Vec<f32> {
    x.grad().expect("gradient").to_vec_f32().expect("f32")
}

fn is_autograd_error<T: std::fmt::Debug>(r: frostgrad::Result<T>) -> String {
    match r {
        Err(Error::Autograd(msg)) => msg,
        other => panic!("expected an autograd error, got {other:?}"),
    }
}

#[test]
fn leaves_carry_a_settable_flag_and_non_leaves_refuse_it() {
    let x = t(&[1.0, 2.0], &[2]);
    assert!(!x.requires_grad() && x.is_leaf() && x.grad().is_none() && x.grad_fn().is_none());
    x.set_requires_grad(true).expect("leaf flag");
    assert!(x.requires_grad());
    let y = ops::relu(&x).expect("relu");
    assert!(!y.is_leaf() && y.requires_grad());
    is_autograd_error(y.set_requires_grad(false));
    is_autograd_error(y.set_requires_grad(true));
    assert!(y.requires_grad(), "a failed set must not change the flag");
    // Switching a leaf off again is allowed.
    x.set_requires_grad(false).expect("leaf flag");
    assert!(!x.requires_grad());
    // Labels and counters cannot require gradients.
    let labels = Tensor::from_vec_i64(vec![1, 0], &[2], Device::Cpu).expect("labels");
    is_autograd_error(labels.set_requires_grad(true));
}

#[test]
fn clones_of_a_handle_are_the_same_tensor() {
    let x = t(&[1.0, -2.0], &[2]);
    let alias = x.clone();
    alias.set_requires_grad(true).expect("flag");
    assert!(
        x.requires_grad(),
        "a clone shares the flag, like two Python names"
    );
    ops::sum(&ops::relu(&x).expect("relu"))
        .expect("sum")
        .backward()
        .expect("backward");
    assert_eq!(grad_values(&alias), vec![1.0, 0.0]);
}

#[test]
fn grad_and_set_grad_to_none() {
    let x = trainable(&[1.0, 2.0, 3.0], &[3]);
    assert!(x.grad().is_none());
    ops::sum(&x).expect("sum").backward().expect("backward");
    assert_eq!(grad_values(&x), vec![1.0; 3]);
    x.set_grad(None).expect("set_to_none");
    assert!(x.grad().is_none());
    let wrong = t(&[1.0, 2.0], &[2]);
    assert!(
        x.set_grad(Some(wrong)).is_err(),
        "a gradient must have the tensor's shape"
    );
    x.set_grad(Some(t(&[5.0, 6.0, 7.0], &[3])))
        .expect("set_grad");
    assert_eq!(grad_values(&x), vec![5.0, 6.0, 7.0]);
}

#[test]
fn backward_needs_a_scalar_that_requires_grad() {
    let x = trainable(&[1.0, -1.0, 2.0, 0.5], &[2, 2]);
    let y = ops::relu(&x).expect("relu");
    let msg = is_autograd_error(y.backward());
    assert!(msg.contains("one-element"), "{msg}");
    assert!(
        x.grad().is_none(),
        "a refused backward must not touch gradients"
    );

    let frozen = t(&[1.0, 2.0], &[2]);
    let loss = ops::sum(&frozen).expect("sum");
    assert!(loss.grad_fn().is_none() && !loss.requires_grad());
    is_autograd_error(loss.backward());

    // A leaf scalar that requires a gradient: d(s)/d(s) = 1, as in PyTorch.
    let s = trainable(&[2.0], &[]);
    let stats = s.backward().expect("backward");
    assert_eq!(grad_values(&s), vec![1.0]);
    assert_eq!(stats.nodes, 0);
}

#[test]
fn no_grad_records_nothing_and_restores_the_mode() {
    let x = trainable(&[1.0, -2.0], &[2]);
    let y = no_grad(|| ops::relu(&x).expect("relu"));
    assert!(y.grad_fn().is_none() && !y.requires_grad() && y.is_leaf());
    assert!(frostgrad::autograd::is_grad_enabled());
    {
        let _outer = NoGradGuard::new();
        {
            let _inner = NoGradGuard::new();
        }
        assert!(
            !frostgrad::autograd::is_grad_enabled(),
            "inner guard restores the outer no_grad"
        );
        assert!(ops::add(&x, &x).expect("add").grad_fn().is_none());
    }
    assert!(frostgrad::autograd::is_grad_enabled());
    assert!(
        ops::relu(&x).expect("relu").grad_fn().is_some(),
        "recording resumes after the scope"
    );
}

#[test]
fn detach_shares_storage_and_cuts_history() {
    let x = trainable(&[1.0, -2.0, 3.0], &[3]);
    let y = ops::relu(&x).expect("relu");
    let d = y.detach();
    assert!(d.shares_storage_with(&y));
    assert!(d.is_leaf() && d.grad_fn().is_none() && !d.requires_grad());
    assert_eq!(d.to_vec_f32().expect("f32"), vec![1.0, 0.0, 3.0]);
    // Gradient does not flow back through the detached branch.
    let w = trainable(&[0.0; 3], &[3]);
    let loss = ops::sum(&ops::add(&d, &w).expect("add")).expect("sum");
    loss.backward().expect("backward");
    assert!(x.grad().is_none(), "no gradient through detach()");
    assert_eq!(grad_values(&w), vec![1.0; 3]);
    // reshape is a view too, but keeps history.
    let r = ops::reshape(&y, &[3, 1]).expect("reshape");
    assert!(r.shares_storage_with(&y) && r.grad_fn().map(|g| g.name()) == Some("ViewBackward0"));
}

#[test]
fn gradients_accumulate_within_a_graph_and_across_backward_calls() {
    let x = trainable(&[1.0, 2.0, 3.0], &[3]);
    // x used twice in one graph: d(sum(x + x))/dx = 2.
    ops::sum(&ops::add(&x, &x).expect("add"))
        .expect("sum")
        .backward()
        .expect("backward");
    assert_eq!(grad_values(&x), vec![2.0; 3]);
    // A second graph's backward adds to what is there.
    ops::sum(&x).expect("sum").backward().expect("backward");
    assert_eq!(grad_values(&x), vec![3.0; 3]);
    x.set_grad(None).expect("set_to_none");
    ops::sum(&x).expect("sum").backward().expect("backward");
    assert_eq!(grad_values(&x), vec![1.0; 3]);

    // Reuse through different paths of one graph (a residual connection).
    let x = trainable(&[1.0, -1.0], &[1, 2]);
    let h = ops::relu(&x).expect("relu");
    let out = ops::add(&h, &x).expect("add");
    ops::sum(&out).expect("sum").backward().expect("backward");
    assert_eq!(grad_values(&x), vec![2.0, 1.0]);
}

#[test]
fn intermediate_results_get_no_grad() {
    let x = trainable(&[1.0, 2.0], &[2]);
    let mid = ops::relu(&x).expect("relu");
    ops::sum(&mid).expect("sum").backward().expect("backward");
    assert!(
        mid.grad().is_none(),
        "PyTorch does not populate .grad of non-leaves"
    );
    assert!(x.grad().is_some());
}

#[test]
fn an_op_records_a_node_only_when_an_input_requires_grad() {
    let x = t(&ramp(2 * 3 * 4 * 4), &[2, 3, 4, 4]);
    let w = t(&ramp(4 * 3 * 3 * 3), &[4, 3, 3, 3]);
    let conv = ops::conv2d(&x, &w, None, Conv2dOptions::default()).expect("conv");
    assert!(
        conv.grad_fn().is_none() && !conv.requires_grad(),
        "frozen prefix: no graph"
    );
    let pooled = ops::max_pool2d(&conv, MaxPool2dOptions::new(2)).expect("pool");
    assert!(pooled.grad_fn().is_none());
    // One trainable input is enough.
    let b = trainable(&[0.0; 4], &[4]);
    let conv = ops::conv2d(&x, &w, Some(&b), Conv2dOptions::default()).expect("conv");
    assert_eq!(
        conv.grad_fn().map(|g| g.name()),
        Some("ConvolutionBackward0")
    );
    let names: Vec<Option<&str>> = conv
        .grad_fn()
        .expect("node")
        .next_functions()
        .iter()
        .map(|n| n.as_ref().map(NextFunction::name))
        .collect();
    assert_eq!(names, vec![None, None, Some("AccumulateGrad")]);
}

/// The headline feature: a frozen conv between a trainable stem and the
/// loss still passes the input gradient on but computes no weight gradient.
#[test]
fn nodes_compute_only_the_input_grads_that_are_needed() {
    let image = t(&ramp(2 * 2 * 5 * 5), &[2, 2, 5, 5]);
    let stem_w = trainable(&ramp(3 * 2 * 3 * 3), &[3, 2, 3, 3]);
    let frozen_w = t(&ramp(4 * 3 * 3 * 3), &[4, 3, 3, 3]);
    let fc_w = t(&ramp(2 * 16), &[2, 16]);
    let fc_b = trainable(&[0.1, -0.1], &[2]);
    let pad = Conv2dOptions {
        padding: (1, 1),
        ..Default::default()
    };
    let h = ops::relu(&ops::conv2d(&image, &stem_w, None, pad).expect("conv")).expect("relu");
    let h = ops::conv2d(
        &h,
        &frozen_w,
        None,
        Conv2dOptions {
            stride: (2, 2),
            ..Default::default()
        },
    )
    .expect("conv");
    let h = ops::flatten(&h, 1).expect("flatten");
    let logits = ops::linear(&h, &fc_w, Some(&fc_b)).expect("linear");
    let labels = Tensor::from_vec_i64(vec![0, 1], &[2], Device::Cpu).expect("labels");
    let stats = ops::cross_entropy(&logits, &labels)
        .expect("loss")
        .backward()
        .expect("backward");

    assert_eq!(
        stats.computed("conv2d.input"),
        1,
        "the frozen conv passes dL/dx to the stem\n{stats}"
    );
    assert_eq!(
        stats.skipped("conv2d.input"),
        1,
        "the stem's input is the image\n{stats}"
    );
    assert_eq!(
        stats.computed("conv2d.weight"),
        1,
        "only the stem's weight\n{stats}"
    );
    assert_eq!(
        stats.skipped("conv2d.weight"),
        1,
        "the frozen conv's weight\n{stats}"
    );
    assert_eq!(stats.computed("linear.input"), 1, "{stats}");
    assert_eq!(stats.skipped("linear.weight"), 1, "{stats}");
    assert_eq!(stats.computed("linear.bias"), 1, "{stats}");
    assert_eq!(stats.computed("relu.input"), 1, "{stats}");
    // loss(2) + linear + view + conv + relu + conv
    assert_eq!(stats.nodes, 7, "{stats}");
    assert!(stem_w.grad().is_some() && fc_b.grad().is_some());
    assert!(frozen_w.grad().is_none() && fc_w.grad().is_none() && image.grad().is_none());
}

#[test]
fn frozen_batch_norm_passes_the_input_gradient() {
    let x = trainable(&ramp(3 * 2 * 2 * 2), &[3, 2, 2, 2]);
    let gamma = t(&[1.0, 0.5], &[2]);
    let beta = t(&[0.0, 0.2], &[2]);
    let y = ops::batch_norm(
        &x,
        Some(&gamma),
        Some(&beta),
        None,
        None,
        BatchNormOptions::default(),
    )
    .expect("bn");
    let stats = common::contract(&y, &ramp(24))
        .backward()
        .expect("backward");
    assert_eq!(stats.computed("batch_norm.input"), 1, "{stats}");
    assert_eq!(stats.skipped("batch_norm.weight"), 1, "{stats}");
    assert_eq!(stats.skipped("batch_norm.bias"), 1, "{stats}");
    assert!(gamma.grad().is_none() && beta.grad().is_none() && x.grad().is_some());
}

#[test]
fn backward_through_the_graph_twice_is_an_error() {
    let x = trainable(&[1.0, -2.0, 3.0, 4.0], &[2, 2]);
    let loss = ops::sum(&ops::relu(&x).expect("relu")).expect("sum");
    let node = loss.grad_fn().expect("node");
    assert!(node.is_pending());
    loss.backward().expect("first backward");
    assert!(!node.is_pending(), "saved state is freed after backward");
    let msg = is_autograd_error(loss.backward());
    assert!(msg.contains("second time"), "{msg}");
    assert_eq!(
        grad_values(&x),
        vec![1.0, 0.0, 1.0, 1.0],
        "the failed pass must not add to .grad"
    );
}

#[test]
fn next_functions_mirror_pytorch() {
    // F.conv2d(F.relu(x), w, bias) with x and w trainable, bias frozen:
    // PyTorch prints (ReluBackward0, AccumulateGrad(w), None).
    let x = trainable(&ramp(2 * 4 * 4), &[1, 2, 4, 4]);
    let w = trainable(&ramp(3 * 2 * 3 * 3), &[3, 2, 3, 3]);
    let bias = t(&[0.0; 3], &[3]);
    let out = ops::conv2d(
        &ops::relu(&x).expect("relu"),
        &w,
        Some(&bias),
        Conv2dOptions::default(),
    )
    .expect("conv");
    let next = out.grad_fn().expect("node").next_functions();
    let names: Vec<Option<&str>> = next
        .iter()
        .map(|n| n.as_ref().map(NextFunction::name))
        .collect();
    assert_eq!(
        names,
        vec![Some("ReluBackward0"), Some("AccumulateGrad"), None]
    );
    match &next[1] {
        Some(NextFunction::AccumulateGrad(leaf)) => {
            assert_eq!(leaf.id(), w.id(), "AccumulateGrad holds w itself")
        }
        other => panic!("expected AccumulateGrad, got {other:?}"),
    }
    match &next[0] {
        Some(NextFunction::Node(relu)) => {
            let inner: Vec<Option<&str>> = relu
                .next_functions()
                .iter()
                .map(|n| n.as_ref().map(NextFunction::name))
                .collect();
            assert_eq!(inner, vec![Some("AccumulateGrad")]);
        }
        other => panic!("expected ReluBackward0, got {other:?}"),
    }
}

/// The `grad_fn` chain of a small network, compared with PyTorch's (see
/// `graph_names` in the script). Differences by design, not visible here:
/// frostgrad gives an absent optional input (a conv's missing bias) no slot
/// where PyTorch lists `None`, and `linear` lists `[input, weight, bias]`
/// with the weight's `AccumulateGrad` directly, where PyTorch's `addmm`
/// lists `[bias, input, TBackward0(weight)]`. The fixture therefore counts
/// trainable leaves per node, looking through `TBackward0`, and follows the
/// data input (`addmm`'s slot 1, our slot 0).
#[test]
fn grad_fn_chain_matches_pytorch() {
    let path = common::fixture_dir("ops").join("graph_names.txt");
    let text = std::fs::read_to_string(&path).expect("graph_names.txt");
    let expected: Vec<(String, usize)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, leaves) = l.split_once(' ').expect("`name count`");
            (name.to_string(), leaves.parse().expect("count"))
        })
        .collect();
    assert_eq!(expected.len(), 10, "fixture chain length");

    // The same network as graph_names() in scripts/gen_references.py.
    let x = t(&ramp(2 * 3 * 8 * 8), &[2, 3, 8, 8]);
    let conv_w = t(&ramp(4 * 27), &[4, 3, 3, 3]);
    let conv_b = trainable(&[0.1, 0.2, -0.1, 0.0], &[4]);
    let bn_w = trainable(&[1.0, 0.9, 1.1, 1.0], &[4]);
    let bn_b = trainable(&[0.0, 0.1, -0.1, 0.05], &[4]);
    let fc_w = trainable(&ramp(48), &[3, 16]);
    let fc_b = trainable(&[0.0; 3], &[3]);
    let labels = Tensor::from_vec_i64(vec![0, 2], &[2], Device::Cpu).expect("labels");
    let h = ops::conv2d(
        &x,
        &conv_w,
        Some(&conv_b),
        Conv2dOptions {
            padding: (1, 1),
            ..Default::default()
        },
    )
    .expect("conv");
    let h = ops::batch_norm(
        &h,
        Some(&bn_w),
        Some(&bn_b),
        None,
        None,
        BatchNormOptions::default(),
    )
    .expect("bn");
    let h = ops::relu(&h).expect("relu");
    let h = ops::add(&h, &h).expect("add");
    let h = ops::max_pool2d(
        &h,
        MaxPool2dOptions {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
            dilation: (1, 1),
        },
    )
    .expect("pool");
    let h = ops::adaptive_avg_pool2d(&h, (2, 2)).expect("avgpool");
    let h = ops::flatten(&h, 1).expect("flatten");
    let loss = ops::cross_entropy(&ops::linear(&h, &fc_w, Some(&fc_b)).expect("fc"), &labels)
        .expect("loss");

    let mut actual = Vec::new();
    let mut node = loss.grad_fn();
    while let Some(n) = node {
        let next = n.next_functions();
        let leaves = next
            .iter()
            .flatten()
            .filter(|f| matches!(f, NextFunction::AccumulateGrad(_)))
            .count();
        actual.push((n.name().to_string(), leaves));
        node = match next.first() {
            Some(Some(NextFunction::Node(g))) => Some(g.clone()),
            _ => None,
        };
    }
    assert_eq!(actual, expected);
}

/// An absent optional input keeps its slot: batch norm with a bias but no
/// weight computes the bias gradient (slot 2, not slot 1), and statistics
/// and `next_functions` list only the inputs that were given.
#[test]
fn an_absent_weight_keeps_the_bias_in_its_slot() {
    let x = trainable(&ramp(2 * 3 * 2), &[2, 3, 2]);
    let bias = trainable(&[0.1, -0.2, 0.3], &[3]);
    let out = ops::batch_norm(
        &x,
        None,
        Some(&bias),
        None,
        None,
        BatchNormOptions::default(),
    )
    .expect("bn");
    let next = out.grad_fn().expect("node").next_functions();
    assert_eq!(next.len(), 2, "input and bias, no weight: {next:?}");
    let stats = ops::sum(&out).expect("sum").backward().expect("backward");
    // d(sum)/d(bias_c) = the number of values per channel, N * S = 4.
    assert_eq!(grad_values(&bias), vec![4.0; 3]);
    assert_eq!(stats.computed("batch_norm.bias"), 1, "{stats}");
    assert_eq!(stats.computed("batch_norm.input"), 1, "{stats}");
    assert_eq!(stats.computed("batch_norm.weight"), 0, "{stats}");
    assert_eq!(stats.skipped("batch_norm.weight"), 0, "{stats}");
}
