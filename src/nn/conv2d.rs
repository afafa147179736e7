//! 2-D convolution (square kernel, symmetric stride and zero padding), through im2col and GEMM.
//!
//! `x` `[N, C, H, W]`, `W` `[C_out, C, k, k]`, `b` `[C_out]`, `y` `[N, C_out, OH, OW]` with
//! `OH = floor((H + 2P − k)/S) + 1`. Per image: `y[n] = W·col(x[n]) + b`, `W` seen as
//! `[C_out, C·k·k]`. Backward: `∂W += Σₙ g[n]·col(x[n])ᵀ`, `∂b += Σ g`,
//! `∂x[n] = col2im(Wᵀ·g[n])`.
//!
//! The column matrix is built a tile at a time (a band of output rows, about [`TILE_BYTES`]), so
//! it stays in cache between im2col and the product and its buffer stays small. Tiles (forward)
//! or images (backward) run in parallel, each product on one thread, when there are enough of
//! them to keep every thread busy; otherwise they run in turn, each product split across threads.
//!
//! Outputs under 256 positions put several images' columns side by side in one product (forward
//! and `∂x`) and compute `∂W` over the whole batch, split by input channel.
//!
//! 3×3, stride-1 convolutions with enough channels and outputs ([`winograd_pays`]) go through
//! Winograd F(4×4, 3×3) instead ([`crate::tensor::winograd`]): forward, and backward by the
//! transposes of the forward pass's steps, `∂x` with the forward pass's Winograd-domain weights
//! and `∂W` sharing the output gradient's transform with it (where its tiles fit in memory,
//! [`weight_grad_pays`]). Inference passes can fold a following BatchNorm and ReLU into the output
//! pass ([`Layer::forward_then`]). The Winograd-domain weights are kept in the layer, keyed on the
//! weight's [`Param::version`], and rebuilt when that moves. The environment variable
//! `TL_CONV`, read once per process, overrides the choice: `TL_CONV=im2col` forces im2col + GEMM
//! everywhere, `TL_CONV=winograd` takes Winograd for every 3×3, stride-1 convolution it can run.

use std::ops::Range;
use std::sync::OnceLock;

use ndarray::{
    s, Array2, Array3, Array4, ArrayD, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis, Ix4,
};
use rand::RngCore;
use rayon::prelude::*;

use super::linear::uniform;
use super::{
    visit_weight_bias, visit_weight_bias_mut, Context, Layer, Param, ParamKind, NO_FORWARD,
};
use crate::tensor::epilogue::Epilogue;
use crate::tensor::gemm::{matmul, Threads};
use crate::tensor::im2col::{col2im_rows, im2col_rows, im2col_rows_into, ConvGeometry};
use crate::tensor::into_standard;
use crate::tensor::recycle::{self, Scratch};
use crate::tensor::winograd::{
    conv3x3_backward, conv3x3_keeping, weight_grad_pays, GradInto, InputTiles, Wanted, WeightGrad,
    WeightGradFrom, WinogradWeights,
};

/// `nn.Conv2d` with a square kernel.
pub struct Conv2d {
    /// `[C_out, C_in, k, k]`.
    pub weight: Param,
    /// `[C_out]`, when the layer has a bias.
    pub bias: Option<Param>,
    stride: usize,
    padding: usize,
    cache: Option<Cache>,
    winograd: WinogradCache,
}

struct Cache {
    input: Option<Array4<f32>>,
    /// The input's Winograd-domain tiles, kept instead of the input when `∂W` takes Winograd
    /// and the forward pass transformed the whole batch side by side.
    tiles: Option<InputTiles>,
    input_shape: [usize; 4],
    input_grad: bool,
    /// Whether the forward pass took Winograd (then backward does too).
    winograd: bool,
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
            winograd: WinogradCache::default(),
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

