//! Losses: each returns the scalar loss and `∂L/∂input`.
//!
//! - Cross-entropy on logits `z` `[N, C]` with class targets `t`: fused log-softmax,
//!   `L = −(1/N)·Σₙ log softmax(zₙ)[tₙ]`, `∂L/∂z = (softmax(z) − onehot(t))/N`.
//! - MSE on predictions `o` and targets `t` of the same shape: `Mean`, `L = (1/M)·Σ(o − t)²`,
//!   `∂L/∂o = 2(o − t)/M`; `HalfSum` (the lecture's form), `L = ½·Σ(t − o)²`, `∂L/∂o = o − t`.

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis};

/// Mean cross-entropy of `logits` `[N, C]` against class indices `targets` (`N` of them).
///
/// # Panics
/// Panics if `targets.len() != N` or a target is `≥ C`.
pub fn cross_entropy(logits: ArrayView2<'_, f32>, targets: &[usize]) -> (f32, Array2<f32>) {
    let (n, c) = logits.dim();
    assert_eq!(targets.len(), n, "cross_entropy: one target per row");
    let mut grad = Array2::<f32>::zeros((n, c));
    let mut total = 0.0f64;
    for ((row, mut g), &t) in logits
        .axis_iter(Axis(0))
        .zip(grad.axis_iter_mut(Axis(0)))
        .zip(targets)
    {
        assert!(
            t < c,
            "cross_entropy: target {t} out of range for {c} classes"
        );
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let log_z = max as f64 + sum.ln();
        total += log_z - row[t] as f64;
        for (gv, &v) in g.iter_mut().zip(row.iter()) {
            *gv = ((v as f64 - log_z).exp() / n as f64) as f32;
        }
        g[t] -= 1.0 / n as f32;
    }
    ((total / n.max(1) as f64) as f32, grad)
}

/// How [`mse`] reduces the squared errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MseReduction {
    /// `(1/M)·Σ(o − t)²` (PyTorch's `MSELoss()`).
    Mean,
    /// `½·Σ(t − o)²` (the lecture's error).
    HalfSum,
}

/// Squared error of `output` against `target`.
///
/// # Panics
/// Panics if the shapes differ.
pub fn mse(
    output: ArrayViewD<'_, f32>,
    target: ArrayViewD<'_, f32>,
    reduction: MseReduction,
) -> (f32, ArrayD<f32>) {
    assert_eq!(output.shape(), target.shape(), "mse: shapes differ");
    let diff = &output - &target;
    let sq: f64 = diff.iter().map(|&d| (d as f64) * (d as f64)).sum();
    match reduction {
        MseReduction::Mean => {
            let m = diff.len().max(1) as f64;
            ((sq / m) as f32, diff.mapv(|d| (2.0 * d as f64 / m) as f32))
        }
        MseReduction::HalfSum => ((0.5 * sq) as f32, diff),
    }
}
