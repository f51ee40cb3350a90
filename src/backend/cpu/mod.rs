//! The CPU backend: host vectors, im2col + `matrixmultiply` GEMM for the
//! convolutions and dense layers, `rayon` across channels and planes.
//!
//! This file is only the [`BackendStorage`] impl: it unwraps the dtypes and
//! delegates to one kernel module per family ([`conv`], [`batch_norm`],
//! [`pool`], [`loss`], [`sgd`], [`elementwise`], [`gemm`]), each of which
//! validates buffer lengths against the geometry before computing.

use crate::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormTrainOutput,
    Conv2dGeometry, Pool2dGeometry, SgdConfig,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device};

mod batch_norm;
pub mod buffer_pool;
mod check;
mod conv;
mod elementwise;
mod gemm;
mod loss;
mod pool;
mod scratch;
mod sgd;

/// The batch-norm kernels with and without the fused ReLU, unwrapped once.
impl CpuStorage {
    fn bn_train(
        &self,
        op: &'static str,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
        fuse_relu: bool,
    ) -> Result<BatchNormTrainOutput<Self>> {
        let weight = weight.map(|w| w.as_f32(op)).transpose()?;
        let bias = bias.map(|b| b.as_f32(op)).transpose()?;
        let r = batch_norm::train(self.as_f32(op)?, weight, bias, g, eps, fuse_relu)?;
        Ok(BatchNormTrainOutput {
            output: F32(r.output),
            mean: F32(r.mean),
            var: F32(r.var),
            invstd: F32(r.invstd),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_eval(
        &self,
        op: &'static str,
        weight: Option<&Self>,
        bias: Option<&Self>,
        (running_mean, running_var): (&Self, &Self),
        g: &BatchNormGeometry,
        eps: f32,
        fuse_relu: bool,
    ) -> Result<Self> {
        let weight = weight.map(|w| w.as_f32(op)).transpose()?;
        let bias = bias.map(|b| b.as_f32(op)).transpose()?;
        let (rm, rv) = (running_mean.as_f32(op)?, running_var.as_f32(op)?);
        let x = self.as_f32(op)?;
        Ok(F32(batch_norm::eval(
            x, weight, bias, rm, rv, g, eps, fuse_relu,
        )?))
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &self,
        op: &'static str,
        relu_output: Option<&Self>,
        input: &Self,
        weight: Option<&Self>,
        (mean, invstd): (&Self, &Self),
        g: &BatchNormGeometry,
        training: bool,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        let weight = weight.map(|w| w.as_f32(op)).transpose()?;
        let relu_output = relu_output.map(|y| y.as_f32(op)).transpose()?;
        let grads = batch_norm::backward(
            self.as_f32(op)?,
            relu_output,
            input.as_f32(op)?,
            weight,
            mean.as_f32(op)?,
            invstd.as_f32(op)?,
            g,
            training,
            needs,
        )?;
        Ok(grads.map(|gr| gr.map(F32)))
    }
}

#[cfg(test)]
mod test_data;

use CpuStorage::F32;

/// Host data of one tensor. Dropping it hands a large buffer back to the
/// [`buffer_pool`] for reuse.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        match self {
            CpuStorage::F32(v) => buffer_pool::recycle(std::mem::take(v)),
            CpuStorage::I64(v) => buffer_pool::recycle(std::mem::take(v)),
        }
    }
}

impl CpuStorage {
    /// A copy in a pooled buffer (`Clone` uses the allocator and cannot fail
    /// gracefully).
    fn pooled_copy(&self) -> Result<Self> {
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(buffer_pool::copy_of("copy", v)?),
            CpuStorage::I64(v) => CpuStorage::I64(buffer_pool::copy_of("copy", v)?),
        })
    }
}

