//! Winograd F(4×4, 3×3) convolution (Lavin & Gray, 2016): 3×3 kernel, stride 1, zero padding `p`.
//!
//! `x` `[N, C_in, H, W]`, kernel `g` `[C_out, C_in, 3, 3]`, `y` `[N, C_out, OH, OW]` with
//! `OH = H + 2p − 2`, `OW = W + 2p − 2`. The output is cut into 4×4 tiles (the last row and column
//! of tiles may stick out of it: their extra values are computed and dropped). Tile `(ty, tx)` of
//! image `n` reads the 6×6 input patch `d_c` at rows `4·ty − p ..`, columns `4·tx − p ..` of each
//! channel `c` (zero outside the image) and is
//!
//! `Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A`.
//!
//! With `U[ξ] = (G g Gᵀ)[ξ]` seen as `[C_out, C_in]` and `V[ξ] = (Bᵀ d B)[ξ]` as `[C_in, T]` over
//! `T` tiles, the sum over channels is 36 matrix products `M[ξ] = U[ξ]·V[ξ]` `[C_out, T]`, one per
//! position `ξ` of the 6×6 transformed tile: 36 multiplications per tile and channel pair where
//! the direct form needs 16·9 = 144.
//!
//! The transforms interpolate at 0, 1, −1, 1/2, −2 and ∞ (Barabasz et al., 2020, "Error analysis
//! and improving the accuracy of Winograd convolution"): against a direct convolution in f64 the
//! output's error measured 2–3× smaller than with Lavin's 0, ±1, ±2, ∞ or with 0, ±1, ±1/2, ∞
//! (at most 6e-6 of the output's largest value against 1.4e-5 and 1.9e-5, 64 to 512 channels,
//! He-scaled weights; im2col + GEMM: 5e-7). `Aᵀ` and `Bᵀ` are exact in binary; `G` is rounded, once
//! per weight (computing `G g Gᵀ` in f64 rather than f32 measured no more accurate):
//!
//! ```text
//!      ⎡ 1  −3/2  −2   3/2   1   0 ⎤        ⎡  1      0      0   ⎤
//!      ⎢ 0   −1   1/2  5/2   1   0 ⎥        ⎢  1/3    1/3    1/3 ⎥        ⎡ 1  1   1   1    1  0 ⎤
//! Bᵀ = ⎢ 0    1  −5/2  1/2   1   0 ⎥    G = ⎢ −1/3    1/3   −1/3 ⎥   Aᵀ = ⎢ 0  1  −1  1/2  −2  0 ⎥
//!      ⎢ 0   −2   −1    2    1   0 ⎥        ⎢ −16/15 −8/15 −4/15 ⎥        ⎢ 0  1   1  1/4   4  0 ⎥
//!      ⎢ 0   1/2  −1  −1/2   1   0 ⎥        ⎢  1/15  −2/15  4/15 ⎥        ⎣ 0  1  −1  1/8  −8  1 ⎦
//!      ⎣ 0    1  −3/2  −2   3/2  1 ⎦        ⎣  0      0      1   ⎦
//! ```
//!
//! Tiles are processed in blocks of whole tile rows (possibly spanning images) holding `T_b` =
//! 64 to 128 tiles (fewer when there are too few to keep every thread busy), so that a block's `V`
//! and `M` (`36 × C × T_b` each) stay in cache; blocks run in parallel, each on one thread with
//! its own scratch buffers. Within a block, tile `t` is the
//! `t`-th tile in (image, tile row, tile column) order, column `t` of every `V[ξ]` and `M[ξ]`, and
//! the transforms run across the block's tiles with unit stride:
//! - input, per channel: `Bᵀ` down the 6 input rows of each tile row, for all its columns at once;
//!   each tile's 6-column window of that is gathered to column `t`; then `B` across, for all the
//!   tiles of the block at once;
//! - output, per channel: `Aᵀ` down and `A` across, for all the tiles of the block at once; then
//!   the 4×4 tiles are interleaved into the output rows through the [`Epilogue`] (bias, a folded
//!   BatchNorm, an optional ReLU).

use std::ops::Range;

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::epilogue::Epilogue;
use super::gemm::{matmul, Threads};
use super::recycle;

/// Output tile side.
const M_TILE: usize = 4;
/// Transformed tile side (`4 + 3 − 1`).
const ALPHA: usize = 6;
/// Positions of a transformed tile.
const POSITIONS: usize = ALPHA * ALPHA;

/// Pairs of channels whose kernels are transformed together, as vector lanes.
const LANES: usize = 8;

/// Pairs of channels per parallel job of the kernel transform.
const PAIRS_PER_JOB: usize = 2048;

/// Tiles per block, at least and at most: enough for the 36 products to run near peak, few
/// enough that a block's `V` and `M` stay in the last-level cache next to `U` (measured on
/// VGG16 and ResNet-18 shapes: 64 to 128 tiles are within noise of each other at 64 to 256
/// channels, and best at 512).
const MIN_BLOCK_TILES: usize = 64;
const MAX_BLOCK_TILES: usize = 128;

/// `Bᵀ·d` for one 6-vector (column or row of an input patch).
#[inline(always)]
fn bt6(d: [f32; 6]) -> [f32; 6] {
    let e = d[3] - d[1];
    let f = d[4] - d[2];
    [
        (d[0] - d[2]) + f + 1.5 * e,
        (e + f) + 1.5 * (d[2] + d[3]),
        (f - e) + 1.5 * (d[3] - d[2]),
        f + 2.0 * e,
        f - 0.5 * e,
        (d[5] - d[3]) - e + 1.5 * f,
    ]
}

/// `Aᵀ·m` for one 6-vector (column or row of a transformed output tile).
#[inline(always)]
fn at6(m: [f32; 6]) -> [f32; 4] {
    let p = m[1] + m[2];
    let q = m[1] - m[2];
    [
        m[0] + p + m[3] + m[4],
        q + 0.5 * m[3] - 2.0 * m[4],
        p + 0.25 * m[3] + 4.0 * m[4],
        q + 0.125 * m[3] - 8.0 * m[4] + m[5],
    ]
}

