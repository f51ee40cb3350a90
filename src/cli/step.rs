//! `frostgrad step`: one training step, a file-in/file-out contract that
//! other tools (the PyTorch parity scripts, benchmarks) rely on.
//!
//! ```text
//! frostgrad step --weights W.safetensors|W.pth --batch B.safetensors --trainable GLOBS \
//!                --lr LR --momentum M --weight-decay WD --out O.safetensors \
//!                [--eval] [--stats-json S.json] [--device cpu|cuda|auto]
//!                [--strip-prefix P] [--num-classes N [--fc-seed S]]
//! ```
//!
//! - `W`: a torchvision ResNet-18 `state_dict` (safetensors, or a `.pth` read by
//!   [`crate::io::pth`]); the class count comes from `fc.weight` unless `--num-classes`.
//! - `B`: `images` (f32 `[N, 3, H, W]`) and `labels` (i64 or i32 `[N]`).
//! - `GLOBS`: comma-separated globs over parameter names (`*` also matches
//!   dots); matching parameters train, all others are frozen. A pattern
//!   matching nothing is an error.
//! - The step: train mode (batch statistics, running statistics updated,
//!   even for frozen batch norm) unless `--eval`; forward, cross-entropy,
//!   backward, SGD (dampening 0, no Nesterov).
//! - `O`: `logits`, `loss` (0-d), `grad.<name>` for each trainable
//!   parameter only, `param.<name>` for every parameter and
//!   `buffer.<name>` for every buffer after the step (f32, except
//!   `num_batches_tracked`: i64).
//! - `S.json`: the backward pass's [`BackwardStats`] as JSON.

use std::path::{Path, PathBuf};

use crate::cli::weights::{load_resnet18, WeightsArgs};
use crate::cli::DeviceArg;
use crate::core_types::HostData;
use crate::error::{Error, Result};
use crate::io::files::{Outputs, Role};
use crate::io::{self, HostTensor, StateDict};
use crate::nn::{Module, ParamPatterns, ResNet};
use crate::ops;
use crate::optim::{Sgd, SgdConfig};
use crate::tensor::{DType, Device, Tensor};
use crate::BackwardStats;

#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct StepArgs {
    /// `--weights` (safetensors or .pth), `--strip-prefix`, `--num-classes`.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Batch (safetensors) with `images` (f32 `[N,3,H,W]`) and `labels` (i64/i32 `[N]`).
    #[arg(long, value_name = "B.safetensors")]
    pub batch: PathBuf,
    /// Comma-separated globs of trainable parameters: `*`, `fc.*`,
    /// `layer3.*,layer4.*,fc.*`. Shell globs: `*` any characters (dots
    /// too), `?` one character, `[34]`, `[1-3]`, `[!4]` one of / not one of.
    /// Every pattern must match some parameter.
    #[arg(long, value_name = "GLOBS")]
    pub trainable: String,
    /// Learning rate (PyTorch's `lr`; positive).
    #[arg(long, value_name = "LR", allow_hyphen_values = true)]
    pub lr: f32,
    /// SGD momentum (PyTorch's `momentum`; 0 = none, dampening 0, no Nesterov).
    #[arg(
        long,
        value_name = "M",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub momentum: f32,
    /// L2 penalty added to each trainable parameter's gradient (PyTorch's `weight_decay`).
    #[arg(
        long,
        value_name = "WD",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub weight_decay: f32,
    /// Where to write logits, loss, grad.*, param.* and buffer.* (safetensors).
    #[arg(long, value_name = "O.safetensors")]
    pub out: PathBuf,
    /// Run the step in eval mode (batch norm uses and keeps its running statistics).
    #[arg(long)]
    pub eval: bool,
    /// Also write the backward statistics (computed / skipped gradients) as JSON.
    #[arg(long, value_name = "S.json")]
    pub stats_json: Option<PathBuf>,
    /// Where to run the step: cpu, cuda (device 0) or auto (CUDA when usable).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// What one step did, printed as one line.
#[derive(Clone, Debug)]
pub struct StepSummary {
    pub loss: f32,
    pub trainable: usize,
    pub parameters: usize,
    pub stats: BackwardStats,
    pub out: PathBuf,
}

impl std::fmt::Display for StepSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {:.6}; {} of {} parameters trainable; backward ran {} nodes, computed {} and skipped {} gradients; wrote {}",
            self.loss,
            self.trainable,
            self.parameters,
            self.stats.nodes,
            self.stats.total_computed(),
            self.stats.total_skipped(),
            self.out.display()
        )
    }
}

