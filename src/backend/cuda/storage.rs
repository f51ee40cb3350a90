//! `CudaStorage`: one tensor's device buffer, and the `BackendStorage`
//! implementation that launches `kernels/*.cu`.
//!
//! Every method checks lengths and dtypes on the host, allocates its outputs
//! and queues kernels on the device's one stream; nothing waits for the GPU
//! except copies to the host.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

use super::allocator::{Block, Pooled};
use super::device::{self, CudaDevice};
use super::module_cache::KernelFile;
use crate::backend::cpu::CpuStorage;
use crate::backend::{
    check, AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormOutput,
    BatchNormParams, BatchNormSaved, BatchNormStats, BatchStats, BinaryOp, Conv2dGeometry,
    Epilogue, Pool2dGeometry, ReduceOp, SgdConfig, StridedLayout, UnaryOp,
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
    data: CudaData,
    len: usize,
    device: Arc<CudaDevice>,
    /// For i64 data uploaded from the host: its smallest and largest value,
    /// read there, so that labels are validated without copying them back
    /// from the device in every step (`checked_labels`). `None` when the
    /// data was produced on the device.
    host_range: Option<(i64, i64)>,
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

fn driver_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{op}: {e}"))
}

/// Kernel arguments are `int`: refuse what does not fit rather than truncate.
fn int(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::invalid(
            op,
            format!("size {v} exceeds the CUDA backend's 2^31 - 1 limit"),
        )
    })
}

fn flag(b: bool) -> i32 {
    b as i32
}

/// 256-thread 1-d launch over `n` items (kernels loop over the rest).
fn linear_launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch over `planes` planes of `s` values (batch-norm elementwise kernels).
fn plane_launch(planes: usize, s: usize) -> LaunchConfig {
    let x = s.div_ceil(256).clamp(1, 1024) as u32;
    let y = planes.clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per item (a channel or a row).
fn per_item_launch(items: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The tiled GEMM kernels' launch: 64 x 64 output tiles of 16 x 16 threads.
const TILE: usize = 64;
fn tile_launch(rows: usize, cols: usize, splits: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(TILE) as u32,
            rows.div_ceil(TILE) as u32,
            splits as u32,
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
        let dev: &CudaDevice = &$dev;
        let function = dev.kernels().function(dev.stream().context(), dev.compute_capability(), $file, $name)?;
        let mut builder = dev.stream().launch_builder(&function);
        $( builder.arg($arg); )*
        // SAFETY: the arguments match the kernel's parameter list in
        // kernels/*.cu one for one (types and order), every buffer was
        // checked on the host to hold what the kernel indexes, and all work
        // is on this one stream, so no buffer is freed or reused before the
        // kernel has run.
        unsafe { builder.launch($cfg) }.map_err(|e| driver_err($name, e))?;
    }};
}

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
    fn output(&self, len: usize, op: &'static str) -> Result<Block<f32>> {
        uninit::<f32>(&self.device, len, op)
    }

    fn wrap(&self, block: Block<f32>, len: usize) -> Self {
        Self {
            data: CudaData::F32(block),
            len,
            device: self.device.clone(),
            host_range: None,
        }
    }

    fn f32(&self, op: &'static str) -> Result<&CudaSlice<f32>> {
        match &self.data {
            CudaData::F32(s) => Ok(&**s),
            CudaData::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    fn f32_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<f32>> {
        match &mut self.data {
            CudaData::F32(s) => Ok(&mut **s),
            CudaData::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    fn i64(&self, op: &'static str) -> Result<&CudaSlice<i64>> {
        match &self.data {
            CudaData::I64(s) => Ok(&**s),
            CudaData::F32(_) => Err(Error::DType {
                op,
                expected: DType::I64,
                got: DType::F32,
            }),
        }
    }

    /// Shapes and strides for a strided kernel, concatenated, on the device.
    fn upload_meta(&self, op: &'static str, parts: &[&Vec<usize>]) -> Result<CudaSlice<i64>> {
        let meta: Vec<i64> = parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|&v| i64::try_from(v))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::invalid(op, "a stride does not fit in 64 bits"))?;
        // An empty meta (a 0-d tensor) still needs a valid pointer.
        let meta = if meta.is_empty() { vec![0] } else { meta };
        self.device
            .stream()
            .clone_htod(&meta)
            .map_err(|e| driver_err(op, e))
    }

    /// Same device check for an argument (two CUDA ordinals can differ).
    fn same_device(&self, op: &'static str, other: &Self) -> Result<()> {
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
    fn arg<'a>(&self, op: &'static str, other: &'a Self) -> Result<&'a CudaSlice<f32>> {
        self.same_device(op, other)?;
        other.f32(op)
    }

    /// Queues the weight-gradient GEMM writing `dest` ([splits, O, C*KH*KW]).
    fn launch_weight_grad(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        dest: &mut CudaSlice<f32>,
        chunk: i32,
        cfg: LaunchConfig,
        g: &Conv2dGeometry,
    ) -> Result<()> {
        let c = ConvArgs::new(g)?.0;
        // dy rows are contiguous within each image's OH*OW plane (chunks
        // start at multiples of 16 positions).
        let dy_vec = vec4(&self.device, dy, g.out_h * g.out_w);
        if is_pointwise(g) {
            let x_vec = vec4(&self.device, x, g.in_h * g.in_w);
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_weight_grad_pointwise",
                cfg,
                [
                    dy, x, dest, &chunk, &dy_vec, &x_vec, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5],
                    &c[6], &c[7], &c[8], &c[9], &c[10], &c[11], &c[12], &c[13], &c[14]
                ]
            );
        } else {
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_weight_grad",
                cfg,
                [
                    dy, x, dest, &chunk, &dy_vec, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6],
                    &c[7], &c[8], &c[9], &c[10], &c[11], &c[12], &c[13], &c[14]
                ]
            );
        }
        Ok(())
    }
}

