//! Opening a model the way the command line names it: a tl checkpoint file, or an architecture
//! (or fetched model name) with weights from `--weights FILE` or the cache.

use std::path::Path;

use super::{Arch, Init, Model};
use crate::error::{Error, Result};
use crate::fetch;
use crate::weights::WeightFile;

/// Output rows of the last layer found in a pretrained file (`fc`, `classifier.6` or timm's
/// `head.fc`), or 1000 when none is there.
fn file_classes(file: &WeightFile) -> usize {
    ["fc.weight", "classifier.6.weight", "head.fc.weight"]
        .iter()
        .find_map(|n| file.entry(n).map(|e| e.shape[0]))
        .unwrap_or(1000)
}

/// The architecture named by `model`: `vgg16`, `resnet18`, or a model whose manifest (built in
/// or the user's, in `cache`) says which.
///
/// # Errors
/// [`Error::Config`] naming the model when it is neither.
pub fn arch_of(model: &str, cache: &Path) -> Result<Arch> {
    Arch::parse(model).or_else(|_| Arch::parse(&fetch::manifest_in(cache, model)?.arch))
}

/// Opens `model` with optional `weights`:
/// - `model` is a tl checkpoint file: its own architecture, head and classes;
/// - `model` names an architecture or fetched model: weights from `weights` (a pretrained file
///   with torchvision or timm names, or a tl checkpoint), else from the cache.
///
/// A pretrained model with 1000 outputs gets the ImageNet class names.
///
/// # Errors
/// Every failure names the flag or file: unknown model, weights not fetched (the message says
/// `tl fetch <name>`), an invalid file, weights that do not fit the architecture.
pub fn open(model: &str, weights: Option<&Path>, cache: &Path) -> Result<Model> {
    let as_path = Path::new(model);
    if weights.is_none() && (as_path.is_file() || model.ends_with(".safetensors")) {
        let file = WeightFile::open(as_path)?;
        if !Model::is_checkpoint(&file) {
            return Err(Error::config(
                "--model",
                format!(
                    "{model} is not a tl checkpoint (no tl.format metadata); for pretrained weights use --model vgg16|resnet18 --weights {model}"
                ),
            ));
        }
        return Model::from_checkpoint(&file);
    }
    let arch = arch_of(model, cache)?;
    let path = match weights {
        Some(w) => w.to_path_buf(),
        None => fetch::cached_weights(cache, model)?,
    };
    let file = WeightFile::open(&path)?;
    if Model::is_checkpoint(&file) {
        let m = Model::from_checkpoint(&file)?;
        if m.arch() != arch {
            return Err(Error::config(
                "--weights",
                format!(
                    "{} is a {} checkpoint, not {}",
                    path.display(),
                    m.arch().name(),
                    arch.name()
                ),
            ));
        }
        return Ok(m);
    }
    let classes = file_classes(&file);
    let mut m = Model::new(arch, classes, Init::Zeros);
    m.load_weights(&file)?;
    if classes == 1000 {
        m.set_classes(fetch::imagenet_classes())?;
    }
    Ok(m)
}
