//! Checkpoints: the model's `state_dict` under torchvision's names (what
//! `torchvision.models.resnet18(num_classes=N).load_state_dict(...,
//! strict=True)` accepts), and beside it `NAME.train-state.safetensors`
//! with what `--resume` needs besides the weights: the epochs done and the
//! SGD momentum buffers (`momentum.<parameter name>`).

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuStorage;
use crate::core_types::Role;
use crate::error::{Error, Result};
use crate::io::{self, files, HostTensor, StateDict};
use crate::nn::{Module, ResNet};
use crate::optim::Sgd;

/// `ckpt.safetensors` -> `ckpt.train-state.safetensors`.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.train-state.safetensors"))
}

/// The role of the sidecar in error messages.
pub const STATE_ROLE: Role = Role::new("training state", Some("--resume"));

/// The bytes of the checkpoint and of its sidecar, for the caller to write
/// together (`Outputs::write_all`, all or nothing).
pub fn encode(model: &ResNet, sgd: &Sgd, epochs_done: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let weights = model.state_dict()?;
    let mut state = StateDict::new();
    state.insert(
        "epoch",
        HostTensor::new(vec![], CpuStorage::I64(vec![epochs_done as i64]))?,
    );
    for (i, (name, _)) in model.named_parameters().iter().enumerate() {
        if let Some(buffer) = sgd.momentum_buffer(i) {
            state.insert(format!("momentum.{name}"), HostTensor::from_tensor(buffer)?);
        }
    }
    Ok((
        io::safetensors::to_bytes(&weights)?,
        io::safetensors::to_bytes(&state)?,
    ))
}

/// Saves the weights to `out` and the training state to its sidecar (for
/// library callers; each file is written atomically, the sidecar first so
/// a checkpoint is never newer than its state).
pub fn save(model: &ResNet, sgd: &Sgd, epochs_done: usize, out: &Path) -> Result<()> {
    let (weights, state) = encode(model, sgd, epochs_done)?;
    files::write_atomic(&sidecar_path(out), STATE_ROLE, &state)?;
    files::write_atomic(out, Role::OUTPUT, &weights)
}

/// What `--resume` restores besides the weights.
pub struct TrainState {
    pub epochs_done: usize,
    pub momentum: StateDict,
}

/// Reads the sidecar of checkpoint `out`.
pub fn load_state(out: &Path) -> Result<TrainState> {
    let path = sidecar_path(out);
    if !path.exists() {
        return Err(STATE_ROLE.error(
            &path,
            format!(
                "missing: --resume needs the training state written beside {} by an earlier `frostgrad train --out`",
                out.display()
            ),
        ));
    }
    let bytes = files::read(&path, STATE_ROLE)?;
    let mut state = io::safetensors::read_bytes_as(&bytes, &path, STATE_ROLE)?;
    let bad = |msg: String| STATE_ROLE.error(&path, msg);
    let epochs_done = match state.remove("epoch") {
        Some(HostTensor {
            data: CpuStorage::I64(v),
            ..
        }) if v.len() == 1 && v[0] >= 0 => v[0] as usize,
        _ => return Err(bad("no valid `epoch` entry".into())),
    };
    let mut momentum = StateDict::new();
    for (name, t) in state.iter() {
        let Some(param) = name.strip_prefix("momentum.") else {
            return Err(bad(format!("unexpected entry `{name}`")));
        };
        momentum.insert(param, t.clone());
    }
    Ok(TrainState {
        epochs_done,
        momentum,
    })
}

/// Puts the saved momentum buffers back into `sgd` (built over
/// `model.parameters()`). A buffer for a parameter that is not trainable
/// now, or of the wrong shape, is an error: the run would not continue the
/// one that was saved.
pub fn restore_momentum(model: &ResNet, sgd: &mut Sgd, momentum: &StateDict) -> Result<()> {
    let params = model.named_parameters();
    for (name, t) in momentum.iter() {
        let Some(i) = params.iter().position(|(n, _)| n == name) else {
            return Err(Error::StateDict(format!(
                "the training state has momentum for `{name}`, which is not a parameter"
            )));
        };
        if !params[i].1.requires_grad() {
            return Err(Error::StateDict(format!(
                "the training state has momentum for `{name}`, which --trainable now freezes: resume with the same --trainable"
            )));
        }
        sgd.set_momentum_buffer(i, t.to_tensor(params[i].1.device())?)?;
    }
    Ok(())
}
