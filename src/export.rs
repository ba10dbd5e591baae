//! Evidence export: packs what the node holds about a set of scans (stored image files,
//! a rendered 8-bit image, every verdict as stored with its signature and chain links, the
//! operator decisions, the audit lines, the node's public key) into one zip with a signed
//! `manifest.json`, and checks such a zip offline (`verify-export`). This is what a case
//! officer hands to a court.
//!
//! It owns the zip layout and the manifest format. It must never change what it exports:
//! it reads through the store's read API only, and its single write is the
//! `evidence.exported` audit line. It never writes a half-finished zip where the caller
//! asked for one (temp file, fsync, rename).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ingest::CANONICAL_IMAGE;
use crate::store::chain::{sha256_hex, signing_bytes, Signing, ALG_ED25519, CANON_NONE, GENESIS};
use crate::store::scans::{self, ScanFilter, ScanRecord};
use crate::store::{audit, Store, StoreError};
use crate::uplink::keys::{parse_public_key, verify_hex, KeyError, NodeKey};

/// The manifest's `format` member.
pub const FORMAT: &str = "riac-evidence-export/1";
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SIG: &str = "manifest.sig";
pub const PUBLIC_KEY_FILE: &str = "node_public_key.txt";

/// Which scans go into an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum Selection {
    Scan(String),
    Container(String),
    Declaration(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("data dir {0}: no riac-node.db there; pass the node's data dir with --data-dir")]
    NoDatabase(PathBuf),
    #[error("no stored scan matches {what} {value:?}; check the id (the UI's scan page or `GET /api/v1/scans` lists them)")]
    NothingSelected { what: &'static str, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node key: {0}")]
    Key(#[from] KeyError),
    #[error("stored file {path}: {source}; check the data dir's permissions and disk")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored verdict seq {seq} in the database has a body that is not JSON ({reason}); the database is damaged: restore it from a backup")]
    BadVerdict { seq: i64, reason: String },
    #[error("rendering the canonical image of scan {scan_id}: {reason}")]
    Render { scan_id: String, reason: String },
    #[error("writing the export {path}: {reason}; check the output directory exists, is writable and has space")]
    Write { path: PathBuf, reason: String },
    #[error("the export task failed: {0}")]
    Task(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable zip ({reason}); it is not an export or it is damaged")]
    NotZip { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanEntry {
    pub scan_id: String,
    /// Set when retention removed the scan's image files: they are not in the export.
    pub evicted: Option<Value>,
    pub verdicts: usize,
    pub decisions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub node_id: String,
    pub site_id: String,
    pub created_at: String,
    pub created_by: String,
    pub selection: Selection,
    pub public_key: String,
    pub scans: Vec<ScanEntry>,
    pub files: Vec<FileEntry>,
    /// How `manifest.sig` signs this manifest: Ed25519 over the exact bytes of
    /// `manifest.json` as stored in the zip (no canonicalisation: a verifier in any language
    /// checks the file as it is). Absent in exports made before it was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub scans: Vec<String>,
    pub evicted: Vec<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Everything read from the store for one scan.
struct ScanData {
    rec: ScanRecord,
    evicted: Option<(String, Option<String>)>,
    /// (seq, stored hash, body) oldest first.
    verdicts: Vec<(i64, String, Value)>,
    /// seq -> the store's hash of verdict seq-1 (what prev_hash must equal).
    prev_links: BTreeMap<i64, Option<String>>,
    audit: Vec<audit::AuditEntry>,
}

fn selected_ids(c: &rusqlite::Connection, sel: &Selection) -> crate::store::Result<Vec<String>> {
    Ok(match sel {
        Selection::Scan(id) => scans::get(c, id)?
            .map(|r| vec![r.scan_id])
            .unwrap_or_default(),
        Selection::Container(cid) => {
            let f = ScanFilter {
                limit: 10_000,
                container: Some(cid.clone()),
                ..Default::default()
            };
            let mut v: Vec<_> = scans::list(c, &f)?
                .into_iter()
                .filter(|r| r.container_ids.iter().any(|x| x.eq_ignore_ascii_case(cid)))
                .map(|r| r.scan_id)
                .collect();
            v.reverse();
            v
        }
        Selection::Declaration(n) => {
            let f = ScanFilter {
                limit: 10_000,
                declaration: Some(n.clone()),
                ..Default::default()
            };
            let mut v: Vec<_> = scans::list(c, &f)?.into_iter().map(|r| r.scan_id).collect();
            v.reverse();
            v
        }
    })
}

fn read_scan(c: &rusqlite::Connection, id: &str) -> Result<Option<ScanData>, ExportError> {
    use rusqlite::OptionalExtension;
    let Some(rec) = scans::get(c, id)? else {
        return Ok(None);
    };
    let evicted: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT evicted_at, evicted_reason FROM scans WHERE scan_id = ?1 AND evicted_at IS NOT NULL",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(StoreError::from)?;
    let mut st = c
        .prepare("SELECT seq, hash, body FROM verdicts WHERE scan_id = ?1 ORDER BY seq")
        .map_err(StoreError::from)?;
    let rows = st
        .query_map([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(StoreError::from)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(StoreError::from)?;
    let mut verdicts = Vec::new();
    let mut prev_links = BTreeMap::new();
    for (seq, hash, body) in rows {
        let v: Value = serde_json::from_str(&body).map_err(|e| ExportError::BadVerdict {
            seq,
            reason: e.to_string(),
        })?;
        let prev: Option<String> = c
            .query_row("SELECT hash FROM verdicts WHERE seq = ?1", [seq - 1], |r| {
                r.get(0)
            })
            .optional()
            .map_err(StoreError::from)?;
        prev_links.insert(seq, prev);
        verdicts.push((seq, hash, v));
    }
    let audit = audit::for_subject(c, id)?;
    Ok(Some(ScanData {
        rec,
        evicted,
        verdicts,
        prev_links,
        audit,
    }))
}

/// Writes through to `inner` while hashing and counting what passed.
struct Hashing<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    hash: Sha256,
    size: u64,
}

impl<W: Write + ?Sized> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A zip under construction in a temp file beside its destination. Each file is streamed
/// into it as it is added (hashed on the way), so an export of a declaration with hundreds
/// of scans needs memory for one scan's rendering, not for the whole zip.
struct Pack {
    zw: zip::ZipWriter<tempfile::NamedTempFile>,
    opts: zip::write::SimpleFileOptions,
    files: Vec<FileEntry>,
    out: PathBuf,
    dir: PathBuf,
}

impl Pack {
    fn new(out: &Path) -> Result<Pack, ExportError> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-export-")
            .tempfile_in(&dir)
            .map_err(|e| write_err(out, e))?;
        Ok(Pack {
            zw: zip::ZipWriter::new(tmp),
            opts: zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(0o644)
                .large_file(true),
            files: Vec::new(),
            out: out.to_path_buf(),
            dir,
        })
    }

    fn start(
        &mut self,
        path: &str,
    ) -> Result<Hashing<'_, zip::ZipWriter<tempfile::NamedTempFile>>, ExportError> {
        self.zw
            .start_file(path, self.opts)
            .map_err(|e| write_err(&self.out, e))?;
        Ok(Hashing {
            inner: &mut self.zw,
            hash: Sha256::new(),
            size: 0,
        })
    }

    fn add(&mut self, path: String, bytes: &[u8]) -> Result<(), ExportError> {
        let out = self.out.clone();
        let mut w = self.start(&path)?;
        w.write_all(bytes).map_err(|e| write_err(&out, e))?;
        let (sha256, size) = (hex::encode(w.hash.finalize()), w.size);
        self.files.push(FileEntry { path, sha256, size });
        Ok(())
    }

    fn add_json(&mut self, path: String, v: &impl Serialize) -> Result<(), ExportError> {
        let bytes = serde_json::to_vec_pretty(v).expect("export JSON serialises");
        self.add(path, &bytes)
    }

    /// Streams the stored file `src` into the zip as `path`.
    fn add_file(&mut self, path: String, src: &Path) -> Result<(), ExportError> {
        let rerr = |source| ExportError::ReadFile {
            path: src.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(src).map_err(rerr)?;
        let out = self.out.clone();
        let mut w = self.start(&path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(rerr(e)),
            };
            w.write_all(&buf[..n]).map_err(|e| write_err(&out, e))?;
        }
        let (sha256, size) = (hex::encode(w.hash.finalize()), w.size);
        self.files.push(FileEntry { path, sha256, size });
        Ok(())
    }

    /// Adds the signed manifest (not listed in itself), then makes the zip durable under
    /// its final name.
    fn finish(mut self, manifest: &[u8], sig: &str) -> Result<(), ExportError> {
        let out = self.out.clone();
        for (name, bytes) in [
            (MANIFEST, manifest),
            (MANIFEST_SIG, format!("{sig}\n").as_bytes()),
        ] {
            self.zw
                .start_file(name, self.opts)
                .map_err(|e| write_err(&out, e))?;
            self.zw.write_all(bytes).map_err(|e| write_err(&out, e))?;
        }
        let tmp = self.zw.finish().map_err(|e| write_err(&out, e))?;
        tmp.as_file().sync_all().map_err(|e| write_err(&out, e))?;
        tmp.persist(&out).map_err(|e| write_err(&out, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn write_err(out: &Path, e: impl std::fmt::Display) -> ExportError {
    ExportError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads the selection through `store` (blocking: call off the runtime), writes `out`
/// atomically and returns what it wrote. Does not write the audit line (see [`export`]).
#[allow(clippy::too_many_arguments)]
pub fn build_blocking(
    store: &Store,
    data_dir: &Path,
    key: &NodeKey,
    node_id: Option<&str>,
    selection: &Selection,
    actor: &str,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    let sel = selection.clone();
    let data = store.read_blocking(move |c| {
        let ids = selected_ids(c, &sel)?;
        Ok(ids
            .iter()
            .filter_map(|id| read_scan(c, id).transpose())
            .collect::<Result<Vec<_>, ExportError>>())
    })??;
    if data.is_empty() {
        let (what, value) = match selection {
            Selection::Scan(v) => ("scan id", v.clone()),
            Selection::Container(v) => ("container id", v.clone()),
            Selection::Declaration(v) => ("declaration number", v.clone()),
        };
        return Err(ExportError::NothingSelected { what, value });
    }

    let mut pack = Pack::new(out)?;
    let mut scan_entries = Vec::new();
    let mut evicted_ids = Vec::new();
    let mut site_id = String::new();
    let mut node = node_id.map(str::to_string);
    for d in &data {
        let id = &d.rec.scan_id;
        let base = format!("scans/{id}");
        site_id.clone_from(&d.rec.site_id);
        // The stored files, unless retention evicted them.
        let evicted = d.evicted.as_ref().map(|(at, reason)| {
            json!({"at": at, "reason": reason,
                   "note": "retention removed this scan's image files before the export; the rows (verdicts, audit) remain"})
        });
        if d.evicted.is_some() {
            evicted_ids.push(id.clone());
        } else {
            let dir = data_dir.join(&d.rec.image_dir);
            let rd = std::fs::read_dir(&dir).map_err(|source| ExportError::ReadFile {
                path: dir.clone(),
                source,
            })?;
            let mut names: Vec<_> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for name in names {
                let p = dir.join(&name);
                if name == CANONICAL_IMAGE {
                    let bytes = std::fs::read(&p).map_err(|source| ExportError::ReadFile {
                        path: p.clone(),
                        source,
                    })?;
                    let render = |e: &dyn std::fmt::Display| ExportError::Render {
                        scan_id: id.clone(),
                        reason: e.to_string(),
                    };
                    let img = crate::imaging::decode_png16(&bytes).map_err(|e| render(&e))?;
                    let png8 = crate::imaging::encode_png8(&crate::imaging::window_level(
                        &img,
                        crate::imaging::Window::default(),
                    ))
                    .map_err(|e| render(&e))?;
                    drop(img);
                    pack.add(format!("{base}/rendered.png"), &png8)?;
                    pack.add(format!("{base}/files/{name}"), &bytes)?;
                } else {
                    pack.add_file(format!("{base}/files/{name}"), &p)?;
                }
            }
        }
        pack.add_json(
            format!("{base}/scan.json"),
            &json!({"scan": d.rec, "evicted": evicted}),
        )?;
        let verdicts: Vec<&Value> = d.verdicts.iter().map(|(_, _, v)| v).collect();
        pack.add_json(format!("{base}/verdicts.json"), &verdicts)?;
        let decisions: Vec<&Value> = verdicts
            .iter()
            .copied()
            .filter(|v| v.get("decided_by").and_then(Value::as_str) != Some("auto"))
            .collect();
        pack.add_json(format!("{base}/decisions.json"), &decisions)?;
        pack.add_json(format!("{base}/audit.json"), &d.audit)?;
        let proof: Vec<Value> = d
            .verdicts
            .iter()
            .map(|(seq, hash, v)| {
                json!({
                    "seq": seq,
                    "verdict_id": v.get("verdict_id"),
                    "hash": hash,
                    "prev_hash": v.get("prev_hash"),
                    "prev_seq": seq - 1,
                    "prev_stored_hash": if *seq == 1 { Some(GENESIS.to_string()) } else { d.prev_links.get(seq).cloned().flatten() },
                })
            })
            .collect();
        pack.add_json(
            format!("{base}/chain_proof.json"),
            &json!({
                "explanation": "hash = sha256 of the verdict's signing bytes: the verdict without `signature`, as RFC 8785 (JCS) for riac.verdict/2 or as compact JSON with keys sorted for riac.verdict/1; prev_hash must equal the hash of verdict seq-1 in the node's chain (prev_stored_hash, read from the node's database at export)",
                "links": proof,
            }),
        )?;
        if node.is_none() {
            node = d
                .verdicts
                .first()
                .and_then(|(_, _, v)| v.get("node_id")?.as_str().map(str::to_string));
        }
        scan_entries.push(ScanEntry {
            scan_id: id.clone(),
            evicted,
            verdicts: verdicts.len(),
            decisions: decisions.len(),
        });
    }
    pack.add(
        PUBLIC_KEY_FILE.into(),
        format!("{}\n", key.public_hex()).as_bytes(),
    )?;

    let files = std::mem::take(&mut pack.files);
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    let nfiles = files.len();
    let manifest = Manifest {
        format: FORMAT.into(),
        node_id: node.unwrap_or_default(),
        site_id,
        created_at: crate::store::now_rfc3339(),
        created_by: actor.into(),
        selection: selection.clone(),
        public_key: key.public_hex(),
        scans: scan_entries,
        files,
        signing: Some(Signing {
            canonicalization: CANON_NONE.into(),
            algorithm: ALG_ED25519.into(),
        }),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let sig = key.sign_hex(&manifest_bytes);
    pack.finish(&manifest_bytes, &sig)?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        scans: data.iter().map(|d| d.rec.scan_id.clone()).collect(),
        evicted: evicted_ids,
        files: nfiles,
        bytes,
    })
}

/// What to export, from which node, for whom.
pub struct ExportJob {
    pub store: Store,
    pub data_dir: PathBuf,
    pub key: std::sync::Arc<NodeKey>,
    pub node_id: Option<String>,
    pub selection: Selection,
    /// Who asked: recorded in the manifest and the audit line.
    pub actor: String,
}

impl ExportJob {
    /// Builds the zip at `out` off the runtime; `then` runs on the same blocking thread
    /// right after (the download opens and unlinks the file there).
    async fn build<T: Send + 'static>(
        &self,
        out: PathBuf,
        then: impl FnOnce(&Path) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<(ExportSummary, T), ExportError> {
        let (s, dd, k, node, sel, a) = (
            self.store.clone(),
            self.data_dir.clone(),
            self.key.clone(),
            self.node_id.clone(),
            self.selection.clone(),
            self.actor.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let summary = build_blocking(&s, &dd, &k, node.as_deref(), &sel, &a, &out)?;
            Ok((summary, then(&out)?))
        })
        .await
        .map_err(|e| ExportError::Task(e.to_string()))?
    }

    /// One `evidence.exported` audit line per scan exported, naming where it went.
    async fn audit(self, summary: &ExportSummary, destination: String) -> Result<(), ExportError> {
        let ids = summary.scans.clone();
        let detail = json!({"selection": self.selection, "file": destination, "files": summary.files, "bytes": summary.bytes});
        let actor = self.actor;
        self.store
            .write(move |t| {
                for id in &ids {
                    audit::append(t, &actor, "evidence.exported", Some(id), detail.clone())?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// Exports the selection to `out` off the runtime, then writes the audit lines.
pub async fn export(job: ExportJob, out: &Path) -> Result<ExportSummary, ExportError> {
    let (summary, ()) = job.build(out.to_path_buf(), |_| Ok(())).await?;
    job.audit(&summary, out.display().to_string()).await?;
    Ok(summary)
}

/// Where the web UI builds exports before handing them to the browser; emptied at start
/// ([`sweep_staging`]), since only a crash leaves anything there.
pub const STAGING_DIR: &str = "exports";

/// Builds an export for a download: the zip is made in `<data_dir>/exports/`, opened and
/// unlinked at once (nothing is left behind, even if the caller goes away), and the audit
/// line records `destination` (for example "download over HTTP"). The returned file is
/// positioned at its start.
pub async fn export_for_download(
    job: ExportJob,
    destination: String,
) -> Result<(ExportSummary, std::fs::File), ExportError> {
    let dir = job.data_dir.join(STAGING_DIR);
    let out = dir.join(format!("{}.zip", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| write_err(&out, e))?;
    let (summary, file) = job
        .build(out, |out| {
            let f = std::fs::File::open(out).map_err(|e| write_err(out, e));
            let _ = std::fs::remove_file(out);
            f
        })
        .await?;
    job.audit(&summary, destination).await?;
    Ok((summary, file))
}

/// Removes what an interrupted download export left in `<data_dir>/exports/`.
pub fn sweep_staging(data_dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(data_dir.join(STAGING_DIR)) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// `riac-node export`: opens the data dir's database, exports, closes.
pub async fn export_cli(
    data_dir: &Path,
    key_file: &Path,
    selection: Selection,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    let db = crate::config::db_in(data_dir);
    if !db.is_file() {
        return Err(ExportError::NoDatabase(data_dir.to_path_buf()));
    }
    let kf = key_file.to_path_buf();
    let key = tokio::task::spawn_blocking(move || NodeKey::load(&kf))
        .await
        .map_err(|e| ExportError::Task(e.to_string()))??;
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|e| ExportError::Task(e.to_string()))??;
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    );
    let job = ExportJob {
        store: store.clone(),
        data_dir: data_dir.to_path_buf(),
        key: std::sync::Arc::new(key),
        node_id: None,
        selection,
        actor,
    };
    let r = export(job, out).await;
    store.close().await;
    r
}

/// The result of checking an export.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Where the public key came from: `--pubkey` or the key inside the zip.
    pub key_source: String,
    pub files_checked: usize,
    pub verdicts_checked: usize,
    pub links_checked: usize,
    /// One line per problem, each naming the file or verdict.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    pub fn render(&self) -> String {
        let mut s = format!(
            "key: {}\n{} file(s), {} verdict signature(s), {} chain link(s) checked\n",
            self.key_source, self.files_checked, self.verdicts_checked, self.links_checked
        );
        if self.ok() {
            s.push_str("OK: manifest signature valid, every file present and intact, every verdict signature and link valid\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("FAIL: {p}\n"));
            }
        }
        s
    }
}

/// Checks `zip_path` offline: the manifest signature (against `pubkey` if given, else the
/// key in the zip), every file's sha256 and size, missing and extra files, every verdict's
/// signature and the prev_hash links between consecutive seqs.
pub fn verify(zip_path: &Path, pubkey: Option<VerifyingKey>) -> Result<VerifyReport, VerifyError> {
    let f = std::fs::File::open(zip_path).map_err(|source| VerifyError::Open {
        path: zip_path.to_path_buf(),
        source,
    })?;
    let nz = |e: &dyn std::fmt::Display| VerifyError::NotZip {
        path: zip_path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut za = zip::ZipArchive::new(f).map_err(|e| nz(&e))?;
    let mut problems = Vec::new();
    // Every entry is hashed as it is read; only the small JSON/text members the checks
    // parse are kept, so a large export is verified in bounded memory.
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut digests: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for i in 0..za.len() {
        let mut zf = match za.by_index(i) {
            Ok(z) => z,
            Err(e) => {
                problems.push(format!("zip entry #{i}: unreadable ({e})"));
                continue;
            }
        };
        let name = zf.name().to_string();
        let keep = name == MANIFEST
            || name == MANIFEST_SIG
            || name == PUBLIC_KEY_FILE
            || name.ends_with("/verdicts.json")
            || name.ends_with("/chain_proof.json");
        let (mut kept, mut sink) = (Vec::new(), std::io::sink());
        let mut w = Hashing {
            inner: if keep {
                &mut kept as &mut dyn Write
            } else {
                &mut sink
            },
            hash: Sha256::new(),
            size: 0,
        };
        // Writing to memory or the sink cannot fail: an error is the entry's.
        let read = std::io::copy(&mut zf, &mut w);
        let (hash, size) = (w.hash, w.size);
        if let Err(e) = read {
            // A flipped byte in a compressed entry fails its CRC here.
            problems.push(format!("{name}: unreadable in the zip ({e})"));
            digests.insert(name.clone(), (String::new(), 0));
            entries.insert(name, Vec::new());
            continue;
        }
        digests.insert(name.clone(), (hex::encode(hash.finalize()), size));
        if keep {
            entries.insert(name, kept);
        }
    }
    let Some(mbytes) = entries.get(MANIFEST).cloned() else {
        problems.push(format!("{MANIFEST}: missing"));
        return Ok(VerifyReport {
            key_source: "none".into(),
            files_checked: 0,
            verdicts_checked: 0,
            links_checked: 0,
            problems,
        });
    };
    let manifest: Option<Manifest> = match serde_json::from_slice(&mbytes) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(format!("{MANIFEST}: not a valid manifest ({e})"));
            None
        }
    };
    let (key, key_source) = match pubkey {
        Some(k) => (Some(k), "--pubkey (given on the command line)".to_string()),
        None => {
            let text = entries
                .get(PUBLIC_KEY_FILE)
                .map(|b| String::from_utf8_lossy(b).trim().to_string());
            match text.map(|t| parse_public_key(PUBLIC_KEY_FILE, &t)) {
                Some(Ok(k)) => (
                    Some(k),
                    format!("{PUBLIC_KEY_FILE} inside the zip (not independently trusted: pass --pubkey with the node's registered key to prove origin)"),
                ),
                Some(Err(e)) => {
                    problems.push(format!("{PUBLIC_KEY_FILE}: {e}"));
                    (None, "none".into())
                }
                None => {
                    problems.push(format!("{PUBLIC_KEY_FILE}: missing"));
                    (None, "none".into())
                }
            }
        }
    };
    match (entries.get(MANIFEST_SIG), &key) {
        (None, _) => problems.push(format!("{MANIFEST_SIG}: missing")),
        (Some(sig), Some(k)) => {
            let sig = String::from_utf8_lossy(sig).trim().to_string();
            if let Err(e) = verify_hex(k, &mbytes, &sig) {
                problems.push(format!("{MANIFEST}: manifest signature invalid ({e})"));
            }
        }
        (Some(_), None) => problems.push(format!("{MANIFEST}: signature not checked: no key")),
    }
    let Some(manifest) = manifest else {
        return Ok(VerifyReport {
            key_source,
            files_checked: 0,
            verdicts_checked: 0,
            links_checked: 0,
            problems,
        });
    };
    let mut listed = BTreeSet::new();
    for fe in &manifest.files {
        listed.insert(fe.path.clone());
        match digests.get(&fe.path) {
            None => problems.push(format!("{}: missing from the zip", fe.path)),
            Some((h, size)) => {
                if *size != fe.size {
                    problems.push(format!(
                        "{}: size {size} but the manifest says {}",
                        fe.path, fe.size
                    ));
                }
                if *h != fe.sha256 {
                    problems.push(format!(
                        "{}: sha256 {h} but the manifest says {}",
                        fe.path, fe.sha256
                    ));
                }
            }
        }
    }
    for name in digests.keys() {
        if name != MANIFEST && name != MANIFEST_SIG && !listed.contains(name) {
            problems.push(format!("{name}: in the zip but not in the manifest"));
        }
    }

    // Verdicts: signatures over the signing bytes of each verdict as stored (its version's
    // canonical form, minus `signature`), then links.
    let mut by_seq: BTreeMap<u64, (String, String, String)> = BTreeMap::new(); // seq -> (hash, prev_hash, where)
    let mut verdicts_checked = 0;
    for (name, bytes) in &entries {
        if !name.ends_with("/verdicts.json") {
            continue;
        }
        let list: Vec<Value> = match serde_json::from_slice(bytes) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("{name}: not a JSON list of verdicts ({e})"));
                continue;
            }
        };
        for v in list {
            verdicts_checked += 1;
            let seq = v.get("seq").and_then(Value::as_u64);
            let vid = v
                .get("verdict_id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            let label = format!(
                "verdict seq {} ({vid}) in {name}",
                seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
            );
            let sig = v
                .get("signature")
                .and_then(Value::as_str)
                .map(str::to_string);
            let signed = match v
                .as_object()
                .ok_or_else(|| "not a JSON object".to_string())
                .and_then(|o| {
                    let canon = crate::scan::verdict::canonicalization(o)?;
                    signing_bytes(o, canon).map_err(|e| e.to_string())
                }) {
                Ok(b) => b,
                Err(why) => {
                    problems.push(format!("{label}: {why}"));
                    continue;
                }
            };
            match (sig, &key) {
                (None, _) => problems.push(format!("{label}: unsigned")),
                (Some(s), Some(k)) => {
                    if let Err(e) = verify_hex(k, &signed, &s) {
                        problems.push(format!(
                            "{label}: {e} (the verdict was altered or not signed by this key)"
                        ));
                    }
                }
                (Some(_), None) => {}
            }
            let prev = v
                .get("prev_hash")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match seq {
                Some(s) => {
                    by_seq.insert(s, (sha256_hex(&signed), prev, label));
                }
                None => problems.push(format!("{label}: no seq")),
            }
        }
    }
    let mut links_checked = 0;
    // The chain proof: each verdict's prev_hash as the node's database linked it at export.
    for (name, bytes) in &entries {
        if !name.ends_with("/chain_proof.json") {
            continue;
        }
        let links = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("links").and_then(Value::as_array).cloned());
        let Some(links) = links else {
            problems.push(format!("{name}: not a chain proof (no `links` list)"));
            continue;
        };
        for l in links {
            let seq = l.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let stored = l.get("prev_stored_hash").and_then(Value::as_str);
            match by_seq.get(&seq) {
                None => problems.push(format!(
                    "{name}: link for verdict seq {seq}, which is not in the zip"
                )),
                Some((hash, prev, label)) => {
                    links_checked += 1;
                    if l.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
                        problems.push(format!("{label}: its hash differs from {name}"));
                    }
                    if stored != Some(prev.as_str()) {
                        problems.push(format!(
                            "{label}: prev_hash does not match the hash of verdict seq {} recorded in {name}",
                            seq.saturating_sub(1)
                        ));
                    }
                }
            }
        }
    }
    for (seq, (_, prev, label)) in &by_seq {
        if *seq == 1 {
            links_checked += 1;
            if prev != GENESIS {
                problems.push(format!("{label}: seq 1 must link to the genesis hash"));
            }
        } else if let Some((ph, _, _)) = by_seq.get(&(seq - 1)) {
            links_checked += 1;
            if ph != prev {
                problems.push(format!(
                    "{label}: prev_hash {prev} does not match the hash of verdict seq {} ({ph})",
                    seq - 1
                ));
            }
        }
    }
    Ok(VerifyReport {
        key_source,
        files_checked: manifest.files.len(),
        verdicts_checked,
        links_checked,
        problems,
    })
}
