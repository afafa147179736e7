//! Per-layer parity with PyTorch: outputs and every gradient on the seeded fixtures that
//! `scripts/gen_fixtures.py` writes to `tests/fixtures/layers.safetensors`. Tolerance: 1e-4
//! relative with a 1e-5 absolute floor.

mod common;

use common::{assert_close, Fixture};
use ndarray::{ArrayD, Ix1, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tl::nn::loss::{cross_entropy, mse, MseReduction};
use tl::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Context, Conv2d, Dropout, Layer, Linear, MaxPool2d,
    Mode, Relu, Sigmoid, Softmax, Step, Tanh,
};

fn fixture() -> Fixture {
    Fixture::open("layers.safetensors")
}

fn usize_of(config: &Value, key: &str) -> usize {
    config[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config {key}")) as usize
}

/// Runs `layer` forward on `<prefix>/x` with input gradients on, checks `<prefix>/y`, runs
/// backward on `<prefix>/gy`, and checks `<prefix>/grad.x`; parameter gradients stay in the layer.
fn forward_backward(fx: &Fixture, prefix: &str, layer: &mut dyn Layer, mode: Mode) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ctx = Context::train(&mut rng);
    ctx.mode = mode;
    ctx.input_grad = true;
    let y = layer.forward(fx.f32(&format!("{prefix}/x")), &mut ctx);
    assert_close(
        &format!("{prefix}: y"),
        y.view(),
        fx.f32(&format!("{prefix}/y")).view(),
    );
    assert_eq!(
        layer.output_shape(fx.f32(&format!("{prefix}/x")).shape()),
        y.shape(),
        "{prefix}: output_shape"
    );
    let dx = layer
        .backward(fx.f32(&format!("{prefix}/gy")))
        .unwrap_or_else(|| panic!("{prefix}: no input gradient"));
    assert_close(
        &format!("{prefix}: grad.x"),
        dx.view(),
        fx.f32(&format!("{prefix}/grad.x")).view(),
    );
}

fn check_grad(fx: &Fixture, prefix: &str, name: &str, grad: Option<&ArrayD<f32>>) {
    let grad = grad.unwrap_or_else(|| panic!("{prefix}: no gradient for {name}"));
    assert_close(
        &format!("{prefix}: grad.{name}"),
        grad.view(),
        fx.f32(&format!("{prefix}/grad.{name}")).view(),
    );
}

#[test]
fn conv2d_matches_pytorch() {
    let fx = fixture();
    let cases = fx.cases("conv2d");
    let mut seen = (vec![], vec![], vec![], vec![]);
    for (name, config) in cases {
        let prefix = format!("conv2d/{name}");
        let (k, s, p) = (
            usize_of(&config, "kernel"),
            usize_of(&config, "stride"),
            usize_of(&config, "padding"),
        );
        let bias = config["bias"].as_bool().expect("bias");
        let mut layer = Conv2d::from_arrays(
            fx.f32(&format!("{prefix}/weight")),
            bias.then(|| fx.f32(&format!("{prefix}/bias"))),
            s,
            p,
        );
        assert_eq!(layer.kernel(), k, "{prefix}: kernel");
        forward_backward(&fx, &prefix, &mut layer, Mode::Train);
        check_grad(&fx, &prefix, "weight", layer.weight.grad.as_ref());
        if bias {
            let b = layer.bias.as_ref().expect("bias");
            check_grad(&fx, &prefix, "bias", b.grad.as_ref());
        }
        seen.0.push(k);
        seen.1.push(s);
        seen.2.push(p);
        seen.3.push(bias);
    }
    for k in [1, 3, 7] {
        assert!(seen.0.contains(&k), "no conv case with kernel {k}");
    }
    for s in [1, 2] {
        assert!(seen.1.contains(&s), "no conv case with stride {s}");
    }
    for p in [0, 1, 3] {
        assert!(seen.2.contains(&p), "no conv case with padding {p}");
    }
    assert!(seen.3.contains(&true) && seen.3.contains(&false));
}

#[test]
fn linear_matches_pytorch() {
    let fx = fixture();
    for (name, config) in fx.cases("linear") {
        let prefix = format!("linear/{name}");
        let bias = config["bias"].as_bool().expect("bias");
        let w = fx.f32(&format!("{prefix}/weight"));
        let mut layer = Linear::from_arrays(
            w.into_dimensionality::<Ix2>().expect("2-D"),
            bias.then(|| {
                fx.f32(&format!("{prefix}/bias"))
                    .into_dimensionality::<Ix1>()
                    .expect("1-D")
            }),
        );
        forward_backward(&fx, &prefix, &mut layer, Mode::Train);
        check_grad(&fx, &prefix, "weight", layer.weight.grad.as_ref());
        if bias {
            let b = layer.bias.as_ref().expect("bias");
            check_grad(&fx, &prefix, "bias", b.grad.as_ref());
        }
    }
}

