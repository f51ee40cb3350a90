//! Which SIMD code path the CPU GEMM runs, chosen once at run time.
//!
//! The machines this project runs on change between sessions (AVX2 one
//! day, AVX-512 the next), so the kernels are compiled for every path and
//! the best one the CPU supports is picked when first needed.
//! `FROSTGRAD_SIMD=avx512|avx2|portable` forces a path (an unknown value,
//! or a path the CPU lacks, falls back to the best supported one with a
//! warning on stderr, so a forced comparison never silently measures the
//! wrong path); tests switch paths with [`force`] so that every path the
//! machine supports is checked.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::error::{Error, Result};

/// A GEMM code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdPath {
    /// Hand-written AVX-512F micro-kernel (8x32 tile).
    Avx512,
    /// Hand-written AVX2 + FMA micro-kernel (6x16 tile).
    Avx2,
    /// `matrixmultiply`'s kernels: any CPU, any architecture.
    Portable,
}

impl SimdPath {
    pub const ALL: [SimdPath; 3] = [SimdPath::Avx512, SimdPath::Avx2, SimdPath::Portable];

    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx512 => "avx512",
            SimdPath::Avx2 => "avx2",
            SimdPath::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<SimdPath> {
        Self::ALL.into_iter().find(|p| p.name() == s.trim())
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            // The AVX-512 kernels also run AVX2 + FMA code (the narrow
            // last panel, microkernel.rs), which `avx512f` implies when
            // compiling but not in CPUID: a VM may show one without the
            // others, so all three are checked.
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            SimdPath::Avx512 | SimdPath::Avx2 => false,
            SimdPath::Portable => true,
        }
    }

    fn code(self) -> u8 {
        match self {
            SimdPath::Avx512 => 1,
            SimdPath::Avx2 => 2,
            SimdPath::Portable => 3,
        }
    }

    fn from_code(c: u8) -> Option<SimdPath> {
        Self::ALL.into_iter().find(|p| p.code() == c)
    }
}

/// Minor page faults taken inside `matrixmultiply::sgemm`, the portable
/// path's GEMM, on the threads that called it, while counting was on
/// ([`count_portable_gemm_faults`], or `FROSTGRAD_COUNT_GEMM_FAULTS=1`);
/// None while it is off, and where a thread's own fault count cannot be
/// read (Linux only).
///
/// Why: matrixmultiply allocates its packing buffers through the system
/// allocator on every call, outside this crate's buffer pool and scratch.
/// glibc serves them from the calling thread's arena, which grows (and
/// faults its new pages in) the first time a thread needs more of it, in
/// whichever step rayon first hands that thread a large product: bursts of
/// 60-330 faults in about one portable run of three of
/// `tests/cpu_buffer_pool.rs` (commit message of this function). That test
/// checks every other fault of a step against the AVX paths' bounds.
pub fn portable_gemm_faults() -> Option<u64> {
    if !counting_gemm_faults() {
        return None;
    }
    thread_minor_faults().map(|_| PORTABLE_GEMM_FAULTS.load(Ordering::Relaxed))
}

static PORTABLE_GEMM_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Whether [`counting_portable_faults`] counts: 0 until decided (by
/// `FROSTGRAD_COUNT_GEMM_FAULTS` on first use, or by
/// [`count_portable_gemm_faults`]), then 1 off, 2 on.
static COUNTING: AtomicU8 = AtomicU8::new(0);

/// Turns the counting of [`portable_gemm_faults`] on or off for the rest
/// of the process (overriding `FROSTGRAD_COUNT_GEMM_FAULTS`). Off by
/// default: it costs two `getrusage` system calls around every portable
/// GEMM call, which every portable user (every non-x86 one) would pay for
/// a test's sake. `tests/cpu_buffer_pool.rs` turns it on.
pub fn count_portable_gemm_faults(on: bool) {
    COUNTING.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the faults inside matrixmultiply are counted now: as set by
/// [`count_portable_gemm_faults`], else on only where
/// `FROSTGRAD_COUNT_GEMM_FAULTS` is `1` (read once).
fn counting_gemm_faults() -> bool {
    match COUNTING.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            let on = super::env_switch::choice(&ENV, "FROSTGRAD_COUNT_GEMM_FAULTS", counts_faults);
            // (A racing `count_portable_gemm_faults` wins.)
            let _ = COUNTING.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            COUNTING.load(Ordering::Relaxed) == 2
        }
    }
}

