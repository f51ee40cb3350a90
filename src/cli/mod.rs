//! The `frostgrad` command line: one file per command.
//!
//! `src/bin/frostgrad.rs` parses [`Cli`] and calls [`run`]; each command
//! returns a library [`Result`] so every failure reaches the user as a
//! one-line `error: ...`. To add a command (`bench`, `convert`, ...): write
//! `src/cli/<name>.rs` with an `Args` struct and a `run` function, and add a
//! variant to [`Command`].

pub mod bench;
pub mod convert;
pub mod graph;
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
}

/// `--device cpu|cuda|auto` (CUDA device 0; `auto`: CUDA when usable, else
/// the CPU, saying why on stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
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

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Step(args) => step::run(&args).map(|summary| println!("{summary}")),
        Command::Bench(args) => bench::run(&args),
        Command::Convert(args) => convert::run(&args).map(|summary| println!("{summary}")),
        Command::Train(args) => train::run(&args).map(|summary| println!("{summary}")),
        Command::Graph(args) => graph::run(&args).map(|summary| println!("{summary}")),
    }
}
