//! `Storage`: the device-tagged buffer behind a tensor. It forwards every
//! backend operation to the backend that owns the data, so ops are written
//! once against [`BackendStorage`] and never against `Vec<f32>`.
//!
//! Each method is written once: `each_backend!` (below) expands its body for
//! every variant with `B` naming that variant's storage type, and [`arg`]
//! pulls an argument out as the same type, or reports a device mismatch.

use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::CudaStorage;
use crate::backend::BackendStorage;
use crate::backend::{
    AdaptivePool2dGeometry, BatchNormGeometry, BatchNormOutput, BatchNormParams, BatchNormSaved,
    BatchNormStats, BatchStats, BinaryOp, Conv2dGeometry, Pool2dGeometry, ReduceOp, SgdConfig,
    StridedLayout, UnaryOp,
};
use crate::core_types::{DType, Device};
use crate::error::{Error, Result};

/// The buffer of one tensor, on one device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    /// Drops a storage that never became a tensor, its host buffer going
    /// back to the CPU buffer pool as a tensor's does (dropped plainly, a
    /// pooled-size buffer would be freed and the pool would miss next time).
    pub(crate) fn recycle(mut self) {
        if let Storage::Cpu(data) = &mut self {
            crate::backend::cpu::buffer_pool::recycle_host(data);
        }
    }

    /// Moves host data onto `device`.
    pub fn from_cpu(data: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            Device::Cuda(ordinal) => Ok(Storage::Cuda(CudaStorage::from_cpu(&data, ordinal)?)),
        }
    }

    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Cuda(_) => None,
        }
    }
}

impl From<CpuStorage> for Storage {
    fn from(s: CpuStorage) -> Self {
        Storage::Cpu(s)
    }
}

impl From<CudaStorage> for Storage {
    fn from(s: CudaStorage) -> Self {
        Storage::Cuda(s)
    }
}

/// A backend's storage type as one variant of [`Storage`].
trait Variant: BackendStorage + Into<Storage> {
    fn get(s: &Storage) -> Option<&Self>;
    fn get_mut(s: &mut Storage) -> Option<&mut Self>;
}

impl Variant for CpuStorage {
    fn get(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        }
    }
    fn get_mut(s: &mut Storage) -> Option<&mut Self> {
        match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        }
    }
}

impl Variant for CudaStorage {
    fn get(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        }
    }
    fn get_mut(s: &mut Storage) -> Option<&mut Self> {
        match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        }
    }
}

/// An argument as the same backend type as `self` (on device `lhs`), or a
/// device mismatch naming both devices. (Two CUDA ordinals are told apart by
/// the CUDA backend itself.)
fn arg<'a, B: Variant>(op: &'static str, lhs: Device, s: &'a Storage) -> Result<&'a B> {
    B::get(s).ok_or(Error::DeviceMismatch {
        op,
        lhs,
        rhs: s.device(),
    })
}

fn arg_opt<'a, B: Variant>(
    op: &'static str,
    lhs: Device,
    s: Option<&'a Storage>,
) -> Result<Option<&'a B>> {
    s.map(|s| arg::<B>(op, lhs, s)).transpose()
}

fn arg_mut<'a, B: Variant>(op: &'static str, lhs: Device, s: &'a mut Storage) -> Result<&'a mut B> {
    let rhs = s.device();
    B::get_mut(s).ok_or(Error::DeviceMismatch { op, lhs, rhs })
}

/// Expands `$body` once per backend with `$s` bound to the inner storage and
/// `B` to its type.
macro_rules! each_backend {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Storage::Cpu($s) => {
                #[allow(dead_code)]
                type B = CpuStorage;
                $body
            }
            Storage::Cuda($s) => {
                #[allow(dead_code)]
                type B = CudaStorage;
                $body
            }
        }
    };
}

