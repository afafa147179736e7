//! Layers: each owns its parameters and the cache its backward pass needs.
//!
//! Forward takes the input by value and returns the output; when the [`Context`] says a gradient
//! will flow through the layer, it keeps a typed cache that [`Layer::backward`] consumes. Backward
//! takes `∂L/∂y`, adds `∂L/∂θ` into each trainable parameter's gradient, and returns `∂L/∂x` when
//! something before the layer needs it (`None` otherwise).

pub mod adaptive_avg_pool2d;
pub mod avg_pool2d;
pub mod batch_norm;
pub mod conv2d;
pub mod dropout;
pub mod flatten;
pub mod linear;
pub mod loss;
pub mod max_pool2d;
pub mod param;
pub mod relu;
pub mod sequential;
pub mod sigmoid;
pub mod softmax;
pub mod step;
pub mod tanh;

pub use adaptive_avg_pool2d::AdaptiveAvgPool2d;
pub use avg_pool2d::AvgPool2d;
pub use batch_norm::BatchNorm;
pub use conv2d::Conv2d;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use linear::Linear;
pub use max_pool2d::MaxPool2d;
pub use param::{Param, ParamKind};
pub use relu::Relu;
pub use sequential::Sequential;
pub use sigmoid::Sigmoid;
pub use softmax::Softmax;
pub use step::Step;
pub use tanh::Tanh;

use ndarray::ArrayD;
use rand::RngCore;

/// Training or inference behaviour of mode-dependent layers (BatchNorm, Dropout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dropout drops; trainable BatchNorm uses batch statistics and updates its running ones.
    Train,
    /// Dropout is the identity; BatchNorm uses its running statistics.
    Eval,
}

/// What a forward pass needs from outside the layer: the mode, the seeded RNG, and whether a
/// gradient will be asked for.
pub struct Context<'a> {
    /// Train or eval behaviour.
    pub mode: Mode,
    /// The only source of randomness (dropout masks).
    pub rng: &'a mut dyn RngCore,
    /// Whether this forward pass may be followed by a backward pass.
    pub grad_enabled: bool,
    /// Whether the input of the layer about to run needs a gradient. Containers maintain it.
    pub input_grad: bool,
    /// Precise-BN pass: trainable BatchNorm layers set their running statistics to the exact
    /// average of the batch statistics seen since the pass began (instead of the momentum
    /// update).
    pub recalibrate: bool,
}

impl<'a> Context<'a> {
    /// A context for a pass that a backward pass will follow.
    pub fn train(rng: &'a mut dyn RngCore) -> Self {
        Context {
            mode: Mode::Train,
            rng,
            grad_enabled: true,
            input_grad: false,
            recalibrate: false,
        }
    }

    /// A context for inference: eval mode, nothing cached.
    pub fn eval(rng: &'a mut dyn RngCore) -> Self {
        Context {
            mode: Mode::Eval,
            rng,
            grad_enabled: false,
            input_grad: false,
            recalibrate: false,
        }
    }

    /// A context for a precise-BN pass: train mode, no gradients, running statistics averaged.
    pub fn recalibrate(rng: &'a mut dyn RngCore) -> Self {
        Context {
            mode: Mode::Train,
            rng,
            grad_enabled: false,
            input_grad: false,
            recalibrate: true,
        }
    }

    /// Whether a layer with (`has_trainable`) or without trainable parameters must cache what its
    /// backward needs: gradients are enabled and either its input or its own parameters need one.
    pub fn tracks(&self, has_trainable: bool) -> bool {
        self.grad_enabled && (self.input_grad || has_trainable)
    }
}

/// A differentiable operation with named parameters.
pub trait Layer: Send + Sync {
    /// Computes the output. Caches what backward needs when `ctx.tracks(..)` says so.
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32>;

    /// Takes `∂L/∂y`, accumulates parameter gradients, and returns `∂L/∂x` when the input needed
    /// a gradient during the forward pass.
    ///
    /// # Panics
    /// Panics when called without a tracked forward pass before it.
    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>>;

