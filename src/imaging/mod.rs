//! Pure image operations on the node's canonical scan image: 16-bit grayscale in
//! transmission polarity (air near 65535, dense goods dark). Window/level, resampling,
//! PNG encoding. No I/O, no state: everything here is a function of its inputs.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageBuffer, Luma};

pub type Gray16 = ImageBuffer<Luma<u16>, Vec<u16>>;
pub type Gray8 = ImageBuffer<Luma<u8>, Vec<u8>>;

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
    #[error("image is {0}x{1} pixels; expected {2} values")]
    Shape(u32, u32, usize),
}

/// Builds an image from a row-major buffer, checking its length.
pub fn gray16(width: u32, height: u32, pixels: Vec<u16>) -> Result<Gray16, ImagingError> {
    let n = pixels.len();
    ImageBuffer::from_raw(width, height, pixels).ok_or(ImagingError::Shape(width, height, n))
}

/// A display window over the 16-bit range: `center` ± `width`/2 maps to black..white.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f32,
    pub width: f32,
    pub invert: bool,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            center: 32768.0,
            width: 65536.0,
            invert: false,
        }
    }
}

/// Applies `w` through a 64k-entry lookup table (one pass, no float per pixel).
pub fn window_level(img: &Gray16, w: Window) -> Gray8 {
    let lo = w.center - w.width / 2.0;
    let scale = 255.0 / w.width.max(1.0);
    let lut: Vec<u8> = (0..=u16::MAX)
        .map(|v| {
            let x = ((f32::from(v) - lo) * scale).clamp(0.0, 255.0) as u8;
            if w.invert {
                255 - x
            } else {
                x
            }
        })
        .collect();
    let px: Vec<u8> = img.as_raw().iter().map(|&v| lut[usize::from(v)]).collect();
    ImageBuffer::from_raw(img.width(), img.height(), px).expect("same shape")
}

/// Downscales so the width is at most `max_width` (box-filtered, aspect kept). Returns a
/// clone when the image is already small enough.
pub fn fit_width(img: &Gray16, max_width: u32) -> Gray16 {
    if img.width() <= max_width || max_width == 0 {
        return img.clone();
    }
    let h =
        ((u64::from(img.height()) * u64::from(max_width)) / u64::from(img.width())).max(1) as u32;
    image::imageops::thumbnail(img, max_width, h)
}

/// Lossless 16-bit PNG, fast compression: the stored canonical image.
pub fn encode_png16(img: &Gray16) -> Result<Vec<u8>, ImagingError> {
    let mut out = Vec::with_capacity(img.as_raw().len());
    let enc = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    img.write_with_encoder(enc)?;
    Ok(out)
}

pub fn encode_png8(img: &Gray8) -> Result<Vec<u8>, ImagingError> {
    let mut out = Vec::new();
    let enc = PngEncoder::new_with_quality(
        Cursor::new(&mut out),
        CompressionType::Fast,
        FilterType::Adaptive,
    );
    img.write_with_encoder(enc)?;
    Ok(out)
}

/// Decodes a PNG written by [`encode_png16`].
pub fn decode_png16(bytes: &[u8]) -> Result<Gray16, ImagingError> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)?;
    Ok(img.into_luma16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png16_round_trip_is_lossless() {
        let img = gray16(3, 2, vec![0, 1, 255, 256, 65534, 65535]).unwrap();
        let back = decode_png16(&encode_png16(&img).unwrap()).unwrap();
        assert_eq!(back.as_raw(), img.as_raw());
    }

    #[test]
    fn window_maps_range_and_inverts() {
        let img = gray16(4, 1, vec![0, 1000, 2000, 65535]).unwrap();
        let w = Window {
            center: 1000.0,
            width: 2000.0,
            invert: false,
        };
        assert_eq!(window_level(&img, w).as_raw(), &vec![0, 127, 255, 255]);
        let w = Window { invert: true, ..w };
        assert_eq!(window_level(&img, w).as_raw(), &vec![255, 128, 0, 0]);
    }

    #[test]
    fn fit_width_keeps_aspect() {
        let img = gray16(400, 100, vec![7; 40_000]).unwrap();
        let s = fit_width(&img, 100);
        assert_eq!((s.width(), s.height()), (100, 25));
        assert!(s.as_raw().iter().all(|&v| v == 7));
        assert_eq!(fit_width(&img, 1000).width(), 400);
    }
}
