//! A caching pool for CPU tensor storage, and the backend's one fallible
//! allocation entry point.
//!
//! Why: a training step allocates and frees every activation and gradient
//! once. glibc serves buffers of that size with `mmap` and hands them back
//! with `munmap` on free, so every step paid for fresh zeroed pages, page
//! faults and TLB shootdowns: 43 225 minor faults per fine-tune step without
//! the pool, 7 751 with it, process CPU time 7.79 s -> 7.30 s
//! (BENCHMARKS.md, "What each change bought", item 1: `frostgrad bench
//! --modes finetune,transfer --steps 4`, with and without
//! `FROSTGRAD_CPU_POOL=0`). The pool keeps freed buffers and hands them out
//! again: a steady-state step then takes no page faults for tensors
//! (`tests/cpu_buffer_pool.rs` checks that).
//!
//! * Buffers of at least [`MIN_POOLED_BYTES`] are rounded up to a size
//!   class (four per power of two, so at most 25 % slack) and kept per class
//!   when the tensor storage holding them is dropped (`tensor::memory`
//!   hands them back). Smaller ones come from and go to the
//!   allocator directly, whose heap serves them without faulting.
//! * Nothing is returned to the OS while the process runs unless
//!   [`release`] is called; [`held_bytes`] says how much the pool keeps.
//! * Tensor memory accounting (`tensor::memory`) is untouched: it counts a
//!   storage's length, not the capacity of the buffer behind it, and the
//!   bytes the pool keeps are reported separately.
//! * `FROSTGRAD_CPU_POOL=0` turns caching off (every buffer comes from and
//!   goes back to the allocator), to measure what the pool buys.
//!
//! Every buffer goes through [`try_alloc`], which returns an error instead
//! of aborting when the allocator cannot provide it.
//!
//! A buffer taken from the pool by an op that then fails (an output from
//! [`uninit`] abandoned when a later step returns `Err`, e.g. a scratch
//! buffer the allocator refused) is dropped, i.e. freed to the allocator,
//! not returned here. Nothing that matters is lost, so no guard recycles
//! it: [`held_bytes`] counts free buffers only and a taken buffer had left
//! that count already, so the report stays exact; tensor memory never saw
//! it. What remains is bookkeeping of the freed buffer: its class's
//! allocated count (which sizes the class's free list and the
//! `class_count` of a later [`Miss`]) stays one higher, and its address
//! stays in the set of this pool's buffers, so a vector the allocator
//! later places there with exactly that class capacity would be kept when
//! its storage is dropped (then handed out like any pooled buffer). Both
//! are bounded by the number of failed calls, and the next call of the
//! failed op misses the pool once; a step that succeeds is unaffected.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::core_types::HostData;
use crate::error::{Error, Result};

/// Buffers smaller than this are not pooled: malloc's per-thread caches
/// serve them without faulting. Larger ones churned through glibc fault in
/// steady-state steps: batch norm's per-channel statistics and gradients
/// (256 B - 2 KiB) and the head's small products (4 - 16 KiB) were what
/// glibc served from newly touched main-heap pages, as its per-thread
/// caches slowly filled with chunks of 256 - 1032 bytes (BENCHMARKS.md,
/// issue 9 items 16 and 25).
pub const MIN_POOLED_BYTES: usize = 256;

/// Size classes per power of two.
const CLASSES_PER_OCTAVE: usize = 4;
/// Class indices cover capacities up to 2^MAX_OCTAVE elements.
const MAX_OCTAVE: usize = 48;

/// An element type the pool keeps buffers of. All-zero bits are the value
/// zero for both.
pub trait Element: Copy + Default + Send + 'static {
    fn pool() -> &'static Pool<Self>;
}

/// The free buffers of one element type, by size class.
pub struct Pool<T> {
    lists: Mutex<Lists<T>>,
}

/// A pool's state, under one lock.
struct Lists<T> {
    /// Free buffers by size class, each list with room for every buffer
    /// of its class the pool has allocated: returning one never grows a
    /// list (and faults) in a steady state.
    free: Vec<Vec<Vec<T>>>,
    /// Buffers allocated per size class.
    allocated: Vec<usize>,
    /// The addresses of the buffers this pool allocated (free or in use).
    ///
    /// Why: only these are kept when dropped. A vector built elsewhere
    /// (`collect()` of 2^k elements) can have exactly a class capacity too;
    /// kept, it would never be asked for again while its producer took
    /// fresh heap memory every step, and the held bytes grew every step
    /// (BENCHMARKS.md, issue 9 item 16, with small buffers pooled).
    mine: Option<HashSet<usize>>,
}

