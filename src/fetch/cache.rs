//! The cache directory and what it holds for each model `<name>`:
//!
//! ```text
//! <cache>/<name>.safetensors        the verified weights (only ever renamed into place)
//! <cache>/<name>.json               the record: url, sha256, size, what the hash was checked against
//! <cache>/<name>.safetensors.part   an unfinished download, resumed by the next fetch
//! <cache>/<name>.part.json          where that unfinished download came from
//! <cache>/models/<name>.toml        the user's own manifests
//! <cache>/.locks/<name>.lock        held while a fetch of <name> runs
//! ```
//!
//! The cache directory is `$TL_HOME`, else `$XDG_CACHE_HOME/tl`, else `~/.cache/tl`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::registry;
use crate::{Error, Result};

/// The cache directory from the environment: `$TL_HOME`, else `$XDG_CACHE_HOME/tl`, else
/// `$HOME/.cache/tl`, else `.tl-cache` in the working directory when no home is known. Empty
/// variables count as unset.
pub fn cache_dir_from_env() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = var("TL_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("tl");
    }
    if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
        return PathBuf::from(home).join(".cache").join("tl");
    }
    PathBuf::from(".tl-cache")
}

/// The cached weights of `name`: `<cache>/<name>.safetensors`.
pub fn weights_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!("{name}.safetensors"))
}

/// The unfinished download of `name`: `<cache>/<name>.safetensors.part`.
pub fn part_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!("{name}.safetensors.part"))
}

/// Where the unfinished download came from: `<cache>/<name>.part.json`.
pub(crate) fn part_record_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!("{name}.part.json"))
}

/// The record of the cached weights of `name`: `<cache>/<name>.json`.
pub fn record_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!("{name}.json"))
}

/// The lock file of `name`: `<cache>/.locks/<name>.lock`.
pub(crate) fn lock_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(".locks").join(format!("{name}.lock"))
}

/// What a cached file's SHA-256 was checked against when it was downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// The sha256 pinned by the manifest or `--sha256`.
    Pinned,
    /// The sha256 the server published (`X-Linked-Etag`, or an `ETag` that is a sha256).
    Published,
    /// Nothing: no hash was known; the computed one is recorded for later checks.
    None,
}

impl Verification {
    /// `pinned`, `published` or `no`, as `tl list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Pinned => "pinned",
            Verification::Published => "published",
            Verification::None => "no",
        }
    }
}

/// The record written beside cached weights (`<cache>/<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The model name.
    pub name: String,
    /// The architecture.
    pub arch: String,
    /// The URL the file was downloaded from.
    pub url: String,
    /// The file's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// What the hash was checked against.
    pub verified: Verification,
    /// When the download finished, in seconds since the Unix epoch.
    pub fetched_at: u64,
}

/// Reads the record of `name`; `Ok(None)` when there is none.
///
/// # Errors
/// [`Error::Io`] or [`Error::Format`] when the record exists but cannot be read.
pub fn read_record(cache: &Path, name: &str) -> Result<Option<Record>> {
    let path = record_path(cache, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(&path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

pub(crate) fn write_record(cache: &Path, record: &Record) -> Result<()> {
    let text = serde_json::to_string_pretty(record).unwrap_or_default() + "\n";
    write_atomic(&record_path(cache, &record.name), text.as_bytes())
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it to `path`, so
/// `path` holds either its old content or all of the new.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename in `dir` durable where the platform allows it; best effort.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// The cached weights of `name` in `cache`, ready to load.
///
/// Checks that the file exists and, when a record exists, that its size is the recorded one
/// (cheap; `tl fetch --verify` re-hashes).
///
/// # Errors
/// [`Error::Config`] naming the model when it is not cached (the message says to run
/// `tl fetch <name>`), when the name is unknown (the message lists the known models), or when the
/// cached file's size differs from the record's; [`Error::Io`] when the file cannot be inspected.
pub fn cached_weights(cache: &Path, name: &str) -> Result<PathBuf> {
    if let Err(msg) = registry::check_name(name) {
        return Err(Error::config(name, msg));
    }
    let path = weights_path(cache, name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if registry::find_manifest(cache, name)
                .ok()
                .flatten()
                .is_none()
            {
                return Err(registry::unknown_model(cache, name));
            }
            return Err(Error::config(
                name,
                format!(
                    "weights are not in the cache ({}); run `tl fetch {name}` first, or give --weights FILE",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if let Some(record) = read_record(cache, name)? {
        if record.size != meta.len() {
            return Err(Error::config(
                name,
                format!(
                    "{} is {} bytes but {} bytes were downloaded and verified; run `tl fetch --force {name}`",
                    path.display(),
                    meta.len(),
                    record.size
                ),
            ));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tl-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_weights_say_how_to_fetch() {
        let d = temp("missing");
        let e = cached_weights(&d, "resnet18").unwrap_err().to_string();
        assert!(e.contains("tl fetch resnet18"), "{e}");
        let e = cached_weights(&d, "nosuch").unwrap_err().to_string();
        assert!(e.contains("vgg16, resnet18"), "{e}");
        std::fs::write(weights_path(&d, "resnet18"), b"1234").unwrap();
        assert_eq!(
            cached_weights(&d, "resnet18").unwrap(),
            weights_path(&d, "resnet18")
        );
        let record = Record {
            name: "resnet18".into(),
            arch: "resnet18".into(),
            url: String::new(),
            sha256: "0".repeat(64),
            size: 5,
            verified: Verification::Pinned,
            fetched_at: 0,
        };
        write_record(&d, &record).unwrap();
        assert_eq!(read_record(&d, "resnet18").unwrap(), Some(record));
        let e = cached_weights(&d, "resnet18").unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
