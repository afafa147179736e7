//! `tl fetch` and `tl list` end to end against a local HTTP server (tests/common_http), with
//! `TL_HOME` in a fresh temporary directory per test. Covers issue 5's acceptance: download,
//! verify and place, then no request; resume with Range after a cut; a server ignoring Range;
//! wrong pinned and published hashes; 404, refused connection, stalls; concurrent fetches;
//! `TL_OFFLINE=1`; and a served synthetic ResNet-18 fetched by name, then `tl predict`.

mod common_http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common_http::{Mode, Server};
use sha2::{Digest, Sha256};

const SIZE: usize = 300 * 1024;
const FILE: &str = "/m/model.safetensors";

/// Deterministic bytes (xorshift64).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh, empty directory for one test's cache.
fn temp_home(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tl-fetch-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `tl` with `TL_HOME=home`, short timeouts, and the fetch variables of the caller's
/// environment cleared; `env` adds or overrides.
fn tl_command(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tl"));
    c.args(args)
        .env("TL_HOME", home)
        .env("TL_TIMEOUT_SECS", "5")
        .env("TL_RETRIES", "1")
        .env_remove("TL_OFFLINE")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("NO_PROXY", "127.0.0.1")
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn tl(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let out = tl_command(home, args, env).output().expect("run tl");
    finish(out, start.elapsed())
}

fn finish(out: Output, elapsed: Duration) -> Run {
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("stack backtrace"),
        "tl panicked:\n{}",
        run.stderr
    );
    run
}

/// Every file under `dir` except the lock files, with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".locks") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn record(home: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(home.join(format!("{name}.json"))).expect("record");
    serde_json::from_str(&text).expect("record json")
}