/// A block of at least `len` elements from the device's caching allocator.
/// Callers write every one of the `len` elements (a kernel or a copy)
/// before anything reads them; the rest of the block is never read.
fn uninit<T: Pooled>(device: &CudaDevice, len: usize, op: &'static str) -> Result<Block<T>> {
    device.allocator().take::<T>(device.stream(), len, op)
}

/// Whether the tiled kernels may read `buf` with 16-byte (`float4`) loads
/// along an axis of `extent` elements: the extent must be a multiple of 4
/// (so a group of 4 never straddles a row or runs off the end) and the buffer
/// must start 16-byte aligned. cudarc allocations are 256-byte aligned, but
/// the pointer is checked rather than assumed. As the kernels' `int` flag.
fn vec4(device: &CudaDevice, buf: &CudaSlice<f32>, extent: usize) -> i32 {
    let (ptr, _sync) = buf.device_ptr(device.stream());
    flag(vec4_extent(extent) && ptr % 16 == 0)
}

fn vec4_extent(extent: usize) -> bool {
    extent.is_multiple_of(4)
}

/// 1x1 kernel, stride 1, no padding: the im2col matrix is the input itself,
/// which lets the kernels read activations as float4 (dilation is moot).
fn is_pointwise(g: &Conv2dGeometry) -> bool {
    g.kernel_h == 1 && g.kernel_w == 1 && g.stride == (1, 1) && g.padding == (0, 0)
}

/// Geometry of a convolution as the kernels' 15 trailing `int` parameters.
struct ConvArgs([i32; 15]);

impl ConvArgs {
    fn new(g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d";
        Ok(Self([
            int(op, g.batch)?,
            int(op, g.in_channels)?,
            int(op, g.in_h)?,
            int(op, g.in_w)?,
            int(op, g.out_channels)?,
            int(op, g.kernel_h)?,
            int(op, g.kernel_w)?,
            int(op, g.stride.0)?,
            int(op, g.stride.1)?,
            int(op, g.padding.0)?,
            int(op, g.padding.1)?,
            int(op, g.dilation.0)?,
            int(op, g.dilation.1)?,
            int(op, g.out_h)?,
            int(op, g.out_w)?,
        ]))
    }
}

fn conv_sizes_fit(g: &Conv2dGeometry) -> Result<()> {
    let [n, c, h, w] = g.input_shape();
    let [o, _, kh, kw] = g.weight_shape();
    for (what, v) in [
        ("input", n * c * h * w),
        ("output", n * o * g.out_h * g.out_w),
        ("weight", o * c * kh * kw),
    ] {
        int("conv2d", v).map_err(|_| {
            Error::invalid("conv2d", format!("{what} of {v} elements is too large"))
        })?;
    }
    Ok(())
}

