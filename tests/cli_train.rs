//! `frostgrad train` end to end on image folders the tests draw themselves
//! (32x32 PNG and JPEG, classes told apart by colour): what is trained and
//! what is left bit for bit alone, the feature cache against the same run
//! without it, `--resume` against an uninterrupted run, that it learns,
//! and one-line errors (never a panic) for hostile input.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/scratch.rs"]
mod scratch;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use cli::{fails_with, frostgrad, ok, resnet18_state};
use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{safetensors, StateDict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scratch::scratch_dir;

/// `root/{train,val}/{red,green,blue}/NN.{png,jpg}`: noisy images whose
/// dominant channel is the class, of varying sizes (resized and cropped
/// to 32x32 by the loader).
fn color_folder(root: &Path, per_class: (usize, usize)) {
    let mut rng = StdRng::seed_from_u64(11);
    for (split, n) in [("train", per_class.0), ("val", per_class.1)] {
        for (c, class) in ["blue", "green", "red"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (w, h) = (rng.random_range(32..48), rng.random_range(32..48));
                let img = image::RgbImage::from_fn(w, h, |_, _| {
                    let mut px = [0u8; 3];
                    for (k, v) in px.iter_mut().enumerate() {
                        let base = if k == c { 140 } else { 20 };
                        *v = base + rng.random_range(0..100);
                    }
                    image::Rgb(px)
                });
                let ext = if i % 3 == 0 { "jpg" } else { "png" };
                img.save(dir.join(format!("{i:02}.{ext}"))).unwrap();
            }
        }
    }
}

/// One shared data folder and 3-class starting weights for the tests.
fn fixtures() -> &'static (PathBuf, PathBuf, StateDict) {
    static F: OnceLock<(PathBuf, PathBuf, StateDict)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch_dir("shared");
        let data = dir.join("data");
        color_folder(&data, (10, 4));
        let sd = resnet18_state(3, 7);
        let weights = dir.join("init.safetensors");
        safetensors::save(&sd, &weights).unwrap();
        (data, weights, sd)
    })
}

/// `frostgrad train --data data --num-classes classes --out out`, then `extra`.
fn train_on(data: &Path, classes: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--num-classes",
        classes,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    frostgrad(&args)
}

/// `frostgrad train` on the shared folder with the shared weights.
fn train(out: &Path, extra: &[&str]) -> Output {
    let (data, weights, _) = fixtures();
    let mut args = vec![
        "--weights",
        weights.to_str().unwrap(),
        "--size",
        "32",
        "--batch",
        "8",
        "--seed",
        "3",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    train_on(data, "3", out, &args)
}

fn values(t: &frostgrad::io::HostTensor) -> Vec<f64> {
    match &t.data {
        CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
        CpuStorage::I64(v) => v.iter().map(|&x| x as f64).collect(),
        #[allow(unreachable_patterns)]
        _ => panic!("unexpected dtype"),
    }
}

/// max_i |a_i - b_i| / max(max_i |b_i|, tiny) over every tensor.
fn worst_relative(a: &StateDict, b: &StateDict) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, t) in b.iter() {
        let (x, y) = (values(a.get(name).unwrap()), values(t));
        let scale = y.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let diff = x
            .iter()
            .zip(&y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        if diff / scale > worst.0 {
            worst = (diff / scale, name.to_string());
        }
    }
    worst
}

fn log_epochs(path: &Path) -> Vec<serde_json::Value> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["epochs"].as_array().unwrap().clone()
}

