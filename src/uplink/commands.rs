//! Commands from the centre (`riac/v1/{site}/{node}/cmd/{name}`), each answered on
//! `riac/v1/{site}/{node}/cmd-reply`. This module owns the command envelope, its signature
//! check, deduplication and the full validation of each command's arguments; it implements
//! `image-request` and hands `library-add` and `thresholds` to handlers other modules
//! register ([`super::UplinkHandle::set_command_handler`]). Nothing a command carries may
//! crash or stall the node: every failure becomes an error reply.
//!
//! Envelope (JSON object):
//! `{"command_id": "…", "node_id": "…", "name": "…", "issued_at": "…", "expires_at": "…",
//!   "args": {…}, "signature": "…"}`; only `command_id` is required unless a centre key is
//! configured. `command_id` is 1-128 characters of `A-Z a-z 0-9 . _ : -`. A node with a
//! broker has a centre key unless `uplink.allow_unsigned_commands` says otherwise (checked
//! at start); `expires_at` is then required too and may lie at most
//! `uplink.command_max_ttl_hours` ahead, so a captured command is worthless soon.
//!
//! Signing (when `uplink.centre_public_key` is set): `signature` is the hex Ed25519
//! signature by the centre's key over the envelope without `signature`, canonicalised as
//! its `signing` member says: `{"canonicalization": "RFC8785", "algorithm": "Ed25519"}`
//! (RFC 8785, what a centre in any language should send), or, without `signing`, compact
//! JSON with keys sorted (centres that predate it; `store::chain`). The envelope must then also carry
//! `node_id` (this node) and `name` (the topic's command name), so a signed command cannot
//! be replayed to another node or as another command, and a `command_id` is executed at
//! most once (a repeat gets the first reply again).
//!
//! Reply: `{"command_id", "command", "node_id", "ok", "error"?, "result"?, "at"}` queued in
//! the outbox in the same transaction that records the command as done, so a reply is
//! never lost and a command is never done twice; `command_id` is null when the message
//! was too malformed to have one.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::session::{Context, Disposition};
use crate::compare::calibrate::PairCalibration;
use crate::store::chain::{sha256_hex, signing_bytes, Canonicalization, Signing};
use crate::store::{self, outbox, StoreError};

/// The commands served by handlers of other modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    LibraryAdd,
    Thresholds,
    TransitCalibration,
}

/// One reference item for the matching library (`cmd/library-add`).
#[derive(Debug, Clone, Serialize)]
pub struct LibraryItem {
    pub reference_id: String,
    pub hs_code: String,
    pub description: Option<String>,
    /// 8- or 16-bit grayscale PNG, transmission polarity; decoded and checked here.
    #[serde(skip)]
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub pixel_mm: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LibraryAdd {
    pub items: Vec<LibraryItem>,
}

/// `cmd/thresholds`: every field optional, at least one set; ranges checked here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default)]
    pub transit: Option<TransitThresholds>,
    #[serde(default)]
    pub manifest: Option<ManifestThresholds>,
}

/// `[transit]` keys the centre may set (same names and meaning as in the config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitThresholds {
    /// A changed region scoring at least this makes the pair `changed` (refer) (0..1).
    pub refer_score: Option<f64>,
    /// A region scoring at least this and covering `alert_min_area_m2` is an alert (0..1).
    pub alert_score: Option<f64>,
    /// Smallest area of an alert region, in m² (0..100).
    pub alert_min_area_m2: Option<f64>,
    /// Smallest changed region reported, in m² (0..100).
    pub min_region_m2: Option<f64>,
    /// Below this alignment quality a pair is inconclusive (0..1).
    pub min_alignment_quality: Option<f64>,
    /// Hours an exit scan waits for its entry before it is `unpaired` (0..2160].
    pub unpaired_after_hours: Option<f64>,
}

