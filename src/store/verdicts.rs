//! Verdict rows and their outbox rows. A verdict joins the node's chain here: the writer
//! assigns the next `seq`, links `prev_hash` to the previous verdict's hash, and inserts
//! the outbox row in the same transaction, so a verdict is never stored unsent-and-forgotten
//! nor sent-but-unstored.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::chain::{canonical_bytes, sha256_hex, signing_bytes, GENESIS};
use super::{Result, StoreError};
use crate::scan::verdict::{self, Verdict};

/// Signs verdicts in the node's name (the node key, see `uplink::keys`). Signing happens
/// inside the transaction that assigns `seq` and `prev_hash`, so what is signed is exactly
/// what is stored and published.
pub trait VerdictSigner: Send + Sync {
    /// The signature over `signing_bytes` (from [`Verdict::signing_bytes`]), as it goes
    /// into the verdict's `signature` field.
    fn sign(&self, signing_bytes: &[u8]) -> String;
}

/// Publishes `v` into the chain: sets `seq` and `prev_hash`, signs it with `signer` (left
/// `null` without one), stores it, queues it on `topic`, and marks its scan decided.
/// Returns the verdict as stored.
///
/// The signing bytes follow the verdict's own `schema` (`scan::verdict::canonicalization`),
/// and `prev_hash` is the stored `hash` of the previous verdict, whatever its version: that
/// is how the chain runs on across the `/1` → `/2` upgrade. The stored and published body
/// is the whole verdict in the same canonical form, so a `/2` body is RFC 8785 text.
pub fn insert_with_outbox(
    t: &Transaction<'_>,
    mut v: Verdict,
    topic: &str,
    signer: Option<&dyn VerdictSigner>,
) -> Result<Verdict> {
    let last: Option<(i64, String)> = t
        .query_row(
            "SELECT seq, hash FROM verdicts ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((s, h)) => (s as u64 + 1, h),
        None => (1, GENESIS.to_string()),
    };
    v.seq = seq;
    v.prev_hash = prev_hash;
    let id = v.verdict_id.clone();
    let unsignable = |reason: String| StoreError::Unsignable {
        verdict_id: id.clone(),
        reason,
    };
    let value = serde_json::to_value(&v).expect("verdict serialises");
    let obj = value.as_object().expect("a verdict is an object");
    let canon = verdict::canonicalization(obj).map_err(unsignable)?;
    let signed = signing_bytes(obj, canon).map_err(|e| unsignable(e.to_string()))?;
    let hash = sha256_hex(&signed);
    v.signature = signer.map(|s| s.sign(&signed));
    let value = serde_json::to_value(&v).expect("verdict serialises");
    let body = canonical_bytes(&value, canon)
        .map(|b| String::from_utf8(b).expect("canonical JSON is UTF-8"))
        .map_err(|e| unsignable(e.to_string()))?;
    t.execute(
        "INSERT INTO verdicts(seq, verdict_id, scan_id, decided_at, outcome, decided_by, supersedes, body, hash)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
        params![
            seq as i64,
            v.verdict_id,
            v.scan_id,
            v.decided_at,
            v.outcome.as_str(),
            v.decided_by,
            v.supersedes,
            body,
            hash
        ],
    )?;
    t.execute(
        "INSERT INTO outbox(kind, ref, topic, payload, created_at) VALUES ('verdict', ?1, ?2, ?3, ?4)",
        params![v.verdict_id, topic, body.as_bytes(), v.decided_at],
    )?;
    t.execute(
        "UPDATE scans SET state = 'decided' WHERE scan_id = ?1",
        [&v.scan_id],
    )?;
    Ok(v)
}

fn parse_body(body: String) -> Result<Verdict> {
    serde_json::from_str(&body).map_err(|source| StoreError::Json {
        what: "verdicts.body",
        source,
    })
}

/// The scan's current verdict: the latest in its chain (an override supersedes the auto one).
pub fn current_for_scan(c: &Connection, scan_id: &str) -> Result<Option<Verdict>> {
    let body: Option<String> = c
        .query_row(
            "SELECT body FROM verdicts WHERE scan_id = ?1 ORDER BY seq DESC LIMIT 1",
            [scan_id],
            |r| r.get(0),
        )
        .optional()?;
    body.map(parse_body).transpose()
}

/// Every verdict of the scan, oldest first.
pub fn history_for_scan(c: &Connection, scan_id: &str) -> Result<Vec<Verdict>> {
    let mut st = c.prepare("SELECT body FROM verdicts WHERE scan_id = ?1 ORDER BY seq")?;
    let bodies = st
        .query_map([scan_id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bodies.into_iter().map(parse_body).collect()
}

pub fn outbox_depth(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?)
}
