//! `nn.BatchNorm2d` with running statistics.

use crate::error::{Error, Result};
use crate::nn::module::{join, new_parameter};
use crate::nn::{Module, TensorKind};
use crate::ops::{self, BatchNormOptions};
use crate::tensor::{Device, Tensor};

/// Batch normalisation over channels with PyTorch's defaults (momentum 0.1,
/// eps 1e-5, affine, tracking running statistics).
///
/// In training mode the forward normalises with the batch statistics,
/// updates `running_mean`/`running_var` and increments
/// `num_batches_tracked`, *whether or not weight and bias are frozen*:
/// that is what `model.train()` means in PyTorch, and why transfer
/// learning that keeps BN in train mode still changes the backbone's state.
pub struct BatchNorm2d {
    /// γ, `[C]`, initialised to 1.
    pub weight: Tensor,
    /// β, `[C]`, initialised to 0.
    pub bias: Tensor,
    /// Buffer, `[C]`, initialised to 0.
    pub running_mean: Tensor,
    /// Buffer, `[C]`, initialised to 1.
    pub running_var: Tensor,
    /// Buffer, 0-d i64: training forwards seen so far.
    pub num_batches_tracked: Tensor,
    pub momentum: f32,
    pub eps: f32,
    training: bool,
}

impl BatchNorm2d {
    pub fn new(channels: usize) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid("BatchNorm2d", "channels must be at least 1"));
        }
        let c = [channels];
        Ok(Self {
            weight: new_parameter(Tensor::ones(&c, Device::Cpu)?)?,
            bias: new_parameter(Tensor::zeros(&c, Device::Cpu)?)?,
            running_mean: Tensor::zeros(&c, Device::Cpu)?,
            running_var: Tensor::ones(&c, Device::Cpu)?,
            num_batches_tracked: Tensor::from_vec_i64(vec![0], &[], Device::Cpu)?,
            momentum: 0.1,
            eps: 1e-5,
            training: true,
        })
    }

    pub fn channels(&self) -> usize {
        self.weight.numel()
    }

    /// Adds one to `num_batches_tracked` in place, on its device: reading
    /// it back would cost a host round trip (a GPU sync) in every
    /// train-mode forward, 20 per ResNet-18 step.
    fn count_batch(&self) -> Result<()> {
        use crate::backend::BackendStorage;
        self.num_batches_tracked.storage_mut().increment_i64()
    }
}

impl BatchNorm2d {
    fn options(&self) -> BatchNormOptions {
        BatchNormOptions {
            training: self.training,
            momentum: self.momentum,
            eps: self.eps,
        }
    }

    /// `relu(self.forward(input))` with the ReLU fused into batch norm
    /// ([`ops::batch_norm_relu`]): same values, gradients and statistics,
    /// one pass fewer over the activation in each direction.
    pub fn forward_relu(&self, input: &Tensor) -> Result<Tensor> {
        let out = ops::batch_norm_relu(
            input,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            self.options(),
        )?;
        if self.training {
            self.count_batch()?;
        }
        Ok(out)
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let opts = self.options();
        let out = ops::batch_norm(
            input,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            opts,
        )?;
        if self.training {
            self.count_batch()?;
        }
        Ok(out)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        f(&join(prefix, "bias"), &self.bias, TensorKind::Parameter);
        f(
            &join(prefix, "running_mean"),
            &self.running_mean,
            TensorKind::Buffer,
        );
        f(
            &join(prefix, "running_var"),
            &self.running_var,
            TensorKind::Buffer,
        );
        f(
            &join(prefix, "num_batches_tracked"),
            &self.num_batches_tracked,
            TensorKind::Buffer,
        );
    }
    fn visit_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Tensor, TensorKind) -> Result<()>,
    ) -> Result<()> {
        f(
            &join(prefix, "weight"),
            &mut self.weight,
            TensorKind::Parameter,
        )?;
        f(&join(prefix, "bias"), &mut self.bias, TensorKind::Parameter)?;
        f(
            &join(prefix, "running_mean"),
            &mut self.running_mean,
            TensorKind::Buffer,
        )?;
        f(
            &join(prefix, "running_var"),
            &mut self.running_var,
            TensorKind::Buffer,
        )?;
        f(
            &join(prefix, "num_batches_tracked"),
            &mut self.num_batches_tracked,
            TensorKind::Buffer,
        )
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm2d> {
        Some(self)
    }
}
