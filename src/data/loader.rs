//! The training input pipeline. [`load_set`] decodes every image of a set once, in parallel,
//! resized so its shorter side is `pre.resize` (Pillow-exact bilinear) and kept as 8-bit RGB;
//! unreadable files (a JPEG cut short before its end marker included) are skipped and listed.
//! [`batches`] then yields an epoch's batches `([N, 3, S, S] f32, labels)` with `S = pre.crop`,
//! each image going augment (training only) → centre crop → `(v/255 − mean)/std`, built with
//! rayon on a background thread that stays up to [`PREFETCH`] batches ahead of the consumer.
//!
//! Determinism: the epoch order is a ChaCha8 shuffle seeded from `(seed, epoch)` (dataset order
//! when shuffling is off), and image `i`'s augmentation RNG is seeded from `(seed, epoch, i)`, so
//! batches depend on neither thread scheduling nor batch size.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use image::RgbImage;
use ndarray::{Array4, ArrayViewMut3, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::augment::Augment;
use super::image_folder::Sample;
use super::resize::resize_bilinear;
use super::transform::{decode, Preprocess};
use crate::error::Error;

/// Batches built ahead of the consumer.
pub const PREFETCH: usize = 2;

/// A decoded set: images resized to shorter side `pre.resize`, in the order of the samples given
/// (skipped files left out), with their labels and paths.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
    pub paths: Vec<PathBuf>,
    /// Files that could not be decoded, in sample order, with the decoder's message.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Loaded {
    /// Number of images loaded.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when no image was loaded.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images per label, for `num_classes` labels (a zero marks a class left empty by skipped
    /// files).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }
}

/// Decodes and resizes every sample in parallel (rayon). `progress(done)` is called after each
/// file with the number of files done so far (strictly increasing).
pub fn load_set(samples: &[Sample], pre: Preprocess, progress: &(dyn Fn(usize) + Sync)) -> Loaded {
    let done = Mutex::new(0usize);
    let results: Vec<_> = samples
        .par_iter()
        .map(|s| {
            let r = decode(&s.path).map(|img| resize_shorter(&img, pre.resize));
            let mut n = done.lock().unwrap();
            *n += 1;
            progress(*n);
            r
        })
        .collect();
    let mut set = Loaded::default();
    for (s, r) in samples.iter().zip(results) {
        match r {
            Ok(img) => {
                set.images.push(img);
                set.labels.push(s.label);
                set.paths.push(s.path.clone());
            }
            Err(e) => {
                let message = match e {
                    Error::Image { message, .. } => message,
                    other => other.to_string(),
                };
                set.skipped.push((s.path.clone(), message));
            }
        }
    }
    set
}

/// Resizes so the shorter side is `size` (the longer side `⌊size·long/short⌋`), as
/// [`Preprocess::resize_crop`] does before cropping; unchanged when already that size.
pub fn resize_shorter(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (short, long) = (w.min(h), w.max(h));
    let new_long = (size as u64 * long as u64 / short.max(1) as u64) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    if (nw, nh) == (w, h) {
        img.clone()
    } else {
        resize_bilinear(img, nw, nh)
    }
}

/// How one epoch is batched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchOptions {
    /// Images per batch (the last batch may be smaller).
    pub batch_size: usize,
    /// Shuffle from `(seed, epoch)`; dataset order when false.
    pub shuffle: bool,
    pub seed: u64,
    pub epoch: usize,
    /// Ops applied before the crop; [`Augment::none`] for validation and evaluation.
    pub augment: Augment,
    /// Crop size, mean and std (`resize` was applied by [`load_set`]).
    pub pre: Preprocess,
}

impl BatchOptions {
    /// Dataset order, no augmentation: validation, evaluation.
    pub fn eval(batch_size: usize, pre: Preprocess) -> Self {
        BatchOptions {
            batch_size,
            shuffle: false,
            seed: 0,
            epoch: 0,
            augment: Augment::none(),
            pre,
        }
    }
}

