//! The fused SGD update (weight decay, momentum, Nesterov) in place.
//!
//! Launches of `kernels/sgd.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::PushKernelArg;

use super::module_cache::KernelFile;
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
