//! `tl list`: the known models (built-in, then the user's own), whether each is cached, where,
//! its size, and what its sha256 was verified against. Reads the cache's records; hashes
//! nothing (`tl fetch --verify NAME` does).

use anyhow::Result;
use indicatif::HumanBytes;
use serde::Serialize;
use tl::fetch::{self, cache, registry, Manifest};

/// Arguments of `tl list`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One JSON array of objects instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the listing.
#[derive(Serialize)]
struct Row {
    name: String,
    arch: String,
    /// `built-in` or the user manifest's path.
    manifest: String,
    url: String,
    cached: bool,
    path: String,
    /// Bytes on disk when cached, else the manifest's approximate size.
    size: Option<u64>,
    /// `pinned`, `published`, `no`, or `unknown` (cached without a record); absent when not
    /// cached.
    verified: Option<String>,
    sha256: Option<String>,
    /// Bytes of an unfinished download.
    partial: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let cache_dir = fetch::cache_dir_from_env();
    let mut rows = Vec::new();
    for m in registry::known_models(&cache_dir) {
        match m {
            Ok(m) => rows.push(row(&cache_dir, &m)?),
            Err(e) => eprintln!("warning: skipping a manifest: {e}"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("cache: {}", cache_dir.display());
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let size = match (r.cached, r.size, r.partial) {
                (true, Some(s), _) => HumanBytes(s).to_string(),
                (false, _, Some(p)) => format!("{} partial", HumanBytes(p)),
                (false, Some(s), None) => format!("~{}", HumanBytes(s)),
                _ => "-".into(),
            };
            [
                r.name.clone(),
                r.arch.clone(),
                if r.cached { "yes" } else { "no" }.into(),
                r.verified.clone().unwrap_or_else(|| "-".into()),
                size,
                r.path.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "ARCH", "CACHED", "VERIFIED", "SIZE", "PATH"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in std::iter::once(&header).chain(&table) {
        let mut out = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            if i + 1 == line.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    }
    Ok(())
}

fn row(cache_dir: &std::path::Path, m: &Manifest) -> Result<Row> {
    let path = cache::weights_path(cache_dir, &m.name);
    let on_disk = std::fs::metadata(&path).ok().filter(|md| md.is_file());
    let record = match cache::read_record(cache_dir, &m.name) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    };
    let partial = std::fs::metadata(cache::part_path(cache_dir, &m.name))
        .ok()
        .map(|md| md.len());
    let built_in = registry::built_in().iter().any(|b| b.name == m.name);
    Ok(Row {
        name: m.name.clone(),
        arch: m.arch.clone(),
        manifest: if built_in {
            "built-in".into()
        } else {
            registry::user_manifest_path(cache_dir, &m.name)
                .display()
                .to_string()
        },
        url: m.url.clone(),
        cached: on_disk.is_some(),
        path: path.display().to_string(),
        size: on_disk.as_ref().map(|md| md.len()).or(m.size),
        verified: on_disk.as_ref().map(|md| match &record {
            Some(r) if r.size == md.len() => r.verified.as_str().to_owned(),
            Some(_) => "size differs".to_owned(),
            None => "unknown".to_owned(),
        }),
        sha256: on_disk
            .as_ref()
            .and_then(|_| record.as_ref().map(|r| r.sha256.clone()))
            .or_else(|| m.sha256.clone()),
        partial,
    })
}
