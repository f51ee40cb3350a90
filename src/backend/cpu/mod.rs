//! The CPU backend: host vectors, im2col + `matrixmultiply` GEMM for the
//! convolutions and dense layers, `rayon` across channels and planes.
//!
//! This file is only the [`BackendStorage`] impl: it unwraps the dtypes and
//! delegates to one kernel module per family (`conv`, `batch_norm`,
//! `pool`, `loss`, `sgd`, `elementwise`, `gemm`) after running
//! the family's argument check from `backend::check`, which the CUDA
//! backend shares; the kernels index the validated buffers directly.

use crate::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormOutput, BatchNormParams,
    BatchNormSaved, BatchNormStats, BatchStats, Conv2dGeometry, Epilogue, Pool2dGeometry,
    SgdConfig,
};
use crate::backend::{BinaryOp, ReduceOp, StridedLayout, UnaryOp};
use crate::core_types::{DType, Device, HostData};
use crate::error::{Error, Result};

// The argument checks shared with the CUDA backend: every method below
// runs its family's check before a kernel touches a buffer, so the kernels
// index without re-checking.
use super::check;

pub mod alloc;
mod batch_norm;
pub mod buffer_pool;
mod conv;
mod elementwise;
mod env_switch;
mod gemm;
mod im2col;
mod loss;
#[cfg(target_arch = "x86_64")]
mod microkernel;
mod pool;
mod recent;
pub mod scratch;
mod sgd;
pub mod simd;
mod strided;
mod tap_classes;

/// The Winograd F(2x2, 3x3) convolution mode in effect, as `frostgrad
/// bench` reports it: `"on"` (`FROSTGRAD_CONV_WINOGRAD=1`: wherever the
/// shape allows), `"off"` (`=0`: never), `"auto"` (unset or any other
/// value: the measured rule, AVX2 from 32 output tiles for the forward and
/// input gradient, 40 tiles per thread for the weight gradient).
pub fn conv_winograd() -> &'static str {
    match conv::winograd_mode() {
        Some(true) => "on",
        Some(false) => "off",
        None => "auto",
    }
}

#[cfg(test)]
mod test_data;

use HostData::F32;

/// The CPU backend's storage is plain host data.
pub type CpuStorage = HostData;

