//! What one steady-state training step costs the CUDA driver, counted by
//! the emulation (`FROSTGRAD_CUDA_EMU_STATS`, see `cuda-emu/stats.h`): the
//! difference between a `frostgrad bench` run of K and one of K + 2 timed
//! steps is what two steps cost, whatever the start-up (context, kernel
//! compilation, weights upload, warm-up) did.
//!
//! The budget of one step, on any GPU:
//! - **no driver allocation or free** (the caching allocator serves every
//!   buffer from its pool once the first step has filled it);
//! - **no device-to-host copy** in `bench` (nothing reads the loss; labels
//!   were validated on the host when they were uploaded, and
//!   `num_batches_tracked` counts on the device), and at most one in general;
//! - **exactly one host wait per phase boundary**: before the step, after
//!   the forward, the backward and the optimizer (4 per training step, 2 per
//!   inference step), so each phase's time is its own;
//! - **the documented launches** (`FINETUNE_LAUNCHES` below): a change in
//!   that number is a change in the kernels a step runs, which should be
//!   deliberate.
//!
//! A graph of the general op set (broadcasting, strided copies, reductions,
//! batched matmul) is held to the same: no driver allocation, no host wait
//! (`general_op_graph_step_allocates_nothing_and_never_waits`).
//!
//! These run on the emulation only: a real driver has no such counters.
//! The step budgets are skipped, with the reason printed, while
//! `FROSTGRAD_CUDA_EMU_CHECK` is set: the allocator then has no pool.

#[path = "common/cuda_emu.rs"]
mod cuda_emu;
#[path = "common/emu_stats.rs"]
mod emu_stats;

use std::path::PathBuf;
use std::process::Command;

use emu_stats::EmuStats;

/// Runs `frostgrad bench` on the emulation and returns its counters.
fn bench_stats(tag: &str, args: &[&str], steps: usize) -> (EmuStats, String) {
    let dir = cuda_emu::emu_dir();
    let stats_path: PathBuf = std::env::temp_dir().join(format!(
        "frostgrad-budget-{}-{tag}-{steps}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_frostgrad"))
        .arg("bench")
        .args(args)
        .args(["--steps", &steps.to_string(), "--warmup", "1"])
        .env("LD_LIBRARY_PATH", dir)
        .env("FROSTGRAD_CUDA_EMU_STATS", &stats_path)
        .output()
        .expect("run frostgrad bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let stats = emu_stats::read(&stats_path);
    let _ = std::fs::remove_file(&stats_path);
    (stats, format!("{stdout}\n{stderr}"))
}

/// The cost of one step: (run with K + 2 steps - run with K steps) / 2.
fn per_step(tag: &str, args: &[&str]) -> (EmuStats, String) {
    let (a, _) = bench_stats(tag, args, 1);
    let (b, text) = bench_stats(tag, args, 3);
    let two = b.minus(&a);
    let half = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, &v)| {
                assert_eq!(v % 2, 0, "{k}: two steps cost an odd {v}: steps differ");
                (k.clone(), v / 2)
            })
            .collect()
    };
    (
        EmuStats {
            counters: half(&two.counters),
            kernels: half(&two.kernels),
        },
        text,
    )
}

/// Every check `FROSTGRAD_CUDA_EMU_CHECK` can name: any of them turns the pool off.
const ANY_CHECK: &[&str] = &["memcheck", "racecheck", "initcheck", "synccheck", "unused"];

/// A steady step makes no driver allocation. With a kernel check on, the
/// CUDA allocator keeps no pool (every tensor is an exact-size driver
/// allocation, src/backend/cuda/allocator.rs, so the checker sees each
/// buffer's bounds): then a step allocates by design, and what still holds
/// is that it frees everything it allocated. The rest of each budget
/// (copies, waits, launches) does not depend on the allocator.
fn assert_no_driver_allocations(allocs: u64, frees: u64, ctx: &str) {
    if cuda_emu::checks_on(ANY_CHECK).is_empty() {
        assert_eq!(allocs, 0, "driver allocations per step\n{ctx}");
        assert_eq!(frees, 0, "driver frees per step\n{ctx}");
    } else {
        assert!(allocs > 0, "a check is on, so the pool is off\n{ctx}");
        assert_eq!(allocs, frees, "a step frees what it allocates\n{ctx}");
    }
}

/// Kernel launches of one fine-tuning step of ResNet-18 at batch 2, 32x32,
/// on the emulated H200 (132 multiprocessors decide the split-K plans):
/// forward 20 convs, 20 batch norms (2 launches each), 8 residual tails
/// (`add_relu`, one launch each, written over bn2's output), max-pool,
/// average pool, linear (GEMM + bias), log-softmax, NLL loss; backward their
/// gradients (conv input and weight gradients, the split-K sums, batch-norm
/// reductions and input gradients, the tails' masks, the 8 block inputs'
/// gradient sums, ...); 20 running-stat updates and 20
/// `num_batches_tracked` increments; one fused SGD launch per parameter
/// (62). The per-kernel counts are printed on failure. (287 before the
/// residual tail was fused: a separate add and ReLU launch per block.)
const FINETUNE_LAUNCHES: u64 = 279;

#[test]
fn steady_state_training_step_stays_within_its_budget() {
    let (step, text) = per_step(
        "finetune",
        &[
            "--device", "cuda", "--modes", "finetune", "--batch", "2", "--size", "32",
        ],
    );
    let ctx = format!("{step:#?}\n{text}");
    assert_no_driver_allocations(step.get("allocs"), step.get("frees"), &ctx);
    assert_eq!(
        step.get("dtoh_calls"),
        0,
        "device-to-host copies per step\n{ctx}"
    );
    assert_eq!(
        step.get("syncs"),
        4,
        "host waits per step: one per phase boundary\n{ctx}"
    );
    assert_eq!(
        step.get("launches"),
        FINETUNE_LAUNCHES,
        "launches per step\n{ctx}"
    );
    // Two per batch norm layer and per step: no more host round trips for
    // num_batches_tracked, which now counts on the device.
    assert_eq!(step.kernels.get("increment_i64"), Some(&20), "{ctx}");
    assert_eq!(step.kernels.get("sgd_step"), Some(&62), "{ctx}");
}

