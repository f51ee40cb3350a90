//! Max pooling (with argmax indices) and adaptive average pooling, forward and backward.
//!
//! Launches of `kernels/pool.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::PushKernelArg;

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{int, launch, linear_launch, uninit, CudaData, CudaStorage};
use crate::backend::{check, AdaptivePool2dGeometry, Pool2dGeometry};
use crate::error::Result;

impl CudaStorage {
    pub(super) fn launch_max_pool2d(&self, g: &Pool2dGeometry) -> Result<(Self, Self)> {
        let op = "max_pool2d";
        check::max_pool2d(self, g)?;
        let x = self.f32(op)?;
        let out_len: usize = g.output_shape().iter().product();
        int(op, out_len)?;
        int(op, self.len)?;
        let a = pool_args(g)?;
        let mut out = self.output(out_len, op)?;
        let mut idx = uninit::<i64>(&self.device, out_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "max_pool2d_forward",
            linear_launch(out_len),
            [x, &mut out, &mut idx, &a]
        );
        let indices = Self {
            data: CudaData::I64(idx),
            len: out_len,
            device: self.device.clone(),
            host_range: None,
        };
        Ok((self.wrap(out, out_len), indices))
    }

    pub(super) fn launch_max_pool2d_backward(
        &self,
        indices: &Self,
        g: &Pool2dGeometry,
    ) -> Result<Self> {
        let op = "max_pool2d_backward";
        check::max_pool2d_backward(self, indices, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let dy = self.f32(op)?;
        self.same_device(op, indices)?;
        let idx = indices.i64(op)?;
        int(op, in_len)?;
        let a = pool_args(g)?;
        let mut dx = self.output(in_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "max_pool2d_backward",
            linear_launch(in_len),
            [dy, idx, &mut dx, &a]
        );
        Ok(self.wrap(dx, in_len))
    }

    pub(super) fn launch_adaptive_avg_pool2d(&self, g: &AdaptivePool2dGeometry) -> Result<Self> {
        let op = "adaptive_avg_pool2d";
        check::adaptive_avg_pool2d(self, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let out_len: usize = g.output_shape().iter().product();
        let x = self.f32(op)?;
        int(op, in_len)?;
        int(op, out_len)?;
        let a = AdaptivePoolParams::new(g, op)?;
        let mut out = self.output(out_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "adaptive_avg_pool2d_forward",
            linear_launch(out_len),
            [x, &mut out, &a]
        );
        Ok(self.wrap(out, out_len))
    }

    pub(super) fn launch_adaptive_avg_pool2d_backward(
        &self,
        g: &AdaptivePool2dGeometry,
    ) -> Result<Self> {
        let op = "adaptive_avg_pool2d_backward";
        check::adaptive_avg_pool2d_backward(self, g)?;
        let in_len: usize = g.input_shape().iter().product();
        let dy = self.f32(op)?;
        int(op, in_len)?;
        let a = AdaptivePoolParams::new(g, op)?;
        let mut dx = self.output(in_len, op)?;
        launch!(
            self.device,
            KernelFile::Pool,
            "adaptive_avg_pool2d_backward",
            linear_launch(in_len),
            [dy, &mut dx, &a]
        );
        Ok(self.wrap(dx, in_len))
    }
}

kernel_params! {
    /// `struct PoolParams` of kernels/pool.cu: the max-pool kernels' scalar
    /// parameters, passed by value as one argument.
    in Some(KernelFile::Pool);
    struct PoolParams {
        planes: i32,
        h as H: i32,
        w as W: i32,
        kh as KH: i32,
        kw as KW: i32,
        stride_h: i32,
        stride_w: i32,
        pad_h: i32,
        pad_w: i32,
        dil_h: i32,
        dil_w: i32,
        oh as OH: i32,
        ow as OW: i32,
    }
}

/// The max-pool geometry, every size checked to fit an `int`.
fn pool_args(g: &Pool2dGeometry) -> Result<PoolParams> {
    let op = "max_pool2d";
    Ok(PoolParams {
        planes: int(op, g.batch * g.channels)?,
        h: int(op, g.in_h)?,
        w: int(op, g.in_w)?,
        kh: int(op, g.kernel.0)?,
        kw: int(op, g.kernel.1)?,
        stride_h: int(op, g.stride.0)?,
        stride_w: int(op, g.stride.1)?,
        pad_h: int(op, g.padding.0)?,
        pad_w: int(op, g.padding.1)?,
        dil_h: int(op, g.dilation.0)?,
        dil_w: int(op, g.dilation.1)?,
        oh: int(op, g.out_h)?,
        ow: int(op, g.out_w)?,
    })
}

kernel_params! {
    /// `struct AdaptivePoolParams` of kernels/pool.cu.
    in Some(KernelFile::Pool);
    struct AdaptivePoolParams {
        planes: i32,
        h as H: i32,
        w as W: i32,
        oh as OH: i32,
        ow as OW: i32,
    }
}

impl AdaptivePoolParams {
    fn new(g: &AdaptivePool2dGeometry, op: &'static str) -> Result<Self> {
        Ok(Self {
            planes: int(op, g.batch * g.channels)?,
            h: int(op, g.in_h)?,
            w: int(op, g.in_w)?,
            oh: int(op, g.out_h)?,
            ow: int(op, g.out_w)?,
        })
    }
}