/// Pooling geometry as the kernels' trailing ints (after `planes`).
fn pool_args(g: &Pool2dGeometry) -> Result<[i32; 13]> {
    let op = "max_pool2d";
    Ok([
        int(op, g.batch * g.channels)?,
        int(op, g.in_h)?,
        int(op, g.in_w)?,
        int(op, g.kernel.0)?,
        int(op, g.kernel.1)?,
        int(op, g.stride.0)?,
        int(op, g.stride.1)?,
        int(op, g.padding.0)?,
        int(op, g.padding.1)?,
        int(op, g.dilation.0)?,
        int(op, g.dilation.1)?,
        int(op, g.out_h)?,
        int(op, g.out_w)?,
    ])
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
        let op = "add";
        check::binary(op, self, rhs)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let n = int(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "add_f32",
            linear_launch(self.len),
            [a, b, &mut out, &n]
        );
        Ok(self.wrap(out, self.len))
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        let op = "scale";
        check::unary(op, self)?;
        let a = self.f32(op)?;
        let n = int(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "scale_f32",
            linear_launch(self.len),
            [a, &factor, &mut out, &n]
        );
        Ok(self.wrap(out, self.len))
    }
    fn sum_all(&self) -> Result<Self> {
        let op = "sum";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let n = int(op, self.len)?;
        // Two deterministic levels: up to 256 block partials, then one block.
        let blocks = self.len.div_ceil(256 * 8).clamp(1, 256);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut out = self.output(1, op)?;
        if blocks == 1 {
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                cfg,
                [x, &mut out, &n]
            );
        } else {
            let mut partial = self.output(blocks, op)?;
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                cfg,
                [x, &mut partial, &n]
            );
            let nb = blocks as i32;
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                per_item_launch(1, 256),
                [&partial, &mut out, &nb]
            );
        }
        Ok(self.wrap(out, 1))
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        let op = "broadcast_scalar";
        check::broadcast_scalar(self)?;
        let v = self.f32(op)?;
        let n = int(op, len)?;
        let mut out = self.output(len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "broadcast_scalar_f32",
            linear_launch(len),
            [v, &mut out, &n]
        );
        Ok(self.wrap(out, len))
    }
    fn relu(&self) -> Result<Self> {
        let op = "relu";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let n = int(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "relu_f32",
            linear_launch(self.len),
            [x, &mut out, &n]
        );
        Ok(self.wrap(out, self.len))
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        let op = "relu_backward";
        check::binary(op, self, output)?;
        let dy = self.f32(op)?;
        let y = self.arg(op, output)?;
        let n = int(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "relu_backward_f32",
            linear_launch(self.len),
            [dy, y, &mut out, &n]
        );
        Ok(self.wrap(out, self.len))
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
        let op = "matmul";
        check::matmul(self, rhs, m, k, n)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let (mi, ni, ki) = (int(op, m)?, int(op, n)?, int(op, k)?);
        int(op, m * n)?;
        let mut out = self.output(m * n, op)?;
        let cfg = tile_launch(m, n, 1);
        // float4 along each operand's contiguous axis: A [M, K] or [K, M],
        // B [K, N] or [N, K].
        let a_vec = vec4(&self.device, a, if lhs_transposed { m } else { k });
        let b_vec = vec4(&self.device, b, if rhs_transposed { k } else { n });
        match (lhs_transposed, rhs_transposed) {
            (false, false) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_nn",
                cfg,
                [a, b, &mut out, &mi, &ni, &ki, &a_vec, &b_vec]
            ),
            (false, true) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_nt",
                cfg,
                [a, b, &mut out, &mi, &ni, &ki, &a_vec, &b_vec]
            ),
            (true, false) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_tn",
                cfg,
                [a, b, &mut out, &mi, &ni, &ki, &a_vec, &b_vec]
            ),
            (true, true) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_tt",
                cfg,
                [a, b, &mut out, &mi, &ni, &ki, &a_vec, &b_vec]
            ),
        }
        Ok(self.wrap(out, m * n))
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "add_row_vector";
        check::add_row_vector(self, row, rows, cols)?;
        let x = self.f32(op)?;
        let r = self.arg(op, row)?;
        let (ri, ci) = (int(op, rows)?, int(op, cols)?);
        let mut out = self.output(rows * cols, op)?;
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(256).clamp(1, 1024) as u32,
                rows.clamp(1, 65_535) as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.device,
            KernelFile::Elementwise,
            "add_row_vector_f32",
            cfg,
            [x, r, &mut out, &ri, &ci]
        );
        Ok(self.wrap(out, rows * cols))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        let op = "sum_rows";
        check::sum_rows(self, rows, cols)?;
        let x = self.f32(op)?;
        let (ri, ci) = (int(op, rows)?, int(op, cols)?);
        let mut out = self.output(cols, op)?;
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(32).max(1) as u32, 1, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.device,
            KernelFile::Elementwise,
            "sum_rows_f32",
            cfg,
            [x, &mut out, &ri, &ci]
        );
        Ok(self.wrap(out, cols))
    }

    // ----- the general op set (backend::strided) ----------------------------
    fn strided_copy(&self, layout: &StridedLayout) -> Result<Self> {
        let op = "strided_copy";
        check::strided_copy(self, layout)?;
        let x = self.f32(op)?;
        let n = layout.numel();
        let ni = int(op, n)?;
        let ndim = layout.shape.len() as i32;
        let meta = self.upload_meta(op, &[&layout.shape, &layout.strides])?;
        let mut out = self.output(n, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "strided_copy_f32",
            linear_launch(n),
            [x, &mut out, &meta, &ndim, &ni]
        );
        Ok(self.wrap(out, n))
    }
    fn binary(
        &self,
        rhs: &Self,
        op_kind: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self> {
        let op = "binary";
        check::binary_strided(self, rhs, lhs_layout, rhs_layout)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let n = lhs_layout.numel();
        let ni = int(op, n)?;
        let ndim = lhs_layout.shape.len() as i32;
        let code = op_kind as i32;
        let meta = self.upload_meta(
            op,
            &[&lhs_layout.shape, &lhs_layout.strides, &rhs_layout.strides],
        )?;
        let mut out = self.output(n, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "binary_f32",
            linear_launch(n),
            [a, b, &mut out, &meta, &ndim, &code, &ni]
        );
        Ok(self.wrap(out, n))
    }
    fn unary(&self, op_kind: UnaryOp) -> Result<Self> {
        let op = "unary";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let ni = int(op, self.len)?;
        let (code, p) = op_kind.code();
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "unary_f32",
            linear_launch(self.len),
            [x, &mut out, &code, &p, &ni]
        );
        Ok(self.wrap(out, self.len))
    }
    fn reduce_rows(&self, op_kind: ReduceOp, rows: usize, cols: usize) -> Result<Self> {
        let op = "reduce_rows";
        check::reduce_rows(self, rows, cols)?;
        let x = self.f32(op)?;
        let (ri, ci) = (int(op, rows)?, int(op, cols)?);
        let code = op_kind as i32;
        let mut out = self.output(rows, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "reduce_rows_f32",
            per_item_launch(rows.min(65_535), 256),
            [x, &mut out, &ri, &ci, &code]
        );
        Ok(self.wrap(out, rows))
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
        let op = "batched_matmul";
        check::batched_matmul(self, rhs, batch, m, k, n)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let len = batch * m * n;
        int(op, batch * m * k)?;
        int(op, batch * k * n)?;
        let (bi, mi, ki, ni) = (int(op, batch)?, int(op, m)?, int(op, k)?, int(op, n)?);
        let (ta, tb) = (flag(lhs_transposed), flag(rhs_transposed));
        let mut out = self.output(len, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "batched_matmul_f32",
            linear_launch(len),
            [a, b, &mut out, &bi, &mi, &ki, &ni, &ta, &tb]
        );
        Ok(self.wrap(out, len))
    }

    // ----- convolution -----------------------------------------------------
    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d";
        check::conv2d(self, weight, bias, g)?;
        conv_sizes_fit(g)?;
        let x = self.f32(op)?;
        let w = self.arg(op, weight)?;
        let b = match bias {
            Some(b) => Some(self.arg(op, b)?),
            None => None,
        };
        let has_bias = flag(b.is_some());
        // Without a bias the kernel never reads the pointer; pass the weight.
        let b = b.unwrap_or(w);
        let c = ConvArgs::new(g)?.0;
        let out_len: usize = g.output_shape().iter().product();
        let p = g.batch * g.out_h * g.out_w;
        let mut out = self.output(out_len, op)?;
        // Weight rows are contiguous along C*KH*KW; the input is the im2col
        // matrix itself only for pointwise convolutions.
        let w_vec = vec4(&self.device, w, g.in_channels * g.kernel_h * g.kernel_w);
        let x_vec = flag(is_pointwise(g)) & vec4(&self.device, x, g.in_h * g.in_w);
        launch!(
            self.device,
            KernelFile::Conv2d,
            "conv2d_forward",
            tile_launch(g.out_channels, p, 1),
            [
                x, w, b, &has_bias, &mut out, &w_vec, &x_vec, &c[0], &c[1], &c[2], &c[3], &c[4],
                &c[5], &c[6], &c[7], &c[8], &c[9], &c[10], &c[11], &c[12], &c[13], &c[14]
            ]
        );
        Ok(self.wrap(out, out_len))
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d_input_grad";
        check::conv2d_input_grad(self, weight, g)?;
        conv_sizes_fit(g)?;
        let dy = self.f32(op)?;
        let w = self.arg(op, weight)?;
        let c = ConvArgs::new(g)?.0;
        let out_len: usize = g.input_shape().iter().product();
        let q = g.batch * g.in_h * g.in_w;
        let mut out = self.output(out_len, op)?;
        let cfg = tile_launch(g.in_channels, q, 1);
        if is_pointwise(g) {
            // w [O, C] read as its transpose (contiguous along C); dy planes
            // are as long as the input's.
            let w_vec = vec4(&self.device, w, g.in_channels);
            let dy_vec = vec4(&self.device, dy, g.in_h * g.in_w);
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_input_grad_pointwise",
                cfg,
                [
                    dy, w, &mut out, &w_vec, &dy_vec, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5],
                    &c[6], &c[7], &c[8], &c[9], &c[10], &c[11], &c[12], &c[13], &c[14]
                ]
            );
        } else {
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_input_grad",
                cfg,
                [
                    dy, w, &mut out, &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &c[8],
                    &c[9], &c[10], &c[11], &c[12], &c[13], &c[14]
                ]
            );
        }
        Ok(self.wrap(out, out_len))
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d_weight_grad";
        check::conv2d_weight_grad(self, input, g)?;
        conv_sizes_fit(g)?;
        let dy = self.f32(op)?;
        let x = self.arg(op, input)?;
        let k_total = g.in_channels * g.kernel_h * g.kernel_w;
        let out_len = g.out_channels * k_total;
        let (chunk, splits) = weight_grad_splits(g, self.device.multiprocessors());
        let chunk_i = int(op, chunk)?;
        let cfg = tile_launch(g.out_channels, k_total, splits);
        let mut out = self.output(out_len, op)?;
        if splits == 1 {
            self.launch_weight_grad(dy, x, &mut out, chunk_i, cfg, g)?;
        } else {
            int(op, out_len * splits)?;
            let mut partial = self.output(out_len * splits, op)?;
            self.launch_weight_grad(dy, x, &mut partial, chunk_i, cfg, g)?;
            let (n, s) = (out_len as i32, splits as i32);
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_sum_splits",
                linear_launch(out_len),
                [&partial, &mut out, &n, &s]
            );
        }
        Ok(self.wrap(out, out_len))
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        let op = "channel_sums";
        check::channel_sums(self, g)?;
        let x = self.f32(op)?;
        let (n, c, s) = (int(op, g.batch)?, int(op, g.channels)?, int(op, g.spatial)?);
        int(op, g.numel())?;
        let mut out = self.output(g.channels, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "channel_sums_f32",
            per_item_launch(g.channels, 256),
            [x, &mut out, &n, &c, &s]
        );
        Ok(self.wrap(out, g.channels))
    }

    // ----- batch norm ------------------------------------------------------
    fn batch_norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        stats: BatchNormStats<'_, Self>,
        p: &BatchNormParams,
    ) -> Result<BatchNormOutput<Self>> {
        check::batch_norm(self, weight, bias, &stats, p)?;
        let fuse_relu = p.epilogue == Epilogue::Relu;
        match stats {
            BatchNormStats::Batch => self.bn_train(weight, bias, &p.geometry, p.eps, fuse_relu),
            BatchNormStats::Running { mean, var } => Ok(BatchNormOutput {
                output: self.bn_eval(weight, bias, mean, var, &p.geometry, p.eps, fuse_relu)?,
                batch_stats: None,
            }),
        }
    }
    fn batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        check::batch_norm_backward(self, saved, p, needs)?;
        self.bn_backward(saved, p, needs)
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        let op = "update_running_stats";
        check::update_running_stats(self, running_var, batch_mean, batch_var, count)?;
        let channels = self.len;
        let mean = self.arg(op, batch_mean)?;
        let var = self.arg(op, batch_var)?;
        self.same_device(op, running_var)?;
        let unbias = count as f32 / (count - 1) as f32;
        let c = int(op, channels)?;
        let device = self.device.clone();
        let rv = running_var.f32_mut(op)?;
        let rm = self.f32_mut(op)?;
        launch!(
            device,
            KernelFile::BatchNorm,
            "bn_update_running",
            linear_launch(channels),
            [rm, rv, mean, var, &momentum, &unbias, &c]
        );
        Ok(())
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        let op = "inv_std";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let n = int(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "inv_std_f32",
            linear_launch(self.len),
            [x, &eps, &mut out, &n]
        );
        Ok(self.wrap(out, self.len))
    }

    // ----- pooling ---------------------------------------------------------
    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        let op = "max_pool2d";
        check::max_pool2d(self, g)?;
        let x = self.f32(op)?;
        let out_len: usize = g.output_shape().iter().product();
        int(op, out_len)?;
        int(op, self.len)?;
        let a = pool_args(g)?;
        let mut out = self.output(out_len, op)?;
        let mut idx = uninit::<i64>(&self.device, out_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "max_pool2d_forward",
            linear_launch(out_len),
            [
                x, &mut out, &mut idx, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7],
                &a[8], &a[9], &a[10], &a[11], &a[12]
            ]
        );
        let indices = Self {
            data: CudaData::I64(idx),
            len: out_len,
            device: self.device.clone(),
            host_range: None,
        };
        Ok((self.wrap(out, out_len), indices))
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        let op = "max_pool2d_backward";
        check::max_pool2d_backward(self, indices, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let dy = self.f32(op)?;
        self.same_device(op, indices)?;
        let idx = indices.i64(op)?;
        int(op, in_len)?;
        let a = pool_args(g)?;
        let mut dx = self.output(in_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "max_pool2d_backward",
            linear_launch(in_len),
            [
                dy, idx, &mut dx, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7], &a[8],
                &a[9], &a[10], &a[11], &a[12]
            ]
        );
        Ok(self.wrap(dx, in_len))
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        let op = "adaptive_avg_pool2d";
        check::adaptive_avg_pool2d(self, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let out_len: usize = g.output_shape().iter().product();
        let x = self.f32(op)?;
        int(op, in_len)?;
        int(op, out_len)?;
        let (p, h, w, oh, ow) = (
            int(op, g.batch * g.channels)?,
            int(op, g.in_h)?,
            int(op, g.in_w)?,
            int(op, g.out_h)?,
            int(op, g.out_w)?,
        );
        let mut out = self.output(out_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "adaptive_avg_pool2d_forward",
            linear_launch(out_len),
            [x, &mut out, &p, &h, &w, &oh, &ow]
        );
        Ok(self.wrap(out, out_len))
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        let op = "adaptive_avg_pool2d_backward";
        check::adaptive_avg_pool2d_backward(self, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let dy = self.f32(op)?;
        int(op, in_len)?;
        let (p, h, w, oh, ow) = (
            int(op, g.batch * g.channels)?,
            int(op, g.in_h)?,
            int(op, g.in_w)?,
            int(op, g.out_h)?,
            int(op, g.out_w)?,
        );
        let mut dx = self.output(in_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "adaptive_avg_pool2d_backward",
            linear_launch(in_len),
            [dy, &mut dx, &p, &h, &w, &oh, &ow]
        );
        Ok(self.wrap(dx, in_len))
    }

    // ----- loss ------------------------------------------------------------
    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        let op = "log_softmax";
        check::log_softmax(self, rows, cols)?;
        let x = self.f32(op)?;
        int(op, rows * cols)?;
        let ci = int(op, cols)?;
        let mut out = self.output(rows * cols, op)?;
        if rows > 0 {
            launch!(
                self.device,
                KernelFile::Loss,
                "log_softmax_forward",
                per_item_launch(rows, 256),
                [x, &mut out, &ci]
            );
        }
        Ok(self.wrap(out, rows * cols))
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "log_softmax_backward";
        check::log_softmax_backward(self, output, rows, cols)?;
        let dy = self.f32(op)?;
        let y = self.arg(op, output)?;
        int(op, rows * cols)?;
        let ci = int(op, cols)?;
        let mut out = self.output(rows * cols, op)?;
        if rows > 0 {
            launch!(
                self.device,
                KernelFile::Loss,
                "log_softmax_backward",
                per_item_launch(rows, 256),
                [dy, y, &mut out, &ci]
            );
        }
        Ok(self.wrap(out, rows * cols))
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "nll_loss";
        check::nll_loss(self, labels, rows, cols)?;
        let logp = self.f32(op)?;
        let lab = checked_labels(op, self, labels, cols)?;
        if rows == 0 {
            return Err(Error::invalid(op, "mean over an empty batch"));
        }
        let (ri, ci) = (int(op, rows)?, int(op, cols)?);
        let mut out = self.output(1, op)?;
        launch!(
            self.device,
            KernelFile::Loss,
            "nll_loss_forward",
            per_item_launch(1, 256),
            [logp, lab, &mut out, &ri, &ci]
        );
        Ok(self.wrap(out, 1))
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "nll_loss_backward";
        check::nll_loss_backward(self, labels, rows, cols)?;
        let g = self.f32(op)?;
        let lab = checked_labels(op, self, labels, cols)?;
        int(op, rows * cols)?;
        let (ri, ci) = (int(op, rows)?, int(op, cols)?);
        let mut out = self.output(rows * cols, op)?;
        launch!(
            self.device,
            KernelFile::Loss,
            "nll_loss_backward",
            linear_launch(rows * cols),
            [g, lab, &mut out, &ri, &ci]
        );
        Ok(self.wrap(out, rows * cols))
    }

    fn increment_i64(&mut self) -> Result<()> {
        let op = "increment_i64";
        let n = int(op, self.len)?;
        let device = self.device.clone();
        let x = match &mut self.data {
            CudaData::I64(s) => &mut **s,
            CudaData::F32(_) => {
                return Err(Error::DType {
                    op,
                    expected: DType::I64,
                    got: DType::F32,
                })
            }
        };
        if n > 0 {
            launch!(
                device,
                KernelFile::Elementwise,
                "increment_i64",
                linear_launch(self.len),
                [x, &n]
            );
        }
        self.host_range = self
            .host_range
            .map(|(lo, hi)| (lo.saturating_add(1), hi.saturating_add(1)));
        Ok(())
    }

    // ----- optimizer -------------------------------------------------------
    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        let op = "sgd_step";
        check::sgd_step(self, grad, momentum_buffer.as_deref(), cfg)?;
        // Without momentum the buffer is not used (as on the CPU).
        let momentum_buffer = momentum_buffer.filter(|_| cfg.momentum != 0.0);
        let len = self.len;
        let n = int(op, len)?;
        let g = self.arg(op, grad)?;
        let device = self.device.clone();
        let has_momentum = flag(momentum_buffer.is_some());
        let (init, nesterov) = (flag(initialize_buffer), flag(cfg.nesterov));
        let (lr, mu, damp, wd) = (cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay);
        match momentum_buffer {
            Some(buf) => {
                self.same_device(op, buf)?;
                let b = buf.f32_mut(op)?;
                let p = self.f32_mut(op)?;
                launch!(
                    device,
                    KernelFile::Sgd,
                    "sgd_step",
                    linear_launch(len),
                    [
                        p,
                        g,
                        b,
                        &has_momentum,
                        &init,
                        &lr,
                        &mu,
                        &damp,
                        &wd,
                        &nesterov,
                        &n
                    ]
                );
            }
            None => {
                let p = self.f32_mut(op)?;
                // No momentum: the buffer argument is never touched.
                launch!(
                    device,
                    KernelFile::Sgd,
                    "sgd_step",
                    linear_launch(len),
                    [
                        p,
                        g,
                        g,
                        &has_momentum,
                        &init,
                        &lr,
                        &mu,
                        &damp,
                        &wd,
                        &nesterov,
                        &n
                    ]
                );
            }
        }
        Ok(())
    }
}

