//! ResNet-18's names, order, initialisation and `requires_grad` semantics
//! against torchvision, plus state_dict save/load. No kernels run here.
//!
//! `tests/fixtures/nn/resnet18_names.txt` is written by
//! `scripts/resnet18_names.py` from `torchvision.models.resnet18().state_dict()`.

use frostgrad::backend::cpu::CpuStorage;
use frostgrad::io::{self, HostTensor, StateDict};
use frostgrad::nn::{
    for_each_module_mut, resnet18, Linear, Module, ParamPatterns, ResNet, TensorKind,
};
use frostgrad::DType;
use rand::rngs::StdRng;
use rand::SeedableRng;

struct Entry {
    kind: TensorKind,
    name: String,
    dtype: DType,
    shape: Vec<usize>,
}

fn torchvision_layout() -> Vec<Entry> {
    let text = include_str!("fixtures/nn/resnet18_names.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "bad fixture line {line:?}");
            Entry {
                kind: match f[0] {
                    "param" => TensorKind::Parameter,
                    "buffer" => TensorKind::Buffer,
                    k => panic!("bad kind {k}"),
                },
                name: f[1].to_string(),
                dtype: match f[2] {
                    "f32" => DType::F32,
                    "i64" => DType::I64,
                    d => panic!("bad dtype {d}"),
                },
                shape: if f[3] == "-" {
                    vec![]
                } else {
                    f[3].split(',').map(|d| d.parse().unwrap()).collect()
                },
            }
        })
        .collect()
}

fn model(classes: usize) -> ResNet {
    resnet18(classes, &mut StdRng::seed_from_u64(7)).unwrap()
}

#[test]
fn state_dict_layout_is_torchvisions() {
    let expected = torchvision_layout();
    assert_eq!(
        expected.len(),
        122,
        "fixture should hold resnet18's 122 state_dict entries"
    );
    let m = model(1000);
    let mut got = Vec::new();
    m.visit("", &mut |name, t, kind| {
        got.push((name.to_string(), kind, t.dtype(), t.shape().to_vec()))
    });
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(
            (&g.0, g.1, g.2, &g.3),
            (&e.name, e.kind, e.dtype, &e.shape),
            "entry {}",
            e.name
        );
    }
    let sd = m.state_dict().unwrap();
    let names: Vec<&str> = sd.names().collect();
    let expected_names: Vec<&str> = expected.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, expected_names);
}

#[test]
fn named_parameters_and_buffers_keep_torchvisions_order() {
    let expected = torchvision_layout();
    let m = model(1000);
    let params: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    let want: Vec<&String> = expected
        .iter()
        .filter(|e| e.kind == TensorKind::Parameter)
        .map(|e| &e.name)
        .collect();
    assert_eq!(params.iter().collect::<Vec<_>>(), want);
    assert_eq!(params.len(), 62);
    assert_eq!(params.first().map(String::as_str), Some("conv1.weight"));
    assert_eq!(params.last().map(String::as_str), Some("fc.bias"));
    let buffers: Vec<String> = m.named_buffers().into_iter().map(|(n, _)| n).collect();
    let want: Vec<&String> = expected
        .iter()
        .filter(|e| e.kind == TensorKind::Buffer)
        .map(|e| &e.name)
        .collect();
    assert_eq!(buffers.iter().collect::<Vec<_>>(), want);
    let total: usize = m.parameters().iter().map(|p| p.numel()).sum();
    assert_eq!(total, 11_689_512, "torchvision's resnet18 parameter count");
}

#[test]
fn fresh_model_trains_everything_and_starts_in_train_mode() {
    let m = model(1000);
    assert!(m.is_training());
    for (name, p) in m.named_parameters() {
        assert!(p.requires_grad(), "{name} should require grad");
        assert!(p.is_leaf());
        assert!(p.grad().is_none());
    }
    for (name, b) in m.named_buffers() {
        assert!(!b.requires_grad(), "buffer {name} must not require grad");
    }
}

