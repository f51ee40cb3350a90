//! Probing for CUDA and the per-ordinal device registry.
//!
//! `cudarc` loads `libcuda` and `libnvrtc` lazily and panics if a library is
//! missing, so every entry point here first checks that both libraries can
//! be opened, and catches a panic from the driver as a last resort: asking
//! for CUDA on a machine without it is an error, never a crash.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys::CUdevice_attribute, CudaContext, CudaStream};

use super::allocator::{Allocator, AllocatorStats};
use super::module_cache::KernelCache;
use crate::core_types::Device;
use crate::error::{Error, Result};

/// One CUDA device in use: its context, the single stream every kernel and
/// copy of this process runs on (so all work is ordered without events), and
/// its compiled kernels.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    multiprocessors: usize,
    stream: Arc<CudaStream>,
    kernels: KernelCache,
    allocator: Arc<Allocator>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .finish()
    }
}

impl CudaDevice {
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `(major, minor)`, e.g. `(9, 0)` for an H100/H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub(crate) fn kernels(&self) -> &KernelCache {
        &self.kernels
    }
    pub(crate) fn allocator(&self) -> &Arc<Allocator> {
        &self.allocator
    }
    /// What the caching allocator has done (driver allocations, reuses,
    /// bytes held).
    pub fn allocator_stats(&self) -> AllocatorStats {
        self.allocator.stats()
    }
    /// Frees the allocator's pooled blocks to the driver (after the work
    /// queued so far, in stream order).
    pub fn release_cached_memory(&self) {
        self.allocator.release_cached()
    }
    /// Whether this "device" is frostgrad's host emulation of CUDA
    /// (`cuda-emu/`), whose device name says so: its times are host times.
    pub fn is_emulation(&self) -> bool {
        is_emulation_name(&self.name)
    }
    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    /// Waits for all queued work; reports a kernel fault that happened in it.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::Cuda(format!("synchronizing cuda:{}: {e}", self.ordinal)))
    }
}

/// The emulated driver names its device "frostgrad CUDA emulation (...)".
pub(crate) fn is_emulation_name(name: &str) -> bool {
    name.contains("frostgrad CUDA emulation")
}

/// Runs `f`, turning a panic inside the driver bindings into an error.
fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("{what} failed inside the CUDA bindings: {msg}"))
        }
    }
}

/// How many CUDA devices this process can use, or why it can use none.
/// Computed once.
pub fn availability() -> std::result::Result<usize, String> {
    static PROBE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: only tries to dlopen the library and drops the handle.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err("no CUDA driver library (libcuda.so) could be loaded".into());
            }
            // SAFETY: as above, for libnvrtc.
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Err(
                    "the CUDA driver is present but NVRTC (libnvrtc.so), which compiles the kernels, is not".into(),
                );
            }
            let count = guarded("cuDeviceGetCount", || {
                CudaContext::device_count().map_err(|e| format!("the CUDA driver reports an error: {e}"))
            })?;
            if count <= 0 {
                return Err("the CUDA driver reports no device".into());
            }
            Ok(count as usize)
        })
        .clone()
}

pub fn is_available() -> bool {
    availability().is_ok()
}

/// `--device auto`: the first CUDA device if there is one, else the CPU with
/// the reason CUDA was not used (for the caller to print).
pub fn auto_device() -> (Device, Option<String>) {
    match availability() {
        Ok(_) => (Device::Cuda(0), None),
        Err(reason) => (Device::Cpu, Some(reason)),
    }
}

/// The device for `ordinal`, initialised on first use.
pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
    let device = Device::Cuda(ordinal);
    let count = availability().map_err(|reason| Error::DeviceUnavailable { device, reason })?;
    if ordinal >= count {
        return Err(Error::DeviceUnavailable {
            device,
            reason: format!("this machine has {count} CUDA device(s)"),
        });
    }
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(open(ordinal).map_err(|reason| Error::DeviceUnavailable { device, reason })?);
    devices.insert(ordinal, d.clone());
    Ok(d)
}

fn open(ordinal: usize) -> std::result::Result<CudaDevice, String> {
    guarded("opening the CUDA device", || {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("creating a context: {e}"))?;
        // SAFETY: every buffer and kernel of this device lives on the one
        // stream created below, so stream order already serialises all
        // accesses and cudarc's per-buffer events would only cost time.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating a stream: {e}"))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| format!("querying the architecture: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let multiprocessors = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as usize)
            .unwrap_or(1);
        Ok(CudaDevice {
            ordinal,
            name,
            compute_capability,
            multiprocessors,
            stream,
            kernels: KernelCache::default(),
            allocator: Arc::new(Allocator::new()),
        })
    })
}
