//! Entry packages: what an entry site sends ahead (over MQTT, `riac/v1/transit/{exit_site}/
//! entries`) so that the exit site can run the transit check on a container it never saw
//! enter. This is the interface between the uplink (which receives and stores packages) and
//! the transit check's pairing (which looks them up). The package's reduced 16-bit image is
//! a file under the data dir, written and fsynced before the row, like scan images.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::{now_rfc3339, Result, StoreError};

pub const ENTRY_SCHEMA: &str = "riac.entry/1";

/// The entry package as published (the image travels base64-encoded beside this
/// metadata; see the uplink module). Field names are a contract between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryPackage {
    pub schema: String,
    pub entry_scan_id: String,
    pub origin_site: String,
    pub origin_node: String,
    pub exit_site: String,
    pub declaration_number: String,
    pub container_ids: Vec<String>,
    pub scanned_at: String,
    /// The entry scan's sidecar as received by the entry node.
    pub sidecar: serde_json::Value,
    /// Size of the image carried, and the factor it was reduced by from the original
    /// (0.5 = half width and half height); `pixel_mm` is for the reduced image.
    pub image_width: u32,
    pub image_height: u32,
    pub reduction: f64,
    pub pixel_mm: Option<[f64; 2]>,
    /// Embeddings of the entry scan, when the entry node had a model (opaque here).
    #[serde(default)]
    pub embeddings: Option<serde_json::Value>,
}

/// A stored package, as pairing sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryRecord {
    pub package: EntryPackage,
    pub received_at: String,
    /// The canonical 16-bit transmission PNG, relative to the data dir.
    pub image_path: String,
    /// When retention removed the image (no exit scan here needed it any more).
    pub evicted_at: Option<String>,
}

/// Stores a received package whose image file is already durable at `image_path`.
/// Idempotent: a package received again (QoS 1 redelivery) changes nothing and returns false.
pub fn insert(t: &Transaction<'_>, pkg: &EntryPackage, image_path: &str) -> Result<bool> {
    let n = t.execute(
        "INSERT OR IGNORE INTO entry_packages(entry_scan_id, origin_site, exit_site, declaration_number,
            container_ids, scanned_at, received_at, image_path, package)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
        params![
            pkg.entry_scan_id,
            pkg.origin_site,
            pkg.exit_site,
            pkg.declaration_number,
            serde_json::to_string(&pkg.container_ids).expect("strings serialise"),
            pkg.scanned_at,
            now_rfc3339(),
            image_path,
            serde_json::to_string(pkg).expect("package serialises"),
        ],
    )?;
    if n == 0 {
        return Ok(false);
    }
    for c in &pkg.container_ids {
        t.execute(
            "INSERT OR IGNORE INTO entry_package_containers(container_id, entry_scan_id) VALUES (?1, ?2)",
            params![c, pkg.entry_scan_id],
        )?;
    }
    super::audit::append(
        t,
        "system",
        "entry_package.received",
        Some(&pkg.entry_scan_id),
        serde_json::json!({"origin_site": pkg.origin_site, "declaration": pkg.declaration_number}),
    )?;
    Ok(true)
}

type Row = (String, String, String, Option<String>);

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn finish((package, received_at, image_path, evicted_at): Row) -> Result<EntryRecord> {
    Ok(EntryRecord {
        package: serde_json::from_str(&package).map_err(|source| StoreError::Json {
            what: "entry_packages.package",
            source,
        })?,
        received_at,
        image_path,
        evicted_at,
    })
}

/// The newest package for this declaration that shares a container id with the exit scan
/// and still has its image.
pub fn find_for_exit(
    c: &Connection,
    declaration_number: &str,
    container_ids: &[String],
) -> Result<Option<EntryRecord>> {
    let mut st = c.prepare(
        "SELECT e.package, e.received_at, e.image_path, e.evicted_at FROM entry_packages e
         JOIN entry_package_containers pc ON pc.entry_scan_id = e.entry_scan_id
         WHERE e.declaration_number = ?1 AND pc.container_id = ?2 AND e.evicted_at IS NULL
         ORDER BY e.scanned_at DESC LIMIT 1",
    )?;
    for cid in container_ids {
        if let Some(row) = st
            .query_row(params![declaration_number, cid], row_to_record)
            .optional()?
        {
            return Ok(Some(finish(row)?));
        }
    }
    Ok(None)
}

pub fn get(c: &Connection, entry_scan_id: &str) -> Result<Option<EntryRecord>> {
    c.query_row(
        "SELECT package, received_at, image_path, evicted_at FROM entry_packages WHERE entry_scan_id = ?1",
        [entry_scan_id],
        row_to_record,
    )
    .optional()?
    .map(finish)
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn pkg(id: &str, decl: &str, containers: &[&str]) -> EntryPackage {
        EntryPackage {
            schema: ENTRY_SCHEMA.into(),
            entry_scan_id: id.into(),
            origin_site: "KHI".into(),
            origin_node: "KHI-N1".into(),
            exit_site: "TKM".into(),
            declaration_number: decl.into(),
            container_ids: containers.iter().map(|s| s.to_string()).collect(),
            scanned_at: "2026-11-25T10:00:00.000Z".into(),
            sidecar: serde_json::json!({}),
            image_width: 100,
            image_height: 50,
            reduction: 0.5,
            pixel_mm: Some([10.0, 9.0]),
            embeddings: None,
        }
    }

    #[tokio::test]
    async fn insert_is_idempotent_and_found_by_declaration_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("e.db")).unwrap();
        let p = pkg("KHI-P1-1", "D-1", &["MSCU1234566"]);
        let p2 = p.clone();
        assert!(store
            .write(move |t| insert(t, &p2, "entries/KHI-P1-1/image.png"))
            .await
            .unwrap());
        let p3 = p.clone();
        assert!(!store
            .write(move |t| insert(t, &p3, "entries/KHI-P1-1/image.png"))
            .await
            .unwrap());
        let found = store
            .read(|c| find_for_exit(c, "D-1", &["CSQU3054383".into(), "MSCU1234566".into()]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.package, p);
        assert_eq!(found.image_path, "entries/KHI-P1-1/image.png");
        assert!(store
            .read(|c| find_for_exit(c, "D-2", &["MSCU1234566".into()]))
            .await
            .unwrap()
            .is_none());
        assert!(store.read(|c| get(c, "KHI-P1-1")).await.unwrap().is_some());
    }
}
