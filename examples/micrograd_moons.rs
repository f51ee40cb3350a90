//! micrograd's classic, with frostgrad's general ops only: a 2-16-16-1 MLP
//! learns to separate two interleaved half-moons (100 points), with the
//! max-margin loss and L2 regularisation of micrograd's demo, then prints
//! the backward graph of its loss.
//!
//! ```sh
//! cargo run --release --example micrograd_moons
//! ```

use frostgrad::autograd::NodeKind;
use frostgrad::ops;
use frostgrad::optim::{Sgd, SgdConfig};
use frostgrad::{Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// sklearn's `make_moons(n, noise)`: two half circles, labels ±1.
fn two_moons(n: usize, noise: f32, rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
    let (mut xs, mut ys) = (Vec::with_capacity(2 * n), Vec::with_capacity(n));
    for i in 0..n {
        let upper = i < n / 2;
        let t = std::f32::consts::PI * (i % (n / 2)) as f32 / (n / 2 - 1) as f32;
        let (x, y) = if upper {
            (t.cos(), t.sin())
        } else {
            (1.0 - t.cos(), 0.5 - t.sin())
        };
        xs.push(x + noise * rng.random_range(-1.0f32..1.0));
        xs.push(y + noise * rng.random_range(-1.0f32..1.0));
        ys.push(if upper { -1.0 } else { 1.0 });
    }
    (xs, ys)
}

/// A leaf with PyTorch's default `Linear` initialisation range.
fn param(shape: &[usize], fan_in: usize, rng: &mut StdRng) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_vec(v, shape, Device::Cpu)?.requires_grad_(true)
}

struct Mlp {
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    fn new(sizes: &[usize], rng: &mut StdRng) -> Result<Self> {
        let layers = sizes
            .windows(2)
            .map(|w| Ok((param(&[w[0], w[1]], w[0], rng)?, param(&[w[1]], w[0], rng)?)))
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }

    /// `tanh(x W + b)` per layer, the last one linear: scores `[n, 1]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = (&ops::matmul(&h, w)? + b)?;
            if i + 1 < self.layers.len() {
                h = ops::tanh(&h)?;
            }
        }
        Ok(h)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }
}

/// micrograd's loss: mean(relu(1 - y·score)) + 1e-4 · Σ w², and the accuracy.
fn loss(model: &Mlp, x: &Tensor, y: &Tensor) -> Result<(Tensor, f32)> {
    let scores = model.forward(x)?;
    let margins = (&Tensor::scalar(1.0, Device::Cpu)? - &(y * &scores)?)?;
    let data_loss = ops::mean_dims(&ops::relu(&margins)?, &[], false)?;
    let mut reg = Tensor::scalar(0.0, Device::Cpu)?;
    for p in model.parameters() {
        reg = (&reg + &ops::sum_dims(&ops::pow(&p, 2.0)?, &[], false)?)?;
    }
    let total = (&data_loss + &(&reg * &Tensor::scalar(1e-4, Device::Cpu)?)?)?;
    let (s, t) = (scores.to_vec_f32()?, y.to_vec_f32()?);
    let correct = s
        .iter()
        .zip(&t)
        .filter(|(s, t)| (**s > 0.0) == (**t > 0.0))
        .count();
    Ok((total, correct as f32 / t.len() as f32))
}

fn main() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1337);
    let n = 100;
    let (xs, ys) = two_moons(n, 0.1, &mut rng);
    let x = Tensor::from_vec(xs, &[n, 2], Device::Cpu)?;
    let y = Tensor::from_vec(ys, &[n, 1], Device::Cpu)?;
    let model = Mlp::new(&[2, 16, 16, 1], &mut rng)?;
    let steps = 100;
    for step in 0..steps {
        for p in model.parameters() {
            p.set_grad(None)?;
        }
        let (total, accuracy) = loss(&model, &x, &y)?;
        total.backward()?;
        // micrograd's schedule: the learning rate decays from 1.0 to 0.1.
        let lr = 1.0 - 0.9 * step as f32 / steps as f32;
        Sgd::new(model.parameters(), SgdConfig::new(lr))?.step()?;
        if step % 10 == 0 || step == steps - 1 {
            println!(
                "step {step:3}  loss {:.4}  accuracy {:.0}%",
                total.to_scalar_f32()?,
                accuracy * 100.0
            );
        }
    }

    // The graph of one more forward: what backward would run, node by node.
    let (total, _) = loss(&model, &x, &y)?;
    let mut graph = total.graph();
    let names = model.layers.iter().enumerate().flat_map(|(i, (w, b))| {
        [
            (format!("W{}", i + 1), w.clone()),
            (format!("b{}", i + 1), b.clone()),
        ]
    });
    graph.name_leaves(names);
    println!("\nthe loss's backward graph ({} nodes):", graph.nodes.len());
    for node in &graph.nodes {
        let targets: Vec<String> = node
            .inputs
            .iter()
            .map(|i| match i.to {
                Some(to) => format!("{} -> {to}", i.name),
                None => format!("{} skipped", i.name),
            })
            .collect();
        let saved: Vec<String> = node
            .saved
            .iter()
            .map(|s| format!("{} {:?}", s.name, s.shape))
            .collect();
        match node.kind {
            NodeKind::AccumulateGrad => println!(
                "{:3} AccumulateGrad {} {:?}",
                node.id,
                node.label.as_deref().unwrap_or("?"),
                node.shape
            ),
            NodeKind::Op => println!(
                "{:3} {:<20} [{}]  saved: {}",
                node.id,
                node.name,
                targets.join(", "),
                if saved.is_empty() {
                    "nothing".into()
                } else {
                    saved.join(", ")
                }
            ),
        }
    }
    let s = graph.summary();
    println!(
        "{} op nodes, {} parameters, {} bytes saved for backward",
        s.nodes, s.accumulate_grad, s.saved_bytes
    );
    Ok(())
}
