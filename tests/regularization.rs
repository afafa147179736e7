//! L1/L2 penalties match PyTorch's when added to the loss by hand (fixture from
//! scripts/gen_train_fixtures.py), and dropout keeps the expected scale.

mod common_models;

use std::collections::HashMap;

use ndarray::{Array2, ArrayD};
use rand::SeedableRng;
use tl::models::synthetic;
use tl::nn::loss::cross_entropy;
use tl::nn::{Context, Dropout, Layer, Linear, Relu, Sequential};
use tl::train::Penalty;

fn fixture() -> HashMap<String, ArrayD<f32>> {
    common_models::read_fixture_in("train", "regularization.safetensors")
}

fn close(what: &str, got: f32, want: f32) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs() + 1e-6,
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn l1_l2_terms_and_gradients_match_pytorch() {
    let want = fixture();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut net = Sequential::new(vec![
        Box::new(Linear::new(7, 5, true, &mut rng)),
        Box::new(Relu::new()),
        Box::new(Linear::new(5, 3, true, &mut rng)),
    ]);
    synthetic::fill(&mut net);
    net.visit_mut("", &mut |n, p| {
        if n.starts_with("0.") {
            p.set_trainable(false);
        }
    });
    let x = synthetic::tensor("reg/x", &[4, 7]);
    let mut ctx = Context::train(&mut rng);
    let logits = net
        .forward(x, &mut ctx)
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let (ce, grad) = cross_entropy(logits.view(), &[0, 2, 1, 2]);
    net.backward(grad.into_dyn());
    let penalty = Penalty { l1: 0.01, l2: 0.02 }.apply(&mut net);
    close("cross-entropy", ce, want["ce"][[0]]);
    close("penalty", penalty, want["penalty"][[0]]);
    let mut seen = 0;
    net.visit("", &mut |n, p| match n {
        "2.weight" | "2.bias" => {
            let g = p.grad.as_ref().unwrap();
            for (a, b) in g.iter().zip(want[&format!("{n}.grad")].iter()) {
                close(n, *a, *b);
            }
            seen += 1;
        }
        _ => assert!(p.grad.is_none(), "frozen {n} got a gradient"),
    });
    assert_eq!(seen, 2);
}

#[test]
fn dropout_keeps_the_expected_scale() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let n = 200_000;
    for p in [0.1f32, 0.5, 0.8] {
        let mut d = Dropout::new(p);
        let mut ctx = Context::train(&mut rng);
        let y = d.forward(Array2::<f32>::ones((n / 1000, 1000)).into_dyn(), &mut ctx);
        let zeros = y.iter().filter(|v| **v == 0.0).count() as f32 / n as f32;
        let mean = y.mean().unwrap();
        // Binomial standard deviation of the kept fraction is below 0.0012 at n = 200k.
        assert!((zeros - p).abs() < 0.006, "p={p}: dropped {zeros}");
        assert!((mean - 1.0).abs() < 0.006 / (1.0 - p), "p={p}: mean {mean}");
        assert!(y
            .iter()
            .all(|v| *v == 0.0 || (v - 1.0 / (1.0 - p)).abs() < 1e-6));
        let mut ctx = Context::eval(&mut rng);
        let e = d.forward(Array2::<f32>::ones((2, 3)).into_dyn(), &mut ctx);
        assert!(e.iter().all(|v| *v == 1.0), "identity in eval mode");
    }
}