/// The labels' device data after checking, on the host, that every label is
/// in `0..cols` (a bad label would otherwise read out of bounds on the GPU).
/// Labels uploaded from the host were read there (`host_range`), so a step
/// needs no copy back; only labels made on the device, or a bad label (to
/// name its row), are copied to the host.
fn checked_labels<'a>(
    op: &'static str,
    lhs: &CudaStorage,
    labels: &'a CudaStorage,
    cols: usize,
) -> Result<&'a CudaSlice<i64>> {
    lhs.same_device(op, labels)?;
    let slice = labels.i64(op)?;
    if let Some((lo, hi)) = labels.host_range {
        if lo >= 0 && (hi as u64) < cols as u64 {
            return Ok(slice);
        }
    }
    check::labels_in_range(op, labels.to_cpu()?.as_i64(op)?, cols)?;
    Ok(slice)
}

/// Split-K plan for the weight gradient: `(chunk, splits)` with `chunk` a
/// multiple of the kernel's 16-deep K step. Splits the long batch * OH * OW
/// reduction until the grid has about two blocks per multiprocessor, keeping
/// at least 128 positions per chunk.
fn weight_grad_splits(g: &Conv2dGeometry, multiprocessors: usize) -> (usize, usize) {
    const K_STEP: usize = 16;
    let p_total = (g.batch * g.out_h * g.out_w).max(1);
    let tiles =
        (g.in_channels * g.kernel_h * g.kernel_w).div_ceil(TILE) * g.out_channels.div_ceil(TILE);
    let wanted = (2 * multiprocessors).div_ceil(tiles.max(1));
    let splits = wanted.min(p_total.div_ceil(128)).clamp(1, 64);
    let chunk = p_total.div_ceil(splits).div_ceil(K_STEP) * K_STEP;
    (chunk, p_total.div_ceil(chunk))
}

