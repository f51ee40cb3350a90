//! The dense matrix product of the linear layer (tiled GEMM, every transpose).
//!
//! Launches of `kernels/gemm.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::PushKernelArg;

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{int, launch, tile_launch, vec4, CudaStorage};
use crate::backend::check;
use crate::error::Result;

impl CudaStorage {
    pub(super) fn launch_matmul(
        &self,
        rhs: &Self,
        m: usize,
        k: usize,
        n: usize,
        lhs_transposed: bool,
        rhs_transposed: bool,
    ) -> Result<Self> {
        let op = "matmul";
        check::matmul(self, rhs, m, k, n)?;
        let a = self.f32(op)?;
        let b = self.arg(op, rhs)?;
        int(op, m * n)?;
        let mut out = self.output(m * n, op)?;
        let cfg = tile_launch(m, n, 1);
        // float4 along each operand's contiguous axis: A [M, K] or [K, M],
        // B [K, N] or [N, K].
        let p = GemmParams {
            m: int(op, m)?,
            n: int(op, n)?,
            k: int(op, k)?,
            a_vec: vec4(&self.device, a, if lhs_transposed { m } else { k }),
            b_vec: vec4(&self.device, b, if rhs_transposed { k } else { n }),
        };
        match (lhs_transposed, rhs_transposed) {
            (false, false) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_nn",
                cfg,
                [a, b, &mut out, &p]
            ),
            (false, true) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_nt",
                cfg,
                [a, b, &mut out, &p]
            ),
            (true, false) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_tn",
                cfg,
                [a, b, &mut out, &p]
            ),
            (true, true) => launch!(
                self.device,
                KernelFile::Gemm,
                "gemm_tt",
                cfg,
                [a, b, &mut out, &p]
            ),
        }
        Ok(self.wrap(out, m * n))
    }
}

kernel_params! {
    /// `struct GemmParams` of kernels/gemm.cu: C[M, N] = op(A)[M, K] op(B)[K, N],
    /// and whether each operand may be read as float4.
    in Some(KernelFile::Gemm);
    struct GemmParams {
        m as M: i32,
        n as N: i32,
        k as K: i32,
        a_vec: i32,
        b_vec: i32,
    }
}
