//! Argument validation shared by the backends, one function per kernel
//! family. Every [`BackendStorage`] method of every backend calls its check
//! before touching a buffer, so a mismatch is an `Error` (never an
//! out-of-bounds access) and reads the same on every device. What a
//! backend adds on its own is only what is its own: the CUDA backend's
//! 2^31 size limit and its check that two buffers are on the same GPU.

use crate::backend::{
    AdaptivePool2dGeometry, BackendStorage, BatchNormGeometry, BatchNormParams, BatchNormSaved,
    BatchNormStats, Conv2dGeometry, Epilogue, Pool2dGeometry, SgdConfig, StridedLayout,
};
use crate::core_types::DType;
use crate::error::{Error, Result};

/// Errors unless buffer `what` of `op` holds exactly `expected` elements.
pub(crate) fn expect_len(op: &'static str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{what} has {got} elements, expected {expected}"),
        ))
    }
}

/// `a * b * ...` with overflow reported as an error rather than wrapping.
pub(crate) fn checked_numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::shape(op, format!("element count of {dims:?} overflows usize")))
    })
}

/// `a + b + ...` with overflow reported as an error rather than wrapping.
pub(crate) fn checked_sum(op: &'static str, terms: &[usize]) -> Result<usize> {
    terms.iter().try_fold(0usize, |acc, &t| {
        acc.checked_add(t)
            .ok_or_else(|| Error::shape(op, format!("the sum of {terms:?} overflows usize")))
    })
}

fn dtype<S: BackendStorage>(op: &'static str, s: &S, expected: DType) -> Result<()> {
    let got = s.dtype();
    if got == expected {
        Ok(())
    } else {
        Err(Error::DType { op, expected, got })
    }
}

/// An f32 buffer of exactly `len` elements.
fn f32_buf<S: BackendStorage>(op: &'static str, what: &str, s: &S, len: usize) -> Result<()> {
    dtype(op, s, DType::F32)?;
    expect_len(op, what, s.len(), len)
}

fn f32_opt<S: BackendStorage>(
    op: &'static str,
    what: &str,
    s: Option<&S>,
    len: usize,
) -> Result<()> {
    s.map_or(Ok(()), |s| f32_buf(op, what, s, len))
}

fn i64_buf<S: BackendStorage>(op: &'static str, what: &str, s: &S, len: usize) -> Result<()> {
    dtype(op, s, DType::I64)?;
    expect_len(op, what, s.len(), len)
}

// ----- elementwise ----------------------------------------------------------

/// One f32 operand of any length (`scale`, `sum`, `relu`, `inv_std`).
pub(crate) fn unary<S: BackendStorage>(op: &'static str, x: &S) -> Result<()> {
    dtype(op, x, DType::F32)
}

/// Two f32 operands of one length (`add`, `relu_backward`).
pub(crate) fn binary<S: BackendStorage>(op: &'static str, a: &S, b: &S) -> Result<()> {
    dtype(op, a, DType::F32)?;
    f32_buf(op, "second operand", b, a.len())
}

pub(crate) fn broadcast_scalar<S: BackendStorage>(x: &S) -> Result<()> {
    f32_buf("broadcast_scalar", "scalar", x, 1)
}

// ----- dense ----------------------------------------------------------------

/// `[m, k] @ [k, n]` (transposition does not change the lengths).
pub(crate) fn matmul<S: BackendStorage>(a: &S, b: &S, m: usize, k: usize, n: usize) -> Result<()> {
    let op = "matmul";
    f32_buf(op, "lhs", a, checked_numel(op, &[m, k])?)?;
    f32_buf(op, "rhs", b, checked_numel(op, &[k, n])?)?;
    checked_numel(op, &[m, n]).map(drop)
}

pub(crate) fn add_row_vector<S: BackendStorage>(
    x: &S,
    row: &S,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "add_row_vector";
    f32_buf(op, "matrix", x, checked_numel(op, &[rows, cols])?)?;
    f32_buf(op, "row vector", row, cols)
}

pub(crate) fn sum_rows<S: BackendStorage>(x: &S, rows: usize, cols: usize) -> Result<()> {
    let op = "sum_rows";
    f32_buf(op, "matrix", x, checked_numel(op, &[rows, cols])?)
}

// ----- convolution ----------------------------------------------------------

