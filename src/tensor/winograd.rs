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
//! its own scratch buffers. When the batch has few tiles (under 128 per thread), the blocks instead
//! transform into one `[36, C, T]` for the whole batch, and the 36 products run in parallel over
//! the positions with all the tiles as their width. Within a block, tile `t` is the
//! `t`-th tile in (image, tile row, tile column) order, column `t` of every `V[ξ]` and `M[ξ]`, and
//! the transforms run across the block's tiles with unit stride:
//! - input, per channel: `Bᵀ` down the 6 input rows of each tile row, for all its columns at once;
//!   each tile's 6-column window of that is gathered to column `t`; then `B` across, for all the
//!   tiles of the block at once;
//! - output, per channel: `Aᵀ` down and `A` across, for all the tiles of the block at once; then
//!   the 4×4 tiles are interleaved into the output rows through the [`Epilogue`] (bias, a folded
//!   BatchNorm, an optional ReLU).
//!
//! When the batch's few tiles come from eight images or more (ResNet-18's layer4: 7×7 maps, four
//! tiles per image), the batch's tiles are ordered tile by tile with the images innermost, and the
//! transforms run per channel with the images as the lanes: each channel's maps are interleaved
//! image by image, so every value of a tile's window is one contiguous run over the images, and
//! nothing is gathered value by value. In this order the last tile row and column of a side that
//! is not a multiple of four compute only the outputs inside it, by F(m×m, 3×3) on `m + 2` of the
//! six points with the same `U` (the private `Span` trait), and each position's products take
//! only the tiles that use it (the private `Slots`): at 7×7, 121 tile-position pairs where whole
//! tiles need 144.
//!
//! Backward ([`conv3x3_backward`]) runs the transposes of these steps: the output gradient's tiles
//! `M̄ = A·Ȳ·Aᵀ`, then `∂x` from `V̄[ξ] = U[ξ]ᵀ·M̄[ξ]` with the forward pass's `U` (`B·V̄·Bᵀ` per
//! tile, summed where the 6×6 input patches overlap) and `∂W = Gᵀ·(M̄[ξ]·V[ξ]ᵀ)·G`.

use std::ops::Range;

use ndarray::{
    s, Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut2, ArrayViewMut3,
    ArrayViewMut4, Axis,
};
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

/// Pairs of channels a job of the kernel transform transforms before copying them out (a
/// multiple of [`LANES`]).
const STAGED_PAIRS: usize = 256;

/// Tiles per block, at least and at most: enough for the 36 products to run near peak, few
/// enough that a block's `V` and `M` stay in the last-level cache next to `U` (measured on
/// VGG16 and ResNet-18 shapes: 64 to 128 tiles are within noise of each other at 64 to 256
/// channels, and best at 512).
const MIN_BLOCK_TILES: usize = 64;
const MAX_BLOCK_TILES: usize = 128;
/// Fewest images for a side-by-side batch's transforms to run with the images as the vector lanes
/// ([`by_images`]).
const MIN_LANE_IMAGES: usize = 8;

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

/// `$body` with `$s` the [`Span`] type of the cover `$cover`.
macro_rules! with_span {
    ($cover:expr, $s:ident => $body:expr) => {
        match $cover {
            Cover::Four => {
                type $s = Four;
                $body
            }
            Cover::Three => {
                type $s = Three;
                $body
            }
            Cover::Two => {
                type $s = Two;
                $body
            }
            Cover::One => {
                type $s = One;
                $body
            }
        }
    };
}

/// How many of a tile's four outputs along one axis lie inside the output. In [`by_images`]
/// order the last tile row and column of a side that is not a multiple of four compute only what
/// is inside: `F(m, 3)` for the `m` left, on `m + 2` of the six points, the rest dropped (see
/// [`Slots`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    Four,
    Three,
    Two,
    One,
}

impl Cover {
    /// The cover of the last tile along an output side of `side` values.
    fn last(side: usize) -> Cover {
        match side % M_TILE {
            0 => Cover::Four,
            3 => Cover::Three,
            2 => Cover::Two,
            _ => Cover::One,
        }
    }

    /// The outputs it covers.
    fn outputs(self) -> usize {
        with_span!(self, S => S::OUTPUTS)
    }

    /// Whether a tile of this cover uses point (transformed position) `i` of the six.
    fn keeps(self, i: usize) -> bool {
        with_span!(self, S => S::KEEPS[i])
    }
}

/// The 1-D transforms of a tile that covers `m` outputs along an axis, `F(m, 3)` on `m + 2` of
/// the six points `0, 1, −1, 1/2, −2, ∞` (the first `m + 1` finite ones, then `∞`), in the
/// six-point frame: the same `G` (so one `U` serves every tile), and for `m` < 4 `Bᵀ` and `Aᵀ`
/// derived for that `G` (`scripts/winograd_covers.py` derives and checks them):
///
/// ```text
/// m = 3, points 0, 1, −1, 1/2, ∞      m = 2, points 0, 1, −1, ∞     m = 1, points 0, 1, ∞
///      ⎡ 1  −2   −1    2   0 ⎤             ⎡ 1   0   −1   0 ⎤             ⎡ 1 −1  0 ⎤
///      ⎢ 0 −3/2  3/2   3   0 ⎥        Bᵀ = ⎢ 0  3/2  3/2  0 ⎥        Bᵀ = ⎢ 0  3  0 ⎥
/// Bᵀ = ⎢ 0  1/2 −3/2   1   0 ⎥             ⎢ 0  3/2 −3/2  0 ⎥             ⎣ 0 −1  1 ⎦
///      ⎢ 0 −5/2   0   5/2  0 ⎥             ⎣ 0  −1   0    1 ⎦
///      ⎣ 0  1/2  −1  −1/2  1 ⎦        Aᵀ = ⎡ 1  1   1  0 ⎤              Aᵀ = [ 1  1  1 ]
///      ⎡ 1  1   1   1    0 ⎤               ⎣ 0  1  −1  1 ⎦
/// Aᵀ = ⎢ 0  1  −1  1/2   0 ⎥
///      ⎣ 0  1   1  1/4   1 ⎦
/// ```
///
/// Each function maps values at the six points to or from a tile's six window values or four
/// outputs: it never reads a point the cover does not use (those values may be anything), nor a
/// window value past its `m + 2` or an output past its `m`, and writes zero there.
trait Span {
    /// The outputs covered, `m`.
    const OUTPUTS: usize;
    /// The points used.
    const KEEPS: [bool; ALPHA];
    /// `Bᵀ·d`.
    fn bt(d: [f32; ALPHA]) -> [f32; ALPHA];
    /// `Aᵀ·m`.
    fn at(m: [f32; ALPHA]) -> [f32; M_TILE];
    /// `A·y`, the adjoint of [`Span::at`].
    fn a(y: [f32; M_TILE]) -> [f32; ALPHA];
    /// `B·v`, the adjoint of [`Span::bt`].
    fn b(v: [f32; ALPHA]) -> [f32; ALPHA];
}

/// All four outputs: `F(4, 3)` on the six points.
struct Four;
/// Three outputs.
struct Three;
/// Two outputs.
struct Two;
/// One output.
struct One;

impl Span for Four {
    const OUTPUTS: usize = 4;
    const KEEPS: [bool; ALPHA] = [true; ALPHA];
    #[inline(always)]
    fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
        bt6(d)
    }
    #[inline(always)]
    fn at(m: [f32; ALPHA]) -> [f32; M_TILE] {
        at6(m)
    }
    #[inline(always)]
    fn a(y: [f32; M_TILE]) -> [f32; ALPHA] {
        a4(y)
    }
    #[inline(always)]
    fn b(v: [f32; ALPHA]) -> [f32; ALPHA] {
        b6(v)
    }
}

impl Span for Three {
    const OUTPUTS: usize = 3;
    const KEEPS: [bool; ALPHA] = [true, true, true, true, false, true];
    #[inline(always)]
    fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
        let e = d[3] - d[1];
        [
            (d[0] - d[2]) + 2.0 * e,
            1.5 * (d[2] - d[1]) + 3.0 * d[3],
            (d[3] - d[2]) + 0.5 * (d[1] - d[2]),
            2.5 * e,
            0.0,
            (d[4] - d[2]) - 0.5 * e,
        ]
    }
    #[inline(always)]
    fn at(m: [f32; ALPHA]) -> [f32; M_TILE] {
        let p = m[1] + m[2];
        [
            m[0] + p + m[3],
            (m[1] - m[2]) + 0.5 * m[3],
            p + 0.25 * m[3] + m[5],
            0.0,
        ]
    }
    #[inline(always)]
    fn a(y: [f32; M_TILE]) -> [f32; ALPHA] {
        let e = y[0] + y[2];
        [
            y[0],
            e + y[1],
            e - y[1],
            y[0] + 0.5 * y[1] + 0.25 * y[2],
            0.0,
            y[2],
        ]
    }
    #[inline(always)]
    fn b(v: [f32; ALPHA]) -> [f32; ALPHA] {
        [
            v[0],
            0.5 * (v[2] + v[5]) - 2.0 * v[0] - 1.5 * v[1] - 2.5 * v[3],
            1.5 * (v[1] - v[2]) - v[0] - v[5],
            2.0 * v[0] + 3.0 * v[1] + v[2] + 2.5 * v[3] - 0.5 * v[5],
            v[5],
            0.0,
        ]
    }
}

impl Span for Two {
    const OUTPUTS: usize = 2;
    const KEEPS: [bool; ALPHA] = [true, true, true, false, false, true];
    #[inline(always)]
    fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
        [
            d[0] - d[2],
            1.5 * (d[1] + d[2]),
            1.5 * (d[1] - d[2]),
            0.0,
            0.0,
            d[3] - d[1],
        ]
    }
    #[inline(always)]
    fn at(m: [f32; ALPHA]) -> [f32; M_TILE] {
        [m[0] + m[1] + m[2], (m[1] - m[2]) + m[5], 0.0, 0.0]
    }
    #[inline(always)]
    fn a(y: [f32; M_TILE]) -> [f32; ALPHA] {
        [y[0], y[0] + y[1], y[0] - y[1], 0.0, 0.0, y[1]]
    }
    #[inline(always)]
    fn b(v: [f32; ALPHA]) -> [f32; ALPHA] {
        [
            v[0],
            1.5 * (v[1] + v[2]) - v[5],
            1.5 * (v[1] - v[2]) - v[0],
            v[5],
            0.0,
            0.0,
        ]
    }
}

impl Span for One {
    const OUTPUTS: usize = 1;
    const KEEPS: [bool; ALPHA] = [true, true, false, false, false, true];
    #[inline(always)]
    fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
        [d[0] - d[1], 3.0 * d[1], 0.0, 0.0, 0.0, d[2] - d[1]]
    }
    #[inline(always)]
    fn at(m: [f32; ALPHA]) -> [f32; M_TILE] {
        [m[0] + m[1] + m[5], 0.0, 0.0, 0.0]
    }
    #[inline(always)]
    fn a(y: [f32; M_TILE]) -> [f32; ALPHA] {
        [y[0], y[0], 0.0, 0.0, 0.0, y[0]]
    }
    #[inline(always)]
    fn b(v: [f32; ALPHA]) -> [f32; ALPHA] {
        [v[0], 3.0 * v[1] - v[0] - v[5], v[5], 0.0, 0.0, 0.0]
    }
}

