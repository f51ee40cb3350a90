//! Informal timing of the CPU SGEMM alone (`CpuStorage::matmul`, dense
//! operands, active SIMD path) on the GEMM shapes ResNet-18's convolutions
//! issue at batch 8 (one image-group chunk each: forward `C_out x taps x
//! cols`, input gradient `taps x C_out x cols`, weight gradient `C_out x
//! cols x taps`), plus one large product whose packing cost is negligible
//! (the micro-kernel's own rate). Prints GFLOP/s per shape and the total;
//! asserts nothing. For tuning the blocking in `backend/cpu/microkernel.rs`:
//!
//! ```text
//! CLOCK=cpu RAYON_NUM_THREADS=1 REPS=5 cargo run --release --example gemm_timing
//! ```
//!
//! `CLOCK=cpu` times process CPU time (steadier on a shared machine with one
//! thread); `REPS` (default 5) timed repeats per shape, median reported;
//! `FILTER` keeps the shapes whose `layer kind` name contains it.

#[path = "shared/cpu_time.rs"]
mod cpu_time;
use cpu_time::run_times_ms;

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::BackendStorage;

/// Median of `reps` runs, in milliseconds (wall, or CPU time with
/// `CLOCK=cpu`: see [`run_times_ms`]).
fn median_ms<T>(reps: usize, f: impl FnMut() -> T) -> f64 {
    let mut t = run_times_ms(reps, f);
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> frostgrad::Result<()> {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // (name, C_out, taps, chunk columns)
    let layers = [
        ("stem 7x7", 64, 147, 7056),
        ("3x3 64 @56", 64, 576, 1792),
        ("3x3 128 @28", 128, 1152, 784),
        ("3x3 256 @14", 256, 2304, 392),
        ("3x3 512 @7", 512, 4608, 196),
    ];
    println!(
        "{:<14} {:<4} {:>5} {:>5} {:>5} {:>9} {:>9}",
        "layer", "gemm", "m", "k", "n", "ms", "GFLOP/s"
    );
    let mut total = 0.0;
    let filter = std::env::var("FILTER").unwrap_or_default();
    let run = |name: &str, kind: &str, m: usize, k: usize, n: usize, ta: bool, tb: bool| {
        if !format!("{name} {kind}").contains(&filter) {
            return 0.0;
        }
        let a = CpuStorage::F32(
            (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect(),
        );
        let b = CpuStorage::F32(
            (0..k * n)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
                .collect(),
        );
        let ms = median_ms(reps, || a.matmul(&b, m, k, n, ta, tb).unwrap());
        let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e-3) / 1e9;
        println!("{name:<14} {kind:<4} {m:>5} {k:>5} {n:>5} {ms:>9.2} {gflops:>9.1}");
        ms
    };
    for (name, co, taps, cols) in layers {
        total += run(name, "fwd", co, taps, cols, false, false);
        total += run(name, "dx", taps, co, cols, true, false);
        total += run(name, "dW", co, cols, taps, false, true);
    }
    println!("total ms (one of each of the 15 above): {total:.1}");
    run("large", "nn", 1152, 1024, 2048, false, false);
    Ok(())
}
