//! Canonical JSON, signing bytes and SHA-256: the one place that says which bytes of a JSON
//! message are hashed and signed, for the verdict chain, the audit chain and the centre's
//! signed commands. It never signs or verifies (that is `uplink::keys`) and never decides
//! which scheme a message uses (its contract does: `scan::verdict`, `uplink::commands`).
//!
//! Two canonical forms exist. [`Canonicalization::SortedCompact`] (`riac.verdict/1`, the
//! audit chain, unsigned-scheme commands): compact JSON with keys sorted by their UTF-8
//! bytes and numbers as serde_json writes them (`1.0`), which only a Rust node reproduces
//! from a parsed message. [`Canonicalization::Rfc8785`] (`riac.verdict/2`, commands that
//! name it): the JSON Canonicalization Scheme, which every language has a library for;
//! numbers are IEEE 754 doubles written as ECMAScript does (`1`, `1e+21`), so an integer
//! beyond ±(2^53−1) is refused rather than silently rounded.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Compact JSON with object keys sorted by their UTF-8 bytes, recursively.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// How a message's signing bytes are made from its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonicalization {
    /// Keys sorted by UTF-8 bytes, compact, serde_json's number text (schema version 1).
    SortedCompact,
    /// RFC 8785 (JCS).
    Rfc8785,
}

/// The `signing` member a signed message carries from schema version 2 on: it names the
/// canonicalisation and the signature algorithm, and is itself signed, so neither can be
/// swapped after signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signing {
    pub canonicalization: String,
    pub algorithm: String,
}

/// `signing.canonicalization` of an RFC 8785 message.
pub const CANON_RFC8785: &str = "RFC8785";
/// `signing.canonicalization` of a signature over a file's exact bytes (the evidence
/// export's `manifest.json`): nothing to canonicalise.
pub const CANON_NONE: &str = "none";
/// `signing.algorithm`: Ed25519 (RFC 8032), signature as 128 lowercase hex characters.
pub const ALG_ED25519: &str = "Ed25519";

impl Signing {
    /// What the node writes into every message it signs, and accepts from the centre.
    pub fn rfc8785_ed25519() -> Signing {
        Signing {
            canonicalization: CANON_RFC8785.into(),
            algorithm: ALG_ED25519.into(),
        }
    }

