//! `tl fetch`.

use anyhow::Result;

/// Arguments of `tl fetch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name (vgg16, resnet18).
    model: String,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::bail!("{}: fetching is not built yet", args.model)
}
