//! The vocabulary every layer shares: element types, devices, and host data.
//!
//! This module imports nothing of ours, so that the backends (below the
//! tensor) and the tensor, I/O and modules (above them) can all name a
//! `DType`, a `Device` or a host buffer without depending on each other.
//! `tests/layering.rs` keeps it that way.

/// Element type. f32 for everything that is differentiated; i64 for labels,
/// max-pool arg-max indices and `num_batches_tracked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The data of one tensor in host memory: what weight files are read into
/// and written from, and the CPU backend's storage
/// (`backend::cpu::CpuStorage` is this type). Its typed accessors
/// (`as_f32`, `as_i64`, ...) live with the CPU backend because they report
/// a dtype mismatch as the crate's `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::I64(_) => DType::I64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a file is to a command, for error messages: a noun and the option
/// that named it (`weights file w.pth (--weights): ...`). Used by
/// `Error::File` and `io::files`; a command with a new kind of file declares
/// its own: `const CURVE: Role = Role::new("curve file", Some("--curve"));`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub noun: &'static str,
    pub option: Option<&'static str>,
}

impl Role {
    pub const fn new(noun: &'static str, option: Option<&'static str>) -> Role {
        Role { noun, option }
    }
    /// A file the library reads or writes outside any command.
    pub const FILE: Role = Role::new("file", None);
    pub const WEIGHTS: Role = Role::new("weights file", Some("--weights"));
    pub const BATCH: Role = Role::new("batch file", Some("--batch"));
    pub const OUTPUT: Role = Role::new("output file", Some("--out"));
    pub const STATS: Role = Role::new("stats file", Some("--stats-json"));
    pub const JSON: Role = Role::new("JSON output", Some("--json"));
    pub const SVG: Role = Role::new("SVG output", Some("--svg"));
    /// `frostgrad convert IN OUT`'s positional arguments.
    pub const CONVERT_INPUT: Role = Role::new("input checkpoint", Some("IN"));
    pub const CONVERT_OUTPUT: Role = Role::new("output file", Some("OUT"));

    /// ` (--weights)`, or nothing: what follows the path in a message.
    pub fn suffix(&self) -> String {
        self.option.map(|o| format!(" ({o})")).unwrap_or_default()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.noun)
    }
}
