//! Max pooling. The forward records, per output, the flat position of the
//! maximum in its input plane; backward scatters the gradient there.

use crate::autograd::{record, BackwardOp};
use crate::backend::{BackendStorage, Pool2dGeometry};
use crate::error::Result;
use crate::ops::grad_tensor;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dOptions {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl MaxPool2dOptions {
    /// Square window with stride = kernel, no padding (PyTorch's defaults).
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel: (kernel, kernel),
            stride: (kernel, kernel),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

pub fn max_pool2d(input: &Tensor, opts: MaxPool2dOptions) -> Result<Tensor> {
    let g = Pool2dGeometry::new(
        input.dims4("max_pool2d")?,
        opts.kernel,
        opts.stride,
        opts.padding,
        opts.dilation,
    )?;
    let (values, indices) = input.storage().max_pool2d(&g)?;
    let out_shape = g.output_shape().to_vec();
    let mut indices = Some(indices);
    let output = record(values, out_shape.clone(), &[Some(input)], |_, _| {
        Box::new(MaxPool2DWithIndicesBackward {
            geometry: g,
            indices: indices
                .take()
                .and_then(|i| Tensor::from_storage(i, out_shape).ok()),
        })
    });
    // No gradient wanted (a frozen prefix, inference): the indices were not
    // saved; back to the pool, so that such a step takes the same buffer
    // again instead of a fresh one from the allocator.
    if let Some(unused) = indices {
        unused.recycle();
    }
    output
}

struct MaxPool2DWithIndicesBackward {
    geometry: Pool2dGeometry,
    indices: Option<Tensor>,
}

impl BackwardOp for MaxPool2DWithIndicesBackward {
    fn name(&self) -> &'static str {
        "MaxPool2DWithIndicesBackward0"
    }
    fn op(&self) -> &'static str {
        "max_pool2d"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn saved(&self) -> Vec<(&'static str, &Tensor)> {
        self.indices.iter().map(|t| ("indices", t)).collect()
    }
    fn backward(
        self: Box<Self>,
        grad_output: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let idx = crate::ops::saved(&self.indices, self.name(), "indices")?;
        let dx = grad_output
            .storage()
            .max_pool2d_backward(&idx.storage(), &self.geometry)?;
        Ok(vec![Some(grad_tensor(dx, &self.geometry.input_shape())?)])
    }
}
