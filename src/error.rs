//! One error type for the whole library. Every variant says what went wrong and,
//! where it can, what the caller should do about it.

use crate::core_types::{DType, Device};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op} expects dtype {expected:?}, got {got:?}")]
    DType {
        op: &'static str,
        expected: DType,
        got: DType,
    },

    #[error("{op}: tensors are on different devices ({lhs:?} and {rhs:?}); move them with to_device first")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },

    #[error("device {device:?} is not available: {reason}")]
    DeviceUnavailable { device: Device, reason: String },

    #[error("invalid argument to {op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    #[error("autograd: {0}")]
    Autograd(String),

    #[error("state dict: {0}")]
    StateDict(String),

    #[error("weights file {path}: {msg}")]
    WeightsFile { path: String, msg: String },

    /// A PyTorch `.pth` checkpoint that cannot be read safely (malformed,
    /// truncated, or asking to run code outside the allowlist).
    #[error("PyTorch checkpoint: {0}")]
    Checkpoint(String),

    /// An image file that cannot be read or decoded (`frostgrad train`'s data).
    #[error("image {path}: {msg}")]
    Image { path: String, msg: String },

    #[error("CUDA: {0}")]
    Cuda(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}
