//! Gradient hooks with PyTorch's semantics. The expected values and call
//! orders are PyTorch 2.9's, from this script (run with a Python that has torch 2.9):
//!
//! ```python
//! x = torch.tensor([1., -2., 3.], requires_grad=True)
//! calls = []
//! x.register_hook(lambda g: calls.append(('x', g.clone())))
//! h = torch.relu(x + x)
//! h.register_hook(lambda g: calls.append(('h', g.clone())))
//! h.grad_fn.register_prehook(lambda go: calls.append(('pre', go[0].clone())))
//! h.grad_fn.register_hook(lambda gi, go: calls.append(('post', gi[0].clone())))
//! h.sum().backward()
//! # calls: h [1,1,1], pre [1,1,1], post [1,0,1], x [2,0,2]; x.grad [2,0,2]
//! # h.register_hook(lambda g: g * 10) instead: x.grad [20, 0, 20]
//! # x.register_hook(lambda g: g + 1): x.grad [3, 1, 3] (once, on the sum)
//! ```

use std::sync::{Arc, Mutex};

use frostgrad::nn::{resnet18, Module, ParamPatterns};
use frostgrad::{ops, Device, Tensor};
use rand::SeedableRng;

type Calls = Arc<Mutex<Vec<(String, Vec<f32>)>>>;

fn leaf() -> Tensor {
    Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3], Device::Cpu)
        .expect("x")
        .requires_grad_(true)
        .expect("leaf")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().expect("f32")
}

fn recorder(calls: &Calls, name: &str) -> impl FnMut(&Tensor) -> frostgrad::Result<Option<Tensor>> {
    let (calls, name) = (calls.clone(), name.to_string());
    move |g| {
        calls.lock().unwrap().push((name.clone(), values(g)));
        Ok(None)
    }
}

/// Tensor hooks, node pre- and post-hooks fire once each, in PyTorch's
/// order, with PyTorch's values; a leaf used twice gets its hook called once,
/// with the sum of both contributions.
#[test]
fn hooks_fire_once_in_order() {
    let calls: Calls = Arc::default();
    let x = leaf();
    x.register_hook(recorder(&calls, "x")).expect("hook x");
    let h = ops::relu(&ops::add(&x, &x).expect("add")).expect("relu");
    h.register_hook(recorder(&calls, "h")).expect("hook h");
    let node = h.grad_fn().expect("grad_fn");
    node.register_prehook(recorder(&calls, "pre"));
    let post = calls.clone();
    node.register_hook(move |grad_inputs, _grad_output| {
        let g = grad_inputs[0].as_ref().expect("input gradient computed");
        post.lock().unwrap().push(("post".into(), values(g)));
        Ok(None)
    });
    ops::sum(&h).expect("sum").backward().expect("backward");
    let got = calls.lock().unwrap().clone();
    let expected: Vec<(String, Vec<f32>)> = vec![
        ("h".into(), vec![1.0, 1.0, 1.0]),
        ("pre".into(), vec![1.0, 1.0, 1.0]),
        ("post".into(), vec![1.0, 0.0, 1.0]),
        ("x".into(), vec![2.0, 0.0, 2.0]),
    ];
    assert_eq!(got, expected);
    assert_eq!(values(&x.grad().expect("grad")), [2.0, 0.0, 2.0]);

    // A second forward and backward: each hook once more.
    let h2 = ops::relu(&ops::add(&x, &x).expect("add")).expect("relu");
    ops::sum(&h2).expect("sum").backward().expect("backward");
    let xs = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n == "x")
        .count();
    assert_eq!(xs, 2, "the leaf's hook fires once per backward");
    assert_eq!(values(&x.grad().expect("grad")), [4.0, 0.0, 4.0]);
}

/// A hook's return value replaces the gradient downstream (non-leaf) or
/// what is accumulated (leaf); several hooks chain in registration order.
#[test]
fn hooks_replace_gradients() {
    let x = leaf();
    let h = ops::relu(&ops::add(&x, &x).expect("add")).expect("relu");
    h.register_hook(|g| {
        let v: Vec<f32> = values(g).iter().map(|v| v * 10.0).collect();
        Tensor::from_vec(v, g.shape(), g.device()).map(Some)
    })
    .expect("hook");
    ops::sum(&h).expect("sum").backward().expect("backward");
    assert_eq!(values(&x.grad().expect("grad")), [20.0, 0.0, 20.0]);

    let x = leaf();
    let seen: Calls = Arc::default();
    x.register_hook(|g| {
        let v: Vec<f32> = values(g).iter().map(|v| v + 1.0).collect();
        Tensor::from_vec(v, g.shape(), g.device()).map(Some)
    })
    .expect("hook");
    // The second hook sees the first one's replacement.
    x.register_hook(recorder(&seen, "second")).expect("hook");
    let h = ops::relu(&ops::add(&x, &x).expect("add")).expect("relu");
    ops::sum(&h).expect("sum").backward().expect("backward");
    assert_eq!(values(&x.grad().expect("grad")), [3.0, 1.0, 3.0]);
    assert_eq!(seen.lock().unwrap()[0].1, [3.0, 1.0, 3.0]);
}

