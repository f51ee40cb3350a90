//! From an unpickled checkpoint to host tensors.
//!
//! A tensor in a torch pickle is the recorded call
//! `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`, where
//! `storage` is a persistent id naming a block of raw bytes kept outside the
//! pickle. Several tensors may share one storage (views, slices), and strides
//! may be anything a view can have (a transpose, an `expand` with stride 0).
//! This module reads those calls into [`TensorSpec`]s, checks every offset,
//! size and stride against the bytes present, and copies the elements into a
//! contiguous row-major [`HostTensor`], converting the dtype to the two the
//! engine has (f32 for floats, i64 for integers and bools).

use std::collections::HashMap;

use super::checkpoint_error;
use super::globals::{Global, StorageDtype};
use super::pickle::{ObjId, Object, Pickle};
use crate::core_types::HostData;
use crate::error::Result;
use crate::io::HostTensor;

/// A tensor with more elements than its storage is a broadcast view
/// (`expand`, stride 0). Materialising one copies data, so a tiny hostile
/// file could ask for terabytes; such tensors are allowed up to this many
/// elements (16 Mi, far above any real buffer saved this way).
pub const MAX_BROADCAST_ELEMENTS: usize = 1 << 24;

/// Which storage a tensor reads, as its persistent id says.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The key of the raw bytes: `data/<key>` in a zip, a record in legacy.
    pub key: String,
    pub dtype: StorageDtype,
    /// Elements the storage declares.
    pub numel: usize,
    /// Legacy files (PyTorch < 1.0) could pickle a view of a storage:
    /// `(element offset, element count)` into the storage named by `key`.
    pub view: Option<(usize, usize)>,
}

/// `_rebuild_tensor_v2`'s arguments, checked for type but not yet for range.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub storage: StorageRef,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

fn int(p: &Pickle, id: ObjId, what: &str) -> Result<i128> {
    match p.get(id) {
        Object::Int(v) => Ok(*v),
        Object::Bool(b) => Ok(i128::from(*b)),
        _ => Err(checkpoint_error(format!(
            "{what} should be an int, found {}",
            p.describe(id)
        ))),
    }
}

fn non_negative(p: &Pickle, id: ObjId, what: &str) -> Result<usize> {
    let v = int(p, id, what)?;
    usize::try_from(v).map_err(|_| {
        checkpoint_error(format!(
            "{what} is {v}; it must be a non-negative size that fits in memory"
        ))
    })
}

fn str_of<'p>(p: &'p Pickle, id: ObjId, what: &str) -> Result<&'p str> {
    match p.get(id) {
        Object::Str(s) => Ok(s),
        _ => Err(checkpoint_error(format!(
            "{what} should be a str, found {}",
            p.describe(id)
        ))),
    }
}

fn tuple<'p>(p: &'p Pickle, id: ObjId, what: &str) -> Result<&'p [ObjId]> {
    match p.get(id) {
        Object::Tuple(items) => Ok(items),
        _ => Err(checkpoint_error(format!(
            "{what} should be a tuple, found {}",
            p.describe(id)
        ))),
    }
}

/// Reads a persistent id: `('storage', torch.XStorage, key, location, numel)`
/// in zip files, with a sixth `view_metadata` element in legacy files.
pub fn storage_ref(p: &Pickle, pid: ObjId) -> Result<StorageRef> {
    let items = tuple(p, pid, "a persistent id")?;
    if items.len() != 5 && items.len() != 6 {
        return Err(checkpoint_error(format!(
            "a persistent id has {} fields; torch writes 5 (zip) or 6 (legacy)",
            items.len()
        )));
    }
    let tag = str_of(p, items[0], "the persistent id's tag")?;
    if tag != "storage" {
        return Err(checkpoint_error(format!(
            "persistent id of kind {tag:?}; only 'storage' is supported"
        )));
    }
    let Object::Global(Global::Storage(dtype)) = p.get(items[1]) else {
        return Err(checkpoint_error(format!(
            "a persistent id names {} where a storage type belongs",
            p.describe(items[1])
        )));
    };
    let key = str_of(p, items[2], "a storage key")?.to_string();
    // items[3] is the device it was saved from ('cpu', 'cuda:0'); every
    // storage is loaded to the host, as map_location='cpu' does.
    str_of(p, items[3], "a storage location")?;
    let numel = non_negative(p, items[4], &format!("storage {key}'s element count"))?;
    let view = match items.get(5).map(|&v| (v, p.get(v))) {
        None | Some((_, Object::None)) => None,
        Some((v, _)) => {
            let meta = tuple(p, v, "a storage view")?;
            if meta.len() != 3 {
                return Err(checkpoint_error(
                    "a storage view should be (key, offset, size)",
                ));
            }
            str_of(p, meta[0], "a storage view's key")?;
            let offset = non_negative(p, meta[1], "a storage view's offset")?;
            let size = non_negative(p, meta[2], "a storage view's size")?;
            Some((offset, size))
        }
    };
    Ok(StorageRef {
        key,
        dtype: *dtype,
        numel,
        view,
    })
}

