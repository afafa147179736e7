//! A labelled image set drawn from a seed, for the demo and for tests: circles, squares and
//! triangles of random colour, size, position and rotation on textured backgrounds (colour noise
//! plus stripes at a random angle).

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The classes drawn, in label order.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

fn inside(shape: usize, px: f32, py: f32, cx: f32, cy: f32, r: f32, angle: f32) -> bool {
    let (dx, dy) = (px - cx, py - cy);
    let (s, c) = angle.sin_cos();
    let (x, y) = (c * dx + s * dy, -s * dx + c * dy);
    match shape {
        0 => x * x + y * y <= r * r,
        1 => x.abs() <= r * 0.8 && y.abs() <= r * 0.8,
        _ => {
            // Equilateral triangle with circumradius r, apex up, in the rotated frame.
            let (ax, ay) = (0.0, -r);
            let (bx, by) = (-0.866 * r, 0.5 * r);
            let (qx, qy) = (0.866 * r, 0.5 * r);
            let side =
                |x1: f32, y1: f32, x2: f32, y2: f32| (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1);
            let (d1, d2, d3) = (
                side(ax, ay, bx, by),
                side(bx, by, qx, qy),
                side(qx, qy, ax, ay),
            );
            (d1 >= 0.0 && d2 >= 0.0 && d3 >= 0.0) || (d1 <= 0.0 && d2 <= 0.0 && d3 <= 0.0)
        }
    }
}

/// Draws image `index` of class `shape` (an index into [`SHAPES`]) at `size × size`.
pub fn draw(shape: usize, index: usize, size: u32, seed: u64) -> RgbImage {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ ((shape as u64) << 32) ^ index as u64 ^ 0xd3e0_5eed);
    let base: [f32; 3] = [
        rng.random_range(40.0..215.0),
        rng.random_range(40.0..215.0),
        rng.random_range(40.0..215.0),
    ];
    let stripe_angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
    let stripe_period: f32 = rng.random_range(6.0..24.0);
    let stripe_amp: f32 = rng.random_range(10.0..40.0);
    let colour: [f32; 3] = [
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
    ];
    let n = size as f32;
    let r = rng.random_range(0.18..0.32) * n;
    let cx = rng.random_range(r..n - r);
    let cy = rng.random_range(r..n - r);
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (sa, ca) = stripe_angle.sin_cos();
    let mut img = RgbImage::new(size, size);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        let v = if inside(shape, fx + 0.5, fy + 0.5, cx, cy, r, angle) {
            colour
        } else {
            let stripe =
                ((fx * ca + fy * sa) / stripe_period * std::f32::consts::TAU).sin() * stripe_amp;
            let noise: f32 = rng.random_range(-25.0..25.0);
            [
                base[0] + stripe + noise,
                base[1] + stripe + noise,
                base[2] - stripe + noise,
            ]
        };
        *p = Rgb(v.map(|c| c.clamp(0.0, 255.0) as u8));
    }
    img
}

/// Writes `per_class` PNG images of each shape under `dir/<shape>/NNNN.png` (in parallel) and
/// returns their paths, class by class.
///
/// # Errors
/// [`Error::Io`] naming the folder or file that cannot be written.
pub fn write_dataset(dir: &Path, per_class: usize, size: u32, seed: u64) -> Result<Vec<PathBuf>> {
    let mut jobs = Vec::new();
    for (c, name) in SHAPES.iter().enumerate() {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir).map_err(|e| Error::io(&class_dir, e))?;
        for i in 0..per_class {
            jobs.push((c, i, class_dir.join(format!("{i:04}.png"))));
        }
    }
    jobs.par_iter()
        .map(|(c, i, path)| {
            draw(*c, *i, size, seed)
                .save(path)
                .map_err(|e| Error::format(path, format!("cannot write PNG: {e}")))
        })
        .collect::<Result<Vec<()>>>()?;
    Ok(jobs.into_iter().map(|(_, _, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_is_deterministic_and_classes_differ() {
        assert_eq!(draw(0, 3, 64, 1), draw(0, 3, 64, 1));
        assert_ne!(draw(0, 3, 64, 1), draw(0, 3, 64, 2));
        assert_ne!(draw(0, 3, 64, 1), draw(1, 3, 64, 1));
    }
}
