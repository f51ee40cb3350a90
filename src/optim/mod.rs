//! Optimizers. [`Sgd`] is `torch.optim.SGD` with PyTorch's exact update.

mod sgd;

pub use crate::backend::SgdConfig;
pub use sgd::Sgd;
