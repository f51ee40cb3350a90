//! `.pth` checkpoints through the CLI: `frostgrad convert`, `step --weights
//! X.pth` (with `--strip-prefix` and `--num-classes`), and the errors for a
//! wrapped or truncated checkpoint.
//!
//! A full ResNet-18 checkpoint is 45 MB, too big to commit, and CI has no
//! PyTorch, so the test writes one itself in torch.save's legacy format
//! (`write_legacy_pth` below, byte for byte what PyTorch 2.9 writes for an
//! f32/i64 state_dict, minus the optional sys_info entries). That the reader
//! matches PyTorch on files PyTorch wrote is tests/pth.rs's job; this file
//! checks the commands around it.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/scratch.rs"]
mod scratch;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cli::{frostgrad, resnet18_state, stderr, step_args};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{safetensors, HostTensor, StateDict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scratch::scratch_dir;

fn pickle_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn pickle_int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend(i32::try_from(v).unwrap().to_le_bytes());
}

/// torch.save(state, f, _use_new_zipfile_serialization=False) for f32/i64
/// tensors: magic, protocol 1001, sys_info, the OrderedDict of
/// `_rebuild_tensor_v2` calls, the storage keys, then each storage.
fn write_legacy_pth(state: &StateDict, prefix: &str, path: &Path) {
    let mut out = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    out.extend(b"\x80\x02M\xe9\x03.");
    out.extend(b"\x80\x02}(");
    pickle_str(&mut out, "little_endian");
    out.extend(b"\x88u.");
    out.extend(b"\x80\x02ccollections\nOrderedDict\n)R(");
    for (i, (name, t)) in state.iter().enumerate() {
        let storage_class = match t.data {
            CpuStorage::F32(_) => "FloatStorage",
            CpuStorage::I64(_) => "LongStorage",
        };
        pickle_str(&mut out, &format!("{prefix}{name}"));
        out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        pickle_str(&mut out, "storage");
        out.extend(format!("ctorch\n{storage_class}\n").as_bytes());
        pickle_str(&mut out, &i.to_string());
        pickle_str(&mut out, "cpu");
        let numel: usize = t.shape.iter().product();
        pickle_int(&mut out, numel);
        out.extend(b"NtQ");
        pickle_int(&mut out, 0);
        out.push(b'(');
        for &d in &t.shape {
            pickle_int(&mut out, d);
        }
        out.extend(b"t(");
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1];
        }
        for s in stride {
            pickle_int(&mut out, s);
        }
        out.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    out.extend(b"u.");
    out.extend(b"\x80\x02](");
    for i in 0..state.len() {
        pickle_str(&mut out, &i.to_string());
    }
    out.extend(b"e.");
    for (_, t) in state.iter() {
        let numel: usize = t.shape.iter().product();
        out.extend((numel as u64).to_le_bytes());
        match &t.data {
            CpuStorage::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            CpuStorage::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        }
    }
    std::fs::write(path, out).unwrap();
}

/// A seeded 10-class ResNet-18 (with non-trivial BN buffers), written as
/// safetensors and as a `module.`-prefixed legacy .pth.
struct Weights {
    state: StateDict,
    safetensors: PathBuf,
    pth: PathBuf,
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        let mut state = resnet18_state(10, 77);
        let mut rng = StdRng::seed_from_u64(78);
        let names: Vec<String> = state.names().map(str::to_string).collect();
        for name in names {
            if name.ends_with("running_var") || name.ends_with("running_mean") {
                let t = state.get(&name).unwrap();
                let n = t.shape.iter().product();
                let v = (0..n).map(|_| rng.random_range(0.5..1.5)).collect();
                state.insert(
                    name,
                    HostTensor::new(t.shape.clone(), CpuStorage::F32(v)).unwrap(),
                );
            }
        }
        let dir = scratch_dir("shared");
        let (st, pth) = (dir.join("w.safetensors"), dir.join("w_module.pth"));
        safetensors::save(&state, &st).unwrap();
        write_legacy_pth(&state, "module.", &pth);
        Weights {
            state,
            safetensors: st,
            pth,
        }
    })
}