/// Where a batch's tiles sit in [`by_images`] order, and which of them each position's products
/// take. A side that is not a multiple of four ends in a tile row (column) of a smaller
/// [`Cover`], whose tiles skip the points it does not use; the tiles are ordered in four groups
/// — full rows in the last column, then full rows and columns, then the last row in full
/// columns, then the corner — each tile's `N` images side by side, so that the tiles using any
/// one position are one run of columns: every tile at a point both last covers keep, the full
/// rows at a row point the last row skips (groups 1–2), the full columns at a column point the
/// last column skips (groups 2–3), the full tiles at both (group 2). At ResNet-18's layer4 (7×7,
/// 2×2 tiles of which the last row and column cover three), the 36 products then have 64, 32 or
/// 16 columns instead of 64 each: 121 of 144 tile-position pairs.
#[derive(Clone, Copy, Debug)]
struct Slots {
    n: usize,
    tiles: (usize, usize),
    /// Tile rows and columns that cover four outputs.
    full: (usize, usize),
    /// The cover of the last tile row and column.
    last: (Cover, Cover),
}

impl Slots {
    /// The slots of `n` images whose output is `oh`×`ow`.
    fn new(n: usize, (oh, ow): (usize, usize)) -> Slots {
        Slots {
            n,
            tiles: (oh.div_ceil(M_TILE), ow.div_ceil(M_TILE)),
            full: (oh / M_TILE, ow / M_TILE),
            last: (Cover::last(oh), Cover::last(ow)),
        }
    }

    /// The covers of tile `(ty, tx)` along its rows and columns.
    fn covers(&self, ty: usize, tx: usize) -> (Cover, Cover) {
        let row = if ty < self.full.0 {
            Cover::Four
        } else {
            self.last.0
        };
        let col = if tx < self.full.1 {
            Cover::Four
        } else {
            self.last.1
        };
        (row, col)
    }

    /// The four groups' sizes in tiles: full rows in the last column, full rows and columns,
    /// the last row in full columns, the corner.
    fn groups(&self) -> [usize; 4] {
        let (fy, fx) = self.full;
        let (ry, rx) = (self.tiles.0 - fy, self.tiles.1 - fx);
        [fy * rx, fy * fx, ry * fx, ry * rx]
    }

    /// The first column of tile `(ty, tx)`'s `N` images.
    fn column(&self, ty: usize, tx: usize) -> usize {
        let [g0, g1, g2, _] = self.groups();
        let (fy, fx) = self.full;
        let slot = match (ty < fy, tx < fx) {
            (true, false) => ty,
            (true, true) => g0 + ty * fx + tx,
            (false, true) => g0 + g1 + tx,
            (false, false) => g0 + g1 + g2,
        };
        slot * self.n
    }

    /// Every tile `(ty, tx)` in C order, with its first column ([`Slots::column`]) and its covers
    /// ([`Slots::covers`]).
    fn placed(&self) -> impl Iterator<Item = ((usize, usize), usize, (Cover, Cover))> {
        let slots = *self;
        ndarray::indices(self.tiles)
            .into_iter()
            .map(move |(ty, tx)| ((ty, tx), slots.column(ty, tx), slots.covers(ty, tx)))
    }

    /// The columns whose tiles use position `ξ` (every column when the sides are multiples of
    /// four).
    fn columns(&self, xi: usize) -> Range<usize> {
        let [g0, g1, g2, g3] = self.groups();
        let (a, b) = (xi / ALPHA, xi % ALPHA);
        let tiles = match (self.last.0.keeps(a), self.last.1.keeps(b)) {
            (true, true) => 0..g0 + g1 + g2 + g3,
            (false, true) => 0..g0 + g1,
            (true, false) => g0..g0 + g1 + g2,
            (false, false) => g0..g0 + g1,
        };
        tiles.start * self.n..tiles.end * self.n
    }
}

/// `dst = src` with stores that bypass the cache where the target has them (x86-64's
/// non-temporal stores): for arrays written once and read much later, larger than the cache, it
/// saves reading every destination line first. Call [`fence_streaming`] before the values are
/// read on another thread.
#[inline]
fn copy_streaming(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        // Up to the first 16-byte boundary, then four values per store, then the rest.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let (dst_head, dst_body) = dst.split_at_mut(head);
        dst_head.copy_from_slice(&src[..head]);
        let (src_body, mut dst_body) = (&src[head..], dst_body);
        let whole = dst_body.len() / 4 * 4;
        for (d, s) in dst_body[..whole]
            .chunks_exact_mut(4)
            .zip(src_body.chunks_exact(4))
        {
            // SAFETY: `d` holds four f32 at a 16-byte aligned address (aligned above, moved in
            // steps of 16 bytes) and `s` four readable f32; SSE is part of x86-64.
            unsafe { _mm_stream_ps(d.as_mut_ptr(), _mm_loadu_ps(s.as_ptr())) };
        }
        dst_body = &mut dst_body[whole..];
        dst_body.copy_from_slice(&src_body[whole..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders the [`copy_streaming`] stores of this thread before its later stores.
#[inline]
fn fence_streaming() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no preconditions; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
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

/// [`g3`] of [`LANES`] 3-vectors at once, lane by lane: `v[i][l]` is value `i` of vector `l`.
#[inline(always)]
fn g3_lanes(v: [&[f32; LANES]; 3]) -> [[f32; LANES]; ALPHA] {
    let mut out = [[0.0f32; LANES]; ALPHA];
    for l in 0..LANES {
        for (o, r) in out.iter_mut().zip(g3([v[0][l], v[1][l], v[2][l]])) {
            o[l] = r;
        }
    }
    out
}

/// `G·g·Gᵀ` of [`LANES`] kernels at once: `g[3·i + j][l]` is value `(i, j)` of kernel `l`, the
/// result `[ξ][l]`. Every step runs across the lanes, so it vectorises.
#[inline(always)]
fn kernel_transform(g: &[[f32; LANES]; 9]) -> [[f32; LANES]; POSITIONS] {
    // G down each of the three columns: cols[j][a].
    let cols: [[[f32; LANES]; ALPHA]; 3] =
        std::array::from_fn(|j| g3_lanes([&g[j], &g[3 + j], &g[6 + j]]));
    let mut u = [[0.0f32; LANES]; POSITIONS];
    for a in 0..ALPHA {
        // G across row a.
        let row = g3_lanes([&cols[0][a], &cols[1][a], &cols[2][a]]);
        u[a * ALPHA..(a + 1) * ALPHA].copy_from_slice(&row);
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
                // Transformed into a small buffer first, then copied row by row: one write
                // stream at a time instead of 36 interleaved ones.
                let mut staged = vec![[0.0f32; STAGED_PAIRS]; POSITIONS];
                for piece in (0..n).step_by(STAGED_PAIRS) {
                    let len = STAGED_PAIRS.min(n - piece);
                    for start in (0..len).step_by(LANES) {
                        let lanes = LANES.min(len - start);
                        let mut lg = [[0.0f32; LANES]; 9];
                        for l in 0..lanes {
                            for (lane, v) in lg.iter_mut().zip(kernel(first + piece + start + l)) {
                                lane[l] = v;
                            }
                        }
                        for (row, v) in staged.iter_mut().zip(&kernel_transform(&lg)) {
                            row[start..start + LANES].copy_from_slice(v);
                        }
                    }
                    for (row, v) in rows.iter_mut().zip(&staged) {
                        copy_streaming(&mut row[piece..piece + len], &v[..len]);
                    }
                }
                fence_streaming();
            });
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

    /// Tile rows per image.
    fn tiles_y(&self) -> usize {
        (self.height + 2 * self.padding - 2).div_ceil(M_TILE)
    }

    /// `V` `[36, C_in, T]` of `n` images `x` (standard layout) in [`by_images`] order.
    fn input_tiles_by_images(&self, x: &[f32], n: usize, v: TilesMut<'_>) {
        let size = (n, self.height, self.width);
        tiles_by_images::<ALPHA, InputPoints>(x, size, self.padding, &self.slots(n), v);
    }

    /// Where `n` images' tiles sit in [`by_images`] order.
    fn slots(&self, n: usize) -> Slots {
        let out_height = self.height + 2 * self.padding - 2;
        Slots::new(n, (out_height, self.out_width))
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

/// A batch of tile rows transformed together.
struct Block<'a> {
    pieces: Vec<Piece<'a>>,
    tiles: usize,
}

/// The small per-thread buffers of the transforms, sized for the largest block (`T_b` tiles).
struct Work {
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
    /// The six input rows of one tile row, summed from `∂x`'s windows: `[6, W]`.
    sums: Vec<f32>,
}

impl Work {
    fn new(plan: &Plan, tiles: usize) -> Self {
        Work {
            zeros: vec![0.0; plan.width],
            cols: vec![0.0; ALPHA * plan.row_len],
            windows: vec![0.0; POSITIONS * tiles],
            half: vec![0.0; M_TILE * ALPHA * tiles],
            out: vec![0.0; M_TILE * M_TILE * tiles],
            sums: vec![0.0; ALPHA * plan.width],
        }
    }
}

/// Per-thread buffers of a block that is transformed and multiplied on one thread: its `V`
/// `[36, C_in, T_b]` and `M` `[36, C_out, T_b]` (pool memory, written in full before it is read).
struct Scratch {
    v: recycle::Scratch,
    m: recycle::Scratch,
    work: Work,
}

impl Scratch {
    /// Buffers for blocks of up to `tiles` tiles.
    fn new(plan: &Plan, tiles: usize) -> Self {
        Scratch {
            v: recycle::Scratch::default(),
            m: recycle::Scratch::default(),
            work: Work::new(plan, tiles),
        }
    }
}

/// Winograd-domain tiles: the 36 matrices `[C, T]` of positions `ξ` as `[36, C, T]`, tile `t` in
/// column `t`, each row contiguous. A block's tiles are either a buffer of its own or a window
/// of columns of the whole batch's.
type TilesMut<'a> = ArrayViewMut3<'a, f32>;
type Tiles<'a> = ArrayView3<'a, f32>;

/// The 36 rows of one channel's plane `[36, T]` of a [`TilesMut`] (`index_axis_mut(Axis(1), c)`),
/// in six groups of six: `[a][b]` is `ξ = 6·a + b`.
#[inline(always)]
fn channel_rows_mut<'a>(plane: &'a mut ArrayViewMut2<'_, f32>) -> [[&'a mut [f32]; ALPHA]; ALPHA] {
    let mut rows = plane
        .outer_iter_mut()
        .map(|r| r.into_slice().expect("contiguous tile row"));
    std::array::from_fn(|_| std::array::from_fn(|_| rows.next().expect("36 rows")))
}

/// The 36 rows `(ξ, c)` of `tiles` for channel `c`: `[ξ]`.
#[inline(always)]
fn channel_rows<'a>(tiles: Tiles<'a>, c: usize) -> [&'a [f32]; POSITIONS] {
    let plane = tiles.index_axis_move(Axis(1), c);
    std::array::from_fn(|xi| {
        plane
            .index_axis_move(Axis(0), xi)
            .to_slice()
            .expect("contiguous tile row")
    })
}

