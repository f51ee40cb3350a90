//! The fused SGD update (weight decay, momentum, Nesterov) in place.
//!
//! Launches of `kernels/sgd.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::PushKernelArg;

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{flag, int, launch, linear_launch, CudaStorage};
use crate::backend::{check, SgdConfig};
use crate::error::Result;

impl CudaStorage {
    pub(super) fn launch_sgd_step(
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
        let g = self.arg(op, grad)?;
        let device = self.device.clone();
        let p = SgdParams {
            lr: cfg.lr,
            momentum: cfg.momentum,
            dampening: cfg.dampening,
            weight_decay: cfg.weight_decay,
            has_momentum: flag(momentum_buffer.is_some()),
            initialize_buffer: flag(initialize_buffer),
            nesterov: flag(cfg.nesterov),
            n: int(op, len)?,
        };
        match momentum_buffer {
            Some(buf) => {
                self.same_device(op, buf)?;
                let b = buf.f32_mut(op)?;
                let param = self.f32_mut(op)?;
                launch!(
                    device,
                    KernelFile::Sgd,
                    "sgd_step",
                    linear_launch(len),
                    [param, g, b, &p]
                );
            }
            None => {
                let param = self.f32_mut(op)?;
                // No momentum: the buffer argument is never touched.
                launch!(
                    device,
                    KernelFile::Sgd,
                    "sgd_step",
                    linear_launch(len),
                    [param, g, g, &p]
                );
            }
        }
        Ok(())
    }
}

kernel_params! {
    /// `struct SgdParams` of kernels/sgd.cu: the update's hyper-parameters
    /// and flags, and the parameter's length.
    in Some(KernelFile::Sgd);
    struct SgdParams {
        lr: f32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        has_momentum: i32,
        initialize_buffer: i32,
        nesterov: i32,
        n: i32,
    }
}
