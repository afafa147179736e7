//! 2-D convolution (square kernel, symmetric stride and zero padding), through im2col and GEMM.
//!
//! `x` `[N, C, H, W]`, `W` `[C_out, C, k, k]`, `b` `[C_out]`, `y` `[N, C_out, OH, OW]` with
//! `OH = floor((H + 2P − k)/S) + 1`. Per image: `y[n] = W·col(x[n]) + b`, `W` seen as
//! `[C_out, C·k·k]`. Backward: `∂W += Σₙ g[n]·col(x[n])ᵀ`, `∂b += Σ g`,
//! `∂x[n] = col2im(Wᵀ·g[n])`. Images run in parallel when the batch has at least as many images
//! as threads; otherwise each product is split across threads.

use ndarray::{Array4, ArrayD, ArrayView2, ArrayViewMut2, Ix4};
use rand::RngCore;
use rayon::prelude::*;

use super::linear::uniform;
use super::{join, Context, Layer, Param, ParamKind, NO_FORWARD};
use crate::tensor::gemm::{matmul, Threads};
use crate::tensor::im2col::{col2im, im2col, ConvGeometry};

/// `nn.Conv2d` with a square kernel.
pub struct Conv2d {
    /// `[C_out, C_in, k, k]`.
    pub weight: Param,
    /// `[C_out]`, when the layer has a bias.
    pub bias: Option<Param>,
    stride: usize,
    padding: usize,
    cache: Option<Cache>,
}

struct Cache {
    input: Option<Array4<f32>>,
    input_shape: [usize; 4],
    input_grad: bool,
}

impl Conv2d {
    /// A layer initialised as PyTorch's `nn.Conv2d` (`U(−1/√fan_in, 1/√fan_in)` for weight and
    /// bias, `fan_in = C_in·k·k`).
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        rng: &mut dyn RngCore,
    ) -> Self {
        let bound = 1.0 / ((c_in * kernel * kernel).max(1) as f32).sqrt();
        let weight = uniform(rng, &[c_out, c_in, kernel, kernel], bound);
        let bias = bias.then(|| uniform(rng, &[c_out], bound));
        Self::from_arrays(weight, bias, stride, padding)
    }

    /// A layer with the given weight `[C_out, C_in, k, k]` and bias `[C_out]`.
    ///
    /// # Panics
    /// Panics if the weight is not 4-D with a square kernel, the bias length differs from
    /// `C_out`, or the stride is zero.
    pub fn from_arrays(
        weight: ArrayD<f32>,
        bias: Option<ArrayD<f32>>,
        stride: usize,
        padding: usize,
    ) -> Self {
        let s = weight.shape();
        assert!(
            s.len() == 4 && s[2] == s[3],
            "Conv2d: weight must be [C_out, C_in, k, k]"
        );
        assert!(stride > 0, "Conv2d: stride must be positive");
        if let Some(b) = &bias {
            assert_eq!(b.shape(), &[s[0]], "Conv2d: bias length");
        }
        Conv2d {
            weight: Param::new(ParamKind::Weight, weight),
            bias: bias.map(|b| Param::new(ParamKind::Bias, b)),
            stride,
            padding,
            cache: None,
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Kernel side.
    pub fn kernel(&self) -> usize {
        self.weight.shape()[2]
    }

    /// Stride.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Zero padding on each side.
    pub fn padding(&self) -> usize {
        self.padding
    }

    fn geometry(&self, shape: &[usize]) -> ConvGeometry {
        assert_eq!(shape.len(), 4, "Conv2d expects [N, C, H, W], got {shape:?}");
        assert_eq!(shape[1], self.in_channels(), "Conv2d: input channels");
        ConvGeometry::new(
            shape[1],
            shape[2],
            shape[3],
            self.kernel(),
            self.stride,
            self.padding,
        )
    }

    /// The weight seen as `[C_out, C·k·k]` (weights are always stored contiguous).
    fn weight_matrix(&self) -> ArrayView2<'_, f32> {
        let (co, ckk) = (self.out_channels(), self.weight.len() / self.out_channels());
        self.weight
            .value()
            .into_shape_with_order((co, ckk))
            .expect("contiguous weight")
    }
}

