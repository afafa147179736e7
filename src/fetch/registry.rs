//! Model manifests: the built-in ones (`models/<name>.toml`, embedded in the binary) and the
//! user's own (`<cache>/models/<name>.toml`), plus the ImageNet class names.
//!
//! A manifest is a TOML table:
//!
//! ```toml
//! name = "resnet18"
//! arch = "resnet18"                    # vgg16 | resnet18
//! url = "https://…/model.safetensors"
//! sha256 = "…"                         # optional: 64 hex digits
//! size = 46_800_000                    # optional: approximate bytes, for display
//! naming = "timm"                      # torchvision | timm
//! licence = "…"
//! source = "…"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The architectures a manifest may name.
pub const ARCHS: [&str; 2] = ["vgg16", "resnet18"];

/// The built-in manifests, in the order `tl list` shows them.
const BUILT_IN: [(&str, &str); 2] = [
    ("vgg16", include_str!("../../models/vgg16.toml")),
    ("resnet18", include_str!("../../models/resnet18.toml")),
];

const IMAGENET_CLASSES: &str = include_str!("../../models/imagenet_classes.txt");

/// Whose parameter names a weight file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// torchvision's `state_dict` keys (`features.0.weight`, `layer1.0.conv1.weight`).
    Torchvision,
    /// timm's keys (`pre_logits.fc1.weight` for VGG's fc6, ...).
    Timm,
}

impl Naming {
    /// The manifest spelling: `torchvision` or `timm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Naming::Torchvision => "torchvision",
            Naming::Timm => "timm",
        }
    }
}

/// Where a model's weights come from and how to check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name the model is fetched and loaded by (`--model NAME`); also its file name in the
    /// cache.
    pub name: String,
    /// The architecture: one of [`ARCHS`].
    pub arch: String,
    /// The safetensors file to download.
    pub url: String,
    /// The file's SHA-256 (64 lowercase hex digits) when it is known in advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The approximate download size in bytes, for display; the server's length is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Whose parameter names the file uses.
    pub naming: Naming,
    /// The weights' licence.
    #[serde(default)]
    pub licence: String,
    /// Where the weights were published.
    #[serde(default)]
    pub source: String,
}

impl Manifest {
    /// Parses and checks a manifest; `origin` names the file in errors.
    ///
    /// # Errors
    /// [`Error::Format`] when the TOML is malformed or a field is invalid (unknown arch, a sha256
    /// that is not 64 hex digits, a name unfit for a file name, a URL that is not http(s)).
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest> {
        let mut m: Manifest =
            toml::from_str(text).map_err(|e| Error::format(origin, e.to_string()))?;
        m.check().map_err(|msg| Error::format(origin, msg))?;
        if let Some(h) = &mut m.sha256 {
            *h = h.to_ascii_lowercase();
        }
        Ok(m)
    }

    fn check(&self) -> std::result::Result<(), String> {
        check_name(&self.name)?;
        check_arch(&self.arch)?;
        check_url(&self.url)?;
        if let Some(h) = &self.sha256 {
            check_sha256(h)?;
        }
        Ok(())
    }

    /// The manifest as TOML, as written to `<cache>/models/<name>.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Checks that `name` can serve as a model name and a file name: 1–64 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
///
/// # Errors
/// A message saying what is wrong with the name.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty()
        || name.len() > 64
        || !ok_chars
        || name.starts_with('.')
        || name.starts_with('-')
    {
        return Err(format!(
            "invalid model name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -"
        ));
    }
    Ok(())
}

/// Checks that `arch` is one of [`ARCHS`].
///
/// # Errors
/// A message listing the known architectures.
pub fn check_arch(arch: &str) -> std::result::Result<(), String> {
    if ARCHS.contains(&arch) {
        Ok(())
    } else {
        Err(format!(
            "unknown arch {arch:?}: expected one of {}",
            ARCHS.join(", ")
        ))
    }
}

/// Checks that `url` is an http or https URL.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "{url}: expected an http or https URL, got scheme {:?}",
            u.scheme()
        )),
        Err(e) => Err(format!("{url}: not a URL: {e}")),
    }
}

/// Checks that `hex` is a SHA-256 digest: 64 hex digits.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_sha256(hex: &str) -> std::result::Result<(), String> {
    if is_sha256_hex(hex) {
        Ok(())
    } else {
        Err(format!(
            "{hex:?} is not a sha256: expected 64 hex digits, got {} characters",
            hex.len()
        ))
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The built-in manifests, in a fixed order (vgg16, resnet18).
pub fn built_in() -> Vec<Manifest> {
    BUILT_IN
        .iter()
        .map(|(name, text)| {
            let origin = PathBuf::from(format!("models/{name}.toml"));
            // The built-in manifests are checked by this module's tests.
            Manifest::parse(text, &origin).unwrap_or_else(|e| panic!("built-in manifest: {e}"))
        })
        .collect()
}

/// The directory of the user's own manifests in `cache`: `<cache>/models`.
pub fn user_manifest_dir(cache: &Path) -> PathBuf {
    cache.join("models")
}

/// The path of the user manifest for `name` in `cache`: `<cache>/models/<name>.toml`.
pub fn user_manifest_path(cache: &Path, name: &str) -> PathBuf {
    user_manifest_dir(cache).join(format!("{name}.toml"))
}

/// The manifests of the user's own models in `cache`, sorted by name. Files that do not parse
/// are returned as errors beside the good ones, so one bad file does not hide the rest.
pub fn user_manifests(cache: &Path) -> Vec<Result<Manifest>> {
    let dir = user_manifest_dir(cache);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| read_user_manifest(p)).collect()
}

