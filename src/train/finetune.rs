//! Fine-tuning a model on a folder of images in one call: scan the folder, attach a head for its
//! classes (or keep a checkpoint's head when the classes match), freeze, decode the images once,
//! then [`fit`] with augmentation, shuffling and early stopping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;

use super::trainer::{fit, Batch, Feed, FitSummary, Observer, Resume, RunFiles, TrainConfig};
use crate::data::augment::Augment;
use crate::data::image_folder::{scan, Dataset};
use crate::data::loader::{batches, epoch_order, load_set, BatchOptions, Loaded};
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::models::head::parse_head;
use crate::models::Model;

/// Everything `tl finetune` takes besides the model.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    pub data_dir: PathBuf,
    /// Stage from which on everything trains (`head`: the new head only).
    pub freeze_until: String,
    /// Stage after which a new head attaches (default: the architecture's).
    pub cut: Option<String>,
    /// Hidden widths of a new head, as `--head` (`""`: one Linear).
    pub head: String,
    pub dropout: f32,
    pub batch_size: usize,
    pub augment: Augment,
    pub shuffle: bool,
    /// Compute the frozen prefix once per image and train the rest from that cache, when nothing
    /// before the first trainable layer is random (augmentation off, no dropout there).
    pub cache: bool,
    /// With augmentation on: compute the frozen prefix on this many augmented views of each
    /// training image once, and train epoch `e` (from 1) from view `(e − 1) mod K`, the view
    /// an uncached run's epoch `((e − 1) mod K) + 1` would augment to (0: no cache, the prefix
    /// runs every epoch). Needs `cache` and a deterministic frozen prefix.
    pub cache_views: usize,
    pub config: TrainConfig,
    pub output: PathBuf,
}

/// What the caller hears about besides epochs: decoding progress and unreadable files.
pub trait FinetuneObserver: Observer {
    /// `done` of `total` images of `set` ("train" or "val") decoded.
    fn on_decode(&mut self, _set: &str, _done: usize, _total: usize) {}
    /// A file that could not be decoded and is skipped.
    fn on_skipped(&mut self, _path: &std::path::Path, _message: &str) {}
    /// The frozen stages `first..=last` are computed once per image and cached: on the images
    /// themselves (`views` `None`, augmentation off) or on `K` augmented views of each training
    /// image (`Some(K)`, epoch `e` training on view `(e − 1) mod K`; validation images once).
    fn on_cache(&mut self, _first: &str, _last: &str, _views: Option<usize>) {}
    /// Training is about to start: the data, the model's trainable share.
    fn on_start(&mut self, _dataset: &Dataset, _train: usize, _val: usize, _new_head: bool) {}
}

/// The outcome of a fine-tuning run.
#[derive(Clone, Debug)]
pub struct FinetuneReport {
    pub summary: FitSummary,
    pub classes: Vec<String>,
    pub skipped: Vec<(PathBuf, String)>,
    pub files: RunFiles,
    /// Where the call's wall time went.
    pub timings: Timings,
}

/// Wall-clock seconds of the parts of a [`finetune`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// The whole call: also scanning the folder and attaching the head, which are not listed
    /// separately, so at least the sum of the parts below.
    pub total: f32,
    /// Decoding the training and validation images (once, before the first epoch).
    pub decode: f32,
    /// Running the frozen prefix over every image for the frozen-feature cache (0 without one).
    pub cache: f32,
    /// Everything in [`fit`]: the epochs, the checkpoint writes they did not hide, restoring the
    /// best weights at the end.
    pub fit: f32,
    /// The epochs this call trained (resumed ones not counted).
    pub epochs: usize,
    /// Their seconds (training and validation, as in the metrics CSV), a part of `fit`.
    pub epoch_seconds: f32,
}

impl Timings {
    /// Seconds in [`fit`] outside the epochs. An epoch's checkpoints, optimizer state and metrics
    /// are written on a background thread while the next epoch trains, so this counts only what
    /// the writes add to the wall time: copying the weights and the optimizer state for the
    /// writer after each epoch, waiting for a write the next epoch did not outlast and for the
    /// last one, and restoring the best weights.
    pub fn checkpoints(&self) -> f32 {
        (self.fit - self.epoch_seconds).max(0.0)
    }
}

