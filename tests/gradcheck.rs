//! Finite-difference gradient checks: for every layer and loss, `∂L/∂x` and the gradient of
//! every trainable parameter against central differences of `L = Σ y·r` (fixed random `r`,
//! accumulated in f64). See `common::Check` for the step size and tolerance.

mod common;

use common::{gradcheck, gradcheck_loss, spaced, uniform, Check};
use ndarray::{ArrayD, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tl::nn::loss::{cross_entropy, mse, MseReduction};
use tl::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d,
    ParamKind, Relu, Sequential, Sigmoid, Softmax, Step, Tanh,
};
use tl::train::Penalty;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(42)
}

/// A BatchNorm with non-trivial affine parameters and running statistics.
fn batch_norm(channels: usize, spatial: bool) -> BatchNorm {
    let mut bn = if spatial {
        BatchNorm::new_2d(channels)
    } else {
        BatchNorm::new_1d(channels)
    };
    bn.weight.set_value(uniform(&[channels], 0.5, 1.5, 1));
    bn.bias.set_value(uniform(&[channels], -0.5, 0.5, 2));
    bn.running_mean
        .set_value(uniform(&[channels], -0.3, 0.3, 3));
    bn.running_var.set_value(uniform(&[channels], 0.5, 1.5, 4));
    bn
}

#[test]
fn linear() {
    let x = uniform(&[3, 5], -1.0, 1.0, 10);
    gradcheck(
        "Linear",
        &mut Linear::new(5, 4, true, &mut rng()),
        x.clone(),
        Check::train(),
    );
    gradcheck(
        "Linear without bias",
        &mut Linear::new(5, 2, false, &mut rng()),
        x,
        Check::train(),
    );
}

#[test]
fn conv2d_with_strides_and_paddings() {
    // (C_in, C_out, k, S, P, bias, H, W)
    for (ci, co, k, s, p, bias, h, w) in [
        (2, 3, 3, 1, 1, true, 5, 5),
        (2, 2, 3, 2, 1, false, 6, 5),
        (3, 2, 1, 1, 0, true, 4, 3),
        (2, 3, 1, 2, 0, false, 5, 5),
        (1, 2, 7, 2, 3, true, 7, 6),
        (2, 2, 7, 1, 3, true, 2, 1),
        (2, 2, 3, 2, 0, true, 7, 7),
        (1, 2, 3, 1, 3, false, 3, 4),
    ] {
        let name = format!("Conv2d({ci}, {co}, k={k}, S={s}, P={p}, bias={bias}) on {h}x{w}");
        let mut conv = Conv2d::new(ci, co, k, s, p, bias, &mut rng());
        let x = uniform(&[2, ci, h, w], -1.0, 1.0, 11);
        gradcheck(&name, &mut conv, x, Check::train());
    }
}

#[test]
fn conv2d_with_a_frozen_weight_still_passes_the_input_gradient() {
    let mut conv = Conv2d::new(2, 3, 3, 1, 1, true, &mut rng());
    conv.weight.set_trainable(false);
    let x = uniform(&[2, 2, 4, 4], -1.0, 1.0, 12);
    gradcheck("Conv2d, frozen weight", &mut conv, x, Check::train());
    assert!(conv.weight.grad.is_none());
}

#[test]
fn batch_norm_2d_and_1d_in_train_and_eval_mode() {
    for (spatial, shape) in [(true, vec![3, 2, 3, 3]), (false, vec![5, 3])] {
        let x = uniform(&shape, -1.5, 2.0, 13);
        for check in [Check::train(), Check::eval()] {
            let name = format!(
                "BatchNorm{} in {:?} mode",
                if spatial { "2d" } else { "1d" },
                check.mode
            );
            gradcheck(&name, &mut batch_norm(shape[1], spatial), x.clone(), check);
        }
        // A frozen BatchNorm runs on its running statistics even in train mode.
        let mut frozen = batch_norm(shape[1], spatial);
        frozen.weight.set_trainable(false);
        frozen.bias.set_trainable(false);
        gradcheck("frozen BatchNorm", &mut frozen, x, Check::train());
    }
}