fn conv_lens(op: &'static str, g: &Conv2dGeometry) -> Result<[usize; 3]> {
    Ok([
        checked_numel(op, &g.input_shape())?,
        checked_numel(op, &g.weight_shape())?,
        checked_numel(op, &g.output_shape())?,
    ])
}

pub(crate) fn conv2d<S: BackendStorage>(
    x: &S,
    weight: &S,
    bias: Option<&S>,
    g: &Conv2dGeometry,
) -> Result<()> {
    let op = "conv2d";
    let [input, w, _] = conv_lens(op, g)?;
    f32_buf(op, "input", x, input)?;
    f32_buf(op, "weight", weight, w)?;
    f32_opt(op, "bias", bias, g.out_channels)
}

pub(crate) fn conv2d_input_grad<S: BackendStorage>(
    dy: &S,
    weight: &S,
    g: &Conv2dGeometry,
) -> Result<()> {
    let op = "conv2d_input_grad";
    let [_, w, output] = conv_lens(op, g)?;
    f32_buf(op, "grad_output", dy, output)?;
    f32_buf(op, "weight", weight, w)
}

pub(crate) fn conv2d_weight_grad<S: BackendStorage>(
    dy: &S,
    x: &S,
    g: &Conv2dGeometry,
) -> Result<()> {
    let op = "conv2d_weight_grad";
    let [input, _, output] = conv_lens(op, g)?;
    f32_buf(op, "grad_output", dy, output)?;
    f32_buf(op, "input", x, input)
}

/// Per-channel sums of `[N, C, S]` (the conv bias gradient).
pub(crate) fn channel_sums<S: BackendStorage>(x: &S, g: &BatchNormGeometry) -> Result<()> {
    let op = "channel_sums";
    f32_buf(op, "input", x, bn_numel(op, g)?)
}

// ----- batch norm -----------------------------------------------------------

fn bn_numel(op: &'static str, g: &BatchNormGeometry) -> Result<usize> {
    checked_numel(op, &[g.batch, g.channels, g.spatial])
}

pub(crate) fn batch_norm<S: BackendStorage>(
    x: &S,
    weight: Option<&S>,
    bias: Option<&S>,
    stats: &BatchNormStats<'_, S>,
    p: &BatchNormParams,
) -> Result<()> {
    let op = "batch_norm";
    let g = &p.geometry;
    f32_buf(op, "input", x, bn_numel(op, g)?)?;
    f32_opt(op, "weight", weight, g.channels)?;
    f32_opt(op, "bias", bias, g.channels)?;
    if let BatchNormStats::Running { mean, var } = stats {
        f32_buf(op, "running_mean", *mean, g.channels)?;
        f32_buf(op, "running_var", *var, g.channels)?;
    }
    Ok(())
}

/// Also checks that what the requested gradients read was saved: the input
/// for dγ and the training-mode dx, the output for the ReLU epilogue.
pub(crate) fn batch_norm_backward<S: BackendStorage>(
    dy: &S,
    saved: &BatchNormSaved<'_, S>,
    p: &BatchNormParams,
    needs: [bool; 3],
) -> Result<()> {
    let op = "batch_norm_backward";
    let g = &p.geometry;
    let numel = bn_numel(op, g)?;
    f32_buf(op, "grad_output", dy, numel)?;
    f32_opt(op, "weight", saved.weight, g.channels)?;
    f32_buf(op, "mean", saved.mean, g.channels)?;
    f32_buf(op, "invstd", saved.invstd, g.channels)?;
    let [need_dx, need_dw, _] = needs;
    if need_dw || (need_dx && saved.batch_stats) {
        let input = saved.input.ok_or_else(|| {
            Error::invalid(
                op,
                "the weight gradient and the training-mode input gradient read the forward input, which was not given",
            )
        })?;
        f32_buf(op, "input", input, numel)?;
    }
    if p.epilogue == Epilogue::Relu {
        let output = saved
            .output
            .ok_or_else(|| Error::invalid(op, "the ReLU epilogue needs the forward output"))?;
        f32_buf(op, "relu output", output, numel)?;
    }
    Ok(())
}

pub(crate) fn update_running_stats<S: BackendStorage>(
    running_mean: &S,
    running_var: &S,
    batch_mean: &S,
    batch_var: &S,
    count: usize,
) -> Result<()> {
    let op = "update_running_stats";
    let c = running_mean.len();
    dtype(op, running_mean, DType::F32)?;
    f32_buf(op, "running_var", running_var, c)?;
    f32_buf(op, "batch_mean", batch_mean, c)?;
    f32_buf(op, "batch_var", batch_var, c)?;
    if count < 2 {
        return Err(Error::invalid(
            op,
            format!("the unbiased variance needs at least 2 values per channel, got {count}"),
        ));
    }
    Ok(())
}

