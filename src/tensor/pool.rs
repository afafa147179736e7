//! Pooling kernels over NCHW tensors, parallel across (n, c) planes.
//!
//! - Max pooling: `y[o] = max over the window of x` (padding counts as −∞); the argmax, a flat
//!   index into the input plane, is kept so the backward pass sends each gradient to the single
//!   position that won (the first maximum in scan order, as PyTorch).
//! - Average pooling: `y[o] = Σ window / k²` (padding counts as zeros, PyTorch's default
//!   `count_include_pad=True`).
//! - Adaptive average pooling: output cell `i` of `O` along a side of `n` averages input
//!   `[floor(i·n/O), ceil((i+1)·n/O))`.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use super::geometry::output_size;
use super::phases::PhasedRow;

fn planes(shape: &[usize]) -> (usize, usize, usize, usize) {
    (shape[0], shape[1], shape[2], shape[3])
}

/// The input window along one side for output `o`: `[o·S − P, o·S − P + k)` clipped to `[0, n)`.
fn window(o: usize, k: usize, s: usize, p: usize, n: usize) -> (usize, usize) {
    let start = (o * s) as isize - p as isize;
    let end = (start + k as isize).min(n as isize);
    (start.max(0) as usize, end.max(0) as usize)
}

/// `[N, C, H, W, OH, OW]` of a max pool over an input of `shape`.
///
/// # Panics
/// Panics if `padding > kernel / 2`.
fn max_pool_shape(shape: &[usize], kernel: usize, stride: usize, padding: usize) -> [usize; 6] {
    assert!(
        padding * 2 <= kernel,
        "max pool: padding must be at most half the kernel"
    );
    let (n, c, h, w) = planes(shape);
    let o = |side| output_size(side, kernel, stride, padding);
    [n, c, h, w, o(h), o(w)]
}

/// Max pooling forward: returns the output and the argmax of every output cell.
///
/// # Panics
/// Panics if the padded input is smaller than the kernel or `padding > kernel / 2`.
pub fn max_pool2d(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Array4<f32>, Array4<u32>) {
    let [n, c, h, w, oh, ow] = max_pool_shape(x.shape(), kernel, stride, padding);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut out = Array4::<f32>::zeros((n, c, oh, ow));
    let mut arg = Array4::<u32>::zeros((n, c, oh, ow));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(oh * ow)
        .zip(
            arg.as_slice_mut()
                .expect("fresh array")
                .par_chunks_mut(oh * ow),
        )
        .enumerate()
        .for_each(|(plane, (o, a))| {
            let src = &xs[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                let (y0, y1) = window(oy, kernel, stride, padding, h);
                for ox in 0..ow {
                    let (x0, x1) = window(ox, kernel, stride, padding, w);
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = y0 * w + x0;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let v = src[iy * w + ix];
                            if v > best || v.is_nan() {
                                best = v;
                                best_i = iy * w + ix;
                                if v.is_nan() {
                                    break;
                                }
                            }
                        }
                    }
                    o[oy * ow + ox] = best;
                    a[oy * ow + ox] = best_i as u32;
                }
            }
        });
    (out, arg)
}

/// `a` or `b`, whichever is larger, and NaN when either is (as PyTorch's max pooling).
#[inline]
fn max_nan(a: f32, b: f32) -> f32 {
    if a >= b || a.is_nan() {
        a
    } else {
        b
    }
}

