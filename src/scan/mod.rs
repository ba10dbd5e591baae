//! Scan domain types: the scan drop contract's sidecar (`riac.scan/1`), parsed raw and then
//! validated into [`ScanMeta`]. This module owns what a valid scan *is* (ISO 6346 container
//! ids, direction/regime rules, timestamps); it never touches files, images or the store.

mod container;
mod sidecar;
pub mod verdict;

pub use container::{check_digit, ContainerId, ContainerIdError};
pub use sidecar::{
    check_drop_file_name, low_energy_name, CabSide, Declaration, Direction, Goods, ImageRef,
    PixelMeaning, Regime, ScanMeta, SidecarError, ValidationLimits, SCAN_SCHEMA,
};

/// A scan id is used as a file name and a URL segment, so its alphabet is restricted.
pub fn is_valid_scan_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_id_alphabet() {
        assert!(is_valid_scan_id("KHI-P1-20261128-000123"));
        assert!(is_valid_scan_id("a.b_c"));
        assert!(!is_valid_scan_id(""));
        assert!(!is_valid_scan_id("../etc/passwd"));
        assert!(!is_valid_scan_id("a/b"));
        assert!(!is_valid_scan_id(".hidden"));
        assert!(!is_valid_scan_id(&"x".repeat(129)));
    }
}