/// `FROSTGRAD_COUNT_GEMM_FAULTS`'s rule for a trimmed value: on for `1`
/// only.
fn counts_faults(value: Option<&str>) -> bool {
    value == Some("1")
}

/// Runs `f` (a matrixmultiply call), adding the minor faults the calling
/// thread takes meanwhile to [`portable_gemm_faults`] while counting is on
/// ([`count_portable_gemm_faults`]); otherwise just runs it.
pub(super) fn counting_portable_faults<R>(f: impl FnOnce() -> R) -> R {
    if !counting_gemm_faults() {
        return f();
    }
    let before = thread_minor_faults();
    let result = f();
    if let (Some(before), Some(after)) = (before, thread_minor_faults()) {
        PORTABLE_GEMM_FAULTS.fetch_add(after.saturating_sub(before), Ordering::Relaxed);
    }
    result
}

/// The calling thread's minor page faults so far.
#[cfg(target_os = "linux")]
fn thread_minor_faults() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; getrusage only writes
    // into it and returns nonzero on failure, checked below.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised and filled by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_minflt).ok()
}

#[cfg(not(target_os = "linux"))]
fn thread_minor_faults() -> Option<u64> {
    None
}

/// Every path this CPU supports, fastest first.
pub fn supported() -> Vec<SimdPath> {
    SimdPath::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect()
}

/// 0 until the first GEMM (or [`force`]) decides.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The path the GEMM runs now.
pub fn active() -> SimdPath {
    #[cfg(test)]
    if let Some(p) = THREAD_PATH.with(std::cell::Cell::get) {
        return p;
    }
    if let Some(p) = SimdPath::from_code(ACTIVE.load(Ordering::Relaxed)) {
        return p;
    }
    let requested = std::env::var("FROSTGRAD_SIMD").ok();
    let (p, warning) = choose(requested.as_deref(), &supported());
    // Threads racing here decide the same; only the first one warns.
    let first = ACTIVE.swap(p.code(), Ordering::Relaxed) == 0;
    if let (true, Some(w)) = (first, warning) {
        eprintln!("frostgrad: {w}");
    }
    p
}

/// The path for a `FROSTGRAD_SIMD` value, given the paths this CPU
/// supports (fastest first, `portable` last), and a warning when the value
/// cannot be honoured.
fn choose(requested: Option<&str>, supported: &[SimdPath]) -> (SimdPath, Option<String>) {
    let best = supported[0];
    let Some(value) = requested.map(str::trim).filter(|v| !v.is_empty()) else {
        return (best, None);
    };
    match SimdPath::parse(value) {
        Some(p) if supported.contains(&p) => (p, None),
        Some(p) => (
            best,
            Some(format!(
                "FROSTGRAD_SIMD={value}: this CPU cannot run the {} path; using {}",
                p.name(),
                best.name()
            )),
        ),
        None => (
            best,
            Some(format!(
                "FROSTGRAD_SIMD={value} is not a path (avx512, avx2 or portable); using {}",
                best.name()
            )),
        ),
    }
}

/// Runs every later GEMM on `path` (process-wide), or errors if this CPU
/// cannot run it.
pub fn force(path: SimdPath) -> Result<()> {
    if !path.is_supported() {
        return Err(Error::invalid(
            "simd",
            format!("this CPU cannot run the {} path", path.name()),
        ));
    }
    ACTIVE.store(path.code(), Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// A path [`active`] reports on this thread only (unit tests): set on
    /// every worker of a test's own rayon pool, it runs that test on each
    /// path without [`force`], whose process-wide switch other tests of the
    /// same binary, running meanwhile, would see halfway through.
    static THREAD_PATH: std::cell::Cell<Option<SimdPath>> = const { std::cell::Cell::new(None) };
}

/// Makes [`active`] report `path` (`None`: the process-wide choice again)
/// on the calling thread and on every thread of `pool` (unit tests only;
/// see [`THREAD_PATH`]): work the test runs through `pool.install` then
/// runs on `path`.
#[cfg(test)]
fn set_pool_path(pool: &rayon::ThreadPool, path: Option<SimdPath>) {
    THREAD_PATH.with(|c| c.set(path));
    pool.broadcast(|_| THREAD_PATH.with(|c| c.set(path)));
}

/// Runs `body(path)` once for every path this CPU supports (fastest
/// first), each through [`on_path`]: what `body` runs on the calling
/// thread or through `pool.install` runs on `path` (unit tests only).
#[cfg(test)]
pub(crate) fn on_every_path(pool: &rayon::ThreadPool, mut body: impl FnMut(SimdPath)) {
    for path in supported() {
        on_path(pool, path, || body(path));
    }
}

/// Runs `body` with [`active`] reporting `path` on the calling thread and
/// on every thread of `pool` (unit tests only; see [`THREAD_PATH`]), and
/// gives them the process-wide choice back afterwards, also when `body`
/// panics (a failed assertion), so no later work on these threads runs on
/// a path it did not ask for.
#[cfg(test)]
pub(crate) fn on_path<R>(pool: &rayon::ThreadPool, path: SimdPath, body: impl FnOnce() -> R) -> R {
    struct Reset<'a>(&'a rayon::ThreadPool);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            set_pool_path(self.0, None);
        }
    }
    set_pool_path(pool, Some(path));
    let _reset = Reset(pool);
    body()
}

