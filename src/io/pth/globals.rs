//! The allowlist: the only Python globals a checkpoint may name.
//!
//! A pickle's `GLOBAL` opcode names a Python object (`os system`) that a real
//! unpickler would import and later call. This reader imports nothing; it
//! maps the few names a `state_dict` needs to the enum below and refuses
//! every other name, as `torch.load(weights_only=True)` does.

use super::checkpoint_error;
use crate::error::Result;

/// The element type of a PyTorch storage (`torch.HalfStorage` -> `F16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    /// Bytes per element in the file.
    pub fn element_size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// PyTorch's name for the dtype, used in notes and errors.
    pub fn torch_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
            StorageDtype::F64 => "float64",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::F64
        )
    }

    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "DoubleStorage" => StorageDtype::F64,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }
}

/// One allowed global. Nothing here is ever "called": the unpickler records
/// a call as data and [`super::rebuild`] interprets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`, the type of every `state_dict()`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
    /// requires_grad, backward_hooks[, metadata])`: every tensor since 0.4.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)`: tensors
    /// in checkpoints older than PyTorch 0.4.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)`:
    /// an `nn.Parameter` pickled directly (not via `state_dict()`).
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad,
    /// backward_hooks, state)`: a Parameter carrying Python attributes.
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends (also `torch.cuda.*Storage` in files
    /// saved from a GPU): only the storage's dtype matters here.
    Storage(StorageDtype),
}

/// Maps a pickle's `module name` pair to an allowed global, or refuses it
/// with an error naming it.
pub fn resolve(module: &str, name: &str) -> Result<Global> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch" | "torch.cuda", storage) => {
            StorageDtype::from_storage_class(storage).map(Global::Storage)
        }
        _ => None,
    };
    global.ok_or_else(|| {
        // A class of a model library (or the unpickling helper Python uses
        // for objects) means `torch.save(model)`: the whole module pickled.
        let whole_model = name.starts_with(|c: char| c.is_ascii_uppercase())
            || ["torch.nn", "torchvision", "timm", "__main__", "copyreg"]
                .iter()
                .any(|m| module.starts_with(m));
        let hint = if whole_model {
            ". This looks like a whole model saved with torch.save(model): save its \
             state_dict instead, torch.save(model.state_dict(), path), and load that"
        } else {
            ""
        };
        checkpoint_error(format!(
            "the pickle names the global `{module}.{name}`, which is not on the allowlist \
             (frostgrad loads only tensors, OrderedDicts and plain values, the same promise \
             as torch.load(weights_only=True)); nothing was executed{hint}"
        ))
    })
}
