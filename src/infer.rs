//! Batched inference over image files: decoding and preprocessing run on a background thread (in
//! parallel across a batch) one batch ahead of the compute.
//!
//! Within a batch, the leading layers on large maps (inputs of at least [`MICRO_POSITIONS`]
//! positions per channel) run on micro-batches (`Plan::micro`: as many images as keep their
//! largest map near a byte budget — [`MICRO_BYTES`], or [`PREFIX_MICRO_BYTES`] for a fine-tuning
//! run's frozen prefix — at least as many as there are threads), and the layers after
//! them (small maps, flatten, the fully connected layers) on the whole batch at once.
//! Rows are independent in eval mode, so the result is the same as one pass over the batch; the
//! peak memory is that of a micro-batch's large activations and im2col buffers, while the small
//! maps' convolutions still run wide (their products and Winograd blocks need many images to
//! fill), and VGG16's large fc6/fc7 weights are read once per batch.

use std::path::PathBuf;
use std::sync::mpsc;

use ndarray::{Array2, ArrayD, Axis, Ix2, Slice};
use rayon::prelude::*;

use crate::data::{stack, Preprocess};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Context;

/// Runs `model` up to `stage` (a canonical stage name, see [`Model::resolve_stage`]) on every image
/// in `paths`, `batch_size` at a time, and returns one flattened row per image, in order.
/// `progress(done)` is called after each batch with the number of images done so far.
///
/// # Errors
/// [`Error::Image`] naming the first file that does not decode.
pub fn run_stage(
    model: &mut Model,
    paths: &[PathBuf],
    preprocess: Preprocess,
    batch_size: usize,
    stage: &str,
    progress: &mut dyn FnMut(usize),
) -> Result<Array2<f32>> {
    let batch_size = batch_size.max(1);
    let chunks: Vec<Vec<PathBuf>> = paths.chunks(batch_size).map(|c| c.to_vec()).collect();
    let (tx, rx) = mpsc::sync_channel::<Result<ArrayD<f32>>>(1);
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            let images: Result<Vec<_>> = chunk.par_iter().map(|p| preprocess.load(p)).collect();
            let batch = images.map(|imgs| stack(&imgs).into_dyn());
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    });
    let mut rows: Vec<Array2<f32>> = Vec::new();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut done = 0;
    let mut cached_plan = None;
    for batch in rx {
        let batch = batch?;
        let n = batch.shape()[0];
        let plan = *cached_plan.get_or_insert_with(|| Plan::new(model, stage, batch.shape()));
        let mut ctx = Context::eval(&mut rng);
        let out = plan.forward(model, batch, &mut ctx);
        rows.push(flatten_rows(out));
        done += n;
        progress(done);
    }
    producer
        .join()
        .map_err(|_| Error::config("decoder", "the image decoding thread failed"))?;
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    if views.is_empty() {
        return Ok(Array2::zeros((0, 0)));
    }
    Ok(ndarray::concatenate(Axis(0), &views).expect("rows of one width"))
}

/// A layer whose input has at least this many positions per channel (32×32) runs per
/// micro-batch when it leads the network.
pub const MICRO_POSITIONS: usize = 32 * 32;

/// About the most bytes the largest map of the micro-batched layers may take across a micro-batch.
/// With 24 MB, VGG16 (12.8 MB maps per image at 224×224) runs two images at a time, which bounds its
/// peak memory; ResNet-18 (3.2 MB after its stem) six: its frozen prefix on 16 images took 8–10%
/// longer in micro-batches of two (in-process, alternated: 379–402 ms against 340–369 for 6 to 16
/// images, which are within noise of each other).
pub const MICRO_BYTES: usize = 24 << 20;

/// [`MICRO_BYTES`] for [`forward_units`] (the frozen prefix of a fine-tuning run, over batches of
/// the training batch size): ResNet-18's prefix then runs a batch of 16 whole, which measured
/// 3–5% faster than in micro-batches of six (in-process, alternated, 16 to 40 passes each: medians
/// 295–337 ms against 324–343); VGG16's in micro-batches of four (two or four: within noise).
pub const PREFIX_MICRO_BYTES: usize = 64 << 20;

