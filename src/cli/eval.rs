//! `tl eval`: accuracy, loss, per-class precision and recall, and the confusion matrix of a
//! checkpoint on a data folder.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use tl::data::image_folder::scan;
use tl::data::loader::{batches, load_set, BatchOptions};
use tl::data::Preprocess;
use tl::train::evaluate;
use tl::train::trainer::FitSummary;
use tl::weights::WeightFile;

use super::common::{progress_bar, ModelArgs};

/// Arguments of `tl eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A data folder laid out as for `tl finetune`.
    #[arg(value_name = "DATA_DIR")]
    data: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Which images: val (the validation set, as `tl finetune` split it), train, or all.
    #[arg(long, value_name = "val|train|all", default_value = "val")]
    split: String,
    /// Validation share for a flat folder (default: the checkpoint's, else 0.2).
    #[arg(long, value_name = "F")]
    val_split: Option<f32>,
    /// Split seed for a flat folder (default: the checkpoint's, else 0).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size: must be at least 1");
    }
    let mut model = args.model.open()?;
    let summary: Option<FitSummary> = if std::path::Path::new(&args.model.model).is_file() {
        WeightFile::open(std::path::Path::new(&args.model.model))?
            .metadata()
            .get("training")
            .and_then(|s| serde_json::from_str(s).ok())
    } else {
        None
    };
    let val_split = args
        .val_split
        .or(summary.as_ref().map(|s| s.config.val_split))
        .unwrap_or(0.2);
    let seed = args
        .seed
        .or(summary.as_ref().map(|s| s.config.seed))
        .unwrap_or(0);
    let data = scan(&args.data, val_split, seed)?;
    if data.classes != model.classes() {
        anyhow::bail!(
            "{}: the data's classes {:?} are not the model's {:?}",
            args.data.display(),
            data.classes,
            model.classes()
        );
    }
    let samples = match args.split.as_str() {
        "val" => data.val.clone(),
        "train" => data.train.clone(),
        "all" => data.train.iter().chain(&data.val).cloned().collect(),
        other => anyhow::bail!("--split: {other:?} is not val, train or all"),
    };
    let pre = Preprocess::with_size(model.input_size());
    let bar = progress_bar(samples.len() as u64, "decoding");
    let set = load_set(&samples, pre, &|n| bar.set_position(n as u64));
    bar.finish_and_clear();
    for (p, m) in &set.skipped {
        eprintln!("skipped {}: {m}", p.display());
    }
    if set.is_empty() {
        anyhow::bail!(
            "{}: no readable images in the {} split",
            args.data.display(),
            args.split
        );
    }
    let n = set.len();
    let classes = model.classes().to_vec();
    let (running, confusion) = evaluate(
        &mut model,
        batches(Arc::new(set), BatchOptions::eval(args.batch_size, pre))
            .map(|(x, y)| (x.into_dyn(), y)),
        classes.len(),
    );
    if args.json {
        let per_class: Vec<_> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::json!({"class": c, "precision": confusion.precision(i), "recall": confusion.recall(i),
                    "support": confusion.matrix[i].iter().sum::<usize>()})
            })
            .collect();
        let out = serde_json::json!({
            "images": n, "split": args.split, "accuracy": running.accuracy(), "loss": running.loss(),
            "classes": classes, "per_class": per_class, "confusion": confusion.matrix,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} images ({} split): accuracy {:.4}, loss {:.4}",
        n,
        args.split,
        running.accuracy(),
        running.loss()
    );
    let w = classes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i} {c}").len())
        .max()
        .unwrap_or(5)
        .max(9);
    println!("{:<w$}  precision  recall  support", "class");
    for (i, c) in classes.iter().enumerate() {
        println!(
            "{:<w$}  {:>9.4}  {:>6.4}  {:>7}",
            c,
            confusion.precision(i),
            confusion.recall(i),
            confusion.matrix[i].iter().sum::<usize>()
        );
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{:<w$}", "");
    for i in 0..classes.len() {
        print!(" {:>6}", i);
    }
    println!();
    for (i, row) in confusion.matrix.iter().enumerate() {
        print!("{:<w$}", format!("{i} {}", classes[i]));
        for v in row {
            print!(" {v:>6}");
        }
        println!();
    }
    Ok(())
}
