//! Parameter initialisations, PyTorch's formulas on a seeded `rand` RNG.
//! (The values differ from PyTorch's, which uses its own generator; the
//! distributions are the same.)

use rand::Rng;

use crate::error::Result;
use crate::tensor::{Device, Tensor};

/// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`, which
/// torchvision's ResNet uses for every conv: N(0, 2 / fan_out) where
/// fan_out = out_channels * kernel_h * kernel_w.
pub fn kaiming_normal_fan_out<R: Rng + ?Sized>(shape: &[usize], rng: &mut R) -> Result<Tensor> {
    let fan_out: usize = shape
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 1)
        .map(|(_, d)| d)
        .product();
    let std = (2.0 / fan_out.max(1) as f32).sqrt();
    Tensor::randn(shape, 0.0, std, rng, Device::Cpu)
}

/// PyTorch's default for `nn.Linear` and `nn.Conv2d`:
/// `kaiming_uniform_(w, a=sqrt(5))` for the weight and U(-b, b) for the
/// bias, which both come to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn default_uniform<R: Rng + ?Sized>(
    shape: &[usize],
    fan_in: usize,
    rng: &mut R,
) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    Tensor::rand_uniform(shape, -bound, bound, rng, Device::Cpu)
}
