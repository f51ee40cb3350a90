//! `--weights` for every command: a safetensors file or a PyTorch `.pth`
//! checkpoint, with `--strip-prefix` for wrapped models and `--num-classes`
//! for a new classifier head.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{cut_list, cut_text, Error, Result};
use crate::io::files::{self, Role};
use crate::io::format::{self, Format};
use crate::io::{self, pth, StateDict};
use crate::nn::{Linear, Module, ResNet};

/// The options every command that loads weights shares.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct WeightsArgs {
    /// torchvision ResNet-18 state_dict: safetensors, or a PyTorch .pth / .pt
    /// checkpoint (zip or legacy format).
    #[arg(long, value_name = "W.safetensors|W.pth")]
    pub weights: PathBuf,
    /// Remove this prefix from every key that has it (`module.` from
    /// DataParallel, `backbone.` from a wrapper class).
    #[arg(long, value_name = "P")]
    pub strip_prefix: Option<String>,
    /// Replace the checkpoint's `fc` by a fresh, trainable Linear(512, N)
    /// (PyTorch's default initialisation) when its class count differs:
    /// `model.fc = nn.Linear(512, N)`.
    #[arg(long, value_name = "N", value_parser = crate::cli::parse_class_count)]
    pub num_classes: Option<usize>,
    /// Seed for the fresh `fc` of `--num-classes`.
    #[arg(long, value_name = "SEED", default_value_t = 0, value_parser = crate::cli::parse_count_u64)]
    pub fc_seed: u64,
}

/// Prints the loader's notes, one line per kind of change (an fp16
/// checkpoint would otherwise print 122 identical lines).
fn report_notes(path: &Path, notes: &[String]) {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for note in notes {
        // "name: float16 -> float32 (exact)" groups by what follows the name.
        let kind = match note.split_once(": ") {
            Some((_, change)) if change.contains(" -> ") => change.to_string(),
            _ => note.clone(),
        };
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((kind, 1)),
        }
    }
    for (kind, count) in kinds {
        if kind.contains(" -> ") {
            eprintln!("note: {}: {count} tensors {kind}", path.display());
        } else {
            eprintln!("note: {}: {kind}", path.display());
        }
    }
}

/// Reads `path` (either format, told apart by structure: see
/// [`crate::io::format`]), prints what changed on the way in, and strips the
/// prefix if one was given. Errors name the file by `role`.
pub fn read_state_dict(path: &Path, strip_prefix: Option<&str>, role: Role) -> Result<StateDict> {
    let bytes = files::read(path, role)?;
    let state = match format::detect(&bytes) {
        Format::Safetensors { .. } => io::safetensors::read_bytes_as(&bytes, path, role)?,
        Format::Zip | Format::Pickle { .. } | Format::TextPickle | Format::Tar => {
            let checkpoint = pth::read_pth(&bytes).map_err(|e| {
                role.error(
                    path,
                    match e {
                        Error::Checkpoint(msg) => msg,
                        other => other.to_string(),
                    },
                )
            })?;
            report_notes(path, &checkpoint.notes);
            checkpoint.state_dict
        }
        other => {
            return Err(role.error(
                path,
                format!(
                    "neither a safetensors file nor a PyTorch checkpoint: {}",
                    other.describe(&bytes)
                ),
            ))
        }
    };
    match strip_prefix {
        Some(prefix) => {
            if prefix.is_empty() || !state.names().any(|n| n.starts_with(prefix)) {
                let first: Vec<String> = state
                    .names()
                    .map(|n| format!("`{}`", cut_text(n, 80)))
                    .collect();
                return Err(role.error(
                    path,
                    format!(
                        "--strip-prefix `{}` would strip nothing: no key starts with it \
                         (the keys are {})",
                        cut_text(prefix, 80),
                        if first.is_empty() {
                            "none".to_string()
                        } else {
                            cut_list(&first, 4, ", ")
                        }
                    ),
                ));
            }
            Ok(state.strip_prefix(prefix))
        }
        None => Ok(state),
    }
}

