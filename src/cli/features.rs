//! `tl features`: one feature vector per image (default: VGG16 fc7, ResNet-18 pool) to a
//! `.npy`, `.csv` or `.safetensors` file.

use std::path::PathBuf;

use anyhow::Result;
use tl::data::{expand_inputs, Preprocess};

use super::common::{progress_bar, ModelArgs};

/// Arguments of `tl features`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or directories (expanded to the images below them, sorted by path).
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Stage whose output to extract (default: fc7 for vgg16, pool for resnet18).
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// Output file: .npy, .csv or .safetensors.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Images per batch.
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    tl::output::Format::from_path(&args.output)?;
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size: must be at least 1");
    }
    let paths = expand_inputs(&args.inputs)?;
    let mut model = args.model.open()?;
    let layer = args
        .layer
        .clone()
        .unwrap_or_else(|| model.arch().default_feature_stage().to_string());
    let stage = model.resolve_stage("--layer", &layer)?;
    let pre = Preprocess::with_size(model.input_size());
    let bar = progress_bar(paths.len() as u64, "features");
    let features = tl::infer::run_stage(
        &mut model,
        &paths,
        pre,
        args.batch_size,
        &stage,
        &mut |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    tl::output::write_features(&args.output, &features, &paths, &stage, &args.model.model)?;
    eprintln!(
        "wrote {} x {} features ({stage}) to {}",
        features.nrows(),
        features.ncols(),
        args.output.display()
    );
    Ok(())
}