/// Every storage the pickle refers to, keyed by storage key. One key used
/// with two dtypes or sizes is an error (the bytes would be read two ways).
pub fn storage_refs(p: &Pickle) -> Result<HashMap<String, StorageRef>> {
    let mut refs: HashMap<String, StorageRef> = HashMap::new();
    for object in &p.objects {
        if let Object::PersistentId(pid) = object {
            let mut found = storage_ref(p, *pid)?;
            found.view = None;
            match refs.get(&found.key) {
                Some(known) if *known != found => {
                    return Err(checkpoint_error(format!(
                        "storage {} is declared as {} x {} and as {} x {}",
                        found.key,
                        known.numel,
                        known.dtype.torch_name(),
                        found.numel,
                        found.dtype.torch_name()
                    )))
                }
                Some(_) => {}
                None => {
                    refs.insert(found.key.clone(), found);
                }
            }
        }
    }
    Ok(refs)
}

/// If `id` is a recorded tensor (or Parameter) rebuild, its spec.
pub fn tensor_spec(p: &Pickle, id: ObjId) -> Result<Option<TensorSpec>> {
    let Object::Call { func, args, .. } = p.get(id) else {
        return Ok(None);
    };
    let args = tuple(p, *args, "a rebuild call's arguments")?;
    let expect = |n: &[usize]| -> Result<()> {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(checkpoint_error(format!(
                "{func:?} called with {} arguments, expected {n:?}",
                args.len()
            )))
        }
    };
    match func {
        Global::RebuildTensorV2 | Global::RebuildTensor => {
            // v2: (storage, offset, size, stride, requires_grad, hooks[, metadata]).
            // v1: (storage, offset, size, stride).
            if *func == Global::RebuildTensorV2 {
                expect(&[6, 7])?;
            } else {
                expect(&[4])?;
            }
            let Object::PersistentId(pid) = p.get(args[0]) else {
                return Err(checkpoint_error(format!(
                    "a tensor's storage should be a persistent id, found {}",
                    p.describe(args[0])
                )));
            };
            let storage = storage_ref(p, *pid)?;
            let offset = non_negative(p, args[1], "a storage offset")?;
            let size = tuple(p, args[2], "a tensor size")?
                .iter()
                .map(|&d| non_negative(p, d, "a tensor size"))
                .collect::<Result<Vec<_>>>()?;
            let stride = tuple(p, args[3], "a tensor stride")?
                .iter()
                .map(|&d| non_negative(p, d, "a tensor stride"))
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(TensorSpec {
                storage,
                offset,
                size,
                stride,
            }))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            expect(if *func == Global::RebuildParameter {
                &[3]
            } else {
                &[4]
            })?;
            match p.get(args[0]) {
                Object::Call {
                    func: Global::RebuildTensorV2 | Global::RebuildTensor,
                    ..
                } => tensor_spec(p, args[0]),
                _ => Err(checkpoint_error(format!(
                    "a Parameter should wrap a tensor, found {}",
                    p.describe(args[0])
                ))),
            }
        }
        _ => Ok(None),
    }
}

/// Keys under which training scripts commonly nest the state_dict
/// (`torch.save({'epoch': e, 'state_dict': model.state_dict()})`).
const NESTED_STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// Named tensor specs in file order.
pub type Entries = Vec<(String, TensorSpec)>;