fn part_len(home: &Path, name: &str) -> u64 {
    std::fs::metadata(home.join(format!("{name}.safetensors.part")))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Acceptance 1: download, verify against the published hash, place; a second fetch (by name,
/// from the written manifest) makes no request; `tl list` and `--verify` see the file.
#[test]
fn fetch_verifies_places_and_does_not_refetch() {
    let home = temp_home("place");
    let server = Server::start();
    let body = data(SIZE, 1);
    let hash = sha(&body);
    let etag = format!("\"{hash}\"");
    server.route(
        FILE,
        body.clone(),
        Mode::Normal,
        &[("X-Linked-Etag", &etag)],
    );
    let url = server.url(FILE);

    let r = tl(
        &home,
        &["fetch", "mine", "--url", &url, "--arch", "resnet18"],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    let path = home.join("mine.safetensors");
    assert_eq!(r.stdout.trim(), path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!home.join("mine.safetensors.part").exists());
    assert!(home.join("models/mine.toml").is_file());
    let rec = record(&home, "mine");
    assert_eq!(rec["sha256"], hash.as_str());
    assert_eq!(rec["verified"], "published");
    assert_eq!(rec["size"], SIZE as u64);
    assert!(r.stderr.contains(&hash), "{}", r.stderr);
    assert_eq!(server.requests_for(FILE).len(), 1);
    assert!(server.requests_for(FILE)[0].header("range").is_none());

    let again = tl(&home, &["fetch", "mine"], &[]);
    assert!(again.ok, "{}", again.stderr);
    assert!(again.stderr.contains("already cached"), "{}", again.stderr);
    assert_eq!(again.stdout.trim(), path.display().to_string());
    assert_eq!(
        server.requests().len(),
        1,
        "the second fetch made a request"
    );

    let list = tl(&home, &["list"], &[]);
    assert!(list.ok, "{}", list.stderr);
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("mine "))
        .unwrap_or_else(|| panic!("no row for mine:\n{}", list.stdout));
    assert!(line.contains("yes") && line.contains("published"), "{line}");
    let json = tl(&home, &["list", "--json"], &[]);
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vgg16", "resnet18", "mine"]);
    assert_eq!(rows[2]["cached"], true);
    assert_eq!(rows[0]["cached"], false);

    let ok = tl(&home, &["fetch", "--verify", "mine"], &[]);
    assert!(ok.ok, "{}", ok.stderr);
    let mut bad = body.clone();
    bad[SIZE / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let v = tl(&home, &["fetch", "--verify", "mine"], &[]);
    assert!(!v.ok);
    assert!(
        v.stderr.contains(&hash) && v.stderr.contains(&sha(&bad)),
        "{}",
        v.stderr
    );
    assert_eq!(server.requests().len(), 1);
    let _ = std::fs::remove_dir_all(&home);
}

/// A pinned --sha256, and no hash at all (recorded unverified, with a warning); a redirect
/// whose 302 carries the hub's X-Linked-Etag while the final answer's ETag is not a sha256.
#[test]
fn pinned_unverified_and_redirected_hashes() {
    let home = temp_home("hashes");
    let server = Server::start();
    let body = data(SIZE, 2);
    let hash = sha(&body);
    server.route(FILE, body.clone(), Mode::Normal, &[]);
    let url = server.url(FILE);

    let r = tl(
        &home,
        &[
            "fetch", "pinned", "--url", &url, "--arch", "vgg16", "--sha256", &hash,
        ],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(record(&home, "pinned")["verified"], "pinned");

    let r = tl(
        &home,
        &["fetch", "bare", "--url", &url, "--arch", "vgg16"],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
    let rec = record(&home, "bare");
    assert_eq!(rec["verified"], "none");
    assert_eq!(rec["sha256"], hash.as_str());

    let etag = format!("\"{hash}\"");
    server.route(
        "/resolve/main/model.safetensors",
        Vec::new(),
        Mode::Redirect("/cdn/blob".into()),
        &[
            ("X-Linked-Etag", &etag),
            ("X-Linked-Size", &SIZE.to_string()),
        ],
    );
    server.route(
        "/cdn/blob",
        body.clone(),
        Mode::Normal,
        &[("ETag", "\"5d41402abc4b2a76b9719d911017c592\"")],
    );
    let r = tl(
        &home,
        &[
            "fetch",
            "hub",
            "--url",
            &server.url("/resolve/main/model.safetensors"),
            "--arch",
            "resnet18",
        ],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(record(&home, "hub")["verified"], "published");
    assert_eq!(std::fs::read(home.join("hub.safetensors")).unwrap(), body);
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 2: the server cuts the connection halfway; the part is kept; the next fetch
/// resumes it with a Range request and the result verifies.
#[test]
fn cut_connection_then_resume_with_range() {
    let home = temp_home("resume");
    let server = Server::start();
    let body = data(SIZE, 3);
    let hash = sha(&body);
    let half = SIZE / 2;
    server.route(FILE, body.clone(), Mode::CutAt(half), &[]);
    let url = server.url(FILE);
    let args = [
        "fetch", "cut", "--url", &url, "--arch", "resnet18", "--sha256", &hash,
    ];

    let first = tl(&home, &args, &[("TL_RETRIES", "0")]);
    assert!(!first.ok, "a cut download succeeded");
    assert!(first.stderr.contains(&url), "{}", first.stderr);
    assert!(first.stderr.contains(".part"), "{}", first.stderr);
    let kept = part_len(&home, "cut");
    assert!(kept > 0 && kept <= half as u64, "part holds {kept} bytes");
    assert!(!home.join("cut.safetensors").exists());
    assert!(!home.join("models/cut.toml").exists());

    server.set_mode(FILE, Mode::Normal);
    let second = tl(&home, &args, &[]);
    assert!(second.ok, "{}", second.stderr);
    let reqs = server.requests_for(FILE);
    let last = reqs.last().unwrap();
    assert_eq!(
        last.header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(std::fs::read(home.join("cut.safetensors")).unwrap(), body);
    assert_eq!(record(&home, "cut")["verified"], "pinned");
    assert!(!home.join("cut.safetensors.part").exists());
    let _ = std::fs::remove_dir_all(&home);
}

/// A cut in the middle of a run is retried in the same run, resuming with Range.
#[test]
fn cut_connection_is_retried_with_range_in_one_run() {
    let home = temp_home("retry");
    let server = Server::start();
    let body = data(SIZE, 4);
    let etag = format!("\"{}\"", sha(&body));
    server.route(
        FILE,
        body.clone(),
        Mode::CutOnceAt(SIZE / 3),
        &[("X-Linked-Etag", &etag)],
    );
    let r = tl(
        &home,
        &[
            "fetch",
            "once",
            "--url",
            &server.url(FILE),
            "--arch",
            "vgg16",
        ],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("retrying"), "{}", r.stderr);
    let reqs = server.requests_for(FILE);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].header("range").is_none());
    assert!(reqs[1].header("range").is_some());
    assert_eq!(std::fs::read(home.join("once.safetensors")).unwrap(), body);
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 3: a server that ignores Range answers 200; the fetch starts over and verifies.
#[test]
fn server_ignoring_range_restarts_cleanly() {
    let home = temp_home("norange");
    let server = Server::start();
    let body = data(SIZE, 5);
    let hash = sha(&body);
    server.route(FILE, body.clone(), Mode::CutAt(SIZE / 2), &[]);
    let url = server.url(FILE);
    let args = [
        "fetch", "norange", "--url", &url, "--arch", "vgg16", "--sha256", &hash,
    ];
    let first = tl(&home, &args, &[("TL_RETRIES", "0")]);
    assert!(!first.ok);
    assert!(part_len(&home, "norange") > 0);

    server.set_mode(FILE, Mode::IgnoreRange);
    let second = tl(&home, &args, &[]);
    assert!(second.ok, "{}", second.stderr);
    assert!(
        second.stderr.contains("ignored the Range"),
        "{}",
        second.stderr
    );
    assert!(server
        .requests_for(FILE)
        .last()
        .unwrap()
        .header("range")
        .is_some());
    assert_eq!(
        std::fs::read(home.join("norange.safetensors")).unwrap(),
        body
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 4, pinned: a wrong --sha256 fails, names both hashes, and leaves the cache as it
/// was — empty for a new model, and the old file for a cached one refetched with --force.
#[test]
fn wrong_pinned_sha256_leaves_cache_unchanged() {
    let home = temp_home("pinned-bad");
    let server = Server::start();
    let body = data(SIZE, 6);
    let actual = sha(&body);
    let wrong = sha(b"something else");
    server.route(FILE, body.clone(), Mode::Normal, &[]);
    let url = server.url(FILE);

    let before = snapshot(&home);
    let r = tl(
        &home,
        &[
            "fetch", "bad", "--url", &url, "--arch", "vgg16", "--sha256", &wrong,
        ],
        &[],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&wrong) && r.stderr.contains(&actual),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--sha256"), "{}", r.stderr);
    assert!(!home.join("bad.safetensors").exists());
    assert_eq!(snapshot(&home), before);

    // A good cached copy survives a failed --force refetch.
    let old = data(SIZE, 7);
    let old_hash = sha(&old);
    server.route("/old", old.clone(), Mode::Normal, &[]);
    let ok = tl(
        &home,
        &[
            "fetch",
            "kept",
            "--url",
            &server.url("/old"),
            "--arch",
            "resnet18",
            "--sha256",
            &old_hash,
        ],
        &[],
    );
    assert!(ok.ok, "{}", ok.stderr);
    let before = snapshot(&home);
    let r = tl(
        &home,
        &[
            "fetch", "kept", "--force", "--url", &url, "--sha256", &wrong,
        ],
        &[],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains(&wrong) && r.stderr.contains(&actual));
    assert_eq!(snapshot(&home), before);
    assert_eq!(std::fs::read(home.join("kept.safetensors")).unwrap(), old);
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 4, published: a wrong X-Linked-Etag fails the same way.
#[test]
fn wrong_published_sha256_leaves_cache_unchanged() {
    let home = temp_home("published-bad");
    let server = Server::start();
    let body = data(SIZE, 8);
    let actual = sha(&body);
    let wrong = sha(b"not the file");
    let etag = format!("\"{wrong}\"");
    server.route(FILE, body, Mode::Normal, &[("X-Linked-Etag", &etag)]);
    let before = snapshot(&home);
    let r = tl(
        &home,
        &[
            "fetch",
            "bad",
            "--url",
            &server.url(FILE),
            "--arch",
            "vgg16",
        ],
        &[],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&wrong) && r.stderr.contains(&actual),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("published"), "{}", r.stderr);
    assert_eq!(snapshot(&home), before);
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 5: 404 (no retry), a refused connection (retried, then a clear error), and a
/// server that stalls — mid-body and before answering — past a 1 s timeout.
#[test]
fn not_found_refused_and_stalled_give_clear_errors() {
    let home = temp_home("errors");
    let server = Server::start();

    let before = snapshot(&home);
    let url = server.url("/missing.safetensors");
    let r = tl(
        &home,
        &["fetch", "nf", "--url", &url, "--arch", "vgg16"],
        &[],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&url) && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    assert_eq!(server.requests().len(), 1, "a 404 was retried");

    // A socket bound but never listening: connections to its port are refused, and no other
    // test's server can take the port while it is held (a port merely freed could be reused by
    // a parallel test's server, which would answer 404 instead of refusing).
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = held.local_addr().unwrap().as_socket().unwrap().port();
    let refused = format!("http://127.0.0.1:{port}/x.safetensors");
    let r = tl(
        &home,
        &["fetch", "rf", "--url", &refused, "--arch", "vgg16"],
        &[("TL_RETRIES", "2")],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&refused)
            && r.stderr.contains("cannot connect")
            && r.stderr.contains("3 attempts"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(15), "{:?}", r.elapsed);
    assert_eq!(snapshot(&home), before, "a failed fetch changed the cache");
    drop(held);

    let body = data(SIZE, 9);
    server.route("/stall", body.clone(), Mode::StallAt(SIZE / 2), &[]);
    let r = tl(
        &home,
        &[
            "fetch",
            "st",
            "--url",
            &server.url("/stall"),
            "--arch",
            "vgg16",
        ],
        &[("TL_TIMEOUT_SECS", "1"), ("TL_RETRIES", "0")],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("no data for 1 s"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(6), "{:?}", r.elapsed);
    assert!(
        part_len(&home, "st") > 0,
        "the received bytes were not kept"
    );

    server.route("/silent", body, Mode::StallBeforeHeaders, &[]);
    let r = tl(
        &home,
        &[
            "fetch",
            "si",
            "--url",
            &server.url("/silent"),
            "--arch",
            "vgg16",
        ],
        &[("TL_TIMEOUT_SECS", "1"), ("TL_RETRIES", "0")],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("no response within 1 s"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(6), "{:?}", r.elapsed);
    for name in ["nf", "rf", "st", "si"] {
        assert!(!home.join(format!("{name}.safetensors")).exists());
        assert!(!home.join(format!("models/{name}.toml")).exists());
    }
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 6: two concurrent fetches of one model: one download, one correct file.
#[test]
fn concurrent_fetches_end_with_one_correct_file() {
    let home = temp_home("concurrent");
    let server = Server::start();
    let body = data(SIZE, 10);
    let hash = sha(&body);
    server.route(
        FILE,
        body.clone(),
        Mode::Throttle(Duration::from_millis(40)),
        &[],
    );
    let url = server.url(FILE);
    let args = [
        "fetch", "both", "--url", &url, "--arch", "vgg16", "--sha256", &hash,
    ];
    let start = Instant::now();
    let a = tl_command(&home, &args, &[]).output_spawned();
    let b = tl_command(&home, &args, &[]).output_spawned();
    let (a, b) = (a.join().expect("thread"), b.join().expect("thread"));
    let (a, b) = (finish(a, start.elapsed()), finish(b, start.elapsed()));
    assert!(a.ok, "{}", a.stderr);
    assert!(b.ok, "{}", b.stderr);
    assert_eq!(std::fs::read(home.join("both.safetensors")).unwrap(), body);
    assert_eq!(server.requests_for(FILE).len(), 1);
    assert!(!home.join("both.safetensors.part").exists());
    assert_eq!(record(&home, "both")["sha256"], hash.as_str());
    let _ = std::fs::remove_dir_all(&home);
}

/// Acceptance 8: `TL_OFFLINE=1` fails at once, before any request.
#[test]
fn offline_fails_at_once_without_network() {
    let home = temp_home("offline");
    let r = tl(&home, &["fetch", "resnet18"], &[("TL_OFFLINE", "1")]);
    assert!(!r.ok);
    assert!(r.stderr.contains("TL_OFFLINE"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(3), "{:?}", r.elapsed);
    assert!(!home.exists(), "offline fetch touched the cache");

    let server = Server::start();
    server.route(FILE, data(1000, 11), Mode::Normal, &[]);
    let r = tl(
        &home,
        &[
            "fetch",
            "off",
            "--url",
            &server.url(FILE),
            "--arch",
            "vgg16",
        ],
        &[("TL_OFFLINE", "1")],
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("TL_OFFLINE"), "{}", r.stderr);
    assert!(server.requests().is_empty());
}

/// Errors that name the flag or model at fault.
#[test]
fn bad_arguments_name_the_flag() {
    let home = temp_home("args");
    let r = tl(&home, &["fetch", "nosuch"], &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("nosuch") && r.stderr.contains("vgg16, resnet18"),
        "{}",
        r.stderr
    );
    let r = tl(&home, &["fetch", "resnet18", "--sha256", "abc"], &[]);
    assert!(!r.ok && r.stderr.contains("--sha256"), "{}", r.stderr);
    let r = tl(&home, &["fetch", "resnet18", "--url", "ftp://x/y"], &[]);
    assert!(!r.ok && r.stderr.contains("--url"), "{}", r.stderr);
    let r = tl(
        &home,
        &[
            "fetch",
            "x",
            "--url",
            "http://127.0.0.1:9/x",
            "--arch",
            "alexnet",
        ],
        &[],
    );
    assert!(!r.ok && r.stderr.contains("--arch"), "{}", r.stderr);
    let r = tl(&home, &["fetch", "x", "--url", "http://127.0.0.1:9/x"], &[]);
    assert!(!r.ok && r.stderr.contains("--arch"), "{}", r.stderr);
    let r = tl(&home, &["fetch", "--verify", "resnet18"], &[]);
    assert!(
        !r.ok && r.stderr.contains("tl fetch resnet18"),
        "{}",
        r.stderr
    );
    let r = tl(&home, &["fetch", "../x"], &[]);
    assert!(
        !r.ok && r.stderr.contains("invalid model name"),
        "{}",
        r.stderr
    );
    assert!(!home.exists());
}

/// Acceptance 7: a served ResNet-18 with deterministic (synthetic) weights, fetched under a
/// name of its own, is found by `tl predict --model <name>` and predicts exactly as the same file
/// given with `--weights`; an unfetched built-in model's error says to run `tl fetch`.
#[test]
fn fetched_model_predicts_by_name() {
    use tl::models::{synthetic, Arch, Init, Model};

    let home = temp_home("predict");
    let work = temp_home("predict-work");
    std::fs::create_dir_all(&work).unwrap();
    let weights = work.join("synthetic.safetensors");
    {
        let mut m = Model::new(Arch::Resnet18, 1000, Init::Zeros);
        synthetic::fill(m.net_mut());
        let mut tensors = Vec::new();
        m.visit(&mut |n, p| tensors.push((n.to_string(), p.value())));
        tl::weights::save_atomic(&weights, tensors, Default::default()).unwrap();
    }
    let image = work.join("gradient.png");
    image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    })
    .save(&image)
    .unwrap();
    let body = std::fs::read(&weights).unwrap();
    let hash = sha(&body);
    let server = Server::start();
    server.route("/synthetic.safetensors", body, Mode::Normal, &[]);

    let img = image.to_str().unwrap();
    let missing = tl(&home, &["predict", img, "--model", "resnet18"], &[]);
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("tl fetch resnet18"),
        "{}",
        missing.stderr
    );

    let url = server.url("/synthetic.safetensors");
    let r = tl(
        &home,
        &[
            "fetch", "synth", "--url", &url, "--arch", "resnet18", "--sha256", &hash,
        ],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);

    let by_name = tl(
        &home,
        &["predict", img, "--model", "synth", "--json", "--topk", "3"],
        &[("TL_OFFLINE", "1")],
    );
    assert!(by_name.ok, "{}", by_name.stderr);
    let by_file = tl(
        &home,
        &[
            "predict",
            img,
            "--model",
            "resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--json",
            "--topk",
            "3",
        ],
        &[],
    );
    assert!(by_file.ok, "{}", by_file.stderr);
    assert!(!by_name.stdout.trim().is_empty());
    assert_eq!(by_name.stdout, by_file.stdout);
    let classes = tl::fetch::imagenet_classes();
    assert!(
        classes.iter().any(|c| by_name.stdout.contains(c.as_str())),
        "no ImageNet class name in {}",
        by_name.stdout
    );
    assert_eq!(server.requests().len(), 1);
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&work);
}

/// Runs a command to completion on a thread, so several can run at once.
trait OutputSpawned {
    fn output_spawned(self) -> std::thread::JoinHandle<Output>;
}

impl OutputSpawned for Command {
    fn output_spawned(mut self) -> std::thread::JoinHandle<Output> {
        std::thread::spawn(move || self.output().expect("run tl"))
    }
}
