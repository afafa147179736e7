//! `tl finetune`: fine-tune a pretrained model (or continue a checkpoint) on a folder of images.

use std::path::{Path, PathBuf};

use anyhow::Result;
use indicatif::ProgressBar;
use rand::SeedableRng;
use tl::data::augment::Augment;
use tl::data::image_folder::Dataset;
use tl::models::{Init, Model};
use tl::train::trainer::{EpochRecord, Resume};
use tl::train::{
    finetune, CacheInfo, FinetuneObserver, FinetuneOptions, Observer, OptimizerKind, Running,
    Timings, TrainConfig,
};
use tl::weights::WeightFile;

use super::common::{progress_bar, ModelArgs};

/// Arguments of `tl finetune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// DATA_DIR/train/<class>/* and DATA_DIR/val/<class>/*, or DATA_DIR/<class>/* (split by --val-split).
    #[arg(value_name = "DATA_DIR")]
    data: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Start from torchvision's random initialisation instead of pretrained weights.
    #[arg(long, conflicts_with = "weights")]
    from_scratch: bool,
    /// Freeze every stage before this one (head: train the new head only; conv1: train everything).
    #[arg(long, value_name = "STAGE", default_value = "head")]
    freeze_until: String,
    /// Stage after which the new head attaches (default: fc7 for vgg16, pool for resnet18).
    #[arg(long, value_name = "STAGE")]
    cut: Option<String>,
    /// Hidden widths of the new head, e.g. 256,128 ("" for a single Linear).
    #[arg(long, value_name = "SPEC", default_value = "")]
    head: String,
    /// Dropout probability in the new head.
    #[arg(long, value_name = "P", default_value_t = 0.5)]
    dropout: f32,
    #[arg(long, value_name = "N", default_value_t = 10)]
    epochs: usize,
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
    /// Learning rate.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 1e-3,
        allow_negative_numbers = true
    )]
    lr: f32,
    #[arg(long, value_name = "sgd|adam", default_value = "sgd")]
    optimizer: String,
    /// SGD momentum.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.9,
        allow_negative_numbers = true
    )]
    momentum: f32,
    /// Nesterov momentum for SGD.
    #[arg(long)]
    nesterov: bool,
    /// L1 penalty on trainable weights (not biases).
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    l1: f32,
    /// L2 penalty on trainable weights (not biases).
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    l2: f32,
    /// Epochs without a better val_loss before stopping (0: never stop early).
    #[arg(long, value_name = "N", default_value_t = 5)]
    patience: usize,
    /// Augmentations: a comma list of flip,translate,rotate,scale,brightness, or none.
    #[arg(
        long,
        value_name = "LIST|none",
        default_value = "flip,translate,rotate,scale,brightness"
    )]
    augment: String,
    /// Validation share for a DATA_DIR/<class>/* folder.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.2,
        allow_negative_numbers = true
    )]
    val_split: f32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// After each epoch, recompute the trainable BatchNorm statistics exactly over the training
    /// set (helps when BatchNorm layers train from scratch or for few steps).
    #[arg(long)]
    precise_bn: bool,
    /// Batch in dataset order.
    #[arg(long)]
    no_shuffle: bool,
    /// Write the checkpoints, optimizer state and metrics after an epoch once this many seconds
    /// have passed since they were last written, and after the last epoch (0: after every
    /// epoch). A best epoch not yet written waits in memory.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = tl::train::DEFAULT_SAVE_INTERVAL,
        allow_negative_numbers = true
    )]
    save_interval: f32,
    /// Recompute the frozen stages every epoch even when augmentation is off (by default their
    /// output is computed once per image and cached).
    #[arg(long)]
    no_cache: bool,
    /// With augmentation on: run the frozen stages on K augmented views of each training image
    /// once, and cycle through them (epoch e trains on view (e-1) mod K); 0 runs them every
    /// epoch. Memory: K times the frozen stages' output per image.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 0,
        conflicts_with = "no_cache"
    )]
    cache_views: usize,
    /// The most memory (MiB) the frozen-feature cache may take; a larger cache is written beside
    /// -o and memory-mapped [default: half the memory available when it is computed].
    #[arg(long, value_name = "MIB", conflicts_with = "no_cache")]
    cache_memory: Option<u64>,
    /// Crop side of the images (resize to N*256/224 first); smaller is faster.
    #[arg(long, value_name = "N", default_value_t = 224)]
    image_size: u32,
    /// Continue the run that wrote this checkpoint (its .last checkpoint keeps the optimizer state).
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Output checkpoint (best epoch); OUT.last.safetensors and OUT.metrics.csv go beside it.
    #[arg(short = 'o', long = "output", value_name = "OUT.safetensors")]
    output: PathBuf,
}

