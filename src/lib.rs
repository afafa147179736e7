//! # tl — transfer learning on images, on the CPU
//!
//! Pretrained VGG16 and ResNet-18 weights, memory-mapped from safetensors files into native Rust
//! graphs whose parameter names are torchvision's; freeze what you keep, attach a new head,
//! fine-tune, and predict or extract features. No Python, no libtorch.
//!
//! The crate is layered: [`tensor`] holds pure kernels (im2col, GEMM, pooling), [`nn`] the layers
//! (each with forward and backward side by side), [`models`] VGG16 and ResNet-18 assembled from
//! them, [`weights`] safetensors loading and saving, [`data`] images in, [`train`] optimizers and
//! the fine-tuning loop, [`fetch`] the weight cache, [`infer`] batched inference.
//!
//! # Features and logits from a weight file
//!
//! ```
//! use std::collections::HashMap;
//! use tl::data::{stack, Preprocess};
//! use tl::models::{synthetic, Arch, Init, Model};
//!
//! # fn main() -> tl::Result<()> {
//! let dir = std::env::temp_dir().join(format!("tl-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! // A weight file with torchvision names (here synthetic; `tl fetch resnet18` gives ImageNet's).
//! let weights = dir.join("resnet18.safetensors");
//! let mut m = Model::new(Arch::Resnet18, 1000, Init::Zeros);
//! synthetic::fill(m.net_mut());
//! let mut tensors = Vec::new();
//! m.visit(&mut |name, p| tensors.push((name.to_string(), p.value())));
//! tl::weights::save_atomic(&weights, tensors, HashMap::new())?;
//! // Two image files.
//! let images = tl::demo::write_dataset(&dir.join("images"), 1, 256, 0)?;
//!
//! // Load the model from the file (memory-mapped; f32 weights are used in place).
//! let mut model = tl::models::open("resnet18", Some(&weights), &tl::fetch::cache_dir_from_env())?;
//! // Image paths -> pooled features [N, 512], decoding in parallel with the compute.
//! let pre = Preprocess::default();
//! let feats = tl::infer::run_stage(&mut model, &images, pre, 16, "pool", &mut |_| {})?;
//! assert_eq!(feats.dim(), (3, 512));
//! // Decoded images -> a batch -> logits [N, 1000] (ImageNet class names for 1000 outputs).
//! let batch = stack(&[pre.load(&images[0])?, pre.load(&images[1])?]);
//! let logits = tl::infer::forward_stage(&mut model, batch.clone(), "fc");
//! assert_eq!(logits.dim(), (2, 1000));
//! assert_eq!(model.classes().len(), 1000);
//!
//! // VGG16's fc7: any stage by name gives its output, here [N, 4096].
//! let mut vgg = Model::new(Arch::Vgg16, 1000, Init::Zeros);
//! synthetic::fill(vgg.net_mut());
//! let fc7 = tl::infer::forward_stage(&mut vgg, batch, "fc7");
//! assert_eq!(fc7.dim(), (2, 4096));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

pub mod data;
pub mod demo;
pub mod error;
pub mod fetch;
pub mod infer;
pub mod models;
pub mod nn;
pub mod output;
pub mod tensor;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
