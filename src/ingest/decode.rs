//! Image decoders for scan drops: 8/16-bit grayscale TIFF, PNG and PGM, and single-frame
//! grayscale DICOM / DICOS (DX, CR and DX-like objects). Every format comes out the same way:
//! row-major `u16` pixels stretched over the full 0..=65535 range, in display polarity
//! (a higher value is brighter, as the file's own photometric interpretation intends).
//! This module owns turning untrusted bytes from a scanner or an HTTP upload into pixels, and
//! it is the first thing that touches those bytes, so it must never panic (a panic that escapes
//! a third-party decoder is caught and returned as an error) and must never allocate memory
//! in proportion to what a file merely *declares* before checking that declaration against
//! [`DecodeLimits`]: file size first, then the header's width and height, then only as much
//! memory as an image of that size needs. A corrupt, truncated or hostile file is an `Err`
//! with a message an operator can act on, never an abort and never an out-of-memory kill.
//!
//! Pixel mapping, per format:
//! - 8-bit TIFF/PNG/PGM: `v * 257` (0 -> 0, 255 -> 65535); 16-bit: unchanged.
//! - PGM with any other maxval `M`: `round(v * 65535 / M)`; a sample above `M` is an error.
//! - DICOM: a stored value `s` (BitsStored wide, signed when PixelRepresentation = 1) spans
//!   `[s_min, s_max]`; the modality rescale `v = slope * s + intercept` maps that onto
//!   `[v_min, v_max]` ([`DicomInfo::rescaled_range`]), and `n = round(65535 * (v - v_min) /
//!   (v_max - v_min))`. For the linear rescale this is `round(65535 * (s - s_min) / (s_max -
//!   s_min))`, reversed when the slope is negative. MONOCHROME1 then stores `65535 - n`.
//! - TIFF WhiteIsZero is inverted by the TIFF decoder itself, so it arrives in display polarity.
//!
//! Refused rather than approximated: colour images of any format (gray + alpha keeps the gray),
//! multi-frame DICOM (no "frame 0" guess: a cargo scan is one 2D image, several frames mean
//! some other kind of object), DICOM without a Part 10 header, and DICOM transfer syntaxes
//! other than uncompressed, RLE and JPEG baseline/extended/lossless (JPEG 2000 and JPEG-LS
//! have no decoder compiled in; deflated data sets would inflate out of reach of the limits).

use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::tiff::TiffDecoder;
use image::error::UnsupportedErrorKind;
use image::{ColorType, ExtendedColorType, ImageDecoder, ImageError};

/// What a deployment is willing to decode. Checked before any pixel memory is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_file_bytes: u64,
}

/// The container format of a scan image, as named by the drop's file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceFormat {
    Tiff,
    Png,
    Pgm,
    Dicom,
}

impl SourceFormat {
    /// Lower-case name for logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Tiff => "tiff",
            SourceFormat::Png => "png",
            SourceFormat::Pgm => "pgm",
            SourceFormat::Dicom => "dicom",
        }
    }

    /// The name operators know the format by, for error messages.
    fn label(self) -> &'static str {
        match self {
            SourceFormat::Tiff => "TIFF",
            SourceFormat::Png => "PNG",
            SourceFormat::Pgm => "PGM",
            SourceFormat::Dicom => "DICOM",
        }
    }

    const ALL: [SourceFormat; 4] = [
        SourceFormat::Tiff,
        SourceFormat::Png,
        SourceFormat::Pgm,
        SourceFormat::Dicom,
    ];

    /// Whether `bytes` start the way a file of this format must.
    fn has_signature(self, bytes: &[u8]) -> bool {
        match self {
            SourceFormat::Tiff => {
                bytes.starts_with(b"II*\0")
                    || bytes.starts_with(b"MM\0*")
                    || bytes.starts_with(b"II+\0")
                    || bytes.starts_with(b"MM\0+")
            }
            SourceFormat::Png => bytes.starts_with(PNG_SIGNATURE),
            SourceFormat::Pgm => {
                bytes.len() >= 2 && bytes[0] == b'P' && (b'1'..=b'7').contains(&bytes[1])
            }
            SourceFormat::Dicom => dicom_magic_offset(bytes).is_some(),
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the DICOM header said about the pixels, kept so later stages can recover physical
/// values and so an operator can see why an image looks the way it does.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    /// (0008,0060), e.g. "DX", "CR"; DICOS objects may carry their own codes.
    pub modality: Option<String>,
    /// "MONOCHROME1" or "MONOCHROME2" (nothing else is decoded).
    pub photometric_interpretation: String,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    /// PixelRepresentation = 1: stored values are two's complement.
    pub pixel_signed: bool,
    /// (0028,1053), 1.0 when absent.
    pub rescale_slope: f64,
    /// (0028,1052), 0.0 when absent.
    pub rescale_intercept: f64,
    /// The rescaled values that normalise to 0 and 65535 (before the MONOCHROME1 inversion):
    /// a pixel `p` stands for `lo + n / 65535 * (hi - lo)` with `n = p` for MONOCHROME2 and
    /// `n = 65535 - p` for MONOCHROME1.
    pub rescaled_range: (f64, f64),
    /// (0008,0016), or the file meta MediaStorageSOPClassUID when the data set lacks it.
    pub sop_class_uid: Option<String>,
    pub transfer_syntax_uid: String,
}

/// A decoded scan image.
#[derive(Clone, PartialEq)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    /// Row-major, normalised to the full u16 range and to "display" polarity: a HIGHER value is
    /// BRIGHTER as the file's own photometric interpretation intends (DICOM MONOCHROME1 and TIFF
    /// WhiteIsZero are inverted here).
    pub pixels: Vec<u16>,
    pub format: SourceFormat,
    /// Significant bits in the source (8, 10, 12, 15, 16...): DICOM BitsStored, the bit length
    /// of a PGM maxval, a PNG sBIT chunk, else the sample depth.
    pub source_bits: u8,
    pub dicom: Option<DicomInfo>,
}

// Derived Debug would print millions of pixels into a log line.
impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("pixels", &format_args!("[u16; {}]", self.pixels.len()))
            .field("format", &self.format)
            .field("source_bits", &self.source_bits)
            .field("dicom", &self.dicom)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("file is {size} bytes; ingest.max_file_bytes is {max}")]
    FileTooLarge { size: u64, max: u64 },
    #[error("image is {width}x{height} pixels; an image needs at least one row and one column")]
    EmptyImage { width: u32, height: u32 },
    #[error("image is {width}x{height} pixels; ingest.max_width is {max}")]
    TooWide { width: u32, height: u32, max: u32 },
    #[error("image is {width}x{height} pixels; ingest.max_height is {max}")]
    TooTall { width: u32, height: u32, max: u32 },
    #[error("image is {width}x{height} = {pixels} pixels; ingest.max_pixels is {max}")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("{} is truncated or corrupt: {cause}", .format.label())]
    Corrupt { format: SourceFormat, cause: String },
    #[error("{} colour type {colour} is not grayscale; scanners must deliver single-channel grayscale images", .format.label())]
    NotGrayscale {
        format: SourceFormat,
        colour: String,
    },
    #[error("{} {feature} is not supported", .format.label())]
    Unsupported {
        format: SourceFormat,
        feature: String,
    },
    #[error("DICOM photometric interpretation {0} is not supported; expected MONOCHROME1 or MONOCHROME2")]
    DicomPhotometric(String),
    #[error("DICOM object has {0} frames; only single-frame 2D images are supported")]
    DicomMultiFrame(u32),
    #[error("DICOM transfer syntax {name} ({uid}) is not supported; use uncompressed, RLE or JPEG (baseline or lossless)")]
    DicomTransferSyntax { uid: String, name: &'static str },
    #[error("DICOM attribute {name} {tag} is missing")]
    DicomMissingAttribute {
        name: &'static str,
        tag: &'static str,
    },
    #[error("DICOM attribute {name} {tag} has the unusable value {value:?}: {reason}")]
    DicomInvalidAttribute {
        name: &'static str,
        tag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{} decoder refused the image under its memory limit: {detail}", .format.label())]
    LimitExceeded {
        format: SourceFormat,
        detail: String,
    },
    #[error("cannot allocate {bytes} bytes for the decoded image")]
    OutOfMemory { bytes: u64 },
    #[error("{} decoder crashed ({message}); the file is probably corrupt", .format.label())]
    DecoderPanicked {
        format: SourceFormat,
        message: String,
    },
}

/// The scan format a drop's file name declares: .tif .tiff .png .pgm .dcm .dicos, any case.
pub fn format_from_extension(file_name: &str) -> Option<SourceFormat> {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let (_, ext) = base.rsplit_once('.')?;
    let is = |e: &str| ext.eq_ignore_ascii_case(e);
    if is("tif") || is("tiff") {
        Some(SourceFormat::Tiff)
    } else if is("png") {
        Some(SourceFormat::Png)
    } else if is("pgm") {
        Some(SourceFormat::Pgm)
    } else if is("dcm") || is("dicos") {
        Some(SourceFormat::Dicom)
    } else {
        None
    }
}

/// Decode one scan image. See the module documentation for the pixel mapping.
pub fn decode(
    bytes: &[u8],
    format: SourceFormat,
    limits: &DecodeLimits,
) -> Result<Decoded, DecodeError> {
    let size = bytes.len() as u64;
    if size > limits.max_file_bytes {
        return Err(DecodeError::FileTooLarge {
            size,
            max: limits.max_file_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(corrupt(format, "the file is empty"));
    }
    if !format.has_signature(bytes) {
        // A scanner misconfigured to write PNGs named .tiff deserves a better hint than
        // "bad magic number".
        if let Some(actual) = SourceFormat::ALL
            .into_iter()
            .find(|f| *f != format && f.has_signature(bytes))
        {
            return Err(corrupt(
                format,
                format!(
                    "the content is a {} file, not {}",
                    actual.label(),
                    format.label()
                ),
            ));
        }
    }
    panic_guard(format, || match format {
        SourceFormat::Tiff => decode_tiff(bytes, limits),
        SourceFormat::Png => decode_png(bytes, limits),
        SourceFormat::Pgm => decode_pgm(bytes, limits),
        SourceFormat::Dicom => decode_dicom(bytes, limits),
    })
}

/// Last line of defence: third-party decoders are fuzzed upstream but not proven panic-free,
/// and a panic here would take a pipeline worker down with it. (Only with `panic = "unwind"`;
/// an abort-on-panic profile would make this a no-op.)
fn panic_guard(
    format: SourceFormat,
    f: impl FnOnce() -> Result<Decoded, DecodeError>,
) -> Result<Decoded, DecodeError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic without a message".to_owned());
        Err(DecodeError::DecoderPanicked { format, message })
    })
}

fn corrupt(format: SourceFormat, cause: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt {
        format,
        cause: cause.into(),
    }
}