/// `G·v` for one 3-vector (column or row of a kernel).
#[inline(always)]
fn g3(v: [f32; 3]) -> [f32; ALPHA] {
    const THIRD: f32 = 1.0 / 3.0;
    const FIFTEENTH: f32 = 1.0 / 15.0;
    [
        v[0],
        (v[0] + v[1] + v[2]) * THIRD,
        (v[1] - v[0] - v[2]) * THIRD,
        -(16.0 * v[0] + 8.0 * v[1] + 4.0 * v[2]) * FIFTEENTH,
        (v[0] - 2.0 * v[1] + 4.0 * v[2]) * FIFTEENTH,
        v[2],
    ]
}

/// `G·g·Gᵀ` of [`LANES`] kernels at once: `g[3·i + j][l]` is value `(i, j)` of kernel `l`, the
/// result `[ξ][l]`.
#[inline(always)]
fn kernel_transform(g: &[[f32; LANES]; 9]) -> [[f32; LANES]; POSITIONS] {
    let mut u = [[0.0f32; LANES]; POSITIONS];
    for l in 0..LANES {
        let cols: [[f32; ALPHA]; 3] =
            std::array::from_fn(|j| g3([g[j][l], g[3 + j][l], g[6 + j][l]]));
        for a in 0..ALPHA {
            let row = g3([cols[0][a], cols[1][a], cols[2][a]]);
            for (b, v) in row.into_iter().enumerate() {
                u[a * ALPHA + b][l] = v;
            }
        }
    }
    u
}

/// A 3×3 kernel in the Winograd domain: `U[ξ] = (G g Gᵀ)[ξ]` for the 36 positions `ξ`, each a
/// `[C_out, C_in]` matrix. Built once per weight value; it holds 4× the kernel's values.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    c_out: usize,
    c_in: usize,
    /// `[36, C_out·C_in]`: row `ξ` is `U[ξ]` `[C_out, C_in]` in C order.
    u: Array2<f32>,
}

impl WinogradWeights {
    /// The transform of `weight` `[C_out, C_in, 3, 3]` (any layout).
    ///
    /// # Panics
    /// Panics if the kernel is not 3×3.
    pub fn new(weight: ArrayView4<'_, f32>) -> Self {
        let mut w = Self::empty();
        w.set(weight);
        w
    }

    /// The transform of the kernel that computes a convolution's input gradient:
    /// `g'[c, o, i, j] = g[o, c, 2 − i, 2 − j]` (channels swapped, kernel rotated by 180°). The
    /// input gradient of a 3×3, stride-1 convolution with padding `p` is the convolution of the
    /// output gradient with `g'` and padding `2 − p`.
    ///
    /// # Panics
    /// Panics if the kernel is not 3×3.
    pub fn for_input_grad(weight: ArrayView4<'_, f32>) -> Self {
        let mut w = Self::empty();
        w.set_for_input_grad(weight);
        w
    }

    /// Replaces the transform by that of `weight`, as [`WinogradWeights::new`], in the same
    /// memory when the channel counts are unchanged.
    ///
    /// # Panics
    /// Panics if the kernel is not 3×3.
    pub fn set(&mut self, weight: ArrayView4<'_, f32>) {
        let (c_out, c_in) = channels(&weight);
        let weight = weight.as_standard_layout();
        let g = weight.as_slice().expect("standard layout");
        self.fill(c_out, c_in, |pair| std::array::from_fn(|k| g[pair * 9 + k]));
    }

    /// Replaces the transform by that of the input-gradient kernel of `weight`, as
    /// [`WinogradWeights::for_input_grad`], in the same memory when the channel counts are
    /// unchanged.
    ///
    /// # Panics
    /// Panics if the kernel is not 3×3.
    pub fn set_for_input_grad(&mut self, weight: ArrayView4<'_, f32>) {
        let (c_out, c_in) = channels(&weight);
        let weight = weight.as_standard_layout();
        let g = weight.as_slice().expect("standard layout");
        // Pair (c, o) of the new kernel is kernel (o, c) of the old one, rotated: value
        // 3·i + j ← 3·(2 − i) + (2 − j) = 8 − (3·i + j).
        self.fill(c_in, c_out, |pair| {
            let (c, o) = (pair / c_out, pair % c_out);
            let k = &g[(o * c_in + c) * 9..(o * c_in + c + 1) * 9];
            std::array::from_fn(|v| k[8 - v])
        });
    }

    fn empty() -> Self {
        WinogradWeights {
            c_out: 0,
            c_in: 0,
            u: Array2::zeros((POSITIONS, 0)),
        }
    }

    /// `U` for `C_out·C_in` kernels, `kernel(o·C_in + c)` giving kernel `(o, c)` in C order.
    fn fill(&mut self, c_out: usize, c_in: usize, kernel: impl Fn(usize) -> [f32; 9] + Sync) {
        let pairs = c_out * c_in;
        if self.u.ncols() != pairs {
            self.u = Array2::zeros((POSITIONS, pairs));
        }
        (self.c_out, self.c_in) = (c_out, c_in);
        self.u
            .axis_chunks_iter_mut(Axis(1), PAIRS_PER_JOB)
            .into_par_iter()
            .enumerate()
            .for_each(|(job, mut chunk)| {
                let first = job * PAIRS_PER_JOB;
                let n = chunk.ncols();
                let mut rows: Vec<&mut [f32]> = chunk
                    .rows_mut()
                    .into_iter()
                    .map(|r| r.into_slice().expect("contiguous row"))
                    .collect();
                for start in (0..n).step_by(LANES) {
                    let lanes = LANES.min(n - start);
                    let mut lg = [[0.0f32; LANES]; 9];
                    for l in 0..lanes {
                        for (lane, v) in lg.iter_mut().zip(kernel(first + start + l)) {
                            lane[l] = v;
                        }
                    }
                    let u = kernel_transform(&lg);
                    if lanes == LANES {
                        for (row, v) in rows.iter_mut().zip(&u) {
                            row[start..start + LANES].copy_from_slice(v);
                        }
                    } else {
                        for (row, v) in rows.iter_mut().zip(&u) {
                            row[start..start + lanes].copy_from_slice(&v[..lanes]);
                        }
                    }
                }
            });
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.c_out
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.c_in
    }

