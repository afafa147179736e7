//! The seed lecture's facts, reproduced by the engine: the worked backpropagation example, the
//! perceptron AND gate, a linear MLP, convolution geometry and parameter counts. Reference
//! numbers are the lecture's (design.md, "Reference numbers"), not ours.

use ndarray::{arr1, arr2, Array2, ArrayD};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tl::nn::loss::{mse, MseReduction};
use tl::nn::{Context, Conv2d, Layer, Linear, Sequential, Sigmoid, Step};
use tl::tensor::geometry::{
    conv2d_param_count, output_size, padding_for_output, same_padding, strict_output_size,
};
use tl::train::{zero_grad, Optimizer, Sgd};

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(0)
}

fn assert_near(what: &str, got: f32, want: f64, tol: f64) {
    assert!(
        (got as f64 - want).abs() <= tol,
        "{what}: got {got}, want {want} (±{tol})"
    );
}

/// The 2-2-2 sigmoid network: w1, w2 feed h1; w3, w4 feed h2; w5, w6 feed o1; w7, w8 feed o2.
/// Biases 0.35 (hidden) and 0.60 (output), frozen as a user freezes parameters.
fn lecture_net() -> Sequential {
    let mut net = Sequential::new(vec![
        Box::new(Linear::from_arrays(
            arr2(&[[0.15, 0.20], [0.25, 0.30]]),
            Some(arr1(&[0.35, 0.35])),
        )),
        Box::new(Sigmoid::new()),
        Box::new(Linear::from_arrays(
            arr2(&[[0.40, 0.45], [0.50, 0.55]]),
            Some(arr1(&[0.60, 0.60])),
        )),
        Box::new(Sigmoid::new()),
    ]);
    let mut frozen = vec![];
    net.visit_mut("", &mut |name, p| {
        if name.ends_with(".bias") {
            p.set_trainable(false);
            frozen.push(name.to_string());
        }
    });
    assert_eq!(frozen, ["0.bias", "2.bias"]);
    net
}

fn inputs() -> ArrayD<f32> {
    arr2(&[[0.05f32, 0.10]]).into_dyn()
}

fn targets() -> ArrayD<f32> {
    arr2(&[[0.01f32, 0.99]]).into_dyn()
}

/// One forward pass, `E = ½Σ(t − o)²`, backward, and an SGD step; returns `E` before the step.
fn train_step(net: &mut Sequential, sgd: &mut Sgd) -> (f32, ArrayD<f32>) {
    let mut r = rng();
    zero_grad(net);
    let out = net.forward(inputs(), &mut Context::train(&mut r));
    let (e, grad) = mse(out.view(), targets().view(), MseReduction::HalfSum);
    net.backward(grad);
    sgd.step(net);
    (e, out)
}

fn error_and_output(net: &mut Sequential) -> (f32, ArrayD<f32>) {
    let mut r = rng();
    let out = net.forward(inputs(), &mut Context::eval(&mut r));
    let (e, _) = mse(out.view(), targets().view(), MseReduction::HalfSum);
    (e, out)
}

fn weights(net: &Sequential) -> Vec<f32> {
    let mut w = vec![];
    net.visit("", &mut |name, p| {
        if name.ends_with(".weight") {
            w.extend(p.value().iter().copied());
        }
    });
    w
}

#[test]
fn worked_backprop_example_forward_pass() {
    let mut net = lecture_net();
    let mut r = rng();
    let hidden = net.forward_range(inputs(), &mut Context::eval(&mut r), 0..2);
    for (got, want) in hidden.iter().zip([0.593269992, 0.596884378]) {
        assert_near("out_h", *got, want, 1e-7);
    }
    let (e, out) = error_and_output(&mut net);
    for (got, want) in out.iter().zip([0.75136507, 0.772928465]) {
        assert_near("out_o", *got, want, 1e-7);
    }
    assert_near("E", e, 0.298371109, 1e-7);
}

#[test]
fn worked_backprop_example_one_step() {
    let mut net = lecture_net();
    let mut sgd = Sgd::new(0.5, 0.0);
    let (e, _) = train_step(&mut net, &mut sgd);
    assert_near("E before the step", e, 0.298371109, 1e-7);
    let want = [
        0.149780716,
        0.19956143,
        0.24975114,
        0.29950229,
        0.35891648,
        0.408666186,
        0.511301270,
        0.561370121,
    ];
    for (i, (got, want)) in weights(&net).into_iter().zip(want).enumerate() {
        assert_near(&format!("w{} after one step", i + 1), got, want, 1e-6);
    }
    net.visit("", &mut |name, p| {
        if name.ends_with(".bias") {
            assert!(p.grad.is_none(), "{name}: frozen, so no gradient");
        }
    });
    let (e, _) = error_and_output(&mut net);
    assert_near("E after one step", e, 0.2910277737, 1e-7);
}

