//! Fine-tuning end to end: early stopping restores the best epoch, resume repeats an uninterrupted
//! run, checkpoints are atomic, eval agrees with training, and bad input is a clear error.

mod common_models;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common_models::{empty_cache, fails_naming, tl, tmpdir};
use ndarray::Array4;
use rand::SeedableRng;
use tl::models::{synthetic, Arch, Init, Model};
use tl::train::trainer::{EpochRecord, Feed, Observer, Quiet, Resume};
use tl::train::{fit, RunFiles, TrainConfig};
use tl::weights::{TensorData, WeightFile};
use tl::Error;

fn small_model() -> Model {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut m = Model::new(Arch::Resnet18, 1000, Init::Zeros);
    m.attach_head("pool", &[16], vec!["a".into(), "b".into()], 0.0, &mut rng)
        .unwrap();
    synthetic::fill(m.net_mut());
    m.freeze_until("conv5").unwrap();
    m
}

fn head_weights(path: &Path) -> Vec<f32> {
    file_tensors(path).remove("head.3.weight").unwrap()
}

/// Training labels y, validation the same images with the labels swapped: fitting the training
/// set makes val_loss rise.
fn data() -> (Array4<f32>, Vec<usize>, Vec<usize>) {
    let x = synthetic::tensor("early", &[4, 3, 32, 32])
        .into_dimensionality()
        .unwrap();
    (x, vec![0, 1, 0, 1], vec![1, 0, 1, 0])
}

