//! Architecture facts: parameter counts, names, stages, shapes, freezing and heads.

use tl::models::{Arch, Init, Model};
use tl::nn::Layer;

#[test]
fn parameter_counts_match_torchvision() {
    let vgg = Model::new(Arch::Vgg16, 1000, Init::Zeros);
    assert_eq!(vgg.param_counts(), (138_357_544, 138_357_544));
    let resnet = Model::new(Arch::Resnet18, 1000, Init::Zeros);
    assert_eq!(resnet.param_counts(), (11_689_512, 11_689_512));
}

#[test]
fn names_are_torchvision_state_dict_keys() {
    let resnet = Model::new(Arch::Resnet18, 1000, Init::Zeros);
    let mut names = Vec::new();
    resnet.visit(&mut |n, _| names.push(n.to_string()));
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
    assert_eq!(
        names.len(),
        122 - 20,
        "state_dict keys less num_batches_tracked"
    );
    let vgg = Model::new(Arch::Vgg16, 1000, Init::Zeros);
    let mut names = Vec::new();
    vgg.visit(&mut |n, _| names.push(n.to_string()));
    assert_eq!(names.first().map(String::as_str), Some("features.0.weight"));
    assert!(names.iter().any(|n| n == "features.28.bias"));
    assert_eq!(names.last().map(String::as_str), Some("classifier.6.bias"));
    assert_eq!(names.len(), 32);
}

#[test]
fn output_shapes_follow_the_stages() {
    let vgg = Model::new(Arch::Vgg16, 1000, Init::Zeros);
    let rows = vgg.summary(2, 224);
    let last = |stage: &str| {
        rows.iter()
            .rev()
            .find(|r| r.stage == stage)
            .unwrap()
            .output_shape
            .clone()
    };
    assert_eq!(last("conv5"), vec![2, 512, 7, 7]);
    assert_eq!(last("pool5"), vec![2, 25088]);
    assert_eq!(last("fc7"), vec![2, 4096]);
    assert_eq!(last("fc8"), vec![2, 1000]);
    let resnet = Model::new(Arch::Resnet18, 10, Init::Zeros);
    let rows = resnet.summary(1, 160);
    let last = |stage: &str| {
        rows.iter()
            .rev()
            .find(|r| r.stage == stage)
            .unwrap()
            .output_shape
            .clone()
    };
    assert_eq!(last("conv1"), vec![1, 64, 40, 40]);
    assert_eq!(last("conv5"), vec![1, 512, 5, 5]);
    assert_eq!(last("pool"), vec![1, 512]);
    assert_eq!(last("fc"), vec![1, 10]);
}

#[test]
fn freeze_until_and_heads() {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let mut m = Model::new(Arch::Resnet18, 1000, Init::Zeros);
    m.attach_head(
        "pool",
        &[256],
        vec!["a".into(), "b".into(), "c".into()],
        0.5,
        &mut rng,
    )
    .unwrap();
    let mut names = Vec::new();
    m.visit(&mut |n, _| names.push(n.to_string()));
    assert!(names.contains(&"head.0.weight".to_string()));
    assert!(names.contains(&"head.3.bias".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("fc.")));
    m.freeze_until("conv5").unwrap();
    let layer4: usize = 3 * 3 * 256 * 512 + 3 * 3 * 512 * 512 * 3 + 256 * 512;
    let (_, trainable) = m.param_counts();
    let head = 512 * 256 + 256 + 256 * 3 + 3;
    let bn = 2 * 512 * 5;
    assert_eq!(trainable, layer4 + head + bn);
    m.freeze_until("head").unwrap();
    assert_eq!(m.param_counts().1, head);
    let err = m.freeze_until("conv9").unwrap_err().to_string();
    assert!(
        err.contains("--freeze-until") && err.contains("conv5") && err.contains("head"),
        "{err}"
    );
    assert_eq!(
        m.set_trainable("layer4", true).unwrap(),
        15,
        "9 tensors in block 0, 6 in block 1"
    );
    assert!(m.set_trainable("layer40", true).is_err());
    assert!(m.net().has_trainable());
}
