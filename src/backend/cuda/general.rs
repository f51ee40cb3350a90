//! The general op set (`backend::strided`, issue 15): strided copies and
//! broadcasting binary ops, elementwise maps, row reductions and a batched
//! matmul.
//!
//! Launches of `kernels/general.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these. A strided layout (shape and
//! strides, at most `MAX_DIMS` dims) travels inside the kernel's parameter
//! struct, so these ops allocate nothing but their output and copy nothing
//! to the device.

use cudarc::driver::PushKernelArg;

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{flag, int, launch, linear_launch, per_item_launch, CudaStorage};
use crate::backend::strided::MAX_DIMS;
use crate::backend::{check, BinaryOp, ReduceOp, StridedLayout, UnaryOp};
use crate::error::{Error, Result};

impl CudaStorage {
    pub(super) fn launch_strided_copy(&self, layout: &StridedLayout) -> Result<Self> {
        let op = "strided_copy";
        check::strided_copy(self, layout)?;
        let x = self.f32(op)?;
        let n = layout.numel();
        let p = StridedParams::new(op, layout, None, 0)?;
        let mut out = self.output(n, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "strided_copy_f32",
            linear_launch(n),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, n))
    }

    pub(super) fn launch_binary(
        &self,
        rhs: &Self,
        op_kind: BinaryOp,
        lhs_layout: &StridedLayout,
        rhs_layout: &StridedLayout,
    ) -> Result<Self> {
        let op = "binary";
        check::binary_strided(self, rhs, lhs_layout, rhs_layout)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let n = lhs_layout.numel();
        let p = StridedParams::new(op, lhs_layout, Some(rhs_layout), op_kind as i32)?;
        let mut out = self.output(n, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "binary_f32",
            linear_launch(n),
            [a, b, &mut out, &p]
        );
        Ok(self.wrap(out, n))
    }

    pub(super) fn launch_unary(&self, op_kind: UnaryOp) -> Result<Self> {
        let op = "unary";
        check::unary(op, self)?;
        let x = self.f32(op)?;
        let (code, exponent) = op_kind.code();
        let p = UnaryParams {
            op: code,
            p: exponent,
            n: int(op, self.len)?,
        };
        let mut out = self.output(self.len, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "unary_f32",
            linear_launch(self.len),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, self.len))
    }

    pub(super) fn launch_reduce_rows(
        &self,
        op_kind: ReduceOp,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let op = "reduce_rows";
        check::reduce_rows(self, rows, cols)?;
        let x = self.f32(op)?;
        let p = ReduceRowsParams {
            rows: int(op, rows)?,
            cols: int(op, cols)?,
            op: op_kind as i32,
        };
        let mut out = self.output(rows, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "reduce_rows_f32",
            per_item_launch(rows.min(65_535), 256),
            [x, &mut out, &p]
        );
        Ok(self.wrap(out, rows))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_batched_matmul(
        &self,
        rhs: &Self,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self> {
        let op = "batched_matmul";
        check::batched_matmul(self, rhs, batch, m, k, n)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        let len = batch * m * n;
        int(op, batch * m * k)?;
        int(op, batch * k * n)?;
        let p = BatchedMatmulParams {
            batch: int(op, batch)?,
            m: int(op, m)?,
            k: int(op, k)?,
            n: int(op, n)?,
            ta: flag(lhs_transposed),
            tb: flag(rhs_transposed),
        };
        let mut out = self.output(len, op)?;
        launch!(
            self.device,
            KernelFile::General,
            "batched_matmul_f32",
            linear_launch(len),
            [a, b, &mut out, &p]
        );
        Ok(self.wrap(out, len))
    }
}

kernel_params! {
    /// `struct StridedParams` of kernels/general.cu: the output's shape and
    /// the operands' strides (dims past `ndim` are 0), the binary op's code
    /// and the output's length.
    in Some(KernelFile::General);
    struct StridedParams {
        shape: [i64; MAX_DIMS],
        a_stride: [i64; MAX_DIMS],
        b_stride: [i64; MAX_DIMS],
        ndim: i32,
        op: i32,
        n: i32,
    }
}

impl StridedParams {
    /// `a`'s shape and strides, `b`'s strides (the layouts were checked to
    /// agree in shape and rank, at most `MAX_DIMS`), every value checked to
    /// fit the kernel's types.
    fn new(
        op: &'static str,
        a: &StridedLayout,
        b: Option<&StridedLayout>,
        code: i32,
    ) -> Result<Self> {
        let mut p = Self {
            ndim: int(op, a.shape.len())?,
            op: code,
            n: int(op, a.numel())?,
            ..Default::default()
        };
        let fill = |dst: &mut [i64; MAX_DIMS], src: &[usize]| -> Result<()> {
            if src.len() > MAX_DIMS {
                return Err(Error::invalid(op, format!("more than {MAX_DIMS} dims")));
            }
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = i64::try_from(v)
                    .map_err(|_| Error::invalid(op, "a stride does not fit in 64 bits"))?;
            }
            Ok(())
        };
        fill(&mut p.shape, &a.shape)?;
        fill(&mut p.a_stride, &a.strides)?;
        if let Some(b) = b {
            fill(&mut p.b_stride, &b.strides)?;
        }
        Ok(p)
    }
}

kernel_params! {
    /// `struct UnaryParams` of kernels/general.cu.
    in Some(KernelFile::General);
    struct UnaryParams {
        op: i32,
        p: f32,
        n: i32,
    }
}

kernel_params! {
    /// `struct ReduceRowsParams` of kernels/general.cu.
    in Some(KernelFile::General);
    struct ReduceRowsParams {
        rows: i32,
        cols: i32,
        op: i32,
    }
}

kernel_params! {
    /// `struct BatchedMatmulParams` of kernels/general.cu.
    in Some(KernelFile::General);
    struct BatchedMatmulParams {
        batch: i32,
        m: i32,
        k: i32,
        n: i32,
        ta: i32,
        tb: i32,
    }
}
