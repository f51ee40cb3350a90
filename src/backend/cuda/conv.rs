//! Convolution as implicit GEMM: forward, input gradient and split-K weight gradient. The scalar
//! parameters of every conv kernel travel as one `#[repr(C)]` struct, `ConvParams`, mirrored in
//! the `.cu` file.
//!
//! Launches of `kernels/conv2d.cu` for [`CudaStorage`]; the `BackendStorage`
//! implementation in `storage.rs` calls these.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::module_cache::KernelFile;
use super::params::kernel_params;
use super::storage::{flag, int, launch, linear_launch, tile_launch, vec4, CudaStorage, TILE};
use crate::backend::{check, Conv2dGeometry};
use crate::error::{Error, Result};

impl CudaStorage {
    pub(super) fn launch_conv2d(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let op = "conv2d";
        check::conv2d(self, weight, bias, g)?;
        conv_sizes_fit(g)?;
        let x = self.f32(op)?;
        let w = self.arg(op, weight)?;
        let b = match bias {
            Some(b) => Some(self.arg(op, b)?),
            None => None,
        };
        let mut params = ConvParams::new(g)?;
        params.has_bias = flag(b.is_some());
        // Without a bias the kernel never reads the pointer; pass the weight.
        let b = b.unwrap_or(w);
        let out_len: usize = g.output_shape().iter().product();
        let p = g.batch * g.out_h * g.out_w;
        let mut out = self.output(out_len, op)?;
        // Weight rows are contiguous along C*KH*KW; the input is the im2col
        // matrix itself only for pointwise convolutions.
        params.a_vec = vec4(&self.device, w, g.in_channels * g.kernel_h * g.kernel_w);
        params.b_vec = flag(is_pointwise(g)) & vec4(&self.device, x, g.in_h * g.in_w);
        launch!(
            self.device,
            KernelFile::Conv2d,
            "conv2d_forward",
            tile_launch(g.out_channels, p, 1),
            [x, w, b, &mut out, &params]
        );
        Ok(self.wrap(out, out_len))
    }

    pub(super) fn launch_conv2d_input_grad(
        &self,
        weight: &Self,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let op = "conv2d_input_grad";
        check::conv2d_input_grad(self, weight, g)?;
        conv_sizes_fit(g)?;
        let dy = self.f32(op)?;
        let w = self.arg(op, weight)?;
        let mut params = ConvParams::new(g)?;
        let out_len: usize = g.input_shape().iter().product();
        let q = g.batch * g.in_h * g.in_w;
        let mut out = self.output(out_len, op)?;
        let cfg = tile_launch(g.in_channels, q, 1);
        if is_pointwise(g) {
            // w [O, C] read as its transpose (contiguous along C); dy planes
            // are as long as the input's.
            params.a_vec = vec4(&self.device, w, g.in_channels);
            params.b_vec = vec4(&self.device, dy, g.in_h * g.in_w);
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_input_grad_pointwise",
                cfg,
                [dy, w, &mut out, &params]
            );
        } else {
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_input_grad",
                cfg,
                [dy, w, &mut out, &params]
            );
        }
        Ok(self.wrap(out, out_len))
    }

    pub(super) fn launch_conv2d_weight_grad(
        &self,
        input: &Self,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let op = "conv2d_weight_grad";
        check::conv2d_weight_grad(self, input, g)?;
        conv_sizes_fit(g)?;
        let dy = self.f32(op)?;
        let x = self.arg(op, input)?;
        let k_total = g.in_channels * g.kernel_h * g.kernel_w;
        let out_len = g.out_channels * k_total;
        let (chunk, splits) = weight_grad_splits(g, self.device.multiprocessors());
        let chunk_i = int(op, chunk)?;
        let cfg = tile_launch(g.out_channels, k_total, splits);
        let mut out = self.output(out_len, op)?;
        if splits == 1 {
            self.launch_weight_grad(dy, x, &mut out, chunk_i, cfg, g)?;
        } else {
            int(op, out_len * splits)?;
            let mut partial = self.output(out_len * splits, op)?;
            self.launch_weight_grad(dy, x, &mut partial, chunk_i, cfg, g)?;
            let p = SumSplitsParams {
                n: out_len as i32,
                splits: splits as i32,
            };
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_sum_splits",
                linear_launch(out_len),
                [&partial, &mut out, &p]
            );
        }
        Ok(self.wrap(out, out_len))
    }
}

