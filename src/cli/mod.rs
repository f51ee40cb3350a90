//! The `frostgrad` command line: one file per command.
//!
//! `src/bin/frostgrad.rs` parses [`Cli`] and calls [`run`]; each command
//! returns a library [`Result`] so every failure reaches the user as a
//! one-line `error: ...`. To add a command (`bench`, `convert`, ...): write
//! `src/cli/<name>.rs` with an `Args` struct and a `run` function, and add a
//! variant to [`Command`].

pub mod convert;
pub mod step;
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
    /// Convert a PyTorch checkpoint (.pth, zip or legacy format) to
    /// safetensors, without Python and without running anything in it.
    Convert(convert::ConvertArgs),
}

/// `--device cpu|cuda` (CUDA device 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Step(args) => step::run(&args).map(|summary| println!("{summary}")),
        Command::Convert(args) => convert::run(&args).map(|summary| println!("{summary}")),
    }
}
