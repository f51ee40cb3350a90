//! Hostile convolution shapes through the public API: sizes whose products
//! (an output row of the column matrix, a padded width, the output itself)
//! overflow `usize` or exceed any machine's memory are an `Err` (or, for an
//! empty batch, an empty result), never a panic, an abort or a wrapped
//! size. Run in the test profile, which checks integer overflow: a size
//! product computed unchecked panics here instead of wrapping silently as
//! in a release build.
//!
//! Why: the library rule (README.md) that bad input is an error; the
//! geometry's checks bound the input, weight and output element counts,
//! but not every product the kernels derive from them (`C_in * KH * KW`
//! rows of an output row's columns, `in + 2 * padding`).

use frostgrad::ops::{self, Conv2dOptions};
use frostgrad::{Device, Error, Tensor};

fn zeros(shape: &[usize], grad: bool) -> Tensor {
    Tensor::zeros(shape, Device::Cpu)
        .and_then(|t| t.requires_grad_(grad))
        .expect("zeros")
}

fn opts(stride: usize, padding: (usize, usize)) -> Conv2dOptions {
    Conv2dOptions {
        stride: (stride, stride),
        padding,
        ..Conv2dOptions::default()
    }
}

/// The (kernel, channels, stride) variants each hostile padding is tried
/// with: 1x1 and 3x3 kernels, stride 1 and 2 (the forward's im2col, direct
/// and Winograd choices and the input gradient's flipped and col2im forms
/// differ by these).
const VARIANTS: [(usize, usize, usize); 4] = [(1, 4, 1), (3, 4, 1), (1, 4, 2), (3, 8, 2)];

#[test]
fn a_width_padding_whose_output_exceeds_memory_is_an_error() {
    // One image of one pixel, padded to ~2^62 output columns: the output
    // (2^62 floats) cannot be allocated, and `C_in * KH * KW` floats per
    // output column overflow usize before that.
    for (k, c, stride) in VARIANTS {
        for padding in [(0, 1 << 61), (1 << 61, 0), (1, 1 << 61)] {
            let x = zeros(&[1, c, 1, 1], true);
            let w = zeros(&[2, c, k, k], true);
            let got = ops::conv2d(&x, &w, None, opts(stride, padding));
            let err = got.expect_err("a 2^62-pixel output");
            assert!(
                matches!(err, Error::OutOfMemory { .. } | Error::Shape { .. }),
                "kernel {k}, stride {stride}, padding {padding:?}: {err}"
            );
        }
    }
}

#[test]
fn a_padding_that_overflows_usize_is_an_error() {
    for padding in [(0, 1 << 63), (usize::MAX / 2, 0), (usize::MAX, usize::MAX)] {
        let x = zeros(&[1, 1, 2, 2], false);
        let w = zeros(&[1, 1, 1, 1], false);
        let err = ops::conv2d(&x, &w, None, opts(1, padding)).expect_err("overflowing padding");
        assert!(
            matches!(err, Error::Shape { .. }),
            "padding {padding:?}: {err}"
        );
    }
}

#[test]
fn a_dilation_whose_window_overflows_usize_is_an_error() {
    // The window's span `dilation * (kernel - 1) + 1` past usize.
    let x = zeros(&[1, 1, 2, 2], false);
    let w = zeros(&[1, 1, 3, 3], false);
    for dilation in [(usize::MAX / 2 + 1, 1), (1, usize::MAX)] {
        let o = Conv2dOptions {
            dilation,
            ..Conv2dOptions::default()
        };
        let err = ops::conv2d(&x, &w, None, o).expect_err("overflowing window");
        assert!(matches!(err, Error::Shape { .. }), "{dilation:?}: {err}");
    }
}

