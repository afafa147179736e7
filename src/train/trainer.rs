//! The fine-tuning loop: mini-batch steps (forward, cross-entropy, backward through the trainable
//! suffix only, L1/L2 penalty, optimizer update), validation after each epoch, early stopping on
//! val_loss that restores the best weights, atomic checkpoints (best and last), a metrics CSV.
//!
//! Files next to the checkpoint `OUT.safetensors`: `OUT.last.safetensors` (the last epoch),
//! `OUT.last.optim.safetensors` (optimizer state, for `--resume`), `OUT.metrics.csv`. An epoch's
//! files are written on a background thread while the next epoch trains.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array4, ArrayD, ArrayViewD, Ix2};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::early_stopping::{EarlyStopping, Verdict};
use super::metrics::{argmax_rows, Confusion, Running};
use super::optimizer::{zero_grad, Adam, AdamState, Optimizer, Sgd};
use super::regularization::Penalty;
use super::writer::{write_metrics, CheckpointWriter};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::loss::cross_entropy;
use crate::nn::Context;
use crate::weights::{FileImage, TensorData, WeightFile};

/// A batch: images `[N, 3, S, S]` (or the cached output of a frozen prefix) and class labels.
pub type Batch = (ArrayD<f32>, Vec<usize>);

/// Which optimizer, with its own settings (the learning rate is in [`TrainConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (PyTorch's rule).
    Sgd { momentum: f32, nesterov: bool },
    /// Adam with PyTorch's defaults.
    Adam,
}

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f32,
    pub optimizer: OptimizerKind,
    pub l1: f32,
    pub l2: f32,
    /// Epochs without val_loss improvement before stopping (0: never stop early).
    pub patience: usize,
    pub seed: u64,
    /// The validation split used for a flat data folder (recorded so `tl eval` can reproduce it).
    #[serde(default)]
    pub val_split: f32,
    /// Crop side of the training images.
    #[serde(default)]
    pub image_size: u32,
    /// After each epoch's steps, set the trainable BatchNorm layers' running statistics to the
    /// exact average over one more pass of the training batches ("precise BN"), so evaluation
    /// sees statistics of the final weights rather than a lagging momentum average.
    #[serde(default)]
    pub precise_bn: bool,
    /// Seconds between writes of the run's files: after an epoch they are written when at least
    /// this long has passed since they were last written (or since training began), and always
    /// after the last epoch. An unwritten best epoch is kept in memory until then. 0 writes them
    /// after every epoch.
    #[serde(default)]
    pub save_interval: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            lr: 1e-3,
            optimizer: OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            l1: 0.0,
            l2: 0.0,
            patience: 5,
            seed: 0,
            val_split: 0.2,
            image_size: 224,
            precise_bn: false,
            save_interval: DEFAULT_SAVE_INTERVAL,
        }
    }
}

/// Seconds between writes of a run's files by default ([`TrainConfig::save_interval`]): a crash
/// loses at most this much training, and runs of short epochs write their files (80 MB for
/// ResNet-18) a few times rather than after every epoch.
pub const DEFAULT_SAVE_INTERVAL: f32 = 30.0;

impl TrainConfig {
    /// Checks the numbers.
    ///
    /// # Errors
    /// [`Error::Config`] naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(
                "--lr",
                format!("{} is not a positive learning rate", self.lr),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::config("--epochs", "must be at least 1"));
        }
        if let OptimizerKind::Sgd { momentum, .. } = self.optimizer {
            if !(0.0..1.0).contains(&momentum) {
                return Err(Error::config(
                    "--momentum",
                    format!("{momentum} is not in [0, 1)"),
                ));
            }
        }
        for (flag, v) in [
            ("--l1", self.l1),
            ("--l2", self.l2),
            ("--save-interval", self.save_interval),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    flag,
                    format!("{v} must be a non-negative number"),
                ));
            }
        }
        Ok(())
    }

    fn penalty(&self) -> Penalty {
        Penalty {
            l1: self.l1,
            l2: self.l2,
        }
    }

    /// The optimizer these settings describe.
    pub fn build_optimizer(&self) -> AnyOptimizer {
        match self.optimizer {
            OptimizerKind::Sgd { momentum, nesterov } => {
                let mut s = Sgd::new(self.lr, momentum);
                s.nesterov = nesterov;
                AnyOptimizer::Sgd(s)
            }
            OptimizerKind::Adam => AnyOptimizer::Adam(Adam::new(self.lr)),
        }
    }
}

