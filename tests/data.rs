//! Data side of fine-tuning: image-folder scanning and splitting, augmentation ops, and the
//! batched input pipeline (decode once, augment, crop, normalise).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use ndarray::{concatenate, Array4, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tl::data::augment::{affine, brightness, flip_horizontal, AugmentParams};
use tl::data::image_folder::val_count;
use tl::data::loader::{epoch_order, make_batch, resize_shorter};
use tl::data::{
    batches, decode, load_set, scan, scan_classes, stack, Augment, BatchOptions, Layout, Loaded,
    Preprocess, Sample,
};
use tl::Error;

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tl-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Creates an empty file (scanning looks at names only).
    fn touch(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
        p
    }

    fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.0.join(rel)).unwrap();
    }

    /// Writes a noise image (format from the extension).
    fn image(&self, rel: &str, w: u32, h: u32, seed: u64) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        noise(w, h, seed).save(&p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(w, h, |_, _| Rgb([rng.random(), rng.random(), rng.random()]))
}

fn names(samples: &[Sample], root: &Path) -> Vec<(String, usize)> {
    samples
        .iter()
        .map(|s| {
            let rel = s.path.strip_prefix(root).unwrap();
            (rel.to_string_lossy().replace('\\', "/"), s.label)
        })
        .collect()
}

fn message(e: Error) -> String {
    e.to_string()
}

// ---- image folders ----

#[test]
fn train_val_layout_sorted_classes_and_files() {
    let t = TempDir::new("trainval");
    for rel in [
        "train/dog/b.png",
        "train/dog/a.jpg",
        "train/cat/z.JPEG",
        "train/cat/sub/m.png",
        "train/cat/notes.txt",
        "train/cat/.hidden.png",
        "train/.ipynb_checkpoints/x.png",
        "val/cat/c.png",
        "val/dog/d.bmp",
        "test/cat/ignored.png",
        "readme.png",
    ] {
        t.touch(rel);
    }
    let ds = scan(t.path(), 0.2, 0).unwrap();
    assert_eq!(ds.layout, Layout::TrainVal);
    assert_eq!(ds.classes, ["cat", "dog"]);
    assert_eq!(
        names(&ds.train, t.path()),
        [
            ("train/cat/sub/m.png".to_string(), 0),
            ("train/cat/z.JPEG".to_string(), 0),
            ("train/dog/a.jpg".to_string(), 1),
            ("train/dog/b.png".to_string(), 1),
        ]
    );
    assert_eq!(
        names(&ds.val, t.path()),
        [
            ("val/cat/c.png".to_string(), 0),
            ("val/dog/d.bmp".to_string(), 1)
        ]
    );
    // val_split is not used by this layout.
    assert_eq!(scan(t.path(), 0.0, 9).unwrap(), ds);
}

fn flat(t: &TempDir, counts: &[(&str, usize)]) {
    for (class, n) in counts {
        for i in 0..*n {
            t.touch(&format!("{class}/{i:03}.png"));
        }
    }
}

#[test]
fn flat_layout_split_per_class() {
    let t = TempDir::new("flat");
    flat(&t, &[("b", 10), ("a", 5), ("c", 1), ("d", 2)]);
    let ds = scan(t.path(), 0.2, 7).unwrap();
    assert_eq!(ds.layout, Layout::Flat);
    assert_eq!(ds.classes, ["a", "b", "c", "d"]);
    let count = |s: &[Sample], l: usize| s.iter().filter(|s| s.label == l).count();
    // a: round(5·0.2)=1; b: 2; c: a single image stays in train; d: clamped to 1.
    for (label, n, n_val) in [(0, 5, 1), (1, 10, 2), (2, 1, 0), (3, 2, 1)] {
        assert_eq!(count(&ds.val, label), n_val, "class {label}");
        assert_eq!(count(&ds.train, label), n - n_val, "class {label}");
        assert_eq!(val_count(n, 0.2), n_val);
    }
    // Both sets keep dataset order and together are the whole folder.
    for set in [&ds.train, &ds.val] {
        let keys: Vec<_> = set.iter().map(|s| (s.label, s.path.clone())).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
    let (_, all) = scan_classes(t.path()).unwrap();
    let mut union: Vec<_> = ds.train.iter().chain(&ds.val).cloned().collect();
    union.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    assert_eq!(union, all);

    // Deterministic in the seed; another seed picks other images.
    assert_eq!(scan(t.path(), 0.2, 7).unwrap(), ds);
    let other = scan(t.path(), 0.2, 8).unwrap();
    assert_ne!(other.val, ds.val);
    assert_eq!(other.val.len(), ds.val.len());
}

#[test]
fn adding_a_class_keeps_the_other_splits() {
    let t = TempDir::new("addclass");
    flat(&t, &[("a", 20), ("b", 20)]);
    let before = scan(t.path(), 0.25, 3).unwrap();
    flat(&t, &[("0new", 7)]);
    let after = scan(t.path(), 0.25, 3).unwrap();
    assert_eq!(after.classes, ["0new", "a", "b"]);
    let paths = |s: &[Sample], from: usize| {
        s.iter()
            .filter(|s| s.label >= from)
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&after.val, 1), paths(&before.val, 0));
    assert_eq!(paths(&after.train, 1), paths(&before.train, 0));
}

