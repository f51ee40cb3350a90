//! Decoding and the torchvision transforms `frostgrad train` uses:
//!
//! - evaluation (and training without `--augment`): `Resize(size)` of the
//!   shorter side, `CenterCrop(size)`, `ToTensor()`, `Normalize(ImageNet)`;
//! - `--augment`: `RandomResizedCrop(size)` (scale 0.08-1, ratio 3/4-4/3),
//!   `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(ImageNet)`.
//!
//! Resizing uses the `image` crate's triangle (bilinear) filter, which
//! widens with the scale factor when shrinking, like torchvision's
//! antialiased bilinear; the pixels are close to PIL's, not identical. An
//! image already of the target size is not resampled at all, so the
//! PyTorch parity test compares exact inputs.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::Rng;

use crate::error::{Error, Result};

/// torchvision's ImageNet normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Reads and decodes `path` to 8-bit RGB (grey and alpha images are
/// converted, as PIL's `convert("RGB")` does).
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let image = image::load_from_memory(&bytes).map_err(|e| Error::Image {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    Ok(image.to_rgb8())
}

/// `Resize(size)` then `CenterCrop(size)`.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let resized = if w.min(h) == size {
        img.clone()
    } else if w <= h {
        // torchvision: the long side is int(size * long / short).
        let nh = ((size as u64 * h as u64) / w as u64).max(1) as u32;
        imageops::resize(img, size, nh, FilterType::Triangle)
    } else {
        let nw = ((size as u64 * w as u64) / h as u64).max(1) as u32;
        imageops::resize(img, nw, size, FilterType::Triangle)
    };
    let (w, h) = resized.dimensions();
    // torchvision's CenterCrop: int(round((h - size) / 2)).
    let top = ((h - size) as f64 / 2.0).round() as u32;
    let left = ((w - size) as f64 / 2.0).round() as u32;
    imageops::crop_imm(&resized, left, top, size, size).to_image()
}

/// `RandomResizedCrop(size)` followed by `RandomHorizontalFlip()`, with
/// torchvision's parameter sampling (ten tries, then a centre crop).
pub fn random_resized_crop_flip<R: Rng>(img: &RgbImage, size: u32, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = w as f64 * h as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..1.0);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            chosen = Some((left, top, cw, ch));
            break;
        }
    }
    let (left, top, cw, ch) = chosen.unwrap_or_else(|| {
        let ratio = w as f64 / h as f64;
        let (cw, ch) = if ratio < 3.0 / 4.0 {
            (w, ((w as f64) / (3.0 / 4.0)).round().min(h as f64) as u32)
        } else if ratio > 4.0 / 3.0 {
            (((h as f64) * (4.0 / 3.0)).round().min(w as f64) as u32, h)
        } else {
            (w, h)
        };
        ((w - cw) / 2, (h - ch) / 2, cw.max(1), ch.max(1))
    });
    let crop = imageops::crop_imm(img, left, top, cw, ch).to_image();
    let mut out = if (cw, ch) == (size, size) {
        crop
    } else {
        imageops::resize(&crop, size, size, FilterType::Triangle)
    };
    if rng.random_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// `ToTensor()` + `Normalize(mean, std)`: CHW f32, computed in the same
/// order and precision as torchvision (`x / 255`, then `(x - m) / s`).
pub fn to_normalized_chw(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let v = px.0[c] as f32 / 255.0;
            out[c * plane + i] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
}

/// Decodes `path` and applies the evaluation transform, or the augmenting
/// one when `augment` holds a random source; writes `3 * size * size`
/// values to `out`.
pub fn load<R: Rng>(
    path: &Path,
    size: u32,
    augment: Option<&mut R>,
    out: &mut [f32],
) -> Result<()> {
    let img = decode(path)?;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Image {
            path: path.display().to_string(),
            msg: format!("empty image ({w}x{h})"),
        });
    }
    let img = match augment {
        Some(rng) => random_resized_crop_flip(&img, size, rng),
        None => resize_center_crop(&img, size),
    };
    to_normalized_chw(&img, out);
    Ok(())
}
