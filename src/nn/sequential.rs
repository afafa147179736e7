//! An ordered container of named layers: `y = f_k(…f_1(f_0(x)))`. Children are named `0, 1, 2, …`
//! like `nn.Sequential`, or given names (`conv1`, `layer1`, …) for models whose torchvision
//! modules are named. Backward runs the children in reverse and stops at the first child that
//! nothing before it needs a gradient from.

use ndarray::ArrayD;

use super::{join, Context, Layer, Param};

/// Children `i..i + len` run as one pass (see [`Sequential::forward_range`]): the first with the
/// second's per-channel `scale` and `shift` and, when `relu`, the third's ReLU in its output pass.
struct Fusion {
    len: usize,
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

/// `nn.Sequential` (or a module with named children applied in order).
#[derive(Default)]
pub struct Sequential {
    layers: Vec<(String, Box<dyn Layer>)>,
    tracked: Vec<bool>,
}

impl Sequential {
    /// Children named `0, 1, 2, …`.
    pub fn new(layers: Vec<Box<dyn Layer>>) -> Self {
        Sequential {
            layers: layers
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l))
                .collect(),
            tracked: Vec::new(),
        }
    }

    /// Children with the given names.
    pub fn named(layers: Vec<(String, Box<dyn Layer>)>) -> Self {
        Sequential {
            layers,
            tracked: Vec::new(),
        }
    }

    /// Appends a child named by its index.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        let name = self.layers.len().to_string();
        self.layers.push((name, layer));
    }

    /// Appends a named child.
    pub fn push_named(&mut self, name: impl Into<String>, layer: Box<dyn Layer>) {
        self.layers.push((name.into(), layer));
    }

    /// Drops every child from index `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.layers.truncate(len);
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True without children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The children in order.
    pub fn layers(&self) -> impl Iterator<Item = (&str, &dyn Layer)> {
        self.layers
            .iter()
            .map(|(n, l)| (n.as_str(), l.as_ref() as &dyn Layer))
    }

    /// The children in order, mutably.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = (&str, &mut Box<dyn Layer>)> {
        self.layers.iter_mut().map(|(n, l)| (n.as_str(), l))
    }

    /// Runs children `range` only (for models that stop at a stage).
    pub fn forward_range(
        &mut self,
        mut x: ArrayD<f32>,
        ctx: &mut Context<'_>,
        range: std::ops::Range<usize>,
    ) -> ArrayD<f32> {
        self.tracked.clear();
        self.tracked.resize(range.start, false);
        let mut i = range.start;
        while i < range.end {
            if let Some(f) = self.fusion_at(i, range.end, ctx) {
                let affine = (&f.scale[..], &f.shift[..]);
                match self.layers[i].1.forward_then(x, ctx, affine, f.relu) {
                    Ok(y) => {
                        x = y;
                        self.tracked.resize(i + f.len, false);
                        ctx.input_grad = false;
                        i += f.len;
                        continue;
                    }
                    // The layer cannot fuse: run it on its own.
                    Err(input) => x = input,
                }
            }
            let layer = &mut self.layers[i].1;
            let track = ctx.tracks(layer.has_trainable());
            x = layer.forward(x, ctx);
            ctx.input_grad = track;
            self.tracked.push(track);
            i += 1;
        }
        x
    }

    /// The fusion that may start at child `i` (if the layer takes it, [`Layer::forward_then`]):
    /// an untracked layer, then a [`Layer::channel_affine`] (BatchNorm on its running statistics,
    /// untracked), then optionally a ReLU, all before `end`.
    fn fusion_at(&mut self, i: usize, end: usize, ctx: &Context<'_>) -> Option<Fusion> {
        let first = self.layers[i].1.as_ref();
        if i + 1 >= end || ctx.tracks(first.has_trainable()) {
            return None;
        }
        // Nothing before the affine layer then needs a gradient.
        let (scale, shift) = self.layers[i + 1]
            .1
            .channel_affine(ctx.mode, ctx.grad_enabled)?;
        let relu = i + 2 < end && self.layers[i + 2].1.is_relu();
        Some(Fusion {
            len: if relu { 3 } else { 2 },
            scale,
            shift,
            relu,
        })
    }
}