#[test]
fn folder_errors_name_the_folder_or_flag() {
    let t = TempDir::new("errors");
    let missing = t.path().join("nope");
    let e = message(scan(&missing, 0.2, 0).unwrap_err());
    assert!(
        e.contains("nope") && e.contains("no such data folder"),
        "{e}"
    );

    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = message(scan(&empty, 0.2, 0).unwrap_err());
    assert!(e.contains("empty") && e.contains("no class folders"), "{e}");

    t.touch("noimg/a/readme.txt");
    t.mkdir("noimg/b");
    let e = message(scan(&t.path().join("noimg"), 0.2, 0).unwrap_err());
    assert!(e.contains("noimg") && e.contains("no images"), "{e}");

    t.touch("single/only/x.png");
    t.touch("single/only/y.png");
    let e = message(scan(&t.path().join("single"), 0.2, 0).unwrap_err());
    assert!(e.contains("single") && e.contains("single class"), "{e}");

    t.touch("hole/a/x.png");
    t.mkdir("hole/b");
    t.touch("hole/c/x.png");
    let e = message(scan(&t.path().join("hole"), 0.2, 0).unwrap_err());
    assert!(
        e.contains(&format!("hole{}b", std::path::MAIN_SEPARATOR)) && e.contains("empty class"),
        "{e}"
    );

    t.touch("flat/a/x.png");
    t.touch("flat/b/x.png");
    for bad in [0.0, 1.0, -0.5, 1.5, f32::NAN] {
        let e = scan(&t.path().join("flat"), bad, 0).unwrap_err();
        assert!(
            matches!(&e, Error::Config { name, .. } if name == "--val-split"),
            "{e}"
        );
    }

    t.touch("noval/train/a/x.png");
    t.touch("noval/train/b/x.png");
    let e = message(scan(&t.path().join("noval"), 0.2, 0).unwrap_err());
    assert!(e.contains("val") && e.contains("missing"), "{e}");

    t.touch("mismatch/train/a/x.png");
    t.touch("mismatch/train/b/x.png");
    t.touch("mismatch/val/a/x.png");
    t.touch("mismatch/val/c/x.png");
    let e = message(scan(&t.path().join("mismatch"), 0.2, 0).unwrap_err());
    assert!(
        e.contains(&format!("val{}c", std::path::MAIN_SEPARATOR)),
        "{e}"
    );

    t.touch("emptyval/train/a/x.png");
    t.touch("emptyval/train/b/x.png");
    t.touch("emptyval/val/a/x.png");
    t.mkdir("emptyval/val/b");
    let e = message(scan(&t.path().join("emptyval"), 0.2, 0).unwrap_err());
    assert!(e.contains("empty class"), "{e}");

    let file = t.touch("file.png");
    let e = message(scan(&file, 0.2, 0).unwrap_err());
    assert!(e.contains("not a folder"), "{e}");
}

// ---- augmentation ----