/// Transfer learning with frozen BN in eval mode: only `fc` changes, every
/// other parameter and every buffer is bit-identical to the start, and
/// the checkpoint has torchvision's 122 names.
#[test]
fn transfer_changes_only_fc() {
    let dir = scratch_dir("transfer");
    let out = dir.join("ckpt.safetensors");
    let log = dir.join("log.json");
    ok(&train(
        &out,
        &[
            "--trainable",
            "fc.*",
            "--frozen-bn",
            "eval",
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "1e-4",
            "--log-json",
            log.to_str().unwrap(),
        ],
    ));
    let (_, _, init) = fixtures();
    let trained = safetensors::load(&out).unwrap();
    // safetensors stores tensors sorted by name: compare the sets.
    let mut names: Vec<&str> = trained.names().collect();
    let mut want: Vec<&str> = init.names().collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "torchvision's names");
    assert_eq!(names.len(), 122);
    for (name, before) in init.iter() {
        let after = trained.get(name).unwrap();
        if name.starts_with("fc.") {
            assert_ne!(after, before, "{name} was trained");
        } else {
            assert_eq!(after, before, "{name} must be bit-identical");
        }
    }
    let epochs = log_epochs(&log);
    assert_eq!(epochs.len(), 2);
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], i + 1);
        for key in [
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "seconds",
            "images_per_s",
        ] {
            assert!(e[key].as_f64().is_some_and(f64::is_finite), "{key} in {e}");
        }
        assert_eq!(e["cached"], false);
    }
    assert!(out.with_file_name("ckpt.train-state.safetensors").exists());
}

/// PyTorch's default: frozen BN in train mode still updates its running
/// statistics (and counts batches), while its weight and bias stay put.
#[test]
fn frozen_batch_norm_in_train_mode_updates_running_stats() {
    let dir = scratch_dir("bntrain");
    let out = dir.join("ckpt.safetensors");
    ok(&train(
        &out,
        &["--trainable", "fc.*", "--epochs", "1", "--lr", "0.05"],
    ));
    let (_, _, init) = fixtures();
    let trained = safetensors::load(&out).unwrap();
    assert_eq!(trained.get("bn1.weight"), init.get("bn1.weight"));
    assert_eq!(
        trained.get("layer4.1.bn2.bias"),
        init.get("layer4.1.bn2.bias")
    );
    assert_ne!(
        trained.get("bn1.running_mean"),
        init.get("bn1.running_mean")
    );
    // 30 images in batches of 8: 4 training forwards (validation is in eval mode).
    assert_eq!(
        values(
            trained
                .get("layer2.0.downsample.1.num_batches_tracked")
                .unwrap()
        ),
        vec![4.0]
    );
}

