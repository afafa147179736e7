//! Images in: decoding, torchvision-exact preprocessing, folders of images.

pub mod resize;
pub mod transform;

pub use transform::{decode, expand_inputs, stack, Preprocess};
