//! frostgrad: tensors and reverse-mode autograd that skip every gradient no
//! trainable parameter needs.
//!
//! - [`core_types`]: [`DType`], [`Device`] and [`HostData`], which every
//!   layer names and which import nothing of ours.
//! - [`tensor`]: the [`Tensor`] type and its creation.
//! - [`autograd`]: graph recording, the backward engine, grad mode, and the
//!   per-pass [`BackwardStats`] that show what freezing saved.
//! - [`ops`]: every differentiable op, forward and backward side by side.
//! - [`backend`]: the kernels, one implementation per device behind one
//!   trait, and [`backend::Storage`], the dispatch over them.
//! - [`nn`], [`optim`], [`io`]: modules (ResNet-18), SGD, weight files.
//! - [`data`], [`train`]: image folders and the training loop of `frostgrad train`.
//! - [`viz`]: the backward graph as JSON, DOT and SVG (`frostgrad graph`).
//! - `bench` and `cli` (features of the same names, on by default): the
//!   benchmark and the `frostgrad` command line; `default-features = false`
//!   leaves them and clap out.

pub mod autograd;
pub mod backend;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod core_types;
pub mod data;
pub mod error;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod tensor;
pub mod train;
pub mod viz;

pub use autograd::{no_grad, BackwardStats};
pub use core_types::{DType, Device, HostData};
pub use error::{Error, Result};
pub use tensor::Tensor;
