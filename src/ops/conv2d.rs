//! 2-d convolution (groups = 1).
//!
//! Backward is three independent computations, and the mask decides which
//! run: dL/dx needs the weight, dL/dW needs the input, dL/db needs neither.
//! So the forward saves the weight only if dL/dx will be needed and the
//! input only if dL/dW will be: a frozen conv inside the trainable part of a
//! network keeps its weight (small) and drops its input activation (large).

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, BatchNormGeometry, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::ops::{flops, grad_tensor, same_device, saved, BIAS, INPUT, WEIGHT};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

/// `input [N, C, H, W]`, `weight [O, C, KH, KW]`, `bias [O]` → `[N, O, OH, OW]`.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv2dOptions,
) -> Result<Tensor> {
    let g = Conv2dGeometry::new(
        input.dims4("conv2d")?,
        weight.dims4("conv2d")?,
        opts.stride,
        opts.padding,
        opts.dilation,
    )?;
    same_device("conv2d", input, weight)?;
    if let Some(b) = bias {
        same_device("conv2d", input, b)?;
        if b.shape() != [g.out_channels] {
            return Err(Error::shape(
                "conv2d",
                format!("bias shape {:?} != [{}]", b.shape(), g.out_channels),
            ));
        }
    }
    let out = {
        let bias_storage = bias.map(|b| b.storage());
        input
            .storage()
            .conv2d(&weight.storage(), bias_storage.as_deref(), &g)?
    };
    flops::add_macs(g.macs());
    record(
        out,
        g.output_shape().to_vec(),
        &[Some(input), Some(weight), bias],
        |needs, _| {
            Box::new(ConvolutionBackward {
                geometry: g,
                // dL/dW = f(dL/dy, x): keep the input only for a trainable weight.
                input: needs[WEIGHT].then(|| input.detach()),
                // dL/dx = f(dL/dy, W): keep the weight only if the input needs a gradient.
                weight: needs[INPUT].then(|| weight.detach()),
            })
        },
    )
}

struct ConvolutionBackward {
    geometry: Conv2dGeometry,
    input: Option<Tensor>,
    weight: Option<Tensor>,
}

impl BackwardOp for ConvolutionBackward {
    fn name(&self) -> &'static str {
        "ConvolutionBackward0"
    }
    fn op(&self) -> &'static str {
        "conv2d"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "weight", "bias"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        [("input", &self.input), ("weight", &self.weight)]
            .into_iter()
            .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
            .collect()
    }
    fn backward_flops(&self, needs: &[bool]) -> u64 {
        // One conv-sized GEMM per needed input or weight gradient; the bias
        // gradient is a reduction and not counted (see `flops`).
        let gemms = needs.iter().take(2).filter(|&&n| n).count() as u64;
        2 * gemms * self.geometry.macs()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let g = &self.geometry;
        let gy = grad_output.storage();
        let mut grads = vec![None; needs.len()];
        if needs[INPUT] {
            let w = saved(&self.weight, "ConvolutionBackward0", "weight")?;
            grads[INPUT] = Some(grad_tensor(
                gy.conv2d_input_grad(&w.storage(), g)?,
                &g.input_shape(),
            )?);
            flops::add_macs(g.macs());
        }
        if needs[WEIGHT] {
            let x = saved(&self.input, "ConvolutionBackward0", "input")?;
            grads[WEIGHT] = Some(grad_tensor(
                gy.conv2d_weight_grad(&x.storage(), g)?,
                &g.weight_shape(),
            )?);
            flops::add_macs(g.macs());
        }
        if needs[BIAS] {
            let per_channel = BatchNormGeometry {
                batch: g.batch,
                channels: g.out_channels,
                spatial: g.out_h * g.out_w,
            };
            grads[BIAS] = Some(grad_tensor(
                gy.channel_sums(&per_channel)?,
                &[g.out_channels],
            )?);
        }
        Ok(grads)
    }
}
