//! An ordered container of named layers: `y = f_k(…f_1(f_0(x)))`. Children are named `0, 1, 2, …`
//! like `nn.Sequential`, or given names (`conv1`, `layer1`, …) for models whose torchvision
//! modules are named. Backward runs the children in reverse and stops at the first child that
//! nothing before it needs a gradient from.

use ndarray::ArrayD;

use super::{join, Context, Layer, Param};

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
        for (_, layer) in &mut self.layers[range] {
            let track = ctx.tracks(layer.has_trainable());
            x = layer.forward(x, ctx);
            ctx.input_grad = track;
            self.tracked.push(track);
        }
        x
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
