//! Run CUDA-using test code on a real GPU when one is there, or on frostgrad's
//! host emulation of the CUDA driver and NVRTC (`cuda-emu/`) otherwise.
//!
//! cudarc finds `libcuda.so` by name and glibc reads `LD_LIBRARY_PATH` only
//! when a process starts, so emulated tests re-execute their own test binary
//! for just that one test, with the emulation folder first in
//! `LD_LIBRARY_PATH`, and assert that the child passed.
//!
//! ```ignore
//! #[path = "common/cuda_emu.rs"]
//! mod cuda_emu;
//!
//! #[test]
//! fn conv_matches_cpu() {
//!     cuda_emu::with_cuda("conv_matches_cpu", || {
//!         let ctx = cudarc::driver::CudaContext::new(0).unwrap();
//!         // ... the test body, run on a GPU or in the emulation ...
//!     });
//! }
//! ```
//!
//! `FROSTGRAD_CUDA=real` forces the real driver, `FROSTGRAD_CUDA=emu` the
//! emulation; unset, a present NVIDIA kernel driver selects the real one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set in the child process to the name of the test it must run.
const CHILD_ENV: &str = "FROSTGRAD_CUDA_EMU_CHILD";

/// Where CUDA work of this test run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The system's CUDA driver and NVRTC.
    Real,
    /// `cuda-emu/`, built by `scripts/build-cuda-emu.sh`.
    Emulated,
}

/// The backend chosen by `FROSTGRAD_CUDA` (`real` / `emu`) or, when unset, by
/// whether an NVIDIA kernel driver is loaded.
pub fn backend() -> Backend {
    match std::env::var("FROSTGRAD_CUDA").as_deref() {
        Ok("real") => Backend::Real,
        Ok("emu") | Ok("emulated") => Backend::Emulated,
        Ok(other) if !other.is_empty() => {
            panic!("FROSTGRAD_CUDA must be `real` or `emu`, not {other:?}")
        }
        _ => {
            if Path::new("/proc/driver/nvidia/version").exists() {
                Backend::Real
            } else {
                Backend::Emulated
            }
        }
    }
}

/// Builds the emulation (once per process) and returns the folder holding
/// `libcuda.so.1` and `libnvrtc.so.13`. Panics, with the build output, if
/// the build fails (for instance when g++ is missing): an emulated test that
/// cannot run must fail, not pass.
pub fn emu_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("scripts/build-cuda-emu.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{stdout}\n{stderr}",
            script.display(),
            out.status
        );
        let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        assert!(
            dir.join("libcuda.so.1").exists() && dir.join("libnvrtc.so.13").exists(),
            "{} did not produce the libraries (last line: {dir:?})",
            script.display()
        );
        dir
    })
}

/// True inside the child process started for test `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Runs `body` with CUDA available: directly on a real GPU (see [`backend`]),
/// or in a child process that uses the emulation. `name` is the test's name
/// as libtest knows it (`module::fn` below the test crate's root).
pub fn with_cuda(name: &str, body: impl FnOnce()) {
    if is_child(name) || backend() == Backend::Real {
        body();
    } else {
        run_emulated(name, &[]);
    }
}

/// Like [`with_cuda`] but always on the emulation, for tests of the
/// emulation's own behaviour. `envs` are extra variables for the child (for
/// example `FROSTGRAD_CUDA_EMU_SHUFFLE`).
pub fn with_emulation(name: &str, envs: &[(&str, &str)], body: impl FnOnce()) {
    if is_child(name) {
        body();
    } else {
        run_emulated(name, envs);
    }
}

/// Re-executes this test binary for test `name` alone, with the emulation
/// first in `LD_LIBRARY_PATH`; panics unless exactly that test ran and passed.
pub fn run_emulated(name: &str, envs: &[(&str, &str)]) {
    let dir = emu_dir();
    let exe = std::env::current_exe().expect("current_exe");
    let mut lib_path = dir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        if !old.is_empty() {
            lib_path.push(":");
            lib_path.push(old);
        }
    }
    let mut cmd = Command::new(&exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LD_LIBRARY_PATH", &lib_path)
        .env(CHILD_ENV, name)
        .env("FROSTGRAD_CUDA", "emu");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot re-run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Show the child's output as part of this test's.
    println!(
        "--- {name} on the CUDA emulation ({}) ---\n{stdout}",
        dir.display()
    );
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "test {name} failed on the CUDA emulation ({})",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child process did not run test {name:?} (wrong name passed to with_cuda?)"
    );
}
