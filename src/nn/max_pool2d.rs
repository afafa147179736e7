//! Max pooling over `[N, C, H, W]`: `y = max` of each `k×k` window (stride `S`, padding `P` with
//! −∞); backward sends each `g` to the window's argmax, as PyTorch.

use ndarray::{Array4, ArrayD, Ix4};

use super::{Context, Layer, NO_FORWARD};
use crate::tensor::geometry::output_size;
use crate::tensor::pool;

/// `nn.MaxPool2d(kernel, stride, padding)`.
pub struct MaxPool2d {
    kernel: usize,
    stride: usize,
    padding: usize,
    cache: Option<(Array4<u32>, Vec<usize>)>,
}

impl MaxPool2d {
    /// A max pool.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d {
            kernel,
            stride,
            padding,
            cache: None,
        }
    }
}

impl Layer for MaxPool2d {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("MaxPool2d expects [N, C, H, W]");
        if !ctx.tracks(false) {
            self.cache = None;
            let y = pool::max_pool2d_values(x.view(), self.kernel, self.stride, self.padding);
            crate::tensor::recycle::give_array(x);
            return y.into_dyn();
        }
        let (y, arg) = pool::max_pool2d(x.view(), self.kernel, self.stride, self.padding);
        self.cache = Some((arg, x.shape().to_vec()));
        y.into_dyn()
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let (arg, shape) = self.cache.take().expect(NO_FORWARD);
        let g = grad
            .into_dimensionality::<Ix4>()
            .expect("MaxPool2d gradient is 4-D");
        Some(pool::max_pool2d_backward(g.view(), &arg, &shape).into_dyn())
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        let o = |n| output_size(n, self.kernel, self.stride, self.padding);
        vec![input[0], input[1], o(input[2]), o(input[3])]
    }

    fn describe(&self) -> String {
        format!(
            "MaxPool2d(kernel={}, stride={}, padding={})",
            self.kernel, self.stride, self.padding
        )
    }
}
