//! Early stopping on a monitored loss (Keras's `EarlyStopping(monitor="val_loss", patience,
//! restore_best_weights=True)`): training stops once `patience` epochs in a row have not improved
//! on the best value.

/// What the stopper says after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new best value: save it.
    Improved,
    /// No improvement, keep going.
    Wait,
    /// `patience` epochs without improvement: stop.
    Stop,
}

/// Tracks the best value and the epochs since it.
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    patience: usize,
    best: f32,
    best_epoch: Option<usize>,
    waited: usize,
}

impl EarlyStopping {
    /// A stopper that allows `patience` epochs without improvement (0 disables stopping).
    pub fn new(patience: usize) -> Self {
        EarlyStopping {
            patience,
            best: f32::INFINITY,
            best_epoch: None,
            waited: 0,
        }
    }

    /// Resumes with a best value already known.
    pub fn with_best(mut self, best: f32, epoch: usize) -> Self {
        self.best = best;
        self.best_epoch = Some(epoch);
        self
    }

    /// Records the value of `epoch`.
    pub fn update(&mut self, epoch: usize, value: f32) -> Verdict {
        if value < self.best {
            self.best = value;
            self.best_epoch = Some(epoch);
            self.waited = 0;
            Verdict::Improved
        } else {
            self.waited += 1;
            if self.patience > 0 && self.waited >= self.patience {
                Verdict::Stop
            } else {
                Verdict::Wait
            }
        }
    }

    /// The best value so far.
    pub fn best(&self) -> f32 {
        self.best
    }

    /// The epoch of the best value.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        let mut s = EarlyStopping::new(2);
        assert_eq!(s.update(1, 1.0), Verdict::Improved);
        assert_eq!(s.update(2, 0.5), Verdict::Improved);
        assert_eq!(s.update(3, 0.6), Verdict::Wait);
        assert_eq!(s.update(4, 0.7), Verdict::Stop);
        assert_eq!((s.best(), s.best_epoch()), (0.5, Some(2)));
    }
}
