//! Entry packages between sites (MQTT `riac/v1/transit/{exit_site}/entries`). At an entry
//! site, [`publisher`] turns each decided transit entry scan into a package and queues it
//! in the outbox (so it survives days offline); at an exit site, [`receive`] checks a
//! package, writes its image durably, stores its row (`store::entries::insert`, idempotent)
//! and only then signals pairing and lets the message be acknowledged. A package is never
//! trusted: every field is checked, the image's hash and its decoded size must match.
//! This module never runs the transit check itself and never blocks the runtime on images.
//!
//! Wire format (`riac.entry/1`): one JSON object, the fields of
//! [`crate::store::entries::EntryPackage`] plus `image_png_base64` (the reduced canonical
//! image: 16-bit grayscale PNG, transmission polarity, standard base64) and `image_sha256`
//! (hex sha256 of the PNG bytes). `reduction` is the factor applied to both axes (0.5 = half
//! width and half height) and `pixel_mm` is for the reduced image. When a package would
//! exceed `uplink.max_message_mb`, the image is reduced further and `reduction` says so.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::session::{Context, Disposition};
use crate::imaging;
use crate::scan::{is_valid_scan_id, ContainerId};
use crate::store::entries::{EntryPackage, ENTRY_SCHEMA};
use crate::store::scans::{RejectRecord, ScanRecord};
use crate::store::{self, chain::sha256_hex, outbox, StoreError};

/// An entry package as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMessage {
    #[serde(flatten)]
    pub package: EntryPackage,
    pub image_png_base64: String,
    pub image_sha256: String,
}

/// Where a received package's image lives, relative to the data dir.
pub fn image_rel_path(entry_scan_id: &str) -> String {
    format!("entries/{entry_scan_id}/image.png")
}

