//! Fully connected layer: `y = x·Wᵀ + b`, `x` `[N, in]`, `W` `[out, in]`, `b` `[out]`, `y` `[N, out]`.
//!
//! Backward: `∂W += gᵀ·x`, `∂b += Σₙ g`, `∂x = g·W`.

use ndarray::{Array1, Array2, ArrayD, Axis, Ix2};
use rand::{Rng, RngCore};

use super::{
    visit_weight_bias, visit_weight_bias_mut, Context, Layer, Param, ParamKind, NO_FORWARD,
};
use crate::tensor::gemm::{matmul, Threads};

/// `nn.Linear`.
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`, when the layer has a bias.
    pub bias: Option<Param>,
    cache: Option<Cache>,
}

struct Cache {
    input: Option<Array2<f32>>,
    input_grad: bool,
}

/// Samples `U(-bound, bound)`.
pub(crate) fn uniform(rng: &mut dyn RngCore, shape: &[usize], bound: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(shape, || rng.random_range(-bound..=bound))
}

impl Linear {
    /// A layer initialised as PyTorch's `nn.Linear`: weight and bias from `U(−1/√in, 1/√in)`.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut dyn RngCore) -> Self {
        let bound = 1.0 / (in_features.max(1) as f32).sqrt();
        let weight = uniform(rng, &[out_features, in_features], bound);
        let bias = bias.then(|| uniform(rng, &[out_features], bound));
        Self::from_arrays(
            weight.into_dimensionality().expect("2-D"),
            bias.map(|b| b.into_dimensionality().expect("1-D")),
        )
    }

    /// A layer with the given weight `[out, in]` and bias `[out]`.
    ///
    /// # Panics
    /// Panics if the bias length differs from the weight's row count.
    pub fn from_arrays(weight: Array2<f32>, bias: Option<Array1<f32>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.len(), weight.nrows(), "Linear: bias length");
        }
        Linear {
            weight: Param::new(ParamKind::Weight, weight.into_dyn()),
            bias: bias.map(|b| Param::new(ParamKind::Bias, b.into_dyn())),
            cache: None,
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let x = x
            .into_dimensionality::<Ix2>()
            .expect("Linear expects [N, in]");
        assert_eq!(x.ncols(), self.in_features(), "Linear: input features");
        let w = self
            .weight
            .value()
            .into_dimensionality::<Ix2>()
            .expect("2-D weight");
        let mut y = Array2::<f32>::zeros((x.nrows(), self.out_features()));
        matmul(x.view(), w.t(), y.view_mut(), false, Threads::Pool);
        if let Some(b) = &self.bias {
            let b = b
                .value()
                .into_dimensionality::<ndarray::Ix1>()
                .expect("1-D bias");
            y += &b;
        }
        self.cache = ctx.tracks(self.has_trainable()).then(|| Cache {
            input: self.weight.trainable().then(|| x.clone()),
            input_grad: ctx.input_grad,
        });
        y.into_dyn()
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let cache = self.cache.take().expect(NO_FORWARD);
        let g = grad
            .into_dimensionality::<Ix2>()
            .expect("Linear gradient is [N, out]");
        if let Some(x) = &cache.input {
            self.weight.write_grad(|dw, accumulate| {
                let dw = dw.into_dimensionality::<Ix2>().expect("2-D weight");
                matmul(g.t(), x.view(), dw, accumulate, Threads::Pool);
            });
        }
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            b.accumulate_grad(g.sum_axis(Axis(0)).into_dyn().view());
        }
        cache.input_grad.then(|| {
            let w = self
                .weight
                .value()
                .into_dimensionality::<Ix2>()
                .expect("2-D weight");
            let mut dx = Array2::<f32>::zeros((g.nrows(), self.in_features()));
            matmul(g.view(), w, dx.view_mut(), false, Threads::Pool);
            dx.into_dyn()
        })
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![input[0], self.out_features()]
    }

    fn describe(&self) -> String {
        format!(
            "Linear({}, {}{})",
            self.in_features(),
            self.out_features(),
            if self.bias.is_some() {
                ""
            } else {
                ", bias=False"
            }
        )
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Param)) {
        visit_weight_bias(prefix, &self.weight, self.bias.as_ref(), f);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        visit_weight_bias_mut(prefix, &mut self.weight, self.bias.as_mut(), f);
    }
}
