//! Checkpoints: the model's `state_dict` under torchvision's names (what
//! `torchvision.models.resnet18(num_classes=N).load_state_dict(...,
//! strict=True)` accepts), and beside it `NAME.train-state.safetensors`
//! with what `--resume` needs besides the weights: the epochs done and the
//! SGD momentum buffers (`momentum.<parameter name>`).

use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuStorage;
use crate::error::{Error, Result};
use crate::io::{self, HostTensor, StateDict};
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

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`, so an interrupted run never leaves a truncated checkpoint.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |p: &Path, source| Error::Io {
        path: p.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

/// Saves the weights to `out` and the training state to its sidecar.
pub fn save(model: &ResNet, sgd: &Sgd, epochs_done: usize, out: &Path) -> Result<()> {
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
    // The sidecar first: a checkpoint is never newer than its state.
    write_atomic(&sidecar_path(out), &io::safetensors::to_bytes(&state)?)?;
    write_atomic(out, &io::safetensors::to_bytes(&weights)?)
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
        return Err(Error::WeightsFile {
            path: path.display().to_string(),
            msg: format!(
                "missing: --resume needs the training state written beside {} by an earlier `frostgrad train --out`",
                out.display()
            ),
        });
    }
    let mut state = io::safetensors::load(&path)?;
    let bad = |msg: String| Error::WeightsFile {
        path: path.display().to_string(),
        msg,
    };
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
