//! A caching device allocator: a training step allocates and frees the same
//! few hundred buffers every time, and a driver allocation (`cuMemAlloc*`,
//! `cuMemAllocAsync`) costs microseconds and may synchronise the device. So
//! a buffer whose tensor is dropped goes back to a per-device pool instead
//! of the driver, and the next request of the same size class takes it: a
//! steady-state step makes no driver allocation at all (see
//! `tests/cuda_step_budget.rs`).
//!
//! - **Size classes**: a request is rounded up to 512 bytes, or above that to
//!   one of four classes per power of two (2^k times 1, 1.25, 1.5, 1.75), so
//!   a block is at most 25% larger than asked and recurring sizes reuse
//!   recurring blocks. The tensor keeps its logical length; only the block
//!   is larger.
//! - **Stream order**: every kernel and copy of a device runs on its one
//!   stream (see `device.rs`). A block given back when its tensor is dropped
//!   may still be read by queued work, but whoever takes it next can only
//!   queue work behind that, on the same stream; so reuse needs no event and
//!   no wait. (A second stream would need an event per block.)
//! - **Release on demand**: [`Allocator::release_cached`] frees every pooled
//!   block, and a driver allocation that fails for lack of memory releases
//!   the pool and retries once.
//! - **Kernel checking**: while the CUDA emulation checks kernels
//!   (`FROSTGRAD_CUDA_EMU_CHECK`, see cuda-emu/README.md) there is no pool and
//!   no size class: every block is its own driver allocation of exactly the
//!   requested size, freed on drop, so that memcheck sees a tensor's own
//!   bounds and initcheck a fresh buffer, not a recycled one.
//! - **Accounting**: [`AllocatorStats`] counts driver allocations, reuses and
//!   bytes held from the driver (live + cached, with its peak). The tensor
//!   byte accounting of `tensor/memory.rs` (live and peak bytes of tensors,
//!   what the benchmark reports) is unchanged: it counts logical sizes.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchArgs, PushKernelArg};

use crate::error::{Error, Result};

/// Smallest block, in bytes.
const MIN_BLOCK: usize = 512;

/// The block size, in bytes, for a request of `bytes`.
pub(crate) fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        return MIN_BLOCK;
    }
    // bytes in (half, 2 * half]: round up to a multiple of half / 4.
    let half = bytes.next_power_of_two() / 2;
    let step = half / 4;
    half + (bytes - half).div_ceil(step) * step
}

/// Element types with a pool of their own.
pub(crate) trait Pooled: DeviceRepr + Sized {
    fn pool(a: &Allocator) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>>;
}
impl Pooled for f32 {
    fn pool(a: &Allocator) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>> {
        &a.f32
    }
}
impl Pooled for i64 {
    fn pool(a: &Allocator) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>> {
        &a.i64
    }
}

/// What the allocator has done since the device was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Blocks obtained from the driver.
    pub driver_allocs: u64,
    /// Requests served from the pool.
    pub reuses: u64,
    /// Bytes held from the driver now (blocks in use and pooled).
    pub driver_bytes: usize,
    /// Highest `driver_bytes` so far.
    pub peak_driver_bytes: usize,
    /// Bytes in pooled (free) blocks now.
    pub cached_bytes: usize,
}

/// The per-device pool; see the module documentation.
#[derive(Default)]
pub struct Allocator {
    f32: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
    i64: Mutex<HashMap<usize, Vec<CudaSlice<i64>>>>,
    stats: Mutex<AllocatorStats>,
    /// Exact-size blocks and no pool (kernel checking; see the module docs).
    exact: bool,
}

impl Allocator {
    /// A pool, or exact-size allocations while the emulation checks kernels.
    pub(crate) fn new() -> Self {
        let checking = std::env::var("FROSTGRAD_CUDA_EMU_CHECK")
            .map(|v| !matches!(v.as_str(), "" | "0" | "none" | "off"))
            .unwrap_or(false);
        Allocator {
            exact: checking,
            ..Default::default()
        }
    }

