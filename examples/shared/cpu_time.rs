//! Process CPU time for the timing examples (`cpu_conv_timing`,
//! `layer_timing`), which include this file with `#[path]`: on a machine
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