impl BackendStorage for Storage {
    fn device(&self) -> Device {
        each_backend!(self, s => s.device())
    }
    fn dtype(&self) -> DType {
        each_backend!(self, s => s.dtype())
    }
    fn len(&self) -> usize {
        each_backend!(self, s => s.len())
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        each_backend!(self, s => s.to_cpu())
    }
    fn try_clone(&self) -> Result<Self> {
        each_backend!(self, s => s.try_clone().map(Storage::from))
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        each_backend!(self, s => s.add(arg::<B>("add", s.device(), rhs)?).map(Storage::from))
    }
    fn add_assign(&mut self, rhs: &Self) -> Result<()> {
        each_backend!(self, s => {
            let d = s.device();
            s.add_assign(arg::<B>("add", d, rhs)?)
        })
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        each_backend!(self, s => s.scale(factor).map(Storage::from))
    }
    fn sum_all(&self) -> Result<Self> {
        each_backend!(self, s => s.sum_all().map(Storage::from))
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        each_backend!(self, s => s.broadcast_scalar(len).map(Storage::from))
    }
    fn relu(&self) -> Result<Self> {
        each_backend!(self, s => s.relu().map(Storage::from))
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        each_backend!(self, s => s.relu_backward(arg::<B>("relu_backward", s.device(), output)?).map(Storage::from))
    }
    fn add_relu(&self, rhs: &Self) -> Result<Self> {
        each_backend!(self, s => s.add_relu(arg::<B>("add_relu", s.device(), rhs)?).map(Storage::from))
    }
    fn relu_backward_assign(&mut self, output: &Self) -> Result<()> {
        each_backend!(self, s => {
            let d = s.device();
            s.relu_backward_assign(arg::<B>("relu_backward", d, output)?)
        })
    }
    fn add_relu_assign(&mut self, rhs: &Self) -> Result<()> {
        each_backend!(self, s => {
            let d = s.device();
            s.add_relu_assign(arg::<B>("add_relu", d, rhs)?)
        })
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
        each_backend!(self, s => s
            .matmul(arg::<B>("matmul", s.device(), rhs)?, m, k, n, lhs_transposed, rhs_transposed)
            .map(Storage::from))
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s
            .add_row_vector(arg::<B>("add_row_vector", s.device(), row)?, rows, cols)
            .map(Storage::from))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s.sum_rows(rows, cols).map(Storage::from))
    }

    fn strided_copy(&self, layout: &StridedLayout) -> Result<Self> {
        each_backend!(self, s => s.strided_copy(layout).map(Storage::from))
    }
    fn binary(
        &self,
        rhs: &Self,
        op: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self> {
        each_backend!(self, s => s
            .binary(arg::<B>("binary", s.device(), rhs)?, op, lhs_layout, rhs_layout)
            .map(Storage::from))
    }
    fn unary(&self, op: UnaryOp) -> Result<Self> {
        each_backend!(self, s => s.unary(op).map(Storage::from))
    }
    fn reduce_rows(&self, op: ReduceOp, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s.reduce_rows(op, rows, cols).map(Storage::from))
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
        each_backend!(self, s => s
            .batched_matmul(
                arg::<B>("batched_matmul", s.device(), rhs)?,
                batch, m, k, n, lhs_transposed, rhs_transposed,
            )
            .map(Storage::from))
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        each_backend!(self, s => {
            let d = s.device();
            s.conv2d(arg::<B>("conv2d", d, weight)?, arg_opt::<B>("conv2d", d, bias)?, g).map(Storage::from)
        })
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        each_backend!(self, s => s
            .conv2d_input_grad(arg::<B>("conv2d_input_grad", s.device(), weight)?, g)
            .map(Storage::from))
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        each_backend!(self, s => s
            .conv2d_weight_grad(arg::<B>("conv2d_weight_grad", s.device(), input)?, g)
            .map(Storage::from))
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        each_backend!(self, s => s.channel_sums(g).map(Storage::from))
    }

    fn batch_norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        stats: BatchNormStats<'_, Self>,
        p: &BatchNormParams,
    ) -> Result<BatchNormOutput<Self>> {
        each_backend!(self, s => {
            let (d, op) = (s.device(), "batch_norm");
            let stats = match stats {
                BatchNormStats::Batch => BatchNormStats::Batch,
                BatchNormStats::Running { mean, var } => BatchNormStats::Running {
                    mean: arg::<B>(op, d, mean)?,
                    var: arg::<B>(op, d, var)?,
                },
            };
            let out = s.batch_norm(arg_opt::<B>(op, d, weight)?, arg_opt::<B>(op, d, bias)?, stats, p)?;
            Ok(BatchNormOutput {
                output: out.output.into(),
                batch_stats: out.batch_stats.map(|b| BatchStats {
                    mean: b.mean.into(),
                    var: b.var.into(),
                    invstd: b.invstd.into(),
                }),
            })
        })
    }
    fn batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        each_backend!(self, s => {
            let (d, op) = (s.device(), "batch_norm_backward");
            let saved = BatchNormSaved {
                input: arg_opt::<B>(op, d, saved.input)?,
                weight: arg_opt::<B>(op, d, saved.weight)?,
                mean: arg::<B>(op, d, saved.mean)?,
                invstd: arg::<B>(op, d, saved.invstd)?,
                batch_stats: saved.batch_stats,
                output: arg_opt::<B>(op, d, saved.output)?,
            };
            let [dx, dw, db] = s.batch_norm_backward(&saved, p, needs)?;
            Ok([dx.map(Storage::from), dw.map(Storage::from), db.map(Storage::from)])
        })
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        each_backend!(self, s => {
            let d = s.device();
            s.update_running_stats(
                arg_mut::<B>("update_running_stats", d, running_var)?,
                arg::<B>("update_running_stats", d, batch_mean)?,
                arg::<B>("update_running_stats", d, batch_var)?,
                momentum,
                count,
            )
        })
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        each_backend!(self, s => s.inv_std(eps).map(Storage::from))
    }

    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        each_backend!(self, s => {
            let (values, indices) = s.max_pool2d(g)?;
            Ok((values.into(), indices.into()))
        })
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        each_backend!(self, s => s
            .max_pool2d_backward(arg::<B>("max_pool2d_backward", s.device(), indices)?, g)
            .map(Storage::from))
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        each_backend!(self, s => s.adaptive_avg_pool2d(g).map(Storage::from))
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        each_backend!(self, s => s.adaptive_avg_pool2d_backward(g).map(Storage::from))
    }

    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s.log_softmax(rows, cols).map(Storage::from))
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s
            .log_softmax_backward(arg::<B>("log_softmax_backward", s.device(), output)?, rows, cols)
            .map(Storage::from))
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s
            .nll_loss(arg::<B>("nll_loss", s.device(), labels)?, rows, cols)
            .map(Storage::from))
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        each_backend!(self, s => s
            .nll_loss_backward(arg::<B>("nll_loss_backward", s.device(), labels)?, rows, cols)
            .map(Storage::from))
    }

    fn increment_i64(&mut self) -> Result<()> {
        each_backend!(self, s => s.increment_i64())
    }

    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        each_backend!(self, s => {
            let d = s.device();
            let buffer = match momentum_buffer {
                Some(b) => Some(arg_mut::<B>("sgd_step", d, b)?),
                None => None,
            };
            s.sgd_step(arg::<B>("sgd_step", d, grad)?, buffer, cfg, initialize_buffer)
        })
    }
}
