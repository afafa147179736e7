//! Labelled image folders: `DATA_DIR/train/<class>/*` with `DATA_DIR/val/<class>/*`, or
//! `DATA_DIR/<class>/*` split into train and val by a fraction and a seed.
//!
//! Classes are the sorted names of the class folders (label `i` = `classes[i]`); the images of a
//! class are the files with an image extension anywhere below its folder, sorted by path. Dataset
//! order is classes in sorted order, files sorted within each. Names starting with `.` (hidden
//! files and folders such as `.ipynb_checkpoints`) are ignored, as are files directly in
//! `DATA_DIR` and, in the `train/`+`val/` layout, anything beside those two folders.
//!
//! Flat-layout split, per class of `n` images: `n_val = round(n · val_split)` clamped to
//! `[1, n − 1]` when `n ≥ 2` (so every such class is in both sets), `0` when `n = 1`. The
//! validation images are the first `n_val` of the class's files shuffled by a ChaCha8 RNG seeded
//! from `seed` and the class name (not its index, so adding a class leaves the others' splits
//! alone); both sets keep dataset order.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::transform::{is_image, IMAGE_EXTENSIONS};
use crate::error::{Error, Result};

/// One labelled image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`Dataset::classes`].
    pub label: usize,
}

/// Which folder layout a data directory uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `DATA_DIR/train/<class>/*` and `DATA_DIR/val/<class>/*`.
    TrainVal,
    /// `DATA_DIR/<class>/*`, split by `val_split` and `seed`.
    Flat,
}

/// A scanned data folder: classes in label order, training and validation samples in dataset order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    /// Sorted class folder names; the label of `classes[i]` is `i`.
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
}

/// Scans a data folder into classes and train/val samples (see the module docs for the layouts
/// and the split rule). `DATA_DIR/train` being a folder selects the `train/`+`val/` layout, where
/// `val_split` and `seed` are not used.
///
/// # Errors
/// [`Error::Data`] naming the folder at fault: `dir` missing or not a folder; `train/` without
/// `val/`; no class folders or no images at all; a single class; an empty class folder; `train/`
/// and `val/` with different class folders. [`Error::Config`] naming `--val-split` when the flat
/// layout is used and `val_split` is not strictly between 0 and 1. [`Error::Io`] when a folder
/// cannot be listed.
pub fn scan(dir: &Path, val_split: f32, seed: u64) -> Result<Dataset> {
    check_dir(dir)?;
    let train_dir = dir.join("train");
    if train_dir.is_dir() {
        let val_dir = dir.join("val");
        if !val_dir.is_dir() {
            return Err(Error::data(
                &val_dir,
                "missing: a data folder with train/ needs val/ beside it, with the same class folders",
            ));
        }
        let (classes, train) = scan_classes(&train_dir)?;
        let (val_classes, val) = scan_classes(&val_dir)?;
        if val_classes != classes {
            let (extra, folder) = match val_classes.iter().find(|c| !classes.contains(c)) {
                Some(c) => (c, &val_dir),
                None => (
                    classes.iter().find(|c| !val_classes.contains(c)).unwrap(),
                    &train_dir,
                ),
            };
            return Err(Error::data(
                folder.join(extra),
                "train/ and val/ must hold the same class folders; this one has no counterpart",
            ));
        }
        return Ok(Dataset {
            root: dir.to_path_buf(),
            layout: Layout::TrainVal,
            classes,
            train,
            val,
        });
    }
    if !(val_split > 0.0 && val_split < 1.0) {
        return Err(Error::config(
            "--val-split",
            format!(
                "must be strictly between 0 and 1 for a folder of class folders, got {val_split}"
            ),
        ));
    }
    let (classes, samples) = scan_classes(dir)?;
    let (train, val) = split(&classes, samples, val_split, seed);
    Ok(Dataset {
        root: dir.to_path_buf(),
        layout: Layout::Flat,
        classes,
        train,
        val,
    })
}