// ----- pooling --------------------------------------------------------------

fn pool_lens(op: &'static str, input: [usize; 4], output: [usize; 4]) -> Result<[usize; 2]> {
    Ok([checked_numel(op, &input)?, checked_numel(op, &output)?])
}

pub(crate) fn max_pool2d<S: BackendStorage>(x: &S, g: &Pool2dGeometry) -> Result<()> {
    let op = "max_pool2d";
    let [input, _] = pool_lens(op, g.input_shape(), g.output_shape())?;
    f32_buf(op, "input", x, input)
}

/// The lengths only; an arg-max index outside its plane is found by the
/// kernel that reads it.
pub(crate) fn max_pool2d_backward<S: BackendStorage>(
    dy: &S,
    indices: &S,
    g: &Pool2dGeometry,
) -> Result<()> {
    let op = "max_pool2d_backward";
    let [_, output] = pool_lens(op, g.input_shape(), g.output_shape())?;
    f32_buf(op, "grad_output", dy, output)?;
    i64_buf(op, "indices", indices, output)
}

pub(crate) fn adaptive_avg_pool2d<S: BackendStorage>(
    x: &S,
    g: &AdaptivePool2dGeometry,
) -> Result<()> {
    let op = "adaptive_avg_pool2d";
    let [input, _] = pool_lens(op, g.input_shape(), g.output_shape())?;
    f32_buf(op, "input", x, input)
}

pub(crate) fn adaptive_avg_pool2d_backward<S: BackendStorage>(
    dy: &S,
    g: &AdaptivePool2dGeometry,
) -> Result<()> {
    let op = "adaptive_avg_pool2d_backward";
    let [_, output] = pool_lens(op, g.input_shape(), g.output_shape())?;
    f32_buf(op, "grad_output", dy, output)
}

// ----- loss -----------------------------------------------------------------

pub(crate) fn log_softmax<S: BackendStorage>(x: &S, rows: usize, cols: usize) -> Result<()> {
    let op = "log_softmax";
    f32_buf(op, "input", x, checked_numel(op, &[rows, cols])?)
}

pub(crate) fn log_softmax_backward<S: BackendStorage>(
    dy: &S,
    y: &S,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "log_softmax_backward";
    let len = checked_numel(op, &[rows, cols])?;
    f32_buf(op, "grad_output", dy, len)?;
    f32_buf(op, "output", y, len)
}

/// The lengths; the label values are checked by [`labels_in_range`] on the
/// host copy each backend has or makes.
pub(crate) fn nll_loss<S: BackendStorage>(
    log_probs: &S,
    labels: &S,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "nll_loss";
    f32_buf(
        op,
        "log_probs",
        log_probs,
        checked_numel(op, &[rows, cols])?,
    )?;
    i64_buf(op, "labels", labels, rows)
}

pub(crate) fn nll_loss_backward<S: BackendStorage>(
    dy: &S,
    labels: &S,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "nll_loss_backward";
    f32_buf(op, "grad_output", dy, 1)?;
    i64_buf(op, "labels", labels, rows)?;
    checked_numel(op, &[rows, cols]).map(drop)
}

/// Every label is a class index in `0..cols`.
pub(crate) fn labels_in_range(op: &'static str, labels: &[i64], cols: usize) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::try_from(l).map_or(true, |c| c >= cols))
    {
        None => Ok(()),
        Some((row, label)) => Err(Error::invalid(
            op,
            format!("label {label} in row {row} is outside the class range 0..{cols}"),
        )),
    }
}

// ----- optimizer ------------------------------------------------------------

/// The buffer is required exactly when momentum is non-zero (and ignored
/// otherwise).
pub(crate) fn sgd_step<S: BackendStorage>(
    param: &S,
    grad: &S,
    momentum_buffer: Option<&S>,
    cfg: &SgdConfig,
) -> Result<()> {
    let op = "sgd_step";
    dtype(op, param, DType::F32)?;
    f32_buf(op, "grad", grad, param.len())?;
    if cfg.momentum != 0.0 {
        let buffer = momentum_buffer.ok_or_else(|| {
            Error::invalid(
                op,
                format!("momentum {} needs a momentum buffer", cfg.momentum),
            )
        })?;
        f32_buf(op, "momentum_buffer", buffer, param.len())?;
    }
    Ok(())
}

