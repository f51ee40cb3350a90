//! Weight files: named host tensors in and out.
//!
//! [`StateDict`] is the format-neutral middle: readers (safetensors, and
//! PyTorch's `.pth`) produce one, `nn::Module::load_state_dict` consumes
//! it, and writers take one.

pub mod files;
pub mod format;
pub mod pth;
pub mod safetensors;
mod state_dict;

pub use state_dict::{HostTensor, StateDict};
