//! The frozen-feature cache of a fine-tuning run: the output of the model's frozen prefix for
//! every image, computed once (eval mode; the prefix is deterministic) — on the images
//! themselves, or on several augmented views of each — kept in memory, or written to a file and
//! memory-mapped when it is larger than the memory it may take.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::trainer::Batch;
use crate::data::loader::{batches, BatchOptions, Loaded};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::tensor::recycle;

/// Where a cache keeps its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    Memory,
    /// Written to this file (created new; it must not exist), then memory-mapped. The file is
    /// removed once mapped where the system allows (Unix), otherwise when the cache is dropped.
    File(PathBuf),
}

/// The output of a model's frozen prefix for every image of a set, in the set's order, for one or
/// more views of the set.
pub struct FeatureCache {
    data: Data,
    /// Shape of one image's row.
    row_shape: Vec<usize>,
    row_len: usize,
    views: usize,
    labels: Vec<usize>,
}

/// The rows of every view, view after view, image after image.
enum Data {
    Memory(Vec<f32>),
    Mapped { map: memmap2::Mmap, path: PathBuf },
}

impl Data {
    fn values(&self) -> &[f32] {
        match self {
            Data::Memory(v) => v,
            Data::Mapped { map, .. } => bytemuck::cast_slice(map),
        }
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        if let Data::Mapped { path, .. } = self {
            // Already gone on Unix (removed once mapped).
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where rows go while they are computed.
enum Sink {
    Memory(Vec<f32>),
    File(Spill),
}

/// The file a store's rows are written to, removed again when it is dropped unfinished (an
/// error while computing the rows leaves nothing behind).
struct Spill {
    /// `None` once [`Sink::finish`] has taken it.
    writer: Option<BufWriter<File>>,
    path: PathBuf,
    /// Bytes written so far.
    written: u64,
}

impl Drop for Spill {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Sink {
    /// A sink for `values` values; a file store reserves their bytes on its disk first.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when it exists or cannot be created; [`Error::Data`] naming
    /// it when its disk cannot hold `values` values (the file is then removed).
    fn new(storage: &Storage, values: usize) -> Result<Sink> {
        Ok(match storage {
            Storage::Memory => Sink::Memory(Vec::with_capacity(values)),
            Storage::File(path) => {
                let file = File::options()
                    .write(true)
                    .read(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                let bytes = (values * std::mem::size_of::<f32>()) as u64;
                let reserved = reserve(&file, bytes);
                // From here on, dropping the sink removes the file.
                let spill = Spill {
                    writer: Some(BufWriter::with_capacity(1 << 20, file)),
                    path: path.clone(),
                    written: 0,
                };
                reserved.map_err(|e| {
                    Error::data(
                        path,
                        format!(
                            "the frozen-feature cache needs {:.1} MB on this disk: {e}",
                            bytes as f64 / 1e6
                        ),
                    )
                })?;
                Sink::File(spill)
            }
        })
    }

    fn push(&mut self, values: &[f32]) -> Result<()> {
        match self {
            Sink::Memory(v) => v.extend_from_slice(values),
            Sink::File(spill) => {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                spill
                    .writer
                    .as_mut()
                    .expect("an unfinished sink has its writer")
                    .write_all(bytes)
                    .map_err(|e| Error::io(&spill.path, e))?;
                spill.written += bytes.len() as u64;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Data> {
        match self {
            Sink::Memory(v) => Ok(Data::Memory(v)),
            Sink::File(mut spill) => {
                let path = spill.path.clone();
                let writer = spill
                    .writer
                    .take()
                    .expect("an unfinished sink has its writer");
                let result = (|| {
                    let file = writer
                        .into_inner()
                        .map_err(|e| Error::io(&path, e.into_error()))?;
                    // The reservation may exceed what was written; the map holds the rows only.
                    file.set_len(spill.written)
                        .map_err(|e| Error::io(&path, e))?;
                    if spill.written == 0 {
                        return Ok(Data::Memory(Vec::new()));
                    }
                    // SAFETY: the file was created by this call (`create_new`) and is neither
                    // written nor truncated after this point; on Unix it is removed right away,
                    // so no other process can open it either.
                    let map =
                        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
                    Ok(Data::Mapped {
                        map,
                        path: path.clone(),
                    })
                })();
                // A mapping keeps its pages; the name is no longer needed (elsewhere than on Unix
                // a mapped file is removed when the cache is dropped).
                let mapped = matches!(result, Ok(Data::Mapped { .. }));
                if cfg!(unix) || !mapped {
                    let _ = std::fs::remove_file(&path);
                }
                result
            }
        }
    }
}

/// Reserves `bytes` for `file` on its disk (Linux `fallocate`), so that a store larger than the
/// free space fails before any row is computed rather than after minutes of work. Where the
/// system or filesystem cannot reserve, nothing is done.
fn reserve(file: &File, bytes: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if bytes > 0 {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(bytes)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the descriptor belongs to `file`, open for writing for the whole call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                return Err(err);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, bytes);
    Ok(())
}

/// Values in one image's output of units `0..prefix` for `size`×`size` inputs.
pub fn row_len(model: &Model, prefix: usize, size: usize) -> usize {
    row_shape(model, prefix, size).iter().product()
}

fn row_shape(model: &Model, prefix: usize, size: usize) -> Vec<usize> {
    let out = model
        .net()
        .layers()
        .take(prefix)
        .fold(vec![1, 3, size, size], |shape, (_, layer)| {
            layer.output_shape(&shape)
        });
    out[1..].to_vec()
}

/// The memory available to new allocations (Linux's `MemAvailable`), when the system says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl FeatureCache {
    /// Runs units `0..prefix` of `model` over `set` (no augmentation), `batch_size` images at a
    /// time, into `storage`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when writing or mapping a file store fails.
    pub fn compute(
        model: &mut Model,
        prefix: usize,
        set: &Arc<Loaded>,
        batch_size: usize,
        pre: crate::data::Preprocess,
        storage: &Storage,
    ) -> Result<Self> {
        Self::compute_views(
            model,
            prefix,
            set,
            1,
            BatchOptions::eval(batch_size, pre),
            storage,
        )
    }

    /// Runs units `0..prefix` of `model` over `k` views of every image of `set`: view `v` is the
    /// set as [`batches`] makes it for epoch `opts.epoch + v` (in dataset order whatever
    /// `opts.shuffle`; augmented as `opts.augment` says).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file when writing or mapping a file store fails.
    pub fn compute_views(
        model: &mut Model,
        prefix: usize,
        set: &Arc<Loaded>,
        k: usize,
        opts: BatchOptions,
        storage: &Storage,
    ) -> Result<Self> {
        let row_shape = row_shape(model, prefix, opts.pre.crop as usize);
        let row_len: usize = row_shape.iter().product();
        let mut sink = Sink::new(storage, k * set.len() * row_len)?;
        for v in 0..k {
            let opts = BatchOptions {
                shuffle: false,
                epoch: opts.epoch + v,
                ..opts
            };
            for (x, _) in batches(set.clone(), opts) {
                let out = crate::infer::forward_units(model, x.into_dyn(), prefix);
                let out = out.as_standard_layout();
                let values = out.as_slice().expect("standard layout");
                assert_eq!(values.len(), out.shape()[0] * row_len, "prefix row shape");
                sink.push(values)?;
            }
        }
        Ok(FeatureCache {
            data: sink.finish()?,
            row_shape,
            row_len,
            views: k,
            labels: set.labels.clone(),
        })
    }

    /// The view that epoch `epoch` (from 1) trains on: `(epoch − 1) mod views`.
    pub fn view_of(&self, epoch: usize) -> usize {
        epoch.saturating_sub(1) % self.views.max(1)
    }

    /// Cached images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`'s row of view `view`.
    fn row(&self, view: usize, i: usize) -> &[f32] {
        let at = (view * self.len() + i) * self.row_len;
        &self.data.values()[at..at + self.row_len]
    }

    /// Batches of the rows in `order` (of the first view).
    pub fn batches(
        self: &Arc<Self>,
        order: Vec<usize>,
        batch_size: usize,
    ) -> impl Iterator<Item = Batch> + 'static {
        self.batches_of_view(order, batch_size, 0)
    }

    /// Batches of view `view`'s rows in `order`.
    ///
    /// # Panics
    /// Panics if there is no such view.
    pub fn batches_of_view(
        self: &Arc<Self>,
        order: Vec<usize>,
        batch_size: usize,
        view: usize,
    ) -> impl Iterator<Item = Batch> + 'static {
        assert!(view < self.views, "feature cache: no view {view}");
        let me = self.clone();
        let chunks: Vec<Vec<usize>> = order
            .chunks(batch_size.max(1))
            .map(|c| c.to_vec())
            .collect();
        chunks.into_iter().map(move |idx| {
            let mut shape = vec![idx.len()];
            shape.extend(&me.row_shape);
            // Every row is written below; as image batches are, in memory the layers gave back.
            let mut x: ndarray::ArrayD<f32> = recycle::take_array(ndarray::IxDyn(&shape));
            let values = x.as_slice_mut().expect("standard layout");
            for (dst, &i) in values.chunks_exact_mut(me.row_len.max(1)).zip(&idx) {
                dst.copy_from_slice(me.row(view, i));
            }
            (x, idx.iter().map(|&i| me.labels[i]).collect())
        })
    }
}

/// `OUT.<what>-cache.tmp<pid>` beside the checkpoint `out`.
pub fn spill_path(out: &Path, what: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{what}-cache.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tl-feature-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_file_store_maps_what_was_written_and_leaves_no_file() {
        let path = scratch("rows");
        let _ = std::fs::remove_file(&path);
        // Room reserved for more rows than come: the map holds the rows written.
        let mut sink = Sink::new(&Storage::File(path.clone()), 12_000).unwrap();
        let values: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        for chunk in values.chunks(999) {
            sink.push(chunk).unwrap();
        }
        let data = sink.finish().unwrap();
        assert!(matches!(data, Data::Mapped { .. }));
        assert_eq!(data.values(), &values[..]);
        if cfg!(unix) {
            assert!(!path.exists(), "removed once mapped");
        }
        drop(data);
        assert!(!path.exists(), "removed when dropped");
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn a_file_store_dropped_unfinished_leaves_no_file() {
        let path = scratch("unfinished");
        let _ = std::fs::remove_file(&path);
        let mut sink = Sink::new(&Storage::File(path.clone()), 1000).unwrap();
        sink.push(&[1.0; 400]).unwrap();
        assert!(path.exists(), "written while the rows come");
        // As when computing the rows fails part way.
        drop(sink);
        assert!(!path.exists(), "removed with the unfinished sink");
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    /// A store larger than its disk fails when it is made, before any row is computed, naming
    /// the file and the size, and leaves no file.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_store_larger_than_its_disk_fails_at_once() {
        let path = scratch("huge");
        let _ = std::fs::remove_file(&path);
        // 4 PB: more than any disk this runs on, and than ext4's largest file.
        let err = Sink::new(&Storage::File(path.clone()), 1 << 50)
            .err()
            .expect("no disk holds this");
        let text = err.to_string();
        assert!(text.contains("huge"), "{text}");
        assert!(
            text.contains("the frozen-feature cache needs 4503599627.4 MB on this disk"),
            "{text}"
        );
        assert!(!path.exists(), "nothing left behind");
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn a_file_store_never_overwrites_a_file() {
        let path = scratch("taken");
        std::fs::write(&path, b"someone else's").unwrap();
        let err = Sink::new(&Storage::File(path.clone()), 0)
            .err()
            .expect("an existing file is an error");
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn an_empty_file_store_holds_no_rows() {
        let path = scratch("empty");
        let _ = std::fs::remove_file(&path);
        let data = Sink::new(&Storage::File(path.clone()), 0)
            .unwrap()
            .finish()
            .unwrap();
        assert!(data.values().is_empty());
        assert!(!path.exists());
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }
}