/// SGD or Adam, with state that can be saved and restored.
pub enum AnyOptimizer {
    Sgd(Sgd),
    Adam(Adam),
}

impl AnyOptimizer {
    fn as_dyn(&mut self) -> &mut dyn Optimizer {
        match self {
            AnyOptimizer::Sgd(s) => s,
            AnyOptimizer::Adam(a) => a,
        }
    }

    /// The state as a safetensors file laid out in `image` (in its memory when it held an
    /// earlier state of this run): tensors `<param>.momentum`; `<param>.m`, `<param>.v`,
    /// `<param>.step`; sorted by name.
    pub fn state_into(&self, image: &mut FileImage) {
        let steps: Vec<(String, ArrayD<f32>)> = match self {
            AnyOptimizer::Sgd(_) => Vec::new(),
            AnyOptimizer::Adam(a) => a
                .state()
                .iter()
                .map(|(n, s)| {
                    (
                        format!("{n}.step"),
                        ArrayD::from_elem(vec![1], s.step as f32),
                    )
                })
                .collect(),
        };
        let mut tensors: Vec<(String, ArrayViewD<'_, f32>)> = match self {
            AnyOptimizer::Sgd(s) => s
                .state()
                .iter()
                .map(|(n, b)| (format!("{n}.momentum"), b.view()))
                .collect(),
            AnyOptimizer::Adam(a) => a
                .state()
                .iter()
                .flat_map(|(n, s)| {
                    [
                        (format!("{n}.m"), s.m.view()),
                        (format!("{n}.v"), s.v.view()),
                    ]
                })
                .collect(),
        };
        tensors.extend(steps.iter().map(|(n, a)| (n.clone(), a.view())));
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        image.fill(&tensors, &HashMap::new());
    }

    /// Restores state saved by [`AnyOptimizer::state_into`].
    pub fn load_state(&mut self, tensors: HashMap<String, ArrayD<f32>>) {
        match self {
            AnyOptimizer::Sgd(s) => s.load_state(
                tensors
                    .into_iter()
                    .filter_map(|(n, t)| n.strip_suffix(".momentum").map(|p| (p.to_string(), t)))
                    .collect(),
            ),
            AnyOptimizer::Adam(a) => {
                let mut state: HashMap<String, AdamState> = HashMap::new();
                for (n, t) in &tensors {
                    if let Some(p) = n.strip_suffix(".step") {
                        if let (Some(m), Some(v)) = (
                            tensors.get(&format!("{p}.m")),
                            tensors.get(&format!("{p}.v")),
                        ) {
                            state.insert(
                                p.to_string(),
                                AdamState {
                                    step: t.iter().next().copied().unwrap_or(0.0) as u32,
                                    m: m.clone(),
                                    v: v.clone(),
                                },
                            );
                        }
                    }
                }
                a.load_state(state);
            }
        }
    }
}

/// The outcome of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean cross-entropy of the batch (the penalty excluded).
    pub loss: f32,
    /// The L1/L2 penalty added to the loss for the gradient.
    pub penalty: f32,
    pub correct: usize,
    pub count: usize,
}

/// One optimisation step on a batch: zero the gradients, forward in train mode, cross-entropy,
/// backward (only as far as the earliest trainable parameter), L1/L2 penalty gradients, update.
pub fn train_step(
    model: &mut Model,
    x: Array4<f32>,
    labels: &[usize],
    optimizer: &mut dyn Optimizer,
    penalty: Penalty,
    rng: &mut dyn RngCore,
) -> StepOutput {
    train_step_from(model, 0, x.into_dyn(), labels, optimizer, penalty, rng)
}