/// Refuses empty and over-limit images; returns the pixel count.
fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<usize, DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::EmptyImage { width, height });
    }
    if width > limits.max_width {
        return Err(DecodeError::TooWide {
            width,
            height,
            max: limits.max_width,
        });
    }
    if height > limits.max_height {
        return Err(DecodeError::TooTall {
            width,
            height,
            max: limits.max_height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    usize::try_from(pixels).map_err(|_| DecodeError::OutOfMemory {
        bytes: pixels.saturating_mul(2),
    })
}

/// A zeroed buffer whose allocation failure is an error rather than an abort.
fn alloc_zeroed<T: Copy + Default>(len: usize) -> Result<Vec<T>, DecodeError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| DecodeError::OutOfMemory {
            bytes: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Lookup table from a sample in `0..=max` to `round(sample * 65535 / max)`, optionally
/// reversed. At most 65536 entries, and it turns the per-pixel division into a load.
fn scale_lut(max: u32, reverse: bool) -> Vec<u16> {
    let max = u64::from(max.max(1));
    (0..=max)
        .map(|v| {
            let n = ((v * 65535 + max / 2) / max) as u16;
            if reverse {
                65535 - n
            } else {
                n
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TIFF and PNG, through the image crate.

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Headroom over the decoded image that the image crate may use for strips, tiles and rows;
/// anything beyond it is a decompression bomb, not a scan.
const IMAGE_SCRATCH_BYTES: u64 = 64 << 20;

fn image_limits(limits: &DecodeLimits, width: u32, height: u32) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    // 4 bytes per pixel covers the widest layout accepted here (16-bit gray + alpha).
    l.max_alloc = Some(
        (u64::from(width) * u64::from(height))
            .saturating_mul(4)
            .saturating_add(IMAGE_SCRATCH_BYTES),
    );
    l
}

fn image_error(format: SourceFormat, e: ImageError) -> DecodeError {
    match e {
        ImageError::Limits(l) => DecodeError::LimitExceeded {
            format,
            detail: l.to_string(),
        },
        ImageError::Unsupported(u) => DecodeError::Unsupported {
            format,
            feature: match u.kind() {
                UnsupportedErrorKind::Color(ExtendedColorType::Unknown(bits)) => {
                    format!("sample layout with {bits} bits per pixel (expected 8- or 16-bit grayscale)")
                }
                UnsupportedErrorKind::Color(c) => format!("colour type {c:?}"),
                UnsupportedErrorKind::GenericFeature(f) => format!("feature \"{f}\""),
                _ => format!("feature \"{u}\""),
            },
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => corrupt(
            format,
            format!("the file ends before the image data does ({io})"),
        ),
        other => corrupt(format, other.to_string()),
    }
}

fn decode_tiff(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let format = SourceFormat::Tiff;
    // The tiff crate may reject an oversized image's strip layout before it reports the
    // dimensions; reading them here first keeps the refusal naming the ingest limit.
    if let Some((width, height)) = tiff_dimensions(bytes) {
        check_dimensions(width, height, limits)?;
    }
    // Only the IFD is read here; the tiff crate's default limits bound what that can allocate.
    let decoder = TiffDecoder::new(Cursor::new(bytes)).map_err(|e| image_error(format, e))?;
    decode_image(decoder, format, limits, None)
}

fn decode_png(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let format = SourceFormat::Png;
    let ihdr = png_ihdr(bytes)?;
    // Checked before the decoder exists so the refusal names the ingest limit, not the
    // image crate's generic "dimensional limits" error.
    check_dimensions(ihdr.width, ihdr.height, limits)?;
    let colour = match (ihdr.colour_type, ihdr.bit_depth) {
        (0 | 4, _) => None,
        (2, 16) => Some("Rgb16"),
        (2, _) => Some("Rgb8"),
        (3, _) => Some("indexed (palette)"),
        (6, 16) => Some("Rgba16"),
        (6, _) => Some("Rgba8"),
        _ => {
            return Err(corrupt(
                format,
                format!("invalid IHDR colour type {}", ihdr.colour_type),
            ))
        }
    };
    if let Some(colour) = colour {
        return Err(DecodeError::NotGrayscale {
            format,
            colour: colour.to_owned(),
        });
    }
    let decoder = PngDecoder::with_limits(
        Cursor::new(bytes),
        image_limits(limits, ihdr.width, ihdr.height),
    )
    .map_err(|e| image_error(format, e))?;
    decode_image(decoder, format, limits, png_significant_bits(bytes))
}

/// ImageWidth and ImageLength from the first IFD of a classic or BigTIFF file, if both are
/// readable; anything malformed is left for the tiff crate to report.
fn tiff_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let big_endian = match bytes.get(..2)? {
        b"II" => false,
        b"MM" => true,
        _ => return None,
    };
    let uint = |at: usize, size: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(size)?)?;
        Some(if big_endian {
            b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        } else {
            b.iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        })
    };
    // Classic TIFF: 4-byte offsets, 12-byte entries; BigTIFF (43): 8-byte offsets, 20-byte entries.
    let (offset_size, count_size, entry_size) = match uint(2, 2)? {
        42 => (4, 2, 12),
        43 => (8, 8, 20),
        _ => return None,
    };
    let ifd = usize::try_from(uint(4, offset_size)?).ok()?;
    let count = usize::try_from(uint(ifd, count_size)?).ok()?;
    let (mut width, mut height) = (None, None);
    for i in 0..count.min(4096) {
        let entry = ifd
            .checked_add(count_size)?
            .checked_add(i.checked_mul(entry_size)?)?;
        let value_at = entry + 4 + offset_size;
        let value = match uint(entry + 2, 2)? {
            3 => uint(value_at, 2)?,  // SHORT
            4 => uint(value_at, 4)?,  // LONG
            16 => uint(value_at, 8)?, // LONG8
            _ => continue,
        };
        let value = u32::try_from(value).unwrap_or(u32::MAX);
        match uint(entry, 2)? {
            256 => width = Some(value),
            257 => height = Some(value),
            _ => {}
        }
    }
    Some((width?, height?))
}

struct PngIhdr {
    width: u32,
    height: u32,
    bit_depth: u8,
    colour_type: u8,
}

fn png_ihdr(bytes: &[u8]) -> Result<PngIhdr, DecodeError> {
    let format = SourceFormat::Png;
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(corrupt(format, "not a PNG file (bad signature)"));
    }
    let Some(ihdr) = bytes.get(8..29) else {
        return Err(corrupt(format, "the file ends inside the IHDR header"));
    };
    if &ihdr[4..8] != b"IHDR" || be32(ihdr, 0) != Some(13) {
        return Err(corrupt(format, "the first chunk is not a 13-byte IHDR"));
    }
    Ok(PngIhdr {
        width: be32(ihdr, 8).unwrap_or(0),
        height: be32(ihdr, 12).unwrap_or(0),
        bit_depth: ihdr[16],
        colour_type: ihdr[17],
    })
}

/// The gray sample's sBIT value, if the PNG declares fewer significant bits than its depth.
/// Informational only: PNG requires the samples to be scaled to the full depth already.
fn png_significant_bits(bytes: &[u8]) -> Option<u8> {
    let mut pos = 8usize;
    loop {
        let len = usize::try_from(be32(bytes, pos)?).ok()?;
        let kind = bytes.get(pos + 4..pos + 8)?;
        if kind == b"IDAT" {
            return None;
        }
        if kind == b"sBIT" {
            return bytes.get(pos + 8).copied();
        }
        pos = pos.checked_add(12)?.checked_add(len)?;
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn decode_image<D: ImageDecoder>(
    mut decoder: D,
    format: SourceFormat,
    limits: &DecodeLimits,
    significant_bits: Option<u8>,
) -> Result<Decoded, DecodeError> {
    let (width, height) = decoder.dimensions();
    let pixels = check_dimensions(width, height, limits)?;
    let original = decoder.original_color_type();
    let (channels, wide) = match decoder.color_type() {
        ColorType::L8 => (1, false),
        ColorType::L16 => (1, true),
        // Gray + alpha: the alpha channel carries nothing a transmission image needs.
        ColorType::La8 => (2, false),
        ColorType::La16 => (2, true),
        _ => {
            return Err(DecodeError::NotGrayscale {
                format,
                colour: format!("{original:?}"),
            })
        }
    };
    let depth: u8 = match original {
        ExtendedColorType::L1 | ExtendedColorType::La1 => 1,
        ExtendedColorType::L2 | ExtendedColorType::La2 => 2,
        ExtendedColorType::L4 | ExtendedColorType::La4 => 4,
        _ if wide => 16,
        _ => 8,
    };
    decoder
        .set_limits(image_limits(limits, width, height))
        .map_err(|e| image_error(format, e))?;
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| DecodeError::OutOfMemory {
        bytes: decoder.total_bytes(),
    })?;
    let mut raw = alloc_zeroed::<u8>(total)?;
    decoder
        .read_image(&mut raw)
        .map_err(|e| image_error(format, e))?;

    let mut out = alloc_zeroed::<u16>(pixels)?;
    if wide {
        // The image crate hands 16-bit samples over in native byte order.
        for (dst, src) in out.iter_mut().zip(raw.chunks_exact(2 * channels)) {
            *dst = u16::from_ne_bytes([src[0], src[1]]);
        }
    } else {
        for (dst, src) in out.iter_mut().zip(raw.chunks_exact(channels)) {
            *dst = u16::from(src[0]) * 257;
        }
    }
    let source_bits = significant_bits
        .filter(|b| (1..=depth).contains(b))
        .unwrap_or(depth);
    Ok(Decoded {
        width,
        height,
        pixels: out,
        format,
        source_bits,
        dicom: None,
    })
}

// ---------------------------------------------------------------------------------------------
// PGM (P2 plain and P5 raw). Parsed here rather than by the image crate because its PNM
// decoder rescales odd maxvals through f32 (not exact) and reads P2 a byte at a time.

fn decode_pgm(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let format = SourceFormat::Pgm;
    let plain = match bytes.get(..2) {
        Some(b"P5") => false,
        Some(b"P2") => true,
        Some(b"P1") | Some(b"P4") => {
            return Err(DecodeError::Unsupported {
                format,
                feature: "bitmap (PBM, P1/P4)".to_owned(),
            })
        }
        Some(b"P3") | Some(b"P6") => {
            return Err(DecodeError::NotGrayscale {
                format,
                colour: "RGB (PPM, P3/P6)".to_owned(),
            })
        }
        Some(b"P7") => {
            return Err(DecodeError::Unsupported {
                format,
                feature: "arbitrary map (PAM, P7)".to_owned(),
            })
        }
        _ => return Err(corrupt(format, "not a PGM file (no P2 or P5 magic number)")),
    };
    let mut pos = 2;
    let width = pgm_header_number(bytes, &mut pos, "width")?;
    let height = pgm_header_number(bytes, &mut pos, "height")?;
    let maxval = pgm_header_number(bytes, &mut pos, "maxval")?;
    let pixels = check_dimensions(width, height, limits)?;
    if maxval == 0 || maxval > 65535 {
        return Err(corrupt(
            format,
            format!("maxval {maxval} is outside 1..=65535"),
        ));
    }
    // Exactly one whitespace byte separates the header from a raw raster.
    match bytes.get(pos) {
        Some(c) if c.is_ascii_whitespace() => pos += 1,
        _ => return Err(corrupt(format, "no whitespace after maxval")),
    }
    let raster = &bytes[pos..];
    // Checked before allocating, so a tiny file cannot make us allocate for a huge header.
    // A plain raster needs at least one digit and one separator per sample.
    let bytes_per_sample = match (plain, maxval > 255) {
        (true, _) | (false, true) => 2,
        (false, false) => 1,
    };
    let need = pixels
        .saturating_mul(bytes_per_sample)
        .saturating_sub(usize::from(plain));
    if raster.len() < need {
        return Err(corrupt(
            format,
            format!(
                "the raster has {} bytes; {width}x{height} at maxval {maxval} needs {}{need}",
                raster.len(),
                if plain { "at least " } else { "" }
            ),
        ));
    }
    let lut = scale_lut(maxval, false);
    let mut out = alloc_zeroed::<u16>(pixels)?;
    let too_big = |v: u32| {
        corrupt(
            format,
            format!("sample value {v} exceeds the declared maxval {maxval}"),
        )
    };
    if plain {
        let mut rest = raster;
        for (i, dst) in out.iter_mut().enumerate() {
            let v = pgm_plain_sample(&mut rest).ok_or_else(|| {
                corrupt(
                    format,
                    format!("the plain raster ends or is malformed at sample {i} of {pixels}"),
                )
            })?;
            *dst = *lut.get(v as usize).ok_or_else(|| too_big(v))?;
        }
    } else {
        if maxval > 255 {
            for (dst, s) in out.iter_mut().zip(raster.chunks_exact(2)) {
                let v = u16::from_be_bytes([s[0], s[1]]);
                *dst = *lut
                    .get(usize::from(v))
                    .ok_or_else(|| too_big(u32::from(v)))?;
            }
        } else {
            for (dst, &v) in out.iter_mut().zip(raster) {
                *dst = *lut
                    .get(usize::from(v))
                    .ok_or_else(|| too_big(u32::from(v)))?;
            }
        }
    }
    Ok(Decoded {
        width,
        height,
        pixels: out,
        format,
        source_bits: (32 - maxval.leading_zeros()) as u8,
        dicom: None,
    })
}

/// Next decimal header field, skipping whitespace and `#` comments.
fn pgm_header_number(bytes: &[u8], pos: &mut usize, what: &str) -> Result<u32, DecodeError> {
    let format = SourceFormat::Pgm;
    loop {
        match bytes.get(*pos) {
            Some(c) if c.is_ascii_whitespace() => *pos += 1,
            Some(b'#') => {
                while bytes.get(*pos).is_some_and(|&c| c != b'\n' && c != b'\r') {
                    *pos += 1;
                }
            }
            Some(c) if c.is_ascii_digit() => break,
            Some(&c) => {
                return Err(corrupt(
                    format,
                    format!("unexpected byte 0x{c:02x} where the header {what} should be"),
                ))
            }
            None => {
                return Err(corrupt(
                    format,
                    format!("the header ends before its {what}"),
                ))
            }
        }
    }
    let mut value: u32 = 0;
    while let Some(&c) = bytes.get(*pos).filter(|c| c.is_ascii_digit()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u32::from(c - b'0')))
            .ok_or_else(|| corrupt(format, format!("the header {what} is too large")))?;
        *pos += 1;
    }
    Ok(value)
}

/// Next whitespace-separated decimal sample of a plain (P2) raster, capped so that a long run
/// of digits cannot overflow.
fn pgm_plain_sample(rest: &mut &[u8]) -> Option<u32> {
    let start = rest.iter().position(|c| !c.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > 6 {
        return None;
    }
    let end = start + digits;
    if rest.get(end).is_some_and(|c| !c.is_ascii_whitespace()) {
        return None;
    }
    let value = rest[start..end]
        .iter()
        .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'));
    *rest = &rest[end..];
    Some(value)
}

// ---------------------------------------------------------------------------------------------
// DICOM / DICOS.
//
// dicom-rs allocates every element value at its declared length before reading it (a 4 GiB
// declaration in a 200-byte file zero-fills 4 GiB), and builds nested sequences recursively.
// So before handing it the bytes, `DicomPrescan` walks the same element structure the
// dicom-rs parser will walk and refuses any length that runs past the end of the file and any
// nesting deeper than DICOM_MAX_NESTING. Pixel decompression is bounded the same way: JPEG
// frame headers must match Rows/Columns and RLE segments must not expand beyond one frame.

const DICOM_MAX_NESTING: u32 = 16;
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DsEncoding {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PixelCodec {
    Native,
    Rle,
    Jpeg,
}

/// Transfer syntaxes this node decodes, and the names of common ones it refuses.
fn transfer_syntax(uid: &str) -> Result<(DsEncoding, PixelCodec), DecodeError> {
    let refuse = |name: &'static str| {
        Err(DecodeError::DicomTransferSyntax {
            uid: uid.to_owned(),
            name,
        })
    };
    match uid {
        "1.2.840.10008.1.2" => Ok((DsEncoding::ImplicitLe, PixelCodec::Native)),
        "1.2.840.10008.1.2.1" => Ok((DsEncoding::ExplicitLe, PixelCodec::Native)),
        "1.2.840.10008.1.2.2" => Ok((DsEncoding::ExplicitBe, PixelCodec::Native)),
        "1.2.840.10008.1.2.5" => Ok((DsEncoding::ExplicitLe, PixelCodec::Rle)),
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => Ok((DsEncoding::ExplicitLe, PixelCodec::Jpeg)),
        // Inflating happens inside dicom-rs, where no limit can be put on it.
        "1.2.840.10008.1.2.1.99" => refuse("Deflated Explicit VR Little Endian"),
        "1.2.840.10008.1.2.1.98" => refuse("Encapsulated Uncompressed Explicit VR Little Endian"),
        "1.2.840.10008.1.2.4.80" => refuse("JPEG-LS Lossless"),
        "1.2.840.10008.1.2.4.81" => refuse("JPEG-LS Near-Lossless"),
        "1.2.840.10008.1.2.4.90" => refuse("JPEG 2000 (Lossless Only)"),
        "1.2.840.10008.1.2.4.91" => refuse("JPEG 2000"),
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => {
            refuse("JPEG 2000 Part 2 Multi-component")
        }
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            refuse("High-Throughput JPEG 2000")
        }
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            refuse("JPEG XL")
        }
        _ if uid.starts_with("1.2.840.10008.1.2.4.10") => refuse("MPEG video"),
        _ => refuse("unknown"),
    }
}

/// Offset of the "DICM" magic: 128 after a preamble, or 0 for a preamble-less Part 10 stream.
fn dicom_magic_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(128)
    } else if bytes.starts_with(b"DICM") {
        Some(0)
    } else {
        None
    }
}

