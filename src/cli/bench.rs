//! `frostgrad bench`: what freezing saves, measured.
//!
//! ```text
//! frostgrad bench [--device auto|cpu|cuda] [--batch N] [--size S] [--steps K] [--warmup W]
//!                 [--modes finetune,partial,layer4,transfer,inference] [--trainable GLOBS]
//!                 [--weights W [--strip-prefix P]] [--num-classes N] [--json PATH] [--svg PATH]
//! ```
//! The table goes to stdout, progress to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::{self, BenchConfig, Mode};
use crate::cli::weights::{load_resnet18, WeightsArgs};
use crate::cli::DeviceArg;
use crate::error::{Error, Result};
use crate::io::files::{Outputs, Role};
use crate::nn::{resnet18, Module, ResNet};
use crate::tensor::Device;

#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct BenchArgs {
    /// Where to run: cpu, cuda (device 0), or auto (CUDA device 0 when a
    /// usable GPU is found, else the CPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Images per step, at least 1 (default: 8 on the CPU, 64 on CUDA, 2 on
    /// the host emulation of CUDA). Training modes at batch 1 need images
    /// of at least 33x33, as in PyTorch: train-mode batch norm needs more
    /// than one value per channel after layer4.
    #[arg(long, value_name = "N", value_parser = crate::cli::parse_count)]
    pub batch: Option<usize>,
    /// Image height and width in pixels (default: 224; 64 on the host
    /// emulation of CUDA).
    #[arg(long, value_name = "S", value_parser = crate::cli::parse_count)]
    pub size: Option<usize>,
    /// Timed steps per mode (at least 1).
    #[arg(long, value_name = "K", default_value_t = 5, value_parser = crate::cli::parse_count)]
    pub steps: usize,
    /// Untimed steps per mode before the timed ones.
    #[arg(long, value_name = "W", default_value_t = 1, value_parser = crate::cli::parse_count)]
    pub warmup: usize,
    /// Comma-separated modes, each a set of trainable parameters:
    /// finetune (`*`, every parameter), partial (`layer3.*,layer4.*,fc.*`),
    /// layer4 (`layer4.*,fc.*`), transfer (`fc.*`, the head only),
    /// inference (forward only, under no_grad, eval mode).
    #[arg(long, default_value = "finetune,partial,layer4,transfer,inference")]
    pub modes: String,
    /// An extra mode `custom` training the parameters these globs match
    /// (`*`, `?`, `[...]` as in a shell; see `frostgrad step --help`).
    #[arg(long, value_name = "GLOBS")]
    pub trainable: Option<String>,
    /// torchvision ResNet-18 weights (safetensors or .pth); default:
    /// torchvision's random initialisation.
    #[arg(long, value_name = "W.safetensors|W.pth")]
    pub weights: Option<PathBuf>,
    /// Remove this prefix from every key of --weights that has it
    /// (`module.` from DataParallel, `backbone.` from a wrapper class).
    #[arg(long, value_name = "P", requires = "weights")]
    pub strip_prefix: Option<String>,
    /// Classes of the model's `fc`: with --weights, a fresh Linear(512, N)
    /// replaces the file's head when its class count differs; without,
    /// the random model has N classes (default 1000).
    #[arg(long, value_name = "N", value_parser = crate::cli::parse_class_count)]
    pub num_classes: Option<usize>,
    /// Write the results as JSON (the schema of scripts/bench_pytorch.py).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of each mode's forward/backward/optimizer split.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