#[test]
fn identity_settings_change_nothing() {
    let img = noise(37, 23, 1);
    assert_eq!(affine(&img, 0.0, 1.0, 0.0, 0.0), img);
    assert_eq!(brightness(&img, 1.0), img);
    assert_eq!(AugmentParams::identity().apply(&img), img);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(Augment::none().apply(&img, &mut rng), img);
    // Each op alone, at its identity value, through the same path as training.
    let one = |f: fn(&mut AugmentParams)| {
        let mut p = AugmentParams::identity();
        f(&mut p);
        p
    };
    assert_eq!(one(|p| p.flip = false).apply(&img), img);
    assert_eq!(one(|p| p.tx = 0.0).apply(&img), img);
    assert_eq!(one(|p| p.angle_deg = 0.0).apply(&img), img);
    assert_eq!(one(|p| p.scale = 1.0).apply(&img), img);
    assert_eq!(one(|p| p.brightness = 1.0).apply(&img), img);
    // A full turn is the identity too.
    assert_eq!(affine(&img, 360.0, 1.0, 0.0, 0.0), img);
}

#[test]
fn flip_mirrors_and_twice_is_identity() {
    let img = noise(8, 5, 2);
    let f = flip_horizontal(&img);
    assert_ne!(f, img);
    for (x, y, p) in img.enumerate_pixels() {
        assert_eq!(f.get_pixel(7 - x, y), p);
    }
    assert_eq!(flip_horizontal(&f), img);
}

fn dot(w: u32, h: u32, x: u32, y: u32) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    img.put_pixel(x, y, Rgb([200, 100, 50]));
    img
}

fn only_lit(img: &RgbImage) -> Vec<(u32, u32, [u8; 3])> {
    img.enumerate_pixels()
        .filter(|(_, _, p)| p.0 != [0, 0, 0])
        .map(|(x, y, p)| (x, y, p.0))
        .collect()
}

#[test]
fn rotation_moves_pixels_counter_clockwise_about_the_centre() {
    // 5×5: the centre is pixel (2, 2). A pixel right of it goes to the top at +90°.
    let img = dot(5, 5, 4, 2);
    assert_eq!(
        only_lit(&affine(&img, 90.0, 1.0, 0.0, 0.0)),
        [(2, 0, [200, 100, 50])]
    );
    assert_eq!(
        only_lit(&affine(&img, -90.0, 1.0, 0.0, 0.0)),
        [(2, 4, [200, 100, 50])]
    );
    assert_eq!(
        only_lit(&affine(&img, 180.0, 1.0, 0.0, 0.0)),
        [(0, 2, [200, 100, 50])]
    );
    // Even sides: the centre is a pixel corner; (5, 1) of 8×6 has centre offset (1.5, −1.5)
    // and goes to offset (−1.5, −1.5), pixel (2, 1).
    let img = dot(8, 6, 5, 1);
    assert_eq!(
        only_lit(&affine(&img, 90.0, 1.0, 0.0, 0.0)),
        [(2, 1, [200, 100, 50])]
    );
    // A 15° turn: a dot 10 px right of the centre of 41×41 lands near
    // (20 + 10·cos 15°, 20 − 10·sin 15°) = (29.66, 17.41), spread bilinearly.
    let img = dot(41, 41, 30, 20);
    let out = affine(&img, 15.0, 1.0, 0.0, 0.0);
    let lit = only_lit(&out);
    let brightest = lit.iter().max_by_key(|(_, _, p)| p[0]).unwrap();
    assert_eq!((brightest.0, brightest.1), (30, 17));
    assert!(lit
        .iter()
        .all(|(x, y, _)| (29..=30).contains(x) && (17..=18).contains(y)));
}

#[test]
fn translation_and_scale() {
    let img = dot(9, 7, 4, 3);
    assert_eq!(
        only_lit(&affine(&img, 0.0, 1.0, 3.0, -2.0)),
        [(7, 1, [200, 100, 50])]
    );
    // Shifted out of the frame: black.
    assert!(only_lit(&affine(&img, 0.0, 1.0, 9.0, 0.0)).is_empty());
    // Scale 2 about the centre (4.5, 3.5): pixel (6, 3) (offset 2) goes to offset 4, pixel 8.
    let img = dot(9, 7, 6, 3);
    let out = affine(&img, 0.0, 2.0, 0.0, 0.0);
    let brightest = only_lit(&out)
        .into_iter()
        .max_by_key(|(_, _, p)| p[0])
        .unwrap();
    assert_eq!((brightest.0, brightest.1), (8, 3));
}

