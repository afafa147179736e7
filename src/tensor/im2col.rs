//! im2col / col2im for square kernels with symmetric stride and zero padding.
//!
//! One image `x` is `[C, H, W]` (contiguous). Its column matrix is `[C·k·k, OH·OW]`, row
//! `(c·k + ki)·k + kj`, column `oy·OW + ox`, holding `x[c, oy·S + ki − P, ox·S + kj − P]` (zero
//! outside the image). A convolution is then `W[C_out, C·k·k] · col`. `col2im` is the adjoint:
//! it adds every column entry back onto the input position it came from. The `_rows` variants
//! work on a tile: the columns of a range of output rows.

use std::ops::Range;

use super::phases::PhasedRow;

/// The geometry of one convolution over one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvGeometry {
    /// Geometry under PyTorch's floor rule.
    ///
    /// # Panics
    /// Panics if the stride is zero or the padded input is smaller than the kernel.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        ConvGeometry {
            channels,
            height,
            width,
            kernel,
            stride,
            padding,
            out_height: super::geometry::output_size(height, kernel, stride, padding),
            out_width: super::geometry::output_size(width, kernel, stride, padding),
        }
    }

    /// Rows of the column matrix: `C·k·k`.
    pub fn col_rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Columns of the column matrix: `OH·OW`.
    pub fn col_cols(&self) -> usize {
        self.out_height * self.out_width
    }

    /// True when the column matrix is the image itself (1×1 kernel, stride 1, no padding).
    pub fn is_identity(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// The range of output positions `o` along a side of length `n` whose input position
    /// `o·S + kk − P` lies inside `[0, n)`.
    fn valid_range(&self, n: usize, out: usize, kk: usize) -> (usize, usize) {
        super::geometry::valid_outputs(n, out, kk, self.stride, self.padding)
    }
}

/// Fills `col` (`[C·k·k, OH·OW]`, row-major) from one image `x` (`[C, H, W]`).
///
/// # Panics
/// Panics if the slice lengths do not match the geometry.
pub fn im2col(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    im2col_rows(x, g, 0..g.out_height, col);
}

/// Fills `col` (`[C·k·k, (oy1 − oy0)·OW]`, row-major) with the columns of output rows
/// `oy0..oy1` only: a tile of the full column matrix.
///
/// # Panics
/// Panics if the slice lengths do not match the geometry or the rows are out of range.
pub fn im2col_rows(x: &[f32], g: &ConvGeometry, out_rows: Range<usize>, col: &mut [f32]) {
    let tile = out_rows.len() * g.out_width;
    assert_eq!(col.len(), g.col_rows() * tile, "im2col: column length");
    im2col_rows_into(x, g, out_rows, col, tile);
}

/// [`im2col_rows`] into a matrix whose rows are `ld ≥ (oy1 − oy0)·OW` apart: row `r` of the tile
/// fills `col[r·ld..r·ld + tile]` and the rest of each row is left alone, so that the tiles of
/// several images can be written side by side into one wider matrix.
///
/// # Panics
/// Panics if `col` is too short for the rows or the rows are out of range.
pub fn im2col_rows_into(
    x: &[f32],
    g: &ConvGeometry,
    out_rows: Range<usize>,
    col: &mut [f32],
    ld: usize,
) {
    let (h, w, k, s) = (g.height, g.width, g.kernel, g.stride);
    let ow = g.out_width;
    assert!(out_rows.end <= g.out_height, "im2col: output rows");
    let (oy0, oy1) = (out_rows.start, out_rows.end.max(out_rows.start));
    let tile = (oy1 - oy0) * ow;
    assert_eq!(x.len(), g.channels * h * w, "im2col: input length");
    assert!(ld >= tile, "im2col: row stride below the tile width");
    assert!(
        g.col_rows() == 0 || col.len() >= (g.col_rows() - 1) * ld + tile,
        "im2col: column length"
    );
    let p = g.padding as isize;
    if s > 1 {
        return im2col_rows_phased(x, g, oy0..oy1, col, ld);
    }
    for c in 0..g.channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..k {
            let (y_lo, y_hi) = g.valid_range(h, g.out_height, ki);
            for kj in 0..k {
                let (x_lo, x_hi) = g.valid_range(w, ow, kj);
                let row = (c * k + ki) * k + kj;
                let dst = &mut col[row * ld..row * ld + tile];
                for (oy, out_row) in (oy0..oy1).zip(dst.chunks_exact_mut(ow.max(1))) {
                    if oy < y_lo || oy >= y_hi || x_hi <= x_lo {
                        out_row.fill(0.0);
                        continue;
                    }
                    let iy = (oy * s + ki) as isize - p;
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    out_row[..x_lo].fill(0.0);
                    out_row[x_hi..].fill(0.0);
                    let ix0 = ((x_lo * s + kj) as isize - p) as usize;
                    out_row[x_lo..x_hi].copy_from_slice(&src[ix0..ix0 + (x_hi - x_lo)]);
                }
            }
        }
    }
}

