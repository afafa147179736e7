//! Adaptive average pooling of `[N, C, H, W]` to `[N, C, OH, OW]`: output cell `i` averages input
//! rows `[floor(i·H/OH), ceil((i+1)·H/OH))` (and the same for columns), PyTorch's bin rule.

use ndarray::{ArrayD, Ix4};

use super::{Context, Layer, NO_FORWARD};
use crate::tensor::pool;

/// `nn.AdaptiveAvgPool2d((oh, ow))`.
pub struct AdaptiveAvgPool2d {
    out_h: usize,
    out_w: usize,
    input_shape: Option<Vec<usize>>,
}

impl AdaptiveAvgPool2d {
    /// Pools to `out_h × out_w`.
    pub fn new(out_h: usize, out_w: usize) -> Self {
        AdaptiveAvgPool2d {
            out_h,
            out_w,
            input_shape: None,
        }
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("AdaptiveAvgPool2d expects [N, C, H, W]");
        self.input_shape = ctx.tracks(false).then(|| x.shape().to_vec());
        if x.shape()[2] == self.out_h && x.shape()[3] == self.out_w {
            return x.into_dyn();
        }
        pool::adaptive_avg_pool2d(x.view(), self.out_h, self.out_w).into_dyn()
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let shape = self.input_shape.take().expect(NO_FORWARD);
        if shape[2] == self.out_h && shape[3] == self.out_w {
            return Some(grad);
        }
        let g = grad
            .into_dimensionality::<Ix4>()
            .expect("AdaptiveAvgPool2d gradient is 4-D");
        Some(pool::adaptive_avg_pool2d_backward(g.view(), &shape).into_dyn())
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![input[0], input[1], self.out_h, self.out_w]
    }

    fn describe(&self) -> String {
        format!(
            "AdaptiveAvgPool2d(output_size=({}, {}))",
            self.out_h, self.out_w
        )
    }
}
