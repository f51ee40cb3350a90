//! A count of the floating-point work the GEMM-shaped ops execute, so a
//! benchmark can report the FLOPs of each phase and what freezing skipped.
//!
//! Only convolutions and linear layers are counted (2 FLOPs per
//! multiply-accumulate): in ResNet-18 they are over 99% of the arithmetic,
//! and their cost follows from the shapes alone. The count is
//! direct-equivalent: the multiply-adds of the direct definition, whatever
//! algorithm ran (the CPU backend's stride-1 3x3 convolutions through
//! Winograd F(2x2, 3x3) execute 2.25x fewer), so a rate derived from it can
//! exceed a machine's FMA peak. The counter is per thread,
//! like grad mode, so concurrent tests do not disturb each other.

use std::cell::Cell;

thread_local! {
    static EXECUTED: Cell<u64> = const { Cell::new(0) };
}

/// FLOPs executed by conv2d and linear (forward and backward) on this thread
/// since the last [`reset`].
pub fn executed() -> u64 {
    EXECUTED.with(|c| c.get())
}

pub fn reset() {
    EXECUTED.with(|c| c.set(0));
}

pub(crate) fn add_macs(macs: u64) {
    EXECUTED.with(|c| c.set(c.get() + 2 * macs));
}