fn check(opts: &FinetuneOptions) -> Result<()> {
    opts.config.validate()?;
    if opts.batch_size == 0 {
        return Err(Error::config("--batch-size", "must be at least 1"));
    }
    if !(0.0..1.0).contains(&opts.dropout) {
        return Err(Error::config(
            "--dropout",
            format!("{} is not in [0, 1)", opts.dropout),
        ));
    }
    if opts.cache_views > 0 && opts.augment.is_none() {
        return Err(Error::config(
            "--cache-views",
            "caches augmented views, but augmentation is off (without it the frozen stages \
             are already computed once per image)",
        ));
    }
    if opts.cache_views > 0 && !opts.cache {
        return Err(Error::config(
            "--cache-views",
            "cannot be combined with --no-cache",
        ));
    }
    if opts.config.image_size < 32 {
        return Err(Error::config(
            "--image-size",
            format!("{} is too small (at least 32)", opts.config.image_size),
        ));
    }
    match opts.output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(()),
        _ => Err(Error::config(
            "-o",
            format!(
                "{}: the checkpoint must end in .safetensors",
                opts.output.display()
            ),
        )),
    }
}

fn decode(
    set: &str,
    samples: &[crate::data::image_folder::Sample],
    pre: Preprocess,
    observer: &mut dyn FinetuneObserver,
) -> Loaded {
    // `load_set` reports from its worker threads; the observer is not `Sync`, so progress comes
    // back over a channel and is reported here.
    let total = samples.len();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let loaded = std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let tx = std::sync::Mutex::new(tx);
            load_set(samples, pre, &|n| {
                let _ = tx.lock().map(|t| t.send(n));
            })
        });
        for n in rx {
            observer.on_decode(set, n, total);
        }
        handle.join().expect("decoding thread")
    });
    for (p, m) in &loaded.skipped {
        observer.on_skipped(p, m);
    }
    loaded
}

