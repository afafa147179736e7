//! Training parity with PyTorch: three optimizer steps on a small conv net
//! (conv-bn-relu-pool-flatten-linear, named as `nn.Sequential` names it), compared parameter by
//! parameter and buffer by buffer after every step, for SGD (momentum; Nesterov with weight
//! decay) and Adam (defaults; custom betas, eps and weight decay). Fixtures:
//! `tests/fixtures/optim.safetensors`, written by `scripts/gen_fixtures.py`.

mod common;

use common::{assert_close, Fixture};
use ndarray::{arr1, Ix1, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tl::nn::loss::cross_entropy;
use tl::nn::{BatchNorm, Context, Conv2d, Flatten, Layer, Linear, MaxPool2d, Relu, Sequential};
use tl::train::{zero_grad, Adam, Optimizer, Sgd};

/// The fixture's net with its initial parameters and buffers.
fn small_net(fx: &Fixture) -> Sequential {
    let conv = Conv2d::from_arrays(fx.f32("init/0.weight"), None, 1, 1);
    let linear = Linear::from_arrays(
        fx.f32("init/5.weight")
            .into_dimensionality::<Ix2>()
            .expect("2-D"),
        Some(
            fx.f32("init/5.bias")
                .into_dimensionality::<Ix1>()
                .expect("1-D"),
        ),
    );
    let mut net = Sequential::new(vec![
        Box::new(conv),
        Box::new(BatchNorm::new_2d(4)),
        Box::new(Relu::new()),
        Box::new(MaxPool2d::new(2, 2, 0)),
        Box::new(Flatten::new()),
        Box::new(linear),
    ]);
    let mut count = 0;
    net.visit_mut("", &mut |name, p| {
        p.set_value(fx.f32(&format!("init/{name}")));
        count += 1;
    });
    assert_eq!(count, 7, "parameters and buffers of the small net");
    net
}

fn f32_of(config: &Value, key: &str, default: f32) -> f32 {
    config
        .get(key)
        .map_or(default, |v| v.as_f64().expect(key) as f32)
}

fn optimizer(kind: &str, c: &Value) -> Box<dyn Optimizer> {
    match kind {
        "sgd" => {
            let mut sgd = Sgd::new(f32_of(c, "lr", 0.0), f32_of(c, "momentum", 0.0));
            sgd.dampening = f32_of(c, "dampening", 0.0);
            sgd.weight_decay = f32_of(c, "weight_decay", 0.0);
            sgd.nesterov = c.get("nesterov").is_some_and(|v| v == true);
            Box::new(sgd)
        }
        "adam" => {
            let mut adam = Adam::new(f32_of(c, "lr", 0.0));
            if let Some(b) = c.get("betas") {
                adam.beta1 = b[0].as_f64().expect("beta1") as f32;
                adam.beta2 = b[1].as_f64().expect("beta2") as f32;
            }
            adam.eps = f32_of(c, "eps", 1e-8);
            adam.weight_decay = f32_of(c, "weight_decay", 0.0);
            Box::new(adam)
        }
        other => panic!("optimizer {other}"),
    }
}

#[test]
fn sgd_and_adam_steps_match_pytorch() {
    let fx = Fixture::open("optim.safetensors");
    let x = fx.f32("data/x");
    let t = fx.indices("data/t");
    let mut kinds = vec![];
    for kind in ["sgd", "adam"] {
        for (run, config) in fx.cases(kind) {
            kinds.push(kind);
            let mut net = small_net(&fx);
            let mut opt = optimizer(kind, &config);
            let losses = fx.f32(&format!("{run}/loss"));
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            for step in 1..=3 {
                zero_grad(&mut net);
                let logits = net.forward(x.clone(), &mut Context::train(&mut rng));
                let (loss, grad) =
                    cross_entropy(logits.view().into_dimensionality().expect("2-D"), &t);
                assert_close(
                    &format!("{run}: loss before step {step}"),
                    arr1(&[loss]).into_dyn().view(),
                    arr1(&[losses[step - 1]]).into_dyn().view(),
                );
                net.backward(grad.into_dyn());
                opt.step(&mut net);
                let mut compared = 0;
                net.visit("", &mut |name, p| {
                    let want = fx.f32(&format!("{run}/step{step}/{name}"));
                    assert_close(
                        &format!("{run}: {name} after step {step}"),
                        p.value(),
                        want.view(),
                    );
                    compared += 1;
                });
                assert_eq!(compared, 7, "{run}: every parameter and buffer compared");
            }
        }
    }
    assert_eq!(kinds.len(), 4, "two SGD and two Adam runs");
}