#[test]
fn activations() {
    // Inputs at least 0.05 apart and away from 0, so no step of 0.01 crosses a kink.
    let x = spaced(&[2, 3, 4], 0.05, 14);
    gradcheck("ReLU", &mut Relu::new(), x.clone(), Check::train());
    gradcheck("Sigmoid", &mut Sigmoid::new(), x.clone(), Check::train());
    gradcheck("Tanh", &mut Tanh::new(), x.clone(), Check::train());
    gradcheck("Softmax", &mut Softmax::new(), x.clone(), Check::train());
    let dx = gradcheck("Step", &mut Step::new(), x, Check::train());
    assert!(dx.iter().all(|&v| v == 0.0), "Step passes a zero gradient");
}

#[test]
fn pooling() {
    // Distinct values 0.05 apart: no step of 0.01 changes which value of a window is largest.
    let x = spaced(&[2, 2, 7, 7], 0.05, 15);
    gradcheck(
        "MaxPool2d(3, 2, 1)",
        &mut MaxPool2d::new(3, 2, 1),
        x.clone(),
        Check::train(),
    );
    gradcheck(
        "MaxPool2d(2, 2)",
        &mut MaxPool2d::new(2, 2, 0),
        x.clone(),
        Check::train(),
    );
    gradcheck(
        "AvgPool2d(3, 2, 1)",
        &mut AvgPool2d::new(3, 2, 1),
        x.clone(),
        Check::train(),
    );
    gradcheck(
        "AvgPool2d(2, 2)",
        &mut AvgPool2d::new(2, 2, 0),
        x.clone(),
        Check::train(),
    );
    for side in [1, 5, 7, 9, 14] {
        let x = uniform(&[1, 2, side, side], -1.0, 1.0, 16);
        gradcheck(
            &format!("AdaptiveAvgPool2d(7) from {side}x{side}"),
            &mut AdaptiveAvgPool2d::new(7, 7),
            x,
            Check::train(),
        );
    }
    let x = uniform(&[2, 2, 5, 8], -1.0, 1.0, 17);
    gradcheck(
        "AdaptiveAvgPool2d(3, 2)",
        &mut AdaptiveAvgPool2d::new(3, 2),
        x,
        Check::train(),
    );
}

#[test]
fn dropout_with_a_fixed_mask_and_flatten() {
    let x = uniform(&[3, 2, 2, 2], -1.0, 1.0, 18);
    // The checker re-seeds the RNG before every forward pass, so the mask is the same each time.
    let dx = gradcheck(
        "Dropout(0.4)",
        &mut Dropout::new(0.4),
        x.clone(),
        Check::train(),
    );
    let dropped = dx.iter().filter(|&&v| v == 0.0).count();
    assert!(
        dropped > 0 && dropped < dx.len(),
        "some, not all, values dropped"
    );
    gradcheck(
        "Dropout in eval",
        &mut Dropout::new(0.4),
        x.clone(),
        Check::eval(),
    );
    gradcheck("Flatten", &mut Flatten::new(), x, Check::train());
}

#[test]
fn sequential_conv_net() {
    // The kinks (max pool, ReLU) come first, on inputs 0.025 apart and at least 0.0125 from 0,
    // so that no step of 0.01 crosses one; the parameters all sit after them. The input is small
    // so that each value's share of the loss stays well above f32 rounding.
    let mut r = rng();
    let mut net = Sequential::new(vec![
        Box::new(MaxPool2d::new(2, 2, 0)),
        Box::new(Relu::new()),
        Box::new(Conv2d::new(2, 3, 3, 1, 1, false, &mut r)),
        Box::new(batch_norm(3, true)),
        Box::new(Tanh::new()),
        Box::new(AvgPool2d::new(3, 1, 1)),
        Box::new(Conv2d::new(3, 2, 1, 1, 0, true, &mut r)),
        Box::new(AdaptiveAvgPool2d::new(2, 2)),
        Box::new(Flatten::new()),
        Box::new(Linear::new(8, 6, true, &mut r)),
        Box::new(Dropout::new(0.25)),
        Box::new(Sigmoid::new()),
        // No bias before a train-mode BatchNorm: its gradient is zero, so only rounding is left.
        Box::new(Linear::new(6, 3, false, &mut r)),
        Box::new(batch_norm(3, false)),
    ]);
    let x = spaced(&[3, 2, 6, 6], 0.025, 19);
    // Fourteen f32 layers, two of them batch-normalising, amplify rounding in the loss: 1% here.
    let check = Check {
        rtol: 1e-2,
        ..Check::train()
    };
    gradcheck("Sequential", &mut net, x, check);
}