impl<T> Pool<T> {
    const fn new() -> Self {
        Pool {
            lists: Mutex::new(Lists {
                free: Vec::new(),
                allocated: Vec::new(),
                mine: None,
            }),
        }
    }
}

static POOL_F32: Pool<f32> = Pool::new();
static POOL_I64: Pool<i64> = Pool::new();
/// Bytes of free buffers the pools keep (both element types).
static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Requests of a pooled size that found no free buffer of their class.
static MISSES: AtomicUsize = AtomicUsize::new(0);

impl Element for f32 {
    fn pool() -> &'static Pool<f32> {
        &POOL_F32
    }
}
impl Element for i64 {
    fn pool() -> &'static Pool<i64> {
        &POOL_I64
    }
}

/// Whether caching is on (`FROSTGRAD_CPU_POOL` unset or anything but `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    super::env_switch::on_unless_zero(&ON, "FROSTGRAD_CPU_POOL")
}

/// Bytes the pool holds in free buffers, not counted as tensor memory.
pub fn held_bytes() -> usize {
    HELD_BYTES.load(Ordering::Relaxed)
}

/// How many requests of a pooled size so far found no free buffer of
/// their class and went to the allocator (whose fresh pages then fault).
/// A steady-state step adds none (`tests/cpu_buffer_pool.rs`).
pub fn misses() -> u64 {
    MISSES.load(Ordering::Relaxed) as u64
}

/// One request that missed the pool, kept for diagnosis: which op asked,
/// for how much, on which thread, and how many buffers of its class the
/// pool had then allocated (this one included).
///
/// Why: a steady-state miss shows up in `tests/cpu_buffer_pool.rs` as a
/// bare count, once in tens of runs under load; the op and the size say
/// which call site's pool traffic depends on scheduling without a rerun
/// under `perf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    /// Its place in the order of all misses: the value [`misses`] reached
    /// with it (1 for the first).
    pub number: u64,
    /// The op name the caller gave.
    pub op: &'static str,
    /// Elements requested.
    pub len: usize,
    /// Bytes of the size class the buffer was allocated with.
    pub class_bytes: usize,
    /// Buffers of that class allocated so far, this one included: more
    /// than in earlier steps means more were live at once.
    pub class_count: usize,
    /// The rayon worker that asked (`None`: a thread outside the pool).
    pub thread: Option<usize>,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "miss #{} by {}: {} elements, class of {} B (buffer {} of the class), thread {:?}",
            self.number, self.op, self.len, self.class_bytes, self.class_count, self.thread
        )
    }
}

/// The last misses ([`super::recent::KEPT`] of them).
static RECENT_MISSES: super::recent::Recent<Miss> = super::recent::Recent::new();

/// The last misses (up to 64), oldest first: see [`Miss`].
pub fn recent_misses() -> Vec<Miss> {
    RECENT_MISSES.oldest_first()
}

/// Gives every cached buffer back to the allocator (and so, for large
/// ones, to the OS). Returns the bytes released.
pub fn release() -> usize {
    release_type::<f32>() + release_type::<i64>()
}

fn release_type<T: Element>() -> usize {
    let mut released: Vec<Vec<T>> = Vec::new();
    let mut guard = lock(T::pool());
    let Lists {
        free,
        allocated,
        mine,
    } = &mut *guard;
    for (list, count) in free.iter_mut().zip(allocated.iter_mut()) {
        *count -= list.len();
        for v in list.drain(..) {
            if let Some(mine) = mine.as_mut() {
                mine.remove(&(v.as_ptr() as usize));
            }
            released.push(v);
        }
    }
    drop(guard);
    let bytes: usize = released
        .iter()
        .map(|v| v.capacity() * std::mem::size_of::<T>())
        .sum();
    HELD_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    bytes
}

fn lock<T>(pool: &Pool<T>) -> std::sync::MutexGuard<'_, Lists<T>> {
    // A panic while holding the lock leaves the lists consistent (every
    // operation on them is a single push, pop or set update), so poisoning
    // is ignored.
    pool.lists.lock().unwrap_or_else(|e| e.into_inner())
}

