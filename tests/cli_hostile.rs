//! The command line against hostile and ordinary mistakes (issue 10): every
//! case asserts the exit status, the message, and that no input and no
//! earlier output changed (and that no temporary file was left behind).
//!
//! - valid files are not refused: safetensors whose header length ends in
//!   0x80 (the pickle PROTO byte) load in `step`, `convert` and `bench`;
//! - an input is never an output, however the path is spelt (relative, `./`,
//!   `../dir/`, absolute, symlink, hard link), in every command;
//! - outputs are checked writable before the work and written atomically:
//!   a file-size limit mid-write leaves the previous output intact;
//! - files that are nothing frostgrad reads say what they are, by role.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/scratch.rs"]
mod scratch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cli::{frostgrad_in, host, resnet18_state, stderr};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{safetensors, StateDict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scratch::scratch_dir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

/// A seeded 10-class ResNet-18 state dict, in memory.
fn resnet_state() -> &'static StateDict {
    static STATE: OnceLock<StateDict> = OnceLock::new();
    STATE.get_or_init(|| resnet18_state(10, 10))
}

/// `state` written by the safetensors crate with `__metadata__` padded
/// until the 8-byte header length has the low byte `low` (0x80: the first
/// byte is the pickle PROTO opcode). `skip` picks a later such length, so
/// the tests see several header lengths, not one.
fn safetensors_with_low_byte(state: &StateDict, low: u8, skip: usize) -> Vec<u8> {
    let encoded: Vec<(String, Vec<usize>, safetensors_crate::Dtype, Vec<u8>)> = state
        .iter()
        .map(|(name, t)| match &t.data {
            CpuStorage::F32(v) => (
                name.to_string(),
                t.shape.clone(),
                safetensors_crate::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            CpuStorage::I64(v) => (
                name.to_string(),
                t.shape.clone(),
                safetensors_crate::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let mut found = 0;
    for pad in 0..4096 {
        let views: Vec<(&str, safetensors_crate::tensor::TensorView<'_>)> = encoded
            .iter()
            .map(|(n, s, d, b)| {
                (
                    n.as_str(),
                    safetensors_crate::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let metadata = Some(std::collections::HashMap::from([(
            "pad".to_string(),
            "x".repeat(pad),
        )]));
        let bytes = safetensors_crate::tensor::serialize(views, metadata).unwrap();
        if bytes[0] == low {
            if found == skip {
                return bytes;
            }
            found += 1;
        }
    }
    panic!("no padding gives a header length ending in {low:#x}");
}

mod safetensors_crate {
    pub use ::safetensors::tensor;
    pub use ::safetensors::Dtype;
}

/// `dir/batch.safetensors`: two random 32x32 images, labels 1 and 8.
fn write_batch(dir: &Path) -> PathBuf {
    cli::tiny_batch(dir, 3, [1, 8])
}

/// A fresh scratch folder `test` holding `batch.safetensors` and the seeded
/// weights as `weights` (the setup of most tests here).
fn batch_and_weights(test: &str, weights: &str) -> PathBuf {
    let dir = scratch_dir(test);
    write_batch(&dir);
    safetensors::save(resnet_state(), dir.join(weights)).unwrap();
    dir
}

/// Every file under `dir` (recursively, symlinks not followed) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&path));
        } else if meta.file_type().is_symlink() {
            out.insert(
                path.clone(),
                std::fs::read_link(&path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes(),
            );
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// Runs a command that must fail: exit status 1 (not a panic's 101, not a
/// signal), a one-line `error: ` containing every part, and nothing in
/// `dir` changed, created or left behind.
fn refused(dir: &Path, args: &[&str], parts: &[&str]) -> String {
    refused_in(dir, &[], args, parts)
}

/// [`refused`], run through `sh -c` after `setup` (`ulimit -v ...`), with
/// two threads so a memory limit is not spent on thread stacks.
fn refused_in(dir: &Path, setup: &[&str], args: &[&str], parts: &[&str]) -> String {
    let before = snapshot(dir);
    let o = if setup.is_empty() {
        frostgrad_in(dir, args)
    } else {
        let script = format!("{} && exec \"$0\" \"$@\"", setup.join(" && "));
        Command::new("sh")
            .current_dir(dir)
            .env("RAYON_NUM_THREADS", "2")
            .arg("-c")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_frostgrad"))
            .args(args)
            .output()
            .unwrap()
    };
    let err = stderr(&o).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{args:?}: {err}");
    for part in parts {
        assert!(last.contains(part), "{args:?}: missing {part:?} in: {err}");
    }
    assert_unchanged(dir, &before, args);
    err
}

/// A usage error clap reports (exit status 2) with every part in it.
fn usage_error(dir: &Path, args: &[&str], parts: &[&str]) {
    let before = snapshot(dir);
    let o = frostgrad_in(dir, args);
    let err = stderr(&o).to_string();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for part in parts {
        assert!(err.contains(part), "{args:?}: missing {part:?} in: {err}");
    }
    assert_unchanged(dir, &before, args);
}

fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, args: &[&str]) {
    let after = snapshot(dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{args:?}: files created or removed"
    );
    for (path, bytes) in before {
        assert!(
            after[path] == *bytes,
            "{args:?}: {} changed",
            path.display()
        );
    }
}

/// A one-step `bench` on the CPU reading `weights` (batch 2 at 32x32,
/// `transfer` only): quick, and through the same weight reader as `step`.
fn bench_args(weights: &str) -> Vec<&str> {
    vec![
        "bench",
        "--device",
        "cpu",
        "--weights",
        weights,
        "--batch",
        "2",
        "--size",
        "32",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--modes",
        "transfer",
    ]
}

/// [`step_args`] training the parameters `globs` match instead of `fc.*`.
fn with_trainable<'a>(mut args: Vec<&'a str>, globs: &'a str) -> Vec<&'a str> {
    let i = args.iter().position(|a| *a == "fc.*").unwrap();
    args[i] = globs;
    args
}

/// A transfer step (`fc.*`, learning rate 0.1).
fn step_args<'a>(weights: &'a str, batch: &'a str, out: &'a str) -> Vec<&'a str> {
    cli::step_args(weights, batch, "fc.*", out)
}

#[test]
fn safetensors_whose_first_byte_is_0x80_load_everywhere() {
    let dir = scratch_dir("0x80");
    let batch = write_batch(&dir);
    for skip in [0, 3] {
        let bytes = safetensors_with_low_byte(resnet_state(), 0x80, skip);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let w = dir.join(format!("w{skip}.safetensors"));
        std::fs::write(&w, &bytes).unwrap();

        let out = dir.join(format!("out{skip}.safetensors"));
        let o = frostgrad_in(
            &dir,
            &step_args(
                w.to_str().unwrap(),
                batch.to_str().unwrap(),
                out.to_str().unwrap(),
            ),
        );
        assert!(
            o.status.success(),
            "step, header length {header_len:#x}: {}",
            stderr(&o)
        );
        assert_eq!(std::fs::read(&w).unwrap(), bytes);

        let converted = dir.join(format!("conv{skip}.safetensors"));
        let o = frostgrad_in(
            &dir,
            &["convert", w.to_str().unwrap(), converted.to_str().unwrap()],
        );
        assert!(
            o.status.success(),
            "convert, header length {header_len:#x}: {}",
            stderr(&o)
        );
        let back = safetensors::load(&converted).unwrap();
        for (name, t) in resnet_state().iter() {
            assert_eq!(back.get(name), Some(t), "{name}");
        }
    }
    // bench reads --weights through the same reader: one short run.
    let w = dir.join("w0.safetensors");
    let o = frostgrad_in(&dir, &bench_args(w.to_str().unwrap()));
    assert!(o.status.success(), "bench: {}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `in.pth` named as the output in every way a shell user could.
fn other_names_of_the_input(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let input = dir.join("in.pth");
    std::fs::hard_link(&input, dir.join("hard.pth")).unwrap();
    std::os::unix::fs::symlink(&input, dir.join("link.pth")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("sub/up")).unwrap();
    let folder = dir.file_name().unwrap().to_str().unwrap();
    vec![
        "in.pth".into(),
        "./in.pth".into(),
        input.to_str().unwrap().into(),
        format!("../{folder}/in.pth"),
        "sub/../in.pth".into(),
        "sub/up/in.pth".into(),
        ".//in.pth".into(),
        "hard.pth".into(),
        "link.pth".into(),
    ]
}

#[test]
fn convert_never_overwrites_its_input() {
    let dir = scratch_dir("convert-guard");
    std::fs::copy(fixture("small_zip.pth"), dir.join("in.pth")).unwrap();
    for out in other_names_of_the_input(&dir) {
        refused(
            &dir,
            &["convert", "in.pth", &out],
            &[
                "output file",
                "is the same file as the input checkpoint in.pth",
                "refusing",
            ],
        );
        // And the other way round: the input named differently.
        refused(
            &dir,
            &["convert", &out, "in.pth"],
            &["refusing to overwrite an input"],
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn step_never_overwrites_its_inputs_or_an_output_with_another() {
    let dir = batch_and_weights("step-guard", "in.pth");
    // An earlier output that must survive every refused run.
    std::fs::write(dir.join("earlier.safetensors"), b"earlier output").unwrap();
    let b = "batch.safetensors";
    for name in other_names_of_the_input(&dir) {
        refused(
            &dir,
            &step_args("in.pth", b, &name),
            &[
                "output file",
                "(--out)",
                "weights file in.pth (--weights)",
                "refusing",
            ],
        );
        let mut args = step_args("in.pth", b, "earlier.safetensors");
        args.extend(["--stats-json", &name]);
        refused(&dir, &args, &["stats file", "(--stats-json)", "refusing"]);
    }
    refused(
        &dir,
        &step_args("in.pth", "./batch.safetensors", "batch.safetensors"),
        &["batch file ./batch.safetensors (--batch)", "refusing"],
    );
    let mut args = step_args("in.pth", b, "earlier.safetensors");
    args.extend(["--stats-json", "./earlier.safetensors"]);
    refused(
        &dir,
        &args,
        &["stats file", "give each output its own path"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_never_overwrites_its_weights_and_checks_outputs_before_running() {
    let dir = scratch_dir("bench-guard");
    safetensors::save(resnet_state(), dir.join("w.safetensors")).unwrap();
    std::fs::create_dir(dir.join("a_folder")).unwrap();
    for (extra, parts) in [
        (
            vec!["--json", "./w.safetensors"],
            vec!["JSON output", "(--json)", "refusing to overwrite an input"],
        ),
        (vec!["--json", "a_folder"], vec!["(--json)", "is a folder"]),
        (
            vec!["--svg", "missing/plot.svg"],
            vec!["SVG output missing/plot.svg (--svg)", "missing"],
        ),
        (
            vec!["--json", "r.json", "--svg", "r.json"],
            vec!["(--svg)", "its own path"],
        ),
    ] {
        let mut args = bench_args("w.safetensors");
        args.extend(extra);
        // Refused before the benchmark ran (`refused` also checks that
        // nothing was written).
        let o = frostgrad_in(&dir, &args);
        assert!(o.stdout.is_empty(), "the benchmark ran");
        refused(&dir, &args, &parts);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_write_cut_short_leaves_the_previous_output_and_no_temporary() {
    let dir = batch_and_weights("atomic", "w.safetensors");
    std::fs::write(dir.join("out.safetensors"), b"the previous output").unwrap();
    std::fs::write(dir.join("stats.json"), b"previous stats").unwrap();
    // A file-size limit of a few hundred KiB: the 45 MB output cannot be written.
    for limit in ["200", "1000"] {
        let before = snapshot(&dir);
        let script = format!(
            "ulimit -f {limit} && exec \"$0\" step --weights w.safetensors --batch \
             batch.safetensors --trainable 'fc.*' --lr 0.1 --out out.safetensors \
             --stats-json stats.json"
        );
        let o = Command::new("sh")
            .current_dir(&dir)
            .args(["-c", &script, env!("CARGO_BIN_EXE_frostgrad")])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "limit {limit}: {err}");
        assert!(
            err.contains("output file out.safetensors (--out): cannot write")
                && err.contains("unchanged"),
            "{err}"
        );
        assert_eq!(snapshot(&dir), before, "limit {limit}: files changed");
    }
    // The same run without the limit replaces both.
    let mut args = step_args("w.safetensors", "batch.safetensors", "out.safetensors");
    args.extend(["--stats-json", "stats.json"]);
    let o = frostgrad_in(&dir, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(safetensors::load(dir.join("out.safetensors"))
        .unwrap()
        .contains("grad.fc.weight"));
    assert!(std::fs::read_to_string(dir.join("stats.json"))
        .unwrap()
        .contains("linear.weight"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("frostgrad-tmp"))
        .collect();
    assert!(names.is_empty(), "temporaries left: {names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_stats_file_is_refused_before_the_step() {
    let dir = batch_and_weights("stats-unwritable", "w.safetensors");
    std::fs::write(dir.join("out.safetensors"), b"the previous output").unwrap();
    std::fs::create_dir(dir.join("stats_is_a_folder")).unwrap();
    for (stats, part) in [
        ("no/such/folder/stats.json", "no/such/folder"),
        ("stats_is_a_folder", "is a folder"),
        ("batch.safetensors/x.json", "batch.safetensors"),
    ] {
        let mut args = step_args("w.safetensors", "batch.safetensors", "out.safetensors");
        args.extend(["--stats-json", stats]);
        refused(&dir, &args, &["stats file", "(--stats-json)", part]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_that_are_not_weights_say_what_they_are_by_role() {
    let dir = batch_and_weights("formats", "w.safetensors");
    std::fs::write(dir.join("empty.pth"), b"").unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let random: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    std::fs::write(dir.join("random.pth"), &random).unwrap();
    std::fs::write(dir.join("proto0.pth"), b"(dp0\nS'conv1.weight'\np1\nI1\ns.").unwrap();
    // 0x80 then a protocol no Python wrote (the old loader called this a
    // "pickle protocol 42" checkpoint).
    std::fs::write(
        dir.join("odd.safetensors"),
        b"\x80\x2a\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let mut truncated = safetensors_with_low_byte(resnet_state(), 0x80, 1);
    truncated.truncate(2000);
    std::fs::write(dir.join("truncated.safetensors"), &truncated).unwrap();
    std::fs::copy(fixture("small_zip.pth"), dir.join("ckpt.pth")).unwrap();
    std::fs::write(dir.join("text.json"), b"{\"images\": [1, 2, 3]}\n").unwrap();

    let b = "batch.safetensors";
    let cases: [(&str, &[&str]); 6] = [
        (
            "empty.pth",
            &["weights file empty.pth (--weights)", "an empty file"],
        ),
        (
            "random.pth",
            &[
                "weights file random.pth (--weights)",
                "neither a safetensors file nor a PyTorch checkpoint",
            ],
        ),
        (
            "proto0.pth",
            &["weights file proto0.pth", "protocol 0 or 1", "state_dict"],
        ),
        (
            "odd.safetensors",
            &["protocol 42", "not a safetensors file"],
        ),
        ("truncated.safetensors", &["truncated"]),
        ("text.json", &["looks like text"]),
    ];
    for (w, parts) in cases {
        refused(&dir, &step_args(w, b, "out.safetensors"), parts);
    }
    // The batch file in its own role, with what it is instead.
    refused(
        &dir,
        &step_args("w.safetensors", "ckpt.pth", "out.safetensors"),
        &["batch file ckpt.pth (--batch)", "a PyTorch checkpoint"],
    );
    refused(
        &dir,
        &step_args("w.safetensors", "empty.pth", "out.safetensors"),
        &["batch file empty.pth (--batch)", "an empty file"],
    );
    refused(
        &dir,
        &step_args("w.safetensors", "missing.safetensors", "out.safetensors"),
        &["batch file missing.safetensors (--batch)", "cannot read"],
    );
    refused(
        &dir,
        &["convert", "empty.pth", "out.safetensors"],
        &["input checkpoint empty.pth", "an empty file"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The key names of a torchvision ResNet with `blocks` per layer (tiny
/// tensors: only the names matter to the depth check).
fn resnet_keys(blocks: [usize; 4], bottleneck: bool) -> StateDict {
    let one = || host(&[1], CpuStorage::F32(vec![0.0]));
    let mut sd = StateDict::new();
    let bn = |sd: &mut StateDict, name: &str| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            sd.insert(format!("{name}.{p}"), one());
        }
    };
    sd.insert("conv1.weight", one());
    bn(&mut sd, "bn1");
    let convs = if bottleneck { 3 } else { 2 };
    for (l, &n) in blocks.iter().enumerate() {
        for b in 0..n {
            for c in 1..=convs {
                sd.insert(format!("layer{}.{b}.conv{c}.weight", l + 1), one());
                bn(&mut sd, &format!("layer{}.{b}.bn{c}", l + 1));
            }
            if b == 0 && (l > 0 || bottleneck) {
                sd.insert(format!("layer{}.0.downsample.0.weight", l + 1), one());
                bn(&mut sd, &format!("layer{}.0.downsample.1", l + 1));
            }
        }
    }
    sd.insert("fc.weight", one());
    sd.insert("fc.bias", one());
    sd
}

#[test]
fn other_resnet_depths_are_named_in_one_short_line() {
    let dir = scratch_dir("depths");
    write_batch(&dir);
    for (blocks, bottleneck, name) in [
        ([3, 4, 6, 3], false, "a ResNet-34 state dict"),
        ([3, 4, 6, 3], true, "a ResNet-50"),
        ([3, 4, 23, 3], true, "a ResNet-101"),
        ([3, 8, 36, 3], true, "a ResNet-152"),
        ([1, 1, 1, 1], false, "1, 1, 1, 1 basic blocks per layer"),
    ] {
        let path = dir.join("other.safetensors");
        safetensors::save(&resnet_keys(blocks, bottleneck), &path).unwrap();
        let err = refused(
            &dir,
            &step_args("other.safetensors", "batch.safetensors", "out.safetensors"),
            &[
                "weights file other.safetensors (--weights)",
                name,
                "ResNet-18",
            ],
        );
        assert!(err.len() < 400, "{} characters: {err}", err.len());
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn long_lists_and_patterns_are_cut() {
    let dir = batch_and_weights("long", "w.safetensors");
    // 200 keys no ResNet-18 has, after the right ones: 200 "unexpected key"s.
    let mut extra = resnet_state().clone();
    for i in 0..200 {
        extra.insert(
            format!("head{i}.weight"),
            host(&[1], CpuStorage::F32(vec![0.0])),
        );
    }
    safetensors::save(&extra, dir.join("extra.safetensors")).unwrap();
    let err = refused(
        &dir,
        &step_args("extra.safetensors", "batch.safetensors", "out.safetensors"),
        &[
            "200 problems",
            "unexpected key `head0.weight`",
            "and 194 more",
        ],
    );
    assert!(err.len() < 800, "{} characters: {err}", err.len());

    let huge = format!("fc.*,{}", "x".repeat(120_000));
    let args = with_trainable(
        step_args("w.safetensors", "batch.safetensors", "out.safetensors"),
        &huge,
    );
    let err = refused(&dir, &args, &["matches no parameter", "more characters"]);
    assert!(err.len() < 800, "{} characters", err.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn negative_and_zero_numbers_reach_the_validators() {
    let dir = batch_and_weights("numbers", "w.safetensors");
    let step = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = step_args("w.safetensors", "batch.safetensors", "out.safetensors")
            .iter()
            .map(|s| s.to_string())
            .collect();
        let i = a.iter().position(|x| x == "--lr").unwrap();
        a.drain(i..i + 2);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Floats: the same message whether written `--lr -0.1` or `--lr=-0.1`.
    for lr in [["--lr", "-0.1"], ["--lr=-0.1", ""], ["--lr", "-1e-3"]] {
        let lr: Vec<&str> = lr.iter().copied().filter(|s| !s.is_empty()).collect();
        let args = step(&lr);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&dir, &args, &["invalid learning rate"]);
    }
    let args = step(&["--lr", "0.1", "--momentum", "-0.5"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&dir, &args, &["momentum"]);
    for (extra, parts) in [
        (
            vec!["--num-classes", "-3"],
            vec!["--num-classes", "at least 1, got -3"],
        ),
        (
            vec!["--num-classes", "0"],
            vec!["--num-classes", "at least 1 class"],
        ),
        (vec!["--fc-seed", "-1"], vec!["--fc-seed", "-1 is negative"]),
    ] {
        let mut args = step(&["--lr", "0.1"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        usage_error(&dir, &args, &parts);
    }
    for (flag, value) in [
        ("--batch", "-2"),
        ("--steps", "-1"),
        ("--size", "-224"),
        ("--warmup", "-5"),
    ] {
        usage_error(
            &dir,
            &["bench", flag, value],
            &[flag, &format!("{value} is negative")],
        );
    }
    usage_error(
        &dir,
        &["bench", "--num-classes", "0"],
        &["at least 1 class"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn strip_prefix_that_strips_nothing_is_an_error_and_bench_takes_it() {
    let dir = scratch_dir("strip");
    write_batch(&dir);
    let mut prefixed = StateDict::new();
    for (name, t) in resnet_state().iter() {
        prefixed.insert(format!("module.{name}"), t.clone());
    }
    safetensors::save(&prefixed, dir.join("module.safetensors")).unwrap();
    safetensors::save(resnet_state(), dir.join("w.safetensors")).unwrap();
    for prefix in ["foo.", "module", ""] {
        let w = if prefix == "module" {
            "w.safetensors"
        } else {
            "module.safetensors"
        };
        let mut args = step_args(w, "batch.safetensors", "out.safetensors");
        args.extend(["--strip-prefix", prefix]);
        refused(&dir, &args, &["--strip-prefix", "would strip nothing"]);
    }
    let bench = |extra: &[&str]| -> Output {
        let mut args = bench_args("module.safetensors");
        args.extend(extra);
        frostgrad_in(&dir, &args)
    };
    // Without the prefix stripped bench names the file and the fix.
    let o = bench(&[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("weights file module.safetensors (--weights)")
            && err.contains("--strip-prefix module."),
        "{err}"
    );
    let o = bench(&["--strip-prefix", "module.", "--num-classes", "7"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("fresh Linear(512, 7)"), "{err}");
    usage_error(
        &dir,
        &["bench", "--strip-prefix", "module."],
        &["--weights"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn running_out_of_memory_is_an_error_naming_the_tensor_not_an_abort() {
    let dir = scratch_dir("memory");
    safetensors::save(resnet_state(), dir.join("w.safetensors")).unwrap();
    let side = 2048;
    let mut sd = StateDict::new();
    sd.insert("images", cli::random_images(&[1, 3, side, side], 4));
    sd.insert("labels", host(&[1], CpuStorage::I64(vec![2])));
    safetensors::save(&sd, dir.join("big.safetensors")).unwrap();
    // Two address-space limits, both far below what a 2048x2048 step needs
    // (about 2 GB) and above what loading the files needs.
    // Fine-tuning, so the forward pass keeps its activations.
    let finetune = with_trainable(
        step_args("w.safetensors", "big.safetensors", "out.safetensors"),
        "*",
    );
    for limit in ["ulimit -v 900000", "ulimit -v 1400000"] {
        let err = refused_in(
            &dir,
            &[limit],
            &finetune,
            &[
                "out of memory",
                "of shape [",
                "bytes",
                "images of shape [1, 3, 2048, 2048]",
            ],
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A class count no machine holds, and a benchmark image that large.
    let mut args = step_args("w.safetensors", "big.safetensors", "out.safetensors");
    args.extend(["--num-classes", "100000000000"]);
    refused_in(
        &dir,
        &["ulimit -v 4000000"],
        &args,
        &[
            "out of memory",
            "Linear(512, 100000000000) (--num-classes 100000000000)",
            "[100000000000, 512]",
            "204800000000000 bytes",
        ],
    );
    refused_in(
        &dir,
        &["ulimit -v 4000000"],
        &[
            "bench", "--device", "cpu", "--size", "20000", "--steps", "1", "--warmup", "0",
        ],
        &[
            "out of memory",
            "images",
            "[8, 3, 20000, 20000]",
            "38400000000 bytes",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn globs_match_as_in_a_shell() {
    let dir = batch_and_weights("globs", "w.safetensors");
    let step = |globs| {
        with_trainable(
            step_args("w.safetensors", "batch.safetensors", "out.safetensors"),
            globs,
        )
    };
    let o = frostgrad_in(&dir, &step("layer[34].?.conv?.*,f?.*"));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = safetensors::load(dir.join("out.safetensors")).unwrap();
    let grads: Vec<&str> = out
        .names()
        .filter_map(|n| n.strip_prefix("grad."))
        .collect();
    let want: Vec<&str> = resnet_state()
        .names()
        .filter(|n| {
            (n.starts_with("layer3.") || n.starts_with("layer4.")) && n.contains(".conv")
                || n.starts_with("fc.")
        })
        .collect();
    let (mut got, mut want) = (grads.clone(), want);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    refused(&dir, &step("layer[34.*"), &["never closed"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn whole_pickled_models_and_duplicate_keys_are_refused_with_the_fix() {
    let dir = scratch_dir("pickled");
    write_batch(&dir);
    // torch.save(model) in the legacy format: the object pickle names the
    // model class (protocol 2, as torch.save writes).
    let mut whole = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    whole.extend(b"\x80\x02M\xe9\x03.");
    whole.extend(b"\x80\x02}(X\x0d\x00\x00\x00little_endian\x88u.");
    whole.extend(b"\x80\x02ctorchvision.models.resnet\nResNet\nq\x00)\x81q\x01.");
    whole.extend(b"\x80\x02]q\x00.");
    std::fs::write(dir.join("whole.pth"), &whole).unwrap();
    refused(
        &dir,
        &step_args("whole.pth", "batch.safetensors", "out.safetensors"),
        &[
            "torchvision.models.resnet.ResNet",
            "torch.save(model.state_dict(), path)",
        ],
    );
    // A header naming `fc.bias` twice (the second entry in \uXXXX form).
    let header = "{\"fc.bias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\
                  \"fc.\\u0062ias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 8]);
    std::fs::write(dir.join("dup.safetensors"), &bytes).unwrap();
    refused(
        &dir,
        &step_args("dup.safetensors", "batch.safetensors", "out.safetensors"),
        &["weights file dup.safetensors", "`fc.bias` twice"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_option_has_help_text() {
    for command in ["step", "bench", "convert"] {
        let o = frostgrad_in(Path::new("."), &[command, "--help"]);
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t.starts_with("--") || t.starts_with("-h,") {
                // Short help sits on the same line, long help on the next.
                let same_line = t
                    .split_once("  ")
                    .is_some_and(|(_, d)| !d.trim().is_empty());
                let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
                assert!(
                    same_line || !next.is_empty(),
                    "{command}: `{t}` has no help text:\n{help}"
                );
            }
        }
    }
    let bench = frostgrad_in(Path::new("."), &["bench", "--help"]);
    let help = String::from_utf8_lossy(&bench.stdout);
    assert!(
        help.contains("partial (`layer3.*,layer4.*,fc.*`)"),
        "{help}"
    );
    assert!(help.contains("layer4 (`layer4.*,fc.*`)"), "{help}");
    let step = frostgrad_in(Path::new("."), &["step", "--help"]);
    let help = String::from_utf8_lossy(&step.stdout);
    assert!(help.contains("`?` one character"), "{help}");
}

/// Batch 1 is a valid benchmark wherever PyTorch trains it (layer4's batch
/// norm sees more than one value per channel): refused up front at 32x32,
/// where PyTorch 2.9.1 raises "Expected more than 1 value per channel",
/// and run at 40x40 (2x2 after layer4), inference included.
#[test]
fn bench_takes_batch_one_where_pytorch_does() {
    let dir = scratch_dir("batch1");
    let args = |size: &'static str| {
        vec![
            "bench",
            "--device",
            "cpu",
            "--batch",
            "1",
            "--size",
            size,
            "--steps",
            "1",
            "--warmup",
            "0",
            "--modes",
            "transfer,inference",
        ]
    };
    refused(
        &dir,
        &args("32"),
        &[
            "--batch 1 at --size 32",
            "one value per channel",
            "--modes inference",
        ],
    );
    let o = frostgrad_in(&dir, &args("40"));
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for mode in ["transfer", "inference"] {
        assert!(
            table.lines().any(|l| l.starts_with(mode)),
            "no {mode} row in:\n{table}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
