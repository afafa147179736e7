//! `y = tanh(x)`; backward `∂x = g·(1 − y²)`.

use ndarray::ArrayD;

use super::{Context, Layer, NO_FORWARD};

/// `nn.Tanh`.
#[derive(Default)]
pub struct Tanh {
    output: Option<ArrayD<f32>>,
}

impl Tanh {
    /// A tanh.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Tanh {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        x.par_mapv_inplace(f32::tanh);
        self.output = ctx.tracks(false).then(|| x.clone());
        x
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let y = self.output.take().expect(NO_FORWARD);
        Some(grad * y.mapv(|v| 1.0 - v * v))
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        "Tanh".into()
    }
}
