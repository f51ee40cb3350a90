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

/// The kernel checks `FROSTGRAD_CUDA_EMU_CHECK` turns on (`memcheck`,
/// `racecheck`, `initcheck`, `synccheck`, `unused`; `all` is the first
/// four), parsed as the emulation parses it (`cuda-emu/check.cpp`); empty
/// when it is unset, empty, `0`, `none` or `off`.
pub fn emu_checks() -> Vec<String> {
    const ALL: [&str; 4] = ["memcheck", "racecheck", "initcheck", "synccheck"];
    let value = std::env::var("FROSTGRAD_CUDA_EMU_CHECK").unwrap_or_default();
    let mut on = Vec::new();
    for name in value.split(',').map(str::trim) {
        let names: &[&str] = match name {
            "" | "0" | "none" | "off" => &[],
            "all" => &ALL,
            other => &[other][..],
        };
        for n in names {
            if !on.iter().any(|o: &String| o == n) {
                on.push(n.to_string());
            }
        }
    }
    on
}

/// Which of `checks` are on: a test whose kernel is wrong on purpose (a
/// missing barrier, a read of uninitialised memory), or that counts what the
/// checker changes (allocations), gets reports or errors the test does not
/// expect when one of them is.
pub fn checks_on(checks: &[&str]) -> Vec<String> {
    emu_checks()
        .into_iter()
        .filter(|c| checks.contains(&c.as_str()))
        .collect()
}

/// When one of `checks` is on, prints `SKIPPED <what>: <why>` to the real
/// stderr (libtest does not capture it, so a passing run still shows that
/// nothing was checked) and returns true: the caller then skips `what`.
pub fn skip_under_checks(what: &str, checks: &[&str], why: &str) -> bool {
    let on = checks_on(checks);
    if on.is_empty() {
        return false;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {what} under FROSTGRAD_CUDA_EMU_CHECK ({}): {why}",
        on.join(", ")
    );
    true
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

/// [`with_cuda`] for tests that need CUDA and may meet a machine with
/// neither a GPU nor g++ to build the emulation: there the test prints
/// `SKIPPED <name>: <why>` to the real stderr (libtest does not capture it,
/// so a passing run still shows that nothing was checked) and passes,
/// except under `CI`, where the CUDA tests must run and it fails.
pub fn cuda_test(name: &str, body: impl FnOnce()) {
    if !is_child(name) && backend() == Backend::Emulated && !gxx_available() {
        skip_cuda_test(
            name,
            "no NVIDIA driver, and no g++ to build the CUDA emulation",
        );
        return;
    }
    with_cuda(name, body);
}

/// Says that CUDA test `name` cannot run here and why: `SKIPPED <name>:
/// <why>` on the real stderr, or a failure under `CI`.
pub fn skip_cuda_test(name: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{name}: CI must run the CUDA tests, but {why}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
}

/// Whether the compiler the emulation builds with (`FROSTGRAD_CUDA_EMU_CXX`,
/// default `g++`) runs.
pub fn gxx_available() -> bool {
    let cxx = std::env::var("FROSTGRAD_CUDA_EMU_CXX").unwrap_or_else(|_| "g++".into());
    Command::new(cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