/// The feature cache gives the same weights as the same run without it,
/// for a cut before `fc` (512 floats per image, in memory) and before
/// layer4 (256x2x2, with a 1 KiB memory budget so most records go to
/// disk); the later epochs say they were cached.
#[test]
fn cached_run_matches_uncached_run() {
    let dir = scratch_dir("cache");
    for (k, trainable) in ["fc.*", "layer4.*,fc.*"].iter().enumerate() {
        let common = [
            "--trainable",
            trainable,
            "--frozen-bn",
            "eval",
            "--epochs",
            "3",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "1e-4",
        ];
        let plain = dir.join(format!("plain{k}.safetensors"));
        ok(&train(&plain, &common));
        let cached = dir.join(format!("cached{k}.safetensors"));
        let log = dir.join(format!("cached{k}.json"));
        let mut args = common.to_vec();
        args.extend_from_slice(&[
            "--cache-features",
            "--cache-mem",
            "1K",
            "--cache-dir",
            dir.to_str().unwrap(),
            "--log-json",
            log.to_str().unwrap(),
        ]);
        ok(&train(&cached, &args));
        let (worst, name) = worst_relative(
            &safetensors::load(&cached).unwrap(),
            &safetensors::load(&plain).unwrap(),
        );
        assert!(
            worst <= 1e-5,
            "{trainable}: {name} differs by {worst:e} (relative)"
        );
        let flags: Vec<bool> = log_epochs(&log)
            .iter()
            .map(|e| e["cached"].as_bool().unwrap())
            .collect();
        assert_eq!(flags, vec![false, true, true], "{trainable}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("feature-cache"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "cache files left behind: {leftovers:?}"
    );
}

/// Two epochs in one run equal one epoch plus one resumed epoch
/// (momentum buffers, the epoch count and so the scheduled learning rate
/// come back from the sidecar), bit for bit.
#[test]
fn resume_continues_exactly() {
    let dir = scratch_dir("resume");
    let common = [
        "--trainable",
        "layer4.1.*,fc.*",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--schedule",
        "step",
        "--step-size",
        "1",
        "--gamma",
        "0.5",
    ];
    let straight = dir.join("straight.safetensors");
    let mut a = common.to_vec();
    a.extend_from_slice(&["--epochs", "2"]);
    ok(&train(&straight, &a));
    let resumed = dir.join("resumed.safetensors");
    let mut b = common.to_vec();
    b.extend_from_slice(&["--epochs", "1"]);
    ok(&train(&resumed, &b));
    let mut c = common.to_vec();
    c.extend_from_slice(&["--epochs", "2", "--resume"]);
    let stdout = ok(&train(&resumed, &c));
    assert!(stdout.contains("epoch   2:"), "{stdout}");
    assert!(!stdout.contains("epoch   1:"), "{stdout}");
    let got = safetensors::load(&resumed).unwrap();
    let want = safetensors::load(&straight).unwrap();
    for (name, t) in want.iter() {
        assert_eq!(got.get(name), Some(t), "{name} after resume");
    }
    // Resuming a finished run is an error, not a silent no-op.
    fails_with(&train(&resumed, &c), &["already has 2 epochs"]);
}

/// Colour is linearly separable in the pooled features of a random
/// network, so transfer learning must reach well above chance (1/3).
#[test]
fn transfer_learns() {
    let dir = scratch_dir("learns");
    let out = dir.join("ckpt.safetensors");
    let log = dir.join("log.json");
    ok(&train(
        &out,
        &[
            "--trainable",
            "fc.*",
            "--frozen-bn",
            "eval",
            "--cache-features",
            "--epochs",
            "15",
            "--lr",
            "0.1",
            "--momentum",
            "0.9",
            "--log-json",
            log.to_str().unwrap(),
        ],
    ));
    let epochs = log_epochs(&log);
    let last = epochs.last().unwrap();
    let first = &epochs[0];
    assert!(
        last["train_loss"].as_f64().unwrap() < first["train_loss"].as_f64().unwrap(),
        "{epochs:?}"
    );
    assert!(last["val_acc"].as_f64().unwrap() >= 0.75, "{last}");

    // `eval` on the same folder (it uses val/) measures what the last
    // epoch's validation did: same model, same images, eval mode.
    let (data, _, _) = fixtures();
    let report = dir.join("eval.json");
    let stdout = ok(&frostgrad(&[
        "eval",
        "--weights",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--size",
        "32",
        "--quiet",
        "--json",
        report.to_str().unwrap(),
    ]));
    assert!(stdout.contains("confusion matrix"), "{stdout}");
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(ev["images"], 12);
    assert_eq!(ev["accuracy"], last["val_acc"], "{ev}");
    let val_loss = last["val_loss"].as_f64().unwrap();
    assert!((ev["loss"].as_f64().unwrap() - val_loss).abs() <= 1e-6 * val_loss.max(1.0));
    let confusion: Vec<Vec<u64>> = serde_json::from_value(ev["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 12);
    let diagonal: u64 = (0..3).map(|c| confusion[c][c]).sum();
    assert_eq!(diagonal as f64 / 12.0, ev["accuracy"].as_f64().unwrap());

    // `predict` names classes by folder and ranks them; its top-1 on the
    // validation images agrees with eval's diagonal.
    let images: Vec<String> = ["blue", "green", "red"]
        .iter()
        .flat_map(|c| {
            (0..4).map(move |i| {
                let stem = data.join("val").join(c).join(format!("{i:02}"));
                let ext = if i % 3 == 0 { "jpg" } else { "png" };
                stem.with_extension(ext).to_str().unwrap().to_string()
            })
        })
        .collect();
    let mut args = vec![
        "predict".to_string(),
        "--weights".into(),
        out.to_str().unwrap().into(),
        "--classes".into(),
        data.to_str().unwrap().into(),
        "--size".into(),
        "32".into(),
        "--top-k".into(),
        "2".into(),
    ];
    args.extend(images.iter().cloned());
    let lines = ok(&frostgrad(&args));
    let mut right = 0;
    for (line, image) in lines.lines().zip(&images) {
        let (path, ranked) = line.split_once(": ").unwrap();
        assert_eq!(path, image);
        let top: Vec<&str> = ranked.split(", ").collect();
        assert_eq!(top.len(), 2, "{line}");
        let truth = Path::new(image).parent().unwrap().file_name().unwrap();
        if top[0].starts_with(truth.to_str().unwrap()) {
            right += 1;
        }
    }
    assert_eq!(lines.lines().count(), 12);
    assert_eq!(right as u64, diagonal, "{lines}");

    // `plot` draws this log and refuses to overwrite it.
    let svg = dir.join("curves.svg");
    let spec = format!("cached={}", log.display());
    ok(&frostgrad(&["plot", "--svg", svg.to_str().unwrap(), &spec]));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("cached train") && text.contains("cached val"));
    fails_with(
        &frostgrad(&["plot", "--svg", log.to_str().unwrap(), &spec]),
        &["refusing to overwrite"],
    );
}

#[test]
fn hostile_inputs_are_one_line_errors() {
    let dir = scratch_dir("hostile");
    let out = dir.join("o.safetensors");
    // A pattern that matches nothing.
    fails_with(
        &train(&out, &["--trainable", "head.*", "--lr", "0.1"]),
        &["head.*"],
    );
    // Wrong class count.
    let (data, weights, _) = fixtures();
    fails_with(
        &train_on(data, "5", &out, &["--trainable", "*", "--lr", "0.1"]),
        &["--num-classes 5", "3 class folders", "blue, green, red"],
    );
    // No such folder.
    fails_with(
        &train_on(
            Path::new("/nonexistent/frostgrad"),
            "2",
            &out,
            &["--trainable", "*", "--lr", "0.1"],
        ),
        &["/nonexistent/frostgrad"],
    );
    // The cache says why it cannot work.
    fails_with(
        &train(
            &out,
            &["--trainable", "fc.*", "--lr", "0.1", "--cache-features"],
        ),
        &["--frozen-bn eval"],
    );
    fails_with(
        &train(
            &out,
            &[
                "--trainable",
                "fc.*",
                "--frozen-bn",
                "eval",
                "--augment",
                "--lr",
                "0.1",
                "--cache-features",
            ],
        ),
        &["--augment"],
    );
    fails_with(
        &train(
            &out,
            &[
                "--trainable",
                "conv1.*,fc.*",
                "--frozen-bn",
                "eval",
                "--lr",
                "0.1",
                "--cache-features",
            ],
        ),
        &["conv1.weight", "stem"],
    );
    // --out would overwrite --weights.
    let w = dir.join("w.safetensors");
    std::fs::copy(weights, &w).unwrap();
    fails_with(
        &train_on(
            data,
            "3",
            &w,
            &[
                "--trainable",
                "fc.*",
                "--lr",
                "0.1",
                "--weights",
                w.to_str().unwrap(),
            ],
        ),
        &["refusing to overwrite"],
    );
    // --resume without a sidecar.
    fails_with(
        &train(&w, &["--trainable", "fc.*", "--lr", "0.1", "--resume"]),
        &["train-state", "missing"],
    );

    // A corrupt image: an error naming the file, or with --skip-bad a warning and a count.
    let bad = dir.join("bad");
    color_folder(&bad, (3, 1));
    let broken = bad.join("train").join("green").join("01.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n this is not a png").unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "--trainable",
            "fc.*",
            "--lr",
            "0.1",
            "--size",
            "32",
            "--batch",
            "4",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        train_on(&bad, "3", &out, &a)
    };
    fails_with(&run(&[]), &["01.png"]);
    let skipped = run(&[
        "--skip-bad",
        "--frozen-bn",
        "eval",
        "--cache-features",
        "--epochs",
        "2",
    ]);
    let stdout = ok(&skipped);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(
        stderr.contains("warning: skipped") && stderr.contains("01.png"),
        "{stderr}"
    );
    assert!(stdout.contains("1 images skipped"), "{stdout}");
}