impl Layer for Sequential {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let n = self.layers.len();
        self.forward_range(x, ctx, 0..n)
    }

    fn backward(&mut self, mut grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        for i in (0..self.tracked.len()).rev() {
            if !self.tracked[i] {
                return None;
            }
            grad = self.layers[i].1.backward(grad)?;
        }
        self.tracked.clear();
        Some(grad)
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        self.layers
            .iter()
            .fold(input.to_vec(), |s, (_, l)| l.output_shape(&s))
    }

    fn describe(&self) -> String {
        "Sequential".into()
    }

    fn is_stochastic(&self) -> bool {
        self.layers.iter().any(|(_, l)| l.is_stochastic())
    }

    fn set_dropout(&mut self, p: f32) {
        for (_, layer) in &mut self.layers {
            layer.set_dropout(p);
        }
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Param)) {
        for (name, layer) in &self.layers {
            layer.visit(&join(prefix, name), f);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        for (name, layer) in &mut self.layers {
            layer.visit_mut(&join(prefix, name), f);
        }
    }

    fn children(&self) -> Vec<(String, &dyn Layer)> {
        self.layers
            .iter()
            .map(|(n, l)| (n.clone(), l.as_ref() as &dyn Layer))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BatchNorm, Conv2d, Relu};
    use rand::{Rng, SeedableRng};

    /// conv (with bias) → BatchNorm with non-trivial statistics → ReLU, each child on its own.
    fn block(rng: &mut rand_chacha::ChaCha8Rng, k: usize, relu: bool) -> (Sequential, Sequential) {
        let conv = Conv2d::new(3, 4, k, 1, k / 2, true, rng);
        let mut bn = BatchNorm::new_2d(4);
        for p in [&mut bn.weight, &mut bn.bias, &mut bn.running_mean] {
            p.value_mut().mapv_inplace(|_| rng.random_range(-1.0..1.0));
        }
        bn.running_var
            .value_mut()
            .mapv_inplace(|_| rng.random_range(0.5..2.0));
        let copy = |conv: &Conv2d, bn: &BatchNorm| -> Vec<Box<dyn Layer>> {
            let c = Conv2d::from_arrays(
                conv.weight.value().to_owned(),
                conv.bias.as_ref().map(|b| b.value().to_owned()),
                1,
                k / 2,
            );
            let mut b = BatchNorm::new_2d(4);
            for (dst, src) in [
                (&mut b.weight, &bn.weight),
                (&mut b.bias, &bn.bias),
                (&mut b.running_mean, &bn.running_mean),
                (&mut b.running_var, &bn.running_var),
            ] {
                dst.value_mut().assign(&src.value());
            }
            let mut v: Vec<Box<dyn Layer>> = vec![Box::new(c), Box::new(b)];
            if relu {
                v.push(Box::new(Relu::new()));
            }
            v
        };
        (
            Sequential::new(copy(&conv, &bn)),
            Sequential::new(copy(&conv, &bn)),
        )
    }

    #[test]
    fn conv_batch_norm_relu_fuse_only_when_nothing_is_tracked() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // im2col's output pass here (Winograd's is tested in tensor::winograd; ResNet-18's parity
        // with torchvision covers both inside the model).
        for (k, side, relu) in [(3, 24, true), (1, 6, true), (3, 5, false)] {
            let (mut seq, mut reference) = block(&mut rng, k, relu);
            let x = crate::models::init::normal(&mut rng, &[9, 3, side, side], 1.0);
            // Each child alone: the reference output.
            let mut want = x.clone();
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            for (_, l) in reference.layers_mut() {
                want = l.forward(want, &mut Context::eval(&mut r));
            }
            let got = seq.forward(x.clone(), &mut Context::eval(&mut r));
            assert!(seq.tracked.iter().all(|t| !t), "nothing tracked");
            let worst = got
                .iter()
                .zip(want.iter())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5, "k {k}: fused differs by {worst}");
            assert!(
                !relu || got.iter().all(|&v| v >= 0.0),
                "the ReLU was applied"
            );
            // A trainable conv in a training pass is tracked, so nothing fuses and backward runs
            // through all three children.
            let mut ctx = Context::train(&mut r);
            let y = seq.forward(x.clone(), &mut ctx);
            assert!(seq.tracked.iter().all(|&t| t), "every child tracked");
            assert!(seq.backward(ArrayD::ones(y.shape())).is_none());
            let mut grads = 0.0;
            seq.visit("", &mut |_, p| {
                if let Some(g) = &p.grad {
                    grads += g.iter().map(|v| v.abs()).sum::<f32>();
                }
            });
            assert!(grads > 0.0, "gradients reached the parameters");
        }
    }
}
