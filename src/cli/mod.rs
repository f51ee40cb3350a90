//! The `frostgrad` command line: one file per command.
//!
//! `src/bin/frostgrad.rs` parses [`Cli`] and calls [`run`]; each command
//! returns a library [`Result`] so every failure reaches the user as a
//! one-line `error: ...`. To add a command (`bench`, `convert`, ...): write
//! `src/cli/<name>.rs` with an `Args` struct and a `run` function, and add a
//! variant to [`Command`].

pub mod bench;
pub mod convert;
pub mod eval;
pub mod graph;
pub mod plot;
pub mod step;
pub mod train;
pub mod weights;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Result;
use crate::tensor::Device;

#[derive(Debug, Parser)]
#[command(
    name = "frostgrad",
    version,
    about = "ResNet-18 training steps that skip every gradient a frozen parameter does not need"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One SGD step of a torchvision ResNet-18 on one batch, with chosen
    /// parameters trainable; writes logits, loss, gradients, parameters and
    /// buffers to a safetensors file.
    Step(step::StepArgs),
    /// ResNet-18 training steps in several freezing modes: time per phase,
    /// gradients computed and skipped, FLOPs, peak memory.
    Bench(bench::BenchArgs),
    /// Convert a PyTorch checkpoint (.pth, zip or legacy format) to
    /// safetensors, without Python and without running anything in it.
    Convert(convert::ConvertArgs),
    /// Train ResNet-18 on an image folder (fine-tuning or transfer
    /// learning), with an optional frozen-prefix feature cache.
    Train(train::TrainArgs),
    /// Draw the backward graph of a ResNet-18 step in a freezing mode (SVG
    /// without Graphviz, DOT, or JSON): each node's PyTorch name, the
    /// gradients it computes and skips, what it saved.
    Graph(graph::GraphArgs),
    /// Accuracy, per-class accuracy and confusion matrix of a trained
    /// ResNet-18 on an image folder.
    Eval(eval::EvalArgs),
    /// Top-k classes of single images.
    Predict(eval::PredictArgs),
    /// Training curves of several --log-json runs in one SVG chart.
    Plot(plot::PlotArgs),
}

/// `--device cpu|cuda|auto` (CUDA device 0; `auto`: CUDA when usable, else
/// the CPU, saying why on stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// CUDA device 0 (an error when none is usable).
    Cuda,
    /// CUDA device 0 when usable, else the CPU (saying why on stderr).
    Auto,
}

impl DeviceArg {
    /// The device to run on; for `auto` without CUDA, prints the fallback.
    pub fn resolve(self) -> Device {
        match self {
            DeviceArg::Auto => {
                let (device, why_not_cuda) = crate::backend::cuda::auto_device();
                if let Some(reason) = why_not_cuda {
                    eprintln!("frostgrad: --device auto: using the CPU ({reason})");
                } else if crate::backend::is_emulated(device) {
                    // The emulation is on LD_LIBRARY_PATH: say so, never pick it silently.
                    eprintln!(
                        "frostgrad: --device auto: using {}",
                        crate::backend::describe_device(device)
                    );
                }
                device
            }
            other => other.into(),
        }
    }
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
            DeviceArg::Auto => DeviceArg::Auto.resolve(),
        }
    }
}

/// clap parser for counts (`--batch`, `--steps`, `--num-classes`, ...). The
/// commands accept negative numbers as values (`allow_negative_numbers`),
/// so `--batch -2` reaches this parser and is refused in words instead of
/// clap's `unexpected argument '-2' found`.
pub fn parse_count(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("{v} is negative; give a whole number, 0 or more")),
        Ok(v) => usize::try_from(v).map_err(|_| format!("{v} is too large for this machine")),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// [`parse_count`] for a `u64` (`--fc-seed`).
pub fn parse_count_u64(text: &str) -> std::result::Result<u64, String> {
    parse_count(text).and_then(|v| u64::try_from(v).map_err(|_| format!("{v} is too large")))
}

/// clap parser for `--num-classes`: a count of at least 1.
pub fn parse_class_count(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(0) => Err(
            "a classifier needs at least 1 class; --num-classes 0 would leave \
                      `fc` with no outputs"
                .into(),
        ),
        Ok(v) if v < 0 => Err(format!("a class count is at least 1, got {v}")),
        _ => parse_count(text),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Step(args) => step::run(&args).map(|summary| println!("{summary}")),
        Command::Bench(args) => bench::run(&args),
        Command::Convert(args) => convert::run(&args).map(|summary| println!("{summary}")),
        Command::Train(args) => train::run(&args).map(|summary| println!("{summary}")),
        Command::Graph(args) => graph::run(&args).map(|summary| println!("{summary}")),
        Command::Eval(args) => eval::run_eval(&args).map(|report| println!("{report}")),
        Command::Predict(args) => eval::run_predict(&args).map(|lines| println!("{lines}")),
        Command::Plot(args) => plot::run(&args).map(|summary| println!("{summary}")),
    }
}
