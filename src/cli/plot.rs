//! `frostgrad plot --svg OUT.svg NAME=LOG.json...`: the training curves of
//! several `frostgrad train --log-json` runs in one chart (loss and
//! accuracy against wall-clock time), e.g. fine-tuning, transfer learning
//! and transfer learning with the feature cache on the same data.

use std::path::PathBuf;

use crate::core_types::Role;
use crate::error::Result;
use crate::io::files::Outputs;
use crate::train::{log, plot};

/// A training log named on the command line.
const LOG_ROLE: Role = Role::new("training log", Some("NAME=LOG.json"));

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Where to write the chart.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: PathBuf,
    /// Runs to draw, each `NAME=LOG.json` (or just `LOG.json`, named after the file).
    #[arg(required = true, value_name = "NAME=LOG.json")]
    pub runs: Vec<String>,
}

pub fn run(args: &PlotArgs) -> Result<String> {
    let mut runs = Vec::new();
    for spec in &args.runs {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) if !n.is_empty() => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(spec);
                let n = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| spec.clone());
                (n, p)
            }
        };
        runs.push((name, path));
    }
    let inputs: Vec<(Role, &std::path::Path)> =
        runs.iter().map(|(_, p)| (LOG_ROLE, p.as_path())).collect();
    let outputs = Outputs::check(&inputs, &[(Role::SVG, &args.svg)])?;
    let logs = runs
        .iter()
        .map(|(name, path)| Ok((name.clone(), log::read_json(path)?)))
        .collect::<Result<Vec<_>>>()?;
    let svg = plot::render_svg(&logs)?;
    outputs.write_all(&[(args.svg.as_path(), svg.as_bytes())])?;
    Ok(format!(
        "wrote {} ({} runs)",
        args.svg.display(),
        runs.len()
    ))
}