#[test]
fn max_pool2d_matches_pytorch() {
    let fx = fixture();
    let cases = fx.cases("max_pool2d");
    let configs: Vec<(usize, usize, usize)> = cases
        .iter()
        .map(|(_, c)| {
            (
                usize_of(c, "kernel"),
                usize_of(c, "stride"),
                usize_of(c, "padding"),
            )
        })
        .collect();
    assert!(configs.contains(&(3, 2, 1)) && configs.contains(&(2, 2, 0)));
    for ((name, _), (k, s, p)) in cases.iter().zip(configs) {
        forward_backward(
            &fx,
            &format!("max_pool2d/{name}"),
            &mut MaxPool2d::new(k, s, p),
            Mode::Train,
        );
    }
}

#[test]
fn avg_pool2d_matches_pytorch() {
    let fx = fixture();
    for (name, c) in fx.cases("avg_pool2d") {
        let mut layer = AvgPool2d::new(
            usize_of(&c, "kernel"),
            usize_of(&c, "stride"),
            usize_of(&c, "padding"),
        );
        forward_backward(&fx, &format!("avg_pool2d/{name}"), &mut layer, Mode::Train);
    }
}

#[test]
fn adaptive_avg_pool2d_matches_pytorch() {
    let fx = fixture();
    let cases = fx.cases("adaptive_avg_pool2d");
    let mut sides = vec![];
    for (name, c) in cases {
        let prefix = format!("adaptive_avg_pool2d/{name}");
        sides.push(fx.f32(&format!("{prefix}/x")).shape()[2]);
        let mut layer = AdaptiveAvgPool2d::new(usize_of(&c, "out_h"), usize_of(&c, "out_w"));
        forward_backward(&fx, &prefix, &mut layer, Mode::Train);
    }
    for side in [1, 5, 14] {
        assert!(
            sides.contains(&side),
            "no adaptive pool case from {side}x{side}"
        );
    }
}

#[test]
fn batch_norm_matches_pytorch_in_train_and_eval_mode() {
    let fx = fixture();
    let mut modes = vec![];
    for (name, c) in fx.cases("batch_norm") {
        let prefix = format!("batch_norm/{name}");
        let channels = fx.f32(&format!("{prefix}/weight")).len();
        let mut layer = if c["spatial"].as_bool().expect("spatial") {
            BatchNorm::new_2d(channels)
        } else {
            BatchNorm::new_1d(channels)
        };
        assert_eq!(
            layer.eps as f64,
            c["eps"].as_f64().expect("eps") as f32 as f64
        );
        assert_eq!(
            layer.momentum as f64,
            c["momentum"].as_f64().expect("momentum") as f32 as f64
        );
        layer.weight.set_value(fx.f32(&format!("{prefix}/weight")));
        layer.bias.set_value(fx.f32(&format!("{prefix}/bias")));
        layer
            .running_mean
            .set_value(fx.f32(&format!("{prefix}/running_mean")));
        layer
            .running_var
            .set_value(fx.f32(&format!("{prefix}/running_var")));
        let mode = match c["mode"].as_str().expect("mode") {
            "train" => Mode::Train,
            "eval" => Mode::Eval,
            other => panic!("mode {other}"),
        };
        modes.push((c["spatial"].as_bool(), mode));
        forward_backward(&fx, &prefix, &mut layer, mode);
        check_grad(&fx, &prefix, "weight", layer.weight.grad.as_ref());
        check_grad(&fx, &prefix, "bias", layer.bias.grad.as_ref());
        for (stat, p) in [
            ("running_mean", &layer.running_mean),
            ("running_var", &layer.running_var),
        ] {
            assert_close(
                &format!("{prefix}: updated {stat}"),
                p.value(),
                fx.f32(&format!("{prefix}/after.{stat}")).view(),
            );
        }
    }
    for m in [
        (Some(true), Mode::Train),
        (Some(true), Mode::Eval),
        (Some(false), Mode::Train),
        (Some(false), Mode::Eval),
    ] {
        assert!(modes.contains(&m), "no batch norm case {m:?}");
    }
}

#[test]
fn activations_match_pytorch() {
    let fx = fixture();
    for (kind, make) in [
        (
            "relu",
            (|| Box::new(Relu::new()) as Box<dyn Layer>) as fn() -> Box<dyn Layer>,
        ),
        ("sigmoid", || Box::new(Sigmoid::new())),
        ("tanh", || Box::new(Tanh::new())),
        ("softmax", || Box::new(Softmax::new())),
    ] {
        for (name, _) in fx.cases(kind) {
            forward_backward(&fx, &format!("{kind}/{name}"), make().as_mut(), Mode::Train);
        }
    }
}

#[test]
fn step_matches_heaviside() {
    let fx = fixture();
    for (name, _) in fx.cases("step") {
        let prefix = format!("step/{name}");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let y = Step::new().forward(fx.f32(&format!("{prefix}/x")), &mut Context::eval(&mut rng));
        assert_eq!(y, fx.f32(&format!("{prefix}/y")), "{prefix}");
    }
}