kernel_params! {
    /// `struct ConvGeometry` of kernels/conv2d.cu, field for field.
    in Some(KernelFile::Conv2d);
    struct ConvGeometry {
        n as N: i32,
        c as C: i32,
        h as H: i32,
        w as W: i32,
        o as O: i32,
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

kernel_params! {
    /// `struct ConvParams` of kernels/conv2d.cu: every conv kernel's scalar
    /// parameters, passed by value as one kernel argument after the buffers.
    in Some(KernelFile::Conv2d);
    struct ConvParams {
        g: ConvGeometry,
        has_bias: i32,
        a_vec: i32,
        b_vec: i32,
        chunk: i32,
    }
}

kernel_params! {
    /// `struct SumSplitsParams` of kernels/conv2d.cu: `splits` partial
    /// weight gradients of `n` values each.
    in Some(KernelFile::Conv2d);
    struct SumSplitsParams {
        n: i32,
        splits: i32,
    }
}

impl ConvParams {
    /// The geometry, every size checked to fit an `int`; flags 0.
    fn new(g: &Conv2dGeometry) -> Result<Self> {
        let op = "conv2d";
        Ok(Self {
            g: ConvGeometry {
                n: int(op, g.batch)?,
                c: int(op, g.in_channels)?,
                h: int(op, g.in_h)?,
                w: int(op, g.in_w)?,
                o: int(op, g.out_channels)?,
                kh: int(op, g.kernel_h)?,
                kw: int(op, g.kernel_w)?,
                stride_h: int(op, g.stride.0)?,
                stride_w: int(op, g.stride.1)?,
                pad_h: int(op, g.padding.0)?,
                pad_w: int(op, g.padding.1)?,
                dil_h: int(op, g.dilation.0)?,
                dil_w: int(op, g.dilation.1)?,
                oh: int(op, g.out_h)?,
                ow: int(op, g.out_w)?,
            },
            ..Default::default()
        })
    }
}

/// 1x1 kernel, stride 1, no padding: the im2col matrix is the input itself,
/// which lets the kernels read activations as float4 (dilation is moot).
fn is_pointwise(g: &Conv2dGeometry) -> bool {
    g.kernel_h == 1 && g.kernel_w == 1 && g.stride == (1, 1) && g.padding == (0, 0)
}

fn conv_sizes_fit(g: &Conv2dGeometry) -> Result<()> {
    let [n, c, h, w] = g.input_shape();
    let [o, _, kh, kw] = g.weight_shape();
    for (what, v) in [
        ("input", n * c * h * w),
        ("output", n * o * g.out_h * g.out_w),
        ("weight", o * c * kh * kw),
    ] {
        int("conv2d", v).map_err(|_| {
            Error::invalid("conv2d", format!("{what} of {v} elements is too large"))
        })?;
    }
    Ok(())
}

/// Split-K plan for the weight gradient: `(chunk, splits)` with `chunk` a
/// multiple of the kernel's 16-deep K step. Splits the long batch * OH * OW
/// reduction until the grid has about two blocks per multiprocessor, keeping
/// at least 128 positions per chunk.
fn weight_grad_splits(g: &Conv2dGeometry, multiprocessors: usize) -> (usize, usize) {
    const K_STEP: usize = 16;
    let p_total = (g.batch * g.out_h * g.out_w).max(1);
    let tiles =
        (g.in_channels * g.kernel_h * g.kernel_w).div_ceil(TILE) * g.out_channels.div_ceil(TILE);
    let wanted = (2 * multiprocessors).div_ceil(tiles.max(1));
    let splits = wanted.min(p_total.div_ceil(128)).clamp(1, 64);
    let chunk = p_total.div_ceil(splits).div_ceil(K_STEP) * K_STEP;
    (chunk, p_total.div_ceil(chunk))
}

impl CudaStorage {
    /// Queues the weight-gradient GEMM writing `dest` ([splits, O, C*KH*KW]).
    fn launch_weight_grad(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        dest: &mut CudaSlice<f32>,
        chunk: i32,
        cfg: LaunchConfig,
        g: &Conv2dGeometry,
    ) -> Result<()> {
        let mut p = ConvParams::new(g)?;
        p.chunk = chunk;
        // dy rows are contiguous within each image's OH*OW plane (chunks
        // start at multiples of 16 positions).
        p.a_vec = vec4(&self.device, dy, g.out_h * g.out_w);
        if is_pointwise(g) {
            p.b_vec = vec4(&self.device, x, g.in_h * g.in_w);
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_weight_grad_pointwise",
                cfg,
                [dy, x, dest, &p]
            );
        } else {
            launch!(
                self.device,
                KernelFile::Conv2d,
                "conv2d_weight_grad",
                cfg,
                [dy, x, dest, &p]
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA side reads `ConvParams` by value as 19 consecutive ints.
    #[test]
    fn conv_params_have_the_cuda_struct_layout() {
        assert_eq!(std::mem::size_of::<ConvGeometry>(), 15 * 4);
        assert_eq!(std::mem::size_of::<ConvParams>(), 19 * 4);
        assert_eq!(std::mem::align_of::<ConvParams>(), 4);
        let g = Conv2dGeometry::new([2, 3, 9, 8], [5, 3, 3, 2], (2, 1), (1, 0), (1, 2)).unwrap();
        let p = ConvParams::new(&g).unwrap();
        // SAFETY: a repr(C) struct of i32s, read as the ints it is made of.
        let ints: [i32; 19] = unsafe { std::mem::transmute(p) };
        assert_eq!(&ints[..7], &[2, 3, 9, 8, 5, 3, 2]);
        assert_eq!(&ints[7..13], &[2, 1, 1, 0, 1, 2]);
        assert_eq!(&ints[13..15], &[g.out_h as i32, g.out_w as i32]);
        assert_eq!(&ints[15..], &[0, 0, 0, 0]);
    }
}
