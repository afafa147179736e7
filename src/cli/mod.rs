//! Subcommands: one file each, an `Args` struct and a `run`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod common;
mod demo;
mod eval;
mod features;
mod fetch;
mod finetune;
mod inspect;
mod list;
mod predict;

/// Transfer learning on images, on the CPU: pretrained VGG16 and ResNet-18, fine-tuning,
/// prediction and feature extraction.
#[derive(Parser, Debug)]
#[command(name = "tl", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for compute and decoding (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download a model's pretrained weights into the cache, verified.
    Fetch(fetch::Args),
    /// List the known models and what the cache holds.
    List(list::Args),
    /// Show a model's layers, output shapes and parameter counts (like Keras's summary).
    Inspect(inspect::Args),
    /// Extract one feature vector per image (VGG16 fc7, ResNet-18 pool, or any stage).
    Features(features::Args),
    /// Classify images: top-k classes with probabilities.
    Predict(predict::Args),
    /// Draw a small image set, fine-tune ResNet-18 on it, evaluate and predict: the whole job.
    Demo(demo::Args),
    /// Fine-tune a model on a folder of images (freeze, new head, augmentation, early stopping).
    Finetune(finetune::Args),
    /// Evaluate a checkpoint on a data folder: accuracy, precision/recall, confusion matrix.
    Eval(eval::Args),
    /// Measure kernels and models (GFLOP/s, images/s).
    Bench(bench::Args),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            anyhow::bail!("--threads: must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Fetch(a) => fetch::run(a),
        Command::List(a) => list::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Features(a) => features::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Demo(a) => demo::run(a),
    }
}
