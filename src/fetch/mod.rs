//! Downloading pretrained weights: manifests, the cache, resumable verified downloads.
//!
//! - [`registry`]: the built-in manifests (`models/<name>.toml`, embedded in the binary), the
//!   user's own (`<cache>/models/<name>.toml`), and the ImageNet class names;
//! - [`cache`]: the cache directory, its layout, and the record kept beside each file;
//! - [`download`]: `.part` files resumed with HTTP Range, SHA-256 while streaming, retries, the
//!   per-model lock, the rename into place;
//! - [`verify`]: hashing files and reading the hashes servers publish.
//!
//! Other commands find weights with [`manifest`] and [`cached_weights`]:
//!
//! ```no_run
//! let cache = tl::fetch::cache_dir_from_env();
//! let m = tl::fetch::manifest("resnet18")?;
//! let weights = tl::fetch::cached_weights(&cache, &m.name)?; // "run `tl fetch resnet18`" if missing
//! # Ok::<(), tl::Error>(())
//! ```

pub mod cache;
pub mod download;
mod lock;
pub mod registry;
pub mod verify;

pub use cache::{cache_dir_from_env, cached_weights, Record, Verification};
pub use download::{fetch, FetchOptions, Fetched, Observer, Silent, Stage};
pub use registry::{imagenet_classes, manifest_in, Manifest, Naming};
pub use verify::verify_cached;

/// The manifest of the model `name`: a built-in one, else the user's own in the cache directory
/// from the environment ([`cache_dir_from_env`]`/models/<name>.toml`). [`manifest_in`] takes the
/// cache directory explicitly.
///
/// # Errors
/// [`crate::Error::Config`] naming `name` and listing the known models when there is no such
/// manifest; [`crate::Error::Format`] or [`crate::Error::Io`] when its user manifest is broken.
pub fn manifest(name: &str) -> crate::Result<Manifest> {
    manifest_in(&cache_dir_from_env(), name)
}
