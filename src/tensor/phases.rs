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
        for (r, phase) in self.phases.chunks_exact_mut(self.phase_len).enumerate() {
            for (d, v) in phase
                .iter_mut()
                .zip(row.iter().skip(r).step_by(self.stride))
            {
                *d = *v;
            }
        }
    }

    /// Kernel column `kj`: the outputs it reaches (possibly none) and their inputs, in order,
    /// from the last [`PhasedRow::split`].
    pub fn tap(&self, kj: usize) -> (Range<usize>, &[f32]) {
        let (outputs, start) = self.taps[kj].clone();
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
