//! Deterministic synthetic weights: one simple rule, reproduced bit for bit by
//! `scripts/gen_fixtures.py`, so whole-model parity with torchvision is tested without committing
//! (or downloading) real weights.
//!
//! Value `i` of tensor `name` (flat C-order index): `h = murmur3_fmix32(i·0x9E3779B1 ⊕
//! fnv1a32(name))`, `u = (h >> 8)/2²⁴·2 − 1 ∈ [−1, 1)` (exact in f32), then per tensor kind:
//! weights `u·√(6/fan_in)` (Kaiming-uniform scale, `fan_in` = product of all but the first
//! dimension), biases `0.1·u`, BatchNorm `weight = 1 + 0.1·u`, `bias = 0.1·u`,
//! `running_mean = 0.1·u`, `running_var = 1 + 0.5·u`. Inputs: `u` itself.

use ndarray::ArrayD;

use crate::nn::{Layer, ParamKind};

/// FNV-1a, 32-bit.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811C_9DC5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// murmur3's 32-bit finaliser.
pub fn fmix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^ (x >> 16)
}

/// The uniform value `u ∈ [−1, 1)` for index `i` of tensor `name`.
pub fn unit(name: &str, i: usize) -> f32 {
    unit_seeded(fnv1a32(name), i)
}

fn unit_seeded(seed: u32, i: usize) -> f32 {
    let h = fmix32((i as u32).wrapping_mul(0x9E37_79B1) ^ seed);
    (h >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0
}

/// A tensor of `u` values (synthetic inputs).
pub fn tensor(name: &str, shape: &[usize]) -> ArrayD<f32> {
    let seed = fnv1a32(name);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(shape, (0..n).map(|i| unit_seeded(seed, i)).collect()).expect("shape")
}

/// The synthetic value of one parameter or buffer, by name, shape and kind.
pub fn param_values(name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
    let seed = fnv1a32(name);
    let n: usize = shape.iter().product();
    let (scale, offset) = if name.ends_with("running_var") {
        (0.5, 1.0)
    } else if name.ends_with("running_mean") {
        (0.1, 0.0)
    } else if kind == ParamKind::Weight {
        let fan_in: usize = shape[1..].iter().product();
        ((6.0f32 / fan_in as f32).sqrt(), 0.0)
    } else if shape.len() == 1 && name.ends_with("weight") {
        (0.1, 1.0)
    } else {
        (0.1, 0.0)
    };
    (0..n)
        .map(|i| unit_seeded(seed, i) * scale + offset)
        .collect()
}

/// Overwrites every parameter and buffer of `layer` with its synthetic values.
pub fn fill(layer: &mut dyn Layer) {
    layer.visit_mut("", &mut |name, p| {
        let v = param_values(name, p.shape(), p.kind());
        p.set_value(ArrayD::from_shape_vec(p.shape().to_vec(), v).expect("shape"));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_is_pinned() {
        // Values the Python twin in scripts/gen_fixtures.py must produce too.
        assert_eq!(fnv1a32(""), 0x811C_9DC5);
        assert_eq!(fnv1a32("a"), 0xE40C_292C);
        // numpy's float32 results for the same indices
        assert_eq!(unit("x", 0), -0.629_975_56);
        assert_eq!(unit("x", 1), -0.385_883_33);
        assert_eq!(unit("x", 2), 0.724_188_9);
    }
}