fn run(
    epochs: usize,
    files: &RunFiles,
    resume: Resume,
    model: &mut Model,
) -> tl::train::FitSummary {
    let (x, y, yv) = data();
    let config = TrainConfig {
        epochs,
        lr: 0.05,
        patience: 2,
        ..TrainConfig::default()
    };
    let (xt, xv) = (x.clone().into_dyn(), x.into_dyn());
    let feed = Feed {
        train: Box::new(move |_| Box::new(std::iter::once((xt.clone(), y.clone())))),
        val: Box::new(move || Box::new(std::iter::once((xv.clone(), yv.clone())))),
        train_samples: 4,
        val_samples: 4,
        start: 0,
    };
    fit(model, &config, feed, files, resume, &mut Quiet).unwrap()
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let dir = tmpdir("finetune-early");
    let files = RunFiles::for_checkpoint(&dir.join("m.safetensors"));
    let mut model = small_model();
    let s = run(20, &files, Resume::default(), &mut model);
    let losses: Vec<f32> = s.history.iter().map(|r| r.val_loss).collect();
    assert!(
        losses.windows(2).all(|w| w[1] > w[0]),
        "val_loss rises: {losses:?}"
    );
    assert_eq!(s.history.len(), 3, "best epoch 1, then patience 2");
    assert!(s.stopped_early);
    assert_eq!(s.best_epoch, 1);
    // The checkpoint holds epoch 1's weights: the same as a one-epoch run.
    let one = dir.join("one.safetensors");
    let mut m1 = small_model();
    run(
        1,
        &RunFiles::for_checkpoint(&one),
        Resume::default(),
        &mut m1,
    );
    assert_eq!(head_weights(&files.best), head_weights(&one));
    assert_ne!(head_weights(&files.best), head_weights(&files.last));
    // The model in memory was restored to the best weights.
    let mut mem = Vec::new();
    model.visit(&mut |n, p| {
        if n == "head.3.weight" {
            mem = p.value().iter().copied().collect();
        }
    });
    assert_eq!(mem, head_weights(&files.best));
    let csv = std::fs::read_to_string(&files.metrics).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().nth(1).unwrap().ends_with(",true"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_repeats_an_uninterrupted_run() {
    let dir = tmpdir("finetune-resume");
    let straight = RunFiles::for_checkpoint(&dir.join("straight.safetensors"));
    let mut a = small_model();
    let sa = run(3, &straight, Resume::default(), &mut a);
    let first = RunFiles::for_checkpoint(&dir.join("first.safetensors"));
    let mut b = small_model();
    run(2, &first, Resume::default(), &mut b);
    let f = WeightFile::open(&first.last).unwrap();
    let mut c = Model::from_checkpoint(&f).unwrap();
    c.freeze_until("conv5").unwrap();
    let resume = Resume::from_checkpoint(&f).unwrap();
    assert!(
        resume.optimizer.is_some(),
        "optimizer state saved beside the last checkpoint"
    );
    let second = RunFiles::for_checkpoint(&dir.join("second.safetensors"));
    let sc = run(3, &second, resume, &mut c);
    assert_eq!(sc.history.len(), 3);
    assert_eq!(sc.history[2].train_loss, sa.history[2].train_loss);
    assert_eq!(head_weights(&second.last), head_weights(&straight.last));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_pngs(dir: &Path, class: &str, n: usize, seed: u64) {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        tl::demo::draw((seed as usize) % 3, i, 40, seed)
            .save(d.join(format!("{i}.png")))
            .unwrap();
    }
}

/// The `time: T s (decoding D s, ..., N epochs E s, checkpoints C s)` line of `tl finetune`'s
/// stderr: the total and the listed parts as (label, seconds). Checks that the parts add up to at
/// most the total (each figure is rounded to 0.1 s, so allowing 0.05 s per figure).
fn time_line(err: &str) -> (f32, Vec<(String, f32)>) {
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("time: ")).collect();
    assert_eq!(lines.len(), 1, "one time line: {err}");
    let (total, parts) = lines[0]["time: ".len()..]
        .split_once(" s (")
        .unwrap_or_else(|| panic!("{}", lines[0]));
    let total: f32 = total.parse().unwrap();
    let parts: Vec<(String, f32)> = parts
        .strip_suffix(')')
        .unwrap()
        .split(", ")
        .map(|p| {
            let (label, v) = p.strip_suffix(" s").unwrap().rsplit_once(' ').unwrap();
            (label.to_string(), v.parse().unwrap())
        })
        .collect();
    let sum: f32 = parts.iter().map(|(_, v)| v).sum();
    assert!(parts.iter().all(|(_, v)| *v >= 0.0), "{}", lines[0]);
    assert!(
        sum <= total + 0.05 * (parts.len() + 1) as f32 + 1e-4,
        "parts {sum} > total {total}: {}",
        lines[0]
    );
    (total, parts)
}

/// The labels of a time line's parts.
fn labels(parts: &[(String, f32)]) -> Vec<&str> {
    parts.iter().map(|(l, _)| l.as_str()).collect()
}

/// The seconds column of a metrics CSV, summed.
fn csv_seconds(path: &Path) -> f32 {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse::<f32>().unwrap())
        .sum()
}

const FAST: [&str; 10] = [
    "--model",
    "resnet18",
    "--from-scratch",
    "--image-size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--no-shuffle",
];

