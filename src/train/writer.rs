//! The files of an epoch, written on a background thread while the next epoch trains.
//!
//! At the end of an epoch that writes its files (every epoch, or the first one after each
//! [`super::TrainConfig::save_interval`] and the last) the training thread takes an
//! [`EpochSnapshot`] (the checkpoint and the optimizer state laid out as the files they become,
//! [`FileImage`]s, and the history) and hands it to the [`CheckpointWriter`]. At most one
//! snapshot is in flight: the next one is taken only after it is written, so the files are
//! written in epoch order and memory holds one snapshot (besides, between writes, the best
//! epoch's checkpoint). A written snapshot comes back to the training thread, and the next one is
//! copied into its memory (fresh pages for every epoch's copy cost ResNet-18 30–40 ms per epoch).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::trainer::{EpochRecord, RunFiles};
use crate::error::Result;
use crate::weights::{link_atomic, write_atomic, FileImage};

/// What one epoch writes.
#[derive(Default)]
pub(super) struct EpochSnapshot {
    /// The model after the epoch, the run's summary in its metadata
    /// ([`crate::models::Model::checkpoint_into`]).
    pub checkpoint: FileImage,
    /// Whether the epoch is the new best.
    pub best: bool,
    /// The best epoch's checkpoint when that is an earlier epoch whose files were not written
    /// (files are written at [`super::TrainConfig::save_interval`]); `None` otherwise.
    pub earlier_best: Option<FileImage>,
    /// The optimizer state ([`super::trainer::AnyOptimizer::state_into`]).
    pub optimizer: FileImage,
    /// Every epoch so far, for the metrics CSV.
    pub history: Vec<EpochRecord>,
}

impl EpochSnapshot {
    /// Writes, each atomically: the checkpoint to `files.best` with `files.last` linked to it
    /// for a best epoch, else an earlier best epoch's checkpoint (if unwritten) to `files.best`
    /// and this one to `files.last`; beside them, on a second thread, the optimizer state (the
    /// files' syncs then wait for the device together, not one after the other); then the
    /// metrics CSV.
    ///
    /// # Errors
    /// [`crate::Error::Io`] naming the file (the checkpoint's first when both fail); the metrics
    /// are then not written.
    pub fn write(&self, files: &RunFiles) -> Result<()> {
        let (checkpoint, optimizer) = std::thread::scope(|scope| {
            let optimizer = scope.spawn(|| self.optimizer.write_atomic(&files.optim));
            let checkpoint = if self.best {
                // The last epoch is the best one: the same bytes under the second name.
                self.checkpoint
                    .write_atomic(&files.best)
                    .and_then(|_| link_atomic(&files.best, &files.last))
            } else {
                self.earlier_best
                    .as_ref()
                    .map_or(Ok(()), |best| best.write_atomic(&files.best))
                    .and_then(|_| self.checkpoint.write_atomic(&files.last))
            };
            let optimizer = optimizer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (checkpoint, optimizer)
        });
        checkpoint.and(optimizer)?;
        write_metrics(&files.metrics, &self.history)
    }
}

pub(super) fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    write_atomic(path, |w| {
        writeln!(
            w,
            "epoch,train_loss,train_acc,val_loss,val_acc,seconds,best"
        )?;
        for r in history {
            writeln!(
                w,
                "{},{},{},{},{},{:.3},{}",
                r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.seconds, r.best
            )?;
        }
        Ok(())
    })
}

/// A thread that writes [`EpochSnapshot`]s to a run's files, one at a time.
///
/// Dropping the writer waits for the snapshot in flight and discards its result: that happens
/// when the caller is returning another error, which is the one to report.
pub(super) struct CheckpointWriter {
    /// Closed on drop, which ends the thread.
    queue: Option<Sender<EpochSnapshot>>,
    /// Each snapshot's result, with the snapshot (its memory serves the next one).
    results: Receiver<(Result<()>, EpochSnapshot)>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl CheckpointWriter {
    /// Starts the thread that writes to `files`.
    pub fn start(files: RunFiles) -> Self {
        let (queue, jobs) = mpsc::channel::<EpochSnapshot>();
        let (done, results) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for job in jobs {
                let written = job.write(&files);
                let _ = done.send((written, job));
            }
        });
        CheckpointWriter {
            queue: Some(queue),
            results,
            thread: Some(thread),
            in_flight: false,
        }
    }

    /// Waits until the snapshot in flight, if any, is written, and gives it back (its memory
    /// serves the next one).
    ///
    /// # Errors
    /// Its error: [`crate::Error::Io`] naming the file.
    fn wait(&mut self) -> Result<Option<EpochSnapshot>> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(None);
        }
        match self.results.recv() {
            Ok((written, snapshot)) => written.map(|()| Some(snapshot)),
            // The thread ended without an answer: it panicked, and so does the caller.
            Err(_) => match self.thread.take().map(JoinHandle::join) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                _ => unreachable!("the writer thread answers every snapshot"),
            },
        }
    }

    /// Waits for the snapshot in flight (see [`CheckpointWriter::wait`]), then takes the next
    /// one with `take`, which is given the last snapshot written (if any) to reuse its memory,
    /// and hands it to the thread: at most one snapshot exists at a time.
    ///
    /// # Errors
    /// The error of the snapshot in flight; the next one is then not taken.
    pub fn submit(
        &mut self,
        take: impl FnOnce(Option<EpochSnapshot>) -> EpochSnapshot,
    ) -> Result<()> {
        let snapshot = take(self.wait()?);
        self.queue
            .as_ref()
            .and_then(|q| q.send(snapshot).ok())
            .expect("the writer thread runs until the writer is dropped");
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the snapshot in flight and stops the thread.
    ///
    /// # Errors
    /// As [`CheckpointWriter::wait`].
    pub fn finish(mut self) -> Result<()> {
        self.wait().map(drop)
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}