/// The named tensors of the checkpoint, in the file's order, and a note
/// when the state_dict was found nested inside a larger checkpoint dict.
pub fn state_dict_entries(p: &Pickle) -> Result<(Entries, Option<String>)> {
    let Object::Dict(top) = p.get(p.root) else {
        return Err(checkpoint_error(format!(
            "the checkpoint holds {}, not a dict of tensors (a state_dict)",
            p.describe(p.root)
        )));
    };
    if let Some(entries) = all_tensors(p, top)? {
        return Ok((entries, None));
    }
    for wanted in NESTED_STATE_DICT_KEYS {
        let nested = top
            .iter()
            .find(|(k, _)| matches!(p.get(*k), Object::Str(s) if s == wanted));
        if let Some(&(_, value)) = nested {
            if let Object::Dict(inner) = p.get(value) {
                if let Some(entries) = all_tensors(p, inner)? {
                    let rest: Vec<(ObjId, ObjId)> = top
                        .iter()
                        .filter(|(k, _)| !matches!(p.get(*k), Object::Str(s) if s == wanted))
                        .copied()
                        .collect();
                    let others = key_list(p, &rest);
                    return Ok((
                        entries,
                        Some(format!(
                            "read checkpoint['{wanted}']; the other top-level entries ({others}) are ignored"
                        )),
                    ));
                }
            }
        }
    }
    // Neither a state_dict nor a recognised wrapper: name the first
    // non-tensor so the user sees what the file holds.
    let (key, value) = top
        .iter()
        .find(|(_, v)| !matches!(tensor_spec(p, *v), Ok(Some(_))))
        .copied()
        .unwrap_or((p.root, p.root));
    Err(checkpoint_error(format!(
        "not a state_dict: entry {} is {}, not a tensor; top-level keys: {}. \
         A checkpoint that wraps its state_dict should keep it under one of {:?}",
        p.describe(key),
        p.describe(value),
        key_list(p, top),
        NESTED_STATE_DICT_KEYS
    )))
}

fn key_list(p: &Pickle, dict: &[(ObjId, ObjId)]) -> String {
    let mut names: Vec<String> = dict
        .iter()
        .take(8)
        .map(|(k, _)| match p.get(*k) {
            Object::Str(s) => format!("'{s}'"),
            _ => p.describe(*k),
        })
        .collect();
    if dict.len() > 8 {
        names.push(format!("... {} more", dict.len() - 8));
    }
    names.join(", ")
}

/// `Some(entries)` if every value of the dict is a tensor with a str key.
fn all_tensors(p: &Pickle, dict: &[(ObjId, ObjId)]) -> Result<Option<Entries>> {
    let mut entries = Vec::with_capacity(dict.len());
    for &(key, value) in dict {
        let Some(spec) = tensor_spec(p, value)? else {
            return Ok(None);
        };
        let name = str_of(p, key, "a state_dict key")?.to_string();
        entries.push((name, spec));
    }
    Ok(Some(entries))
}

/// Copies the tensor `spec` describes out of its storage's raw bytes
/// (`storage_bytes`: the whole record of `spec.storage.key`) into a
/// contiguous host tensor. Returns a note when the dtype changed.
pub fn materialize(
    name: &str,
    spec: &TensorSpec,
    storage_bytes: &[u8],
) -> Result<(HostTensor, Option<String>)> {
    let fail = |msg: String| checkpoint_error(format!("tensor {name}: {msg}"));
    let dtype = spec.storage.dtype;
    let element_size = dtype.element_size();
    let declared_bytes = spec
        .storage
        .numel
        .checked_mul(element_size)
        .ok_or_else(|| fail(format!("storage size {} overflows", spec.storage.numel)))?;
    if storage_bytes.len() < declared_bytes {
        return Err(fail(format!(
            "storage {} declares {} {} elements ({declared_bytes} bytes) but the file holds \
             only {} bytes for it; the file is truncated or corrupt",
            spec.storage.key,
            spec.storage.numel,
            dtype.torch_name(),
            storage_bytes.len()
        )));
    }
    // The elements this tensor may index: the whole storage, or a legacy view.
    let (first, available) = match spec.storage.view {
        None => (0, spec.storage.numel),
        Some((offset, count)) => {
            if offset
                .checked_add(count)
                .is_none_or(|end| end > spec.storage.numel)
            {
                return Err(fail(format!(
                    "storage view [{offset}, +{count}) lies outside storage {} of {} elements",
                    spec.storage.key, spec.storage.numel
                )));
            }
            (offset, count)
        }
    };
    let elements = &storage_bytes[first * element_size..(first + available) * element_size];

    if spec.size.len() != spec.stride.len() {
        return Err(fail(format!(
            "size {:?} and stride {:?} have different lengths",
            spec.size, spec.stride
        )));
    }
    let count = spec
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail(format!("size {:?} overflows", spec.size)))?;
    if count > 0 {
        // The largest element index the view touches must lie in the storage.
        let last = spec
            .size
            .iter()
            .zip(&spec.stride)
            .try_fold(spec.offset, |acc, (&d, &s)| {
                (d - 1)
                    .checked_mul(s)
                    .and_then(|step| acc.checked_add(step))
            });
        match last {
            Some(last) if last < available => {}
            _ => {
                return Err(fail(format!(
                    "offset {} with size {:?} and stride {:?} reaches past the end of storage {} \
                     ({available} elements)",
                    spec.offset, spec.size, spec.stride, spec.storage.key
                )))
            }
        }
        if count > available && count > MAX_BROADCAST_ELEMENTS {
            return Err(fail(format!(
                "a broadcast view of {count} elements over a storage of {available}; \
                 refusing to materialise more than {MAX_BROADCAST_ELEMENTS}"
            )));
        }
    } else if spec.offset > available {
        return Err(fail(format!(
            "offset {} lies past the end of storage {} ({available} elements)",
            spec.offset, spec.storage.key
        )));
    }

    let data = if dtype.is_float() {
        HostData::F32(gather(spec, count, |i| decode_float(elements, dtype, i)).map_err(fail)?)
    } else {
        HostData::I64(gather(spec, count, |i| decode_int(elements, dtype, i)).map_err(fail)?)
    };
    let note = match dtype {
        StorageDtype::F32 | StorageDtype::I64 => None,
        StorageDtype::F64 => Some(format!(
            "{name}: float64 -> float32 (rounded to nearest; precision reduced)"
        )),
        other if other.is_float() => {
            Some(format!("{name}: {} -> float32 (exact)", other.torch_name()))
        }
        other => Some(format!("{name}: {} -> int64 (exact)", other.torch_name())),
    };
    Ok((HostTensor::new(spec.size.clone(), data)?, note))
}

