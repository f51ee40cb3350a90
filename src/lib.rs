//! frostgrad: tensors and reverse-mode autograd that skip every gradient no
//! trainable parameter needs.
//!
//! - [`tensor`]: the [`Tensor`] type, its storage, and creation.
//! - [`autograd`]: graph recording, the backward engine, grad mode, and the
//!   per-pass [`BackwardStats`] that show what freezing saved.
//! - [`ops`]: every differentiable op, forward and backward side by side.
//! - [`backend`]: the kernels, one implementation per device behind one trait.
//! - [`nn`], [`optim`], [`io`]: modules (ResNet-18), SGD, weight files.
//! - [`data`], [`train`]: image folders and the training loop of `frostgrad train`.

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod tensor;
pub mod train;

pub use autograd::{no_grad, BackwardStats};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
