//! What a steady-state training step asks of the heap: how many blocks
//! the main thread allocates, by size, and which blocks are freed on
//! another thread than the one that allocated them, by size and direction;
//! the live heap after every step. Diagnosis for issue 9 (BENCHMARKS.md
//! item 25): glibc's per-thread caches keep the chunks a thread frees, so
//! blocks the main thread allocates and a rayon worker frees pile up
//! there while the main heap creeps onto pages it has not touched yet.
//!
//! `cargo run --release --example cross_thread_frees -- [batch] [size] [steps] [mode]`
//!
//! With `BT_CROSS=N` (or `BT_MAIN=N`) it prints where the first few
//! cross-thread frees (main-thread allocations) of N..N+15 bytes happen.
//! Every block carries a 16-byte header naming its thread, so glibc sees
//! slightly larger requests than the engine makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use frostgrad::bench::{self, BenchConfig};
use frostgrad::nn::resnet18;
use frostgrad::Device;
use rand::SeedableRng;

/// Sizes are counted in 16-byte buckets; the last holds everything larger.
const BUCKETS: usize = 1100;
/// Counting only between the warm-up and the end of the steps.
static ON: AtomicBool = AtomicBool::new(false);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);
/// Cross-thread frees by [direction][bucket]: main -> worker, worker ->
/// main, worker -> worker.
static CROSS: [[AtomicU64; BUCKETS]; 3] = [const { [const { AtomicU64::new(0) }; BUCKETS] }; 3];
/// Main-thread allocations by bucket, and reallocations to that bucket.
static MAIN: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];
static MAIN_REALLOC: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];
/// Allocations counted (main thread, workers).
static ALLOCS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Live bytes and blocks allocated by the main thread and by workers.
static LIVE: [(AtomicI64, AtomicI64); 2] = [const { (AtomicI64::new(0), AtomicI64::new(0)) }; 2];
/// Bucket + 1 whose backtraces to print (0: none), and how many printed.
static BT_CROSS: AtomicUsize = AtomicUsize::new(0);
static BT_MAIN: AtomicUsize = AtomicUsize::new(0);
static SHOWN: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static THREAD: Cell<u32> = const { Cell::new(0) };
    /// Set while capturing a backtrace (which allocates).
    static IN_BACKTRACE: Cell<bool> = const { Cell::new(false) };
}

/// This thread's number; the main thread takes 1 first thing in `main`.
fn thread() -> u32 {
    THREAD.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

fn bucket(size: usize) -> usize {
    (size / 16).min(BUCKETS - 1)
}

fn backtrace_if(wanted: &AtomicUsize, size: usize) {
    if wanted.load(Ordering::Relaxed) == bucket(size) + 1 && !IN_BACKTRACE.with(|g| g.replace(true))
    {
        if SHOWN.fetch_add(1, Ordering::Relaxed) < 4 {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        IN_BACKTRACE.with(|g| g.set(false));
    }
}

struct Tracking;

/// Header bytes in front of every block (room for the thread number,
/// keeping the caller's alignment).
fn header(l: Layout) -> usize {
    l.align().max(16)
}

// SAFETY: every block is the system allocator's, `header` bytes larger;
// the pointer handed out lies `header` bytes in, so dealloc finds the block.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let h = header(l);
        // SAFETY: the size is nonzero and the alignment a power of two.
        let base = unsafe { System.alloc(Layout::from_size_align_unchecked(l.size() + h, h)) };
        if base.is_null() {
            return base;
        }
        let t = thread();
        let side = usize::from(t != 1);
        LIVE[side].0.fetch_add(l.size() as i64, Ordering::Relaxed);
        LIVE[side].1.fetch_add(1, Ordering::Relaxed);
        if ON.load(Ordering::Relaxed) {
            ALLOCS[side].fetch_add(1, Ordering::Relaxed);
            if t == 1 {
                MAIN[bucket(l.size())].fetch_add(1, Ordering::Relaxed);
                backtrace_if(&BT_MAIN, l.size());
            }
        }
        // SAFETY: the header lies inside the block just allocated, which is
        // at least 16-byte aligned.
        unsafe {
            (base as *mut u32).write(t);
            base.add(h)
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let h = header(l);
        // SAFETY: `p` came from `alloc`, `h` bytes into its block, whose
        // first bytes hold the allocating thread's number.
        let (base, from) = unsafe {
            let base = p.sub(h);
            (base, (base as *const u32).read())
        };
        let to = thread();
        let side = usize::from(from != 1);
        LIVE[side].0.fetch_sub(l.size() as i64, Ordering::Relaxed);
        LIVE[side].1.fetch_sub(1, Ordering::Relaxed);
        if ON.load(Ordering::Relaxed) && from != to {
            let direction = match (from, to) {
                (1, _) => 0,
                (_, 1) => 1,
                _ => 2,
            };
            CROSS[direction][bucket(l.size())].fetch_add(1, Ordering::Relaxed);
            backtrace_if(&BT_CROSS, l.size());
        }
        // SAFETY: the block and layout `alloc` made.
        unsafe { System.dealloc(base, Layout::from_size_align_unchecked(l.size() + h, h)) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) && thread() == 1 {
            MAIN_REALLOC[bucket(new_size)].fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: GlobalAlloc's default: a new block, the old contents
        // copied, the old block freed (so the header moves with it).
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, l.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(p, new, l.size().min(new_size));
                self.dealloc(p, l);
            }
            new
        }
    }
}

