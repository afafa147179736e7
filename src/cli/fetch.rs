//! `tl fetch`: downloads a model's weights into the cache, verified; renders the library's
//! progress events as indicatif bars on stderr and prints the cached file's path on stdout.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tl::fetch::{self, registry, FetchOptions, Manifest, Naming, Observer, Stage, Verification};

const AFTER_HELP: &str = "\
Cache: $TL_HOME, else $XDG_CACHE_HOME/tl, else ~/.cache/tl. The weights land in
<cache>/<MODEL>.safetensors with a record <cache>/<MODEL>.json of their sha256.

A model of your own: `tl fetch NAME --url URL --arch vgg16|resnet18 [--sha256 HEX]` downloads
it and, once verified, writes the manifest <cache>/models/NAME.toml, so that `--model NAME`
finds it afterwards. Such a manifest can also be written by hand (fields: name, arch, url,
sha256, size, naming, licence, source).

Environment: TL_OFFLINE=1 refuses any download; TL_TIMEOUT_SECS (default 30) bounds the wait
for a connection and for each read; TL_RETRIES (default 3) retries after connection errors.";

/// Arguments of `tl fetch`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Model name: vgg16, resnet18, or a name of your own (with --url and --arch).
    #[arg(value_name = "MODEL")]
    model: String,
    /// Download from this URL instead of the manifest's (a mirror, a local server).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The file's expected SHA-256 (64 hex digits); overrides the manifest's and the server's.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Architecture of a model of your own (vgg16 or resnet18); needed with --url for a new name.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Parameter naming of a model of your own (torchvision or timm; default torchvision).
    #[arg(long, value_name = "NAMING", value_parser = ["torchvision", "timm"])]
    naming: Option<String>,
    /// Download again even when the weights are cached.
    #[arg(long)]
    force: bool,
    /// Re-hash the cached file and compare it with the recorded sha256 (or --sha256); no download.
    #[arg(long, conflicts_with_all = ["url", "arch", "naming", "force"])]
    verify: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cache = fetch::cache_dir_from_env();
    let mut options = FetchOptions::from_env()?;
    options.force = args.force;
    let name = args.model.as_str();
    if let Err(msg) = registry::check_name(name) {
        bail!("{msg}");
    }
    if let Some(h) = &args.sha256 {
        if let Err(msg) = registry::check_sha256(h) {
            bail!("--sha256: {msg}");
        }
    }
    if let Some(u) = &args.url {
        if let Err(msg) = registry::check_url(u) {
            bail!("--url: {msg}");
        }
    }
    let mut progress = Bars::new(name);

    if args.verify {
        let (path, sha) =
            fetch::verify_cached(&cache, name, args.sha256.as_deref(), &mut progress)?;
        eprintln!("{name}: ok, sha256 {sha}");
        println!("{}", path.display());
        return Ok(());
    }

    let (manifest, is_new) = resolve(&cache, &args)?;
    let result = fetch::fetch(&cache, &manifest, &options, &mut progress);
    progress.clear();
    let fetched = match result {
        Ok(f) => f,
        Err(e @ tl::Error::Checksum { .. }) => {
            let against = if manifest.sha256.is_some() {
                if args.sha256.is_some() {
                    "the sha256 given by --sha256"
                } else {
                    "the sha256 pinned by the manifest"
                }
            } else {
                "the sha256 the server published"
            };
            bail!("{name}: the download did not match {against}; it was deleted and the cache is unchanged: {e}");
        }
        Err(e) => return Err(e.into()),
    };
    if is_new && registry::find_manifest(&cache, name)?.is_none() {
        let path = registry::save_user_manifest(&cache, &manifest)?;
        eprintln!("{name}: manifest written to {}", path.display());
    }
    let r = &fetched.record;
    if fetched.downloaded {
        let how = match r.verified {
            Verification::Pinned => "matches the pinned sha256",
            Verification::Published => "matches the sha256 the server published",
            Verification::None => "recorded unverified",
        };
        eprintln!(
            "{name}: {} fetched, sha256 {} ({how})",
            HumanBytes(r.size),
            r.sha256
        );
        if r.verified == Verification::None {
            eprintln!(
                "warning: {name}: neither the manifest nor {} gave a sha256 to check against; pin one with --sha256",
                r.url
            );
        }
    } else {
        eprintln!(
            "{name}: already cached ({}, sha256 {}); --force downloads it again",
            HumanBytes(r.size),
            r.sha256
        );
    }
    println!("{}", fetched.path.display());
    Ok(())
}

