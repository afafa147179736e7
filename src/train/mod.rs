//! Training: optimizers, regularisation, early stopping, metrics, the fine-tuning loop.

pub mod early_stopping;
pub mod feature_cache;
pub mod finetune;
pub mod metrics;
pub mod optimizer;
pub mod regularization;
pub mod trainer;
mod writer;

pub use early_stopping::EarlyStopping;
pub use feature_cache::FeatureCache;
pub use finetune::{
    finetune, CacheInfo, FinetuneObserver, FinetuneOptions, FinetuneReport, Timings,
};
pub use metrics::{Confusion, Running};
pub use optimizer::{zero_grad, Adam, Optimizer, Sgd};
pub use regularization::Penalty;
pub use trainer::{
    evaluate, fit, train_step, Batch, FitSummary, Observer, OptimizerKind, RunFiles, TrainConfig,
    DEFAULT_SAVE_INTERVAL,
};