/// Lanes of one vector step of [`lanes`]: an AVX-512 register of `f32`.
const VECTOR: usize = 16;

/// `out[·][k] = f(inp[·][k])` for `k < n`: one 1-D transform per lane, the lanes contiguous.
/// [`VECTOR`] lanes at a time go through local arrays, so the compiler vectorises the step
/// without proving that a dozen slices do not overlap (it gives up on that and runs scalar code);
/// what is left goes 8 and then 4 lanes at a time the same way (eight or twelve images as the
/// lanes would otherwise run entirely scalar), and the last few one by one.
#[inline(always)]
fn lanes<const I: usize, const O: usize>(
    n: usize,
    inp: [&[f32]; I],
    out: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let inp = inp.map(|s| &s[..n]);
    let mut out = out.map(|s| &mut s[..n]);
    let k0 = lanes_by::<VECTOR, I, O>(0, n, &inp, &mut out, &f);
    let k0 = lanes_by::<8, I, O>(k0, n, &inp, &mut out, &f);
    let k0 = lanes_by::<4, I, O>(k0, n, &inp, &mut out, &f);
    lanes_by::<1, I, O>(k0, n, &inp, &mut out, &f);
}

/// [`lanes`] over `W` lanes at a time from lane `k0` while `W` remain; returns the first lane
/// left.
#[inline(always)]
fn lanes_by<const W: usize, const I: usize, const O: usize>(
    mut k0: usize,
    n: usize,
    inp: &[&[f32]; I],
    out: &mut [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) -> usize {
    while k0 + W <= n {
        let x: [[f32; W]; I] =
            std::array::from_fn(|i| inp[i][k0..k0 + W].try_into().expect("W lanes"));
        let mut y = [[0.0f32; W]; O];
        for l in 0..W {
            let v = f(std::array::from_fn(|i| x[i][l]));
            for (y, v) in y.iter_mut().zip(v) {
                y[l] = v;
            }
        }
        for (o, y) in out.iter_mut().zip(&y) {
            o[k0..k0 + W].copy_from_slice(y);
        }
        k0 += W;
    }
    k0
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

/// The Winograd-domain tiles `V` `[36, C_in, T_b]` of one block's tile rows `pieces`.
fn input_transform(plan: &Plan, x: &[f32], pieces: &[TileRows], w: &mut Work, mut v: TilesMut<'_>) {
    let Plan {
        c_in,
        height,
        width,
        padding,
        tiles_x: tx,
        row_len,
        ..
    } = *plan;
    let tb = v.dim().2;
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
                        _ => &w.zeros[..],
                    });
                let cols = chunks_mut::<ALPHA>(&mut w.cols, 0, row_len).map(|col| {
                    col[..padding].fill(0.0);
                    col[padding + width..].fill(0.0);
                    &mut col[padding..padding + width]
                });
                lanes(width, rows, cols, bt6);
                // The 6-column window of each tile, column by column, at the tile's place: value
                // b of tile t's window is the column's value 4·t + b, so windows 0–3 deinterleave
                // the column by four and windows 4 and 5 are 0 and 1 one tile on.
                for (a, col) in w.cols.chunks_exact(row_len).enumerate() {
                    let [w0, w1, w2, w3, w4, w5] =
                        chunks_mut::<ALPHA>(&mut w.windows, a * ALPHA, tb)
                            .map(|win| &mut win[t0..t0 + tx]);
                    for (t, q) in col[..M_TILE * tx].chunks_exact(M_TILE).enumerate() {
                        (w0[t], w1[t], w2[t], w3[t]) = (q[0], q[1], q[2], q[3]);
                    }
                    w4[..tx - 1].copy_from_slice(&w0[1..]);
                    w5[..tx - 1].copy_from_slice(&w1[1..]);
                    (w4[tx - 1], w5[tx - 1]) = (col[M_TILE * tx], col[M_TILE * tx + 1]);
                }
            }
            first += tiles.len() * tx;
        }
        // B across, for every tile of the block at once: V[6·a + b][c][t].
        let mut plane = v.index_axis_mut(Axis(1), c);
        for (a, v) in channel_rows_mut(&mut plane).into_iter().enumerate() {
            lanes(tb, chunks::<ALPHA>(&w.windows, a * ALPHA, tb), v, bt6);
        }
    }
}

/// `Aᵀ·M·A` for one block's tiles `m` `[36, C_out, T_b]`, through the epilogue, into the block's
/// output rows.
fn output_transform(
    plan: &Plan,
    block: &mut Block<'_>,
    m: Tiles<'_>,
    epilogue: &Epilogue,
    w: &mut Work,
) {
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
        let m = channel_rows(m, o);
        // Aᵀ down each of the six columns of the transformed tiles.
        for b in 0..ALPHA {
            let col: [&[f32]; ALPHA] = std::array::from_fn(|a| m[a * ALPHA + b]);
            let mut rows = w.half.chunks_exact_mut(ALPHA * tb);
            let half: [&mut [f32]; M_TILE] = std::array::from_fn(|_| {
                let h = rows.next().expect("four rows");
                &mut h[b * tb..(b + 1) * tb]
            });
            lanes(tb, col, half, at6);
        }
        // A across each of the four rows.
        for (half, out) in w
            .half
            .chunks_exact(ALPHA * tb)
            .zip(w.out.chunks_exact_mut(M_TILE * tb))
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
                for (r, out) in w.out.chunks_exact(M_TILE * tb).enumerate() {
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

/// `f(ξ, out[ξ])` for the 36 positions, each on one thread; in parallel over the positions when
/// `parallel` (for tiles of the whole batch), in turn otherwise (for one block's, on the block's
/// thread).
fn per_position(
    mut out: TilesMut<'_>,
    parallel: bool,
    f: impl Fn(usize, ArrayViewMut2<'_, f32>) + Sync,
) {
    if parallel {
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(xi, out)| f(xi, out));
    } else {
        for (xi, out) in out.axis_iter_mut(Axis(0)).enumerate() {
            f(xi, out);
        }
    }
}

/// The 36 products `out[ξ] = a[ξ]·b[ξ]` (`a` given per position), as [`per_position`]; with
/// `slots`, each over the columns whose tiles use `ξ` ([`Slots::columns`]; `out`'s other
/// columns are left as they were).
fn products<'a>(
    a: impl Fn(usize) -> ArrayView2<'a, f32> + Sync,
    b: Tiles<'_>,
    out: TilesMut<'_>,
    slots: Option<&Slots>,
    parallel: bool,
) {
    per_position(out, parallel, |xi, mut out| {
        let b = b.index_axis(Axis(0), xi);
        match slots.map(|s| s.columns(xi)) {
            Some(cols) => matmul(
                a(xi),
                b.slice(s![.., cols.clone()]),
                out.slice_mut(s![.., cols]),
                false,
                Threads::One,
            ),
            None => matmul(a(xi), b, out, false, Threads::One),
        }
    });
}

/// Whether `tiles` tiles over the whole batch are few enough to keep side by side (`[36, C, T]`
/// for the batch) and multiply once per position, in parallel over the positions, instead of
/// per block on each block's thread: the products then run with all the tiles as their width
/// and each `U[ξ]` is read once per call, not once per block. Below this many tiles, blocks
/// would hold fewer than [`MAX_BLOCK_TILES`] each. Measured on ResNet-18's layer4 (64 tiles at
/// batch 16, 2 threads): the 36 products of `[512, 512]·[512, T]` at T = 64 run at 91 GFLOP/s per
/// thread against 76 for two blocks of 32, and the transposed products of `∂x` at 81 against 52.
fn side_by_side(tiles: usize) -> bool {
    tiles < MAX_BLOCK_TILES * rayon::current_num_threads().max(1)
}

/// The batch's tiles `[36, C, T]` cut into the blocks' windows of columns.
fn windows<'a>(mut all: TilesMut<'a>, blocks: &[usize]) -> Vec<TilesMut<'a>> {
    let mut out = Vec::with_capacity(blocks.len());
    for &tiles in blocks {
        let (head, tail) = all.split_at(Axis(2), tiles);
        out.push(head);
        all = tail;
    }
    out
}

/// `[36, channels, tiles]` (values arbitrary, to be written in full) from a per-thread buffer.
fn as_tiles(buf: &mut recycle::Scratch, channels: usize, tiles: usize) -> TilesMut<'_> {
    TilesMut::from_shape(
        (POSITIONS, channels, tiles),
        buf.get(POSITIONS * channels * tiles),
    )
    .expect("tiles buffer")
}

/// A block's tile rows without its output rows.
fn tile_rows(block: &Block<'_>) -> Vec<TileRows> {
    block
        .pieces
        .iter()
        .map(|p| (p.image, p.tiles.clone()))
        .collect()
}

