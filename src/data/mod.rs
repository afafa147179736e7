//! Images in: decoding, torchvision-exact preprocessing, labelled image folders, augmentation and
//! the batched training input pipeline.

pub mod augment;
pub mod image_folder;
pub mod loader;
pub mod resize;
pub mod transform;

pub use augment::{Augment, AugmentParams};
pub use image_folder::{scan, scan_classes, Dataset, Layout, Sample};
pub use loader::{batches, load_set, BatchOptions, Batches, Loaded};
pub use transform::{decode, expand_inputs, stack, Preprocess};
