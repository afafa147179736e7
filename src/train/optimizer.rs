//! Optimizers with PyTorch's update rules, over the trainable parameters of a layer tree.
//! Frozen parameters and parameters without a gradient are skipped; state is keyed by the
//! parameter's dotted name.
//!
//! SGD (`torch.optim.SGD`): `g ← ∂θ + λθ`; with momentum `μ`, `b ← g` on the first step, then
//! `b ← μb + (1 − τ)g`; `g ← g + μb` (Nesterov) or `g ← b`; `θ ← θ − ηg`.
//! Adam (`torch.optim.Adam`): `g ← ∂θ + λθ`, `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
//! `θ ← θ − (η/(1 − β₁ᵗ))·m/(√v/√(1 − β₂ᵗ) + ε)`.

use std::collections::HashMap;

use ndarray::{ArrayD, Zip};

use crate::nn::{Layer, Param};

/// An optimizer that updates a layer tree from its accumulated gradients.
pub trait Optimizer {
    /// Applies one update to every trainable parameter that has a gradient.
    fn step(&mut self, model: &mut dyn Layer);

    /// The learning rate.
    fn lr(&self) -> f32;

    /// Changes the learning rate (schedules).
    fn set_lr(&mut self, lr: f32);
}

/// Drops every accumulated gradient in the tree.
pub fn zero_grad(model: &mut dyn Layer) {
    model.visit_mut("", &mut |_, p| p.zero_grad());
}

fn for_each_trainable(model: &mut dyn Layer, mut f: impl FnMut(&str, &mut Param, &ArrayD<f32>)) {
    model.visit_mut("", &mut |name, p| {
        if p.trainable() {
            if let Some(g) = p.grad.take() {
                f(name, p, &g);
                p.grad = Some(g);
            }
        }
    });
}

/// Stochastic gradient descent with optional momentum, dampening, Nesterov and weight decay.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    buffers: HashMap<String, ArrayD<f32>>,
}

impl Sgd {
    /// SGD with learning rate `lr` and momentum `momentum` (0 for plain SGD).
    pub fn new(lr: f32, momentum: f32) -> Self {
        Sgd {
            lr,
            momentum,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            buffers: HashMap::new(),
        }
    }

    /// Momentum buffers by parameter name (for checkpoints).
    pub fn state(&self) -> &HashMap<String, ArrayD<f32>> {
        &self.buffers
    }

    /// Restores momentum buffers saved from [`Sgd::state`].
    pub fn load_state(&mut self, state: HashMap<String, ArrayD<f32>>) {
        self.buffers = state;
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, model: &mut dyn Layer) {
        let (lr, mu, damp, nesterov, wd) = (
            self.lr,
            self.momentum,
            self.dampening,
            self.nesterov,
            self.weight_decay,
        );
        let buffers = &mut self.buffers;
        for_each_trainable(model, |name, p, grad| {
            // One pass per parameter, in parallel, in the order of operations of PyTorch's SGD:
            // g = ∇ + wd·w; b = g on the first step, else μ·b + (1 − dampening)·g; the step is
            // g + μ·b (Nesterov) or b; w ← w − lr·step.
            let update = |w: &mut f32, b: Option<(&mut f32, bool)>, &grad: &f32| {
                let mut g = grad;
                if wd != 0.0 {
                    g += wd * *w;
                }
                if let Some((b, first)) = b {
                    *b = if first { g } else { mu * *b + (1.0 - damp) * g };
                    g = if nesterov { g + mu * *b } else { *b };
                }
                *w += -lr * g;
            };
            let mut w = p.value_mut();
            if mu == 0.0 {
                Zip::from(&mut w)
                    .and(grad)
                    .par_for_each(|w, g| update(w, None, g));
                return;
            }
            let first = !buffers.contains_key(name);
            let b = buffers
                .entry(name.to_string())
                .or_insert_with(|| ArrayD::zeros(grad.raw_dim()));
            Zip::from(&mut w)
                .and(b)
                .and(grad)
                .par_for_each(|w, b, g| update(w, Some((b, first)), g));
        });
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }
}

/// Adam.
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    state: HashMap<String, AdamState>,
}

/// Adam's per-parameter moments and step count.
#[derive(Clone, Debug)]
pub struct AdamState {
    pub step: u32,
    pub m: ArrayD<f32>,
    pub v: ArrayD<f32>,
}

impl Adam {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8) and learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            state: HashMap::new(),
        }
    }

    /// Moments by parameter name (for checkpoints).
    pub fn state(&self) -> &HashMap<String, AdamState> {
        &self.state
    }

    /// Restores moments saved from [`Adam::state`].
    pub fn load_state(&mut self, state: HashMap<String, AdamState>) {
        self.state = state;
    }
}

impl Optimizer for Adam {
    fn step(&mut self, model: &mut dyn Layer) {
        let (lr, b1, b2, eps, wd) = (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay);
        let states = &mut self.state;
        for_each_trainable(model, |name, p, grad| {
            let s = states.entry(name.to_string()).or_insert_with(|| AdamState {
                step: 0,
                m: ArrayD::zeros(grad.raw_dim()),
                v: ArrayD::zeros(grad.raw_dim()),
            });
            s.step += 1;
            let bc1 = 1.0 - (b1 as f64).powi(s.step as i32);
            let bc2 = 1.0 - (b2 as f64).powi(s.step as i32);
            let step_size = (lr as f64 / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            // One pass per parameter, in parallel: g = ∇ + wd·w, the moments, the update.
            Zip::from(&mut p.value_mut())
                .and(&mut s.m)
                .and(&mut s.v)
                .and(grad)
                .par_for_each(|w, m, v, &grad| {
                    let mut g = grad;
                    if wd != 0.0 {
                        g += wd * *w;
                    }
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
                });
        });
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }
}