/// [`train_step`] with `x` entering at unit `start` (the cached output of a frozen prefix).
pub fn train_step_from(
    model: &mut Model,
    start: usize,
    x: ArrayD<f32>,
    labels: &[usize],
    optimizer: &mut dyn Optimizer,
    penalty: Penalty,
    rng: &mut dyn RngCore,
) -> StepOutput {
    zero_grad(model.net_mut());
    let logits = {
        let mut ctx = Context::train(rng);
        let n = model.len();
        model.forward_range(x, start..n, &mut ctx)
    };
    let logits = logits
        .into_dimensionality::<Ix2>()
        .expect("logits are [N, C]");
    let (loss, grad) = cross_entropy(logits.view(), labels);
    model.backward(grad.into_dyn());
    let reg = penalty.apply(model.net_mut());
    optimizer.step(model.net_mut());
    let correct = argmax_rows(logits.view())
        .iter()
        .zip(labels)
        .filter(|(p, t)| p == t)
        .count();
    StepOutput {
        loss,
        penalty: reg,
        correct,
        count: labels.len(),
    }
}

/// Mean loss, accuracy and confusion matrix of `model` (eval mode) over `batches`.
pub fn evaluate(
    model: &mut Model,
    batches: impl Iterator<Item = Batch>,
    classes: usize,
) -> (Running, Confusion) {
    evaluate_from(model, 0, batches, classes)
}

/// [`evaluate`] with batches entering at unit `start` (the cached output of a frozen prefix).
pub fn evaluate_from(
    model: &mut Model,
    start: usize,
    batches: impl Iterator<Item = Batch>,
    classes: usize,
) -> (Running, Confusion) {
    let mut running = Running::default();
    let mut confusion = Confusion::new(classes);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    for (x, labels) in batches {
        let mut ctx = Context::eval(&mut rng);
        let n = model.len();
        let logits = model
            .forward_range(x, start..n, &mut ctx)
            .into_dimensionality::<Ix2>()
            .expect("logits are [N, C]");
        let (loss, _) = cross_entropy(logits.view(), &labels);
        let pred = argmax_rows(logits.view());
        for (&p, &t) in pred.iter().zip(&labels) {
            confusion.add(t, p);
        }
        running.add(
            loss,
            pred.iter().zip(&labels).filter(|(p, t)| p == t).count(),
            labels.len(),
        );
    }
    (running, confusion)
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f32,
    pub train_acc: f32,
    pub val_loss: f32,
    pub val_acc: f32,
    pub seconds: f32,
    /// Whether this epoch is the new best (saved to the checkpoint).
    pub best: bool,
}

/// What the loop reports as it goes. The library never prints; the CLI renders these.
pub trait Observer {
    /// After each training batch: `done` of `total` samples, running loss and accuracy.
    fn on_batch(&mut self, _epoch: usize, _done: usize, _total: usize, _running: &Running) {}
    /// After validation; `saved` when the epoch's files are being written (after every epoch, or
    /// at [`TrainConfig::save_interval`] and after the last one).
    fn on_epoch(&mut self, _record: &EpochRecord, _saved: bool) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitSummary {
    pub config: TrainConfig,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f32,
    pub best_val_acc: f32,
    /// True when early stopping ended the run before `epochs`.
    pub stopped_early: bool,
    pub train_samples: usize,
    pub val_samples: usize,
}

/// Where a run's batches come from.
pub struct Feed<'a> {
    /// The training batches of an epoch (numbered from 1).
    pub train: Box<dyn FnMut(usize) -> Box<dyn Iterator<Item = Batch>> + 'a>,
    /// The validation batches.
    pub val: Box<dyn FnMut() -> Box<dyn Iterator<Item = Batch>> + 'a>,
    pub train_samples: usize,
    pub val_samples: usize,
    /// The unit at which batches enter the model: 0 for images, the frozen prefix's length for
    /// its cached output.
    pub start: usize,
}

/// The files a run writes next to its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFiles {
    pub best: PathBuf,
    pub last: PathBuf,
    pub optim: PathBuf,
    pub metrics: PathBuf,
}

impl RunFiles {
    /// `OUT.safetensors` → `OUT.last.safetensors`, `OUT.last.optim.safetensors`, `OUT.metrics.csv`.
    pub fn for_checkpoint(best: &Path) -> Self {
        let stem = best
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let with = |suffix: &str| best.with_file_name(format!("{stem}{suffix}"));
        RunFiles {
            best: best.to_path_buf(),
            last: with(".last.safetensors"),
            optim: with(".last.optim.safetensors"),
            metrics: with(".metrics.csv"),
        }
    }

