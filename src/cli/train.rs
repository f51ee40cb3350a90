//! `frostgrad train`: ResNet-18 on an image folder, fine-tuning or
//! transfer learning, with an optional frozen-prefix feature cache.
//!
//! ```text
//! frostgrad train --data DIR --num-classes N [--weights W.pth|W.safetensors] [--strip-prefix P]
//!                 --trainable GLOBS --epochs E --batch B [--size S] --lr LR [--momentum M]
//!                 [--weight-decay WD] [--schedule constant|step|cosine] [--seed K]
//!                 [--frozen-bn train|eval] [--cache-features [--cache-mem BYTES] [--cache-dir D]]
//!                 [--augment] [--skip-bad] [--no-shuffle] [--drop-last] [--device ...]
//!                 --out CKPT.safetensors [--resume] [--log-json P]
//! ```
//!
//! Data: `DIR/train/<class>/*.{png,jpg,jpeg}` and `DIR/val/<class>/...`,
//! or `DIR/<class>/...` with `--val-fraction`. The checkpoint (written after
//! every epoch) has torchvision's names; `--resume` continues it from its
//! `.train-state.safetensors` sidecar (epochs done, momentum buffers).

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use rand::SeedableRng;

use crate::cli::weights::{load_resnet18, read_state_dict, WeightsArgs};
use crate::cli::DeviceArg;
use crate::core_types::Role;
use crate::data::open_splits;
use crate::error::{Error, Result};
use crate::io::files::Outputs;
use crate::nn::{resnet18, Module, ParamPatterns, ResNet};
use crate::optim::{Sgd, SgdConfig};
use crate::train::{self, checkpoint, log, FrozenBn, Schedule, TrainConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    /// Multiply the learning rate by --gamma every --step-size epochs.
    Step,
    /// Cosine annealing from --lr to 0 over --epochs.
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FrozenBnArg {
    /// PyTorch's model.train(): batch statistics, running statistics updated.
    Train,
    /// Batch norm whose parameters are all frozen stays in eval mode.
    Eval,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Image folder: `DIR/train/<class>/*.png|jpg` and `DIR/val/<class>/...`
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Without `DIR/train`: hold out this fraction of every class of
    /// `DIR/<class>/` for validation.
    #[arg(long, value_name = "F")]
    pub val_fraction: Option<f64>,
    /// Number of classes (must equal the number of class folders).
    #[arg(long, value_name = "N")]
    pub num_classes: usize,
    /// Start from these weights (torchvision ResNet-18, .safetensors or .pth);
    /// without it, from torchvision's random initialisation (seeded by --seed).
    #[arg(long, value_name = "W.safetensors|W.pth")]
    pub weights: Option<PathBuf>,
    /// Remove this prefix from every key of --weights that has it.
    #[arg(long, value_name = "P")]
    pub strip_prefix: Option<String>,
    /// Comma-separated globs of trainable parameters: `*` fine-tunes, `fc.*` is transfer learning.
    #[arg(long, value_name = "GLOBS")]
    pub trainable: String,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Images are resized (shorter side) and centre-cropped to SxS.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
    /// Epochs between learning-rate drops of --schedule step (default: a third of --epochs).
    #[arg(long)]
    pub step_size: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Seeds the shuffling, augmentation, a fresh fc and random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What frozen batch norm does: `train` (PyTorch's default) or `eval`.
    #[arg(long, value_enum, default_value_t = FrozenBnArg::Train)]
    pub frozen_bn: FrozenBnArg,
    /// Compute the frozen prefix once and train later epochs from its cached output.
    #[arg(long)]
    pub cache_features: bool,
    /// Memory for the feature cache, in bytes (suffixes K, M, G); the rest goes to --cache-dir.
    #[arg(long, default_value = "2G", value_parser = parse_bytes)]
    pub cache_mem: usize,
    /// Folder for the part of the cache beyond --cache-mem (default: the system's temp folder).
    #[arg(long, value_name = "D")]
    pub cache_dir: Option<PathBuf>,
    /// Random resized crop and horizontal flip for training images.
    #[arg(long)]
    pub augment: bool,
    /// Skip unreadable images with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Train in ImageFolder order instead of a seeded shuffle.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Drop the last batch of an epoch when it is smaller than --batch.
    #[arg(long)]
    pub drop_last: bool,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Batches decoded ahead of the training step.
    #[arg(long, default_value_t = 2)]
    pub prefetch: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Checkpoint, rewritten after every epoch (torchvision names, safetensors).
    #[arg(long, value_name = "CKPT.safetensors")]
    pub out: PathBuf,
    /// Continue the run saved in --out (weights, epochs done, momentum) up to --epochs.
    #[arg(long)]
    pub resume: bool,
    /// Write every epoch's numbers as JSON.
    #[arg(long, value_name = "P.json")]
    pub log_json: Option<PathBuf>,
    /// Draw loss and accuracy against wall-clock time (SVG).
    #[arg(long, value_name = "P.svg")]
    pub svg: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `2G`, `512M`, `64K` or a number of bytes.
pub fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown unit `{c}` in `{s}` (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512M or 2G"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("`{s}` is not a size like 512M or 2G"));
    }
    Ok((n * mult as f64) as usize)
}

/// `--log-json`'s role in error messages.
pub const LOG_ROLE: Role = Role::new("training log", Some("--log-json"));

fn build_model(args: &TrainArgs) -> Result<ResNet> {
    if args.resume {
        let state = read_state_dict(&args.out, None, Role::OUTPUT)?;
        return ResNet::resnet18_from_state_dict(&state).map_err(|e| match e {
            Error::StateDict(msg) => Role::OUTPUT.error(&args.out, msg),
            other => other,
        });
    }
    match &args.weights {
        Some(w) => load_resnet18(&WeightsArgs {
            weights: w.clone(),
            strip_prefix: args.strip_prefix.clone(),
            num_classes: Some(args.num_classes),
            fc_seed: args.seed,
        }),
        None => resnet18(
            args.num_classes,
            &mut rand::rngs::StdRng::seed_from_u64(args.seed),
        ),
    }
}

pub fn run(args: &TrainArgs) -> Result<String> {
    // Cheap checks first, so a typo fails before any image is read.
    let patterns = ParamPatterns::parse(&args.trainable)?;
    let sgd_config = SgdConfig::new(args.lr)
        .momentum(args.momentum)
        .weight_decay(args.weight_decay);
    sgd_config.validate()?;
    if args.epochs == 0 || args.batch == 0 || args.size == 0 {
        return Err(Error::invalid(
            "frostgrad train",
            "--epochs, --batch and --size must be at least 1",
        ));
    }
    // Every output is checked against the inputs and for writability
    // before any image is read. With --resume, --out is read and then
    // rewritten on purpose, so it is not listed as an input.
    let sidecar = checkpoint::sidecar_path(&args.out);
    let mut inputs = Vec::new();
    if let (Some(w), false) = (&args.weights, args.resume) {
        inputs.push((Role::WEIGHTS, w.as_path()));
    }
    let mut outs = vec![
        (Role::OUTPUT, args.out.as_path()),
        (checkpoint::STATE_ROLE, sidecar.as_path()),
    ];
    if let Some(p) = &args.log_json {
        outs.push((LOG_ROLE, p.as_path()));
    }
    if let Some(p) = &args.svg {
        outs.push((Role::SVG, p.as_path()));
    }
    let outputs = Outputs::check(&inputs, &outs)?;
    let (train_set, val_set) = open_splits(&args.data, args.val_fraction, args.seed)?;
    if train_set.classes.len() != args.num_classes {
        return Err(Error::invalid(
            "frostgrad train",
            format!(
                "--num-classes {} but {} has {} class folders ({})",
                args.num_classes,
                args.data.display(),
                train_set.classes.len(),
                train_set.classes.join(", ")
            ),
        ));
    }

    let device = args.device.resolve();
    let mut model = build_model(args)?;
    if model.num_classes() != args.num_classes {
        return Err(Error::invalid(
            "frostgrad train",
            format!(
                "the checkpoint has {} classes, --num-classes says {}",
                model.num_classes(),
                args.num_classes
            ),
        ));
    }
    model.to_device(device)?;
    let trainable = model.set_trainable(&patterns)?;
    if trainable.is_empty() {
        return Err(Error::invalid(
            "frostgrad train",
            format!("--trainable `{}` selects no parameter", args.trainable),
        ));
    }
    let parameters = model.parameters();
    let mut sgd = Sgd::new(parameters.iter().cloned(), sgd_config)?;
    let start_epoch = if args.resume {
        let state = checkpoint::load_state(&args.out)?;
        checkpoint::restore_momentum(&model, &mut sgd, &state.momentum)?;
        if state.epochs_done >= args.epochs {
            return Err(Error::invalid(
                "frostgrad train --resume",
                format!(
                    "{} already has {} epochs; pass a larger --epochs",
                    args.out.display(),
                    state.epochs_done
                ),
            ));
        }
        state.epochs_done
    } else {
        0
    };

    let schedule = match args.schedule {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Step => Schedule::Step {
            step_size: args.step_size.unwrap_or((args.epochs / 3).max(1)),
            gamma: args.gamma,
        },
        ScheduleArg::Cosine => Schedule::Cosine {
            epochs: args.epochs,
        },
    };
    let frozen_bn = match args.frozen_bn {
        FrozenBnArg::Train => FrozenBn::Train,
        FrozenBnArg::Eval => FrozenBn::Eval,
    };
    let cfg = TrainConfig {
        epochs: args.epochs,
        start_epoch,
        batch: args.batch,
        size: args.size,
        sgd: sgd_config,
        schedule,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        drop_last: args.drop_last,
        augment: args.augment,
        skip_bad: args.skip_bad,
        frozen_bn,
        cache: args.cache_features.then(|| {
            (
                args.cache_mem,
                args.cache_dir.clone().unwrap_or_else(std::env::temp_dir),
            )
        }),
        workers: args.workers,
        prefetch: args.prefetch,
        device,
        progress: !args.quiet,
    };
    let in_eval = train::set_train_mode(&mut model, frozen_bn);
    let cache_note = match &cfg.cache {
        Some(_) => {
            let b = train::cache_boundary(&model, frozen_bn, args.augment)?;
            format!(
                "; caching the frozen prefix (stem..{}), training from {}",
                ResNet::stage_name(b - 1),
                ResNet::stage_name(b)
            )
        }
        None => String::new(),
    };
    println!(
        "training on {} images of {} classes{}; {} of {} parameters trainable; {} frozen batch-norm layers in eval mode{cache_note}",
        train_set.len(),
        train_set.classes.len(),
        val_set
            .as_ref()
            .map(|v| format!(", validating on {}", v.len()))
            .unwrap_or_default(),
        trainable.len(),
        parameters.len(),
        in_eval.len(),
    );

    let mut history = Vec::new();
    let logs = train::train(
        &mut model,
        &mut sgd,
        &train_set,
        val_set.as_ref(),
        &cfg,
        |model, sgd, entry| {
            println!("{entry}");
            history.push(entry.clone());
            // Checkpoint, state, log and chart of this epoch: all or nothing.
            let (weights, state) = checkpoint::encode(model, sgd, entry.epoch)?;
            let log_text = log::to_json(&history);
            let svg = match &args.svg {
                Some(_) => {
                    crate::train::plot::render_svg(&[("train".to_string(), history.clone())])?
                }
                None => String::new(),
            };
            let mut files: Vec<(&Path, &[u8])> = vec![
                (args.out.as_path(), weights.as_slice()),
                (sidecar.as_path(), state.as_slice()),
            ];
            if let Some(p) = &args.log_json {
                files.push((p.as_path(), log_text.as_bytes()));
            }
            if let Some(p) = &args.svg {
                files.push((p.as_path(), svg.as_bytes()));
            }
            outputs.write_all(&files)
        },
    )?;
    let last = logs.last();
    Ok(format!(
        "wrote {} after epoch {}{}",
        args.out.display(),
        last.map_or(start_epoch, |l| l.epoch),
        last.and_then(|l| l.val_acc)
            .map(|a| format!(" (validation accuracy {:.2}%)", 100.0 * a))
            .unwrap_or_default()
    ))
}