/// The order in which an epoch visits `n` images: `0..n`, or its ChaCha8 shuffle seeded from
/// `(seed, epoch)`.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[
            seed,
            SHUFFLE_DOMAIN,
            epoch as u64,
        ])));
    }
    order
}

/// The augmentation RNG of image `index` (its position in the [`Loaded`] set) in `epoch`.
pub fn sample_rng(seed: u64, epoch: usize, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(&[seed, AUGMENT_DOMAIN, epoch as u64, index as u64]))
}

const SHUFFLE_DOMAIN: u64 = 0x5348_5546_464c_4531;
const AUGMENT_DOMAIN: u64 = 0x4155_474d_454e_5431;

/// SplitMix64 over the words, chained.
fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0;
    for &w in words {
        let mut z = (h ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

/// Builds the batch of the images at `indices` of `set`, in parallel (rayon).
///
/// # Panics
/// Panics if an index is out of range.
pub fn make_batch(
    set: &Loaded,
    indices: &[usize],
    opts: &BatchOptions,
) -> (Array4<f32>, Vec<usize>) {
    let s = opts.pre.crop as usize;
    // Written in full below (every crop is s×s); batch after batch in the memory the first
    // convolution gave back, not in fresh pages.
    let mut x: Array4<f32> = crate::tensor::recycle::take_array((indices.len(), 3, s, s));
    x.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(indices.par_iter())
        .for_each(|(mut out, &i)| {
            let mut rng = sample_rng(opts.seed, opts.epoch, i);
            let cropped = opts
                .augment
                .apply_crop(&set.images[i], opts.pre.crop, &mut rng);
            assert_eq!(
                cropped.dimensions(),
                (opts.pre.crop, opts.pre.crop),
                "crop size"
            );
            normalize_into(&cropped, &opts.pre, out.view_mut());
        });
    let labels = indices.iter().map(|&i| set.labels[i]).collect();
    (x, labels)
}

/// [`Preprocess::normalize`] written into `out` (`[3, H, W]`), with the same arithmetic.
fn normalize_into(img: &RgbImage, pre: &Preprocess, mut out: ArrayViewMut3<'_, f32>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = img.as_raw();
    for c in 0..3 {
        let (mean, std) = (pre.mean[c], pre.std[c]);
        let mut plane = out.index_axis_mut(Axis(0), c);
        for y in 0..h {
            let row = &px[y * w * 3..(y + 1) * w * 3];
            for (x, o) in plane.row_mut(y).iter_mut().enumerate() {
                *o = (row[x * 3 + c] as f32 / 255.0 - mean) / std;
            }
        }
    }
}

/// One epoch's batches of `set`, built on a background thread ahead of the consumer.
///
/// # Panics
/// Panics if `opts.batch_size` is 0.
pub fn batches(set: Arc<Loaded>, opts: BatchOptions) -> Batches {
    assert!(opts.batch_size > 0, "batch size must be positive");
    let order = epoch_order(set.len(), opts.shuffle, opts.seed, opts.epoch);
    let remaining = order.len().div_ceil(opts.batch_size);
    let (tx, rx) = sync_channel(PREFETCH.saturating_sub(1));
    let worker = std::thread::Builder::new()
        .name("tl-batches".into())
        .spawn(move || {
            for chunk in order.chunks(opts.batch_size) {
                if tx.send(make_batch(&set, chunk, &opts)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the batch thread");
    Batches {
        rx: Some(rx),
        worker: Some(worker),
        remaining,
    }
}

/// Iterator over an epoch's batches `([N, 3, S, S], labels)`; see [`batches`]. Dropping it early
/// stops the background thread.
pub struct Batches {
    rx: Option<Receiver<(Array4<f32>, Vec<usize>)>>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Batches {
    type Item = (Array4<f32>, Vec<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.rx.as_ref()?.recv().ok();
        match batch {
            Some(b) => {
                self.remaining -= 1;
                Some(b)
            }
            None => {
                self.remaining = 0;
                self.finish();
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Batches {}

impl Batches {
    fn finish(&mut self) {
        self.rx.take();
        if let Some(worker) = self.worker.take() {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
