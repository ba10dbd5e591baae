//! The reference library: scans of known goods, labelled with their declared HS code, as
//! embeddings in SQLite (`library_refs`, one row per reference with all its tile embeddings
//! in one blob) and a thumbnail file per reference for the operator's manifest view. In
//! memory, [`LibraryIndex`] holds every tile embedding of the current model in one matrix
//! and answers exact nearest-neighbour queries (brute force: at 100k tiles this is one
//! matrix product per scan, measured by `riac-node bench match`).
//!
//! Invariants: a thumbnail is written (temp, fsync, rename) before the row that names it;
//! a row records the sha256 of the model that made its embeddings, and rows made by another
//! model are never searched (they are re-embedded by the next `library import`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::store::{Result as StoreResult, StoreError};

/// One reference as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceInfo {
    pub reference_id: String,
    pub hs_code: String,
    pub description: Option<String>,
    pub imported_at: String,
    pub source_sha256: String,
    pub model_sha256: String,
    pub tile_count: u32,
    pub fill: f64,
    pub width: u32,
    pub height: u32,
    /// Relative to the data dir.
    #[serde(skip)]
    pub thumbnail: String,
}

/// A reference as stored.
#[derive(Debug, Clone)]
pub struct NewReference {
    pub info: ReferenceInfo,
    pub dim: usize,
    pub descriptor: Vec<f32>,
    pub tiles: Vec<f32>,
}

fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const INFO_COLUMNS: &str = "reference_id, hs_code, description, imported_at, source_sha256, model_sha256, tile_count, fill, width, height, thumbnail";

fn row_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReferenceInfo> {
    Ok(ReferenceInfo {
        reference_id: r.get(0)?,
        hs_code: r.get(1)?,
        description: r.get(2)?,
        imported_at: r.get(3)?,
        source_sha256: r.get(4)?,
        model_sha256: r.get(5)?,
        tile_count: r.get(6)?,
        fill: r.get(7)?,
        width: r.get(8)?,
        height: r.get(9)?,
        thumbnail: r.get(10)?,
    })
}

pub fn get(c: &Connection, reference_id: &str) -> StoreResult<Option<ReferenceInfo>> {
    Ok(c.query_row(
        &format!("SELECT {INFO_COLUMNS} FROM library_refs WHERE reference_id = ?1"),
        [reference_id],
        row_info,
    )
    .optional()?)
}

pub fn list(c: &Connection) -> StoreResult<Vec<ReferenceInfo>> {
    let mut st = c.prepare(&format!(
        "SELECT {INFO_COLUMNS} FROM library_refs ORDER BY hs_code, reference_id"
    ))?;
    let rows = st.query_map([], row_info)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Inserts or replaces a reference (same id: a re-import with new content or a new model).
pub fn upsert(t: &Transaction<'_>, r: &NewReference) -> StoreResult<()> {
    let i = &r.info;
    t.execute(
        "INSERT INTO library_refs(reference_id, hs_code, description, imported_at, source_sha256, model_sha256,
            dim, tile_count, fill, width, height, thumbnail, descriptor, tiles)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT(reference_id) DO UPDATE SET hs_code = excluded.hs_code, description = excluded.description,
            imported_at = excluded.imported_at, source_sha256 = excluded.source_sha256,
            model_sha256 = excluded.model_sha256, dim = excluded.dim, tile_count = excluded.tile_count,
            fill = excluded.fill, width = excluded.width, height = excluded.height,
            thumbnail = excluded.thumbnail, descriptor = excluded.descriptor, tiles = excluded.tiles",
        params![
            i.reference_id,
            i.hs_code,
            i.description,
            i.imported_at,
            i.source_sha256,
            i.model_sha256,
            r.dim as i64,
            i.tile_count,
            i.fill,
            i.width,
            i.height,
            i.thumbnail,
            f32_blob(&r.descriptor),
            f32_blob(&r.tiles),
        ],
    )?;
    Ok(())
}

/// Removes a reference; returns its thumbnail path (relative) if it existed, for the caller
/// to delete once the row is gone.
pub fn remove(t: &Transaction<'_>, reference_id: &str) -> StoreResult<Option<String>> {
    let thumb: Option<String> = t
        .query_row(
            "SELECT thumbnail FROM library_refs WHERE reference_id = ?1",
            [reference_id],
            |r| r.get(0),
        )
        .optional()?;
    t.execute(
        "DELETE FROM library_refs WHERE reference_id = ?1",
        [reference_id],
    )?;
    Ok(thumb)
}

