//! PyTorch checkpoints (`.pth`, `.pt`) read natively, without Python and
//! without executing anything.
//!
//! Two container formats exist, and [`read_pth`] tells them apart by their
//! first bytes:
//! - zip (`torch.save` since PyTorch 1.6): `<root>/data.pkl` is the pickled
//!   object, `<root>/data/<key>` the raw bytes of each storage,
//!   `<root>/byteorder` says `little`; see `zip` and the notes there;
//! - legacy (`_use_new_zipfile_serialization=False`, old model-zoo files):
//!   several pickles followed by the storages; see `legacy`.
//!
//! Both hold a pickle, read by [`pickle`] (an allowlist of globals, no code
//! run: the promise of `torch.load(weights_only=True)`), whose tensors
//! `rebuild` turns into contiguous host tensors after checking every
//! offset, size and stride against the bytes present. Floats become f32 and
//! integers i64; each conversion is reported in [`PthCheckpoint::notes`].

mod globals;
mod legacy;
pub mod pickle;
mod rebuild;
mod zip;

use std::collections::HashMap;
use std::path::Path;

pub use globals::StorageDtype;
pub use rebuild::MAX_BROADCAST_ELEMENTS;

use crate::error::{Error, Result};
use crate::io::files::{self, Role};
use crate::io::format::{self, Format};
use crate::io::StateDict;

/// Which container a checkpoint came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PthFormat {
    Zip,
    Legacy,
}

/// A loaded checkpoint.
#[derive(Clone, Debug)]
pub struct PthCheckpoint {
    /// The tensors, under the names and in the order the file has them.
    pub state_dict: StateDict,
    /// What changed on the way in, one line each: a dtype conversion
    /// (`layer1.0.conv1.weight: float16 -> float32 (exact)`), or the
    /// nested key a wrapped state_dict was read from.
    pub notes: Vec<String>,
    pub format: PthFormat,
}

pub(crate) fn checkpoint_error(msg: impl Into<String>) -> Error {
    Error::Checkpoint(msg.into())
}

/// Reads a checkpoint file. Errors carry the path.
pub fn load_pth(path: &Path) -> Result<PthCheckpoint> {
    load_pth_as(path, Role::FILE)
}

/// [`load_pth`], with errors naming the file's role.
pub fn load_pth_as(path: &Path, role: Role) -> Result<PthCheckpoint> {
    let bytes = files::read(path, role)?;
    read_pth(&bytes).map_err(|e| {
        role.error(
            path,
            match e {
                Error::Checkpoint(msg) => msg,
                other => other.to_string(),
            },
        )
    })
}

/// Reads a checkpoint held in memory. The container is recognised by its
/// structure ([`crate::io::format`]), never by one byte.
pub fn read_pth(bytes: &[u8]) -> Result<PthCheckpoint> {
    match format::detect(bytes) {
        Format::Zip => read_zip(bytes),
        Format::Pickle { .. } => {
            let (pickle, storages) = legacy::read(bytes)?;
            build(&pickle, &storages, bytes.len(), PthFormat::Legacy)
        }
        Format::Tar => Err(checkpoint_error(
            "a tar archive: the format of PyTorch before 0.1.10 is not supported; \
             load and re-save it with a newer PyTorch",
        )),
        Format::TextPickle => Err(checkpoint_error(
            "not a PyTorch checkpoint frostgrad reads: a pickle of protocol 0 or 1 (text \
             opcodes); torch.save writes protocol 2 by default: re-save it with \
             torch.save(model.state_dict(), path)",
        )),
        Format::Safetensors { .. } => Err(checkpoint_error(
            "not a PyTorch checkpoint: a safetensors file (read it as safetensors)",
        )),
        other => Err(checkpoint_error(format!(
            "not a PyTorch checkpoint: {}",
            other.describe(bytes)
        ))),
    }
}

fn read_zip(bytes: &[u8]) -> Result<PthCheckpoint> {
    let archive = zip::ZipArchive::parse(bytes)?;
    // The root folder is named after the file torch.save first wrote to
    // ("archive" in recent versions), so find it from data.pkl.
    let roots: Vec<&str> = archive
        .names()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|root| !root.contains('/'))
        .collect();
    let root = match roots.as_slice() {
        [root] => *root,
        [] => {
            let names: Vec<&str> = archive.names().take(5).collect();
            return Err(checkpoint_error(format!(
                "a zip archive without <root>/data.pkl, so not written by torch.save \
                 (first entries: {names:?})"
            )));
        }
        many => {
            return Err(checkpoint_error(format!(
                "a zip archive with several data.pkl files (roots {many:?})"
            )))
        }
    };
    if let Some(order) = archive.get(&format!("{root}/byteorder")) {
        if order != b"little" {
            return Err(checkpoint_error(format!(
                "byte order {:?}: only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let pickle_bytes = archive
        .get(&format!("{root}/data.pkl"))
        .ok_or_else(|| checkpoint_error("data.pkl vanished"))?;
    let (pickle, _) = pickle::unpickle(pickle_bytes)?;
    let prefix = format!("{root}/data/");
    let storages: HashMap<String, &[u8]> = archive
        .names()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter_map(|key| {
            archive
                .get(&format!("{prefix}{key}"))
                .map(|b| (key.to_string(), b))
        })
        .collect();
    build(&pickle, &storages, bytes.len(), PthFormat::Zip)
}

/// More tensors than any model this engine runs has (ResNet-18: 122). The
/// cap keeps a hostile file of a million tiny entries from costing minutes.
pub const MAX_TENSORS: usize = 20_000;

/// Materialises every tensor of the state_dict found in `pickle`.
///
/// Several names may share one storage, so the output can be larger than
/// the file; but a small file naming one big broadcast view a thousand
/// times must not expand to gigabytes. The total is capped at
/// `8 x file bytes + MAX_BROADCAST_ELEMENTS` elements: a real checkpoint
/// (4 bytes an element, a few tied weights at most) stays far below it.
fn build(
    pickle: &pickle::Pickle,
    storages: &HashMap<String, &[u8]>,
    file_len: usize,
    format: PthFormat,
) -> Result<PthCheckpoint> {
    let (entries, wrapper_note) = rebuild::state_dict_entries(pickle)?;
    if entries.len() > MAX_TENSORS {
        return Err(checkpoint_error(format!(
            "{} tensors; more than {MAX_TENSORS} is refused",
            entries.len()
        )));
    }
    let budget = file_len
        .saturating_mul(8)
        .saturating_add(MAX_BROADCAST_ELEMENTS);
    let mut total_elements = 0usize;
    let mut notes: Vec<String> = wrapper_note.into_iter().collect();
    let mut state_dict = StateDict::new();
    for (name, spec) in entries {
        let bytes = storages.get(&spec.storage.key).ok_or_else(|| {
            checkpoint_error(format!(
                "tensor {name}: its storage {} is missing from the file",
                spec.storage.key
            ))
        })?;
        let (tensor, note) = rebuild::materialize(&name, &spec, bytes)?;
        total_elements = total_elements
            .checked_add(tensor.shape.iter().product())
            .filter(|&t| t <= budget)
            .ok_or_else(|| {
                checkpoint_error(format!(
                    "tensor {name}: the tensors would expand to more than {budget} elements, \
                     far more than a {file_len}-byte file holds (one storage reused under \
                     many names?)"
                ))
            })?;
        notes.extend(note);
        if state_dict.contains(&name) {
            return Err(checkpoint_error(format!("key {name} appears twice")));
        }
        state_dict.insert(name, tensor);
    }
    Ok(PthCheckpoint {
        state_dict,
        notes,
        format,
    })
}
