//! The CPU backend: host vectors, im2col + `matrixmultiply` GEMM for the
//! convolutions and dense layers, `rayon` across channels and images.

use crate::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormTrainOutput,
    Conv2dGeometry, Pool2dGeometry, SgdConfig,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device};

/// Host data of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl CpuStorage {
    pub fn as_f32(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub fn as_f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::I64(_) => Err(Error::DType {
                op,
                expected: DType::F32,
                got: DType::I64,
            }),
        }
    }
    pub fn as_i64(&self, op: &'static str) -> Result<&[i64]> {
        match self {
            CpuStorage::I64(v) => Ok(v),
            CpuStorage::F32(_) => Err(Error::DType {
                op,
                expected: DType::I64,
                got: DType::F32,
            }),
        }
    }
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        Ok(self.clone())
    }
    fn try_clone(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        todo!()
    }
    fn scale(&self, factor: f32) -> Result<Self> {
        todo!()
    }
    fn sum_all(&self) -> Result<Self> {
        todo!()
    }
    fn broadcast_scalar(&self, len: usize) -> Result<Self> {
        todo!()
    }
    fn relu(&self) -> Result<Self> {
        todo!()
    }
    fn relu_backward(&self, output: &Self) -> Result<Self> {
        todo!()
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
        todo!()
    }
    fn add_row_vector(&self, row: &Self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn conv2d(&self, weight: &Self, bias: Option<&Self>, g: &Conv2dGeometry) -> Result<Self> {
        todo!()
    }
    fn conv2d_input_grad(&self, weight: &Self, g: &Conv2dGeometry) -> Result<Self> {
        todo!()
    }
    fn conv2d_weight_grad(&self, input: &Self, g: &Conv2dGeometry) -> Result<Self> {
        todo!()
    }
    fn channel_sums(&self, g: &BatchNormGeometry) -> Result<Self> {
        todo!()
    }
    fn batch_norm_train(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        g: &BatchNormGeometry,
        eps: f32,
    ) -> Result<BatchNormTrainOutput<Self>> {
        todo!()
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
        todo!()
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
        todo!()
    }
    fn update_running_stats(
        &mut self,
        running_var: &mut Self,
        batch_mean: &Self,
        batch_var: &Self,
        momentum: f32,
        count: usize,
    ) -> Result<()> {
        todo!()
    }
    fn inv_std(&self, eps: f32) -> Result<Self> {
        todo!()
    }
    fn max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        todo!()
    }
    fn max_pool2d_backward(&self, indices: &Self, g: &Pool2dGeometry) -> Result<Self> {
        todo!()
    }
    fn adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        todo!()
    }
    fn adaptive_avg_pool2d_backward(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        todo!()
    }
    fn log_softmax(&self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn log_softmax_backward(&self, output: &Self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn nll_loss(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn nll_loss_backward(&self, labels: &Self, rows: usize, cols: usize) -> Result<Self> {
        todo!()
    }
    fn sgd_step(
        &mut self,
        grad: &Self,
        momentum_buffer: Option<&mut Self>,
        cfg: &SgdConfig,
        initialize_buffer: bool,
    ) -> Result<()> {
        todo!()
    }
}
