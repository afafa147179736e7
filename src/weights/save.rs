//! Atomic safetensors writing: the file is written under a temporary name in the destination's
//! directory, synced, then renamed, so a crash never leaves a half-written file under the final
//! name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::ArrayViewD;
use safetensors::{Dtype, View};

use crate::error::{Error, Result};

struct F32View<'a> {
    shape: Vec<usize>,
    data: Cow<'a, [f32]>,
    dtype: Dtype,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.dtype {
            Dtype::F16 => Cow::Owned(
                self.data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            Dtype::BF16 => Cow::Owned(
                self.data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            _ if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(&self.data)),
            _ => Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * self.dtype.bitsize() / 8
    }
}

/// The temporary name used while writing `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which is then
/// synced and renamed over `path`. On any failure the temporary file is removed.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| Error::io(&tmp, e))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes `path` a second name of the finished file `from` (a hard link, made under the temporary
/// name and renamed over `path`), or where the filesystem has no hard links, an atomic copy. Both
/// names then hold the same bytes; replacing either later (by a rename) leaves the other intact.
///
/// # Errors
/// [`Error::Io`] naming the file when linking, copying or renaming fails; nothing is left under
/// the temporary name.
pub fn link_atomic(from: &Path, path: &Path) -> Result<()> {
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_ok() {
        let renamed = std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return renamed;
    }
    write_atomic(path, |w| {
        std::io::copy(&mut File::open(from)?, w).map(|_| ())
    })
}

/// Writes `tensors` (f32) and `metadata` to `path` atomically.
///
/// # Errors
/// [`Error::Io`] naming the file when writing, syncing or renaming fails; the temporary file is
/// removed and nothing is left under `path`'s name.
pub fn save_atomic(
    path: &Path,
    tensors: Vec<(String, ArrayViewD<'_, f32>)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    save_atomic_as(path, tensors, metadata, Dtype::F32)
}

/// As [`save_atomic`], storing every tensor as `dtype` (F32, F16 or BF16).
///
/// # Errors
/// As [`save_atomic`]; [`Error::Config`] for another dtype.
pub fn save_atomic_as(
    path: &Path,
    tensors: Vec<(String, ArrayViewD<'_, f32>)>,
    metadata: HashMap<String, String>,
    dtype: Dtype,
) -> Result<()> {
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(Error::config(
            "dtype",
            format!("{dtype:?}: only F32, F16 and BF16 are written"),
        ));
    }
    let tmp = temp_path(path);
    let views: Vec<(String, F32View<'_>)> = tensors
        .into_iter()
        .map(|(n, a)| {
            let shape = a.shape().to_vec();
            let data = match a.to_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(a.iter().copied().collect()),
            };
            (n, F32View { shape, data, dtype })
        })
        .collect();
    let result = (|| -> Result<()> {
        safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(&tmp, io),
            other => Error::format(&tmp, other.to_string()),
        })?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_name_keeps_its_bytes_when_the_first_is_replaced() {
        let dir = std::env::temp_dir().join(format!("tl-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (best, last) = (dir.join("best.bin"), dir.join("last.bin"));
        write_atomic(&best, |w| std::io::Write::write_all(w, b"epoch 1")).unwrap();
        std::fs::write(&last, b"stale").unwrap();
        link_atomic(&best, &last).unwrap();
        assert_eq!(std::fs::read(&last).unwrap(), b"epoch 1");
        write_atomic(&best, |w| std::io::Write::write_all(w, b"epoch 2")).unwrap();
        assert_eq!(std::fs::read(&best).unwrap(), b"epoch 2");
        assert_eq!(std::fs::read(&last).unwrap(), b"epoch 1");
        assert!(!temp_path(&last).exists());
        let missing = link_atomic(&dir.join("none.bin"), &dir.join("x.bin")).unwrap_err();
        assert!(missing.to_string().contains("x.bin"), "{missing}");
        assert!(!dir.join("x.bin").exists() && !temp_path(&dir.join("x.bin")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
