//! `scripts/gpu-check.sh` end to end, through the host emulation: build the
//! bundle, run its `run.sh` with `FROSTGRAD_CUDA=emu`, and read the report.
//! What the first real GPU run will execute is exercised here, so that it
//! does not fail on a typo.
//!
//! To keep the test short the bundle gets this build's `frostgrad` binary
//! (no release build), the `cuda_parity` test executable next to this one
//! (run with a filter: one test), a one-step benchmark, and no accuracy sweep.
//! Python checks run with `$FROSTGRAD_TEST_PYTHON` (default `python3`); where
//! PyTorch is missing the report must say "NOT RUN", never "passed".

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest `cuda_parity-<hash>` test executable beside this test's.
fn cuda_parity_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("cuda_parity-") && p.extension().is_none()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

#[test]
fn gpu_check_bundle_runs_through_the_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let emu = cuda_emu::emu_dir();
    let work = std::env::temp_dir().join(format!("frostgrad-gpu-check-{}", std::process::id()));
    let bundle = work.join("bundle");
    let out = work.join("out");
    let tests = cuda_parity_executable();

    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/gpu-check.sh"))
        .arg("bundle")
        .arg(&bundle)
        .current_dir(root)
        .env("FROSTGRAD_GPU_CHECK_BIN", env!("CARGO_BIN_EXE_frostgrad"))
        .env(
            "FROSTGRAD_GPU_CHECK_TESTS",
            tests
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        );
    let built = cmd.output().expect("run gpu-check.sh bundle");
    assert!(
        built.status.success(),
        "bundle failed:\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let python = std::env::var("FROSTGRAD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ran = Command::new(bundle.join("run.sh"))
        .env("FROSTGRAD_CUDA", "emu")
        .env("LD_LIBRARY_PATH", emu)
        .env("OUT", &out)
        .env("PYTHON", &python)
        .env(
            "FROSTGRAD_BENCH_ARGS",
            "--device cuda --batch 2 --size 32 --steps 1 --warmup 0 --modes transfer",
        )
        .env(
            "FROSTGRAD_GPU_CHECK_TEST_ARGS",
            "elementwise_and_reductions_match_cpu",
        )
        .env("FROSTGRAD_GPU_CHECK_SWEEP_SIZES", "")
        .output()
        .expect("run run.sh");
    let report = std::fs::read_to_string(out.join("gpu-report.md")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        )
    });
    println!("{report}");

    assert!(
        report.contains("Run through the host emulation of CUDA"),
        "{report}"
    );
    assert!(
        report.contains("- **frostgrad-bench-cuda**: passed"),
        "{report}"
    );
    // The bench names the device as the emulation in its own table.
    let bench_log = std::fs::read_to_string(out.join("frostgrad-bench-cuda.log")).unwrap();
    assert!(
        bench_log.contains("frostgrad CUDA emulation"),
        "{bench_log}"
    );
    assert!(out.join("frostgrad-cuda.json").exists());
    if tests.is_some() {
        assert!(
            report.contains("- **test-cuda_parity**: passed"),
            "{report}"
        );
    } else {
        assert!(report.contains("- **CUDA tests**: NOT RUN"), "{report}");
    }
    // Nothing failed: whatever did not pass did not run, and says why.
    assert!(!report.contains("FAILED"), "{report}");
    let not_run = report.matches("NOT RUN").count();
    let exit = ran.status.code();
    assert_eq!(
        exit == Some(0),
        not_run == 0,
        "exit {exit:?} with {not_run} checks not run\n{report}"
    );
    let _ = std::fs::remove_dir_all(&work);
}
