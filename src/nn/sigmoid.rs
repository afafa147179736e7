//! `y = 1/(1 + e^(−x))`; backward `∂x = g·y·(1 − y)`.

use ndarray::ArrayD;

use super::{Context, Layer, NO_FORWARD};

/// `nn.Sigmoid`.
#[derive(Default)]
pub struct Sigmoid {
    output: Option<ArrayD<f32>>,
}

impl Sigmoid {
    /// A sigmoid.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Sigmoid {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        x.par_mapv_inplace(|v| 1.0 / (1.0 + (-v).exp()));
        self.output = ctx.tracks(false).then(|| x.clone());
        x
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let y = self.output.take().expect(NO_FORWARD);
        Some(grad * y.mapv(|v| v * (1.0 - v)))
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        "Sigmoid".into()
    }
}
