//! Training steps reuse their large buffers: once a step has run, the next steps take every
//! buffer of a megabyte or more from the shared pool (`tl::tensor::recycle`) instead of asking
//! the system for fresh pages. Its own test binary: the pool is shared by everything in the
//! process.

use ndarray::Array4;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tl::models::{Arch, Init, Model};
use tl::nn::Context;
use tl::tensor::recycle;
use tl::train::trainer::train_step_from;
use tl::train::{Penalty, Sgd};

#[test]
fn layer4_training_steps_and_validation_passes_take_no_fresh_buffers_after_the_first() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut model = Model::new(Arch::Resnet18, 2, Init::Random(&mut rng));
    model.freeze_until("conv5").unwrap();
    let start = model.frozen_prefix();
    let n = model.len();
    // ResNet-18's layer3 output for 16 images, as the frozen-feature cache holds it: layer4's
    // activations are then 1.6 MB, above the pool's minimum.
    let x = Array4::from_shape_fn((16, 256, 14, 14), |(a, b, c, d)| {
        ((a * 7 + b * 3 + c * 5 + d) % 13) as f32 * 0.1 - 0.6
    })
    .into_dyn();
    let labels: Vec<usize> = (0..16).map(|i| i % 2).collect();
    let mut sgd = Sgd::new(1e-3, 0.9);
    let mut epoch = |model: &mut Model, rng: &mut ChaCha8Rng| {
        let mut losses = Vec::new();
        for _ in 0..2 {
            let out = train_step_from(
                model,
                start,
                x.clone(),
                &labels,
                &mut sgd,
                Penalty::default(),
                rng,
            );
            losses.push(out.loss);
        }
        let logits = model.forward_range(x.clone(), start..n, &mut Context::eval(rng));
        (losses, logits)
    };
    let (first, _) = epoch(&mut model, &mut rng);
    let before = recycle::GLOBAL.misses();
    assert!(before > 0, "the first steps filled the pool");
    let (second, logits) = epoch(&mut model, &mut rng);
    assert_eq!(
        recycle::GLOBAL.misses(),
        before,
        "steps after the first allocated fresh buffers"
    );
    // The steps still train: finite losses that fall, finite logits.
    assert!(first.iter().chain(&second).all(|l| l.is_finite()));
    assert!(second[1] < first[0], "loss {first:?} then {second:?}");
    assert_eq!(logits.shape(), &[16, 2]);
    assert!(logits.iter().all(|v| v.is_finite()));
}