    /// The optimizer-state file that goes with a checkpoint passed to `--resume`.
    pub fn optim_for(checkpoint: &Path) -> PathBuf {
        let stem = checkpoint
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        checkpoint.with_file_name(format!("{stem}.optim.safetensors"))
    }
}

/// Where a resumed run starts.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Epochs already done.
    pub history: Vec<EpochRecord>,
    /// Optimizer state tensors, when they were saved.
    pub optimizer: Option<HashMap<String, ArrayD<f32>>>,
}

impl Resume {
    /// Reads the training summary of a checkpoint and the optimizer state beside it, if any.
    ///
    /// # Errors
    /// [`Error::Format`] naming the file when the summary or the state cannot be read.
    pub fn from_checkpoint(file: &WeightFile) -> Result<Self> {
        let history = match file.metadata().get("training") {
            Some(s) if !s.is_empty() => {
                let summary: FitSummary = serde_json::from_str(s).map_err(|e| {
                    Error::format(
                        file.path(),
                        format!("metadata \"training\" is not a tl training summary: {e}"),
                    )
                })?;
                summary.history
            }
            _ => Vec::new(),
        };
        let optim_path = RunFiles::optim_for(file.path());
        let optimizer = if optim_path.is_file() {
            let f = WeightFile::open(&optim_path)?;
            let mut m = HashMap::new();
            for name in f.names() {
                let shape = f.entry(name).expect("listed").shape.clone();
                let v = match f.f32_data(name)? {
                    TensorData::Mapped(m) => m.as_slice().to_vec(),
                    TensorData::Owned(v) => v,
                };
                m.insert(
                    name.to_string(),
                    ArrayD::from_shape_vec(shape, v).expect("length checked"),
                );
            }
            Some(m)
        } else {
            None
        };
        Ok(Resume { history, optimizer })
    }
}

