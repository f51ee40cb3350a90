//! Batch normalisation (statistics in double, optionally fused with ReLU), its backward and
//! running statistics; the per-channel sums of a conv bias gradient.
//!
//! Launches of `kernels/batch_norm.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::PushKernelArg;

use super::elementwise::{ChannelSumsParams, InvStdParams};
use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{
    flag, int, launch, linear_launch, per_item_launch, plane_launch, CudaStorage,
};
use crate::backend::{
    check, BatchNormGeometry, BatchNormOutput, BatchNormParams, BatchNormSaved, BatchNormStats,
    BatchStats, Epilogue,
};
use crate::error::Result;

impl CudaStorage {
    pub(super) fn launch_channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        let op = "channel_sums";
        check::channel_sums(self, g)?;
        let x = self.f32(op)?;
        let p = ChannelSumsParams {
            n: int(op, g.batch)?,
            c: int(op, g.channels)?,
            s: int(op, g.spatial)?,
        };
        int(op, g.numel())?;
        let mut out = self.output(g.channels, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "channel_sums_f32",
            per_item_launch(g.channels, 256),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, g.channels))
    }

    pub(super) fn launch_batch_norm(
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

    pub(super) fn launch_batch_norm_backward(
        &self,
        saved: &BatchNormSaved<'_, Self>,
        p: &BatchNormParams,
        needs: [bool; 3],
    ) -> Result<[Option<Self>; 3]> {
        check::batch_norm_backward(self, saved, p, needs)?;
        self.bn_backward(saved, p, needs)
    }

    pub(super) fn launch_update_running_stats(
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
        let p = BnParams {
            c: int(op, channels)?,
            momentum,
            unbias: count as f32 / (count - 1) as f32,
            ..Default::default()
        };
        let device = self.device.clone();
        let rv = running_var.f32_mut(op)?;
        let rm = self.f32_mut(op)?;
        launch!(
            device,
            KernelFile::BatchNorm,
            "bn_update_running",
            linear_launch(channels),
            [rm, rv, mean, var, &p]
        );
        Ok(())
    }

    pub(super) fn launch_inv_std(&self, eps: f32) -> Result<Self> {
        let op = "inv_std";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let p = InvStdParams {
            eps,
            n: int(op, self.len)?,
        };
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "inv_std_f32",
            linear_launch(self.len),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }
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
        let w = weight.map(|w| self.arg(op, w)).transpose()?;
        let b = bias.map(|b| self.arg(op, b)).transpose()?;
        let p = BnParams::forward(op, g, eps, w.is_some(), b.is_some(), fuse_relu)?;
        let mut mean = self.output(g.channels, op)?;
        let mut var = self.output(g.channels, op)?;
        let mut invstd = self.output(g.channels, op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_batch_stats",
            per_item_launch(g.channels, 512),
            [x, &mut mean, &mut var, &mut invstd, &p]
        );
        // Absent affine parameters are never read; pass any valid buffer.
        let (w, b) = (w.unwrap_or(x), b.unwrap_or(x));
        let mut out = self.output(g.numel(), op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_normalize",
            plane_launch(g.batch * g.channels, g.spatial),
            [x, &mean, &invstd, w, b, &mut out, &p]
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
        let rm = self.arg(op, running_mean)?;
        let rv = self.arg(op, running_var)?;
        let w = weight.map(|w| self.arg(op, w)).transpose()?;
        let b = bias.map(|b| self.arg(op, b)).transpose()?;
        let p = BnParams::forward(op, g, eps, w.is_some(), b.is_some(), fuse_relu)?;
        let (w, b) = (w.unwrap_or(x), b.unwrap_or(x));
        let mut out = self.output(g.numel(), op)?;
        launch!(
            self.device,
            KernelFile::BatchNorm,
            "bn_normalize_running",
            plane_launch(g.batch * g.channels, g.spatial),
            [x, rm, rv, w, b, &mut out, &p]
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
        let mut kp = BnParams {
            mask: flag(p.epilogue == Epilogue::Relu),
            inv_count: 1.0f32 / g.count() as f32,
            ..BnParams::new(op, g)?
        };
        // Without the fused ReLU the mask is never read; pass dy.
        let y = match p.epilogue {
            Epilogue::Relu => match saved.output {
                Some(y) => self.arg(op, y)?,
                None => dy,
            },
            Epilogue::None => dy,
        };
        let mean = self.arg(op, saved.mean)?;
        let invstd = self.arg(op, saved.invstd)?;
        let w = saved.weight.map(|w| self.arg(op, w)).transpose()?;
        kp.has_weight = flag(w.is_some());
        let w = w.unwrap_or(mean);

        // x̂ is read only for dγ, and for dx in training mode.
        let need_xhat = need_dw || (need_dx && training);
        kp.with_xhat = flag(need_xhat);
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
            let xin = x.unwrap_or(dy);
            launch!(
                self.device,
                KernelFile::BatchNorm,
                "bn_backward_reduce",
                per_item_launch(g.channels, 512),
                [dy, y, xin, mean, invstd, &mut sum_dy, &mut sum_dy_xhat, &kp]
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
                    launch!(
                        self.device,
                        KernelFile::BatchNorm,
                        "bn_backward_input_train",
                        cfg,
                        [dy, y, x, mean, invstd, w, sum_dy, sum_dy_xhat, &mut dx, &kp]
                    );
                }
                _ => {
                    launch!(
                        self.device,
                        KernelFile::BatchNorm,
                        "bn_backward_input_eval",
                        cfg,
                        [dy, y, invstd, w, &mut dx, &kp]
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

kernel_params! {
    /// `struct BnParams` of kernels/batch_norm.cu: every batch-norm kernel's
    /// scalar parameters (the ones a kernel does not use are 0).
    in Some(KernelFile::BatchNorm);
    struct BnParams {
        n as N: i32,
        c as C: i32,
        s as S: i32,
        planes: i32,
        eps: f32,
        inv_count: f32,
        momentum: f32,
        unbias: f32,
        has_weight: i32,
        has_bias: i32,
        fuse_relu: i32,
        mask: i32,
        with_xhat: i32,
    }
}

impl BnParams {
    /// The geometry, every size checked to fit an `int`; the rest 0.
    fn new(op: &'static str, g: &BatchNormGeometry) -> Result<Self> {
        int(op, g.numel())?;
        Ok(Self {
            n: int(op, g.batch)?,
            c: int(op, g.channels)?,
            s: int(op, g.spatial)?,
            planes: int(op, g.batch * g.channels)?,
            ..Default::default()
        })
    }

    /// A forward's: the geometry, `eps`, which affine parameters there are
    /// and whether a ReLU is fused.
    fn forward(
        op: &'static str,
        g: &BatchNormGeometry,
        eps: f32,
        has_weight: bool,
        has_bias: bool,
        fuse_relu: bool,
    ) -> Result<Self> {
        Ok(Self {
            eps,
            has_weight: flag(has_weight),
            has_bias: flag(has_bias),
            fuse_relu: flag(fuse_relu),
            ..Self::new(op, g)?
        })
    }
}