pub fn run(args: &StepArgs) -> Result<StepSummary> {
    let device: Device = args.device.resolve();
    // Cheap checks first, so a typo fails before any file is read.
    let patterns = ParamPatterns::parse(&args.trainable)?;
    let sgd_config = SgdConfig::new(args.lr)
        .momentum(args.momentum)
        .weight_decay(args.weight_decay);
    sgd_config.validate()?;

    // Before any work: no output may be an input, each must be writable.
    let mut out_paths = vec![(Role::OUTPUT, args.out.as_path())];
    if let Some(stats) = &args.stats_json {
        out_paths.push((Role::STATS, stats.as_path()));
    }
    let outputs = Outputs::check(
        &[
            (Role::WEIGHTS, args.weights.weights.as_path()),
            (Role::BATCH, args.batch.as_path()),
        ],
        &out_paths,
    )?;

    let mut model = load_resnet18(&args.weights)?;
    model.to_device(device)?;
    let (images, labels) = read_batch(&args.batch, model.num_classes(), device)?;

    let trainable = model.set_trainable(&patterns)?;
    if args.eval {
        model.eval();
    } else {
        model.train();
    }

    let logits = model.forward(&images).map_err(|e| {
        if let Error::OutOfMemory { what, shape, bytes } = e {
            // Already says what and how much; add where.
            return Error::OutOfMemory {
                what: format!(
                    "{what} (forward pass, images of shape {:?})",
                    images.shape()
                ),
                shape,
                bytes,
            };
        }
        Error::invalid(
            "frostgrad step",
            format!(
                "forward pass failed for images of shape {:?}: {e}",
                images.shape()
            ),
        )
    })?;
    let loss = ops::cross_entropy(&logits, &labels)?;
    let stats = loss.backward()?;
    let parameters = model.parameters();
    let mut sgd = Sgd::new(parameters.iter().cloned(), sgd_config)?;
    sgd.step()?;

    let out = io::safetensors::to_bytes(&outputs_of(&model, &logits, &loss, &trainable)?)?;
    let json = stats.to_json() + "\n";
    let mut contents = vec![(args.out.as_path(), out.as_slice())];
    if let Some(path) = &args.stats_json {
        contents.push((path.as_path(), json.as_bytes()));
    }
    // Both files or neither.
    outputs.write_all(&contents)?;
    Ok(StepSummary {
        loss: loss.to_scalar_f32()?,
        trainable: trainable.len(),
        parameters: parameters.len(),
        stats,
        out: args.out.clone(),
    })
}

/// `images` and `labels` from the batch file, checked against the model.
fn read_batch(path: &Path, classes: usize, device: Device) -> Result<(Tensor, Tensor)> {
    let batch = io::safetensors::load_as(path, Role::BATCH)?;
    let bad = |msg: String| Role::BATCH.error(path, msg);
    let images = batch
        .get("images")
        .ok_or_else(|| bad("no `images` tensor".into()))?;
    let labels = batch
        .get("labels")
        .ok_or_else(|| bad("no `labels` tensor".into()))?;
    if images.dtype() != DType::F32 {
        return Err(bad(format!(
            "`images` must be floating point, got {:?}",
            images.dtype()
        )));
    }
    let &[n, c, _, _] = images.shape.as_slice() else {
        return Err(bad(format!(
            "`images` must be [N, 3, H, W], got shape {:?}",
            images.shape
        )));
    };
    if c != 3 {
        return Err(bad(format!(
            "`images` must have 3 channels, got shape {:?}",
            images.shape
        )));
    }
    if n == 0 {
        return Err(bad("the batch is empty".into()));
    }
    let HostData::I64(label_values) = &labels.data else {
        return Err(bad(format!(
            "`labels` must be integers (i64 or i32), got {:?}",
            labels.dtype()
        )));
    };
    if labels.shape != [n] {
        return Err(bad(format!(
            "`labels` must be [{n}] for {n} images, got shape {:?}",
            labels.shape
        )));
    }
    if let Some((i, &l)) = label_values
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < 0 || l as u64 >= classes as u64)
    {
        return Err(bad(format!(
            "label {l} at index {i} is out of range for {classes} classes (0..{classes})"
        )));
    }
    Ok((images.to_tensor(device)?, labels.to_tensor(device)?))
}

/// The contents of `--out`.
fn outputs_of(
    model: &ResNet,
    logits: &Tensor,
    loss: &Tensor,
    trainable: &[String],
) -> Result<StateDict> {
    let mut out = StateDict::new();
    out.insert("logits", HostTensor::from_tensor(logits)?);
    out.insert("loss", HostTensor::from_tensor(loss)?);
    let params = model.named_parameters();
    for (name, p) in &params {
        if !trainable.contains(name) {
            continue;
        }
        let grad = p.grad().ok_or_else(|| {
            Error::Autograd(format!(
                "trainable parameter `{name}` received no gradient from backward"
            ))
        })?;
        out.insert(format!("grad.{name}"), HostTensor::from_tensor(&grad)?);
    }
    for (name, p) in &params {
        out.insert(format!("param.{name}"), HostTensor::from_tensor(p)?);
    }
    for (name, b) in model.named_buffers() {
        out.insert(format!("buffer.{name}"), HostTensor::from_tensor(&b)?);
    }
    Ok(out)
}
