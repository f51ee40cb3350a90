//! `CudaStorage`: one tensor's device buffer, and the `BackendStorage`
//! implementation that launches `kernels/*.cu`.
//!
//! Every method checks lengths and dtypes on the host, allocates its outputs
//! and queues kernels on the device's one stream; nothing waits for the GPU
//! except copies to the host.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

use super::allocator::{Block, Pooled};
use super::device::{self, CudaDevice};
use crate::backend::cpu::CpuStorage;
use crate::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormOutput, BatchNormParams,
    BatchNormSaved, BatchNormStats, BinaryOp, Conv2dGeometry, Pool2dGeometry, ReduceOp, SgdConfig,
    StridedLayout, UnaryOp,
};
use crate::core_types::{DType, Device};
use crate::error::{Error, Result};

/// The data of a CUDA buffer, by element type: a block of the device's
/// caching allocator (`allocator.rs`), given back to it on drop.
pub(crate) enum CudaData {
    F32(Block<f32>),
    I64(Block<i64>),
}

/// A contiguous buffer on one CUDA device.
///
/// The block is at least one element long (drivers reject empty
/// allocations) and may be longer (size classes); `len` is the logical
/// length, and every kernel and copy uses only that.
pub struct CudaStorage {
    pub(super) data: CudaData,
    pub(super) len: usize,
    pub(super) device: Arc<CudaDevice>,
    /// For i64 data uploaded from the host: its smallest and largest value,
    /// read there, so that labels are validated without copying them back
    /// from the device in every step (`checked_labels`). `None` when the
    /// data was produced on the device.
    pub(super) host_range: Option<(i64, i64)>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStorage")
            .field("device", &self.device())
            .field("dtype", &self.dtype())
            .field("len", &self.len)
            .finish()
    }
}

pub(super) fn driver_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{op}: {e}"))
}

/// Kernel arguments are `int`: refuse what does not fit rather than truncate.
pub(super) fn int(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::invalid(
            op,
            format!("size {v} exceeds the CUDA backend's 2^31 - 1 limit"),
        )
    })
}

pub(super) fn flag(b: bool) -> i32 {
    b as i32
}

/// 256-thread 1-d launch over `n` items (kernels loop over the rest).
pub(super) fn linear_launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch over `planes` planes of `s` values (batch-norm elementwise kernels).
pub(super) fn plane_launch(planes: usize, s: usize) -> LaunchConfig {
    let x = s.div_ceil(256).clamp(1, 1024) as u32;
    let y = planes.clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per item (a channel or a row).
pub(super) fn per_item_launch(items: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The tiled GEMM kernels' launch: 64 x 64 output tiles of 16 x 16 threads.
pub(super) const TILE: usize = 64;
/// At least one block in every dimension, as [`linear_launch`] does: a grid
/// of zero blocks is an invalid launch (`CUDA_ERROR_INVALID_VALUE`), and an
/// empty side happens for real (the input gradient of a zero-size image
/// whose padding still gives an output); every tiled kernel checks its
/// rows and columns against the sizes, so the one block writes nothing.
pub(super) fn tile_launch(rows: usize, cols: usize, splits: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(TILE).max(1) as u32,
            rows.div_ceil(TILE).max(1) as u32,
            splits.max(1) as u32,
        ),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    }
}

/// Queues kernel `$name` of `$file` on `$dev`'s stream with the given
/// arguments (references to device buffers or to host scalars, which must
/// outlive the statement).
macro_rules! launch {
    ($dev:expr, $file:expr, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let dev: &$crate::backend::cuda::device::CudaDevice = &$dev;
        let function = dev.kernels().function(dev.stream().context(), dev.compute_capability(), $file, $name)?;
        let mut builder = dev.stream().launch_builder(&function);
        $( builder.arg($arg); )*
        // SAFETY: the arguments match the kernel's parameter list in
        // kernels/*.cu one for one (types and order; the scalars are one
        // kernel_params! struct whose C layout is checked when the file
        // is compiled, params.rs), every buffer was
        // checked on the host to hold what the kernel indexes, and all work
        // is on this one stream, so no buffer is freed or reused before the
        // kernel has run.
        unsafe { builder.launch($cfg) }
            .map_err(|e| $crate::backend::cuda::storage::driver_err($name, e))?;
    }};
}
pub(super) use launch;