/// Where a forward pass up to a stage splits: layers `0..split` (the leading ones whose inputs
/// are `[N, C, H, W]` maps of at least [`MICRO_POSITIONS`] positions) run per micro-batch, layers
/// `split..end` on the whole batch.
#[derive(Clone, Copy, Debug)]
struct Plan {
    split: usize,
    end: usize,
    /// Images per micro-batch: as many as keep the largest map of layers `0..split` within
    /// [`MICRO_BYTES`], rounded down to a multiple of the thread count and at least the thread count.
    micro: usize,
}

impl Plan {
    /// The plan for `stage` (a canonical stage name) on inputs of `shape` `[N, 3, H, W]`.
    fn new(model: &Model, stage: &str, shape: &[usize]) -> Plan {
        Plan::units(model, stage_end(model, stage), shape, MICRO_BYTES)
    }

    /// The plan for units `0..end` on inputs of `shape` `[N, 3, H, W]`, micro-batches keeping the
    /// largest map within `budget` bytes.
    fn units(model: &Model, end: usize, shape: &[usize], budget: usize) -> Plan {
        let mut split = 0;
        let mut out = vec![1, shape[1], shape[2], shape[3]];
        let mut leading = true;
        // Values per image of the largest map of the leading layers (inputs and outputs).
        let mut largest = out.iter().product::<usize>();
        for (i, (_, layer)) in model.net().layers().take(end).enumerate() {
            leading &= out.len() == 4 && out[2] * out[3] >= MICRO_POSITIONS;
            out = layer.output_shape(&out);
            leading &= out.len() == 4;
            if leading {
                split = i + 1;
                largest = largest.max(out.iter().product());
            }
        }
        let threads = rayon::current_num_threads().max(1);
        let fit = budget / (largest * std::mem::size_of::<f32>()).max(1);
        let micro = (fit / threads * threads).max(threads);
        Plan { split, end, micro }
    }

    /// `model` up to the plan's stage on `x`, the trunk [`Plan::micro`] images at a time.
    fn forward(self, model: &mut Model, x: ArrayD<f32>, ctx: &mut Context<'_>) -> ArrayD<f32> {
        let (n, micro) = (x.shape()[0], self.micro);
        let net = model.net_mut();
        if n <= micro || self.split == 0 {
            return net.forward_range(x, ctx, 0..self.end);
        }
        let parts: Vec<ArrayD<f32>> = (0..n)
            .step_by(micro)
            .map(|i| {
                let xi = x.slice_axis(Axis(0), Slice::from(i..(i + micro).min(n)));
                net.forward_range(xi.to_owned(), ctx, 0..self.split)
            })
            .collect();
        drop(x);
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let trunk = ndarray::concatenate(Axis(0), &views).expect("micro-batches of one shape");
        drop(parts);
        net.forward_range(trunk, ctx, self.split..self.end)
    }
}

/// Inference on a batch already in memory (`[N, 3, S, S]`, preprocessed): the output of `stage`,
/// one flattened row per image. Eval mode; nothing is kept for a backward pass.
/// The convolutional trunk runs in micro-batches, as in [`run_stage`].
pub fn forward_stage(model: &mut Model, batch: ndarray::Array4<f32>, stage: &str) -> Array2<f32> {
    let end = stage_end(model, stage);
    flatten_rows(forward_units(model, batch.into_dyn(), end))
}

/// The number of units up to and including `stage`'s last (0 for a stage the model lacks).
fn stage_end(model: &Model, stage: &str) -> usize {
    model
        .unit_stages()
        .iter()
        .rposition(|s| s == stage)
        .map_or(0, |last| last + 1)
}

/// Units `0..end` of `model` on a batch already in memory (`[N, 3, S, S]`, preprocessed), in eval
/// mode with nothing kept for a backward pass: the frozen prefix of a fine-tuning run, whose
/// output the frozen-feature cache keeps. The trunk runs in micro-batches, as in [`run_stage`], of
/// [`PREFIX_MICRO_BYTES`].
pub fn forward_units(model: &mut Model, batch: ArrayD<f32>, end: usize) -> ArrayD<f32> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut ctx = Context::eval(&mut rng);
    let plan = Plan::units(model, end, batch.shape(), PREFIX_MICRO_BYTES);
    plan.forward(model, batch, &mut ctx)
}

