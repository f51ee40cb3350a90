//! Elementwise maps and the simple reductions (sums, row/column sums).
//!
//! Large buffers are split across rayon's threads in fixed-size chunks.
//! Reductions accumulate in f64 and combine the per-chunk partial sums in
//! chunk order, so results are accurate and do not depend on scheduling.

use rayon::prelude::*;

use super::buffer_pool;
use crate::error::Result;

/// Elements per parallel task (64 KiB of f32): big enough that rayon's
/// per-task cost is small beside the work, small enough that a 100k-element
/// buffer still splits into several tasks. Not tuned by a benchmark: a change
/// would have to show in `frostgrad bench`'s step times (BENCHMARKS.md,
/// "CPU: ResNet-18 training step"), measured the way that section does.
pub(super) const PAR_CHUNK: usize = 1 << 14;

/// `f(x)` of every element.
pub(super) fn map(op: &'static str, x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Result<Vec<f32>> {
    let mut out = buffer_pool::uninit(op, x.len())?;
    out.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
    Ok(out)
}

/// `f(a, b)` of every pair of elements; the lengths must match.
pub(super) fn zip_map(
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Vec<f32>> {
    let mut out = buffer_pool::uninit("elementwise", a.len())?;
    out.par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b))
        });
    Ok(out)
}

pub(super) fn add(a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    zip_map(a, b, |a, b| a + b)
}

/// `a += b`: [`add`] over `a` itself (read two, write one, no new buffer).
/// 8 lanes wide on the AVX2 path ([`with_avx2`]).
pub(super) fn add_assign(a: &mut [f32], b: &[f32]) {
    let path = super::simd::active();
    in_place_pass(a, b, |a, b| {
        with_avx2(
            path,
            #[inline(always)]
            || a.iter_mut().zip(b).for_each(|(a, &b)| *a += b),
        )
    });
}

/// `body(a, b)` over `a` and `b` (the same length) in one call on the
/// calling thread when [`on_caller`] says so, else over their
/// [`PAR_CHUNK`]-long pieces on rayon's pool. Every in-place pass of this
/// module goes through here, so all share one rule for when to split.
/// `body` must treat each element on its own (no carry across elements):
/// then both forms give the same bits.
fn in_place_pass(a: &mut [f32], b: &[f32], body: impl Fn(&mut [f32], &[f32]) + Sync) {
    if on_caller(a.len()) {
        note_task();
        body(a, b);
        return;
    }
    a.par_chunks_mut(PAR_CHUNK)
        .zip(b.par_chunks(PAR_CHUNK))
        .for_each(|(a, b)| {
            note_task();
            body(a, b)
        });
}

/// Marks one task of a pass that [`on_caller`] or [`min_len`] places
/// (the in-place passes, `sgd_step`, batch norm's passes) as run on this
/// thread, for the unit tests that check each pass follows the rule
/// (`count_tasks`, built for tests only); nothing outside them.
#[inline(always)]
pub(super) fn note_task() {
    #[cfg(test)]
    TASKS_HERE.with(|t| t.set(t.get() + 1));
}