#[test]
fn freeze_all_then_replace_fc_trains_only_the_new_head() {
    let mut m = model(1000);
    m.requires_grad_(false).unwrap();
    assert!(m.named_parameters().iter().all(|(_, p)| !p.requires_grad()));
    m.fc = Linear::new(512, 10, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(m.num_classes(), 10);
    for (name, p) in m.named_parameters() {
        assert_eq!(p.requires_grad(), name.starts_with("fc."), "{name}");
    }
    assert_eq!(m.fc.weight.shape(), [10, 512]);
}

#[test]
fn handles_from_named_parameters_are_the_models_parameters() {
    let m = model(10);
    let (name, p) = m
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "layer2.0.downsample.0.weight")
        .unwrap();
    assert_eq!(name, "layer2.0.downsample.0.weight");
    p.set_requires_grad(false).unwrap();
    let d = m.layer2[0].downsample.as_ref().unwrap();
    assert!(!d.conv.weight.requires_grad());
    assert_eq!(d.conv.weight.id(), p.id());
}

#[test]
fn requires_grad_on_a_child_module_affects_only_it() {
    let m = model(10);
    m.layer4.requires_grad_(false).unwrap();
    for (name, p) in m.named_parameters() {
        assert_eq!(p.requires_grad(), !name.starts_with("layer4."), "{name}");
    }
}

#[test]
fn set_trainable_by_glob_patterns() {
    let m = model(10);
    let trainable = m
        .set_trainable(&ParamPatterns::parse("layer3.*,layer4.*,fc.*").unwrap())
        .unwrap();
    // Per layer: block 0 has conv1, bn1 (2), conv2, bn2 (2), downsample conv + bn (2) = 9; block 1 has 6.
    assert_eq!(trainable.len(), 15 + 15 + 2);
    for (name, p) in m.named_parameters() {
        let want =
            name.starts_with("layer3.") || name.starts_with("layer4.") || name.starts_with("fc.");
        assert_eq!(p.requires_grad(), want, "{name}");
    }

    let trainable = m
        .set_trainable(&ParamPatterns::parse("*").unwrap())
        .unwrap();
    assert_eq!(trainable.len(), 62);

    let n = m
        .set_requires_grad_matching(&ParamPatterns::parse("*.bn*.*,bn1.*").unwrap(), false)
        .unwrap();
    assert_eq!(n, 2 * (1 + 4 * 2 * 2));
    for (name, p) in m.named_parameters() {
        assert_eq!(p.requires_grad(), !name.contains("bn"), "{name}");
    }
}

#[test]
fn a_pattern_matching_nothing_is_an_error_and_changes_nothing() {
    let m = model(10);
    let err = m
        .set_trainable(&ParamPatterns::parse("fc.*,layer5.*").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`layer5.*`") && !err.contains("`fc.*`"),
        "{err}"
    );
    assert!(
        m.parameters().iter().all(|p| p.requires_grad()),
        "nothing may be frozen by a failed call"
    );
}

#[test]
fn initialisation_follows_torchvision() {
    let m = model(1000);
    // conv: kaiming_normal_(fan_out, relu): std = sqrt(2 / (out * kh * kw)).
    let w = m.layer3[0].conv1.weight.to_vec_f32().unwrap(); // [256, 128, 3, 3]
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!(mean.abs() < 0.05 * want, "mean {mean}");
    assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
    assert!(m.conv1.bias.is_none());
    // batch norm: weight 1, bias 0, running stats 0 / 1, counter 0.
    assert!(m.bn1.weight.to_vec_f32().unwrap().iter().all(|&x| x == 1.0));
    assert!(m.layer1[1]
        .bn2
        .bias
        .to_vec_f32()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(m
        .bn1
        .running_mean
        .to_vec_f32()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(m
        .bn1
        .running_var
        .to_vec_f32()
        .unwrap()
        .iter()
        .all(|&x| x == 1.0));
    assert_eq!(m.bn1.num_batches_tracked.to_vec_i64().unwrap(), [0]);
    assert_eq!(m.bn1.num_batches_tracked.dtype(), DType::I64);
    // fc: U(-1/sqrt(512), 1/sqrt(512)) for weight and bias, spread over the range.
    let bound = 1.0 / 512f32.sqrt();
    for t in [&m.fc.weight, &m.fc.bias] {
        let v = t.to_vec_f32().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound));
        let max = v.iter().cloned().fold(f32::MIN, f32::max);
        assert!(max > 0.9 * bound, "max {max} of bound {bound}");
    }
}

