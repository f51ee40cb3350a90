//! Minor page faults of every training step, not just their median:
//! `cargo run --release --example step_faults -- [batch] [size] [steps] [modes]`.
//! Prints one line per mode with the faults of each step after the
//! warm-up (2 steps) and the buffer pool's misses per step. Used to find
//! what still faults in a steady state (BENCHMARKS.md, issue 9).

use frostgrad::backend::cpu::buffer_pool;
use frostgrad::bench::{self, BenchConfig};
use frostgrad::nn::resnet18;
use frostgrad::Device;
use rand::SeedableRng;

fn main() -> frostgrad::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let modes = args.get(3).map_or("finetune,transfer", String::as_str);
    let cfg = BenchConfig {
        device: Device::Cpu,
        batch: arg(0, 2),
        size: arg(1, 96),
        steps: arg(2, 20),
        warmup: 2,
        lr: 0.01,
        momentum: 0.9,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = resnet18(10, &mut rng)?;
    let modes = bench::parse_modes(modes)?;
    // Room for every step up front (growing it would fault).
    let mut rows: Vec<(String, Vec<(u64, u64)>)> = Vec::with_capacity(modes.len());
    let per_mode = || Vec::with_capacity(cfg.steps);
    let mut last = (0, 0);
    bench::run(&mut model, &modes, &cfg, |mode, done, _| {
        let now = (
            frostgrad::bench::machine::minor_faults().unwrap_or(0),
            buffer_pool::misses() + frostgrad::backend::cpu::scratch::growths(),
        );
        // Under `perf record -D -1 --control fifo:CTL`, count only the
        // steady-state steps of the first mode: PERF_CTL=CTL.
        if done == cfg.warmup && rows.is_empty() {
            if let Some(ctl) = std::env::var_os("PERF_CTL") {
                let _ = std::fs::write(ctl, "enable\n");
            }
        }
        if done > cfg.warmup {
            let d = (now.0 - last.0, now.1 - last.1);
            match rows.last_mut() {
                Some((m, v)) if m == mode => v.push(d),
                _ => {
                    let mut v = per_mode();
                    v.push(d);
                    rows.push((mode.to_string(), v))
                }
            }
        }
        last = now;
        // TRACE_MISS=1: glibc's heap counters and the pool's held bytes
        // after every step (the heap creeping is what still faults).
        if std::env::var_os("TRACE_MISS").is_some() {
            eprintln!(
                "STEP {mode} {done} faults {} {} held {}",
                now.0,
                heap_counters(),
                buffer_pool::held_bytes()
            );
        }
    })?;
    for (mode, v) in rows {
        let faults: Vec<u64> = v.iter().map(|p| p.0).collect();
        let misses: Vec<u64> = v.iter().map(|p| p.1).collect();
        println!("{mode}: faults {faults:?}\n{mode}: pool misses + scratch growths {misses:?}");
    }
    Ok(())
}

/// glibc's arena size, bytes in use and free bytes at the heap's top.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_counters() -> String {
    // SAFETY: mallinfo2 only reads glibc's counters.
    let mi = unsafe { libc::mallinfo2() };
    format!(
        "arena {} in-use {} top {}",
        mi.arena, mi.uordblks, mi.keepcost
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_counters() -> String {
    String::new()
}
