//! Elementwise maps, reductions (accumulated in double) and the i64 counter increment.
//!
//! Launches of `kernels/elementwise.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{int, launch, linear_launch, per_item_launch, CudaData, CudaStorage};
use crate::backend::check;
use crate::core_types::DType;
use crate::error::{Error, Result};

impl CudaStorage {
    pub(super) fn launch_add(&self, rhs: &Self) -> Result<Self> {
        let op = "add";
        check::binary(op, self, rhs)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let p = MapParams::new(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "add_f32",
            linear_launch(self.len),
            [a, b, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_add_assign(&mut self, rhs: &Self) -> Result<()> {
        let op = "add";
        check::binary(op, self, rhs)?;
        let b = self.arg(op, rhs)?;
        let p = MapParams::new(op, self.len)?;
        let (device, len) = (self.device.clone(), self.len);
        let a = self.f32_mut(op)?;
        if p.n > 0 {
            launch!(
                device,
                KernelFile::Elementwise,
                "add_assign_f32",
                linear_launch(len),
                [a, b, &p]
            );
        }
        Ok(())
    }

    pub(super) fn launch_scale(&self, factor: f32) -> Result<Self> {
        let op = "scale";
        check::unary(op, self)?;
        let a = self.f32(op)?;
        let p = ScaleParams {
            factor,
            n: int(op, self.len)?,
        };
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "scale_f32",
            linear_launch(self.len),
            [a, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_sum_all(&self) -> Result<Self> {
        let op = "sum";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let p = MapParams::new(op, self.len)?;
        // Two deterministic levels: up to 256 block partials, then one block.
        let blocks = self.len.div_ceil(256 * 8).clamp(1, 256);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut out = self.output(1, op)?;
        if blocks == 1 {
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                cfg,
                [x, &mut out, &p]
            );
        } else {
            let mut partial = self.output(blocks, op)?;
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                cfg,
                [x, &mut partial, &p]
            );
            let nb = MapParams::new(op, blocks)?;
            launch!(
                self.device,
                KernelFile::Elementwise,
                "sum_partial_f32",
                per_item_launch(1, 256),
                [&partial, &mut out, &nb]
            );
        }
        Ok(self.wrap(out, 1))
    }

    pub(super) fn launch_broadcast_scalar(&self, len: usize) -> Result<Self> {
        let op = "broadcast_scalar";
        check::broadcast_scalar(self)?;
        let v = self.f32(op)?;
        let p = MapParams::new(op, len)?;
        let mut out = self.output(len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "broadcast_scalar_f32",
            linear_launch(len),
            [v, &mut out, &p]
        );
        Ok(self.wrap(out, len))
    }

    pub(super) fn launch_relu(&self) -> Result<Self> {
        let op = "relu";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let p = MapParams::new(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "relu_f32",
            linear_launch(self.len),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_relu_backward(&self, output: &Self) -> Result<Self> {
        let op = "relu_backward";
        check::binary(op, self, output)?;
        let dy = self.f32(op)?;
        let y = self.arg(op, output)?;
        let p = MapParams::new(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "relu_backward_f32",
            linear_launch(self.len),
            [dy, y, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_relu_backward_assign(&mut self, output: &Self) -> Result<()> {
        let op = "relu_backward";
        check::binary(op, self, output)?;
        let y = self.arg(op, output)?;
        let p = MapParams::new(op, self.len)?;
        let (device, len) = (self.device.clone(), self.len);
        let dy = self.f32_mut(op)?;
        if p.n > 0 {
            launch!(
                device,
                KernelFile::Elementwise,
                "relu_backward_assign_f32",
                linear_launch(len),
                [dy, y, &p]
            );
        }
        Ok(())
    }

    pub(super) fn launch_add_relu(&self, rhs: &Self) -> Result<Self> {
        let op = "add_relu";
        check::binary(op, self, rhs)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let p = MapParams::new(op, self.len)?;
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::Elementwise,
            "add_relu_f32",
            linear_launch(self.len),
            [a, b, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_add_relu_assign(&mut self, rhs: &Self) -> Result<()> {
        let op = "add_relu";
        check::binary(op, self, rhs)?;
        let b = self.arg(op, rhs)?;
        let p = MapParams::new(op, self.len)?;
        let (device, len) = (self.device.clone(), self.len);
        let a = self.f32_mut(op)?;
        if p.n > 0 {
            launch!(
                device,
                KernelFile::Elementwise,
                "add_relu_assign_f32",
                linear_launch(len),
                [a, b, &p]
            );
        }
        Ok(())
    }

    pub(super) fn launch_add_row_vector(
        &self,
        row: &Self,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let op = "add_row_vector";
        check::add_row_vector(self, row, rows, cols)?;
        let x = self.f32(op)?;
        let r = self.arg(op, row)?;
        let p = RowsParams::new(op, rows, cols)?;
        let mut out = self.output(rows * cols, op)?;
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(256).clamp(1, 1024) as u32,
                rows.clamp(1, 65_535) as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.device,
            KernelFile::Elementwise,
            "add_row_vector_f32",
            cfg,
            [x, r, &mut out, &p]
        );
        Ok(self.wrap(out, rows * cols))
    }

    pub(super) fn launch_sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        let op = "sum_rows";
        check::sum_rows(self, rows, cols)?;
        let x = self.f32(op)?;
        let p = RowsParams::new(op, rows, cols)?;
        let mut out = self.output(cols, op)?;
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(32).max(1) as u32, 1, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.device,
            KernelFile::Elementwise,
            "sum_rows_f32",
            cfg,
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, cols))
    }

    pub(super) fn launch_increment_i64(&mut self) -> Result<()> {
        let op = "increment_i64";
        let p = MapParams::new(op, self.len)?;
        let device = self.device.clone();
        let x = match &mut self.data {
            CudaData::I64(s) => &mut **s,
            CudaData::F32(_) => {
                return Err(Error::DType {
                    op,
                    expected: DType::I64,
                    got: DType::F32,
                })
            }
        };
        if p.n > 0 {
            launch!(
                device,
                KernelFile::Elementwise,
                "increment_i64",
                linear_launch(self.len),
                [x, &p]
            );
        }
        self.host_range = self
            .host_range
            .map(|(lo, hi)| (lo.saturating_add(1), hi.saturating_add(1)));
        Ok(())
    }
}

kernel_params! {
    /// `struct MapParams` of kernels/elementwise.cu: an elementwise kernel's
    /// length.
    in Some(KernelFile::Elementwise);
    struct MapParams {
        n: i32,
    }
}

impl MapParams {
    pub(super) fn new(op: &'static str, n: usize) -> Result<Self> {
        Ok(Self { n: int(op, n)? })
    }
}

kernel_params! {
    /// `struct ScaleParams` of kernels/elementwise.cu.
    in Some(KernelFile::Elementwise);
    struct ScaleParams {
        factor: f32,
        n: i32,
    }
}

kernel_params! {
    /// `struct InvStdParams` of kernels/elementwise.cu.
    in Some(KernelFile::Elementwise);
    struct InvStdParams {
        eps: f32,
        n: i32,
    }
}

kernel_params! {
    /// `struct RowsParams` of kernels/elementwise.cu: a [rows, cols] matrix.
    in Some(KernelFile::Elementwise);
    struct RowsParams {
        rows: i32,
        cols: i32,
    }
}

impl RowsParams {
    fn new(op: &'static str, rows: usize, cols: usize) -> Result<Self> {
        Ok(Self {
            rows: int(op, rows)?,
            cols: int(op, cols)?,
        })
    }
}

kernel_params! {
    /// `struct ChannelSumsParams` of kernels/elementwise.cu: an [N, C, S]
    /// tensor summed per channel.
    in Some(KernelFile::Elementwise);
    struct ChannelSumsParams {
        n as N: i32,
        c as C: i32,
        s as S: i32,
    }
}
