//! Whole-model parity with torchvision (fixtures from scripts/gen_model_fixtures.py, weights from
//! the synthetic rule), loading from safetensors files (f32 in place, f16, bf16, timm names), and
//! the loader's errors.

mod common_models;

use std::collections::HashMap;

use common_models::{assert_close, read_fixture, run, synthetic_model, tensors_of, tmpdir};
use ndarray::ArrayD;
use tl::models::{synthetic, Arch, Init, Model};
use tl::weights::{save_atomic, WeightFile};

fn input() -> ArrayD<f32> {
    synthetic::tensor("input", &[2, 3, 224, 224])
}

#[test]
fn vgg16_matches_torchvision() {
    let want = read_fixture("vgg16.safetensors");
    let mut m = synthetic_model(Arch::Vgg16);
    let pool5 = run(&mut m, input(), "pool5");
    assert_close("vgg16 pool5", &pool5, &want["pool5"], 1e-4);
    let fc7 = run(&mut m, input(), "fc7");
    assert_close("vgg16 fc7", &fc7, &want["fc7"], 1e-4);
    let logits = run(&mut m, input(), "fc8");
    assert_close("vgg16 logits", &logits, &want["logits"], 1e-4);
}

#[test]
fn resnet18_matches_torchvision() {
    let want = read_fixture("resnet18.safetensors");
    let mut m = synthetic_model(Arch::Resnet18);
    let conv5 = run(&mut m, input(), "conv5");
    assert_close("resnet18 conv5", &conv5, &want["conv5"], 1e-4);
    let pool = run(&mut m, input(), "pool");
    assert_close("resnet18 pool", &pool, &want["pool"], 1e-4);
    let logits = run(&mut m, input(), "fc");
    assert_close("resnet18 logits", &logits, &want["logits"], 1e-4);
}

fn load(arch: Arch, path: &std::path::Path) -> Model {
    let file = WeightFile::open(path).unwrap();
    let mut m = Model::new(arch, 1000, Init::Zeros);
    m.load_weights(&file).unwrap();
    m
}

#[test]
fn vgg16_loads_in_place_from_the_map_and_from_timm_names() {
    let dir = tmpdir("pretrained-vgg");
    let src = synthetic_model(Arch::Vgg16);
    let path = dir.join("vgg16.safetensors");
    save_atomic(&path, tensors_of(&src), HashMap::new()).unwrap();
    let file = WeightFile::open(&path).unwrap();
    let mut m = Model::new(Arch::Vgg16, 1000, Init::Zeros);
    let report = m.load_weights(&file).unwrap();
    assert_eq!(
        (report.mapped, report.copied),
        (32, 0),
        "every f32 tensor read in place"
    );
    // Zero-copy: each weight's address lies inside the mapped file's bytes.
    let bytes = std::fs::metadata(&path).unwrap().len() as usize;
    let mut inside = 0;
    m.visit(&mut |name, p| {
        assert!(
            p.is_mapped() && file.contains(p.as_ptr()),
            "{name} was copied"
        );
        inside += p.len() * 4;
    });
    assert!(
        inside > bytes - 1_000_000,
        "{inside} of {bytes} bytes used in place"
    );
    let x = input()
        .slice(ndarray::s![0..1, .., .., ..])
        .to_owned()
        .into_dyn();
    let want = read_fixture("vgg16.safetensors");
    let fc7 = run(&mut m, x.clone(), "fc7");
    let want_fc7 = want["fc7"]
        .slice(ndarray::s![0..1, ..])
        .to_owned()
        .into_dyn();
    assert_close("mapped vgg16 fc7", &fc7, &want_fc7, 1e-4);

    // timm names: pre_logits.fc1 [4096, 512, 7, 7], pre_logits.fc2 [4096, 4096, 1, 1], head.fc.
    let timm: Vec<(String, ArrayD<f32>)> = tensors_of(&src)
        .into_iter()
        .map(|(n, v)| {
            let (name, shape): (String, Vec<usize>) = match n.as_str() {
                "classifier.0.weight" => ("pre_logits.fc1.weight".into(), vec![4096, 512, 7, 7]),
                "classifier.0.bias" => ("pre_logits.fc1.bias".into(), vec![4096]),
                "classifier.3.weight" => ("pre_logits.fc2.weight".into(), vec![4096, 4096, 1, 1]),
                "classifier.3.bias" => ("pre_logits.fc2.bias".into(), vec![4096]),
                "classifier.6.weight" => ("head.fc.weight".into(), vec![1000, 4096]),
                "classifier.6.bias" => ("head.fc.bias".into(), vec![1000]),
                _ => (n.clone(), v.shape().to_vec()),
            };
            (name, v.to_owned().into_shape_with_order(shape).unwrap())
        })
        .collect();
    drop(src);
    let timm_path = dir.join("vgg16-timm.safetensors");
    save_atomic(
        &timm_path,
        timm.iter().map(|(n, a)| (n.clone(), a.view())).collect(),
        HashMap::new(),
    )
    .unwrap();
    drop(timm);
    let mut t = load(Arch::Vgg16, &timm_path);
    let logits_timm = run(&mut t, x.clone(), "fc8");
    let logits_tv = run(&mut m, x, "fc8");
    assert_eq!(
        logits_timm, logits_tv,
        "timm-named file gives the same logits"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn half_precision_files_match_f32_within_their_precision() {
    let dir = tmpdir("pretrained-half");
    let src = synthetic_model(Arch::Resnet18);
    let want = read_fixture("resnet18.safetensors");
    for (dtype, rel) in [
        (safetensors::Dtype::F16, 2e-2),
        (safetensors::Dtype::BF16, 8e-2),
    ] {
        let path = dir.join(format!("{dtype:?}.safetensors"));
        tl::weights::save_atomic_as(&path, tensors_of(&src), HashMap::new(), dtype).unwrap();
        let file = WeightFile::open(&path).unwrap();
        let mut m = Model::new(Arch::Resnet18, 1000, Init::Zeros);
        let report = m.load_weights(&file).unwrap();
        assert_eq!(report.mapped, 0);
        assert_eq!(report.copied, 102);
        let pool = run(&mut m, input(), "pool");
        let worst = assert_close(&format!("{dtype:?} pool"), &pool, &want["pool"], rel);
        assert!(
            worst > 1e-6,
            "{dtype:?} should differ from f32 at least a little"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
