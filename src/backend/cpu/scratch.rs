//! Per-thread scratch buffers, reused across kernel calls so the
//! convolutions do not allocate (and page-fault) a fresh column buffer for
//! every image.

use std::cell::Cell;

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements whose contents are
/// unspecified (callers overwrite it before reading).
///
/// The buffer is moved out of the thread-local while `f` runs, so a nested
/// call on the same thread (rayon may run another kernel on this thread
/// while `f` waits for a parallel loop) gets its own fresh buffer instead
/// of aliasing this one.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    SCRATCH.with(|cell| {
        // Keep the larger buffer if a nested call left one behind.
        let other = cell.take();
        cell.set(if other.capacity() > buf.capacity() {
            other
        } else {
            buf
        });
    });
    result
}
