//! A safetensors file opened through a memory map.
//!
//! The header is validated by the `safetensors` crate (header length, JSON, offsets that tile the
//! data exactly). F32 tensors whose bytes are 4-byte aligned are read in place from the map;
//! others are copied and converted.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use super::dtype::to_f32;
use crate::error::{Error, Result};
use crate::nn::param::MappedF32;

/// One tensor's description in the header.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: (usize, usize),
}

/// A tensor's values: in place in the map, or decoded into memory.
pub enum TensorData {
    /// F32, aligned: read in place.
    Mapped(MappedF32),
    /// Copied (misaligned F32) or converted (F16, BF16, F64).
    Owned(Vec<f32>),
}

/// An open, validated safetensors file.
pub struct WeightFile {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    tensors: HashMap<String, TensorEntry>,
    metadata: HashMap<String, String>,
}

impl WeightFile {
    /// Maps and validates `path`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened or mapped; [`Error::Format`] when it is not a
    /// valid safetensors file (truncated, a header that is not JSON, an absurd header length,
    /// offsets that do not match the data).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as every view of it (the `Arc`). The
        // file could be changed by another process while mapped; weight files are written once
        // and renamed into place (never rewritten in place), so this is the accepted contract.
        let map =
            unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let base = 8 + header_len;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (base + info.data_offsets.0, base + info.data_offsets.1),
                };
                (name, entry)
            })
            .collect();
        Ok(WeightFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `ptr` points into the mapped bytes (a tensor read in place).
    pub fn contains(&self, ptr: *const f32) -> bool {
        let start = self.map.as_ptr() as usize;
        (start..start + self.map.len()).contains(&(ptr as usize))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// A tensor's header entry.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The values of tensor `name` as f32.
    ///
    /// # Errors
    /// [`Error::Format`] when the tensor is absent or its dtype is not a float type.
    pub fn f32_data(&self, name: &str) -> Result<TensorData> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("no tensor named {name}")))?;
        let numel: usize = e.shape.iter().product();
        if e.dtype == Dtype::F32 {
            if let Some(m) = MappedF32::new(self.map.clone(), e.range.0, numel) {
                return Ok(TensorData::Mapped(m));
            }
        }
        to_f32(e.dtype, &self.map[e.range.0..e.range.1])
            .map(TensorData::Owned)
            .ok_or_else(|| {
                Error::format(
                    &self.path,
                    format!(
                        "tensor {name} has dtype {:?}; only F32, F16, BF16 and F64 load",
                        e.dtype
                    ),
                )
            })
    }
}
