//! Per-thread scratch buffers, reused across kernel calls so the
//! convolutions do not allocate (and page-fault) a fresh column buffer for
//! every image.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Which of a thread's scratch buffers to use: a kernel that needs two at
/// once (a column matrix and a staging copy of `y`) takes one of each.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Columns,
    /// Whole-call buffers taken on the calling thread only: the input
    /// gradient's column buffers for every thread of a split call
    /// (conv/input_grad.rs), the Winograd channel split's transformed
    /// input of all tiles, its packing and, on one thread, its input
    /// transform's temporaries, in one request (conv/winograd.rs
    /// `forward_by_channels`) and the weight gradient's partial
    /// sums (conv/winograd/weight_grad.rs, bounded by its rule). Its own
    /// slot, since such a size would otherwise become the largest
    /// `Columns` request, to which every worker's buffer grows.
    SplitColumns,
    Staging,
    /// A GEMM left operand packed once for all its uses (gemm.rs).
    PackedLhs,
    /// The depth tables of a left operand read through them (gemm.rs
    /// `with_indexed_lhs`), as `u32` bits.
    Tables,
    /// A self-packing right operand written out densely for the portable
    /// GEMM (gemm.rs).
    Dense,
    /// The transposed column packing's rows of taps before their transpose
    /// (conv/columns.rs). A per-thread list grown in place used to hold
    /// them: on the portable path, which packs a whole `k x n` operand at
    /// once, a worker that rayon first handed the largest pack in a
    /// steady-state step grew it there, uncounted: 246 minor faults in one
    /// step of `tests/cpu_buffer_pool.rs` (commit message of this change).
    PackRows,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Columns => "Columns",
            Slot::SplitColumns => "SplitColumns",
            Slot::Staging => "Staging",
            Slot::PackedLhs => "PackedLhs",
            Slot::Tables => "Tables",
            Slot::Dense => "Dense",
            Slot::PackRows => "PackRows",
        }
    }
}

/// How many [`Slot`]s there are (the per-slot arrays below; `PackRows` is
/// the last variant).
const SLOTS: usize = Slot::PackRows as usize + 1;

thread_local! {
    /// Per slot, the thread's free buffers: a stack, one per nesting level
    /// reached so far.
    static FREE: RefCell<[Vec<Vec<f32>>; SLOTS]> = const {
        RefCell::new([const { Vec::new() }; SLOTS])
    };
}

thread_local! {
    /// Whether this thread has touched [`STACK_RESERVE`] bytes of its stack.
    static STACK_TOUCHED: Cell<bool> = const { Cell::new(false) };
}

/// Bytes of its stack below the first scratch request that a thread
/// touches once, up front (rayon's workers have 2 MiB; see [`touch_stack`]
/// for threads with less).
///
/// Why: how deep a worker's stack goes depends on how rayon nests work
/// (a worker waiting in `join` runs stolen tasks on top of its own), so a
/// worker first reached a new stack page in whatever steady-state step
/// nesting went one level deeper than before: a minor fault with no
/// allocation behind it (`perf record -e page-faults`: a store just below
/// a page boundary in a worker's stack mapping; BENCHMARKS.md, issue 9
/// item 25). The pages stay resident, so touching them once moves those
/// faults into the first step.
const STACK_RESERVE: usize = 256 << 10;

/// Stack left untouched below the touched part, for whatever the thread
/// runs meanwhile (a thread with a small stack touches less, never all).
const STACK_MARGIN: usize = 128 << 10;
/// The touched part is built of frames of this size.
const STACK_FRAME: usize = 16 << 10;

/// Touches up to [`STACK_RESERVE`] bytes of this thread's stack below the
/// caller, as much as the thread's stack has room for beyond
/// [`STACK_MARGIN`] (nothing where the platform does not say).
fn touch_stack() {
    let room = stack_room().unwrap_or(0).saturating_sub(STACK_MARGIN);
    touch_frames(STACK_RESERVE.min(room) / STACK_FRAME);
}