/// Max pooling forward without the argmax (inference: nothing will flow back), the same values
/// as [`max_pool2d`]. Separable: the max over each row's horizontal windows, then over the
/// vertical windows of those rows, so a `k×k` window costs `2k` comparisons rather than `k²`.
///
/// # Panics
/// Panics if the padded input is smaller than the kernel or `padding > kernel / 2`.
pub fn max_pool2d_values(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Array4<f32> {
    let [n, c, h, w, oh, ow] = max_pool_shape(x.shape(), kernel, stride, padding);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    // Every output row is written in full.
    let mut out: Array4<f32> = super::recycle::take_array((n, c, oh, ow));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut((oh * ow).max(1))
        .enumerate()
        .for_each_init(
            || (PhasedRow::new(w, ow, kernel, stride, padding), Vec::new()),
            |(phased, rows), (plane, o)| {
                let src = &xs[plane * h * w..(plane + 1) * h * w];
                rows.clear();
                rows.resize(h * ow, f32::NEG_INFINITY);
                // Each row's horizontal window maxima, a kernel column at a time over
                // contiguous slices of the row's stride phases.
                for (line, hrow) in src.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
                    phased.split(line);
                    for kj in 0..kernel {
                        let (outputs, inputs) = phased.tap(kj);
                        for (d, &v) in hrow[outputs].iter_mut().zip(inputs) {
                            *d = max_nan(*d, v);
                        }
                    }
                }
                for (oy, dst) in o.chunks_exact_mut(ow).enumerate() {
                    let (y0, y1) = window(oy, kernel, stride, padding, h);
                    dst.copy_from_slice(&rows[y0 * ow..(y0 + 1) * ow]);
                    for row in rows[(y0 + 1) * ow..y1 * ow].chunks_exact(ow) {
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d = max_nan(*d, v);
                        }
                    }
                }
            },
        );
    out
}

/// Max pooling backward: scatters `grad` to the argmax positions of an input of `input_shape`.
pub fn max_pool2d_backward(
    grad: ArrayView4<'_, f32>,
    argmax: &Array4<u32>,
    input_shape: &[usize],
) -> Array4<f32> {
    let (n, c, h, w) = planes(input_shape);
    assert_eq!(
        grad.shape(),
        argmax.shape(),
        "max pool backward: gradient shape"
    );
    let per = grad.shape()[2] * grad.shape()[3];
    let grad = grad.as_standard_layout();
    let gs = grad.as_slice().expect("standard layout");
    let args = argmax.as_slice().expect("standard layout");
    let mut dx = Array4::<f32>::zeros((n, c, h, w));
    dx.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, d)| {
            for (g, &i) in gs[plane * per..(plane + 1) * per]
                .iter()
                .zip(&args[plane * per..(plane + 1) * per])
            {
                d[i as usize] += g;
            }
        });
    dx
}

/// Average pooling forward (zero padding counted in the divisor `k²`).
pub fn avg_pool2d(
    x: ArrayView4<'_, f32>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Array4<f32> {
    let (n, c, h, w) = planes(x.shape());
    let (oh, ow) = (
        output_size(h, kernel, stride, padding),
        output_size(w, kernel, stride, padding),
    );
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let scale = 1.0 / (kernel * kernel) as f32;
    let mut out = Array4::<f32>::zeros((n, c, oh, ow));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, o)| {
            let src = &xs[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                let (y0, y1) = window(oy, kernel, stride, padding, h);
                for ox in 0..ow {
                    let (x0, x1) = window(ox, kernel, stride, padding, w);
                    let mut s = 0.0;
                    for iy in y0..y1 {
                        s += src[iy * w + x0..iy * w + x1].iter().sum::<f32>();
                    }
                    o[oy * ow + ox] = s * scale;
                }
            }
        });
    out
}

/// Average pooling backward: each output gradient spread evenly (`/k²`) over its window.
pub fn avg_pool2d_backward(
    grad: ArrayView4<'_, f32>,
    input_shape: &[usize],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Array4<f32> {
    let (n, c, h, w) = planes(input_shape);
    let (oh, ow) = (grad.shape()[2], grad.shape()[3]);
    let grad = grad.as_standard_layout();
    let gs = grad.as_slice().expect("standard layout");
    let scale = 1.0 / (kernel * kernel) as f32;
    let mut dx = Array4::<f32>::zeros((n, c, h, w));
    dx.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, d)| {
            let g = &gs[plane * oh * ow..(plane + 1) * oh * ow];
            for oy in 0..oh {
                let (y0, y1) = window(oy, kernel, stride, padding, h);
                for ox in 0..ow {
                    let (x0, x1) = window(ox, kernel, stride, padding, w);
                    let v = g[oy * ow + ox] * scale;
                    for iy in y0..y1 {
                        for e in &mut d[iy * w + x0..iy * w + x1] {
                            *e += v;
                        }
                    }
                }
            }
        });
    dx
}