fn dicom_corrupt(cause: impl Into<String>) -> DecodeError {
    corrupt(SourceFormat::Dicom, cause)
}

struct DicomPrescan<'a> {
    buf: &'a [u8],
    enc: DsEncoding,
}

struct ElementHeader {
    tag: Tag,
    /// The VR dicom-rs will read the value as: the explicit VR (UN when unrecognised), or in
    /// implicit VR the dictionary's; UN for item and delimiter tags.
    vr: VR,
    len: u32,
}

impl<'a> DicomPrescan<'a> {
    fn u16_at(&self, pos: usize) -> Option<u16> {
        let b = self.buf.get(pos..pos.checked_add(2)?)?;
        Some(match self.enc {
            DsEncoding::ExplicitBe => u16::from_be_bytes([b[0], b[1]]),
            _ => u16::from_le_bytes([b[0], b[1]]),
        })
    }

    fn u32_at(&self, pos: usize) -> Option<u32> {
        let b = self.buf.get(pos..pos.checked_add(4)?)?;
        Some(match self.enc {
            DsEncoding::ExplicitBe => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        })
    }

    /// Reads an element header as dicom-encoding's decoders do; returns it and its length.
    fn header(&self, pos: usize) -> Option<(ElementHeader, usize)> {
        let tag = Tag(self.u16_at(pos)?, self.u16_at(pos + 2)?);
        if tag.0 == 0xFFFE {
            let len = self.u32_at(pos + 4)?;
            return Some((
                ElementHeader {
                    tag,
                    vr: VR::UN,
                    len,
                },
                8,
            ));
        }
        if self.enc == DsEncoding::ImplicitLe {
            let len = self.u32_at(pos + 4)?;
            // dicom-rs forces OW for these two in implicit VR, whatever the dictionary says.
            let vr = if tag == tags::PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                VR::OW
            } else {
                StandardDataDictionary
                    .by_tag(tag)
                    .map(|e| e.vr().relaxed())
                    .unwrap_or(VR::UN)
            };
            return Some((ElementHeader { tag, vr, len }, 8));
        }
        let vr = self.buf.get(pos + 4..pos + 6)?;
        let vr = VR::from_binary([vr[0], vr[1]]).unwrap_or(VR::UN);
        // PS3.5 7.1.2: these VRs have a 16-bit length, all others 2 reserved bytes and a
        // 32-bit length.
        use VR::*;
        let (len, hlen) = match vr {
            AE | AS | AT | CS | DA | DS | DT | FL | FD | IS | LO | LT | PN | SH | SL | SS | ST
            | TM | UI | UL | US => (u32::from(self.u16_at(pos + 6)?), 8),
            _ => (self.u32_at(pos + 8)?, 12),
        };
        Some((ElementHeader { tag, vr, len }, hlen))
    }

    /// Ensures `len` bytes from `pos` lie inside the file; returns the end offset.
    fn span(
        &self,
        pos: usize,
        len: u32,
        what: impl FnOnce() -> String,
    ) -> Result<usize, DecodeError> {
        let end = usize::try_from(len).ok().and_then(|l| pos.checked_add(l));
        match end {
            Some(end) if end <= self.buf.len() => Ok(end),
            _ => Err(dicom_corrupt(format!(
                "{} declares {len} bytes at offset {pos} but the file has only {} bytes left",
                what(),
                self.buf.len().saturating_sub(pos)
            ))),
        }
    }

    /// Elements up to `end` (a defined-length item), an item delimiter (an undefined-length
    /// item) or the end of the file (the top-level data set).
    fn elements(
        &self,
        mut pos: usize,
        depth: u32,
        end: Option<usize>,
        in_item: bool,
    ) -> Result<usize, DecodeError> {
        loop {
            if let Some(end) = end {
                if pos == end {
                    return Ok(pos);
                }
                if pos > end {
                    return Err(dicom_corrupt(format!(
                        "an element runs past the end of its item at offset {end}"
                    )));
                }
            }
            // The data set ends with the file. (dicom-rs also ends quietly on 1-3 stray bytes,
            // but those mean a file cut inside a tag, and saying so beats "Rows is missing".)
            if !in_item && pos == self.buf.len() {
                return Ok(pos);
            }
            let (h, hlen) = self.header(pos).ok_or_else(|| {
                dicom_corrupt(format!(
                    "the file ends inside an element header at offset {pos}"
                ))
            })?;
            let at = pos;
            pos += hlen;
            let tag = h.tag;
            if tag == Tag(0xFFFE, 0xE00D) {
                if in_item && end.is_none() {
                    return Ok(pos);
                }
                if !in_item {
                    continue; // a stray delimiter at top level is skipped by dicom-rs too
                }
                return Err(dicom_corrupt(format!(
                    "item delimiter inside a defined-length item at offset {at}"
                )));
            }
            if tag.0 == 0xFFFE {
                return Err(dicom_corrupt(format!(
                    "unexpected item tag ({:04X},{:04X}) among elements at offset {at}",
                    tag.0, tag.1
                )));
            }
            if h.vr == VR::SQ {
                pos = if h.len == UNDEFINED_LENGTH {
                    self.items(pos, depth + 1, None)?
                } else {
                    let end = self.span(pos, h.len, || element_name(tag))?;
                    self.items(pos, depth + 1, Some(end))?
                };
            } else if h.len == UNDEFINED_LENGTH {
                pos = if tag == tags::PIXEL_DATA {
                    self.fragments(pos)?
                } else {
                    // dicom-rs reads any other undefined-length element as a sequence.
                    self.items(pos, depth + 1, None)?
                };
            } else {
                // dicom-rs reads binary VRs in whole values but advances its position by the
                // declared length, so a ragged length would desynchronise it from this scan.
                let unit = binary_value_size(h.vr);
                if h.len % unit != 0 {
                    return Err(dicom_corrupt(format!(
                        "{} has VR {} but a length of {} bytes, not a whole number of {unit}-byte values (offset {at})",
                        element_name(tag),
                        h.vr,
                        h.len
                    )));
                }
                pos = self.span(pos, h.len, || element_name(tag))?;
            }
        }
    }

    /// Items of a sequence, up to `end` (defined length) or a sequence delimiter.
    fn items(&self, mut pos: usize, depth: u32, end: Option<usize>) -> Result<usize, DecodeError> {
        if depth > DICOM_MAX_NESTING {
            return Err(dicom_corrupt(format!(
                "sequences are nested more than {DICOM_MAX_NESTING} deep at offset {pos}"
            )));
        }
        loop {
            if let Some(end) = end {
                if pos == end {
                    return Ok(pos);
                }
                if pos > end {
                    return Err(dicom_corrupt(format!(
                        "an item runs past the end of its sequence at offset {end}"
                    )));
                }
            }
            let (group, element, len) =
                match (self.u16_at(pos), self.u16_at(pos + 2), self.u32_at(pos + 4)) {
                    (Some(g), Some(e), Some(l)) => (g, e, l),
                    _ => {
                        return Err(dicom_corrupt(format!(
                            "the file ends inside a sequence at offset {pos}"
                        )))
                    }
                };
            let at = pos;
            pos += 8;
            match (group, element) {
                (0xFFFE, 0xE000) if len == UNDEFINED_LENGTH => {
                    pos = self.elements(pos, depth, None, true)?;
                }
                (0xFFFE, 0xE000) => {
                    let item_end = self.span(pos, len, || "a sequence item".to_owned())?;
                    pos = self.elements(pos, depth, Some(item_end), true)?;
                }
                (0xFFFE, 0xE0DD) if end.is_none() => return Ok(pos),
                _ => {
                    return Err(dicom_corrupt(format!(
                        "expected a sequence item at offset {at}, found ({group:04X},{element:04X})"
                    )))
                }
            }
        }
    }

    /// Fragments of encapsulated pixel data, up to the sequence delimiter.
    fn fragments(&self, mut pos: usize) -> Result<usize, DecodeError> {
        loop {
            // dicom-rs accepts a file that ends without the closing delimiter.
            if self.buf.len().saturating_sub(pos) < 8 {
                return Ok(self.buf.len());
            }
            let (group, element) = (self.u16_at(pos), self.u16_at(pos + 2));
            let len = self.u32_at(pos + 4).unwrap_or(0);
            let at = pos;
            pos += 8;
            match (group, element) {
                (Some(0xFFFE), Some(0xE000)) if len != UNDEFINED_LENGTH => {
                    pos = self.span(pos, len, || "a pixel data fragment".to_owned())?;
                }
                (Some(0xFFFE), Some(0xE0DD)) => return Ok(pos),
                _ => {
                    return Err(dicom_corrupt(format!(
                        "malformed encapsulated pixel data fragment at offset {at}"
                    )))
                }
            }
        }
    }
}

