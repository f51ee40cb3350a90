//! An ordered map of names to host tensors, as `model.state_dict()` is.

use crate::core_types::HostData;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// A tensor's data on the host, with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: HostData) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::StateDict(format!(
                "shape {shape:?} needs {numel} elements, data has {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        Ok(Self {
            shape: t.shape().to_vec(),
            data: t.to_cpu_storage()?,
        })
    }
    pub fn to_tensor(&self, device: Device) -> Result<Tensor> {
        let data = crate::backend::cpu::alloc::copy_host("tensor", &self.data)?;
        Tensor::from_cpu(data, &self.shape, device)
    }
}

/// Names in insertion order (a `state_dict`'s order is the module's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    entries: Vec<(String, HostTensor)>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces `name`.
    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        let name = name.into();
        match self.entries.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = t,
            None => self.entries.push((name, t)),
        }
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        let i = self.entries.iter().position(|(k, _)| k == name)?;
        Some(self.entries.remove(i).1)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.entries.iter().map(|(k, t)| (k.as_str(), t))
    }
    /// Removes `prefix` from every key that has it (`module.` from
    /// DataParallel); keys without it are kept as they are.
    pub fn strip_prefix(self, prefix: &str) -> StateDict {
        StateDict {
            entries: self
                .entries
                .into_iter()
                .map(|(k, t)| match k.strip_prefix(prefix) {
                    Some(rest) => (rest.to_string(), t),
                    None => (k, t),
                })
                .collect(),
        }
    }
}

impl IntoIterator for StateDict {
    type Item = (String, HostTensor);
    type IntoIter = std::vec::IntoIter<(String, HostTensor)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}