#[cfg(test)]
thread_local! {
    /// Unit tests: the tasks [`note_task`] marked on this thread.
    static TASKS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Unit tests: the tasks ([`note_task`]) that ran while `body` ran, on the
/// calling thread and on the threads of `pool` (the test's own, so no
/// other test's tasks land there).
#[cfg(test)]
pub(super) fn count_tasks(pool: &rayon::ThreadPool, body: impl FnOnce()) -> (u64, u64) {
    let here = || TASKS_HERE.with(std::cell::Cell::get);
    let on_pool = || {
        pool.broadcast(|_| TASKS_HERE.with(std::cell::Cell::get))
            .iter()
            .sum::<u64>()
    };
    let (here0, pool0) = (here(), on_pool());
    body();
    (here() - here0, on_pool() - pool0)
}

/// Elements up to which an in-place pass runs on the calling thread:
/// PyTorch's grain size (`at::internal::GRAIN_SIZE`, 32 768), below which
/// its `parallel_for` does not split either.
pub(super) const ON_CALLER_MAX: usize = 1 << 15;

/// Whether a pass over `len` elements runs on the calling thread instead of
/// rayon's pool: when it is small ([`ON_CALLER_MAX`]), or the pool has one
/// thread. Why: a parallel loop called from outside the pool hands its
/// tasks to a worker and sleeps until they are done (rayon's injection and
/// a latch), a fixed cost of a few microseconds that a split of a small
/// pass, or no split at all, does not pay back: `grad_add` at batch 1 was
/// 1.25-2.8x PyTorch's one-thread CPU time on ResNet's 64x56x56 to
/// 512x7x7 (commit message of this function).
pub(super) fn on_caller(len: usize) -> bool {
    len <= ON_CALLER_MAX || rayon::current_num_threads() <= 1
}

/// `with_min_len` for a rayon loop over a pass of `len` elements whose
/// tasks take at least `min` items each: when [`on_caller`] says so, more
/// items than any loop has, so rayon does not split the loop and runs its
/// tasks one after another on the calling thread (rayon hands work to its
/// pool only when it splits); `min` otherwise. For loops whose tasks must
/// stay as they are (batch norm's blocks of channels), where
/// [`in_place_pass`] does not fit: the same tasks either way.
pub(super) fn min_len(len: usize, min: usize) -> usize {
    if on_caller(len) {
        usize::MAX
    } else {
        min
    }
}

/// Runs `body` compiled with AVX2 when `path` (the active SIMD path, looked
/// up once per call) is AVX2, compiled for the baseline target otherwise.
///
/// Why: the in-place sums of the residual blocks ([`add_assign`],
/// [`add_relu_assign`]) at the baseline target are 4 lanes wide; 8 wide
/// they took 0.81-0.92x the CPU time on ResNet's 56x56, 28x28 and 14x14
/// planes at batch 8, where the data is in L2 or L3 (Zen 2, AMD EPYC family
/// 23 model 49, one thread, alternating runs against the previous build;
/// commit 91cb336, BENCHMARKS.md issue 9 item 42). On 7x7 planes, whose
/// data is in L1, it is a wash (grad_add 0.97x, add_relu 1.07x, 3 us), so
/// it applies at every size. Only these two: compiled so, ReLU's in-place
/// backward became a masked store (`vmaskmovps`) 1.9-3.7x slower on Zen
/// 2, and batch norm's `dx` pass measured slower (see
/// `batch_norm::lane_sums_dispatch`). The AVX-512 path keeps the baseline
/// loops (not measured: no AVX-512 CPU in that session).
/// Same operations in the same order (no FMA contraction), so the same
/// bits on every path.
#[inline(always)]
fn with_avx2<R>(path: super::simd::SimdPath, body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if path == super::simd::SimdPath::Avx2 {
        // SAFETY: `path` came from `simd::active()`, which only returns a
        // path the CPU supports, and AVX2 is exactly what `run_avx2` enables.
        return unsafe { run_avx2(body) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    body()
}

/// `body` inside a function compiled with AVX2 (see [`with_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

pub(super) fn scale(x: &[f32], factor: f32) -> Result<Vec<f32>> {
    map("scale", x, |v| v * factor)
}

/// PyTorch's relu keeps NaN (it is `clamp_min(x, 0)` with NaN propagation).
#[inline]
fn relu1(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

pub(super) fn relu(x: &[f32]) -> Result<Vec<f32>> {
    map("relu", x, relu1)
}

/// `relu(a + b)` in one pass: the sum is rounded to f32 first, exactly as
/// [`add`] then [`relu`] compute it, but never written out.
pub(super) fn add_relu(a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    zip_map(a, b, |a, b| relu1(a + b))
}

/// [`add_relu`] over `a` itself: reads `a` and `b`, writes `a`, and so
/// needs no output buffer (nor the cache misses of first writes to one).
pub(super) fn add_relu_assign(a: &mut [f32], b: &[f32]) {
    let path = super::simd::active();
    in_place_pass(a, b, |a, b| {
        with_avx2(
            path,
            #[inline(always)]
            || a.iter_mut().zip(b).for_each(|(a, &b)| *a = relu1(*a + b)),
        )
    });
}

/// PyTorch's `threshold_backward(grad, output, 0)`: zero where
/// `output <= 0`, the gradient elsewhere. That is "where output > 0" for
/// every number; a NaN output (relu of NaN) passes its gradient on, as in
/// PyTorch.
pub(super) fn relu_backward(grad: &[f32], output: &[f32]) -> Result<Vec<f32>> {
    zip_map(grad, output, |g, y| if y <= 0.0 { 0.0 } else { g })
}

/// [`relu_backward`] over `grad` itself: read two, write one, no new buffer.
pub(super) fn relu_backward_assign(grad: &mut [f32], output: &[f32]) {
    in_place_pass(grad, output, |g, y| {
        g.iter_mut()
            .zip(y)
            .for_each(|(g, &y)| *g = if y <= 0.0 { 0.0 } else { *g })
    });
}

/// Sum of all elements, accumulated in f64.
pub(super) fn sum_all(x: &[f32]) -> f32 {
    let partial: Vec<f64> = x
        .par_chunks(PAR_CHUNK)
        .map(|c| c.iter().map(|&v| f64::from(v)).sum::<f64>())
        .collect();
    partial.iter().sum::<f64>() as f32
}

/// `value` repeated `len` times; `scalar` must hold one element.
pub(super) fn broadcast_scalar(scalar: &[f32], len: usize) -> Result<Vec<f32>> {
    buffer_pool::filled("broadcast_scalar", len, scalar[0])
}

/// `x[r, c] + row[c]` for a `[rows, cols]` matrix.
pub(super) fn add_row_vector(x: &[f32], row: &[f32], cols: usize) -> Result<Vec<f32>> {
    let mut out = buffer_pool::copy_of("add_row_vector", x)?;
    if cols > 0 {
        out.par_chunks_mut(cols)
            .with_min_len(PAR_CHUNK.div_ceil(cols))
            .for_each(|r| r.iter_mut().zip(row).for_each(|(o, &b)| *o += b));
    }
    Ok(out)
}

/// Column sums of a `[rows, cols]` matrix (the bias gradient of a linear
/// layer), accumulated in f64.
pub(super) fn sum_rows(x: &[f32], cols: usize) -> Result<Vec<f32>> {
    let mut acc = vec![0f64; cols];
    if cols > 0 {
        for r in x.chunks_exact(cols) {
            acc.iter_mut().zip(r).for_each(|(a, &v)| *a += f64::from(v));
        }
    }
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

/// `1 / sqrt(x + eps)`, computed in f64 and rounded once.
pub(super) fn inv_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + f64::from(eps)).sqrt()) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two deterministic operands of `n` values in [-0.5, 0.5).
    fn operands(n: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5)
            .collect();
        (a, b)
    }

    #[test]
    fn relu_keeps_nan_and_zeroes_negatives() {
        let y = relu(&[-1.0, 0.0, 2.5, f32::NAN, f32::NEG_INFINITY]).unwrap();
        assert_eq!(&y[..3], &[0.0, 0.0, 2.5]);
        assert!(y[3].is_nan());
        assert_eq!(y[4], 0.0);
    }

    #[test]
    fn relu_backward_passes_gradient_where_output_positive() {
        let g = relu_backward(&[1.0, 2.0, 3.0, 4.0], &[0.0, 0.5, -0.0, f32::NAN]).unwrap();
        assert_eq!(g, vec![0.0, 2.0, 0.0, 4.0]);
        let mut g = vec![1.0, 2.0, 3.0, 4.0];
        relu_backward_assign(&mut g, &[0.0, 0.5, -0.0, f32::NAN]);
        assert_eq!(g, vec![0.0, 2.0, 0.0, 4.0]);
    }

    #[test]
    fn add_relu_is_add_then_relu_in_and_out_of_place() {
        // Several parallel chunks, and the edge cases of relu: NaN kept,
        // -0.0 and negatives zeroed, a sum that rounds.
        let n = 3 * PAR_CHUNK + 5;
        let (mut a, mut b) = operands(n);
        a[..5].copy_from_slice(&[f32::NAN, -0.0, 1.0, -1.0, 1e8]);
        b[..5].copy_from_slice(&[1.0, 0.0, -1.0, 0.5, 1.0]);
        let expected = relu(&add(&a, &b).unwrap()).unwrap();
        let fused = add_relu(&a, &b).unwrap();
        let mut in_place = a.clone();
        add_relu_assign(&mut in_place, &b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&expected));
        assert_eq!(bits(&in_place), bits(&expected));
        assert!(fused[0].is_nan());
        assert_eq!(fused[1].to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn in_place_passes_match_scalar_loops_on_every_path() {
        // Every in-place pass (`in_place_pass`: `add_assign`,
        // `add_relu_assign`, `relu_backward_assign`) bit for bit the scalar
        // definition on each SIMD path (the first two are compiled per path,
        // `with_avx2`), over several parallel chunks and a tail shorter than
        // a vector, with relu's edge cases (NaN kept, -0.0 and negatives
        // zeroed) at the start, at a chunk boundary and at the end. Both
        // forms: on the calling thread (up to ON_CALLER_MAX elements, or a
        // one-thread pool) and split across a two-thread pool; a split that
        // dropped, repeated or shifted a chunk would change the bits.
        use super::super::simd;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let edges_a = [f32::NAN, -0.0, 1.0, -1.0, 1e8];
        let edges_b = [1.0, 0.0, -1.0, 0.5, 1.0];
        for n in [ON_CALLER_MAX - 3, 2 * PAR_CHUNK + 13, 5 * PAR_CHUNK + 1] {
            let (mut a, mut b) = operands(n);
            for at in [0, PAR_CHUNK - 2, n - 5] {
                a[at..at + 5].copy_from_slice(&edges_a);
                b[at..at + 5].copy_from_slice(&edges_b);
            }
            let sum: Vec<f32> = a.iter().zip(&b).map(|(&a, &b)| a + b).collect();
            let sum_relu: Vec<f32> = sum.iter().map(|&v| relu1(v)).collect();
            // `relu_backward_assign(a, sum)`: a's gradient where the sum
            // (NaN, 0.0, negatives and positives at the edges) is > 0 or NaN.
            let masked: Vec<f32> = a
                .iter()
                .zip(&sum)
                .map(|(&g, &y)| if y > 0.0 || y.is_nan() { g } else { 0.0 })
                .collect();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let caller = pool.install(|| on_caller(n));
                assert_eq!(caller, threads == 1 || n <= ON_CALLER_MAX, "{n} {threads}");
                simd::on_every_path(&pool, |path| {
                    let (added, added_relu, relu_bwd) = pool.install(|| {
                        let (mut s, mut r, mut m) = (a.clone(), a.clone(), a.clone());
                        add_assign(&mut s, &b);
                        add_relu_assign(&mut r, &b);
                        relu_backward_assign(&mut m, &sum);
                        (s, r, m)
                    });
                    let what = format!("{} n {n} threads {threads}", path.name());
                    assert_eq!(bits(&added), bits(&sum), "{what}");
                    assert_eq!(bits(&added_relu), bits(&sum_relu), "{what}");
                    assert_eq!(bits(&relu_bwd), bits(&masked), "{what}");
                });
            }
        }
    }

    #[test]
    fn each_in_place_pass_runs_where_on_caller_says() {
        // Not only the rule (`on_caller`) but each pass's following it,
        // seen through the tasks it marks (`note_task`). From a test's own
        // thread, which is outside every rayon pool: a pass the rule keeps
        // on the caller runs here in one task (the empty pass included),
        // up to ON_CALLER_MAX elements, two chunks, which a split would
        // hand to the global pool; above it, where the global pool has
        // more than one thread, no task runs here. Inside a pool: one task
        // (one thread) or one per chunk (two threads).
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "a test thread is in no pool"
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        type Pass = fn(&mut [f32], &[f32]);
        type Definition = fn(f32, f32) -> f32;
        let passes: [(&str, Pass, Definition); 3] = [
            ("add_assign", add_assign, |a, b| a + b),
            ("add_relu_assign", add_relu_assign, |a, b| relu1(a + b)),
            ("relu_backward_assign", relu_backward_assign, |g, y| {
                if y <= 0.0 {
                    0.0
                } else {
                    g
                }
            }),
        ];
        let check = |n: usize, pool: &rayon::ThreadPool, inside: bool| {
            let (a, b) = operands(n);
            for (name, pass, f) in passes {
                let mut got = a.clone();
                let (here, on_pool) = if inside {
                    count_tasks(pool, || pool.install(|| pass(&mut got, &b)))
                } else {
                    count_tasks(pool, || pass(&mut got, &b))
                };
                let want: Vec<f32> = a.iter().zip(&b).map(|(&a, &b)| f(a, b)).collect();
                let what = format!("{name} n {n} inside a pool {inside}");
                assert_eq!(bits(&got), bits(&want), "{what}");
                if inside {
                    let one = pool.install(|| on_caller(n));
                    let want = if one { 1 } else { n.div_ceil(PAR_CHUNK) as u64 };
                    assert_eq!(
                        (here, on_pool),
                        (0, want),
                        "{what}: tasks here, on the pool"
                    );
                } else {
                    let want = u64::from(on_caller(n));
                    assert_eq!(here, want, "{what}: tasks on the calling thread");
                }
            }
        };
        let idle = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for n in [
            0,
            1,
            100,
            PAR_CHUNK + 1,
            ON_CALLER_MAX,
            ON_CALLER_MAX + 1,
            3 * PAR_CHUNK + 7,
        ] {
            check(n, &idle, false);
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for n in [0, ON_CALLER_MAX, 3 * PAR_CHUNK + 7] {
                check(n, &pool, true);
            }
        }
    }

    #[test]
    fn sum_all_is_accurate_over_many_chunks() {
        // 1e-4 is not exact in f32; f32 accumulation of 1e6 of them drifts
        // visibly, f64 accumulation stays within one rounding of the sum.
        let x = vec![1e-4f32; 1_000_000];
        let expected = f64::from(1e-4f32) * 1e6;
        assert!((f64::from(sum_all(&x)) - expected).abs() < 1e-5);
    }

    #[test]
    fn row_vector_and_column_sums() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            add_row_vector(&x, &[10.0, 20.0, 30.0], 3).unwrap(),
            vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
        );
        assert_eq!(sum_rows(&x, 3).unwrap(), vec![5.0, 7.0, 9.0]);
    }

    #[test]
    fn add_scale_broadcast() {
        assert_eq!(add(&[1.0, 2.0], &[3.0, 4.0]).unwrap(), vec![4.0, 6.0]);
        let n = 2 * PAR_CHUNK + 3;
        let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let mut acc = a.clone();
        add_assign(&mut acc, &b);
        assert_eq!(acc, add(&a, &b).unwrap());
        assert_eq!(scale(&[1.0, -2.0], 0.5).unwrap(), vec![0.5, -1.0]);
        assert_eq!(broadcast_scalar(&[3.0], 3).unwrap(), vec![3.0; 3]);
    }
}