/// `[N, …]` → `[N, prod(…)]` in C order.
pub fn flatten_rows(x: ArrayD<f32>) -> Array2<f32> {
    let n = x.shape()[0];
    let d: usize = x.shape()[1..].iter().product();
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, d))
        .expect("contiguous")
        .into_dimensionality::<Ix2>()
        .expect("2-D")
}

/// Softmax of each row of logits.
pub fn probabilities(logits: &Array2<f32>) -> Array2<f32> {
    let mut p = logits.clone().into_dyn();
    crate::nn::softmax::softmax_in_place(&mut p);
    p.into_dimensionality().expect("2-D")
}

/// The `k` largest entries of `row` as `(index, value)`, largest first (ties by lower index).
pub fn top_k(row: ndarray::ArrayView1<'_, f32>, k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arch, Init};
    use rand::SeedableRng;

    #[test]
    fn micro_batches_hold_as_many_images_as_fit_the_byte_budget() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let threads = rayon::current_num_threads().max(1);
        // ResNet-18 at 224×224: the stem's output, 64×112×112 values (3.2 MB) per image, is the
        // largest map; 24 MB hold 7 of them.
        let resnet = Model::new(Arch::Resnet18, 10, Init::Random(&mut rng));
        let plan = Plan::new(&resnet, "conv3", &[16, 3, 224, 224]);
        assert_eq!(plan.micro, (7 / threads * threads).max(threads), "{plan:?}");
        // VGG16: conv1's 64×224×224 maps (12.8 MB per image) leave room for one image only, so
        // the thread count sets the size.
        let vgg = Model::new(Arch::Vgg16, 10, Init::Random(&mut rng));
        let plan = Plan::new(&vgg, "conv5", &[16, 3, 224, 224]);
        assert_eq!(plan.micro, threads, "{plan:?}");
        // Small inputs: the whole budget's worth of images (the forward pass caps it at the batch).
        let plan = Plan::new(&resnet, "conv3", &[16, 3, 48, 48]);
        let per_image = 64 * 24 * 24 * 4;
        assert_eq!(
            plan.micro,
            ((24 << 20) / per_image / threads * threads).max(threads)
        );
        // The frozen prefix of a fine-tuning run (forward_units): 64 MB hold 20 of ResNet-18's
        // stem outputs (a batch of 16 runs whole) and 5 of VGG16's conv1 maps.
        let end = stage_end(&resnet, "conv4");
        let plan = Plan::units(&resnet, end, &[16, 3, 224, 224], PREFIX_MICRO_BYTES);
        assert_eq!(
            plan.micro,
            (20 / threads * threads).max(threads),
            "{plan:?}"
        );
        let end = stage_end(&vgg, "conv4");
        let plan = Plan::units(&vgg, end, &[16, 3, 224, 224], PREFIX_MICRO_BYTES);
        assert_eq!(plan.micro, (5 / threads * threads).max(threads), "{plan:?}");
    }

    #[test]
    fn micro_batches_give_the_rows_of_one_pass_at_every_stage() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut model = Model::new(Arch::Resnet18, 10, Init::Random(&mut rng));
        let x = crate::models::init::normal(&mut rng, &[5, 3, 48, 48], 1.0);
        for stage in ["conv1", "conv3", "pool", "fc"] {
            let plan = Plan::new(&model, stage, x.shape());
            assert!(
                plan.split > 0 && plan.split <= plan.end,
                "{stage}: {plan:?}"
            );
            // 48×48 input: only the stem conv sees a map of 32×32 or more.
            assert_eq!(plan.split, 1, "{stage}: {plan:?}");
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let want = model.forward_to(x.clone(), stage, &mut Context::eval(&mut r));
            for micro in [1, 2, 3, 5, 8] {
                let got = Plan { micro, ..plan }.forward(
                    &mut model,
                    x.clone(),
                    &mut Context::eval(&mut r),
                );
                assert_eq!(got.shape(), want.shape(), "{stage}, micro-batch {micro}");
                let worst = got
                    .iter()
                    .zip(want.iter())
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 1e-5, "{stage}, micro-batch {micro}: {worst}");
            }
        }
    }
}