/// Fine-tunes `model` on `opts.data_dir`. With `resume`, continues the run that wrote it (the
/// model must be that checkpoint's).
///
/// # Errors
/// Configuration and data errors before any training (bad flags, a bad `--freeze-until` or `--cut`
/// stage, a missing folder, one class, an empty class — also when every file of a class failed to
/// decode); [`Error::NonFinite`] when the loss diverges; [`Error::Io`] writing checkpoints.
pub fn finetune(
    model: &mut Model,
    opts: &FinetuneOptions,
    resume: Option<Resume>,
    observer: &mut dyn FinetuneObserver,
) -> Result<FinetuneReport> {
    let started = Instant::now();
    check(opts)?;
    let dataset = scan(&opts.data_dir, opts.config.val_split, opts.config.seed)?;
    let keeps_head = model.head_spec().is_some() && model.classes() == dataset.classes.as_slice();
    if resume.is_some() && !keeps_head {
        return Err(Error::config(
            "--resume",
            format!(
                "the checkpoint's classes {:?} are not the data's {:?}",
                model.classes(),
                dataset.classes
            ),
        ));
    }
    if !keeps_head {
        let hidden = parse_head(&opts.head)?;
        let cut = opts
            .cut
            .clone()
            .unwrap_or_else(|| model.arch().default_cut().to_string());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.config.seed);
        model.attach_head(
            &cut,
            &hidden,
            dataset.classes.clone(),
            opts.dropout,
            &mut rng,
        )?;
    } else {
        model.set_dropout_of_head(opts.dropout)?;
    }
    model.freeze_until(&opts.freeze_until)?;
    model.set_input_size(opts.config.image_size);
    let prefix = model.frozen_prefix();
    let cacheable = opts.cache && prefix > 0 && model.prefix_is_deterministic(prefix);
    // Augmented views to cache, when augmentation is on.
    let views = (!opts.augment.is_none() && opts.cache_views > 0).then_some(opts.cache_views);
    if views.is_some() && !cacheable {
        let why = if prefix == 0 {
            "no stage before it is frozen"
        } else {
            "dropout runs among the frozen stages"
        };
        return Err(Error::config(
            "--cache-views",
            format!(
                "nothing before the first trainable layer (--freeze-until {}) can be cached: {why}",
                opts.freeze_until
            ),
        ));
    }
    let pre = Preprocess::with_size(opts.config.image_size);
    let decoding = Instant::now();
    let train_set = Arc::new(decode("train", &dataset.train, pre, observer));
    let val_set = Arc::new(decode("val", &dataset.val, pre, observer));
    let decode_seconds = decoding.elapsed().as_secs_f32();
    let train_counts = train_set.class_counts(dataset.classes.len());
    let val_counts = val_set.class_counts(dataset.classes.len());
    for (c, (t, v)) in train_counts.iter().zip(&val_counts).enumerate() {
        if t + v == 0 {
            let folder = match dataset.layout {
                crate::data::image_folder::Layout::TrainVal => {
                    dataset.root.join("train").join(&dataset.classes[c])
                }
                crate::data::image_folder::Layout::Flat => dataset.root.join(&dataset.classes[c]),
            };
            return Err(Error::data(
                folder,
                format!("class {:?} has no readable image", dataset.classes[c]),
            ));
        }
    }
    let files = RunFiles::for_checkpoint(&opts.output);
    let (batch_size, shuffle, seed, augment) = (
        opts.batch_size,
        opts.shuffle,
        opts.config.seed,
        opts.augment,
    );
    let cache = cacheable && (augment.is_none() || views.is_some());
    observer.on_start(&dataset, train_set.len(), val_set.len(), !keeps_head);
    let mut cache_seconds = 0.0;
    let feed = if cache {
        let stages = model.unit_stages()[..prefix].to_vec();
        observer.on_cache(
            stages.first().map_or("", String::as_str),
            stages.last().map_or("", String::as_str),
            views,
        );
        let caching = Instant::now();
        let train_cache = Arc::new(match views {
            None => FeatureCache::compute(model, prefix, &train_set, batch_size, pre),
            Some(k) => FeatureCache::compute_views(
                model,
                prefix,
                &train_set,
                k,
                BatchOptions {
                    batch_size,
                    shuffle: false,
                    seed,
                    epoch: 1,
                    augment,
                    pre,
                },
            ),
        });
        let val_cache = Arc::new(FeatureCache::compute(
            model, prefix, &val_set, batch_size, pre,
        ));
        cache_seconds = caching.elapsed().as_secs_f32();
        let t = train_cache.clone();
        Feed {
            train: Box::new(move |epoch| {
                let order = epoch_order(t.len(), shuffle, seed, epoch);
                Box::new(t.batches_of_view(order, batch_size, t.view_of(epoch)))
            }),
            val: Box::new(move || {
                Box::new(val_cache.batches((0..val_cache.len()).collect(), batch_size))
            }),
            train_samples: train_set.len(),
            val_samples: val_set.len(),
            start: prefix,
        }
    } else {
        let (t, v) = (train_set.clone(), val_set.clone());
        Feed {
            train: Box::new(move |epoch| {
                let opts = BatchOptions {
                    batch_size,
                    shuffle,
                    seed,
                    epoch,
                    augment,
                    pre,
                };
                Box::new(batches(t.clone(), opts).map(|(x, y)| (x.into_dyn(), y)))
            }),
            val: Box::new(move || {
                Box::new(
                    batches(v.clone(), BatchOptions::eval(batch_size, pre))
                        .map(|(x, y)| (x.into_dyn(), y)),
                )
            }),
            train_samples: train_set.len(),
            val_samples: val_set.len(),
            start: 0,
        }
    };
    let resume = resume.unwrap_or_default();
    let resumed = resume.history.len();
    let fitting = Instant::now();
    let summary = fit(model, &opts.config, feed, &files, resume, observer)?;
    let fit_seconds = fitting.elapsed().as_secs_f32();
    let trained = summary.history.get(resumed..).unwrap_or_default();
    let mut skipped = train_set.skipped.clone();
    skipped.extend(val_set.skipped.iter().cloned());
    let timings = Timings {
        total: started.elapsed().as_secs_f32(),
        decode: decode_seconds,
        cache: cache_seconds,
        fit: fit_seconds,
        epochs: trained.len(),
        epoch_seconds: trained.iter().map(|r| r.seconds).sum(),
    };
    Ok(FinetuneReport {
        summary,
        classes: dataset.classes,
        skipped,
        files,
        timings,
    })
}