/// 10,000 steps in f32. The f64 reference is E = 3.5102e-5 (quoted to five digits, so ±1.4e-5
/// relative) and outputs 0.0159136, 0.9840643 (±5e-8); an f32 run of the same updates lands
/// within about 1e-5 relative of the f64 E and 1e-7 of the outputs, so E is held to 1e-4
/// relative and the outputs to 1e-6.
#[test]
fn worked_backprop_example_ten_thousand_steps() {
    let mut net = lecture_net();
    let mut sgd = Sgd::new(0.5, 0.0);
    for _ in 0..10_000 {
        train_step(&mut net, &mut sgd);
    }
    let (e, out) = error_and_output(&mut net);
    assert_near("E after 10,000 steps", e, 3.5102e-5, 3.5102e-5 * 1e-4);
    for (got, want) in out.iter().zip([0.0159136, 0.9840643]) {
        assert_near("output after 10,000 steps", *got, want, 1e-6);
    }
    let mut biases = vec![];
    net.visit("", &mut |name, p| {
        if name.ends_with(".bias") {
            biases.extend(p.value().iter().copied());
        }
    });
    assert_eq!(biases, [0.35, 0.35, 0.60, 0.60], "frozen biases never move");
}

#[test]
fn perceptron_with_bias_minus_1_5_and_unit_weights_is_and() {
    let mut gate = Sequential::new(vec![
        Box::new(Linear::from_arrays(
            arr2(&[[1.0, 1.0]]),
            Some(arr1(&[-1.5])),
        )),
        Box::new(Step::new()),
    ]);
    let x = arr2(&[[0.0f32, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).into_dyn();
    let y = gate.forward(x, &mut Context::eval(&mut rng()));
    assert_eq!(y, arr2(&[[0.0f32], [0.0], [0.0], [1.0]]).into_dyn());
}

/// Three linear neurons (two hidden, one output, identity activation) computing 96. Without a
/// non-linearity the network is one linear map, `W2·W1`: a linear MLP collapses to a single layer.
#[test]
fn linear_mlp_of_three_neurons_outputs_96_and_collapses_to_one_map() {
    let w1 = arr2(&[[1.0f32, 2.0], [3.0, 4.0]]);
    let w2 = arr2(&[[3.0f32, 4.0]]);
    let mut mlp = Sequential::new(vec![
        Box::new(Linear::from_arrays(w1.clone(), None)),
        Box::new(Linear::from_arrays(w2.clone(), None)),
    ]);
    let x = arr2(&[[2.0f32, 3.0]]).into_dyn();
    let y = mlp.forward(x.clone(), &mut Context::eval(&mut rng()));
    // h = (1·2 + 2·3, 3·2 + 4·3) = (8, 18); y = 3·8 + 4·18 = 96.
    assert_eq!(y, arr2(&[[96.0f32]]).into_dyn());

    let collapsed: Array2<f32> = w2.dot(&w1);
    assert_eq!(collapsed, arr2(&[[15.0, 22.0]]));
    let mut single = Linear::from_arrays(collapsed, None);
    let xs = arr2(&[[2.0f32, 3.0], [-1.0, 0.5], [4.0, -2.0]]).into_dyn();
    let deep = mlp.forward(xs.clone(), &mut Context::eval(&mut rng()));
    let flat = single.forward(xs, &mut Context::eval(&mut rng()));
    assert_eq!(deep, flat);
}

#[test]
fn conv_geometry_answers() {
    // 28×28 with a 7×7 kernel, stride 1: 22×22.
    assert_eq!(output_size(28, 7, 1, 0), 22);
    assert_eq!(strict_output_size(28, 7, 1, 0).unwrap(), 22);

    // 5×5, k = 3, S = 2: keeping the size needs P = 3.
    assert_eq!(same_padding(5, 3, 2).unwrap(), 3);
    assert_eq!(strict_output_size(5, 3, 2, 3).unwrap(), 5);

    // 224, k = 5, S = 2: n + 2P − k is odd for every P, so no padding is valid.
    for p in 0..8 {
        let err = strict_output_size(224, 5, 2, p).unwrap_err().to_string();
        assert!(err.contains("does not divide"), "{err}");
    }
    for err in [
        padding_for_output(224, 5, 2, 112).unwrap_err(),
        same_padding(224, 5, 2).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("no valid padding"), "{msg}");
        assert!(
            msg.contains("n=224") && msg.contains("k=5") && msg.contains("S=2"),
            "{msg}"
        );
    }
    // Layers follow PyTorch's floor rule instead: ResNet-18's stem, 224 → 112.
    assert_eq!(output_size(224, 7, 2, 3), 112);

    // 128×128×3 with 32 kernels of 3×3×3, S = 1, P = 1: 128×128×32.
    let conv = Conv2d::new(3, 32, 3, 1, 1, true, &mut rng());
    assert_eq!(conv.output_shape(&[4, 3, 128, 128]), [4, 32, 128, 128]);
}

#[test]
fn conv_parameter_count_is_c_out_times_c_in_k_k_plus_one() {
    let conv = Conv2d::new(3, 32, 3, 1, 1, true, &mut rng());
    assert_eq!(conv.param_count(), 896);
    assert_eq!(conv2d_param_count(3, 32, 3, true), 896);
    assert_eq!(conv2d_param_count(3, 32, 3, false), 864);
    let no_bias = Conv2d::new(3, 32, 3, 1, 1, false, &mut rng());
    assert_eq!(no_bias.param_count(), 864);
}
