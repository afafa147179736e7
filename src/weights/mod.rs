//! Weights: memory-mapped safetensors reading (f32 in place, f16/bf16 converted), strict loading
//! into a layer tree by torchvision name (timm's VGG names mapped), and atomic saving.

pub mod dtype;
pub mod load;
pub mod safetensors;
pub mod save;

pub use load::{load_into, LoadReport};
pub use safetensors::{TensorData, WeightFile};
pub use save::{link_atomic, save_atomic, save_atomic_as, write_atomic, FileImage};
