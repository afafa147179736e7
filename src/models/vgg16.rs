//! VGG16 (torchvision configuration D) from its channel list:
//! `features` = 13 × (Conv2d 3×3 pad 1 + ReLU) with a 2×2 max-pool after each block,
//! `avgpool` = AdaptiveAvgPool2d(7×7), `classifier` = Linear(25088, 4096) ReLU Dropout
//! Linear(4096, 4096) ReLU Dropout Linear(4096, classes). Units carry torchvision's names
//! (`features.24`, `classifier.6`) and the stage names of the contract.

use super::init::{conv_weight, normal, zeros, Init};
use super::Unit;
use crate::nn::{AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Relu};

/// Channels of each conv; `None` is a max-pool (ends a stage).
const CONFIG_D: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// Stage names in order.
pub const STAGES: [&str; 9] = [
    "conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8",
];

fn linear(init: &mut Init<'_>, fan_in: usize, out: usize) -> Linear {
    let w = match init {
        Init::Zeros => zeros(&[out, fan_in]),
        Init::Random(rng) => normal(*rng, &[out, fan_in], 0.01),
    };
    Linear::from_arrays(
        w.into_dimensionality().expect("2-D"),
        Some(ndarray::Array1::zeros(out)),
    )
}

/// The units of VGG16 with `classes` outputs.
pub fn units(classes: usize, init: &mut Init<'_>) -> Vec<Unit> {
    let mut units = Vec::new();
    let (mut c_in, mut stage, mut idx) = (3, 0, 0);
    for entry in CONFIG_D {
        let name = format!("features.{idx}");
        match entry {
            Some(c) => {
                let conv =
                    Conv2d::from_arrays(conv_weight(init, c, c_in, 3), Some(zeros(&[c])), 1, 1);
                units.push(Unit::new(name, STAGES[stage], Box::new(conv)));
                units.push(Unit::new(
                    format!("features.{}", idx + 1),
                    STAGES[stage],
                    Box::new(Relu::new()),
                ));
                idx += 2;
                c_in = c;
            }
            None => {
                units.push(Unit::new(
                    name,
                    STAGES[stage],
                    Box::new(MaxPool2d::new(2, 2, 0)),
                ));
                idx += 1;
                stage += 1;
            }
        }
    }
    units.push(Unit::new(
        "avgpool",
        "pool5",
        Box::new(AdaptiveAvgPool2d::new(7, 7)),
    ));
    units.push(Unit::new("flatten", "pool5", Box::new(Flatten::new())));
    let fc = [(25088, 4096, "fc6"), (4096, 4096, "fc7")];
    for (i, (fan_in, out, stage)) in fc.into_iter().enumerate() {
        units.push(Unit::new(
            format!("classifier.{}", 3 * i),
            stage,
            Box::new(linear(init, fan_in, out)),
        ));
        units.push(Unit::new(
            format!("classifier.{}", 3 * i + 1),
            stage,
            Box::new(Relu::new()),
        ));
        units.push(Unit::new(
            format!("classifier.{}", 3 * i + 2),
            stage,
            Box::new(Dropout::new(0.5)),
        ));
    }
    units.push(Unit::new(
        "classifier.6",
        "fc8",
        Box::new(linear(init, 4096, classes)),
    ));
    units
}
