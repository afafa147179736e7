//! Shared by the engine tests: fixture loading, closeness checks, and a finite-difference
//! gradient checker. Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::PathBuf;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tl::nn::{Context, Layer, Mode};

/// A safetensors fixture written by `scripts/gen_fixtures.py`.
pub struct Fixture {
    bytes: Vec<u8>,
    cases: Vec<Value>,
}

impl Fixture {
    /// Opens `tests/fixtures/<name>`.
    pub fn open(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen_fixtures.py)", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let cases = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("cases"))
            .map(|s| serde_json::from_str(s).expect("cases JSON"))
            .unwrap_or_default();
        Fixture { bytes, cases }
    }

    /// The `(name, config)` of every case of `kind`, in the script's order.
    ///
    /// # Panics
    /// Panics when there is none, so that a test can never pass by checking nothing.
    pub fn cases(&self, kind: &str) -> Vec<(String, Value)> {
        let found: Vec<_> = self
            .cases
            .iter()
            .filter(|c| c["kind"] == kind)
            .map(|c| {
                (
                    c["name"].as_str().expect("case name").to_string(),
                    c["config"].clone(),
                )
            })
            .collect();
        assert!(!found.is_empty(), "no fixture cases of kind {kind}");
        found
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .expect("safetensors")
            .tensor(name)
            .is_ok()
    }

    /// An f32 tensor.
    pub fn f32(&self, name: &str) -> ArrayD<f32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}: dtype");
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        ArrayD::from_shape_vec(IxDyn(t.shape()), values).expect("shape")
    }

    /// An i64 tensor, as indices.
    pub fn indices(&self, name: &str) -> Vec<usize> {
        let st = SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}: dtype");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect()
    }
}

/// Asserts `|got − want| ≤ max(atol, rtol·|want|)` element by element, with equal shapes.
pub fn assert_close_tol(
    what: &str,
    got: ArrayViewD<'_, f32>,
    want: ArrayViewD<'_, f32>,
    rtol: f32,
    atol: f32,
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let mut worst: Option<(usize, f32, f32)> = None;
    let mut bad = 0;
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        let ok = (g - w).abs() <= atol.max(rtol * w.abs());
        if !ok {
            bad += 1;
            if worst.is_none_or(|(_, wg, ww)| (g - w).abs() > (wg - ww).abs()) {
                worst = Some((i, g, w));
            }
        }
    }
    if let Some((i, g, w)) = worst {
        panic!(
            "{what}: {bad} of {} values differ; worst at flat index {i}: got {g}, want {w}",
            got.len()
        );
    }
}

/// PyTorch parity tolerance: 1e-4 relative with a 1e-5 absolute floor.
pub fn assert_close(what: &str, got: ArrayViewD<'_, f32>, want: ArrayViewD<'_, f32>) {
    assert_close_tol(what, got, want, 1e-4, 1e-5);
}

/// A seeded array of values drawn uniformly from `[lo, hi)`.
pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

/// A seeded array whose values are all at least `gap` apart and at least `gap` away from zero:
/// a shuffled grid, so that no finite-difference step crosses a kink of ReLU, step or max pool.
pub fn spaced(shape: &[usize], gap: f32, seed: u64) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let mut values: Vec<f32> = (0..n)
        .map(|i| (i as f32 - (n / 2) as f32 + 0.5) * gap)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        values.swap(i, rng.random_range(0..=i));
    }
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape")
}

/// How a gradient check runs.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Train or eval mode for every forward pass.
    pub mode: Mode,
    /// Central-difference step.
    pub h: f64,
    /// Allowed relative error of each gradient, `‖a − n‖∞ / ‖n‖∞`.
    pub rtol: f64,
}

impl Check {
    /// Train mode, step 1e-2, 0.2% error: f32 forward passes with an f64 loss. With inputs of
    /// order 1, rounding puts about 1e-7 to 1e-6 of absolute noise on the loss; divided by `2h`
    /// that is at most 5e-5 on a gradient of order 1, and the truncation error `h²·f'''/6` of
    /// smooth layers is about 2e-5. A wrong formula is off by far more (a 2% error fails).
    pub fn train() -> Self {
        Check {
            mode: Mode::Train,
            h: 1e-2,
            rtol: 2e-3,
        }
    }

    /// As [`Check::train`], in eval mode.
    pub fn eval() -> Self {
        Check {
            mode: Mode::Eval,
            ..Self::train()
        }
    }
}

const DROPOUT_SEED: u64 = 7;

/// The values of every parameter and buffer, in visiting order.
fn snapshot(layer: &dyn Layer) -> Vec<ArrayD<f32>> {
    let mut out = Vec::new();
    layer.visit("", &mut |_, p| out.push(p.value().to_owned()));
    out
}

fn restore(layer: &mut dyn Layer, values: &[ArrayD<f32>]) {
    let mut i = 0;
    layer.visit_mut("", &mut |_, p| {
        p.set_value(values[i].clone());
        i += 1;
    });
}

/// Runs a tracked forward pass with the dropout RNG re-seeded.
fn forward(layer: &mut dyn Layer, x: &ArrayD<f32>, mode: Mode) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(DROPOUT_SEED);
    let mut ctx = Context {
        mode,
        rng: &mut rng,
        grad_enabled: true,
        input_grad: true,
        recalibrate: false,
    };
    layer.forward(x.clone(), &mut ctx)
}