impl CudaStorage {
    /// Copies host data to device `ordinal`.
    pub fn from_cpu(data: &CpuStorage, ordinal: usize) -> Result<Self> {
        let device = device::get(ordinal)?;
        let stream = device.stream().clone();
        let len = data.len();
        let op = "to_device";
        let mut host_range = None;
        let data = match data {
            CpuStorage::F32(v) => {
                // The copy below fills all `len` elements; the rest of the
                // block is never read.
                let mut block = uninit::<f32>(&device, len, op)?;
                if len > 0 {
                    stream
                        .memcpy_htod(v.as_slice(), &mut *block)
                        .map_err(|e| driver_err(op, e))?;
                }
                CudaData::F32(block)
            }
            CpuStorage::I64(v) => {
                let mut block = uninit::<i64>(&device, len, op)?;
                if len > 0 {
                    stream
                        .memcpy_htod(v.as_slice(), &mut *block)
                        .map_err(|e| driver_err(op, e))?;
                }
                host_range = v.iter().min().zip(v.iter().max()).map(|(&a, &b)| (a, b));
                CudaData::I64(block)
            }
        };
        Ok(Self {
            data,
            len,
            device,
            host_range,
        })
    }

    pub fn cuda_device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// A new f32 buffer on the same device whose contents the caller's
    /// kernel will write in full before anything reads them.
    pub(super) fn output(&self, len: usize, op: &'static str) -> Result<Block<f32>> {
        uninit::<f32>(&self.device, len, op)
    }

    pub(super) fn wrap(&self, block: Block<f32>, len: usize) -> Self {
        Self {
            data: CudaData::F32(block),
            len,
            device: self.device.clone(),
            host_range: None,
        }
    }