    /// `y = epilogue(W·col(x))` through im2col and GEMM, a band of output rows at a time.
    fn forward_im2col(
        &self,
        x: &Array4<f32>,
        g: &ConvGeometry,
        epilogue: &Epilogue,
    ) -> Array4<f32> {
        let (n, co) = (x.shape()[0], self.out_channels());
        let group = images_per_group(n, g.col_cols());
        if group > 1 {
            return self.forward_grouped(x, g, epilogue, group);
        }
        let w = self.weight_matrix();
        let xs = x.as_slice().expect("standard layout");
        let per_in = g.channels * g.height * g.width;
        let band = tile_rows(g);
        // Every tile is written in full by its product.
        let mut y: Array3<f32> = recycle::take_array((n, co, g.col_cols()));
        let mut jobs = Vec::new();
        for (i, mut rest) in y.axis_iter_mut(Axis(0)).enumerate() {
            for t in (0..g.out_height).step_by(band) {
                let rows = t..(t + band).min(g.out_height);
                let (tile, tail) = rest.split_at(Axis(1), rows.len() * g.out_width);
                jobs.push((i, rows, tile));
                rest = tail;
            }
        }
        run_jobs(
            jobs,
            1,
            |buf: &mut Scratch,
             (i, rows, mut yt): (usize, Range<usize>, ArrayViewMut2<'_, f32>),
             threads| {
                let col = columns(&xs[i * per_in..(i + 1) * per_in], g, rows, buf);
                matmul(w, col, yt.view_mut(), false, threads);
                epilogue.apply_rows(yt);
            },
        );
        y.into_shape_with_order((n, co, g.out_height, g.out_width))
            .expect("output shape")
    }

    /// `y = epilogue(W·col(x))` for small outputs: the columns of `group` images side by side in one
    /// product (`[C_out, C·k·k]·[C·k·k, group·OH·OW]`), so that the weight is packed once per
    /// group rather than once per image and the product runs wide.
    fn forward_grouped(
        &self,
        x: &Array4<f32>,
        g: &ConvGeometry,
        epilogue: &Epilogue,
        group: usize,
    ) -> Array4<f32> {
        let (n, co, p) = (x.shape()[0], self.out_channels(), g.col_cols());
        let w = self.weight_matrix();
        let xs = x.as_slice().expect("standard layout");
        // Every image's block is assigned in full.
        let mut y: Array3<f32> = recycle::take_array((n, co, p));
        let jobs: Vec<_> = y
            .axis_chunks_iter_mut(Axis(0), group)
            .enumerate()
            .map(|(j, chunk)| (j * group, chunk))
            .collect();
        run_jobs(
            jobs,
            1,
            |bufs: &mut GroupBuffers, (first, mut yc): (usize, ArrayViewMut3<'_, f32>), threads| {
                let images = first..first + yc.shape()[0];
                let width = images.len() * p;
                let col = group_columns(xs, g, images, 0..g.channels, &mut bufs.col);
                let mut out = ArrayViewMut2::from_shape((co, width), bufs.out.get(co * width))
                    .expect("group shape");
                matmul(w, col, out.view_mut(), false, threads);
                for (j, mut yi) in yc.outer_iter_mut().enumerate() {
                    yi.assign(&out.slice(s![.., j * p..(j + 1) * p]));
                    epilogue.apply_rows(yi);
                }
            },
        );
        y.into_shape_with_order((n, co, g.out_height, g.out_width))
            .expect("output shape")
    }

    /// `∂W` partials (one per worker) and, when `want_dx`, `∂x` into `dx`, image by image in
    /// bands of output rows.
    fn backward_per_image(
        &self,
        grad: &Array3<f32>,
        input: Option<&[f32]>,
        g: &ConvGeometry,
        mut dx: ArrayViewMut2<'_, f32>,
        want_dx: bool,
    ) -> Vec<Option<Array2<f32>>> {
        let (n, co) = (grad.shape()[0], self.out_channels());
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let w = self.weight_matrix();
        let per_in = g.channels * g.height * g.width;
        let band = tile_rows(g);
        let tiles: Vec<Range<usize>> = (0..g.out_height)
            .step_by(band.max(1))
            .map(|r| r..(r + band).min(g.out_height))
            .collect();
        // One job per image: the tiles of an image overlap in ∂x, so they run in turn.
        let mut dx_rows = dx.axis_iter_mut(Axis(0));
        let jobs: Vec<_> = (0..n)
            .map(|i| (i, if want_dx { dx_rows.next() } else { None }))
            .collect();
        let run = |state: &mut Partial,
                   (i, dxi): (usize, Option<ndarray::ArrayViewMut1<'_, f32>>),
                   threads| {
            let gi = grad.index_axis(Axis(0), i);
            let mut dxi = dxi.map(|d| d.into_slice().expect("contiguous row"));
            for tile in &tiles {
                let gt = gi.slice(s![.., tile.start * g.out_width..tile.end * g.out_width]);
                if let Some(xs) = input {
                    let xi = &xs[i * per_in..(i + 1) * per_in];
                    let col = columns(xi, g, tile.clone(), &mut state.buf);
                    let dw = state.dw.get_or_insert_with(|| Array2::zeros((co, rows)));
                    matmul(gt, col.t(), dw.view_mut(), true, threads);
                }
                if let Some(dxi) = dxi.as_deref_mut() {
                    let tc = gt.ncols();
                    if g.is_identity() {
                        let mut dxv =
                            ArrayViewMut2::from_shape((rows, cols), dxi).expect("dx shape");
                        let dxt =
                            dxv.slice_mut(s![.., tile.start * g.out_width..tile.end * g.out_width]);
                        matmul(w.t(), gt, dxt, false, threads);
                    } else {
                        let dcol = state.buf.get(rows * tc);
                        matmul(
                            w.t(),
                            gt,
                            ArrayViewMut2::from_shape((rows, tc), &mut *dcol).expect("tile shape"),
                            false,
                            threads,
                        );
                        col2im_rows(dcol, g, tile.clone(), dxi);
                    }
                }
            }
        };
        // Few, large chunks: every chunk keeps a partial `∂W`.
        let per = n.div_ceil(rayon::current_num_threads());
        run_jobs(jobs, per, run)
            .into_iter()
            .map(|p: Partial| p.dw)
            .collect()
    }

    /// `∂x` for small outputs, `group` images per product: `∂col = Wᵀ·G` with the gradients `G`
    /// `[C_out, group·OH·OW]` of the group's images side by side, then col2im per image.
    fn input_grad_grouped(
        &self,
        grad: &Array3<f32>,
        g: &ConvGeometry,
        mut dx: ArrayViewMut2<'_, f32>,
        group: usize,
    ) {
        let (rows, p) = (g.col_rows(), g.col_cols());
        let w = self.weight_matrix();
        let jobs: Vec<_> = dx
            .axis_chunks_iter_mut(Axis(0), group)
            .enumerate()
            .map(|(j, chunk)| (j * group, chunk))
            .collect();
        let run = |bufs: &mut GroupBuffers,
                   (first, mut dxc): (usize, ArrayViewMut2<'_, f32>),
                   threads| {
            let images = first..first + dxc.shape()[0];
            let width = images.len() * p;
            let gb = group_gradients(grad, images, &mut bufs.out);
            let mut dcol = ArrayViewMut2::from_shape((rows, width), bufs.col.get(rows * width))
                .expect("group shape");
            matmul(w.t(), gb, dcol.view_mut(), false, threads);
            for (j, mut dxi) in dxc.outer_iter_mut().enumerate() {
                let block = dcol.slice(s![.., j * p..(j + 1) * p]);
                let dxi = dxi.as_slice_mut().expect("contiguous row");
                if g.is_identity() {
                    ArrayViewMut2::from_shape((rows, p), dxi)
                        .expect("dx shape")
                        .assign(&block);
                } else {
                    let contiguous = bufs.scratch.get(rows * p);
                    ArrayViewMut2::from_shape((rows, p), &mut *contiguous)
                        .expect("block shape")
                        .assign(&block);
                    col2im_rows(contiguous, g, 0..g.out_height, dxi);
                }
            }
        };
        run_jobs(jobs, 1, run);
    }

    /// `∂W = G·colᵀ` for small outputs over the whole batch at once: the gradients `G`
    /// `[C_out, N·OH·OW]` of all images side by side, and the weight's columns split by input
    /// channel into pieces (a multiple of the thread count, each piece's columns at most
    /// [`WIDE_PIECE_BYTES`]), each piece one product with the batch as its inner dimension. No
    /// partial sums: every piece owns its columns of `∂W`.
    fn weight_grad_wide(&self, grad: &Array3<f32>, xs: &[f32], g: &ConvGeometry) -> Array2<f32> {
        let (n, co, p) = grad.dim();
        let width = n * p;
        let mut buf = Scratch::default();
        let gall = group_gradients(grad, 0..n, &mut buf);
        let k2 = g.kernel * g.kernel;
        let per_channel = k2 * width * std::mem::size_of::<f32>();
        let threads = rayon::current_num_threads().max(1);
        let pieces = g
            .channels
            .div_ceil((WIDE_PIECE_BYTES / per_channel.max(1)).max(1))
            .div_ceil(threads)
            * threads;
        let per_piece = g.channels.div_ceil(pieces.min(g.channels).max(1));
        // Every piece's columns are written by its product.
        let mut dw: Array2<f32> = recycle::take_array((co, g.col_rows()));
        let jobs: Vec<_> = dw
            .axis_chunks_iter_mut(Axis(1), per_piece * k2)
            .enumerate()
            .collect();
        run_jobs(
            jobs,
            1,
            |col: &mut Scratch, (j, dwp): (usize, ArrayViewMut2<'_, f32>), threads| {
                let channels = j * per_piece..(j * per_piece + dwp.ncols() / k2);
                let col = group_columns(xs, g, 0..n, channels, col);
                matmul(gall, col.t(), dwp, false, threads);
            },
        );
        dw
    }

    /// Whether a convolution of `n` images with this layer's kernel, from `c_in` to `c_out`
    /// channels, to an `oh`×`ow` output, takes Winograd, in a `training` pass or not (see
    /// [`winograd_pays`]).
    fn takes_winograd(
        &self,
        n: usize,
        (c_in, c_out): (usize, usize),
        (oh, ow): (usize, usize),
        training: bool,
    ) -> bool {
        if self.kernel() != 3 || self.stride != 1 || n * oh * ow == 0 {
            return false;
        }
        match algorithm() {
            Algorithm::Im2col => false,
            Algorithm::Winograd => true,
            Algorithm::Auto => winograd_pays(n, (c_in, c_out), (oh, ow), training),
        }
    }

    /// The Winograd-domain weights, rebuilt (in place) when the weight's values changed since
    /// they were built.
    fn winograd_weights(&mut self) -> &WinogradWeights {
        self.refresh_winograd();
        &self.winograd.as_ref().expect("built above").1
    }

    /// Builds or rebuilds the Winograd-domain weights when the weight's values changed since
    /// they were built.
    fn refresh_winograd(&mut self) {
        let key = self.weight.version();
        let w = self
            .weight
            .value()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        match &mut self.winograd {
            Some((k, _)) if *k == key => {}
            Some((k, u)) => {
                u.set(w);
                *k = key;
            }
            None => self.winograd = Some((key, WinogradWeights::new(w))),
        }
    }

    /// What a Winograd backward pass borrows from the layer, side by side: the Winograd-domain
    /// weights (current, as [`Conv2d::winograd_weights`]) when `dx`, and the weight's gradient
    /// memory for `∂W` to be written into when `dw`.
    fn winograd_backward_parts(
        &mut self,
        dx: bool,
        dw: bool,
    ) -> (Option<&WinogradWeights>, Option<GradInto<'_>>) {
        if dx {
            self.refresh_winograd();
        }
        let Conv2d {
            winograd, weight, ..
        } = self;
        let u = dx.then(|| &winograd.as_ref().expect("refreshed above").1);
        let into = dw.then(|| {
            let (buf, accumulate) = weight.grad_mut();
            let buf = buf.into_dimensionality().expect("4-D weight");
            GradInto { buf, accumulate }
        });
        (u, into)
    }
}

/// Which kernel 3×3, stride-1 convolutions take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// Winograd where [`winograd_pays`], im2col + GEMM elsewhere.
    Auto,
    /// im2col + GEMM everywhere.
    Im2col,
    /// Winograd for every 3×3, stride-1 convolution.
    Winograd,
}

/// The `TL_CONV` environment variable (`im2col` or `winograd`; anything else, or unset, is
/// [`Algorithm::Auto`]), read on first use and kept for the life of the process. Meant for
/// benchmarks and for checking one path against the other.
fn algorithm() -> Algorithm {
    static ALGORITHM: OnceLock<Algorithm> = OnceLock::new();
    *ALGORITHM.get_or_init(|| match std::env::var("TL_CONV").as_deref() {
        Ok("im2col") => Algorithm::Im2col,
        Ok("winograd") => Algorithm::Winograd,
        _ => Algorithm::Auto,
    })
}

/// Whether Winograd F(4×4, 3×3) pays over im2col + GEMM for `n` images from `c_in` to `c_out`
/// channels to an `oh`×`ow` output, in a `training` pass (a tracked pass of a trainable weight,
/// whose transform is then rebuilt after every optimizer step) or another (inference, a frozen
/// weight, a validation pass: the transform is built once per weight value).
///
/// Its products shrink 4× but its transforms cost per tile and channel, so it needs channels:
/// `h = C_in·C_out/(C_in + C_out)` (the transforms' share of the work goes as `1/h`) of at least
/// 16, and enough 4×4 output tiles (over the batch) for the products to run wide. At `h ≥ 32`
/// (64 channels and up): 12 tiles, 24 in training. Measured on the Zen 3 part, 2 threads, against
/// im2col, C_in = C_out = 64 to 512 on 7×7 to 14×14 maps, batch 1 to 12 (medians of 12, two
/// alternations): inference at 4 tiles 0.6–1.2×, 8 tiles 1.0–1.7×, 12 tiles 1.1–2.0×, 16 tiles
/// 0.9–1.9×, from 24 tiles 1.2–2.5×; a training step (forward, `∂x` and `∂W`, one rebuild) at 16
/// tiles 0.7–1.4×, 24 tiles 1.0–1.4×, 32 tiles 1.1–1.9×, 48 tiles 1.8–2.0×. At `16 ≤ h < 32`:
/// 48 tiles, 64 in training (earlier, on the Zen 4 part: 32 channels 1.0–1.2× at 32 tiles and
/// 1.3–1.8× from 49; 16 channels 0.9–2×).
pub fn winograd_pays(
    n: usize,
    (c_in, c_out): (usize, usize),
    (oh, ow): (usize, usize),
    training: bool,
) -> bool {
    let tiles = n * oh.div_ceil(4) * ow.div_ceil(4);
    let h = c_in * c_out / (c_in + c_out).max(1);
    let min_tiles = match (h, training) {
        (32.., false) => 12,
        (32.., true) => 24,
        (16.., false) => 48,
        (16.., true) => 64,
        _ => return false,
    };
    tiles >= min_tiles
}

/// The Winograd-domain weights (4× the weight's size, built on first use) with the
/// [`Param::version`] of the weight they were built from.
type WinogradCache = Option<(u64, WinogradWeights)>;

/// Target size of one tile of the column matrix: small enough that im2col writes it into the
/// core's L2 cache (512 KB on Zen 3) and the product's packing reads it from there. With 2 MB
/// tiles (L3), ResNet-18's 7×7/2 stem ran 1.3–1.6× slower (16 images: 94 against 73 ms) and
/// VGG16's first convolution 1.1× slower.
pub const TILE_BYTES: usize = 384 << 10;

/// Most bytes of the column matrix in one piece of [`Conv2d::weight_grad_wide`].
const WIDE_PIECE_BYTES: usize = 8 << 20;

/// A tile spans at least this many columns (output positions), so the product stays wide.
const MIN_TILE_COLS: usize = 256;

/// Output rows per tile: about [`TILE_BYTES`] of columns, at least [`MIN_TILE_COLS`] columns,
/// balanced so that the tiles of an image are of (nearly) equal height.
fn tile_rows(g: &ConvGeometry) -> usize {
    let (oh, ow) = (g.out_height.max(1), g.out_width.max(1));
    let by_bytes = TILE_BYTES / (g.col_rows() * ow * 4).max(1);
    let rows = by_bytes.max(MIN_TILE_COLS.div_ceil(ow)).clamp(1, oh);
    oh.div_ceil(oh.div_ceil(rows))
}

/// Images whose columns go side by side into one product: 1 when an image has at least
/// [`MIN_TILE_COLS`] output positions (`p`), otherwise enough images to reach that width, and
/// then as many more as make the number of groups a multiple of the thread count (so that
/// groups can run one per thread).
fn images_per_group(n: usize, p: usize) -> usize {
    if p >= MIN_TILE_COLS || n < 2 || p == 0 {
        return 1;
    }
    let group = MIN_TILE_COLS.div_ceil(p).min(n);
    let groups = n.div_ceil(group);
    let threads = rayon::current_num_threads().max(1);
    if groups > threads {
        n.div_ceil(groups / threads * threads)
    } else {
        group
    }
}

/// Scratch buffers of one worker of the grouped paths.
#[derive(Default)]
struct GroupBuffers {
    /// One image's block of the column gradient, contiguous for col2im.
    scratch: Scratch,
    /// The group's column matrix `[C·k·k, group·OH·OW]` (or, backward, its gradient).
    col: Scratch,
    /// The group's output `[C_out, group·OH·OW]` (or, backward, the gathered gradient).
    out: Scratch,
}

/// The column matrices of `images` (channels `channels` of each), side by side:
/// `[channels·k·k, images·OH·OW]` in `buf`.
fn group_columns<'a>(
    xs: &[f32],
    g: &ConvGeometry,
    images: Range<usize>,
    channels: Range<usize>,
    buf: &'a mut Scratch,
) -> ArrayView2<'a, f32> {
    let p = g.col_cols();
    let plane = g.height * g.width;
    let per_in = g.channels * plane;
    let sub = ConvGeometry::new(
        channels.len(),
        g.height,
        g.width,
        g.kernel,
        g.stride,
        g.padding,
    );
    let (k, width) = (sub.col_rows(), images.len() * p);
    // Every value is written: each image fills its columns of every row.
    let buf = buf.get(k * width);
    for (j, i) in images.enumerate() {
        let x = &xs[i * per_in + channels.start * plane..i * per_in + channels.end * plane];
        im2col_rows_into(x, &sub, 0..g.out_height, &mut buf[j * p..], width);
    }
    ArrayView2::from_shape((k, width), &*buf).expect("group shape")
}

