//! Pieces several subcommands share: opening `--model`/`--weights`, progress bars.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use tl::models::Model;

/// `--model` and `--weights`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// vgg16, resnet18, a fetched model's name, or a tl checkpoint file.
    #[arg(long, short = 'm', value_name = "MODEL|CHECKPOINT")]
    pub model: String,
    /// A safetensors file of weights (torchvision or timm names, or a tl checkpoint) instead of
    /// the cache that `tl fetch` fills.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
}

impl ModelArgs {
    /// Opens the model.
    pub fn open(&self) -> Result<Model> {
        Ok(tl::models::open(
            &self.model,
            self.weights.as_deref(),
            &tl::fetch::cache_dir_from_env(),
        )?)
    }
}

/// A progress bar on stderr for `total` items, hidden for a handful of items or when stderr is
/// not a terminal-like sink that wants one.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if total <= 8 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
