//! The CUDA backend: hand-written kernels (`kernels/*.cu`) compiled at first
//! use by NVRTC for the device's exact architecture, launched through
//! `cudarc`'s driver API. No cuBLAS, no cuDNN.
//!
//! - [`device`]: finds out whether CUDA can be used at all (driver library,
//!   NVRTC, a device) without panicking, and keeps one context + stream per
//!   device ordinal.
//! - [`allocator`]: the caching, stream-ordered device allocator.
//! - `module_cache`: compiles each kernel file once per device.
//! - `params`: the kernels' `#[repr(C)]` parameter structs and the
//!   layout checks that tie them to their `.cu` declarations.
//! - `storage`: [`CudaStorage`], the device buffer, its
//!   [`BackendStorage`](crate::backend::BackendStorage) implementation (one
//!   line per kernel, calling the op family's file) and the launch helpers.
//! - one file per op family, like `cpu/`: `elementwise`, `gemm`, `conv`,
//!   `batch_norm`, `pool`, `loss`, `sgd`, `general`, each launching the kernels of its
//!   `kernels/*.cu`.

pub mod allocator;
mod batch_norm;
mod conv;
pub mod device;
mod elementwise;
mod gemm;
mod general;
mod loss;
mod module_cache;
mod params;
mod pool;
mod sgd;
mod storage;

/// The integration tests' helper that runs a test on a GPU or, re-executing
/// the test binary, on the emulation (`cuda-emu/`): for unit tests of
/// private items (the module cache, the parameter layouts).
#[cfg(test)]
#[path = "../../../tests/common/cuda_emu.rs"]
mod cuda_emu;

pub use device::{auto_device, availability, is_available, CudaDevice};
pub use storage::CudaStorage;