/// The size class of a request for `len` elements: its index and its
/// capacity in elements (the smallest class capacity `>= len`), or `None`
/// when the buffer is too small to pool.
fn class_of<T>(len: usize) -> Option<(usize, usize)> {
    if len.saturating_mul(std::mem::size_of::<T>()) < MIN_POOLED_BYTES {
        return None;
    }
    // len >= 2 here, so octave >= 1: classes of octave o are
    // 2^o * (4 + s) / 4 for s in 1..=4 (the last is 2^(o+1)).
    let octave = usize::BITS as usize - 1 - (len - 1).leading_zeros() as usize;
    if octave >= MAX_OCTAVE {
        return None;
    }
    let base = 1usize << octave;
    let step = (base / CLASSES_PER_OCTAVE).max(1);
    let sub = (len - base).div_ceil(step).max(1);
    let cap = base + sub * step;
    Some((octave * CLASSES_PER_OCTAVE + sub - 1, cap))
}

/// Whether `capacity` is exactly a class capacity, and which class.
fn class_of_capacity<T>(capacity: usize) -> Option<usize> {
    class_of::<T>(capacity).and_then(|(idx, cap)| (cap == capacity).then_some(idx))
}

/// A buffer of `len` elements whose contents are unspecified (values left
/// by a previous user, or zero): for outputs the caller overwrites fully.
pub fn uninit<T: Element>(op: &'static str, len: usize) -> Result<Vec<T>> {
    let mut v = take::<T>(op, len)?;
    if v.len() >= len {
        v.truncate(len);
    } else {
        v.resize(len, T::default());
    }
    Ok(v)
}

/// A buffer of `len` zeros.
pub fn zeroed<T: Element>(op: &'static str, len: usize) -> Result<Vec<T>> {
    let mut v = take::<T>(op, len)?;
    v.clear();
    v.resize(len, T::default());
    Ok(v)
}

/// `len` copies of `value`.
pub fn filled<T: Element>(op: &'static str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = take::<T>(op, len)?;
    v.clear();
    v.resize(len, value);
    Ok(v)
}

/// A pooled copy of `src`.
pub fn copy_of<T: Element>(op: &'static str, src: &[T]) -> Result<Vec<T>> {
    let mut v = take::<T>(op, src.len())?;
    v.clear();
    v.extend_from_slice(src);
    Ok(v)
}

/// A buffer with capacity for `len` elements, from the pool when one is
/// free; its length is whatever its previous user left (all initialised).
fn take<T: Element>(op: &'static str, len: usize) -> Result<Vec<T>> {
    let class = class_of::<T>(len);
    let Some((idx, capacity)) = class.filter(|_| enabled()) else {
        return try_alloc(op, len);
    };
    if let Some(v) = lock(T::pool()).free.get_mut(idx).and_then(Vec::pop) {
        HELD_BYTES.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
        return Ok(v);
    }
    let number = MISSES.fetch_add(1, Ordering::Relaxed) as u64 + 1;
    let v = try_alloc(op, capacity)?;
    // The set's own growth is an allocation too, but only on a miss, never
    // in a steady state.
    let mut lists = lock(T::pool());
    let mine = lists.mine.get_or_insert_with(HashSet::new);
    mine.try_reserve(1).map_err(|_| Error::OutOfMemory {
        what: format!("{op} buffer pool bookkeeping"),
        shape: vec![mine.len() + 1],
        bytes: None,
    })?;
    mine.insert(v.as_ptr() as usize);
    if lists.free.len() <= idx {
        lists.free.resize_with(idx + 1, Vec::new);
        lists.allocated.resize(idx + 1, 0);
    }
    lists.allocated[idx] += 1;
    let allocated = lists.allocated[idx];
    let list = &mut lists.free[idx];
    // (Should this fail, `recycle` grows the list when it must.)
    let _ = list.try_reserve(allocated.saturating_sub(list.len()));
    drop(lists);
    RECENT_MISSES.record(
        number,
        Miss {
            number,
            op,
            len,
            class_bytes: capacity * std::mem::size_of::<T>(),
            class_count: allocated,
            thread: rayon::current_thread_index(),
        },
    );
    Ok(v)
}