impl CpuStorage {
    pub fn as_f32(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub fn as_f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub fn as_i64(&self, op: &'static str) -> Result<&[i64]> {
        match self {
            CpuStorage::I64(v) => Ok(v),
            CpuStorage::F32(_) => Err(Error::DType {
                op,
                expected: DType::I64,
                got: DType::F32,
            }),
        }
    }
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        self.pooled_copy()
    }
    fn try_clone(&self) -> Result<Self> {
        self.pooled_copy()
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        let op = "add";
        Ok(F32(elementwise::add(self.as_f32(op)?, rhs.as_f32(op)?)?))
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        Ok(F32(elementwise::scale(self.as_f32("scale")?, factor)?))
    }
    fn sum_all(&self) -> Result<Self> {
        Ok(F32(vec![elementwise::sum_all(self.as_f32("sum")?)]))
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        Ok(F32(elementwise::broadcast_scalar(
            self.as_f32("broadcast_scalar")?,
            len,
        )?))
    }
    fn relu(&self) -> Result<Self> {
        Ok(F32(elementwise::relu(self.as_f32("relu")?)?))
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        let op = "relu_backward";
        Ok(F32(elementwise::relu_backward(
            self.as_f32(op)?,
            output.as_f32(op)?,
        )?))
    }
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
        let (a, b) = (self.as_f32(op)?, rhs.as_f32(op)?);
        Ok(F32(gemm::matmul(
            a,
            b,
            m,
            k,
            n,
            lhs_transposed,
            rhs_transposed,
        )?))
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "add_row_vector";
        Ok(F32(elementwise::add_row_vector(
            self.as_f32(op)?,
            row.as_f32(op)?,
            rows,
            cols,
        )?))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        Ok(F32(elementwise::sum_rows(
            self.as_f32("sum_rows")?,
            rows,
            cols,
        )?))
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d";
        let bias = bias.map(|b| b.as_f32(op)).transpose()?;
        Ok(F32(conv::conv2d(
            self.as_f32(op)?,
            weight.as_f32(op)?,
            bias,
            g,
        )?))
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d_input_grad";
        Ok(F32(conv::conv2d_input_grad(
            self.as_f32(op)?,
            weight.as_f32(op)?,
            g,
        )?))
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d_weight_grad";
        Ok(F32(conv::conv2d_weight_grad(
            self.as_f32(op)?,
            input.as_f32(op)?,
            g,
        )?))
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        Ok(F32(batch_norm::channel_sums(
            self.as_f32("channel_sums")?,
            g,
        )?))
    }

    fn batch_norm_train(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>> {
        self.bn_train("batch_norm_train", weight, bias, g, eps, false)
    }
    fn batch_norm_eval(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        running_mean: &Self,
        running_var: &Self,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<Self> {
        let stats = (running_mean, running_var);
        self.bn_eval("batch_norm_eval", weight, bias, stats, g, eps, false)
    }
    fn batch_norm_backward(
        &self,
        input: &Self,
        weight: Option<&Self>,
        mean: &Self,
        invstd: &Self,
        g: &BatchNormGeometry,
        training: bool,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        let op = "batch_norm_backward";
        self.bn_backward(op, None, input, weight, (mean, invstd), g, training, needs)
    }
    fn batch_norm_train_relu(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>> {
        self.bn_train("batch_norm_relu_train", weight, bias, g, eps, true)
    }
    fn batch_norm_eval_relu(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        running_mean: &Self,
        running_var: &Self,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<Self> {
        let stats = (running_mean, running_var);
        self.bn_eval("batch_norm_relu_eval", weight, bias, stats, g, eps, true)
    }
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
        let op = "batch_norm_relu_backward";
        let stats = (mean, invstd);
        self.bn_backward(
            op,
            Some(relu_output),
            input,
            weight,
            stats,
            g,
            training,
            needs,
        )
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
        batch_norm::update_running_stats(
            self.as_f32_mut(op)?,
            running_var.as_f32_mut(op)?,
            batch_mean.as_f32(op)?,
            batch_var.as_f32(op)?,
            momentum,
            count,
        )
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        Ok(F32(elementwise::inv_std(self.as_f32("inv_std")?, eps)))
    }

    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        let (values, indices) = pool::max_pool2d(self.as_f32("max_pool2d")?, g)?;
        Ok((F32(values), CpuStorage::I64(indices)))
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        let op = "max_pool2d_backward";
        Ok(F32(pool::max_pool2d_backward(
            self.as_f32(op)?,
            indices.as_i64(op)?,
            g,
        )?))
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        Ok(F32(pool::adaptive_avg_pool2d(
            self.as_f32("adaptive_avg_pool2d")?,
            g,
        )?))
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        let op = "adaptive_avg_pool2d_backward";
        Ok(F32(pool::adaptive_avg_pool2d_backward(
            self.as_f32(op)?,
            g,
        )?))
    }

    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        Ok(F32(loss::log_softmax(
            self.as_f32("log_softmax")?,
            rows,
            cols,
        )?))
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "log_softmax_backward";
        Ok(F32(loss::log_softmax_backward(
            self.as_f32(op)?,
            output.as_f32(op)?,
            rows,
            cols,
        )?))
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "nll_loss";
        Ok(F32(vec![loss::nll_loss(
            self.as_f32(op)?,
            labels.as_i64(op)?,
            rows,
            cols,
        )?]))
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "nll_loss_backward";
        Ok(F32(loss::nll_loss_backward(
            self.as_f32(op)?,
            labels.as_i64(op)?,
            rows,
            cols,
        )?))
    }

    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        let op = "sgd_step";
        let buffer = momentum_buffer.map(|b| b.as_f32_mut(op)).transpose()?;
        sgd::sgd_step(
            self.as_f32_mut(op)?,
            grad.as_f32(op)?,
            buffer,
            cfg,
            initialize_buffer,
        )
    }
}
