//! Pure numeric kernels on ndarray views: no parameters, no state.

pub mod gemm;
pub mod geometry;
pub mod im2col;
pub mod pool;