/// The depth of a torchvision ResNet whose keys these are, when it is not
/// ResNet-18: blocks per layer from the `layerL.B.` indices, and bottleneck
/// blocks (ResNet-50 and deeper) from their `conv3`.
fn other_resnet(state: &StateDict) -> Option<String> {
    let mut blocks = [0usize; 4];
    let mut bottleneck = false;
    for name in state.names() {
        for (l, count) in blocks.iter_mut().enumerate() {
            let Some(rest) = name.strip_prefix(&format!("layer{}.", l + 1)) else {
                continue;
            };
            if let Some((block, tail)) = rest.split_once('.') {
                if let Ok(b) = block.parse::<usize>() {
                    *count = (*count).max(b.saturating_add(1));
                    bottleneck |= tail.starts_with("conv3.");
                }
            }
        }
    }
    let kind = if bottleneck { "bottleneck" } else { "basic" };
    let per_layer = format!(
        "{}, {}, {}, {} {kind} blocks per layer",
        blocks[0], blocks[1], blocks[2], blocks[3]
    );
    let name = match (bottleneck, blocks) {
        (false, [2, 2, 2, 2]) | (_, [0, 0, 0, 0]) => return None,
        (false, [3, 4, 6, 3]) => "a ResNet-34",
        (true, [3, 4, 6, 3]) => "a ResNet-50 (or ResNeXt-50 / Wide ResNet-50)",
        (true, [3, 4, 23, 3]) => "a ResNet-101 (or ResNeXt-101 / Wide ResNet-101)",
        (true, [3, 8, 36, 3]) => "a ResNet-152",
        _ => "a ResNet-like network",
    };
    Some(format!(
        "{name} state dict ({per_layer}), not a ResNet-18 (2, 2, 2, 2 basic blocks): \
         frostgrad runs torchvision's ResNet-18 only; use resnet18 weights"
    ))
}

/// The ResNet-18 key names the first keys of a checkpoint are compared with.
const EXPECTED_FIRST_KEYS: [&str; 6] = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
];

/// A clear error when the checkpoint's names are not ResNet-18's at all:
/// what was expected, the first keys found, and the prefix to strip when
/// they all share one.
fn check_resnet_keys(path: &Path, state: &StateDict) -> Result<()> {
    if let Some(other) = other_resnet(state) {
        return Err(Role::WEIGHTS.error(path, other));
    }
    if state.contains("conv1.weight") {
        return Ok(());
    }
    let found: Vec<String> = state.names().take(6).map(|n| cut_text(n, 80)).collect();
    let hint = state
        .names()
        .find_map(|n| n.strip_suffix("conv1.weight").filter(|p| p.ends_with('.')))
        .filter(|prefix| state.names().all(|n| n.starts_with(prefix)))
        .map(|prefix| format!(" All keys start with `{prefix}`: pass --strip-prefix {prefix}"))
        .unwrap_or_default();
    Err(Role::WEIGHTS.error(
        path,
        format!(
            "not a ResNet-18 state dict: expected {} ... layer4.1.bn2.running_var, \
             fc.weight, fc.bias (torchvision's 122 keys); the first keys found are {} \
             ({} in the file).{hint}",
            EXPECTED_FIRST_KEYS.join(", "),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            },
            state.len()
        ),
    ))
}

/// Builds the ResNet-18 the options describe and says what was not loaded.
pub fn load_resnet18(args: &WeightsArgs) -> Result<ResNet> {
    let path = &args.weights;
    let mut state = read_state_dict(path, args.strip_prefix.as_deref(), Role::WEIGHTS)?;
    check_resnet_keys(path, &state)?;
    if let Some(classes) = args.num_classes {
        let current = state.get("fc.weight").map(|w| w.shape.clone());
        if current.as_deref().and_then(|s| s.first()) != Some(&classes) {
            // Exactly `model.fc = nn.Linear(512, N)`: a fresh head with
            // PyTorch's initialisation takes the place of the file's.
            let in_features = current
                .as_ref()
                .and_then(|s| s.get(1))
                .copied()
                .unwrap_or(512);
            let fc = Linear::new(
                in_features,
                classes,
                &mut StdRng::seed_from_u64(args.fc_seed),
            )
            .map_err(|e| {
                e.named(format!(
                    "the weight of the new fc, Linear({in_features}, {classes}) \
                     (--num-classes {classes})"
                ))
            })?;
            let mut not_loaded = Vec::new();
            for (name, fresh) in fc.state_dict()? {
                let key = format!("fc.{name}");
                if let Some(old) = state.get(&key) {
                    not_loaded.push(format!("{key} {:?}", old.shape));
                }
                state.insert(key, fresh);
            }
            let what = if not_loaded.is_empty() {
                "no fc in the file".to_string()
            } else {
                format!("not loaded: {}", not_loaded.join(", "))
            };
            eprintln!(
                "note: {}: {what} (replaced by a fresh Linear({in_features}, {classes}))",
                path.display()
            );
        }
    }
    ResNet::resnet18_from_state_dict(&state).map_err(|e| match e {
        Error::StateDict(msg) => Role::WEIGHTS.error(path, msg),
        other => other,
    })
}