/// The output gradients of `images` (`grad` `[N, C_out, OH·OW]`), side by side:
/// `[C_out, images·OH·OW]` in `buf`.
fn group_gradients<'a>(
    grad: &Array3<f32>,
    images: Range<usize>,
    buf: &'a mut Scratch,
) -> ArrayView2<'a, f32> {
    let (co, p) = (grad.shape()[1], grad.shape()[2]);
    let width = images.len() * p;
    let buf = buf.get(co * width);
    let mut dst = ArrayViewMut2::from_shape((co, width), &mut *buf).expect("group shape");
    for (j, i) in images.enumerate() {
        dst.slice_mut(s![.., j * p..(j + 1) * p])
            .assign(&grad.index_axis(Axis(0), i));
    }
    ArrayView2::from_shape((co, width), &*buf).expect("group shape")
}

/// Whether `jobs` independent jobs should run in parallel (each product on one thread) rather
/// than in turn (each product split across threads): when every thread gets the same number of
/// jobs, or so many that the imbalance is small.
fn parallel_jobs(jobs: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && jobs >= threads && (jobs.is_multiple_of(threads) || jobs >= 4 * threads)
}

/// The column matrix of output rows `rows` of image `xi`: `xi` itself (as a view of the tile's
/// columns) for a 1×1, stride-1, unpadded kernel, otherwise built into `buf`.
fn columns<'a>(
    xi: &'a [f32],
    g: &ConvGeometry,
    rows: Range<usize>,
    buf: &'a mut Scratch,
) -> ArrayView2<'a, f32> {
    let (k, ow) = (g.col_rows(), g.out_width);
    let cols = ow * rows.len();
    if g.is_identity() {
        ArrayView2::from_shape((k, g.col_cols()), xi)
            .expect("image shape")
            .slice_move(s![.., rows.start * ow..rows.end * ow])
    } else {
        // Every value is written by im2col.
        let buf = buf.get(k * cols);
        im2col_rows(xi, g, rows, buf);
        ArrayView2::from_shape((k, cols), &*buf).expect("tile shape")
    }
}

