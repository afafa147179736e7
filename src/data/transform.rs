//! Evaluation preprocessing, torchvision's ImageNet transform: decode → RGB (alpha dropped) →
//! resize so the shorter side is `resize` (Pillow's bilinear; untouched when already that size)
//! → centre crop `crop × crop` (offsets rounded half to even, as Python's `round`) → `[0, 1]` →
//! `(x − mean)/std`. Output `[3, crop, crop]` f32.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::{Array3, Array4, Axis};

use super::resize::resize_bilinear;
use crate::error::{Error, Result};
use crate::models::{MEAN, STD};

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// The eval transform's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Shorter side after resizing (256).
    pub resize: u32,
    /// Side of the centre crop (224).
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize: 256,
            crop: 224,
            mean: MEAN,
            std: STD,
        }
    }
}

impl Preprocess {
    /// Crop `size`, resize `size·256/224` (the ImageNet ratio).
    pub fn with_size(size: u32) -> Self {
        Preprocess {
            resize: size * 256 / 224,
            crop: size,
            ..Preprocess::default()
        }
    }

    /// Resizes (shorter side to `resize`) and centre-crops, without normalising.
    pub fn resize_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = (img.width(), img.height());
        let (short, long) = (w.min(h), w.max(h));
        let new_long = (self.resize as u64 * long as u64 / short.max(1) as u64) as u32;
        let (nw, nh) = if w <= h {
            (self.resize, new_long)
        } else {
            (new_long, self.resize)
        };
        if (nw, nh) == (w, h) {
            center_crop(img, self.crop)
        } else {
            center_crop(&resize_bilinear(img, nw, nh), self.crop)
        }
    }

    /// Normalises an RGB image into `[3, H, W]`: `(v/255 − mean)/std`.
    pub fn normalize(&self, img: &RgbImage) -> Array3<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        // Every 8-bit value of each channel, computed once with the formula above.
        let table: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c])
        });
        let plane = h * w;
        let mut out = vec![0.0f32; 3 * plane];
        let (r, gb) = out.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = table[0][p[0] as usize];
            g[i] = table[1][p[1] as usize];
            b[i] = table[2][p[2] as usize];
        }
        Array3::from_shape_vec((3, h, w), out).expect("3 planes of h·w")
    }

    /// The whole transform on a decoded image.
    pub fn apply(&self, img: &RgbImage) -> Array3<f32> {
        self.normalize(&self.resize_crop(img))
    }

    /// Decodes `path` and applies the transform.
    ///
    /// # Errors
    /// [`Error::Image`] naming the file when it cannot be read or decoded.
    pub fn load(&self, path: &Path) -> Result<Array3<f32>> {
        Ok(self.apply(&decode(path)?))
    }
}

/// Centre crop to `size × size` (zero-padded when the image is smaller, as torchvision).
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let offset = |n: u32| ((n as f64 - size as f64) / 2.0).round_ties_even() as i64;
    let (top, left) = (offset(img.height()), offset(img.width()));
    RgbImage::from_fn(size, size, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && (sx as u32) < img.width() && (sy as u32) < img.height() {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// Decodes an image file into 8-bit RGB (alpha dropped, as Pillow's `convert("RGB")`). A JPEG
/// whose data ends before its end-of-image marker is rejected as truncated (the `image` crate's
/// decoder would fill the missing part with grey; Pillow refuses such a file).
///
/// # Errors
/// [`Error::Image`] naming the file: unreadable, undecodable or truncated.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        check_jpeg_complete(&bytes).map_err(|m| err(m.to_string()))?;
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(e.to_string()))?;
    Ok(img.to_rgb8())
}

/// Walks a JPEG's marker segments and entropy-coded scans from SOI and succeeds on reaching EOI
/// (bytes after it are allowed). Length-prefixed segments are skipped whole, so an embedded
/// thumbnail's markers do not count; stray bytes between segments are tolerated as libjpeg does.
fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), &'static str> {
    const TRUNCATED: &str = "truncated JPEG: the data ends before the end-of-image marker";
    let mut pos = 2;
    loop {
        // Next marker: 0xFF (fill bytes allowed) followed by a code other than 0x00 and 0xFF.
        while pos + 1 < b.len() && !(b[pos] == 0xFF && b[pos + 1] != 0x00 && b[pos + 1] != 0xFF) {
            pos += 1;
        }
        if pos + 1 >= b.len() {
            return Err(TRUNCATED);
        }
        let marker = b[pos + 1];
        pos += 2;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if pos + 2 > b.len() {
            return Err(TRUNCATED);
        }
        let len = usize::from(u16::from_be_bytes([b[pos], b[pos + 1]]));
        if len < 2 {
            return Err("corrupt JPEG: a segment length below 2");
        }
        pos += len;
        if pos > b.len() {
            return Err(TRUNCATED);
        }
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (stuffing), a restart marker, a fill
            // 0xFF, or the next real marker.
            loop {
                if pos + 1 >= b.len() {
                    return Err(TRUNCATED);
                }
                if b[pos] == 0xFF && !matches!(b[pos + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                    break;
                }
                pos += 1;
            }
        }
    }
}

/// True when `path` has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Expands files and directories into image files: a directory becomes the image files below it,
/// sorted by path; order of the arguments is kept.
///
/// # Errors
/// [`Error::Io`] for a path that does not exist; [`Error::Data`] for a directory with no images.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(Error::data(
                    input,
                    format!(
                        "no image files ({}) in this directory",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Stacks `[3, H, W]` images into `[N, 3, H, W]`.
///
/// # Panics
/// Panics if the images differ in shape or there are none.
pub fn stack(images: &[Array3<f32>]) -> Array4<f32> {
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    ndarray::stack(Axis(0), &views).expect("images of one shape")
}