/// Runs `f(image index, chunk)` over the `per`-sized chunks of `data`, in parallel across images
/// when there are at least as many images as threads. `f` is told which GEMM threading to use.
fn for_each_image<T: Send>(
    data: &mut [f32],
    per: usize,
    init: impl Fn() -> T + Sync + Send,
    f: impl Fn(&mut T, usize, &mut [f32], Threads) + Sync + Send,
) -> Vec<T> {
    let n = data.len().checked_div(per).unwrap_or(0);
    if n >= rayon::current_num_threads() && n > 1 {
        data.par_chunks_mut(per)
            .enumerate()
            .fold(&init, |mut state, (i, chunk)| {
                f(&mut state, i, chunk, Threads::One);
                state
            })
            .collect()
    } else {
        let mut state = init();
        for (i, chunk) in data.chunks_mut(per.max(1)).enumerate() {
            f(&mut state, i, chunk, Threads::Pool);
        }
        vec![state]
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let x = x
            .into_dimensionality::<Ix4>()
            .expect("Conv2d expects [N, C, H, W]")
            .as_standard_layout()
            .into_owned();
        let g = self.geometry(x.shape());
        let (n, co) = (x.shape()[0], self.out_channels());
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let w = self.weight_matrix();
        let xs = x.as_slice().expect("standard layout");
        let per_in = g.channels * g.height * g.width;
        let mut y = Array4::<f32>::zeros((n, co, g.out_height, g.out_width));
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.value().iter().copied().collect::<Vec<_>>());
        for_each_image(
            y.as_slice_mut().expect("fresh array"),
            co * cols,
            Vec::new,
            |col: &mut Vec<f32>, i, yi, threads| {
                let xi = &xs[i * per_in..(i + 1) * per_in];
                let colv = if g.is_identity() {
                    ArrayView2::from_shape((rows, cols), xi).expect("col shape")
                } else {
                    col.resize(rows * cols, 0.0);
                    im2col(xi, &g, col);
                    ArrayView2::from_shape((rows, cols), &col[..]).expect("col shape")
                };
                let yv = ArrayViewMut2::from_shape((co, cols), yi).expect("out shape");
                matmul(w, colv, yv, false, threads);
                if let Some(b) = &bias {
                    for (row, bv) in yi.chunks_mut(cols).zip(b) {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
            },
        );
        self.cache = ctx.tracks(self.has_trainable()).then(|| Cache {
            input_shape: [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]],
            input: self.weight.trainable().then_some(x),
            input_grad: ctx.input_grad,
        });
        y.into_dyn()
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let cache = self.cache.take().expect(NO_FORWARD);
        let grad = grad
            .into_dimensionality::<Ix4>()
            .expect("Conv2d gradient is [N, C_out, OH, OW]")
            .as_standard_layout()
            .into_owned();
        let g = self.geometry(&cache.input_shape);
        let (n, co) = (cache.input_shape[0], self.out_channels());
        let (rows, cols) = (g.col_rows(), g.col_cols());
        assert_eq!(
            grad.shape(),
            &[n, co, g.out_height, g.out_width],
            "Conv2d: gradient shape"
        );
        let gs = grad.as_slice().expect("standard layout");
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            let db: Vec<f32> = (0..co)
                .map(|c| {
                    (0..n)
                        .map(|i| {
                            gs[(i * co + c) * cols..(i * co + c + 1) * cols]
                                .iter()
                                .sum::<f32>()
                        })
                        .sum()
                })
                .collect();
            b.accumulate_grad(ndarray::ArrayView1::from(&db).into_dyn());
        }
        let w = self.weight_matrix();
        let per_in = g.channels * g.height * g.width;
        let input = cache
            .input
            .as_ref()
            .map(|x| x.as_slice().expect("standard layout"));
        let want_dx = cache.input_grad;
        let mut dx = vec![0.0f32; if want_dx { n * per_in } else { n }];
        let per_dx = if want_dx { per_in } else { 1 };
        let partial_dw = for_each_image(
            &mut dx,
            per_dx,
            || {
                (
                    Vec::new(),
                    input.map(|_| ndarray::Array2::<f32>::zeros((co, rows))),
                )
            },
            |(col, dw), i, dxi, threads| {
                let gi =
                    ArrayView2::from_shape((co, cols), &gs[i * co * cols..(i + 1) * co * cols])
                        .expect("grad shape");
                if let (Some(xs), Some(dw)) = (input, dw.as_mut()) {
                    let xi = &xs[i * per_in..(i + 1) * per_in];
                    let colv = if g.is_identity() {
                        ArrayView2::from_shape((rows, cols), xi).expect("col shape")
                    } else {
                        col.resize(rows * cols, 0.0);
                        im2col(xi, &g, col);
                        ArrayView2::from_shape((rows, cols), &col[..]).expect("col shape")
                    };
                    matmul(gi, colv.t(), dw.view_mut(), true, threads);
                }
                if want_dx {
                    if g.is_identity() {
                        let dxv = ArrayViewMut2::from_shape((rows, cols), dxi).expect("dx shape");
                        matmul(w.t(), gi, dxv, false, threads);
                    } else {
                        col.resize(rows * cols, 0.0);
                        let colm = ArrayViewMut2::from_shape((rows, cols), &mut col[..])
                            .expect("col shape");
                        matmul(w.t(), gi, colm, false, threads);
                        col2im(col, &g, dxi);
                    }
                }
            },
        );
        if self.weight.trainable() {
            let mut total = ndarray::Array2::<f32>::zeros((co, rows));
            for (_, dw) in partial_dw {
                if let Some(dw) = dw {
                    total += &dw;
                }
            }
            let total = total
                .into_shape_with_order(self.weight.shape().to_vec())
                .expect("weight shape");
            self.weight.accumulate_grad(total.view());
        }
        want_dx.then(|| ArrayD::from_shape_vec(cache.input_shape.to_vec(), dx).expect("dx shape"))
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        let g = self.geometry(input);
        vec![input[0], self.out_channels(), g.out_height, g.out_width]
    }

    fn describe(&self) -> String {
        format!(
            "Conv2d({}, {}, kernel={}, stride={}, padding={}{})",
            self.in_channels(),
            self.out_channels(),
            self.kernel(),
            self.stride,
            self.padding,
            if self.bias.is_some() {
                ""
            } else {
                ", bias=False"
            }
        )
    }

    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Param)) {
        f(&join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&join(prefix, "bias"), b);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}