#[test]
fn brightness_scales_and_clamps() {
    let mut img = RgbImage::new(2, 1);
    img.put_pixel(0, 0, Rgb([100, 250, 3]));
    img.put_pixel(1, 0, Rgb([0, 10, 255]));
    let up = brightness(&img, 1.2);
    assert_eq!(up.get_pixel(0, 0).0, [120, 255, 4]);
    assert_eq!(up.get_pixel(1, 0).0, [0, 12, 255]);
    let down = brightness(&img, 0.5);
    assert_eq!(down.get_pixel(0, 0).0, [50, 125, 2]);
    assert_eq!(down.get_pixel(1, 0).0, [0, 5, 128]);
}

#[test]
fn parse_augment_lists() {
    assert_eq!(Augment::parse("none").unwrap(), Augment::none());
    assert_eq!(
        Augment::parse("flip,translate,rotate,scale,brightness").unwrap(),
        Augment::all()
    );
    assert_eq!(Augment::default(), Augment::all());
    let some = Augment::parse(" rotate , flip ").unwrap();
    assert!(some.flip && some.rotate && !some.translate && !some.scale && !some.brightness);
    assert_eq!(some.to_string(), "flip,rotate");
    assert_eq!(
        Augment::all().to_string(),
        "flip,translate,rotate,scale,brightness"
    );
    assert_eq!(Augment::none().to_string(), "none");
    assert_eq!("scale".parse::<Augment>().unwrap().to_string(), "scale");
    for bad in ["blur", "flip,,rotate", "", "flip,none"] {
        let e = Augment::parse(bad).unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(&e, Error::Config { name, .. } if name == "--augment"),
            "{m}"
        );
        assert!(
            m.contains("flip, translate, rotate, scale, brightness"),
            "{m}"
        );
    }
}

#[test]
fn cropped_augmentation_equals_augment_then_crop() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (w, h, size) in [
        (41, 32, 28),
        (32, 45, 28),
        (32, 32, 28),
        (20, 25, 28),
        (33, 40, 33),
    ] {
        let img = noise(w, h, (w + h) as u64);
        for _ in 0..20 {
            let p = Augment::all().sample(w, h, &mut rng);
            let want = tl::data::transform::center_crop(&p.apply(&img), size);
            assert_eq!(p.apply_crop(&img, size), want, "{w}×{h} → {size}, {p:?}");
        }
        let identity = AugmentParams::identity();
        let want = tl::data::transform::center_crop(&img, size);
        assert_eq!(identity.apply_crop(&img, size), want);
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        let full = Augment::all().apply(&img, &mut a);
        let crop = Augment::all().apply_crop(&img, size, &mut b);
        assert_eq!(crop, tl::data::transform::center_crop(&full, size));
    }
}

#[test]
fn drawn_parameters_stay_in_range() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (w, h) = (300, 256);
    let mut flips = 0;
    for _ in 0..2000 {
        let p = Augment::all().sample(w, h, &mut rng);
        flips += p.flip as usize;
        assert!(p.tx.abs() <= 30.0 && p.tx.fract() == 0.0, "{p:?}");
        assert!(p.ty.abs() <= 26.0 && p.ty.fract() == 0.0, "{p:?}");
        assert!(p.angle_deg.abs() <= 15.0, "{p:?}");
        assert!((0.9..=1.1).contains(&p.scale), "{p:?}");
        assert!((0.8..=1.2).contains(&p.brightness), "{p:?}");
    }
    assert!((900..1100).contains(&flips), "{flips}");
    // Disabled ops are at identity, and enabling one op leaves the others' draws as they were.
    let flip_only = Augment::parse("flip").unwrap();
    let a = flip_only.sample(w, h, &mut ChaCha8Rng::seed_from_u64(9));
    let b = Augment::all().sample(w, h, &mut ChaCha8Rng::seed_from_u64(9));
    assert_eq!(
        a,
        AugmentParams {
            flip: b.flip,
            ..AugmentParams::identity()
        }
    );
}

// ---- the input pipeline ----

/// A labelled set of PNGs of assorted sizes, plus an unreadable text file and a truncated JPEG.
fn image_set(t: &TempDir) -> Vec<Sample> {
    let sizes = [
        (40, 30),
        (30, 45),
        (37, 37),
        (32, 50),
        (64, 32),
        (33, 33),
        (45, 40),
    ];
    let mut samples = Vec::new();
    for (i, (w, h)) in sizes.into_iter().enumerate() {
        let label = i % 3;
        samples.push(Sample {
            path: t.image(&format!("c{label}/{i}.png"), w, h, i as u64),
            label,
        });
    }
    let text = t.path().join("c0/text.jpg");
    std::fs::write(&text, "not an image\n").unwrap();
    let jpeg = t.image("c1/full.jpg", 40, 40, 99);
    let bytes = std::fs::read(&jpeg).unwrap();
    let truncated = t.path().join("c1/truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    samples.insert(
        2,
        Sample {
            path: text,
            label: 0,
        },
    );
    samples.insert(
        5,
        Sample {
            path: truncated,
            label: 1,
        },
    );
    samples
}

