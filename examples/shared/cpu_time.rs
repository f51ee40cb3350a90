//! Process CPU time for the timing examples (`cpu_conv_timing`,
//! `gemm_timing`, `layer_timing`), which include this file with `#[path]`: on a machine
//! shared with other work, CPU time of a one-thread run is the kernel's own
//! time where wall time is not. A file in a subdirectory, so Cargo does not
//! take it for an example of its own.

/// CPU time this process has used, in seconds (all threads).
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Milliseconds of each of `reps` runs of `f`, after one untimed warm-up
/// run. With `CLOCK=cpu` the process's CPU time instead of wall time: on a
/// machine shared with other work, and with `RAYON_NUM_THREADS=1`, that is
/// the kernel's own time.
#[allow(dead_code)]
pub fn run_times_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> Vec<f64> {
    let cpu = std::env::var("CLOCK").is_ok_and(|c| c == "cpu");
    std::hint::black_box(f());
    (0..reps)
        .map(|_| {
            let (wall, start) = (std::time::Instant::now(), cpu_seconds());
            std::hint::black_box(f());
            if cpu {
                (cpu_seconds() - start) * 1e3
            } else {
                wall.elapsed().as_secs_f64() * 1e3
            }
        })
        .collect()
}
