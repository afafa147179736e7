//! `tl list`.

use anyhow::Result;

/// Arguments of `tl list`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    anyhow::bail!("listing is not built yet")
}
