//! Strict loading of a weight file into a layer tree, by the tree's dotted names.
//!
//! Every parameter and buffer must be found with its exact shape; every file tensor must be used;
//! problems are collected and reported together, by name. `num_batches_tracked` is ignored.
//! timm's VGG names are the one mapping, here: `pre_logits.fc1` ↔ `classifier.0` (weight
//! `[4096, 512, 7, 7]` read as `[4096, 25088]`), `pre_logits.fc2` ↔ `classifier.3` (`[4096, 4096,
//! 1, 1]` as `[4096, 4096]`), `head.fc` ↔ `classifier.6`. timm's ResNet names are torchvision's.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::ArrayD;

use super::safetensors::{TensorData, WeightFile};
use crate::error::{Error, Result};
use crate::nn::Layer;

const TIMM_VGG: [(&str, &str); 3] = [
    ("pre_logits.fc1.", "classifier.0."),
    ("pre_logits.fc2.", "classifier.3."),
    ("head.fc.", "classifier.6."),
];

/// The torchvision name of a file tensor name (timm's VGG names mapped, others unchanged).
pub fn canonical_name(name: &str) -> String {
    for (timm, tv) in TIMM_VGG {
        if let Some(rest) = name.strip_prefix(timm) {
            return format!("{tv}{rest}");
        }
    }
    name.to_string()
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors read in place from the map.
    pub mapped: usize,
    /// Tensors copied or converted.
    pub copied: usize,
    /// File tensors deliberately not used (dropped layers), by name.
    pub ignored: Vec<String>,
}

/// Loads `file` into `model`.
///
/// `expected_absent(name)`: model parameters that the file need not hold (a new head).
/// `droppable(name)`: file tensors (torchvision names) that the model may lack (layers cut off).
///
/// # Errors
/// [`Error::Weights`] listing every missing tensor, shape mismatch, unsupported dtype and
/// unexpected tensor; nothing is changed in the model when there is any problem.
pub fn load_into(
    model: &mut dyn Layer,
    file: &WeightFile,
    expected_absent: &dyn Fn(&str) -> bool,
    droppable: &dyn Fn(&str) -> bool,
) -> Result<LoadReport> {
    let by_canonical: BTreeMap<String, &str> = file
        .names()
        .into_iter()
        .filter(|n| !n.ends_with("num_batches_tracked"))
        .map(|n| (canonical_name(n), n))
        .collect();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let mut plan: Vec<(String, String)> = Vec::new();
    model.visit("", &mut |name, p| {
        let Some(&file_name) = by_canonical.get(name) else {
            if !expected_absent(name) {
                problems.push(format!("missing tensor {name} {:?}", p.shape()));
            }
            return;
        };
        used.insert(file_name.to_string());
        let e = file.entry(file_name).expect("listed name");
        let numel: usize = e.shape.iter().product();
        let reshaped = file_name != name && numel == p.len();
        let shape_ok = e.shape == p.shape() || reshaped;
        let dtype_ok = super::dtype::is_float(e.dtype);
        if !dtype_ok {
            problems.push(format!(
                "tensor {file_name} has dtype {:?}; only F32, F16, BF16 and F64 load",
                e.dtype
            ));
        }
        if !shape_ok {
            problems.push(format!(
                "tensor {file_name} has shape {:?}, the model expects {:?}",
                e.shape,
                p.shape()
            ));
        }
        if shape_ok && dtype_ok {
            plan.push((name.to_string(), file_name.to_string()));
        }
    });
    let mut ignored = Vec::new();
    for (canon, file_name) in &by_canonical {
        if used.contains(*file_name) {
            continue;
        }
        if droppable(canon) {
            ignored.push(file_name.to_string());
        } else {
            problems.push(format!("unexpected tensor {file_name}"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Weights {
            path: file.path().to_path_buf(),
            problems,
        });
    }
    let plan: BTreeMap<String, String> = plan.into_iter().collect();
    let mut report = LoadReport {
        ignored,
        ..LoadReport::default()
    };
    let mut failure = None;
    model.visit_mut("", &mut |name, p| {
        let Some(file_name) = plan.get(name) else {
            return;
        };
        match file.f32_data(file_name) {
            Ok(TensorData::Mapped(m)) => {
                p.set_mapped(m);
                report.mapped += 1;
            }
            Ok(TensorData::Owned(v)) => {
                p.set_value(ArrayD::from_shape_vec(p.shape().to_vec(), v).expect("length checked"));
                report.copied += 1;
            }
            Err(e) => failure = Some(e),
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