struct Cli {
    bar: Option<ProgressBar>,
    /// The frozen-feature cache, when the epochs train from it: `Some(None)` on the images,
    /// `Some(Some(K))` on K augmented views.
    cached: Option<Option<usize>>,
    epochs: usize,
}

impl Observer for Cli {
    fn on_batch(&mut self, epoch: usize, done: usize, total: usize, running: &Running) {
        let bar = self.bar.get_or_insert_with(|| {
            let b = progress_bar(total as u64, &format!("epoch {epoch}/{}", self.epochs));
            b.set_message(format!("epoch {epoch}/{}", self.epochs));
            b
        });
        bar.set_position(done as u64);
        bar.set_message(format!(
            "epoch {epoch}/{} loss {:.4} acc {:.3}",
            self.epochs,
            running.loss(),
            running.accuracy()
        ));
    }

    fn on_epoch(&mut self, r: &EpochRecord, saved: bool) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!(
            "epoch {:>3}/{}  train_loss {:.4}  train_acc {:.3}  val_loss {:.4}  val_acc {:.3}  {:.1}s{}{}",
            r.epoch,
            self.epochs,
            r.train_loss,
            r.train_acc,
            r.val_loss,
            r.val_acc,
            r.seconds,
            match self.cached {
                None => String::new(),
                Some(None) => "  [cached features]".to_string(),
                Some(Some(k)) => format!("  [cached features, view {}/{k}]", (r.epoch - 1) % k + 1),
            },
            match (r.best, saved) {
                (true, true) => "  (best, saved)",
                (true, false) => "  (best)",
                (false, true) => "  (saved)",
                (false, false) => "",
            }
        );
    }
}

impl FinetuneObserver for Cli {
    fn on_decode(&mut self, set: &str, done: usize, total: usize) {
        let bar = self
            .bar
            .get_or_insert_with(|| progress_bar(total as u64, &format!("decoding {set}")));
        bar.set_position(done as u64);
        if done == total {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
        }
    }

    fn on_skipped(&mut self, path: &Path, message: &str) {
        eprintln!("skipped {}: {message}", path.display());
    }

    fn on_cache(&mut self, c: &CacheInfo<'_>) {
        self.cached = Some(c.views);
        let (first, last) = (c.first, c.last);
        let what = match c.views {
            None => format!(
                "stages {first}..{last} run once per image (augmentation is off); epochs train from the cache"
            ),
            Some(k) => format!(
                "stages {first}..{last} run once on {k} augmented view{} of each training image (validation images once); epoch e trains on view (e-1) mod {k} from the cache",
                if k == 1 { "" } else { "s" }
            ),
        };
        let place = if c.on_disk {
            "memory-mapped from a file beside the checkpoint"
        } else {
            "in memory"
        };
        eprintln!(
            "frozen-feature cache: {what} ({:.1} MB, {place})",
            c.bytes as f64 / 1e6
        );
    }

    fn on_start(&mut self, data: &Dataset, train: usize, val: usize, new_head: bool) {
        eprintln!(
            "data: {} classes ({}), {train} training and {val} validation images{}",
            data.classes.len(),
            data.classes.join(", "),
            if new_head {
                ""
            } else {
                "; continuing the checkpoint's head"
            }
        );
    }
}