/// [`im2col_rows`] for stride `S > 1`: each input row a tile reads is split once into its `S`
/// phases (`x[r], x[r + S], x[r + 2S], …` for `r < S`), after which the row of every kernel
/// column `kj` is a contiguous copy out of phase `(kj − P) mod S`, instead of `k` strided
/// gathers.
fn im2col_rows_phased(
    x: &[f32],
    g: &ConvGeometry,
    out_rows: Range<usize>,
    col: &mut [f32],
    ld: usize,
) {
    let (h, w, k, s) = (g.height, g.width, g.kernel, g.stride);
    let ow = g.out_width;
    let (oy0, oy1) = (out_rows.start, out_rows.end);
    let mut phased = PhasedRow::new(w, ow, k, s, g.padding);
    // The input rows the tile reads, each split once per channel (a kernel taller than the
    // stride reads a row from several output rows).
    let first = (oy0 * s).saturating_sub(g.padding).min(h);
    let end = ((oy1.max(oy0 + 1) - 1) * s + k)
        .saturating_sub(g.padding)
        .min(h)
        .max(first);
    for c in 0..g.channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        phased.split_rows(plane[first * w..end * w].chunks_exact(w.max(1)));
        for ki in 0..k {
            let (y_lo, y_hi) = g.valid_range(h, g.out_height, ki);
            let rows = (c * k + ki) * k..(c * k + ki + 1) * k;
            for oy in oy0..oy1 {
                let at = (oy - oy0) * ow;
                if oy < y_lo || oy >= y_hi {
                    for row in rows.clone() {
                        col[row * ld + at..row * ld + at + ow].fill(0.0);
                    }
                    continue;
                }
                let iy = (oy * s + ki) - g.padding;
                for (kj, row) in rows.clone().enumerate() {
                    let out_row = &mut col[row * ld + at..row * ld + at + ow];
                    let (outputs, inputs) = phased.tap_at(iy - first, kj);
                    out_row[..outputs.start].fill(0.0);
                    out_row[outputs.end..].fill(0.0);
                    out_row[outputs].copy_from_slice(inputs);
                }
            }
        }
    }
}

/// Adds the column matrix `col` back onto the image `x` (`x += col2im(col)`).
///
/// # Panics
/// Panics if the slice lengths do not match the geometry.
pub fn col2im(col: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    col2im_rows(col, g, 0..g.out_height, x);
}