#[test]
fn seeded_construction_is_deterministic() {
    let a = model(10).state_dict().unwrap();
    let b = model(10).state_dict().unwrap();
    assert_eq!(a, b);
}

#[test]
fn train_and_eval_reach_every_batch_norm() {
    let mut m = model(10);
    m.eval();
    assert!(
        !m.is_training()
            && !m.bn1.is_training()
            && !m.layer4[0].downsample.as_ref().unwrap().bn.is_training()
    );
    assert!(!m.layer2[1].bn2.is_training());
    m.train();
    assert!(
        m.is_training()
            && m.layer3[0].bn1.is_training()
            && m.layer4[0].downsample.as_ref().unwrap().is_training()
    );
}

#[test]
fn the_module_walk_finds_every_batch_norm_by_its_state_dict_name() {
    // The batch norms are exactly the modules that own a `running_mean`.
    let mut m = model(10);
    let expected: Vec<String> = m
        .named_buffers()
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    assert_eq!(expected.len(), 20);
    let mut found = Vec::new();
    for_each_module_mut(&mut m, "", &mut |name, module| {
        if let Some(bn) = module.as_batch_norm_mut() {
            bn.set_training(false);
            found.push(name.to_string());
        }
    });
    assert_eq!(found, expected);
    assert!(!m.layer4[0].downsample.as_ref().unwrap().bn.is_training());
    assert!(m.is_training(), "only the batch norms were switched");
}

#[test]
fn state_dict_round_trips_through_safetensors() {
    let m = model(10);
    // Make the buffers distinguishable from a fresh model's.
    let mut sd = m.state_dict().unwrap();
    sd.insert(
        "layer1.0.bn1.num_batches_tracked",
        HostTensor::new(vec![], CpuStorage::I64(vec![42])).unwrap(),
    );
    sd.insert(
        "bn1.running_var",
        HostTensor::new(
            vec![64],
            CpuStorage::F32((0..64).map(|i| i as f32).collect()),
        )
        .unwrap(),
    );
    let bytes = io::safetensors::to_bytes(&sd).unwrap();
    let back = io::safetensors::read_bytes(&bytes).unwrap();
    assert_eq!(back.len(), 122);

    let other = resnet18(10, &mut StdRng::seed_from_u64(99)).unwrap();
    assert_ne!(other.state_dict().unwrap(), sd);
    other.load_state_dict(&back).unwrap();
    let loaded = other.state_dict().unwrap();
    for (name, t) in sd.iter() {
        assert_eq!(loaded.get(name), Some(t), "{name}");
    }
    assert_eq!(
        other.layer1[0]
            .bn1
            .num_batches_tracked
            .to_vec_i64()
            .unwrap(),
        [42]
    );
    assert_eq!(other.layer1[0].bn1.num_batches_tracked.dtype(), DType::I64);
}

#[test]
fn loading_keeps_handles_and_requires_grad_flags() {
    let src = model(10).state_dict().unwrap();
    let m = resnet18(10, &mut StdRng::seed_from_u64(3)).unwrap();
    m.set_trainable(&ParamPatterns::parse("fc.*").unwrap())
        .unwrap();
    let handle = m.fc.weight.clone();
    m.load_state_dict(&src).unwrap();
    assert_eq!(
        handle.to_vec_f32().unwrap(),
        m.fc.weight.to_vec_f32().unwrap()
    );
    assert_eq!(
        HostTensor::from_tensor(&handle).unwrap(),
        *src.get("fc.weight").unwrap()
    );
    for (name, p) in m.named_parameters() {
        assert_eq!(p.requires_grad(), name.starts_with("fc."), "{name}");
    }
}

fn load_error(sd: &StateDict) -> String {
    let m = model(10);
    let before = m.state_dict().unwrap();
    let err = m.load_state_dict(sd).unwrap_err().to_string();
    assert_eq!(
        m.state_dict().unwrap(),
        before,
        "a failed load must change nothing"
    );
    assert!(!err.contains('\n'), "one-line error: {err}");
    err
}

