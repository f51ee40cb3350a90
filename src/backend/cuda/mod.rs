//! The CUDA backend: hand-written kernels (`kernels/*.cu`) compiled at first
//! use by NVRTC for the device's exact architecture, launched through
//! `cudarc`'s driver API. No cuBLAS, no cuDNN.
//!
//! - [`device`]: finds out whether CUDA can be used at all (driver library,
//!   NVRTC, a device) without panicking, and keeps one context + stream per
//!   device ordinal.
//! - [`allocator`]: the caching, stream-ordered device allocator.
//! - [`module_cache`]: compiles each kernel file once per device.
//! - [`storage`]: [`CudaStorage`], the device buffer, and its
//!   [`BackendStorage`](crate::backend::BackendStorage) implementation.

pub mod allocator;
pub mod device;
mod module_cache;
mod storage;

pub use device::{auto_device, availability, is_available, CudaDevice};
pub use storage::CudaStorage;
