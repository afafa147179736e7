//! `tl bench`.

use anyhow::Result;

/// Arguments of `tl bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to measure.
    job: String,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::bail!("{}: benchmarks are not built yet", args.job)
}