    pub fn stats(&self) -> AllocatorStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A block of at least `len` elements (uninitialised: the caller writes
    /// what it reads), from the pool if one of its class is free.
    pub(crate) fn take<T: Pooled>(
        self: &Arc<Self>,
        stream: &Arc<CudaStream>,
        len: usize,
        op: &'static str,
    ) -> Result<Block<T>> {
        let elem = std::mem::size_of::<T>();
        let bytes = len
            .max(1)
            .checked_mul(elem)
            .ok_or_else(|| Error::invalid(op, format!("{len} elements overflow")))?;
        let class = if self.exact { bytes } else { size_class(bytes) };
        let class_len = class / elem;
        let pooled = T::pool(self)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&class_len)
            .and_then(Vec::pop);
        let slice = match pooled {
            Some(s) => {
                let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                st.reuses += 1;
                st.cached_bytes -= class;
                s
            }
            None => {
                // SAFETY: the caller writes every element it later reads
                // (see `CudaStorage::output`).
                let s = match unsafe { stream.alloc::<T>(class_len) } {
                    Ok(s) => s,
                    Err(_) => {
                        // Perhaps out of memory because of the pool: give
                        // it back to the driver and try once more.
                        self.release_cached();
                        // SAFETY: as above.
                        unsafe { stream.alloc::<T>(class_len) }.map_err(|e| {
                            Error::Cuda(format!("{op}: allocating {class} bytes: {e}"))
                        })?
                    }
                };
                let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                st.driver_allocs += 1;
                st.driver_bytes += class;
                st.peak_driver_bytes = st.peak_driver_bytes.max(st.driver_bytes);
                s
            }
        };
        Ok(Block {
            slice: Some(slice),
            allocator: self.clone(),
        })
    }

    fn give_back<T: Pooled>(&self, slice: CudaSlice<T>) {
        let class = slice.len() * std::mem::size_of::<T>();
        if self.exact {
            drop(slice); // freed (stream-ordered)
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .driver_bytes -= class;
            return;
        }
        T::pool(self)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(slice.len())
            .or_default()
            .push(slice);
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cached_bytes += class;
    }

    /// Frees every pooled block to the driver (blocks in use are kept).
    pub fn release_cached(&self) {
        let f32_blocks: Vec<_> =
            std::mem::take(&mut *self.f32.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .flatten()
                .collect();
        let i64_blocks: Vec<_> =
            std::mem::take(&mut *self.i64.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .flatten()
                .collect();
        let freed = f32_blocks.iter().map(|s| s.len() * 4).sum::<usize>()
            + i64_blocks.iter().map(|s| s.len() * 8).sum::<usize>();
        // Dropping a CudaSlice frees it (stream-ordered).
        drop(f32_blocks);
        drop(i64_blocks);
        let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.cached_bytes -= freed;
        st.driver_bytes -= freed;
    }
}

/// A device buffer from the [`Allocator`], given back to its pool on drop.
/// Dereferences to the `CudaSlice`, whose length is the size class's (at
/// least what was asked for).
pub(crate) struct Block<T: Pooled> {
    // Always `Some` until dropped.
    slice: Option<CudaSlice<T>>,
    allocator: Arc<Allocator>,
}

impl<T: Pooled> Deref for Block<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        self.slice.as_ref().expect("a live block holds its slice")
    }
}
impl<T: Pooled> DerefMut for Block<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        self.slice.as_mut().expect("a live block holds its slice")
    }
}
impl<T: Pooled> Drop for Block<T> {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.allocator.give_back(s);
        }
    }
}

// Kernel arguments: a block is passed as its slice's device pointer.
// SAFETY: delegates to cudarc's implementations for `&CudaSlice<T>` and
// `&mut CudaSlice<T>`, which push a pointer to the slice's device address
// that lives as long as the borrow of the block.
unsafe impl<'a, 'b: 'a, T: Pooled> PushKernelArg<&'b Block<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b Block<T>) -> &mut Self {
        self.arg(&**arg)
    }
}
// SAFETY: as above.
unsafe impl<'a, 'b: 'a, T: Pooled> PushKernelArg<&'b mut Block<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut Block<T>) -> &mut Self {
        self.arg(&mut **arg)
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_requests_with_at_most_a_quarter_to_spare() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 640);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1280);
        assert_eq!(size_class(3 << 20), 3 << 20);
        let mut last = 0;
        for bytes in (1..200_000).step_by(7) {
            let c = size_class(bytes);
            assert!(c >= bytes && c >= last, "{bytes} -> {c}");
            assert!(
                bytes <= 512 || c * 4 <= bytes * 5 + 4 * 128,
                "{bytes} -> {c}"
            );
            assert_eq!(c % 128, 0);
            last = c;
        }
    }
}