#[test]
fn steady_state_inference_step_waits_twice_and_allocates_nothing() {
    let (step, text) = per_step(
        "inference",
        &[
            "--device",
            "cuda",
            "--modes",
            "inference",
            "--batch",
            "2",
            "--size",
            "32",
        ],
    );
    let ctx = format!("{step:#?}\n{text}");
    assert_no_driver_allocations(step.get("allocs"), step.get("frees"), &ctx);
    assert_eq!(step.get("dtoh_calls"), 0, "{ctx}");
    assert_eq!(step.get("syncs"), 2, "{ctx}");
    assert_eq!(
        step.kernels.get("increment_i64"),
        None,
        "eval mode counts no batch\n{ctx}"
    );
}

#[test]
fn bench_on_the_emulation_says_so_and_defaults_to_a_small_configuration() {
    let (_, text) = bench_stats("auto", &["--device", "auto", "--modes", "transfer"], 1);
    assert!(
        text.contains("--device auto: using cuda:0 (frostgrad CUDA emulation"),
        "{text}"
    );
    assert!(
        text.contains("the host emulation, not a GPU; its times are not GPU times"),
        "{text}"
    );
    assert!(
        text.contains("a small configuration (batch 2, 64x64)"),
        "{text}"
    );
    assert!(
        text.contains("ResNet-18, batch 2 at 64x64, device cuda:0 (frostgrad CUDA emulation"),
        "{text}"
    );
}

/// Steps of a small graph of the general op set (issue 15) on `cuda:0`:
/// a batched matmul, broadcasting add and multiply, tanh, a permuted
/// (strided) copy, row reductions, and its backward into two leaves.
fn general_op_steps(steps: usize) {
    use frostgrad::{ops, Device, Tensor};
    let dev = Device::Cuda(0);
    let values = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * scale)
            .collect()
    };
    let x = Tensor::from_vec(values(2 * 4 * 16, 0.1), &[2, 4, 16], dev).unwrap();
    let w = Tensor::from_vec(values(2 * 16 * 5, 0.05), &[2, 16, 5], dev)
        .and_then(|t| t.requires_grad_(true))
        .unwrap();
    let b = Tensor::from_vec(values(5, 0.2), &[5], dev)
        .and_then(|t| t.requires_grad_(true))
        .unwrap();
    for _ in 0..steps {
        let h = (&ops::matmul(&x, &w).unwrap() + &b).unwrap();
        let y = ops::tanh(&h).unwrap();
        let z = ops::permute(&y, &[0, 2, 1]).unwrap();
        let sq = (&z * &z).unwrap();
        let rows = ops::max_dims(&sq, &[2], false).unwrap();
        let loss = ops::sum_dims(&rows, &[0, 1], false).unwrap();
        loss.backward().unwrap();
    }
    // Nothing above read a value back; this does, once, after the steps.
    assert!(w.grad().is_some() && b.grad().is_some());
}

/// Runs `general_op_steps(1 + steps)` in a child on the emulation and
/// returns its counters.
fn general_op_stats(steps: usize) -> EmuStats {
    const NAME: &str = "general_op_graph_step_allocates_nothing_and_never_waits";
    let path = std::env::temp_dir().join(format!(
        "frostgrad-budget-{}-general-{steps}.json",
        std::process::id()
    ));
    let path_text = path.to_string_lossy().into_owned();
    let steps_text = steps.to_string();
    cuda_emu::run_emulated(
        NAME,
        &[
            ("FROSTGRAD_CUDA_EMU_STATS", &path_text),
            ("FROSTGRAD_BUDGET_STEPS", &steps_text),
        ],
    );
    let stats = emu_stats::read(&path);
    let _ = std::fs::remove_file(&path);
    stats
}

/// The general ops pass their layouts (shape and strides) inside the
/// kernel's parameter struct (they used to upload them into a fresh driver
/// allocation per op): a steady-state step of such a graph makes no driver
/// allocation, no host wait and no copy to the host. What it still copies
/// to the device are two 4-byte constants, asynchronously from pageable
/// memory (no wait): the backward's seed gradient of 1 and the 1 of tanh's
/// backward (1 - y²).
#[test]
fn general_op_graph_step_allocates_nothing_and_never_waits() {
    if let Ok(steps) = std::env::var("FROSTGRAD_BUDGET_STEPS") {
        // The child: one warm-up step, then the counted ones.
        general_op_steps(1 + steps.parse::<usize>().unwrap());
        return;
    }
    let a = general_op_stats(1);
    let b = general_op_stats(3);
    let two = b.minus(&a);
    let ctx = format!("two steps: {two:#?}");
    assert_no_driver_allocations(two.get("allocs"), two.get("frees"), &ctx);
    assert_eq!(two.get("dtoh_calls"), 0, "device-to-host copies\n{ctx}");
    assert_eq!(two.get("syncs"), 0, "host waits\n{ctx}");
    assert_eq!(two.get("htod_calls"), 4, "host-to-device copies\n{ctx}");
    assert_eq!(two.get("htod_bytes"), 16, "host-to-device bytes\n{ctx}");
    for kernel in ["batched_matmul_f32", "binary_f32", "strided_copy_f32"] {
        assert!(two.kernels.contains_key(kernel), "{kernel} not run\n{ctx}");
    }
}
