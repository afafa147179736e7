//! What a convolution's output pass applies per output channel `c` besides the product:
//! `y = act(scale[c]·v + shift[c])`, with `act` the identity or ReLU. It carries the layer's own
//! bias (a shift), a following BatchNorm that uses its running statistics (folded in as a scale
//! and a shift), and a following ReLU, so that none of them needs a pass of its own over the
//! output.

use ndarray::{ArrayViewMut2, Axis};

/// A per-channel affine map and an optional ReLU, applied to each output value as it is written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Epilogue {
    /// `scale[c]` (none: 1).
    pub scale: Option<Vec<f32>>,
    /// `shift[c]` (none: 0).
    pub shift: Option<Vec<f32>>,
    /// `max(0, ·)` after the affine map.
    pub relu: bool,
}

impl Epilogue {
    /// Adds `bias[c]` (when there is one), nothing else.
    pub fn bias(bias: Option<Vec<f32>>) -> Self {
        Epilogue {
            scale: None,
            shift: bias,
            relu: false,
        }
    }

    /// This map followed by `y = scale[c]·v + shift[c]` (and a ReLU when `relu`): the scale
    /// multiplies this map's shift, so `s₂·(s₁·v + t₁) + t₂` becomes `(s₂·s₁)·v + (s₂·t₁ + t₂)`.
    ///
    /// # Panics
    /// Panics if this map is already followed by a ReLU (an affine map cannot follow it), or the
    /// lengths differ.
    pub fn then_affine(self, scale: &[f32], shift: &[f32], relu: bool) -> Self {
        assert!(!self.relu, "an affine map cannot be folded in after a ReLU");
        assert_eq!(
            scale.len(),
            shift.len(),
            "epilogue: scale and shift lengths"
        );
        let new_scale = match &self.scale {
            Some(s1) => s1.iter().zip(scale).map(|(a, b)| a * b).collect(),
            None => scale.to_vec(),
        };
        let new_shift = match &self.shift {
            Some(t1) => t1
                .iter()
                .zip(scale.iter().zip(shift))
                .map(|(t, (s, t2))| s * t + t2)
                .collect(),
            None => shift.to_vec(),
        };
        Epilogue {
            scale: Some(new_scale),
            shift: Some(new_shift),
            relu,
        }
    }

    /// True when it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.scale.is_none() && self.shift.is_none() && !self.relu
    }

    /// Panics unless the scale and shift (where present) have `channels` entries.
    pub fn check(&self, channels: usize) {
        for v in [&self.scale, &self.shift].into_iter().flatten() {
            assert_eq!(v.len(), channels, "epilogue: one value per output channel");
        }
    }

    /// `(scale, shift)` of channel `c`.
    #[inline]
    pub fn channel(&self, c: usize) -> (f32, f32) {
        (
            self.scale.as_ref().map_or(1.0, |s| s[c]),
            self.shift.as_ref().map_or(0.0, |t| t[c]),
        )
    }

    /// `act(scale·v + shift)`.
    #[inline]
    pub fn apply(&self, (scale, shift): (f32, f32), v: f32) -> f32 {
        let y = scale * v + shift;
        if self.relu {
            y.max(0.0)
        } else {
            y
        }
    }

    /// Applies the map to `y` `[C, positions]` in place, row `c` with channel `c`'s values.
    pub fn apply_rows(&self, mut y: ArrayViewMut2<'_, f32>) {
        if self.is_identity() {
            return;
        }
        for (c, mut row) in y.axis_iter_mut(Axis(0)).enumerate() {
            let k = self.channel(c);
            row.mapv_inplace(|v| self.apply(k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn folding_composes_bias_then_affine_then_relu() {
        let e = Epilogue::bias(Some(vec![1.0, -2.0])).then_affine(&[2.0, 0.5], &[3.0, 1.0], true);
        // channel 0: relu(2·(v + 1) + 3), channel 1: relu(0.5·(v − 2) + 1)
        assert_eq!(e.scale.as_deref(), Some(&[2.0, 0.5][..]));
        assert_eq!(e.shift.as_deref(), Some(&[5.0, 0.0][..]));
        let mut y = Array2::from_shape_vec((2, 3), vec![-4.0, 0.0, 1.5, -1.0, 2.0, 6.0]).unwrap();
        e.apply_rows(y.view_mut());
        assert_eq!(y.as_slice().unwrap(), &[0.0, 5.0, 8.0, 0.0, 1.0, 3.0]);
        let plain = Epilogue::bias(None);
        assert!(plain.is_identity());
        let mut z = Array2::from_elem((1, 2), -1.0f32);
        plain.apply_rows(z.view_mut());
        assert_eq!(z.as_slice().unwrap(), &[-1.0, -1.0]);
    }
}
