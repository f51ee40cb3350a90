//! `nn.Conv2d` (groups = 1).

use rand::Rng;

use crate::error::{Error, Result};
use crate::nn::init::{default_uniform, kaiming_normal_fan_out};
use crate::nn::module::{join, new_parameter};
use crate::nn::{Module, TensorKind};
use crate::ops::{self, Conv2dOptions};
use crate::tensor::Tensor;

/// The shape of a convolution layer; square kernels, stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl Conv2dConfig {
    /// Stride 1, no padding, with a bias: `nn.Conv2d(in, out, kernel)`.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            bias: true,
        }
    }
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
    fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }
    fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(Error::invalid(
                "Conv2d",
                format!("channels, kernel and stride must be at least 1, got {self:?}"),
            ));
        }
        Ok(())
    }
}

pub struct Conv2d {
    /// `[out_channels, in_channels, kernel, kernel]`.
    pub weight: Tensor,
    /// `[out_channels]`, if the layer has a bias.
    pub bias: Option<Tensor>,
    config: Conv2dConfig,
    training: bool,
}

impl Conv2d {
    /// PyTorch's default initialisation: weight and bias U(±1/sqrt(fan_in)).
    pub fn new<R: Rng + ?Sized>(config: Conv2dConfig, rng: &mut R) -> Result<Self> {
        config.validate()?;
        let fan_in = config.in_channels * config.kernel * config.kernel;
        let weight = default_uniform(&config.weight_shape(), fan_in, rng)?;
        Self::from_weight(config, weight, rng)
    }

    /// torchvision ResNet's initialisation: `kaiming_normal_(mode="fan_out",
    /// nonlinearity="relu")`, std = sqrt(2 / (out_channels * k * k)).
    pub fn kaiming_normal_fan_out<R: Rng + ?Sized>(
        config: Conv2dConfig,
        rng: &mut R,
    ) -> Result<Self> {
        config.validate()?;
        let weight = kaiming_normal_fan_out(&config.weight_shape(), rng)?;
        Self::from_weight(config, weight, rng)
    }

    fn from_weight<R: Rng + ?Sized>(
        config: Conv2dConfig,
        weight: Tensor,
        rng: &mut R,
    ) -> Result<Self> {
        let fan_in = config.in_channels * config.kernel * config.kernel;
        let bias = if config.bias {
            Some(new_parameter(default_uniform(
                &[config.out_channels],
                fan_in,
                rng,
            )?)?)
        } else {
            None
        };
        Ok(Self {
            weight: new_parameter(weight)?,
            bias,
            config,
            training: true,
        })
    }

    /// All-zero parameters, for a layer whose weights are about to be loaded
    /// (skips drawing random numbers nobody will use).
    pub(crate) fn zeroed(config: Conv2dConfig) -> Result<Self> {
        config.validate()?;
        let weight = Tensor::zeros(&config.weight_shape(), crate::tensor::Device::Cpu)?;
        let bias = if config.bias {
            Some(new_parameter(Tensor::zeros(
                &[config.out_channels],
                crate::tensor::Device::Cpu,
            )?)?)
        } else {
            None
        };
        Ok(Self {
            weight: new_parameter(weight)?,
            bias,
            config,
            training: true,
        })
    }

    pub fn config(&self) -> Conv2dConfig {
        self.config
    }

    fn options(&self) -> Conv2dOptions {
        let (s, p) = (self.config.stride, self.config.padding);
        Conv2dOptions {
            stride: (s, s),
            padding: (p, p),
            dilation: (1, 1),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        ops::conv2d(input, &self.weight, self.bias.as_ref(), self.options())
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        f(&join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b, TensorKind::Parameter);
        }
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
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), b, TensorKind::Parameter)?;
        }
        Ok(())
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn is_training(&self) -> bool {
        self.training
    }
}
