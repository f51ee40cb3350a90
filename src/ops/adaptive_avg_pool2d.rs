//! Adaptive average pooling (ResNet's global pool is the 1x1 case).

use crate::autograd::{record, BackwardOp};
use crate::backend::{AdaptivePool2dGeometry, BackendStorage};
use crate::error::Result;
use crate::ops::grad_tensor;
use crate::tensor::Tensor;

pub fn adaptive_avg_pool2d(input: &Tensor, output_size: (usize, usize)) -> Result<Tensor> {
    let g = AdaptivePool2dGeometry::new(input.dims4("adaptive_avg_pool2d")?, output_size)?;
    let out = input.storage().adaptive_avg_pool2d(&g)?;
    record(out, g.output_shape().to_vec(), &[Some(input)], |_, _| {
        Box::new(AdaptiveAvgPool2DBackward { geometry: g })
    })
}

struct AdaptiveAvgPool2DBackward {
    geometry: AdaptivePool2dGeometry,
}

impl BackwardOp for AdaptiveAvgPool2DBackward {
    fn name(&self) -> &'static str {
        // PyTorch lowers a 1x1 output to `x.mean((-2, -1), keepdim=True)`
        // and so prints `MeanBackward1`; same values, and the name that
        // makes our graph compare node for node with PyTorch's.
        if self.geometry.output_shape()[2..] == [1, 1] {
            "MeanBackward1"
        } else {
            "AdaptiveAvgPool2DBackward0"
        }
    }
    fn op(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        Vec::new()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let dx = grad_output
            .storage()
            .adaptive_avg_pool2d_backward(&self.geometry)?;
        Ok(vec![Some(grad_tensor(dx, &self.geometry.input_shape())?)])
    }
}
