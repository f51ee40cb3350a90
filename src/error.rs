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

    /// A buffer the machine cannot provide: named, with its shape and the
    /// bytes asked for (`None`: more than a 128-bit count holds).
    #[error("out of memory: {what} of shape {shape:?} needs {}", describe_bytes(*bytes))]
    OutOfMemory {
        what: String,
        shape: Vec<usize>,
        bytes: Option<u128>,
    },

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

    /// An [`Error::OutOfMemory`] with its buffer named by the caller, who
    /// knows what it is for (`the weight of Linear(512, 10)`); other errors
    /// unchanged.
    pub fn named(self, what: impl Into<String>) -> Self {
        match self {
            Error::OutOfMemory { shape, bytes, .. } => Error::OutOfMemory {
                what: what.into(),
                shape,
                bytes,
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

/// `204800000000000 bytes (186.3 TiB)`.
fn describe_bytes(bytes: Option<u128>) -> String {
    let Some(b) = bytes else {
        return "more bytes than a 128-bit count holds".into();
    };
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = b as f64;
    let mut unit = "";
    for u in units {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit.is_empty() {
        format!("{b} bytes")
    } else {
        format!("{b} bytes ({value:.1} {unit})")
    }
}

/// `a, b, c and 90 more`: at most `max` items of a list for a message
/// (a ResNet-34 file has 96 unexpected keys; nobody reads a 4 KB line).
pub fn cut_list(items: &[String], max: usize, separator: &str) -> String {
    let shown: Vec<&str> = items.iter().take(max).map(String::as_str).collect();
    let mut out = shown.join(separator);
    if items.len() > max {
        out.push_str(&format!(" … and {} more", items.len() - max));
    }
    out
}

/// `text`, or its first `max` characters and how many more there were
/// (a 120 KB `--trainable` list is not echoed whole).
pub fn cut_text(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… ({} more characters)", count - max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_and_texts_are_cut() {
        let items: Vec<String> = (0..96).map(|i| format!("k{i}")).collect();
        assert_eq!(cut_list(&items, 3, ", "), "k0, k1, k2 … and 93 more");
        assert_eq!(cut_list(&items[..2], 3, ", "), "k0, k1");
        assert_eq!(cut_text("abcdef", 3), "abc… (3 more characters)");
        assert_eq!(cut_text("abc", 3), "abc");
    }

    #[test]
    fn sizes_are_given_in_bytes_and_binary_units() {
        assert_eq!(describe_bytes(Some(512)), "512 bytes");
        assert_eq!(
            describe_bytes(Some(204_800_000_000_000)),
            "204800000000000 bytes (186.3 TiB)"
        );
    }
}
