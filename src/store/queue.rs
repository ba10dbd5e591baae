//! Read-only queries for the operator UI: the review queue (each scan with its current
//! verdict's outcome, who decided it, and the transit and manifest statuses), neighbours for
//! next/previous navigation, and the figures of the status page. Nothing here writes.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde::Serialize;

use super::{Result, StoreError};

/// Which scans the queue shows, by review state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Review {
    #[default]
    All,
    /// The automatic verdict is `refer` or `alert` and no operator has decided yet.
    Needed,
    /// An operator has decided.
    Done,
}

impl Review {
    pub fn parse(s: &str) -> Option<Review> {
        match s {
            "" | "all" => Some(Review::All),
            "needed" => Some(Review::Needed),
            "done" => Some(Review::Done),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Review::All => "all",
            Review::Needed => "needed",
            Review::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub limit: u32,
    pub before: Option<i64>,
    pub direction: Option<String>,
    /// A prefix of a container id (upper case, no spaces).
    pub container: Option<String>,
    pub declaration: Option<String>,
    pub outcome: Option<String>,
    pub review: Review,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    pub id: i64,
    pub scan_id: String,
    pub scanned_at: String,
    pub received_at: String,
    pub scanner_id: String,
    pub direction: String,
    pub regime: String,
    pub declaration_number: String,
    pub container_ids: Vec<String>,
    pub vehicle_plate: Option<String>,
    pub width: u32,
    pub height: u32,
    /// The current verdict, if decided.
    pub outcome: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub transit_status: Option<String>,
    pub manifest_status: Option<String>,
}

impl QueueRow {
    /// An automatic `refer` or `alert` that no operator has confirmed or overridden.
    pub fn needs_review(&self) -> bool {
        self.decided_by.as_deref() == Some("auto")
            && matches!(self.outcome.as_deref(), Some("refer" | "alert"))
    }
}

const NEEDS_REVIEW_SQL: &str = "v.decided_by = 'auto' AND v.outcome IN ('refer','alert')";

// The current verdict is the scan's highest seq (an operator's verdict supersedes the
// automatic one); the subquery is answered from the verdicts_scan index.
const FROM: &str = "FROM scans s LEFT JOIN verdicts v
    ON v.seq = (SELECT max(seq) FROM verdicts WHERE scan_id = s.scan_id)";

const COLUMNS: &str =
    "s.id, s.scan_id, s.scanned_at, s.received_at, s.scanner_id, s.direction, s.regime,
    s.declaration_number, s.container_ids, s.vehicle_plate, s.width, s.height,
    v.outcome, v.decided_by, v.decided_at,
    json_extract(v.body, '$.transit.status'), json_extract(v.body, '$.manifest.status')";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(QueueRow, String)> {
    Ok((
        QueueRow {
            id: r.get(0)?,
            scan_id: r.get(1)?,
            scanned_at: r.get(2)?,
            received_at: r.get(3)?,
            scanner_id: r.get(4)?,
            direction: r.get(5)?,
            regime: r.get(6)?,
            declaration_number: r.get(7)?,
            container_ids: Vec::new(),
            vehicle_plate: r.get(9)?,
            width: r.get(10)?,
            height: r.get(11)?,
            outcome: r.get(12)?,
            decided_by: r.get(13)?,
            decided_at: r.get(14)?,
            transit_status: r.get(15)?,
            manifest_status: r.get(16)?,
        },
        r.get(8)?,
    ))
}

fn finish((mut q, containers): (QueueRow, String)) -> Result<QueueRow> {
    q.container_ids = serde_json::from_str(&containers).map_err(|source| StoreError::Json {
        what: "scans.container_ids",
        source,
    })?;
    Ok(q)
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Newest first, at most `limit` rows.
pub fn list(c: &Connection, f: &QueueFilter) -> Result<Vec<QueueRow>> {
    let mut wheres: Vec<&str> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(b) = f.before {
        wheres.push("s.id < ?");
        args.push(b.into());
    }
    if let Some(d) = &f.direction {
        wheres.push("s.direction = ?");
        args.push(d.clone().into());
    }
    if let Some(cid) = &f.container {
        wheres.push("EXISTS (SELECT 1 FROM scan_containers sc WHERE sc.scan_id = s.scan_id AND sc.container_id LIKE ? ESCAPE '\\')");
        args.push(format!("{}%", escape_like(&cid.to_ascii_uppercase())).into());
    }
    if let Some(d) = &f.declaration {
        wheres.push("s.declaration_number = ?");
        args.push(d.clone().into());
    }
    if let Some(o) = &f.outcome {
        wheres.push("v.outcome = ?");
        args.push(o.clone().into());
    }
    match f.review {
        Review::All => {}
        Review::Needed => wheres.push(NEEDS_REVIEW_SQL),
        Review::Done => wheres.push("v.decided_by <> 'auto'"),
    }
    let where_sql = if wheres.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wheres.join(" AND "))
    };
    args.push(i64::from(f.limit).into());
    let sql = format!("SELECT {COLUMNS} {FROM} {where_sql} ORDER BY s.id DESC LIMIT ?");
    let mut st = c.prepare(&sql)?;
    let rows = st
        .query_map(params_from_iter(args), row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish).collect()
}

