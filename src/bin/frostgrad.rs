//! The `frostgrad` command line; see `frostgrad --help` and `src/cli/`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ignore_file_size_signal();
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

/// A file-size limit (`ulimit -f`) sends SIGXFSZ, whose default action kills
/// the process in the middle of a write, leaving its temporary file behind.
/// Ignored, the write fails with EFBIG instead, and the atomic writer
/// (`frostgrad::io::files`) removes the temporary and reports the error.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN at the start of
    // main, before any thread exists, installs no handler code and races
    // with nothing.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
