//! Fine-tuning a model on a folder of images in one call: scan the folder, attach a head for its
//! classes (or keep a checkpoint's head when the classes match), freeze, decode the images once,
//! then [`fit`] with augmentation, shuffling and early stopping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;

use super::feature_cache::{available_memory, row_len, spill_path, FeatureCache, Storage};
use super::trainer::{fit, Feed, FitSummary, Observer, Resume, RunFiles, TrainConfig};
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
    /// The most memory the frozen-feature cache may take, in bytes; a larger cache is written
    /// beside `output` and memory-mapped. `None`: half the memory available when the cache is
    /// computed (where the system says; otherwise it stays in memory).
    pub cache_memory: Option<u64>,
    pub config: TrainConfig,
    pub output: PathBuf,
}

/// What the caller hears about besides epochs: decoding progress and unreadable files.
pub trait FinetuneObserver: Observer {
    /// `done` of `total` images of `set` ("train" or "val") decoded.
    fn on_decode(&mut self, _set: &str, _done: usize, _total: usize) {}
    /// A file that could not be decoded and is skipped.
    fn on_skipped(&mut self, _path: &std::path::Path, _message: &str) {}
    /// The frozen stages are about to be computed once and cached (see [`CacheInfo`]).
    fn on_cache(&mut self, _cache: &CacheInfo<'_>) {}
    /// Training is about to start: the data, the model's trainable share.
    fn on_start(&mut self, _dataset: &Dataset, _train: usize, _val: usize, _new_head: bool) {}
}

/// What the frozen-feature cache holds and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo<'a> {
    /// The first and last frozen stage it computes.
    pub first: &'a str,
    pub last: &'a str,
    /// `None`: the images themselves (augmentation off); `Some(K)`: K augmented views of each
    /// training image (epoch `e` trains on view `(e − 1) mod K`; validation images once).
    pub views: Option<usize>,
    /// Its size.
    pub bytes: u64,
    /// Whether it is written to a file beside the checkpoint and memory-mapped (larger than the
    /// memory it may take) rather than kept in memory.
    pub on_disk: bool,
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
    // Augmented views to cache ([`check`] has made sure augmentation is on).
    let views = (opts.cache_views > 0).then_some(opts.cache_views);
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
        let rows = views.unwrap_or(1) * train_set.len() + val_set.len();
        let bytes = (rows * row_len(model, prefix, pre.crop as usize) * 4) as u64;
        let budget = opts
            .cache_memory
            .or_else(|| available_memory().map(|m| m / 2))
            .unwrap_or(u64::MAX);
        let on_disk = bytes > budget;
        observer.on_cache(&CacheInfo {
            first: stages.first().map_or("", String::as_str),
            last: stages.last().map_or("", String::as_str),
            views,
            bytes,
            on_disk,
        });
        let storage = |what: &str| {
            if on_disk {
                Storage::File(spill_path(&opts.output, what))
            } else {
                Storage::Memory
            }
        };
        let caching = Instant::now();
        let train_cache = Arc::new(match views {
            None => FeatureCache::compute(
                model,
                prefix,
                &train_set,
                batch_size,
                pre,
                &storage("train"),
            )?,
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
                &storage("train"),
            )?,
        });
        let val_cache = Arc::new(FeatureCache::compute(
            model,
            prefix,
            &val_set,
            batch_size,
            pre,
            &storage("val"),
        )?);
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