/// Runs the benchmark, prints its table to stdout, then writes `--json` and
/// `--svg` (checked writable before the first step, and written after the
/// table so a failure cannot lose the results).
pub fn run(args: &BenchArgs) -> Result<()> {
    let mut modes = bench::parse_modes(&args.modes)?;
    if let Some(globs) = &args.trainable {
        modes.push(Mode::new("custom", Some(globs))?);
    }
    if modes.is_empty() {
        return Err(Error::invalid("bench", "no modes to run"));
    }
    let device = args.device.resolve();
    let emulated = crate::backend::is_emulated(device);
    let batch = args.batch.unwrap_or(match device {
        Device::Cpu => 8,
        // The emulation runs kernels on the host, thousands of times slower
        // than a GPU: batch 64 at 224x224 would take hours.
        Device::Cuda(_) if emulated => 2,
        Device::Cuda(_) => 64,
    });
    let size = args.size.unwrap_or(if emulated { 64 } else { 224 });
    if emulated && (args.batch.is_none() || args.size.is_none()) {
        eprintln!(
            "frostgrad bench: {} is the host emulation of CUDA: a small configuration \
             (batch {batch}, {size}x{size}) unless --batch and --size are given; its times are not GPU times",
            device
        );
    }
    check_batch(batch, size, &modes)?;
    let cfg = BenchConfig {
        device,
        batch,
        size,
        steps: args.steps,
        warmup: args.warmup,
        lr: 0.01,
        momentum: 0.9,
    };

    let inputs: Vec<(Role, &Path)> = args
        .weights
        .iter()
        .map(|w| (Role::WEIGHTS, w.as_path()))
        .collect();
    let mut out_paths = Vec::new();
    if let Some(path) = &args.json {
        out_paths.push((Role::JSON, path.as_path()));
    }
    if let Some(path) = &args.svg {
        out_paths.push((Role::SVG, path.as_path()));
    }
    let outputs = Outputs::check(&inputs, &out_paths)?;

    let mut model: ResNet = match &args.weights {
        Some(path) => load_resnet18(&WeightsArgs {
            weights: path.clone(),
            strip_prefix: args.strip_prefix.clone(),
            num_classes: args.num_classes,
            fc_seed: 0,
        })?,
        None => {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
            resnet18(args.num_classes.unwrap_or(1000), &mut rng)?
        }
    };
    model.to_device(device)?;

    let total = (modes.len() * (cfg.warmup + cfg.steps)) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:>10} [{bar:30}] {pos}/{len} steps, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = bench::run(&mut model, &modes, &cfg, |mode, _, _| {
        bar.set_message(mode.to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    print!("{}", bench::render_table(&report));
    let _ = std::io::stdout().flush();
    let json = args.json.as_ref().map(|p| (p, bench::to_json(&report)));
    let svg = match &args.svg {
        Some(p) => Some((p, bench::render_svg(&report)?)),
        None => None,
    };
    let contents: Vec<(&Path, &[u8])> = json
        .iter()
        .chain(svg.iter())
        .map(|(p, text)| (p.as_path(), text.as_bytes()))
        .collect();
    outputs.write_all(&contents)
}

/// Refuses a configuration PyTorch would refuse at its first step, before
/// the model is built: no images at all, or a training mode whose last
/// batch norm (layer4's, `batch x final x final` values per channel) would
/// see a single value per channel. Batch 1 at 224x224 sees 49 and is fine.
fn check_batch(batch: usize, size: usize, modes: &[Mode]) -> Result<()> {
    if batch == 0 {
        return Err(Error::invalid("bench", "--batch must be at least 1"));
    }
    let trains = modes.iter().any(|m| m.trainable.is_some());
    let side = resnet_final_side(size);
    if trains && batch * side * side == 1 {
        return Err(Error::invalid(
            "bench",
            format!(
                "--batch 1 at --size {size} leaves layer4's batch norm one value per channel \
                 ({side}x{side}), and train-mode batch norm needs more than one: use --batch 2 \
                 or more, --size 33 or more, or --modes inference"
            ),
        ));
    }
    Ok(())
}

/// Height (= width) of ResNet-18's layer4 output for `size x size` images:
/// five halvings `h -> (h - 1) / 2 + 1` (the stem conv, the max pool and
/// the first blocks of layer2, layer3 and layer4, each stride 2 with
/// "same"-style padding).
fn resnet_final_side(size: usize) -> usize {
    (0..5).fold(size, |h, _| h.saturating_sub(1) / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_side_matches_torchvision() {
        // torchvision 0.24.1 resnet18 (eval, no_grad), output of layer4 for
        // 1 x 3 x s x s zeros: (s, side) as printed by PyTorch 2.9.1.
        for (size, side) in [
            (1, 1),
            (2, 1),
            (31, 1),
            (32, 1),
            (33, 2),
            (64, 2),
            (112, 4),
            (160, 5),
            (224, 7),
        ] {
            assert_eq!(resnet_final_side(size), side, "size {size}");
        }
    }

    #[test]
    fn batch_one_trains_where_pytorch_does() {
        let train = vec![Mode::new("transfer", Some("fc.*")).unwrap()];
        let infer = vec![Mode::new("inference", None).unwrap()];
        // PyTorch 2.9.1: a train-mode resnet18 refuses 1 x 3 x 32 x 32
        // ("Expected more than 1 value per channel") and takes 33 x 33.
        let err = check_batch(1, 32, &train).unwrap_err().to_string();
        assert!(
            err.contains("--size 33") && err.contains("one value per channel"),
            "{err}"
        );
        check_batch(1, 33, &train).unwrap();
        check_batch(1, 224, &train).unwrap();
        check_batch(1, 32, &infer).unwrap();
        check_batch(2, 1, &train).unwrap();
        let err = check_batch(0, 224, &infer).unwrap_err().to_string();
        assert!(err.contains("--batch must be at least 1"), "{err}");
    }
}