/// PyTorch's adaptive bin for output `i` of `out` over a side of `n`.
pub fn adaptive_bin(i: usize, out: usize, n: usize) -> (usize, usize) {
    ((i * n) / out, ((i + 1) * n).div_ceil(out))
}

/// Adaptive average pooling forward to `[N, C, oh, ow]`.
pub fn adaptive_avg_pool2d(x: ArrayView4<'_, f32>, oh: usize, ow: usize) -> Array4<f32> {
    let (n, c, h, w) = planes(x.shape());
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut out = Array4::<f32>::zeros((n, c, oh, ow));
    out.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, o)| {
            let src = &xs[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                let (y0, y1) = adaptive_bin(oy, oh, h);
                for ox in 0..ow {
                    let (x0, x1) = adaptive_bin(ox, ow, w);
                    let mut s = 0.0;
                    for iy in y0..y1 {
                        s += src[iy * w + x0..iy * w + x1].iter().sum::<f32>();
                    }
                    o[oy * ow + ox] = s / ((y1 - y0) * (x1 - x0)) as f32;
                }
            }
        });
    out
}

/// Adaptive average pooling backward.
pub fn adaptive_avg_pool2d_backward(
    grad: ArrayView4<'_, f32>,
    input_shape: &[usize],
) -> Array4<f32> {
    let (n, c, h, w) = planes(input_shape);
    let (oh, ow) = (grad.shape()[2], grad.shape()[3]);
    let grad = grad.as_standard_layout();
    let gs = grad.as_slice().expect("standard layout");
    let mut dx = Array4::<f32>::zeros((n, c, h, w));
    dx.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, d)| {
            let g = &gs[plane * oh * ow..(plane + 1) * oh * ow];
            for oy in 0..oh {
                let (y0, y1) = adaptive_bin(oy, oh, h);
                for ox in 0..ow {
                    let (x0, x1) = adaptive_bin(ox, ow, w);
                    let v = g[oy * ow + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                    for iy in y0..y1 {
                        for e in &mut d[iy * w + x0..iy * w + x1] {
                            *e += v;
                        }
                    }
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn max_values_without_argmax_equal_the_argmax_path() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // (n, c, h, w, kernel, stride, padding): ResNet's stem pool, VGG's, odd sides, k = 1.
        for (n, c, h, w, k, s, p) in [
            (2, 3, 112, 112, 3, 2, 1),
            (1, 2, 9, 7, 3, 2, 1),
            (2, 2, 8, 8, 2, 2, 0),
            (1, 1, 7, 5, 3, 1, 1),
            (1, 2, 6, 6, 1, 1, 0),
            (1, 1, 5, 9, 4, 3, 2),
        ] {
            let mut x =
                Array4::from_shape_simple_fn((n, c, h, w), || rng.random_range(-2.0f32..2.0));
            // Ties and a NaN, which must win its windows.
            x[[0, 0, 1, 1]] = x[[0, 0, 1, 2]];
            x[[0, c - 1, h / 2, w / 2]] = f32::NAN;
            let (want, _) = max_pool2d(x.view(), k, s, p);
            let got = max_pool2d_values(x.view(), k, s, p);
            assert_eq!(got.shape(), want.shape());
            let nans = want.iter().filter(|v| v.is_nan()).count();
            assert!(nans >= 1, "the NaN reaches the output");
            for (g, e) in got.iter().zip(want.iter()) {
                assert!(g == e || (g.is_nan() && e.is_nan()), "{g} vs {e}");
            }
        }
    }
}