#[test]
fn load_set_decodes_once_and_reports_unreadable_files() {
    let t = TempDir::new("load");
    let samples = image_set(&t);
    let pre = Preprocess::with_size(28);
    assert_eq!((pre.resize, pre.crop), (32, 28));
    let calls = AtomicUsize::new(0);
    let last = AtomicUsize::new(0);
    let set = load_set(&samples, pre, &|done| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(done > last.swap(done, Ordering::SeqCst));
    });
    assert_eq!(calls.load(Ordering::SeqCst), samples.len());
    assert_eq!(last.load(Ordering::SeqCst), samples.len());

    let skipped: Vec<_> = set.skipped.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(skipped, [samples[2].path.clone(), samples[5].path.clone()]);
    assert!(set.skipped.iter().all(|(_, m)| !m.is_empty()));
    let kept: Vec<_> = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2 && *i != 5)
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(set.len(), kept.len());
    assert_eq!(
        set.paths,
        kept.iter().map(|s| s.path.clone()).collect::<Vec<_>>()
    );
    assert_eq!(set.labels, kept.iter().map(|s| s.label).collect::<Vec<_>>());
    assert_eq!(set.class_counts(3), [3, 2, 2]);
    for (img, s) in set.images.iter().zip(&kept) {
        assert_eq!(img.width().min(img.height()), 32);
        assert_eq!(*img, resize_shorter(&decode(&s.path).unwrap(), 32));
    }
}

