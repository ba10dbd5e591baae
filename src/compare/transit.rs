//! The transit check inside the node: pairs a transit exit scan with its entry (an entry
//! scan of this node, else an entry package from the entry site), runs the comparison off
//! the async runtime (one at a time: each holds two full images), stores the aligned exit
//! and the heatmap beside the exit scan (temp file, fsync, rename, before the verdict that
//! refers to them), and turns the result into the verdict's `transit` object, its outcome
//! contribution and its reasons.
//!
//! An exit whose entry is not there yet gets an `awaiting_entry` verdict; [`Transit::run`]
//! re-checks it when an entry arrives ([`Transit::entry_available`], called by the pipeline
//! for entry scans and by the uplink for entry packages) and, on its periodic sweep, when
//! an entry turned up unnoticed or when `[transit] unpaired_after_hours` has passed
//! (`unpaired`). Each such verdict supersedes the awaiting one, with a fresh manifest part
//! from the pipeline's [`crate::pipeline::ManifestCheck`]. This module never deletes scans
//! or images.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Transaction;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::calibrate::CalibrationSet;
use super::{compare, Comparison, Input, Status, Thresholds};
use crate::config::{Config, TransitConfig};
use crate::imaging::{self, Gray16};
use crate::ingest::CANONICAL_IMAGE;
use crate::metrics::Metrics;
use crate::pipeline::{auto_verdict, ManifestCheck, NodeIdentity};
use crate::scan::verdict::{ChangedRegion, Outcome, TransitResult, TransitStatus, Verdict};
use crate::scan::CabSide;
use crate::store::scans::ScanRecord;
use crate::store::transit::{self as tstore, Awaiting, EntrySource};
use crate::store::verdicts::VerdictSigner;
use crate::store::{self, Store, StoreError};

/// The aligned exit (16-bit transmission on the entry's geometry) in the exit scan's dir.
pub const ALIGNED_FILE: &str = "transit-aligned.png";
/// The RGBA heatmap of the changes (entry geometry) in the exit scan's dir.
pub const HEATMAP_FILE: &str = "transit-heatmap.png";

/// The comparison's pair statistic ([`super::calibrate::pair_statistic`]) in the exit
/// scan's dir, kept so that a supervisor's later clearance can refine the scanner pair's
/// calibration without comparing the images again.
pub const STATISTIC_FILE: &str = "transit-statistic.json";
const STATISTIC_SCHEMA: &str = "riac.transit-statistic/1";

/// What [`STATISTIC_FILE`] holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairStatistic {
    pub schema: String,
    pub entry_scan_id: String,
    pub entry_scanner: String,
    pub exit_scanner: String,
    /// `None`: the pair could not be compared (inconclusive).
    pub od_m2: Option<f64>,
}

/// Why [`Transit::update_calibration`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationUpdateError {
    #[error("the node's calibration file cannot be used ({0}); nothing was changed")]
    Load(String),
    /// The change itself refused (its message names what and why).
    #[error("{0}")]
    Refused(String),
    #[error("the node could not save the calibration (see its log); nothing was changed")]
    Save,
}

/// Entry notifications queued for the re-check task; past this the sweep catches up.
const QUEUE: usize = 256;

/// The transit part of a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitCheck {
    pub result: TransitResult,
    /// This check's contribution to the verdict's outcome.
    pub outcome: Outcome,
    /// What the check adds to the verdict's reasons.
    pub reasons: Vec<String>,
}

fn pixel_mm(sidecar: Option<&serde_json::Value>) -> Option<[f64; 2]> {
    let v = sidecar?.pointer("/image/pixel_mm")?.as_array()?;
    Some([v.first()?.as_f64()?, v.get(1)?.as_f64()?])
}

fn cab_side(sidecar: Option<&serde_json::Value>) -> Option<CabSide> {
    CabSide::parse(sidecar?.pointer("/image/cab_side")?.as_str()?)
}

fn containers_text(c: &[String]) -> String {
    if c.is_empty() {
        "none".into()
    } else {
        c.join(", ")
    }
}

