//! SHA-256: of a file on disk, incrementally while streaming, and as servers publish it.
//!
//! A published hash is read from `X-Linked-Etag` (the Hugging Face hub's header for files kept in
//! large-file storage, a quoted sha256) or from an `ETag` that is itself 64 hex digits.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cache;
use super::download::{Observer, Stage};
use super::registry::is_sha256_hex;
use crate::{Error, Result};

const CHUNK: usize = 1 << 20;

/// The lowercase hex of a finished hash.
pub(crate) fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Feeds the first `len` bytes of `path` into `hasher`, reporting progress to `observer`.
pub(crate) fn hash_prefix(
    path: &Path,
    len: u64,
    hasher: &mut Sha256,
    observer: &mut dyn Observer,
) -> Result<()> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    observer.begin(Stage::Hashing { path }, 0, Some(len));
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Err(Error::format(
                path,
                format!("file ended after {done} bytes, expected {len}"),
            ));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        observer.advance(done);
    }
    observer.end();
    Ok(())
}

/// The SHA-256 of the whole file at `path`, as lowercase hex, and its size.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read.
pub fn sha256_file(path: &Path, observer: &mut dyn Observer) -> Result<(String, u64)> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let mut hasher = Sha256::new();
    hash_prefix(path, len, &mut hasher, observer)?;
    Ok((hex(hasher), len))
}

/// A sha256 published in a header value: `"<64 hex>"`, `W/"<64 hex>"` or bare; lowercased.
pub(crate) fn sha256_from_etag(value: &str) -> Option<String> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v.trim_matches('"');
    is_sha256_hex(v).then(|| v.to_ascii_lowercase())
}

/// Re-hashes the cached weights of `name` and compares them with the sha256 recorded when they
/// were downloaded (or with `pinned`, when given). Returns the file and its sha256.
///
/// # Errors
/// [`Error::Config`] when the model is not cached or nothing is known to compare with;
/// [`Error::Checksum`] naming the cached file and both hashes when they differ;
/// [`Error::Io`] when the file cannot be read.
pub fn verify_cached(
    cache_dir: &Path,
    name: &str,
    pinned: Option<&str>,
    observer: &mut dyn Observer,
) -> Result<(PathBuf, String)> {
    let path = cache::cached_weights(cache_dir, name)?;
    let record = cache::read_record(cache_dir, name)?;
    let expected = match (pinned, &record) {
        (Some(p), _) => p.to_ascii_lowercase(),
        (None, Some(r)) => r.sha256.clone(),
        (None, None) => {
            return Err(Error::config(
                name,
                format!(
                    "no sha256 recorded for {} and none given; pass --sha256 HEX, or run `tl fetch --force {name}`",
                    path.display()
                ),
            ))
        }
    };
    let (actual, _) = sha256_file(&path, observer)?;
    if actual != expected {
        return Err(Error::Checksum {
            path,
            expected,
            actual,
        });
    }
    Ok((path, actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let h = "ab".repeat(32);
        assert_eq!(sha256_from_etag(&format!("\"{h}\"")), Some(h.clone()));
        assert_eq!(sha256_from_etag(&format!("W/\"{h}\"")), Some(h.clone()));
        assert_eq!(
            sha256_from_etag(&h.to_ascii_uppercase()),
            Some(h.to_ascii_lowercase())
        );
        assert_eq!(
            sha256_from_etag("\"d41d8cd98f00b204e9800998ecf8427e\""),
            None
        );
    }

    #[test]
    fn known_digest() {
        let mut h = Sha256::new();
        h.update(b"abc");
        assert_eq!(
            hex(h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