/// The output of a model's frozen prefix for every image of a set, computed once (eval mode; the
/// prefix is deterministic), one row per image, in the set's order: on the images themselves, or
/// on several augmented views of each.
pub struct FeatureCache {
    /// Per view, one row per image.
    views: Vec<Vec<ndarray::ArrayD<f32>>>,
    labels: Vec<usize>,
}

/// Units `0..prefix` of `model` over the image batches `input`: one row per image, in order.
fn prefix_rows(
    model: &mut Model,
    prefix: usize,
    input: impl Iterator<Item = (ndarray::Array4<f32>, Vec<usize>)>,
    images: usize,
) -> Vec<ndarray::ArrayD<f32>> {
    let mut rows = Vec::with_capacity(images);
    for (x, _) in input {
        let out = crate::infer::forward_units(model, x.into_dyn(), prefix);
        rows.extend(out.outer_iter().map(|r| r.to_owned()));
    }
    rows
}

impl FeatureCache {
    /// Runs units `0..prefix` of `model` over `set`.
    pub fn compute(
        model: &mut Model,
        prefix: usize,
        set: &Arc<Loaded>,
        batch_size: usize,
        pre: Preprocess,
    ) -> Self {
        FeatureCache {
            views: vec![prefix_rows(
                model,
                prefix,
                batches(set.clone(), BatchOptions::eval(batch_size, pre)),
                set.len(),
            )],
            labels: set.labels.clone(),
        }
    }

    /// Runs units `0..prefix` of `model` over `k` augmented views of every image of `set`: view
    /// `v` is the set as `batches` augments it for epoch `opts.epoch + v` (in dataset order,
    /// whatever `opts.shuffle`).
    pub fn compute_views(
        model: &mut Model,
        prefix: usize,
        set: &Arc<Loaded>,
        k: usize,
        opts: BatchOptions,
    ) -> Self {
        let views = (0..k)
            .map(|v| {
                let opts = BatchOptions {
                    shuffle: false,
                    epoch: opts.epoch + v,
                    ..opts
                };
                prefix_rows(model, prefix, batches(set.clone(), opts), set.len())
            })
            .collect();
        FeatureCache {
            views,
            labels: set.labels.clone(),
        }
    }

    /// Views per image.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// The view that epoch `epoch` (from 1) trains on: `(epoch − 1) mod views`.
    pub fn view_of(&self, epoch: usize) -> usize {
        epoch.saturating_sub(1) % self.views.len().max(1)
    }

    /// Cached images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Batches of the rows in `order` (of the first view).
    pub fn batches(
        self: &Arc<Self>,
        order: Vec<usize>,
        batch_size: usize,
    ) -> impl Iterator<Item = Batch> + 'static {
        self.batches_of_view(order, batch_size, 0)
    }

    /// Batches of view `view`'s rows in `order`.
    ///
    /// # Panics
    /// Panics if there is no such view.
    pub fn batches_of_view(
        self: &Arc<Self>,
        order: Vec<usize>,
        batch_size: usize,
        view: usize,
    ) -> impl Iterator<Item = Batch> + 'static {
        assert!(view < self.views.len(), "feature cache: no view {view}");
        let me = self.clone();
        let chunks: Vec<Vec<usize>> = order
            .chunks(batch_size.max(1))
            .map(|c| c.to_vec())
            .collect();
        chunks.into_iter().map(move |idx| {
            let rows: Vec<_> = idx.iter().map(|&i| me.views[view][i].view()).collect();
            let x = ndarray::stack(ndarray::Axis(0), &rows).expect("rows of one shape");
            (x, idx.iter().map(|&i| me.labels[i]).collect())
        })
    }
}