fn status_only(status: TransitStatus, reason: String, entry: Option<String>) -> TransitResult {
    TransitResult {
        status,
        entry_scan_id: entry,
        change_score: None,
        regions: Vec::new(),
        reason: Some(reason),
        alignment_quality: None,
        mirrored: None,
    }
}

/// The check for an exit whose entry is not here yet.
pub fn awaiting(declaration: &str, containers: &[String]) -> TransitCheck {
    let reason = format!(
        "the entry scan of declaration {declaration} (containers {}) has not arrived yet; the check runs when it does",
        containers_text(containers)
    );
    TransitCheck {
        result: status_only(TransitStatus::AwaitingEntry, reason.clone(), None),
        outcome: Outcome::Refer,
        reasons: vec![format!("transit: awaiting entry: {reason}")],
    }
}

/// The check for an exit whose entry never came.
pub fn unpaired(declaration: &str, containers: &[String], hours: f64) -> TransitCheck {
    let reason = format!(
        "no entry scan of declaration {declaration} (containers {}) arrived within {hours:.0} h",
        containers_text(containers)
    );
    TransitCheck {
        result: status_only(TransitStatus::Unpaired, reason.clone(), None),
        outcome: Outcome::Refer,
        reasons: vec![format!("transit: unpaired: {reason}")],
    }
}

fn inconclusive(entry: &str, reason: String) -> TransitCheck {
    TransitCheck {
        result: status_only(
            TransitStatus::Inconclusive,
            reason.clone(),
            Some(entry.to_string()),
        ),
        outcome: Outcome::Refer,
        reasons: vec![format!(
            "transit: inconclusive against entry scan {entry}: {reason}"
        )],
    }
}