/// Batch-norm kernels shared by the plain and the ReLU-fused trait methods.
impl CudaStorage {
    /// Training forward, with the ReLU fused into the normalising kernel
    /// when `fuse_relu`.
    fn bn_train(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
        fuse_relu: bool,
    ) -> Result<BatchNormOutput<Self>> {
        let op = "batch_norm";
        let x = self.f32(op)?;
        int(op, g.numel())?;
        let (n, c, s) = (int(op, g.batch)?, int(op, g.channels)?, int(op, g.spatial)?);
        let planes = int(op, g.batch * g.channels)?;
        let w = weight.map(|w| self.arg(op, w)).transpose()?;
        let b = bias.map(|b| self.arg(op, b)).transpose()?;
        let mut mean = self.output(g.channels, op)?;
        let mut var = self.output(g.channels, op)?;
        let mut invstd = self.output(g.channels, op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_batch_stats",
            per_item_launch(g.channels, 512),
            [x, &mut mean, &mut var, &mut invstd, &n, &c, &s, &eps]
        );
        let (has_w, has_b) = (flag(w.is_some()), flag(b.is_some()));
        let fuse = flag(fuse_relu);
        // Absent affine parameters are never read; pass any valid buffer.
        let (w, b) = (w.unwrap_or(x), b.unwrap_or(x));
        let mut out = self.output(g.numel(), op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_normalize",
            plane_launch(g.batch * g.channels, g.spatial),
            [x, &mean, &invstd, w, &has_w, b, &has_b, &mut out, &planes, &c, &s, &fuse]
        );
        Ok(BatchNormOutput {
            output: self.wrap(out, g.numel()),
            batch_stats: Some(BatchStats {
                mean: self.wrap(mean, g.channels),
                var: self.wrap(var, g.channels),
                invstd: self.wrap(invstd, g.channels),
            }),
        })
    }
    /// Eval forward, with the ReLU fused when `fuse_relu`.
    #[allow(clippy::too_many_arguments)]
    fn bn_eval(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        running_mean: &Self,
        running_var: &Self,
        g: &BatchNormGeometry,
        eps: f32,
        fuse_relu: bool,
    ) -> Result<Self> {
        let op = "batch_norm";
        let x = self.f32(op)?;
        int(op, g.numel())?;
        let (c, s) = (int(op, g.channels)?, int(op, g.spatial)?);
        let planes = int(op, g.batch * g.channels)?;
        let rm = self.arg(op, running_mean)?;
        let rv = self.arg(op, running_var)?;
        let w = weight.map(|w| self.arg(op, w)).transpose()?;
        let b = bias.map(|b| self.arg(op, b)).transpose()?;
        let (has_w, has_b) = (flag(w.is_some()), flag(b.is_some()));
        let fuse = flag(fuse_relu);
        let (w, b) = (w.unwrap_or(x), b.unwrap_or(x));
        let mut out = self.output(g.numel(), op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_normalize_running",
            plane_launch(g.batch * g.channels, g.spatial),
            [x, rm, rv, &eps, w, &has_w, b, &has_b, &mut out, &planes, &c, &s, &fuse]
        );
        Ok(self.wrap(out, g.numel()))
    }
    /// Backward; with the ReLU epilogue every kernel reads dy masked by
    /// `saved.output > 0`.
    fn bn_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        let op = "batch_norm_backward";
        let (g, training) = (&p.geometry, saved.batch_stats);
        let [need_dx, need_dw, need_db] = needs;
        let dy = self.f32(op)?;
        let mask = flag(p.epilogue == Epilogue::Relu);
        // Without the fused ReLU the mask is never read; pass dy.
        let y = match p.epilogue {
            Epilogue::Relu => match saved.output {
                Some(y) => self.arg(op, y)?,
                None => dy,
            },
            Epilogue::None => dy,
        };
        int(op, g.numel())?;
        let (n, c, s) = (int(op, g.batch)?, int(op, g.channels)?, int(op, g.spatial)?);
        let planes = int(op, g.batch * g.channels)?;
        let mean = self.arg(op, saved.mean)?;
        let invstd = self.arg(op, saved.invstd)?;
        let w = saved.weight.map(|w| self.arg(op, w)).transpose()?;
        let has_w = flag(w.is_some());
        let w = w.unwrap_or(mean);