    pub(super) fn f32(&self, op: &'static str) -> Result<&CudaSlice<f32>> {
        match &self.data {
            CudaData::F32(s) => Ok(&**s),
            CudaData::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub(super) fn f32_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<f32>> {
        match &mut self.data {
            CudaData::F32(s) => Ok(&mut **s),
            CudaData::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub(super) fn i64(&self, op: &'static str) -> Result<&CudaSlice<i64>> {
        match &self.data {
            CudaData::I64(s) => Ok(&**s),
            CudaData::F32(_) => Err(Error::DType {
                op,
                expected: DType::I64,
                got: DType::F32,
            }),
        }
    }

    /// Same device check for an argument (two CUDA ordinals can differ).
    pub(super) fn same_device(&self, op: &'static str, other: &Self) -> Result<()> {
        if self.device.ordinal() != other.device.ordinal() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        Ok(())
    }

    /// An f32 argument's data, after checking that it is on this GPU
    /// (dtype and length were checked by `backend::check`).
    pub(super) fn arg<'a>(&self, op: &'static str, other: &'a Self) -> Result<&'a CudaSlice<f32>> {
        self.same_device(op, other)?;
        other.f32(op)
    }
}

/// A block of at least `len` elements from the device's caching allocator.
/// Callers write every one of the `len` elements (a kernel or a copy)
/// before anything reads them; the rest of the block is never read.
pub(super) fn uninit<T: Pooled>(
    device: &CudaDevice,
    len: usize,
    op: &'static str,
) -> Result<Block<T>> {
    device.allocator().take::<T>(device.stream(), len, op)
}

/// Whether the tiled kernels may read `buf` with 16-byte (`float4`) loads
/// along an axis of `extent` elements: the extent must be a multiple of 4
/// (so a group of 4 never straddles a row or runs off the end) and the buffer
/// must start 16-byte aligned. cudarc allocations are 256-byte aligned, but
/// the pointer is checked rather than assumed. As the kernels' `int` flag.
pub(super) fn vec4(device: &CudaDevice, buf: &CudaSlice<f32>, extent: usize) -> i32 {
    let (ptr, _sync) = buf.device_ptr(device.stream());
    flag(vec4_extent(extent) && ptr % 16 == 0)
}

fn vec4_extent(extent: usize) -> bool {
    extent.is_multiple_of(4)
}

impl BackendStorage for CudaStorage {
    fn device(&self) -> Device {
        self.device.device()
    }
    fn dtype(&self) -> DType {
        match self.data {
            CudaData::F32(_) => DType::F32,
            CudaData::I64(_) => DType::I64,
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        let op = "to_cpu";
        let stream = self.device.stream();
        // Only the logical length: the block may be longer.
        let n = self.len;
        let out = match &self.data {
            CudaData::F32(_) if n == 0 => CpuStorage::F32(Vec::new()),
            CudaData::I64(_) if n == 0 => CpuStorage::I64(Vec::new()),
            CudaData::F32(s) => CpuStorage::F32(
                stream
                    .clone_dtoh(&s.slice(0..n))
                    .map_err(|e| driver_err(op, e))?,
            ),
            CudaData::I64(s) => CpuStorage::I64(
                stream
                    .clone_dtoh(&s.slice(0..n))
                    .map_err(|e| driver_err(op, e))?,
            ),
        };
        // The copy into pageable memory is complete on return, but a fault
        // in an earlier kernel is only reported by a synchronisation.
        self.device.synchronize()?;
        Ok(out)
    }
    fn try_clone(&self) -> Result<Self> {
        let op = "clone";
        let stream = self.device.stream();
        let n = self.len;
        let data = match &self.data {
            CudaData::F32(s) => {
                let mut block = uninit::<f32>(&self.device, n, op)?;
                if n > 0 {
                    stream
                        .memcpy_dtod(&s.slice(0..n), &mut *block)
                        .map_err(|e| driver_err(op, e))?;
                }
                CudaData::F32(block)
            }
            CudaData::I64(s) => {
                let mut block = uninit::<i64>(&self.device, n, op)?;
                if n > 0 {
                    stream
                        .memcpy_dtod(&s.slice(0..n), &mut *block)
                        .map_err(|e| driver_err(op, e))?;
                }
                CudaData::I64(block)
            }
        };
        Ok(Self {
            data,
            len: n,
            device: self.device.clone(),
            host_range: self.host_range,
        })
    }

    // ----- elementwise and reductions --------------------------------------
    fn add(&self, rhs: &Self) -> Result<Self> {
        self.launch_add(rhs)
    }
    fn add_assign(&mut self, rhs: &Self) -> Result<()> {
        self.launch_add_assign(rhs)
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        self.launch_scale(factor)
    }
    fn sum_all(&self) -> Result<Self> {
        self.launch_sum_all()
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        self.launch_broadcast_scalar(len)
    }
    fn relu(&self) -> Result<Self> {
        self.launch_relu()
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        self.launch_relu_backward(output)
    }
    fn add_relu(&self, rhs: &Self) -> Result<Self> {
        self.launch_add_relu(rhs)
    }
    fn relu_backward_assign(&mut self, output: &Self) -> Result<()> {
        self.launch_relu_backward_assign(output)
    }
    fn add_relu_assign(&mut self, rhs: &Self) -> Result<()> {
        self.launch_add_relu_assign(rhs)
    }

    // ----- dense -----------------------------------------------------------
    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self> {
        self.launch_matmul(rhs, m, k, n, lhs_transposed, rhs_transposed)
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_add_row_vector(row, rows, cols)
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_sum_rows(rows, cols)
    }

    // ----- the general op set (backend::strided) ----------------------------
    fn strided_copy(&self, layout: &StridedLayout) -> Result<Self> {
        self.launch_strided_copy(layout)
    }
    fn binary(
        &self,
        rhs: &Self,
        op_kind: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self> {
        self.launch_binary(rhs, op_kind, lhs_layout, rhs_layout)
    }
    fn unary(&self, op_kind: UnaryOp) -> Result<Self> {
        self.launch_unary(op_kind)
    }
    fn reduce_rows(&self, op_kind: ReduceOp, rows: usize, cols: usize) -> Result<Self> {
        self.launch_reduce_rows(op_kind, rows, cols)
    }
    fn batched_matmul(
        &self,
        rhs: &Self,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self> {
        self.launch_batched_matmul(rhs, batch, m, k, n, lhs_transposed, rhs_transposed)
    }

    // ----- convolution -----------------------------------------------------
    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        self.launch_conv2d(weight, bias, g)
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        self.launch_conv2d_input_grad(weight, g)
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        self.launch_conv2d_weight_grad(input, g)
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        self.launch_channel_sums(g)
    }

    // ----- batch norm ------------------------------------------------------
    fn batch_norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        stats: BatchNormStats<'_, Self>,
        p: &BatchNormParams,
    ) -> Result<BatchNormOutput<Self>> {
        self.launch_batch_norm(weight, bias, stats, p)
    }
    fn batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        self.launch_batch_norm_backward(saved, p, needs)
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        self.launch_update_running_stats(running_var, batch_mean, batch_var, momentum, count)
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        self.launch_inv_std(eps)
    }

    // ----- pooling ---------------------------------------------------------
    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        self.launch_max_pool2d(g)
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        self.launch_max_pool2d_backward(indices, g)
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        self.launch_adaptive_avg_pool2d(g)
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        self.launch_adaptive_avg_pool2d_backward(g)
    }

    // ----- loss ------------------------------------------------------------
    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_log_softmax(rows, cols)
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_log_softmax_backward(output, rows, cols)
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_nll_loss(labels, rows, cols)
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        self.launch_nll_loss_backward(labels, rows, cols)
    }

    fn increment_i64(&mut self) -> Result<()> {
        self.launch_increment_i64()
    }

    // ----- optimizer -------------------------------------------------------
    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        self.launch_sgd_step(grad, momentum_buffer, cfg, initialize_buffer)
    }
}