fn read_user_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let m = Manifest::parse(&text, path)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if m.name != stem {
        return Err(Error::format(
            path,
            format!(
                "name = {:?} does not match the file name {stem:?}.toml",
                m.name
            ),
        ));
    }
    Ok(m)
}

/// Writes `manifest` as the user manifest `<cache>/models/<name>.toml` (atomically) and returns
/// its path.
///
/// # Errors
/// [`Error::Config`] when the manifest is invalid; [`Error::Io`] when it cannot be written.
pub fn save_user_manifest(cache: &Path, manifest: &Manifest) -> Result<PathBuf> {
    manifest
        .check()
        .map_err(|msg| Error::config(&manifest.name, msg))?;
    let path = user_manifest_path(cache, &manifest.name);
    let text = format!(
        "# Written by `tl fetch {name} --url ...`; edit freely.\n{}",
        manifest.to_toml(),
        name = manifest.name
    );
    super::cache::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Every model `cache` knows: the built-in ones, then the user's own sorted by name. A user
/// manifest that shadows a built-in name is ignored.
pub fn known_models(cache: &Path) -> Vec<Result<Manifest>> {
    let mut all: Vec<Result<Manifest>> = built_in().into_iter().map(Ok).collect();
    for m in user_manifests(cache) {
        if let Ok(um) = &m {
            if BUILT_IN.iter().any(|(n, _)| *n == um.name) {
                continue;
            }
        }
        all.push(m);
    }
    all
}

/// The manifest of `name`, built-in or from `<cache>/models/<name>.toml`; `None` when neither
/// exists.
///
/// # Errors
/// [`Error::Format`] or [`Error::Io`] when the user manifest exists but cannot be read.
pub fn find_manifest(cache: &Path, name: &str) -> Result<Option<Manifest>> {
    if let Some(m) = built_in().into_iter().find(|m| m.name == name) {
        return Ok(Some(m));
    }
    if check_name(name).is_err() {
        return Ok(None);
    }
    let path = user_manifest_path(cache, name);
    if !path.is_file() {
        return Ok(None);
    }
    read_user_manifest(&path).map(Some)
}

/// The manifest of `name` in `cache`.
///
/// # Errors
/// [`Error::Config`] naming the model and listing the known ones when there is no such manifest;
/// [`Error::Format`] or [`Error::Io`] when its user manifest cannot be read.
pub fn manifest_in(cache: &Path, name: &str) -> Result<Manifest> {
    find_manifest(cache, name)?.ok_or_else(|| unknown_model(cache, name))
}

pub(crate) fn unknown_model(cache: &Path, name: &str) -> Error {
    let names: Vec<String> = known_models(cache)
        .into_iter()
        .filter_map(|m| m.ok().map(|m| m.name))
        .collect();
    Error::config(
        name,
        format!(
            "unknown model; known models: {} (a model of your own: `tl fetch {name} --url URL --arch ARCH`, or a manifest in {})",
            names.join(", "),
            user_manifest_dir(cache).display()
        ),
    )
}

/// The 1000 ImageNet-1k class names in index order (torchvision's `meta["categories"]`).
pub fn imagenet_classes() -> Vec<String> {
    IMAGENET_CLASSES.lines().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_manifests_parse() {
        let all = built_in();
        assert_eq!(all.len(), 2);
        for m in &all {
            assert!(ARCHS.contains(&m.arch.as_str()));
            assert_eq!(m.naming, Naming::Timm);
            assert!(m.url.starts_with("https://huggingface.co/timm/"));
        }
    }

    #[test]
    fn classes_are_a_thousand() {
        let c = imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert_eq!(c[0], "tench");
        assert_eq!(c[999], "toilet tissue");
    }

    #[test]
    fn bad_manifests_are_rejected() {
        let p = Path::new("x.toml");
        let base =
            "name = \"x\"\narch = \"resnet18\"\nurl = \"http://127.0.0.1/x\"\nnaming = \"timm\"\n";
        assert!(Manifest::parse(base, p).is_ok());
        assert!(Manifest::parse(&base.replace("resnet18", "vgg19"), p).is_err());
        assert!(Manifest::parse(&base.replace("http:", "file:"), p).is_err());
        assert!(Manifest::parse(&format!("{base}sha256 = \"abc\"\n"), p).is_err());
        assert!(Manifest::parse(&format!("{base}colour = 1\n"), p).is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name(".x").is_err());
        assert!(check_name("my-model_1.0").is_ok());
    }
}
