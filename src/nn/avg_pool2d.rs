//! Average pooling over `[N, C, H, W]`: `y = Σ window / k²` (zero padding counted, PyTorch's
//! default); backward spreads `g/k²` over the window.

use ndarray::{ArrayD, Ix4};

use super::{Context, Layer, NO_FORWARD};
use crate::tensor::geometry::output_size;
use crate::tensor::pool;

/// `nn.AvgPool2d(kernel, stride, padding)`.
pub struct AvgPool2d {
    kernel: usize,
    stride: usize,
    padding: usize,
    input_shape: Option<Vec<usize>>,
}

impl AvgPool2d {
    /// An average pool.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        AvgPool2d {
            kernel,
            stride,
            padding,
            input_shape: None,
        }
    }
}

impl Layer for AvgPool2d {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("AvgPool2d expects [N, C, H, W]");
        self.input_shape = ctx.tracks(false).then(|| x.shape().to_vec());
        pool::avg_pool2d(x.view(), self.kernel, self.stride, self.padding).into_dyn()
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let shape = self.input_shape.take().expect(NO_FORWARD);
        let g = grad
            .into_dimensionality::<Ix4>()
            .expect("AvgPool2d gradient is 4-D");
        Some(
            pool::avg_pool2d_backward(g.view(), &shape, self.kernel, self.stride, self.padding)
                .into_dyn(),
        )
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        let o = |n| output_size(n, self.kernel, self.stride, self.padding);
        vec![input[0], input[1], o(input[2]), o(input[3])]
    }

    fn describe(&self) -> String {
        format!(
            "AvgPool2d(kernel={}, stride={}, padding={})",
            self.kernel, self.stride, self.padding
        )
    }
}
