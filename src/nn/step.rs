//! The perceptron's step (Heaviside) function: `y = 1` if `x ≥ 0`, else `0`.
//!
//! Its derivative is zero wherever it is defined, so backward passes a zero gradient: a network
//! of steps is trained by the perceptron rule, not by backpropagation.

use ndarray::ArrayD;

use super::{Context, Layer, NO_FORWARD};

/// The step activation.
#[derive(Default)]
pub struct Step {
    tracked: Option<()>,
}

impl Step {
    /// A step.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Step {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        x.mapv_inplace(|v| if v >= 0.0 { 1.0 } else { 0.0 });
        self.tracked = ctx.tracks(false).then_some(());
        x
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        self.tracked.take().expect(NO_FORWARD);
        Some(ArrayD::zeros(grad.raw_dim()))
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        "Step".into()
    }
}
