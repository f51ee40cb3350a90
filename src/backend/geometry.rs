//! Shapes of the structured ops, computed and validated once by the op and
//! handed to whichever backend runs the kernel.

use crate::error::{Error, Result};

/// Output size of a convolution or pooling window along one axis, or `None`
/// when the (dilated) window does not fit into the padded input.
///
/// An error where the padded input (`input + 2 * padding`) or the window's
/// span (`dilation * (kernel - 1) + 1`) overflows usize: unchecked, a
/// hostile padding or dilation wrapped to a small size (or panicked in a
/// build that checks overflow) instead of being reported.
fn window_output(
    op: &'static str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Option<usize>> {
    let span = kernel
        .checked_sub(1)
        .and_then(|k| k.checked_mul(dilation))
        .and_then(|s| s.checked_add(1));
    let padded = padding.checked_mul(2).and_then(|p| p.checked_add(input));
    let (Some(span), Some(padded)) = (span, padded) else {
        return Err(Error::shape(
            op,
            format!(
                "input {input} with padding {padding}, or kernel {kernel} at dilation \
                 {dilation}, overflows usize"
            ),
        ));
    };
    Ok((padded >= span).then(|| (padded - span) / stride + 1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub out_h: usize,
    pub out_w: usize,
}

impl Conv2dGeometry {
    /// Checks an input `[N, C, H, W]` and weight `[O, C, KH, KW]` against each other.
    pub fn new(
        input: [usize; 4],
        weight: [usize; 4],
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
    ) -> Result<Self> {
        let [batch, in_channels, in_h, in_w] = input;
        let [out_channels, w_in, kernel_h, kernel_w] = weight;
        if w_in != in_channels {
            return Err(Error::shape(
                "conv2d",
                format!("input has {in_channels} channels but weight {weight:?} expects {w_in} (groups=1)"),
            ));
        }
        if stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
            return Err(Error::invalid(
                "conv2d",
                "stride and dilation must be at least 1",
            ));
        }
        if kernel_h == 0 || kernel_w == 0 || out_channels == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("empty weight shape {weight:?}"),
            ));
        }
        let out_h = window_output("conv2d", in_h, kernel_h, stride.0, padding.0, dilation.0)?;
        let out_w = window_output("conv2d", in_w, kernel_w, stride.1, padding.1, dilation.1)?;
        let (Some(out_h), Some(out_w)) = (out_h, out_w) else {
            return Err(Error::shape(
                "conv2d",
                format!("kernel {kernel_h}x{kernel_w} (dilation {dilation:?}) does not fit input {in_h}x{in_w} with padding {padding:?}"),
            ));
        };
        Ok(Self {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            dilation,
            out_h,
            out_w,
        })
    }

    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_channels, self.in_h, self.in_w]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel_h,
            self.kernel_w,
        ]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h, self.out_w]
    }
    /// Multiply-accumulates of one forward pass (the input and weight
    /// gradients cost the same each).
    pub fn macs(&self) -> u64 {
        (self.batch * self.out_channels * self.out_h * self.out_w) as u64
            * (self.in_channels * self.kernel_h * self.kernel_w) as u64
    }
}

/// A max-pool window over `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub out_h: usize,
    pub out_w: usize,
}

impl Pool2dGeometry {
    pub fn new(
        input: [usize; 4],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
    ) -> Result<Self> {
        let [batch, channels, in_h, in_w] = input;
        if kernel.0 == 0
            || kernel.1 == 0
            || stride.0 == 0
            || stride.1 == 0
            || dilation.0 == 0
            || dilation.1 == 0
        {
            return Err(Error::invalid(
                "max_pool2d",
                "kernel, stride and dilation must be at least 1",
            ));
        }
        // PyTorch: "pad should be at most half of effective kernel size".
        // (`padding > kernel / 2` is `2 * padding > kernel` without the
        // overflow of a hostile padding.)
        if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
            return Err(Error::invalid(
                "max_pool2d",
                format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
            ));
        }
        let out_h = window_output(
            "max_pool2d",
            in_h,
            kernel.0,
            stride.0,
            padding.0,
            dilation.0,
        )?;
        let out_w = window_output(
            "max_pool2d",
            in_w,
            kernel.1,
            stride.1,
            padding.1,
            dilation.1,
        )?;
        let (Some(out_h), Some(out_w)) = (out_h, out_w) else {
            return Err(Error::shape(
                "max_pool2d",
                format!(
                    "window {kernel:?} does not fit input {in_h}x{in_w} with padding {padding:?}"
                ),
            ));
        };
        Ok(Self {
            batch,
            channels,
            in_h,
            in_w,
            kernel,
            stride,
            padding,
            dilation,
            out_h,
            out_w,
        })
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h, self.out_w]
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.in_h, self.in_w]
    }
}

/// Adaptive average pooling of `[N, C, H, W]` to `[N, C, OH, OW]`. Output
/// cell `(i, j)` averages input rows `floor(i*H/OH) .. ceil((i+1)*H/OH)` and
/// the same for columns, as PyTorch defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptivePool2dGeometry {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl AdaptivePool2dGeometry {
    pub fn new(input: [usize; 4], output_size: (usize, usize)) -> Result<Self> {
        let [batch, channels, in_h, in_w] = input;
        let (out_h, out_w) = output_size;
        if out_h == 0 || out_w == 0 || in_h == 0 || in_w == 0 {
            return Err(Error::shape(
                "adaptive_avg_pool2d",
                format!("cannot pool {in_h}x{in_w} to {out_h}x{out_w}"),
            ));
        }
        Ok(Self {
            batch,
            channels,
            in_h,
            in_w,
            out_h,
            out_w,
        })
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h, self.out_w]
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.in_h, self.in_w]
    }
    /// Start (inclusive) and end (exclusive) of output cell `i`'s input range.
    pub fn window(i: usize, input: usize, output: usize) -> (usize, usize) {
        let start = (i * input) / output;
        let end = ((i + 1) * input).div_ceil(output);
        (start, end)
    }
}

/// `[N, C, S]` view of a batch-norm input (`S` = H*W for 2-d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormGeometry {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl BatchNormGeometry {
    pub fn numel(&self) -> usize {
        self.batch * self.channels * self.spatial
    }
    /// Values per channel that the batch statistics average over.
    pub fn count(&self) -> usize {
        self.batch * self.spatial
    }
}

/// PyTorch's `torch.optim.SGD` hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}
