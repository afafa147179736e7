//! Batch normalisation over the channel axis of `[N, C]` (BatchNorm1d) or `[N, C, H, W]`
//! (BatchNorm2d).
//!
//! With `m = N·H·W` values per channel: `x̂ = (x − μ)/√(σ² + ε)`, `y = γ·x̂ + β`.
//! Batch statistics (train mode, trainable layer): `μ`, `σ²` (biased) of the batch; running
//! statistics updated as `r ← (1 − momentum)·r + momentum·s`, with the unbiased variance
//! `σ²·m/(m − 1)` for `running_var` (PyTorch). Running statistics (eval mode, or a frozen layer):
//! `μ = running_mean`, `σ² = running_var`, nothing updated.
//! A precise-BN pass (`Context::recalibrate`) replaces the momentum update by the plain average
//! of the pass's batch statistics (the k-th batch weighs 1/k).
//! Backward with batch statistics: `∂x = γ/(m·√(σ²+ε))·(m·g − Σg − x̂·Σ(g·x̂))`; with running
//! statistics: `∂x = γ·g/√(σ²+ε)`. Both: `∂γ += Σ g·x̂`, `∂β += Σ g`.

use ndarray::{Array1, Array3, ArrayD, Axis, Zip};
use rayon::prelude::*;

use super::{join, Context, Layer, Mode, Param, ParamKind, NO_FORWARD};
use crate::tensor::{into_standard, recycle};

/// `nn.BatchNorm1d` / `nn.BatchNorm2d` with affine parameters and running statistics.
pub struct BatchNorm {
    /// `γ`, `[C]`.
    pub weight: Param,
    /// `β`, `[C]`.
    pub bias: Param,
    /// `[C]` buffer.
    pub running_mean: Param,
    /// `[C]` buffer.
    pub running_var: Param,
    /// `ε` (PyTorch: 1e-5).
    pub eps: f32,
    /// Running-statistics momentum (PyTorch: 0.1).
    pub momentum: f32,
    spatial: bool,
    cache: Option<Cache>,
    recalibrated: usize,
}

struct Cache {
    xhat: Array3<f32>,
    inv_std: Array1<f32>,
    batch_stats: bool,
    input_grad: bool,
    shape: Vec<usize>,
}

impl BatchNorm {
    /// BatchNorm2d over `[N, C, H, W]`: `γ = 1`, `β = 0`, running mean 0 and variance 1.
    pub fn new_2d(channels: usize) -> Self {
        Self::new(channels, true)
    }

    /// BatchNorm1d over `[N, C]`.
    pub fn new_1d(channels: usize) -> Self {
        Self::new(channels, false)
    }

    fn new(channels: usize, spatial: bool) -> Self {
        let ones = || ArrayD::from_elem(vec![channels], 1.0f32);
        let zeros = || ArrayD::zeros(vec![channels]);
        BatchNorm {
            weight: Param::new(ParamKind::Bias, ones()),
            bias: Param::new(ParamKind::Bias, zeros()),
            running_mean: Param::new(ParamKind::Buffer, zeros()),
            running_var: Param::new(ParamKind::Buffer, ones()),
            eps: 1e-5,
            momentum: 0.1,
            spatial,
            cache: None,
            recalibrated: 0,
        }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.weight.len()
    }

    /// Whether a forward pass in `mode` uses (and updates) batch statistics: train mode and a
    /// trainable layer. A frozen BatchNorm always runs as in eval mode.
    pub fn uses_batch_stats(&self, mode: Mode) -> bool {
        mode == Mode::Train && (self.weight.trainable() || self.bias.trainable())
    }

    fn as3(&self, x: ArrayD<f32>) -> (Array3<f32>, Vec<usize>) {
        let shape = x.shape().to_vec();
        let ok = if self.spatial {
            shape.len() == 4
        } else {
            shape.len() == 2
        };
        assert!(
            ok,
            "BatchNorm{}: unexpected input shape {shape:?}",
            if self.spatial { "2d" } else { "1d" }
        );
        assert_eq!(shape[1], self.channels(), "BatchNorm: channels");
        let inner: usize = shape[2..].iter().product();
        let x = into_standard(x)
            .into_shape_with_order((shape[0], shape[1], inner))
            .expect("contiguous");
        (x, shape)
    }
}

