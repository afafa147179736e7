//! ResNet-18 from `[2, 2, 2, 2]` BasicBlocks: stem `conv1` 7×7/2 pad 3 + `bn1` + ReLU + max-pool
//! 3/2/1; `layer1..4` (64, 128, 256, 512 channels; the first block of layers 2–4 has stride 2 and a
//! 1×1/2 conv + BN `downsample`); `avgpool` to 1×1; `fc`. Names are torchvision's.
//!
//! A BasicBlock: `y = relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))` with `s` the identity or the
//! downsample. Its backward sums the gradients of the two branches.

use ndarray::ArrayD;

use super::init::{conv_weight, Init};
use super::Unit;
use crate::nn::{
    join, AdaptiveAvgPool2d, BatchNorm, Context, Conv2d, Flatten, Layer, Linear, MaxPool2d, Param,
    Relu, Sequential,
};
use crate::tensor::{add_into, copy_of, recycle};

/// Stage names in order.
pub const STAGES: [&str; 7] = ["conv1", "conv2", "conv3", "conv4", "conv5", "pool", "fc"];

/// A residual block with two 3×3 convolutions.
pub struct BasicBlock {
    main: Sequential,
    downsample: Option<Sequential>,
    relu: Relu,
    tracks: Option<(bool, bool, bool)>,
}

impl BasicBlock {
    /// A block from `c_in` to `c_out` channels with the given stride (a downsample when the shape
    /// changes).
    pub fn new(c_in: usize, c_out: usize, stride: usize, init: &mut Init<'_>) -> Self {
        let conv = |init: &mut Init<'_>, ci, k, s, p| {
            Box::new(Conv2d::from_arrays(
                conv_weight(init, c_out, ci, k),
                None,
                s,
                p,
            ))
        };
        let main = Sequential::named(vec![
            (
                "conv1".into(),
                conv(init, c_in, 3, stride, 1) as Box<dyn Layer>,
            ),
            ("bn1".into(), Box::new(BatchNorm::new_2d(c_out))),
            ("relu".into(), Box::new(Relu::new())),
            ("conv2".into(), conv(init, c_out, 3, 1, 1)),
            ("bn2".into(), Box::new(BatchNorm::new_2d(c_out))),
        ]);
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            Sequential::new(vec![
                conv(init, c_in, 1, stride, 0) as Box<dyn Layer>,
                Box::new(BatchNorm::new_2d(c_out)),
            ])
        });
        BasicBlock {
            main,
            downsample,
            relu: Relu::new(),
            tracks: None,
        }
    }
}

impl Layer for BasicBlock {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let input_grad = ctx.input_grad;
        let skip_in = copy_of(&x);
        let mut y = self.main.forward(x, ctx);
        let main_track = ctx.input_grad;
        ctx.input_grad = input_grad;
        let skip = match &mut self.downsample {
            Some(ds) => ds.forward(skip_in, ctx),
            None => skip_in,
        };
        let skip_track = ctx.input_grad;
        add_into(&mut y, &skip);
        recycle::give_array(skip);
        ctx.input_grad = main_track || skip_track;
        self.tracks = ctx
            .grad_enabled
            .then_some((input_grad, main_track, skip_track));
        self.relu.forward(y, ctx)
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let (input_grad, main_track, skip_track) = self.tracks.take().expect(crate::nn::NO_FORWARD);
        let g = self.relu.backward(grad)?;
        let skip = if !skip_track {
            None
        } else {
            match &mut self.downsample {
                Some(ds) => ds.backward(copy_of(&g)),
                None => Some(copy_of(&g)),
            }
        };
        let main = if main_track {
            self.main.backward(g)
        } else {
            None
        };
        if !input_grad {
            return None;
        }
        match (main, skip) {
            (Some(mut a), Some(b)) => {
                add_into(&mut a, &b);
                recycle::give_array(b);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        self.main.output_shape(input)
    }

    fn describe(&self) -> String {
        format!(
            "BasicBlock{}",
            if self.downsample.is_some() {
                " (downsample)"
            } else {
                ""
            }
        )
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Param)) {
        self.main.visit(prefix, f);
        if let Some(ds) = &self.downsample {
            ds.visit(&join(prefix, "downsample"), f);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        self.main.visit_mut(prefix, f);
        if let Some(ds) = &mut self.downsample {
            ds.visit_mut(&join(prefix, "downsample"), f);
        }
    }

    fn children(&self) -> Vec<(String, &dyn Layer)> {
        let mut c = self.main.children();
        if let Some(ds) = &self.downsample {
            c.push(("downsample".into(), ds as &dyn Layer));
        }
        c
    }
}

/// The units of ResNet-18 with `classes` outputs, for 3-channel input of any size the stem
/// accepts.
pub fn units(classes: usize, init: &mut Init<'_>) -> Vec<Unit> {
    let mut units = vec![
        Unit::new(
            "conv1",
            "conv1",
            Box::new(Conv2d::from_arrays(conv_weight(init, 64, 3, 7), None, 2, 3)),
        ),
        Unit::new("bn1", "conv1", Box::new(BatchNorm::new_2d(64))),
        Unit::new("relu", "conv1", Box::new(Relu::new())),
        Unit::new("maxpool", "conv1", Box::new(MaxPool2d::new(3, 2, 1))),
    ];
    let mut c_in = 64;
    for (i, c_out) in [64, 128, 256, 512].into_iter().enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        let blocks: Vec<Box<dyn Layer>> = vec![
            Box::new(BasicBlock::new(c_in, c_out, stride, init)),
            Box::new(BasicBlock::new(c_out, c_out, 1, init)),
        ];
        units.push(Unit::new(
            format!("layer{}", i + 1),
            STAGES[i + 1],
            Box::new(Sequential::new(blocks)),
        ));
        c_in = c_out;
    }
    units.push(Unit::new(
        "avgpool",
        "pool",
        Box::new(AdaptiveAvgPool2d::new(1, 1)),
    ));
    units.push(Unit::new("flatten", "pool", Box::new(Flatten::new())));
    let fc = match init {
        Init::Zeros => Linear::from_arrays(
            ndarray::Array2::zeros((classes, 512)),
            Some(ndarray::Array1::zeros(classes)),
        ),
        Init::Random(rng) => Linear::new(512, classes, true, *rng),
    };
    units.push(Unit::new("fc", "fc", Box::new(fc)));
    units
}
