//! Helpers shared by the integration tests: reading the safetensors
//! fixtures that `scripts/gen_references.py` writes, comparing with a
//! relative L2 error, and backpropagating `sum(out * R)`.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use frostgrad::{ops, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/<sub>` in the source tree.
pub fn fixture_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(sub)
}

/// A host-side tensor read from a fixture, widened to f64 (or i64).
#[derive(Clone, Debug)]
pub enum HostValues {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

/// One safetensors file held in memory, with its metadata.
pub struct Fixture {
    pub name: String,
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

impl Fixture {
    pub fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let meta = header.metadata().clone().unwrap_or_default();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Fixture { name, bytes, meta }
    }

    /// Every `*.safetensors` in `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Vec<Fixture> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Fixture::load(p)).collect()
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture parsed once already")
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name))
    }

    pub fn meta_opt(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).0
    }

    fn view(&self, name: &str) -> (Vec<usize>, HostValues) {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: tensor `{name}`: {e}", self.name));
        (t.shape().to_vec(), decode(t.dtype(), t.data()))
    }

    /// Float data as f64 (f32 inputs are widened exactly).
    pub fn f64(&self, name: &str) -> Vec<f64> {
        match self.view(name).1 {
            HostValues::Float(v) => v,
            HostValues::Int(_) => panic!("{}: `{name}` is an integer tensor", self.name),
        }
    }

    /// An f32 input exactly as stored.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: `{name}`: {e}", self.name));
        assert_eq!(
            t.dtype(),
            Dtype::F32,
            "{}: `{name}` must be stored as f32",
            self.name
        );
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        match self.view(name).1 {
            HostValues::Int(v) => v,
            HostValues::Float(_) => panic!("{}: `{name}` is a float tensor", self.name),
        }
    }

    /// A CPU tensor from an f32 input, optionally requiring a gradient.
    pub fn tensor(&self, name: &str, requires_grad: bool) -> Tensor {
        let t = Tensor::from_vec(self.f32(name), &self.shape(name), Device::Cpu).expect("tensor");
        t.requires_grad_(requires_grad).expect("requires_grad")
    }

    pub fn tensor_i64(&self, name: &str) -> Tensor {
        Tensor::from_vec_i64(self.i64(name), &self.shape(name), Device::Cpu).expect("tensor")
    }
}

/// Little-endian safetensors bytes to host values.
pub fn decode(dtype: Dtype, data: &[u8]) -> HostValues {
    match dtype {
        Dtype::F32 => HostValues::Float(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        Dtype::F64 => HostValues::Float(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        Dtype::I64 => HostValues::Int(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        other => panic!("unsupported fixture dtype {other:?}"),
    }
}

pub fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `||actual - expected|| / ||expected||` (absolute when `expected` is 0).
pub fn rel_l2(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let diff: Vec<f64> = actual.iter().zip(expected).map(|(a, e)| a - e).collect();
    let norm = l2(expected);
    if norm == 0.0 {
        l2(&diff)
    } else {
        l2(&diff) / norm
    }
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `sum(out * R)` as a scalar tensor, built from ops the engine has:
/// `linear(reshape(out, [1, n]), R as a [1, n] weight)` is the dot product,
/// and its input gradient is `1 * R`, so backward hands `out` exactly `R`
/// (a multiplication by 1.0 is exact in f32). `R` does not require a gradient.
pub fn contract(out: &Tensor, cotangent: &[f32]) -> Tensor {
    let n = out.numel();
    assert_eq!(cotangent.len(), n, "cotangent length");
    let flat = ops::reshape(out, &[1, n]).expect("reshape");
    let r = Tensor::from_vec(cotangent.to_vec(), &[1, n], Device::Cpu).expect("cotangent");
    ops::sum(&ops::linear(&flat, &r, None).expect("linear")).expect("sum")
}

/// The gradient a leaf accumulated, as f64.
pub fn grad_of(t: &Tensor) -> Vec<f64> {
    widen(
        &t.grad()
            .expect("leaf should have a gradient")
            .to_vec_f32()
            .expect("f32 grad"),
    )
}

/// `value <= bound`, false when either is NaN, so a NaN result fails a check
/// (which `value > bound` would let pass).
pub fn within(value: f64, bound: f64) -> bool {
    value <= bound
}
