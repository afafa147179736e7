//! `tl predict`: top-k classes per image, as text or `--json`.

use std::path::PathBuf;

use anyhow::Result;
use tl::data::{expand_inputs, Preprocess};
use tl::infer::{probabilities, run_stage, top_k};

use super::common::{progress_bar, ModelArgs};

/// Arguments of `tl predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or directories (expanded to the images below them, sorted by path).
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to show per image.
    #[arg(long, value_name = "K", default_value_t = 5)]
    topk: usize,
    /// Print JSON (one object per image, in input order).
    #[arg(long)]
    json: bool,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.topk == 0 {
        anyhow::bail!("--topk: must be at least 1");
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size: must be at least 1");
    }
    let paths = expand_inputs(&args.inputs)?;
    let mut model = args.model.open()?;
    let last = *model.stage_names().last().expect("a model has stages");
    let last = last.to_string();
    let pre = Preprocess::with_size(model.input_size());
    let bar = progress_bar(paths.len() as u64, "predict");
    let logits = run_stage(
        &mut model,
        &paths,
        pre,
        args.batch_size,
        &last,
        &mut |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let probs = probabilities(&logits);
    let classes = model.classes();
    let k = args.topk.min(classes.len());
    let mut out = Vec::new();
    for (path, (p, l)) in paths
        .iter()
        .zip(probs.rows().into_iter().zip(logits.rows()))
    {
        let top: Vec<_> = top_k(p, k)
            .into_iter()
            .map(|(i, prob)| serde_json::json!({"index": i, "class": classes[i], "probability": prob, "logit": l[i]}))
            .collect();
        out.push(serde_json::json!({"path": path.display().to_string(), "top": top}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for item in &out {
            let tops: Vec<String> = item["top"]
                .as_array()
                .expect("array")
                .iter()
                .map(|t| {
                    format!(
                        "{} {:.4}",
                        t["class"].as_str().unwrap_or("?"),
                        t["probability"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!(
                "{}\t{}",
                item["path"].as_str().unwrap_or("?"),
                tops.join("\t")
            );
        }
    }
    Ok(())
}
