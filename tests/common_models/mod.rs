//! Shared helpers for the model tests: fixtures, synthetic models, closeness.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::ArrayD;
use tl::models::{synthetic, Arch, Init, Model};
use tl::nn::Context;

/// `tests/fixtures/models/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// Every F32 tensor of a fixture file under `tests/fixtures/models`.
pub fn read_fixture(name: &str) -> HashMap<String, ArrayD<f32>> {
    read_fixture_in("models", name)
}

/// Every F32 tensor of the fixture file `tests/fixtures/<dir>/<name>`.
pub fn read_fixture_in(dir: &str, name: &str) -> HashMap<String, ArrayD<f32>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name);
    let bytes = std::fs::read(path).expect("fixture present");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid fixture");
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(n, v)| {
            let data: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, ArrayD::from_shape_vec(v.shape().to_vec(), data).unwrap())
        })
        .collect()
}

/// A model with the synthetic weights of `scripts/synthetic.py`.
pub fn synthetic_model(arch: Arch) -> Model {
    let mut m = Model::new(arch, 1000, Init::Zeros);
    synthetic::fill(m.net_mut());
    m
}

/// Inference of `stage` on `x`.
pub fn run(model: &mut Model, x: ArrayD<f32>, stage: &str) -> ArrayD<f32> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut ctx = Context::eval(&mut rng);
    let stage = model.resolve_stage("--layer", stage).unwrap();
    model.forward_to(x, &stage, &mut ctx)
}

/// Asserts `|got − want| ≤ rel·|want| + floor` elementwise, with `floor = rel·max|want|·0.1`
/// (values near zero are compared at the tensor's scale). Returns the worst relative error.
pub fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, rel: f32) -> f32 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    let floor = rel * scale * 0.1;
    let mut worst = 0.0f32;
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= rel * b.abs() + floor,
            "{what}: element {i}: got {a}, want {b} (error {err}, scale {scale})"
        );
        worst = worst.max(err / (b.abs() + floor / rel).max(f32::MIN_POSITIVE));
    }
    worst
}

/// Every parameter and buffer of `model` by name, for writing a weight file.
pub fn tensors_of(model: &Model) -> Vec<(String, ndarray::ArrayViewD<'_, f32>)> {
    let mut t = Vec::new();
    model.visit(&mut |n, p| t.push((n.to_string(), p.value())));
    t
}

/// A fresh, empty folder `tl-<tag>-<pid>` in the temporary directory.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A weight cache that stays empty, so no test finds fetched weights.
pub fn empty_cache() -> PathBuf {
    std::env::temp_dir().join("tl-tests-empty-cache")
}

/// Runs the `tl` binary with an empty cache and `RUST_BACKTRACE=1` (as CI sets it).
pub fn tl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tl"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("TL_HOME", empty_cache())
        .output()
        .expect("tl runs")
}

/// Asserts a failed run: non-zero exit, no panic or backtrace, and every needle in the message.
pub fn fails_naming(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("internal error"),
        "{err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}