/// One block on its own thread: input transform, the 36 products, output transform.
fn run_block(
    plan: &Plan,
    x: &[f32],
    w: &WinogradWeights,
    epilogue: &Epilogue,
    mut block: Block<'_>,
    s: &mut Scratch,
) {
    let tb = block.tiles;
    let mut v = as_tiles(&mut s.v, plan.c_in, tb);
    let mut m = as_tiles(&mut s.m, plan.c_out, tb);
    input_transform(plan, x, &tile_rows(&block), &mut s.work, v.view_mut());
    products(|xi| w.position(xi), v.view(), m.view_mut(), None, false);
    output_transform(plan, &mut block, m.view(), epilogue, &mut s.work);
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

/// Whether the batch's tiles are few enough to keep side by side ([`side_by_side`]) and the images
/// many enough to be the transforms' vector lanes: tile `(ty, tx)` of image `i` then sits in
/// column `(ty·tiles_x + tx)·N + i`, and each channel's tiles are transformed window by window
/// with the `N` images side by side in one vector. On maps of a few tiles (ResNet-18's layer4: 7×7,
/// four tiles per image) lanes across the tiles of a block are mostly spent gathering windows
/// value by value; lanes across the images are one contiguous load per window position.
fn by_images(n: usize, tiles: usize) -> bool {
    n >= MIN_LANE_IMAGES && side_by_side(tiles)
}

/// The rows of one channel's plane for [`by_images`]: `planes[q·N + i]` is value `q` (in C order
/// over the `H×W` map) of image `i`, from `x` `[N, C, H, W]` (standard layout).
fn interleave_images(x: &[f32], (n, channels, c): (usize, usize, usize), planes: &mut [f32]) {
    let len = planes.len() / n;
    for i in 0..n {
        let plane = &x[(i * channels + c) * len..][..len];
        for (q, v) in plane.iter().enumerate() {
            planes[q * n + i] = *v;
        }
    }
}

/// The inverse of [`interleave_images`] through `f`: `images` `[N, H, W]` (one channel of every
/// image) from `planes[q·N + i]`.
fn scatter_images(planes: &[f32], mut images: ArrayViewMut3<'_, f32>, f: impl Fn(f32) -> f32) {
    let n = images.dim().0;
    for (i, mut image) in images.outer_iter_mut().enumerate() {
        let image = image.as_slice_mut().expect("contiguous plane");
        for (q, d) in image.iter_mut().enumerate() {
            *d = f(planes[q * n + i]);
        }
    }
}

/// `f(c, channel c's view, buffers)` for every channel (axis 1) of `a`, in parallel, each thread
/// with its own buffers of the lengths `lens`.
fn per_channel<D: ndarray::RemoveAxis, const K: usize>(
    mut a: ndarray::ArrayViewMut<'_, f32, D>,
    lens: [usize; K],
    f: impl Fn(usize, ndarray::ArrayViewMut<'_, f32, D::Smaller>, &mut [Vec<f32>; K]) + Sync + Send,
) {
    a.axis_iter_mut(Axis(1))
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || lens.map(|len| vec![0.0f32; len]),
            |buffers, (c, view)| f(c, view, buffers),
        );
}

/// A tile's transform into the six points along one axis, for a tile of any [`Span`]: the
/// input's `Bᵀ` (`K` = 6 window values) or the output gradient's `A` (`K` = 4).
trait ToPoints<const K: usize>: Copy + Sync + Send {
    fn apply<S: Span>(v: [f32; K]) -> [f32; ALPHA];
}

/// `V = Bᵀ·d·B`.
#[derive(Clone, Copy)]
struct InputPoints;

impl ToPoints<ALPHA> for InputPoints {
    #[inline(always)]
    fn apply<S: Span>(d: [f32; ALPHA]) -> [f32; ALPHA] {
        S::bt(d)
    }
}

/// `M̄ = A·Ȳ·Aᵀ`.
#[derive(Clone, Copy)]
struct GradientPoints;

impl ToPoints<M_TILE> for GradientPoints {
    #[inline(always)]
    fn apply<S: Span>(y: [f32; M_TILE]) -> [f32; ALPHA] {
        S::a(y)
    }
}

/// The Winograd-domain tiles `out` `[36, C, T]` of a batch in [`by_images`] order ([`Slots`])
/// from `src` `[N, C, H, W]` (standard layout): the `K`×`K` window of each tile, at
/// `(4·ty − p, 4·tx − p)` and zero outside the map, through `T` down its columns and then
/// across its rows (each axis by the tile's [`Cover`] along it), in parallel over the channels.
/// The input transform `V = Bᵀ·d·B` is `K` = 6 with [`InputPoints`], the output gradient's
/// `M̄ = A·Ȳ·Aᵀ` `K` = 4 with [`GradientPoints`] and no offset. Positions a tile does not use
/// are left as they were or zero.
fn tiles_by_images<const K: usize, T: ToPoints<K>>(
    src: &[f32],
    (n, h, w): (usize, usize, usize),
    p: usize,
    slots: &Slots,
    out: TilesMut<'_>,
) {
    let channels = out.dim().1;
    per_channel(
        out,
        [h * w * n, n, ALPHA * K * n],
        |c, mut rows, [planes, zeros, half]| {
            interleave_images(src, (n, channels, c), planes);
            let mut out = channel_rows_mut(&mut rows);
            for ((ty, tx), t0, (row_cover, col_cover)) in slots.placed() {
                // The window's value (i, j) of every image.
                let at = |i: usize, j: usize| -> &[f32] {
                    match (
                        (M_TILE * ty + i).checked_sub(p),
                        (M_TILE * tx + j).checked_sub(p),
                    ) {
                        (Some(r), Some(col)) if r < h && col < w => {
                            &planes[(r * w + col) * n..][..n]
                        }
                        _ => &zeros[..],
                    }
                };
                // Down each of the columns j the tile reads: half[6·j + a].
                for j in 0..K - M_TILE + col_cover.outputs() {
                    let down = std::array::from_fn(|i| at(i, j));
                    let dst = chunks_mut::<ALPHA>(half, ALPHA * j, n);
                    with_span!(row_cover, S => lanes(n, down, dst, T::apply::<S>));
                }
                // Across each of the rows a it uses: out[6·a + b].
                for (a, row) in out.iter_mut().enumerate() {
                    if !row_cover.keeps(a) {
                        continue;
                    }
                    let across = std::array::from_fn(|j| &half[(ALPHA * j + a) * n..][..n]);
                    let dst = row.each_mut().map(|r| &mut r[t0..t0 + n]);
                    with_span!(col_cover, S => lanes(n, across, dst, T::apply::<S>));
                }
            }
        },
    );
}

/// `Aᵀ·M·A` of the whole batch's tiles `m` `[36, C_out, T]` in [`by_images`] order ([`Slots`]),
/// each axis by the tile's [`Cover`] along it, through the epilogue, into `y`
/// `[N, C_out, OH, OW]`, in parallel over the channels.
fn output_transform_images(slots: &Slots, m: Tiles<'_>, epilogue: &Epilogue, y: &mut Array4<f32>) {
    let (n, _, oh, ow) = y.dim();
    per_channel(
        y.view_mut(),
        [oh * ow * n, ALPHA * M_TILE * n, M_TILE * n],
        |o, images, [planes, half, tile]| {
            let m = channel_rows(m, o);
            for ((ty, tx), t0, (row_cover, col_cover)) in slots.placed() {
                // Aᵀ down each of the columns b the tile uses: half[4·b + r].
                for b in (0..ALPHA).filter(|&b| col_cover.keeps(b)) {
                    let down = std::array::from_fn(|a| &m[ALPHA * a + b][t0..t0 + n]);
                    let dst = chunks_mut::<M_TILE>(half, M_TILE * b, n);
                    with_span!(row_cover, S => lanes(n, down, dst, S::at));
                }
                // A across each of the rows r it covers.
                for r in 0..row_cover.outputs() {
                    let across = std::array::from_fn(|b| &half[(M_TILE * b + r) * n..][..n]);
                    let dst = chunks_mut::<M_TILE>(tile, 0, n);
                    with_span!(col_cover, S => lanes(n, across, dst, S::at));
                    let row = M_TILE * ty + r;
                    for c in 0..col_cover.outputs() {
                        planes[(row * ow + M_TILE * tx + c) * n..][..n]
                            .copy_from_slice(&tile[c * n..][..n]);
                    }
                }
            }
            let k = epilogue.channel(o);
            scatter_images(planes, images, |v| epilogue.apply(k, v));
        },
    );
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
    conv3x3_keeping(x, w, epilogue, padding, false).0
}

/// The input's Winograd-domain tiles `V` `[36, C_in, T]` from a forward pass, for the same
/// call's [`conv3x3_backward`] to take its `∂W` from (one input transform less).
#[derive(Debug)]
pub struct InputTiles {
    v: Array3<f32>,
    /// `(N, C_in, H, W)` of the input.
    input: (usize, usize, usize, usize),
    padding: usize,
    /// Whether the tiles are in [`by_images`] order (else block by block).
    by_images: bool,
}

impl Drop for InputTiles {
    fn drop(&mut self) {
        recycle::give_array(std::mem::take(&mut self.v));
    }
}

/// [`conv3x3`], also giving back the input's tiles when `keep` and the batch's tiles are
/// transformed side by side (few tiles, as at ResNet-18's layer4); otherwise `None`.
pub fn conv3x3_keeping(
    x: ArrayView4<'_, f32>,
    w: &WinogradWeights,
    epilogue: &Epilogue,
    padding: usize,
    keep: bool,
) -> (Array4<f32>, Option<InputTiles>) {
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
        return (y, None);
    }
    let total = n * tiles_y * tiles_x;
    if by_images(n, total) {
        // V and M are written before they are read, at the positions each tile uses.
        let mut v: Array3<f32> = recycle::take_array((POSITIONS, c_in, total));
        let mut m: Array3<f32> = recycle::take_array((POSITIONS, w.c_out, total));
        let slots = plan.slots(n);
        plan.input_tiles_by_images(xs, n, v.view_mut());
        products(
            |xi| w.position(xi),
            v.view(),
            m.view_mut(),
            Some(&slots),
            true,
        );
        output_transform_images(&slots, m.view(), epilogue, &mut y);
        recycle::give_array(m);
        let tiles = InputTiles {
            v,
            input: (n, c_in, height, width),
            padding,
            by_images: true,
        };
        return (y, keep.then_some(tiles));
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
    if side_by_side(total) {
        // Transforms per block into the batch's V, the products per position, then the output
        // transforms per block from the batch's M.
        let sizes: Vec<usize> = blocks.iter().map(|b| b.tiles).collect();
        // V and M are written in full before they are read.
        let mut v: Array3<f32> = recycle::take_array((POSITIONS, c_in, total));
        let mut m: Array3<f32> = recycle::take_array((POSITIONS, w.c_out, total));
        blocks
            .par_iter()
            .zip(windows(v.view_mut(), &sizes))
            .for_each_init(
                || Work::new(&plan, max_tiles),
                |work, (block, v)| input_transform(&plan, xs, &tile_rows(block), work, v),
            );
        products(|xi| w.position(xi), v.view(), m.view_mut(), None, true);
        blocks
            .into_par_iter()
            .zip(windows(m.view_mut(), &sizes))
            .for_each_init(
                || Work::new(&plan, max_tiles),
                |work, (mut block, m)| {
                    output_transform(&plan, &mut block, m.view(), epilogue, work)
                },
            );
        recycle::give_array(m);
        let tiles = InputTiles {
            v,
            input: (n, c_in, height, width),
            padding,
            by_images: false,
        };
        (y, keep.then_some(tiles))
    } else {
        blocks.into_par_iter().for_each_init(
            || Scratch::new(&plan, max_tiles),
            |s, block| run_block(&plan, xs, w, epilogue, block, s),
        );
        (y, None)
    }
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
fn grad_transform(plan: &Plan, gy: &[f32], pieces: &[TileRows], w: &mut Work, mut m: TilesMut<'_>) {
    let Plan {
        c_out,
        out_width: ow,
        tiles_x: tx,
        ..
    } = *plan;
    let tb = m.dim().2;
    let oh = plan.height + 2 * plan.padding - 2;
    let plane_len = oh * ow;
    for o in 0..c_out {
        // The block's 4×4 gradient tiles: w.out[(4·r + c)·T_b + t].
        let mut first = 0;
        for (image, tiles) in pieces {
            let plane = &gy[(image * c_out + o) * plane_len..][..plane_len];
            for (local, ty) in tiles.clone().enumerate() {
                let t0 = first + local * tx;
                for r in 0..M_TILE {
                    let row = M_TILE * ty + r;
                    let line = (row < oh).then(|| &plane[row * ow..(row + 1) * ow]);
                    for c in 0..M_TILE {
                        let dst = &mut w.out[(M_TILE * r + c) * tb + t0..][..tx];
                        for (tile_x, d) in dst.iter_mut().enumerate() {
                            let col = M_TILE * tile_x + c;
                            *d = line.filter(|_| col < ow).map_or(0.0, |l| l[col]);
                        }
                    }
                }
            }
            first += tiles.len() * tx;
        }
        // A down each of the four columns: w.half[(4·a + c)·T_b + t], a < 6.
        for c in 0..M_TILE {
            let y: [&[f32]; M_TILE] =
                std::array::from_fn(|r| &w.out[(M_TILE * r + c) * tb..][..tb]);
            let mut rows = w.half.chunks_exact_mut(tb);
            let mut half: Vec<&mut [f32]> = (0..ALPHA * M_TILE)
                .map(|_| rows.next().expect("24 rows"))
                .collect();
            let out: [&mut [f32]; ALPHA] =
                std::array::from_fn(|a| std::mem::take(&mut half[M_TILE * a + c]));
            lanes(tb, y, out, a4);
        }
        // A across each of the six rows: M̄[6·a + b][o][t].
        let mut plane = m.index_axis_mut(Axis(1), o);
        for (a, m) in channel_rows_mut(&mut plane).into_iter().enumerate() {
            lanes(tb, chunks::<M_TILE>(&w.half, M_TILE * a, tb), m, a4);
        }
    }
}

/// `B·v` for one 6-vector (the adjoint of [`bt6`]).
#[inline(always)]
fn b6(v: [f32; 6]) -> [f32; 6] {
    [
        v[0],
        (v[2] - v[1] + v[5]) - 1.5 * v[0] - 2.0 * v[3] + 0.5 * v[4],
        0.5 * v[1] - 2.0 * v[0] - 2.5 * v[2] - v[3] - v[4] - 1.5 * v[5],
        1.5 * v[0] + 2.5 * v[1] + 0.5 * v[2] + 2.0 * (v[3] - v[5]) - 0.5 * v[4],
        (v[0] + v[1] + v[2] + v[3] + v[4]) + 1.5 * v[5],
        v[5],
    ]
}

/// The input rows `[first, end)` that tile rows `tiles` of a plan read (clipped to the image).
fn input_rows(plan: &Plan, tiles: &Range<usize>) -> Range<usize> {
    let first = (M_TILE * tiles.start).saturating_sub(plan.padding);
    let end = (M_TILE * tiles.end + 2).saturating_sub(plan.padding);
    first.min(plan.height)..end.min(plan.height)
}

/// The adjoint of [`input_transform`]: `B·V̄·Bᵀ` of every tile of one block (`v̄` `[36, C_in,
/// T_b]`, tile `t` in column `t`), summed where tiles overlap, into one buffer per piece holding
/// the [`input_rows`] of its tile rows: `[C_in, rows, W]`. Values that fall on the padding are
/// dropped (the padding is constant).
fn input_transform_adjoint(
    plan: &Plan,
    v_bar: Tiles<'_>,
    pieces: &[TileRows],
    w: &mut Work,
) -> Vec<Vec<f32>> {
    let Plan {
        c_in,
        width,
        padding,
        tiles_x: tx,
        row_len,
        ..
    } = *plan;
    let tb = v_bar.dim().2;
    let mut out: Vec<Vec<f32>> = pieces
        .iter()
        .map(|(_, tiles)| {
            let mut b = recycle::take(c_in * input_rows(plan, tiles).len() * width);
            b.fill(0.0);
            b
        })
        .collect();
    for c in 0..c_in {
        let v_bar = channel_rows(v_bar, c);
        // B across: the 6-column windows of every tile, w.windows[6·a + b][t].
        for a in 0..ALPHA {
            let v: [&[f32]; ALPHA] = std::array::from_fn(|b| v_bar[a * ALPHA + b]);
            lanes(
                tb,
                v,
                chunks_mut::<ALPHA>(&mut w.windows, a * ALPHA, tb),
                b6,
            );
        }
        let mut first = 0;
        for ((_, tiles), buf) in pieces.iter().zip(&mut out) {
            let rows = input_rows(plan, tiles);
            let plane = &mut buf[c * rows.len() * width..(c + 1) * rows.len() * width];
            for (local, ty) in tiles.clone().enumerate() {
                let t0 = first + local * tx;
                // Each tile's window summed into the six padded rows of its tile row.
                w.cols.fill(0.0);
                for (a, col) in w.cols.chunks_exact_mut(row_len).enumerate() {
                    for (b, w) in chunks::<ALPHA>(&w.windows, a * ALPHA, tb)
                        .into_iter()
                        .enumerate()
                    {
                        for (d, v) in col[b..].iter_mut().step_by(4).zip(&w[t0..t0 + tx]) {
                            *d += *v;
                        }
                    }
                }
                // Bᵀ's adjoint down the six rows, every image column at once.
                let cols =
                    chunks::<ALPHA>(&w.cols, 0, row_len).map(|c| &c[padding..padding + width]);
                let sums = chunks_mut::<ALPHA>(&mut w.sums, 0, width);
                lanes(width, cols, sums, b6);
                for (i, sum) in w.sums.chunks_exact(width).enumerate() {
                    let Some(r) = (M_TILE * ty + i).checked_sub(padding) else {
                        continue;
                    };
                    if !rows.contains(&r) {
                        continue;
                    }
                    let line = &mut plane[(r - rows.start) * width..][..width];
                    for (d, v) in line.iter_mut().zip(sum) {
                        *d += *v;
                    }
                }
            }
            first += tiles.len() * tx;
        }
    }
    out
}

/// The adjoint of [`tiles_by_images`]'s input transform: `B·V̄·Bᵀ` of every tile of `v_bar`
/// `[36, C_in, T]` ([`by_images`] order, [`Slots`]), summed where tiles overlap, into `dx`
/// `[N, C_in, H, W]` (every value written; those that fall on the padding are dropped), in
/// parallel over the channels.
fn input_transform_adjoint_images(
    plan: &Plan,
    slots: &Slots,
    v_bar: Tiles<'_>,
    dx: &mut Array4<f32>,
) {
    let Plan {
        height: h,
        width: w,
        padding: p,
        ..
    } = *plan;
    let n = dx.dim().0;
    per_channel(
        dx.view_mut(),
        [h * w * n, POSITIONS * n, POSITIONS * n],
        |c, images, [planes, half, window]| {
            planes.fill(0.0);
            let v_bar = channel_rows(v_bar, c);
            for ((ty, tx), t0, (row_cover, col_cover)) in slots.placed() {
                // The window's rows and columns the tile reads.
                let (rows, cols) = (row_cover.outputs() + 2, col_cover.outputs() + 2);
                // B across each of the rows a it uses: half[6·a + j].
                for a in (0..ALPHA).filter(|&a| row_cover.keeps(a)) {
                    let across = std::array::from_fn(|b| &v_bar[ALPHA * a + b][t0..t0 + n]);
                    let dst = chunks_mut::<ALPHA>(half, ALPHA * a, n);
                    with_span!(col_cover, S => lanes(n, across, dst, S::b));
                }
                // B down each of the window's columns j: window[6·j + i].
                for j in 0..cols {
                    let down = std::array::from_fn(|a| &half[(ALPHA * a + j) * n..][..n]);
                    let dst = chunks_mut::<ALPHA>(window, ALPHA * j, n);
                    with_span!(row_cover, S => lanes(n, down, dst, S::b));
                }
                // Added at the window's place in the map.
                for (i, j) in ndarray::indices((rows, cols)) {
                    let (Some(r), Some(col)) = (
                        (M_TILE * ty + i).checked_sub(p),
                        (M_TILE * tx + j).checked_sub(p),
                    ) else {
                        continue;
                    };
                    if r < h && col < w {
                        let sum = &mut planes[(r * w + col) * n..][..n];
                        for (d, v) in sum.iter_mut().zip(&window[(ALPHA * j + i) * n..][..n]) {
                            *d += *v;
                        }
                    }
                }
            }
            scatter_images(planes, images, |v| v);
        },
    );
}

/// Most bytes the Winograd-domain tiles of one [`conv3x3_backward`] may keep for `∂W` (input and
/// gradient together); larger problems take im2col.
pub const WEIGHT_GRAD_BYTES: usize = 256 << 20;

/// Whether [`conv3x3_backward`]'s `∂W` of `n` images from `c_in` to `c_out` channels at an
/// `oh`×`ow` output pays (for a convolution whose forward pass takes Winograd) over im2col + GEMM:
/// its transformed tiles fit in [`WEIGHT_GRAD_BYTES`]. With the output gradient's transform shared
/// with `∂x`, the whole backward pass (`∂x` and `∂W`, batch 16, 2 threads, interleaved runs)
/// measured 36–41 ms against 45–51 with `∂W` on im2col at ResNet-18's layer4 (512 channels, 7×7,
/// 64 tiles), 90–116 against 155–182 at VGG16's conv5_2 (512, 14×14), 496–541 against 617–737 at
/// conv3_2 (256, 56×56) and 30–36 against 52–59 at ResNet-18's layer2 (128, 28×28).
pub fn weight_grad_pays(n: usize, (c_in, c_out): (usize, usize), (oh, ow): (usize, usize)) -> bool {
    let tiles = n * oh.div_ceil(M_TILE) * ow.div_ceil(M_TILE);
    POSITIONS * (c_in + c_out) * tiles * std::mem::size_of::<f32>() <= WEIGHT_GRAD_BYTES
}

/// What [`conv3x3_backward`] computes: `∂x` with the forward pass's Winograd weights, `∂W` from
/// the forward pass's input or its tiles.
pub struct Wanted<'a> {
    /// `U` of the forward pass, when `∂x` is wanted.
    pub input_grad: Option<&'a WinogradWeights>,
    /// When `∂W` is wanted: what it comes from and where it goes.
    pub weight_grad: Option<WeightGrad<'a>>,
}

impl<'a> Wanted<'a> {
    /// `U`, what `∂W` comes from and where it goes, each when wanted.
    fn into_parts(
        self,
    ) -> (
        Option<&'a WinogradWeights>,
        Option<WeightGradFrom<'a>>,
        Option<GradInto<'a>>,
    ) {
        let (from, into) = self
            .weight_grad
            .map_or((None, None), |w| (Some(w.from), w.into));
        (self.input_grad, from, into)
    }
}

/// `∂W` from what the forward pass kept, returned or written into a parameter's gradient.
pub struct WeightGrad<'a> {
    /// What the forward pass kept.
    pub from: WeightGradFrom<'a>,
    /// Memory that `∂W` goes straight into (then it is not returned): a parameter's gradient
    /// from [`crate::nn::Param::grad_mut`], so that it is neither allocated nor copied again.
    pub into: Option<GradInto<'a>>,
}

