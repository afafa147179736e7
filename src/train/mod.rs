//! Training: optimizers, regularisation, the fine-tuning loop.

pub mod optimizer;
pub mod regularization;

pub use optimizer::{zero_grad, Adam, Optimizer, Sgd};
pub use regularization::Penalty;