/// Bytes per value of the VRs that dicom-rs reads as binary numbers; 1 for the rest.
fn binary_value_size(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::OF | VR::OL | VR::AT => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

fn element_name(tag: Tag) -> String {
    format!("element ({:04X},{:04X})", tag.0, tag.1)
}

/// Validates the file meta group and data set structure (see `DicomPrescan`); returns the
/// offset of the DICM magic and the transfer syntax.
fn dicom_prescan(bytes: &[u8]) -> Result<(usize, String, PixelCodec), DecodeError> {
    let magic = dicom_magic_offset(bytes).ok_or_else(|| {
        dicom_corrupt(
            "not a DICOM Part 10 file: no DICM magic at offset 128 (a bare data set without file meta information is not accepted)",
        )
    })?;
    // The file meta group is always explicit VR little endian.
    let meta = DicomPrescan {
        buf: bytes,
        enc: DsEncoding::ExplicitLe,
    };
    let mut pos = magic + 4;
    let group_length = match meta.header(pos) {
        Some((h, hlen)) if h.tag == Tag(0x0002, 0x0000) && h.len == 4 => {
            pos += hlen;
            let v = meta.u32_at(pos);
            pos += 4;
            v
        }
        _ => None,
    }
    .ok_or_else(|| {
        dicom_corrupt("the file meta group does not start with its group length (0002,0000)")
    })?;
    // Mirrors dicom-object's meta reader: elements until `group_length` bytes are consumed.
    let mut consumed: u64 = 0;
    let mut ts_uid = None;
    while consumed < u64::from(group_length) {
        let (h, hlen) = meta
            .header(pos)
            .ok_or_else(|| dicom_corrupt("the file ends inside the file meta group"))?;
        if h.tag.0 != 0x0002 || h.len == UNDEFINED_LENGTH {
            return Err(dicom_corrupt(format!(
                "file meta group length {group_length} disagrees with its elements (found {} at offset {pos})",
                element_name(h.tag)
            )));
        }
        let start = pos + hlen;
        let end = meta.span(start, h.len, || element_name(h.tag))?;
        if h.tag == Tag(0x0002, 0x0010) {
            let raw = String::from_utf8_lossy(&bytes[start..end]);
            ts_uid = Some(
                raw.trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_owned(),
            );
        }
        consumed += (hlen as u64) + u64::from(h.len);
        pos = end;
    }
    let ts_uid = ts_uid.ok_or(DecodeError::DicomMissingAttribute {
        name: "TransferSyntaxUID",
        tag: "(0002,0010)",
    })?;
    let (enc, codec) = transfer_syntax(&ts_uid)?;
    DicomPrescan { buf: bytes, enc }.elements(pos, 0, None, false)?;
    Ok((magic, ts_uid, codec))
}

fn decode_dicom(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let (magic, ts_uid, codec) = dicom_prescan(bytes)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[magic..])
        .map_err(|e| dicom_corrupt(error_chain(&e)))?;

    // A file cut between two elements parses cleanly; without this it would be reported as
    // whichever attribute happened to fall after the cut.
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(dicom_corrupt(
            "the data set has no PixelData (7FE0,0010): the file is truncated or not an image",
        ));
    }
    // Header attributes first: nothing pixel-sized is allocated until they pass.
    let rows = dicom_u16(&obj, tags::ROWS, "Rows", "(0028,0010)")?;
    let cols = dicom_u16(&obj, tags::COLUMNS, "Columns", "(0028,0011)")?;
    let (width, height) = (u32::from(cols), u32::from(rows));
    let pixels = check_dimensions(width, height, limits)?;

    let frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => e
            .to_int::<i64>()
            .map_err(|err| DecodeError::DicomInvalidAttribute {
                name: "NumberOfFrames",
                tag: "(0028,0008)",
                value: e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
                reason: err.to_string(),
            })?,
    };
    if frames != 1 {
        return Err(DecodeError::DicomMultiFrame(
            u32::try_from(frames).unwrap_or(0),
        ));
    }

    let photometric = match obj.get(tags::PHOTOMETRIC_INTERPRETATION) {
        Some(e) => e
            .to_str()
            .map(|s| {
                s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_owned()
            })
            .unwrap_or_default(),
        None => {
            return Err(DecodeError::DicomMissingAttribute {
                name: "PhotometricInterpretation",
                tag: "(0028,0004)",
            })
        }
    };
    let monochrome1 = match photometric.as_str() {
        "MONOCHROME1" => true,
        "MONOCHROME2" => false,
        other => return Err(DecodeError::DicomPhotometric(other.to_owned())),
    };
    let samples = dicom_u16_or(
        &obj,
        tags::SAMPLES_PER_PIXEL,
        "SamplesPerPixel",
        "(0028,0002)",
        1,
    )?;
    if samples != 1 {
        return Err(DecodeError::Unsupported {
            format: SourceFormat::Dicom,
            feature: format!("SamplesPerPixel {samples} (colour)"),
        });
    }
    let bits_allocated = dicom_u16(&obj, tags::BITS_ALLOCATED, "BitsAllocated", "(0028,0100)")?;
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(DecodeError::Unsupported {
            format: SourceFormat::Dicom,
            feature: format!("BitsAllocated {bits_allocated} (expected 8 or 16)"),
        });
    }
    let bits_stored = dicom_u16(&obj, tags::BITS_STORED, "BitsStored", "(0028,0101)")?;
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(invalid(
            "BitsStored",
            "(0028,0101)",
            bits_stored,
            format!("must be 1..={bits_allocated}"),
        ));
    }
    let high_bit = dicom_u16_or(
        &obj,
        tags::HIGH_BIT,
        "HighBit",
        "(0028,0102)",
        bits_stored - 1,
    )?;
    if high_bit >= bits_allocated || high_bit + 1 < bits_stored {
        return Err(invalid(
            "HighBit",
            "(0028,0102)",
            high_bit,
            format!(
                "must be {}..{bits_allocated} for BitsStored {bits_stored}",
                bits_stored - 1
            ),
        ));
    }
    let signed = match dicom_u16_or(
        &obj,
        tags::PIXEL_REPRESENTATION,
        "PixelRepresentation",
        "(0028,0103)",
        0,
    )? {
        0 => false,
        1 => true,
        other => {
            return Err(invalid(
                "PixelRepresentation",
                "(0028,0103)",
                other,
                "must be 0 or 1".to_owned(),
            ))
        }
    };
    let slope = dicom_f64_or(
        &obj,
        tags::RESCALE_SLOPE,
        "RescaleSlope",
        "(0028,1053)",
        1.0,
    )?;
    let intercept = dicom_f64_or(
        &obj,
        tags::RESCALE_INTERCEPT,
        "RescaleIntercept",
        "(0028,1052)",
        0.0,
    )?;
    if slope == 0.0 {
        return Err(invalid(
            "RescaleSlope",
            "(0028,1053)",
            slope,
            "a zero slope maps every pixel to one value".to_owned(),
        ));
    }

    let (s_min, s_max) = if signed {
        (
            -(1i64 << (bits_stored - 1)),
            (1i64 << (bits_stored - 1)) - 1,
        )
    } else {
        (0, (1i64 << bits_stored) - 1)
    };
    let (a, b) = (
        slope * s_min as f64 + intercept,
        slope * s_max as f64 + intercept,
    );
    let rescaled_range = (a.min(b), a.max(b));
    // Normalising over the rescaled range is the stored range, reversed by a negative slope;
    // MONOCHROME1 (minimum = white) reverses it once more into display polarity.
    let lut = scale_lut((s_max - s_min) as u32, (slope < 0.0) != monochrome1);
    let layout = SampleLayout {
        bits_allocated,
        shift: high_bit + 1 - bits_stored,
        mask: ((1u32 << bits_stored) - 1) as u16,
        // Two's complement to offset binary: index = s - s_min.
        flip: if signed { 1u16 << (bits_stored - 1) } else { 0 },
    };

    let need = pixels * usize::from(bits_allocated / 8);
    let pixel_data = obj
        .get(tags::PIXEL_DATA)
        .ok_or(DecodeError::DicomMissingAttribute {
            name: "PixelData",
            tag: "(7FE0,0010)",
        })?;
    let truncated = |have: usize| {
        dicom_corrupt(format!(
            "pixel data has {have} bytes; {cols}x{rows} at {bits_allocated} bits allocated needs {need}"
        ))
    };
    let out = match codec {
        PixelCodec::Native => {
            let big_endian = ts_uid == "1.2.840.10008.1.2.2";
            let raw =
                match pixel_data.value().primitive() {
                    Some(PrimitiveValue::U16(words)) => Raw::Words(words, big_endian),
                    Some(PrimitiveValue::I16(words)) => Raw::SignedWords(words, big_endian),
                    Some(PrimitiveValue::U8(bytes)) => Raw::Bytes(bytes, big_endian),
                    Some(_) | None => return Err(dicom_corrupt(
                        "pixel data is not a plain OB/OW value in an uncompressed transfer syntax",
                    )),
                };
            if raw.byte_len() < need {
                return Err(truncated(raw.byte_len()));
            }
            let mut out = alloc_zeroed::<u16>(pixels)?;
            map_samples(&raw, layout, &lut, &mut out);
            out
        }
        PixelCodec::Rle | PixelCodec::Jpeg => {
            let fragment = pixel_data
                .fragments()
                .and_then(|f| f.first())
                .ok_or_else(|| dicom_corrupt("compressed pixel data has no fragments"))?;
            if codec == PixelCodec::Jpeg {
                check_jpeg_frame(fragment, rows, cols, bits_allocated)?;
            } else {
                check_rle_frame(fragment, pixels, usize::from(bits_allocated / 8))?;
            }
            let decoded = obj.decode_pixel_data_frame(0).map_err(|e| {
                dicom_corrupt(format!(
                    "cannot decompress the pixel data: {}",
                    error_chain(&e)
                ))
            })?;
            let data = decoded.data();
            if data.len() < need {
                return Err(truncated(data.len()));
            }
            // The RLE adapter writes little-endian samples, the JPEG adapter native-endian ones.
            let big_endian = codec == PixelCodec::Jpeg && cfg!(target_endian = "big");
            let mut out = alloc_zeroed::<u16>(pixels)?;
            map_samples(&Raw::Bytes(data, big_endian), layout, &lut, &mut out);
            out
        }
    };

    let text = |tag: Tag| {
        obj.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| {
                s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_owned()
            })
            .filter(|s| !s.is_empty())
    };
    let sop_class_uid = text(tags::SOP_CLASS_UID).or_else(|| {
        Some(obj.meta().media_storage_sop_class_uid().to_owned()).filter(|s| !s.is_empty())
    });
    Ok(Decoded {
        width,
        height,
        pixels: out,
        format: SourceFormat::Dicom,
        source_bits: bits_stored as u8,
        dicom: Some(DicomInfo {
            modality: text(tags::MODALITY),
            photometric_interpretation: photometric,
            bits_allocated,
            bits_stored,
            high_bit,
            pixel_signed: signed,
            rescale_slope: slope,
            rescale_intercept: intercept,
            rescaled_range,
            sop_class_uid,
            transfer_syntax_uid: ts_uid,
        }),
    })
}

/// dicom-rs errors keep the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

fn invalid(
    name: &'static str,
    tag: &'static str,
    value: impl fmt::Display,
    reason: String,
) -> DecodeError {
    DecodeError::DicomInvalidAttribute {
        name,
        tag,
        value: value.to_string(),
        reason,
    }
}

fn dicom_u16(
    obj: &DefaultDicomObject,
    tag: Tag,
    name: &'static str,
    tag_str: &'static str,
) -> Result<u16, DecodeError> {
    let e = obj
        .get(tag)
        .ok_or(DecodeError::DicomMissingAttribute { name, tag: tag_str })?;
    e.to_int::<u16>().map_err(|err| {
        invalid(
            name,
            tag_str,
            e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
            err.to_string(),
        )
    })
}

fn dicom_u16_or(
    obj: &DefaultDicomObject,
    tag: Tag,
    name: &'static str,
    tag_str: &'static str,
    default: u16,
) -> Result<u16, DecodeError> {
    if obj.get(tag).is_some() {
        dicom_u16(obj, tag, name, tag_str)
    } else {
        Ok(default)
    }
}

fn dicom_f64_or(
    obj: &DefaultDicomObject,
    tag: Tag,
    name: &'static str,
    tag_str: &'static str,
    default: f64,
) -> Result<f64, DecodeError> {
    let Some(e) = obj.get(tag) else {
        return Ok(default);
    };
    // An empty DS value is legal and means "not given".
    if e.to_str().is_ok_and(|s| s.trim().is_empty()) {
        return Ok(default);
    }
    let v = e.to_float64().map_err(|err| {
        invalid(
            name,
            tag_str,
            e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
            err.to_string(),
        )
    })?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(invalid(
            name,
            tag_str,
            v,
            "must be a finite number".to_owned(),
        ))
    }
}

#[derive(Clone, Copy)]
struct SampleLayout {
    bits_allocated: u16,
    shift: u16,
    mask: u16,
    flip: u16,
}

/// Stored samples as dicom-rs hands them over: 16-bit words already in native order (OW) or
/// bytes in the file's byte order (OB, and decompressor output).
enum Raw<'a> {
    Words(&'a [u16], bool),
    SignedWords(&'a [i16], bool),
    Bytes(&'a [u8], bool),
}

impl Raw<'_> {
    fn byte_len(&self) -> usize {
        match self {
            Raw::Words(w, _) => w.len() * 2,
            Raw::SignedWords(w, _) => w.len() * 2,
            Raw::Bytes(b, _) => b.len(),
        }
    }
}

fn map_samples(raw: &Raw<'_>, l: SampleLayout, lut: &[u16], out: &mut [u16]) {
    // `lut` has mask + 1 entries, so a masked index is always in range; `get` keeps a future
    // mistake from becoming a panic.
    let map = |word: u16| -> u16 {
        let idx = ((word >> l.shift) & l.mask) ^ l.flip;
        lut.get(usize::from(idx)).copied().unwrap_or(0)
    };
    match (raw, l.bits_allocated) {
        (Raw::Words(w, _), 16) => out.iter_mut().zip(w.iter()).for_each(|(d, &s)| *d = map(s)),
        (Raw::SignedWords(w, _), 16) => out
            .iter_mut()
            .zip(w.iter())
            .for_each(|(d, &s)| *d = map(s as u16)),
        (Raw::Bytes(b, big), 16) => out.iter_mut().zip(b.chunks_exact(2)).for_each(|(d, s)| {
            let word = if *big {
                u16::from_be_bytes([s[0], s[1]])
            } else {
                u16::from_le_bytes([s[0], s[1]])
            };
            *d = map(word)
        }),
        (Raw::Bytes(b, _), _) => out
            .iter_mut()
            .zip(b.iter())
            .for_each(|(d, &s)| *d = map(u16::from(s))),
        // 8-bit samples packed two to an OW word (implicit VR always reads pixel data as OW):
        // the file's byte order says which sample comes first.
        (Raw::Words(w, big), _) => {
            let bytes = w.iter().flat_map(|x| {
                if *big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            });
            out.iter_mut()
                .zip(bytes)
                .for_each(|(d, s)| *d = map(u16::from(s)))
        }
        (Raw::SignedWords(w, big), _) => {
            let bytes = w.iter().flat_map(|x| {
                if *big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            });
            out.iter_mut()
                .zip(bytes)
                .for_each(|(d, s)| *d = map(u16::from(s)))
        }
    }
}

/// Refuses a JPEG frame whose own header disagrees with Rows/Columns/BitsAllocated: the JPEG
/// decoder sizes its buffers from the JPEG header, not from the DICOM attributes.
fn check_jpeg_frame(
    data: &[u8],
    rows: u16,
    cols: u16,
    bits_allocated: u16,
) -> Result<(), DecodeError> {
    let (precision, height, width, components) = jpeg_frame_header(data).map_err(dicom_corrupt)?;
    if (height, width) != (rows, cols) {
        return Err(dicom_corrupt(format!(
            "the JPEG frame is {width}x{height} but Columns x Rows is {cols}x{rows}"
        )));
    }
    if components != 1 {
        return Err(DecodeError::Unsupported {
            format: SourceFormat::Dicom,
            feature: format!("JPEG frame with {components} components (colour)"),
        });
    }
    if (precision > 8) != (bits_allocated > 8) || precision > 16 {
        return Err(dicom_corrupt(format!(
            "JPEG sample precision {precision} does not fit BitsAllocated {bits_allocated}"
        )));
    }
    Ok(())
}

/// (precision, height, width, components) from the first SOFn marker.
fn jpeg_frame_header(data: &[u8]) -> Result<(u8, u16, u16, u8), String> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("the compressed frame does not start with a JPEG SOI marker".to_owned());
    }
    let be16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut pos = 2usize;
    loop {
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        let marker = match (data.get(pos), data.get(pos + 1)) {
            (Some(0xFF), Some(&m)) => m,
            _ => return Err(format!("no JPEG frame header before offset {pos}")),
        };
        pos += 2;
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let seg = data
                    .get(pos..pos + 8)
                    .ok_or("the JPEG frame header is truncated")?;
                return Ok((
                    seg[2],
                    u16::from_be_bytes([seg[3], seg[4]]),
                    u16::from_be_bytes([seg[5], seg[6]]),
                    seg[7],
                ));
            }
            0x01 | 0xD0..=0xD8 => {}
            0xD9 | 0xDA => {
                return Err("the JPEG data has no frame header before its scan".to_owned())
            }
            _ => {
                let len = be16(pos).ok_or("a JPEG marker segment is truncated")?;
                if len < 2 {
                    return Err(format!(
                        "JPEG marker 0xFF{marker:02X} has invalid length {len}"
                    ));
                }
                pos += usize::from(len);
            }
        }
    }
}