/// The backend's one fallible allocation: an empty vector with room for
/// `capacity` elements, or an error naming the op and the size instead of
/// the allocator's abort.
pub fn try_alloc<T>(op: &'static str, capacity: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(capacity)
        .map_err(|_| Error::OutOfMemory {
            what: format!("{op} buffer"),
            shape: vec![capacity],
            bytes: (capacity as u128).checked_mul(std::mem::size_of::<T>() as u128),
        })?;
    Ok(v)
}

/// A pooled copy of host data (`Clone` would use the allocator directly,
/// and cannot fail gracefully).
pub fn copy_host(src: &HostData) -> Result<HostData> {
    Ok(match src {
        HostData::F32(v) => HostData::F32(copy_of("copy", v)?),
        HostData::I64(v) => HostData::I64(copy_of("copy", v)?),
    })
}

/// Takes back the buffer of a tensor storage that is being dropped,
/// leaving `data` empty.
pub fn recycle_host(data: &mut HostData) {
    match data {
        HostData::F32(v) => recycle(std::mem::take(v)),
        HostData::I64(v) => recycle(std::mem::take(v)),
    }
}

/// Takes back a buffer whose storage is being dropped: kept for reuse if
/// this pool allocated it (so it still has its class capacity) and caching
/// is on, freed otherwise.
pub fn recycle<T: Element>(v: Vec<T>) {
    if !enabled() {
        return;
    }
    let Some(idx) = class_of_capacity::<T>(v.capacity()) else {
        return;
    };
    let bytes = v.capacity() * std::mem::size_of::<T>();
    let mut lists = lock(T::pool());
    if !lists
        .mine
        .as_ref()
        .is_some_and(|m| m.contains(&(v.as_ptr() as usize)))
    {
        return;
    }
    // (Its class's list exists: the buffer's allocation made it.)
    match lists.free.get_mut(idx) {
        Some(list) => list.push(v),
        None => return,
    }
    HELD_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// Scratch buffers for the tasks of one parallel loop, all taken from the
/// pool before the loop starts and given back after it.
///
/// Why: a buffer taken from the pool inside each task makes the number of
/// buffers of that class live at once depend on how rayon schedules the
/// tasks (one at a time on one thread, or one per thread at once), so a
/// steady-state step could still miss the pool (and fault in ~20 KiB)
/// the first time two tasks overlapped (`max_pool2d`, BENCHMARKS.md issue
/// 9 item 16). Taking one per thread up front makes the pool traffic of
/// every call the same.
pub struct TaskBuffers<T: Element> {
    op: &'static str,
    len: usize,
    fill: T,
    free: Mutex<Vec<Vec<T>>>,
}

impl<T: Element> TaskBuffers<T> {
    /// One buffer of `len` copies of `fill` per rayon thread.
    pub fn new(op: &'static str, len: usize, fill: T) -> Result<Self> {
        let free = (0..rayon::current_num_threads())
            .map(|_| filled(op, len, fill))
            .collect::<Result<Vec<_>>>()?;
        Ok(TaskBuffers {
            op,
            len,
            fill,
            free: Mutex::new(free),
        })
    }

    /// Runs `f` on a buffer no other task is using. Its contents are what
    /// the previous task left (`fill` at first). More tasks at once than
    /// threads (only when a task itself waits on rayon) take one more from
    /// the pool.
    pub fn with<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        let lock = || self.free.lock().unwrap_or_else(|e| e.into_inner());
        let popped = lock().pop();
        let mut buf = match popped {
            Some(b) => b,
            None => filled(self.op, self.len, self.fill)?,
        };
        let result = f(&mut buf);
        lock().push(buf);
        Ok(result)
    }
}

