//! `nn.Linear`.

use rand::Rng;

use crate::error::{Error, Result};
use crate::nn::init::default_uniform;
use crate::nn::module::{join, new_parameter};
use crate::nn::{Module, TensorKind};
use crate::ops;
use crate::tensor::Tensor;

/// `y = x Wᵀ + b`. A newly built layer's parameters require gradients, so
/// `model.fc = Linear::new(512, 10, &mut rng)?` after freezing the model
/// leaves exactly the new head trainable, as in PyTorch.
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Tensor,
    /// `[out_features]`.
    pub bias: Tensor,
    training: bool,
}

impl Linear {
    /// PyTorch's default initialisation: weight and bias U(±1/sqrt(in_features)).
    pub fn new<R: Rng + ?Sized>(
        in_features: usize,
        out_features: usize,
        rng: &mut R,
    ) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear",
                format!("features must be at least 1, got {in_features} -> {out_features}"),
            ));
        }
        let name = |part: &str| format!("the {part} of Linear({in_features}, {out_features})");
        let weight = default_uniform(&[out_features, in_features], in_features, rng)
            .map_err(|e| e.named(name("weight")))?;
        let bias = default_uniform(&[out_features], in_features, rng)
            .map_err(|e| e.named(name("bias")))?;
        Ok(Self {
            weight: new_parameter(weight)?,
            bias: new_parameter(bias)?,
            training: true,
        })
    }

    /// All-zero parameters, for a layer whose weights are about to be loaded.
    pub(crate) fn zeroed(in_features: usize, out_features: usize) -> Result<Self> {
        let weight = Tensor::zeros(&[out_features, in_features], crate::tensor::Device::Cpu)?;
        let bias = Tensor::zeros(&[out_features], crate::tensor::Device::Cpu)?;
        Ok(Self {
            weight: new_parameter(weight)?,
            bias: new_parameter(bias)?,
            training: true,
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Module for Linear {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        ops::linear(input, &self.weight, Some(&self.bias))
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        f(&join(prefix, "bias"), &self.bias, TensorKind::Parameter);
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
        f(&join(prefix, "bias"), &mut self.bias, TensorKind::Parameter)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}