fn vec_of(p: &Param) -> Vec<f32> {
    p.value().iter().copied().collect()
}

impl Layer for BatchNorm {
    fn channel_affine(&mut self, mode: Mode, grad_enabled: bool) -> Option<(Vec<f32>, Vec<f32>)> {
        if !self.spatial || self.uses_batch_stats(mode) || (grad_enabled && self.has_trainable()) {
            return None;
        }
        self.cache = None;
        let (mean, var) = (vec_of(&self.running_mean), vec_of(&self.running_var));
        let (gamma, beta) = (vec_of(&self.weight), vec_of(&self.bias));
        Some(
            mean.iter()
                .zip(&var)
                .zip(gamma.iter().zip(&beta))
                .map(|((&mu, &v), (&g, &b))| {
                    let is = 1.0 / (v + self.eps).sqrt();
                    (g * is, b - g * is * mu)
                })
                .unzip(),
        )
    }

    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let (mut x, shape) = self.as3(x);
        let c = self.channels();
        let m = x.len() / c.max(1);
        let batch_stats = self.uses_batch_stats(ctx.mode);
        let (mean, var): (Vec<f32>, Vec<f32>) = if batch_stats {
            let stats: Vec<(f64, f64)> = x
                .axis_iter(Axis(1))
                .into_par_iter()
                .map(|ch| {
                    let mean = ch.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
                    let var = ch.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
                    (mean, var)
                })
                .collect();
            // Momentum update; in a precise-BN pass, the running average of the pass's batches.
            let mom = if ctx.recalibrate {
                self.recalibrated += 1;
                1.0 / self.recalibrated as f32
            } else {
                self.recalibrated = 0;
                self.momentum
            };
            let unbias = if m > 1 {
                m as f64 / (m - 1) as f64
            } else {
                1.0
            };
            let mut rm = self.running_mean.value_mut();
            for (r, s) in rm.iter_mut().zip(&stats) {
                *r = (1.0 - mom) * *r + mom * s.0 as f32;
            }
            let mut rv = self.running_var.value_mut();
            for (r, s) in rv.iter_mut().zip(&stats) {
                *r = (1.0 - mom) * *r + mom * (s.1 * unbias) as f32;
            }
            stats.iter().map(|&(a, b)| (a as f32, b as f32)).unzip()
        } else {
            (vec_of(&self.running_mean), vec_of(&self.running_var))
        };
        let inv_std: Array1<f32> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let (gamma, beta) = (vec_of(&self.weight), vec_of(&self.bias));
        let track = ctx.tracks(self.has_trainable());
        let mut y = if track {
            // Written in full below.
            Some(recycle::take_array(x.dim()))
        } else {
            None
        };
        match &mut y {
            Some(y) => {
                // keep x̂ in `x`, write y separately
                Zip::from(x.axis_iter_mut(Axis(1)))
                    .and(y.axis_iter_mut(Axis(1)))
                    .and(&mean)
                    .and(&inv_std)
                    .and(&gamma)
                    .and(&beta)
                    .par_for_each(|mut xc, mut yc, &mu, &is, &g, &b| {
                        Zip::from(&mut xc).and(&mut yc).for_each(|xv, yv| {
                            *xv = (*xv - mu) * is;
                            *yv = g * *xv + b;
                        });
                    });
            }
            None => {
                Zip::from(x.axis_iter_mut(Axis(1)))
                    .and(&mean)
                    .and(&inv_std)
                    .and(&gamma)
                    .and(&beta)
                    .par_for_each(|mut xc, &mu, &is, &g, &b| {
                        let (scale, shift) = (g * is, b - g * is * mu);
                        xc.mapv_inplace(|v| v * scale + shift);
                    });
            }
        }
        match y {
            Some(y) => {
                self.cache = Some(Cache {
                    xhat: x,
                    inv_std,
                    batch_stats,
                    input_grad: ctx.input_grad,
                    shape: shape.clone(),
                });
                y.into_shape_with_order(shape).expect("shape").into_dyn()
            }
            None => {
                self.cache = None;
                x.into_shape_with_order(shape).expect("shape").into_dyn()
            }
        }
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let cache = self.cache.take().expect(NO_FORWARD);
        let (mut g, _) = self.as3(grad);
        let c = self.channels();
        let m = (g.len() / c.max(1)) as f32;
        let sums: Vec<(f32, f32)> = g
            .axis_iter(Axis(1))
            .into_par_iter()
            .zip(cache.xhat.axis_iter(Axis(1)).into_par_iter())
            .map(|(gc, xc)| {
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                Zip::from(&gc).and(&xc).for_each(|&a, &b| {
                    sg += a as f64;
                    sgx += (a * b) as f64;
                });
                (sg as f32, sgx as f32)
            })
            .collect();
        if self.weight.trainable() {
            let d: Array1<f32> = sums.iter().map(|s| s.1).collect();
            self.weight.accumulate_grad(d.into_dyn().view());
        }
        if self.bias.trainable() {
            let d: Array1<f32> = sums.iter().map(|s| s.0).collect();
            self.bias.accumulate_grad(d.into_dyn().view());
        }
        if !cache.input_grad {
            recycle::give_array(cache.xhat);
            return None;
        }
        let gamma = vec_of(&self.weight);
        let batch = cache.batch_stats;
        Zip::from(g.axis_iter_mut(Axis(1)))
            .and(cache.xhat.axis_iter(Axis(1)))
            .and(&cache.inv_std)
            .and(&gamma)
            .and(&sums)
            .par_for_each(|mut gc, xc, &is, &ga, &(sg, sgx)| {
                if batch {
                    let k = ga * is / m;
                    Zip::from(&mut gc).and(&xc).for_each(|gv, &xh| {
                        *gv = k * (m * *gv - sg - xh * sgx);
                    });
                } else {
                    gc.mapv_inplace(|v| v * ga * is);
                }
            });
        recycle::give_array(cache.xhat);
        Some(
            g.into_shape_with_order(cache.shape)
                .expect("shape")
                .into_dyn(),
        )
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn describe(&self) -> String {
        format!(
            "BatchNorm{}({}, eps={}, momentum={})",
            if self.spatial { "2d" } else { "1d" },
            self.channels(),
            self.eps,
            self.momentum
        )
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Param)) {
        f(&join(prefix, "weight"), &self.weight);
        f(&join(prefix, "bias"), &self.bias);
        f(&join(prefix, "running_mean"), &self.running_mean);
        f(&join(prefix, "running_var"), &self.running_var);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
        f(&join(prefix, "running_mean"), &mut self.running_mean);
        f(&join(prefix, "running_var"), &mut self.running_var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn precise_pass_sets_running_statistics_to_the_average_of_its_batches() {
        let mut bn = BatchNorm::new_1d(2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let batches = [
            ndarray::array![[1.0f32, 10.0], [3.0, 14.0]],
            ndarray::array![[5.0f32, 0.0], [9.0, 2.0]],
        ];
        // Batch means (2, 12), (7, 1); unbiased variances (2, 8), (8, 2).
        for b in &batches {
            let mut ctx = Context::recalibrate(&mut rng);
            bn.forward(b.clone().into_dyn(), &mut ctx);
        }
        assert_eq!(bn.running_mean.value().as_slice().unwrap(), &[4.5, 6.5]);
        assert_eq!(bn.running_var.value().as_slice().unwrap(), &[5.0, 5.0]);
        // A normal training step goes back to the momentum update.
        let mut ctx = Context::train(&mut rng);
        bn.forward(batches[0].clone().into_dyn(), &mut ctx);
        let rm = bn.running_mean.value();
        assert!((rm[0] - (0.9 * 4.5 + 0.1 * 2.0)).abs() < 1e-6);
    }
}
