//! `frostgrad convert IN.pth OUT.safetensors [--strip-prefix P]`: a PyTorch
//! checkpoint to safetensors, read by [`crate::io::pth`] (nothing in the
//! file runs; floats become f32, integers i64, each change reported).

use std::path::PathBuf;

use crate::cli::weights::read_state_dict;
use crate::error::Result;
use crate::io;
use crate::io::files::{Outputs, Role};

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint (`torch.save` output, zip or legacy format).
    #[arg(value_name = "IN.pth")]
    pub input: PathBuf,
    /// The safetensors file to write.
    #[arg(value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Remove this prefix from every key that has it (`module.`, `backbone.`).
    #[arg(long, value_name = "P")]
    pub strip_prefix: Option<String>,
}

pub fn run(args: &ConvertArgs) -> Result<String> {
    // However the two paths are spelt (./in.pth, a symlink, a hard link),
    // the output must not be the input.
    let outputs = Outputs::check(
        &[(Role::CONVERT_INPUT, &args.input)],
        &[(Role::CONVERT_OUTPUT, &args.output)],
    )?;
    let state = read_state_dict(
        &args.input,
        args.strip_prefix.as_deref(),
        Role::CONVERT_INPUT,
    )?;
    outputs.write_all(&[(&args.output, &io::safetensors::to_bytes(&state)?)])?;
    Ok(format!(
        "wrote {} tensors to {}",
        state.len(),
        args.output.display()
    ))
}
