//! Any bytes as a tiff image: the decoder returns pixels within the limits or an error,
//! never panics, never allocates past the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use riac_node::ingest::decode::{decode, DecodeLimits, SourceFormat};

const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 4_000_000,
    max_file_bytes: 16 * 1024 * 1024,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decode(data, SourceFormat::Tiff, &LIMITS) {
        assert!(d.width > 0 && d.height > 0);
        assert!(d.width <= LIMITS.max_width && d.height <= LIMITS.max_height);
        assert_eq!(d.pixels.len(), d.width as usize * d.height as usize);
    }
});