/// The outcome policy: unchanged contributes `clear`; changed is `alert` when a region
/// scores at least `alert_score` over at least `alert_min_area_m2`, else `refer`;
/// inconclusive is `refer`.
pub fn from_comparison(c: &Comparison, entry: &str, th: &Thresholds) -> TransitCheck {
    let regions: Vec<ChangedRegion> = c
        .regions
        .iter()
        .map(|r| ChangedRegion {
            x0: r.x0,
            y0: r.y0,
            x1: r.x1,
            y1: r.y1,
            area_m2: r.area_m2,
            score: r.score,
            kind: Some(r.kind.to_string()),
        })
        .collect();
    let q = c.alignment_quality.unwrap_or(0.0);
    match c.status {
        Status::Inconclusive => inconclusive(
            entry,
            c.reason
                .clone()
                .unwrap_or_else(|| "the scans could not be compared".into()),
        ),
        Status::Unchanged => TransitCheck {
            result: TransitResult {
                status: TransitStatus::Unchanged,
                entry_scan_id: Some(entry.to_string()),
                change_score: c.change_score,
                regions: Vec::new(),
                reason: None,
                alignment_quality: c.alignment_quality,
                mirrored: c.mirrored,
            },
            outcome: Outcome::Clear,
            reasons: vec![format!(
                "transit: unchanged since entry scan {entry} (alignment quality {q:.2})"
            )],
        },
        Status::Changed => {
            let alert = c.regions.iter().any(|r| {
                th.alerts(r) && r.area_m2.unwrap_or(th.alert_min_area_m2) >= th.alert_min_area_m2
            });
            let top = &c.regions[0];
            let area = top
                .area_m2
                .map_or("unknown area".into(), |a| format!("{a:.2} m²"));
            let summary = format!(
                "{} changed region(s) since entry scan {entry}; strongest: {area}, goods {}, score {:.2}",
                c.regions.len(),
                match top.kind {
                    "removed" => "removed",
                    "added" => "added",
                    _ => "changed",
                },
                top.score
            );
            TransitCheck {
                result: TransitResult {
                    status: TransitStatus::Changed,
                    entry_scan_id: Some(entry.to_string()),
                    change_score: c.change_score,
                    regions,
                    reason: Some(summary.clone()),
                    alignment_quality: c.alignment_quality,
                    mirrored: c.mirrored,
                },
                outcome: if alert {
                    Outcome::Alert
                } else {
                    Outcome::Refer
                },
                reasons: vec![format!(
                    "transit: changed ({}): {summary}",
                    if alert { "alert" } else { "refer" }
                )],
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cannot read the {which} image {path}: {message}")]
    Image {
        which: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {0}: {1}")]
    Encode(&'static str, String),
}

fn read_image(which: &'static str, path: &Path) -> Result<Gray16, RunError> {
    let err = |message: String| RunError::Image {
        which,
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    imaging::decode_png16(&bytes).map_err(|e| err(e.to_string()))
}

/// [`crate::fsx::write_file`], its error naming the file.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RunError> {
    crate::fsx::write_file(dir, name, bytes, None)
        .map(|_| ())
        .map_err(|source| RunError::Write {
            path: dir.join(name),
            source,
        })
}

/// Cheap to clone; one per node.
#[derive(Clone)]
pub struct Transit {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    data_dir: PathBuf,
    // A std RwLock: read to copy, written by the centre's `cmd/thresholds`; never held
    // across an await.
    cfg: std::sync::RwLock<TransitConfig>,
    /// Per scanner-pair limits (`<data_dir>/transit-calibration.json`, loaded at start);
    /// same locking rule as `cfg`.
    calibration: std::sync::RwLock<CalibrationSet>,
    metrics: Metrics,
    identity: NodeIdentity,
    signer: Option<Arc<dyn VerdictSigner>>,
    /// A re-checked exit's superseding verdict carries a fresh manifest check too.
    manifest: ManifestCheck,
    /// One comparison at a time: each holds two full images and uses both cores.
    cpu: Semaphore,
    /// Held while the calibration file is read, changed and written (the centre's push, a
    /// supervisor's refinement), so that neither undoes the other.
    calibration_file: tokio::sync::Mutex<()>,
    tx: mpsc::Sender<String>,
}

impl Transit {
    /// The service and the receiver its [`Transit::run`] task consumes.
    pub fn new(
        cfg: &Config,
        calibration: CalibrationSet,
        store: Store,
        metrics: Metrics,
        identity: NodeIdentity,
        signer: Option<Arc<dyn VerdictSigner>>,
        manifest: ManifestCheck,
    ) -> (Transit, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Transit {
                inner: Arc::new(Inner {
                    store,
                    data_dir: cfg.data_dir.clone(),
                    cfg: std::sync::RwLock::new(cfg.transit.clone()),
                    calibration: std::sync::RwLock::new(calibration),
                    metrics,
                    identity,
                    signer,
                    manifest,
                    cpu: Semaphore::new(1),
                    calibration_file: tokio::sync::Mutex::new(()),
                    tx,
                }),
            },
            rx,
        )
    }

    /// An entry is available for pairing: `entry_scan_id` names an entry scan stored by
    /// this node or an entry package stored by the uplink (stored before this call). The
    /// exits awaiting it are re-checked in the background. Waits only for queue space.
    pub async fn entry_available(&self, entry_scan_id: &str) {
        if self.inner.tx.send(entry_scan_id.to_string()).await.is_err() {
            tracing::debug!(
                entry_scan_id,
                "transit re-check task has stopped; the next start's sweep pairs it"
            );
        }
    }

    /// Like [`Transit::entry_available`] but never waits (the pipeline must not): when the
    /// queue is full, the periodic sweep finds the awaiting exits instead.
    pub fn notify_entry(&self, entry_scan_id: &str) {
        if self.inner.tx.try_send(entry_scan_id.to_string()).is_err() {
            tracing::debug!(
                entry_scan_id,
                "transit re-check queue full; the periodic sweep will pair it"
            );
        }
    }

    /// The settings in force: the config's `[transit]`, as the centre may have tuned it.
    pub fn config(&self) -> TransitConfig {
        self.inner.cfg.read().expect("transit config lock").clone()
    }

    /// Replaces the settings in force (the centre's `cmd/thresholds`); the next comparison
    /// and the next sweep use them.
    pub fn set_config(&self, cfg: TransitConfig) {
        *self.inner.cfg.write().expect("transit config lock") = cfg;
    }

    /// Replaces the scanner-pair calibration in force (the centre's
    /// `cmd/transit-calibration`, after the file was saved); the next comparison uses it.
    pub fn set_calibration(&self, set: CalibrationSet) {
        self.inner.metrics.set_transit_calibration(&set);
        *self
            .inner
            .calibration
            .write()
            .expect("transit calibration lock") = set;
    }

    /// Reads the calibration file (not what is in force: `calibrate transit` may have
    /// written it since the start, and a change must not undo the engineer's
    /// commissioning), lets `change` edit it and, when it returns `true` with its value,
    /// saves the set durably and puts it in force. One caller at a time (the centre's push,
    /// a supervisor's refinement), so neither undoes the other. Returns `change`'s value
    /// and the set in force afterwards; on any error nothing changed.
    pub async fn update_calibration<T>(
        &self,
        change: impl FnOnce(&mut CalibrationSet) -> Result<(T, bool), String>,
    ) -> Result<(T, CalibrationSet), CalibrationUpdateError> {
        let _file = self.inner.calibration_file.lock().await;
        let dir = self.inner.data_dir.clone();
        let mut set = tokio::task::spawn_blocking(move || CalibrationSet::load(&dir))
            .await
            .map_err(|e| CalibrationUpdateError::Load(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the transit calibration");
                CalibrationUpdateError::Load(e.to_string())
            })?;
        let (value, save) = change(&mut set).map_err(CalibrationUpdateError::Refused)?;
        if !save {
            return Ok((value, self.calibration()));
        }
        let (dir, to_save) = (self.inner.data_dir.clone(), set.clone());
        tokio::task::spawn_blocking(move || to_save.save(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot save the transit calibration");
                CalibrationUpdateError::Save
            })?;
        self.set_calibration(set.clone());
        Ok((value, set))
    }

    /// A supervisor (`by`) cleared exit scan `exit_scan_id`: when its comparison left a
    /// statistic and its scanner pair is calibrated, the calibration is refined with it
    /// ([`super::calibrate::refine`]), saved, put in force, and the audit chain records
    /// what was done or why not. The caller guarantees the clearance is a supervisor's;
    /// automatic verdicts and operators' decisions never come here. Errors are logged,
    /// never returned: the clearance itself stands either way.
    pub async fn refine_from_clearance(&self, exit_scan_id: &str, by: &str) {
        if let Err(e) = self.try_refine(exit_scan_id, by).await {
            tracing::error!(exit_scan_id, error = %e, "transit calibration not refined from a supervisor's clearance");
        }
    }

    async fn try_refine(&self, exit_scan_id: &str, by: &str) -> Result<(), String> {
        use super::calibrate::{refine, Refinement};
        let inner = &self.inner;
        let sid = exit_scan_id.to_string();
        let Some(exit) = inner
            .store
            .read(move |c| store::scans::get(c, &sid))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let path = inner.data_dir.join(&exit.image_dir).join(STATISTIC_FILE);
        let stat: PairStatistic = match tokio::fs::read(&path).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?,
            // Not a compared transit exit (no entry, or from before this file existed).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let Some(od_m2) = stat.od_m2 else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc();
        let (detail, _) = self
            .update_calibration(|set| {
                let Some(cal) = set.get(&stat.entry_scanner, &stat.exit_scanner).cloned() else {
                    return Ok((None, false));
                };
                let pair = cal.key();
                Ok(match refine(&cal, exit_scan_id, od_m2, by, now) {
                    Refinement::Used(new) => {
                        let detail = serde_json::json!({
                            "pair": pair,
                            "od_m2": od_m2,
                            "used": true,
                            "refer_od_m2": {"before": cal.refer_od_m2, "after": new.refer_od_m2},
                            "alert_od_m2": {"before": cal.alert_od_m2, "after": new.alert_od_m2},
                            "cleared_pairs": new.cleared.len(),
                        });
                        set.insert(*new);
                        (Some(detail), true)
                    }
                    Refinement::NotUsed(why) => (
                        Some(serde_json::json!({
                            "pair": pair, "od_m2": od_m2, "used": false, "reason": why,
                        })),
                        false,
                    ),
                })
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(detail) = detail else {
            tracing::info!(exit_scan_id, entry = %stat.entry_scanner, exit = %stat.exit_scanner, "supervisor's clearance of an uncalibrated scanner pair: nothing to refine");
            return Ok(());
        };
        tracing::info!(exit_scan_id, by, %detail, "supervisor's clearance considered for the transit calibration");
        let (by, sid) = (by.to_string(), exit_scan_id.to_string());
        inner
            .store
            .write(move |t| {
                store::audit::append(t, &by, "transit-calibration.refined", Some(&sid), detail)?;
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The scanner-pair calibration in force.
    pub fn calibration(&self) -> CalibrationSet {
        self.inner
            .calibration
            .read()
            .expect("transit calibration lock")
            .clone()
    }

    /// The transit part of an exit scan's verdict: pairs, compares, stores the images.
    pub async fn check_exit(&self, exit: &ScanRecord) -> Result<TransitCheck, StoreError> {
        let (decl, containers) = (exit.declaration_number.clone(), exit.container_ids.clone());
        let entry = self
            .inner
            .store
            .read(move |c| tstore::find_entry(c, &decl, &containers))
            .await?;
        Ok(match entry {
            None => awaiting(&exit.declaration_number, &exit.container_ids),
            Some(src) => self.compare_with(exit, src).await,
        })
    }

    async fn compare_with(&self, exit: &ScanRecord, src: EntrySource) -> TransitCheck {
        let inner = &self.inner;
        let entry_id = src.scan_id().to_string();
        let (entry_path, entry_mm, entry_cab) = match &src {
            EntrySource::Local(s) => (
                inner.data_dir.join(&s.image_dir).join(CANONICAL_IMAGE),
                pixel_mm(s.sidecar.as_ref()),
                cab_side(s.sidecar.as_ref()),
            ),
            EntrySource::Package(p) => (
                inner.data_dir.join(&p.image_path),
                p.package.pixel_mm,
                cab_side(Some(&p.package.sidecar)),
            ),
        };
        let exit_cab = cab_side(exit.sidecar.as_ref());
        let exit_dir = inner.data_dir.join(&exit.image_dir);
        let exit_path = exit_dir.join(CANONICAL_IMAGE);
        let exit_mm = pixel_mm(exit.sidecar.as_ref());
        let entry_scanner = match &src {
            EntrySource::Local(s) => s.scanner_id.clone(),
            EntrySource::Package(p) => p
                .package
                .sidecar
                .get("scanner_id")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string(),
        };
        let mut th = self.config().thresholds;
        th.calibrated = self
            .inner
            .calibration
            .read()
            .expect("transit calibration lock")
            .get(&entry_scanner, &exit.scanner_id)
            .map(|c| c.limits());
        let calibrated = th.calibrated.is_some();
        inner.metrics.count_transit_calibration(calibrated);
        let pair = super::calibrate::pair_key(&entry_scanner, &exit.scanner_id);
        let th_decide = th.clone();
        let stat = PairStatistic {
            schema: STATISTIC_SCHEMA.into(),
            entry_scan_id: entry_id.clone(),
            entry_scanner: entry_scanner.clone(),
            exit_scanner: exit.scanner_id.clone(),
            od_m2: None,
        };
        let Ok(_permit) = inner.cpu.acquire().await else {
            return inconclusive(&entry_id, "the node is shutting down".into());
        };
        let started = Instant::now();
        let run = tokio::task::spawn_blocking(move || -> Result<Comparison, RunError> {
            let e = read_image("entry", &entry_path)?;
            let x = read_image("exit", &exit_path)?;
            let mut c = compare(
                Input {
                    image: &e,
                    pixel_mm: entry_mm,
                    cab_side: entry_cab,
                },
                Input {
                    image: &x,
                    pixel_mm: exit_mm,
                    cab_side: exit_cab,
                },
                &th,
                true,
            );
            let stat = PairStatistic {
                od_m2: super::calibrate::pair_statistic(&c, &th),
                ..stat
            };
            let stat = serde_json::to_vec_pretty(&stat).expect("statistic serialises");
            write_atomic(&exit_dir, STATISTIC_FILE, &stat)?;
            if let Some(o) = c.outputs.take() {
                let aligned = imaging::encode_png16(&o.aligned)
                    .map_err(|e| RunError::Encode(ALIGNED_FILE, e.to_string()))?;
                write_atomic(&exit_dir, ALIGNED_FILE, &aligned)?;
                let mut heat = Vec::new();
                let enc = image::codecs::png::PngEncoder::new_with_quality(
                    &mut heat,
                    image::codecs::png::CompressionType::Fast,
                    image::codecs::png::FilterType::Adaptive,
                );
                o.heatmap
                    .write_with_encoder(enc)
                    .map_err(|e| RunError::Encode(HEATMAP_FILE, e.to_string()))?;
                write_atomic(&exit_dir, HEATMAP_FILE, &heat)?;
            }
            Ok(c)
        })
        .await;
        inner.metrics.observe_stage("transit", started.elapsed());
        match run {
            Ok(Ok(c)) => {
                tracing::info!(
                    exit = %exit.scan_id,
                    entry = %entry_id,
                    status = ?c.status,
                    score = c.change_score.unwrap_or(0.0),
                    quality = c.alignment_quality.unwrap_or(0.0),
                    ms = c.timings.total_ms,
                    "transit comparison done"
                );
                let mut check = from_comparison(&c, &entry_id, &th_decide);
                if c.status != Status::Inconclusive && !calibrated {
                    check.reasons.push(format!(
                        "transit: scanner pair {pair} is not calibrated, so the uncalibrated default thresholds decided; its false-alarm rate is unknown (docs/COMMISSIONING.md)"
                    ));
                }
                check
            }
            Ok(Err(e)) => {
                tracing::error!(exit = %exit.scan_id, entry = %entry_id, error = %e, "transit comparison could not run");
                let why = match e {
                    RunError::Image { which, .. } => {
                        format!("the {which} scan's stored image could not be read (see the node's log)")
                    }
                    RunError::Write { .. } | RunError::Encode(..) => {
                        "the comparison images could not be stored (see the node's log)".into()
                    }
                };
                inconclusive(&entry_id, why)
            }
            Err(e) => {
                tracing::error!(exit = %exit.scan_id, error = %e, "transit comparison task failed");
                inconclusive(
                    &entry_id,
                    "the comparison failed (see the node's log)".into(),
                )
            }
        }
    }

    /// Re-checks exits awaiting their entry: on each entry notification, and every
    /// `[transit] sweep_secs` (entries that arrived unnoticed, and exits past
    /// `unpaired_after_hours`), until `token` is cancelled.
    pub async fn run(self, mut rx: mpsc::Receiver<String>, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.config().sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let r = tokio::select! {
                _ = token.cancelled() => break,
                next = rx.recv() => match next {
                    Some(id) => self.on_entry(&id, &token).await,
                    None => break,
                },
                _ = tick.tick() => self.sweep(&token).await,
            };
            match r {
                Ok(()) => {}
                Err(StoreError::Closed) => break,
                Err(e) => {
                    tracing::error!(error = %e, "transit re-check failed; the next sweep tries again")
                }
            }
        }
    }

    async fn on_entry(
        &self,
        entry_scan_id: &str,
        token: &CancellationToken,
    ) -> Result<(), StoreError> {
        let id = entry_scan_id.to_string();
        let Some(entry) = self
            .inner
            .store
            .read(move |c| tstore::entry_by_id(c, &id))
            .await?
        else {
            tracing::warn!(entry_scan_id, "notified of an entry that is not stored");
            return Ok(());
        };
        let (decl, containers) = match &entry {
            EntrySource::Local(s) => (s.declaration_number.clone(), s.container_ids.clone()),
            EntrySource::Package(p) => (
                p.package.declaration_number.clone(),
                p.package.container_ids.clone(),
            ),
        };
        let d2 = decl.clone();
        let waiting = self
            .inner
            .store
            .read(move |c| tstore::awaiting_for_declaration(c, &d2))
            .await?;
        for aw in waiting {
            if token.is_cancelled() {
                break;
            }
            let id = aw.exit_scan_id.clone();
            let Some(exit) = self
                .inner
                .store
                .read(move |c| store::scans::get(c, &id))
                .await?
            else {
                continue;
            };
            if exit.container_ids.iter().any(|c| containers.contains(c)) {
                self.recheck(&aw, &exit).await?;
            }
        }
        Ok(())
    }

    async fn sweep(&self, token: &CancellationToken) -> Result<(), StoreError> {
        let waiting = self.inner.store.read(tstore::all_awaiting).await?;
        let now = time::OffsetDateTime::now_utc();
        for aw in waiting {
            if token.is_cancelled() {
                break;
            }
            let id = aw.exit_scan_id.clone();
            let Some(exit) = self
                .inner
                .store
                .read(move |c| store::scans::get(c, &id))
                .await?
            else {
                continue;
            };
            let (decl, containers) = (exit.declaration_number.clone(), exit.container_ids.clone());
            let found = self
                .inner
                .store
                .read(move |c| tstore::find_entry(c, &decl, &containers))
                .await?;
            if found.is_some() {
                self.recheck(&aw, &exit).await?;
                continue;
            }
            let since = time::OffsetDateTime::parse(
                &aw.since,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(now);
            let unpaired_after = self.config().unpaired_after;
            if now - since >= unpaired_after {
                let hours = unpaired_after.as_secs_f64() / 3600.0;
                let check = unpaired(&exit.declaration_number, &exit.container_ids, hours);
                self.supersede(&aw, &exit, check).await?;
            }
        }
        Ok(())
    }

    async fn recheck(&self, aw: &Awaiting, exit: &ScanRecord) -> Result<(), StoreError> {
        let check = self.check_exit(exit).await?;
        if check.result.status == TransitStatus::AwaitingEntry {
            return Ok(());
        }
        self.supersede(aw, exit, check).await
    }

    /// Stores a verdict with `check` that supersedes the awaiting one, unless another
    /// writer already did.
    async fn supersede(
        &self,
        aw: &Awaiting,
        exit: &ScanRecord,
        check: TransitCheck,
    ) -> Result<(), StoreError> {
        let manifest = self.inner.manifest.run(exit).await;
        let mut v = auto_verdict(exit, &self.inner.identity, manifest, Some(&check));
        v.supersedes = Some(aw.verdict_id.clone());
        let topic = self.inner.identity.verdict_topic();
        let signer = self.inner.signer.clone();
        let (exit_id, old) = (aw.exit_scan_id.clone(), aw.verdict_id.clone());
        let stored = self
            .inner
            .store
            .write(move |t| {
                if !tstore::take_awaiting(t, &exit_id, &old)? {
                    return Ok(None);
                }
                Ok(Some(store::verdicts::insert_with_outbox(
                    t,
                    v,
                    &topic,
                    signer.as_deref(),
                )?))
            })
            .await?;
        if let Some(v) = stored {
            self.inner.metrics.verdict();
            tracing::info!(
                scan_id = %v.scan_id,
                seq = v.seq,
                outcome = v.outcome.as_str(),
                transit = v.transit.as_ref().map_or("-", |t| t.status.as_str()),
                supersedes = %aw.verdict_id,
                "transit verdict stored"
            );
        }
        Ok(())
    }
}

/// Stores a pipeline verdict; one that awaits its entry also gets its `transit_awaiting`
/// row, in the same transaction, unless an entry arrived since the check looked (then
/// nothing is stored and `None` tells the caller to check again).
pub fn store_verdict(
    t: &Transaction<'_>,
    v: Verdict,
    topic: &str,
    signer: Option<&dyn VerdictSigner>,
) -> Result<Option<Verdict>, StoreError> {
    let awaiting = v
        .transit
        .as_ref()
        .is_some_and(|tr| tr.status == TransitStatus::AwaitingEntry);
    if !awaiting {
        return Ok(Some(store::verdicts::insert_with_outbox(
            t, v, topic, signer,
        )?));
    }
    if tstore::find_entry(t, &v.declaration.number, &v.container_ids)?.is_some() {
        return Ok(None);
    }
    let v = store::verdicts::insert_with_outbox(t, v, topic, signer)?;
    tstore::mark_awaiting(
        t,
        &v.scan_id,
        &v.verdict_id,
        &v.declaration.number,
        &v.decided_at,
    )?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Details, Region, Timings};

    fn comparison(status: Status, regions: Vec<Region>) -> Comparison {
        Comparison {
            status,
            reason: (status == Status::Inconclusive).then(|| "cannot align".to_string()),
            change_score: Some(regions.first().map_or(0.1, |r| r.score)),
            candidates: regions.clone(),
            regions,
            alignment_quality: Some(0.97),
            mirrored: Some(true),
            details: Details::default(),
            timings: Timings::default(),
            outputs: None,
        }
    }

    fn region(score: f64, area: f64) -> Region {
        Region {
            x0: 10,
            y0: 20,
            x1: 30,
            y1: 40,
            area_m2: Some(area),
            score,
            evidence_od_m2: -0.05 * (1.0 - score).ln(),
            kind: "added",
            mean_delta: -0.4,
            mean_z: 20.0,
        }
    }

    #[test]
    fn outcome_policy() {
        let th = Thresholds::default();
        let c = from_comparison(&comparison(Status::Unchanged, vec![]), "E1", &th);
        assert_eq!(
            (c.result.status, c.outcome),
            (TransitStatus::Unchanged, Outcome::Clear)
        );
        assert_eq!(c.result.entry_scan_id.as_deref(), Some("E1"));
        assert_eq!(c.result.alignment_quality, Some(0.97));

        let c = from_comparison(
            &comparison(Status::Changed, vec![region(0.95, 0.6)]),
            "E1",
            &th,
        );
        assert_eq!(
            (c.result.status, c.outcome),
            (TransitStatus::Changed, Outcome::Alert)
        );
        assert_eq!(c.result.regions.len(), 1);
        assert_eq!(c.result.regions[0].kind.as_deref(), Some("added"));

        // Strong but small, or large but marginal: refer.
        let c = from_comparison(
            &comparison(Status::Changed, vec![region(0.95, 0.12)]),
            "E1",
            &th,
        );
        assert_eq!(c.outcome, Outcome::Refer);
        let c = from_comparison(
            &comparison(Status::Changed, vec![region(0.6, 2.0)]),
            "E1",
            &th,
        );
        assert_eq!(c.outcome, Outcome::Refer);

        // A calibrated scanner pair decides on evidence: the same region alerts under a
        // quiet pair's limits and only refers under a noisy pair's.
        let strong = region(0.95, 0.6);
        let quiet = Thresholds {
            calibrated: Some(crate::compare::calibrate::CalibratedLimits {
                pair: "A->B".into(),
                refer_od_m2: 0.05,
                alert_od_m2: 0.1,
            }),
            ..Thresholds::default()
        };
        let noisy = Thresholds {
            calibrated: Some(crate::compare::calibrate::CalibratedLimits {
                pair: "A->C".into(),
                refer_od_m2: 0.05,
                alert_od_m2: 0.5,
            }),
            ..Thresholds::default()
        };
        let c = comparison(Status::Changed, vec![strong]);
        assert_eq!(from_comparison(&c, "E1", &quiet).outcome, Outcome::Alert);
        assert_eq!(from_comparison(&c, "E1", &noisy).outcome, Outcome::Refer);

        let c = from_comparison(&comparison(Status::Inconclusive, vec![]), "E1", &th);
        assert_eq!(
            (c.result.status, c.outcome),
            (TransitStatus::Inconclusive, Outcome::Refer)
        );
        assert!(c.reasons[0].contains("cannot align"), "{:?}", c.reasons);

        let a = awaiting("D-1", &["MSCU1234566".into()]);
        assert_eq!(
            (a.result.status, a.outcome),
            (TransitStatus::AwaitingEntry, Outcome::Refer)
        );
        let u = unpaired("D-1", &["MSCU1234566".into()], 72.0);
        assert_eq!(u.result.status, TransitStatus::Unpaired);
        assert!(u.reasons[0].contains("72 h"), "{:?}", u.reasons);
    }
}