/// `tl finetune DATA -o CKPT` with the [`FAST`] settings and `extra` flags.
fn finetune(data: &Path, ckpt: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["finetune", path_str(data), "-o", path_str(ckpt)];
    args.extend(FAST);
    args.extend(extra);
    tl(&args)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

#[test]
fn bad_files_are_skipped_and_reported_and_eval_agrees() {
    let dir = tmpdir("finetune-skip");
    let data = dir.join("data");
    write_pngs(&data, "circle", 6, 0);
    write_pngs(&data, "square", 6, 1);
    // A truncated JPEG and a text file among the images.
    let mut jpeg = Vec::new();
    tl::demo::draw(0, 99, 40, 0)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(data.join("circle/truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(data.join("square/notes.png"), "not an image").unwrap();
    let ckpt = dir.join("m.safetensors");
    let out = finetune(&data, &ckpt, &["--freeze-until", "conv5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("truncated.jpg") && err.contains("notes.png"),
        "{err}"
    );
    assert!(err.contains("skipped 2 unreadable file(s)"), "{err}");
    let (_, parts) = time_line(&err);
    assert_eq!(
        labels(&parts),
        ["decoding", "2 epochs", "checkpoints"],
        "{err}"
    );
    assert!(
        ckpt.is_file()
            && dir.join("m.metrics.csv").is_file()
            && dir.join("m.last.safetensors").is_file()
    );

    // tl eval on the checkpoint reproduces the best epoch's validation numbers.
    let metrics = std::fs::read_to_string(dir.join("m.metrics.csv")).unwrap();
    let best = metrics
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",true"))
        .last()
        .unwrap()
        .to_string();
    let cols: Vec<f32> = best
        .split(',')
        .skip(1)
        .take(4)
        .map(|v| v.parse().unwrap())
        .collect();
    let out = tl(&[
        "eval",
        path_str(&data),
        "--model",
        path_str(&ckpt),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (json["accuracy"].as_f64().unwrap() as f32 - cols[3]).abs() < 1e-6,
        "{json} vs {best}"
    );
    assert!(
        (json["loss"].as_f64().unwrap() as f32 - cols[2]).abs() < 1e-4 * cols[2].max(1.0),
        "{json} vs {best}"
    );
    assert_eq!(json["confusion"].as_array().unwrap().len(), 2);

    // predict on the checkpoint: its class names and input size.
    let out = tl(&[
        "predict",
        path_str(&data.join("circle/0.png")),
        "--model",
        path_str(&ckpt),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let class = json[0]["top"][0]["class"].as_str().unwrap().to_string();
    assert!(class == "circle" || class == "square");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_folders_and_flags_are_clear_errors() {
    let dir = tmpdir("finetune-bad");
    let out_ckpt = dir.join("m.safetensors");
    let run = |data: &Path, extra: &[&str]| finetune(data, &out_ckpt, extra);
    fails_naming(&run(&dir.join("nope"), &[]), &["nope"]);
    let one = dir.join("one");
    write_pngs(&one, "only", 4, 0);
    fails_naming(&run(&one, &[]), &["one", "class"]);
    let empty = dir.join("empty");
    write_pngs(&empty, "a", 4, 0);
    std::fs::create_dir_all(empty.join("b")).unwrap();
    fails_naming(&run(&empty, &[]), &["b"]);
    let good = dir.join("good");
    write_pngs(&good, "a", 4, 0);
    write_pngs(&good, "b", 4, 1);
    fails_naming(
        &run(&good, &["--freeze-until", "conv9"]),
        &[
            "--freeze-until",
            "conv9",
            "conv1, conv2, conv3, conv4, conv5, pool, head",
        ],
    );
    fails_naming(&run(&good, &["--lr", "0"]), &["--lr"]);
    fails_naming(
        &run(&good, &["--save-interval", "-1"]),
        &["--save-interval", "-1"],
    );
    fails_naming(&run(&good, &["--lr", "-0.1"]), &["--lr"]);
    fails_naming(
        &run(&good, &["--augment", "flip,twirl"]),
        &["--augment", "twirl"],
    );
    // Augmented views to cache need augmentation, a frozen prefix, and the cache.
    fails_naming(
        &run(&good, &["--augment", "none", "--cache-views", "2"]),
        &["--cache-views", "augmentation is off"],
    );
    fails_naming(
        &run(&good, &["--freeze-until", "conv1", "--cache-views", "2"]),
        &["--cache-views", "conv1", "no stage before it is frozen"],
    );
    fails_naming(
        &run(&good, &["--no-cache", "--cache-views", "2"]),
        &["--no-cache", "--cache-views"],
    );
    assert!(
        !dir.join("m.safetensors").exists(),
        "no checkpoint from a failed start"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn killing_a_run_never_leaves_a_broken_checkpoint() {
    let dir = tmpdir("finetune-kill");
    let data = dir.join("data");
    write_pngs(&data, "a", 8, 0);
    write_pngs(&data, "b", 8, 1);
    let ckpt = dir.join("m.safetensors");
    let last = dir.join("m.last.safetensors");
    // Each run is killed at a different moment after its first checkpoint, while it keeps
    // rewriting the last checkpoint every epoch; whatever is under the final names must load.
    for delay_ms in [0u64, 7, 23, 61, 150] {
        let _ = std::fs::remove_file(&last);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tl"))
            .args([
                "finetune",
                path_str(&data),
                "-o",
                path_str(&ckpt),
                "--epochs",
                "1000",
                "--patience",
                "0",
                "--augment",
                "none",
                "--save-interval",
                "0",
            ])
            .args(&FAST[..5])
            .args(["--batch-size", "8"])
            .env("TL_HOME", empty_cache())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !last.exists() && start.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        for path in [&ckpt, &last] {
            let f = WeightFile::open(path)
                .unwrap_or_else(|e| panic!("{} unreadable after a kill: {e}", path.display()));
            Model::from_checkpoint(&f).expect("checkpoint complete after a kill");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".tmp"))
        .collect();
    // The checkpoint and the optimizer state are written side by side: a kill can leave both
    // of a run's files in flight, never more.
    assert!(
        leftovers.len() <= 2 * 5,
        "at most two temporary files per killed run: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn frozen_feature_cache_trains_as_recomputing_does() {
    let dir = tmpdir("finetune-cache");
    let data = dir.join("data");
    write_pngs(&data, "a", 6, 0);
    write_pngs(&data, "b", 6, 1);
    let mut metrics = Vec::new();
    // In memory, memory-mapped from a file (no memory allowed), and recomputed every epoch.
    let runs: [(&str, &[&str]); 3] = [
        ("cached", &[]),
        ("mapped", &["--cache-memory", "0"]),
        ("plain", &["--no-cache"]),
    ];
    for (name, extra) in runs {
        let ckpt = dir.join(format!("{name}.safetensors"));
        let mut flags = vec!["--freeze-until", "conv5", "--augment", "none"];
        flags.extend(extra);
        let out = finetune(&data, &ckpt, &flags);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let cached = name != "plain";
        assert_eq!(err.contains("frozen-feature cache"), cached, "{err}");
        assert_eq!(err.contains("[cached features]"), cached, "{err}");
        assert_eq!(
            err.contains("memory-mapped from a file beside the checkpoint"),
            name == "mapped",
            "{err}"
        );
        assert_eq!(err.contains("MB, in memory)"), name == "cached", "{err}");
        assert_time_parts(&err, cached);
        let (total, parts) = time_line(&err);
        assert!(total > 0.0, "{err}");
        // The epochs part is the metrics CSV's seconds (rounded to 0.001 there, 0.1 here).
        let epochs = parts.iter().find(|(l, _)| l == "2 epochs").unwrap().1;
        let csv_sum = csv_seconds(&dir.join(format!("{name}.metrics.csv")));
        assert!(
            (epochs - csv_sum).abs() <= 0.06,
            "{epochs} vs CSV {csv_sum}: {err}"
        );
        metrics.push(csv_metrics(&dir.join(format!("{name}.metrics.csv"))));
    }
    assert_eq!(metrics[0].len(), 2);
    // The same rows from memory or from the file.
    assert_eq!(metrics[0], metrics[1]);
    for (a, b) in metrics[0].iter().flatten().zip(metrics[2].iter().flatten()) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "cached {a} vs recomputed {b}"
        );
    }
    // The file is gone once the run ends (on Unix as soon as it is mapped).
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("-cache.tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The parts of a two-epoch run's `time:` line, with or without the frozen-feature cache.
fn assert_time_parts(err: &str, cached: bool) {
    let (_, parts) = time_line(err);
    let want: &[&str] = if cached {
        &[
            "decoding",
            "frozen-feature cache",
            "2 epochs",
            "checkpoints",
        ]
    } else {
        &["decoding", "2 epochs", "checkpoints"]
    };
    assert_eq!(labels(&parts), want, "{err}");
}

/// The metrics CSV's train/val loss and accuracy, one row per epoch.
fn csv_metrics(path: &Path) -> Vec<Vec<f32>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .skip(1)
                .take(4)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn augmented_views_cache_trains_as_recomputing_does_until_it_cycles() {
    let dir = tmpdir("finetune-views");
    let data = dir.join("data");
    write_pngs(&data, "a", 6, 0);
    write_pngs(&data, "b", 6, 1);
    let mut metrics = Vec::new();
    // Augmentation on (the default set); two epochs. Without --cache-views the frozen stages run
    // every epoch; with 2 views, epochs 1 and 2 train on views 1 and 2, the augmentations the
    // uncached run draws for its epochs 1 and 2; with 1 view, epoch 2 trains on epoch 1's again.
    for (name, views) in [("plain", None), ("two", Some("2")), ("one", Some("1"))] {
        let ckpt = dir.join(format!("{name}.safetensors"));
        let mut flags = vec!["--freeze-until", "conv5"];
        if let Some(k) = views {
            flags.extend(["--cache-views", k]);
        }
        let out = finetune(&data, &ckpt, &flags);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let epoch_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("epoch ")).collect();
        assert_eq!(epoch_lines.len(), 2, "{err}");
        match views {
            None => {
                assert!(!err.contains("frozen-feature cache"), "{err}");
                assert!(!err.contains("[cached features"), "{err}");
            }
            Some(k) => {
                assert!(
                    err.contains(&format!("run once on {k} augmented view")),
                    "{err}"
                );
                let k: usize = k.parse().unwrap();
                for (e, line) in epoch_lines.iter().enumerate() {
                    let view = format!("[cached features, view {}/{k}]", e % k + 1);
                    assert!(line.contains(&view), "epoch {}: {line}", e + 1);
                }
                assert_time_parts(&err, true);
            }
        }
        metrics.push(csv_metrics(&dir.join(format!("{name}.metrics.csv"))));
    }
    let close = |a: &f32, b: &f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    let (plain, two, one) = (&metrics[0], &metrics[1], &metrics[2]);
    for (a, b) in two.iter().flatten().zip(plain.iter().flatten()) {
        assert!(close(a, b), "2 views {a} vs recomputed {b}");
    }
    for (a, b) in one[0].iter().zip(&plain[0]) {
        assert!(close(a, b), "1 view, epoch 1: {a} vs recomputed {b}");
    }
    // Epoch 2 from epoch 1's view: the same weights meet other inputs than the uncached run's.
    assert!(
        !close(&one[1][0], &plain[1][0]),
        "1 view, epoch 2 train_loss {} equals the recomputed {}",
        one[1][0],
        plain[1][0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_into_a_new_nested_directory() {
    let dir = tmpdir("finetune-nested");
    let data = dir.join("data");
    write_pngs(&data, "a", 4, 0);
    write_pngs(&data, "b", 4, 1);
    let out_dir = dir.join("runs").join("deep").join("er");
    assert!(!dir.join("runs").exists());
    let ckpt = out_dir.join("m.safetensors");
    let out = finetune(&data, &ckpt, &["--freeze-until", "conv5"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    for f in ["m.safetensors", "m.last.safetensors", "m.metrics.csv"] {
        assert!(out_dir.join(f).is_file(), "{f} missing: {err}");
    }
    let f = WeightFile::open(&ckpt).unwrap();
    assert_eq!(
        Model::from_checkpoint(&f).unwrap().classes(),
        ["a".to_string(), "b".to_string()]
    );
    // Augmentation is on: no cache part.
    assert_time_parts(&err, false);
    let csv = std::fs::read_to_string(out_dir.join("m.metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    // Files every 30 s by default: epoch 1 (the first best) waits in memory, the last is written.
    let epoch_line = |e: &str| {
        err.lines()
            .find(|l| l.starts_with(&format!("epoch   {e}/2")))
            .unwrap_or_else(|| panic!("no epoch {e} line: {err}"))
            .to_string()
    };
    assert!(epoch_line("1").ends_with("  (best)"), "{err}");
    assert!(epoch_line("2").ends_with("saved)"), "{err}");

    // A directory that cannot be created (a file is in the way) is an error naming it, before
    // any training.
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, "a file").unwrap();
    let out = finetune(
        &data,
        &blocker.join("sub").join("m.safetensors"),
        &["--freeze-until", "conv5"],
    );
    fails_naming(&out, &["-o", path_str(&blocker.join("sub"))]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("epoch "));
    std::fs::remove_dir_all(&dir).unwrap();
}

// The background checkpoint writer (`tl::train::trainer::fit`'s files).

/// Four inputs of the model's last layer (`head.3`, 16 → 2) labelled `train`, validated
/// with labels `val`; epoch `nan_at` trains on NaN.
fn feed(model: &Model, train: [usize; 4], val: [usize; 4], nan_at: Option<usize>) -> Feed<'static> {
    let x = synthetic::tensor("writer", &[4, 16]);
    let xv = x.clone();
    Feed {
        train: Box::new(move |epoch| {
            let x = if nan_at == Some(epoch) {
                x.mapv(|_| f32::NAN)
            } else {
                x.clone()
            };
            Box::new(std::iter::once((x, train.to_vec())))
        }),
        val: Box::new(move || Box::new(std::iter::once((xv.clone(), val.to_vec())))),
        train_samples: 4,
        val_samples: 4,
        start: model.len() - 1,
    }
}

/// Files after every epoch.
fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        lr: 0.01,
        patience: 0,
        save_interval: 0.0,
        ..TrainConfig::default()
    }
}

/// Calls its closure with each finished epoch's number and whether its files were written.
struct OnEpoch<F: FnMut(usize, bool)>(F);

impl<F: FnMut(usize, bool)> Observer for OnEpoch<F> {
    fn on_epoch(&mut self, record: &EpochRecord, saved: bool) {
        (self.0)(record.epoch, saved)
    }
}

fn file_tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    let f = WeightFile::open(path).unwrap();
    f.names()
        .into_iter()
        .map(|n| {
            let v = match f.f32_data(n).unwrap() {
                TensorData::Mapped(m) => m.as_slice().to_vec(),
                TensorData::Owned(v) => v,
            };
            (n.to_string(), v)
        })
        .collect()
}

fn model_tensors(model: &Model) -> HashMap<String, Vec<f32>> {
    let mut m = HashMap::new();
    model.visit(&mut |n, p| {
        m.insert(n.to_string(), p.value().iter().copied().collect());
    });
    m
}

/// The epochs in a checkpoint's training summary.
fn epochs_in(path: &Path) -> usize {
    let f = WeightFile::open(path).unwrap();
    Model::from_checkpoint(&f).unwrap();
    Resume::from_checkpoint(&f).unwrap().history.len()
}

fn csv_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count().saturating_sub(1))
}

/// Blocks until the metrics CSV has `rows` rows: that epoch's files are all written.
fn wait_for_rows(path: &Path, rows: usize) {
    let start = Instant::now();
    while csv_rows(path) < rows {
        assert!(start.elapsed().as_secs() < 60, "epoch {rows} never written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `dir/m.safetensors` and its files, the optimizer state in the folder `dir/state`.
fn files_with_state_folder(dir: &Path) -> RunFiles {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    RunFiles {
        optim: dir.join("state/m.last.optim.safetensors"),
        ..RunFiles::for_checkpoint(&dir.join("m.safetensors"))
    }
}

/// Replaces the folder `dir/state` by a file, so the optimizer state cannot be written.
fn block_state_folder(dir: &Path) {
    std::fs::remove_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state"), b"not a folder").unwrap();
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn every_file_is_complete_when_fit_returns() {
    let dir = tmpdir("writer-complete");
    let files = RunFiles::for_checkpoint(&dir.join("m.safetensors"));
    // Loaded from a file, so the frozen tensors are read in place from its map.
    let start = dir.join("start.safetensors");
    small_model().save_checkpoint(&start, "").unwrap();
    let mut model = Model::from_checkpoint(&WeightFile::open(&start).unwrap()).unwrap();
    model.freeze_until("head").unwrap();
    model.set_trainable("head.0", false).unwrap();
    let mut mapped = 0;
    model.visit(&mut |_, p| mapped += usize::from(p.is_mapped()));
    assert_eq!(mapped, model_tensors(&model).len());
    let feed = feed(&model, [0, 1, 0, 1], [0, 1, 0, 1], None);
    let s = fit(
        &mut model,
        &config(3),
        feed,
        &files,
        Resume::default(),
        &mut Quiet,
    )
    .unwrap();
    assert!(s.history.iter().all(|r| r.best), "{:?}", s.history);
    // The last epoch is the best: the model, best and last all hold its weights.
    let weights = model_tensors(&model);
    assert_eq!(file_tensors(&files.last), weights);
    assert_eq!(file_tensors(&files.best), weights);
    assert_eq!(epochs_in(&files.last), 3);
    assert_eq!(epochs_in(&files.best), 3);
    let resume = Resume::from_checkpoint(&WeightFile::open(&files.last).unwrap()).unwrap();
    let mut trainable = Vec::new();
    model.visit(&mut |n, p| {
        if p.trainable() {
            trainable.push((format!("{n}.momentum"), p.shape().to_vec()));
        }
    });
    let mut saved: Vec<(String, Vec<usize>)> = resume
        .optimizer
        .unwrap()
        .into_iter()
        .map(|(n, a)| (n, a.shape().to_vec()))
        .collect();
    saved.sort();
    trainable.sort();
    assert_eq!(saved, trainable);
    let csv = std::fs::read_to_string(&files.metrics).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().last().unwrap().starts_with("3,"), "{csv}");
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_write_stops_fit_with_the_file_named() {
    // Epoch 3's files fail: found when epoch 4 hands over its own, or when a 3-epoch run ends.
    for epochs in [5, 3] {
        let dir = tmpdir(&format!("writer-fails-{epochs}"));
        let files = files_with_state_folder(&dir);
        let mut model = small_model();
        // val_loss rises after epoch 1: epoch 1 is the best, later epochs write only `last`.
        let feed = feed(&model, [0, 1, 0, 1], [1, 0, 1, 0], None);
        let mut seen = Vec::new();
        let mut observer = OnEpoch(|epoch, _| {
            seen.push(epoch);
            if epoch == 2 {
                wait_for_rows(&files.metrics, 2);
                block_state_folder(&dir);
            }
        });
        let err = fit(
            &mut model,
            &config(epochs),
            feed,
            &files,
            Resume::default(),
            &mut observer,
        )
        .unwrap_err();
        assert_eq!(seen, [1, 2, 3]);
        match &err {
            Error::Io { path, .. } => {
                assert!(path.starts_with(dir.join("state")), "{err}");
                assert!(
                    err.to_string().contains("m.last.optim.safetensors"),
                    "{err}"
                );
            }
            other => panic!("expected an I/O error, got {other}"),
        }
        assert_eq!(epochs_in(&files.best), 1);
        assert_eq!(
            epochs_in(&files.last),
            3,
            "written before the optimizer state"
        );
        assert_eq!(csv_rows(&files.metrics), 2);
        assert_eq!(temporaries(&dir), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_training_error_wins_over_a_write_error_once_the_files_are_done() {
    let dir = tmpdir("writer-nonfinite");
    let files = files_with_state_folder(&dir);
    let mut model = small_model();
    let feed = feed(&model, [0, 1, 0, 1], [1, 0, 1, 0], Some(3));
    let mut observer = OnEpoch(|epoch, _| {
        if epoch == 1 {
            wait_for_rows(&files.metrics, 1);
            block_state_folder(&dir);
        }
    });
    let err = fit(
        &mut model,
        &config(5),
        feed,
        &files,
        Resume::default(),
        &mut observer,
    )
    .unwrap_err();
    // Epoch 2's files fail while epoch 3 trains on NaN: the loss is reported, and epoch 2's
    // checkpoint was finished before `fit` returned.
    assert!(
        matches!(
            err,
            Error::NonFinite {
                epoch: 3,
                step: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(epochs_in(&files.best), 1);
    assert_eq!(epochs_in(&files.last), 2);
    assert_eq!(csv_rows(&files.metrics), 1);
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `config(epochs)` writing its files only after the last epoch (an interval no run reaches,
/// longer than a `Duration` holds).
fn config_saving_at_the_end(epochs: usize) -> TrainConfig {
    TrainConfig {
        save_interval: f32::MAX,
        ..config(epochs)
    }
}

#[test]
fn files_wait_for_the_save_interval_and_hold_what_every_epoch_would() {
    let dir = tmpdir("writer-interval");
    let every = RunFiles::for_checkpoint(&dir.join("every.safetensors"));
    let end = RunFiles::for_checkpoint(&dir.join("end.safetensors"));
    let mut weights = Vec::new();
    for (files, config) in [(&every, config(5)), (&end, config_saving_at_the_end(5))] {
        let mut model = small_model();
        // val_loss rises after epoch 1: the best epoch is long unwritten when the run ends.
        let feed = feed(&model, [0, 1, 0, 1], [1, 0, 1, 0], None);
        let mut saved = Vec::new();
        let mut observer = OnEpoch(|epoch, was_saved| {
            saved.push(was_saved);
            if config.save_interval > 0.0 && epoch < 5 {
                assert!(
                    !files.best.exists() && !files.last.exists() && !files.metrics.exists(),
                    "nothing written before the last epoch"
                );
            }
        });
        let s = fit(
            &mut model,
            &config,
            feed,
            files,
            Resume::default(),
            &mut observer,
        )
        .unwrap();
        let expected = if config.save_interval > 0.0 {
            vec![false, false, false, false, true]
        } else {
            vec![true; 5]
        };
        assert_eq!(saved, expected);
        assert_eq!(s.best_epoch, 1);
        assert_eq!(epochs_in(&files.best), 1);
        assert_eq!(epochs_in(&files.last), 5);
        assert_eq!(csv_rows(&files.metrics), 5);
        // The model was restored to the best epoch's weights, from its file.
        assert_eq!(file_tensors(&files.best), model_tensors(&model));
        weights.push((
            file_tensors(&files.best),
            file_tensors(&files.last),
            file_tensors(&files.optim),
        ));
    }
    assert!(weights[0] == weights[1], "the same files, written later");
    assert_ne!(weights[0].0, weights[0].1);
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritten_best_epoch_is_written_when_the_loss_diverges() {
    let dir = tmpdir("writer-interval-nan");
    let files = RunFiles::for_checkpoint(&dir.join("m.safetensors"));
    let mut model = small_model();
    let feed = feed(&model, [0, 1, 0, 1], [1, 0, 1, 0], Some(3));
    let err = fit(
        &mut model,
        &config_saving_at_the_end(5),
        feed,
        &files,
        Resume::default(),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NonFinite { epoch: 3, .. }), "{err}");
    // Epoch 1, the best, waited in memory; it is on disk with the two epochs' metrics. No epoch
    // was due to write `last`.
    assert_eq!(epochs_in(&files.best), 1);
    assert!(file_tensors(&files.best)
        .values()
        .flatten()
        .all(|v| v.is_finite()));
    assert_eq!(csv_rows(&files.metrics), 2);
    assert!(!files.last.exists());
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}
