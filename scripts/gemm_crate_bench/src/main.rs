//! frostgrad's GEMM paths (avx512, avx2, portable = matrixmultiply) against
//! the `gemm` crate (x86-v4) on the GEMM shapes ResNet-18's convolutions
//! issue (batch 8, one chunk each), one thread, CPU time, best of REPS.
//! Prints GFLOP/s; a one-off measurement for BENCHMARKS.md, not a test.
use frostgrad::backend::cpu::simd::{self, SimdPath};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::backend::BackendStorage;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..reps)
        .map(|_| {
            let c = cpu_seconds();
            std::hint::black_box(f());
            (cpu_seconds() - c) * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
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
        "{:<14} {:<4} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}  (GFLOP/s)",
        "layer", "gemm", "m", "k", "n", "avx512", "avx2", "mmul", "gemm-v4"
    );
    let mut totals = [0.0f64; 4];
    for (name, co, taps, cols) in layers {
        // (kind, m, k, n, a transposed, b transposed)
        for (kind, m, k, n, ta, tb) in [
            ("fwd", co, taps, cols, false, false),
            ("dx", taps, co, cols, true, false),
            ("dW", co, cols, taps, false, true),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let (sa, sb) = (CpuStorage::F32(a.clone()), CpuStorage::F32(b.clone()));
            let flop = 2.0 * (m * k * n) as f64;
            let mut ms = [0.0; 4];
            for (i, path) in [SimdPath::Avx512, SimdPath::Avx2, SimdPath::Portable]
                .into_iter()
                .enumerate()
            {
                simd::force(path).unwrap();
                ms[i] = best(reps, || sa.matmul(&sb, m, k, n, ta, tb).unwrap());
            }
            let mut c = vec![0f32; m * n];
            // Strides (column, row) of the logical m x k and k x n operands.
            let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
            let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
            // SAFETY: `c` is m x n (row stride n), `a` m x k and `b` k x n
            // with the strides above, all live for the call.
            ms[3] = best(reps, || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    a_cs,
                    a_rs,
                    b.as_ptr(),
                    b_cs,
                    b_rs,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            });
            // Same answer (spot check) so nobody is timing a no-op.
            let ours = sa.matmul(&sb, m, k, n, ta, tb).unwrap();
            let ours = ours.as_f32("x").unwrap();
            let err = ours
                .iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-2, "{name} {kind}: max diff {err}");
            for i in 0..4 {
                totals[i] += ms[i];
            }
            let g = |t: f64| flop / (t * 1e-3) / 1e9;
            println!(
                "{name:<14} {kind:<4} {m:>5} {k:>5} {n:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                g(ms[0]),
                g(ms[1]),
                g(ms[2]),
                g(ms[3])
            );
        }
    }
    println!(
        "total ms (one of each): avx512 {:.1}, avx2 {:.1}, matrixmultiply {:.1}, gemm x86-v4 {:.1}",
        totals[0], totals[1], totals[2], totals[3]
    );
}