/// Refuses an RLE frame whose segments are missing, misplaced, too short, or expand to more
/// than a frame: dicom-rs expands a whole segment before cutting it to size, and indexes
/// into it without checking.
fn check_rle_frame(
    fragment: &[u8],
    pixels: usize,
    bytes_per_sample: usize,
) -> Result<(), DecodeError> {
    let le32 = |at: usize| {
        fragment
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let header = |s: String| dicom_corrupt(format!("RLE frame: {s}"));
    let count = le32(0).ok_or_else(|| header("the 64-byte header is truncated".to_owned()))?;
    if fragment.len() < 64 {
        return Err(header("the 64-byte header is truncated".to_owned()));
    }
    if count != bytes_per_sample {
        return Err(header(format!("{count} segments; a grayscale image with {bytes_per_sample}-byte samples needs {bytes_per_sample}")));
    }
    let offsets: Vec<usize> = (0..count).map(|i| le32(4 + 4 * i).unwrap_or(0)).collect();
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(fragment.len());
        if start < 64 || start > end || end > fragment.len() {
            return Err(header(format!(
                "segment {i} spans {start}..{end} in a {}-byte fragment",
                fragment.len()
            )));
        }
        let segment = &fragment[start..end];
        let (mut j, mut produced) = (0usize, 0usize);
        while j < segment.len() {
            let h = segment[j] as i8;
            j += 1;
            if h >= 0 {
                let n = h as usize + 1;
                produced += n.min(segment.len() - j);
                j += n;
            } else if h != -128 {
                if j >= segment.len() {
                    return Err(header(format!("segment {i} ends inside a run")));
                }
                produced += (1 - isize::from(h)) as usize;
                j += 1;
            }
            // Every run adds at most 128 bytes, so this bounds the expansion tightly.
            if produced > pixels + 256 {
                return Err(header(format!("segment {i} expands beyond {pixels} bytes")));
            }
        }
        if produced < pixels {
            return Err(header(format!(
                "segment {i} holds {produced} of {pixels} bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::{DataSetSequence, PixelFragmentSequence, Value};
    use dicom_core::DataElement;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    use image::codecs::pnm::{PnmEncoder, PnmSubtype, SampleEncoding};
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb};
    use std::path::PathBuf;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
    const RLE: &str = "1.2.840.10008.1.2.5";
    const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.70";

    fn limits() -> DecodeLimits {
        DecodeLimits {
            max_width: 20_000,
            max_height: 20_000,
            max_pixels: 100_000_000,
            max_file_bytes: 256 << 20,
        }
    }

    /// round(v * 65535 / max): the documented normalisation.
    fn norm(v: u64, max: u64) -> u16 {
        ((v * 65535 + max / 2) / max) as u16
    }

    /// Deterministic pixels that hit both ends of the range and plenty in between.
    fn pattern16(w: u32, h: u32) -> Vec<u16> {
        let mut v: Vec<u16> = (0..w * h)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 16) as u16)
            .collect();
        v[0] = 0;
        let n = v.len();
        v[n - 1] = u16::MAX;
        v
    }

    fn pattern8(w: u32, h: u32) -> Vec<u8> {
        pattern16(w, h)
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect()
    }

    fn gray16(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, pattern16(w, h)).unwrap())
    }

    fn gray8(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, pattern8(w, h)).unwrap())
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// 8-bit through the image crate's encoder; it refuses 16-bit graymaps, so those are
    /// written here following the netpbm specification.
    fn encode_pgm(img: &DynamicImage, encoding: SampleEncoding) -> Vec<u8> {
        let mut out = Vec::new();
        if let DynamicImage::ImageLuma16(b) = img {
            let plain = matches!(encoding, SampleEncoding::Ascii);
            out = format!(
                "{}\n{} {}\n65535\n",
                if plain { "P2" } else { "P5" },
                b.width(),
                b.height()
            )
            .into_bytes();
            for &v in b.as_raw() {
                if plain {
                    out.extend_from_slice(format!("{v}\n").as_bytes());
                } else {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            return out;
        }
        img.write_with_encoder(
            PnmEncoder::new(&mut out).with_subtype(PnmSubtype::Graymap(encoding)),
        )
        .unwrap();
        out
    }

    fn expect_err(bytes: &[u8], format: SourceFormat, limits: &DecodeLimits) -> String {
        match decode(bytes, format, limits) {
            Ok(d) => panic!("expected an error decoding {format}, got {d:?}"),
            Err(DecodeError::DecoderPanicked { message, .. }) => {
                panic!("{format} decoder panicked instead of returning an error: {message}")
            }
            Err(e) => e.to_string(),
        }
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// Rewrites the IHDR dimensions of an encoded PNG and fixes its CRC, leaving the
    /// (now far too small) image data as it was.
    fn png_with_dimensions(mut png: Vec<u8>, w: u32, h: u32) -> Vec<u8> {
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// (field type, count, offset of the value/offset field) of a tag in IFD0 of a
    /// little-endian TIFF, as the image crate writes them.
    fn tiff_entry(tiff: &[u8], tag: u16) -> (u16, u32, usize) {
        assert_eq!(&tiff[..4], b"II*\0");
        let le16 = |at: usize| u16::from_le_bytes([tiff[at], tiff[at + 1]]);
        let le32 = |at: usize| u32::from_le_bytes(tiff[at..at + 4].try_into().unwrap());
        let ifd = le32(4) as usize;
        (0..le16(ifd) as usize)
            .map(|i| ifd + 2 + 12 * i)
            .find(|&e| le16(e) == tag)
            .map(|e| (le16(e + 2), le32(e + 4), e + 8))
            .unwrap_or_else(|| panic!("TIFF has no tag {tag}"))
    }

    /// Sets every value of a SHORT or LONG tag in IFD0.
    fn tiff_set(tiff: &mut [u8], tag: u16, value: u32) {
        let (kind, count, field) = tiff_entry(tiff, tag);
        let size = if kind == 3 { 2 } else { 4 };
        let start = if count as usize * size <= 4 {
            field
        } else {
            u32::from_le_bytes(tiff[field..field + 4].try_into().unwrap()) as usize
        };
        for i in 0..count as usize {
            let at = start + i * size;
            if kind == 3 {
                tiff[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
            } else {
                tiff[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    #[test]
    fn extensions() {
        use SourceFormat::*;
        for (name, want) in [
            ("KHI-P1-1.tiff", Some(Tiff)),
            ("a.TIF", Some(Tiff)),
            ("a.low.png", Some(Png)),
            ("a.PgM", Some(Pgm)),
            ("a.dcm", Some(Dicom)),
            ("a.DICOS", Some(Dicom)),
            ("dir.tiff/scan", None),
            ("scan", None),
            ("scan.json", None),
            ("scan.jpg", None),
        ] {
            assert_eq!(format_from_extension(name), want, "{name}");
        }
        assert_eq!(Dicom.as_str(), "dicom");
        assert_eq!(Tiff.to_string(), "tiff");
    }

    fn assert_round_trip(img: &DynamicImage, bytes: &[u8], format: SourceFormat, bits: u8) {
        let d = decode(bytes, format, &limits()).unwrap();
        assert_eq!((d.width, d.height), (img.width(), img.height()));
        assert_eq!(d.format, format);
        assert_eq!(d.source_bits, bits);
        assert!(d.dicom.is_none());
        let want: Vec<u16> = match img {
            DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| u16::from(v) * 257).collect(),
            DynamicImage::ImageLuma16(b) => b.as_raw().clone(),
            DynamicImage::ImageLumaA16(b) => b.pixels().map(|p| p.0[0]).collect(),
            _ => unreachable!(),
        };
        assert!(d.pixels == want, "{format} {bits}-bit pixels differ");
        assert_eq!(*d.pixels.iter().max().unwrap(), 65535);
        assert_eq!(*d.pixels.iter().min().unwrap(), 0);
    }

    #[test]
    fn png_round_trips() {
        let img = gray16(301, 97);
        assert_round_trip(&img, &encode(&img, ImageFormat::Png), SourceFormat::Png, 16);
        let img = gray8(301, 97);
        assert_round_trip(&img, &encode(&img, ImageFormat::Png), SourceFormat::Png, 8);
    }

    #[test]
    fn png_gray_alpha_keeps_the_gray_channel() {
        let (w, h) = (40, 30);
        let px: Vec<u16> = pattern16(w, h)
            .into_iter()
            .flat_map(|v| [v, 65535 - v])
            .collect();
        let img =
            DynamicImage::ImageLumaA16(ImageBuffer::<LumaA<u16>, _>::from_raw(w, h, px).unwrap());
        assert_round_trip(&img, &encode(&img, ImageFormat::Png), SourceFormat::Png, 16);
    }

    #[test]
    fn png_sbit_sets_source_bits() {
        let img = gray16(16, 16);
        let png = encode(&img, ImageFormat::Png);
        // Insert an sBIT chunk (12 significant bits) right after IHDR.
        let mut chunk = vec![0, 0, 0, 1];
        chunk.extend_from_slice(b"sBIT");
        chunk.push(12);
        let crc = crc32(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        let patched = [&png[..33], &chunk, &png[33..]].concat();
        let d = decode(&patched, SourceFormat::Png, &limits()).unwrap();
        assert_eq!(d.source_bits, 12);
        assert_eq!(d.pixels, pattern16(16, 16));
    }

    #[test]
    fn tiff_round_trips() {
        let img = gray16(301, 97);
        assert_round_trip(
            &img,
            &encode(&img, ImageFormat::Tiff),
            SourceFormat::Tiff,
            16,
        );
        let img = gray8(301, 97);
        assert_round_trip(
            &img,
            &encode(&img, ImageFormat::Tiff),
            SourceFormat::Tiff,
            8,
        );
    }

    /// LZW and Deflate are what scanner workstations usually write; image's encoder only
    /// writes uncompressed TIFF, so these come from the tiff crate.
    fn encode_tiff_compressed(
        img: &DynamicImage,
        compression: tiff::encoder::Compression,
        predictor: tiff::encoder::Predictor,
    ) -> Vec<u8> {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut out = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut out)
            .unwrap()
            .with_compression(compression)
            .with_predictor(predictor);
        match img {
            DynamicImage::ImageLuma16(b) => enc
                .write_image::<colortype::Gray16>(b.width(), b.height(), b.as_raw())
                .unwrap(),
            DynamicImage::ImageLuma8(b) => enc
                .write_image::<colortype::Gray8>(b.width(), b.height(), b.as_raw())
                .unwrap(),
            _ => unreachable!(),
        }
        out.into_inner()
    }

    #[test]
    fn compressed_tiff_round_trips() {
        use tiff::encoder::{Compression, DeflateLevel, Predictor};
        for img in [gray16(301, 97), gray8(301, 97)] {
            let bits = if matches!(img, DynamicImage::ImageLuma16(_)) {
                16
            } else {
                8
            };
            for (compression, predictor) in [
                (Compression::Lzw, Predictor::None),
                (Compression::Lzw, Predictor::Horizontal),
                (
                    Compression::Deflate(DeflateLevel::Balanced),
                    Predictor::Horizontal,
                ),
                (Compression::Packbits, Predictor::None),
            ] {
                let bytes = encode_tiff_compressed(&img, compression, predictor);
                assert_round_trip(&img, &bytes, SourceFormat::Tiff, bits);
            }
        }
    }

    #[test]
    fn tiff_strips_that_inflate_hugely_are_bounded_by_the_limits() {
        use tiff::encoder::{Compression, DeflateLevel, Predictor};
        // 4000x4000 16-bit zeros: 32 MB of pixels in a file of a few tens of kilobytes.
        let (w, h) = (4000, 4000);
        let zeros = DynamicImage::ImageLuma16(
            ImageBuffer::from_raw(w, h, vec![0u16; (w * h) as usize]).unwrap(),
        );
        let bomb = encode_tiff_compressed(
            &zeros,
            Compression::Deflate(DeflateLevel::Best),
            Predictor::None,
        );
        assert!(bomb.len() < 200_000, "{} bytes", bomb.len());
        let l = DecodeLimits {
            max_pixels: 10_000_000,
            ..limits()
        };
        assert_eq!(
            expect_err(&bomb, SourceFormat::Tiff, &l),
            "image is 4000x4000 = 16000000 pixels; ingest.max_pixels is 10000000"
        );
        // Where the limits allow it, memory follows the declared size, not the inflation.
        let d = decode(&bomb, SourceFormat::Tiff, &limits()).unwrap();
        assert_eq!(d.pixels.len(), 16_000_000);
    }

    #[test]
    fn tiff_unsupported_layouts_are_named() {
        let mut tiff = encode(&gray16(64, 32), ImageFormat::Tiff);
        tiff_set(&mut tiff, 258, 12); // BitsPerSample
        assert_eq!(
            expect_err(&tiff, SourceFormat::Tiff, &limits()),
            "TIFF sample layout with 12 bits per pixel (expected 8- or 16-bit grayscale) is not supported"
        );
        let mut tiff = encode(&gray16(64, 32), ImageFormat::Tiff);
        let bytes = tiff.len();
        tiff.truncate(bytes - 100);
        let msg = expect_err(&tiff, SourceFormat::Tiff, &limits());
        assert!(
            msg.starts_with(
                "TIFF is truncated or corrupt: the file ends before the image data does"
            ),
            "{msg}"
        );
    }

    #[test]
    fn tiff_white_is_zero_is_inverted() {
        let img = gray16(64, 32);
        let mut tiff = encode(&img, ImageFormat::Tiff);
        tiff_set(&mut tiff, 262, 0); // PhotometricInterpretation = WhiteIsZero
        let d = decode(&tiff, SourceFormat::Tiff, &limits()).unwrap();
        let want: Vec<u16> = pattern16(64, 32).iter().map(|v| 65535 - v).collect();
        assert_eq!(d.pixels, want);

        let img = gray8(64, 32);
        let mut tiff = encode(&img, ImageFormat::Tiff);
        tiff_set(&mut tiff, 262, 0);
        let d = decode(&tiff, SourceFormat::Tiff, &limits()).unwrap();
        let want: Vec<u16> = pattern8(64, 32)
            .iter()
            .map(|&v| 65535 - u16::from(v) * 257)
            .collect();
        assert_eq!(d.pixels, want);
    }

    #[test]
    fn pgm_round_trips() {
        let img = gray16(301, 97);
        assert_round_trip(
            &img,
            &encode_pgm(&img, SampleEncoding::Binary),
            SourceFormat::Pgm,
            16,
        );
        assert_round_trip(
            &img,
            &encode_pgm(&img, SampleEncoding::Ascii),
            SourceFormat::Pgm,
            16,
        );
        let img = gray8(301, 97);
        assert_round_trip(
            &img,
            &encode_pgm(&img, SampleEncoding::Binary),
            SourceFormat::Pgm,
            8,
        );
        assert_round_trip(
            &img,
            &encode_pgm(&img, SampleEncoding::Ascii),
            SourceFormat::Pgm,
            8,
        );
    }

    /// A hand-written PGM, as 12-bit detectors' tools write them.
    fn pgm_bytes(plain: bool, w: u32, h: u32, maxval: u32, samples: &[u32]) -> Vec<u8> {
        let magic = if plain { "P2" } else { "P5" };
        let mut out = format!("{magic}\n# written by a test\n{w} {h}\n{maxval}\n").into_bytes();
        for (i, &v) in samples.iter().enumerate() {
            if plain {
                out.extend_from_slice(
                    format!("{v}{}", if i % 17 == 16 { '\n' } else { ' ' }).as_bytes(),
                );
            } else if maxval > 255 {
                out.extend_from_slice(&(v as u16).to_be_bytes());
            } else {
                out.push(v as u8);
            }
        }
        out
    }

    #[test]
    fn pgm_odd_maxval_is_scaled_exactly() {
        let (w, h) = (64, 64);
        for (maxval, bits) in [(4095u32, 12u8), (1000, 10), (100, 7)] {
            let samples: Vec<u32> = (0..w * h).map(|i| i % (maxval + 1)).collect();
            let want: Vec<u16> = samples
                .iter()
                .map(|&v| norm(u64::from(v), u64::from(maxval)))
                .collect();
            for plain in [false, true] {
                let d = decode(
                    &pgm_bytes(plain, w, h, maxval, &samples),
                    SourceFormat::Pgm,
                    &limits(),
                )
                .unwrap();
                assert_eq!(d.source_bits, bits);
                assert_eq!(d.pixels, want, "maxval {maxval} plain {plain}");
                assert_eq!(d.pixels[maxval as usize], 65535);
            }
        }
        // Spot values from the formula, so the formula itself is pinned down.
        assert_eq!(norm(2048, 4095), 32776);
        assert_eq!(norm(1, 4095), 16);
    }

    #[test]
    fn pgm_sample_above_maxval_is_refused() {
        let samples = [0, 4095, 4096, 7];
        let msg = expect_err(
            &pgm_bytes(false, 2, 2, 4095, &samples),
            SourceFormat::Pgm,
            &limits(),
        );
        assert!(
            msg.contains("sample value 4096 exceeds the declared maxval 4095"),
            "{msg}"
        );
        let msg = expect_err(
            &pgm_bytes(true, 2, 2, 4095, &samples),
            SourceFormat::Pgm,
            &limits(),
        );
        assert!(msg.contains("exceeds the declared maxval"), "{msg}");
    }

    #[test]
    fn truncated_files_are_errors() {
        let img = gray16(200, 100);
        for (format, bytes) in [
            (SourceFormat::Tiff, encode(&img, ImageFormat::Tiff)),
            (SourceFormat::Png, encode(&img, ImageFormat::Png)),
            (SourceFormat::Pgm, encode_pgm(&img, SampleEncoding::Binary)),
            (SourceFormat::Pgm, encode_pgm(&img, SampleEncoding::Ascii)),
        ] {
            let msg = expect_err(&bytes[..bytes.len() / 2], format, &limits());
            assert!(
                msg.starts_with(&format!("{} is truncated or corrupt: ", format.label())),
                "{format}: {msg}"
            );
        }
    }

    #[test]
    fn empty_files_and_zero_dimensions() {
        for format in SourceFormat::ALL {
            let msg = expect_err(&[], format, &limits());
            assert!(msg.contains("the file is empty"), "{msg}");
        }
        let msg = expect_err(b"P5 0 0 255\n", SourceFormat::Pgm, &limits());
        assert_eq!(
            msg,
            "image is 0x0 pixels; an image needs at least one row and one column"
        );
        let png = png_with_dimensions(encode(&gray8(8, 8), ImageFormat::Png), 0, 8);
        let msg = expect_err(&png, SourceFormat::Png, &limits());
        assert!(msg.starts_with("image is 0x8 pixels"), "{msg}");
        let mut tiff = encode(&gray8(8, 8), ImageFormat::Tiff);
        tiff_set(&mut tiff, 256, 0);
        expect_err(&tiff, SourceFormat::Tiff, &limits());
    }

    #[test]
    fn over_limit_dimensions_are_refused() {
        let l = DecodeLimits {
            max_width: 300,
            max_height: 200,
            max_pixels: 50_000,
            max_file_bytes: 1 << 20,
        };
        for (w, h, want) in [
            (301, 10, "image is 301x10 pixels; ingest.max_width is 300"),
            (10, 201, "image is 10x201 pixels; ingest.max_height is 200"),
            (
                300,
                200,
                "image is 300x200 = 60000 pixels; ingest.max_pixels is 50000",
            ),
        ] {
            let img = gray16(w, h);
            for (format, bytes) in [
                (SourceFormat::Tiff, encode(&img, ImageFormat::Tiff)),
                (SourceFormat::Png, encode(&img, ImageFormat::Png)),
                (SourceFormat::Pgm, encode_pgm(&img, SampleEncoding::Binary)),
            ] {
                assert_eq!(expect_err(&bytes, format, &l), want, "{format}");
            }
        }
    }

    #[test]
    fn file_over_max_file_bytes_is_refused() {
        let bytes = encode(&gray16(64, 64), ImageFormat::Png);
        let l = DecodeLimits {
            max_file_bytes: 1000,
            ..limits()
        };
        let msg = expect_err(&bytes, SourceFormat::Png, &l);
        assert_eq!(
            msg,
            format!(
                "file is {} bytes; ingest.max_file_bytes is 1000",
                bytes.len()
            )
        );
    }

    #[test]
    fn png_decompression_bomb_is_refused_before_allocating() {
        let small = encode(&gray8(64, 64), ImageFormat::Png);
        let bomb = png_with_dimensions(small.clone(), 30_000, 30_000);
        assert!(bomb.len() < 10_000);
        let msg = expect_err(&bomb, SourceFormat::Png, &limits());
        assert_eq!(
            msg,
            "image is 30000x30000 pixels; ingest.max_width is 20000"
        );
        let bomb = png_with_dimensions(small.clone(), 20_000, 20_000);
        let msg = expect_err(&bomb, SourceFormat::Png, &limits());
        assert_eq!(
            msg,
            "image is 20000x20000 = 400000000 pixels; ingest.max_pixels is 100000000"
        );
        // Within the limits, the missing image data is an error, not a hang or a panic.
        let lie = png_with_dimensions(small, 3000, 2000);
        let msg = expect_err(&lie, SourceFormat::Png, &limits());
        assert!(msg.starts_with("PNG is truncated or corrupt"), "{msg}");
    }

    #[test]
    fn tiff_with_lying_header_is_refused() {
        let small = encode(&gray16(64, 64), ImageFormat::Tiff);
        let mut bomb = small.clone();
        tiff_set(&mut bomb, 256, 30_000); // ImageWidth
        tiff_set(&mut bomb, 257, 30_000); // ImageLength
        assert_eq!(
            expect_err(&bomb, SourceFormat::Tiff, &limits()),
            "image is 30000x30000 pixels; ingest.max_width is 20000"
        );
        let mut lie = small.clone();
        tiff_set(&mut lie, 257, 5_000);
        tiff_set(&mut lie, 278, 5_000); // RowsPerStrip
        tiff_set(&mut lie, 279, 0x7FFF_0000); // StripByteCounts far past the end of the file
        expect_err(&lie, SourceFormat::Tiff, &limits());
        let mut lie = small;
        tiff_set(&mut lie, 273, 0x7FFF_0000); // StripOffsets past the end
        expect_err(&lie, SourceFormat::Tiff, &limits());
    }

    #[test]
    fn colour_images_are_refused_by_name() {
        let rgb =
            DynamicImage::ImageRgb8(ImageBuffer::<Rgb<u8>, _>::from_pixel(8, 8, Rgb([1, 2, 3])));
        assert_eq!(
            expect_err(&encode(&rgb, ImageFormat::Png), SourceFormat::Png, &limits()),
            "PNG colour type Rgb8 is not grayscale; scanners must deliver single-channel grayscale images"
        );
        assert!(expect_err(
            &encode(&rgb, ImageFormat::Tiff),
            SourceFormat::Tiff,
            &limits()
        )
        .starts_with("TIFF colour type Rgb8 is not grayscale"));
        assert!(expect_err(
            &rgb.to_rgba16().into_dynamic_png(),
            SourceFormat::Png,
            &limits()
        )
        .starts_with("PNG colour type Rgba16 is not grayscale"));
        let ppm = b"P6 1 1 255\n\x01\x02\x03";
        assert!(expect_err(ppm, SourceFormat::Pgm, &limits()).starts_with("PGM colour type RGB"));
    }

    trait IntoPng {
        fn into_dynamic_png(self) -> Vec<u8>;
    }
    impl IntoPng for ImageBuffer<image::Rgba<u16>, Vec<u16>> {
        fn into_dynamic_png(self) -> Vec<u8> {
            encode(&DynamicImage::ImageRgba16(self), ImageFormat::Png)
        }
    }

    #[test]
    fn garbage_is_an_error_for_every_format() {
        let mut seed = 0x1234_5678_u32;
        let garbage: Vec<u8> = (0..5000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        for format in SourceFormat::ALL {
            let msg = expect_err(&garbage, format, &limits());
            assert!(msg.contains("truncated or corrupt"), "{format}: {msg}");
        }
    }

    #[test]
    fn content_of_another_format_is_named() {
        let png = encode(&gray8(8, 8), ImageFormat::Png);
        assert_eq!(
            expect_err(&png, SourceFormat::Tiff, &limits()),
            "TIFF is truncated or corrupt: the content is a PNG file, not TIFF"
        );
    }

    // ----- DICOM ------------------------------------------------------------------------------

    /// The real radiographs from pydicom-data (see scripts/fetch-test-data).
    fn real_dicom(name: &str) -> Vec<u8> {
        let dir = std::env::var_os("RIAC_TEST_DICOM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache/dicom")
            });
        let path = dir.join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "test DICOM {} is not available ({e}): run scripts/fetch-test-data, and set \
                 RIAC_TEST_DICOM_DIR to its tests/data/cache/dicom if this crate is not the repository root",
                path.display()
            )
        })
    }

    fn check_real_radiograph(name: &str, width: u32, height: u32, bits: u16) {
        let bytes = real_dicom(name);
        let d = decode(&bytes, SourceFormat::Dicom, &limits()).unwrap();
        assert_eq!((d.width, d.height), (width, height));
        assert_eq!(d.source_bits, bits as u8);
        let info = d.dicom.as_ref().unwrap();
        assert_eq!(info.photometric_interpretation, "MONOCHROME1");
        assert_eq!(info.bits_stored, bits);
        assert_eq!(info.modality.as_deref(), Some("CR"));
        assert_eq!(info.transfer_syntax_uid, EXPLICIT_LE);
        assert_eq!(info.rescaled_range, (0.0, f64::from((1u32 << bits) - 1)));

        // Every pixel against the stored value read independently through dicom-object:
        // MONOCHROME1 means display = 65535 - normalised stored value.
        let obj = OpenFileOptions::new().from_reader(&bytes[128..]).unwrap();
        let stored = obj
            .get(tags::PIXEL_DATA)
            .unwrap()
            .to_multi_int::<u16>()
            .unwrap();
        let max = (1u64 << bits) - 1;
        assert_eq!(stored.len(), d.pixels.len());
        for (i, (&s, &p)) in stored.iter().zip(&d.pixels).enumerate() {
            assert_eq!(
                p,
                65535 - norm(u64::from(s) & max, max),
                "pixel {i} (stored {s})"
            );
        }

        // A radiograph, not a blank: a spread of values, not piled up at either end.
        let n = d.pixels.len() as f64;
        let mean = d.pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        assert!((6_000.0..60_000.0).contains(&mean), "mean {mean}");
        // RG3 has a large unexposed border (stored 0), so up to half may sit at one end.
        let extremes = d.pixels.iter().filter(|&&v| v == 0 || v == 65535).count() as f64;
        assert!(extremes / n < 0.5, "{extremes} pixels at 0 or 65535");
        let inner: Vec<f64> = d
            .pixels
            .iter()
            .filter(|&&v| v != 0 && v != 65535)
            .map(|&v| f64::from(v))
            .collect();
        let inner_mean = inner.iter().sum::<f64>() / inner.len() as f64;
        let sd = (inner.iter().map(|v| (v - inner_mean).powi(2)).sum::<f64>() / inner.len() as f64)
            .sqrt();
        assert!(
            sd > 2000.0,
            "standard deviation {sd}: too flat for a radiograph"
        );
        let mut seen = vec![false; 65536];
        d.pixels.iter().for_each(|&v| seen[usize::from(v)] = true);
        let distinct = seen.iter().filter(|&&s| s).count();
        assert!(
            distinct > (max as usize).min(2000) / 4,
            "{distinct} distinct values"
        );
    }

    #[test]
    fn real_cr_rg1_15_bit_monochrome1() {
        check_real_radiograph("RG1_UNCR.dcm", 1841, 1955, 15);
    }

    #[test]
    fn real_cr_rg3_10_bit_monochrome1() {
        check_real_radiograph("RG3_UNCR.dcm", 1760, 1760, 10);
    }

    #[test]
    fn real_dicom_truncated_or_over_limit() {
        let bytes = real_dicom("RG1_UNCR.dcm");
        let msg = expect_err(&bytes[..bytes.len() / 2], SourceFormat::Dicom, &limits());
        assert!(msg.starts_with("DICOM is truncated or corrupt: "), "{msg}");
        assert!(
            msg.contains("element (7FE0,0010) declares 7198310 bytes"),
            "{msg}"
        );
        // Cut inside a tag, and cut cleanly between two elements (1596 is where PixelData
        // starts): both are truncation, not a missing attribute.
        let msg = expect_err(&bytes[..1000], SourceFormat::Dicom, &limits());
        assert!(
            msg.contains("the file ends inside an element header at offset 998"),
            "{msg}"
        );
        let msg = expect_err(&bytes[..1596], SourceFormat::Dicom, &limits());
        assert_eq!(
            msg,
            "DICOM is truncated or corrupt: the data set has no PixelData (7FE0,0010): \
             the file is truncated or not an image"
        );
        let msg = expect_err(&bytes[..300], SourceFormat::Dicom, &limits());
        assert!(
            msg.contains("the file ends inside the file meta group"),
            "{msg}"
        );
        let l = DecodeLimits {
            max_height: 1900,
            ..limits()
        };
        assert_eq!(
            expect_err(&bytes, SourceFormat::Dicom, &l),
            "image is 1841x1955 pixels; ingest.max_height is 1900"
        );
    }

    /// A small DICOM object built with dicom-object.
    struct Synth {
        ts: &'static str,
        rows: u16,
        cols: u16,
        bits_allocated: u16,
        bits_stored: u16,
        high_bit: u16,
        signed: bool,
        photometric: &'static str,
        slope: Option<&'static str>,
        intercept: Option<&'static str>,
        frames: Option<&'static str>,
        samples: u16,
        words: Vec<u16>,
        pixel_value: Option<Value<InMemDicomObject, Vec<u8>>>,
    }

    impl Synth {
        fn new(rows: u16, cols: u16, bits_stored: u16, words: Vec<u16>) -> Synth {
            Synth {
                ts: EXPLICIT_LE,
                rows,
                cols,
                bits_allocated: 16,
                bits_stored,
                high_bit: bits_stored - 1,
                signed: false,
                photometric: "MONOCHROME2",
                slope: None,
                intercept: None,
                frames: None,
                samples: 1,
                words,
                pixel_value: None,
            }
        }

        fn build(&self) -> Vec<u8> {
            let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
            let mut els = vec![
                DataElement::new(
                    tags::SOP_CLASS_UID,
                    VR::UI,
                    PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1.1"),
                ),
                DataElement::new(
                    tags::SOP_INSTANCE_UID,
                    VR::UI,
                    PrimitiveValue::from("2.25.1234"),
                ),
                DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("DX")),
                us(tags::SAMPLES_PER_PIXEL, self.samples),
                DataElement::new(
                    tags::PHOTOMETRIC_INTERPRETATION,
                    VR::CS,
                    PrimitiveValue::from(self.photometric),
                ),
                us(tags::ROWS, self.rows),
                us(tags::COLUMNS, self.cols),
                us(tags::BITS_ALLOCATED, self.bits_allocated),
                us(tags::BITS_STORED, self.bits_stored),
                us(tags::HIGH_BIT, self.high_bit),
                us(tags::PIXEL_REPRESENTATION, u16::from(self.signed)),
            ];
            if let Some(s) = self.slope {
                els.push(DataElement::new(
                    tags::RESCALE_SLOPE,
                    VR::DS,
                    PrimitiveValue::from(s),
                ));
            }
            if let Some(i) = self.intercept {
                els.push(DataElement::new(
                    tags::RESCALE_INTERCEPT,
                    VR::DS,
                    PrimitiveValue::from(i),
                ));
            }
            if let Some(f) = self.frames {
                els.push(DataElement::new(
                    tags::NUMBER_OF_FRAMES,
                    VR::IS,
                    PrimitiveValue::from(f),
                ));
            }
            let pixel_data = match &self.pixel_value {
                Some(v) => DataElement::new(tags::PIXEL_DATA, VR::OB, v.clone()),
                None if self.bits_allocated == 8 => {
                    let bytes: Vec<u8> = self.words.iter().map(|&w| w as u8).collect();
                    DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(bytes.into()))
                }
                None => DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::U16(self.words.clone().into()),
                ),
            };
            // Nested sequences, so every encoding exercises the structure pre-scan.
            let code = InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("121311")),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
            ]);
            let reference = InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1.1"),
                ),
                DataElement::new(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    VR::SQ,
                    DataSetSequence::from(vec![code.clone(), code]),
                ),
            ]);
            els.push(DataElement::new(
                tags::REFERENCED_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![reference]),
            ));
            els.push(pixel_data);
            let obj = InMemDicomObject::from_element_iter(els)
                .with_meta(FileMetaTableBuilder::new().transfer_syntax(self.ts))
                .unwrap();
            let mut out = Vec::new();
            obj.write_all(&mut out).unwrap();
            out
        }
    }

    #[test]
    fn synthetic_12_bit_with_rescale_is_exact_in_every_encoding() {
        let (rows, cols) = (13u16, 17u16);
        let words: Vec<u16> = (0..u32::from(rows) * u32::from(cols))
            .map(|i| (i * 19) as u16 % 4096)
            .chain([0, 4095])
            .skip(2)
            .collect();
        let mut s = Synth::new(rows, cols, 12, words.clone());
        s.slope = Some("2");
        s.intercept = Some("-100");
        let want: Vec<u16> = words.iter().map(|&w| norm(u64::from(w), 4095)).collect();
        for ts in [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE] {
            s.ts = ts;
            let d = decode(&s.build(), SourceFormat::Dicom, &limits()).unwrap();
            assert_eq!((d.width, d.height), (17, 13));
            assert_eq!(d.source_bits, 12);
            assert_eq!(d.pixels, want, "{ts}");
            let info = d.dicom.unwrap();
            assert_eq!((info.rescale_slope, info.rescale_intercept), (2.0, -100.0));
            assert_eq!(info.rescaled_range, (-100.0, 8090.0));
            assert_eq!(info.photometric_interpretation, "MONOCHROME2");
            assert_eq!(info.modality.as_deref(), Some("DX"));
            assert_eq!(
                info.sop_class_uid.as_deref(),
                Some("1.2.840.10008.5.1.4.1.1.1.1")
            );
            assert_eq!(info.transfer_syntax_uid, ts);
        }
    }

    #[test]
    fn synthetic_signed_pixels() {
        let values: [i16; 6] = [-2048, -1, 0, 1, 2047, -1000];
        // Sign-extended to 16 bits, as writers normally store them.
        let words: Vec<u16> = values.iter().map(|&v| v as u16).collect();
        let mut s = Synth::new(2, 3, 12, words);
        s.signed = true;
        s.intercept = Some("-1024");
        let d = decode(&s.build(), SourceFormat::Dicom, &limits()).unwrap();
        let want: Vec<u16> = values
            .iter()
            .map(|&v| norm((i64::from(v) + 2048) as u64, 4095))
            .collect();
        assert_eq!(d.pixels, want);
        assert_eq!(d.pixels[0], 0);
        assert_eq!(d.pixels[4], 65535);
        let info = d.dicom.unwrap();
        assert!(info.pixel_signed);
        assert_eq!(info.rescaled_range, (-3072.0, 1023.0));
    }

    #[test]
    fn synthetic_polarity_monochrome1_and_negative_slope() {
        let words = vec![0u16, 100, 1023];
        let base: Vec<u16> = words.iter().map(|&w| norm(u64::from(w), 1023)).collect();
        let inverted: Vec<u16> = base.iter().map(|v| 65535 - v).collect();
        let mut s = Synth::new(1, 3, 10, words);
        s.photometric = "MONOCHROME1";
        assert_eq!(
            decode(&s.build(), SourceFormat::Dicom, &limits())
                .unwrap()
                .pixels,
            inverted
        );
        s.slope = Some("-1.5");
        assert_eq!(
            decode(&s.build(), SourceFormat::Dicom, &limits())
                .unwrap()
                .pixels,
            base
        );
        s.photometric = "MONOCHROME2";
        assert_eq!(
            decode(&s.build(), SourceFormat::Dicom, &limits())
                .unwrap()
                .pixels,
            inverted
        );
    }

    #[test]
    fn synthetic_8_bit_and_high_bit_layouts() {
        let words: Vec<u16> = (0..=255).collect();
        let mut s = Synth::new(16, 16, 8, words.clone());
        s.bits_allocated = 8;
        let want: Vec<u16> = words.iter().map(|&w| w * 257).collect();
        for ts in [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE] {
            s.ts = ts;
            let d = decode(&s.build(), SourceFormat::Dicom, &limits()).unwrap();
            assert_eq!(d.pixels, want, "{ts}");
            assert_eq!(d.source_bits, 8);
        }
        // 12 bits stored in the top of the word (HighBit 15), with junk in the low bits.
        let values = [0u16, 1, 2048, 4095];
        let words: Vec<u16> = values.iter().map(|&v| (v << 4) | 0xA).collect();
        let mut s = Synth::new(2, 2, 12, words);
        s.high_bit = 15;
        let d = decode(&s.build(), SourceFormat::Dicom, &limits()).unwrap();
        let want: Vec<u16> = values.iter().map(|&v| norm(u64::from(v), 4095)).collect();
        assert_eq!(d.pixels, want);
        // Bits above BitsStored (overlays, junk) are ignored.
        let mut s = Synth::new(1, 2, 12, vec![0xF000 | 4095, 0xF000]);
        s.ts = EXPLICIT_LE;
        assert_eq!(
            decode(&s.build(), SourceFormat::Dicom, &limits())
                .unwrap()
                .pixels,
            vec![65535, 0]
        );
    }

    #[test]
    fn dicom_refusals_are_precise() {
        let mut s = Synth::new(2, 2, 8, vec![0; 12]);
        s.bits_allocated = 8;
        s.photometric = "RGB";
        s.samples = 3;
        assert_eq!(
            expect_err(&s.build(), SourceFormat::Dicom, &limits()),
            "DICOM photometric interpretation RGB is not supported; expected MONOCHROME1 or MONOCHROME2"
        );
        let mut s = Synth::new(2, 2, 12, vec![0; 8]);
        s.frames = Some("2");
        assert_eq!(
            expect_err(&s.build(), SourceFormat::Dicom, &limits()),
            "DICOM object has 2 frames; only single-frame 2D images are supported"
        );
        let mut s = Synth::new(2, 2, 12, vec![0; 4]);
        s.ts = "1.2.840.10008.1.2.4.90";
        assert_eq!(
            expect_err(&s.build(), SourceFormat::Dicom, &limits()),
            "DICOM transfer syntax JPEG 2000 (Lossless Only) (1.2.840.10008.1.2.4.90) is not supported; \
             use uncompressed, RLE or JPEG (baseline or lossless)"
        );
        let mut s = Synth::new(2, 2, 12, vec![0; 4]);
        s.slope = Some("0");
        assert!(expect_err(&s.build(), SourceFormat::Dicom, &limits())
            .contains("RescaleSlope (0028,1053)"));
        let s = Synth::new(2, 2, 17, vec![0; 4]);
        assert!(expect_err(&s.build(), SourceFormat::Dicom, &limits())
            .contains("BitsStored (0028,0101)"));
        let s = Synth::new(4, 4, 12, vec![0; 15]);
        let msg = expect_err(&s.build(), SourceFormat::Dicom, &limits());
        assert_eq!(msg, "DICOM is truncated or corrupt: pixel data has 30 bytes; 4x4 at 16 bits allocated needs 32");
        let s = Synth::new(0, 4, 12, vec![]);
        assert_eq!(
            expect_err(&s.build(), SourceFormat::Dicom, &limits()),
            "image is 4x0 pixels; an image needs at least one row and one column"
        );
        let mut s = Synth::new(2, 2, 12, vec![0; 4]);
        s.photometric = "PALETTE COLOR";
        assert!(expect_err(&s.build(), SourceFormat::Dicom, &limits())
            .contains("PALETTE COLOR is not supported"));
    }

    /// Appends raw explicit-VR-LE bytes after the pixel data of a valid object.
    fn with_trailing(extra: &[u8]) -> Vec<u8> {
        let mut bytes = Synth::new(2, 2, 12, vec![1, 2, 3, 4]).build();
        bytes.extend_from_slice(extra);
        bytes
    }

    #[test]
    fn dicom_declared_lengths_are_checked_before_dicom_rs_allocates() {
        // A private OB element declaring ~4 GiB in a file of a few hundred bytes: dicom-rs
        // would zero-fill the full declared length before noticing the file has ended.
        let mut extra = vec![0x09, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0];
        extra.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let msg = expect_err(&with_trailing(&extra), SourceFormat::Dicom, &limits());
        assert!(
            msg.contains("element (7F09,0010) declares 4294967280 bytes"),
            "{msg}"
        );
        // The same inside a sequence item.
        let mut extra = vec![
            0x09, 0x7F, 0x11, 0x00, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        extra.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        extra.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'U', b'T', 0, 0]);
        extra.extend_from_slice(&0x8000_0000u32.to_le_bytes());
        let msg = expect_err(&with_trailing(&extra), SourceFormat::Dicom, &limits());
        assert!(msg.contains("declares 2147483648 bytes"), "{msg}");
    }

    /// Found by fuzzing: a VR flipped from SH to SL leaves a 6-byte value that dicom-rs reads
    /// as one 4-byte SL, so it would take the last 2 value bytes for the next header and
    /// allocate whatever length that garbage declared.
    #[test]
    fn dicom_ragged_binary_lengths_are_refused() {
        let mut bytes = Synth::new(2, 2, 12, vec![1, 2, 3, 4]).build();
        let code_value = [0x08, 0x00, 0x00, 0x01, b'S', b'H', 6, 0];
        let at = bytes
            .windows(8)
            .position(|w| w == code_value)
            .expect("CodeValue element");
        bytes[at + 5] = b'L';
        let msg = expect_err(&bytes, SourceFormat::Dicom, &limits());
        assert!(
            msg.contains("element (0008,0100) has VR SL but a length of 6 bytes, not a whole number of 4-byte values"),
            "{msg}"
        );
    }

    #[test]
    fn dicom_deep_nesting_is_refused() {
        let mut extra = Vec::new();
        for _ in 0..40 {
            extra.extend_from_slice(&[
                0x09, 0x7F, 0x11, 0x00, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            extra.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let msg = expect_err(&with_trailing(&extra), SourceFormat::Dicom, &limits());
        assert!(msg.contains("nested more than 16 deep"), "{msg}");
        // Moderate nesting that is properly closed is fine.
        let mut extra = Vec::new();
        for _ in 0..3 {
            extra.extend_from_slice(&[
                0x09, 0x7F, 0x11, 0x00, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            extra.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..3 {
            extra.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            extra.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        decode(&with_trailing(&extra), SourceFormat::Dicom, &limits()).unwrap();
    }

    #[test]
    fn dicom_without_part10_header_is_refused() {
        let bytes = Synth::new(2, 2, 12, vec![0; 4]).build();
        let msg = expect_err(&bytes[132..], SourceFormat::Dicom, &limits());
        assert!(msg.contains("no DICM magic"), "{msg}");
        // Preamble-less Part 10 streams are fine.
        decode(&bytes[128..], SourceFormat::Dicom, &limits()).unwrap();
    }

    /// PackBits literal runs: valid RLE, just not compressed.
    fn packbits_literal(data: &[u8]) -> Vec<u8> {
        data.chunks(128)
            .flat_map(|c| std::iter::once((c.len() - 1) as u8).chain(c.iter().copied()))
            .collect()
    }

    fn rle_fragment(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut header = [0u32; 16];
        header[0] = segments.len() as u32;
        let mut offset = 64;
        for (i, s) in segments.iter().enumerate() {
            header[i + 1] = offset;
            offset += s.len() as u32;
        }
        let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
        segments.iter().for_each(|s| out.extend_from_slice(s));
        if out.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn encapsulated(fragment: Vec<u8>) -> Value<InMemDicomObject, Vec<u8>> {
        Value::PixelSequence(PixelFragmentSequence::new(
            Vec::<u32>::new(),
            vec![fragment],
        ))
    }

    #[test]
    fn rle_compressed_dicom() {
        let (rows, cols) = (10u16, 30u16);
        let words: Vec<u16> = (0..300u16).map(|i| i * 13 % 4096).collect();
        let msb: Vec<u8> = words.iter().map(|w| (w >> 8) as u8).collect();
        let lsb: Vec<u8> = words.iter().map(|w| *w as u8).collect();
        let mut s = Synth::new(rows, cols, 12, vec![]);
        s.ts = RLE;
        s.pixel_value = Some(encapsulated(rle_fragment(&[
            packbits_literal(&msb),
            packbits_literal(&lsb),
        ])));
        let d = decode(&s.build(), SourceFormat::Dicom, &limits()).unwrap();
        let want: Vec<u16> = words.iter().map(|&w| norm(u64::from(w), 4095)).collect();
        assert_eq!(d.pixels, want);

        // A segment of replicate runs that expands far beyond one frame.
        let bomb: Vec<u8> = [0x81u8, 0].repeat(2000); // each pair expands to 128 bytes
        s.pixel_value = Some(encapsulated(rle_fragment(&[bomb, packbits_literal(&lsb)])));
        let msg = expect_err(&s.build(), SourceFormat::Dicom, &limits());
        assert!(msg.contains("segment 0 expands beyond 300 bytes"), "{msg}");
        // A segment that is too short.
        s.pixel_value = Some(encapsulated(rle_fragment(&[
            packbits_literal(&msb[..10]),
            packbits_literal(&lsb),
        ])));
        let msg = expect_err(&s.build(), SourceFormat::Dicom, &limits());
        assert!(msg.contains("segment 0 holds 10 of 300 bytes"), "{msg}");
    }

    #[test]
    fn jpeg_frame_header_must_match_the_dicom_attributes() {
        // SOI, a comment segment, then SOF3 (lossless): precision 12, 300 rows, 200 columns, 1 component.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i'];
        jpeg.extend_from_slice(&[
            0xFF, 0xC3, 0x00, 0x0B, 12, 0x01, 0x2C, 0x00, 0xC8, 0x01, 0x01, 0x11, 0x00,
        ]);
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(jpeg_frame_header(&jpeg), Ok((12, 300, 200, 1)));
        assert!(check_jpeg_frame(&jpeg, 300, 200, 16).is_ok());
        assert!(check_jpeg_frame(&jpeg, 300, 200, 8).is_err());
        assert!(check_jpeg_frame(&jpeg, 30, 20, 16).is_err());
        assert!(jpeg_frame_header(&jpeg[..12]).is_err());
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xDA]).is_err());
        assert!(jpeg_frame_header(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00]).is_err());

        // In a DICOM object: a JPEG that claims to be far larger than Rows x Columns.
        let mut s = Synth::new(30, 20, 12, vec![]);
        s.ts = JPEG_LOSSLESS;
        s.pixel_value = Some(encapsulated(jpeg.clone()));
        let msg = expect_err(&s.build(), SourceFormat::Dicom, &limits());
        assert!(
            msg.contains("the JPEG frame is 200x300 but Columns x Rows is 20x30"),
            "{msg}"
        );
        // Matching header but no real scan data: the decompressor's error, not a panic.
        let mut s = Synth::new(300, 200, 12, vec![]);
        s.ts = JPEG_LOSSLESS;
        s.pixel_value = Some(encapsulated(jpeg));
        let msg = expect_err(&s.build(), SourceFormat::Dicom, &limits());
        assert!(
            msg.starts_with("DICOM is truncated or corrupt: cannot decompress"),
            "{msg}"
        );
    }

    /// Truncations and byte corruptions of valid small files of every kind: each must decode
    /// or fail with an error, and no third-party decoder may panic.
    #[test]
    fn corrupted_inputs_never_panic() {
        let img16 = gray16(40, 30);
        let img8 = gray8(40, 30);
        let mut rle = Synth::new(4, 4, 12, vec![]);
        rle.ts = RLE;
        let w: Vec<u8> = (0..16u8).collect();
        rle.pixel_value = Some(encapsulated(rle_fragment(&[
            packbits_literal(&w),
            packbits_literal(&w),
        ])));
        let mut implicit = Synth::new(8, 8, 12, (0..64).collect());
        implicit.ts = IMPLICIT_LE;
        let cases: Vec<(SourceFormat, Vec<u8>)> = vec![
            (SourceFormat::Png, encode(&img16, ImageFormat::Png)),
            (SourceFormat::Png, encode(&img8, ImageFormat::Png)),
            (SourceFormat::Tiff, encode(&img16, ImageFormat::Tiff)),
            (SourceFormat::Tiff, encode(&img8, ImageFormat::Tiff)),
            (
                SourceFormat::Pgm,
                encode_pgm(&img16, SampleEncoding::Binary),
            ),
            (SourceFormat::Pgm, encode_pgm(&img8, SampleEncoding::Ascii)),
            (
                SourceFormat::Dicom,
                Synth::new(8, 8, 12, (0..64).collect()).build(),
            ),
            (SourceFormat::Dicom, implicit.build()),
            (SourceFormat::Dicom, rle.build()),
        ];
        let mut seed = 0x9E37_79B9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut runs = 0;
        for (format, good) in &cases {
            decode(good, *format, &limits()).unwrap();
            let mut variants: Vec<Vec<u8>> = (0..good.len())
                .step_by(3)
                .map(|n| good[..n].to_vec())
                .collect();
            for _ in 0..600 {
                let mut v = good.clone();
                let at = next() as usize % v.len();
                match next() % 3 {
                    0 => v[at] = next() as u8,
                    1 => v[at] ^= 1 << (next() % 8),
                    // Length fields are where the danger is.
                    _ => {
                        let big = [0xFF, 0xFF, 0xFF, 0x7F];
                        let end = (at + 4).min(v.len());
                        v[at..end].copy_from_slice(&big[..end - at]);
                    }
                }
                variants.push(v);
            }
            for v in variants {
                runs += 1;
                if let Err(DecodeError::DecoderPanicked { message, .. }) =
                    decode(&v, *format, &limits())
                {
                    panic!(
                        "{format} decoder panicked on a corrupted input of {} bytes: {message}",
                        v.len()
                    );
                }
            }
        }
        assert!(runs > 5000);
    }

    #[test]
    fn panics_become_errors() {
        // Every known panic in the dependencies is pre-empted by a check, so drive the guard
        // that `decode` wraps them in directly.
        let e =
            panic_guard(SourceFormat::Dicom, || panic!("index out of bounds: {}", 7)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DICOM decoder crashed (index out of bounds: 7); the file is probably corrupt"
        );
        let e = panic_guard(SourceFormat::Tiff, || std::panic::panic_any(42u8)).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::DecoderPanicked {
                format: SourceFormat::Tiff,
                ..
            }
        ));
        let d = Decoded {
            width: 1,
            height: 1,
            pixels: vec![0; 1],
            format: SourceFormat::Png,
            source_bits: 8,
            dicom: None,
        };
        assert!(format!("{d:?}").contains("[u16; 1]"));
    }

    /// `cargo test --release -- --ignored --nocapture decode_timings`
    #[test]
    #[ignore]
    fn decode_timings() {
        let (w, h) = (4000u32, 1400u32);
        // Smooth structure plus noise, like a transmission image; pure noise would not compress.
        let px: Vec<u16> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let base = 20_000 + ((x as f32 / 300.0).sin() * 15_000.0) as i32 + (y as i32 * 10);
                (base + ((i.wrapping_mul(2_654_435_761) >> 24) as i32 & 0xFF)) as u16
            })
            .collect();
        let img =
            DynamicImage::ImageLuma16(ImageBuffer::<Luma<u16>, _>::from_raw(w, h, px).unwrap());
        use tiff::encoder::{Compression, DeflateLevel, Predictor};
        let cases = [
            (
                "TIFF 4000x1400 16-bit",
                SourceFormat::Tiff,
                encode(&img, ImageFormat::Tiff),
            ),
            (
                "TIFF LZW+predictor 4000x1400 16-bit",
                SourceFormat::Tiff,
                encode_tiff_compressed(&img, Compression::Lzw, Predictor::Horizontal),
            ),
            (
                "TIFF Deflate+predictor 4000x1400 16-bit",
                SourceFormat::Tiff,
                encode_tiff_compressed(
                    &img,
                    Compression::Deflate(DeflateLevel::Balanced),
                    Predictor::Horizontal,
                ),
            ),
            (
                "PNG 4000x1400 16-bit",
                SourceFormat::Png,
                encode(&img, ImageFormat::Png),
            ),
            (
                "PGM 4000x1400 16-bit",
                SourceFormat::Pgm,
                encode_pgm(&img, SampleEncoding::Binary),
            ),
            (
                "RG1_UNCR.dcm",
                SourceFormat::Dicom,
                real_dicom("RG1_UNCR.dcm"),
            ),
        ];
        for (name, format, bytes) in cases {
            decode(&bytes, format, &limits()).unwrap();
            let n = 10;
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(decode(&bytes, format, &limits()).unwrap());
            }
            println!(
                "{name}: {} bytes, {:?} per decode",
                bytes.len(),
                t.elapsed() / n
            );
        }
    }
}
