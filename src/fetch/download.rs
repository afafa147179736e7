//! Resumable, verified downloads into the cache.
//!
//! `fetch` takes the model's lock, returns at once when the weights are cached, and otherwise
//! streams the URL into `<name>.safetensors.part`, hashing every byte as it is written. A part
//! left by an earlier run is hashed first and resumed with `Range: bytes=<len>-`; a server that
//! answers `200` instead of `206` makes the download start over. Connection failures, timeouts
//! and 5xx answers are retried with exponential backoff; the part survives a final failure for
//! the next run to resume. Redirects are followed by hand (at most 10) so that a hash published
//! on any hop (`X-Linked-Etag`) is seen. When the body is complete its SHA-256 is compared with
//! the pinned one, else the published one: on a match the part is synced and renamed into place
//! after its record is written; on a mismatch the part is deleted and the cache is left as it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::{self, Record, Verification};
use super::registry::Manifest;
use super::verify;
use super::{lock, registry};
use crate::{Error, Result};

const CHUNK: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 10;

/// How a fetch behaves: network limits, retries, and whether it may download at all.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Download again even when the weights are cached (an unfinished part is discarded too).
    pub force: bool,
    /// Refuse any download (the cached weights are still returned).
    pub offline: bool,
    /// The longest wait for a connection.
    pub connect_timeout: Duration,
    /// The longest wait for the response, and then for each read of the body.
    pub read_timeout: Duration,
    /// Attempts after the first one, on connection errors, timeouts and 5xx answers.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            force: false,
            offline: false,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

impl FetchOptions {
    /// The defaults, changed by the environment: `TL_OFFLINE` (`1`, `true` or `yes` forbids
    /// downloads), `TL_TIMEOUT_SECS` (connect and read timeout, seconds, may be fractional) and
    /// `TL_RETRIES` (retries after the first attempt).
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable when its value cannot be parsed.
    pub fn from_env() -> Result<FetchOptions> {
        let mut o = FetchOptions::default();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var("TL_OFFLINE") {
            o.offline = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(Error::config(
                        "TL_OFFLINE",
                        format!("expected 1 or 0, got {v:?}"),
                    ))
                }
            };
        }
        if let Some(v) = var("TL_TIMEOUT_SECS") {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    Error::config(
                        "TL_TIMEOUT_SECS",
                        format!("expected a positive number of seconds, got {v:?}"),
                    )
                })?;
            o.read_timeout = Duration::from_secs_f64(secs);
            o.connect_timeout = o.connect_timeout.min(o.read_timeout);
        }
        if let Some(v) = var("TL_RETRIES") {
            o.retries = v.trim().parse().map_err(|_| {
                Error::config("TL_RETRIES", format!("expected a whole number, got {v:?}"))
            })?;
        }
        Ok(o)
    }
}

/// What is being done with bytes, for an [`Observer`].
#[derive(Debug, Clone, Copy)]
pub enum Stage<'a> {
    /// Reading a file on disk into a SHA-256 (an unfinished part before resuming, or `--verify`).
    Hashing {
        /// The file.
        path: &'a Path,
    },
    /// Receiving a URL's body.
    Downloading {
        /// The URL asked for (before redirects).
        url: &'a str,
    },
}

