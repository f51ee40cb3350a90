//! Accounting of tensor memory: bytes held by live tensor storages, per
//! device, and the peak since the last reset. Benchmarks read the peak to
//! show that a frozen prefix keeps no activations alive.
//!
//! Only tensor storages are counted (what the autograd graph keeps alive),
//! not a kernel's scratch space such as an im2col buffer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use super::{Device, Storage};
use crate::backend::BackendStorage;

/// Devices tracked separately: the CPU and up to this many CUDA ordinals.
const MAX_CUDA_DEVICES: usize = 16;

struct Counters {
    live: AtomicUsize,
    peak: AtomicUsize,
}

static COUNTERS: [Counters; MAX_CUDA_DEVICES + 1] = [const {
    Counters {
        live: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    }
}; MAX_CUDA_DEVICES + 1];

fn counters(device: Device) -> Option<&'static Counters> {
    match device {
        Device::Cpu => Some(&COUNTERS[0]),
        Device::Cuda(i) => COUNTERS.get(i + 1),
    }
}

/// Bytes held right now by tensor storages on `device`.
pub fn live_bytes(device: Device) -> usize {
    counters(device).map_or(0, |c| c.live.load(Ordering::Relaxed))
}

/// Highest [`live_bytes`] since the last [`reset_peak_bytes`] (or start).
pub fn peak_bytes(device: Device) -> usize {
    counters(device).map_or(0, |c| c.peak.load(Ordering::Relaxed))
}

/// Starts a new peak measurement from the current live bytes.
pub fn reset_peak_bytes(device: Device) {
    if let Some(c) = counters(device) {
        c.peak
            .store(c.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A storage whose bytes count as live until it is dropped.
pub(crate) struct TrackedStorage {
    pub(crate) lock: RwLock<Storage>,
    bytes: usize,
    device: Device,
}

impl TrackedStorage {
    pub(crate) fn new(storage: Storage) -> Self {
        let bytes = storage.len() * storage.dtype().size_in_bytes();
        let device = storage.device();
        if let Some(c) = counters(device) {
            let live = c.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
            c.peak.fetch_max(live, Ordering::Relaxed);
        }
        TrackedStorage {
            lock: RwLock::new(storage),
            bytes,
            device,
        }
    }
}

impl Drop for TrackedStorage {
    fn drop(&mut self) {
        // The host buffer goes back to the CPU pool for the next tensor
        // instead of back to the OS.
        let storage = self.lock.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Storage::Cpu(data) = storage {
            crate::backend::cpu::buffer_pool::recycle_host(data);
        }
        if let Some(c) = counters(self.device) {
            c.live.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}