/// `frames` nested frames of [`STACK_FRAME`] bytes, each zeroed.
#[inline(never)]
fn touch_frames(frames: usize) {
    if frames == 0 {
        return;
    }
    let mut frame = [0u8; STACK_FRAME];
    // (black_box: keeps the zeroing, and the recursion from becoming a loop.)
    std::hint::black_box(&mut frame);
    touch_frames(frames - 1);
    std::hint::black_box(&frame);
}

/// Bytes of this thread's stack below the caller's frame.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn stack_room() -> Option<usize> {
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` is initialised by pthread_getattr_np for the calling
    // thread before it is read, and destroyed once, after the read.
    let ok = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let ok = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        ok
    };
    let here = &size as *const libc::size_t as usize;
    ok.then(|| here.checked_sub(low as usize)).flatten()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn stack_room() -> Option<usize> {
    None
}

/// Scratch buffers allocated or grown so far, all threads together.
static GROWTHS: AtomicUsize = AtomicUsize::new(0);

/// Per slot, the largest request met so far on any thread: raised only
/// after its buffer was allocated, since a refused size kept here would
/// make every later request's catch-up ask for it again.
static LARGEST: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// How many times a scratch request found no free buffer large enough on
/// its thread, so that the allocator was asked (and the new pages faulted
/// in). A steady-state step adds none (`tests/cpu_buffer_pool.rs`).
pub fn growths() -> u64 {
    GROWTHS.load(Ordering::Relaxed) as u64
}

/// One scratch request that allocated, kept for diagnosis (the pool's
/// [`super::buffer_pool::Miss`] for scratch buffers): which slot, how much,
/// on which thread and nesting level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    /// Its place in the order of all growths: the value [`growths`]
    /// reached with it (1 for the first).
    pub number: u64,
    /// The slot's name.
    pub slot: &'static str,
    /// Elements requested.
    pub len: usize,
    /// Elements of the buffer before (0: a new nesting level, or the
    /// thread's first request of the slot).
    pub from: usize,
    /// Elements after: the slot's largest met request on any thread so
    /// far, or the request itself where the allocator refused that catch-up.
    pub to: usize,
    /// Buffers of the slot in use on this thread at the time (the nesting
    /// level: 0 outermost).
    pub depth: usize,
    /// The rayon worker that asked (`None`: a thread outside the pool).
    pub thread: Option<usize>,
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "growth #{} of {} (request {}): {} -> {} elements, depth {}, thread {:?}",
            self.number, self.slot, self.len, self.from, self.to, self.depth, self.thread
        )
    }
}

/// Makes room in `list`, a kernel's per-thread working list, for `len`
/// items, and for as many as any thread has been granted of the lists
/// sharing `largest` so far (unless the allocator refuses that catch-up),
/// with the new room's pages touched: what
/// [`with_scratch`] does for its buffers, for lists of other types (a
/// growth is counted and kept as one of slot `name`, depth 0). The error,
/// as `with_scratch`'s, is for room the allocator refuses, not every
/// shortage (overcommit).
///
/// Why: reserved only for the request at hand, a list grew on whichever
/// thread rayon first handed a larger part, in whatever step that was, and
/// reserved but untouched room faulted when first filled: 42 minor faults
/// in the first steady-state step of about one portable run in fifty of
/// `tests/cpu_buffer_pool.rs`, whose dense right operand packs a whole
/// product's columns at once (commit message of this function).
pub(super) fn reserve_list<T>(
    name: &'static str,
    largest: &AtomicUsize,
    list: &mut Vec<T>,
    len: usize,
) -> Result<()> {
    let loaded = largest.load(Ordering::Relaxed);
    let want = loaded.max(len);
    if list.capacity() >= want {
        raise_largest(largest, loaded, len);
        return Ok(());
    }
    let from = list.capacity();
    // The catch-up to `want` is for page faults only: where the allocator
    // refuses it, room for this request alone will do, and this thread
    // tries no catch-up up to that size for this list again (as in
    // `with_scratch`; looked up only on this growth branch).
    let key = (largest as *const AtomicUsize as usize, name);
    let catch_up = (want > len && want > refused_list_catch_up(key)).then_some(want);
    let to = catch_up
        .into_iter()
        .find(|&to| try_reserve_list(name, list, to))
        .or_else(|| {
            if let Some(refused) = catch_up {
                REFUSED_LIST_CATCH_UP.with(|r| {
                    let mut r = r.borrow_mut();
                    match r.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, size)) => *size = refused,
                        None => r.push((key, refused)),
                    }
                });
            }
            (len <= from || try_reserve_list(name, list, len)).then_some(len.max(from))
        })
        .ok_or_else(|| out_of_memory(name, len, std::mem::size_of::<T>(), SIZED_REMEDY))?;
    // (Raised only by a request that was met, as in `with_scratch`.)
    raise_largest(largest, loaded, len);
    if list.capacity() == from {
        return Ok(());
    }
    let spare = list.spare_capacity_mut();
    // SAFETY: the spare capacity is allocated memory of `spare.len()`
    // items; writing bytes there leaves the list's length and items as
    // they are (MaybeUninit may hold any bytes).
    unsafe { std::ptr::write_bytes(spare.as_mut_ptr(), 0, spare.len()) };
    record_growth(name, len, from, to, 0);
    Ok(())
}

thread_local! {
    /// Per list (the address of its `largest` and its name), the largest
    /// catch-up [`reserve_list`] had refused on this thread: a few entries
    /// (one per kind of working list).
    static REFUSED_LIST_CATCH_UP: RefCell<Vec<((usize, &'static str), usize)>> =
        const { RefCell::new(Vec::new()) };
}

/// The largest catch-up refused on this thread for the list `key` (0: none).
fn refused_list_catch_up(key: (usize, &'static str)) -> usize {
    REFUSED_LIST_CATCH_UP.with(|r| {
        r.borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |&(_, size)| size)
    })
}

/// Raises `largest` (read as `loaded` before) to a met request of `len`.
/// Written only when `len` is larger: a `fetch_max` on every request was a
/// write to a cache line that every thread's requests share, though the
/// value had long stopped changing (review of the commit that made the
/// scratch fallible). A request that raced past a concurrent raise just
/// does the `fetch_max`, which keeps the larger.
#[inline]
fn raise_largest(largest: &AtomicUsize, loaded: usize, len: usize) {
    if len > loaded {
        largest.fetch_max(len, Ordering::Relaxed);
    }
}

/// Counts a growth and keeps it among the recent ones.
fn record_growth(slot: &'static str, len: usize, from: usize, to: usize, depth: usize) {
    let number = GROWTHS.fetch_add(1, Ordering::Relaxed) as u64 + 1;
    let growth = Growth {
        number,
        slot,
        len,
        from,
        to,
        depth,
        thread: rayon::current_thread_index(),
    };
    RECENT_GROWTHS.record(number, growth);
    #[cfg(test)]
    THREAD_GROWTHS.with(|g| g.borrow_mut().push(growth));
}

#[cfg(test)]
thread_local! {
    /// Unit tests: every growth on this thread, in order. The recent ring
    /// is shared by all threads, so the tests running meanwhile can push a
    /// test's own growth out of it before the test looks.
    static THREAD_GROWTHS: RefCell<Vec<Growth>> = const { RefCell::new(Vec::new()) };
}

/// Unit tests: the growths on the calling thread so far, oldest first.
#[cfg(test)]
fn thread_growths() -> Vec<Growth> {
    THREAD_GROWTHS.with(|g| g.borrow().clone())
}

/// What to do when a scratch buffer sized to the call cannot grow.
const SIZED_REMEDY: &str = "a smaller batch, image size or thread count needs less";

/// What to do when a fixed-size buffer ([`grow_fixed`]) cannot grow.
const FIXED_SIZE_REMEDY: &str =
    "of a fixed size on every thread: fewer threads need less, or free memory elsewhere";

/// The error for a scratch request of `len` elements of `elem_bytes` bytes
/// that the allocator refused: which buffer, how much, and what to do
/// (`remedy`).
fn out_of_memory(name: &str, len: usize, elem_bytes: usize, remedy: &str) -> Error {
    Error::OutOfMemory {
        what: format!("the CPU kernels' per-thread scratch buffer {name:?} ({remedy})"),
        shape: vec![len],
        // (Two 64-bit factors: their product always fits a u128.)
        bytes: Some(len as u128 * elem_bytes as u128),
    }
}

/// The last growths ([`super::recent::KEPT`] of them).
static RECENT_GROWTHS: super::recent::Recent<Growth> = super::recent::Recent::new();

/// The last growths (up to 64), oldest first: see [`Growth`].
pub fn recent_growths() -> Vec<Growth> {
    RECENT_GROWTHS.oldest_first()
}

thread_local! {
    /// Per slot, how many of the thread's buffers are in use (taken off
    /// [`FREE`] by calls still running): the nesting level a [`Growth`]
    /// reports.
    static IN_USE: [Cell<usize>; SLOTS] = const { [const { Cell::new(0) }; SLOTS] };
}

/// Runs `f` on a scratch slice of `len` elements whose contents are
/// unspecified (callers overwrite it before reading), returning what `f`
/// returns; an [`Error::OutOfMemory`] naming the slot and the bytes when
/// the allocator refuses to grow the buffer to `len` (the allocator's
/// abort before: the process died on a request too large for the machine).
/// That covers requests the allocator turns down (past the address space,
/// a ulimit, or with overcommit off), not every shortage: under Linux's
/// default overcommit a granted request may still meet the OOM killer
/// when its pages are first touched (here, by the zeroing).
///
/// The buffer is taken off the thread's stack for the slot while `f` runs,
/// so a nested call on the same thread (rayon may run another kernel on
/// this thread while `f` waits for a parallel loop) gets another buffer
/// instead of aliasing this one; both go back on the stack afterwards.
/// Before, the nested call's buffer was freed again, so every nesting
/// allocated (and faulted in) ~1 MB afresh, in whichever step rayon
/// happened to nest (BENCHMARKS.md, issue 9 item 16).
///
/// A buffer that grows at all grows to the largest met request of its slot
/// on any thread so far, not just to `len`: the parts of one parallel call
/// differ in size (a GEMM's last column block, an input gradient's last
/// channel block), and which thread gets the largest is up to rayon. Sized
/// to `len`, a thread that had only ever been handed smaller parts grew the
/// first time it got the largest, in whatever step that happened (a
/// steady-state growth: `tests/cpu_buffer_pool.rs` failed about one run in
/// 120 on the portable path under load). Now a thread catches up on its
/// first request of the slot after another thread set a new largest,
/// whatever the size of its own part, so a worker that rayon starved of
/// large parts during warm-up no longer grows later. It costs at most the
/// slot's largest buffer per thread and nesting level; where the allocator
/// refuses that catch-up, the buffer grows to `len` only.
pub(super) fn with_scratch<R>(
    slot: Slot,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> Result<R>,
) -> Result<R> {
    let i = slot as usize;
    if !STACK_TOUCHED.with(|t| t.replace(true)) {
        touch_stack();
    }
    let loaded = LARGEST[i].load(Ordering::Relaxed);
    let largest = loaded.max(len);
    let mut buf = FREE.with(|free| free.borrow_mut()[i].pop().unwrap_or_default());
    let depth = IN_USE.with(|u| u[i].replace(u[i].get() + 1));
    if buf.len() < largest {
        let from = buf.len();
        // The catch-up to `largest` (for page faults only), unless this
        // thread's allocator already refused one at least as large: else,
        // once refused, every later request here (each kernel part) asked
        // the allocator for it again, and under overcommit one that then
        // succeeded grew and zeroed the buffer in the middle of a
        // steady-state step. This check runs only on the growth branch.
        let catch_up =
            (largest > len && largest > REFUSED_CATCH_UP.with(|r| r[i].get())).then_some(largest);
        let grown = catch_up
            .into_iter()
            .find(|&to| try_grow(slot, &mut buf, to))
            .or_else(|| {
                if let Some(refused) = catch_up {
                    REFUSED_CATCH_UP.with(|r| r[i].set(refused));
                }
                (len <= from || try_grow(slot, &mut buf, len)).then_some(len.max(from))
            });
        let Some(to) = grown else {
            IN_USE.with(|u| u[i].set(depth));
            put_back(i, buf);
            return Err(out_of_memory(
                slot.name(),
                len,
                std::mem::size_of::<f32>(),
                SIZED_REMEDY,
            ));
        };
        if to > from {
            buf.resize(to, 0.0);
            record_growth(slot.name(), len, from, to, depth);
        }
    }
    // (Only a request that was met raises the slot's largest: one refused
    // would make every later request retry it.)
    raise_largest(&LARGEST[i], loaded, len);
    let result = f(&mut buf[..len]);
    IN_USE.with(|u| u[i].set(depth));
    put_back(i, buf);
    result
}

thread_local! {
    /// Per slot, the largest catch-up (growth beyond the request itself, to
    /// the slot's largest request) that the allocator refused on this
    /// thread: [`with_scratch`] tries no catch-up up to this size again
    /// (0: none refused).
    static REFUSED_CATCH_UP: [Cell<usize>; SLOTS] = const { [const { Cell::new(0) }; SLOTS] };
}

/// Reserves room for `to` elements in `buf` (of `buf.len()` now) for
/// `slot`, or says the allocator refused.
fn try_grow(slot: Slot, buf: &mut Vec<f32>, to: usize) -> bool {
    #[cfg(test)]
    if refused_by_test(slot.name(), to) {
        return false;
    }
    let _ = slot;
    buf.try_reserve_exact(to - buf.len()).is_ok()
}

/// Grows `buf`, one of a kernel's fixed-size per-thread buffers (buffer
/// `name`: the micro-kernels' packing buffers and depth tables), to `len`
/// items of `fill` where it holds fewer, or returns the
/// [`Error::OutOfMemory`] naming it where the allocator refuses (`buf` is
/// then as it was). A `Vec::resize` aborted the process there. The sizes
/// are constants (a few MiB at most), so this is met once per thread;
/// growth is not counted as a scratch growth (those buffers never were).
pub(super) fn grow_fixed<T: Clone>(
    name: &'static str,
    buf: &mut Vec<T>,
    len: usize,
    fill: T,
) -> Result<()> {
    if buf.len() < len {
        if !try_reserve_list(name, buf, len) {
            // (These sizes are constants: batch and image sizes do not
            // change them, only the thread count their total.)
            return Err(out_of_memory(
                name,
                len,
                std::mem::size_of::<T>(),
                FIXED_SIZE_REMEDY,
            ));
        }
        buf.resize(len, fill);
    }
    Ok(())
}

/// Reserves room for `to` items in `list` (list `name`), or says the
/// allocator refused.
fn try_reserve_list<T>(name: &'static str, list: &mut Vec<T>, to: usize) -> bool {
    #[cfg(test)]
    if refused_by_test(name, to) {
        return false;
    }
    let _ = name;
    list.try_reserve_exact(to - list.len()).is_ok()
}

/// Unit tests: which growths [`REFUSE`] refuses on a thread.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) struct Refusal {
    /// The slot (or [`reserve_list`] list, or [`grow_fixed`] buffer) name
    /// whose growths are refused;
    /// `None`: every one's.
    pub only: Option<&'static str>,
    /// Growth to more elements than this is refused.
    pub above: usize,
}

#[cfg(test)]
thread_local! {
    /// Unit tests: growth refused on this thread as if by the allocator,
    /// so a test can see a kernel's error path without asking the machine
    /// for exabytes (set on a test's own pool by [`refusing_growth`]).
    static REFUSE: Cell<Option<Refusal>> = const { Cell::new(None) };
    /// Unit tests: the growths refused on this thread by [`REFUSE`], as
    /// (name, elements), oldest first.
    static REFUSED: RefCell<Vec<(&'static str, usize)>> = const { RefCell::new(Vec::new()) };
}

/// Unit tests: whether [`REFUSE`] refuses growth of `name` to `to`
/// elements on this thread (logged in [`REFUSED`] if so).
#[cfg(test)]
fn refused_by_test(name: &'static str, to: usize) -> bool {
    let refuse = REFUSE
        .with(Cell::get)
        .is_some_and(|r| r.only.is_none_or(|only| only == name) && to > r.above);
    if refuse {
        REFUSED.with(|r| r.borrow_mut().push((name, to)));
    }
    refuse
}

/// Unit tests: the growths refused on the calling thread so far.
#[cfg(test)]
fn refused_on_thread() -> Vec<(&'static str, usize)> {
    REFUSED.with(|r| r.borrow().clone())
}

/// Runs `body` with the growths that `refusal` names refused on the
/// calling thread and on every thread of `pool` (unit tests only; see
/// [`REFUSE`]), and lifts the refusal afterwards, also when `body` panics.
#[cfg(test)]
pub(crate) fn refusing_growth<R>(
    pool: &rayon::ThreadPool,
    refusal: Refusal,
    body: impl FnOnce() -> R,
) -> R {
    fn set(pool: &rayon::ThreadPool, refusal: Option<Refusal>) {
        REFUSE.with(|c| c.set(refusal));
        pool.broadcast(|_| REFUSE.with(|c| c.set(refusal)));
    }
    struct Lift<'a>(&'a rayon::ThreadPool);
    impl Drop for Lift<'_> {
        fn drop(&mut self) {
            set(self.0, None);
        }
    }
    set(pool, Some(refusal));
    let _lift = Lift(pool);
    body()
}

/// Returns a buffer taken by [`with_scratch`] to its slot's free stack.
fn put_back(slot: usize, buf: Vec<f32>) {
    FREE.with(|free| {
        let stack = &mut free.borrow_mut()[slot];
        // Largest on top: the outermost (usually largest) request finds it.
        let at = stack.partition_point(|b| b.len() <= buf.len());
        stack.insert(at, buf);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_with_a_small_stack_touches_only_what_it_has_room_for() {
        // 256 KiB of stack in all: less than STACK_RESERVE + STACK_MARGIN,
        // so the touch must stop short instead of overflowing.
        let sum = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                // (glibc may hand the thread a larger cached stack; the
                // touch follows whatever stack the thread really has.)
                with_scratch(Slot::Staging, 100, |s| {
                    s.fill(1.0);
                    Ok(s.iter().sum::<f32>())
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(sum.unwrap(), 100.0);
    }

    /// Whether the shared ring holds `growth`, or has had room to drop it
    /// since: other tests of the binary grow their threads' buffers
    /// meanwhile, and the ring keeps only the last [`super::super::recent::KEPT`].
    fn in_ring_unless_evicted(growth: &Growth) -> bool {
        recent_growths().contains(growth)
            || growths() - growth.number >= super::super::recent::KEPT as u64
    }

    #[test]
    fn a_growth_is_recorded_with_its_slot_and_nesting_level() {
        // A fresh thread: its buffers start empty, so the nested request
        // (depth 1) grows from 0 to the slot's largest request so far.
        // (Read from the thread's own record: see `THREAD_GROWTHS`.)
        let mine = std::thread::spawn(|| {
            with_scratch(Slot::Tables, 1000, |_| {
                with_scratch(Slot::Tables, 777, |s| {
                    s.fill(0.0);
                    Ok(())
                })
            })
            .unwrap();
            thread_growths()
        })
        .join()
        .unwrap();
        let [outer, nested] = mine.as_slice() else {
            panic!("two growths on a fresh thread: {mine:?}");
        };
        assert_eq!((outer.slot, outer.len, outer.depth), ("Tables", 1000, 0));
        assert_eq!(
            (
                nested.slot,
                nested.len,
                nested.from,
                nested.depth,
                nested.thread
            ),
            ("Tables", 777, 0, 1, None)
        );
        assert!(nested.to >= 1000, "{nested}");
        assert!(nested.number > outer.number, "{outer} then {nested}");
        assert!(nested.to_string().contains("of Tables"), "{nested}");
        assert!(in_ring_unless_evicted(nested), "{nested} not in the ring");
    }

    #[test]
    fn a_list_catches_up_with_the_largest_request_on_any_thread() {
        // One thread asks for 10 items, another for 1000; the first
        // thread's next request, however small, grows its list to 1000
        // (counted as a growth), keeps its items, and the one after that
        // grows nothing. On a thread of its own, whose growths are all
        // this test's (`thread_growths`).
        static LARGEST: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            let mut list: Vec<u64> = vec![7, 8];
            reserve_list("test list", &LARGEST, &mut list, 10).unwrap();
            assert!(list.capacity() >= 10);
            std::thread::spawn(|| {
                let mut other: Vec<u64> = Vec::new();
                reserve_list("test list", &LARGEST, &mut other, 1000).unwrap();
                assert!(other.capacity() >= 1000 && other.is_empty());
            })
            .join()
            .unwrap();
            let before = thread_growths().len();
            reserve_list("test list", &LARGEST, &mut list, 5).unwrap();
            assert!(list.capacity() >= 1000);
            assert_eq!(list, [7, 8]);
            let grown = thread_growths();
            let [catch_up] = &grown[before..] else {
                panic!("one growth for the catch-up: {grown:?}");
            };
            assert_eq!(
                (catch_up.slot, catch_up.len, catch_up.to),
                ("test list", 5, 1000)
            );
            assert!(
                in_ring_unless_evicted(catch_up),
                "{catch_up} not in the ring"
            );
            reserve_list("test list", &LARGEST, &mut list, 900).unwrap();
            assert_eq!(
                thread_growths().len(),
                grown.len(),
                "a list that holds the largest request grew again"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_request_the_allocator_refuses_is_an_error_not_an_abort() {
        // About 8 EiB: more than any machine maps, so the allocator says
        // no (a `Vec::resize` aborted the process here).
        let len = isize::MAX as usize / 4;
        std::thread::spawn(move || {
            let mut ran = false;
            let err = with_scratch(Slot::Staging, len, |_| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
            assert!(!ran, "f ran without its buffer");
            let msg = err.to_string();
            assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
            assert!(
                msg.contains("scratch buffer \"Staging\"")
                    && msg.contains(&format!("{} bytes", len as u128 * 4))
                    && msg.contains("smaller batch"),
                "{msg}"
            );
            // The thread's slot is usable at once, at its nesting level,
            // and the refused size became nobody's largest request (every
            // later request would have retried it).
            let sum = with_scratch(Slot::Staging, 10, |s| {
                s.fill(1.0);
                Ok(s.iter().sum::<f32>())
            })
            .unwrap();
            assert_eq!(sum, 10.0);
            assert_eq!(IN_USE.with(|u| u[Slot::Staging as usize].get()), 0);
            assert!(LARGEST[Slot::Staging as usize].load(Ordering::Relaxed) < len);
            // A list the same.
            static LIST_LARGEST: AtomicUsize = AtomicUsize::new(0);
            let mut list: Vec<u64> = vec![3];
            let err = reserve_list("huge list", &LIST_LARGEST, &mut list, len / 2).unwrap_err();
            assert!(err.to_string().contains("\"huge list\""), "{err}");
            assert_eq!(
                (list.as_slice(), LIST_LARGEST.load(Ordering::Relaxed)),
                (&[3][..], 0)
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_refused_catch_up_grows_to_the_request_only_and_is_not_retried() {
        // Another thread sets the slot's largest request at 5000 or more;
        // on a thread whose growth beyond 100 elements is refused, a
        // request of 50 still gets its buffer (of 50: the catch-up is
        // dropped), later requests ask the allocator for no catch-up it
        // has refused already (they retried it on every request before),
        // one of 200 is an error, and one larger than any so far (no
        // catch-up) is refused once, not twice.
        std::thread::spawn(|| with_scratch(Slot::Dense, 5000, |_| Ok(())))
            .join()
            .unwrap()
            .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let huge = isize::MAX as usize / 8;
        let refusal = Refusal {
            only: Some("Dense"),
            above: 100,
        };
        let (small, again, large, huge_err, kept, refused) =
            refusing_growth(&pool, refusal, || {
                pool.install(|| {
                    let small = with_scratch(Slot::Dense, 50, |s| Ok(s.len()));
                    let again: Vec<Result<usize>> = (0..5)
                        .map(|k| with_scratch(Slot::Dense, 10 + 10 * k, |s| Ok(s.len())))
                        .collect();
                    let large = with_scratch(Slot::Dense, 200, |s| Ok(s.len()));
                    let huge_err = with_scratch(Slot::Dense, huge, |s| Ok(s.len()));
                    let kept =
                        FREE.with(|f| f.borrow()[Slot::Dense as usize].iter().map(Vec::len).max());
                    (small, again, large, huge_err, kept, refused_on_thread())
                })
            });
        assert_eq!(small.unwrap(), 50);
        let again: Vec<usize> = again.into_iter().map(Result::unwrap).collect();
        assert_eq!(again, [10, 20, 30, 40, 50]);
        assert!(matches!(large, Err(Error::OutOfMemory { .. })), "{large:?}");
        assert!(
            matches!(huge_err, Err(Error::OutOfMemory { .. })),
            "{huge_err:?}"
        );
        assert_eq!(kept, Some(50));
        // The refused sizes: catch-ups (each larger than the last: other
        // tests may raise the slot's largest meanwhile, which earns one
        // more try), the request of 200, the huge one once.
        let sizes: Vec<usize> = refused
            .iter()
            .map(|&(name, to)| {
                assert_eq!(name, "Dense");
                to
            })
            .collect();
        let (&[.., last_catch_up, two_hundred, last], catch_ups) =
            (sizes.as_slice(), &sizes[..sizes.len().saturating_sub(2)])
        else {
            panic!("refused: {sizes:?}");
        };
        assert!(last_catch_up >= 5000, "{sizes:?}");
        assert_eq!((two_hundred, last), (200, huge), "{sizes:?}");
        assert!(
            catch_ups.windows(2).all(|w| w[0] < w[1]),
            "a refused catch-up was retried: {sizes:?}"
        );
    }

    #[test]
    fn a_refused_list_catch_up_is_not_retried() {
        // The same for `reserve_list`: another thread's list set the
        // largest at 5000; here growth beyond 100 is refused, so requests
        // of 50, 20 and 60 get room for themselves and the catch-up to
        // 5000 is asked for once.
        static LARGEST: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            let mut other: Vec<u32> = Vec::new();
            reserve_list("test refused list", &LARGEST, &mut other, 5000).unwrap();
        })
        .join()
        .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let refusal = Refusal {
            only: Some("test refused list"),
            above: 100,
        };
        let (caps, refused) = refusing_growth(&pool, refusal, || {
            pool.install(|| {
                let mut list: Vec<u32> = Vec::new();
                let caps: Vec<usize> = [50, 20, 60]
                    .into_iter()
                    .map(|len| {
                        reserve_list("test refused list", &LARGEST, &mut list, len).unwrap();
                        list.capacity()
                    })
                    .collect();
                (caps, refused_on_thread())
            })
        });
        assert!(caps[0] >= 50 && caps[0] < 5000 && caps[2] >= 60, "{caps:?}");
        assert_eq!(refused, [("test refused list", 5000)]);
    }

    #[test]
    fn the_stack_room_is_known_on_linux() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let room = std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(stack_room)
                .unwrap()
                .join()
                .unwrap()
                .unwrap();
            // At least what was asked for, less this frame (glibc may
            // reuse a larger cached stack, so no upper bound).
            assert!(room > 512 << 10, "{room}");
        }
    }
}
