//! The verdict contract (`riac.verdict/2`, and `/1` as older nodes wrote it; README "For
//! the centre", `docs/contracts/`): what the node decided about a scan, as stored, shown in
//! the API and published to the central RIAC. Field names here are a contract with the
//! centre: change them only with the schema version. This module also says which signing
//! bytes each version uses ([`canonicalization`]); it never signs, stores or verifies.
//!
//! `/2` differs from `/1` only in its signing bytes: RFC 8785 instead of sorted compact
//! serde_json, named in the signed `signing` member. Both share one chain: a verdict's
//! `prev_hash` is the SHA-256 of the previous verdict's signing bytes made by *that*
//! verdict's own version, so the first `/2` after an upgrade links to the last `/1` by the
//! hash the `/1` rules give.

use serde::{Deserialize, Serialize};

use crate::store::chain::{Canonicalization, Signing};

/// The version the node writes.
pub const VERDICT_SCHEMA: &str = "riac.verdict/2";
/// The version nodes wrote before RFC 8785; still verified (old outbox rows, exports).
pub const VERDICT_SCHEMA_V1: &str = "riac.verdict/1";

/// The canonicalisation of a verdict's signing bytes, from its `schema` and `signing`
/// members (a JSON object as received): `/1` is sorted compact and carries no `signing`;
/// `/2` must name RFC 8785 and Ed25519. Anything else is refused, naming what was found.
pub fn canonicalization(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<Canonicalization, String> {
    let signing = obj.get("signing");
    match obj.get("schema").and_then(|v| v.as_str()) {
        Some(VERDICT_SCHEMA_V1) => match signing {
            None => Ok(Canonicalization::SortedCompact),
            Some(_) => Err(format!(
                "a {VERDICT_SCHEMA_V1} verdict carries no `signing` member (its signing bytes are sorted compact JSON)"
            )),
        },
        Some(VERDICT_SCHEMA) => match signing {
            Some(m) => Signing::from_member(m),
            None => Err(format!(
                "a {VERDICT_SCHEMA} verdict must name its signing scheme in `signing`"
            )),
        },
        other => Err(format!(
            "schema is {other:?}, expected {VERDICT_SCHEMA:?} or {VERDICT_SCHEMA_V1:?}"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Clear,
    Refer,
    Alert,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clear => "clear",
            Outcome::Refer => "refer",
            Outcome::Alert => "alert",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clear" => Some(Outcome::Clear),
            "refer" => Some(Outcome::Refer),
            "alert" => Some(Outcome::Alert),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestStatus {
    Consistent,
    Inconsistent,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestMatch {
    pub hs_code: String,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestResult {
    pub status: ManifestStatus,
    pub declared_hs_codes: Vec<String>,
    pub top_matches: Vec<ManifestMatch>,
    /// Why the status is what it is, in words an operator reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How sure the check is of `status` (0..1); absent when the check did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Share of the match evidence on the declared HS headings (4 digits), 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_probability: Option<f64>,
    /// Share of the match evidence on the declared HS chapters (2 digits), 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chapter_probability: Option<f64>,
    /// Cargo tiles of this scan that were matched against the library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<u32>,
    /// Declared empty vs. what the cargo space holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<EmptyCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyStatus {
    /// Declared empty and empty, or declared loaded and loaded.
    Consistent,
    /// Declared empty (HS 8609 or no goods) but the cargo space holds goods.
    LoadedButDeclaredEmpty,
    /// Goods declared but the cargo space is empty.
    EmptyButDeclaredLoaded,
    /// The fill is between the empty and loaded thresholds.
    Unclear,
    /// No cargo space was found in the image.
    NotRun,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmptyCheck {
    pub status: EmptyStatus,
    pub declared_empty: bool,
    /// Share of the cargo band that holds matter denser than a container's walls (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitStatus {
    Unchanged,
    Changed,
    AwaitingEntry,
    Unpaired,
    /// The pair could not be compared (e.g. it cannot be aligned); `reason` says why.
    /// Additive value of riac.verdict/1.
    Inconclusive,
}

impl TransitStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitStatus::Unchanged => "unchanged",
            TransitStatus::Changed => "changed",
            TransitStatus::AwaitingEntry => "awaiting_entry",
            TransitStatus::Unpaired => "unpaired",
            TransitStatus::Inconclusive => "inconclusive",
        }
    }
}

/// A changed region, in entry-image pixels (x0, y0 inclusive; x1, y1 exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedRegion {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area_m2: Option<f64>,
    pub score: f64,
    /// `removed` (the entry showed more), `added` (the exit shows more) or `mixed`.
    /// Additive field of riac.verdict/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitResult {
    pub status: TransitStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_scan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_score: Option<f64>,
    #[serde(default)]
    pub regions: Vec<ChangedRegion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// 0..1: how well the exit's load carrier matched the entry's once aligned.
    /// Additive field of riac.verdict/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment_quality: Option<f64>,
    /// The exit scan shows the truck the other way round (decided from the images).
    /// Additive field of riac.verdict/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrored: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictDeclaration {
    pub number: String,
    pub regime: String,
}

/// A verdict as published. `seq`, `prev_hash` and `signature` are filled in by the store
/// when the verdict joins the node's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub schema: String,
    pub verdict_id: String,
    pub seq: u64,
    pub node_id: String,
    pub site_id: String,
    pub scan_id: String,
    pub container_ids: Vec<String>,
    pub declaration: VerdictDeclaration,
    pub decided_at: String,
    pub outcome: Outcome,
    /// `auto` or the operator's user name.
    pub decided_by: String,
    /// Each reason the outcome is what it is, including every check that did not run.
    pub reasons: Vec<String>,
    pub manifest: ManifestResult,
    /// Absent for scans outside the transit regime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<TransitResult>,
    /// The embedding model used, when one was loaded.
    pub model: Option<ModelRef>,
    /// The verdict this one replaces (an operator's decision supersedes the automatic one).
    pub supersedes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub prev_hash: String,
    /// `/2`: the signing scheme (RFC 8785, Ed25519); absent in `/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
    /// Ed25519 over the signing bytes ([`canonicalization`]: the verdict without this
    /// field); `null` until the node has a key.
    pub signature: Option<String>,
}

impl Verdict {
    /// The bytes hashed into the chain and signed.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, crate::store::chain::CanonError> {
        let value = serde_json::to_value(self).expect("verdict serialises");
        let obj = value.as_object().expect("a verdict is an object");
        let c = canonicalization(obj).map_err(crate::store::chain::CanonError::Scheme)?;
        crate::store::chain::signing_bytes(obj, c)
    }
}