    /// `U[ξ]` as `[C_out, C_in]`.
    fn position(&self, xi: usize) -> ArrayView2<'_, f32> {
        self.u
            .row(xi)
            .into_shape_with_order((self.c_out, self.c_in))
            .expect("U shape")
    }
}

/// `(C_out, C_in)` of a 3×3 kernel.
fn channels(weight: &ArrayView4<'_, f32>) -> (usize, usize) {
    let (c_out, c_in, kh, kw) = weight.dim();
    assert!(
        kh == 3 && kw == 3,
        "Winograd F(4×4, 3×3): kernel must be 3×3"
    );
    (c_out, c_in)
}

/// Sizes shared by every block of one call.
#[derive(Clone, Copy, Debug)]
struct Plan {
    c_in: usize,
    c_out: usize,
    height: usize,
    width: usize,
    padding: usize,
    out_width: usize,
    /// Tiles per tile row.
    tiles_x: usize,
    /// Input row length with padding: `4·(tiles_x + 1)` columns from column `−p`.
    row_len: usize,
}

impl Plan {
    /// The plan of a 3×3 convolution from `c_in` to `c_out` channels over `height`×`width` maps
    /// with zero padding `padding` (at least 3×3 once padded).
    fn new((c_in, c_out): (usize, usize), (height, width): (usize, usize), padding: usize) -> Self {
        let out_width = width + 2 * padding - 2;
        let tiles_x = out_width.div_ceil(M_TILE);
        Plan {
            c_in,
            c_out,
            height,
            width,
            padding,
            out_width,
            tiles_x,
            row_len: M_TILE * (tiles_x + 1),
        }
    }
}

/// Tile rows of one image: `(image, tile rows)`.
type TileRows = (usize, Range<usize>);

/// Tile rows `tiles` of one image, and the output rows they write (`[C_out, rows, OW]`).
struct Piece<'a> {
    image: usize,
    tiles: Range<usize>,
    out: ArrayViewMut3<'a, f32>,
}

/// A batch of tile rows transformed and multiplied together.
struct Block<'a> {
    pieces: Vec<Piece<'a>>,
    tiles: usize,
}

/// Per-thread buffers, sized for the largest block (`T_b` tiles).
struct Scratch {
    /// `V`: `[36, C_in, T_b]`.
    v: Vec<f32>,
    /// `M`: `[36, C_out, T_b]`.
    m: Vec<f32>,
    /// A zero input row (`W` values), read for input rows outside the image.
    zeros: Vec<f32>,
    /// `Bᵀ` down the six input rows of one tile row: `[6, row_len]`.
    cols: Vec<f32>,
    /// The 6-column windows of `cols` for every tile of the block: `[6 (row), 6 (column), T_b]`.
    windows: Vec<f32>,
    /// `Aᵀ` down the columns of `M`: `[4 (row), 6 (column), T_b]`.
    half: Vec<f32>,
    /// The output tiles of one channel: `[4 (row), 4 (column), T_b]`.
    out: Vec<f32>,
}

impl Scratch {
    /// Buffers for blocks of up to `tiles` tiles; `v` and `m` (the large ones, written in full
    /// before they are read) come from the recycled pool and go back to it on drop.
    fn new(plan: &Plan, tiles: usize) -> Self {
        Scratch {
            v: recycle::take(POSITIONS * plan.c_in * tiles),
            m: recycle::take(POSITIONS * plan.c_out * tiles),
            zeros: vec![0.0; plan.width],
            cols: vec![0.0; ALPHA * plan.row_len],
            windows: vec![0.0; POSITIONS * tiles],
            half: vec![0.0; M_TILE * ALPHA * tiles],
            out: vec![0.0; M_TILE * M_TILE * tiles],
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.v));
        recycle::give(std::mem::take(&mut self.m));
    }
}

/// `out[·][k] = f(inp[·][k])` for `k < n`: one 1-D transform per lane, the lanes contiguous.
#[inline(always)]
fn lanes<const I: usize, const O: usize>(
    n: usize,
    inp: [&[f32]; I],
    out: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let inp = inp.map(|s| &s[..n]);
    let mut out = out.map(|s| &mut s[..n]);
    for k in 0..n {
        let v = f(std::array::from_fn(|i| inp[i][k]));
        for (o, v) in out.iter_mut().zip(v) {
            o[k] = v;
        }
    }
}

/// `K` consecutive chunks of `buf`, each `len` long, from chunk `first`.
#[inline(always)]
fn chunks_mut<const K: usize>(buf: &mut [f32], first: usize, len: usize) -> [&mut [f32]; K] {
    let mut it = buf[first * len..(first + K) * len].chunks_exact_mut(len);
    std::array::from_fn(|_| it.next().expect("chunk count"))
}

/// `K` consecutive chunks of `buf`, each `len` long, from chunk `first`.
#[inline(always)]
fn chunks<const K: usize>(buf: &[f32], first: usize, len: usize) -> [&[f32]; K] {
    std::array::from_fn(|k| &buf[(first + k) * len..(first + k + 1) * len])
}

