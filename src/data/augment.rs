//! Training-time augmentation on 8-bit RGB images (the image resized so its shorter side is
//! `resize`, before the centre crop), each op drawn from a seeded RNG:
//!
//! - `flip`: mirror left–right with probability 0.5.
//! - `translate`: shift by `tx, ty` whole pixels, `tx = round(U(−0.1, 0.1)·W)`,
//!   `ty = round(U(−0.1, 0.1)·H)` (as torchvision's `RandomAffine(translate=(0.1, 0.1))`).
//! - `rotate`: `angle ~ U(−15°, 15°)`, positive counter-clockwise as seen on screen.
//! - `scale`: `s ~ U(0.9, 1.1)`.
//! - `brightness`: `v ← clamp(round(v·f), 0, 255)`, `f ~ U(0.8, 1.2)`.
//!
//! Translate, rotate and scale are one affine warp about the image centre `c = (W/2, H/2)`:
//! an output point `p` (pixel centres at `x + 0.5`) samples the input at
//! `c + R(−angle)·(p − c − t)/s`, bilinearly, with black outside the image (as `RandomAffine`'s
//! fill). Order: flip, warp, brightness. Every parameter is drawn on every call, enabled or not,
//! so switching one op off leaves the others' draws unchanged.

use std::fmt;

use image::RgbImage;
use rand::Rng;

use super::transform::center_crop;
use crate::error::{Error, Result};

/// The names `--augment` accepts, in the order they are drawn and printed.
pub const AUGMENT_OPS: [&str; 5] = ["flip", "translate", "rotate", "scale", "brightness"];

/// Largest translation, as a fraction of each side.
pub const MAX_TRANSLATE: f64 = 0.1;
/// Largest rotation, degrees either way.
pub const MAX_ROTATE_DEG: f64 = 15.0;
/// Range of the scale factor.
pub const SCALE_RANGE: (f64, f64) = (0.9, 1.1);
/// Range of the brightness factor.
pub const BRIGHTNESS_RANGE: (f32, f32) = (0.8, 1.2);

/// Which augmentation ops are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    pub flip: bool,
    pub translate: bool,
    pub rotate: bool,
    pub scale: bool,
    pub brightness: bool,
}

impl Default for Augment {
    /// Every op on, as `tl finetune` without `--augment`.
    fn default() -> Self {
        Augment::all()
    }
}

impl Augment {
    /// Every op on.
    pub fn all() -> Self {
        Augment {
            flip: true,
            translate: true,
            rotate: true,
            scale: true,
            brightness: true,
        }
    }

    /// Every op off.
    pub fn none() -> Self {
        Augment {
            flip: false,
            translate: false,
            rotate: false,
            scale: false,
            brightness: false,
        }
    }