fn assert_same_tensors(a: &StateDict, b: &StateDict, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: tensor counts differ");
    for (name, t) in a.iter() {
        let other = b
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} missing"));
        assert!(t == other, "{what}: {name} differs");
    }
}

fn step(dir: &Path, weights: &Path, out_name: &str, extra: &[&str]) -> (StateDict, String) {
    let batch = write_batch(dir);
    let out = dir.join(out_name);
    let mut args = step_args(
        weights.to_str().unwrap(),
        batch.to_str().unwrap(),
        "layer4.*,fc.*",
        out.to_str().unwrap(),
    );
    args.extend_from_slice(&["--momentum", "0.9"]);
    args.extend_from_slice(extra);
    let o = frostgrad(&args);
    assert!(o.status.success(), "step failed: {}", stderr(&o));
    (safetensors::load(&out).unwrap(), stderr(&o))
}

/// Two random 32x32 images (seed 5) labelled 1 and 4.
fn write_batch(dir: &Path) -> PathBuf {
    cli::tiny_batch(dir, 5, [1, 4])
}

#[test]
fn convert_yields_exactly_the_saved_tensors() {
    let w = weights();
    let dir = scratch_dir("convert");
    let out = dir.join("converted.safetensors");
    let o = frostgrad(&[
        "convert",
        w.pth.to_str().unwrap(),
        out.to_str().unwrap(),
        "--strip-prefix",
        "module.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote 122 tensors"));
    assert_same_tensors(&safetensors::load(&out).unwrap(), &w.state, "convert");
}

#[test]
fn step_from_pth_equals_step_from_safetensors() {
    let w = weights();
    let dir = scratch_dir("step");
    let (from_st, _) = step(&dir, &w.safetensors, "st.safetensors", &[]);
    let (from_pth, _) = step(
        &dir,
        &w.pth,
        "pth.safetensors",
        &["--strip-prefix", "module."],
    );
    assert!(from_st.contains("grad.fc.weight") && from_st.contains("loss"));
    assert_same_tensors(&from_pth, &from_st, "step outputs");
}

#[test]
fn num_classes_replaces_fc_with_a_fresh_trainable_head() {
    let w = weights();
    let dir = scratch_dir("num-classes");
    let (out, err) = step(
        &dir,
        &w.pth,
        "five.safetensors",
        &["--strip-prefix", "module.", "--num-classes", "5"],
    );
    assert!(
        err.contains("not loaded: fc.weight [10, 512], fc.bias [10]"),
        "{err}"
    );
    assert!(err.contains("fresh Linear(512, 5)"), "{err}");
    assert_eq!(out.get("logits").unwrap().shape, vec![2, 5]);
    assert_eq!(out.get("grad.fc.weight").unwrap().shape, vec![5, 512]);
    // The backbone came from the file: a frozen layer is unchanged by the step.
    assert!(out.get("param.conv1.weight").unwrap() == w.state.get("conv1.weight").unwrap());
}

#[test]
fn a_prefixed_checkpoint_without_strip_prefix_says_what_to_do() {
    let w = weights();
    let dir = scratch_dir("mismatch");
    let batch = write_batch(&dir);
    let out = dir.join("o.safetensors");
    let o = frostgrad(&step_args(
        w.pth.to_str().unwrap(),
        batch.to_str().unwrap(),
        "fc.*",
        out.to_str().unwrap(),
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    for part in [
        "expected conv1.weight, bn1.weight",
        "first keys found are module.conv1.weight",
        "--strip-prefix module.",
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
}

#[test]
fn a_truncated_checkpoint_is_a_clear_error_not_a_panic() {
    let w = weights();
    let dir = scratch_dir("truncated");
    let bytes = std::fs::read(&w.pth).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("o.safetensors");
    let o = frostgrad(&["convert", cut.to_str().unwrap(), out.to_str().unwrap()]);
    // 1 is the CLI's error exit; a panic would be 101.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: input checkpoint") && err.contains("truncated"),
        "{err}"
    );
    assert!(!out.exists());
}
