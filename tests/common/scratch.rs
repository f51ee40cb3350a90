//! Scratch folders for tests that write files.
//!
//! Every folder lives under `$TMPDIR/frostgrad-test-<pid>/`. A test binary
//! cannot reliably clean up after itself (shared inputs live in statics that
//! are never dropped, and a failing test unwinds past any guard), so each new
//! scratch folder first removes the roots of earlier test processes that are
//! no longer running. Without this, every `cargo test` left a few hundred MB
//! behind in /tmp (the training and ResNet-step suites write real weights),
//! enough to fill a CI disk over a day of runs.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

const PREFIX: &str = "frostgrad-test-";

/// A fresh, empty folder `$TMPDIR/frostgrad-test-<pid>/<name>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    remove_stale_roots(&tmp);
    let dir = tmp
        .join(format!("{PREFIX}{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder under the temp dir");
    dir
}

/// Removes `frostgrad-test-<pid>` roots whose process has exited. Only on
/// Linux, where `/proc/<pid>` says whether a process is alive; elsewhere the
/// folders stay (as any temp file would).
fn remove_stale_roots(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