#[test]
fn cross_entropy_loss() {
    let z = uniform(&[4, 5], -3.0, 3.0, 20);
    let targets = [0, 4, 2, 2];
    gradcheck_loss("cross_entropy", &z, |z| {
        let (loss, grad) = cross_entropy(
            z.view().into_dimensionality::<Ix2>().expect("2-D"),
            &targets,
        );
        (loss, grad.into_dyn())
    });
}

#[test]
fn mse_loss_in_both_reductions() {
    let o = uniform(&[3, 4], -1.0, 1.0, 21);
    let t: ArrayD<f32> = uniform(&[3, 4], -1.0, 1.0, 22);
    for reduction in [MseReduction::Mean, MseReduction::HalfSum] {
        gradcheck_loss(&format!("mse {reduction:?}"), &o, |o| {
            mse(o.view(), t.view(), reduction)
        });
    }
}

/// `R = λ₁Σ|w| + λ₂Σw²` over trainable weights only: biases, normalisation parameters and frozen
/// weights are neither counted nor given a gradient.
#[test]
fn l1_and_l2_penalties_over_trainable_weights() {
    let mut r = rng();
    // Only a holder of parameters of every kind: it is never run.
    let mut net = Sequential::new(vec![
        Box::new(Linear::new(3, 4, true, &mut r)),
        Box::new(batch_norm(4, false)),
        Box::new(Conv2d::new(1, 2, 3, 1, 1, true, &mut r)),
        Box::new(Linear::new(4, 2, true, &mut r)),
    ]);
    // Weights at least 0.01 from 0, so a step of 0.001 never crosses the kink of |w|.
    net.visit_mut("", &mut |name, p| {
        if name.ends_with("weight") && p.kind() == ParamKind::Weight {
            let shape = p.shape().to_vec();
            p.set_value(spaced(&shape, 0.02, 23));
        }
        if name == "3.weight" {
            p.set_trainable(false);
        }
    });
    let penalty = Penalty { l1: 0.03, l2: 0.2 };
    let value = |w: &ArrayD<f32>| -> f64 {
        w.iter()
            .map(|&v| 0.03 * (v as f64).abs() + 0.2 * (v as f64).powi(2))
            .sum()
    };
    let mut expected = 0.0;
    net.visit("", &mut |name, p| {
        if name == "0.weight" || name == "2.weight" {
            expected += value(&p.value().to_owned());
        }
    });
    let got = penalty.apply(&mut net) as f64;
    assert!(
        (got - expected).abs() <= 1e-6 * expected,
        "{got} vs {expected}"
    );

    let mut checked = vec![];
    net.visit("", &mut |name, p| match (name, &p.grad) {
        ("0.weight" | "2.weight", Some(g)) => {
            let w = p.value().to_owned();
            let h = 1e-3;
            for (i, (&gv, &wv)) in g.iter().zip(w.iter()).enumerate() {
                let at = |d: f64| value(&ArrayD::from_elem(vec![1], (wv as f64 + d) as f32));
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (gv as f64 - numeric).abs() <= 1e-3 * numeric.abs().max(0.03),
                    "{name}[{i}]: {gv} vs {numeric}"
                );
            }
            checked.push(name.to_string());
        }
        (_, None) => {}
        (other, Some(_)) => panic!("{other} is not a trainable weight but got a penalty gradient"),
    });
    assert_eq!(checked, ["0.weight", "2.weight"]);
    assert!(Penalty::default().is_off());
    assert_eq!(Penalty::default().apply(&mut net), 0.0);
}
