//! `frostgrad graph`: draw the backward graph of a ResNet-18 step in a
//! freezing mode.
//!
//! ```text
//! frostgrad graph [--trainable GLOBS] [--compare GLOBS] [--eval] [--batch N] [--size S]
//!                 [--weights W] [--format svg|dot|json] --out PATH
//! ```
//!
//! Records the forward pass and cross-entropy loss of one batch of random
//! images (on the CPU; nothing is run backwards) and writes the graph
//! [`Tensor::graph`](crate::Tensor::graph) returns: one node per recorded op
//! with PyTorch's `grad_fn` name, its edges, which input gradients it will
//! compute or skip, what it saved (shape, bytes), and an `AccumulateGrad`
//! node per trainable parameter. `--compare` draws a second mode beside
//! the first. The format defaults to the extension of `--out`, else SVG.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use rand::SeedableRng;

use crate::autograd::Graph;
use crate::cli::weights::read_state_dict;
use crate::error::{Error, Result};
use crate::io::files::{Outputs, Role};
use crate::nn::{resnet18, Module, ParamPatterns, ResNet};
use crate::ops;
use crate::tensor::{Device, Tensor};
use crate::viz::{self, Panel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Svg,
    Dot,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Comma-separated globs of trainable parameters: `*` (fine-tuning),
    /// `fc.*` (transfer learning), `layer4.*,fc.*`, `conv1.*,bn1.*`, ...
    #[arg(long, value_name = "GLOBS", default_value = "*")]
    pub trainable: String,
    /// A second mode to draw beside the first.
    #[arg(long, value_name = "GLOBS")]
    pub compare: Option<String>,
    /// Record in eval mode (batch norm with its running statistics).
    #[arg(long)]
    pub eval: bool,
    /// Images in the batch (shapes and saved bytes scale with it).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Image height and width.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// torchvision ResNet-18 weights (safetensors or .pth); default:
    /// torchvision's random initialisation with 1000 classes. The graph's
    /// structure does not depend on them.
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// Output format; default: from the extension of `--out`, else svg.
    #[arg(long, value_enum)]
    pub format: Option<GraphFormat>,
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// The forward runs on the CPU and keeps its activations for the graph:
/// bound the work so that a typo cannot exhaust memory (batch 64 at 224²
/// keeps about 5 GB alive in fine-tuning mode).
const MAX_PIXELS: usize = 64 * 224 * 224;

fn format_of(args: &GraphArgs) -> GraphFormat {
    args.format
        .unwrap_or_else(|| match args.out.extension().and_then(|e| e.to_str()) {
            Some("dot" | "gv") => GraphFormat::Dot,
            Some("json") => GraphFormat::Json,
            _ => GraphFormat::Svg,
        })
}

/// The recorded graph of one mode, leaves named after their parameters.
pub struct ModeGraph {
    pub title: String,
    pub trainable: String,
    pub graph: Graph,
}

/// Records `model`'s forward and loss with `globs` trainable.
pub fn record_mode(
    model: &ResNet,
    globs: &str,
    images: &Tensor,
    labels: &Tensor,
) -> Result<ModeGraph> {
    let patterns = ParamPatterns::parse(globs)?;
    model.set_trainable(&patterns)?;
    let logits = model.forward(images)?;
    let loss = ops::cross_entropy(&logits, labels)?;
    drop(logits);
    let mut graph = loss.graph();
    graph.name_leaves(model.named_parameters());
    let mode = if model.is_training() { "train" } else { "eval" };
    Ok(ModeGraph {
        title: format!("--trainable {globs} ({mode} mode)"),
        trainable: globs.to_string(),
        graph,
    })
}

/// `--out`, named in errors as the graph file.
const GRAPH_OUT: Role = Role::new("graph file", Some("--out"));

pub fn run(args: &GraphArgs) -> Result<String> {
    // Cheap checks first.
    ParamPatterns::parse(&args.trainable)?;
    if let Some(c) = &args.compare {
        ParamPatterns::parse(c)?;
    }
    if args.batch == 0 || args.size == 0 {
        return Err(Error::invalid(
            "graph",
            "--batch and --size must be positive",
        ));
    }
    if args
        .batch
        .checked_mul(args.size)
        .and_then(|p| p.checked_mul(args.size))
        .is_none_or(|p| p > MAX_PIXELS)
    {
        return Err(Error::invalid(
            "graph",
            format!(
                "--batch {} --size {} is too large: batch × size² may be at most 64 × 224² \
                 (the graph's structure is the same at any size)",
                args.batch, args.size
            ),
        ));
    }
    // Refuses an --out that is the weights file or cannot be written, before any work.
    let inputs: Vec<(Role, &Path)> = args
        .weights
        .iter()
        .map(|w| (Role::WEIGHTS, w.as_path()))
        .collect();
    let outputs = Outputs::check(&inputs, &[(GRAPH_OUT, args.out.as_path())])?;
    let mut model: ResNet = match &args.weights {
        Some(path) => {
            ResNet::resnet18_from_state_dict(&read_state_dict(path, None, Role::WEIGHTS)?)?
        }
        None => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            resnet18(1000, &mut rng)?
        }
    };
    if args.eval {
        model.eval();
    } else {
        model.train();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let images = Tensor::randn(
        &[args.batch, 3, args.size, args.size],
        0.0,
        1.0,
        &mut rng,
        Device::Cpu,
    )?;
    let classes = model.num_classes() as i64;
    let labels: Vec<i64> = (0..args.batch as i64).map(|i| i % classes).collect();
    let labels = Tensor::from_vec_i64(labels, &[args.batch], Device::Cpu)?;

    let mut modes = vec![record_mode(&model, &args.trainable, &images, &labels)?];
    if let Some(c) = &args.compare {
        modes.push(record_mode(&model, c, &images, &labels)?);
    }
    let panels: Vec<Panel<'_>> = modes
        .iter()
        .map(|m| Panel {
            title: &m.title,
            graph: &m.graph,
        })
        .collect();
    let text = match format_of(args) {
        GraphFormat::Svg => viz::to_svg(&panels)?,
        GraphFormat::Dot => viz::to_dot(&panels),
        GraphFormat::Json => {
            let mode = if args.eval { "eval" } else { "train" };
            let json_of = |m: &ModeGraph, compare: Option<String>| {
                viz::to_json(
                    &m.graph,
                    &[
                        ("trainable", m.trainable.clone()),
                        ("mode", mode.to_string()),
                    ],
                    compare,
                )
            };
            let compare = modes.get(1).map(|m| json_of(m, None));
            json_of(&modes[0], compare)
        }
    };
    outputs.write_all(&[(args.out.as_path(), text.as_bytes())])?;
    let mut lines: Vec<String> = modes
        .iter()
        .map(|m| format!("{}: {}", m.title, viz::summary_line(&m.graph)))
        .collect();
    lines.push(format!("wrote {}", args.out.display()));
    Ok(lines.join("\n"))
}
