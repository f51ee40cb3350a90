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
    /// Images per step, at least 2 (default: 8 on the CPU, 64 on CUDA, 2 on
    /// the host emulation of CUDA).
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
    if batch < 2 {
        // Train-mode batch norm needs more than one value per channel after layer4.
        return Err(Error::invalid("bench", "--batch must be at least 2"));
    }
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
