//! Parameter initialisation for models built from scratch (torchvision's schemes), or zeros
//! (untouched pages) when weights will be loaded over them.

use ndarray::ArrayD;
use rand::{Rng, RngCore};

/// How a model's parameters start.
pub enum Init<'a> {
    /// Zeros, for a model whose weights are loaded right after (costs no memory until written).
    Zeros,
    /// torchvision's initialisation, drawn from the given RNG.
    Random(&'a mut dyn RngCore),
}

/// `N(0, std²)` samples (Box–Muller).
pub fn normal(rng: &mut dyn RngCore, shape: &[usize], std: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(shape, || {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
    })
}

/// A conv kernel `[C_out, C_in, k, k]`: Kaiming normal with `fan_out = C_out·k·k` for ReLU
/// (`std = √(2/fan_out)`), as torchvision's VGG and ResNet.
pub fn conv_weight(init: &mut Init<'_>, c_out: usize, c_in: usize, k: usize) -> ArrayD<f32> {
    let shape = [c_out, c_in, k, k];
    match init {
        Init::Zeros => ArrayD::zeros(&shape[..]),
        Init::Random(rng) => normal(*rng, &shape, (2.0 / (c_out * k * k) as f32).sqrt()),
    }
}

/// Zeros of `shape` (biases of from-scratch convolutions, and every tensor under [`Init::Zeros`]).
pub fn zeros(shape: &[usize]) -> ArrayD<f32> {
    ArrayD::zeros(shape)
}
