//! One row of inputs read by a strided window (a convolution's kernel columns, a pooling
//! window), split into its stride phases so that every kernel column reads a contiguous slice.
//!
//! Kernel column `kj` of output `o` reads input `o·S + kj − P`. With `kj − P = q·S + r`
//! (`0 ≤ r < S`) that is element `o + q` of phase `r` (`x[r], x[r + S], x[r + 2S], …`), so the
//! outputs for which that input exists read a contiguous run of phase `r`: one split of the row
//! replaces `k` strided gathers.

use std::ops::Range;

use super::geometry::valid_outputs;

/// A row buffer split into stride phases, and where each kernel column reads from it.
pub struct PhasedRow {
    stride: usize,
    phase_len: usize,
    /// The phases, one after another, each `phase_len` long.
    phases: Vec<f32>,
    /// Per kernel column: the outputs it reaches and the start of their inputs in `phases`.
    taps: Vec<(Range<usize>, usize)>,
}

impl PhasedRow {
    /// For rows of `n` inputs and `out` outputs, a kernel of `kernel` columns, stride `stride`
    /// and zero padding `padding` (`padding < kernel`).
    pub fn new(n: usize, out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        let phase_len = n.div_ceil(stride);
        let taps = (0..kernel)
            .map(|kj| {
                let (lo, hi) = valid_outputs(n, out, kj, stride, padding);
                let off = kj as isize - padding as isize;
                let (q, r) = (
                    off.div_euclid(stride as isize),
                    off.rem_euclid(stride as isize) as usize,
                );
                // For no output (lo == hi) the start is never read.
                let start = r * phase_len + (lo as isize + q).max(0) as usize;
                (lo..hi, start)
            })
            .collect();
        PhasedRow {
            stride,
            phase_len,
            phases: vec![0.0; stride * phase_len],
            taps,
        }
    }

    /// Splits `row` (`n` values) into its phases.
    pub fn split(&mut self, row: &[f32]) {
        self.split_rows([row]);
    }

    /// Splits several rows (`n` values each) into their phases, kept side by side: row `i` of
    /// them is then read by [`PhasedRow::tap_at`]`(i, ·)`. A kernel that reads one input row
    /// from several output rows (a tall strided kernel) splits it once.
    pub fn split_rows<'r>(&mut self, rows: impl IntoIterator<Item = &'r [f32]>) {
        let (stride, phase_len) = (self.stride, self.phase_len);
        let per_row = stride * phase_len;
        for (count, row) in rows.into_iter().enumerate() {
            if self.phases.len() < (count + 1) * per_row {
                self.phases.resize((count + 1) * per_row, 0.0);
            }
            let split = &mut self.phases[count * per_row..(count + 1) * per_row];
            if stride == 2 {
                // The common case, as one pass over pairs (which vectorises).
                let (even, odd) = split.split_at_mut(phase_len);
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                    (*e, *o) = (pair[0], pair[1]);
                }
                if row.len() % 2 == 1 {
                    even[row.len() / 2] = row[row.len() - 1];
                }
            } else {
                for (r, phase) in split.chunks_exact_mut(phase_len).enumerate() {
                    for (d, v) in phase.iter_mut().zip(row.iter().skip(r).step_by(stride)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// Kernel column `kj`: the outputs it reaches (possibly none) and their inputs, in order,
    /// from the last [`PhasedRow::split`].
    pub fn tap(&self, kj: usize) -> (Range<usize>, &[f32]) {
        self.tap_at(0, kj)
    }

    /// [`PhasedRow::tap`] of row `i` of the last [`PhasedRow::split_rows`].
    pub fn tap_at(&self, i: usize, kj: usize) -> (Range<usize>, &[f32]) {
        let (outputs, start) = self.taps[kj].clone();
        let start = start + i * self.stride * self.phase_len;
        let inputs = &self.phases[start..start + outputs.len()];
        (outputs, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tap_reads_the_inputs_of_a_direct_gather() {
        for (n, k, s, p) in [
            (224, 7, 2, 3),
            (9, 3, 2, 1),
            (7, 1, 2, 0),
            (11, 5, 4, 2),
            (6, 3, 1, 1),
        ] {
            let out = super::super::geometry::output_size(n, k, s, p);
            let row: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut phased = PhasedRow::new(n, out, k, s, p);
            phased.split(&row);
            // Split again beside two other rows: the same taps at row 1 of 3.
            let (before, after): (Vec<f32>, Vec<f32>) = (vec![-1.0; n], vec![-2.0; n]);
            let mut three = PhasedRow::new(n, out, k, s, p);
            three.split_rows([&before[..], &row[..], &after[..]]);
            for kj in 0..k {
                assert_eq!(
                    three.tap_at(1, kj),
                    phased.tap(kj),
                    "n {n} k {k} s {s} p {p}"
                );
                let (_, first) = three.tap_at(0, kj);
                assert!(first.iter().all(|&v| v == -1.0));
                let (_, last) = three.tap_at(2, kj);
                assert!(last.iter().all(|&v| v == -2.0));
            }
            for kj in 0..k {
                let (outputs, inputs) = phased.tap(kj);
                let want: Vec<(usize, f32)> = (0..out)
                    .filter_map(|o| {
                        let i = (o * s + kj) as isize - p as isize;
                        (i >= 0 && (i as usize) < n).then_some((o, i as f32))
                    })
                    .collect();
                let got: Vec<(usize, f32)> = outputs.zip(inputs.iter().copied()).collect();
                assert_eq!(got, want, "n {n} k {k} s {s} p {p} kj {kj}");
            }
        }
    }
}
