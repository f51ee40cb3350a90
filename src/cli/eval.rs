//! `frostgrad eval` (accuracy, per-class accuracy and confusion matrix on an
//! image folder) and `frostgrad predict` (top-k classes of single images).
//!
//! ```text
//! frostgrad eval --weights CKPT --data DIR [--size S] [--batch B] [--device ...] [--json P]
//! frostgrad predict --weights CKPT [--classes DIR] [--top-k K] [--size S] IMG...
//! ```
//!
//! Both use the evaluation transform of `frostgrad train` (resize the
//! shorter side, centre crop, ImageNet normalisation) and eval mode.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::weights::read_state_dict;
use crate::cli::DeviceArg;
use crate::core_types::Role;
use crate::data::{transform, ImageFolder};
use crate::error::{Error, Result};
use crate::io::files::Outputs;
use crate::nn::{Module, ResNet};
use crate::ops;
use crate::optim::SgdConfig;
use crate::tensor::Tensor;
use crate::train::{self, FrozenBn, Schedule, TrainConfig};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Trained ResNet-18 (safetensors or .pth), e.g. the --out of `frostgrad train`.
    #[arg(long, value_name = "CKPT")]
    pub weights: PathBuf,
    #[arg(long, value_name = "P")]
    pub strip_prefix: Option<String>,
    /// Image folder `DIR/<class>/*.png|jpg` (`DIR/val` is used when it exists).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Also write the numbers as JSON.
    #[arg(long, value_name = "P.json")]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    #[arg(long, value_name = "CKPT")]
    pub weights: PathBuf,
    #[arg(long, value_name = "P")]
    pub strip_prefix: Option<String>,
    /// Class names: the sorted sub-folders of DIR (or of DIR/train), as in training.
    #[arg(long, value_name = "DIR")]
    pub classes: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Images to classify.
    #[arg(required = true, value_name = "IMG")]
    pub images: Vec<PathBuf>,
}

fn load_model(path: &Path, strip_prefix: Option<&str>) -> Result<ResNet> {
    let state = read_state_dict(path, strip_prefix, Role::WEIGHTS)?;
    ResNet::resnet18_from_state_dict(&state).map_err(|e| match e {
        Error::StateDict(msg) => Role::WEIGHTS.error(path, msg),
        other => other,
    })
}