/// Typed views of host data; a dtype mismatch is an error naming `op`.
impl HostData {
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
        HostData::dtype(self)
    }
    fn len(&self) -> usize {
        HostData::len(self)
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        buffer_pool::copy_host(self)
    }
    fn try_clone(&self) -> Result<Self> {
        buffer_pool::copy_host(self)
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        check::binary("add", self, rhs)?;
        let op = "add";
        Ok(F32(elementwise::add(self.as_f32(op)?, rhs.as_f32(op)?)?))
    }
    fn add_assign(&mut self, rhs: &Self) -> Result<()> {
        check::binary("add", self, rhs)?;
        let op = "add";
        elementwise::add_assign(self.as_f32_mut(op)?, rhs.as_f32(op)?);
        Ok(())
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        check::unary("scale", self)?;
        Ok(F32(elementwise::scale(self.as_f32("scale")?, factor)?))
    }
    fn sum_all(&self) -> Result<Self> {
        check::unary("sum", self)?;
        Ok(F32(vec![elementwise::sum_all(self.as_f32("sum")?)]))
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        check::broadcast_scalar(self)?;
        Ok(F32(elementwise::broadcast_scalar(
            self.as_f32("broadcast_scalar")?,
            len,
        )?))
    }
    fn relu(&self) -> Result<Self> {
        check::unary("relu", self)?;
        Ok(F32(elementwise::relu(self.as_f32("relu")?)?))
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        check::binary("relu_backward", self, output)?;
        let op = "relu_backward";
        Ok(F32(elementwise::relu_backward(
            self.as_f32(op)?,
            output.as_f32(op)?,
        )?))
    }
    fn add_relu(&self, rhs: &Self) -> Result<Self> {
        check::binary("add_relu", self, rhs)?;
        let op = "add_relu";
        Ok(F32(elementwise::add_relu(
            self.as_f32(op)?,
            rhs.as_f32(op)?,
        )?))
    }
    fn relu_backward_assign(&mut self, output: &Self) -> Result<()> {
        check::binary("relu_backward", self, output)?;
        let op = "relu_backward";
        elementwise::relu_backward_assign(self.as_f32_mut(op)?, output.as_f32(op)?);
        Ok(())
    }
    fn add_relu_assign(&mut self, rhs: &Self) -> Result<()> {
        check::binary("add_relu", self, rhs)?;
        let op = "add_relu";
        elementwise::add_relu_assign(self.as_f32_mut(op)?, rhs.as_f32(op)?);
        Ok(())
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
        check::matmul(self, rhs, m, k, n)?;
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
        check::add_row_vector(self, row, rows, cols)?;
        let op = "add_row_vector";
        Ok(F32(elementwise::add_row_vector(
            self.as_f32(op)?,
            row.as_f32(op)?,
            cols,
        )?))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        check::sum_rows(self, rows, cols)?;
        Ok(F32(elementwise::sum_rows(self.as_f32("sum_rows")?, cols)?))
    }

    fn strided_copy(&self, layout: &StridedLayout) -> Result<Self> {
        check::strided_copy(self, layout)?;
        Ok(F32(strided::strided_copy(
            self.as_f32("strided_copy")?,
            layout,
        )))
    }
    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self> {
        check::binary_strided(self, rhs, lhs_layout, rhs_layout)?;
        let (a, b) = (self.as_f32("binary")?, rhs.as_f32("binary")?);
        Ok(F32(strided::binary(a, b, op, lhs_layout, rhs_layout)))
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        check::unary("unary", self)?;
        Ok(F32(strided::unary(self.as_f32("unary")?, op)))
    }
    fn reduce_rows(&self, op: ReduceOp, rows: usize, cols: usize) -> Result<Self> {
        check::reduce_rows(self, rows, cols)?;
        Ok(F32(strided::reduce_rows(
            self.as_f32("reduce_rows")?,
            op,
            cols,
        )))
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
        check::batched_matmul(self, rhs, batch, m, k, n)?;
        let op = "batched_matmul";
        Ok(F32(strided::batched_matmul(
            self.as_f32(op)?,
            rhs.as_f32(op)?,
            batch,
            m,
            k,
            n,
            lhs_transposed,
            rhs_transposed,
        )?))
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        check::conv2d(self, weight, bias, g)?;
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
        check::conv2d_input_grad(self, weight, g)?;
        let op = "conv2d_input_grad";
        Ok(F32(conv::conv2d_input_grad(
            self.as_f32(op)?,
            weight.as_f32(op)?,
            g,
        )?))
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        check::conv2d_weight_grad(self, input, g)?;
        let op = "conv2d_weight_grad";
        Ok(F32(conv::conv2d_weight_grad(
            self.as_f32(op)?,
            input.as_f32(op)?,
            g,
        )?))
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        check::channel_sums(self, g)?;
        Ok(F32(batch_norm::channel_sums(
            self.as_f32("channel_sums")?,
            g,
        )?))
    }

    fn batch_norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        stats: BatchNormStats<'_, Self>,
        p: &BatchNormParams,
    ) -> Result<BatchNormOutput<Self>> {
        check::batch_norm(self, weight, bias, &stats, p)?;
        let op = "batch_norm";
        let weight = weight.map(|w| w.as_f32(op)).transpose()?;
        let bias = bias.map(|b| b.as_f32(op)).transpose()?;
        let x = self.as_f32(op)?;
        let (g, eps) = (&p.geometry, p.eps);
        let relu = p.epilogue == Epilogue::Relu;
        Ok(match stats {
            BatchNormStats::Batch => {
                let r = batch_norm::train(x, weight, bias, g, eps, relu)?;
                BatchNormOutput {
                    output: F32(r.output),
                    batch_stats: Some(BatchStats {
                        mean: F32(r.mean),
                        var: F32(r.var),
                        invstd: F32(r.invstd),
                    }),
                }
            }
            BatchNormStats::Running { mean, var } => {
                let (rm, rv) = (mean.as_f32(op)?, var.as_f32(op)?);
                BatchNormOutput {
                    output: F32(batch_norm::eval(x, weight, bias, rm, rv, g, eps, relu)?),
                    batch_stats: None,
                }
            }
        })
    }
    fn batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        check::batch_norm_backward(self, saved, p, needs)?;
        let op = "batch_norm_backward";
        let relu_output = match p.epilogue {
            Epilogue::None => None,
            Epilogue::Relu => Some(
                saved
                    .output
                    .ok_or_else(|| {
                        Error::invalid(op, "the ReLU epilogue needs the forward output")
                    })?
                    .as_f32(op)?,
            ),
        };
        let grads = batch_norm::backward(
            self.as_f32(op)?,
            relu_output,
            saved.input.map(|x| x.as_f32(op)).transpose()?,
            saved.weight.map(|w| w.as_f32(op)).transpose()?,
            saved.mean.as_f32(op)?,
            saved.invstd.as_f32(op)?,
            &p.geometry,
            saved.batch_stats,
            needs,
        )?;
        Ok(grads.map(|gr| gr.map(F32)))
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        check::update_running_stats(self, running_var, batch_mean, batch_var, count)?;
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
        check::unary("inv_std", self)?;
        Ok(F32(elementwise::inv_std(self.as_f32("inv_std")?, eps)))
    }

    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        check::max_pool2d(self, g)?;
        let (values, indices) = pool::max_pool2d(self.as_f32("max_pool2d")?, g)?;
        Ok((F32(values), CpuStorage::I64(indices)))
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        check::max_pool2d_backward(self, indices, g)?;
        let op = "max_pool2d_backward";
        Ok(F32(pool::max_pool2d_backward(
            self.as_f32(op)?,
            indices.as_i64(op)?,
            g,
        )?))
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        check::adaptive_avg_pool2d(self, g)?;
        Ok(F32(pool::adaptive_avg_pool2d(
            self.as_f32("adaptive_avg_pool2d")?,
            g,
        )?))
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        check::adaptive_avg_pool2d_backward(self, g)?;
        let op = "adaptive_avg_pool2d_backward";
        Ok(F32(pool::adaptive_avg_pool2d_backward(
            self.as_f32(op)?,
            g,
        )?))
    }

    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        check::log_softmax(self, rows, cols)?;
        Ok(F32(loss::log_softmax(self.as_f32("log_softmax")?, cols)?))
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        check::log_softmax_backward(self, output, rows, cols)?;
        let op = "log_softmax_backward";
        Ok(F32(loss::log_softmax_backward(
            self.as_f32(op)?,
            output.as_f32(op)?,
            cols,
        )?))
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        check::nll_loss(self, labels, rows, cols)?;
        let op = "nll_loss";
        Ok(F32(vec![loss::nll_loss(
            self.as_f32(op)?,
            labels.as_i64(op)?,
            rows,
            cols,
        )?]))
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        check::nll_loss_backward(self, labels, rows, cols)?;
        let op = "nll_loss_backward";
        Ok(F32(loss::nll_loss_backward(
            self.as_f32(op)?,
            labels.as_i64(op)?,
            rows,
            cols,
        )?))
    }

    fn increment_i64(&mut self) -> Result<()> {
        match self {
            CpuStorage::I64(v) => {
                v.iter_mut().for_each(|x| *x += 1);
                Ok(())
            }
            CpuStorage::F32(_) => Err(Error::DType {
                op: "increment_i64",
                expected: DType::I64,
                got: DType::F32,
            }),
        }
    }

    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        check::sgd_step(self, grad, momentum_buffer.as_deref(), cfg)?;
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
