//! The gradient norm flowing into each stage of ResNet-18, with tensor
//! hooks: in `finetune` mode every stage's output receives a gradient; in
//! `layer4` mode (`layer4.*,fc.*` trainable) nothing flows below layer4,
//! because the frozen prefix recorded no graph at all.
//!
//! ```sh
//! cargo run --release --example gradient_flow
//! ```

use std::sync::{Arc, Mutex};

use frostgrad::nn::{resnet18, Module, ParamPatterns, ResNet};
use frostgrad::ops::{self, MaxPool2dOptions};
use frostgrad::{Device, Result, Tensor};
use rand::SeedableRng;

type Norms = Arc<Mutex<Vec<(String, f64)>>>;

/// Hooks `t` (if it takes part in backward) to record the L2 norm of its gradient.
fn watch(t: &Tensor, name: &str, norms: &Norms) -> Result<()> {
    if !t.requires_grad() {
        return Ok(());
    }
    let (name, norms) = (name.to_string(), norms.clone());
    t.register_hook(move |g| {
        let norm = g
            .to_vec_f32()?
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        norms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.clone(), norm));
        Ok(None)
    })?;
    Ok(())
}

/// ResNet-18's forward, stage by stage, watching each stage's output.
fn forward(model: &ResNet, images: &Tensor, norms: &Norms) -> Result<Tensor> {
    let x = model.bn1.forward_relu(&model.conv1.forward(images)?)?;
    let pool = MaxPool2dOptions {
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let mut x = ops::max_pool2d(&x, pool)?;
    watch(&x, "stem", norms)?;
    for (i, layer) in model.layers().iter().enumerate() {
        for block in layer.iter() {
            x = block.forward(&x)?;
        }
        watch(&x, &format!("layer{}", i + 1), norms)?;
    }
    let features = ops::flatten(&ops::adaptive_avg_pool2d(&x, (1, 1))?, 1)?;
    let logits = model.fc.forward(&features)?;
    watch(&logits, "fc (logits)", norms)?;
    Ok(logits)
}

fn main() -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = resnet18(10, &mut rng)?;
    model.train();
    let images = Tensor::randn(&[4, 3, 64, 64], 0.0, 1.0, &mut rng, Device::Cpu)?;
    let labels = Tensor::from_vec_i64(vec![0, 1, 2, 3], &[4], Device::Cpu)?;
    let stages = [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc (logits)",
    ];
    for (mode, globs) in [("finetune", "*"), ("layer4", "layer4.*,fc.*")] {
        model.set_trainable(&ParamPatterns::parse(globs)?)?;
        let norms: Norms = Arc::default();
        let loss = ops::cross_entropy(&forward(&model, &images, &norms)?, &labels)?;
        let stats = loss.backward()?;
        println!(
            "{mode} (--trainable {globs}): {} backward nodes",
            stats.nodes
        );
        let norms = norms.lock().unwrap_or_else(|p| p.into_inner());
        for stage in stages {
            match norms.iter().find(|(n, _)| n == stage) {
                Some((_, norm)) => println!("  ‖dL/d {stage:<12}‖ = {norm:.3e}"),
                None => println!("  ‖dL/d {stage:<12}‖   no gradient: nothing below is trainable"),
            }
        }
        for p in model.parameters() {
            p.set_grad(None)?;
        }
    }
    Ok(())
}