/// Per-worker state of the backward pass: a column buffer and a partial `∂W`.
#[derive(Default)]
struct Partial {
    buf: Scratch,
    dw: Option<Array2<f32>>,
}

/// Runs `jobs`, each as `run(state, job, threads)`: in parallel ([`parallel_jobs`]), in chunks
/// of at least `min_len` jobs, each worker with its own state and each product on one thread;
/// otherwise in turn on one state, each product split across the pool. Returns the states.
fn run_jobs<J: Send, S: Default + Send>(
    jobs: Vec<J>,
    min_len: usize,
    run: impl Fn(&mut S, J, Threads) + Sync,
) -> Vec<S> {
    if parallel_jobs(jobs.len()) {
        jobs.into_par_iter()
            .with_min_len(min_len.max(1))
            .fold(S::default, |mut state, job| {
                run(&mut state, job, Threads::One);
                state
            })
            .collect()
    } else {
        let mut state = S::default();
        for job in jobs {
            run(&mut state, job, Threads::Pool);
        }
        vec![state]
    }
}

impl Conv2d {
    /// The forward pass, its output through the bias and then, when `then` is given, a per-channel
    /// `(scale, shift, relu)` in the same output pass.
    ///
    /// # Panics
    /// Panics if `then` is given for a pass that keeps a cache for backward (the output would not
    /// be this layer's).
    fn forward_epilogue(
        &mut self,
        x: ArrayD<f32>,
        ctx: &mut Context<'_>,
        then: Option<(&[f32], &[f32], bool)>,
    ) -> ArrayD<f32> {
        let x = into_standard(
            x.into_dimensionality::<Ix4>()
                .expect("Conv2d expects [N, C, H, W]"),
        );
        let g = self.geometry(x.shape());
        let (n, co) = (x.shape()[0], self.out_channels());
        let track = ctx.tracks(self.has_trainable());
        assert!(
            then.is_none() || !track,
            "Conv2d: an output pass with a folded map cannot be tracked for backward"
        );
        let mut epilogue = Epilogue::bias(
            self.bias
                .as_ref()
                .map(|b| b.value().iter().copied().collect()),
        );
        if let Some((scale, shift, relu)) = then {
            epilogue = epilogue.then_affine(scale, shift, relu);
        }
        let wants_dw = track && self.weight.trainable();
        // A pass that computes ∂W is a training pass: its weight changes after it.
        let winograd =
            self.takes_winograd(n, (g.channels, co), (g.out_height, g.out_width), wants_dw);
        let (y, tiles) = if winograd {
            let padding = self.padding;
            let keep =
                wants_dw && weight_grad_pays(n, (g.channels, co), (g.out_height, g.out_width));
            conv3x3_keeping(x.view(), self.winograd_weights(), &epilogue, padding, keep)
        } else {
            (self.forward_im2col(&x, &g, &epilogue), None)
        };
        let input_shape = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
        // ∂W needs the input (unless its tiles were kept); otherwise its memory goes back to the
        // pool.
        let input = if wants_dw && tiles.is_none() {
            Some(x)
        } else {
            recycle::give_array(x);
            None
        };
        self.cache = track.then_some(Cache {
            input_shape,
            input,
            tiles,
            input_grad: ctx.input_grad,
            winograd,
        });
        y.into_dyn()
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        self.forward_epilogue(x, ctx, None)
    }

