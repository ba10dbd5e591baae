//! Scan capture: turns a drop (sidecar JSON + image bytes, from the hot folder or an HTTP
//! upload) into a stored scan, or into a rejection that names the field at fault.
//!
//! Order of a successful ingest, each step durable before the next:
//! 1. validate the sidecar, decode the image within the configured limits (off the runtime);
//! 2. write the scan's files into a temp directory, fsync them, rename it to
//!    `scans/YYYY/MM/DD/<scan_id>/`, fsync the parent;
//! 3. commit the scan row (with its audit entry);
//! 4. hand the scan id to the pipeline (bounded queue: a burst slows intake, not memory).
//!
//! A crash between 2 and 3 leaves a directory with no row: the drop is still in the hot
//! folder and its next ingest replaces the directory. A crash after 3 leaves the drop in
//! the folder too: it is then recognised by its content hash and removed. This module never
//! decides verdicts and never deletes anything from the hot folder itself (the caller does,
//! after the outcome is known).

pub mod decode;
pub mod hotfolder;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};

use crate::config::Config;
use crate::imaging;
use crate::metrics::Metrics;
use crate::scan::{PixelMeaning, ScanMeta, SidecarError};
use crate::store::scans::{NewScan, RejectRecord};
use crate::store::{self, Store, StoreError};
use decode::{DecodeLimits, SourceFormat};

/// The largest sidecar accepted: a sidecar is a few kB, anything near this is not one.
pub const MAX_SIDECAR_BYTES: u64 = 256 * 1024;

/// Where a drop came from: recorded with the scan and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    HotFolder,
    Http,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::HotFolder => "hot_folder",
            Source::Http => "http",
        }
    }
}