#[test]
fn truncated_files_are_rejected_and_trailing_bytes_tolerated() {
    let t = TempDir::new("truncated");
    let jpeg = t.image("a.jpg", 48, 40, 3);
    let png = t.image("b.png", 48, 40, 4);
    for p in [&jpeg, &png] {
        assert_eq!(decode(p).unwrap(), image::open(p).unwrap().to_rgb8());
    }
    let bytes = std::fs::read(&jpeg).unwrap();
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"\xFF\xD8 trailing bytes after the end marker");
    let p = t.path().join("trailing.jpg");
    std::fs::write(&p, &trailing).unwrap();
    assert_eq!(decode(&p).unwrap(), decode(&jpeg).unwrap());
    for cut in [bytes.len() / 2, bytes.len() - 2, 300] {
        let p = t.path().join(format!("cut{cut}.jpg"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = decode(&p).unwrap_err().to_string();
        assert!(
            e.contains(&format!("cut{cut}.jpg")) && e.contains("truncated"),
            "{e}"
        );
    }
    let bytes = std::fs::read(&png).unwrap();
    let p = t.path().join("cut.png");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(decode(&p).is_err());
}

#[test]
fn resize_shorter_then_crop_is_the_eval_transform() {
    let pre = Preprocess::with_size(28);
    for (w, h) in [(40, 30), (30, 45), (32, 32), (32, 90), (20, 20), (100, 31)] {
        let img = noise(w, h, (w * h) as u64);
        assert_eq!(
            tl::data::transform::center_crop(&resize_shorter(&img, pre.resize), pre.crop),
            pre.resize_crop(&img),
            "{w}×{h}"
        );
    }
}

#[test]
fn plain_batches_equal_the_eval_transform() {
    let t = TempDir::new("plain");
    let samples = image_set(&t);
    let pre = Preprocess::with_size(28);
    let set = Arc::new(load_set(&samples, pre, &|_| {}));
    let expected: Vec<_> = set
        .paths
        .iter()
        .map(|p| pre.apply(&decode(p).unwrap()))
        .collect();
    let got: Vec<_> = batches(set.clone(), BatchOptions::eval(3, pre)).collect();
    assert_eq!(
        got.iter()
            .map(|(x, _)| x.shape().to_vec())
            .collect::<Vec<_>>(),
        [vec![3, 3, 28, 28], vec![3, 3, 28, 28], vec![1, 3, 28, 28]]
    );
    let views: Vec<_> = got.iter().map(|(x, _)| x.view()).collect();
    assert_eq!(concatenate(Axis(0), &views).unwrap(), stack(&expected));
    let labels: Vec<usize> = got.iter().flat_map(|(_, l)| l.clone()).collect();
    assert_eq!(labels, set.labels);

    // Training options with every op off and no shuffling are the same.
    let opts = BatchOptions {
        batch_size: 7,
        shuffle: false,
        seed: 42,
        epoch: 3,
        augment: Augment::none(),
        pre,
    };
    let (x, l) = batches(set.clone(), opts).next().unwrap();
    assert_eq!(x, stack(&expected));
    assert_eq!(l, set.labels);
}

fn epoch(
    set: &Arc<Loaded>,
    seed: u64,
    epoch: usize,
    batch_size: usize,
) -> (Array4<f32>, Vec<usize>) {
    let opts = BatchOptions {
        batch_size,
        shuffle: true,
        seed,
        epoch,
        augment: Augment::all(),
        pre: Preprocess::with_size(28),
    };
    let all: Vec<_> = batches(set.clone(), opts).collect();
    let views: Vec<_> = all.iter().map(|(x, _)| x.view()).collect();
    (
        concatenate(Axis(0), &views).unwrap(),
        all.iter().flat_map(|(_, l)| l.clone()).collect(),
    )
}

#[test]
fn augmented_batches_follow_the_seed() {
    let t = TempDir::new("seeded");
    let samples = image_set(&t);
    let set = Arc::new(load_set(&samples, Preprocess::with_size(28), &|_| {}));
    let a = epoch(&set, 1, 0, 3);
    assert_eq!(epoch(&set, 1, 0, 3), a, "same seed, same batches");
    // Independent of the batch size (and so of how work is split between threads).
    assert_eq!(epoch(&set, 1, 0, 2), a);
    assert_eq!(epoch(&set, 1, 0, 16), a);
    let b = epoch(&set, 2, 0, 3);
    assert_ne!(b.0, a.0, "another seed, other batches");
    let c = epoch(&set, 1, 1, 3);
    assert_ne!(c.0, a.0, "another epoch, other batches");

    // The batch is the augmented images, in the shuffled order.
    let order = epoch_order(set.len(), true, 1, 0);
    assert_ne!(order, (0..set.len()).collect::<Vec<_>>());
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..set.len()).collect::<Vec<_>>());
    assert_eq!(
        a.1,
        order.iter().map(|&i| set.labels[i]).collect::<Vec<_>>()
    );
    let opts = BatchOptions {
        batch_size: 3,
        shuffle: true,
        seed: 1,
        epoch: 0,
        augment: Augment::all(),
        pre: Preprocess::with_size(28),
    };
    let (x, _) = make_batch(&set, &order[..1], &opts);
    let mut rng = tl::data::loader::sample_rng(1, 0, order[0]);
    let aug = Augment::all().apply(&set.images[order[0]], &mut rng);
    let pre = Preprocess::with_size(28);
    let want = pre.normalize(&tl::data::transform::center_crop(&aug, 28));
    assert_eq!(x.index_axis(Axis(0), 0), want);
    // ...and differs from the plain image.
    assert_ne!(want, pre.apply(&set.images[order[0]]));
}

#[test]
fn shuffling_is_seeded_per_epoch() {
    let o = |seed, ep| epoch_order(50, true, seed, ep);
    assert_eq!(o(3, 0), o(3, 0));
    assert_ne!(o(3, 0), o(3, 1));
    assert_ne!(o(3, 0), o(4, 0));
    assert_eq!(epoch_order(5, false, 3, 7), [0, 1, 2, 3, 4]);
}

#[test]
fn batches_len_and_early_drop() {
    let t = TempDir::new("drop");
    let samples = image_set(&t);
    let set = Arc::new(load_set(&samples, Preprocess::with_size(28), &|_| {}));
    let mut it = batches(
        set.clone(),
        BatchOptions::eval(2, Preprocess::with_size(28)),
    );
    assert_eq!(it.len(), 4);
    it.next().unwrap();
    assert_eq!(it.len(), 3);
    drop(it); // the producer thread stops; no hang.
    let empty = Arc::new(Loaded::default());
    assert_eq!(
        batches(empty, BatchOptions::eval(2, Preprocess::with_size(28))).count(),
        0
    );
}