/// `[matching]` thresholds the centre may set (same names and meaning as in the config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestThresholds {
    /// Evidence share on the declared headings at or above which a scan is consistent (0..1).
    pub consistent_min: Option<f64>,
    /// Evidence share at or below which it is inconsistent (0..1, below consistent_min).
    pub inconsistent_max: Option<f64>,
    /// Confidence of an inconsistency in another HS chapter that makes it an alert (0..1).
    pub alert_confidence: Option<f64>,
    /// Fill at or below which a container is empty (0..1, below loaded_fill_min).
    pub empty_fill_max: Option<f64>,
    /// Fill at or above which it is loaded (0..1).
    pub loaded_fill_min: Option<f64>,
}

/// `cmd/transit-calibration`: scanner-pair calibrations to put in force (each replaces
/// that pair's) and pairs (`ENTRY->EXIT`) to drop; both empty reads the set back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalibrationUpdate {
    pub set: Vec<PairCalibration>,
    pub remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalibrationUpdate {
    #[serde(default)]
    pairs: Vec<PairCalibration>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum CentreRequest {
    LibraryAdd(LibraryAdd),
    Thresholds(Thresholds),
    TransitCalibration(CalibrationUpdate),
}

impl CentreRequest {
    /// The handler that serves it.
    pub fn kind(&self) -> CommandKind {
        match self {
            CentreRequest::LibraryAdd(_) => CommandKind::LibraryAdd,
            CentreRequest::Thresholds(_) => CommandKind::Thresholds,
            CentreRequest::TransitCalibration(_) => CommandKind::TransitCalibration,
        }
    }
}

/// A validated command for a registered handler. The handler answers on `reply`: `Ok`
/// with a JSON result (goes into the reply's `result`) or `Err` with a message for the
/// centre (never internal error text). Within 60 s, or the centre is told it timed out.
pub struct CommandCall {
    pub command_id: String,
    pub request: CentreRequest,
    pub reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

const HANDLER_TIMEOUT: Duration = Duration::from_secs(60);
const KNOWN: &str = "library-add, thresholds, transit-calibration, image-request";

/// What a command came to.
struct Outcome {
    ok: bool,
    error: Option<String>,
    result: Option<serde_json::Value>,
    /// Extra outbox rows queued before the reply (image chunks): (topic, payload).
    chunks: Vec<(String, Vec<u8>)>,
}

impl Outcome {
    fn err(msg: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            error: Some(msg.into()),
            result: None,
            chunks: Vec::new(),
        }
    }
    fn ok(result: serde_json::Value) -> Self {
        Outcome {
            ok: true,
            error: None,
            result: Some(result),
            chunks: Vec::new(),
        }
    }
}

fn valid_command_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn reply_json(ctx: &Context, command_id: Option<&str>, name: &str, o: &Outcome) -> Vec<u8> {
    let mut v = serde_json::json!({
        "command_id": command_id,
        "command": name,
        "node_id": ctx.cfg.node_id,
        "ok": o.ok,
        "at": store::now_rfc3339(),
    });
    if let Some(e) = &o.error {
        v["error"] = e.clone().into();
    }
    if let Some(r) = &o.result {
        v["result"] = r.clone();
    }
    serde_json::to_vec(&v).expect("json")
}

/// Handles one command message; answers it in every case it can.
/// The envelope of a command: size, JSON object, valid `command_id`. `Err` is the reply's
/// error text (the reply then has no command id).
fn envelope(
    payload: &[u8],
    max: usize,
) -> Result<(serde_json::Map<String, serde_json::Value>, String), String> {
    if payload.len() > max {
        return Err(format!(
            "the command is {} bytes; this node accepts at most {max} (uplink.command_max_kb)",
            payload.len()
        ));
    }
    let env: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(obj) = env else {
        return Err("the command must be a JSON object".into());
    };
    let command_id = match obj.get("command_id").and_then(|v| v.as_str()) {
        Some(id) if valid_command_id(id) => id.to_string(),
        _ => {
            return Err(
                "command_id is missing or not 1-128 characters of A-Z a-z 0-9 . _ : -".into(),
            )
        }
    };
    Ok((obj, command_id))
}

/// How far a command's `issued_at` may be ahead of this node's clock (clocks drift).
const ISSUED_SKEW: Duration = Duration::from_secs(300);

/// A command's life: `expires_at` is required when commands are signed (a signed command
/// is valid for anyone who holds a copy until it expires, so it must expire), checked when
/// present otherwise (unsigned commands from centres that predate it still work where
/// `uplink.allow_unsigned_commands` is set), and may lie at most `max_ttl` ahead. A
/// command seen before is not run again whatever its expiry (the dedup table above).
fn check_expiry(
    obj: &serde_json::Map<String, serde_json::Value>,
    signed: bool,
    max_ttl: Duration,
    now: time::OffsetDateTime,
) -> Result<(), String> {
    use time::format_description::well_known::Rfc3339;
    let when = |key: &str| -> Result<Option<time::OffsetDateTime>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
                .map(Some)
                .ok_or_else(|| format!("{key} is not an RFC 3339 time like 2026-11-28T03:14:02Z")),
        }
    };
    if let Some(issued) = when("issued_at")? {
        if issued > now + ISSUED_SKEW {
            return Err(format!(
                "issued_at is more than {} s ahead of this node's clock: check the centre's clock",
                ISSUED_SKEW.as_secs()
            ));
        }
    }
    let Some(expires) = when("expires_at")? else {
        return if signed {
            Err(
                "expires_at is required: a signed command must say when it stops being valid"
                    .into(),
            )
        } else {
            Ok(())
        };
    };
    if expires <= now {
        return Err("the command expired before it reached this node".into());
    }
    if expires > now + max_ttl {
        return Err(format!(
            "expires_at is more than {} h ahead; this node accepts commands that live at most that long (uplink.command_max_ttl_hours)",
            max_ttl.as_secs() / 3600
        ));
    }
    Ok(())
}

