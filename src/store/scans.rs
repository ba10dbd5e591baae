//! Scan rows: one per stored scan (its files already fsynced under the data dir), the
//! container index used for pairing and search, and the log of rejected drops.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{now_rfc3339, Result, StoreError};

/// A scan about to be stored. Its image directory must already be durable on disk.
#[derive(Debug, Clone)]
pub struct NewScan {
    pub scan_id: String,
    pub scanned_at: String,
    pub scanner_id: String,
    pub site_id: String,
    pub direction: String,
    pub regime: String,
    pub declaration_number: String,
    pub container_ids: Vec<String>,
    pub vehicle_plate: Option<String>,
    pub sidecar: serde_json::Value,
    pub source: &'static str,
    pub content_sha256: String,
    pub image_dir: String,
    pub original_file: String,
    pub has_low_energy: bool,
    pub width: u32,
    pub height: u32,
    pub source_format: String,
    pub source_bits: u8,
    pub pixel_meaning: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanRecord {
    pub id: i64,
    pub scan_id: String,
    pub received_at: String,
    pub scanned_at: String,
    pub scanner_id: String,
    pub site_id: String,
    pub direction: String,
    pub regime: String,
    pub declaration_number: String,
    pub container_ids: Vec<String>,
    pub vehicle_plate: Option<String>,
    pub source: String,
    pub content_sha256: String,
    #[serde(skip)]
    pub image_dir: String,
    #[serde(skip)]
    pub original_file: String,
    pub has_low_energy: bool,
    pub width: u32,
    pub height: u32,
    pub source_format: String,
    pub source_bits: u8,
    pub pixel_meaning: String,
    pub state: String,
    /// The current verdict's outcome, when there is one (filled by listing queries).
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<serde_json::Value>,
}

const COLUMNS: &str = "s.id, s.scan_id, s.received_at, s.scanned_at, s.scanner_id, s.site_id, s.direction, s.regime,
    s.declaration_number, s.container_ids, s.vehicle_plate, s.source, s.content_sha256, s.image_dir, s.original_file,
    s.has_low_energy, s.width, s.height, s.source_format, s.source_bits, s.pixel_meaning, s.state,
    (SELECT v.outcome FROM verdicts v WHERE v.scan_id = s.scan_id ORDER BY v.seq DESC LIMIT 1) AS outcome";

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ScanRecord, String)> {
    let containers: String = r.get(9)?;
    Ok((
        ScanRecord {
            id: r.get(0)?,
            scan_id: r.get(1)?,
            received_at: r.get(2)?,
            scanned_at: r.get(3)?,
            scanner_id: r.get(4)?,
            site_id: r.get(5)?,
            direction: r.get(6)?,
            regime: r.get(7)?,
            declaration_number: r.get(8)?,
            container_ids: Vec::new(),
            vehicle_plate: r.get(10)?,
            source: r.get(11)?,
            content_sha256: r.get(12)?,
            image_dir: r.get(13)?,
            original_file: r.get(14)?,
            has_low_energy: r.get(15)?,
            width: r.get(16)?,
            height: r.get(17)?,
            source_format: r.get(18)?,
            source_bits: r.get(19)?,
            pixel_meaning: r.get(20)?,
            state: r.get(21)?,
            outcome: r.get(22)?,
            sidecar: None,
        },
        containers,
    ))
}

fn finish(pair: (ScanRecord, String)) -> Result<ScanRecord> {
    let (mut rec, containers) = pair;
    rec.container_ids = serde_json::from_str(&containers).map_err(|source| StoreError::Json {
        what: "scans.container_ids",
        source,
    })?;
    Ok(rec)
}

/// Inserts the scan, its container index rows and an audit entry. Fails with a UNIQUE
/// constraint error if the scan id is already stored (callers check first; the constraint
/// is the last line of defence against a duplicate).
pub fn insert(t: &Transaction<'_>, s: &NewScan) -> Result<i64> {
    t.execute(
        "INSERT INTO scans(scan_id, received_at, scanned_at, scanner_id, site_id, direction, regime, declaration_number,
            container_ids, vehicle_plate, sidecar, source, content_sha256, image_dir, original_file, has_low_energy,
            width, height, source_format, source_bits, pixel_meaning, state)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,'ingested')",
        params![
            s.scan_id,
            now_rfc3339(),
            s.scanned_at,
            s.scanner_id,
            s.site_id,
            s.direction,
            s.regime,
            s.declaration_number,
            serde_json::to_string(&s.container_ids).expect("strings serialise"),
            s.vehicle_plate,
            s.sidecar.to_string(),
            s.source,
            s.content_sha256,
            s.image_dir,
            s.original_file,
            s.has_low_energy,
            s.width,
            s.height,
            s.source_format,
            s.source_bits,
            s.pixel_meaning
        ],
    )?;
    let id = t.last_insert_rowid();
    for c in &s.container_ids {
        t.execute(
            "INSERT OR IGNORE INTO scan_containers(container_id, scan_id) VALUES (?1, ?2)",
            params![c, s.scan_id],
        )?;
    }
    super::audit::append(
        t,
        "system",
        "scan.ingested",
        Some(&s.scan_id),
        serde_json::json!({"source": s.source, "sha256": s.content_sha256, "width": s.width, "height": s.height}),
    )?;
    Ok(id)
}