/// `Σ y·r` in f64.
fn dot(y: &ArrayD<f32>, r: &ArrayD<f32>) -> f64 {
    assert_eq!(y.shape(), r.shape(), "output shape changed");
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares an analytic gradient with a numeric one: `‖a − n‖∞ ≤ rtol·‖n‖∞`, where `‖n‖∞` is at
/// least `1e-3` of the output scale so that an all-zero gradient is compared absolutely.
fn compare(what: &str, analytic: &ArrayD<f32>, numeric: &[f64], rtol: f64, floor: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    let scale = numeric.iter().fold(floor, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let e = (a as f64 - n).abs();
        if e > worst {
            (worst, at) = (e, i);
        }
    }
    assert!(
        worst <= rtol * scale,
        "{what}: analytic and numeric gradients differ by {worst:.3e} (allowed {:.3e}) at flat \
         index {at}: analytic {}, numeric {}",
        rtol * scale,
        analytic.iter().nth(at).expect("index"),
        numeric[at]
    );
}

/// Checks `∂L/∂x` and the gradient of every trainable parameter of `layer` at input `x`, for
/// `L = Σ y·r` with a fixed random `r`, against central differences. Also checks that a second
/// backward pass accumulates (parameter gradients double). Returns the analytic input gradient.
///
/// # Panics
/// Panics with the name of the first gradient that disagrees.
pub fn gradcheck(name: &str, layer: &mut dyn Layer, x: ArrayD<f32>, check: Check) -> ArrayD<f32> {
    let saved = snapshot(layer);
    layer.visit_mut("", &mut |_, p| p.zero_grad());
    let y = forward(layer, &x, check.mode);
    let r = uniform(y.shape(), -1.0, 1.0, 99);
    let dx = layer
        .backward(r.clone())
        .unwrap_or_else(|| panic!("{name}: no input gradient"));
    assert_eq!(dx.shape(), x.shape(), "{name}: input gradient shape");
    let mut analytic: Vec<(String, ArrayD<f32>)> = Vec::new();
    layer.visit("", &mut |pname, p| {
        if p.trainable() {
            let g = p
                .grad
                .clone()
                .unwrap_or_else(|| panic!("{name}: {pname} has no gradient"));
            analytic.push((pname.to_string(), g));
        } else {
            assert!(p.grad.is_none(), "{name}: frozen {pname} got a gradient");
        }
    });
    restore(layer, &saved);
    let floor = 1e-3 * r.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));

    let loss = |layer: &mut dyn Layer, x: &ArrayD<f32>| {
        let out = dot(&forward(layer, x, check.mode), &r);
        restore(layer, &saved);
        out
    };

    let mut numeric = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let mut xp = x.clone();
        let v = xp.as_slice_mut().expect("standard layout")[i];
        xp.as_slice_mut().expect("standard layout")[i] = (v as f64 + check.h) as f32;
        let up = loss(layer, &xp);
        xp.as_slice_mut().expect("standard layout")[i] = (v as f64 - check.h) as f32;
        let down = loss(layer, &xp);
        numeric.push((up - down) / (2.0 * check.h));
    }
    compare(&format!("{name}: ∂L/∂x"), &dx, &numeric, check.rtol, floor);

    for (k, (pname, grad)) in analytic.iter().enumerate() {
        let idx = trainable_index(layer, k);
        let mut numeric = Vec::with_capacity(grad.len());
        for i in 0..grad.len() {
            let mut eval = |delta: f64| {
                let mut values = saved.clone();
                let slot = values[idx].as_slice_mut().expect("standard layout");
                slot[i] = (slot[i] as f64 + delta) as f32;
                restore(layer, &values);
                let out = dot(&forward(layer, &x, check.mode), &r);
                restore(layer, &saved);
                out
            };
            numeric.push((eval(check.h) - eval(-check.h)) / (2.0 * check.h));
        }
        compare(
            &format!("{name}: ∂L/∂{pname}"),
            grad,
            &numeric,
            check.rtol,
            floor,
        );
    }

    // Gradients accumulate: a second pass adds the same amounts again.
    forward(layer, &x, check.mode);
    layer.backward(r);
    restore(layer, &saved);
    let mut k = 0;
    layer.visit("", &mut |pname, p| {
        if p.trainable() {
            let twice = analytic[k].1.mapv(|v| 2.0 * v);
            let got = p.grad.as_ref().expect("gradient");
            assert_close_tol(
                &format!("{name}: accumulated ∂L/∂{pname}"),
                got.view(),
                twice.view(),
                1e-5,
                1e-6,
            );
            k += 1;
        }
    });
    layer.visit_mut("", &mut |_, p| p.zero_grad());
    dx
}

/// The visiting index (among all parameters and buffers) of the `k`-th trainable parameter.
fn trainable_index(layer: &dyn Layer, k: usize) -> usize {
    let mut flags = Vec::new();
    layer.visit("", &mut |_, p| flags.push(p.trainable()));
    flags
        .iter()
        .enumerate()
        .filter(|(_, &t)| t)
        .nth(k)
        .map(|(i, _)| i)
        .expect("trainable parameter")
}

/// Checks the gradient of a loss `f(x) -> (L, ∂L/∂x)` against central differences of `L`.
pub fn gradcheck_loss(name: &str, x: &ArrayD<f32>, f: impl Fn(&ArrayD<f32>) -> (f32, ArrayD<f32>)) {
    let (_, analytic) = f(x);
    assert_eq!(analytic.shape(), x.shape(), "{name}: gradient shape");
    let h = 1e-2;
    let mut numeric = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let mut xp = x.clone();
        let v = xp.as_slice_mut().expect("standard layout")[i];
        xp.as_slice_mut().expect("standard layout")[i] = (v as f64 + h) as f32;
        let up = f(&xp).0 as f64;
        xp.as_slice_mut().expect("standard layout")[i] = (v as f64 - h) as f32;
        let down = f(&xp).0 as f64;
        numeric.push((up - down) / (2.0 * h));
    }
    compare(&format!("{name}: ∂L/∂x"), &analytic, &numeric, 2e-3, 1e-4);
}
