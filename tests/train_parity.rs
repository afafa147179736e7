//! Fine-tuning parity with PyTorch: three SGD-with-momentum steps with `--freeze-until conv5` and a
//! new head, on ResNet-18 and on VGG16 (`--cut fc7`), against tests/fixtures/train from
//! scripts/gen_train_fixtures.py. Trainable tensors and BatchNorm statistics within 1e-4 relative
//! (the trained tensors through sampled changes and whole-change projections, see the script);
//! frozen tensors bit-identical to their starting values. A sampled change is compared within
//! 1e-4 of itself plus two ulps of the weight it changed (the resolution an f32 weight stores
//! its change at), which is far tighter than comparing the weights themselves at 1e-4.

mod common_models;

use std::collections::HashMap;

use ndarray::{Array4, ArrayD};
use tl::models::{synthetic, Arch, Init, Model};
use tl::nn::ParamKind;
use tl::train::{train_step, Penalty, Sgd};

fn fixture(name: &str) -> HashMap<String, ArrayD<f32>> {
    common_models::read_fixture_in("train", name)
}

fn close(what: &str, got: f64, want: f64, scale: f64) {
    let tol = 1e-4 * want.abs() + 1e-4 * scale + 1e-9;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (scale {scale})"
    );
}

fn check(arch: Arch, input: &[usize], fixture_name: &str) {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut model = Model::new(arch, 1000, Init::Zeros);
    model
        .attach_head(
            arch.default_cut(),
            &[],
            vec!["a".into(), "b".into(), "c".into()],
            0.5,
            &mut rng,
        )
        .unwrap();
    synthetic::fill(model.net_mut());
    model.set_dropout(0.0).unwrap();
    model.freeze_until("conv5").unwrap();
    let mut before: HashMap<String, (ArrayD<f32>, bool, ParamKind)> = HashMap::new();
    model.visit(&mut |n, p| {
        before.insert(
            n.to_string(),
            (p.value().to_owned(), p.trainable(), p.kind()),
        );
    });

    let name = format!("train/{}", arch.name());
    let x: Array4<f32> = synthetic::tensor(&name, input)
        .into_dimensionality()
        .unwrap();
    let labels = [0, 1, 2, 1];
    let mut sgd = Sgd::new(0.001, 0.9);
    let want = fixture(fixture_name);
    for step in 0..3 {
        let out = train_step(
            &mut model,
            x.clone(),
            &labels,
            &mut sgd,
            Penalty::default(),
            &mut rng,
        );
        close(
            &format!("loss of step {step}"),
            out.loss as f64,
            want["losses"][[step]] as f64,
            0.0,
        );
    }

    let mut checked = 0;
    model.visit(&mut |n, p| {
        let (start, trainable, kind) = &before[n];
        let now = p.value();
        let trained_buffer = kind == &ParamKind::Buffer && want.contains_key(n);
        if !trainable && !trained_buffer {
            assert!(now == start.view(), "frozen {n} changed");
            return;
        }
        if let Some(whole) = want.get(n) {
            let scale = whole.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64));
            for (i, (a, b)) in now.iter().zip(whole.iter()).enumerate() {
                close(&format!("{n}[{i}]"), *a as f64, *b as f64, scale * 1e-2);
            }
        } else {
            let deltas = &want[&format!("{n}#delta")];
            let len = now.len();
            let k = deltas.len();
            let (now_s, start_s) = (now.as_slice().unwrap(), start.as_slice().unwrap());
            let scale = deltas.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64));
            for (j, d) in deltas.iter().enumerate() {
                let i = j * len / k;
                let ours = now_s[i] as f64 - start_s[i] as f64;
                // The change of an f32 weight is only known to about one ulp of the weight.
                let ulps = 2.0
                    * f32::EPSILON as f64
                    * (start_s[i].abs() as f64).max(now_s[i].abs() as f64);
                close(
                    &format!("{n} change at {i}"),
                    ours,
                    *d as f64,
                    scale * 1e-2 + ulps * 1e4,
                );
            }
            let u = synthetic::tensor(&format!("proj/{n}"), &[len]);
            let proj: f64 = (0..len)
                .map(|i| (now_s[i] as f64 - start_s[i] as f64) * u[[i]] as f64)
                .sum();
            let abs = want[&format!("{n}#absproj")][[0]] as f64;
            close(
                &format!("{n} projected change"),
                proj,
                want[&format!("{n}#proj")][[0]] as f64,
                abs,
            );
        }
        checked += 1;
    });
    let expected = want
        .keys()
        .filter(|k| !k.contains('#') || k.ends_with("#delta"))
        .count()
        - 1;
    assert_eq!(
        checked, expected,
        "every trained tensor of the fixture was compared"
    );
}

#[test]
fn resnet18_freeze_until_conv5_matches_pytorch() {
    check(Arch::Resnet18, &[4, 3, 64, 64], "resnet18.safetensors");
}

#[test]
fn vgg16_freeze_until_conv5_cut_fc7_matches_pytorch() {
    check(Arch::Vgg16, &[4, 3, 32, 32], "vgg16.safetensors");
}