/// The Winograd-domain tiles `V` of one block: `s.v` `[36, C_in, T_b]`, tile `t` of the block
/// in column `t`.
fn input_transform(plan: &Plan, x: &[f32], pieces: &[TileRows], tb: usize, s: &mut Scratch) {
    let Plan {
        c_in,
        height,
        width,
        padding,
        tiles_x: tx,
        row_len,
        ..
    } = *plan;
    let plane_len = height * width;
    for c in 0..c_in {
        let mut first = 0;
        for (image, tiles) in pieces {
            let start = (image * c_in + c) * plane_len;
            let plane = &x[start..start + plane_len];
            for (local, ty) in tiles.clone().enumerate() {
                let t0 = first + local * tx;
                // Bᵀ down the six input rows, every column at once (padding columns are zero).
                let rows: [&[f32]; ALPHA] =
                    std::array::from_fn(|i| match (M_TILE * ty + i).checked_sub(padding) {
                        Some(r) if r < height => &plane[r * width..(r + 1) * width],
                        _ => &s.zeros[..],
                    });
                let cols = chunks_mut::<ALPHA>(&mut s.cols, 0, row_len).map(|col| {
                    col[..padding].fill(0.0);
                    col[padding + width..].fill(0.0);
                    &mut col[padding..padding + width]
                });
                lanes(width, rows, cols, bt6);
                // The 6-column window of each tile, column by column, at the tile's place.
                for (a, col) in s.cols.chunks_exact(row_len).enumerate() {
                    let col = &col[..M_TILE * tx + 2];
                    for (b, w) in chunks_mut::<ALPHA>(&mut s.windows, a * ALPHA, tb)
                        .into_iter()
                        .enumerate()
                    {
                        for (w, v) in w[t0..t0 + tx].iter_mut().zip(col[b..].iter().step_by(4)) {
                            *w = *v;
                        }
                    }
                }
            }
            first += tiles.len() * tx;
        }
        // B across, for every tile of the block at once: V[6·a + b][c][t].
        for a in 0..ALPHA {
            let windows = chunks::<ALPHA>(&s.windows, a * ALPHA, tb);
            let v = chunks_mut::<ALPHA>(&mut s.v, a * ALPHA, c_in * tb)
                .map(|o| &mut o[c * tb..(c + 1) * tb]);
            lanes(tb, windows, v, bt6);
        }
    }
}

/// `Aᵀ·M·A` for one block, through the epilogue, into the block's output rows.
fn output_transform(plan: &Plan, block: &mut Block<'_>, epilogue: &Epilogue, s: &mut Scratch) {
    let Plan {
        c_out,
        out_width,
        tiles_x: tx,
        ..
    } = *plan;
    let tb = block.tiles;
    // Output tiles whose four columns all lie inside the output, per tile row.
    let whole = out_width / M_TILE;
    for o in 0..c_out {
        // Aᵀ down each of the six columns of the transformed tiles.
        for b in 0..ALPHA {
            let m: [&[f32]; ALPHA] = std::array::from_fn(|a| {
                let start = ((a * ALPHA + b) * c_out + o) * tb;
                &s.m[start..start + tb]
            });
            let mut rows = s.half.chunks_exact_mut(ALPHA * tb);
            let half: [&mut [f32]; M_TILE] = std::array::from_fn(|_| {
                let h = rows.next().expect("four rows");
                &mut h[b * tb..(b + 1) * tb]
            });
            lanes(tb, m, half, at6);
        }
        // A across each of the four rows.
        for (half, out) in s
            .half
            .chunks_exact(ALPHA * tb)
            .zip(s.out.chunks_exact_mut(M_TILE * tb))
        {
            lanes(
                tb,
                chunks::<ALPHA>(half, 0, tb),
                chunks_mut::<M_TILE>(out, 0, tb),
                at6,
            );
        }
        // Into the output rows, interleaved, through the epilogue (bias, folded BatchNorm, ReLU).
        let k = epilogue.channel(o);
        let act = |v: f32| epilogue.apply(k, v);
        let mut first = 0;
        for piece in &mut block.pieces {
            let rows = piece.out.shape()[1];
            let mut plane = piece.out.index_axis_mut(Axis(0), o);
            let plane = plane.as_slice_mut().expect("contiguous output rows");
            for local in 0..piece.tiles.len() {
                let t0 = first + local * tx;
                for (r, out) in s.out.chunks_exact(M_TILE * tb).enumerate() {
                    let row = M_TILE * local + r;
                    if row >= rows {
                        break;
                    }
                    let dst = &mut plane[row * out_width..(row + 1) * out_width];
                    let [y0, y1, y2, y3] = chunks::<M_TILE>(out, 0, tb).map(|y| &y[t0..t0 + tx]);
                    for (j, q) in dst.chunks_exact_mut(M_TILE).enumerate() {
                        q[0] = act(y0[j]);
                        q[1] = act(y1[j]);
                        q[2] = act(y2[j]);
                        q[3] = act(y3[j]);
                    }
                    for (k, d) in dst[M_TILE * whole..].iter_mut().enumerate() {
                        *d = act([y0, y1, y2, y3][k][whole]);
                    }
                }
            }
            first += piece.tiles.len() * tx;
        }
    }
}

/// One block: input transform, the 36 products, output transform.
fn run_block(
    plan: &Plan,
    x: &[f32],
    w: &WinogradWeights,
    epilogue: &Epilogue,
    mut block: Block<'_>,
    s: &mut Scratch,
) {
    let tb = block.tiles;
    let pieces: Vec<TileRows> = block
        .pieces
        .iter()
        .map(|p| (p.image, p.tiles.clone()))
        .collect();
    input_transform(plan, x, &pieces, tb, s);
    let (vl, ml) = (plan.c_in * tb, plan.c_out * tb);
    for xi in 0..POSITIONS {
        let v = ArrayView2::from_shape((plan.c_in, tb), &s.v[xi * vl..(xi + 1) * vl]).expect("V");
        let m = ArrayViewMut2::from_shape((plan.c_out, tb), &mut s.m[xi * ml..(xi + 1) * ml])
            .expect("M");
        matmul(w.position(xi), v, m, false, Threads::One);
    }
    output_transform(plan, &mut block, epilogue, s);
}

/// Tile rows per block: a block holds [`MIN_BLOCK_TILES`] to [`MAX_BLOCK_TILES`] tiles, the
/// count that wastes the fewest lanes of the products' 16-wide vectors (the tiles are the
/// products' vector dimension), the fewer rows on a tie; then, when there are fewer than four
/// blocks per thread, the block count rounds up to a multiple of the thread count (if there are
/// tile rows enough), so no thread idles; and the blocks are balanced to (nearly) equal size.
fn rows_per_block(tiles_x: usize, tile_rows: usize) -> usize {
    let tx = tiles_x.max(1);
    let lo = MIN_BLOCK_TILES.div_ceil(tx);
    let hi = MAX_BLOCK_TILES.div_ceil(tx).max(lo);
    // Minimise padded/used lanes, compared exactly as padded_r·used_best < padded_best·used_r.
    let padded = |r: usize| ((r * tx).next_multiple_of(16), r * tx);
    let mut rows = lo;
    for r in lo + 1..=hi {
        let ((pr, ur), (pb, ub)) = (padded(r), padded(rows));
        if pr * ub < pb * ur {
            rows = r;
        }
    }
    let rows = rows.clamp(1, tile_rows.max(1));
    let threads = rayon::current_num_threads().max(1);
    let mut blocks = tile_rows.div_ceil(rows);
    if blocks < 4 * threads {
        blocks = blocks.next_multiple_of(threads).min(tile_rows);
    }
    tile_rows.div_ceil(blocks.max(1)).max(1)
}

