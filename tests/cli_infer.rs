//! `tl features`, `tl predict`, `tl inspect` and `tl bench conv` end to end: parity with
//! torchvision's own preprocessing and model on PNG files (fixtures from
//! scripts/gen_model_fixtures.py), output formats, and clear errors for bad input.

mod common_models;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common_models::{
    assert_close, fails_naming, read_fixture, synthetic_model, tensors_of, tl, tmpdir,
};
use ndarray::{Array2, ArrayD};
use tl::models::{synthetic, Arch};
use tl::weights::save_atomic;

/// The PNG noise images of the fixture script: floor((u + 1)·128).
fn noise_png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let u = synthetic::tensor(name, &[h as usize, w as usize, 3]);
    let bytes: Vec<u8> = u
        .iter()
        .map(|v| ((v + 1.0) * 128.0).floor() as u8)
        .collect();
    let img = image::RgbImage::from_raw(w, h, bytes).unwrap();
    let path = dir.join(format!("{name}.png"));
    img.save(&path).unwrap();
    path
}

fn resnet_weights(dir: &Path) -> PathBuf {
    let m = synthetic_model(Arch::Resnet18);
    let path = dir.join("resnet18-synthetic.safetensors");
    save_atomic(&path, tensors_of(&m), HashMap::new()).unwrap();
    path
}

