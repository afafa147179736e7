//! `tl demo`: draw a small labelled image set, fine-tune ResNet-18 on it with
//! `--freeze-until conv5`, evaluate, and predict a few images — the whole product in one command.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `tl demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Working folder for the images, the checkpoint and its metrics.
    #[arg(long, value_name = "DIR", default_value = "tl-demo")]
    dir: PathBuf,
    /// Images drawn per class (circle, square, triangle).
    #[arg(long, value_name = "N", default_value_t = 60)]
    per_class: usize,
    #[arg(long, value_name = "N", default_value_t = 8)]
    epochs: usize,
    /// Crop side used for training (smaller is faster).
    #[arg(long, value_name = "N", default_value_t = 128)]
    image_size: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
}

fn tl_args(args: &[String]) -> super::Cli {
    <super::Cli as clap::Parser>::parse_from(
        std::iter::once("tl".to_string()).chain(args.iter().cloned()),
    )
}

pub fn run(args: Args) -> Result<()> {
    if args.per_class < 5 {
        anyhow::bail!("--per-class: at least 5 images per class are needed for a split");
    }
    let data = args.dir.join("data");
    eprintln!(
        "drawing {} images of {} into {}",
        args.per_class * 3,
        tl::demo::SHAPES.join(", "),
        data.display()
    );
    let _ = std::fs::remove_dir_all(&data);
    let paths = tl::demo::write_dataset(&data, args.per_class, 160, args.seed)?;
    let cache = tl::fetch::cache_dir_from_env();
    let pretrained = tl::fetch::cached_weights(&cache, "resnet18").is_ok();
    if pretrained {
        eprintln!("starting from the cached pretrained ResNet-18 weights");
    } else {
        eprintln!(
            "no cached ResNet-18 weights: starting from RANDOM weights. Frozen random stages carry little \
             shape information, so expect accuracy near chance (1/3); run `tl fetch resnet18` first for \
             ImageNet weights, which is what fine-tuning is for"
        );
    }
    let ckpt = args.dir.join("shapes.safetensors");
    let s = |p: &PathBuf| p.display().to_string();
    let mut finetune = vec![
        "finetune".to_string(),
        s(&data),
        "--model".into(),
        "resnet18".into(),
        "--freeze-until".into(),
        "conv5".into(),
        "--epochs".into(),
        args.epochs.to_string(),
        "--image-size".into(),
        args.image_size.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--lr".into(),
        "0.01".into(),
        "--precise-bn".into(),
        "-o".into(),
        s(&ckpt),
    ];
    if !pretrained {
        finetune.push("--from-scratch".into());
    }
    eprintln!("\n$ tl {}", finetune.join(" "));
    super::run(tl_args(&finetune))?;
    let eval = vec!["eval".to_string(), s(&data), "--model".into(), s(&ckpt)];
    eprintln!("\n$ tl {}", eval.join(" "));
    super::run(tl_args(&eval))?;
    let mut predict = vec!["predict".to_string()];
    predict.extend(
        [0, args.per_class, 2 * args.per_class]
            .iter()
            .map(|&i| s(&paths[i])),
    );
    predict.extend(["--model".to_string(), s(&ckpt), "--topk".into(), "2".into()]);
    eprintln!("\n$ tl {}", predict.join(" "));
    super::run(tl_args(&predict))
}