    /// The scheme a received `signing` member names; an unknown one is refused with the
    /// values this node knows, rather than guessed.
    pub fn from_member(member: &Value) -> Result<Canonicalization, String> {
        let s: Signing = serde_json::from_value(member.clone()).map_err(|e| {
            format!("signing: {e}; expected {{\"canonicalization\":\"{CANON_RFC8785}\",\"algorithm\":\"{ALG_ED25519}\"}}")
        })?;
        if s.canonicalization != CANON_RFC8785 {
            return Err(format!(
                "signing.canonicalization {:?} is not known here; expected {CANON_RFC8785:?}",
                s.canonicalization
            ));
        }
        if s.algorithm != ALG_ED25519 {
            return Err(format!(
                "signing.algorithm {:?} is not known here; expected {ALG_ED25519:?}",
                s.algorithm
            ));
        }
        Ok(Canonicalization::Rfc8785)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CanonError {
    /// RFC 8785 numbers are doubles: a larger integer would be signed as a rounded value
    /// that no longer equals what the message says.
    #[error("{path}: the integer {value} is outside ±(2^53−1), which RFC 8785 (I-JSON) cannot sign exactly; send it as a string")]
    UnsafeInteger { path: String, value: String },
    #[error("RFC 8785 canonicalisation failed: {0}")]
    Jcs(String),
    /// The message names no signing scheme this node knows (see its contract).
    #[error("{0}")]
    Scheme(String),
}

/// Largest integer a double holds exactly (2^53 − 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// `v` in canonical form `c`.
pub fn canonical_bytes(v: &Value, c: Canonicalization) -> Result<Vec<u8>, CanonError> {
    match c {
        Canonicalization::SortedCompact => Ok(canonical_json(v).into_bytes()),
        Canonicalization::Rfc8785 => {
            check_safe_integers(v, &mut String::new())?;
            serde_jcs::to_vec(v).map_err(|e| CanonError::Jcs(e.to_string()))
        }
    }
}

/// The bytes that are hashed and signed for a message: `obj` without its top-level
/// `signature` member, in canonical form `c`.
pub fn signing_bytes(obj: &Map<String, Value>, c: Canonicalization) -> Result<Vec<u8>, CanonError> {
    let mut unsigned = obj.clone();
    unsigned.remove("signature");
    canonical_bytes(&Value::Object(unsigned), c)
}

fn check_safe_integers(v: &Value, path: &mut String) -> Result<(), CanonError> {
    match v {
        Value::Number(n) => {
            let safe = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= MAX_SAFE_INTEGER,
                (None, Some(i)) => i.unsigned_abs() <= MAX_SAFE_INTEGER,
                // A float: RFC 8785 writes whatever double it is.
                (None, None) => true,
            };
            if !safe {
                return Err(CanonError::UnsafeInteger {
                    path: if path.is_empty() {
                        "/".into()
                    } else {
                        path.clone()
                    },
                    value: n.to_string(),
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                check_safe_integers(item, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                check_safe_integers(item, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sorted_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": "x\"y"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\"y","d":[{"y":2,"z":1}]},"b":1}"#
        );
    }

    fn jcs(v: &Value) -> String {
        String::from_utf8(canonical_bytes(v, Canonicalization::Rfc8785).unwrap()).unwrap()
    }

    /// RFC 8785 §3.2.2.3 and Appendix B: numbers as ECMAScript writes them.
    #[test]
    fn rfc8785_numbers_are_written_as_ecmascript_does() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (333333333.3333333, "333333333.3333333"),
            (4.5, "4.5"),
            (2e-3, "0.002"),
            (0.000001234, "0.000001234"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (9007199254740992.0, "9007199254740992"),
            (295147905179352830000.0, "295147905179352830000"),
        ];
        for (x, want) in cases {
            assert_eq!(jcs(&serde_json::json!(x)), *want, "{x:e}");
        }
        // Integers up to 2^53-1 are exact; beyond, refused with where they are.
        assert_eq!(
            jcs(&serde_json::json!(9007199254740991u64)),
            "9007199254740991"
        );
        assert_eq!(
            jcs(&serde_json::json!(-9007199254740991i64)),
            "-9007199254740991"
        );
        let e = canonical_bytes(
            &serde_json::json!({"a": [1, {"b/c": 9007199254740992u64}]}),
            Canonicalization::Rfc8785,
        )
        .unwrap_err();
        assert_eq!(e.to_string().split(':').next().unwrap(), "/a/1/b~1c", "{e}");
    }

    /// RFC 8785 §3.2.3: keys sorted by UTF-16 code units; strings with minimal escapes
    /// and non-ASCII text as UTF-8.
    #[test]
    fn rfc8785_sorts_by_utf16_and_escapes_minimally() {
        // The RFC's own sorting example (§3.2.3).
        let v = serde_json::json!({
            "\u{20ac}": "Euro Sign", "\r": "Carriage Return", "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
            "1": "One", "\u{1f600}": "Emoji: Grinning Face", "\u{0080}": "Control", "\u{00f6}": "Latin Small Letter O With Diaeresis"
        });
        assert_eq!(
            jcs(&v),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{0080}\":\"Control\",\"\u{00f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        assert_eq!(
            jcs(&serde_json::json!({"s": "\u{00e9}\u{1f600}\u{0007}/\"\\\n"})),
            "{\"s\":\"\u{00e9}\u{1f600}\\u0007/\\\"\\\\\\n\"}"
        );
        // The same value with floats canonicalises the same however it was written.
        let a: Value = serde_json::from_str(r#"{"x": 1.0, "y": [0.0, 1E21, 10]}"#).unwrap();
        assert_eq!(jcs(&a), r#"{"x":1,"y":[0,1e+21,10]}"#);
    }

    #[test]
    fn signing_bytes_leave_out_the_signature_only() {
        let v = serde_json::json!({"b": 1.5, "signature": "ab", "a": {"signature": "kept"}});
        let o = v.as_object().unwrap();
        assert_eq!(
            signing_bytes(o, Canonicalization::Rfc8785).unwrap(),
            br#"{"a":{"signature":"kept"},"b":1.5}"#
        );
        assert_eq!(
            signing_bytes(o, Canonicalization::SortedCompact).unwrap(),
            br#"{"a":{"signature":"kept"},"b":1.5}"#
        );
    }

    #[test]
    fn the_signing_member_names_a_known_scheme_or_is_refused() {
        let good = serde_json::to_value(Signing::rfc8785_ed25519()).unwrap();
        assert_eq!(Signing::from_member(&good), Ok(Canonicalization::Rfc8785));
        let other = serde_json::json!({"canonicalization": "RFC8785", "algorithm": "ES256"});
        assert!(Signing::from_member(&other)
            .unwrap_err()
            .contains("\"ES256\""));
        let other = serde_json::json!({"canonicalization": "c14n", "algorithm": "Ed25519"});
        assert!(Signing::from_member(&other)
            .unwrap_err()
            .contains("\"c14n\""));
        assert!(Signing::from_member(&serde_json::json!("RFC8785")).is_err());
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
