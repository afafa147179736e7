//! New classifier heads: `--head 256,128` is `Linear(in,256) ReLU Dropout(p) Linear(256,128) ReLU
//! Dropout(p) Linear(128,C)`; `--head ""` is `Linear(in, C)`. Layers are named `head.<i>` with i
//! the index the layer would have in a PyTorch `nn.Sequential`, and initialised as `nn.Linear`.

use rand::RngCore;

use crate::error::{Error, Result};
use crate::nn::{Dropout, Layer, Linear, Relu};

/// Parses a `--head` string: hidden layer widths separated by commas (`""` for none).
///
/// # Errors
/// [`Error::Config`] naming `--head` when a width is not a positive integer.
pub fn parse_head(spec: &str) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::config(
                "--head",
                format!(
                    "{spec:?}: expected positive layer widths separated by commas, e.g. 256,128"
                ),
            )),
        })
        .collect()
}

/// The head's layers, in order, for `in_features` inputs and `classes` outputs.
pub fn build_head(
    in_features: usize,
    hidden: &[usize],
    classes: usize,
    dropout: f32,
    rng: &mut dyn RngCore,
) -> Vec<Box<dyn Layer>> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let mut width = in_features;
    for &h in hidden {
        layers.push(Box::new(Linear::new(width, h, true, rng)));
        layers.push(Box::new(Relu::new()));
        layers.push(Box::new(Dropout::new(dropout)));
        width = h;
    }
    layers.push(Box::new(Linear::new(width, classes, true, rng)));
    layers
}