/// Removes temp directories left by a crash while writing a received package's image.
pub fn sweep_temp_dirs(data_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(data_dir.join("entries")) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Builds the package message for a stored entry scan: the canonical image reduced by
/// `reduction` (and further, by 0.7 at a time, until the message fits `max_bytes`).
/// Blocking and CPU-heavy.
pub fn build_message(
    rec: &ScanRecord,
    data_dir: &Path,
    origin_node: &str,
    reduction: f64,
    max_bytes: usize,
    embeddings: Option<serde_json::Value>,
) -> Result<(Vec<u8>, f64), String> {
    let sidecar = rec.sidecar.clone().unwrap_or(serde_json::Value::Null);
    let exit_site = sidecar
        .pointer("/declaration/exit_site")
        .and_then(|v| v.as_str())
        .ok_or("the sidecar has no declaration.exit_site")?
        .to_string();
    let pixel_mm: Option<[f64; 2]> = sidecar
        .pointer("/image/pixel_mm")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let path = data_dir
        .join(&rec.image_dir)
        .join(crate::ingest::CANONICAL_IMAGE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let img = imaging::decode_png16(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = reduction;
    loop {
        let w = ((f64::from(img.width()) * r).round() as u32).max(1);
        let h = ((f64::from(img.height()) * r).round() as u32).max(1);
        let small = if (w, h) == (img.width(), img.height()) {
            img.clone()
        } else {
            image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
        };
        let png = imaging::encode_png16(&small).map_err(|e| e.to_string())?;
        let msg = EntryMessage {
            package: EntryPackage {
                schema: ENTRY_SCHEMA.into(),
                entry_scan_id: rec.scan_id.clone(),
                origin_site: rec.site_id.clone(),
                origin_node: origin_node.to_string(),
                exit_site: exit_site.clone(),
                declaration_number: rec.declaration_number.clone(),
                container_ids: rec.container_ids.clone(),
                scanned_at: rec.scanned_at.clone(),
                sidecar: sidecar.clone(),
                image_width: w,
                image_height: h,
                reduction: r,
                pixel_mm: pixel_mm.map(|[x, y]| [x / r, y / r]),
                embeddings: embeddings.clone(),
            },
            image_sha256: sha256_hex(&png),
            image_png_base64: base64::engine::general_purpose::STANDARD.encode(&png),
        };
        let out = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        if out.len() <= max_bytes {
            return Ok((out, r));
        }
        r *= 0.7;
        if r < 0.05 {
            return Err(format!(
                "even reduced to {r:.3} the package is {} bytes, more than uplink.max_message_mb allows",
                out.len()
            ));
        }
    }
}

/// Queues entry packages for this node's transit entry scans (decided ones, so that
/// embeddings computed by the pipeline can travel with them). Runs only with a broker
/// configured; on the first start with one it catches up on entries up to
/// `uplink.entry_max_age_days` old.
pub(super) async fn publisher(ctx: Arc<Context>, token: CancellationToken) {
    // Scans up to here are all recorded in entry_outgoing (or not transit entries).
    let mut hwm: i64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        match publish_pending(&ctx, &mut hwm, &token).await {
            Ok(()) => {}
            Err(StoreError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "entry package publisher: database error; retrying")
            }
        }
    }
}

struct Candidate {
    id: i64,
    scan_id: String,
    decided: bool,
    scanned_at: String,
}

async fn publish_pending(
    ctx: &Arc<Context>,
    hwm: &mut i64,
    token: &CancellationToken,
) -> Result<(), StoreError> {
    let after = *hwm;
    let (cands, deferred, max_id) = ctx
        .store
        .read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT s.id, s.scan_id, s.state, s.scanned_at FROM scans s
                 WHERE s.id > ?1 AND s.regime = 'transit' AND s.direction = 'entry'
                   AND NOT EXISTS (SELECT 1 FROM entry_outgoing e WHERE e.scan_id = s.scan_id)
                 ORDER BY s.id LIMIT 32",
            )?;
            let cands = st
                .query_map([after], |r| {
                    Ok(Candidate {
                        id: r.get(0)?,
                        scan_id: r.get(1)?,
                        decided: r.get::<_, String>(2)? == "decided",
                        scanned_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = c.prepare_cached(
                "SELECT scan_id FROM entry_outgoing WHERE state = 'deferred' ORDER BY updated_at LIMIT 8",
            )?;
            let deferred = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Same snapshot: every transit entry up to max_id not yet recorded is in cands
            // (when fewer than the limit), so the mark may jump over the other scans.
            let max_id: i64 = c.query_row("SELECT coalesce(max(id), 0) FROM scans", [], |r| r.get(0))?;
            Ok((cands, deferred, max_id))
        })
        .await?;
    let full = cands.len() == 32;
    let mut advance = true;
    let mut last = after;
    for c in cands {
        if token.is_cancelled() {
            return Ok(());
        }
        if !c.decided {
            // Its verdict is still coming; look again next time, from here.
            advance = false;
            continue;
        }
        queue_one(ctx, &c.scan_id, Some(&c.scanned_at)).await?;
        if advance {
            last = c.id;
        }
    }
    if advance {
        *hwm = if full { last } else { max_id.max(last) };
    }
    let alert = ctx.handle.status().outbox.alert;
    if alert != super::status::QuotaAlert::OverQuota {
        for scan_id in deferred {
            if token.is_cancelled() {
                break;
            }
            queue_one(ctx, &scan_id, None).await?;
        }
    }
    Ok(())
}

/// Builds and queues (or records why not) the package of one entry scan.
async fn queue_one(
    ctx: &Arc<Context>,
    scan_id: &str,
    scanned_at: Option<&str>,
) -> Result<(), StoreError> {
    let u = &ctx.cfg.uplink;
    let record = |state: &'static str,
                  exit: String,
                  detail: Option<String>,
                  bytes: Option<i64>,
                  red: Option<f64>| {
        let id = scan_id.to_string();
        ctx.store.write(move |t| {
            t.execute(
                "INSERT INTO entry_outgoing(scan_id, exit_site, state, bytes, reduction, updated_at, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(scan_id) DO UPDATE SET state = ?3, bytes = ?4, reduction = ?5, updated_at = ?6, detail = ?7",
                params![id, exit, state, bytes, red, store::now_rfc3339(), detail],
            )?;
            Ok(())
        })
    };
    if let Some(at) = scanned_at {
        if let Some(age) = super::status::age_secs(at) {
            if age > u.entry_max_age.as_secs_f64() {
                return record(
                    "skipped",
                    String::new(),
                    Some("older than uplink.entry_max_age_days".into()),
                    None,
                    None,
                )
                .await;
            }
        }
    }
    let id = scan_id.to_string();
    let Some(rec) = ctx.store.read(move |c| store::scans::get(c, &id)).await? else {
        return Ok(());
    };
    let exit_site = rec
        .sidecar
        .as_ref()
        .and_then(|s| s.pointer("/declaration/exit_site"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if exit_site == ctx.cfg.site_id {
        // Entry and exit at this site: pairing finds the entry scan in the local store.
        return record("local", exit_site, None, None, None).await;
    }
    let embeddings = match ctx.handle.embedding_source() {
        Some(f) => {
            let id = scan_id.to_string();
            ctx.store.read(move |c| Ok(f(c, &id))).await?
        }
        None => None,
    };
    let (data_dir, node, reduction, max) = (
        ctx.cfg.data_dir.clone(),
        ctx.cfg.node_id.clone(),
        u.entry_image_reduction,
        u.max_message_bytes,
    );
    let built = tokio::task::spawn_blocking(move || {
        build_message(&rec, &data_dir, &node, reduction, max, embeddings)
    })
    .await
    .map_err(|_| StoreError::Closed)?;
    let (payload, used) = match built {
        Ok(b) => b,
        Err(why) => {
            tracing::error!(scan_id, reason = %why, "cannot build the entry package; the exit site will not get this entry from this node");
            return record("failed", exit_site, Some(why), None, None).await;
        }
    };
    let quota = u.outbox_quota_bytes as i64;
    let topic = Context::entries_topic(&exit_site);
    let id = scan_id.to_string();
    let size = payload.len() as i64;
    let exit = exit_site.clone();
    let queued = ctx
        .store
        .write(move |t| {
            let used_bytes = outbox::bytes(t)?;
            let state = if used_bytes + size > quota { "deferred" } else { "queued" };
            if state == "queued" {
                outbox::enqueue(t, outbox::KIND_ENTRY_PACKAGE, Some(&id), &topic, &payload)?;
            }
            t.execute(
                "INSERT INTO entry_outgoing(scan_id, exit_site, state, bytes, reduction, updated_at, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
                 ON CONFLICT(scan_id) DO UPDATE SET state = ?3, bytes = ?4, reduction = ?5, updated_at = ?6, detail = NULL",
                params![id, exit, state, size, used, store::now_rfc3339()],
            )?;
            Ok(state == "queued")
        })
        .await?;
    if queued {
        tracing::info!(scan_id, exit_site = %exit_site, bytes = size, reduction = used, "entry package queued");
        ctx.handle.outbox_changed();
    } else {
        tracing::warn!(
            scan_id,
            bytes = size,
            "outbox over its quota: entry package deferred until space frees"
        );
    }
    Ok(())
}

/// A package refused: what and why, for the rejects log.
struct Refusal {
    entry_scan_id: Option<String>,
    field: String,
    reason: String,
}

fn refuse(id: Option<&str>, field: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        entry_scan_id: id.map(str::to_string),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Checks a received package. Returns the package (container ids normalised) and its PNG.
fn check(ctx: &Context, payload: &[u8]) -> Result<(EntryPackage, Vec<u8>), Refusal> {
    let de = &mut serde_json::Deserializer::from_slice(payload);
    let msg: EntryMessage = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        refuse(
            None,
            if field == "." { "package" } else { &field },
            format!("not a valid entry package: {}", e.inner()),
        )
    })?;
    let mut p = msg.package;
    let id = p.entry_scan_id.clone();
    let idr = Some(id.as_str());
    if p.schema != ENTRY_SCHEMA {
        return Err(refuse(
            idr,
            "schema",
            format!("is {:?}, expected {ENTRY_SCHEMA:?}", p.schema),
        ));
    }
    if !is_valid_scan_id(&id) {
        return Err(refuse(
            None,
            "entry_scan_id",
            format!("{id:?} is not a valid scan id"),
        ));
    }
    if p.exit_site != ctx.cfg.site_id {
        return Err(refuse(
            idr,
            "exit_site",
            format!(
                "is {:?}; this node is at {:?}",
                p.exit_site, ctx.cfg.site_id
            ),
        ));
    }
    for (field, v) in [
        ("origin_site", &p.origin_site),
        ("origin_node", &p.origin_node),
    ] {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(refuse(idr, field, format!("{v:?} is not a site/node id")));
        }
    }
    if p.declaration_number.trim().is_empty() || p.declaration_number.len() > 128 {
        return Err(refuse(
            idr,
            "declaration_number",
            "must be 1-128 characters",
        ));
    }
    if p.container_ids.is_empty() {
        return Err(refuse(
            idr,
            "container_ids",
            "a transit entry names at least one container",
        ));
    }
    let mut normalised = Vec::new();
    for (i, c) in p.container_ids.iter().enumerate() {
        match ContainerId::parse(c) {
            Ok(c) => normalised.push(c.as_str().to_string()),
            Err(e) => return Err(refuse(idr, &format!("container_ids[{i}]"), e.to_string())),
        }
    }
    p.container_ids = normalised;
    if time::OffsetDateTime::parse(
        &p.scanned_at,
        &time::format_description::well_known::Rfc3339,
    )
    .is_err()
    {
        return Err(refuse(
            idr,
            "scanned_at",
            format!("{:?} is not an RFC 3339 time", p.scanned_at),
        ));
    }
    if !(p.reduction > 0.0 && p.reduction <= 1.0) {
        return Err(refuse(
            idr,
            "reduction",
            format!("{} is not in (0, 1]", p.reduction),
        ));
    }
    if let Some([x, y]) = p.pixel_mm {
        if !(x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite() && x <= 1000.0 && y <= 1000.0) {
            return Err(refuse(idr, "pixel_mm", "must be two positive sizes in mm"));
        }
    }
    let limits = &ctx.cfg.ingest.limits;
    if p.image_width == 0
        || p.image_height == 0
        || p.image_width > limits.max_width
        || p.image_height > limits.max_height
        || u64::from(p.image_width) * u64::from(p.image_height) > limits.max_pixels
    {
        return Err(refuse(
            idr,
            "image_width",
            format!(
                "{}x{} is empty or beyond this node's ingest limits",
                p.image_width, p.image_height
            ),
        ));
    }
    let png = base64::engine::general_purpose::STANDARD
        .decode(msg.image_png_base64.as_bytes())
        .map_err(|e| refuse(idr, "image_png_base64", format!("not base64: {e}")))?;
    if sha256_hex(&png) != msg.image_sha256.to_ascii_lowercase() {
        return Err(refuse(
            idr,
            "image_sha256",
            "does not match the image: the package was damaged or altered",
        ));
    }
    Ok((p, png))
}

/// Checks the PNG itself: a 16-bit grayscale image of the stated size. Blocking.
fn check_png(p: &EntryPackage, png: &[u8]) -> Result<(), Refusal> {
    let idr = Some(p.entry_scan_id.as_str());
    let dec = image::codecs::png::PngDecoder::new(std::io::Cursor::new(png))
        .map_err(|e| refuse(idr, "image_png_base64", format!("not a PNG: {e}")))?;
    use image::ImageDecoder;
    if dec.dimensions() != (p.image_width, p.image_height) {
        return Err(refuse(
            idr,
            "image_png_base64",
            format!(
                "the PNG is {}x{}, the package says {}x{}",
                dec.dimensions().0,
                dec.dimensions().1,
                p.image_width,
                p.image_height
            ),
        ));
    }
    if dec.color_type() != image::ColorType::L16 {
        return Err(refuse(
            idr,
            "image_png_base64",
            format!(
                "the PNG is {:?}, expected 16-bit grayscale",
                dec.color_type()
            ),
        ));
    }
    // Decode fully: a truncated or corrupt stream is caught here, not in the transit check.
    let mut buf = vec![0u8; dec.total_bytes() as usize];
    dec.read_image(&mut buf).map_err(|e| {
        refuse(
            idr,
            "image_png_base64",
            format!("the PNG does not decode: {e}"),
        )
    })?;
    Ok(())
}

/// Handles one received package (see the module doc for the order of effects).
pub(super) async fn receive(ctx: &Arc<Context>, payload: &[u8]) -> Disposition {
    let (pkg, png) = match check(ctx, payload) {
        Ok(v) => v,
        Err(r) => return refused(ctx, r).await,
    };
    let id = pkg.entry_scan_id.clone();
    let idq = id.clone();
    match ctx
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM entry_packages WHERE entry_scan_id = ?1",
                [&idq],
                |_| Ok(()),
            )
            .optional()?)
        })
        .await
    {
        Ok(Some(())) => {
            tracing::debug!(entry_scan_id = %id, "entry package received again; already stored");
            return Disposition::Ack;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up entry packages; will retry the delivery");
            return Disposition::Retry;
        }
    }
    let dir = ctx.cfg.data_dir.join("entries").join(&id);
    let pkg2 = pkg.clone();
    let written = tokio::task::spawn_blocking(move || {
        check_png(&pkg2, &png)?;
        crate::ingest::write_dir_atomically(&dir, &[("image.png".to_string(), png.as_slice())])
            .map_err(|e| refuse(Some(&pkg2.entry_scan_id), "", e.to_string()))
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(r)) if !r.field.is_empty() => return refused(ctx, r).await,
        Ok(Err(r)) => {
            tracing::error!(entry_scan_id = %id, error = %r.reason, "cannot write the entry package's image; will retry the delivery");
            return Disposition::Retry;
        }
        Err(_) => return Disposition::Retry,
    }
    let rel = image_rel_path(&id);
    let p = pkg.clone();
    match ctx
        .store
        .write(move |t| store::entries::insert(t, &p, &rel))
        .await
    {
        Ok(true) => {
            tracing::info!(entry_scan_id = %id, origin_site = %pkg.origin_site, declaration = %pkg.declaration_number, "entry package stored");
            ctx.metrics.uplink().entry_packages_received.inc();
            ctx.handle.update_status(|s| s.entry_packages.received += 1);
            // Nobody listening is fine: pairing also looks packages up when exits arrive.
            let _ = ctx.handle.inner.entries_tx.send(id);
            Disposition::Ack
        }
        Ok(false) => Disposition::Ack,
        Err(e) => {
            tracing::error!(entry_scan_id = %id, error = %e, "cannot store the entry package; will retry the delivery");
            Disposition::Retry
        }
    }
}

async fn refused(ctx: &Arc<Context>, r: Refusal) -> Disposition {
    tracing::warn!(entry_scan_id = r.entry_scan_id.as_deref().unwrap_or("-"), field = %r.field, reason = %r.reason, "entry package refused");
    ctx.metrics.uplink().entry_packages_rejected.inc();
    ctx.handle.update_status(|s| s.entry_packages.rejected += 1);
    let rec = RejectRecord {
        at: store::now_rfc3339(),
        scan_id: r.entry_scan_id,
        source: "mqtt".into(),
        field: Some(r.field),
        reason: format!("entry package: {}", r.reason),
    };
    match ctx
        .store
        .write(move |t| store::scans::insert_reject(t, &rec))
        .await
    {
        Ok(()) => Disposition::Ack,
        // Keep it for a later delivery rather than lose the record of refusing it.
        Err(_) => Disposition::Retry,
    }
}