/// What the node's parsing makes of `payload` sent as command `name`, without a node: the
/// envelope, then the arguments of `thresholds` and `image-request`. For the fuzz target
/// (`fuzz/fuzz_targets/command.rs`): it must return, never panic.
pub fn parse_for_fuzzing(name: &str, payload: &[u8]) -> Result<(), String> {
    let (obj, _id) = envelope(payload, 8 << 20)?;
    let args = obj.get("args").cloned().unwrap_or(serde_json::Value::Null);
    match name {
        "thresholds" => parse_thresholds(args).map(|_| ()),
        "transit-calibration" => parse_calibration(args).map(|_| ()),
        "image-request" => serde_path_to_error::deserialize::<_, ImageArgs>(args)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "library-add" => serde_path_to_error::deserialize::<_, RawLibraryAdd>(args)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => Err(format!("unknown command {name:?}")),
    }
}

pub(super) async fn handle(ctx: &Arc<Context>, name: &str, payload: &[u8]) -> Disposition {
    ctx.handle.update_status(|s| s.commands.received += 1);
    let (obj, command_id) = match envelope(payload, ctx.cfg.uplink.command_max_bytes) {
        Ok(v) => v,
        Err(why) => return answer(ctx, None, name, Outcome::err(why)).await,
    };
    let cid = Some(command_id.as_str());

    if let Some(key) = &ctx.cfg.uplink.centre_public_key {
        if let Err(why) = check_signature(ctx, key, &obj, name) {
            tracing::warn!(command_id, command = ?name, reason = %why, "command refused: signature");
            return answer(ctx, cid, name, Outcome::err(why)).await;
        }
    }

    // Done before: send the same reply again, do not do it again.
    let idq = command_id.clone();
    match ctx
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT reply FROM uplink_commands WHERE command_id = ?1",
                [&idq],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
        })
        .await
    {
        Ok(Some(reply)) => {
            tracing::info!(
                command_id,
                command = name,
                "command received again; repeating its reply"
            );
            let topic = ctx.node_topic("cmd-reply");
            let id = command_id.clone();
            return match ctx
                .store
                .write(move |t| {
                    outbox::enqueue(
                        t,
                        outbox::KIND_CMD_REPLY,
                        Some(&id),
                        &topic,
                        reply.as_bytes(),
                    )
                })
                .await
            {
                Ok(_) => {
                    ctx.handle.outbox_changed();
                    Disposition::Ack
                }
                Err(_) => Disposition::Retry,
            };
        }
        Ok(None) => {}
        Err(_) => return Disposition::Retry,
    }

    if let Err(why) = check_expiry(
        &obj,
        ctx.cfg.uplink.centre_public_key.is_some(),
        ctx.cfg.uplink.command_max_ttl,
        time::OffsetDateTime::now_utc(),
    ) {
        tracing::warn!(command_id, command = ?name, reason = %why, "command refused: expiry");
        return answer(ctx, cid, name, Outcome::err(why)).await;
    }

    let args = obj.get("args").cloned().unwrap_or(serde_json::json!({}));
    let outcome = match name {
        // Validated here, carried out by the handler another module registered.
        "library-add" | "thresholds" | "transit-calibration" => {
            let request = match name {
                "library-add" => parse_library_add(ctx, args)
                    .await
                    .map(CentreRequest::LibraryAdd),
                "thresholds" => parse_thresholds(args).map(CentreRequest::Thresholds),
                _ => parse_calibration(args).map(CentreRequest::TransitCalibration),
            };
            match request {
                Ok(req) => call_handler(ctx, &command_id, req).await,
                Err(e) => Outcome::err(e),
            }
        }
        "image-request" => match image_request(ctx, &command_id, args).await {
            Ok(o) => o,
            Err(StoreError::Closed) => return Disposition::Retry,
            Err(e) => {
                tracing::error!(command_id, error = %e, "image-request failed");
                Outcome::err("the node could not read the scan; see its log")
            }
        },
        other => Outcome::err(format!(
            "unknown command {other:?}; this node knows: {KNOWN}"
        )),
    };
    answer(ctx, cid, name, outcome).await
}