/// A gradient buffer `[C_out, C_in, 3, 3]` (standard layout) that `∂W` is written into
/// (`accumulate` false: its values are replaced) or added to (`accumulate` true).
pub struct GradInto<'a> {
    pub buf: ArrayViewMut4<'a, f32>,
    pub accumulate: bool,
}

/// Where `∂W` comes from: the forward pass's input, transformed again, or the tiles it kept.
pub enum WeightGradFrom<'a> {
    /// The input `[N, C_in, H, W]`.
    Input(ArrayView4<'a, f32>),
    /// The input's tiles from [`conv3x3_keeping`].
    Tiles(InputTiles),
}

/// The gradients of `y = conv(x, W)` (3×3, stride 1, zero padding `padding`, `x` of
/// `input_size` = `(H, W)`) for the output gradient `gy` `[N, C_out, OH, OW]`, by Winograd
/// F(4×4, 3×3), the transposes of the forward pass's three steps. With `M̄ = A·Ȳ·Aᵀ` the output
/// gradient's tiles (computed once for both):
/// - `∂x`: `V̄[ξ] = U[ξ]ᵀ·M̄[ξ]`, 36 products of `[C_in, C_out]·[C_out, T]` with the forward
///   pass's `U` (no second weight transform), then `B·V̄·Bᵀ` per tile, summed where tiles overlap;
/// - `∂W`: `∂U[ξ] = Σ_t M̄[ξ]·V[ξ]ᵀ` over all tiles (`V` the input's tiles as in the forward
///   pass), 36 products of `[C_out, T]·[T, C_in]` instead of one of `[C_out, 16·T]·[16·T, 9·C_in]`,
///   then `∂W = Gᵀ·∂U·G`.
///
/// Tiles are transformed (and `V̄` multiplied) in parallel blocks as in [`conv3x3`]; the `∂U`
/// products run in parallel (each owns its `∂U[ξ]`), and so do the transforms back.
///
/// # Panics
/// Panics if the shapes do not belong to one 3×3 convolution with this padding.
pub fn conv3x3_backward(
    gy: ArrayView4<'_, f32>,
    input_size: (usize, usize),
    padding: usize,
    wanted: Wanted<'_>,
) -> (Option<Array4<f32>>, Option<Array4<f32>>) {
    let (n, c_out, out_height, out_width) = gy.dim();
    let (height, width) = input_size;
    let input_dim = |from: &WeightGradFrom<'_>| match from {
        WeightGradFrom::Input(x) => x.dim(),
        WeightGradFrom::Tiles(t) => t.input,
    };
    let from = wanted.weight_grad.as_ref().map(|w| &w.from);
    let c_in = match (&wanted.input_grad, from) {
        (Some(u), _) => u.c_in,
        (None, Some(from)) => input_dim(from).1,
        (None, None) => return (None, None),
    };
    let (tiles_y, tiles_x) = (out_height.div_ceil(M_TILE), out_width.div_ceil(M_TILE));
    let total = n * tiles_y * tiles_x;
    assert!(
        height + 2 * padding >= 3
            && out_height == height + 2 * padding - 2
            && out_width == width + 2 * padding - 2
            && wanted
                .input_grad
                .is_none_or(|u| u.c_out == c_out && u.c_in == c_in)
            && from.is_none_or(|from| {
                input_dim(from) == (n, c_in, height, width)
                    && match from {
                        WeightGradFrom::Input(_) => true,
                        WeightGradFrom::Tiles(t) => {
                            t.padding == padding && t.v.dim() == (POSITIONS, c_in, total)
                        }
                    }
            }),
        "Winograd backward: gradient {:?} does not fit the input {n}x{c_in}x{height}x{width}, \
         padding {padding}",
        gy.shape(),
    );
    let plan = Plan::new((c_in, c_out), (height, width), padding);
    let gy = gy.as_standard_layout();
    let gs = gy.as_slice().expect("standard layout");
    // Kept tiles come in the order their forward pass chose. When ∂W transforms the input, the
    // batch's tiles are held side by side whatever their count, and with eight images or more
    // the images as lanes pay on large maps too (∂x and ∂W at batch 16, 2 threads: 266–273 ms
    // against 414–417 block by block at VGG16's conv3_2, 256 channels at 56×56; 32–33 against
    // 36–37 at ResNet-18's layer1; 21 against 22–23 at layer2), though in the forward pass they
    // do not (at layer2 11–12 ms against 9). On the Zen 3 part (AVX2) at batch 8 and 16, once
    // eight images ran vectorised too, the two orders measured the same at layer1 and VGG16's
    // conv2_2 and conv4_2 (`tl bench conv`, 3 alternations).
    let images = match from {
        Some(WeightGradFrom::Tiles(t)) => t.by_images,
        Some(WeightGradFrom::Input(_)) => n >= MIN_LANE_IMAGES,
        None => by_images(n, total),
    };
    if images {
        return backward_by_images(&plan, gs, n, wanted);
    }
    let (u, from, into) = wanted.into_parts();
    // ∂W's input tiles: kept by the forward pass, or transformed below from its input.
    let (input, mut v) = match from {
        Some(WeightGradFrom::Input(x)) => {
            (Some(x), Some(recycle::take_array((POSITIONS, c_in, total))))
        }
        Some(WeightGradFrom::Tiles(mut t)) => (None, Some(std::mem::take(&mut t.v))),
        None => (None, None),
    };
    let x = input.as_ref().map(|x| x.as_standard_layout());
    let xs = x.as_ref().map(|x| x.as_slice().expect("standard layout"));
    let rows = rows_per_block(tiles_x, n * tiles_y);
    let blocks = tile_blocks(n, tiles_y, rows);
    let sizes: Vec<usize> = blocks
        .iter()
        .map(|b| b.iter().map(|(_, t)| t.len() * tiles_x).sum())
        .collect();
    let max_tiles = rows * tiles_x;
    // Per block, per piece: its rows of ∂x ([`input_transform_adjoint`]).
    let (pieces, dw): (Vec<Vec<Vec<f32>>>, _) = if v.is_some() || side_by_side(total) {
        // The batch's M̄ (and V for ∂W) side by side, transformed per block.
        let mut m: Array3<f32> = recycle::take_array((POSITIONS, c_out, total));
        let v_windows: Vec<Option<TilesMut<'_>>> = match (&mut v, xs) {
            (Some(v), Some(_)) => windows(v.view_mut(), &sizes)
                .into_iter()
                .map(Some)
                .collect(),
            _ => sizes.iter().map(|_| None).collect(),
        };
        blocks
            .par_iter()
            .zip(windows(m.view_mut(), &sizes))
            .zip(v_windows)
            .for_each_init(
                || Work::new(&plan, max_tiles),
                |work, ((pieces, m), v)| {
                    grad_transform(&plan, gs, pieces, work, m);
                    if let (Some(xs), Some(v)) = (xs, v) {
                        input_transform(&plan, xs, pieces, work, v);
                    }
                },
            );
        let (dw, v_bar) = weight_grad_and_v_bar(v, m, u, into, None);
        // V̄ back per block.
        let pieces = v_bar.map_or_else(Vec::new, |mut v_bar| {
            let pieces = blocks
                .par_iter()
                .zip(windows(v_bar.view_mut(), &sizes))
                .map_init(
                    || Work::new(&plan, max_tiles),
                    |work, (pieces, v_bar)| {
                        input_transform_adjoint(&plan, v_bar.view(), pieces, work)
                    },
                )
                .collect();
            recycle::give_array(v_bar);
            pieces
        });
        (pieces, dw)
    } else {
        // ∂x alone over many tiles: each block on its own thread.
        let u = u.expect("∂x is wanted when ∂W is not");
        let pieces = blocks
            .par_iter()
            .zip(&sizes)
            .map_init(
                || Scratch::new(&plan, max_tiles),
                |s, (pieces, &tb)| {
                    let mut m = as_tiles(&mut s.m, c_out, tb);
                    let mut v_bar = as_tiles(&mut s.v, c_in, tb);
                    grad_transform(&plan, gs, pieces, &mut s.work, m.view_mut());
                    products(
                        |xi| u.position(xi).reversed_axes(),
                        m.view(),
                        v_bar.view_mut(),
                        None,
                        false,
                    );
                    input_transform_adjoint(&plan, v_bar.view(), pieces, &mut s.work)
                },
            )
            .collect();
        (pieces, None)
    };
    let dx = u.map(|_| {
        // Pieces of one image may come from two blocks and share two rows: sum image by image.
        let mut dx = Array4::<f32>::zeros((n, c_in, height, width));
        let mut by_image: Vec<Vec<(Range<usize>, &[f32])>> = vec![Vec::new(); n];
        for (block, bufs) in blocks.iter().zip(&pieces) {
            for ((image, tiles), buf) in block.iter().zip(bufs) {
                by_image[*image].push((input_rows(&plan, tiles), buf));
            }
        }
        dx.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(by_image)
            .for_each(|(mut image, pieces)| {
                for (rows, buf) in pieces {
                    let len = rows.len() * width;
                    for (c, mut plane) in image.axis_iter_mut(Axis(0)).enumerate() {
                        let plane = plane.as_slice_mut().expect("contiguous plane");
                        let dst = &mut plane[rows.start * width..rows.end * width];
                        for (d, v) in dst.iter_mut().zip(&buf[c * len..(c + 1) * len]) {
                            *d += *v;
                        }
                    }
                }
            });
        dx
    });
    pieces.into_iter().flatten().for_each(recycle::give);
    (dx, dw)
}

