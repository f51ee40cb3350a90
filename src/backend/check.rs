//! Argument validation shared by the backends: every kernel checks the
//! buffers it is handed against the geometry before touching them, so a
//! mismatch is an `Error` and never an out-of-bounds panic.

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

/// A batch-norm backward asked for dγ or a training-mode dx, which read the
/// input, without the input.
pub(crate) fn unsaved_input(op: &'static str) -> Error {
    Error::invalid(
        op,
        "the weight gradient and the training-mode input gradient read the forward input, which was not given",
    )
}
