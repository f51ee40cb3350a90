//! One error type for the whole library. Every variant says what went wrong and,
//! where it can, what the caller should do about it.

use crate::core_types::{DType, Device, Role};

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

    /// A file a command reads or writes, named by its role
    /// (`weights file w.pth (--weights): ...`).
    #[error("{role} {path}{}: {msg}", role.suffix())]
    File {
        role: Role,
        path: String,
        msg: String,
    },

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

    /// The same error about a file, in another role (a library reader
    /// does not know whether it read `--weights` or `--batch`).
    pub fn in_role(self, role: Role) -> Self {
        match self {
            Error::File { path, msg, .. } => Error::File { role, path, msg },
            Error::Io { path, source } => Error::File {
                role,
                path,
                msg: source.to_string(),
            },
            other => other,
        }
    }

    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}

impl Role {
    /// An error about `path` in this role.
    pub fn error(self, path: &std::path::Path, msg: impl Into<String>) -> Error {
        Error::File {
            role: self,
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }
}
