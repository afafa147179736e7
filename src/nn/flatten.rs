//! Flattens `[N, d1, d2, …]` to `[N, d1·d2·…]` in C order (C, H, W for images); backward reshapes
//! the gradient back.

use ndarray::{ArrayD, IxDyn};

use super::{Context, Layer, NO_FORWARD};
use crate::tensor::into_standard;

/// `nn.Flatten()`.
#[derive(Default)]
pub struct Flatten {
    input_shape: Option<Vec<usize>>,
}

impl Flatten {
    /// A flatten.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Flatten {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let shape = x.shape().to_vec();
        self.input_shape = ctx.tracks(false).then(|| shape.clone());
        let out = self.output_shape(&shape);
        into_standard(x)
            .into_shape_with_order(IxDyn(&out))
            .expect("contiguous")
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let shape = self.input_shape.take().expect(NO_FORWARD);
        Some(
            into_standard(grad)
                .into_shape_with_order(IxDyn(&shape))
                .expect("contiguous"),
        )
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![input[0], input[1..].iter().product()]
    }

    fn describe(&self) -> String {
        "Flatten".into()
    }
}