/// Cheap fingerprint of the library's content: changes whenever a row is added, replaced or
/// removed, so a running node reloads its index only then.
pub fn generation(c: &Connection) -> StoreResult<(i64, i64, String)> {
    Ok(c.query_row(
        "SELECT count(*), coalesce(max(rowid), 0), coalesce(max(imported_at), '') FROM library_refs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

/// One reference in the in-memory index.
#[derive(Debug, Clone)]
pub struct IndexedRef {
    pub reference_id: String,
    pub hs_code: String,
    /// Row range in [`LibraryIndex::tiles`].
    pub start: usize,
    pub count: usize,
}

/// Every tile embedding of the current model, contiguous, with the reference each belongs to.
#[derive(Debug, Clone, Default)]
pub struct LibraryIndex {
    pub dim: usize,
    pub refs: Vec<IndexedRef>,
    /// `tile_count * dim`, L2-normalised rows.
    pub tiles: Vec<f32>,
    /// References skipped because another model made their embeddings.
    pub stale: usize,
    pub generation: (i64, i64, String),
}

impl LibraryIndex {
    pub fn load(c: &Connection, model_sha256: &str, dim: usize) -> StoreResult<Self> {
        let generation = generation(c)?;
        let mut st = c.prepare(
            "SELECT reference_id, hs_code, model_sha256, dim, tile_count, tiles FROM library_refs ORDER BY reference_id",
        )?;
        let mut idx = LibraryIndex {
            dim,
            generation,
            ..Default::default()
        };
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let sha: String = r.get(2)?;
            let rdim: i64 = r.get(3)?;
            if !sha.eq_ignore_ascii_case(model_sha256) || rdim as usize != dim {
                idx.stale += 1;
                continue;
            }
            let count: i64 = r.get(4)?;
            let blob: Vec<u8> = r.get(5)?;
            let v = blob_f32(&blob);
            if v.len() != count as usize * dim {
                return Err(StoreError::Json {
                    what: "library_refs.tiles",
                    source: serde::de::Error::custom(format!(
                        "{} values for {count} tiles of dimension {dim}",
                        v.len()
                    )),
                });
            }
            idx.refs.push(IndexedRef {
                reference_id: r.get(0)?,
                hs_code: r.get(1)?,
                start: idx.tiles.len() / dim,
                count: count as usize,
            });
            idx.tiles.extend_from_slice(&v);
        }
        Ok(idx)
    }

    pub fn tile_count(&self) -> usize {
        self.tiles.len().checked_div(self.dim).unwrap_or(0)
    }

    /// HS headings (4 digits) present, with their number of references.
    pub fn headings(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.refs {
            *m.entry(super::check::heading(&r.hs_code)).or_insert(0) += 1;
        }
        m
    }

    /// Exact search: for each reference, the mean over query tiles of the best cosine
    /// similarity to any of its tiles (`query` is `n * dim`, L2-normalised rows). Returns
    /// one score per reference, in `refs` order.
    pub fn reference_scores(&self, query: &[f32]) -> Vec<f32> {
        let d = self.dim;
        let nq = query.len().checked_div(d).unwrap_or(0);
        if nq == 0 || self.refs.is_empty() {
            return vec![0.0; self.refs.len()];
        }
        let q = ndarray::ArrayView2::from_shape((nq, d), query).expect("query is n * dim");
        let mut scores = vec![0f32; self.refs.len()];
        // Blocks of references, so the similarity matrix stays a few MB whatever the size.
        const BLOCK_TILES: usize = 8192;
        let mut first = 0;
        while first < self.refs.len() {
            let mut last = first;
            let start = self.refs[first].start;
            while last < self.refs.len()
                && (self.refs[last].start + self.refs[last].count - start <= BLOCK_TILES
                    || last == first)
            {
                last += 1;
            }
            let end = self.refs[last - 1].start + self.refs[last - 1].count;
            let lib =
                ndarray::ArrayView2::from_shape((end - start, d), &self.tiles[start * d..end * d])
                    .expect("library block is tiles * dim");
            let sims = q.dot(&lib.t());
            for (k, r) in self.refs[first..last].iter().enumerate() {
                if r.count == 0 {
                    scores[first + k] = -1.0;
                    continue;
                }
                let a = r.start - start;
                let mut total = 0f32;
                for row in sims.rows() {
                    let best = row
                        .slice(ndarray::s![a..a + r.count])
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    total += best;
                }
                scores[first + k] = total / nq as f32;
            }
            first = last;
        }
        scores
    }
}

/// Where a reference's thumbnail lives, relative to the data dir.
pub fn thumbnail_rel(reference_id: &str) -> String {
    format!("library/{reference_id}.png")
}

/// Writes `bytes` to `data_dir/rel` durably ([`crate::fsx::write_file`]).
pub fn write_file_durably(data_dir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = data_dir.join(rel);
    let dir = path.parent().unwrap_or(data_dir);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    crate::fsx::write_file(dir, name, bytes, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn search_scores_each_reference_by_its_best_tiles() {
        let mut idx = LibraryIndex {
            dim: 2,
            ..Default::default()
        };
        // Reference a: tiles along x; b: along y; c: diagonal.
        for (id, tiles) in [
            ("a", vec![unit(&[1.0, 0.0]), unit(&[1.0, 0.1])]),
            ("b", vec![unit(&[0.0, 1.0])]),
            (
                "c",
                vec![unit(&[1.0, 1.0]), unit(&[0.1, 1.0]), unit(&[1.0, 0.0])],
            ),
        ] {
            idx.refs.push(IndexedRef {
                reference_id: id.into(),
                hs_code: "1234.00".into(),
                start: idx.tiles.len() / 2,
                count: tiles.len(),
            });
            for t in tiles {
                idx.tiles.extend(t);
            }
        }
        let q: Vec<f32> = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0])].concat();
        let s = idx.reference_scores(&q);
        assert!(
            (s[0] - (1.0 + unit(&[1.0, 0.1])[1]) / 2.0).abs() < 1e-5,
            "{s:?}"
        );
        assert!((s[1] - 0.5).abs() < 1e-5, "{s:?}");
        // c has a tile close to each query tile: the best reference.
        assert!(s[2] > s[0] && s[2] > s[1], "{s:?}");
    }
}
