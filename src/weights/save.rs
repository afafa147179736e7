//! Atomic safetensors writing: the file is written under a temporary name in the destination's
//! directory, synced, then renamed, so a crash never leaves a half-written file under the final
//! name.
//!
//! Files written over and over (each epoch's checkpoint and optimizer state) are laid out first
//! as a [`FileImage`] in aligned memory that is reused, and written from it with direct I/O where
//! the filesystem allows: the device reads the image itself, so the write copies nothing into
//! the page cache and fills none of it (buffered, an 80 MB file costs its writer ~35 ms of CPU
//! copying, and the kernel more to write back and later drop those pages).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::ArrayViewD;
use rayon::prelude::*;
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
    replace_atomic(path, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| Error::io(tmp, e))?;
        w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))
    })
}

/// The steps every atomic write shares: `fill` writes the temporary file (the name it is given)
/// and returns it open; it is synced, renamed over `path`, and the directory synced (best effort,
/// so the rename survives a crash). On any failure the temporary file is removed.
fn replace_atomic(path: &Path, fill: impl FnOnce(&Path) -> Result<File>) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        fill(&tmp)?.sync_all().map_err(|e| Error::io(&tmp, e))?;
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
    replace_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(tmp, io),
            other => Error::format(tmp, other.to_string()),
        })?;
        File::open(tmp).map_err(|e| Error::io(tmp, e))
    })
}

/// The alignment direct I/O asks of the buffer, the file offset and the length: a multiple of
/// the device's logical block, which 4096 is for every common one.
const ALIGN: usize = 4096;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; ALIGN]);

// SAFETY: a byte array with the alignment of its size: no padding, every bit pattern valid.
unsafe impl bytemuck::Zeroable for Block {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Block {}

/// A safetensors file (f32 tensors) laid out in memory, aligned for direct I/O. Filling it again
/// reuses its memory, so a file written every epoch costs one copy of its tensors and no fresh
/// pages.
#[derive(Default)]
pub struct FileImage {
    blocks: Vec<Block>,
    len: usize,
}

impl std::fmt::Debug for FileImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileImage").field("len", &self.len).finish()
    }
}

impl FileImage {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lays out `tensors` (stored as F32, in the given order) and `metadata` as a safetensors
    /// file, in this image's memory when it is large enough. The tensors are copied in parallel.
    pub fn fill(
        &mut self,
        tensors: &[(String, ArrayViewD<'_, f32>)],
        metadata: &HashMap<String, String>,
    ) {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(metadata));
        }
        let mut offset = 0;
        for (name, t) in tensors {
            let end = offset + t.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": t.shape(), "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut header = serde_json::to_vec(&header).expect("a JSON map serialises");
        // As the safetensors crate writes it: the data starts 8-byte aligned.
        header.resize(header.len().next_multiple_of(8), b' ');
        let start = 8 + header.len();
        self.len = start + offset;
        let blocks = self.len.div_ceil(ALIGN);
        if self.blocks.len() != blocks {
            self.blocks.resize(blocks, Block([0; ALIGN]));
        }
        let bytes = self.bytes_mut();
        bytes[..8].copy_from_slice(&(header.len() as u64).to_le_bytes());
        bytes[8..start].copy_from_slice(&header);
        let mut rest = &mut bytes[start..];
        let mut jobs = Vec::with_capacity(tensors.len());
        for (_, t) in tensors {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(t.len() * 4);
            jobs.push((dst, t));
            rest = tail;
        }
        jobs.into_par_iter().for_each(|(dst, t)| copy_le(dst, t));
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block, u8>(&self.blocks)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks)[..self.len]
    }

    /// The file's bytes and the rest of the last block (what a direct write sends).
    fn blocks(&self) -> &[u8] {
        bytemuck::cast_slice(&self.blocks)
    }

    /// Writes the image to `path` atomically (temporary name, sync, rename, directory sync), by
    /// direct I/O where the filesystem supports it, else through the page cache.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; the temporary file is removed and nothing is left under
    /// `path`'s name.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        replace_atomic(path, |tmp| match self.write_direct(tmp) {
            Ok(file) => Ok(file),
            // Not supported here (tmpfs, some network filesystems) or refused for this
            // alignment: the same bytes through the page cache.
            Err(_) => self.write_buffered(tmp).map_err(|e| Error::io(tmp, e)),
        })
    }

    /// The bytes written through the page cache.
    fn write_buffered(&self, tmp: &Path) -> std::io::Result<File> {
        let mut file = File::create(tmp)?;
        std::io::Write::write_all(&mut file, self.bytes())?;
        Ok(file)
    }

    /// Whole blocks written with `O_DIRECT`, then the file cut to the image's length.
    #[cfg(target_os = "linux")]
    fn write_direct(&self, tmp: &Path) -> std::io::Result<File> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)?;
        file.write_all(self.blocks())?;
        file.set_len(self.len as u64)?;
        Ok(file)
    }

    #[cfg(not(target_os = "linux"))]
    fn write_direct(&self, _tmp: &Path) -> std::io::Result<File> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// `t`'s values in C order as little-endian bytes into `dst` (`4·len` bytes).