fn read_npy(path: &Path) -> Array2<f32> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data: Vec<f32> = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Array2::from_shape_vec((dims[0], dims[1]), data).unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "tl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn features_and_predict_match_torchvision_on_png_files() {
    let dir = tmpdir("cli-parity");
    let weights = resnet_weights(&dir);
    let imgs = [
        noise_png(&dir, "img0", 256, 256),
        noise_png(&dir, "img1", 256, 256),
        noise_png(&dir, "img2", 320, 240),
    ];
    let want = read_fixture("cli_resnet18.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.join("f.npy");
    let mut args = vec!["features".to_string()];
    args.extend(imgs.iter().map(|p| s(p)));
    args.extend(
        [
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
            "-o",
            &s(&out),
            "--batch-size",
            "2",
        ]
        .map(String::from),
    );
    ok(&tl(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let got = read_npy(&out).into_dyn();
    assert_close("features (pool) via CLI", &got, &want["pool"], 1e-3);

    // The resized image (320x240 -> Resize(256) -> CenterCrop(224)) is Pillow's, bit for bit.
    let bytes = std::fs::read(common_models::fixture_path("cli_resnet18.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let crop = st.tensor("crop_img2").unwrap();
    let ours = tl::data::Preprocess::default().resize_crop(&tl::data::decode(&imgs[2]).unwrap());
    assert_eq!(
        ours.as_raw().as_slice(),
        crop.data(),
        "Pillow-exact resize and crop"
    );

    let mut args = vec!["predict".to_string()];
    args.extend(imgs.iter().map(|p| s(p)));
    args.extend(
        [
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
            "--json",
            "--topk",
            "3",
        ]
        .map(String::from),
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&tl(&args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())))
    .unwrap();
    let logits = &want["logits"];
    for (i, item) in json.as_array().unwrap().iter().enumerate() {
        assert_eq!(item["path"].as_str().unwrap(), s(&imgs[i]));
        let top = item["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let row = logits.index_axis(ndarray::Axis(0), i);
        let best = (0..1000)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(top[0]["index"].as_u64().unwrap() as usize, best);
        assert_eq!(
            top[0]["class"].as_str().unwrap(),
            tl::fetch::imagenet_classes()[best]
        );
        for t in top {
            let j = t["index"].as_u64().unwrap() as usize;
            let l = t["logit"].as_f64().unwrap() as f32;
            assert!(
                (l - row[j]).abs() <= 1e-3 * row[j].abs().max(1.0),
                "logit {j}: {l} vs {}",
                row[j]
            );
        }
        let p0 = top[0]["probability"].as_f64().unwrap();
        assert!(p0 > 0.0 && p0 <= 1.0);
    }

    // Same features in the other formats, rows in input order, directories sorted.
    let csv = dir.join("f.csv");
    ok(&tl(&[
        "features",
        &s(&dir),
        "--model",
        "resnet18",
        "--weights",
        &s(&weights),
        "-o",
        &s(&csv),
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("path,f0,f1"));
    assert!(lines[1].starts_with(&s(&imgs[0])));
    let first: Vec<f32> = lines[1]
        .split(',')
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(first.len(), 512);
    let st_out = dir.join("f.safetensors");
    ok(&tl(&[
        "features",
        &s(&imgs[1]),
        &s(&imgs[0]),
        "--model",
        "resnet18",
        "--weights",
        &s(&weights),
        "-o",
        &s(&st_out),
        "--layer",
        "conv5",
    ]));
    let f = tl::weights::WeightFile::open(&st_out).unwrap();
    assert_eq!(f.entry("features").unwrap().shape, vec![2, 512 * 7 * 7]);
    let paths: Vec<String> = serde_json::from_str(&f.metadata()["paths"]).unwrap();
    assert_eq!(paths, vec![s(&imgs[1]), s(&imgs[0])]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_reports_keras_style_totals() {
    let out = ok(&tl(&["inspect", "vgg16"]));
    assert!(out.contains("Total params: 138,357,544"), "{out}");
    assert!(out.contains("features.28"));
    let out = ok(&tl(&[
        "inspect",
        "resnet18",
        "--freeze-until",
        "conv5",
        "--head",
        "256",
        "--num-classes",
        "3",
    ]));
    assert!(out.contains("layer4.1"));
    assert!(out.contains("head.3"));
    let trainable = 8_393_728 + 512 * 256 + 256 + 256 * 3 + 3;
    let total = 11_689_512 - 513_000 + 512 * 256 + 256 + 256 * 3 + 3;
    let fmt = |n: usize| {
        let s = n.to_string();
        s.chars()
            .enumerate()
            .flat_map(|(i, c)| {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    vec![',', c]
                } else {
                    vec![c]
                }
            })
            .collect::<String>()
    };
    assert!(
        out.contains(&format!("Total params: {}", fmt(total))),
        "{out}"
    );
    assert!(
        out.contains(&format!("Trainable params: {}", fmt(trainable))),
        "{out}"
    );
    assert!(
        out.contains(&format!("Non-trainable params: {}", fmt(total - trainable))),
        "{out}"
    );
}

/// A safetensors file from a raw JSON header and data bytes.
fn raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// `tl bench conv --json`: one row per shape and pass with the shape's size and channels (what
/// scripts/bench_conv.py runs PyTorch at), its time, and the GFLOP/s of a direct convolution in
/// that time; an unknown shape is an error naming the flag and the known ones.
#[test]
fn bench_conv_reports_each_shape_and_pass_as_json() {
    let out = tl(&[
        "--threads",
        "2",
        "bench",
        "conv",
        "--batch",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--layers",
        "layer4,conv5_1",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, u64, u64, u64, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["layer"].as_str().unwrap(),
                r["side"].as_u64().unwrap(),
                r["c_in"].as_u64().unwrap(),
                r["c_out"].as_u64().unwrap(),
                r["pass"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("conv5_1", 14, 512, 512, "forward"),
            ("conv5_1", 14, 512, 512, "backward"),
            ("layer4", 7, 512, 512, "forward"),
            ("layer4", 7, 512, 512, "backward"),
        ]
    );
    for r in &rows {
        assert_eq!(r["batch"], 2);
        let side = r["side"].as_f64().unwrap();
        let passes = if r["pass"] == "forward" { 1.0 } else { 2.0 };
        let flops = passes * 2.0 * 2.0 * 512.0 * side * side * 512.0 * 9.0;
        let ms = r["median_ms"].as_f64().unwrap();
        let gflops = r["gflops"].as_f64().unwrap();
        assert!(ms > 0.0, "{r}");
        assert!(
            (gflops - flops / (ms * 1e6)).abs() <= 0.06 + 1e-3 * gflops,
            "GFLOP/s from the time: {r}"
        );
    }
    fails_naming(
        &tl(&["bench", "conv", "--layers", "conv9_9"]),
        &["--layers", "conv9_9", "layer4"],
    );
}

#[test]
fn bad_input_gives_clear_errors_without_panics() {
    let dir = tmpdir("cli-errors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let img = noise_png(&dir, "ok", 64, 64);
    let run = |weights: &Path| {
        tl(&[
            "predict",
            &s(&img),
            "--model",
            "resnet18",
            "--weights",
            &s(weights),
        ])
    };

    // A valid file cut short.
    let good = dir.join("good.safetensors");
    raw_safetensors(
        &good,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 6]).unwrap();
    fails_naming(
        &run(&truncated),
        &["truncated.safetensors", "not a valid safetensors file"],
    );

    // A header whose offsets claim more data than there is.
    let lying = dir.join("lying.safetensors");
    raw_safetensors(
        &lying,
        r#"{"a":{"dtype":"F32","shape":[400],"data_offsets":[0,1600]}}"#,
        &[0u8; 16],
    );
    fails_naming(
        &run(&lying),
        &["lying.safetensors", "not a valid safetensors file"],
    );

    // A header that is not JSON.
    let notjson = dir.join("notjson.safetensors");
    raw_safetensors(&notjson, "this is not json at all", &[]);
    fails_naming(&run(&notjson), &["notjson.safetensors", "JSON"]);

    // An absurd header length.
    let absurd = dir.join("absurd.safetensors");
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&absurd, b).unwrap();
    fails_naming(&run(&absurd), &["absurd.safetensors", "header"]);

    // Not safetensors at all.
    let text = dir.join("readme.safetensors");
    std::fs::write(&text, "hello, I am a text file").unwrap();
    fails_naming(&run(&text), &["readme.safetensors"]);

    // Valid files that do not fit ResNet-18: wrong shape, integer dtype, missing tensor.
    let m = synthetic_model(Arch::Resnet18);
    let mut tensors: Vec<(String, ArrayD<f32>)> = Vec::new();
    m.visit(&mut |n, p| tensors.push((n.to_string(), p.value().to_owned())));
    let save = |name: &str, t: &[(String, ArrayD<f32>)]| {
        let p = dir.join(name);
        save_atomic(
            &p,
            t.iter().map(|(n, a)| (n.clone(), a.view())).collect(),
            HashMap::new(),
        )
        .unwrap();
        p
    };
    let mut wrong = tensors.clone();
    wrong[0].1 = ArrayD::zeros(vec![64, 3, 5, 5]);
    fails_naming(
        &run(&save("wrong-shape.safetensors", &wrong)),
        &[
            "wrong-shape.safetensors",
            "conv1.weight",
            "[64, 3, 5, 5]",
            "[64, 3, 7, 7]",
        ],
    );
    let missing: Vec<_> = tensors
        .iter()
        .filter(|(n, _)| n != "bn1.running_var")
        .cloned()
        .collect();
    fails_naming(
        &run(&save("missing.safetensors", &missing)),
        &["missing.safetensors", "missing tensor bn1.running_var"],
    );
    let mut extra = tensors.clone();
    extra.push(("layer9.weight".into(), ArrayD::zeros(vec![2])));
    fails_naming(
        &run(&save("extra.safetensors", &extra)),
        &["extra.safetensors", "unexpected tensor layer9.weight"],
    );
    let int = dir.join("int.safetensors");
    raw_safetensors(
        &int,
        r#"{"conv1.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    fails_naming(&run(&int), &["int.safetensors", "I64"]);

    // Images: one that does not decode, a directory without images, a missing file.
    let weights = save("ok.safetensors", &tensors);
    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n not really").unwrap();
    fails_naming(
        &tl(&[
            "predict",
            &s(&broken),
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
        ]),
        &["broken.png", "cannot decode"],
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_naming(
        &tl(&[
            "features",
            &s(&empty),
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
            "-o",
            &s(&dir.join("x.npy")),
        ]),
        &["empty", "no image files"],
    );
    fails_naming(
        &tl(&[
            "features",
            &s(&img),
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
            "-o",
            &s(&dir.join("x.txt")),
        ]),
        &["-o", ".npy"],
    );
    fails_naming(
        &tl(&[
            "features",
            &s(&img),
            "--model",
            "resnet18",
            "--weights",
            &s(&weights),
            "-o",
            &s(&dir.join("x.npy")),
            "--layer",
            "conv9",
        ]),
        &["--layer", "conv9", "valid stages"],
    );
    fails_naming(
        &tl(&["predict", &s(&img), "--model", "resnet18"]),
        &["resnet18", "tl fetch resnet18"],
    );
    assert!(
        !dir.join("x.npy").exists(),
        "nothing written after a failure"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