/// [`conv3x3_backward`] with the batch's tiles in [`by_images`] order: `M̄` of the whole batch,
/// `∂W` from it and `V`, `V̄ = Uᵀ·M̄` into `V`'s buffer (used up by then) and its adjoint
/// transform into `∂x`.
fn backward_by_images(
    plan: &Plan,
    gy: &[f32],
    n: usize,
    wanted: Wanted<'_>,
) -> (Option<Array4<f32>>, Option<Array4<f32>>) {
    let (u, from, into) = wanted.into_parts();
    let (c_in, c_out) = (plan.c_in, plan.c_out);
    let total = n * plan.tiles_y() * plan.tiles_x;
    // M̄, V and V̄ are written before they are read, at the positions each tile uses.
    let mut m: Array3<f32> = recycle::take_array((POSITIONS, c_out, total));
    let out_size = (n, plan.height + 2 * plan.padding - 2, plan.out_width);
    let slots = plan.slots(n);
    tiles_by_images::<M_TILE, GradientPoints>(gy, out_size, 0, &slots, m.view_mut());
    let v = from.map(|from| match from {
        WeightGradFrom::Input(x) => {
            let x = x.as_standard_layout();
            let mut v: Array3<f32> = recycle::take_array((POSITIONS, c_in, total));
            plan.input_tiles_by_images(x.as_slice().expect("standard layout"), n, v.view_mut());
            v
        }
        WeightGradFrom::Tiles(mut t) => std::mem::take(&mut t.v),
    });
    let (dw, v_bar) = weight_grad_and_v_bar(v, m, u, into, Some(&slots));
    let dx = v_bar.map(|v_bar| {
        let mut dx: Array4<f32> = recycle::take_array((n, c_in, plan.height, plan.width));
        input_transform_adjoint_images(plan, &slots, v_bar.view(), &mut dx);
        recycle::give_array(v_bar);
        dx
    });
    (dx, dw)
}

