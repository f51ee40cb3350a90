//! Backends: the numeric kernels behind every op, one implementation per
//! device behind one trait.
//!
//! Ops (`crate::ops`) decide *what* to compute: which gradients are needed,
//! what to save for backward. Backends only know *how*: each method is one
//! kernel (or a short sequence of them) on contiguous buffers, with the
//! shapes passed in as small geometry structs. The CPU backend lives in
//! [`cpu`]; the CUDA backend implements the same trait.

pub(crate) mod check;
pub mod cpu;
pub mod cuda;
mod geometry;
mod storage;
pub mod strided;

pub use geometry::{
    AdaptivePool2dGeometry, BatchNormGeometry, Conv2dGeometry, Pool2dGeometry, SgdConfig,
};

pub use storage::Storage;
pub use strided::{BinaryOp, ReduceOp, StridedLayout, UnaryOp};

/// Waits until all work queued on `device` has finished (a no-op on the
/// CPU, whose kernels return when done). Kernel launches on a GPU return
/// immediately, so a timer read without this measures launches, and the
/// wait lands in whatever is timed next.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(ordinal) => cuda::device::get(ordinal)?.synchronize(),
    }
}

/// `device` as reports name it: `cpu`, `cuda:0 (NVIDIA H200)`, or for the
/// host emulation `cuda:0 (frostgrad CUDA emulation (H200-like): the host
/// emulation, not a GPU; its times are not GPU times)`.
pub fn describe_device(device: Device) -> String {
    match device {
        Device::Cpu => device.to_string(),
        Device::Cuda(ordinal) => match cuda::device::get(ordinal) {
            Ok(d) if d.is_emulation() => format!(
                "{device} ({}: the host emulation, not a GPU; its times are not GPU times)",
                d.name()
            ),
            Ok(d) => format!("{device} ({})", d.name()),
            Err(_) => device.to_string(),
        },
    }
}

/// Whether `device` is frostgrad's host emulation of CUDA (`cuda-emu/`).
pub fn is_emulated(device: Device) -> bool {
    match device {
        Device::Cpu => false,
        Device::Cuda(ordinal) => cuda::device::get(ordinal).is_ok_and(|d| d.is_emulation()),
    }
}

use crate::core_types::{DType, Device};
use crate::error::Result;

/// What runs on batch norm's normalised values before they are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Epilogue {
    #[default]
    None,
    /// `max(y, 0)` in the normalising pass (ResNet's batch norm + ReLU
    /// pairs): one pass over the activation fewer each way.
    Relu,
}

/// Everything about a batch norm that is not a buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormParams {
    pub geometry: BatchNormGeometry,
    pub eps: f32,
    pub epilogue: Epilogue,
}

/// The statistics a batch-norm forward normalises with.
#[derive(Debug)]
pub enum BatchNormStats<'a, S> {
    /// The batch's own mean and biased variance (training mode); the
    /// forward computes and returns them.
    Batch,
    /// Running averages `[C]` (eval mode).
    Running { mean: &'a S, var: &'a S },
}

/// The per-channel statistics of a batch, `[C]` each.
#[derive(Debug)]
pub struct BatchStats<S> {
    pub mean: S,
    /// Biased variance (what normalisation uses).
    pub var: S,
    /// `1 / sqrt(var + eps)`.
    pub invstd: S,
}

/// A batch-norm forward's result.
#[derive(Debug)]
pub struct BatchNormOutput<S> {
    /// The normalised values, after the epilogue.
    pub output: S,
    /// `Some` exactly when normalising with [`BatchNormStats::Batch`]:
    /// backward and the running averages need them.
    pub batch_stats: Option<BatchStats<S>>,
}

/// What a batch-norm backward reads, as saved by the forward.
#[derive(Debug)]
pub struct BatchNormSaved<'a, S> {
    /// The forward input. Read for dγ, and for dx when the statistics were
    /// the batch's; `None` when the op did not save it because no requested
    /// gradient needs it (asking for one then is an error).
    pub input: Option<&'a S>,
    pub weight: Option<&'a S>,
    /// The mean and `1/sqrt(var + eps)` the forward normalised with.
    pub mean: &'a S,
    pub invstd: &'a S,
    /// Whether those were batch statistics (then they depend on the input)
    /// or running ones (constants: dx is a per-channel scale of dy).
    pub batch_stats: bool,
    /// The forward's output after the epilogue; required for
    /// [`Epilogue::Relu`], whose mask it is.
    pub output: Option<&'a S>,
}

/// One device's buffer type and every kernel the engine needs from it.
///
/// All tensors are contiguous row-major; f32 unless a method says otherwise.
/// `self` is the first tensor argument (for backward kernels: the gradient
/// flowing in). Every implementation runs the method's check from
/// `backend::check` first, so a wrong length or dtype is an error (never a panic
/// or an out-of-bounds access) with the same message on every device.
pub trait BackendStorage: Sized {
    fn device(&self) -> Device;
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the data to the host.
    fn to_cpu(&self) -> Result<cpu::CpuStorage>;
    fn try_clone(&self) -> Result<Self>;

