//! Transfer learning vs fine-tuning, the article's PyTorch walk-through in
//! frostgrad:
//!
//! ```text
//! cargo run --release --example transfer_vs_finetune
//! ```
//!
//! 1. Build ResNet-18 and list `named_parameters()` with `requires_grad`.
//! 2. Freeze everything, replace `fc` with a 10-class layer, list again.
//! 3. Train a few SGD steps on a small random batch in each mode and show
//!    which parameters changed, what backward computed and skipped, and the
//!    time per step.

use std::time::Instant;

use frostgrad::io::StateDict;
use frostgrad::nn::{resnet18, Linear, Module, ParamPatterns, ResNet};
use frostgrad::optim::{Sgd, SgdConfig};
use frostgrad::{ops, BackwardStats, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CLASSES: usize = 10;
const BATCH: usize = 4;
const SIZE: usize = 64;
const STEPS: usize = 3;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Prints `name  shape  requires_grad` for the first and last few parameters.
fn print_parameters(model: &ResNet) {
    let params = model.named_parameters();
    let show = |(name, p): &(String, Tensor)| {
        let flag = if p.requires_grad() { "True" } else { "False" };
        println!(
            "    {name:<30} {:<18} requires_grad={flag}",
            format!("{:?}", p.shape())
        );
    };
    let (head, tail) = (4, 4);
    params.iter().take(head).for_each(show);
    if params.len() > head + tail {
        println!("    ... ({} more)", params.len() - head - tail);
    }
    params
        .iter()
        .skip(params.len().saturating_sub(tail).max(head))
        .for_each(show);
    let trainable = params.iter().filter(|(_, p)| p.requires_grad()).count();
    let values: usize = params
        .iter()
        .filter(|(_, p)| p.requires_grad())
        .map(|(_, p)| p.numel())
        .sum();
    println!(
        "    -> {trainable} of {} parameters require a gradient ({values} values)\n",
        params.len()
    );
}

struct ModeResult {
    stats: BackwardStats,
    seconds_per_step: f64,
    losses: Vec<f32>,
    changed: Vec<String>,
    buffers_changed: usize,
}

/// Loads `start` into a fresh model, makes `trainable` trainable, and runs
/// `STEPS` SGD steps on the batch in train mode.
fn train(
    start: &StateDict,
    trainable: &str,
    images: &Tensor,
    labels: &Tensor,
) -> Result<ModeResult> {
    let model = ResNet::resnet18_from_state_dict(start)?;
    model.set_trainable(&ParamPatterns::parse(trainable)?)?;
    let mut sgd = Sgd::new(model.parameters(), SgdConfig::new(0.01).momentum(0.9))?;
    let mut stats = BackwardStats::default();
    let mut losses = Vec::new();
    let timer = Instant::now();
    for _ in 0..STEPS {
        sgd.zero_grad(true)?;
        let loss = ops::cross_entropy(&model.forward(images)?, labels)?;
        stats = loss.backward()?;
        sgd.step()?;
        losses.push(loss.to_scalar_f32()?);
    }
    let seconds_per_step = timer.elapsed().as_secs_f64() / STEPS as f64;

    let after = model.state_dict()?;
    let changed_names = |want_params: bool| -> Vec<String> {
        let params: Vec<String> = model
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        after
            .iter()
            .filter(|(name, _)| params.iter().any(|p| p == name) == want_params)
            .filter(|(name, t)| start.get(name) != Some(*t))
            .map(|(name, _)| name.to_string())
            .collect()
    };
    Ok(ModeResult {
        stats,
        seconds_per_step,
        losses,
        changed: changed_names(true),
        buffers_changed: changed_names(false).len(),
    })
}

fn print_result(title: &str, r: &ModeResult, total_params: usize) {
    println!("  {title}");
    let losses: Vec<String> = r.losses.iter().map(|l| format!("{l:.4}")).collect();
    println!("    loss per step:        {}", losses.join(" -> "));
    println!(
        "    time per step:        {:.1} ms",
        r.seconds_per_step * 1e3
    );
    let list = if r.changed.len() <= 4 {
        r.changed.join(", ")
    } else {
        format!(
            "{}, ..., {}",
            r.changed[..2].join(", "),
            r.changed[r.changed.len() - 2..].join(", ")
        )
    };
    println!(
        "    parameters changed:   {} of {total_params} ({list})",
        r.changed.len()
    );
    println!(
        "    buffers changed:      {} (train mode updates BatchNorm running statistics, frozen or not)",
        r.buffers_changed
    );
    println!("    last backward pass:   {} nodes", r.stats.nodes);
    print_stats_table(&r.stats);
    println!();
}

/// `op.input  computed  skipped`, one row per gradient kind.
fn print_stats_table(stats: &BackwardStats) {
    let mut keys: Vec<&String> = stats.computed.keys().chain(stats.skipped.keys()).collect();
    keys.sort();
    keys.dedup();
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(8).max(8);
    println!(
        "      {:<width$}  {:>8}  {:>7}",
        "gradient", "computed", "skipped"
    );
    for k in keys {
        println!(
            "      {k:<width$}  {:>8}  {:>7}",
            stats.computed(k),
            stats.skipped(k)
        );
    }
}

fn run() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(42);

    println!("== 1. model = resnet18()  (torchvision's architecture and names, 1000 classes)\n");
    let mut model = resnet18(1000, &mut rng)?;
    println!("  for name, p in model.named_parameters(): print(name, p.requires_grad)");
    print_parameters(&model);

    println!("== 2. Freeze everything, then give the model a new 10-class head\n");
    println!("  model.requires_grad_(false);  model.fc = Linear::new(512, {CLASSES}, &mut rng)?;");
    model.requires_grad_(false)?;
    model.fc = Linear::new(512, CLASSES, &mut rng)?;
    println!("  A newly built layer requires gradients, so only fc.* is trainable now:");
    print_parameters(&model);

    println!(
        "== 3. {STEPS} SGD steps (lr 0.01, momentum 0.9, train mode) on {BATCH} random {SIZE}x{SIZE} images, {CLASSES} classes\n"
    );
    let start = model.state_dict()?;
    let images = Tensor::randn(&[BATCH, 3, SIZE, SIZE], 0.0, 1.0, &mut rng, Device::Cpu)?;
    let labels = Tensor::from_vec_i64(vec![0, 3, 7, 9], &[BATCH], Device::Cpu)?;
    let total = model.named_parameters().len();

    let finetune = train(&start, "*", &images, &labels)?;
    print_result(
        "Fine-tuning (--trainable '*': every parameter trains)",
        &finetune,
        total,
    );
    let transfer = train(&start, "fc.*", &images, &labels)?;
    print_result(
        "Transfer learning (--trainable 'fc.*': only the new head trains)",
        &transfer,
        total,
    );

    println!("== Summary\n");
    println!("  {:<22} {:>12} {:>12}", "", "fine-tuning", "transfer");
    println!(
        "  {:<22} {:>12} {:>12}",
        "backward nodes run", finetune.stats.nodes, transfer.stats.nodes
    );
    println!(
        "  {:<22} {:>12} {:>12}",
        "gradients computed",
        finetune.stats.total_computed(),
        transfer.stats.total_computed()
    );
    println!(
        "  {:<22} {:>12} {:>12}",
        "conv weight gradients",
        finetune.stats.computed("conv2d.weight"),
        transfer.stats.computed("conv2d.weight")
    );
    println!(
        "  {:<22} {:>10.1}ms {:>10.1}ms",
        "time per step",
        finetune.seconds_per_step * 1e3,
        transfer.seconds_per_step * 1e3
    );
    println!(
        "\n  With the backbone frozen, no op before `fc` records a backward node at all: the forward keeps\n  no activations for it and backward runs {} nodes instead of {}.",
        transfer.stats.nodes, finetune.stats.nodes
    );
    Ok(())
}
