//! Per-thread scratch buffers, reused across kernel calls so the
//! convolutions do not allocate (and page-fault) a fresh column buffer for
//! every image.

use std::cell::Cell;

/// Which of a thread's scratch buffers to use: a kernel that needs two at
/// once (a column matrix and a staging copy of `y`) takes one of each.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Columns,
    Staging,
    /// A GEMM left operand packed once for all its uses (gemm.rs).
    PackedLhs,
    /// A self-packing right operand written out densely for the portable
    /// GEMM (gemm.rs).
    Dense,
}

thread_local! {
    static COLUMNS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static STAGING: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACKED_LHS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static DENSE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements whose contents are
/// unspecified (callers overwrite it before reading).
///
/// The buffer is moved out of the thread-local while `f` runs, so a nested
/// call on the same thread (rayon may run another kernel on this thread
/// while `f` waits for a parallel loop) gets its own fresh buffer instead
/// of aliasing this one.
pub(super) fn with_scratch<R>(slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let key = match slot {
        Slot::Columns => &COLUMNS,
        Slot::Staging => &STAGING,
        Slot::PackedLhs => &PACKED_LHS,
        Slot::Dense => &DENSE,
    };
    let mut buf = key.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    key.with(|cell| {
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
