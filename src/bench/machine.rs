//! What the benchmark knows about the machine it runs on.

use crate::backend::cpu::simd::SimdPath;

/// The CPU's model name with its family and model numbers (a VM may name
/// only "AMD EPYC"; the family tells the generation: 25 Zen 3/4, 26 Zen 5),
/// from `/proc/cpuinfo`, or "unknown CPU".
pub fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown CPU".into();
    };
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(fam), Some(model)) => format!("{name} (family {fam}, model {model})"),
        (Some(name), _, _) => name,
        _ => "unknown CPU".into(),
    }
}

/// Minor page faults of this process so far (`getrusage(RUSAGE_SELF)`,
/// every thread), or `None` where that is not available.
pub fn minor_faults() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a valid, writable `rusage`; getrusage only
        // writes into it and returns nonzero on failure, checked below.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised and filled by a successful getrusage.
        let usage = unsafe { usage.assume_init() };
        u64::try_from(usage.ru_minflt).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The f32 FLOP rate one SIMD path's fused multiply-adds reach on this
/// machine with `threads` threads, measured by [`probe_peak`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeakGflops {
    /// A [`SimdPath`] name.
    pub path: String,
    pub threads: usize,
    pub gflops: f64,
}

/// Measures peak f32 GFLOP/s with a short FMA probe: every thread runs
/// twelve independent multiply-add chains (enough to cover the FMA
/// latency on every x86 core since Haswell) in registers of the path's
/// width, touching no memory. Best of several ~2 ms trials, all threads
/// started together, so a trial the scheduler interrupted does not count.
/// `Portable` times the same chains written as plain Rust, compiled for
/// the baseline target (what code without run-time dispatch gets).
/// About 30 ms per call.
pub fn probe_peak(path: SimdPath, threads: usize) -> PeakGflops {
    let threads = threads.max(1);
    let barrier = std::sync::Barrier::new(threads);
    const TRIALS: usize = 12;
    // Iterations per trial: ~2 ms at the FLOP rates of current cores.
    let iters = 40_000;
    let best = (0..TRIALS)
        .map(|_| {
            let flops_and_secs: Vec<(f64, f64)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let t = std::time::Instant::now();
                            let flops = fma_chains(path, iters);
                            (flops, t.elapsed().as_secs_f64())
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            let flops: f64 = flops_and_secs.iter().map(|&(f, _)| f).sum();
            let secs = flops_and_secs.iter().map(|&(_, t)| t).fold(0.0, f64::max);
            if secs > 0.0 {
                flops / secs / 1e9
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max);
    PeakGflops {
        path: path.name().to_string(),
        threads,
        gflops: best,
    }
}

/// Peak GFLOP/s of every SIMD path this CPU supports, on one thread and
/// on `threads` (when more than one).
pub fn probe_peaks(threads: usize) -> Vec<PeakGflops> {
    let counts: Vec<usize> = if threads > 1 {
        vec![1, threads]
    } else {
        vec![1]
    };
    crate::backend::cpu::simd::supported()
        .into_iter()
        .flat_map(|p| counts.iter().map(move |&t| probe_peak(p, t)))
        .collect()
}

/// Runs `iters` rounds of twelve FMA chains on `path`; returns the FLOPs.
fn fma_chains(path: SimdPath, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    match path {
        // SAFETY (both): each path is probed only where `supported()`
        // reports the CPU features its kernel is compiled for.
        SimdPath::Avx512 if path.is_supported() => {
            let sum = unsafe { x86::fma_avx512(iters) };
            std::hint::black_box(sum);
            return (iters * 12 * 16 * 2) as f64;
        }
        SimdPath::Avx2 if path.is_supported() => {
            let sum = unsafe { x86::fma_avx2(iters) };
            std::hint::black_box(sum);
            return (iters * 12 * 8 * 2) as f64;
        }
        _ => {}
    }
    let _ = path;
    // Twelve chains of four lanes, written plainly: the compiler keeps
    // them in baseline SIMD registers (mul + add without an FMA unit).
    let mut acc = [[1.0f32; 4]; 12];
    let (a, b) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    std::hint::black_box(acc);
    (iters * 12 * 4 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Twelve 16-lane FMA chains, `iters` rounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_avx512(iters: usize) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for v in acc {
            sum = _mm512_add_ps(sum, v);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// Twelve 8-lane FMA chains, `iters` rounds.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_avx2(iters: usize) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm256_setzero_ps();
        for v in acc {
            sum = _mm256_add_ps(sum, v);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fma_probe_measures_every_supported_path() {
        let peaks = probe_peaks(2);
        let paths = crate::backend::cpu::simd::supported();
        assert_eq!(peaks.len(), 2 * paths.len());
        for (p, path) in peaks.chunks(2).zip(paths) {
            assert_eq!((p[0].path.as_str(), p[0].threads), (path.name(), 1));
            assert_eq!(p[1].threads, 2);
            // A rate was measured (how fast is not this test's business).
            assert!(
                p.iter().all(|p| p.gflops.is_finite() && p.gflops > 0.0),
                "{p:?}"
            );
        }
        // The FLOPs counted per round: twelve chains, lanes x 2.
        assert_eq!(fma_chains(SimdPath::Portable, 10), (10 * 12 * 4 * 2) as f64);
    }

    #[test]
    fn cpu_model_is_named() {
        assert!(!cpu_model().is_empty());
    }

    #[test]
    fn touching_fresh_pages_counts_minor_faults() {
        let Some(before) = minor_faults() else {
            return;
        };
        // 64 MiB of fresh zeroed memory (calloc maps it untouched), one
        // write per page.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let after = minor_faults().unwrap();
        assert!(after - before >= 1000, "{before} -> {after}");
    }
}