/// One scan's queue row.
pub fn get(c: &Connection, scan_id: &str) -> Result<Option<QueueRow>> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE s.scan_id = ?1");
    c.query_row(&sql, [scan_id], row)
        .optional()?
        .map(finish)
        .transpose()
}

/// Scans needing review (see [`QueueRow::needs_review`]).
pub fn needs_review_count(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        &format!("SELECT count(*) {FROM} WHERE {NEEDS_REVIEW_SQL}"),
        [],
        |r| r.get(0),
    )?)
}

/// The scan ids just older and just newer than the scan with row id `id` (queue order),
/// among all scans or only those needing review.
pub fn neighbours(
    c: &Connection,
    id: i64,
    only_needing_review: bool,
) -> Result<(Option<String>, Option<String>)> {
    let extra = if only_needing_review {
        format!("AND {NEEDS_REVIEW_SQL}")
    } else {
        String::new()
    };
    let older = c
        .query_row(
            &format!("SELECT s.scan_id {FROM} WHERE s.id < ?1 {extra} ORDER BY s.id DESC LIMIT 1"),
            [id],
            |r| r.get(0),
        )
        .optional()?;
    let newer = c
        .query_row(
            &format!("SELECT s.scan_id {FROM} WHERE s.id > ?1 {extra} ORDER BY s.id ASC LIMIT 1"),
            [id],
            |r| r.get(0),
        )
        .optional()?;
    Ok((older, newer))
}

/// The newest scan row id and verdict seq: when either moves, the queue has changed.
pub fn change_stamp(c: &Connection) -> Result<(i64, i64)> {
    Ok(c.query_row(
        "SELECT (SELECT coalesce(max(id), 0) FROM scans), (SELECT coalesce(max(seq), 0) FROM verdicts)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Figures for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct StatusFigures {
    pub scans_total: i64,
    pub scans_last_hour: i64,
    pub scans_last_day: i64,
    pub rejects_last_day: i64,
    pub undecided: i64,
    pub needs_review: i64,
    pub operator_decisions_last_day: i64,
    pub outbox_depth: i64,
    /// `created_at` of the oldest message still in the outbox.
    pub outbox_oldest: Option<String>,
    pub last_scan_at: Option<String>,
    /// The embedding model named by the newest verdict that names one.
    pub model: Option<serde_json::Value>,
}

/// `hour_ago` and `day_ago` are RFC 3339 timestamps in the store's format.
pub fn status_figures(c: &Connection, hour_ago: &str, day_ago: &str) -> Result<StatusFigures> {
    let q = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<i64> {
        Ok(c.query_row(sql, p, |r| r.get(0))?)
    };
    let model: Option<String> = c
        .query_row(
            "SELECT json_extract(body, '$.model') FROM verdicts
             WHERE json_extract(body, '$.model') IS NOT NULL ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(StatusFigures {
        scans_total: q("SELECT count(*) FROM scans", &[])?,
        scans_last_hour: q(
            "SELECT count(*) FROM scans WHERE received_at >= ?1",
            params![hour_ago],
        )?,
        scans_last_day: q(
            "SELECT count(*) FROM scans WHERE received_at >= ?1",
            params![day_ago],
        )?,
        rejects_last_day: q(
            "SELECT count(*) FROM rejects WHERE at >= ?1",
            params![day_ago],
        )?,
        undecided: q("SELECT count(*) FROM scans WHERE state <> 'decided'", &[])?,
        needs_review: needs_review_count(c)?,
        operator_decisions_last_day: q(
            "SELECT count(*) FROM verdicts WHERE decided_by <> 'auto' AND decided_at >= ?1",
            params![day_ago],
        )?,
        outbox_depth: q("SELECT count(*) FROM outbox", &[])?,
        outbox_oldest: c
            .query_row("SELECT min(created_at) FROM outbox", [], |r| r.get(0))
            .optional()?
            .flatten(),
        last_scan_at: c
            .query_row("SELECT max(received_at) FROM scans", [], |r| r.get(0))
            .optional()?
            .flatten(),
        model: model.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

/// The newest audit entries (for the supervisor's audit page), newest first.
pub fn recent_audit(c: &Connection, limit: u32) -> Result<Vec<super::audit::AuditEntry>> {
    let mut st = c.prepare(
        "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT ?1",
    )?;
    let rows = st
        .query_map([limit], |r| {
            let detail: String = r.get(5)?;
            Ok(super::audit::AuditEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
