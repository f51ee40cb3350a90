//! The `Module` trait: parameters and buffers under PyTorch's dotted names.
//!
//! A module implements three small things: [`Module::forward`],
//! [`Module::visit`] (call back once per own parameter/buffer, then recurse
//! into children with an extended prefix) and [`Module::set_training`].
//! Everything a PyTorch user reaches for (`named_parameters`,
//! `requires_grad_`, `state_dict`, `load_state_dict`, `train`/`eval`) is a
//! provided method built on the visitor, so the order of `visit` is the
//! order of `state_dict()`: each module's own tensors, then its children in
//! declaration order, exactly as `torch.nn.Module` does it.

use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::io::{HostTensor, StateDict};
use crate::nn::{BatchNorm2d, ParamPatterns};
use crate::tensor::{DType, Device, Storage, Tensor};

/// Whether a named tensor is a trainable parameter or state such as
/// batch norm's running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// `name` under `prefix`: `("layer1.0", "conv1")` gives `layer1.0.conv1`.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub trait Module {
    fn forward(&self, input: &Tensor) -> Result<Tensor>;

    /// PyTorch's `named_children()`: the direct submodules with their
    /// attribute names (`conv1`, `layer1`, `0`), in registration order.
    /// A container lists its children here and gets `visit`, `visit_mut` and
    /// `set_training` for free, so its children are named in one place; a
    /// leaf (conv, batch norm, linear) has none and implements those three.
    fn named_children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// [`named_children`](Self::named_children) with mutable access.
    fn named_children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        Vec::new()
    }

    /// Calls `f(full_name, tensor, kind)` for every parameter and buffer, in
    /// `state_dict()` order, with names prefixed by `prefix` (`""` at the top).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (name, child) in self.named_children() {
            child.visit(&join(prefix, &name), f);
        }
    }

    /// Like [`visit`](Self::visit) with the right to replace each tensor
    /// (moving a model to another device makes new tensors).
    fn visit_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Tensor, TensorKind) -> Result<()>,
    ) -> Result<()> {
        for (name, child) in self.named_children_mut() {
            child.visit_mut(&join(prefix, &name), f)?;
        }
        Ok(())
    }

    /// PyTorch's `module.train(training)`, recursively.
    fn set_training(&mut self, training: bool) {
        for (_, child) in self.named_children_mut() {
            child.set_training(training);
        }
    }

    /// PyTorch's `children()`: the direct submodules, in registration order.
    fn children(&self) -> Vec<&dyn Module> {
        self.named_children().into_iter().map(|(_, c)| c).collect()
    }

    /// `Some(self)` for a [`BatchNorm2d`], `None` for every other module:
    /// what `isinstance(m, nn.BatchNorm2d)` is in a PyTorch loop over
    /// `model.named_modules()` (see [`for_each_module_mut`]).
    fn as_batch_norm_mut(&mut self) -> Option<&mut BatchNorm2d> {
        None
    }

    /// PyTorch's `module.training`.
    fn is_training(&self) -> bool;

    // ----- provided -------------------------------------------------------

    /// `model.train()`: batch norm uses batch statistics and updates its
    /// running statistics (whether or not its parameters are frozen).
    fn train(&mut self) {
        self.set_training(true);
    }

    /// `model.eval()`: batch norm uses its running statistics.
    fn eval(&mut self) {
        self.set_training(false);
    }

    /// Parameters with their full names, in `named_parameters()` order.
    /// The tensors are handles to the model's own parameters.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        named(self, TensorKind::Parameter)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Buffers (running statistics, `num_batches_tracked`) with their names.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        named(self, TensorKind::Buffer)
    }

    /// `module.requires_grad_(flag)`: sets the flag on every parameter of
    /// this module (use it on a child, e.g. `model.layer4`, to freeze part).
    fn requires_grad_(&self, flag: bool) -> Result<()> {
        for p in self.parameters() {
            p.set_requires_grad(flag)?;
        }
        Ok(())
    }

    /// Sets `requires_grad = flag` on the parameters whose name matches any
    /// of `patterns` and leaves the others alone. Returns how many matched.
    /// A pattern that matches no parameter is an error (nothing is changed).
    fn set_requires_grad_matching(&self, patterns: &ParamPatterns, flag: bool) -> Result<usize> {
        let params = self.named_parameters();
        check_all_patterns_match(patterns, &params)?;
        let mut count = 0;
        for (name, p) in &params {
            if patterns.matches(name) {
                p.set_requires_grad(flag)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Makes exactly the parameters matching `patterns` trainable and
    /// freezes all others: `"*"` is fine-tuning, `"fc.*"` transfer
    /// learning. A pattern that matches nothing is an error (nothing is
    /// changed). Returns the names of the trainable parameters.
    fn set_trainable(&self, patterns: &ParamPatterns) -> Result<Vec<String>> {
        let params = self.named_parameters();
        check_all_patterns_match(patterns, &params)?;
        let mut trainable = Vec::new();
        for (name, p) in params {
            let flag = patterns.matches(&name);
            p.set_requires_grad(flag)?;
            if flag {
                trainable.push(name);
            }
        }
        Ok(trainable)
    }

    /// Parameters and buffers, copied to the host, in torchvision's order.
    fn state_dict(&self) -> Result<StateDict> {
        let mut entries = Vec::new();
        self.visit("", &mut |name, t, _| {
            entries.push((name.to_string(), t.clone()))
        });
        let mut sd = StateDict::new();
        for (name, t) in entries {
            sd.insert(name, HostTensor::from_tensor(&t)?);
        }
        Ok(sd)
    }

    /// Copies `state` into the model's tensors in place (handles taken
    /// earlier with `named_parameters` stay valid; `requires_grad` flags are
    /// untouched). Every key is checked first: a missing, unexpected,
    /// mis-shaped or wrongly typed entry is an error that lists all such
    /// problems, and then nothing is loaded.
    ///
    /// One leniency, PyTorch's own: a missing `*.num_batches_tracked` (old
    /// checkpoints, e.g. torchvision's ImageNet weights, predate it) is set
    /// to 0 rather than reported.
    fn load_state_dict(&self, state: &StateDict) -> Result<()> {
        let mut targets: Vec<(String, Tensor)> = Vec::new();
        self.visit("", &mut |name, t, _| {
            targets.push((name.to_string(), t.clone()))
        });

        let mut problems = Vec::new();
        for (name, t) in &targets {
            match state.get(name) {
                None if name.ends_with(".num_batches_tracked") || name == "num_batches_tracked" => {
                }
                None => problems.push(format!("missing key `{name}`")),
                Some(h) if h.shape != t.shape() => problems.push(format!(
                    "`{name}` has shape {:?} in the state dict but {:?} in the model",
                    h.shape,
                    t.shape()
                )),
                Some(h) if h.dtype() != t.dtype() => problems.push(format!(
                    "`{name}` has dtype {:?} in the state dict but {:?} in the model",
                    h.dtype(),
                    t.dtype()
                )),
                Some(_) => {}
            }
        }
        for key in state.names() {
            if !targets.iter().any(|(n, _)| n == key) {
                problems.push(format!("unexpected key `{key}`"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::StateDict(format!(
                "cannot load: {} problem{}: {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                crate::error::cut_list(&problems, 6, "; ")
            )));
        }

        for (name, t) in &targets {
            let data = match state.get(name) {
                Some(h) => h.data.clone(),
                // The num_batches_tracked leniency above.
                None => crate::core_types::HostData::I64(vec![0; t.numel()]),
            };
            let storage = Storage::from_cpu(data, t.device())?;
            debug_assert_eq!(storage.len(), t.numel());
            *t.storage_mut() = storage;
        }
        Ok(())
    }

    /// Moves every parameter and buffer to `device`, keeping `requires_grad`
    /// (like `model.to(device)`; gradients are dropped).
    fn to_device(&mut self, device: Device) -> Result<()> {
        self.visit_mut("", &mut |_, t, kind| {
            if t.device() == device {
                return Ok(());
            }
            let moved = t.to_device(device)?;
            if kind == TensorKind::Parameter && t.requires_grad() {
                moved.set_requires_grad(true)?;
            }
            *t = moved;
            Ok(())
        })
    }
}

fn named<M: Module + ?Sized>(module: &M, want: TensorKind) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    module.visit("", &mut |name, t, kind| {
        if kind == want {
            out.push((name.to_string(), t.clone()));
        }
    });
    out
}

fn check_all_patterns_match(patterns: &ParamPatterns, params: &[(String, Tensor)]) -> Result<()> {
    let unmatched = patterns.unmatched(params.iter().map(|(n, _)| n.as_str()));
    if unmatched.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unmatched
        .iter()
        .map(|p| format!("`{}`", crate::error::cut_text(p, 60)))
        .collect();
    Err(Error::invalid(
        "parameter patterns",
        format!(
            "{} matches no parameter name (names look like `conv1.weight`, `layer1.0.bn1.bias`, `fc.weight`)",
            crate::error::cut_list(&list, 5, ", ")
        ),
    ))
}

/// A list of modules is a container named by index, like `nn.Sequential`:
/// ResNet's `layer1` is a `Vec<BasicBlock>` whose blocks are `layer1.0`, `layer1.1`.
impl<M: Module> Module for Vec<M> {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for m in self {
            x = m.forward(&x)?;
        }
        Ok(x)
    }
    fn named_children(&self) -> Vec<(String, &dyn Module)> {
        self.iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m as &dyn Module))
            .collect()
    }
    fn named_children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.iter_mut()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m as &mut dyn Module))
            .collect()
    }
    fn is_training(&self) -> bool {
        self.first().is_none_or(Module::is_training)
    }
}

/// PyTorch's `for name, m in module.named_modules(): ...` with mutable
/// access: calls `f(full_name, m)` on `module` (named `prefix`) and then on
/// every descendant, depth first in registration order. The walk follows
/// [`Module::named_children_mut`], so a container that names its children
/// once is walked correctly with no list of its own.
pub fn for_each_module_mut(
    module: &mut dyn Module,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut dyn Module),
) {
    f(prefix, &mut *module);
    for (name, child) in module.named_children_mut() {
        for_each_module_mut(child, &join(prefix, &name), f);
    }
}

/// Checks a freshly built parameter: f32 (the only dtype gradients flow through).
pub(crate) fn new_parameter(t: Tensor) -> Result<Tensor> {
    debug_assert_eq!(t.dtype(), DType::F32);
    t.requires_grad_(true)
}
