//! Ways to make a tensor: constants, host data, seeded random numbers.

use rand::Rng;

use super::{numel_of, Device, Storage, Tensor};
use crate::backend::cpu::alloc;
use crate::core_types::HostData;
use crate::error::{Error, Result};

impl Tensor {
    /// f32 data from the host, checked against the shape.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Self::from_cpu(HostData::F32(data), shape, device)
    }

    /// i64 data from the host (labels, counters), checked against the shape.
    pub fn from_vec_i64(data: Vec<i64>, shape: &[usize], device: Device) -> Result<Tensor> {
        Self::from_cpu(HostData::I64(data), shape, device)
    }

    pub fn from_cpu(data: HostData, shape: &[usize], device: Device) -> Result<Tensor> {
        if data.len() != numel_of(shape) {
            return Err(Error::shape(
                "from_vec",
                format!(
                    "{} values cannot fill shape {:?} ({} elements)",
                    data.len(),
                    shape,
                    numel_of(shape)
                ),
            ));
        }
        Tensor::from_storage(Storage::from_cpu(data, device)?, shape.to_vec())
    }

    /// A 0-d f32 tensor.
    pub fn scalar(value: f32, device: Device) -> Result<Tensor> {
        Self::from_vec(vec![value], &[], device)
    }

    pub fn full(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        Self::from_vec(alloc::filled("tensor", shape, value)?, shape, device)
    }

    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        Self::full(shape, 0.0, device)
    }

    pub fn ones(shape: &[usize], device: Device) -> Result<Tensor> {
        Self::full(shape, 1.0, device)
    }

    /// Uniform samples in `[low, high)` from the caller's (seeded) generator.
    pub fn rand_uniform<R: Rng + ?Sized>(
        shape: &[usize],
        low: f32,
        high: f32,
        rng: &mut R,
        device: Device,
    ) -> Result<Tensor> {
        // Written with partial_cmp so that NaN bounds are rejected too.
        if low.partial_cmp(&high) != Some(std::cmp::Ordering::Less) {
            return Err(Error::invalid(
                "rand_uniform",
                format!("need low < high, got [{low}, {high})"),
            ));
        }
        let mut data = alloc::with_capacity("tensor", shape)?;
        data.extend((0..numel_of(shape)).map(|_| rng.random_range(low..high)));
        Self::from_vec(data, shape, device)
    }

    /// Normal samples with the given mean and standard deviation, by the
    /// Box-Muller transform on the caller's (seeded) generator.
    pub fn randn<R: Rng + ?Sized>(
        shape: &[usize],
        mean: f32,
        std: f32,
        rng: &mut R,
        device: Device,
    ) -> Result<Tensor> {
        let n = numel_of(shape);
        let mut data = alloc::with_capacity("tensor", shape)?;
        while data.len() < n {
            // 1 - u keeps the logarithm's argument in (0, 1].
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            data.push(mean + std * (r * theta.cos()) as f32);
            if data.len() < n {
                data.push(mean + std * (r * theta.sin()) as f32);
            }
        }
        Self::from_vec(data, shape, device)
    }
}
