//! Replays what `scripts/fuzz` kept (fuzz/regressions/<target>/*) through the same entry
//! points as the fuzz targets, plus hand-written hostile inputs for the command parser: each
//! must be answered (Ok or an error), never panic.

use std::path::Path;

use riac_node::ingest::decode::{decode, DecodeLimits, SourceFormat};
use riac_node::scan::{ScanMeta, ValidationLimits};
use riac_node::uplink::commands::parse_for_fuzzing;

const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 4_000_000,
    max_file_bytes: 16 * 1024 * 1024,
};

fn run(target: &str, data: &[u8]) {
    match target {
        "sidecar" => {
            let now = time::macros::datetime!(2026-11-28 04:00:00 UTC);
            let _ = ScanMeta::from_json(data, &ValidationLimits::default(), now);
        }
        "decode_tiff" | "decode_png" | "decode_pgm" | "decode_dicom" => {
            let f = match target {
                "decode_tiff" => SourceFormat::Tiff,
                "decode_png" => SourceFormat::Png,
                "decode_pgm" => SourceFormat::Pgm,
                _ => SourceFormat::Dicom,
            };
            if let Ok(d) = decode(data, f, &LIMITS) {
                assert_eq!(d.pixels.len(), d.width as usize * d.height as usize);
            }
        }
        "command" => {
            for name in [
                "thresholds",
                "transit-calibration",
                "image-request",
                "library-add",
                "other",
            ] {
                let _ = parse_for_fuzzing(name, data);
            }
        }
        other => panic!("fuzz/regressions/{other}: no such fuzz target"),
    }
}

#[test]
fn kept_fuzz_inputs_are_answered_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return;
    };
    for d in dirs.flatten().filter(|d| d.path().is_dir()) {
        let target = d.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let data = std::fs::read(f.path()).unwrap();
            run(&target, &data);
        }
    }
}

#[test]
fn hostile_commands_get_an_error_not_a_panic() {
    let deep = format!(
        "{{\"command_id\":\"c1\",\"args\":{}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("thresholds", b"".to_vec()),
        ("thresholds", b"[]".to_vec()),
        ("thresholds", br#"{"command_id": ""}"#.to_vec()),
        ("thresholds", br#"{"command_id": "c1", "args": {"transit": {"refer_score": 1e999}}}"#.to_vec()),
        ("thresholds", br#"{"command_id": "c1", "args": {"transit": {"refer_score": -0.0, "alert_score": "x"}}}"#.to_vec()),
        ("thresholds", br#"{"command_id": "c1", "args": {}}"#.to_vec()),
        ("image-request", br#"{"command_id": "c1", "args": {"scan_id": 7}}"#.to_vec()),
        ("library-add", br#"{"command_id": "c1", "args": {"items": [{"reference_id": null}]}}"#.to_vec()),
        ("transit-calibration", br#"{"command_id": "c1", "args": {"pairs": [{}]}}"#.to_vec()),
        ("transit-calibration", br#"{"command_id": "c1", "args": {"remove": ["no arrow"]}}"#.to_vec()),
        ("transit-calibration", br#"{"command_id": "c1", "args": {"remove": ["A->B", "A->B"]}}"#.to_vec()),
        ("transit-calibration", br#"{"command_id": "c1", "args": {"pairs": [], "other": 1}}"#.to_vec()),
        ("thresholds", deep.into_bytes()),
        ("thresholds", vec![0xff, 0xfe, b'{']),
    ];
    for (name, payload) in cases {
        let r = parse_for_fuzzing(name, &payload);
        assert!(
            r.is_err(),
            "{name} {:?} was accepted",
            String::from_utf8_lossy(&payload)
        );
    }
    assert!(parse_for_fuzzing(
        "transit-calibration",
        br#"{"command_id": "c1", "args": {}}"#
    )
    .is_ok());
    assert!(parse_for_fuzzing(
        "thresholds",
        br#"{"command_id": "c1", "args": {"transit": {"refer_score": 0.4}}}"#
    )
    .is_ok());
}