/// Receives a fetch's progress; the library never prints. Every method does nothing by default.
pub trait Observer {
    /// Another process holds the model's lock; this one waits for it.
    fn waiting_for_lock(&mut self, _lock: &Path) {}
    /// A stage starts at byte `position` of `total` (when known).
    fn begin(&mut self, _stage: Stage<'_>, _position: u64, _total: Option<u64>) {}
    /// The stage has reached byte `position`.
    fn advance(&mut self, _position: u64) {}
    /// The stage is over (finished or failed).
    fn end(&mut self) {}
    /// The download starts over from byte 0, for `reason`.
    fn restarting(&mut self, _reason: &str) {}
    /// Attempt `attempt` (1-based) of `attempts` failed with `error`; the next starts after `wait`.
    fn retrying(&mut self, _error: &Error, _attempt: u32, _attempts: u32, _wait: Duration) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// The outcome of [`fetch`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The cached weights.
    pub path: PathBuf,
    /// Their record (sha256, size, what the hash was checked against).
    pub record: Record,
    /// Whether anything was downloaded (false when the weights were already cached).
    pub downloaded: bool,
}

/// Where an unfinished part came from (`<name>.part.json`); a part from another URL is discarded.
#[derive(Debug, Serialize, Deserialize)]
struct PartRecord {
    url: String,
}

/// Fetches the weights `manifest` describes into `cache` (see the module docs), unless they are
/// already there.
///
/// # Errors
/// - [`Error::Network`] naming the URL: offline mode, an HTTP error status, a refused
///   connection, a timeout, or a body cut short, after the retries (the bytes received so far
///   stay in the part for the next call to resume; when there are none the cache is as it was);
/// - [`Error::Checksum`] naming the URL and both hashes when the body does not match the
///   expected sha256 (the part is deleted, the cache is as it was);
/// - [`Error::Io`] naming the file for local failures (disk full, permissions).
pub fn fetch(
    cache_dir: &Path,
    manifest: &Manifest,
    options: &FetchOptions,
    observer: &mut dyn Observer,
) -> Result<Fetched> {
    let name = manifest.name.as_str();
    registry::check_name(name).map_err(|m| Error::config(name, m))?;
    let final_path = cache::weights_path(cache_dir, name);
    if options.offline && (options.force || !final_path.is_file()) {
        return Err(Error::Network {
            url: manifest.url.clone(),
            message: format!(
                "TL_OFFLINE is set, so {name} is not downloaded; unset TL_OFFLINE, or put the weights at {}",
                final_path.display()
            ),
        });
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let _lock = lock::acquire(&cache::lock_path(cache_dir, name), observer)?;

    if !options.force && final_path.is_file() {
        return already_cached(cache_dir, manifest, &final_path, observer);
    }
    if options.offline {
        return Err(Error::Network {
            url: manifest.url.clone(),
            message: "TL_OFFLINE is set: not downloading".into(),
        });
    }
    let part_path = cache::part_path(cache_dir, name);
    let part_record = cache::part_record_path(cache_dir, name);
    if options.force {
        remove_if_exists(&part_path)?;
        remove_if_exists(&part_record)?;
    }

    let mut part = Part::open(&part_path, &part_record, &manifest.url, observer)?;
    let client = client(options)?;
    let published = match download(&client, &manifest.url, &mut part, options, observer) {
        Ok(p) => p,
        Err(e) => {
            if part.len == 0 {
                drop(part.file);
                remove_if_exists(&part_path)?;
                remove_if_exists(&part_record)?;
            }
            return Err(e);
        }
    };

    let size = part.len;
    let actual = verify::hex(std::mem::take(&mut part.hasher));
    let (expected, verified) = match (&manifest.sha256, &published) {
        (Some(p), _) => (Some(p.to_ascii_lowercase()), Verification::Pinned),
        (None, Some(p)) => (Some(p.clone()), Verification::Published),
        (None, None) => (None, Verification::None),
    };
    if let Some(expected) = expected {
        if expected != actual {
            drop(part.file);
            remove_if_exists(&part_path)?;
            remove_if_exists(&part_record)?;
            return Err(Error::Checksum {
                path: PathBuf::from(&manifest.url),
                expected,
                actual,
            });
        }
    }
    part.file.sync_all().map_err(|e| Error::io(&part_path, e))?;
    drop(part.file);
    let record = Record {
        name: name.to_owned(),
        arch: manifest.arch.clone(),
        url: manifest.url.clone(),
        sha256: actual,
        size,
        verified,
        fetched_at: now(),
    };
    cache::write_record(cache_dir, &record)?;
    std::fs::rename(&part_path, &final_path).map_err(|e| Error::io(&final_path, e))?;
    remove_if_exists(&part_record)?;
    cache::sync_dir(cache_dir);
    Ok(Fetched {
        path: final_path,
        record,
        downloaded: true,
    })
}

/// The weights are in place: return their record, or hash them and write one if they have none
/// (a file copied in by hand), checking a pinned sha256.
fn already_cached(
    cache_dir: &Path,
    manifest: &Manifest,
    path: &Path,
    observer: &mut dyn Observer,
) -> Result<Fetched> {
    if let Some(record) = cache::read_record(cache_dir, &manifest.name)? {
        return Ok(Fetched {
            path: path.to_owned(),
            record,
            downloaded: false,
        });
    }
    let (actual, size) = verify::sha256_file(path, observer)?;
    let verified = match &manifest.sha256 {
        Some(expected) if *expected != actual => {
            return Err(Error::Checksum {
                path: path.to_owned(),
                expected: expected.clone(),
                actual,
            })
        }
        Some(_) => Verification::Pinned,
        None => Verification::None,
    };
    let record = Record {
        name: manifest.name.clone(),
        arch: manifest.arch.clone(),
        url: String::new(),
        sha256: actual,
        size,
        verified,
        fetched_at: now(),
    };
    cache::write_record(cache_dir, &record)?;
    Ok(Fetched {
        path: path.to_owned(),
        record,
        downloaded: false,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn client(options: &FetchOptions) -> Result<Client> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .timeout(options.read_timeout)
        .user_agent(concat!("tl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Network {
            url: String::new(),
            message: format!("cannot set up the HTTP client: {}", root_cause(&e)),
        })
}

/// The unfinished download: the open part file, its length, and the hash of its bytes.
struct Part {
    path: PathBuf,
    file: File,
    len: u64,
    hasher: Sha256,
}

impl Part {
    /// Opens the part at `path` for `url`, hashing what an earlier run left; a part from another
    /// URL, or without a record of its URL, is emptied.
    fn open(
        path: &Path,
        record_path: &Path,
        url: &str,
        observer: &mut dyn Observer,
    ) -> Result<Part> {
        let same_url = std::fs::read_to_string(record_path)
            .ok()
            .and_then(|t| serde_json::from_str::<PartRecord>(&t).ok())
            .is_some_and(|r| r.url == url);
        if !same_url {
            let text = serde_json::to_string(&PartRecord {
                url: url.to_owned(),
            })
            .unwrap_or_default();
            cache::write_atomic(record_path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut part = Part {
            path: path.to_owned(),
            file,
            len: 0,
            hasher: Sha256::new(),
        };
        let len = part.file.metadata().map_err(|e| Error::io(path, e))?.len();
        if same_url && len > 0 {
            verify::hash_prefix(path, len, &mut part.hasher, observer)?;
            part.len = len;
            part.file
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        } else {
            part.truncate()?;
        }
        Ok(part)
    }

    fn truncate(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        self.len = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// How one attempt failed.
enum Failure {
    /// Worth another attempt (connection, timeout, 5xx, body cut short).
    Retry(String),
    /// Worth another attempt at once, from byte 0 (the part was emptied).
    Restart(String),
    /// Final (4xx, a local file error).
    Fatal(Error),
}

/// Runs attempts until the body is complete; returns the sha256 the server published, if any.
fn download(
    client: &Client,
    url: &str,
    part: &mut Part,
    options: &FetchOptions,
    observer: &mut dyn Observer,
) -> Result<Option<String>> {
    let attempts = options.retries.saturating_add(1);
    let mut attempt = 1u32;
    let mut restarts = 0u32;
    loop {
        let mut published = None;
        let outcome = attempt_once(client, url, part, options, &mut published, observer);
        observer.end();
        let message = match outcome {
            Ok(()) => return Ok(published),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Restart(reason)) if restarts < 2 => {
                restarts += 1;
                observer.restarting(&reason);
                continue;
            }
            Err(Failure::Restart(reason)) | Err(Failure::Retry(reason)) => reason,
        };
        let error = Error::Network {
            url: url.to_owned(),
            message: message.clone(),
        };
        if attempt >= attempts {
            let kept = if part.len > 0 {
                format!(
                    "; the {} bytes received are kept in {} for the next `tl fetch` to resume",
                    part.len,
                    part.path.display()
                )
            } else {
                String::new()
            };
            let tries = if attempts > 1 {
                format!(" (gave up after {attempts} attempts)")
            } else {
                String::new()
            };
            return Err(Error::Network {
                url: url.to_owned(),
                message: format!("{message}{tries}{kept}"),
            });
        }
        let wait = options
            .backoff
            .saturating_mul(1u32 << (attempt - 1).min(16));
        observer.retrying(&error, attempt, attempts, wait);
        std::thread::sleep(wait);
        attempt += 1;
    }
}

/// One request (following redirects) and as much of its body as arrives.
fn attempt_once(
    client: &Client,
    url: &str,
    part: &mut Part,
    options: &FetchOptions,
    published: &mut Option<String>,
    observer: &mut dyn Observer,
) -> std::result::Result<(), Failure> {
    let (response, final_url) = send(client, url, part.len, options, published)?;
    let status = response.status();
    let total = match status {
        StatusCode::PARTIAL_CONTENT => {
            let range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            match range {
                Some((start, total)) if start == part.len => total,
                _ => {
                    part.truncate().map_err(Failure::Fatal)?;
                    return Err(Failure::Restart(format!(
                        "{final_url} answered the Range request with another range; starting over"
                    )));
                }
            }
        }
        StatusCode::OK => {
            if part.len > 0 {
                observer.restarting(&format!(
                    "{final_url} ignored the Range request; starting over"
                ));
                part.truncate().map_err(Failure::Fatal)?;
            }
            response.content_length()
        }
        StatusCode::RANGE_NOT_SATISFIABLE if part.len > 0 => {
            let from = part.len;
            part.truncate().map_err(Failure::Fatal)?;
            return Err(Failure::Restart(format!(
                "{final_url} cannot resume from byte {from}; starting over"
            )));
        }
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT =>
        {
            return Err(Failure::Retry(format!("HTTP {}", status_text(s))));
        }
        s => {
            let at = if final_url == url {
                String::new()
            } else {
                format!(" (redirected to {final_url})")
            };
            return Err(Failure::Fatal(Error::Network {
                url: url.to_owned(),
                message: format!("HTTP {}{at}", status_text(s)),
            }));
        }
    };
    if published.is_none() {
        *published = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(verify::sha256_from_etag);
    }
    receive(response, part, total, options, url, observer)
}

/// Sends the request for `url` from byte `from`, following redirects; notes a published sha256.
fn send(
    client: &Client,
    url: &str,
    from: u64,
    options: &FetchOptions,
    published: &mut Option<String>,
) -> std::result::Result<(Response, String), Failure> {
    let mut current = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = client.get(&current);
        if from > 0 {
            request = request.header(RANGE, format!("bytes={from}-"));
        }
        let response = request
            .send()
            .map_err(|e| Failure::Retry(describe_send_error(&e, options)))?;
        if published.is_none() {
            *published = linked_etag(response.headers());
        }
        if !response.status().is_redirection() {
            return Ok((response, current));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::Fatal(Error::Network {
                    url: current.clone(),
                    message: format!(
                        "HTTP {} without a Location header",
                        status_text(response.status())
                    ),
                })
            })?;
        let next = response.url().join(location).map_err(|e| {
            Failure::Fatal(Error::Network {
                url: current.clone(),
                message: format!("bad redirect Location {location:?}: {e}"),
            })
        })?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(Failure::Fatal(Error::Network {
                url: current,
                message: format!("redirect to a non-http URL {next}"),
            }));
        }
        current = next.to_string();
    }
    Err(Failure::Fatal(Error::Network {
        url: url.to_owned(),
        message: format!("more than {MAX_REDIRECTS} redirects"),
    }))
}

/// Streams the body into the part; `total` is the full file's length when the server said it.
fn receive(
    mut response: Response,
    part: &mut Part,
    total: Option<u64>,
    options: &FetchOptions,
    url: &str,
    observer: &mut dyn Observer,
) -> std::result::Result<(), Failure> {
    observer.begin(Stage::Downloading { url }, part.len, total);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let what = if is_timeout(&e) {
                    format!(
                        "no data for {} (TL_TIMEOUT_SECS)",
                        secs(options.read_timeout)
                    )
                } else {
                    format!("connection lost: {}", root_cause(&e))
                };
                return Err(Failure::Retry(format!(
                    "{what} after {}",
                    progress_text(part.len, total)
                )));
            }
        };
        part.append(&buf[..n]).map_err(Failure::Fatal)?;
        observer.advance(part.len);
    }
    match total {
        Some(t) if part.len < t => Err(Failure::Retry(format!(
            "connection closed after {}",
            progress_text(part.len, total)
        ))),
        Some(t) if part.len > t => {
            part.truncate().map_err(Failure::Fatal)?;
            Err(Failure::Restart(format!(
                "the server sent more than the {t} bytes it announced; starting over"
            )))
        }
        _ => Ok(()),
    }
}

fn progress_text(len: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{len} of {t} bytes"),
        None => format!("{len} bytes"),
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

/// `X-Linked-Etag`, when it is a sha256.
fn linked_etag(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-linked-etag")
        .and_then(|v| v.to_str().ok())
        .and_then(verify::sha256_from_etag)
}

/// `bytes <start>-<end>/<total|*>` → (start, total).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

fn describe_send_error(e: &reqwest::Error, options: &FetchOptions) -> String {
    if e.is_timeout() {
        format!(
            "no response within {} (TL_TIMEOUT_SECS)",
            secs(options.read_timeout)
        )
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        root_cause(e)
    }
}

/// Whether an I/O error from a body read is a timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            if r.is_timeout() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The innermost cause of an error, which names what actually went wrong
/// ("Connection refused (os error 111)") rather than the layers around it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/10"), None);
    }
}