/// A node post-hook may replace the input gradients it computed.
#[test]
fn node_hook_replaces_input_gradients() {
    let x = leaf();
    let h = ops::relu(&x).expect("relu");
    h.grad_fn().expect("grad_fn").register_hook(|grads, _| {
        let g = grads[0].as_ref().expect("computed");
        Ok(Some(vec![Some(Tensor::full(g.shape(), 7.0, g.device())?)]))
    });
    ops::sum(&h).expect("sum").backward().expect("backward");
    assert_eq!(values(&x.grad().expect("grad")), [7.0, 7.0, 7.0]);
}

#[test]
fn removed_hooks_do_not_fire() {
    let calls: Calls = Arc::default();
    let x = leaf();
    let handle = x.register_hook(recorder(&calls, "x")).expect("hook");
    assert!(handle.remove());
    assert!(!handle.remove(), "already removed");
    ops::sum(&x).expect("sum").backward().expect("backward");
    assert!(calls.lock().unwrap().is_empty());
}

/// PyTorch's errors: a hook on a tensor without a gradient, a replacement
/// of the wrong shape, an error returned by the hook itself.
#[test]
fn hook_errors() {
    let plain = Tensor::ones(&[3], Device::Cpu).expect("t");
    assert!(plain.register_hook(|_| Ok(None)).is_err());

    let x = leaf();
    x.register_hook(|_| Tensor::ones(&[4], Device::Cpu).map(Some))
        .expect("hook");
    let err = ops::sum(&x)
        .expect("sum")
        .backward()
        .expect_err("wrong shape");
    assert!(err.to_string().contains("shape"), "{err}");

    let y = leaf();
    y.register_hook(|_| Err(frostgrad::Error::Autograd("stop here".into())))
        .expect("hook");
    let err = ops::sum(&y)
        .expect("sum")
        .backward()
        .expect_err("hook error");
    assert!(err.to_string().contains("stop here"), "{err}");
}

/// Fine-tuning ResNet-18 with a hook on every parameter: each fires exactly
/// once, with the gradient that ends up in `.grad`, in backward order (fc
/// first, the stem last).
#[test]
fn resnet18_parameter_hooks_fire_once_each() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut model = resnet18(10, &mut rng).expect("resnet18");
    model
        .set_trainable(&ParamPatterns::parse("*").expect("globs"))
        .expect("trainable");
    model.train();
    let calls: Calls = Arc::default();
    for (name, p) in model.named_parameters() {
        p.register_hook(recorder(&calls, &name)).expect("hook");
    }
    let images = Tensor::randn(&[2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).expect("x");
    let labels = Tensor::from_vec_i64(vec![0, 1], &[2], Device::Cpu).expect("labels");
    let loss = ops::cross_entropy(&model.forward(&images).expect("fwd"), &labels).expect("loss");
    loss.backward().expect("backward");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 62, "one call per parameter");
    for (name, p) in model.named_parameters() {
        let mine: Vec<&(String, Vec<f32>)> = calls.iter().filter(|(n, _)| *n == name).collect();
        assert_eq!(mine.len(), 1, "{name}");
        assert_eq!(mine[0].1, values(&p.grad().expect("grad")), "{name}");
    }
    assert!(calls[0].0.starts_with("fc."), "first: {}", calls[0].0);
    assert!(calls[61].0.starts_with("conv1.") || calls[61].0.starts_with("bn1."));
}

/// The backward pass sums two gradient contributions in place into one that
/// nobody else holds (as PyTorch's `InputBuffer` does), never into one a
/// hook kept: a kept gradient must read the same after backward, whether
/// the other contribution could be written over (one kept) or not (both).
#[test]
fn gradients_a_hook_kept_are_not_summed_into() {
    let c = |v: f32| Tensor::from_vec(vec![v], &[1], Device::Cpu).expect("constant");
    let (two, three) = (c(2.0), c(3.0));
    for keep_both in [false, true] {
        let x = leaf();
        let a = ops::mul(&x, &two).expect("a");
        let b = ops::mul(&x, &three).expect("b");
        let kept: Arc<Mutex<Vec<Tensor>>> = Arc::default();
        let hooked = if keep_both { vec![&a, &b] } else { vec![&a] };
        for t in hooked {
            let kept = kept.clone();
            t.grad_fn().expect("node").register_hook(move |inputs, _| {
                kept.lock()
                    .unwrap()
                    .push(inputs[0].clone().expect("x's gradient"));
                Ok(None)
            });
        }
        let loss = ops::sum(&ops::add(&a, &b).expect("a + b")).expect("loss");
        loss.backward().expect("backward");
        assert_eq!(values(&x.grad().expect("x.grad")), [5.0; 3]);
        let mut kept: Vec<Vec<f32>> = kept.lock().unwrap().iter().map(values).collect();
        kept.sort_by(|p, q| p[0].total_cmp(&q[0]));
        let expected = if keep_both {
            vec![vec![2.0; 3], vec![3.0; 3]]
        } else {
            vec![vec![2.0; 3]]
        };
        assert_eq!(kept, expected, "keep_both={keep_both}");
    }
}
