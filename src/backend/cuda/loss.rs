//! Log-softmax and the negative log-likelihood loss; labels checked on the host.
//!
//! Launches of `kernels/loss.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{int, launch, linear_launch, per_item_launch, CudaStorage};
use crate::backend::check;
use crate::backend::BackendStorage;
use crate::error::Result;

impl CudaStorage {
    pub(super) fn launch_log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        let op = "log_softmax";
        check::log_softmax(self, rows, cols)?;
        let x = self.f32(op)?;
        let p = LossParams::new(op, rows, cols)?;
        let mut out = self.output(rows * cols, op)?;
        if rows > 0 {
            launch!(
                self.device,
                KernelFile::Loss,
                "log_softmax_forward",
                per_item_launch(rows, 256),
                [x, &mut out, &p]
            );
        }
        Ok(self.wrap(out, rows * cols))
    }

    pub(super) fn launch_log_softmax_backward(
        &self,
        output: &Self,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let op = "log_softmax_backward";
        check::log_softmax_backward(self, output, rows, cols)?;
        let dy = self.f32(op)?;
        let y = self.arg(op, output)?;
        let p = LossParams::new(op, rows, cols)?;
        let mut out = self.output(rows * cols, op)?;
        if rows > 0 {
            launch!(
                self.device,
                KernelFile::Loss,
                "log_softmax_backward",
                per_item_launch(rows, 256),
                [dy, y, &mut out, &p]
            );
        }
        Ok(self.wrap(out, rows * cols))
    }

    pub(super) fn launch_nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        let op = "nll_loss";
        check::nll_loss(self, labels, rows, cols)?;
        let logp = self.f32(op)?;
        let lab = checked_labels(op, self, labels, cols)?;
        let p = LossParams::new(op, rows, cols)?;
        let mut out = self.output(1, op)?;
        // Zero rows launch too: the kernel's mean is then -0/0 = NaN, which
        // is PyTorch's (and the CPU backend's) mean over an empty batch.
        launch!(
            self.device,
            KernelFile::Loss,
            "nll_loss_forward",
            per_item_launch(1, 256),
            [logp, lab, &mut out, &p]
        );
        Ok(self.wrap(out, 1))
    }

    pub(super) fn launch_nll_loss_backward(
        &self,
        labels: &Self,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let op = "nll_loss_backward";
        check::nll_loss_backward(self, labels, rows, cols)?;
        let g = self.f32(op)?;
        let lab = checked_labels(op, self, labels, cols)?;
        let p = LossParams::new(op, rows, cols)?;
        let mut out = self.output(rows * cols, op)?;
        launch!(
            self.device,
            KernelFile::Loss,
            "nll_loss_backward",
            linear_launch(rows * cols),
            [g, lab, &mut out, &p]
        );
        Ok(self.wrap(out, rows * cols))
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

kernel_params! {
    /// `struct LossParams` of kernels/loss.cu: a [rows, cols] matrix of
    /// logits or log-probabilities.
    in Some(KernelFile::Loss);
    struct LossParams {
        rows: i32,
        cols: i32,
    }
}

impl LossParams {
    /// Both sizes and their product checked to fit an `int`.
    fn new(op: &'static str, rows: usize, cols: usize) -> Result<Self> {
        int(op, rows * cols)?;
        Ok(Self {
            rows: int(op, rows)?,
            cols: int(op, cols)?,
        })
    }
}