    /// The output shape for an input shape (batch dimension included).
    fn output_shape(&self, input: &[usize]) -> Vec<usize>;

    /// A one-line description, e.g. `Conv2d(3, 64, kernel=3, stride=1, padding=1)`.
    fn describe(&self) -> String;

    /// Calls `f` with the full dotted name and value of each parameter and buffer.
    fn visit<'a>(&'a self, _prefix: &str, _f: &mut dyn FnMut(&str, &'a Param)) {}

    /// Calls `f` with the full dotted name of each parameter and buffer, mutably.
    fn visit_mut(&mut self, _prefix: &str, _f: &mut dyn FnMut(&str, &mut Param)) {}

    /// Named sub-layers, for summaries. Leaves have none.
    fn children(&self) -> Vec<(String, &dyn Layer)> {
        Vec::new()
    }

    /// The forward pass followed by `y = act(scale[c]·y + shift[c])` over the channels (axis 1),
    /// `act` a ReLU when `relu`, in the layer's own output pass (Conv2d), for a pass that keeps
    /// nothing for backward; containers use it to fuse a following [`Layer::channel_affine`]
    /// (and ReLU). `Err(x)` gives the input back untouched when the layer cannot (the default):
    /// the caller then runs the layers one by one.
    fn forward_then(
        &mut self,
        x: ArrayD<f32>,
        _ctx: &mut Context<'_>,
        _affine: (&[f32], &[f32]),
        _relu: bool,
    ) -> Result<ArrayD<f32>, ArrayD<f32>> {
        Err(x)
    }

    /// When the layer, in a pass of `mode` whose input needs no gradient, is a fixed per-channel
    /// affine map `y = scale[c]·x + shift[c]` over axis 1 that keeps nothing for backward
    /// (BatchNorm on its running statistics, untracked), its `(scale, shift)`; the caller then
    /// applies it instead of calling [`Layer::forward`].
    fn channel_affine(&mut self, _mode: Mode, _grad_enabled: bool) -> Option<(Vec<f32>, Vec<f32>)> {
        None
    }

    /// True for `max(0, x)`, which a container may fold into the layer before it when the pass
    /// keeps nothing for backward.
    fn is_relu(&self) -> bool {
        false
    }

    /// True when the layer's output in train mode depends on the RNG (Dropout with p > 0).
    fn is_stochastic(&self) -> bool {
        false
    }

    /// Sets the drop probability of every Dropout inside (containers pass it on).
    fn set_dropout(&mut self, _p: f32) {}

    /// True when any parameter is trainable.
    fn has_trainable(&self) -> bool {
        let mut any = false;
        self.visit("", &mut |_, p| any |= p.trainable());
        any
    }

    /// Number of values in parameters (buffers excluded).
    fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| {
            if p.kind() != ParamKind::Buffer {
                n += p.len()
            }
        });
        n
    }
}

/// `prefix.name`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Visits `prefix.weight` and, when there is one, `prefix.bias` (Linear, Conv2d).
pub(crate) fn visit_weight_bias<'a>(
    prefix: &str,
    weight: &'a Param,
    bias: Option<&'a Param>,
    f: &mut dyn FnMut(&str, &'a Param),
) {
    f(&join(prefix, "weight"), weight);
    if let Some(b) = bias {
        f(&join(prefix, "bias"), b);
    }
}

/// [`visit_weight_bias`], mutably.
pub(crate) fn visit_weight_bias_mut(
    prefix: &str,
    weight: &mut Param,
    bias: Option<&mut Param>,
    f: &mut dyn FnMut(&str, &mut Param),
) {
    f(&join(prefix, "weight"), weight);
    if let Some(b) = bias {
        f(&join(prefix, "bias"), b);
    }
}

/// The message of the panic raised by a backward pass with no forward pass before it.
pub(crate) const NO_FORWARD: &str = "backward called without a tracked forward pass";
