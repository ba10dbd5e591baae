//! Transit pairing in the store: finding an exit scan's entry (an entry scan of this node,
//! else an entry package from the entry site) and the bookkeeping of exits whose verdict
//! awaits their entry. The `transit_awaiting` row of an exit is written in the same
//! transaction as its `awaiting_entry` verdict and removed in the same transaction as the
//! verdict that supersedes it, so the two never disagree.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::entries::{self, EntryRecord};
use super::scans::{self, ScanRecord};
use super::Result;

/// Where an exit scan's entry comes from.
#[derive(Debug, Clone)]
pub enum EntrySource {
    /// An entry scan ingested by this node (full resolution).
    Local(ScanRecord),
    /// An entry package received from the entry site (reduced image).
    Package(EntryRecord),
}

impl EntrySource {
    pub fn scan_id(&self) -> &str {
        match self {
            EntrySource::Local(s) => &s.scan_id,
            EntrySource::Package(p) => &p.package.entry_scan_id,
        }
    }
}

/// The newest local transit entry scan with this declaration sharing a container.
pub fn find_local_entry(
    c: &Connection,
    declaration_number: &str,
    container_ids: &[String],
) -> Result<Option<String>> {
    let mut st = c.prepare_cached(
        "SELECT s.scan_id FROM scans s JOIN scan_containers sc ON sc.scan_id = s.scan_id
         WHERE s.declaration_number = ?1 AND sc.container_id = ?2
           AND s.direction = 'entry' AND s.regime = 'transit'
         ORDER BY s.scanned_at DESC LIMIT 1",
    )?;
    for cid in container_ids {
        if let Some(id) = st
            .query_row(params![declaration_number, cid], |r| r.get::<_, String>(0))
            .optional()?
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The entry of an exit scan: a local entry scan first (full resolution), else a package.
pub fn find_entry(
    c: &Connection,
    declaration_number: &str,
    container_ids: &[String],
) -> Result<Option<EntrySource>> {
    if let Some(id) = find_local_entry(c, declaration_number, container_ids)? {
        if let Some(s) = scans::get(c, &id)? {
            return Ok(Some(EntrySource::Local(s)));
        }
    }
    Ok(entries::find_for_exit(c, declaration_number, container_ids)?.map(EntrySource::Package))
}

/// An entry by its scan id, local or package.
pub fn entry_by_id(c: &Connection, entry_scan_id: &str) -> Result<Option<EntrySource>> {
    if let Some(s) = scans::get(c, entry_scan_id)? {
        if s.direction == "entry" && s.regime == "transit" {
            return Ok(Some(EntrySource::Local(s)));
        }
    }
    Ok(entries::get(c, entry_scan_id)?
        .filter(|p| p.evicted_at.is_none())
        .map(EntrySource::Package))
}

/// An exit scan whose current verdict awaits its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Awaiting {
    pub exit_scan_id: String,
    pub verdict_id: String,
    pub declaration_number: String,
    pub since: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Awaiting> {
    Ok(Awaiting {
        exit_scan_id: r.get(0)?,
        verdict_id: r.get(1)?,
        declaration_number: r.get(2)?,
        since: r.get(3)?,
    })
}

/// Records that `exit_scan_id`'s verdict `verdict_id` awaits its entry.
pub fn mark_awaiting(
    t: &Transaction<'_>,
    exit_scan_id: &str,
    verdict_id: &str,
    declaration_number: &str,
    since: &str,
) -> Result<()> {
    t.execute(
        "INSERT OR REPLACE INTO transit_awaiting(exit_scan_id, verdict_id, declaration_number, since)
         VALUES (?1, ?2, ?3, ?4)",
        params![exit_scan_id, verdict_id, declaration_number, since],
    )?;
    Ok(())
}

/// Removes the exit's awaiting row; true if it was there with `verdict_id` (the verdict a
/// new one may supersede), false if another writer got there first.
pub fn take_awaiting(t: &Transaction<'_>, exit_scan_id: &str, verdict_id: &str) -> Result<bool> {
    Ok(t.execute(
        "DELETE FROM transit_awaiting WHERE exit_scan_id = ?1 AND verdict_id = ?2",
        params![exit_scan_id, verdict_id],
    )? == 1)
}

/// Exits awaiting an entry with this declaration (containers are checked by the caller).
pub fn awaiting_for_declaration(c: &Connection, declaration_number: &str) -> Result<Vec<Awaiting>> {
    let mut st = c.prepare(
        "SELECT exit_scan_id, verdict_id, declaration_number, since FROM transit_awaiting
         WHERE declaration_number = ?1 ORDER BY since",
    )?;
    let rows = st
        .query_map([declaration_number], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every exit awaiting its entry, oldest first.
pub fn all_awaiting(c: &Connection) -> Result<Vec<Awaiting>> {
    let mut st = c.prepare(
        "SELECT exit_scan_id, verdict_id, declaration_number, since FROM transit_awaiting ORDER BY since",
    )?;
    let rows = st
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn get_awaiting(c: &Connection, exit_scan_id: &str) -> Result<Option<Awaiting>> {
    Ok(c.query_row(
        "SELECT exit_scan_id, verdict_id, declaration_number, since FROM transit_awaiting
         WHERE exit_scan_id = ?1",
        [exit_scan_id],
        row,
    )
    .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scans::NewScan;
    use crate::store::Store;

    fn scan(id: &str, direction: &str, decl: &str, container: &str, at: &str) -> NewScan {
        NewScan {
            scan_id: id.into(),
            scanned_at: at.into(),
            scanner_id: "KHI-P1".into(),
            site_id: "KHI".into(),
            direction: direction.into(),
            regime: "transit".into(),
            declaration_number: decl.into(),
            container_ids: vec![container.into()],
            vehicle_plate: None,
            sidecar: serde_json::json!({}),
            source: "http",
            content_sha256: format!("sha-{id}"),
            image_dir: format!("scans/{id}"),
            original_file: "x.png".into(),
            has_low_energy: false,
            width: 10,
            height: 10,
            source_format: "png".into(),
            source_bits: 16,
            pixel_meaning: "transmission".into(),
        }
    }

    #[tokio::test]
    async fn local_entry_is_found_by_declaration_and_container_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let rows = [
            scan(
                "E1",
                "entry",
                "D-1",
                "MSCU1234566",
                "2026-11-20T00:00:00.000Z",
            ),
            scan(
                "E2",
                "entry",
                "D-1",
                "MSCU1234566",
                "2026-11-21T00:00:00.000Z",
            ),
            scan(
                "E3",
                "entry",
                "D-2",
                "MSCU1234566",
                "2026-11-22T00:00:00.000Z",
            ),
            scan(
                "X1",
                "exit",
                "D-1",
                "MSCU1234566",
                "2026-11-23T00:00:00.000Z",
            ),
        ];
        store
            .write(move |t| {
                for r in &rows {
                    scans::insert(t, r)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let found = store
            .read(|c| find_entry(c, "D-1", &["CSQU3054383".into(), "MSCU1234566".into()]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.scan_id(), "E2");
        assert!(store
            .read(|c| find_entry(c, "D-3", &["MSCU1234566".into()]))
            .await
            .unwrap()
            .is_none());
        // An exit is never an entry.
        assert!(store
            .read(|c| entry_by_id(c, "X1"))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn awaiting_rows_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write(|t| {
                scans::insert(
                    t,
                    &scan(
                        "X1",
                        "exit",
                        "D-1",
                        "MSCU1234566",
                        "2026-11-23T00:00:00.000Z",
                    ),
                )?;
                mark_awaiting(t, "X1", "v1", "D-1", "2026-11-23T00:00:01.000Z")
            })
            .await
            .unwrap();
        let a = store
            .read(|c| awaiting_for_declaration(c, "D-1"))
            .await
            .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(store.read(all_awaiting).await.unwrap(), a);
        assert!(!store.write(|t| take_awaiting(t, "X1", "v0")).await.unwrap());
        assert!(store.write(|t| take_awaiting(t, "X1", "v1")).await.unwrap());
        assert!(!store.write(|t| take_awaiting(t, "X1", "v1")).await.unwrap());
        assert!(store
            .read(|c| get_awaiting(c, "X1"))
            .await
            .unwrap()
            .is_none());
    }
}