fn config(args: &Args) -> Result<TrainConfig> {
    let optimizer = match args.optimizer.to_ascii_lowercase().as_str() {
        "sgd" => OptimizerKind::Sgd {
            momentum: args.momentum,
            nesterov: args.nesterov,
        },
        "adam" => OptimizerKind::Adam,
        other => anyhow::bail!("--optimizer: {other:?} is not sgd or adam"),
    };
    let c = TrainConfig {
        epochs: args.epochs,
        lr: args.lr,
        optimizer,
        l1: args.l1,
        l2: args.l2,
        patience: args.patience,
        seed: args.seed,
        val_split: args.val_split,
        image_size: args.image_size,
        precise_bn: args.precise_bn,
        save_interval: args.save_interval,
    };
    c.validate()?;
    Ok(c)
}

/// `time: 13.2 s (decoding 0.4 s, frozen-feature cache 1.8 s, 10 epochs 10.1 s, checkpoints 0.9 s)`
/// (no cache part without a cache). scripts/bench_finetune.py reads `time: <seconds> s`.
fn time_line(t: &Timings) -> String {
    let cache = if t.cache > 0.0 {
        format!(", frozen-feature cache {:.1} s", t.cache)
    } else {
        String::new()
    };
    format!(
        "time: {:.1} s (decoding {:.1} s{cache}, {} epoch{} {:.1} s, checkpoints {:.1} s)",
        t.total,
        t.decode,
        t.epochs,
        if t.epochs == 1 { "" } else { "s" },
        t.epoch_seconds,
        t.checkpoints()
    )
}

pub fn run(args: Args) -> Result<()> {
    let config = config(&args)?;
    let augment = Augment::parse(&args.augment)?;
    // Checkpoints are written after the first epoch; a missing directory is created (or is an
    // error) now rather than after that epoch's work.
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("-o: cannot create the directory {}: {e}", dir.display())
        })?;
    }
    let (mut model, resume) = match &args.resume {
        Some(ckpt) => {
            let file = WeightFile::open(ckpt)?;
            if !Model::is_checkpoint(&file) {
                anyhow::bail!("--resume: {} is not a tl checkpoint", ckpt.display());
            }
            (
                Model::from_checkpoint(&file)?,
                Some(Resume::from_checkpoint(&file)?),
            )
        }
        None if args.from_scratch => {
            let arch =
                tl::models::open::arch_of(&args.model.model, &tl::fetch::cache_dir_from_env())?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
            eprintln!("starting from random weights (--from-scratch)");
            (Model::new(arch, 1000, Init::Random(&mut rng)), None)
        }
        None => (args.model.open()?, None),
    };
    let opts = FinetuneOptions {
        data_dir: args.data.clone(),
        freeze_until: args.freeze_until.clone(),
        cut: args.cut.clone(),
        head: args.head.clone(),
        dropout: args.dropout,
        batch_size: args.batch_size,
        augment,
        shuffle: !args.no_shuffle,
        cache: !args.no_cache,
        cache_views: args.cache_views,
        cache_memory: args.cache_memory.map(|m| m << 20),
        config,
        output: args.output.clone(),
    };
    let mut cli = Cli {
        bar: None,
        cached: None,
        epochs: args.epochs,
    };
    let report = finetune(&mut model, &opts, resume, &mut cli)?;
    let s = &report.summary;
    let (total, trainable) = model.param_counts();
    eprintln!(
        "best epoch {}: val_loss {:.4} val_acc {:.3}{}; {} of {} parameters trained",
        s.best_epoch,
        s.best_val_loss,
        s.best_val_acc,
        if s.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        trainable,
        total
    );
    eprintln!("{}", time_line(&report.timings));
    if !report.skipped.is_empty() {
        eprintln!("skipped {} unreadable file(s)", report.skipped.len());
    }
    println!(
        "checkpoint: {} (last: {}, metrics: {})",
        report.files.best.display(),
        report.files.last.display(),
        report.files.metrics.display()
    );
    Ok(())
}