#[test]
fn a_pool_padding_or_dilation_that_overflows_usize_is_an_error() {
    // `2 * padding` (the padding's bound) and the padded input, and the
    // dilated window, past usize: errors, as for the convolution.
    let x = zeros(&[1, 1, 4, 4], false);
    for (kernel, padding, dilation) in [
        ((2, 2), (usize::MAX / 2 + 1, 0), (1, 1)),
        ((usize::MAX, 2), (usize::MAX / 2, 0), (1, 1)),
        ((3, 3), (0, 0), (usize::MAX, 1)),
    ] {
        let o = ops::MaxPool2dOptions {
            kernel,
            stride: (1, 1),
            padding,
            dilation,
        };
        let err = ops::max_pool2d(&x, o).expect_err("overflowing pool window");
        assert!(
            matches!(err, Error::Shape { .. } | Error::InvalidArgument { .. }),
            "{kernel:?} {padding:?} {dilation:?}: {err}"
        );
    }
}

#[test]
fn an_empty_batch_of_huge_images_is_empty_not_a_panic() {
    // No image: every buffer is empty, so the geometry's element counts
    // pass, while one image (~2^62 floats) or an output row of columns
    // (`C_in * KH * KW * OW`, past usize with the wide padding) is huge. As
    // in PyTorch, the forward is empty and the gradients are empty (input)
    // and zero (weight).
    for (k, c, stride) in VARIANTS {
        let wide = (1usize << 62) / (c * k);
        for (in_w, padding) in [(wide, (0, 0)), (1, (0, 1 << 61))] {
            let x = zeros(&[0, c, k, in_w], true);
            let w = zeros(&[2, c, k, k], true);
            let case = format!("kernel {k}, stride {stride}, width {in_w}, padding {padding:?}");
            let y = ops::conv2d(&x, &w, None, opts(stride, padding)).expect(&case);
            assert_eq!(y.shape()[..2], [0, 2], "{case}");
            let loss = ops::sum(&y).expect("sum");
            loss.backward().expect(&case);
            let dw = w.grad().expect("dW").to_vec_f32().expect("f32");
            assert!(
                dw.len() == 2 * c * k * k && dw.iter().all(|&v| v == 0.0),
                "{case}: {dw:?}"
            );
            assert_eq!(x.grad().expect("dx").shape(), x.shape(), "{case}");
        }
    }
}

#[test]
fn a_kernel_over_no_input_channels_whose_plane_overflows_is_an_error() {
    // No input channel: the input and the weight are empty, so their
    // element counts pass whatever the plane and kernel sizes, here 2^80
    // pixels each, with an output of one pixel per channel. Every
    // direction, through the backend (the gradients' own entries, which
    // the op's forward would not reach) and the op, is an error (the
    // forward used to give zeros, the gradients panicked on the plane's
    // pixel count).
    use frostgrad::backend::cpu::CpuStorage;
    use frostgrad::backend::{BackendStorage, Conv2dGeometry};
    let huge = 1usize << 40;
    let (input, weight) = ([1, 0, huge, huge], [2, 0, huge, huge]);
    let g = Conv2dGeometry::new(input, weight, (1, 1), (0, 0), (1, 1)).expect("geometry");
    assert_eq!(g.output_shape(), [1, 2, 1, 1]);
    let empty = CpuStorage::F32(Vec::new());
    let dy = CpuStorage::F32(vec![1.0; 2]);
    let shape_err = |r: frostgrad::Result<CpuStorage>, what: &str| match r {
        Err(Error::Shape { .. }) => {}
        Err(e) => panic!("{what}: {e}"),
        Ok(_) => panic!("{what}: a result for a plane of 2^80 pixels"),
    };
    shape_err(empty.conv2d(&empty, None, &g), "forward");
    shape_err(dy.conv2d_input_grad(&empty, &g), "input gradient");
    shape_err(dy.conv2d_weight_grad(&empty, &g), "weight gradient");
    let x = zeros(&input, true);
    let w = zeros(&weight, true);
    let err = ops::conv2d(&x, &w, None, Conv2dOptions::default()).expect_err("2^80 pixels");
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}