/// `y = epilogue(conv(x, g))` for a 3×3 kernel, stride 1 and zero padding `padding` (the
/// epilogue: per output channel a scale and shift, which carry the bias and a folded BatchNorm,
/// then an optional ReLU), by Winograd F(4×4, 3×3). `x` is `[N, C_in, H, W]` (any layout), `y`
/// `[N, C_out, H + 2p − 2, W + 2p − 2]`. Blocks of tiles run in parallel on the rayon pool, each
/// product on one thread.
///
/// # Panics
/// Panics if the channels differ from the weights', the epilogue's lengths from `C_out`, or the
/// output would be empty.
pub fn conv3x3(
    x: ArrayView4<'_, f32>,
    w: &WinogradWeights,
    epilogue: &Epilogue,
    padding: usize,
) -> Array4<f32> {
    let (n, c_in, height, width) = x.dim();
    assert_eq!(c_in, w.c_in, "Winograd conv: input channels");
    epilogue.check(w.c_out);
    assert!(
        height + 2 * padding >= 3 && width + 2 * padding >= 3,
        "Winograd conv: the input {height}x{width} with padding {padding} is smaller than the kernel"
    );
    let (out_height, out_width) = (height + 2 * padding - 2, width + 2 * padding - 2);
    let plan = Plan::new((c_in, w.c_out), (height, width), padding);
    let (tiles_y, tiles_x) = (out_height.div_ceil(M_TILE), plan.tiles_x);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    // Every output value is written by the output transform of its tile.
    let mut y: Array4<f32> = super::recycle::take_array((n, w.c_out, out_height, out_width));
    if n == 0 || w.c_out == 0 {
        return y;
    }
    let rows = rows_per_block(tiles_x, n * tiles_y);
    // Each block's pieces take their output rows, image by image in order.
    let mut rests: Vec<Option<ArrayViewMut3<'_, f32>>> =
        y.axis_iter_mut(Axis(0)).map(Some).collect();
    let blocks: Vec<Block<'_>> = tile_blocks(n, tiles_y, rows)
        .into_iter()
        .map(|pieces| Block {
            tiles: pieces.iter().map(|(_, t)| t.len() * tiles_x).sum(),
            pieces: pieces
                .into_iter()
                .map(|(image, tiles)| {
                    let rest = rests[image].take().expect("rows left");
                    let out_rows = (M_TILE * tiles.end).min(out_height) - M_TILE * tiles.start;
                    let (out, tail) = rest.split_at(Axis(1), out_rows);
                    rests[image] = Some(tail);
                    Piece { image, tiles, out }
                })
                .collect(),
        })
        .collect();
    let max_tiles = rows * tiles_x;
    blocks.into_par_iter().for_each_init(
        || Scratch::new(&plan, max_tiles),
        |s, block| run_block(&plan, xs, w, epilogue, block, s),
    );
    y
}