// ----- general op set (backend::strided) -------------------------------------

pub(crate) fn strided_copy<S: BackendStorage>(x: &S, layout: &StridedLayout) -> Result<()> {
    let op = "strided_copy";
    dtype(op, x, DType::F32)?;
    layout.check(op, "source", x.len())
}

/// Two f32 operands read through layouts of one (the output's) shape.
pub(crate) fn binary_strided<S: BackendStorage>(
    a: &S,
    b: &S,
    a_layout: &StridedLayout,
    b_layout: &StridedLayout,
) -> Result<()> {
    let op = "binary";
    dtype(op, a, DType::F32)?;
    dtype(op, b, DType::F32)?;
    if a_layout.shape != b_layout.shape {
        return Err(Error::shape(
            op,
            format!(
                "operand layouts of shapes {:?} and {:?}",
                a_layout.shape, b_layout.shape
            ),
        ));
    }
    a_layout.check(op, "lhs", a.len())?;
    b_layout.check(op, "rhs", b.len())
}

pub(crate) fn reduce_rows<S: BackendStorage>(x: &S, rows: usize, cols: usize) -> Result<()> {
    let op = "reduce_rows";
    if cols == 0 {
        return Err(Error::shape(op, "cannot reduce over an empty dim"));
    }
    f32_buf(op, "input", x, checked_numel(op, &[rows, cols])?)
}

/// `[batch, m, k] @ [batch, k, n]` (transposition does not change the lengths).
pub(crate) fn batched_matmul<S: BackendStorage>(
    a: &S,
    b: &S,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    let op = "batched_matmul";
    f32_buf(op, "lhs", a, checked_numel(op, &[batch, m, k])?)?;
    f32_buf(op, "rhs", b, checked_numel(op, &[batch, k, n])?)?;
    checked_numel(op, &[batch, m, n]).map(drop)
}

/// Each family's check through the CPU backend's methods (the CUDA backend
/// runs the same functions; `tests/cuda_parity.rs` compares the messages).
#[cfg(test)]
mod tests {
    use crate::backend::cpu::CpuStorage;
    use crate::backend::*;
    use crate::core_types::HostData::{F32, I64};

    fn v(n: usize) -> CpuStorage {
        F32(vec![0.5; n])
    }

    fn shape_error<T: std::fmt::Debug>(r: crate::error::Result<T>, needle: &str) {
        let err = r.expect_err("a bad argument must be an error").to_string();
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    }

    #[test]
    fn elementwise_and_dense() {
        shape_error(v(1).add(&v(2)), "second operand has 2 elements, expected 1");
        shape_error(v(1).relu_backward(&v(2)), "second operand");
        shape_error(v(2).broadcast_scalar(3), "scalar has 2 elements");
        shape_error(I64(vec![1]).relu(), "expects dtype F32, got I64");
        shape_error(
            v(6).matmul(&v(6), 2, 3, 3, false, false),
            "rhs has 6 elements",
        );
        shape_error(
            v(5).matmul(&v(6), 2, 3, 2, false, false),
            "lhs has 5 elements",
        );
        shape_error(
            v(6).matmul(&v(6), usize::MAX, 2, 3, false, false),
            "overflows",
        );
        shape_error(v(6).sum_rows(4, 2), "matrix has 6 elements, expected 8");
        shape_error(
            v(6).add_row_vector(&v(1), 2, 3),
            "row vector has 1 elements",
        );
    }

    #[test]
    fn convolution() {
        let g = Conv2dGeometry::new([2, 3, 5, 5], [4, 3, 3, 3], (1, 1), (1, 1), (1, 1)).unwrap();
        let (x, w, dy) = (v(150), v(108), v(200));
        shape_error(v(149).conv2d(&w, None, &g), "input has 149");
        shape_error(x.conv2d(&v(107), None, &g), "weight has 107");
        shape_error(x.conv2d(&w, Some(&v(3)), &g), "bias has 3");
        shape_error(v(199).conv2d_input_grad(&w, &g), "grad_output has 199");
        shape_error(dy.conv2d_input_grad(&v(107), &g), "weight has 107");
        shape_error(dy.conv2d_weight_grad(&v(149), &g), "input has 149");
        shape_error(v(199).conv2d_weight_grad(&x, &g), "grad_output has 199");
        assert!(x.conv2d(&w, None, &g).is_ok());
    }