/// From the batch's output-gradient tiles `m` (`M̄` `[36, C_out, T]`): `∂W` when the input's
/// tiles `v` are given, and `V̄ = Uᵀ·M̄` `[36, C_in, T]` when `u` is, in `V`'s buffer once `∂W`
/// has used it (`∂W` into `into` when given, then not returned). With `slots` ([`by_images`]
/// order), each position over the columns whose tiles use it. `M̄` and any buffer left unused
/// go back to the pool.
fn weight_grad_and_v_bar(
    mut v: Option<Array3<f32>>,
    m: Array3<f32>,
    u: Option<&WinogradWeights>,
    into: Option<GradInto<'_>>,
    slots: Option<&Slots>,
) -> (Option<Array4<f32>>, Option<Array3<f32>>) {
    let dw = v
        .as_ref()
        .and_then(|v| weight_grad(v.view(), m.view(), into, slots));
    let v_bar = u.map(|u| {
        // Written by the products, at the positions each tile uses.
        let mut v_bar = v
            .take()
            .unwrap_or_else(|| recycle::take_array((POSITIONS, u.c_in, m.dim().2)));
        products(
            |xi| u.position(xi).reversed_axes(),
            m.view(),
            v_bar.view_mut(),
            slots,
            true,
        );
        v_bar
    });
    if let Some(v) = v {
        recycle::give_array(v);
    }
    recycle::give_array(m);
    (dw, v_bar)
}

