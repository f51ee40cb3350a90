//! Image data for `frostgrad train`, `eval` and `predict`: torchvision's
//! `ImageFolder` layout ([`folder`]), its transforms ([`transform`]), and
//! batches decoded ahead of the compute on other threads ([`loader`]).

pub mod folder;
pub mod loader;
pub mod transform;

pub use folder::{open_splits, ImageFolder, Sample};
pub use loader::{Batch, LoadOptions, Loader};