    #[test]
    fn batch_norm() {
        let geometry = BatchNormGeometry {
            batch: 2,
            channels: 2,
            spatial: 2,
        };
        let p = BatchNormParams {
            geometry,
            eps: 1e-5,
            epilogue: Epilogue::None,
        };
        let x = v(8);
        shape_error(v(7).channel_sums(&geometry), "input has 7");
        shape_error(
            x.batch_norm(Some(&v(1)), None, BatchNormStats::Batch, &p),
            "weight has 1",
        );
        let (rm, rv) = (v(2), v(3));
        let running = BatchNormStats::Running {
            mean: &rm,
            var: &rv,
        };
        shape_error(x.batch_norm(None, None, running, &p), "running_var has 3");
        let (mean, invstd) = (v(2), v(2));
        let saved = |input: Option<&'static CpuStorage>| BatchNormSaved {
            input,
            weight: None,
            mean: &mean,
            invstd: &invstd,
            batch_stats: true,
            output: None,
        };
        let short: &'static CpuStorage = Box::leak(Box::new(v(7)));
        shape_error(
            x.batch_norm_backward(&saved(Some(short)), &p, [true, false, false]),
            "input has 7",
        );
        shape_error(
            x.batch_norm_backward(&saved(None), &p, [true, false, false]),
            "read the forward input",
        );
        // Eval-mode dx alone reads no input.
        let eval = BatchNormSaved {
            batch_stats: false,
            ..saved(None)
        };
        assert!(x
            .batch_norm_backward(&eval, &p, [true, false, false])
            .is_ok());
        let relu = BatchNormParams {
            epilogue: Epilogue::Relu,
            ..p
        };
        shape_error(
            x.batch_norm_backward(&eval, &relu, [true, false, false]),
            "needs the forward output",
        );

        let (mut rm, mut rv) = (v(2), v(2));
        shape_error(
            rm.update_running_stats(&mut rv, &v(1), &v(2), 0.1, 4),
            "batch_mean has 1",
        );
        shape_error(
            rm.update_running_stats(&mut rv, &v(2), &v(2), 0.1, 1),
            "at least 2 values per channel, got 1",
        );
    }

    #[test]
    fn pooling_and_loss() {
        let g = Pool2dGeometry::new([1, 1, 3, 3], (2, 2), (1, 1), (0, 0), (1, 1)).unwrap();
        shape_error(v(8).max_pool2d(&g), "input has 8");
        shape_error(
            v(4).max_pool2d_backward(&I64(vec![0, 1, 2]), &g),
            "indices has 3",
        );
        shape_error(v(4).max_pool2d_backward(&v(4), &g), "expects dtype I64");
        let a = AdaptivePool2dGeometry::new([1, 2, 3, 3], (1, 1)).unwrap();
        shape_error(v(17).adaptive_avg_pool2d(&a), "input has 17");
        shape_error(v(1).adaptive_avg_pool2d_backward(&a), "grad_output has 1");

        shape_error(v(5).log_softmax(2, 3), "input has 5");
        shape_error(v(6).log_softmax_backward(&v(5), 2, 3), "output has 5");
        shape_error(v(6).nll_loss(&I64(vec![0]), 2, 3), "labels has 1");
        shape_error(
            v(6).nll_loss(&I64(vec![0, 3]), 2, 3),
            "label 3 in row 1 is outside the class range 0..3",
        );
        shape_error(
            v(2).nll_loss_backward(&I64(vec![0, 1]), 2, 3),
            "grad_output has 2",
        );
    }

    #[test]
    fn sgd() {
        let cfg = |momentum| SgdConfig {
            lr: 0.1,
            momentum,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut p = F32(vec![1.0, 2.0]);
        shape_error(p.sgd_step(&v(1), None, &cfg(0.0), false), "grad has 1");
        shape_error(
            p.sgd_step(&v(2), None, &cfg(0.9), true),
            "needs a momentum buffer",
        );
        shape_error(
            p.sgd_step(&v(2), Some(&mut v(1)), &cfg(0.9), true),
            "momentum_buffer has 1",
        );
        assert_eq!(
            p,
            F32(vec![1.0, 2.0]),
            "a rejected step must not touch the parameter"
        );
    }
}
