//! The audit chain: an append-only log of who did what (ingest, rejects, decisions, logins,
//! admin actions), each entry hashing the one before so that an edit or deletion shows.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::chain::{canonical_json, sha256_hex, GENESIS};
use super::{now_rfc3339, Result};

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

fn entry_hash(e: &AuditEntry) -> String {
    let v = serde_json::json!({
        "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
        "subject": e.subject, "detail": e.detail, "prev_hash": e.prev_hash,
    });
    sha256_hex(canonical_json(&v).as_bytes())
}

/// Appends an entry inside the caller's transaction, so the audit line commits (or not)
/// with the change it describes.
pub fn append(
    t: &Transaction<'_>,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    detail: serde_json::Value,
) -> Result<i64> {
    let last: Option<(i64, String)> = t
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let mut e = AuditEntry {
        seq,
        at: now_rfc3339(),
        actor: actor.to_string(),
        action: action.to_string(),
        subject: subject.map(str::to_string),
        detail,
        prev_hash,
        hash: String::new(),
    };
    e.hash = entry_hash(&e);
    t.execute(
        "INSERT INTO audit(seq, at, actor, action, subject, detail, prev_hash, hash) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
        params![e.seq, e.at, e.actor, e.action, e.subject, e.detail.to_string(), e.prev_hash, e.hash],
    )?;
    Ok(seq)
}

/// Entries about one subject (a scan id, a user), oldest first.
pub fn for_subject(c: &rusqlite::Connection, subject: &str) -> Result<Vec<AuditEntry>> {
    let mut st = c.prepare(
        "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit WHERE subject = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map([subject], row_to_entry)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let detail: String = r.get(5)?;
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

/// Walks the whole chain; returns the seq of the first entry whose hash or link is wrong.
pub fn verify(c: &rusqlite::Connection) -> Result<Option<i64>> {
    let mut st = c.prepare(
        "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = st.query([])?;
    let mut prev = GENESIS.to_string();
    let mut expect_seq = 1;
    while let Some(r) = rows.next()? {
        let e = row_to_entry(r)?;
        if e.seq != expect_seq || e.prev_hash != prev || entry_hash(&e) != e.hash {
            return Ok(Some(e.seq));
        }
        prev = e.hash;
        expect_seq += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn chain_links_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).unwrap();
        for i in 0..3 {
            store
                .write(move |t| {
                    append(t, "system", "test", Some("s1"), serde_json::json!({"i": i}))
                })
                .await
                .unwrap();
        }
        assert_eq!(store.read(verify).await.unwrap(), None);
        let entries = store.read(|c| for_subject(c, "s1")).await.unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        store
            .write(|t| {
                t.execute("UPDATE audit SET detail = '{\"i\":9}' WHERE seq = 2", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.read(verify).await.unwrap(), Some(2));
    }
}
