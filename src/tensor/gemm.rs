//! Matrix products on ndarray views through the `gemm` crate: `C = A·B` or `C += A·B`.
//!
//! Shapes: `A` is `[m, k]`, `B` is `[k, n]`, `C` is `[m, n]`; any strides (transposed views
//! cost nothing).

use ndarray::{ArrayView2, ArrayViewMut2};

/// Whether a product may use several threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Run on the calling thread (the caller already parallelises across products).
    One,
    /// Split the product across the rayon pool.
    Pool,
}

/// `C = A·B` (`accumulate == false`) or `C += A·B` (`accumulate == true`).
///
/// # Panics
/// Panics if the shapes do not chain: `A` `[m, k]`, `B` `[k, n]`, `C` `[m, n]`.
pub fn matmul(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(
        k, k2,
        "matmul: inner dimensions differ ({m}x{k} by {k2}x{n})"
    );
    assert_eq!(
        c.dim(),
        (m, n),
        "matmul: output is {:?}, expected {m}x{n}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads().max(1)),
    };
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the three views are valid for their shapes and strides (ndarray guarantees it),
    // the shapes were checked to chain above, and `c` is a unique mutable borrow, so it cannot
    // alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (m, k) = a.dim();
        let n = b.dim().1;
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[[i, p]] * b[[p, j]]).sum())
    }

    #[test]
    fn matches_naive_product_with_transposed_views_and_accumulation() {
        let a = Array2::from_shape_fn((5, 7), |(i, j)| (i * 7 + j) as f32 * 0.1 - 1.0);
        let b = Array2::from_shape_fn((7, 3).f(), |(i, j)| (i as f32 - j as f32) * 0.3);
        let expected = naive(&a, &b);
        let mut c = Array2::from_elem((5, 3), 1.0f32);
        matmul(a.view(), b.view(), c.view_mut(), true, Threads::Pool);
        for (x, y) in c.iter().zip(expected.iter()) {
            assert!((x - (y + 1.0)).abs() < 1e-4, "{x} vs {}", y + 1.0);
        }
        let at = a.t().to_owned();
        let mut c2 = Array2::zeros((5, 3));
        matmul(at.t(), b.view(), c2.view_mut(), false, Threads::One);
        for (x, y) in c2.iter().zip(expected.iter()) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}
