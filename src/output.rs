//! Feature files: `.npy` (NumPy v1.0, `<f4`, C order), `.csv` (a `path` column, then one column
//! per value), `.safetensors` (tensor `features` `[N, D]`, metadata `paths` as a JSON list,
//! `layer`, `model`). All written atomically.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::error::{Error, Result};
use crate::weights::{save_atomic, write_atomic};

/// A feature-file format, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Npy,
    Csv,
    Safetensors,
}

impl Format {
    /// The format of `path`'s extension.
    ///
    /// # Errors
    /// [`Error::Config`] naming `-o` for another extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("npy") => Ok(Format::Npy),
            Some("csv") => Ok(Format::Csv),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => Err(Error::config(
                "-o",
                format!(
                    "{}: the extension must be .npy, .csv or .safetensors",
                    path.display()
                ),
            )),
        }
    }
}

/// The bytes of a NumPy v1.0 file holding `a` as little-endian f32.
pub fn npy_bytes(a: &Array2<f32>) -> Vec<u8> {
    let (n, d) = a.dim();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes features (one row per path) to `out` in the format its extension names.
///
/// # Errors
/// [`Error::Config`] for an unknown extension, [`Error::Io`] naming the file.
pub fn write_features(
    out: &Path,
    features: &Array2<f32>,
    paths: &[PathBuf],
    layer: &str,
    model: &str,
) -> Result<()> {
    match Format::from_path(out)? {
        Format::Npy => write_atomic(out, |w| w.write_all(&npy_bytes(features))),
        Format::Csv => write_atomic(out, |w| {
            write!(w, "path")?;
            for j in 0..features.ncols() {
                write!(w, ",f{j}")?;
            }
            writeln!(w)?;
            for (p, row) in paths.iter().zip(features.rows()) {
                write!(w, "{}", csv_field(&p.display().to_string()))?;
                for v in row {
                    write!(w, ",{v}")?;
                }
                writeln!(w)?;
            }
            Ok(())
        }),
        Format::Safetensors => {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let mut meta = HashMap::new();
            meta.insert(
                "paths".to_string(),
                serde_json::to_string(&names).expect("strings serialise"),
            );
            meta.insert("layer".to_string(), layer.to_string());
            meta.insert("model".to_string(), model.to_string());
            save_atomic(
                out,
                vec![("features".to_string(), features.view().into_dyn())],
                meta,
            )
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let a = Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = npy_bytes(&a);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)"));
        assert_eq!(
            f32::from_le_bytes(b[10 + hlen + 20..10 + hlen + 24].try_into().unwrap()),
            6.0
        );
    }
}