/// `∂W = Gᵀ·(M̄[ξ]·V[ξ]ᵀ)·G` `[C_out, C_in, 3, 3]` from the batch's tiles `V` `[36, C_in, T]`
/// and `M̄` `[36, C_out, T]` (with `slots`, each position's sum over the tiles that use it):
/// into `into` when given (`None` returned), else a new array.
///
/// # Panics
/// Panics if `into` is not `[C_out, C_in, 3, 3]` in standard layout.
fn weight_grad(
    v: Tiles<'_>,
    m: Tiles<'_>,
    into: Option<GradInto<'_>>,
    slots: Option<&Slots>,
) -> Option<Array4<f32>> {
    let (c_in, c_out, tiles) = (v.dim().1, m.dim().1, v.dim().2);
    // Every ∂U[ξ] is written by its product (zero when no tile uses ξ).
    let mut du: Array3<f32> = recycle::take_array((POSITIONS, c_out, c_in));
    per_position(du.view_mut(), true, |xi, du| {
        let cols = slots.map_or(0..tiles, |s| s.columns(xi));
        let m = m
            .index_axis_move(Axis(0), xi)
            .slice_move(s![.., cols.clone()]);
        let v = v.index_axis_move(Axis(0), xi).slice_move(s![.., cols]);
        matmul(m, v.reversed_axes(), du, false, Threads::One);
    });
    // ∂W = Gᵀ·∂U·G for every channel pair, in parallel chunks of pairs, the pairs as lanes.
    let pairs = c_out * c_in;
    // Every pair's nine values are written (or added to) below.
    let mut fresh: Option<Array2<f32>> = None;
    let (dst, accumulate): (&mut [f32], bool) = match into {
        Some(GradInto { buf, accumulate }) => {
            assert_eq!(buf.dim(), (c_out, c_in, 3, 3), "Winograd ∂W: buffer shape");
            let dst = buf
                .into_slice()
                .expect("Winograd ∂W: a buffer in standard layout");
            (dst, accumulate)
        }
        None => {
            let dw = fresh.insert(recycle::take_array((pairs, 9)));
            (dw.as_slice_mut().expect("fresh array"), false)
        }
    };
    let du_values = du.as_slice().expect("contiguous ∂U");
    dst.par_chunks_mut(9 * PAIRS_PER_JOB)
        .enumerate()
        .for_each_init(
            // Per worker, reused by its jobs: every value is written before it is read.
            || {
                (
                    vec![0.0f32; 3 * ALPHA * PAIRS_PER_JOB],
                    vec![0.0f32; 9 * PAIRS_PER_JOB],
                )
            },
            |(cols, sums), (job, out)| {
                let first = job * PAIRS_PER_JOB;
                let len = out.len() / 9;
                let rows: [&[f32]; POSITIONS] =
                    std::array::from_fn(|xi| &du_values[xi * pairs + first..][..len]);
                // Gᵀ down each of the six columns: cols[3·b + i]; then across each of the three
                // rows: sums[3·i + j].
                for b in 0..ALPHA {
                    let down: [&[f32]; ALPHA] = std::array::from_fn(|a| rows[ALPHA * a + b]);
                    lanes(len, down, chunks_mut::<3>(cols, 3 * b, len), gt3);
                }
                for i in 0..3 {
                    let across: [&[f32]; ALPHA] =
                        std::array::from_fn(|b| &cols[(3 * b + i) * len..][..len]);
                    lanes(len, across, chunks_mut::<3>(sums, 3 * i, len), gt3);
                }
                for (k, out) in out.chunks_exact_mut(9).enumerate() {
                    for (q, o) in out.iter_mut().enumerate() {
                        let v = sums[q * len + k];
                        *o = if accumulate { *o + v } else { v };
                    }
                }
            },
        );
    recycle::give_array(du);
    fresh.map(|dw: Array2<f32>| {
        dw.into_shape_with_order((c_out, c_in, 3, 3))
            .expect("weight shape")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Calls `f((i, o, oy, ox), (c, ki, kj), (iy, ix))` for every tap of a 3×3 convolution with
    /// padding `p` of `n` images of `c_in` channels `h`×`w` to `c_out` channels that reads inside
    /// the image: output `(i, o, oy, ox)` reads input `(i, c, iy, ix)` through kernel value
    /// `(o, c, ki, kj)`, `iy = oy + ki − p`, `ix = ox + kj − p`.
    fn taps(
        (n, c_in, h, w): (usize, usize, usize, usize),
        c_out: usize,
        p: usize,
        mut f: impl FnMut((usize, usize, usize, usize), (usize, usize, usize), (usize, usize)),
    ) {
        let (oh, ow) = (h + 2 * p - 2, w + 2 * p - 2);
        for (i, o, oy, ox) in ndarray::indices((n, c_out, oh, ow)) {
            for (c, ki, kj) in ndarray::indices((c_in, 3, 3)) {
                let (iy, ix) = ((oy + ki).checked_sub(p), (ox + kj).checked_sub(p));
                if let (Some(iy), Some(ix)) = (iy, ix) {
                    if iy < h && ix < w {
                        f((i, o, oy, ox), (c, ki, kj), (iy, ix));
                    }
                }
            }
        }
    }

    /// Direct convolution in f64 (3×3, stride 1, padding `p`), plus bias.
    fn direct(x: &Array4<f32>, w: &Array4<f32>, bias: Option<&[f32]>, p: usize) -> Array4<f64> {
        let (n, _, h, wd) = x.dim();
        let co = w.dim().0;
        let mut y = Array4::<f64>::from_shape_fn((n, co, h + 2 * p - 2, wd + 2 * p - 2), |d| {
            bias.map_or(0.0, |b| b[d.1] as f64)
        });
        taps(x.dim(), co, p, |(i, o, oy, ox), (c, ki, kj), (iy, ix)| {
            y[[i, o, oy, ox]] += w[[o, c, ki, kj]] as f64 * x[[i, c, iy, ix]] as f64;
        });
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
            // Eight images or more at ResNet-18's layer4 size: the last tiles cover three.
            (8, 256, 256, 7, true),
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
            // Eight images or more over few tiles: the images are the transforms' lanes.
            (16, 64, 32, 7, 7, 1),
            (8, 5, 7, 6, 9, 0),
            (11, 6, 4, 10, 3, 2),
            (17, 3, 5, 2, 2, 1),
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

    /// `∂x` and `∂W` of a 3×3 convolution, summed directly in f64:
    /// `∂x[n, c, iy, ix] = Σ_{o, ki, kj} g[n, o, iy + p − ki, ix + p − kj]·W[o, c, ki, kj]`,
    /// `∂W[o, c, ki, kj] = Σ_{n, oy, ox} g[n, o, oy, ox]·x[n, c, oy + ki − p, ox + kj − p]`.
    fn direct_grads(
        x: &Array4<f32>,
        w: &Array4<f32>,
        gy: &Array4<f32>,
        p: usize,
    ) -> (Array4<f64>, Array4<f64>) {
        let (ci, co) = (x.dim().1, gy.dim().1);
        let mut dx = Array4::<f64>::zeros(x.dim());
        let mut dw = Array4::<f64>::zeros((co, ci, 3, 3));
        taps(x.dim(), co, p, |(i, o, oy, ox), (c, ki, kj), (iy, ix)| {
            let g = gy[[i, o, oy, ox]] as f64;
            dx[[i, c, iy, ix]] += g * w[[o, c, ki, kj]] as f64;
            dw[[o, c, ki, kj]] += g * x[[i, c, iy, ix]] as f64;
        });
        (dx, dw)
    }

    #[test]
    fn streaming_copies_any_offset_and_length_exactly() {
        let src: Vec<f32> = (0..64).map(|i| i as f32 + 0.5).collect();
        for offset in 0..6 {
            for len in 0..=40 {
                let mut dst = vec![-1.0f32; 64];
                copy_streaming(&mut dst[offset..offset + len], &src[3..3 + len]);
                fence_streaming();
                assert_eq!(
                    &dst[offset..offset + len],
                    &src[3..3 + len],
                    "{offset}+{len}"
                );
                assert!(dst[..offset]
                    .iter()
                    .chain(&dst[offset + len..])
                    .all(|&v| v == -1.0));
            }
        }
    }

    /// Every lane count, through the 16-, 8- and 4-wide steps and the one-by-one tail, gives
    /// each lane exactly what the transform gives it alone, and writes nothing past `n`.
    #[test]
    fn lanes_transform_every_lane_at_any_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for n in 0..=45 {
            let inp: Vec<Vec<f32>> = (0..ALPHA)
                .map(|_| (0..n + 3).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            let mut out = vec![vec![7.0f32; n + 3]; ALPHA];
            let rows: [&[f32]; ALPHA] = std::array::from_fn(|i| &inp[i][..]);
            let mut it = out.iter_mut();
            let dst: [&mut [f32]; ALPHA] = std::array::from_fn(|_| &mut it.next().unwrap()[..]);
            lanes(n, rows, dst, bt6);
            for k in 0..n + 3 {
                let want = bt6(std::array::from_fn(|i| inp[i][k]));
                for (o, w) in out.iter().zip(want) {
                    let expected = if k < n { w } else { 7.0 };
                    assert_eq!(o[k].to_bits(), expected.to_bits(), "n {n}, lane {k}");
                }
            }
        }
    }

    /// For a tile of each [`Cover`], `m` outputs: `Aᵀ·[(G·g) ⊙ (Bᵀ·d)]` is the correlation of the
    /// window `d` with the kernel `g` on those outputs (the 1-D Winograd identity), `A` and `B`
    /// are the adjoints of `Aᵀ` and `Bᵀ` on the points it keeps, every value it does not
    /// compute is zero, and no value is read at a point it skips (NaN there changes nothing).
    #[test]
    fn every_span_computes_the_correlation_and_its_adjoints() {
        fn check<S: Span>(cover: Cover, rng: &mut ChaCha8Rng) {
            let m = cover.outputs();
            assert_eq!(
                S::KEEPS,
                std::array::from_fn(|i| cover.keeps(i)),
                "{cover:?}"
            );
            let kept = |i: usize| S::KEEPS[i];
            let skipped = |v: [f32; ALPHA]| -> [f32; ALPHA] {
                std::array::from_fn(|i| if kept(i) { v[i] } else { f32::NAN })
            };
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            for _ in 0..20 {
                let g: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
                let mut d: [f32; ALPHA] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
                let v = S::bt(d);
                let u = g3(g);
                let y = S::at(skipped(std::array::from_fn(|i| u[i] * v[i])));
                for (i, y) in y.iter().enumerate() {
                    let want: f64 = if i < m {
                        (0..3).map(|k| g[k] as f64 * d[i + k] as f64).sum()
                    } else {
                        0.0
                    };
                    assert!(
                        (*y as f64 - want).abs() < 1e-5,
                        "{cover:?}: y{i} {y} against {want}"
                    );
                }
                // Window values past the m + 2 a tile reads do not matter.
                d[m + 2..].fill(f32::NAN);
                assert!(
                    S::bt(d).iter().all(|v| v.is_finite()),
                    "{cover:?}: Bᵀ reads past m + 2"
                );
                d[m + 2..].fill(0.0);
                let (vb, ybar): ([f32; ALPHA], [f32; M_TILE]) = (
                    std::array::from_fn(|_| rng.random_range(-1.0..1.0)),
                    std::array::from_fn(|i| {
                        if i < m {
                            rng.random_range(-1.0..1.0)
                        } else {
                            0.0
                        }
                    }),
                );
                let keep = |v: [f32; ALPHA]| -> [f32; ALPHA] {
                    std::array::from_fn(|i| if kept(i) { v[i] } else { 0.0 })
                };
                // ⟨Bᵀd, v⟩ = ⟨d, Bv⟩ and ⟨Aᵀw, ȳ⟩ = ⟨w, Aȳ⟩ over the kept points.
                let b = S::b(skipped(vb));
                let (lhs, rhs) = (dot(&S::bt(d), &keep(vb)), dot(&d, &b));
                assert!(
                    (lhs - rhs).abs() < 1e-5,
                    "{cover:?}: <Bᵀd, v> {lhs}, <d, Bv> {rhs}"
                );
                assert!(
                    b[m + 2..].iter().all(|&v| v == 0.0),
                    "{cover:?}: B past m + 2"
                );
                let a = S::a(ybar);
                let (lhs, rhs) = (dot(&S::at(skipped(vb)), &ybar), dot(&keep(vb), &a));
                assert!(
                    (lhs - rhs).abs() < 1e-5,
                    "{cover:?}: <Aᵀw, ȳ> {lhs}, <w, Aȳ> {rhs}"
                );
                for i in (0..ALPHA).filter(|&i| !kept(i)) {
                    assert!(
                        S::bt(d)[i] == 0.0 && a[i] == 0.0,
                        "{cover:?}: point {i} not zero"
                    );
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        check::<Four>(Cover::Four, &mut rng);
        check::<Three>(Cover::Three, &mut rng);
        check::<Two>(Cover::Two, &mut rng);
        check::<One>(Cover::One, &mut rng);
        assert_eq!(
            [7, 6, 5, 4].map(Cover::last),
            [Cover::Three, Cover::Two, Cover::One, Cover::Four]
        );
    }

    /// The tiles' column runs fill the batch's columns once, and each position's products take
    /// exactly the runs of the tiles that use it: at 7×7, 121 of the 144 tile-position pairs.
    #[test]
    fn slots_give_each_position_exactly_the_tiles_that_use_it() {
        for (n, oh, ow) in [
            (16, 7, 7),
            (8, 4, 7),
            (3, 12, 5),
            (2, 2, 2),
            (5, 13, 10),
            (1, 8, 8),
            (4, 1, 6),
            (2, 9, 3),
        ] {
            let slots = Slots::new(n, (oh, ow));
            let (tiles_y, tiles_x) = slots.tiles;
            let tiles: Vec<(usize, usize)> =
                ndarray::indices((tiles_y, tiles_x)).into_iter().collect();
            let mut starts: Vec<usize> = tiles.iter().map(|&(y, x)| slots.column(y, x)).collect();
            starts.sort_unstable();
            let every: Vec<usize> = (0..tiles.len()).map(|t| t * n).collect();
            assert_eq!(starts, every, "{n} images {oh}x{ow}: columns");
            // The covers add up to the output's sides.
            let rows: usize = (0..tiles_y).map(|y| slots.covers(y, 0).0.outputs()).sum();
            let cols: usize = (0..tiles_x).map(|x| slots.covers(0, x).1.outputs()).sum();
            assert_eq!((rows, cols), (oh, ow), "{n} images {oh}x{ow}: covers");
            let mut pairs = 0;
            for xi in 0..POSITIONS {
                let columns = slots.columns(xi);
                pairs += columns.len() / n;
                for &(y, x) in &tiles {
                    let (row, col) = slots.covers(y, x);
                    let uses = row.keeps(xi / ALPHA) && col.keeps(xi % ALPHA);
                    let t0 = slots.column(y, x);
                    let inside = columns.start <= t0 && t0 + n <= columns.end;
                    assert_eq!(
                        inside, uses,
                        "{n} images {oh}x{ow}: tile ({y}, {x}) at {xi}"
                    );
                    if !uses {
                        assert!(t0 + n <= columns.start || columns.end <= t0);
                    }
                }
            }
            if (oh, ow) == (7, 7) {
                assert_eq!(pairs, 121, "tile-position pairs at 7x7");
            }
        }
    }

    #[test]
    fn backward_matches_a_direct_sum_in_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        // (n, c_in, c_out, height, width, padding): the batch's tiles side by side (below
        // `side_by_side`'s count; ∂W always), blocks that split images (tall maps, so pieces of
        // one image meet in two blocks), edge tiles cut by the output, paddings 0 to 3, maps
        // smaller than a tile, 576 tiles, where ∂x alone runs block by block, and eight images
        // or more over few tiles, which the transforms take with the images as their lanes.
        for (n, ci, co, h, w, p) in [
            (16, 64, 48, 7, 7, 1),
            (8, 5, 7, 6, 9, 0),
            (11, 6, 4, 10, 3, 2),
            (17, 3, 5, 2, 2, 1),
            (9, 4, 3, 30, 30, 1),
            (2, 64, 96, 30, 30, 1),
            (4, 64, 48, 7, 7, 1),
            (2, 512, 512, 7, 7, 1),
            (8, 256, 256, 7, 7, 1),
            (9, 8, 12, 13, 13, 1),
            (2, 5, 3, 9, 9, 0),
            (3, 6, 4, 6, 6, 2),
            (1, 3, 2, 3, 3, 1),
            (1, 4, 5, 70, 9, 1),
            (2, 6, 3, 41, 10, 0),
            (1, 2, 3, 4, 5, 3),
            (3, 7, 9, 1, 7, 1),
        ] {
            let x = normal(&mut rng, (n, ci, h, w), 1.0);
            let wt = he(&mut rng, co, ci);
            let (oh, ow) = (h + 2 * p - 2, w + 2 * p - 2);
            let gy = normal(&mut rng, (n, co, oh, ow), 1.0);
            let (want_dx, want_dw) = direct_grads(&x, &wt, &gy, p);
            let u = WinogradWeights::new(wt.view());
            let what = format!("{n}x{ci}->{co} {h}x{w}, p {p}");
            let both = Wanted {
                input_grad: Some(&u),
                weight_grad: Some(WeightGrad {
                    from: WeightGradFrom::Input(x.view()),
                    into: None,
                }),
            };
            let (dx, dw) = conv3x3_backward(gy.view(), (h, w), p, both);
            let (dx, dw) = (dx.expect("∂x"), dw.expect("∂W"));
            let err = relative_error(&dx, &want_dx);
            assert!(err <= BOUND, "{what}: ∂x {err:e}");
            let err = relative_error(&dw, &want_dw);
            assert!(err <= BOUND, "{what}: ∂W {err:e}");
            // Each alone gives the same values.
            let only_dx = Wanted {
                input_grad: Some(&u),
                weight_grad: None,
            };
            let (alone, none) = conv3x3_backward(gy.view(), (h, w), p, only_dx);
            assert!(none.is_none(), "{what}: ∂W not asked for");
            let err = relative_error(&alone.expect("∂x"), &want_dx);
            assert!(err <= BOUND, "{what}: ∂x alone {err:e}");
            let only_dw = Wanted {
                input_grad: None,
                weight_grad: Some(WeightGrad {
                    from: WeightGradFrom::Input(x.view()),
                    into: None,
                }),
            };
            let (none, alone) = conv3x3_backward(gy.view(), (h, w), p, only_dw);
            assert!(none.is_none(), "{what}: ∂x not asked for");
            let alone = alone.expect("∂W");
            let err = relative_error(&alone, &want_dw);
            assert!(err <= BOUND, "{what}: ∂W alone {err:e}");
            // Into a gradient's memory: whatever it held replaced, or added to.
            for (accumulate, held) in [(false, f32::NAN), (true, 0.25)] {
                let mut buf = Array4::from_elem(alone.dim(), held);
                let into = Wanted {
                    input_grad: None,
                    weight_grad: Some(WeightGrad {
                        from: WeightGradFrom::Input(x.view()),
                        into: Some(GradInto {
                            buf: buf.view_mut(),
                            accumulate,
                        }),
                    }),
                };
                let (none, returned) = conv3x3_backward(gy.view(), (h, w), p, into);
                assert!(
                    none.is_none() && returned.is_none(),
                    "{what}: written, not returned"
                );
                let want = if accumulate {
                    &alone + held
                } else {
                    alone.clone()
                };
                assert_eq!(
                    buf, want,
                    "{what}: ∂W into a buffer, accumulate {accumulate}"
                );
            }
            // From the tiles the forward pass kept (when it ran side by side): the same ∂W,
            // to the bit, and the same ∂x next to it.
            let (y, kept) = conv3x3_keeping(x.view(), &u, &Epilogue::default(), p, true);
            assert_eq!(
                y,
                conv3x3(x.view(), &u, &Epilogue::default(), p),
                "{what}: y"
            );
            let tiles = n * oh.div_ceil(M_TILE) * ow.div_ceil(M_TILE);
            assert_eq!(kept.is_some(), side_by_side(tiles), "{what}: tiles kept");
            if let Some(kept) = kept {
                let from_tiles = Wanted {
                    input_grad: Some(&u),
                    weight_grad: Some(WeightGrad {
                        from: WeightGradFrom::Tiles(kept),
                        into: None,
                    }),
                };
                let (dx_t, dw_t) = conv3x3_backward(gy.view(), (h, w), p, from_tiles);
                assert_eq!(dw_t.expect("∂W"), alone, "{what}: ∂W from kept tiles");
                assert_eq!(dx_t.expect("∂x"), dx, "{what}: ∂x beside kept tiles");
            }
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
