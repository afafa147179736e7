//! # tl — transfer learning on images, on the CPU
//!
//! Pretrained VGG16 and ResNet-18 weights, memory-mapped from safetensors files into native Rust
//! graphs whose parameter names are torchvision's; freeze what you keep, attach a new head,
//! fine-tune, and predict or extract features. No Python, no libtorch.
//!
//! The crate is layered: [`tensor`] holds pure kernels (im2col, GEMM, pooling), [`nn`] the layers
//! (each with forward and backward side by side), [`train`] optimizers and the training loop.

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