    fn forward_then(
        &mut self,
        x: ArrayD<f32>,
        ctx: &mut Context<'_>,
        (scale, shift): (&[f32], &[f32]),
        relu: bool,
    ) -> Result<ArrayD<f32>, ArrayD<f32>> {
        Ok(self.forward_epilogue(x, ctx, Some((scale, shift, relu))))
    }

    fn backward(&mut self, grad: ArrayD<f32>) -> Option<ArrayD<f32>> {
        let cache = self.cache.take().expect(NO_FORWARD);
        let grad = into_standard(
            grad.into_dimensionality::<Ix4>()
                .expect("Conv2d gradient is [N, C_out, OH, OW]"),
        );
        let g = self.geometry(&cache.input_shape);
        let (n, co) = (cache.input_shape[0], self.out_channels());
        let (rows, cols) = (g.col_rows(), g.col_cols());
        assert_eq!(
            grad.shape(),
            &[n, co, g.out_height, g.out_width],
            "Conv2d: gradient shape"
        );
        let grad = grad
            .into_shape_with_order((n, co, cols))
            .expect("standard layout");
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            let db = grad.sum_axis(Axis(2)).sum_axis(Axis(0));
            b.accumulate_grad(db.into_dyn().view());
        }
        let per_in = g.channels * g.height * g.width;
        // Backward by Winograd where the forward pass took it: ∂x always, ∂W where it fits.
        let winograd = cache.winograd;
        // What Winograd's ∂W comes from (the forward pass's tiles or input), where it takes ∂W.
        let from = match (cache.tiles, &cache.input) {
            (Some(tiles), _) => Some(WeightGradFrom::Tiles(tiles)),
            (None, input) => input.as_ref().map(|x| WeightGradFrom::Input(x.view())),
        }
        .filter(|_| winograd && weight_grad_pays(n, (g.channels, co), (g.out_height, g.out_width)));
        let dw_by_winograd = from.is_some();
        // ∂W by Winograd goes straight into the weight's gradient.
        let dw_written = dw_by_winograd && self.weight.trainable();
        let (winograd_dx, winograd_dw) = if winograd && (cache.input_grad || dw_by_winograd) {
            let gy = grad
                .view()
                .into_shape_with_order((n, co, g.out_height, g.out_width))
                .expect("standard layout");
            let input_size = (g.height, g.width);
            let padding = self.padding;
            // ∂W straight into the gradient's memory: no fresh array, no copy.
            let (input_grad, into) = self.winograd_backward_parts(cache.input_grad, dw_written);
            let wanted = Wanted {
                input_grad,
                weight_grad: from.map(|from| WeightGrad { from, into }),
            };
            conv3x3_backward(gy, input_size, padding, wanted)
        } else {
            (None, None)
        };
        // What Winograd did not compute goes through im2col.
        let input = (cache.input.as_ref())
            .filter(|_| !dw_by_winograd)
            .map(|x| x.as_slice().expect("standard layout"));
        let want_dx = cache.input_grad && winograd_dx.is_none();
        let mut dx = Array2::<f32>::zeros((if want_dx { n } else { 0 }, per_in));
        let winograd_dw = winograd_dw.map(|dw| dw.into_shape_with_order((co, rows)).expect("∂W"));
        let group = images_per_group(n, cols);
        let mut partials = if group > 1 {
            if want_dx {
                self.input_grad_grouped(&grad, &g, dx.view_mut(), group);
            }
            vec![input.map(|xs| self.weight_grad_wide(&grad, xs, &g))]
        } else if input.is_some() || want_dx {
            self.backward_per_image(&grad, input, &g, dx.view_mut(), want_dx)
        } else {
            Vec::new()
        };
        partials.push(winograd_dw);
        if self.weight.trainable() && !dw_written {
            let mut total: Option<Array2<f32>> = None;
            for dw in partials.into_iter().flatten() {
                match &mut total {
                    Some(t) => *t += &dw,
                    None => total = Some(dw),
                }
            }
            let total = total.unwrap_or_else(|| Array2::zeros((co, rows)));
            let total = total
                .into_shape_with_order(self.weight.shape().to_vec())
                .expect("weight shape");
            self.weight.accumulate_grad(total.view());
            recycle::give_array(total);
        }
        // The gradient and the kept input are used up: their memory goes back to the pool.
        recycle::give_array(grad);
        if let Some(x) = cache.input {
            recycle::give_array(x);
        }
        if let Some(dx) = winograd_dx {
            return Some(dx.into_dyn());
        }
        want_dx.then(|| {
            dx.into_shape_with_order(cache.input_shape.to_vec())
                .expect("dx shape")
                .into_dyn()
        })
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
        visit_weight_bias(prefix, &self.weight, self.bias.as_ref(), f);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        visit_weight_bias_mut(prefix, &mut self.weight, self.bias.as_mut(), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Direct convolution in f64: `y`, and for upstream `gy`, `∂x`, `∂W`, `∂b`.
    fn direct(
        x: &Array4<f32>,
        w: &Array4<f32>,
        gy: &Array4<f32>,
        s: usize,
        p: usize,
    ) -> (Array4<f64>, Array4<f64>, Array4<f64>, Vec<f64>) {
        let (n, c, h, wd) = x.dim();
        let (co, _, k, _) = w.dim();
        let (_, _, oh, ow) = gy.dim();
        let mut y = Array4::<f64>::zeros((n, co, oh, ow));
        let mut dx = Array4::<f64>::zeros((n, c, h, wd));
        let mut dw = Array4::<f64>::zeros((co, c, k, k));
        let mut db = vec![0.0; co];
        for ((i, o, oy, ox), yv) in y.indexed_iter_mut() {
            let g = gy[[i, o, oy, ox]] as f64;
            db[o] += g;
            for ci in 0..c {
                for ki in 0..k {
                    for kj in 0..k {
                        let iy = (oy * s + ki) as isize - p as isize;
                        let ix = (ox * s + kj) as isize - p as isize;
                        if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                            continue;
                        }
                        let (iy, ix) = (iy as usize, ix as usize);
                        let (xv, wv) = (x[[i, ci, iy, ix]] as f64, w[[o, ci, ki, kj]] as f64);
                        *yv += wv * xv;
                        dx[[i, ci, iy, ix]] += wv * g;
                        dw[[o, ci, ki, kj]] += xv * g;
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    /// Each value within `1e-4` absolute plus `1e-4` relative, plus `1e-5` of the largest
    /// reference value: Winograd's error scales with the largest value of what it sums (measured
    /// up to 8e-6 of it against f64, `tensor::winograd`'s tests), which matters for `∂W`, whose
    /// values here reach 65.
    fn close(what: &str, got: &[f32], want: impl Iterator<Item = f64>) {
        let want: Vec<f64> = want.collect();
        assert_eq!(got.len(), want.len(), "{what}: length");
        let largest = want.iter().fold(0.0f64, |a, w| a.max(w.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs() + 1e-5 * largest,
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn tiled_and_parallel_paths_match_a_direct_convolution() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case @ (n, c, side, k, s, p) in [
            (2, 64, 40, 3, 1, 1),
            (1, 64, 40, 3, 1, 1),
            (3, 64, 90, 3, 2, 1),
            (2, 1024, 32, 1, 1, 0),
        ] {
            let g = ConvGeometry::new(c, side, side, k, s, p);
            assert!(tile_rows(&g) < g.out_height, "several tiles per image");
            assert_eq!(images_per_group(n, g.col_cols()), 1);
            assert_matches_direct(&mut rng, case);
        }
    }

    /// Small outputs: several images' columns in one product (uneven last group, 1×1 kernels
    /// read straight from the input, strided and padded kernels).
    #[test]
    fn grouped_images_match_a_direct_convolution() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case @ (n, c, side, k, s, p) in [
            (7, 16, 7, 3, 1, 1),
            (5, 32, 6, 1, 1, 0),
            (9, 8, 9, 3, 2, 1),
            (4, 8, 4, 1, 2, 0),
            // ∂W in pieces of uneven channel counts (5 = 3 + 2) and in more pieces than
            // threads (about 15 channels' columns fill a piece at this width).
            (6, 5, 5, 3, 1, 1),
            (64, 40, 15, 3, 1, 1),
        ] {
            let g = ConvGeometry::new(c, side, side, k, s, p);
            assert!(images_per_group(n, g.col_cols()) > 1, "grouped: {case:?}");
            assert_matches_direct(&mut rng, case);
        }
    }

    /// Forward, `∂x`, `∂W` and `∂b` of a random layer (3 output channels) on `n` random images
    /// against [`direct`].
    fn assert_matches_direct(
        rng: &mut rand_chacha::ChaCha8Rng,
        (n, c, side, k, s, p): (usize, usize, usize, usize, usize, usize),
    ) {
        let mut conv = Conv2d::new(c, 3, k, s, p, true, rng);
        assert_layer_matches_direct(&mut conv, rng, n, side);
    }

    /// Forward, `∂x`, `∂W` and `∂b` of `conv` (with a bias) on `n` random `side`×`side` images
    /// against [`direct`].
    fn assert_layer_matches_direct(
        conv: &mut Conv2d,
        rng: &mut rand_chacha::ChaCha8Rng,
        n: usize,
        side: usize,
    ) {
        let (c, co) = (conv.in_channels(), conv.out_channels());
        let g = conv.geometry(&[n, c, side, side]);
        let x = uniform(rng, &[n, c, side, side], 1.0)
            .into_dimensionality::<Ix4>()
            .expect("4-D");
        let gy = uniform(rng, &[n, co, g.out_height, g.out_width], 1.0)
            .into_dimensionality::<Ix4>()
            .expect("4-D");
        let mut ctx = Context::train(rng);
        ctx.input_grad = true;
        let y = conv.forward(x.clone().into_dyn(), &mut ctx);
        let dx = conv
            .backward(gy.clone().into_dyn())
            .expect("input gradient");
        let w = conv
            .weight
            .value()
            .to_owned()
            .into_dimensionality::<Ix4>()
            .expect("4-D");
        let (ry, rdx, rdw, rdb) = direct(&x, &w, &gy, conv.stride, conv.padding);
        let bias: Vec<f64> = conv
            .bias
            .as_ref()
            .expect("bias")
            .value()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let per = g.col_cols();
        close(
            "y",
            y.as_slice().expect("contiguous"),
            ry.iter().enumerate().map(|(i, v)| v + bias[(i / per) % co]),
        );
        close(
            "dx",
            dx.as_slice().expect("contiguous"),
            rdx.iter().copied(),
        );
        close(
            "dW",
            conv.weight
                .grad
                .as_ref()
                .expect("dW")
                .as_slice()
                .expect("contiguous"),
            rdw.iter().copied(),
        );
        close(
            "db",
            conv.bias
                .as_ref()
                .expect("bias")
                .grad
                .as_ref()
                .expect("db")
                .as_slice()
                .expect("contiguous"),
            rdb.iter().copied(),
        );
    }

    /// A layer large enough to take Winograd forward and for `∂x` (unless `TL_CONV=im2col`),
    /// at paddings 1 and 0 (whose `∂x` has padding 2), against a direct convolution.
    #[test]
    fn winograd_path_matches_a_direct_convolution() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for (n, c, co, side, p) in [(2, 64, 96, 30, 1), (4, 64, 64, 23, 0)] {
            let mut conv = Conv2d::new(c, co, 3, 1, p, true, &mut rng);
            let g = conv.geometry(&[n, c, side, side]);
            let (oh, ow) = (g.out_height, g.out_width);
            if algorithm() != Algorithm::Im2col {
                assert!(conv.takes_winograd(n, (c, co), (oh, ow), true), "forward");
                assert!(weight_grad_pays(n, (c, co), (oh, ow)), "weight gradient");
            }
            assert_layer_matches_direct(&mut conv, &mut rng, n, side);
        }
    }

    /// Inference passes take Winograd from fewer tiles than training passes (whose
    /// Winograd-domain weights are rebuilt after every step); a training pass's backward follows
    /// its forward pass's choice, and both paths agree with each other and a direct convolution.
    #[test]
    fn inference_and_training_passes_choose_winograd_by_their_own_thresholds() {
        // 64 channels (h = 32) on 8×8 maps, four tiles per image: 12 tiles, 24 in training.
        assert!(!winograd_pays(2, (64, 64), (8, 8), false), "8 tiles");
        assert!(
            winograd_pays(3, (64, 64), (8, 8), false),
            "12 tiles, inference"
        );
        assert!(
            !winograd_pays(5, (64, 64), (8, 8), true),
            "20 tiles, training"
        );
        assert!(
            winograd_pays(6, (64, 64), (8, 8), true),
            "24 tiles, training"
        );
        // 32 channels (h = 16): 48 tiles, 64 in training; under h = 16 never.
        assert!(!winograd_pays(11, (32, 32), (8, 8), false));
        assert!(winograd_pays(12, (32, 32), (8, 8), false));
        assert!(!winograd_pays(15, (32, 32), (8, 8), true));
        assert!(winograd_pays(16, (32, 32), (8, 8), true));
        assert!(!winograd_pays(1000, (16, 32), (56, 56), false));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for (n, training_takes) in [(3, false), (6, true)] {
            let mut conv = Conv2d::new(64, 64, 3, 1, 1, true, &mut rng);
            let x = uniform(&mut rng, &[n, 64, 8, 8], 1.0);
            let inferred = conv.forward(x.clone(), &mut Context::eval(&mut rng));
            let mut ctx = Context::train(&mut rng);
            ctx.input_grad = true;
            let trained = conv.forward(x.clone(), &mut ctx);
            if algorithm() == Algorithm::Auto {
                assert!(conv.winograd.is_some(), "inference at {} tiles", 4 * n);
                let cache = conv.cache.as_ref().expect("a tracked pass");
                assert_eq!(
                    cache.winograd,
                    training_takes,
                    "training at {} tiles",
                    4 * n
                );
            }
            close(
                "inference against training",
                inferred.as_slice().expect("contiguous"),
                trained.iter().map(|&v| v as f64),
            );
            conv.backward(ArrayD::zeros(trained.shape()));
            assert_layer_matches_direct(&mut conv, &mut rng, n, 8);
        }
    }

    /// The cached Winograd weights follow the weight however it changes: in place, replaced,
    /// or through `visit_mut`, forward and for `∂x`.
    #[test]
    fn winograd_weights_are_rebuilt_when_the_weight_changes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, c, co, side) = (2, 64, 64, 32);
        let mut conv = Conv2d::new(c, co, 3, 1, 1, false, &mut rng);
        if algorithm() != Algorithm::Im2col {
            assert!(conv.takes_winograd(n, (c, co), (side, side), true));
        }
        let x = uniform(&mut rng, &[n, c, side, side], 1.0);
        let gy = uniform(&mut rng, &[n, co, side, side], 1.0);
        let check = |conv: &mut Conv2d, rng: &mut rand_chacha::ChaCha8Rng, what: &str| {
            let mut ctx = Context::train(rng);
            ctx.input_grad = true;
            let y = conv.forward(x.clone(), &mut ctx);
            let dx = conv.backward(gy.clone()).expect("input gradient");
            let w = conv
                .weight
                .value()
                .to_owned()
                .into_dimensionality::<Ix4>()
                .expect("4-D");
            let x4 = x.clone().into_dimensionality::<Ix4>().expect("4-D");
            let g4 = gy.clone().into_dimensionality::<Ix4>().expect("4-D");
            let (ry, rdx, _, _) = direct(&x4, &w, &g4, 1, 1);
            close(what, y.as_slice().expect("contiguous"), ry.iter().copied());
            close(
                what,
                dx.as_slice().expect("contiguous"),
                rdx.iter().copied(),
            );
        };
        check(&mut conv, &mut rng, "initial");
        check(&mut conv, &mut rng, "cached");
        conv.weight.value_mut()[[3, 5, 1, 2]] += 0.5;
        check(&mut conv, &mut rng, "one value changed in place");
        conv.weight.set_trainable(false);
        let doubled = conv.weight.value().mapv(|v| 2.0 * v);
        conv.weight.set_value(doubled);
        check(&mut conv, &mut rng, "replaced, frozen");
        conv.visit_mut("", &mut |_, p| p.value_mut().mapv_inplace(|v| -v));
        check(&mut conv, &mut rng, "negated through visit_mut");
    }
}
