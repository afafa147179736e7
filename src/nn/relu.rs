//! `y = max(x, 0)`; backward `∂x = g·[x > 0]`.

use ndarray::ArrayD;
use rayon::prelude::*;

use super::{Context, Layer, NO_FORWARD};

/// `nn.ReLU`.
#[derive(Default)]
pub struct Relu {
    mask: Option<Vec<bool>>,
}

impl Relu {
    /// A ReLU.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Layer for Relu {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        x.par_mapv_inplace(|v| if v > 0.0 { v } else { 0.0 });
        self.mask = ctx.tracks(false).then(|| match x.as_slice() {
            Some(xs) => xs.par_iter().map(|&v| v > 0.0).collect(),
            None => x.iter().map(|&v| v > 0.0).collect(),
        });
        x
    }

    fn is_relu(&self) -> bool {
        true
    }

    fn backward(&mut self, mut grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let mask = self.mask.take().expect(NO_FORWARD);
        assert_eq!(mask.len(), grad.len(), "ReLU: gradient shape");
        let zero = |(g, keep): (&mut f32, &bool)| {
            if !keep {
                *g = 0.0;
            }
        };
        match grad.as_slice_mut() {
            Some(gs) => gs.par_iter_mut().zip(&mask).for_each(zero),
            None => grad.iter_mut().zip(&mask).for_each(zero),
        }
        Some(grad)
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        "ReLU".into()
    }
}
