//! The library's one error type. Every variant names the file, flag, tensor or URL at fault.

use std::path::PathBuf;

/// Errors returned by `tl`'s fallible operations (loading, saving, configuration, network).
///
/// Numeric kernels are infallible: they assert shapes that loading already validated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file whose content is not what its format requires.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A weight file that does not fit the model: missing, unexpected, mis-shaped or mistyped tensors.
    #[error("{path}: weights do not fit the model:\n{}", problems.join("\n"))]
    Weights {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// An image that could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    /// A configuration value (flag, option, layer geometry) that is out of range or inconsistent.
    #[error("{name}: {message}")]
    Config { name: String, message: String },
    /// A data set that cannot be trained on (no images, one class, an empty class...).
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    /// A network failure while fetching a URL.
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    /// A download whose content does not match its expected SHA-256.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// Training stopped because the loss stopped being a finite number.
    #[error("loss became {value} at epoch {epoch}, step {step}; try a lower learning rate (--lr)")]
    NonFinite {
        value: f32,
        epoch: usize,
        step: usize,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A configuration error on the option or flag `name`.
    pub fn config(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            name: name.into(),
            message: message.into(),
        }
    }

    /// A data-set error for the folder or file `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
