//! The outbox: messages for the central RIAC, in the order they must be sent. Rows are
//! added in the same transaction as what they announce (a verdict, a command's effect) and
//! deleted only when the broker's PUBACK for them has arrived (see `uplink::session`); a
//! row is never updated in between, so after any crash every unacknowledged row is still
//! here, unchanged, and is sent again.
//!
//! Kinds: `verdict` (ref = verdict_id), `entry_package` (ref = entry scan id), `cmd_reply`
//! (ref = command_id), `image_chunk` (ref = command_id).

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::Result;

pub const KIND_VERDICT: &str = "verdict";
pub const KIND_ENTRY_PACKAGE: &str = "entry_package";
pub const KIND_CMD_REPLY: &str = "cmd_reply";
pub const KIND_IMAGE_CHUNK: &str = "image_chunk";

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub reference: Option<String>,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Queues one message. Call inside the transaction that makes it true.
pub fn enqueue(
    t: &Transaction<'_>,
    kind: &str,
    reference: Option<&str>,
    topic: &str,
    payload: &[u8],
) -> Result<i64> {
    t.execute(
        "INSERT INTO outbox(kind, ref, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kind, reference, topic, payload, super::now_rfc3339()],
    )?;
    Ok(t.last_insert_rowid())
}

/// The next rows after `after_id`, oldest first: at most `max_rows`, and no more than
/// `max_bytes` of payload in all except that the first row always comes (a message bigger
/// than the budget must still be sent).
pub fn next_after(
    c: &Connection,
    after_id: i64,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Vec<OutboxRow>> {
    if max_rows == 0 {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(
        "SELECT id, length(payload) FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let sizes = st
        .query_map(params![after_id, max_rows as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut chosen = Vec::new();
    let mut total = 0usize;
    for (id, len) in sizes {
        let len = len.max(0) as usize;
        if !chosen.is_empty() && total + len > max_bytes {
            break;
        }
        total += len;
        chosen.push(id);
    }
    let mut get =
        c.prepare_cached("SELECT id, kind, ref, topic, payload FROM outbox WHERE id = ?1")?;
    let mut rows = Vec::with_capacity(chosen.len());
    for id in chosen {
        // A row acknowledged and deleted meanwhile is simply skipped.
        if let Some(row) = get
            .query_row([id], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    reference: r.get(2)?,
                    topic: r.get(3)?,
                    payload: r.get(4)?,
                })
            })
            .optional()?
        {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Deletes acknowledged rows (and records entry packages as sent). Returns rows deleted.
pub fn delete_acked(t: &Transaction<'_>, ids: &[i64]) -> Result<usize> {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let numbered: Vec<String> = (2..chunk.len() + 2).map(|i| format!("?{i}")).collect();
        let numbered = numbered.join(",");
        t.execute(
            &format!(
                "UPDATE entry_outgoing SET state = 'sent', updated_at = ?1 WHERE scan_id IN
                 (SELECT ref FROM outbox WHERE kind = 'entry_package' AND id IN ({numbered}))"
            ),
            params_from_iter(
                std::iter::once(rusqlite::types::Value::from(super::now_rfc3339()))
                    .chain(chunk.iter().map(|i| rusqlite::types::Value::from(*i))),
            ),
        )?;
        let marks = vec!["?"; chunk.len()].join(",");
        n += t.execute(
            &format!("DELETE FROM outbox WHERE id IN ({marks})"),
            params_from_iter(chunk.iter()),
        )?;
    }
    Ok(n)
}

/// What is waiting, for status, metrics and the quota.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    pub depth: i64,
    pub bytes: i64,
    pub verdicts: i64,
    pub entry_packages: i64,
    pub cmd_replies: i64,
    pub image_chunks: i64,
    /// `decided_at` of the oldest verdict not yet acknowledged by the broker.
    pub oldest_verdict_at: Option<String>,
}

pub fn stats(c: &Connection) -> Result<OutboxStats> {
    let mut s = OutboxStats::default();
    let mut st = c.prepare_cached(
        "SELECT kind, count(*), coalesce(sum(length(payload)), 0) FROM outbox GROUP BY kind",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (kind, n, bytes) in rows {
        s.depth += n;
        s.bytes += bytes;
        match kind.as_str() {
            KIND_VERDICT => s.verdicts = n,
            KIND_ENTRY_PACKAGE => s.entry_packages = n,
            KIND_CMD_REPLY => s.cmd_replies = n,
            KIND_IMAGE_CHUNK => s.image_chunks = n,
            _ => {}
        }
    }
    s.oldest_verdict_at = c
        .query_row(
            "SELECT created_at FROM outbox WHERE kind = 'verdict' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(s)
}

/// Bytes of payload waiting (the quota's measure).
pub fn bytes(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        "SELECT coalesce(sum(length(payload)), 0) FROM outbox",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn rows_come_in_order_within_budget_and_leave_only_when_acked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("o.db")).unwrap();
        let ids = store
            .write(|t| {
                let mut ids = Vec::new();
                for i in 0..5 {
                    ids.push(enqueue(
                        t,
                        KIND_VERDICT,
                        Some(&format!("v{i}")),
                        "t",
                        &[b'x'; 100],
                    )?);
                }
                Ok(ids)
            })
            .await
            .unwrap();
        let rows = store.read(|c| next_after(c, 0, 10, 250)).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
        let second = ids[1];
        let rows = store
            .read(move |c| next_after(c, second, 2, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "the first row always comes");
        let s = store.read(stats).await.unwrap();
        assert_eq!((s.depth, s.bytes, s.verdicts), (5, 500, 5));
        assert!(s.oldest_verdict_at.is_some());
        let first_two = ids[..2].to_vec();
        assert_eq!(
            store
                .write(move |t| delete_acked(t, &first_two))
                .await
                .unwrap(),
            2
        );
        let rows = store.read(|c| next_after(c, 0, 10, 1 << 20)).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids[2..]);
    }
}
