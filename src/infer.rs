//! Batched inference over image files: decoding and preprocessing run on a background thread (in
//! parallel across a batch) one batch ahead of the compute.

use std::path::PathBuf;
use std::sync::mpsc;

use ndarray::{Array2, ArrayD, Axis, Ix2};
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
    for batch in rx {
        let batch = batch?;
        let n = batch.shape()[0];
        let mut ctx = Context::eval(&mut rng);
        let out = model.forward_to(batch, stage, &mut ctx);
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