/// Trains `model` for `config.epochs` epochs (minus those in `resume`), validating after each,
/// writing the best checkpoint to `files.best` and the last to `files.last`, stopping early after
/// `config.patience` epochs without a better val_loss. The model ends holding the best weights.
///
/// `feed` gives the batches of an epoch and says where they enter the model. The files are
/// written after an epoch once `config.save_interval` seconds have passed since they were last
/// written (or since the run began), and after the last epoch; a best epoch not yet written is
/// kept in memory until then. They are written on a background thread while the next epoch
/// trains; every file is complete when `fit` returns, with or without an error.
///
/// # Errors
/// [`Error::NonFinite`] when the loss stops being finite (the best checkpoint is then the best
/// epoch before it, written if it was not yet);
/// [`Error::Io`] when a file cannot be written, returned when the next epoch ends or the run does.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    model: &mut Model,
    config: &TrainConfig,
    feed: Feed<'_>,
    files: &RunFiles,
    resume: Resume,
    observer: &mut dyn Observer,
) -> Result<FitSummary> {
    config.validate()?;
    let Feed {
        mut train,
        mut val,
        train_samples,
        val_samples,
        start: first_unit,
    } = feed;
    let mut optimizer = config.build_optimizer();
    if let Some(state) = resume.optimizer {
        optimizer.load_state(state);
    }
    let penalty = config.penalty();
    let classes = model.classes().len();
    let mut stopper = EarlyStopping::new(config.patience);
    let mut history = resume.history;
    for r in history.iter() {
        stopper.update(r.epoch, r.val_loss);
    }
    // Whether the weights in the model are the best checkpoint's (then nothing to restore).
    let mut holds_best = false;
    let mut stopped_early = false;
    let first = history.last().map_or(1, |r| r.epoch + 1);
    // Dropped on an early return: it then waits for the files in flight, and the error that
    // caused the return is the one reported.
    let mut writer = CheckpointWriter::start(files.clone());
    // Any finite interval: one longer than a Duration holds never comes.
    let interval = std::time::Duration::try_from_secs_f32(config.save_interval)
        .unwrap_or(std::time::Duration::MAX);
    let mut last_write = Instant::now();
    // The best epoch's checkpoint while its files are unwritten, and memory for the next one.
    let mut unwritten_best: Option<FileImage> = None;
    let mut spare_best: Option<FileImage> = None;
    let summary = |history: &[EpochRecord], stopper: &EarlyStopping, stopped_early| {
        let best = stopper
            .best_epoch()
            .and_then(|e| history.iter().find(|r| r.epoch == e));
        FitSummary {
            config: config.clone(),
            history: history.to_vec(),
            best_epoch: best.map_or(0, |r| r.epoch),
            best_val_loss: best.map_or(f32::NAN, |r| r.val_loss),
            best_val_acc: best.map_or(f32::NAN, |r| r.val_acc),
            stopped_early,
            train_samples,
            val_samples,
        }
    };
    for epoch in first..=config.epochs {
        let start = Instant::now();
        let mut running = Running::default();
        // Dropout masks come from (seed, epoch), so a resumed run repeats an uninterrupted one.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
            config.seed ^ 0x005e_edd0_u64 ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        for (step, (x, labels)) in train(epoch).enumerate() {
            let out = train_step_from(
                model,
                first_unit,
                x,
                &labels,
                optimizer.as_dyn(),
                penalty,
                &mut rng,
            );
            if !out.loss.is_finite() || !out.penalty.is_finite() {
                if let Some(best) = unwritten_best {
                    // After the files in flight; the loss is the error to report.
                    let _ = writer.finish();
                    let _ = best
                        .write_atomic(&files.best)
                        .and_then(|_| write_metrics(&files.metrics, &history));
                }
                return Err(Error::NonFinite {
                    value: if out.loss.is_finite() {
                        out.penalty
                    } else {
                        out.loss
                    },
                    epoch,
                    step: step + 1,
                });
            }
            running.add(out.loss, out.correct, out.count);
            observer.on_batch(epoch, running.count(), train_samples, &running);
        }
        if config.precise_bn {
            let n = model.len();
            for (x, _) in train(epoch) {
                let mut ctx = Context::recalibrate(&mut rng);
                model.forward_range(x, first_unit..n, &mut ctx);
            }
        }
        let (val_run, _) = evaluate_from(model, first_unit, val(), classes);
        let (val_loss, val_acc) = if val_run.count() > 0 {
            (val_run.loss(), val_run.accuracy())
        } else {
            (running.loss(), running.accuracy())
        };
        let verdict = stopper.update(epoch, val_loss);
        let record = EpochRecord {
            epoch,
            train_loss: running.loss(),
            train_acc: running.accuracy(),
            val_loss,
            val_acc,
            seconds: start.elapsed().as_secs_f32(),
            best: verdict == Verdict::Improved,
        };
        history.push(record.clone());
        let json =
            serde_json::to_string(&summary(&history, &stopper, false)).expect("summary serialises");
        holds_best = verdict == Verdict::Improved;
        let save =
            epoch == config.epochs || verdict == Verdict::Stop || last_write.elapsed() >= interval;
        if save {
            // A best epoch not yet written goes with this one's files, unless this one is best.
            let earlier_best = if holds_best {
                spare_best = unwritten_best.take().or(spare_best.take());
                None
            } else {
                unwritten_best.take()
            };
            // After the previous epoch's files: one snapshot at a time, files in epoch order.
            writer.submit(|previous| {
                // Into the memory of the previous snapshot: no fresh pages to fault in.
                let mut snapshot = previous.unwrap_or_default();
                if let Some(image) = snapshot.earlier_best.take() {
                    spare_best.get_or_insert(image);
                }
                model.checkpoint_into(&json, &mut snapshot.checkpoint);
                optimizer.state_into(&mut snapshot.optimizer);
                snapshot.best = holds_best;
                snapshot.earlier_best = earlier_best;
                snapshot.history.clone_from(&history);
                snapshot
            })?;
            last_write = Instant::now();
        } else if holds_best {
            let mut image = unwritten_best
                .take()
                .or(spare_best.take())
                .unwrap_or_default();
            model.checkpoint_into(&json, &mut image);
            unwritten_best = Some(image);
        }
        observer.on_epoch(&record, save);
        if verdict == Verdict::Stop {
            stopped_early = epoch < config.epochs;
            break;
        }
    }
    writer.finish()?;
    // Restore the best weights from their checkpoint (read in place from the file's map).
    if !holds_best && files.best.is_file() {
        let f = WeightFile::open(&files.best)?;
        crate::weights::load_into(model.net_mut(), &f, &|_| false, &|_| false)?;
    }
    Ok(summary(&history, &stopper, stopped_early))
}