/// Scans one folder of class folders, unsplit: sorted class names and every sample in dataset
/// order (what `tl eval` reads from a folder, and each half of the `train/`+`val/` layout).
///
/// # Errors
/// [`Error::Data`] naming `dir` when it is missing, has no class folders, no images at all or a
/// single class, or naming the empty class folder; [`Error::Io`] when a folder cannot be listed.
pub fn scan_classes(dir: &Path) -> Result<(Vec<String>, Vec<Sample>)> {
    check_dir(dir)?;
    let class_dirs = visible_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect::<Vec<_>>();
    if class_dirs.is_empty() {
        return Err(Error::data(
            dir,
            "no class folders: expected <class>/<images> (or train/<class>/ and val/<class>/)",
        ));
    }
    let mut classes = Vec::with_capacity(class_dirs.len());
    let mut files = Vec::with_capacity(class_dirs.len());
    for class_dir in &class_dirs {
        classes.push(
            class_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        let mut found = Vec::new();
        walk_images(class_dir, &mut found)?;
        found.sort();
        files.push(found);
    }
    if files.iter().all(|f| f.is_empty()) {
        return Err(Error::data(
            dir,
            format!(
                "no images in any class folder (extensions: {})",
                IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    if classes.len() < 2 {
        return Err(Error::data(
            dir,
            format!(
                "a single class ({}): classification needs at least two class folders",
                classes[0]
            ),
        ));
    }
    if let Some(i) = files.iter().position(|f| f.is_empty()) {
        return Err(Error::data(
            &class_dirs[i],
            format!(
                "empty class: no images (extensions: {})",
                IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    let samples = files
        .into_iter()
        .enumerate()
        .flat_map(|(label, paths)| paths.into_iter().map(move |path| Sample { path, label }))
        .collect();
    Ok((classes, samples))
}

/// The number of validation images taken from a class of `n`: `round(n · val_split)` clamped to
/// `[1, n − 1]` for `n ≥ 2`, and `0` for `n ≤ 1`.
pub fn val_count(n: usize, val_split: f32) -> usize {
    if n < 2 {
        return 0;
    }
    ((n as f64 * val_split as f64).round() as usize).clamp(1, n - 1)
}

/// Splits samples in dataset order into (train, val) per class, by the rule in the module docs.
fn split(
    classes: &[String],
    samples: Vec<Sample>,
    val_split: f32,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut train = Vec::with_capacity(samples.len());
    let mut val = Vec::new();
    let mut rest = samples.as_slice();
    for (label, class) in classes.iter().enumerate() {
        let n = rest.iter().take_while(|s| s.label == label).count();
        let (class_samples, tail) = rest.split_at(n);
        rest = tail;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(split_seed(seed, class)));
        let mut is_val = vec![false; n];
        for &i in &order[..val_count(n, val_split)] {
            is_val[i] = true;
        }
        for (sample, v) in class_samples.iter().zip(is_val) {
            if v { &mut val } else { &mut train }.push(sample.clone());
        }
    }
    (train, val)
}

/// The split RNG's seed for one class: `seed` mixed with the FNV-1a hash of the class name.
fn split_seed(seed: u64, class: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in class.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    seed ^ h.rotate_left(17)
}

fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::data(dir, "not a folder")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::data(dir, "no such data folder"))
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Entries of `dir` whose names do not start with `.`, sorted.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in visible_entries(dir)? {
        if path.is_dir() {
            walk_images(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn val_count_keeps_every_class_in_both_sets() {
        assert_eq!(val_count(0, 0.2), 0);
        assert_eq!(val_count(1, 0.2), 0);
        assert_eq!(val_count(2, 0.2), 1);
        assert_eq!(val_count(2, 0.9), 1);
        assert_eq!(val_count(10, 0.2), 2);
        assert_eq!(val_count(12, 0.2), 2);
        assert_eq!(val_count(13, 0.2), 3);
        assert_eq!(val_count(10, 0.99), 9);
    }

    #[test]
    fn split_seed_depends_on_seed_and_name() {
        assert_eq!(split_seed(1, "cat"), split_seed(1, "cat"));
        assert_ne!(split_seed(1, "cat"), split_seed(2, "cat"));
        assert_ne!(split_seed(1, "cat"), split_seed(1, "dog"));
    }
}
