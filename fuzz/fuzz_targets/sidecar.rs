//! Any bytes as a sidecar: parsing and validation must return Ok or a field error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use riac_node::scan::{ScanMeta, ValidationLimits};

fuzz_target!(|data: &[u8]| {
    let now = time::macros::datetime!(2026-11-28 04:00:00 UTC);
    if let Ok(meta) = ScanMeta::from_json(data, &ValidationLimits::default(), now) {
        // What validation accepted must be safe to use as a file name and a URL segment.
        assert!(riac_node::scan::is_valid_scan_id(&meta.scan_id));
        assert!(riac_node::scan::check_drop_file_name(&meta.image.file, "image.file").is_ok());
    }
});