/// The 8x8 transpose of eight AVX registers: lane `j` of output `i` is
/// lane `i` of input `j` (unpack pairs, shuffle quads, swap 128-bit
/// halves). Shared by the tap-by-tap weight gradient's interleave and
/// Winograd's weight transform.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn transpose8x8_avx(
    r: [std::arch::x86_64::__m256; 8],
) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_portable_is_always_there() {
        for p in SimdPath::ALL {
            assert_eq!(SimdPath::parse(p.name()), Some(p));
        }
        assert_eq!(SimdPath::parse("sse9"), None);
        assert_eq!(supported().last(), Some(&SimdPath::Portable));
    }

    #[test]
    fn on_every_path_runs_each_path_on_the_pool_and_resets_after_a_panic() {
        use std::cell::Cell;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut seen = vec![];
        on_every_path(&pool, |path| {
            assert_eq!(active(), path);
            assert!(pool.broadcast(|_| active()).iter().all(|&p| p == path));
            seen.push(path);
        });
        assert_eq!(seen, supported());
        let unset = || {
            THREAD_PATH.with(Cell::get).is_none()
                && pool
                    .broadcast(|_| THREAD_PATH.with(Cell::get))
                    .iter()
                    .all(Option::is_none)
        };
        assert!(unset());
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_path(&pool, SimdPath::Portable, || {
                pool.install(|| panic!("a failed assertion on the portable path"))
            })
        }));
        assert!(failed.is_err());
        assert!(unset(), "the path outlived the panic");
    }

    #[test]
    fn gemm_fault_counting_is_off_unless_asked_for() {
        assert!(!counts_faults(None));
        assert!(counts_faults(Some("1")));
        assert!(!counts_faults(Some("0")) && !counts_faults(Some("yes")));
        // 16 fresh pages touched inside the counted call: 64 MiB is above
        // glibc's largest mmap threshold, so they are new mappings, each
        // a minor fault when first written. (Only this test turns
        // counting on in this binary.)
        let faulting = || {
            let mut fresh = vec![0u8; 64 << 20];
            for page in 0..16 {
                fresh[page << 12] = 1;
            }
            std::hint::black_box(&fresh);
        };
        count_portable_gemm_faults(false);
        let before = PORTABLE_GEMM_FAULTS.load(Ordering::Relaxed);
        counting_portable_faults(faulting);
        assert_eq!(PORTABLE_GEMM_FAULTS.load(Ordering::Relaxed), before);
        assert_eq!(portable_gemm_faults(), None, "off: nothing counted");
        count_portable_gemm_faults(true);
        counting_portable_faults(faulting);
        let counted = portable_gemm_faults();
        count_portable_gemm_faults(false);
        if cfg!(target_os = "linux") {
            assert!(
                counted.is_some_and(|c| c >= before + 16),
                "{counted:?} from {before}"
            );
        }
    }

    #[test]
    fn an_unusable_request_falls_back_with_a_warning() {
        let avx2_only = [SimdPath::Avx2, SimdPath::Portable];
        assert_eq!(choose(None, &avx2_only), (SimdPath::Avx2, None));
        assert_eq!(choose(Some(" "), &avx2_only), (SimdPath::Avx2, None));
        assert_eq!(
            choose(Some("portable"), &avx2_only),
            (SimdPath::Portable, None)
        );
        let (p, w) = choose(Some("avx512"), &avx2_only);
        assert_eq!(p, SimdPath::Avx2);
        assert!(w
            .unwrap()
            .contains("cannot run the avx512 path; using avx2"));
        let (p, w) = choose(Some("avx-512"), &avx2_only);
        assert_eq!(p, SimdPath::Avx2);
        assert!(w.unwrap().contains("not a path"));
    }
}