        // x̂ is read only for dγ, and for dx in training mode.
        let need_xhat = need_dw || (need_dx && training);
        let x = match saved.input {
            Some(x) if need_xhat => Some(self.arg(op, x)?),
            _ => None,
        };
        // Per-channel sums: dβ = Σdy, dγ = Σdy·x̂; training-mode dx needs both.
        let need_sums = need_dw || need_db || (need_dx && training);
        let mut sums = None;
        if need_sums {
            let mut sum_dy = self.output(g.channels, op)?;
            let mut sum_dy_xhat = self.output(g.channels, op)?;
            let with_xhat = flag(need_xhat);
            let xin = x.unwrap_or(dy);
            launch!(
                self.device,
                KernelFile::BatchNorm,
                "bn_backward_reduce",
                per_item_launch(g.channels, 512),
                [
                    dy,
                    y,
                    &mask,
                    xin,
                    mean,
                    invstd,
                    &with_xhat,
                    &mut sum_dy,
                    &mut sum_dy_xhat,
                    &n,
                    &c,
                    &s
                ]
            );
            sums = Some((sum_dy, sum_dy_xhat));
        }
        let dx = if !need_dx {
            None
        } else {
            let mut dx = self.output(g.numel(), op)?;
            let cfg = plane_launch(g.batch * g.channels, g.spatial);
            match (&sums, x) {
                (Some((sum_dy, sum_dy_xhat)), Some(x)) if training => {
                    let inv_count = 1.0f32 / g.count() as f32;
                    launch!(
                        self.device,
                        KernelFile::BatchNorm,
                        "bn_backward_input_train",
                        cfg,
                        [
                            dy,
                            y,
                            &mask,
                            x,
                            mean,
                            invstd,
                            w,
                            &has_w,
                            sum_dy,
                            sum_dy_xhat,
                            &mut dx,
                            &planes,
                            &c,
                            &s,
                            &inv_count
                        ]
                    );
                }
                _ => {
                    launch!(
                        self.device,
                        KernelFile::BatchNorm,
                        "bn_backward_input_eval",
                        cfg,
                        [dy, y, &mask, invstd, w, &has_w, &mut dx, &planes, &c, &s]
                    );
                }
            }
            Some(self.wrap(dx, g.numel()))
        };
        let (dw, db) = match sums {
            Some((sum_dy, sum_dy_xhat)) => (
                need_dw.then(|| self.wrap(sum_dy_xhat, g.channels)),
                need_db.then(|| self.wrap(sum_dy, g.channels)),
            ),
            None => (None, None),
        };
        Ok([dx, dw, db])
    }
}
