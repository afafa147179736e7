//! Pure numeric kernels on ndarray views: no parameters, no state.

pub mod epilogue;
pub mod gemm;
pub mod geometry;
pub mod im2col;
pub mod phases;
pub mod pool;
pub mod recycle;
pub mod winograd;

use ndarray::{Array, Dimension};

/// `x` in standard (C-order, contiguous) layout, copied only when it is not already.
pub fn into_standard<D: Dimension>(x: Array<f32, D>) -> Array<f32, D> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}