#[global_allocator]
static TRACKING: Tracking = Tracking;

fn main() -> frostgrad::Result<()> {
    thread(); // the main thread is 1
    for (name, slot) in [("BT_CROSS", &BT_CROSS), ("BT_MAIN", &BT_MAIN)] {
        if let Some(n) = std::env::var(name).ok().and_then(|v| v.parse().ok()) {
            slot.store(bucket(n) + 1, Ordering::Relaxed);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let cfg = BenchConfig {
        device: Device::Cpu,
        batch: arg(0, 2),
        size: arg(1, 96),
        steps: arg(2, 10),
        warmup: 2,
        lr: 0.01,
        momentum: 0.9,
    };
    let modes = bench::parse_modes(args.get(3).map_or("finetune", String::as_str))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = resnet18(10, &mut rng)?;
    bench::run(&mut model, &modes, &cfg, |mode, done, _| {
        let live = |s: usize| {
            (
                LIVE[s].0.load(Ordering::Relaxed),
                LIVE[s].1.load(Ordering::Relaxed),
            )
        };
        let ((main_bytes, main_blocks), (worker_bytes, worker_blocks)) = (live(0), live(1));
        eprintln!(
            "{mode} step {done}: live heap allocated by main {main_bytes} B in {main_blocks} \
             blocks, by workers {worker_bytes} B in {worker_blocks}"
        );
        ON.store(
            done >= cfg.warmup && done < cfg.warmup + cfg.steps,
            Ordering::Relaxed,
        );
    })?;
    let per_step = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / cfg.steps as f64;
    println!(
        "allocations per step: main thread {:.1}, workers {:.1}",
        per_step(&ALLOCS[0]),
        per_step(&ALLOCS[1])
    );
    for (b, c) in MAIN.iter().enumerate() {
        if c.load(Ordering::Relaxed) > 0 {
            println!(
                "main thread, {}..{} B: {:.2} per step ({:.2} of them reallocations)",
                b * 16,
                b * 16 + 15,
                per_step(c),
                per_step(&MAIN_REALLOC[b])
            );
        }
    }
    for (direction, name) in ["main -> worker", "worker -> main", "worker -> worker"]
        .iter()
        .enumerate()
    {
        for (b, c) in CROSS[direction].iter().enumerate() {
            if c.load(Ordering::Relaxed) > 0 {
                println!(
                    "freed across threads, {name}, {}..{} B: {:.2} per step",
                    b * 16,
                    b * 16 + 15,
                    per_step(c)
                );
            }
        }
    }
    Ok(())
}
