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

pub use geometry::{
    AdaptivePool2dGeometry, BatchNormGeometry, Conv2dGeometry, Pool2dGeometry, SgdConfig,
};

pub use storage::Storage;

use crate::core_types::{DType, Device};
use crate::error::Result;

/// What a training-mode batch-norm forward produces: the normalised output
/// plus the per-channel statistics backward and the running averages need.
#[derive(Debug)]
pub struct BatchNormTrainOutput<S> {
    pub output: S,
    /// Batch mean per channel, `[C]`.
    pub mean: S,
    /// Biased batch variance per channel, `[C]` (what normalisation uses).
    pub var: S,
    /// `1 / sqrt(var + eps)` per channel, `[C]`.
    pub invstd: S,
}

/// One device's buffer type and every kernel the engine needs from it.
///
/// All tensors are contiguous row-major; f32 unless a method says otherwise.
/// `self` is the first tensor argument (for backward kernels: the gradient
/// flowing in). Methods check lengths and dtypes and return an error rather
/// than panic on a mismatch.
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
    /// `self * factor`.
    fn scale(&self, factor: f32) -> Result<Self>;
    /// Sum of all elements, as one element.
    fn sum_all(&self) -> Result<Self>;
    /// A one-element buffer repeated `len` times (the backward of a sum).
    fn broadcast_scalar(&self, len: usize) -> Result<Self>;
    fn relu(&self) -> Result<Self>;
    /// `self` is dL/dy; passes it where the forward output was positive.
    fn relu_backward(&self, output: &Self) -> Result<Self>;

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
    /// Normalises with batch statistics (biased variance).
    fn batch_norm_train(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>>;
    /// Normalises with the running statistics.
    fn batch_norm_eval(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        running_mean: &Self,
        running_var: &Self,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<Self>;
    /// `self` is dL/dy. `mean`/`invstd` are the statistics the forward used
    /// (batch ones when `training`, running ones otherwise: then the
    /// statistics are constants and dx is a per-channel scale). Computes only
    /// the gradients `needs` asks for: `[input, weight, bias]`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        input: &Self,
        weight: Option<&Self>,
        mean: &Self,
        invstd: &Self,
        g: &BatchNormGeometry,
        training: bool,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]>;
    /// [`batch_norm_train`](Self::batch_norm_train) followed by ReLU on the
    /// output (the statistics are those of the input, as unfused). The
    /// default composes the two kernels; a backend overrides it to clamp in
    /// the normalising pass and save one pass over the activation.
    fn batch_norm_train_relu(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>> {
        let mut r = self.batch_norm_train(weight, bias, g, eps)?;
        r.output = r.output.relu()?;
        Ok(r)
    }
    /// [`batch_norm_eval`](Self::batch_norm_eval) followed by ReLU; see
    /// [`batch_norm_train_relu`](Self::batch_norm_train_relu).
    fn batch_norm_eval_relu(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        running_mean: &Self,
        running_var: &Self,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<Self> {
        self.batch_norm_eval(weight, bias, running_mean, running_var, g, eps)?
            .relu()
    }
    /// The backward of batch norm followed by ReLU: `self` is dL/d(relu
    /// output), `relu_output` the fused forward's output. Equals
    /// `self.relu_backward(relu_output)?.batch_norm_backward(..)` (the
    /// default); a backend overrides it to apply the mask while reading dy
    /// instead of materialising the masked gradient.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_relu_backward(
        &self,
        relu_output: &Self,
        input: &Self,
        weight: Option<&Self>,
        mean: &Self,
        invstd: &Self,
        g: &BatchNormGeometry,
        training: bool,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        self.relu_backward(relu_output)?
            .batch_norm_backward(input, weight, mean, invstd, g, training, needs)
    }
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