fn copy_le(dst: &mut [u8], t: &ArrayViewD<'_, f32>) {
    match t.as_slice() {
        Some(s) if cfg!(target_endian = "little") => dst.copy_from_slice(bytemuck::cast_slice(s)),
        _ => {
            for (d, v) in dst.chunks_exact_mut(4).zip(t.iter()) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
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

    fn tensors() -> Vec<(String, ndarray::ArrayD<f32>)> {
        let big = ndarray::ArrayD::from_shape_fn(vec![3, 700, 5], |d| {
            (d[0] * 3500 + d[1] * 5 + d[2]) as f32 * 0.25 - 100.0
        });
        vec![
            ("b.weight".into(), big),
            ("a.bias".into(), ndarray::ArrayD::from_elem(vec![3], -1.5)),
            ("c.step".into(), ndarray::ArrayD::from_elem(vec![1], 7.0)),
        ]
    }

    /// A tensor as read back: name, shape, values.
    type Read = (String, Vec<usize>, Vec<f32>);

    /// What the safetensors crate reads back: metadata and every tensor, sorted by name.
    fn read(bytes: &[u8]) -> (Option<HashMap<String, String>>, Vec<Read>) {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let mut out: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                assert_eq!(t.dtype(), Dtype::F32);
                let values = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (n, t.shape().to_vec(), values)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        (meta.metadata().clone(), out)
    }

    #[test]
    fn a_file_image_reads_back_as_save_atomic_writes_it_and_is_reused() {
        let dir = std::env::temp_dir().join(format!("tl-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta: HashMap<String, String> = [("arch".to_string(), "resnet18".to_string())].into();
        let ts = tensors();
        let views: Vec<_> = ts.iter().map(|(n, a)| (n.clone(), a.view())).collect();
        save_atomic(&dir.join("saved.safetensors"), views.clone(), meta.clone()).unwrap();
        let expected = read(&std::fs::read(dir.join("saved.safetensors")).unwrap());
        assert_eq!(expected.0.as_ref(), Some(&meta));
        assert_eq!(expected.1.len(), 3);

        let mut image = FileImage::new();
        // A transposed (non-contiguous) view is written in C order, as save_atomic does.
        let t = ts[0].1.t().to_owned();
        image.fill(&[("b.weight".into(), t.t())], &HashMap::new());
        let (meta_t, one) = read(image.bytes());
        assert_eq!(meta_t, None);
        assert_eq!(one[0], expected.1[1]);

        image.fill(&views, &meta);
        assert_eq!(read(image.bytes()), expected);
        let header = u64::from_le_bytes(image.bytes()[..8].try_into().unwrap());
        assert_eq!(header % 8, 0, "the data starts 8-byte aligned");
        let path = dir.join("image.safetensors");
        image.write_atomic(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), image.bytes());
        assert!(!temp_path(&path).exists());
        // Both ways of writing give the same bytes.
        let buffered = dir.join("buffered.safetensors");
        image.write_buffered(&buffered).unwrap();
        assert_eq!(std::fs::read(&buffered).unwrap(), image.bytes());
        #[cfg(target_os = "linux")]
        {
            let direct = dir.join("direct.safetensors");
            match image.write_direct(&direct) {
                Ok(_) => assert_eq!(std::fs::read(&direct).unwrap(), image.bytes()),
                // Only a filesystem without direct I/O (tmpfs) may refuse it.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
            }
        }
        // Filling again with less reuses the memory and forgets the old tail.
        let small = [("a.bias".to_string(), ts[1].1.view())];
        image.fill(&small, &HashMap::new());
        let (_, again) = read(image.bytes());
        assert_eq!(again, vec![expected.1[0].clone()]);
        let missing = image
            .write_atomic(&dir.join("no/such/dir/x.safetensors"))
            .unwrap_err();
        assert!(missing.to_string().contains("x.safetensors"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