#[test]
fn dropout_with_p0_and_in_eval_is_the_identity() {
    let fx = fixture();
    for (name, c) in fx.cases("dropout") {
        let p = c["p"].as_f64().expect("p") as f32;
        let mode = if c["train"].as_bool().expect("train") {
            Mode::Train
        } else {
            Mode::Eval
        };
        forward_backward(&fx, &format!("dropout/{name}"), &mut Dropout::new(p), mode);
    }
}

#[test]
fn cross_entropy_matches_pytorch() {
    let fx = fixture();
    for (name, c) in fx.cases("cross_entropy") {
        let prefix = format!("cross_entropy/{name}");
        let targets: Vec<usize> = c["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t.as_u64().expect("target") as usize)
            .collect();
        let z = fx
            .f32(&format!("{prefix}/x"))
            .into_dimensionality::<Ix2>()
            .expect("2-D");
        let (loss, grad) = cross_entropy(z.view(), &targets);
        assert_close(
            &format!("{prefix}: loss"),
            ndarray::arr1(&[loss]).into_dyn().view(),
            fx.f32(&format!("{prefix}/loss")).view(),
        );
        assert_close(
            &format!("{prefix}: grad.x"),
            grad.into_dyn().view(),
            fx.f32(&format!("{prefix}/grad.x")).view(),
        );
    }
}

#[test]
fn mse_matches_pytorch_in_both_reductions() {
    let fx = fixture();
    let mut seen = vec![];
    for (name, c) in fx.cases("mse") {
        let prefix = format!("mse/{name}");
        let reduction = match c["reduction"].as_str().expect("reduction") {
            "mean" => MseReduction::Mean,
            "half_sum" => MseReduction::HalfSum,
            other => panic!("reduction {other}"),
        };
        seen.push(reduction);
        let (loss, grad) = mse(
            fx.f32(&format!("{prefix}/x")).view(),
            fx.f32(&format!("{prefix}/target")).view(),
            reduction,
        );
        assert_close(
            &format!("{prefix}: loss"),
            ndarray::arr1(&[loss]).into_dyn().view(),
            fx.f32(&format!("{prefix}/loss")).view(),
        );
        assert_close(
            &format!("{prefix}: grad.x"),
            grad.view(),
            fx.f32(&format!("{prefix}/grad.x")).view(),
        );
    }
    assert!(seen.contains(&MseReduction::Mean) && seen.contains(&MseReduction::HalfSum));
}

/// The same values in Fortran (column-major) memory order.
/// Runs `layer` on the fixture's `x` and `gy` of case `prefix`, both in Fortran order, and
/// checks `y` and `∂x` against the fixture.
fn forward_backward_in_fortran_order(
    fx: &Fixture,
    prefix: &str,
    layer: &mut dyn Layer,
    ctx: &mut Context<'_>,
) {
    let y = layer.forward(fortran(fx.f32(&format!("{prefix}/x"))), ctx);
    assert_close(prefix, y.view(), fx.f32(&format!("{prefix}/y")).view());
    let dx = layer
        .backward(fortran(fx.f32(&format!("{prefix}/gy"))))
        .expect("input gradient");
    assert_close(
        prefix,
        dx.view(),
        fx.f32(&format!("{prefix}/grad.x")).view(),
    );
}

fn fortran(x: ArrayD<f32>) -> ArrayD<f32> {
    let f = x.t().as_standard_layout().into_owned().reversed_axes();
    assert!(!f.is_standard_layout() && f == x);
    f
}

#[test]
fn layers_accept_inputs_and_gradients_in_any_memory_order() {
    let fx = fixture();
    let prefix = "conv2d/k3_s2_p1_nobias";
    let mut conv = Conv2d::from_arrays(fx.f32(&format!("{prefix}/weight")), None, 2, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ctx = Context::train(&mut rng);
    ctx.input_grad = true;
    forward_backward_in_fortran_order(&fx, prefix, &mut conv, &mut ctx);
    check_grad(&fx, prefix, "weight", conv.weight.grad.as_ref());

    let prefix = "batch_norm/2d_eval";
    let mut bn = BatchNorm::new_2d(fx.f32(&format!("{prefix}/weight")).len());
    for (name, p) in [
        ("weight", &mut bn.weight),
        ("bias", &mut bn.bias),
        ("running_mean", &mut bn.running_mean),
        ("running_var", &mut bn.running_var),
    ] {
        p.set_value(fx.f32(&format!("{prefix}/{name}")));
    }
    let mut ctx = Context::eval(&mut rng);
    ctx.grad_enabled = true;
    ctx.input_grad = true;
    forward_backward_in_fortran_order(&fx, prefix, &mut bn, &mut ctx);

    let x = fx.f32(&format!("{prefix}/x"));
    let mut flatten = tl::nn::Flatten::new();
    let mut ctx = Context::train(&mut rng);
    ctx.input_grad = true;
    let flat = flatten.forward(fortran(x.clone()), &mut ctx);
    let n = x.shape()[0];
    let want = x
        .clone()
        .into_shape_with_order((n, x.len() / n))
        .expect("C order");
    assert_eq!(flat, want.into_dyn());
    let back = flatten.backward(fortran(flat)).expect("gradient");
    assert_eq!(back, x);
}
