//! `tl inspect`: one row per layer (stage, name, output shape, parameters, trainable or frozen)
//! and totals, like Keras's `model.summary()`.

use std::path::PathBuf;

use anyhow::Result;
use rand::SeedableRng;
use tl::models::{head::parse_head, Init, Model};

/// Arguments of `tl inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// vgg16, resnet18, a fetched model's name, or a tl checkpoint file.
    #[arg(value_name = "MODEL|CHECKPOINT")]
    model: String,
    /// Weights to load (default: the cache when fetched; otherwise the architecture alone).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Freeze every stage before this one.
    #[arg(long, value_name = "STAGE")]
    freeze_until: Option<String>,
    /// Attach a new head with these hidden widths ("" for a single Linear).
    #[arg(long, value_name = "SPEC")]
    head: Option<String>,
    /// Stage after which the new head attaches (default: fc7 for vgg16, pool for resnet18).
    #[arg(long, value_name = "STAGE")]
    cut: Option<String>,
    /// Classes of the new head.
    #[arg(long, value_name = "N", default_value_t = 2)]
    num_classes: usize,
    /// Dropout of the new head.
    #[arg(long, value_name = "P", default_value_t = 0.5)]
    dropout: f32,
    /// Input side for the output shapes.
    #[arg(long, value_name = "N", default_value_t = 224)]
    input_size: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    let cache = tl::fetch::cache_dir_from_env();
    let is_arch_only = args.weights.is_none()
        && !std::path::Path::new(&args.model).is_file()
        && tl::fetch::cached_weights(&cache, &args.model).is_err();
    let (mut model, source) = if is_arch_only {
        let arch = tl::models::open::arch_of(&args.model, &cache)?;
        (
            Model::new(arch, 1000, Init::Zeros),
            "architecture only, no weights loaded".to_string(),
        )
    } else {
        let m = tl::models::open(&args.model, args.weights.as_deref(), &cache)?;
        let src = args
            .weights
            .as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or_else(|| args.model.clone());
        (m, format!("weights from {src}"))
    };
    if args.head.is_some() || args.cut.is_some() {
        if args.num_classes == 0 {
            anyhow::bail!("--num-classes: must be at least 1");
        }
        let hidden = parse_head(args.head.as_deref().unwrap_or(""))?;
        let cut = args
            .cut
            .clone()
            .unwrap_or_else(|| model.arch().default_cut().to_string());
        let classes = (0..args.num_classes).map(|i| format!("class{i}")).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        model.attach_head(&cut, &hidden, classes, args.dropout, &mut rng)?;
    }
    if let Some(stage) = &args.freeze_until {
        model.freeze_until(stage)?;
    }
    if args.input_size < 32 {
        anyhow::bail!(
            "--input-size: {} is too small (at least 32)",
            args.input_size
        );
    }
    let rows = model.summary(1, args.input_size);
    let (total, trainable) = model.param_counts();
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "stage": r.stage, "name": r.name, "layer": r.layer,
                    "output_shape": r.output_shape, "params": r.params, "trainable": r.trainable,
                })
            })
            .collect();
        let out = serde_json::json!({
            "arch": model.arch().name(), "source": source, "layers": rows,
            "total_params": total, "trainable_params": trainable, "non_trainable_params": total - trainable,
            "stages": model.stage_names(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Model: {} ({source})", model.arch().name());
    println!(
        "{:<7} {:<22} {:<58} {:<20} {:>12}  state",
        "stage", "name", "layer", "output shape", "params"
    );
    println!("{}", "-".repeat(132));
    for r in &rows {
        let shape = format!("{:?}", r.output_shape);
        let state = match (r.params, r.trainable) {
            (0, _) => "",
            (p, t) if p == t => "trainable",
            (_, 0) => "frozen",
            _ => "partly frozen",
        };
        println!(
            "{:<7} {:<22} {:<58} {:<20} {:>12}  {}",
            r.stage,
            r.name,
            r.layer,
            shape,
            group(r.params),
            state
        );
    }
    println!("{}", "-".repeat(132));
    println!("Total params: {}", group(total));
    println!("Trainable params: {}", group(trainable));
    println!("Non-trainable params: {}", group(total - trainable));
    println!("Stages: {}", model.stage_names().join(", "));
    Ok(())
}