pub fn run_eval(args: &EvalArgs) -> Result<String> {
    if args.batch == 0 || args.size == 0 {
        return Err(Error::invalid(
            "frostgrad eval",
            "--batch and --size must be at least 1",
        ));
    }
    let outs: Vec<(Role, &Path)> = args
        .json
        .iter()
        .map(|p| (Role::JSON, p.as_path()))
        .collect();
    let outputs = Outputs::check(&[(Role::WEIGHTS, &args.weights)], &outs)?;
    let root = if args.data.join("val").is_dir() {
        args.data.join("val")
    } else {
        args.data.clone()
    };
    let set = ImageFolder::open(&root)?;
    let device = args.device.resolve();
    let mut model = load_model(&args.weights, args.strip_prefix.as_deref())?;
    if model.num_classes() != set.classes.len() {
        return Err(Error::invalid(
            "frostgrad eval",
            format!(
                "{} has {} classes but {} has {} class folders",
                args.weights.display(),
                model.num_classes(),
                root.display(),
                set.classes.len()
            ),
        ));
    }
    model.to_device(device)?;
    let cfg = TrainConfig {
        epochs: 0,
        start_epoch: 0,
        batch: args.batch,
        size: args.size,
        sgd: SgdConfig::new(0.0),
        schedule: Schedule::Constant,
        seed: 0,
        shuffle: false,
        drop_last: false,
        augment: false,
        skip_bad: false,
        frozen_bn: FrozenBn::Eval,
        cache: None,
        workers: args.workers,
        prefetch: 2,
        device,
        progress: !args.quiet,
    };
    let (ev, _) = train::evaluate(&mut model, &set, &cfg, None, 0, "evaluating")?;

    let width = set
        .classes
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} images of {} classes in {}: accuracy {:.2}% ({} correct), loss {:.4}",
        ev.images,
        set.classes.len(),
        root.display(),
        100.0 * ev.accuracy(),
        ev.correct,
        ev.loss
    );
    let _ = writeln!(s, "\nper class:");
    let mut per_class = Vec::new();
    for (c, name) in set.classes.iter().enumerate() {
        let total: usize = ev.confusion[c].iter().sum();
        let acc = if total > 0 {
            ev.confusion[c][c] as f64 / total as f64
        } else {
            0.0
        };
        per_class.push(acc);
        let _ = writeln!(
            s,
            "  {name:>width$}  {:6.2}%  ({} of {total})",
            100.0 * acc,
            ev.confusion[c][c]
        );
    }
    let _ = writeln!(
        s,
        "\nconfusion matrix (rows: true class, columns: predicted):"
    );
    let cell = ev.images.to_string().len().max(3);
    let _ = write!(s, "  {:>width$}", "");
    for c in 0..set.classes.len() {
        let _ = write!(s, " {c:>cell$}");
    }
    let _ = writeln!(s);
    for (c, name) in set.classes.iter().enumerate() {
        let _ = write!(s, "  {name:>width$}");
        for v in &ev.confusion[c] {
            let _ = write!(s, " {v:>cell$}");
        }
        let _ = writeln!(s, "   ({c})");
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "images": ev.images,
            "accuracy": ev.accuracy(),
            "loss": ev.loss,
            "classes": set.classes,
            "per_class_accuracy": per_class,
            "confusion": ev.confusion,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        outputs.write_all(&[(path.as_path(), text.as_bytes())])?;
    }
    Ok(s.trim_end().to_string())
}

/// Class names from the sorted sub-folders of `dir` (or `dir/train`).
fn class_names(dir: &Path) -> Result<Vec<String>> {
    let root = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.to_path_buf()
    };
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map_err(|source| Error::Io {
            path: root.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

pub fn run_predict(args: &PredictArgs) -> Result<String> {
    if args.top_k == 0 || args.size == 0 {
        return Err(Error::invalid(
            "frostgrad predict",
            "--top-k and --size must be at least 1",
        ));
    }
    let device = args.device.resolve();
    let mut model = load_model(&args.weights, args.strip_prefix.as_deref())?;
    let classes = match &args.classes {
        Some(dir) => {
            let names = class_names(dir)?;
            if names.len() != model.num_classes() {
                return Err(Error::invalid(
                    "frostgrad predict",
                    format!(
                        "{} has {} class folders, the model {} classes",
                        dir.display(),
                        names.len(),
                        model.num_classes()
                    ),
                ));
            }
            names
        }
        None => (0..model.num_classes()).map(|c| c.to_string()).collect(),
    };
    model.to_device(device)?;
    model.eval();
    let s = args.size as usize;
    let mut out = String::new();
    for path in &args.images {
        let mut pixels = vec![0f32; 3 * s * s];
        transform::load::<rand::rngs::StdRng>(path, args.size, None, &mut pixels)?;
        let x = Tensor::from_vec(pixels, &[1, 3, s, s], device)?;
        let logits = crate::no_grad(|| model.forward(&x))?;
        let probs = ops::log_softmax(&logits)?.to_vec_f32()?;
        let mut ranked: Vec<(usize, f64)> = probs
            .iter()
            .map(|&lp| (lp as f64).exp())
            .enumerate()
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<String> = ranked
            .iter()
            .take(args.top_k)
            .map(|(c, p)| format!("{} {:.2}%", classes[*c], 100.0 * p))
            .collect();
        let _ = writeln!(out, "{}: {}", path.display(), top.join(", "));
    }
    Ok(out.trim_end().to_string())
}