/// Visits the strided view's elements in row-major order. Every index was
/// bounds-checked by the caller (`offset + sum((size-1)*stride) < len`).
fn gather<T>(
    spec: &TensorSpec,
    count: usize,
    decode: impl Fn(usize) -> T,
) -> std::result::Result<Vec<T>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| format!("cannot allocate {count} elements"))?;
    if count == 0 {
        return Ok(out);
    }
    let ndim = spec.size.len();
    if ndim == 0 {
        out.push(decode(spec.offset));
        return Ok(out);
    }
    let (inner_size, inner_stride) = (spec.size[ndim - 1], spec.stride[ndim - 1]);
    let mut counter = vec![0usize; ndim - 1];
    let mut base = spec.offset;
    loop {
        out.extend((0..inner_size).map(|i| decode(base + i * inner_stride)));
        // Advance the outer dimensions like an odometer. `base` may step one
        // stride past the checked range just before it is wound back, hence
        // the wrapping arithmetic (a size-1 dimension's stride is unchecked).
        let mut dim = ndim - 1;
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            counter[dim] += 1;
            base = base.wrapping_add(spec.stride[dim]);
            if counter[dim] < spec.size[dim] {
                break;
            }
            base = base.wrapping_sub(spec.stride[dim].wrapping_mul(spec.size[dim]));
            counter[dim] = 0;
        }
    }
}

fn element<const N: usize>(bytes: &[u8], index: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[index * N..index * N + N]);
    out
}

/// Little-endian element `index` of a float storage, as f32. f16 and bf16
/// widen exactly; f64 rounds to nearest-even, as `tensor.float()` does.
fn decode_float(bytes: &[u8], dtype: StorageDtype, index: usize) -> f32 {
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes(element(bytes, index)),
        StorageDtype::F16 => half::f16::from_le_bytes(element(bytes, index)).to_f32(),
        StorageDtype::BF16 => half::bf16::from_le_bytes(element(bytes, index)).to_f32(),
        StorageDtype::F64 => f64::from_le_bytes(element(bytes, index)) as f32,
        _ => unreachable!("decode_float is only called for float dtypes"),
    }
}

/// Little-endian element `index` of an integer or bool storage, as i64.
fn decode_int(bytes: &[u8], dtype: StorageDtype, index: usize) -> i64 {
    match dtype {
        StorageDtype::I64 => i64::from_le_bytes(element(bytes, index)),
        StorageDtype::I32 => i32::from_le_bytes(element(bytes, index)).into(),
        StorageDtype::I16 => i16::from_le_bytes(element(bytes, index)).into(),
        StorageDtype::I8 => i8::from_le_bytes(element(bytes, index)).into(),
        StorageDtype::U8 => u8::from_le_bytes(element(bytes, index)).into(),
        // torch stores bools as one byte; any non-zero byte is true.
        StorageDtype::Bool => i64::from(element::<1>(bytes, index)[0] != 0),
        _ => unreachable!("decode_int is only called for integer dtypes"),
    }
}
