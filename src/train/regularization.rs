//! L1 and L2 penalties over the trainable weights (kernels and matrices, not biases, not
//! normalisation parameters): `R = λ₁·Σ|w| + λ₂·Σw²`, `∂R/∂w = λ₁·sign(w) + 2λ₂·w`
//! (Keras's `l1`/`l2` regularizers; `sign(0) = 0`, as `torch.sign`).

use crate::nn::{Layer, ParamKind};

/// Strengths of the two penalties (0 turns one off).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Penalty {
    pub l1: f32,
    pub l2: f32,
}

impl Penalty {
    /// True when both strengths are zero.
    pub fn is_off(&self) -> bool {
        self.l1 == 0.0 && self.l2 == 0.0
    }

    /// Adds the penalty's gradient to every trainable weight's gradient and returns the penalty,
    /// to be added to the loss.
    pub fn apply(&self, model: &mut dyn Layer) -> f32 {
        if self.is_off() {
            return 0.0;
        }
        let (l1, l2) = (self.l1, self.l2);
        let mut total = 0.0f64;
        model.visit_mut("", &mut |_, p| {
            if !p.trainable() || p.kind() != ParamKind::Weight {
                return;
            }
            let w = p.value();
            total += w
                .iter()
                .map(|&v| l1 as f64 * (v as f64).abs() + l2 as f64 * (v as f64) * (v as f64))
                .sum::<f64>();
            let g = w.mapv(|v| l1 * sign(v) + 2.0 * l2 * v);
            p.accumulate_grad(g.view());
        });
        total as f32
    }
}

fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
