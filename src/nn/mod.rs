//! Neural-network modules with PyTorch's names, order and semantics.
//!
//! - [`Module`]: the trait every layer implements. It exposes parameters and
//!   buffers under torchvision's dotted names (`layer1.0.bn1.weight`), in
//!   `state_dict()` order, and provides train/eval mode, `requires_grad`
//!   for a module, for all of it or by name pattern, `state_dict` and
//!   `load_state_dict`.
//! - Layers: [`Conv2d`], [`BatchNorm2d`], [`Linear`].
//! - [`ResNet`] (ResNet-18, built from [`BasicBlock`]s) with torchvision's
//!   architecture and initialisation.
//! - [`ParamPatterns`]: comma-separated glob patterns over parameter names
//!   (`"layer4.*,fc.*"`), the way `frostgrad step --trainable` selects what
//!   to train.
//!
//! Parameters are [`Tensor`](crate::Tensor) leaves and `Tensor` is a shared
//! handle, so what [`Module::named_parameters`] returns *is* the model's
//! parameter: `t.set_requires_grad(false)` on it freezes the model.

mod batch_norm;
mod conv;
mod init;
mod linear;
mod module;
mod pattern;
mod resnet;

pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, Conv2dConfig};
pub use linear::Linear;
pub use module::{for_each_module_mut, Module, TensorKind};
pub use pattern::{glob_match, ParamPatterns};
pub use resnet::{resnet18, BasicBlock, Downsample, ResNet};
