//! Softmax over the last axis: `yᵢ = e^(xᵢ − max x) / Σⱼ e^(xⱼ − max x)`;
//! backward `∂xᵢ = yᵢ·(gᵢ − Σⱼ gⱼ·yⱼ)`.

use ndarray::{ArrayD, Axis};

use super::{Context, Layer, NO_FORWARD};

/// `nn.Softmax(dim=-1)`.
#[derive(Default)]
pub struct Softmax {
    output: Option<ArrayD<f32>>,
}

impl Softmax {
    /// A softmax over the last axis.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Softmax over the last axis, in place.
pub fn softmax_in_place(x: &mut ArrayD<f32>) {
    let last = Axis(x.ndim() - 1);
    for mut row in x.lanes_mut(last) {
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

impl Layer for Softmax {
    fn forward(&mut self, mut x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        softmax_in_place(&mut x);
        self.output = ctx.tracks(false).then(|| x.clone());
        x
    }

    fn backward(&mut self, mut grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let y = self.output.take().expect(NO_FORWARD);
        let last = Axis(y.ndim() - 1);
        for (mut g, y) in grad.lanes_mut(last).into_iter().zip(y.lanes(last)) {
            let dot: f32 = g.iter().zip(y.iter()).map(|(a, b)| a * b).sum();
            g.zip_mut_with(&y, |gv, &yv| *gv = yv * (*gv - dot));
        }
        Some(grad)
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        "Softmax(dim=-1)".into()
    }
}