/// Adds a tile of the column matrix, the columns of output rows `oy0..oy1`
/// (`[C·k·k, (oy1 − oy0)·OW]`), back onto the image `x`. Tiles of neighbouring rows overlap in
/// `x` (the kernel's reach), so tiles of one image must be added one after the other.
///
/// # Panics
/// Panics if the slice lengths do not match the geometry or the rows are out of range.
pub fn col2im_rows(col: &[f32], g: &ConvGeometry, out_rows: Range<usize>, x: &mut [f32]) {
    let (h, w, k, s) = (g.height, g.width, g.kernel, g.stride);
    let ow = g.out_width;
    assert!(out_rows.end <= g.out_height, "col2im: output rows");
    let (oy0, oy1) = (out_rows.start, out_rows.end.max(out_rows.start));
    let tile = (oy1 - oy0) * ow;
    assert_eq!(x.len(), g.channels * h * w, "col2im: input length");
    assert_eq!(col.len(), g.col_rows() * tile, "col2im: column length");
    let p = g.padding as isize;
    for c in 0..g.channels {
        let plane = &mut x[c * h * w..(c + 1) * h * w];
        for ki in 0..k {
            let (y_lo, y_hi) = g.valid_range(h, g.out_height, ki);
            let (y_lo, y_hi) = (y_lo.max(oy0), y_hi.min(oy1));
            for kj in 0..k {
                let (x_lo, x_hi) = g.valid_range(w, ow, kj);
                if x_hi <= x_lo {
                    continue;
                }
                let row = (c * k + ki) * k + kj;
                let src = &col[row * tile..(row + 1) * tile];
                let ix0 = ((x_lo * s + kj) as isize - p) as usize;
                for oy in y_lo..y_hi {
                    let iy = ((oy * s + ki) as isize - p) as usize;
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let src_row = &src[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                    if s == 1 {
                        for (d, v) in dst[ix0..ix0 + (x_hi - x_lo)]
                            .iter_mut()
                            .zip(&src_row[x_lo..x_hi])
                        {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[ix0..].iter_mut().step_by(s).zip(&src_row[x_lo..x_hi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_im2col(x: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let mut col = vec![0.0; g.col_rows() * g.col_cols()];
        for c in 0..g.channels {
            for ki in 0..g.kernel {
                for kj in 0..g.kernel {
                    let row = (c * g.kernel + ki) * g.kernel + kj;
                    for oy in 0..g.out_height {
                        for ox in 0..g.out_width {
                            let iy = (oy * g.stride + ki) as isize - g.padding as isize;
                            let ix = (ox * g.stride + kj) as isize - g.padding as isize;
                            if iy >= 0
                                && ix >= 0
                                && (iy as usize) < g.height
                                && (ix as usize) < g.width
                            {
                                col[row * g.col_cols() + oy * g.out_width + ox] =
                                    x[(c * g.height + iy as usize) * g.width + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_naive_and_col2im_is_its_adjoint() {
        for &(c, h, w, k, s, p) in &[
            (2, 5, 7, 3, 1, 1),
            (3, 9, 8, 7, 2, 3),
            (1, 4, 4, 1, 2, 0),
            (2, 6, 5, 3, 2, 0),
            (1, 3, 3, 3, 1, 3),
            (2, 1, 2, 7, 1, 3),
            (1, 2, 3, 7, 2, 3),
            (3, 15, 13, 7, 2, 3),
            (2, 8, 9, 3, 3, 1),
            (2, 7, 7, 1, 2, 0),
            (1, 5, 11, 5, 4, 2),
        ] {
            let g = ConvGeometry::new(c, h, w, k, s, p);
            let x: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut col = vec![f32::NAN; g.col_rows() * g.col_cols()];
            im2col(&x, &g, &mut col);
            assert_eq!(col, naive_im2col(&x, &g), "{g:?}");
            // <im2col(x), y> == <x, col2im(y)>
            let y: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut back = vec![0.0; x.len()];
            col2im(&y, &g, &mut back);
            let lhs: f64 = col
                .iter()
                .zip(&y)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");

            // Tiles of output rows are slices of the full matrix, and their col2im sum to it.
            let (rows, ow) = (g.col_rows(), g.out_width);
            let mut tiled_back = vec![0.0; x.len()];
            for oy0 in (0..g.out_height).step_by(2) {
                let oy1 = (oy0 + 2).min(g.out_height);
                let n = (oy1 - oy0) * ow;
                let mut tile = vec![f32::NAN; rows * n];
                im2col_rows(&x, &g, oy0..oy1, &mut tile);
                let mut ytile = vec![0.0; rows * n];
                for r in 0..rows {
                    let full = r * g.col_cols() + oy0 * ow;
                    assert_eq!(tile[r * n..(r + 1) * n], col[full..full + n], "{g:?}");
                    ytile[r * n..(r + 1) * n].copy_from_slice(&y[full..full + n]);
                }
                col2im_rows(&ytile, &g, oy0..oy1, &mut tiled_back);
            }
            for (a, b) in tiled_back.iter().zip(&back) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }

            // Side by side: two copies of the image's columns in a matrix of rows 2·OH·OW + 3
            // apart, the gaps untouched.
            let p = g.col_cols();
            let ld = 2 * p + 3;
            let mut wide = vec![-7.0f32; rows * ld];
            im2col_rows_into(&x, &g, 0..g.out_height, &mut wide, ld);
            im2col_rows_into(&x, &g, 0..g.out_height, &mut wide[p..], ld);
            for r in 0..rows {
                let line = &wide[r * ld..(r + 1) * ld];
                assert_eq!(line[..p], col[r * p..(r + 1) * p], "{g:?}");
                assert_eq!(line[p..2 * p], col[r * p..(r + 1) * p], "{g:?}");
                assert_eq!(line[2 * p..], [-7.0; 3], "{g:?}");
            }
        }
    }
}