fn check_signature(
    ctx: &Context,
    key: &ed25519_dalek::VerifyingKey,
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<(), String> {
    let sig = obj
        .get("signature")
        .and_then(|v| v.as_str())
        .ok_or("this node requires commands signed by the centre's key; `signature` is missing")?;
    if obj.get("node_id").and_then(|v| v.as_str()) != Some(ctx.cfg.node_id.as_str()) {
        return Err(format!(
            "a signed command must name this node: node_id must be {:?}",
            ctx.cfg.node_id
        ));
    }
    if obj.get("name").and_then(|v| v.as_str()) != Some(name) {
        return Err(format!(
            "a signed command must name itself: name must be {name:?} (the topic's command)"
        ));
    }
    let canon = match obj.get("signing") {
        None => Canonicalization::SortedCompact,
        Some(m) => Signing::from_member(m)?,
    };
    let bytes = signing_bytes(obj, canon).map_err(|e| e.to_string())?;
    super::keys::verify_hex(key, &bytes, sig)
        .map_err(|e| format!("{e}: not signed by the centre key configured on this node"))
}

async fn call_handler(ctx: &Context, command_id: &str, request: CentreRequest) -> Outcome {
    let kind = request.kind();
    let what = match kind {
        CommandKind::LibraryAdd => "reference library",
        CommandKind::Thresholds => "threshold",
        CommandKind::TransitCalibration => "transit calibration",
    };
    let not_supported = || {
        Outcome::err(format!(
            "not supported on this node: no {what} handler is registered"
        ))
    };
    let Some(tx) = ctx.handle.command_handler(kind) else {
        return not_supported();
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let call = CommandCall {
        command_id: command_id.to_string(),
        request,
        reply: reply_tx,
    };
    match tokio::time::timeout(Duration::from_secs(5), tx.send(call)).await {
        Ok(Ok(())) => {}
        Ok(Err(mpsc::error::SendError(_))) => return not_supported(),
        Err(_) => {
            return Outcome::err(format!(
                "the {what} handler is busy; send the command again later"
            ))
        }
    }
    match tokio::time::timeout(HANDLER_TIMEOUT, reply_rx).await {
        Ok(Ok(Ok(result))) => Outcome::ok(result),
        Ok(Ok(Err(msg))) => Outcome::err(msg),
        Ok(Err(_)) => Outcome::err(format!("the {what} handler stopped without answering")),
        Err(_) => Outcome::err(format!(
            "the {what} handler did not answer within {} s",
            HANDLER_TIMEOUT.as_secs()
        )),
    }
}

/// Records the command (when it has an id) and queues its reply, in one transaction.
async fn answer(
    ctx: &Arc<Context>,
    command_id: Option<&str>,
    name: &str,
    o: Outcome,
) -> Disposition {
    let result = if o.ok { "ok" } else { "error" };
    ctx.metrics
        .uplink()
        .commands
        .get_or_create(&super::status::ResultLabel { result })
        .inc();
    if !o.ok {
        ctx.handle.update_status(|s| s.commands.failed += 1);
        tracing::warn!(
            command_id = command_id.unwrap_or("-"),
            command = name,
            error = o.error.as_deref().unwrap_or(""),
            "command answered with an error"
        );
    } else {
        tracing::info!(
            command_id = command_id.unwrap_or("-"),
            command = name,
            "command done"
        );
    }
    let reply = reply_json(ctx, command_id, name, &o);
    let topic = ctx.node_topic("cmd-reply");
    let id = command_id.map(str::to_string);
    let name = name.to_string();
    let ok = o.ok;
    let chunks = o.chunks;
    let r = ctx
        .store
        .write(move |t| {
            for (topic, payload) in &chunks {
                outbox::enqueue(t, outbox::KIND_IMAGE_CHUNK, id.as_deref(), topic, payload)?;
            }
            outbox::enqueue(t, outbox::KIND_CMD_REPLY, id.as_deref(), &topic, &reply)?;
            if let Some(id) = &id {
                t.execute(
                    "INSERT OR IGNORE INTO uplink_commands(command_id, name, received_at, ok, reply) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, name, store::now_rfc3339(), ok, String::from_utf8_lossy(&reply)],
                )?;
            }
            Ok(())
        })
        .await;
    match r {
        Ok(()) => {
            ctx.handle.outbox_changed();
            Disposition::Ack
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot queue the command's reply; the command will be delivered again");
            Disposition::Retry
        }
    }
}

fn valid_hs_code(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    (4..=10).contains(&digits)
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibraryAdd {
    items: Vec<RawItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    reference_id: String,
    hs_code: String,
    #[serde(default)]
    description: Option<String>,
    image_png_base64: String,
    #[serde(default)]
    pixel_mm: Option<[f64; 2]>,
}

async fn parse_library_add(ctx: &Context, args: serde_json::Value) -> Result<LibraryAdd, String> {
    let raw: RawLibraryAdd = serde_path_to_error::deserialize(args)
        .map_err(|e| format!("args.{}: {}", e.path(), e.inner()))?;
    if raw.items.is_empty() || raw.items.len() > 100 {
        return Err(format!(
            "args.items: {} items; send 1 to 100 per command",
            raw.items.len()
        ));
    }
    let limits = ctx.cfg.ingest.limits;
    let mut seen = std::collections::HashSet::new();
    let mut pending = Vec::new();
    for (i, it) in raw.items.into_iter().enumerate() {
        let f = |k: &str| format!("args.items[{i}].{k}");
        if !crate::scan::is_valid_scan_id(&it.reference_id) {
            return Err(format!(
                "{}: {:?} must be 1-128 characters of A-Z a-z 0-9 . _ -",
                f("reference_id"),
                it.reference_id
            ));
        }
        if !seen.insert(it.reference_id.clone()) {
            return Err(format!(
                "{}: {:?} appears twice",
                f("reference_id"),
                it.reference_id
            ));
        }
        if !valid_hs_code(&it.hs_code) {
            return Err(format!(
                "{}: {:?} is not an HS code (4-10 digits, optional dots)",
                f("hs_code"),
                it.hs_code
            ));
        }
        if it.description.as_ref().is_some_and(|d| d.len() > 500) {
            return Err(format!("{}: at most 500 characters", f("description")));
        }
        if let Some([x, y]) = it.pixel_mm {
            if !(x > 0.0 && y > 0.0 && x <= 100.0 && y <= 100.0) {
                return Err(format!("{}: two sizes in (0, 100] mm", f("pixel_mm")));
            }
        }
        let png = base64::engine::general_purpose::STANDARD
            .decode(it.image_png_base64.as_bytes())
            .map_err(|e| format!("{}: not base64: {e}", f("image_png_base64")))?;
        pending.push((
            i,
            it.reference_id,
            it.hs_code,
            it.description,
            it.pixel_mm,
            png,
        ));
    }
    // Decoding is CPU work: off the runtime, within the node's ingest limits.
    tokio::task::spawn_blocking(move || {
        let mut items = Vec::new();
        for (i, reference_id, hs_code, description, pixel_mm, png) in pending {
            let field = format!("args.items[{i}].image_png_base64");
            let dec = crate::ingest::decode::decode(
                &png,
                crate::ingest::decode::SourceFormat::Png,
                &limits,
            )
            .map_err(|e| format!("{field}: {e}"))?;
            items.push(LibraryItem {
                reference_id,
                hs_code,
                description,
                width: dec.width,
                height: dec.height,
                png,
                pixel_mm,
            });
        }
        Ok(LibraryAdd { items })
    })
    .await
    .map_err(|_| "the node is shutting down".to_string())?
}

/// `cmd/transit-calibration`'s arguments: each pair checked as the calibration file's are
/// (the error names `args.pairs[i]` and the field), each pair to drop named
/// `ENTRY->EXIT`, no pair both set and dropped, none twice.
fn parse_calibration(args: serde_json::Value) -> Result<CalibrationUpdate, String> {
    let raw: RawCalibrationUpdate = serde_path_to_error::deserialize(args)
        .map_err(|e| format!("args.{}: {}", e.path(), e.inner()))?;
    let mut keys = std::collections::BTreeSet::new();
    for (i, p) in raw.pairs.iter().enumerate() {
        p.validate().map_err(|e| format!("args.pairs[{i}]: {e}"))?;
        if !keys.insert(p.key()) {
            return Err(format!("args.pairs[{i}]: pair {} appears twice", p.key()));
        }
    }
    for (i, k) in raw.remove.iter().enumerate() {
        let ok = k
            .split_once("->")
            .is_some_and(|(a, b)| !a.trim().is_empty() && !b.trim().is_empty());
        if !ok {
            return Err(format!(
                "args.remove[{i}]: {k:?} is not a scanner pair; write ENTRY_SCANNER->EXIT_SCANNER"
            ));
        }
        if !keys.insert(k.clone()) {
            return Err(format!(
                "args.remove[{i}]: pair {k} is named twice (set and removed, or removed twice)"
            ));
        }
    }
    Ok(CalibrationUpdate {
        set: raw.pairs,
        remove: raw.remove,
    })
}

fn parse_thresholds(args: serde_json::Value) -> Result<Thresholds, String> {
    let t: Thresholds = serde_path_to_error::deserialize(args)
        .map_err(|e| format!("args.{}: {}", e.path(), e.inner()))?;
    let mut any = false;
    let mut check =
        |field: &str, v: Option<f64>, lo: f64, hi: f64, lo_open: bool| -> Result<(), String> {
            if let Some(x) = v {
                any = true;
                let ok = x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi;
                if !ok {
                    let open = if lo_open { "(" } else { "[" };
                    return Err(format!("args.{field}: {x} is outside {open}{lo}, {hi}]"));
                }
            }
            Ok(())
        };
    if let Some(tr) = &t.transit {
        check("transit.refer_score", tr.refer_score, 0.0, 1.0, false)?;
        check("transit.alert_score", tr.alert_score, 0.0, 1.0, false)?;
        check(
            "transit.alert_min_area_m2",
            tr.alert_min_area_m2,
            0.0,
            100.0,
            false,
        )?;
        check("transit.min_region_m2", tr.min_region_m2, 0.0, 100.0, false)?;
        check(
            "transit.min_alignment_quality",
            tr.min_alignment_quality,
            0.0,
            1.0,
            false,
        )?;
        check(
            "transit.unpaired_after_hours",
            tr.unpaired_after_hours,
            0.0,
            2160.0,
            true,
        )?;
    }
    if let Some(m) = &t.manifest {
        check("manifest.consistent_min", m.consistent_min, 0.0, 1.0, false)?;
        check(
            "manifest.inconsistent_max",
            m.inconsistent_max,
            0.0,
            1.0,
            false,
        )?;
        check(
            "manifest.alert_confidence",
            m.alert_confidence,
            0.0,
            1.0,
            false,
        )?;
        check("manifest.empty_fill_max", m.empty_fill_max, 0.0, 1.0, false)?;
        check(
            "manifest.loaded_fill_min",
            m.loaded_fill_min,
            0.0,
            1.0,
            false,
        )?;
    }
    if !any {
        return Err("args: no threshold given; set at least one key of transit (refer_score, alert_score, alert_min_area_m2, min_region_m2, min_alignment_quality, unpaired_after_hours) or manifest (consistent_min, inconsistent_max, alert_confidence, empty_fill_max, loaded_fill_min)".into());
    }
    Ok(t)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageArgs {
    scan_id: String,
    #[serde(default)]
    which: Option<String>,
    #[serde(default)]
    chunk_kb: Option<u64>,
}

/// `cmd/image-request`: the scan's full image in chunks on `riac/v1/{site}/{node}/image`
/// (`riac.image-chunk/1`), all queued before the reply, in the same transaction.
async fn image_request(
    ctx: &Context,
    command_id: &str,
    args: serde_json::Value,
) -> Result<Outcome, StoreError> {
    let a: ImageArgs = match serde_path_to_error::deserialize(args) {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::err(format!("args.{}: {}", e.path(), e.inner()))),
    };
    if !crate::scan::is_valid_scan_id(&a.scan_id) {
        return Ok(Outcome::err(format!(
            "args.scan_id: {:?} is not a scan id",
            a.scan_id
        )));
    }
    let which = a.which.as_deref().unwrap_or("canonical");
    if !matches!(which, "canonical" | "original") {
        return Ok(Outcome::err(format!("args.which: {which:?}; expected canonical (the stored 16-bit PNG) or original (the file as the scanner sent it)")));
    }
    let max_chunk = ctx.cfg.uplink.image_chunk_bytes;
    let chunk = match a.chunk_kb {
        None => max_chunk,
        Some(k) if (1..=(max_chunk as u64 / 1024)).contains(&k) => k as usize * 1024,
        Some(k) => {
            return Ok(Outcome::err(format!(
                "args.chunk_kb: {k}; expected 1 to {} (uplink.image_chunk_kb)",
                max_chunk / 1024
            )))
        }
    };
    let id = a.scan_id.clone();
    let Some(scan) = ctx.store.read(move |c| store::scans::get(c, &id)).await? else {
        return Ok(Outcome::err(format!(
            "no scan {:?} on this node",
            a.scan_id
        )));
    };
    let file = if which == "canonical" {
        crate::ingest::CANONICAL_IMAGE.to_string()
    } else {
        scan.original_file.clone()
    };
    let path = ctx.cfg.data_dir.join(&scan.image_dir).join(&file);
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(&path)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::error!(scan_id = %a.scan_id, error = %e, "image-request: cannot read the scan's file");
            return Ok(Outcome::err(format!(
                "the scan's {which} image cannot be read on this node"
            )));
        }
        Err(_) => return Err(StoreError::Closed),
    };
    let quota = ctx.cfg.uplink.outbox_quota_bytes as i64;
    let used = ctx.store.read(outbox::bytes).await?;
    let needed = (bytes.len() as i64) * 4 / 3 + 4096;
    if used + needed > quota {
        return Ok(Outcome::err(format!(
            "the outbox is too full to send a {} byte image (uplink.outbox_quota_mb); ask again once the node has caught up",
            bytes.len()
        )));
    }
    let sha = sha256_hex(&bytes);
    let content_type = match file
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("tif" | "tiff") => "image/tiff",
        Some("dcm" | "dicos") => "application/dicom",
        Some("pgm") => "image/x-portable-graymap",
        _ => "application/octet-stream",
    };
    let count = bytes.len().div_ceil(chunk).max(1);
    let topic = ctx.node_topic("image");
    let b64 = base64::engine::general_purpose::STANDARD;
    let chunks = (0..count)
        .map(|i| {
            let start = i * chunk;
            let part = &bytes[start..(start + chunk).min(bytes.len())];
            let msg = serde_json::json!({
                "schema": "riac.image-chunk/1",
                "command_id": command_id,
                "scan_id": a.scan_id,
                "file": file,
                "content_type": content_type,
                "total_bytes": bytes.len(),
                "sha256": sha,
                "index": i,
                "count": count,
                "offset": start,
                "data_base64": b64.encode(part),
            });
            (topic.clone(), serde_json::to_vec(&msg).expect("json"))
        })
        .collect();
    Ok(Outcome {
        ok: true,
        error: None,
        result: Some(serde_json::json!({
            "scan_id": a.scan_id,
            "file": file,
            "content_type": content_type,
            "total_bytes": bytes.len(),
            "sha256": sha,
            "chunks": count,
            "topic": topic,
        })),
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_commands_must_expire_soon_and_not_have_expired() {
        let now = time::macros::datetime!(2026-11-28 04:00:00 UTC);
        let ttl = Duration::from_secs(24 * 3600);
        let env = |v: serde_json::Value| v.as_object().unwrap().clone();
        let none = env(serde_json::json!({"command_id": "c1"}));
        assert!(check_expiry(&none, true, ttl, now)
            .unwrap_err()
            .contains("expires_at is required"));
        assert!(
            check_expiry(&none, false, ttl, now).is_ok(),
            "unsigned: optional"
        );
        let past = env(serde_json::json!({"expires_at": "2026-11-28T03:59:59Z"}));
        assert!(check_expiry(&past, false, ttl, now)
            .unwrap_err()
            .contains("expired"));
        let far = env(serde_json::json!({"expires_at": "2026-12-28T04:00:00Z"}));
        assert!(check_expiry(&far, true, ttl, now)
            .unwrap_err()
            .contains("command_max_ttl_hours"));
        let bad = env(serde_json::json!({"expires_at": "soon"}));
        assert!(check_expiry(&bad, true, ttl, now).is_err());
        let future = env(
            serde_json::json!({"issued_at": "2026-11-28T05:00:00Z", "expires_at": "2026-11-28T06:00:00Z"}),
        );
        assert!(check_expiry(&future, true, ttl, now)
            .unwrap_err()
            .contains("issued_at"));
        let ok = env(
            serde_json::json!({"issued_at": "2026-11-28T03:59:00Z", "expires_at": "2026-11-28T05:00:00Z"}),
        );
        assert!(check_expiry(&ok, true, ttl, now).is_ok());
    }

    #[test]
    fn ids_and_hs_codes() {
        assert!(valid_command_id("c-1:2.3_x"));
        assert!(!valid_command_id(""));
        assert!(!valid_command_id("a/b"));
        assert!(valid_hs_code("8703.23"));
        assert!(valid_hs_code("870323"));
        assert!(!valid_hs_code("87"));
        assert!(!valid_hs_code(".8703"));
        assert!(!valid_hs_code("8703..2"));
    }

    #[test]
    fn thresholds_are_checked() {
        let t = parse_thresholds(serde_json::json!({"transit": {"refer_score": 0.4}})).unwrap();
        assert_eq!(t.transit.unwrap().refer_score, Some(0.4));
        let e = parse_thresholds(serde_json::json!({"transit": {"refer_score": 1.5}})).unwrap_err();
        assert!(
            e.contains("transit.refer_score") && e.contains("1.5"),
            "{e}"
        );
        let e =
            parse_thresholds(serde_json::json!({"transit": {"chnage_score": 0.5}})).unwrap_err();
        assert!(e.contains("chnage_score"), "{e}");
        let e = parse_thresholds(serde_json::json!({})).unwrap_err();
        assert!(e.contains("no threshold"), "{e}");
        let e = parse_thresholds(serde_json::json!({"manifest": {"consistent_min": "high"}}))
            .unwrap_err();
        assert!(e.contains("manifest.consistent_min"), "{e}");
    }
}