/// The manifest to fetch with: the known one with `--url`/`--sha256` applied, or a new one for a
/// model of the user's own (then `true`).
fn resolve(cache: &Path, args: &Args) -> Result<(Manifest, bool)> {
    let name = args.model.as_str();
    if let Some(a) = &args.arch {
        if let Err(msg) = registry::check_arch(a) {
            bail!("--arch: {msg}");
        }
    }
    let naming = match args.naming.as_deref() {
        Some("timm") => Some(Naming::Timm),
        Some(_) => Some(Naming::Torchvision),
        None => None,
    };
    if let Some(mut m) = registry::find_manifest(cache, name)? {
        if let Some(a) = args.arch.as_deref().filter(|a| *a != m.arch) {
            bail!("--arch: {name} is a {} model, not {a}", m.arch);
        }
        if let Some(n) = naming.filter(|n| *n != m.naming) {
            bail!(
                "--naming: {name} uses {} names, not {}",
                m.naming.as_str(),
                n.as_str()
            );
        }
        if let Some(u) = &args.url {
            m.url.clone_from(u);
        }
        if let Some(h) = &args.sha256 {
            m.sha256 = Some(h.to_ascii_lowercase());
        }
        return Ok((m, false));
    }
    let (Some(url), Some(arch)) = (&args.url, &args.arch) else {
        let known = fetch::manifest_in(cache, name).err();
        let hint = if args.url.is_some() {
            format!(
                "{name}: not a known model; a model of your own needs --arch ({}) besides --url",
                registry::ARCHS.join(" or ")
            )
        } else {
            known.map_or_else(|| format!("{name}: unknown model"), |e| e.to_string())
        };
        bail!("{hint}");
    };
    Ok((
        Manifest {
            name: name.to_owned(),
            arch: arch.clone(),
            url: url.clone(),
            sha256: args.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            size: None,
            naming: naming.unwrap_or(Naming::Torchvision),
            licence: String::new(),
            source: url.clone(),
        },
        true,
    ))
}

/// Renders fetch progress on stderr: a bar with size, rate and ETA (hidden when stderr is not a
/// terminal), and one line per wait, retry or restart.
struct Bars {
    name: String,
    bar: Option<ProgressBar>,
}

impl Bars {
    fn new(name: &str) -> Bars {
        Bars {
            name: name.to_owned(),
            bar: None,
        }
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Observer for Bars {
    fn waiting_for_lock(&mut self, lock: &Path) {
        self.say(&format!(
            "{}: another tl fetch holds {}; waiting for it",
            self.name,
            lock.display()
        ));
    }

    fn begin(&mut self, stage: Stage<'_>, position: u64, total: Option<u64>) {
        self.clear();
        let message = match stage {
            Stage::Hashing { path } => format!(
                "{}: hashing {}",
                self.name,
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |f| f.to_string_lossy().into_owned()
                )
            ),
            Stage::Downloading { .. } => format!("{}: downloading", self.name),
        };
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {bytes_per_sec}"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(message);
        bar.set_position(position);
        if position > 0 {
            bar.reset_eta();
        }
        self.bar = Some(bar);
    }

    fn advance(&mut self, position: u64) {
        if let Some(b) = &self.bar {
            b.set_position(position);
        }
    }

    fn end(&mut self) {
        self.clear();
    }

    fn restarting(&mut self, reason: &str) {
        self.say(&format!("{}: {reason}", self.name));
    }

    fn retrying(&mut self, error: &tl::Error, attempt: u32, attempts: u32, wait: Duration) {
        self.say(&format!(
            "{}: attempt {attempt} of {attempts} failed: {error}; retrying in {:.1} s",
            self.name,
            wait.as_secs_f64()
        ));
    }
}