impl<T: Element> Drop for TaskBuffers<T> {
    fn drop(&mut self) {
        let free = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
        free.drain(..).for_each(recycle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_each_request_with_at_most_a_quarter_slack() {
        assert_eq!(class_of::<f32>(10), None, "below MIN_POOLED_BYTES");
        let min = MIN_POOLED_BYTES / 4;
        let mut last_idx = None;
        for len in (min..min * 70).step_by(97).chain([1 << 20, (1 << 20) + 1]) {
            let (idx, cap) = class_of::<f32>(len).unwrap();
            assert!(cap >= len, "{len} -> {cap}");
            assert!(cap * 4 <= len * 5 + 4, "{len} -> {cap}: over 25% slack");
            assert_eq!(class_of_capacity::<f32>(cap), Some(idx), "{cap}");
            // Classes grow with the request.
            if let Some(prev) = last_idx {
                assert!(idx >= prev);
            }
            last_idx = Some(idx);
        }
        // Exactly a class capacity maps to itself; one more to the next class.
        let (idx, cap) = class_of::<f32>(1 << 20).unwrap();
        assert_eq!(cap, 1 << 20);
        assert_eq!(class_of::<f32>(cap + 1).unwrap().0, idx + 1);
        assert_eq!(class_of_capacity::<f32>(cap + 1), None);
    }

    #[test]
    fn dropped_buffers_are_reused_and_zeroed_on_request() {
        if !enabled() {
            return;
        }
        let len = 300_001;
        let mut a = uninit::<f32>("test", len).unwrap();
        a.iter_mut().for_each(|v| *v = 7.0);
        let ptr = a.as_ptr();
        recycle(a);
        // Another thread (another test) may take it first: retry a few
        // times with fresh requests of the same class.
        let b = zeroed::<f32>("test", len - 5).unwrap();
        assert_eq!(b.len(), len - 5);
        assert!(b.iter().all(|&v| v == 0.0));
        let reused = b.as_ptr() == ptr;
        recycle(b);
        let c = uninit::<f32>("test", len).unwrap();
        assert_eq!(c.len(), len);
        assert!(reused || c.as_ptr() == ptr || held_bytes() > 0);
        recycle(c);
    }

    #[test]
    fn small_and_odd_buffers_bypass_the_pool() {
        let v = zeroed::<i64>("test", 10).unwrap();
        assert_eq!(v.capacity(), 10);
        // A vector built elsewhere with no class capacity is freed, not kept.
        assert_eq!(class_of_capacity::<f32>(100_003), None);
    }

    #[test]
    fn only_buffers_the_pool_allocated_are_kept() {
        if !enabled() {
            return;
        }
        // Exactly a class capacity, but built elsewhere: freed on recycle.
        let len = 1 << 17;
        assert!(class_of_capacity::<i64>(len).is_some());
        let foreign: Vec<i64> = (0..len as i64).collect();
        assert_eq!(foreign.capacity(), len);
        let ptr = foreign.as_ptr() as usize;
        recycle(foreign);
        let lists = lock(i64::pool());
        assert!(
            !lists
                .free
                .iter()
                .flatten()
                .any(|v| v.as_ptr() as usize == ptr),
            "a foreign vector was kept"
        );
        drop(lists);
        // One the pool handed out goes back to it.
        let ours = uninit::<i64>("test", len - 3).unwrap();
        let ptr = ours.as_ptr() as usize;
        recycle(ours);
        let lists = lock(i64::pool());
        let kept = lists
            .free
            .iter()
            .flatten()
            .any(|v| v.as_ptr() as usize == ptr);
        // (Unless another test took it meanwhile; it is no longer free then.)
        assert!(kept || lists.mine.as_ref().is_some_and(|m| m.contains(&ptr)));
    }

    #[test]
    fn a_miss_is_recorded_with_its_op_and_size() {
        if !enabled() {
            return;
        }
        // A size no other test asks for, so its class has no free buffer.
        let len = (3 << 20) + 12_345;
        let before = misses();
        let v = uninit::<f32>("recorded_miss", len).unwrap();
        let (_, cap) = class_of::<f32>(len).unwrap();
        let Some(miss) = recent_misses()
            .into_iter()
            .find(|m| m.op == "recorded_miss")
        else {
            // Only if the tests running beside this one missed the pool
            // more than the ring keeps meanwhile (the tap-by-tap weight
            // gradient's tests miss it at every new size, on every thread
            // count): its record was recorded, then overwritten.
            let since = misses() - before;
            assert!(
                since > super::super::recent::KEPT as u64,
                "the miss was recorded ({since} since)"
            );
            recycle(v);
            return;
        };
        assert_eq!((miss.len, miss.class_bytes), (len, cap * 4));
        assert!(miss.class_count >= 1 && miss.number >= 1 && miss.number <= misses());
        assert_eq!(miss.thread, None, "the test thread is no rayon worker");
        assert!(miss.to_string().contains("by recorded_miss"), "{miss}");
        recycle(v);
    }

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        let err = zeroed::<f32>("huge", usize::MAX / 8).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("out of memory: huge buffer") && err.contains("bytes"),
            "{err}"
        );
        assert!(try_alloc::<i64>("huge", usize::MAX / 4).is_err());
    }
}
