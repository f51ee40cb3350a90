//! The `frostgrad` command line; see `frostgrad --help` and `src/cli/`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = frostgrad::cli::Cli::parse();
    match frostgrad::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the message: scripts read the first line.
            let message = e.to_string().replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
