//! `Storage`: the device-tagged buffer behind a tensor. It forwards every
//! backend operation to the backend that owns the data, so ops are written
//! once against [`BackendStorage`] and never against `Vec<f32>`.

use crate::backend::cpu::CpuStorage;
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::tensor::Device;

/// The buffer of one tensor, on one device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
}

impl Storage {
    /// Moves host data onto `device`.
    pub fn from_cpu(data: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            Device::Cuda(_) => Err(Error::DeviceUnavailable {
                device,
                reason: "this build has no CUDA backend yet".into(),
            }),
        }
    }

    pub fn as_cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
        }
    }
}

/// Forwards a `&self` method to the backend, checking that every storage
/// argument lives on the same device.
macro_rules! dispatch {
    // Unary: only `self`.
    ($self:ident . $m:ident ( $($arg:expr),* )) => {
        match $self {
            Storage::Cpu(s) => s.$m($($arg),*).map(Storage::Cpu),
        }
    };
}

/// Extracts the CPU storage of an argument or reports a device mismatch.
fn cpu<'a>(op: &'static str, lhs: Device, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        #[allow(unreachable_patterns)]
        other => Err(Error::DeviceMismatch {
            op,
            lhs,
            rhs: other.device(),
        }),
    }
}

fn cpu_opt<'a>(
    op: &'static str,
    lhs: Device,
    s: Option<&'a Storage>,
) -> Result<Option<&'a CpuStorage>> {
    s.map(|s| cpu(op, lhs, s)).transpose()
}

fn cpu_mut<'a>(op: &'static str, lhs: Device, s: &'a mut Storage) -> Result<&'a mut CpuStorage> {
    let d = s.device();
    match s {
        Storage::Cpu(c) => Ok(c),
        #[allow(unreachable_patterns)]
        _ => Err(Error::DeviceMismatch { op, lhs, rhs: d }),
    }
}

use crate::backend::{
    AdaptivePool2dGeometry, BatchNormGeometry, BatchNormTrainOutput, Conv2dGeometry,
    Pool2dGeometry, SgdConfig,
};

impl BackendStorage for Storage {
    fn device(&self) -> Device {
        match self {
            Storage::Cpu(s) => s.device(),
        }
    }
    fn dtype(&self) -> crate::tensor::DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
        }
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => s.to_cpu(),
        }
    }
    fn try_clone(&self) -> Result<Self> {
        dispatch!(self.try_clone())
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s.add(cpu("add", s.device(), rhs)?).map(Storage::Cpu),
        }
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        dispatch!(self.scale(factor))
    }
    fn sum_all(&self) -> Result<Self> {
        dispatch!(self.sum_all())
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        dispatch!(self.broadcast_scalar(len))
    }
    fn relu(&self) -> Result<Self> {
        dispatch!(self.relu())
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .relu_backward(cpu("relu_backward", s.device(), output)?)
                .map(Storage::Cpu),
        }
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
        match self {
            Storage::Cpu(s) => s
                .matmul(
                    cpu("matmul", s.device(), rhs)?,
                    m,
                    k,
                    n,
                    lhs_transposed,
                    rhs_transposed,
                )
                .map(Storage::Cpu),
        }
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .add_row_vector(cpu("add_row_vector", s.device(), row)?, rows, cols)
                .map(Storage::Cpu),
        }
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        dispatch!(self.sum_rows(rows, cols))
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        match self {
            Storage::Cpu(s) => {
                let d = s.device();
                s.conv2d(cpu("conv2d", d, weight)?, cpu_opt("conv2d", d, bias)?, g)
                    .map(Storage::Cpu)
            }
        }
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .conv2d_input_grad(cpu("conv2d_input_grad", s.device(), weight)?, g)
                .map(Storage::Cpu),
        }
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .conv2d_weight_grad(cpu("conv2d_weight_grad", s.device(), input)?, g)
                .map(Storage::Cpu),
        }
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        dispatch!(self.channel_sums(g))
    }

    fn batch_norm_train(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>> {
        match self {
            Storage::Cpu(s) => {
                let d = s.device();
                let out = s.batch_norm_train(
                    cpu_opt("batch_norm", d, weight)?,
                    cpu_opt("batch_norm", d, bias)?,
                    g,
                    eps,
                )?;
                Ok(BatchNormTrainOutput {
                    output: Storage::Cpu(out.output),
                    mean: Storage::Cpu(out.mean),
                    var: Storage::Cpu(out.var),
                    invstd: Storage::Cpu(out.invstd),
                })
            }
        }
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
        match self {
            Storage::Cpu(s) => {
                let d = s.device();
                s.batch_norm_eval(
                    cpu_opt("batch_norm", d, weight)?,
                    cpu_opt("batch_norm", d, bias)?,
                    cpu("batch_norm", d, running_mean)?,
                    cpu("batch_norm", d, running_var)?,
                    g,
                    eps,
                )
                .map(Storage::Cpu)
            }
        }
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
        match self {
            Storage::Cpu(s) => {
                let d = s.device();
                let [dx, dw, db] = s.batch_norm_backward(
                    cpu("batch_norm_backward", d, input)?,
                    cpu_opt("batch_norm_backward", d, weight)?,
                    cpu("batch_norm_backward", d, mean)?,
                    cpu("batch_norm_backward", d, invstd)?,
                    g,
                    training,
                    needs,
                )?;
                Ok([
                    dx.map(Storage::Cpu),
                    dw.map(Storage::Cpu),
                    db.map(Storage::Cpu),
                ])
            }
        }
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        let d = self.device();
        match self {
            Storage::Cpu(s) => s.update_running_stats(
                cpu_mut("batch_norm", d, running_var)?,
                cpu("batch_norm", d, batch_mean)?,
                cpu("batch_norm", d, batch_var)?,
                momentum,
                count,
            ),
        }
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        dispatch!(self.inv_std(eps))
    }

    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        match self {
            Storage::Cpu(s) => {
                let (v, i) = s.max_pool2d(g)?;
                Ok((Storage::Cpu(v), Storage::Cpu(i)))
            }
        }
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .max_pool2d_backward(cpu("max_pool2d_backward", s.device(), indices)?, g)
                .map(Storage::Cpu),
        }
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        dispatch!(self.adaptive_avg_pool2d(g))
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        dispatch!(self.adaptive_avg_pool2d_backward(g))
    }

    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        dispatch!(self.log_softmax(rows, cols))
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .log_softmax_backward(cpu("log_softmax_backward", s.device(), output)?, rows, cols)
                .map(Storage::Cpu),
        }
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .nll_loss(cpu("nll_loss", s.device(), labels)?, rows, cols)
                .map(Storage::Cpu),
        }
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        match self {
            Storage::Cpu(s) => s
                .nll_loss_backward(cpu("nll_loss_backward", s.device(), labels)?, rows, cols)
                .map(Storage::Cpu),
        }
    }

    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        let d = self.device();
        match self {
            Storage::Cpu(s) => {
                let buf = match momentum_buffer {
                    Some(b) => Some(cpu_mut("sgd", d, b)?),
                    None => None,
                };
                s.sgd_step(cpu("sgd", d, grad)?, buf, cfg, initialize_buffer)
            }
        }
    }
}