/// A drop refused for a reason in the drop itself: never retried, reported to its sender.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Rejection {
    pub scan_id: Option<String>,
    /// The sidecar field (JSON path) or part (`image`, `image.low`) at fault.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(scan_id: Option<&str>, field: &str, message: impl Into<String>) -> Self {
        Rejection {
            scan_id: scan_id.map(str::to_string),
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn from_sidecar(e: SidecarError, scan_id: Option<&str>) -> Self {
        let field = e.field_name().unwrap_or("sidecar").to_string();
        let message = match e {
            SidecarError::Json(m) => format!("not valid JSON: {m}"),
            SidecarError::Field { message, .. } => message,
        };
        Rejection {
            scan_id: scan_id.map(str::to_string),
            field,
            message,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The drop is bad: move it aside / answer 4xx. Retrying cannot help.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The scan id is already stored with other content: a scanner reused an id.
    #[error("scan {scan_id} is already stored with different content (stored sha256 {stored}, this drop {new}); give the new scan its own scan_id")]
    Conflict {
        scan_id: String,
        stored: String,
        new: String,
    },
    /// Another ingest of the same scan id is running: try again shortly.
    #[error("scan {0} is being ingested right now")]
    InFlight(String),
    /// The node could not store it (disk full, I/O error): keep the drop and retry later.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Free space is below `retention.min_free_gb`: keep the drop and retry later (HTTP 507).
    #[error(transparent)]
    DiskFull(#[from] crate::retention::DiskFull),
    /// The node is stopping; the drop stays where it is.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// Whether the drop itself is at fault (as opposed to the node).
    pub fn is_drop_fault(&self) -> bool {
        matches!(
            self,
            IngestError::Rejected(_) | IngestError::Conflict { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored {
        scan_id: String,
    },
    /// The same content was already stored (a re-delivery or a restart after a crash).
    Duplicate {
        scan_id: String,
    },
}

/// The bytes of one drop.
pub struct DropData {
    pub sidecar: Vec<u8>,
    pub image: Vec<u8>,
    /// The low-energy image of a dual-energy scanner, if the drop has one.
    pub low: Option<Vec<u8>>,
}

/// Cheap to clone; shared by the hot folder, the HTTP API and `bench`.
#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    limits: DecodeLimits,
    validation: crate::scan::ValidationLimits,
    store: Store,
    metrics: Metrics,
    pipeline: mpsc::Sender<String>,
    /// Bounds the decodes running at once (each holds a full image in memory).
    cpu: Arc<Semaphore>,
    /// Drop files read into memory and not yet stored, in MiB ([`Ingestor::reserve_read`]).
    read_budget: Arc<Semaphore>,
    read_budget_mib: u32,
    in_flight: Mutex<HashSet<String>>,
    /// Refuses new scans while free space is below the floor (see `retention`).
    disk: crate::retention::DiskGuard,
}

/// Removes the scan id from the in-flight set however the ingest ends.
struct InFlightGuard<'a>(&'a Inner, String);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .expect("in_flight lock")
            .remove(&self.1);
    }
}

impl Ingestor {
    pub fn new(
        cfg: &Config,
        store: Store,
        metrics: Metrics,
        pipeline: mpsc::Sender<String>,
    ) -> Self {
        Ingestor {
            inner: Arc::new(Inner {
                data_dir: cfg.data_dir.clone(),
                limits: cfg.ingest.limits,
                validation: cfg.ingest.validation,
                store,
                metrics,
                pipeline,
                cpu: Arc::new(Semaphore::new(cfg.ingest.workers)),
                read_budget: Arc::new(Semaphore::new(cfg.ingest.read_budget_mib as usize)),
                read_budget_mib: cfg.ingest.read_budget_mib,
                in_flight: Mutex::new(HashSet::new()),
                disk: crate::retention::DiskGuard::new(&cfg.data_dir, cfg.retention.min_free_bytes),
            }),
        }
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.inner.limits
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Reserves room for reading a drop whose files hold `bytes` into memory
    /// (`ingest.read_budget_mb`); waits while the budget is taken by drops read and not
    /// yet stored. A drop larger than the whole budget takes all of it, so it waits until
    /// it is alone rather than never. Counts by bytes, not by drops: one 200 MB scan and
    /// forty 5 MB ones weigh what they weigh.
    pub async fn reserve_read(
        &self,
        bytes: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, IngestError> {
        let mib = bytes
            .div_ceil(1 << 20)
            .clamp(1, u64::from(self.inner.read_budget_mib)) as u32;
        self.inner
            .read_budget
            .clone()
            .acquire_many_owned(mib)
            .await
            .map_err(|_| IngestError::ShuttingDown)
    }

    /// The free-space gate this ingestor checks before storing a scan.
    pub fn disk_guard(&self) -> &crate::retention::DiskGuard {
        &self.inner.disk
    }

    /// Parses and validates a sidecar against the node's clock.
    pub fn parse_sidecar(&self, bytes: &[u8]) -> Result<ScanMeta, Rejection> {
        if bytes.len() as u64 > MAX_SIDECAR_BYTES {
            return Err(Rejection::new(
                None,
                "sidecar",
                format!(
                    "is {} bytes; a sidecar may be at most {MAX_SIDECAR_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let scan_id = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| {
                v.get("scan_id")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .filter(|s| crate::scan::is_valid_scan_id(s));
        ScanMeta::from_json(
            bytes,
            &self.inner.validation,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| Rejection::from_sidecar(e, scan_id.as_deref()))
    }

    /// Stores one drop whose sidecar was parsed by [`Ingestor::parse_sidecar`].
    pub async fn ingest(
        &self,
        meta: ScanMeta,
        data: DropData,
        source: Source,
    ) -> Result<IngestOutcome, IngestError> {
        let started = Instant::now();
        let scan_id = meta.scan_id.clone();
        let r = self.ingest_inner(meta, data, source).await;
        let m = &self.inner.metrics;
        match &r {
            Ok(IngestOutcome::Stored { .. }) => {
                m.ingested(source);
                m.observe_stage("ingest", started.elapsed());
                tracing::info!(
                    scan_id,
                    source = source.as_str(),
                    ms = started.elapsed().as_millis() as u64,
                    "scan stored"
                );
            }
            Ok(IngestOutcome::Duplicate { .. }) => {
                m.duplicate(source);
                tracing::info!(
                    scan_id,
                    source = source.as_str(),
                    "drop already stored with the same content; not stored again"
                );
            }
            Err(e) if e.is_drop_fault() => {}
            Err(IngestError::InFlight(_)) | Err(IngestError::ShuttingDown) => {}
            Err(e @ IngestError::DiskFull(_)) => {
                tracing::warn!(scan_id, source = source.as_str(), error = %e, "scan not stored: disk full; the drop is kept for a retry")
            }
            Err(e) => {
                tracing::error!(scan_id, source = source.as_str(), error = %e, "cannot store scan; the drop is kept for a retry")
            }
        }
        if let Err(e) = &r {
            if e.is_drop_fault() {
                let rej = match e {
                    IngestError::Rejected(rej) => rej.clone(),
                    other => Rejection::new(Some(&scan_id), "scan_id", other.to_string()),
                };
                self.record_rejection(&rej, source).await;
            }
        }
        r
    }

    /// Logs, counts and stores a rejection (for the status page and the audit chain).
    pub async fn record_rejection(&self, rej: &Rejection, source: Source) {
        self.inner.metrics.rejected(source);
        tracing::warn!(scan_id = rej.scan_id.as_deref().unwrap_or("-"), source = source.as_str(), field = ?rej.field, reason = ?rej.message, "drop rejected");
        let rec = RejectRecord {
            at: store::now_rfc3339(),
            scan_id: rej.scan_id.clone(),
            source: source.as_str().to_string(),
            field: Some(rej.field.clone()),
            reason: rej.message.clone(),
        };
        if let Err(e) = self
            .inner
            .store
            .write(move |t| store::scans::insert_reject(t, &rec))
            .await
        {
            tracing::error!(error = %e, "cannot record the rejection in the database");
        }
    }

    async fn ingest_inner(
        &self,
        meta: ScanMeta,
        data: DropData,
        source: Source,
    ) -> Result<IngestOutcome, IngestError> {
        let inner = &self.inner;
        let scan_id = meta.scan_id.clone();
        if !inner
            .in_flight
            .lock()
            .expect("in_flight lock")
            .insert(scan_id.clone())
        {
            return Err(IngestError::InFlight(scan_id));
        }
        let _guard = InFlightGuard(inner, scan_id.clone());

        let sha = content_hash(&meta.raw, &data);
        if let Some(outcome) = self.check_duplicate(&scan_id, &sha).await? {
            return Ok(outcome);
        }
        if let Err(full) = inner.disk.admit().await {
            inner.metrics.set_disk_full(true);
            return Err(full.into());
        }

        let permit = inner
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        let data_dir = inner.data_dir.clone();
        let limits = inner.limits;
        let metrics = inner.metrics.clone();
        let meta2 = meta.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            prepare(&meta2, &data, &limits, &data_dir, &metrics)
        })
        .await
        .map_err(|_| IngestError::ShuttingDown)??;

        let new = NewScan {
            scan_id: scan_id.clone(),
            scanned_at: store::format_ts(meta.scanned_at),
            scanner_id: meta.scanner_id.clone(),
            site_id: meta.site_id.clone(),
            direction: meta.direction.as_str().to_string(),
            regime: meta.declaration.regime.as_str().to_string(),
            declaration_number: meta.declaration.number.clone(),
            container_ids: meta.container_ids.iter().map(|c| c.to_string()).collect(),
            vehicle_plate: meta.vehicle_plate.clone(),
            sidecar: meta.raw.clone(),
            source: source.as_str(),
            content_sha256: sha.clone(),
            image_dir: prepared.rel_dir,
            original_file: meta.image.file.clone(),
            has_low_energy: prepared.has_low,
            width: prepared.width,
            height: prepared.height,
            source_format: prepared.format.as_str().to_string(),
            source_bits: prepared.source_bits,
            pixel_meaning: meta.image.pixel_meaning.as_str().to_string(),
        };
        let t0 = Instant::now();
        let inserted = inner
            .store
            .write(move |t| store::scans::insert(t, &new))
            .await;
        inner.metrics.observe_stage("store", t0.elapsed());
        if let Err(e) = inserted {
            // A concurrent path may have stored it between our check and now.
            if let Some(outcome) = self.check_duplicate(&scan_id, &sha).await? {
                return Ok(outcome);
            }
            return Err(e.into());
        }
        inner
            .pipeline
            .send(scan_id.clone())
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        Ok(IngestOutcome::Stored { scan_id })
    }

    async fn check_duplicate(
        &self,
        scan_id: &str,
        sha: &str,
    ) -> Result<Option<IngestOutcome>, IngestError> {
        let id = scan_id.to_string();
        let stored = self
            .inner
            .store
            .read(move |c| store::scans::content_hash(c, &id))
            .await?;
        match stored {
            None => Ok(None),
            Some(s) if s == sha => Ok(Some(IngestOutcome::Duplicate {
                scan_id: scan_id.to_string(),
            })),
            Some(s) => Err(IngestError::Conflict {
                scan_id: scan_id.to_string(),
                stored: s,
                new: sha.to_string(),
            }),
        }
    }
}

/// Identity of a drop's content: the sidecar's canonical JSON (so re-formatting it, as an
/// upload client may, is not a change) and the image bytes.
fn content_hash(sidecar: &serde_json::Value, d: &DropData) -> String {
    let canonical = crate::store::chain::canonical_json(sidecar).into_bytes();
    let mut h = Sha256::new();
    // Lengths first, so that moving bytes between parts changes the hash.
    for part in [Some(&canonical), Some(&d.image), d.low.as_ref()] {
        let len = part.map_or(u64::MAX, |p| p.len() as u64);
        h.update(len.to_le_bytes());
        if let Some(p) = part {
            h.update(p);
        }
    }
    hex::encode(h.finalize())
}

struct Prepared {
    rel_dir: String,
    width: u32,
    height: u32,
    format: SourceFormat,
    source_bits: u8,
    has_low: bool,
}

fn reject_image(meta: &ScanMeta, field: &str, e: impl std::fmt::Display) -> IngestError {
    IngestError::Rejected(Rejection::new(Some(&meta.scan_id), field, e.to_string()))
}

/// Decodes, converts to the canonical image and writes the scan directory durably.
/// Blocking and CPU-heavy.
fn prepare(
    meta: &ScanMeta,
    data: &DropData,
    limits: &DecodeLimits,
    data_dir: &Path,
    metrics: &Metrics,
) -> Result<Prepared, IngestError> {
    let format = decode::format_from_extension(&meta.image.file).ok_or_else(|| {
        reject_image(
            meta,
            "image.file",
            format!(
                "{:?} has no supported extension (.tiff .tif .png .pgm .dcm .dicos)",
                meta.image.file
            ),
        )
    })?;
    let t0 = Instant::now();
    let decoded =
        decode::decode(&data.image, format, limits).map_err(|e| reject_image(meta, "image", e))?;
    if let Some(low) = &data.low {
        let d =
            decode::decode(low, format, limits).map_err(|e| reject_image(meta, "image.low", e))?;
        if (d.width, d.height) != (decoded.width, decoded.height) {
            return Err(reject_image(
                meta,
                "image.low",
                format!(
                    "is {}x{} but the high-energy image is {}x{}",
                    d.width, d.height, decoded.width, decoded.height
                ),
            ));
        }
    }
    metrics.observe_stage("decode", t0.elapsed());

    let (width, height, source_bits) = (decoded.width, decoded.height, decoded.source_bits);
    // A 16-bit grayscale transmission PNG already is the canonical image (the same pixels
    // decode from it): stored as sent rather than encoded again, which was the largest
    // share of a PNG drop's ingest time after the decode.
    let as_sent = format == decode::SourceFormat::Png
        && meta.image.pixel_meaning == PixelMeaning::Transmission
        && is_png_gray16(&data.image);
    let png: std::borrow::Cow<[u8]> = if as_sent {
        std::borrow::Cow::Borrowed(&data.image)
    } else {
        let mut pixels = decoded.pixels;
        // Canonical polarity is transmission (air bright): attenuation images are flipped
        // here once, so nothing downstream needs to know which kind the scanner sent.
        if meta.image.pixel_meaning == PixelMeaning::Attenuation {
            for p in &mut pixels {
                *p = u16::MAX - *p;
            }
        }
        let img =
            imaging::gray16(width, height, pixels).map_err(|e| reject_image(meta, "image", e))?;
        std::borrow::Cow::Owned(
            imaging::encode_png16(&img).map_err(|e| reject_image(meta, "image", e))?,
        )
    };

    let day = meta.scanned_at.to_offset(time::UtcOffset::UTC);
    let rel_dir = format!(
        "scans/{:04}/{:02}/{:02}/{}",
        day.year(),
        u8::from(day.month()),
        day.day(),
        meta.scan_id
    );
    let mut files: Vec<(String, &[u8])> = vec![
        (meta.image.file.clone(), &data.image),
        ("sidecar.json".to_string(), &data.sidecar),
        (CANONICAL_IMAGE.to_string(), &*png),
    ];
    if let (Some(low), Some(name)) = (&data.low, meta.low_energy_file()) {
        files.push((name, low));
    }
    write_dir_atomically(&data_dir.join(&rel_dir), &files)?;
    Ok(Prepared {
        rel_dir,
        width,
        height,
        format,
        source_bits,
        has_low: data.low.is_some(),
    })
}

/// The canonical 16-bit transmission PNG inside each scan directory.
pub const CANONICAL_IMAGE: &str = "image.png";

/// Whether `bytes` is a PNG of 16-bit grayscale without alpha (IHDR bit depth 16, colour
/// type 0): the canonical image's own form.
fn is_png_gray16(bytes: &[u8]) -> bool {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    bytes.len() > 26
        && bytes.starts_with(SIGNATURE)
        && &bytes[12..16] == b"IHDR"
        && bytes[24] == 16
        && bytes[25] == 0
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

use crate::fsx::sync_dir;

/// Writes `files` into `final_dir` so that after a crash it either does not exist or holds
/// every file completely: temp directory, fsync each file and the directory, rename, fsync
/// the parent. An existing `final_dir` (left by a crash before its row committed) is replaced.
pub fn write_dir_atomically(
    final_dir: &Path,
    files: &[(String, &[u8])],
) -> Result<(), IngestError> {
    let parent = final_dir.parent().expect("scan dirs have a parent");
    let name = final_dir
        .file_name()
        .expect("scan dirs have a name")
        .to_string_lossy();
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        for (file, bytes) in files {
            let p = tmp.join(file);
            let mut f = fs::File::create(&p).map_err(io_err(&p))?;
            f.write_all(bytes).map_err(io_err(&p))?;
            f.sync_all().map_err(io_err(&p))?;
        }
        sync_dir(&tmp).map_err(io_err(&tmp))?;
        if final_dir.exists() {
            fs::remove_dir_all(final_dir).map_err(io_err(final_dir))?;
        }
        fs::rename(&tmp, final_dir).map_err(io_err(final_dir))?;
        sync_dir(parent).map_err(io_err(parent))?;
        // The day directories may be new too.
        let mut p = parent;
        for _ in 0..3 {
            match p.parent() {
                Some(pp) => {
                    sync_dir(pp).map_err(io_err(pp))?;
                    p = pp;
                }
                None => break,
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Where HTTP uploads are streamed while they arrive (`<data_dir>/uploads/<id>/`).
pub const UPLOADS_DIR: &str = "uploads";

/// Removes temp directories left by a crash in the middle of [`write_dir_atomically`], and
/// uploads that were arriving when the node stopped.
pub fn sweep_temp_dirs(data_dir: &Path) -> usize {
    fn walk(dir: &Path, depth: usize, removed: &mut usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                if fs::remove_dir_all(&p).is_ok() {
                    *removed += 1;
                }
            } else if depth < 3 {
                walk(&p, depth + 1, removed);
            }
        }
    }
    let mut removed = 0;
    walk(&data_dir.join("scans"), 0, &mut removed);
    if let Ok(entries) = fs::read_dir(data_dir.join(UPLOADS_DIR)) {
        for e in entries.flatten() {
            if fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_16_bit_grayscale_png_is_the_canonical_form() {
        let g16 = crate::imaging::gray16(3, 2, vec![1, 2, 3, 4, 5, 65535]).unwrap();
        assert!(is_png_gray16(&crate::imaging::encode_png16(&g16).unwrap()));
        let g8 = image::GrayImage::from_raw(3, 2, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert!(!is_png_gray16(&crate::imaging::encode_png8(&g8).unwrap()));
        let mut rgb16 = Vec::new();
        image::DynamicImage::ImageRgb16(
            image::ImageBuffer::from_raw(1, 1, vec![1u16, 2, 3]).unwrap(),
        )
        .write_to(
            &mut std::io::Cursor::new(&mut rgb16),
            image::ImageFormat::Png,
        )
        .unwrap();
        assert!(!is_png_gray16(&rgb16));
        assert!(!is_png_gray16(b"II*\0 not a png at all, but long enough"));
        assert!(!is_png_gray16(b""));
    }

    #[tokio::test]
    async fn the_read_budget_counts_bytes_and_lets_a_drop_bigger_than_it_through_alone() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::defaults(&crate::config::Overrides {
            data_dir: Some(d.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        cfg.ingest.read_budget_mib = 8;
        let store = Store::open(&cfg.db_path()).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let ing = Ingestor::new(&cfg, store, Metrics::new(), tx);
        let quick = std::time::Duration::from_millis(100);
        // Three drops of 3 MiB take 9 > 8: the third waits until one is stored.
        let a = ing.reserve_read(3 << 20).await.unwrap();
        let b = ing.reserve_read(3 << 20).await.unwrap();
        assert!(tokio::time::timeout(quick, ing.reserve_read(3 << 20))
            .await
            .is_err());
        drop(a);
        let c = tokio::time::timeout(quick, ing.reserve_read(3 << 20))
            .await
            .expect("room after one was stored")
            .unwrap();
        // A 100 MiB drop takes the whole budget: it waits for the others, then goes alone.
        let big = ing.reserve_read(100 << 20);
        tokio::pin!(big);
        assert!(tokio::time::timeout(quick, &mut big).await.is_err());
        drop((b, c));
        let big = tokio::time::timeout(quick, big)
            .await
            .expect("alone, it goes")
            .unwrap();
        assert!(tokio::time::timeout(quick, ing.reserve_read(1))
            .await
            .is_err());
        drop(big);
        let _all_free = ing.reserve_read(8 << 20).await.unwrap();
    }

    #[test]
    fn atomic_dir_replaces_leftovers_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("scans/2026/11/28/S1");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("stale"), b"x").unwrap();
        write_dir_atomically(&target, &[("a.bin".to_string(), b"abc".as_slice())]).unwrap();
        assert_eq!(fs::read(target.join("a.bin")).unwrap(), b"abc");
        assert!(!target.join("stale").exists());
        fs::create_dir(d.path().join("scans/2026/11/28/.tmp-S2-x")).unwrap();
        assert_eq!(sweep_temp_dirs(d.path()), 1);
        let names: Vec<_> = fs::read_dir(d.path().join("scans/2026/11/28"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("S1")]);
    }

    #[test]
    fn content_hash_separates_parts() {
        let v = serde_json::json!({"a": 1, "b": [2]});
        let reformatted: serde_json::Value =
            serde_json::from_str("{ \"b\": [2],\n  \"a\": 1 }").unwrap();
        let a = DropData {
            sidecar: vec![],
            image: b"c".to_vec(),
            low: None,
        };
        let b = DropData {
            sidecar: vec![],
            image: b"cd".to_vec(),
            low: None,
        };
        let c = DropData {
            sidecar: vec![],
            image: b"c".to_vec(),
            low: Some(vec![]),
        };
        assert_eq!(content_hash(&v, &a), content_hash(&reformatted, &a));
        assert_ne!(content_hash(&v, &a), content_hash(&v, &b));
        assert_ne!(content_hash(&v, &a), content_hash(&v, &c));
        assert_ne!(
            content_hash(&v, &a),
            content_hash(&serde_json::json!({"a": 2, "b": [2]}), &a)
        );
    }
}