/// The tile rows of `n` images of `tiles_y` tile rows each, in order, cut into blocks of `rows`
/// tile rows (a block may span images; the last may be shorter).
fn tile_blocks(n: usize, tiles_y: usize, rows: usize) -> Vec<Vec<TileRows>> {
    let mut blocks = Vec::new();
    let mut current = Vec::new();
    let mut filled = 0;
    for image in 0..n {
        let mut ty = 0;
        while ty < tiles_y {
            let take = (rows - filled).min(tiles_y - ty);
            current.push((image, ty..ty + take));
            filled += take;
            ty += take;
            if filled == rows {
                blocks.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

/// `A·y` for one 4-vector (the adjoint of [`at6`]).
#[inline(always)]
fn a4(y: [f32; 4]) -> [f32; ALPHA] {
    [
        y[0],
        y[0] + y[1] + y[2] + y[3],
        y[0] - y[1] + y[2] - y[3],
        y[0] + 0.5 * y[1] + 0.25 * y[2] + 0.125 * y[3],
        y[0] - 2.0 * y[1] + 4.0 * y[2] - 8.0 * y[3],
        y[3],
    ]
}

/// `Gᵀ·u` for one 6-vector (the adjoint of [`g3`]).
#[inline(always)]
fn gt3(u: [f32; ALPHA]) -> [f32; 3] {
    const THIRD: f32 = 1.0 / 3.0;
    const FIFTEENTH: f32 = 1.0 / 15.0;
    [
        u[0] + (u[1] - u[2]) * THIRD + (u[4] - 16.0 * u[3]) * FIFTEENTH,
        (u[1] + u[2]) * THIRD - (8.0 * u[3] + 2.0 * u[4]) * FIFTEENTH,
        (u[1] - u[2]) * THIRD + (4.0 * u[4] - 4.0 * u[3]) * FIFTEENTH + u[5],
    ]
}

/// The output gradient's tiles in the Winograd domain, `A·Ȳ·Aᵀ` (the adjoint of the output
/// transform): `s.m` `[36, C_out, T_b]`, tile `t` of the block in column `t`. Gradient values
/// past the output's edge are zero.
fn grad_transform(plan: &Plan, gy: &[f32], pieces: &[TileRows], tb: usize, s: &mut Scratch) {
    let Plan {
        c_out,
        out_width: ow,
        tiles_x: tx,
        ..
    } = *plan;
    let oh = plan.height + 2 * plan.padding - 2;
    let plane_len = oh * ow;
    for o in 0..c_out {
        // The block's 4×4 gradient tiles: s.out[(4·r + c)·T_b + t].
        let mut first = 0;
        for (image, tiles) in pieces {
            let plane = &gy[(image * c_out + o) * plane_len..][..plane_len];
            for (local, ty) in tiles.clone().enumerate() {
                let t0 = first + local * tx;
                for r in 0..M_TILE {
                    let row = M_TILE * ty + r;
                    let line = (row < oh).then(|| &plane[row * ow..(row + 1) * ow]);
                    for c in 0..M_TILE {
                        let dst = &mut s.out[(M_TILE * r + c) * tb + t0..][..tx];
                        for (tile_x, d) in dst.iter_mut().enumerate() {
                            let col = M_TILE * tile_x + c;
                            *d = line.filter(|_| col < ow).map_or(0.0, |l| l[col]);
                        }
                    }
                }
            }
            first += tiles.len() * tx;
        }
        // A down each of the four columns: s.half[(4·a + c)·T_b + t], a < 6.
        for c in 0..M_TILE {
            let y: [&[f32]; M_TILE] =
                std::array::from_fn(|r| &s.out[(M_TILE * r + c) * tb..][..tb]);
            let mut rows = s.half.chunks_exact_mut(tb);
            let mut half: Vec<&mut [f32]> = (0..ALPHA * M_TILE)
                .map(|_| rows.next().expect("24 rows"))
                .collect();
            let out: [&mut [f32]; ALPHA] =
                std::array::from_fn(|a| std::mem::take(&mut half[M_TILE * a + c]));
            lanes(tb, y, out, a4);
        }
        // A across each of the six rows: M̄[6·a + b][o][t].
        for a in 0..ALPHA {
            let h = chunks::<M_TILE>(&s.half, M_TILE * a, tb);
            let m = chunks_mut::<ALPHA>(&mut s.m, ALPHA * a, c_out * tb)
                .map(|row| &mut row[o * tb..(o + 1) * tb]);
            lanes(tb, h, m, a4);
        }
    }
}

/// Most bytes the Winograd-domain tiles of one [`conv3x3_weight_grad`] call may take (input and
/// gradient together); larger problems take im2col.
pub const WEIGHT_GRAD_BYTES: usize = 256 << 20;

/// Whether [`conv3x3_weight_grad`] of `n` images from `c_in` to `c_out` channels at an
/// `oh`×`ow` output pays (for a convolution whose forward pass takes Winograd): at least two
/// blocks of tiles, so that the transforms run in parallel and the products' inner dimension is
/// not a single block's (measured: at one block of 64 tiles, ResNet-18's layer4 at batch 16, it
/// is level with im2col; at 256 tiles, VGG16's conv5_1, 1.3–1.4× faster; at 3,136, conv3_1,
/// 1.2–1.3×), and its transformed tiles within [`WEIGHT_GRAD_BYTES`].
pub fn weight_grad_pays(n: usize, (c_in, c_out): (usize, usize), (oh, ow): (usize, usize)) -> bool {
    let tiles = n * oh.div_ceil(M_TILE) * ow.div_ceil(M_TILE);
    tiles >= 2 * MIN_BLOCK_TILES
        && POSITIONS * (c_in + c_out) * tiles * std::mem::size_of::<f32>() <= WEIGHT_GRAD_BYTES
}

/// `∂W` `[C_out, C_in, 3, 3]` of `y = conv(x, W)` (3×3, stride 1, zero padding `padding`) for the
/// output gradient `gy` `[N, C_out, OH, OW]`, by Winograd F(4×4, 3×3): `∂U[ξ] = Σ_t M̄[ξ]·V[ξ]ᵀ`
/// over all tiles `t` (`V` the input's tiles as in the forward pass, `M̄ = A·Ȳ·Aᵀ` the gradient's),
/// then `∂W = Gᵀ·∂U·G`: 36 products of `[C_out, T]·[T, C_in]` instead of one of
/// `[C_out, 16·T]·[16·T, 9·C_in]`. The tiles are transformed in parallel blocks, the 36 products
/// run in parallel (each owns its `∂U[ξ]`), and so does the transform back.
///
/// # Panics
/// Panics if the shapes do not belong to one 3×3 convolution with this padding.
pub fn conv3x3_weight_grad(
    x: ArrayView4<'_, f32>,
    gy: ArrayView4<'_, f32>,
    padding: usize,
) -> Array4<f32> {
    let (n, c_in, height, width) = x.dim();
    let (n2, c_out, out_height, out_width) = gy.dim();
    assert!(
        n == n2
            && height + 2 * padding >= 3
            && out_height == height + 2 * padding - 2
            && out_width == width + 2 * padding - 2,
        "Winograd ∂W: input {:?} and gradient {:?} do not fit padding {padding}",
        x.shape(),
        gy.shape()
    );
    let plan = Plan::new((c_in, c_out), (height, width), padding);
    let (tiles_y, tiles_x) = (out_height.div_ceil(M_TILE), plan.tiles_x);
    let (x, gy) = (x.as_standard_layout(), gy.as_standard_layout());
    let (xs, gs) = (
        x.as_slice().expect("standard layout"),
        gy.as_slice().expect("standard layout"),
    );
    let rows = rows_per_block(tiles_x, n * tiles_y);
    let blocks = tile_blocks(n, tiles_y, rows);
    // The transformed tiles of every block: (V [36, C_in, T_b], M̄ [36, C_out, T_b], T_b).
    let transformed: Vec<(Vec<f32>, Vec<f32>, usize)> = blocks
        .par_iter()
        .map_init(
            || Scratch::new(&plan, rows * tiles_x),
            |s, pieces| {
                let tb = pieces.iter().map(|(_, t)| t.len() * tiles_x).sum();
                input_transform(&plan, xs, pieces, tb, s);
                grad_transform(&plan, gs, pieces, tb, s);
                let keep = |from: &[f32]| {
                    let mut v = recycle::take(from.len());
                    v.copy_from_slice(from);
                    v
                };
                (
                    keep(&s.v[..POSITIONS * c_in * tb]),
                    keep(&s.m[..POSITIONS * c_out * tb]),
                    tb,
                )
            },
        )
        .collect();
    // Every ∂U[ξ] is written by its first product (then accumulated).
    let mut du: Array2<f32> = recycle::take_array((POSITIONS, c_out * c_in));
    du.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(xi, row)| {
            let mut d = row
                .into_shape_with_order((c_out, c_in))
                .expect("contiguous row");
            for (b, (v, m, tb)) in transformed.iter().enumerate() {
                let v = ArrayView2::from_shape((c_in, *tb), &v[xi * c_in * tb..][..c_in * tb])
                    .expect("V");
                let m = ArrayView2::from_shape((c_out, *tb), &m[xi * c_out * tb..][..c_out * tb])
                    .expect("M̄");
                matmul(m, v.t(), d.view_mut(), b > 0, Threads::One);
            }
        });
    for (v, m, _) in transformed {
        recycle::give(v);
        recycle::give(m);
    }
    // ∂W = Gᵀ·∂U·G for every channel pair, in parallel chunks of pairs.
    let pairs = c_out * c_in;
    // Every pair's nine values are written below.
    let mut dw: Array2<f32> = recycle::take_array((pairs, 9));
    let du_values = du.as_slice().expect("contiguous ∂U");
    dw.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(9 * PAIRS_PER_JOB)
        .enumerate()
        .for_each(|(job, out)| {
            let first = job * PAIRS_PER_JOB;
            let len = out.len() / 9;
            let rows: [&[f32]; POSITIONS] =
                std::array::from_fn(|xi| &du_values[xi * pairs + first..][..len]);
            for (k, out) in out.chunks_exact_mut(9).enumerate() {
                // Gᵀ down each of the six columns, then across each of the three rows.
                let cols: [[f32; 3]; ALPHA] =
                    std::array::from_fn(|b| gt3(std::array::from_fn(|a| rows[ALPHA * a + b][k])));
                for i in 0..3 {
                    let row = gt3(std::array::from_fn(|b| cols[b][i]));
                    out[3 * i..3 * i + 3].copy_from_slice(&row);
                }
            }
        });
    recycle::give_array(du);
    dw.into_shape_with_order((c_out, c_in, 3, 3))
        .expect("weight shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Direct convolution in f64 (3×3, stride 1, padding `p`), plus bias.
    fn direct(x: &Array4<f32>, w: &Array4<f32>, bias: Option<&[f32]>, p: usize) -> Array4<f64> {
        let (n, c, h, wd) = x.dim();
        let co = w.dim().0;
        let (oh, ow) = (h + 2 * p - 2, wd + 2 * p - 2);
        let mut y = Array4::<f64>::zeros((n, co, oh, ow));
        for ((i, o, oy, ox), v) in y.indexed_iter_mut() {
            let mut acc = bias.map_or(0.0, |b| b[o] as f64);
            for ci in 0..c {
                for ki in 0..3 {
                    let iy = (oy + ki) as isize - p as isize;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    for kj in 0..3 {
                        let ix = (ox + kj) as isize - p as isize;
                        if ix < 0 || ix as usize >= wd {
                            continue;
                        }
                        acc +=
                            w[[o, ci, ki, kj]] as f64 * x[[i, ci, iy as usize, ix as usize]] as f64;
                    }
                }
            }
            *v = acc;
        }
        y
    }

    /// Standard normal values (Box–Muller).
    fn normal(
        rng: &mut ChaCha8Rng,
        shape: (usize, usize, usize, usize),
        scale: f32,
    ) -> Array4<f32> {
        Array4::from_shape_simple_fn(shape, || {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * scale
        })
    }

    /// He (kaiming-normal) weights: `N(0, 2/fan_in)`.
    fn he(rng: &mut ChaCha8Rng, co: usize, ci: usize) -> Array4<f32> {
        normal(rng, (co, ci, 3, 3), (2.0 / (9 * ci) as f32).sqrt())
    }

    /// Largest error relative to the largest reference value.
    fn relative_error(got: &Array4<f32>, want: &Array4<f64>) -> f64 {
        assert_eq!(got.shape(), want.shape());
        let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
        err / scale
    }

    /// Bound on the error relative to the output's largest value. Measured: 1.4e-6 to 5.9e-6 on
    /// the real-scale layers, up to 3.9e-6 on the edge cases and 3.3e-6 for `∂x`; the same layers
    /// with Lavin's points 0, ±1, ±2 measured up to 1.4e-5, with im2col + GEMM about 5e-7.
    const BOUND: f64 = 8e-6;

    #[test]
    fn real_scale_layers_match_a_direct_convolution_in_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (n, ci, co, side, relu_input) in [
            (2, 64, 64, 16, false),
            (2, 64, 64, 16, true),
            (1, 128, 128, 12, true),
            (1, 256, 256, 8, false),
            (1, 512, 512, 8, true),
            (2, 512, 64, 6, false),
        ] {
            let mut x = normal(&mut rng, (n, ci, side, side), 1.0);
            if relu_input {
                x.mapv_inplace(|v| v.max(0.0));
            }
            let w = he(&mut rng, co, ci);
            let bias: Vec<f32> = (0..co).map(|_| rng.random_range(-0.1..0.1)).collect();
            let u = WinogradWeights::new(w.view());
            let y = conv3x3(x.view(), &u, &Epilogue::bias(Some(bias.clone())), 1);
            let err = relative_error(&y, &direct(&x, &w, Some(&bias), 1));
            assert!(
                err <= BOUND,
                "{ci}->{co} {side}x{side} relu input {relu_input}: relative error {err:e}"
            );
        }
    }

    #[test]
    fn odd_sizes_paddings_and_edges_match() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (n, ci, co, h, w, p) in [
            (1, 3, 5, 1, 1, 1),
            (2, 4, 3, 3, 3, 0),
            (1, 5, 2, 1, 7, 1),
            (3, 7, 9, 5, 6, 1),
            (2, 8, 16, 9, 13, 0),
            (1, 6, 4, 10, 3, 2),
            (2, 16, 8, 17, 5, 1),
            (1, 2, 3, 4, 4, 3),
            (5, 20, 24, 7, 7, 1),
            (4, 512, 512, 2, 2, 1),
            (9, 256, 128, 1, 3, 1),
        ] {
            let x = normal(&mut rng, (n, ci, h, w), 1.0);
            let wt = he(&mut rng, co, ci);
            let bias: Vec<f32> = (0..co).map(|_| rng.random_range(-1.0..1.0)).collect();
            let u = WinogradWeights::new(wt.view());
            let want = direct(&x, &wt, Some(&bias), p);
            let y = conv3x3(x.view(), &u, &Epilogue::bias(Some(bias.clone())), p);
            let err = relative_error(&y, &want);
            assert!(err <= BOUND, "{n}x{ci}x{h}x{w} -> {co}, p {p}: {err:e}");
            // A folded BatchNorm (scale and shift per channel) and a ReLU in the same pass.
            let scale: Vec<f32> = (0..co).map(|_| rng.random_range(-2.0..2.0)).collect();
            let shift: Vec<f32> = (0..co).map(|_| rng.random_range(-1.0..1.0)).collect();
            let epilogue = Epilogue::bias(Some(bias.clone())).then_affine(&scale, &shift, true);
            let y = conv3x3(x.view(), &u, &epilogue, p);
            let mut folded = want.clone();
            for ((_, o, _, _), v) in folded.indexed_iter_mut() {
                *v = (scale[o] as f64 * *v + shift[o] as f64).max(0.0);
            }
            let err = relative_error(&y, &folded);
            assert!(
                err <= BOUND,
                "{n}x{ci}x{h}x{w} -> {co}, p {p}, BatchNorm + ReLU: {err:e}"
            );
        }
    }

    #[test]
    fn strided_input_views_are_read_correctly() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = normal(&mut rng, (4, 6, 9, 8), 1.0);
        let wt = he(&mut rng, 5, 6);
        let u = WinogradWeights::new(wt.view());
        let view = x.slice(s![..;2, .., .., ..;-1]);
        let y = conv3x3(view, &u, &Epilogue::default(), 1);
        let err = relative_error(&y, &direct(&view.to_owned(), &wt, None, 1));
        assert!(err <= BOUND, "{err:e}");
    }

    #[test]
    fn input_gradient_is_the_flipped_transposed_convolution() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (n, ci, co, side, p) in [(2, 64, 128, 10, 1), (1, 32, 16, 9, 0), (2, 16, 24, 7, 2)] {
            let wt = he(&mut rng, co, ci);
            let out = side + 2 * p - 2;
            let gy = normal(&mut rng, (n, co, out, out), 1.0);
            // ∂x[n, c, iy, ix] = Σ_{o, ki, kj} g[n, o, iy + p − ki, ix + p − kj]·W[o, c, ki, kj].
            let mut want = Array4::<f64>::zeros((n, ci, side, side));
            for ((i, c, iy, ix), v) in want.indexed_iter_mut() {
                for o in 0..co {
                    for ki in 0..3 {
                        for kj in 0..3 {
                            let (oy, ox) = (
                                (iy + p) as isize - ki as isize,
                                (ix + p) as isize - kj as isize,
                            );
                            if oy < 0 || ox < 0 || oy as usize >= out || ox as usize >= out {
                                continue;
                            }
                            *v += gy[[i, o, oy as usize, ox as usize]] as f64
                                * wt[[o, c, ki, kj]] as f64;
                        }
                    }
                }
            }
            let u = WinogradWeights::for_input_grad(wt.view());
            assert_eq!((u.out_channels(), u.in_channels()), (ci, co));
            let dx = conv3x3(gy.view(), &u, &Epilogue::default(), 2 - p);
            let err = relative_error(&dx, &want);
            assert!(err <= BOUND, "{ci}<-{co} {side}x{side}, p {p}: {err:e}");
        }
    }

    #[test]
    fn weight_gradient_matches_a_direct_sum_in_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        // (n, c_in, c_out, side, padding): one block (layer4-like), several blocks spanning
        // images, edge tiles cut by the output, paddings 0 and 2.
        for (n, ci, co, side, p) in [
            (4, 64, 48, 7, 1),
            (9, 8, 12, 13, 1),
            (2, 5, 3, 9, 0),
            (3, 6, 4, 6, 2),
            (1, 3, 2, 3, 1),
        ] {
            let x = normal(&mut rng, (n, ci, side, side), 1.0);
            let out = side + 2 * p - 2;
            let gy = normal(&mut rng, (n, co, out, out), 1.0);
            // ∂W[o, c, ki, kj] = Σ_{n, oy, ox} g[n, o, oy, ox]·x[n, c, oy + ki − p, ox + kj − p].
            let mut want = Array4::<f64>::zeros((co, ci, 3, 3));
            for ((o, c, ki, kj), v) in want.indexed_iter_mut() {
                for i in 0..n {
                    for oy in 0..out {
                        for ox in 0..out {
                            let (iy, ix) = (
                                (oy + ki) as isize - p as isize,
                                (ox + kj) as isize - p as isize,
                            );
                            if iy < 0 || ix < 0 || iy as usize >= side || ix as usize >= side {
                                continue;
                            }
                            *v += gy[[i, o, oy, ox]] as f64
                                * x[[i, c, iy as usize, ix as usize]] as f64;
                        }
                    }
                }
            }
            let dw = conv3x3_weight_grad(x.view(), gy.view(), p);
            let err = relative_error(&dw, &want);
            assert!(err <= BOUND, "{n}x{ci}->{co} {side}x{side}, p {p}: {err:e}");
        }
    }

    #[test]
    fn many_blocks_cover_every_tile_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // 9 images of 30×30 with 4 channels: hundreds of tiles, so blocks span image boundaries.
        let x = normal(&mut rng, (9, 4, 30, 30), 1.0);
        let wt = he(&mut rng, 3, 4);
        let u = WinogradWeights::new(wt.view());
        let y = conv3x3(x.view(), &u, &Epilogue::default(), 1);
        let err = relative_error(&y, &direct(&x, &wt, None, 1));
        assert!(err <= BOUND, "{err:e}");
    }
}
