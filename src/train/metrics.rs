//! Classification metrics: running loss/accuracy, and a confusion matrix with per-class precision
//! and recall.

use ndarray::{ArrayView2, Axis};

/// The predicted class of each row of logits (first maximum).
pub fn argmax_rows(logits: ArrayView2<'_, f32>) -> Vec<usize> {
    logits
        .axis_iter(Axis(0))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

/// Mean loss and accuracy over the samples seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Running {
    loss_sum: f64,
    correct: usize,
    count: usize,
}

impl Running {
    /// Adds a batch: its mean loss, the number of correct predictions, and its size.
    pub fn add(&mut self, mean_loss: f32, correct: usize, count: usize) {
        self.loss_sum += mean_loss as f64 * count as f64;
        self.correct += correct;
        self.count += count;
    }

    /// Mean loss per sample.
    pub fn loss(&self) -> f32 {
        (self.loss_sum / self.count.max(1) as f64) as f32
    }

    /// Fraction of correct predictions.
    pub fn accuracy(&self) -> f32 {
        self.correct as f32 / self.count.max(1) as f32
    }

    /// Samples seen.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// `matrix[true][predicted]` counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    pub matrix: Vec<Vec<usize>>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Confusion {
            matrix: vec![vec![0; classes]; classes],
        }
    }

    /// Counts one prediction.
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.matrix[truth][predicted] += 1;
    }

    /// Samples counted.
    pub fn total(&self) -> usize {
        self.matrix.iter().flatten().sum()
    }

    /// Fraction on the diagonal.
    pub fn accuracy(&self) -> f32 {
        let diag: usize = (0..self.matrix.len()).map(|i| self.matrix[i][i]).sum();
        diag as f32 / self.total().max(1) as f32
    }

    /// Precision of class `c`: correct predictions of `c` over all predictions of `c` (0 when `c`
    /// was never predicted).
    pub fn precision(&self, c: usize) -> f32 {
        let predicted: usize = self.matrix.iter().map(|row| row[c]).sum();
        if predicted == 0 {
            0.0
        } else {
            self.matrix[c][c] as f32 / predicted as f32
        }
    }

    /// Recall of class `c`: correct predictions of `c` over all samples of `c` (0 without samples).
    pub fn recall(&self, c: usize) -> f32 {
        let actual: usize = self.matrix[c].iter().sum();
        if actual == 0 {
            0.0
        } else {
            self.matrix[c][c] as f32 / actual as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_recall_and_accuracy() {
        let mut c = Confusion::new(2);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 0), (1, 1)] {
            c.add(t, p);
        }
        assert_eq!(c.accuracy(), 4.0 / 6.0);
        assert_eq!(c.precision(0), 2.0 / 3.0);
        assert_eq!(c.recall(1), 2.0 / 3.0);
        let logits = ndarray::array![[0.1f32, 0.9], [2.0, -1.0]];
        assert_eq!(argmax_rows(logits.view()), vec![1, 0]);
    }
}