pub fn get(c: &Connection, scan_id: &str) -> Result<Option<ScanRecord>> {
    let sql = format!("SELECT {COLUMNS}, s.sidecar FROM scans s WHERE s.scan_id = ?1");
    let found = c
        .query_row(&sql, [scan_id], |r| {
            let pair = row_to_record(r)?;
            let sidecar: String = r.get(23)?;
            Ok((pair, sidecar))
        })
        .optional()?;
    let Some((pair, sidecar)) = found else {
        return Ok(None);
    };
    let mut rec = finish(pair)?;
    rec.sidecar = Some(
        serde_json::from_str(&sidecar).map_err(|source| StoreError::Json {
            what: "scans.sidecar",
            source,
        })?,
    );
    Ok(Some(rec))
}

/// The stored content hash of `scan_id`, if it is stored: tells a re-delivered drop from a
/// conflicting one.
pub fn content_hash(c: &Connection, scan_id: &str) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT content_sha256 FROM scans WHERE scan_id = ?1",
        [scan_id],
        |r| r.get(0),
    )
    .optional()?)
}

#[derive(Debug, Clone, Default)]
pub struct ScanFilter {
    pub limit: u32,
    /// Only scans with `id` below this (the `next` cursor of the previous page).
    pub before: Option<i64>,
    pub direction: Option<String>,
    pub container: Option<String>,
    pub declaration: Option<String>,
    pub outcome: Option<String>,
    pub state: Option<String>,
}

/// Newest first; at most `limit` rows.
pub fn list(c: &Connection, f: &ScanFilter) -> Result<Vec<ScanRecord>> {
    let mut wheres = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(b) = f.before {
        wheres.push("id < ?");
        args.push(b.into());
    }
    if let Some(d) = &f.direction {
        wheres.push("direction = ?");
        args.push(d.clone().into());
    }
    if let Some(cid) = &f.container {
        wheres.push("EXISTS (SELECT 1 FROM scan_containers sc WHERE sc.scan_id = q.scan_id AND sc.container_id LIKE ? ESCAPE '\\')");
        args.push(format!("{}%", escape_like(&cid.to_ascii_uppercase())).into());
    }
    if let Some(d) = &f.declaration {
        wheres.push("declaration_number = ?");
        args.push(d.clone().into());
    }
    if let Some(o) = &f.outcome {
        wheres.push("outcome = ?");
        args.push(o.clone().into());
    }
    if let Some(s) = &f.state {
        wheres.push("state = ?");
        args.push(s.clone().into());
    }
    let where_sql = if wheres.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wheres.join(" AND "))
    };
    args.push(i64::from(f.limit).into());
    let sql = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM scans s) q {where_sql} ORDER BY id DESC LIMIT ?"
    );
    let mut st = c.prepare(&sql)?;
    let rows = st
        .query_map(params_from_iter(args), row_to_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish).collect()
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Scans stored but not yet decided (the node stopped between ingest and verdict).
pub fn undecided(c: &Connection) -> Result<Vec<String>> {
    let mut st = c.prepare("SELECT scan_id FROM scans WHERE state = 'ingested' ORDER BY id")?;
    let ids = st
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

pub fn count(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT count(*) FROM scans", [], |r| r.get(0))?)
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectRecord {
    pub at: String,
    pub scan_id: Option<String>,
    pub source: String,
    pub field: Option<String>,
    pub reason: String,
}

pub fn insert_reject(t: &Transaction<'_>, r: &RejectRecord) -> Result<()> {
    t.execute(
        "INSERT INTO rejects(at, scan_id, source, field, reason) VALUES (?1,?2,?3,?4,?5)",
        params![r.at, r.scan_id, r.source, r.field, r.reason],
    )?;
    super::audit::append(
        t,
        "system",
        "scan.rejected",
        r.scan_id.as_deref(),
        serde_json::json!({"source": r.source, "field": r.field, "reason": r.reason}),
    )?;
    Ok(())
}

pub fn recent_rejects(c: &Connection, limit: u32) -> Result<Vec<RejectRecord>> {
    let mut st = c.prepare(
        "SELECT at, scan_id, source, field, reason FROM rejects ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = st
        .query_map([limit], |r| {
            Ok(RejectRecord {
                at: r.get(0)?,
                scan_id: r.get(1)?,
                source: r.get(2)?,
                field: r.get(3)?,
                reason: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