#[test]
fn load_errors_name_every_bad_key() {
    let good = model(10).state_dict().unwrap();

    let mut missing = good.clone();
    missing.remove("layer3.1.conv2.weight");
    let err = load_error(&missing);
    assert!(err.contains("missing key `layer3.1.conv2.weight`"), "{err}");

    let mut unexpected = good.clone();
    unexpected.insert(
        "fc2.weight",
        HostTensor::new(vec![1], CpuStorage::F32(vec![0.0])).unwrap(),
    );
    let err = load_error(&unexpected);
    assert!(err.contains("unexpected key `fc2.weight`"), "{err}");

    let mut misshaped = good.clone();
    misshaped.insert(
        "fc.bias",
        HostTensor::new(vec![11], CpuStorage::F32(vec![0.0; 11])).unwrap(),
    );
    let err = load_error(&misshaped);
    assert!(
        err.contains("`fc.bias` has shape [11]") && err.contains("[10]"),
        "{err}"
    );

    let mut wrong_dtype = good.clone();
    wrong_dtype.insert(
        "bn1.num_batches_tracked",
        HostTensor::new(vec![], CpuStorage::F32(vec![0.0])).unwrap(),
    );
    let err = load_error(&wrong_dtype);
    assert!(
        err.contains("`bn1.num_batches_tracked` has dtype F32"),
        "{err}"
    );

    // All problems at once, not just the first.
    let mut all = misshaped.clone();
    all.remove("conv1.weight");
    all.insert(
        "extra",
        HostTensor::new(vec![], CpuStorage::I64(vec![1])).unwrap(),
    );
    let err = load_error(&all);
    assert!(err.contains("3 problems"), "{err}");
    for part in ["`conv1.weight`", "`fc.bias`", "`extra`"] {
        assert!(err.contains(part), "{part} missing from {err}");
    }
}

#[test]
fn missing_num_batches_tracked_loads_as_zero_like_pytorch() {
    let mut sd = model(10).state_dict().unwrap();
    sd.insert(
        "bn1.num_batches_tracked",
        HostTensor::new(vec![], CpuStorage::I64(vec![5])).unwrap(),
    );
    let old_style: StateDict = sd
        .clone()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .fold(StateDict::new(), |mut acc, (k, t)| {
            acc.insert(k, t);
            acc
        });
    assert_eq!(old_style.len(), 102);
    let m = model(10);
    m.load_state_dict(&sd).unwrap();
    assert_eq!(m.bn1.num_batches_tracked.to_vec_i64().unwrap(), [5]);
    m.load_state_dict(&old_style).unwrap();
    assert_eq!(m.bn1.num_batches_tracked.to_vec_i64().unwrap(), [0]);
}

#[test]
fn from_state_dict_takes_the_class_count_from_fc() {
    let sd = model(7).state_dict().unwrap();
    let m = ResNet::resnet18_from_state_dict(&sd).unwrap();
    assert_eq!(m.num_classes(), 7);
    assert_eq!(m.state_dict().unwrap(), sd);

    let mut no_fc = sd.clone();
    no_fc.remove("fc.weight");
    let err = ResNet::resnet18_from_state_dict(&no_fc)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no `fc.weight`"), "{err}");
}

/// `named_children()` lists torchvision's submodules that hold parameters
/// (its `relu`, `maxpool` and `avgpool` hold none and are functions here),
/// and the parameter walk is built from it: every parameter name starts with
/// a child's name, in the children's order.
#[test]
fn named_children_are_torchvisions_and_drive_the_parameter_walk() {
    let mut m = model(10);
    let names: Vec<String> = m.named_children().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    );
    let block: Vec<String> = m
        .layer2
        .named_children()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(block, ["0", "1"]);
    let first: Vec<String> = m.layer2[0]
        .named_children()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(first, ["conv1", "bn1", "conv2", "bn2", "downsample"]);
    assert_eq!(m.children().len(), 7);

    let mut seen = Vec::new();
    for (name, _) in m.named_parameters() {
        let child = name.split('.').next().unwrap().to_string();
        if seen.last() != Some(&child) {
            seen.push(child);
        }
    }
    assert_eq!(seen, names);

    // eval()/train() reach every batch norm through the children.
    m.eval();
    assert!(
        !m.layer4[1].bn2.is_training()
            && !m.layer2[0].downsample.as_ref().unwrap().bn.is_training()
    );
    m.train();
    assert!(
        m.layer4[1].bn2.is_training() && m.layer2[0].downsample.as_ref().unwrap().bn.is_training()
    );
}
