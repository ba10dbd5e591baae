//! The verdict contract (`riac.verdict/1`, DESIGN.md): what the node decided about a scan,
//! as stored, shown in the API and published to the central RIAC. Field names here are a
//! contract with the centre: change them only with the schema version.

use serde::{Deserialize, Serialize};

pub const VERDICT_SCHEMA: &str = "riac.verdict/1";

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
    /// Ed25519 over the canonical JSON without this field; `null` until the node has a key.
    pub signature: Option<String>,
}