    /// Parses `--augment`: `none`, or a comma-separated subset of
    /// `flip,translate,rotate,scale,brightness` (any order, spaces around names allowed).
    ///
    /// # Errors
    /// [`Error::Config`] naming `--augment` for an unknown or empty name, listing the valid ones.
    pub fn parse(list: &str) -> Result<Self> {
        if list.trim() == "none" {
            return Ok(Augment::none());
        }
        let mut aug = Augment::none();
        for name in list.split(',').map(str::trim) {
            match name {
                "flip" => aug.flip = true,
                "translate" => aug.translate = true,
                "rotate" => aug.rotate = true,
                "scale" => aug.scale = true,
                "brightness" => aug.brightness = true,
                _ => {
                    return Err(Error::config(
                        "--augment",
                        format!(
                            "unknown augmentation {name:?}; valid: {} (comma-separated), or none",
                            AUGMENT_OPS.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(aug)
    }

    /// True when no op is on.
    pub fn is_none(&self) -> bool {
        *self == Augment::none()
    }

    fn enabled(&self) -> [bool; 5] {
        [
            self.flip,
            self.translate,
            self.rotate,
            self.scale,
            self.brightness,
        ]
    }

    /// Draws the parameters for one image of `width × height` from `rng`. Disabled ops get their
    /// identity values; all six numbers are drawn regardless, always in the same order.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> AugmentParams {
        let flip = rng.random_bool(0.5);
        let tx = (rng.random_range(-MAX_TRANSLATE..=MAX_TRANSLATE) * width as f64).round();
        let ty = (rng.random_range(-MAX_TRANSLATE..=MAX_TRANSLATE) * height as f64).round();
        let angle = rng.random_range(-MAX_ROTATE_DEG..=MAX_ROTATE_DEG);
        let scale = rng.random_range(SCALE_RANGE.0..=SCALE_RANGE.1);
        let brightness = rng.random_range(BRIGHTNESS_RANGE.0..=BRIGHTNESS_RANGE.1);
        AugmentParams {
            flip: self.flip && flip,
            tx: if self.translate { tx } else { 0.0 },
            ty: if self.translate { ty } else { 0.0 },
            angle_deg: if self.rotate { angle } else { 0.0 },
            scale: if self.scale { scale } else { 1.0 },
            brightness: if self.brightness { brightness } else { 1.0 },
        }
    }

    /// Draws parameters from `rng` and applies them (a copy of `img` when every op is off).
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        if self.is_none() {
            return img.clone();
        }
        self.sample(img.width(), img.height(), rng).apply(img)
    }

    /// `center_crop(&self.apply(img, rng), size)` with the same draws, computing only the crop.
    pub fn apply_crop(&self, img: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
        if self.is_none() {
            return center_crop(img, size);
        }
        self.sample(img.width(), img.height(), rng)
            .apply_crop(img, size)
    }
}

impl fmt::Display for Augment {
    /// The `--augment` spelling: `flip,translate,...` or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        let names: Vec<&str> = AUGMENT_OPS
            .iter()
            .zip(self.enabled())
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for Augment {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Augment::parse(s)
    }
}

/// One draw of augmentation parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentParams {
    pub flip: bool,
    /// Shift right, pixels.
    pub tx: f64,
    /// Shift down, pixels.
    pub ty: f64,
    /// Counter-clockwise as seen on screen, degrees.
    pub angle_deg: f64,
    pub scale: f64,
    pub brightness: f32,
}

impl AugmentParams {
    /// The parameters that change nothing.
    pub fn identity() -> Self {
        AugmentParams {
            flip: false,
            tx: 0.0,
            ty: 0.0,
            angle_deg: 0.0,
            scale: 1.0,
            brightness: 1.0,
        }
    }

    /// Flip, warp, brightness; ops at their identity values are skipped.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        self.apply_cropped(img, None)
    }

    /// `center_crop(&self.apply(img), size)`, computing only the pixels of the crop.
    pub fn apply_crop(&self, img: &RgbImage, size: u32) -> RgbImage {
        self.apply_cropped(img, Some(size))
    }

    fn apply_cropped(&self, img: &RgbImage, crop: Option<u32>) -> RgbImage {
        let flipped;
        let src = if self.flip {
            flipped = flip_horizontal(img);
            &flipped
        } else {
            img
        };
        let warp = self.angle_deg != 0.0 || self.scale != 1.0 || self.tx != 0.0 || self.ty != 0.0;
        let mut out = match (warp, crop) {
            (false, None) => src.clone(),
            (false, Some(size)) => center_crop(src, size),
            (true, None) => affine(src, self.angle_deg, self.scale, self.tx, self.ty),
            (true, Some(size)) => {
                let offset = |n: u32| ((n as f64 - size as f64) / 2.0).round_ties_even() as i64;
                let window = (offset(src.width()), offset(src.height()), size, size);
                affine_window(src, self.angle_deg, self.scale, self.tx, self.ty, window)
            }
        };
        if self.brightness != 1.0 {
            brightness_in_place(&mut out, self.brightness);
        }
        out
    }
}

/// Mirrors `img` left–right.
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// Rotates by `angle_deg` (counter-clockwise on screen) and scales by `scale` about the image
/// centre, then shifts by `(tx, ty)` pixels (right, down); bilinear sampling, black outside.
/// Output has the input's size. Identity settings (`0, 1, 0, 0`) return the image unchanged.
///
/// # Panics
/// Panics if `scale` is not positive.
pub fn affine(img: &RgbImage, angle_deg: f64, scale: f64, tx: f64, ty: f64) -> RgbImage {
    let window = (0, 0, img.width(), img.height());
    affine_window(img, angle_deg, scale, tx, ty, window)
}

/// The `(left, top, width, height)` window of [`affine`]'s output, computed alone; window pixels
/// outside the image are black, as [`center_crop`] pads.
fn affine_window(
    img: &RgbImage,
    angle_deg: f64,
    scale: f64,
    tx: f64,
    ty: f64,
    (left, top, out_w, out_h): (i64, i64, u32, u32),
) -> RgbImage {
    assert!(scale > 0.0, "affine scale must be positive, got {scale}");
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    let (a, b) = (cos / scale, -sin / scale);
    let (c, d) = (sin / scale, cos / scale);
    let src = img.as_raw();
    let at = |x: i64, y: i64| (y * w + x) as usize * 3;
    let pixel = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= w || y >= h {
            [0.0; 3]
        } else {
            let i = at(x, y);
            [src[i] as f64, src[i + 1] as f64, src[i + 2] as f64]
        }
    };
    let mut out = RgbImage::new(out_w, out_h);
    for (oy, row) in out.chunks_exact_mut(out_w as usize * 3).enumerate() {
        let y = top + oy as i64;
        if y < 0 || y >= h {
            continue;
        }
        let dy = y as f64 + 0.5 - cy - ty;
        for (ox, px) in row.chunks_exact_mut(3).enumerate() {
            let x = left + ox as i64;
            if x < 0 || x >= w {
                continue;
            }
            let dx = x as f64 + 0.5 - cx - tx;
            let u = cx + a * dx + b * dy - 0.5;
            let v = cy + c * dx + d * dy - 0.5;
            let (x0, y0) = (floor(u), floor(v));
            let (fx, fy) = (u - x0 as f64, v - y0 as f64);
            let [p00, p10, p01, p11] = if x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h {
                let (i, j) = (at(x0, y0), at(x0, y0 + 1));
                let rgb = |k: usize| [src[k] as f64, src[k + 1] as f64, src[k + 2] as f64];
                [rgb(i), rgb(i + 3), rgb(j), rgb(j + 3)]
            } else {
                [
                    pixel(x0, y0),
                    pixel(x0 + 1, y0),
                    pixel(x0, y0 + 1),
                    pixel(x0 + 1, y0 + 1),
                ]
            };
            for k in 0..3 {
                let upper = p00[k] * (1.0 - fx) + p10[k] * fx;
                let lower = p01[k] * (1.0 - fx) + p11[k] * fx;
                // Non-negative and at most 255: adding 0.5 and truncating rounds to nearest.
                px[k] = (upper * (1.0 - fy) + lower * fy + 0.5) as u8;
            }
        }
    }
    out
}

/// Multiplies every channel by `factor`, rounding to nearest and clamping to `[0, 255]`.
pub fn brightness(img: &RgbImage, factor: f32) -> RgbImage {
    let mut out = img.clone();
    brightness_in_place(&mut out, factor);
    out
}

/// `⌊v⌋` for the coordinates of a warp (avoids a libm call on targets without SSE4.1).
fn floor(v: f64) -> i64 {
    let t = v as i64;
    if (t as f64) > v {
        t - 1
    } else {
        t
    }
}

fn brightness_in_place(img: &mut RgbImage, factor: f32) {
    for v in img.iter_mut() {
        // `as u8` saturates, clamping to [0, 255].
        *v = (*v as f32 * factor + 0.5) as u8;
    }
}