    // ----- elementwise and reductions --------------------------------------
    /// `self + rhs`, same length.
    fn add(&self, rhs: &Self) -> Result<Self>;
    /// `self += rhs`, same length: [`add`](Self::add) written over `self`
    /// (the backward pass summing two gradients when one of them has no
    /// other reader).
    fn add_assign(&mut self, rhs: &Self) -> Result<()>;
    /// `self * factor`.
    fn scale(&self, factor: f32) -> Result<Self>;
    /// Sum of all elements, as one element.
    fn sum_all(&self) -> Result<Self>;
    /// A one-element buffer repeated `len` times (the backward of a sum).
    fn broadcast_scalar(&self, len: usize) -> Result<Self>;
    fn relu(&self) -> Result<Self>;
    /// `self` is dL/dy; passes it where the forward output was positive.
    fn relu_backward(&self, output: &Self) -> Result<Self>;
    /// `relu(self + rhs)`, same length, in one pass (ResNet's residual tail):
    /// the same values as [`add`](Self::add) then [`relu`](Self::relu),
    /// without the intermediate sum.
    fn add_relu(&self, rhs: &Self) -> Result<Self>;
    /// [`relu_backward`](Self::relu_backward) written over `self` (dL/dy),
    /// when nothing else reads that gradient any more.
    fn relu_backward_assign(&mut self, output: &Self) -> Result<()>;
    /// [`add_relu`](Self::add_relu) written over `self`, for a sum whose
    /// left operand nobody else can see any more (torchvision's in-place
    /// `out += identity; relu_(out)`): no new buffer.
    fn add_relu_assign(&mut self, rhs: &Self) -> Result<()>;

    // ----- dense -----------------------------------------------------------
    /// `op(self) @ op(rhs)` where `op(self)` is `[m, k]` and `op(rhs)` is
    /// `[k, n]`; `*_transposed` says the buffer holds the transpose
    /// (`[k, m]` resp. `[n, k]`).
    fn matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self>;
    /// `self[r, c] + row[c]` for a `[rows, cols]` matrix.
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self>;
    /// Column sums of a `[rows, cols]` matrix, giving `[cols]`.
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self>;

    // ----- the general op set: see [`strided`] ---------------------------

    /// The elements of `self` read through `layout`, contiguous.
    fn strided_copy(&self, layout: &StridedLayout) -> Result<Self>;
    /// `op(self[i], rhs[j])` over the shape both layouts share.
    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self>;
    /// `op(x)` elementwise.
    fn unary(&self, op: UnaryOp) -> Result<Self>;
    /// `[rows, cols]` to `[rows]`: the sum or max of each row.
    fn reduce_rows(&self, op: ReduceOp, rows: usize, cols: usize) -> Result<Self>;
    /// `[batch, m, k] @ [batch, k, n]` to `[batch, m, n]`, where a
    /// transposed operand is stored `[batch, k, m]` / `[batch, n, k]`.
    #[allow(clippy::too_many_arguments)]
    fn batched_matmul(
        &self,
        rhs: &Self,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self>;

    // ----- convolution -----------------------------------------------------
    /// `self` is the input `[N, C_in, H, W]`; weight `[C_out, C_in, KH, KW]`;
    /// optional bias `[C_out]`; gives `[N, C_out, OH, OW]`.
    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self>;
    /// `self` is dL/dy `[N, C_out, OH, OW]`; gives dL/dx `[N, C_in, H, W]`.
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self>;
    /// `self` is dL/dy; `input` the forward input; gives dL/dW `[C_out, C_in, KH, KW]`.
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self>;
    /// Per-channel sums of `[N, C, S]`, giving `[C]` (conv bias gradient).
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self>;

    // ----- batch norm (input viewed as [N, C, S]) ---------------------------
    /// Normalises `self` per channel with `stats`, applies the optional
    /// affine `weight`/`bias` `[C]`, then `p.epilogue`.
    fn batch_norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        stats: BatchNormStats<'_, Self>,
        p: &BatchNormParams,
    ) -> Result<BatchNormOutput<Self>>;
    /// `self` is dL/d(output). Computes only the gradients `needs` asks for,
    /// `[input, weight, bias]`. With [`Epilogue::Relu`] every read of dy is
    /// masked by `saved.output > 0`, as if `relu_backward` had run first,
    /// without materialising the masked gradient.
    fn batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]>;
    /// `self` is the running mean: `rm = (1-m) rm + m mean`,
    /// `rv = (1-m) rv + m var * count/(count-1)` (unbiased), as PyTorch does.
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()>;
    /// `1 / sqrt(self + eps)`.
    fn inv_std(&self, eps: f32) -> Result<Self>;

    // ----- pooling ---------------------------------------------------------
    /// Gives the pooled values and, as i64, the arg-max of each window as a
    /// flat index into its `H*W` input plane (PyTorch's convention: the
    /// first maximum in row-major window order wins; NaN counts as maximal).
    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)>;
    /// `self` is dL/dy; scatters it to the arg-max positions (adding where
    /// windows overlap on one input).
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self>;
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self>;
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self>;

    // ----- loss ------------------------------------------------------------
    /// Row-wise `x - logsumexp(x)` of a `[rows, cols]` matrix, computed stably.
    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self>;
    /// `self` is dL/dy, `output` the log-softmax: `g - exp(y) * sum(g)`.
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self>;
    /// Mean negative log-likelihood of `self` (log-probabilities `[rows, cols]`)
    /// at i64 `labels` `[rows]`; a label outside `0..cols` is an error.
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self>;
    /// `self` is the one-element dL/dloss; gives `[rows, cols]`.
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self>;

    // ----- optimizer -------------------------------------------------------
    /// One in-place SGD update of `self` (the parameter), PyTorch's algorithm:
    /// Adds 1 to every element of an i64 buffer, in place, on its device
    /// (batch norm's `num_batches_tracked`, without a host round trip).
    fn increment_i64(&mut self) -> Result<()>;

    /// `d = g + wd p`; with momentum `b = initialize_buffer ? d : mu b + (1-dampening) d`,
    /// `d = nesterov ? d + mu b : b`; then `p -= lr d`.
    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()>;
}
