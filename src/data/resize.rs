//! Bilinear, antialiased resizing of 8-bit RGB images, reproducing Pillow's `Image.resize(...,
//! BILINEAR)` bit for bit (what torchvision's `Resize` calls on PIL images).
//!
//! Separable: a horizontal pass, then a vertical pass, each a weighted sum over the input
//! positions within `support = max(1, in/out)` of the output centre `(o + 0.5)·in/out`, with the
//! triangle filter `max(0, 1 − |d|/scale)`, weights normalised, then fixed-point (22 bits) with
//! rounding and clipping to `[0, 255]` after each pass, as Pillow's `Resample.c`.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let d = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = (1.0 - d.abs()).max(0.0);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes `img` to `width × height` as Pillow's bilinear filter does.
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let src = img.as_raw();
    let horizontal = if ow != w {
        let c = coeffs(w, ow);
        let mut out = vec![0u8; ow * h * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
                for ch in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kw) in k.iter().enumerate() {
                        ss += row[(x + xmin) * 3 + ch] as i64 * kw as i64;
                    }
                    out[(y * ow + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    let vertical = if oh != h {
        let c = coeffs(h, oh);
        let mut out = vec![0u8; ow * oh * 3];
        for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
            for i in 0..ow * 3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &kw) in k.iter().enumerate() {
                    ss += horizontal[(y + ymin) * ow * 3 + i] as i64 * kw as i64;
                }
                out[yy * ow * 3 + i] = clip8(ss);
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(width, height, vertical).expect("buffer size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        assert_eq!(resize_bilinear(&img, 5, 4), img);
        let flat = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 99]));
        let small = resize_bilinear(&flat, 11, 29);
        assert!(small.pixels().all(|p| p.0 == [200, 13, 99]));
    }
}
