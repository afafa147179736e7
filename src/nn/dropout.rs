//! Inverted dropout: in train mode each value is kept with probability `1 − p` and scaled by
//! `1/(1 − p)`, the mask drawn from the context's seeded RNG; in eval mode the identity.
//! Backward applies the same mask and scale.

use ndarray::ArrayD;
use rand::Rng;

use super::{Context, Layer, Mode, NO_FORWARD};

/// `nn.Dropout(p)`.
pub struct Dropout {
    p: f32,
    mask: Option<Option<Vec<f32>>>,
}

impl Dropout {
    /// Dropout with drop probability `p`.
    ///
    /// # Panics
    /// Panics unless `0 ≤ p < 1` (the CLI validates `--dropout` before building).
    pub fn new(p: f32) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability must be in [0, 1)"
        );
        Dropout { p, mask: None }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl Layer for Dropout {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let mask = (ctx.mode == Mode::Train && self.p > 0.0).then(|| {
            let scale = 1.0 / (1.0 - self.p);
            let mask: Vec<f32> = (0..x.len())
                .map(|_| {
                    if ctx.rng.random::<f32>() < self.p {
                        0.0
                    } else {
                        scale
                    }
                })
                .collect();
            x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
            mask
        });
        self.mask = ctx.tracks(false).then_some(mask);
        x
    }

    fn backward(&mut self, mut grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        if let Some(mask) = self.mask.take().expect(NO_FORWARD) {
            grad.iter_mut().zip(&mask).for_each(|(g, m)| *g *= m);
        }
        Some(grad)
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        format!("Dropout(p={})", self.p)
    }

    fn is_stochastic(&self) -> bool {
        self.p > 0.0
    }

    fn set_dropout(&mut self, p: f32) {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability must be in [0, 1)"
        );
        self.p = p;
    }
}
