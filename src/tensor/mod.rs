//! Pure numeric kernels on ndarray views: no parameters, no state.

pub mod epilogue;
pub mod gemm;
pub mod geometry;
pub mod im2col;
pub mod phases;
pub mod pool;
pub mod recycle;
pub mod winograd;

use ndarray::{Array, Dimension, Zip};

/// `x` in standard (C-order, contiguous) layout, copied only when it is not already.
pub fn into_standard<D: Dimension>(x: Array<f32, D>) -> Array<f32, D> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

/// A copy of `x` in standard layout, in memory from the [`recycle`] pool (no fresh pages to
/// fault in once the pool holds a buffer of its size), copied in parallel.
pub fn copy_of<D: Dimension>(x: &Array<f32, D>) -> Array<f32, D> {
    // Written in full below.
    let mut out: Array<f32, D> = recycle::take_array(x.raw_dim());
    Zip::from(&mut out).and(x).par_for_each(|d, &s| *d = s);
    out
}

/// `y += x` (same shape, any layouts), in parallel.
///
/// # Panics
/// Panics if the shapes differ.
pub fn add_into<D: Dimension>(y: &mut Array<f32, D>, x: &Array<f32, D>) {
    assert_eq!(y.shape(), x.shape(), "add_into: shapes differ");
    Zip::from(y).and(x).par_for_each(|y, &x| *y += x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ArrayD};

    fn filled(shape: &[usize], seed: usize) -> ArrayD<f32> {
        let len: usize = shape.iter().product();
        let values = (0..len)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 7.0 - 7.0)
            .collect();
        ArrayD::from_shape_vec(shape, values).unwrap()
    }

    #[test]
    fn copy_of_is_an_equal_standard_copy_of_any_layout() {
        // Above the pool's minimum size (taken from the pool), and a small array.
        for shape in [vec![3, 64, 41, 53], vec![2, 5, 7]] {
            let x = filled(&shape, 1);
            let c = copy_of(&x);
            assert_eq!(c, x);
            assert!(c.is_standard_layout());
            // A transposed view's copy is in standard layout with the same elements.
            let t = x.clone().reversed_axes();
            let ct = copy_of(&t);
            assert_eq!(ct, t);
            assert!(ct.is_standard_layout());
        }
    }

    #[test]
    fn add_into_adds_elementwise_in_any_layout() {
        for shape in [vec![3, 64, 41, 53], vec![2, 5, 7]] {
            let (y0, x) = (filled(&shape, 2), filled(&shape, 3));
            let mut y = y0.clone();
            add_into(&mut y, &x);
            for ((a, b), s) in y0.iter().zip(&x).zip(&y) {
                assert_eq!(*s, a + b);
            }
        }
        // Not both in standard layout: the element order still matches.
        let x = Array3::from_shape_fn((4, 3, 2), |(i, j, k)| (i * 6 + j * 2 + k) as f32);
        let mut y = Array3::<f32>::ones((2, 3, 4)).reversed_axes();
        add_into(&mut y, &x);
        assert_eq!(y, x.mapv(|v| v + 1.0));
    }

    #[test]
    #[should_panic(expected = "add_into: shapes differ")]
    fn add_into_refuses_different_shapes() {
        let mut y = filled(&[2, 3], 0);
        add_into(&mut y, &filled(&[3, 2], 0));
    }
}
