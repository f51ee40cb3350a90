//! The pre-1.6 format (`torch.save(..., _use_new_zipfile_serialization=False)`
//! and old model-zoo files): five pickles back to back, then raw storages.
//!
//! 1. the magic number 0x1950a86a20f9469cfc6c,
//! 2. the protocol version (1001),
//! 3. `sys_info`: `{'protocol_version', 'little_endian', 'type_sizes'}`,
//! 4. the object itself, whose tensors name storages by persistent id,
//! 5. the list of storage keys, in the order their data follows;
//!
//! then for each key: the element count as a little-endian u64 and
//! `count * element_size` bytes. The element size comes from the storage
//! type the object pickle gave that key, so the object pickle is read first.

use std::collections::HashMap;

use super::checkpoint_error;
use super::pickle::{unpickle, Object, Pickle};
use super::rebuild::storage_refs;
use crate::error::Result;

const MAGIC_NUMBER: i128 = 0x1950_a86a_20f9_469c_fc6c;
const PROTOCOL_VERSION: i128 = 1001;

/// The object pickle and the raw bytes of each storage, by key.
pub fn read(bytes: &[u8]) -> Result<(Pickle, HashMap<String, &[u8]>)> {
    let mut at = 0;
    let mut next_pickle = |what: &str| -> Result<Pickle> {
        let (p, used) = unpickle(&bytes[at..])
            .map_err(|e| checkpoint_error(format!("legacy format, {what}: {e}")))?;
        at += used;
        Ok(p)
    };

    let magic = next_pickle("magic number")?;
    if magic.get(magic.root) != &Object::Int(MAGIC_NUMBER) {
        return Err(checkpoint_error(
            "not a PyTorch checkpoint: a pickle, but without torch.save's magic number",
        ));
    }
    let version = next_pickle("protocol version")?;
    if version.get(version.root) != &Object::Int(PROTOCOL_VERSION) {
        return Err(checkpoint_error(format!(
            "legacy protocol version {} is not supported (expected 1001)",
            version.describe(version.root)
        )));
    }
    let sys_info = next_pickle("sys_info")?;
    check_little_endian(&sys_info)?;
    let object = next_pickle("the saved object")?;
    let keys = next_pickle("the storage key list")?;

    let Object::List(key_ids) = keys.get(keys.root) else {
        return Err(checkpoint_error(
            "legacy format: the storage key list is not a list",
        ));
    };
    let declared = storage_refs(&object)?;
    let mut storages = HashMap::new();
    for &key_id in key_ids {
        let Object::Str(key) = keys.get(key_id) else {
            return Err(checkpoint_error(
                "legacy format: a storage key is not a str",
            ));
        };
        let Some(storage) = declared.get(key) else {
            return Err(checkpoint_error(format!(
                "legacy format: storage {key} has data but no tensor declares its type"
            )));
        };
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| truncated(key, bytes.len()))?;
        let mut count = [0u8; 8];
        count.copy_from_slice(header);
        let count = u64::from_le_bytes(count);
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(storage.dtype.element_size()))
            .ok_or_else(|| checkpoint_error(format!("storage {key}: {count} elements overflow")))?;
        let start = at + 8;
        let data = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| truncated(key, bytes.len()))?;
        storages.insert(key.clone(), data);
        at = start + len;
    }
    Ok((object, storages))
}

fn truncated(key: &str, file_len: usize) -> crate::error::Error {
    checkpoint_error(format!(
        "legacy format: the data of storage {key} runs past the end of the file ({file_len} bytes); \
         the file is truncated"
    ))
}

fn check_little_endian(sys_info: &Pickle) -> Result<()> {
    let Object::Dict(items) = sys_info.get(sys_info.root) else {
        return Err(checkpoint_error("legacy format: sys_info is not a dict"));
    };
    for &(k, v) in items {
        if sys_info.get(k) == &Object::Str("little_endian".into())
            && sys_info.get(v) == &Object::Bool(false)
        {
            return Err(checkpoint_error(
                "this checkpoint was written on a big-endian machine; only little-endian \
                 checkpoints are supported",
            ));
        }
    }
    Ok(())
}
