//! Retention: scan images age out by age, by a byte quota and by a free-space floor, oldest
//! first, and evidence still needed is never evicted.
//!
//! Invariants:
//! - eviction removes a scan's image directory only; its row, verdicts and audit lines stay,
//!   and the row says when and why (`scans.evicted_at`, `scans.evicted_reason`);
//! - the row change and its audit line (`scan.evicted`, subject = scan id, detail = reason)
//!   commit in one transaction, and the pins are checked again inside that transaction, so a
//!   scan pinned while a pass was planning is not evicted;
//! - files are deleted only after that commit. A crash in between leaves a directory whose
//!   row says evicted; every pass (the first one at start) removes such directories;
//! - pinned, never evicted: a scan not decided yet, a current `alert`, a `refer`/`alert`
//!   without an operator decision (under review), a scan whose verdicts are still in the
//!   outbox, a transit entry scan within `transit.unpaired_after_hours` with no exit scan of
//!   its declaration here, an exit awaiting its entry, a transit entry whose package is not
//!   sent yet, and a scan an admin pinned (`riac-node pin`, the admin page).
//!
//! Disk full: [`DiskGuard::admit`] runs before each ingest. Below the floor, if the last
//! pass saw evictable scans, it wakes a pass and waits for it (up to [`ADMIT_WAIT`]), so a
//! node whose floor can be met by eviction keeps taking scans without an alert. Only when
//! space is still short after that (or nothing was evictable) does it refuse the drop (HTTP
//! 507, the hot folder keeps it for a retry) and raise the alert; a pass clears the alert
//! once free space is back above the floor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, audit, Store, StoreError};

/// Why a scan's images are kept whatever the quota says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinReason {
    /// Stored but no verdict yet.
    Undecided,
    /// The current verdict is an alert.
    Alert,
    /// A refer or alert that no operator has decided yet.
    UnderReview,
    /// A verdict of the scan is still waiting in the outbox.
    Outbox,
    /// A transit entry scan within the transit window whose exit has not been scanned here.
    TransitEntry,
    /// A transit exit whose verdict awaits its entry.
    AwaitingEntry,
    /// A transit entry whose entry package has not been sent yet.
    EntryPackage,
    /// An admin pinned it.
    Admin,
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::Undecided => "undecided",
            PinReason::Alert => "alert",
            PinReason::UnderReview => "under_review",
            PinReason::Outbox => "outbox",
            PinReason::TransitEntry => "transit_entry",
            PinReason::AwaitingEntry => "awaiting_entry",
            PinReason::EntryPackage => "entry_package",
            PinReason::Admin => "admin",
        }
    }
}

/// Why a scan's images were evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    /// Older than `retention.max_age_days`.
    Age,
    /// Scan images took more than `retention.max_gb`.
    Quota,
    /// Free space was below `retention.min_free_gb`.
    FreeSpace,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Age => "age",
            EvictReason::Quota => "quota",
            EvictReason::FreeSpace => "free_space",
        }
    }
}

/// A stored, not yet evicted scan as the retention pass sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub scan_id: String,
    pub received_at: String,
    pub image_dir: String,
    /// Bytes of its files (filled from the file system).
    pub bytes: u64,
    pub pins: Vec<PinReason>,
}

/// The figures a plan starts from.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// The limits a plan applies.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Scans received before this timestamp (RFC 3339, store format) are too old.
    pub age_cutoff: Option<String>,
    pub max_bytes: Option<u64>,
    pub min_free_bytes: u64,
}

/// Which candidates to evict and why. `cands` must be oldest first. Pinned scans are
/// skipped; an unpinned scan is evicted when it is too old, or while the quota or the
/// free-space floor is still exceeded (each eviction counts its bytes as given back).
pub fn plan(cands: &[Candidate], limits: &Limits, usage: Usage) -> Vec<(usize, EvictReason)> {
    let (mut used, mut free) = (usage.used_bytes, usage.free_bytes);
    let mut out = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if !c.pins.is_empty() {
            continue;
        }
        let reason = if limits
            .age_cutoff
            .as_deref()
            .is_some_and(|cut| c.received_at.as_str() < cut)
        {
            EvictReason::Age
        } else if limits.max_bytes.is_some_and(|m| used > m) {
            EvictReason::Quota
        } else if free < limits.min_free_bytes {
            EvictReason::FreeSpace
        } else {
            // Oldest first: nothing younger is too old, and both limits are met.
            break;
        };
        used = used.saturating_sub(c.bytes);
        free = free.saturating_add(c.bytes);
        out.push((i, reason));
    }
    out
}

const CANDIDATES_SQL: &str = "
    WITH ob AS (SELECT DISTINCT v.scan_id FROM outbox o JOIN verdicts v ON v.verdict_id = o.ref
                WHERE o.kind = 'verdict')
    SELECT s.scan_id, s.received_at, s.image_dir,
        s.state <> 'decided',
        (SELECT v.outcome FROM verdicts v WHERE v.scan_id = s.scan_id ORDER BY v.seq DESC LIMIT 1),
        EXISTS (SELECT 1 FROM verdicts v WHERE v.scan_id = s.scan_id AND v.decided_by <> 'auto'),
        s.scan_id IN ob,
        (s.direction = 'entry' AND s.regime = 'transit' AND s.received_at > ?1
            AND NOT EXISTS (SELECT 1 FROM scans x WHERE x.declaration_number = s.declaration_number
                            AND x.direction = 'exit')),
        EXISTS (SELECT 1 FROM transit_awaiting a WHERE a.exit_scan_id = s.scan_id),
        EXISTS (SELECT 1 FROM entry_outgoing e WHERE e.scan_id = s.scan_id
                AND e.state IN ('queued', 'deferred')),
        EXISTS (SELECT 1 FROM scan_pins p WHERE p.scan_id = s.scan_id)
    FROM scans s
    WHERE s.evicted_at IS NULL AND (?2 IS NULL OR s.scan_id = ?2)
    ORDER BY s.received_at, s.id";

fn row_to_candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    let outcome: Option<String> = r.get(4)?;
    let operator: bool = r.get(5)?;
    let mut pins = Vec::new();
    if r.get::<_, bool>(3)? {
        pins.push(PinReason::Undecided);
    }
    if outcome.as_deref() == Some("alert") {
        pins.push(PinReason::Alert);
    }
    if matches!(outcome.as_deref(), Some("refer" | "alert")) && !operator {
        pins.push(PinReason::UnderReview);
    }
    let flags = [
        (6, PinReason::Outbox),
        (7, PinReason::TransitEntry),
        (8, PinReason::AwaitingEntry),
        (9, PinReason::EntryPackage),
        (10, PinReason::Admin),
    ];
    for (col, pin) in flags {
        if r.get::<_, bool>(col)? {
            pins.push(pin);
        }
    }
    Ok(Candidate {
        scan_id: r.get(0)?,
        received_at: r.get(1)?,
        image_dir: r.get(2)?,
        bytes: 0,
        pins,
    })
}

/// Every scan not evicted yet, oldest first, with its pins. `transit_since`: entry scans
/// received after it are within the transit window.
pub fn candidates(c: &Connection, transit_since: &str) -> store::Result<Vec<Candidate>> {
    let mut st = c.prepare_cached(CANDIDATES_SQL)?;
    let rows = st.query_map(params![transit_since, None::<String>], row_to_candidate)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The pins of one scan (`None`: no such scan, or already evicted).
pub fn pins_of(
    c: &Connection,
    scan_id: &str,
    transit_since: &str,
) -> store::Result<Option<Vec<PinReason>>> {
    let mut st = c.prepare_cached(CANDIDATES_SQL)?;
    Ok(st
        .query_row(params![transit_since, scan_id], row_to_candidate)
        .optional()?
        .map(|c| c.pins))
}

/// Marks the scan evicted with its audit line, if it is still unpinned and not evicted.
/// Returns whether it did.
pub fn mark_evicted(
    t: &Transaction<'_>,
    scan_id: &str,
    reason: EvictReason,
    bytes: u64,
    transit_since: &str,
) -> store::Result<bool> {
    match pins_of(t, scan_id, transit_since)? {
        Some(p) if p.is_empty() => {}
        _ => return Ok(false),
    }
    let at = store::now_rfc3339();
    t.execute(
        "UPDATE scans SET evicted_at = ?1, evicted_reason = ?2 WHERE scan_id = ?3 AND evicted_at IS NULL",
        params![at, reason.as_str(), scan_id],
    )?;
    audit::append(
        t,
        "retention",
        "scan.evicted",
        Some(scan_id),
        serde_json::json!({"reason": reason.as_str(), "bytes": bytes}),
    )?;
    Ok(true)
}

/// When and why a scan's images were evicted, if they were.
#[derive(Debug, Clone, Serialize)]
pub struct Eviction {
    pub at: String,
    pub reason: String,
}

pub fn eviction_of(c: &Connection, scan_id: &str) -> store::Result<Option<Eviction>> {
    Ok(c.query_row(
        "SELECT evicted_at, evicted_reason FROM scans WHERE scan_id = ?1 AND evicted_at IS NOT NULL",
        [scan_id],
        |r| {
            Ok(Eviction {
                at: r.get(0)?,
                reason: r.get(1)?,
            })
        },
    )
    .optional()?)
}

/// What an operator reads when an evicted scan's image is asked for.
pub fn gone_message(scan_id: &str, e: &Eviction) -> String {
    let why = match e.reason.as_str() {
        "age" => "it was older than retention.max_age_days",
        "quota" => "scan images exceeded retention.max_gb",
        "free_space" => "free disk space was below retention.min_free_gb",
        _ => "of the retention policy",
    };
    format!(
        "the images of scan {scan_id} were deleted by retention at {} because {why}; its verdicts and audit trail are kept",
        e.at
    )
}

/// Errors of pinning.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("no scan {0} is stored on this node (check the id on the queue page)")]
    NoSuchScan(String),
    #[error(
        "scan {scan_id}'s images were already evicted at {at}; pinning cannot bring them back"
    )]
    Evicted { scan_id: String, at: String },
    #[error("no node database at {} (give the node's data dir with --data-dir)", .0.display())]
    NoDatabase(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pins (or unpins) a scan, with its audit line. Returns whether anything changed.
pub fn set_pin(
    t: &Transaction<'_>,
    scan_id: &str,
    pinned: bool,
    actor: &str,
    note: Option<&str>,
) -> Result<bool, PinError> {
    let row: Option<Option<String>> = t
        .query_row(
            "SELECT evicted_at FROM scans WHERE scan_id = ?1",
            [scan_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    match row {
        None => return Err(PinError::NoSuchScan(scan_id.to_string())),
        Some(Some(at)) if pinned => {
            return Err(PinError::Evicted {
                scan_id: scan_id.to_string(),
                at,
            })
        }
        _ => {}
    }
    let changed = if pinned {
        t.execute(
            "INSERT OR IGNORE INTO scan_pins(scan_id, pinned_by, pinned_at, note) VALUES (?1, ?2, ?3, ?4)",
            params![scan_id, actor, store::now_rfc3339(), note],
        )
        .map_err(StoreError::from)?
    } else {
        t.execute("DELETE FROM scan_pins WHERE scan_id = ?1", [scan_id])
            .map_err(StoreError::from)?
    };
    if changed > 0 {
        audit::append(
            t,
            actor,
            if pinned {
                "scan.pinned"
            } else {
                "scan.unpinned"
            },
            Some(scan_id),
            serde_json::json!({"note": note}),
        )?;
    }
    Ok(changed > 0)
}

/// `riac-node pin|unpin SCAN_ID`: sets the admin pin in the node's database (the running
/// node sees it on its next pass). Returns what to print.
pub async fn pin_cli(
    data_dir: &Path,
    scan_id: &str,
    pinned: bool,
    note: Option<String>,
) -> Result<String, PinError> {
    let db = crate::config::db_in(data_dir);
    if !db.is_file() {
        return Err(PinError::NoDatabase(db));
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|_| StoreError::Closed)??;
    let id = scan_id.to_string();
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    );
    let r = store
        .write(move |t| Ok(set_pin(t, &id, pinned, &actor, note.as_deref())))
        .await;
    store.close().await;
    let changed = r??;
    Ok(match (pinned, changed) {
        (true, true) => format!("scan {scan_id} pinned: retention keeps its images"),
        (true, false) => format!("scan {scan_id} was already pinned"),
        (false, true) => format!("scan {scan_id} unpinned: retention may evict its images unless another rule keeps them"),
        (false, false) => format!("scan {scan_id} was not pinned"),
    })
}

pub fn is_pinned_by_admin(c: &Connection, scan_id: &str) -> store::Result<bool> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM scan_pins WHERE scan_id = ?1)",
        [scan_id],
        |r| r.get(0),
    )?)
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    Ok(crate::fsx::space(path)?.free)
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Intake refused: the data dir's file system is below the free-space floor.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node's disk is full: {free_mb} MB free on {dir}, below the floor of {floor_mb} MB (retention.min_free_gb) and nothing more may be evicted; the scan was not stored, it is taken again once space returns")]
pub struct DiskFull {
    pub dir: PathBuf,
    pub free_mb: u64,
    pub floor_mb: u64,
}

/// The intake gate, shared by the ingestor and the retention task.
#[derive(Clone)]
pub struct DiskGuard {
    inner: Arc<GuardInner>,
}

struct GuardInner {
    dir: PathBuf,
    floor: u64,
    full: AtomicBool,
    free: AtomicU64,
    /// Evictable bytes the last pass saw; 0 until a pass has run (then a refusal does not
    /// wait on a pass that may never free anything).
    evictable: AtomicU64,
    kick: Notify,
    /// Counts finished passes; [`DiskGuard::admit`] waits for the next one.
    passes: tokio::sync::watch::Sender<u64>,
    measure: Measure,
}

type Measure = Box<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// How long an ingest waits for a retention pass to free space before it refuses.
pub const ADMIT_WAIT: Duration = Duration::from_secs(15);

impl DiskGuard {
    pub fn new(data_dir: &Path, min_free_bytes: u64) -> Self {
        Self::with_measure(data_dir, min_free_bytes, Box::new(free_bytes))
    }

    fn with_measure(data_dir: &Path, min_free_bytes: u64, measure: Measure) -> Self {
        DiskGuard {
            inner: Arc::new(GuardInner {
                dir: data_dir.to_path_buf(),
                floor: min_free_bytes,
                full: AtomicBool::new(false),
                free: AtomicU64::new(u64::MAX),
                evictable: AtomicU64::new(0),
                kick: Notify::new(),
                passes: tokio::sync::watch::channel(0).0,
                measure,
            }),
        }
    }

    /// The gate before each ingest. Enough space: admitted. Below the floor with scans the
    /// last pass could evict: wakes a pass, waits for it (at most [`ADMIT_WAIT`]) and checks
    /// again. Still short, or nothing evictable: it refuses and raises the alert.
    pub async fn admit(&self) -> Result<(), DiskFull> {
        let g = &self.inner;
        match (g.measure)(&g.dir) {
            Ok(free) if free < g.floor => {}
            // Enough space (the common case: one statvfs), or an unreadable figure, which
            // must not stop intake; the write itself will tell.
            Ok(free) => {
                g.free.store(free, Ordering::Relaxed);
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
        if g.evictable.load(Ordering::Relaxed) > 0 {
            let mut passes = g.passes.subscribe();
            passes.borrow_and_update();
            g.kick.notify_one();
            let _ = tokio::time::timeout(ADMIT_WAIT, passes.changed()).await;
        }
        self.check()
    }

    /// Checks the free space now (one statvfs). Below the floor: raises the alert, wakes
    /// the retention pass and refuses.
    fn check(&self) -> Result<(), DiskFull> {
        let g = &self.inner;
        let free = match (g.measure)(&g.dir) {
            Ok(f) => f,
            // An unreadable figure must not stop intake; the write itself will tell.
            Err(_) => return Ok(()),
        };
        g.free.store(free, Ordering::Relaxed);
        if free >= g.floor {
            return Ok(());
        }
        if !g.full.swap(true, Ordering::Relaxed) {
            tracing::error!(
                free_mb = free >> 20,
                floor_mb = g.floor >> 20,
                "disk space below the floor: intake paused until retention frees space"
            );
        }
        g.kick.notify_one();
        Err(DiskFull {
            dir: g.dir.clone(),
            free_mb: free >> 20,
            floor_mb: g.floor >> 20,
        })
    }

    /// Whether intake is paused for lack of space.
    pub fn is_full(&self) -> bool {
        self.inner.full.load(Ordering::Relaxed)
    }

    /// Records the figures of a finished pass, clears the alert when space is back, and
    /// releases the ingests waiting in [`DiskGuard::admit`]. Returns whether still full.
    fn pass_finished(&self, free: u64, evictable: u64) -> bool {
        let g = &self.inner;
        g.evictable.store(evictable, Ordering::Relaxed);
        let full = self.set(free);
        g.passes.send_modify(|n| *n += 1);
        full
    }

    fn set(&self, free: u64) -> bool {
        let g = &self.inner;
        g.free.store(free, Ordering::Relaxed);
        let full = free < g.floor;
        let was = g.full.swap(full, Ordering::Relaxed);
        if was && !full {
            tracing::info!(
                free_mb = free >> 20,
                "disk space back above the floor: intake resumes"
            );
        }
        full
    }

    pub fn floor(&self) -> u64 {
        self.inner.floor
    }
}

/// The figures of the last pass, for the status page and the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionStatus {
    pub last_pass_at: Option<String>,
    pub used_bytes: u64,
    pub max_bytes: Option<u64>,
    pub free_bytes: u64,
    pub min_free_bytes: u64,
    pub evictable_bytes: u64,
    pub scans_kept: u64,
    pub pinned_scans: u64,
    /// Pinned scans by reason (a scan with two reasons counts under both).
    pub pinned_by_reason: HashMap<&'static str, u64>,
    pub evicted_last_pass: u64,
    pub last_eviction_at: Option<String>,
    /// The oldest evictable scan: the next to go when a limit is reached.
    pub next_candidate: Option<NextCandidate>,
    pub disk_full: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NextCandidate {
    pub scan_id: String,
    pub received_at: String,
    pub bytes: u64,
    /// When it will be too old (max age), if an age limit is set.
    pub ages_out_at: Option<String>,
}

/// Handle shared with the web server: the latest figures and a way to run a pass now.
#[derive(Clone)]
pub struct Retention {
    status: Arc<Mutex<RetentionStatus>>,
    guard: DiskGuard,
}

impl Retention {
    pub fn new(guard: DiskGuard) -> Self {
        Retention {
            status: Arc::new(Mutex::new(RetentionStatus::default())),
            guard,
        }
    }

    pub fn status(&self) -> RetentionStatus {
        let mut s = self.status.lock().expect("retention status").clone();
        s.disk_full = self.guard.is_full();
        s
    }

    /// Asks the task for a pass now.
    pub fn kick(&self) {
        self.guard.inner.kick.notify_one();
    }

    pub fn guard(&self) -> &DiskGuard {
        &self.guard
    }
}

/// Errors of one pass. Logged; the next pass tries again.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the free space of {path}: {source}")]
    Statvfs {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub evicted: Vec<(String, EvictReason)>,
    pub leftovers_removed: usize,
    /// Received entry packages whose image was removed (see [`prune_entry_packages`]).
    pub entry_packages_evicted: Vec<String>,
    /// Files and folders deleted from `<data_dir>/rejected/` (see [`prune_rejected`]).
    pub rejected_removed: usize,
}

fn ts_before(d: Duration) -> String {
    store::format_ts(time::OffsetDateTime::now_utc() - d)
}

/// One retention pass: remove leftovers of evicted scans, plan, commit the evictions with
/// their audit lines, delete their files, update the figures.
pub async fn run_pass(
    cfg: &Config,
    store: &Store,
    metrics: &Metrics,
    handle: &Retention,
) -> Result<PassReport, RetentionError> {
    let r = &cfg.retention;
    let transit_since = ts_before(cfg.transit.unpaired_after);
    let data_dir = cfg.data_dir.clone();
    let mut report = PassReport::default();

    // Leftovers: evicted scans and entry packages whose directory survived a crash (or a
    // failed delete) after the commit.
    let (leftovers, leftover_pkgs): (Vec<String>, Vec<String>) = store
        .read(|c| {
            let list = |sql: &str| -> rusqlite::Result<Vec<String>> {
                let mut st = c.prepare(sql)?;
                let v = st.query_map([], |r| r.get(0))?.collect();
                v
            };
            Ok((
                list("SELECT image_dir FROM scans WHERE evicted_at IS NOT NULL")?,
                list("SELECT image_path FROM entry_packages WHERE evicted_at IS NOT NULL")?,
            ))
        })
        .await?;
    let ts = transit_since.clone();
    let mut cands = store.read(move |c| candidates(c, &ts)).await?;
    let dd = data_dir.clone();
    let (cands_sized, removed, free) = tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        for rel in leftovers {
            if remove_scan_dir(&dd, &rel) {
                removed += 1;
            }
        }
        for rel in &leftover_pkgs {
            remove_package_dir(&dd, rel);
        }
        for c in &mut cands {
            c.bytes = dir_bytes(&dd.join(&c.image_dir));
        }
        let free = free_bytes(&dd).map_err(|source| RetentionError::Statvfs {
            path: dd.clone(),
            source,
        });
        (cands, removed, free)
    })
    .await
    .map_err(|_| StoreError::Closed)?;
    let cands = cands_sized;
    let free = free?;
    report.leftovers_removed = removed;
    if removed > 0 {
        tracing::info!(
            count = removed,
            "removed image directories of scans evicted before a crash"
        );
    }
    let used: u64 = cands.iter().map(|c| c.bytes).sum();
    let limits = Limits {
        age_cutoff: r.max_age.map(ts_before),
        max_bytes: r.max_bytes,
        min_free_bytes: r.min_free_bytes,
    };
    let chosen = plan(
        &cands,
        &limits,
        Usage {
            used_bytes: used,
            free_bytes: free,
        },
    );

    if !chosen.is_empty() {
        let batch: Vec<(String, EvictReason, u64)> = chosen
            .iter()
            .map(|&(i, why)| (cands[i].scan_id.clone(), why, cands[i].bytes))
            .collect();
        let ts = transit_since.clone();
        let done: Vec<(String, EvictReason)> = store
            .write(move |t| {
                let mut done = Vec::new();
                for (id, why, bytes) in batch {
                    if mark_evicted(t, &id, why, bytes, &ts)? {
                        done.push((id, why));
                    }
                }
                Ok(done)
            })
            .await?;
        let dirs: HashMap<&str, &str> = cands
            .iter()
            .map(|c| (c.scan_id.as_str(), c.image_dir.as_str()))
            .collect();
        let to_remove: Vec<String> = done
            .iter()
            .filter_map(|(id, _)| dirs.get(id.as_str()).map(|d| d.to_string()))
            .collect();
        let dd = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            for rel in to_remove {
                remove_scan_dir(&dd, &rel);
            }
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        for (id, why) in &done {
            tracing::info!(scan_id = %id, reason = why.as_str(), "scan images evicted");
        }
        report.evicted = done;
    }

    // Received entry packages nothing here needs any more.
    let ts = transit_since.clone();
    let pruned = store.write(move |t| prune_entry_packages(t, &ts)).await?;
    let dd = data_dir.clone();
    let dirs: Vec<String> = pruned.iter().map(|(_, p)| p.clone()).collect();
    tokio::task::spawn_blocking(move || {
        for rel in &dirs {
            remove_package_dir(&dd, rel);
        }
    })
    .await
    .map_err(|_| StoreError::Closed)?;
    if !pruned.is_empty() {
        tracing::info!(
            count = pruned.len(),
            "entry package images removed: no exit scan here needs them any more"
        );
    }
    report.entry_packages_evicted = pruned.into_iter().map(|(id, _)| id).collect();

    // Rejected drops past `retention.rejected_days`.
    if let Some(age) = r.rejected_max_age {
        let dir = cfg.rejected_dir();
        let removed = tokio::task::spawn_blocking(move || prune_rejected(&dir, age))
            .await
            .map_err(|_| StoreError::Closed)?;
        if removed > 0 {
            tracing::info!(
                count = removed,
                "old rejected drops deleted (retention.rejected_days)"
            );
        }
        report.rejected_removed = removed;
    }

    // Figures after the pass.
    let dd = data_dir.clone();
    let free_after = tokio::task::spawn_blocking(move || free_bytes(&dd))
        .await
        .map_err(|_| StoreError::Closed)?
        .unwrap_or(free);
    let evicted_ids: std::collections::HashSet<&str> =
        report.evicted.iter().map(|(s, _)| s.as_str()).collect();
    let kept: Vec<&Candidate> = cands
        .iter()
        .filter(|c| !evicted_ids.contains(c.scan_id.as_str()))
        .collect();
    let mut st = RetentionStatus {
        last_pass_at: Some(store::now_rfc3339()),
        used_bytes: kept.iter().map(|c| c.bytes).sum(),
        max_bytes: r.max_bytes,
        free_bytes: free_after,
        min_free_bytes: r.min_free_bytes,
        evictable_bytes: kept
            .iter()
            .filter(|c| c.pins.is_empty())
            .map(|c| c.bytes)
            .sum(),
        scans_kept: kept.len() as u64,
        pinned_scans: kept.iter().filter(|c| !c.pins.is_empty()).count() as u64,
        evicted_last_pass: report.evicted.len() as u64,
        ..Default::default()
    };
    for c in &kept {
        for p in &c.pins {
            *st.pinned_by_reason.entry(p.as_str()).or_default() += 1;
        }
    }
    st.next_candidate = kept
        .iter()
        .find(|c| c.pins.is_empty())
        .map(|c| NextCandidate {
            scan_id: c.scan_id.clone(),
            received_at: c.received_at.clone(),
            bytes: c.bytes,
            ages_out_at: r.max_age.and_then(|age| {
                time::OffsetDateTime::parse(
                    &c.received_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
                .map(|t| store::format_ts(t + age))
            }),
        });
    {
        let mut s = handle.status.lock().expect("retention status");
        st.last_eviction_at = if report.evicted.is_empty() {
            s.last_eviction_at.clone()
        } else {
            st.last_pass_at.clone()
        };
        st.disk_full = handle.guard.pass_finished(free_after, st.evictable_bytes);
        metrics.set_retention(&st, report.evicted.len() as u64);
        *s = st;
    }
    Ok(report)
}

/// Marks the images of received entry packages evicted, with an `entry_package.evicted`
/// audit line each, when no exit scan here needs them: a package is kept while it is within
/// the transit window (received after `transit_since`) with no exit scan of its declaration
/// here yet, and while an exit scan of its declaration here still has its images (its
/// transit view shows the entry). Returns (entry scan id, image path) of those marked; the
/// caller deletes their directories after the commit.
pub fn prune_entry_packages(
    t: &Transaction<'_>,
    transit_since: &str,
) -> store::Result<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = {
        let mut st = t.prepare(
            "SELECT e.entry_scan_id, e.image_path FROM entry_packages e
             WHERE e.evicted_at IS NULL
               AND NOT (e.received_at > ?1
                        AND NOT EXISTS (SELECT 1 FROM scans x
                                        WHERE x.declaration_number = e.declaration_number
                                          AND x.direction = 'exit'))
               AND NOT EXISTS (SELECT 1 FROM scans x
                               WHERE x.declaration_number = e.declaration_number
                                 AND x.direction = 'exit' AND x.evicted_at IS NULL)
             ORDER BY e.received_at",
        )?;
        let v = st
            .query_map([transit_since], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        v
    };
    let at = store::now_rfc3339();
    for (id, _) in &rows {
        t.execute(
            "UPDATE entry_packages SET evicted_at = ?1 WHERE entry_scan_id = ?2",
            params![at, id],
        )?;
        audit::append(
            t,
            "retention",
            "entry_package.evicted",
            Some(id),
            serde_json::json!({"reason": "no exit scan here needs it (transit window over, or its exit scans evicted)"}),
        )?;
    }
    Ok(rows)
}

/// Deletes what was moved into `rejected/` longer than `max_age` ago: files, and the
/// `<name>.earlier-N/` folders that keep an earlier rejection of a drop with the same name.
/// The age is the entry's status-change time, which the move into `rejected/` sets (the
/// modification time is the scanner's). Returns how many entries it deleted.
pub fn prune_rejected(dir: &Path, max_age: Duration) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let Some(cutoff) = std::time::SystemTime::now()
        .checked_sub(max_age)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if meta.ctime() >= cutoff.as_secs() as i64 {
            continue;
        }
        let gone = if meta.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    removed
}

/// Removes the directory of a received entry package's image (`entries/<id>/image.png`).
/// Refuses any path that leaves `<data_dir>/entries` or is not one package's folder.
fn remove_package_dir(data_dir: &Path, image_path: &str) {
    match Path::new(image_path).parent() {
        Some(dir) if dir.components().count() == 2 => {
            remove_dir_under(data_dir, "entries", dir);
        }
        _ => tracing::error!(
            image_path,
            "refusing to delete an entry package directory outside <data_dir>/entries"
        ),
    }
}

/// Removes a scan directory (relative to the data dir) and syncs its parent. Refuses any
/// path that leaves `<data_dir>/scans`.
fn remove_scan_dir(data_dir: &Path, rel: &str) -> bool {
    remove_dir_under(data_dir, "scans", Path::new(rel))
}

/// Removes `<data_dir>/<rel>` and syncs its parent; whether it removed something. Refuses
/// (with an error logged) any `rel` that is not a plain path below `<data_dir>/<root>`.
fn remove_dir_under(data_dir: &Path, root: &str, rel: &Path) -> bool {
    let inside = rel.starts_with(root)
        && rel.components().count() > 1
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        tracing::error!(
            path = %rel.display(),
            "refusing to delete a directory outside <data_dir>/{root}"
        );
        return false;
    }
    let p = data_dir.join(rel);
    if !p.exists() {
        return false;
    }
    match std::fs::remove_dir_all(&p) {
        Ok(()) => {
            if let Some(parent) = p.parent() {
                let _ = crate::fsx::sync_dir(parent);
            }
            true
        }
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot delete an evicted directory; the next pass retries");
            false
        }
    }
}

/// The retention task: a pass at start, then every `retention.interval` or when intake
/// finds the disk full, until the token is cancelled.
pub async fn run(
    cfg: Arc<Config>,
    store: Store,
    metrics: Metrics,
    handle: Retention,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
            _ = handle.guard.inner.kick.notified() => {}
        }
        tokio::select! {
            _ = token.cancelled() => break,
            r = run_pass(&cfg, &store, &metrics, &handle) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "retention pass failed; the next one retries");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_guard(floor: u64) -> (DiskGuard, Arc<AtomicU64>) {
        let free = Arc::new(AtomicU64::new(floor / 2));
        let f = free.clone();
        let g = DiskGuard::with_measure(
            Path::new("/nonexistent"),
            floor,
            Box::new(move |_| Ok(f.load(Ordering::Relaxed))),
        );
        (g, free)
    }

    #[tokio::test]
    async fn below_the_floor_intake_waits_for_eviction_and_refuses_only_when_nothing_frees() {
        // Nothing evictable (or no pass yet): refused at once, with the alert.
        let (g, _free) = fake_guard(100 << 20);
        let t0 = tokio::time::Instant::now();
        assert!(g.admit().await.is_err());
        assert!(g.is_full());
        assert!(t0.elapsed() < Duration::from_secs(1));

        // Evictable scans: the ingest waits for the pass it woke; the pass frees space, so
        // the scan is admitted and no alert is raised.
        let (g, free) = fake_guard(100 << 20);
        g.pass_finished(50 << 20, 30 << 20);
        assert!(g.is_full(), "a pass below the floor keeps the alert");
        g.pass_finished(150 << 20, 30 << 20);
        assert!(!g.is_full());
        free.store(50 << 20, Ordering::Relaxed);
        let pass = {
            let (g, free) = (g.clone(), free.clone());
            tokio::spawn(async move {
                g.inner.kick.notified().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                free.store(150 << 20, Ordering::Relaxed);
                g.pass_finished(150 << 20, 0);
            })
        };
        let t0 = tokio::time::Instant::now();
        assert!(g.admit().await.is_ok());
        assert!(!g.is_full());
        assert!(t0.elapsed() >= Duration::from_millis(300) && t0.elapsed() < ADMIT_WAIT);
        pass.await.unwrap();

        // The pass could not free enough: refused after that pass, not after the timeout.
        free.store(50 << 20, Ordering::Relaxed);
        g.pass_finished(50 << 20, 10 << 20);
        let pass = {
            let g = g.clone();
            tokio::spawn(async move {
                g.inner.kick.notified().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                g.pass_finished(60 << 20, 0);
            })
        };
        let t0 = tokio::time::Instant::now();
        let e = g.admit().await.unwrap_err();
        assert!(t0.elapsed() < ADMIT_WAIT);
        assert_eq!(e.floor_mb, 100);
        assert!(g.is_full());
        pass.await.unwrap();
    }

    fn cand(id: &str, at: &str, bytes: u64, pins: Vec<PinReason>) -> Candidate {
        Candidate {
            scan_id: id.into(),
            received_at: at.into(),
            image_dir: format!("scans/{id}"),
            bytes,
            pins,
        }
    }

    fn ids(c: &[Candidate], p: &[(usize, EvictReason)]) -> Vec<(String, EvictReason)> {
        p.iter().map(|&(i, r)| (c[i].scan_id.clone(), r)).collect()
    }

    #[test]
    fn plan_evicts_oldest_first_and_skips_pins() {
        let c = vec![
            cand("A", "2026-01-01T00:00:00.000Z", 100, vec![]),
            cand("B", "2026-01-02T00:00:00.000Z", 100, vec![PinReason::Alert]),
            cand("C", "2026-01-03T00:00:00.000Z", 100, vec![]),
            cand("D", "2026-01-04T00:00:00.000Z", 100, vec![]),
        ];
        // Quota 250 of 400 used: the two oldest unpinned go (A, C), B is pinned.
        let lim = Limits {
            age_cutoff: None,
            max_bytes: Some(250),
            min_free_bytes: 0,
        };
        let u = Usage {
            used_bytes: 400,
            free_bytes: 1000,
        };
        assert_eq!(
            ids(&c, &plan(&c, &lim, u)),
            vec![
                ("A".to_string(), EvictReason::Quota),
                ("C".to_string(), EvictReason::Quota)
            ]
        );
        // Age: everything before Jan 3 is too old, but B is pinned.
        let lim = Limits {
            age_cutoff: Some("2026-01-03T00:00:00.000Z".into()),
            max_bytes: None,
            min_free_bytes: 0,
        };
        assert_eq!(
            ids(&c, &plan(&c, &lim, u)),
            vec![("A".to_string(), EvictReason::Age)]
        );
        // Free-space floor: 50 free, floor 220: A, C and D go (each gives back 100)... until
        // the floor is met: after A 150, after C 250.
        let lim = Limits {
            age_cutoff: None,
            max_bytes: None,
            min_free_bytes: 220,
        };
        let u2 = Usage {
            used_bytes: 400,
            free_bytes: 50,
        };
        assert_eq!(
            ids(&c, &plan(&c, &lim, u2)),
            vec![
                ("A".to_string(), EvictReason::FreeSpace),
                ("C".to_string(), EvictReason::FreeSpace)
            ]
        );
        // Within limits: nothing.
        let lim = Limits {
            age_cutoff: Some("2025-01-01T00:00:00.000Z".into()),
            max_bytes: Some(1000),
            min_free_bytes: 10,
        };
        assert!(plan(&c, &lim, u).is_empty());
        // Everything pinned: nothing, whatever the pressure.
        let pinned: Vec<Candidate> = c
            .iter()
            .cloned()
            .map(|mut x| {
                x.pins = vec![PinReason::Admin];
                x
            })
            .collect();
        assert!(plan(&pinned, &lim, u2).is_empty());
    }

    struct Db {
        _dir: tempfile::TempDir,
        _store: Store,
        c: Connection,
    }

    fn db() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        let store = Store::open(&p).unwrap();
        let c = Connection::open(&p).unwrap();
        Db {
            _dir: dir,
            _store: store,
            c,
        }
    }

    fn scan(c: &Connection, id: &str, received: &str, direction: &str, regime: &str, decl: &str) {
        c.execute(
            "INSERT INTO scans(scan_id, received_at, scanned_at, scanner_id, site_id, direction, regime,
                declaration_number, container_ids, sidecar, source, content_sha256, image_dir, original_file,
                width, height, source_format, source_bits, pixel_meaning, state)
             VALUES (?1, ?2, ?2, 'S', 'X', ?3, ?4, ?5, '[]', '{}', 'http', 'h', 'scans/' || ?1, 'a.png',
                10, 10, 'png', 16, 'transmission', 'decided')",
            params![id, received, direction, regime, decl],
        )
        .unwrap();
    }

    fn verdict(c: &Connection, seq: i64, scan_id: &str, outcome: &str, by: &str) {
        c.execute(
            "INSERT INTO verdicts(seq, verdict_id, scan_id, decided_at, outcome, decided_by, body, hash)
             VALUES (?1, 'v' || ?1, ?2, 't', ?3, ?4, '{}', 'h')",
            params![seq, scan_id, outcome, by],
        )
        .unwrap();
    }

    fn pins(c: &Connection, id: &str) -> Vec<PinReason> {
        pins_of(c, id, "2026-06-01T00:00:00.000Z").unwrap().unwrap()
    }

    const OLD: &str = "2026-01-01T00:00:00.000Z";
    const RECENT: &str = "2026-07-01T00:00:00.000Z";

    #[test]
    fn every_pinning_rule() {
        let d = db();
        let c = &d.c;
        // A plain cleared scan: evictable.
        scan(c, "CLEAR", OLD, "import", "import", "D1");
        verdict(c, 1, "CLEAR", "clear", "auto");
        assert!(pins(c, "CLEAR").is_empty());

        // No verdict yet.
        scan(c, "NEW", OLD, "import", "import", "D2");
        c.execute(
            "UPDATE scans SET state = 'ingested' WHERE scan_id = 'NEW'",
            [],
        )
        .unwrap();
        assert_eq!(pins(c, "NEW"), vec![PinReason::Undecided]);

        // Auto refer, no operator yet: under review; once an operator cleared it, free.
        scan(c, "REF", OLD, "import", "import", "D3");
        verdict(c, 2, "REF", "refer", "auto");
        assert_eq!(pins(c, "REF"), vec![PinReason::UnderReview]);
        verdict(c, 3, "REF", "clear", "alice");
        assert!(pins(c, "REF").is_empty());

        // Alert: pinned, and still pinned after an operator confirmed it.
        scan(c, "ALR", OLD, "import", "import", "D4");
        verdict(c, 4, "ALR", "alert", "auto");
        assert_eq!(
            pins(c, "ALR"),
            vec![PinReason::Alert, PinReason::UnderReview]
        );
        verdict(c, 5, "ALR", "alert", "bob");
        assert_eq!(pins(c, "ALR"), vec![PinReason::Alert]);
        // An alert overridden to clear is no longer pinned.
        verdict(c, 6, "ALR", "clear", "bob");
        assert!(pins(c, "ALR").is_empty());

        // A verdict still in the outbox.
        scan(c, "OUT", OLD, "import", "import", "D5");
        verdict(c, 7, "OUT", "clear", "auto");
        c.execute(
            "INSERT INTO outbox(kind, ref, topic, payload, created_at) VALUES ('verdict', 'v7', 't', x'00', 't')",
            [],
        )
        .unwrap();
        assert_eq!(pins(c, "OUT"), vec![PinReason::Outbox]);
        c.execute("DELETE FROM outbox", []).unwrap();
        assert!(pins(c, "OUT").is_empty());

        // A transit entry within the window with no exit here; outside the window, free;
        // once its exit is scanned here, free.
        scan(c, "ENT", RECENT, "entry", "transit", "T1");
        verdict(c, 8, "ENT", "clear", "auto");
        assert_eq!(pins(c, "ENT"), vec![PinReason::TransitEntry]);
        scan(c, "ENT-OLD", OLD, "entry", "transit", "T2");
        verdict(c, 9, "ENT-OLD", "clear", "auto");
        assert!(pins(c, "ENT-OLD").is_empty());
        scan(c, "EXIT", RECENT, "exit", "transit", "T1");
        verdict(c, 10, "EXIT", "clear", "auto");
        assert!(pins(c, "ENT").is_empty());

        // An exit awaiting its entry.
        c.execute(
            "INSERT INTO transit_awaiting(exit_scan_id, verdict_id, declaration_number, since) VALUES ('EXIT', 'v10', 'T1', 't')",
            [],
        )
        .unwrap();
        assert_eq!(pins(c, "EXIT"), vec![PinReason::AwaitingEntry]);

        // An entry whose package is not sent yet.
        c.execute(
            "INSERT INTO entry_outgoing(scan_id, exit_site, state, updated_at) VALUES ('ENT-OLD', 'TKM', 'deferred', 't')",
            [],
        )
        .unwrap();
        assert_eq!(pins(c, "ENT-OLD"), vec![PinReason::EntryPackage]);
        c.execute("UPDATE entry_outgoing SET state = 'sent'", [])
            .unwrap();
        assert!(pins(c, "ENT-OLD").is_empty());

        // Admin pin and unpin, audited; pinning an unknown scan names it.
        let mut c2 = Connection::open(c.path().unwrap()).unwrap();
        let t = c2.transaction().unwrap();
        assert!(set_pin(&t, "CLEAR", true, "admin1", Some("court case 12")).unwrap());
        assert!(!set_pin(&t, "CLEAR", true, "admin1", None).unwrap());
        assert!(matches!(
            set_pin(&t, "NOPE", true, "admin1", None),
            Err(PinError::NoSuchScan(_))
        ));
        t.commit().unwrap();
        assert_eq!(pins(c, "CLEAR"), vec![PinReason::Admin]);
        let t = c2.transaction().unwrap();
        assert!(set_pin(&t, "CLEAR", false, "admin1", None).unwrap());
        t.commit().unwrap();
        assert!(pins(c, "CLEAR").is_empty());
        let actions: Vec<String> = c
            .prepare("SELECT action FROM audit WHERE subject = 'CLEAR' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(actions, vec!["scan.pinned", "scan.unpinned"]);

        // The listing is oldest first and only holds scans not evicted.
        let all = candidates(c, "2026-06-01T00:00:00.000Z").unwrap();
        assert_eq!(all.first().unwrap().received_at, OLD);
        assert_eq!(all.last().unwrap().received_at, RECENT);
    }

    #[test]
    fn eviction_rechecks_pins_and_audits() {
        let d = db();
        let c = &d.c;
        scan(c, "A", OLD, "import", "import", "D1");
        verdict(c, 1, "A", "clear", "auto");
        scan(c, "B", OLD, "import", "import", "D2");
        verdict(c, 2, "B", "alert", "auto");
        let mut c2 = Connection::open(c.path().unwrap()).unwrap();
        let t = c2.transaction().unwrap();
        let since = "2026-06-01T00:00:00.000Z";
        assert!(mark_evicted(&t, "A", EvictReason::Quota, 10, since).unwrap());
        // Pinned at commit time: refused even though a plan chose it.
        assert!(!mark_evicted(&t, "B", EvictReason::Quota, 10, since).unwrap());
        // Already evicted: not twice.
        assert!(!mark_evicted(&t, "A", EvictReason::Quota, 10, since).unwrap());
        t.commit().unwrap();
        let e = eviction_of(c, "A").unwrap().unwrap();
        assert_eq!(e.reason, "quota");
        assert!(gone_message("A", &e).contains("retention.max_gb"));
        assert!(eviction_of(c, "B").unwrap().is_none());
        let (action, detail): (String, String) = c
            .query_row(
                "SELECT action, detail FROM audit WHERE subject = 'A'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(action, "scan.evicted");
        assert!(detail.contains("\"quota\""), "{detail}");
        assert!(candidates(c, since)
            .unwrap()
            .iter()
            .all(|x| x.scan_id != "A"));
        // Pinning an evicted scan says it is too late.
        let t = c2.transaction().unwrap();
        assert!(matches!(
            set_pin(&t, "A", true, "admin", None),
            Err(PinError::Evicted { .. })
        ));
    }

    #[tokio::test]
    async fn pin_cli_pins_and_names_missing_things() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            pin_cli(d.path(), "A", true, None).await,
            Err(PinError::NoDatabase(_))
        ));
        let db = d.path().join("riac-node.db");
        Store::open(&db).unwrap().close().await;
        let c = Connection::open(&db).unwrap();
        scan(&c, "A", OLD, "import", "import", "D1");
        let msg = pin_cli(d.path(), "A", true, Some("case 7".into()))
            .await
            .unwrap();
        assert!(msg.contains("pinned"), "{msg}");
        assert!(is_pinned_by_admin(&c, "A").unwrap());
        let e = pin_cli(d.path(), "B", true, None).await.unwrap_err();
        assert!(e.to_string().contains("no scan B"), "{e}");
        pin_cli(d.path(), "A", false, None).await.unwrap();
        assert!(!is_pinned_by_admin(&c, "A").unwrap());
    }

    fn package(c: &Connection, id: &str, received: &str, decl: &str) {
        let pkg = crate::store::entries::EntryPackage {
            schema: crate::store::entries::ENTRY_SCHEMA.into(),
            entry_scan_id: id.into(),
            origin_site: "KHI".into(),
            origin_node: "N1".into(),
            exit_site: "TKM".into(),
            declaration_number: decl.into(),
            container_ids: vec![],
            scanned_at: received.into(),
            sidecar: serde_json::json!({}),
            image_width: 10,
            image_height: 10,
            reduction: 1.0,
            pixel_mm: None,
            embeddings: None,
        };
        c.execute(
            "INSERT INTO entry_packages(entry_scan_id, origin_site, exit_site, declaration_number,
                container_ids, scanned_at, received_at, image_path, package)
             VALUES (?1, 'KHI', 'TKM', ?3, '[]', ?2, ?2, 'entries/' || ?1 || '/image.png', ?4)",
            params![id, received, decl, serde_json::to_string(&pkg).unwrap()],
        )
        .unwrap();
    }

    #[test]
    fn entry_packages_are_kept_while_an_exit_here_may_need_them() {
        let d = db();
        let c = &d.c;
        let since = "2026-06-01T00:00:00.000Z";
        package(c, "P-NEW", RECENT, "D1"); // in the window, no exit yet: kept
        package(c, "P-LATE", OLD, "D2"); // window over, no exit came: removed
        package(c, "P-USED", OLD, "D3"); // its exit still has images: kept
        scan(c, "X3", OLD, "exit", "transit", "D3");
        package(c, "P-DONE", RECENT, "D4"); // its exit's images were evicted: removed
        scan(c, "X4", RECENT, "exit", "transit", "D4");
        c.execute(
            "UPDATE scans SET evicted_at = 't', evicted_reason = 'quota' WHERE scan_id = 'X4'",
            [],
        )
        .unwrap();
        let mut c2 = Connection::open(c.path().unwrap()).unwrap();
        let t = c2.transaction().unwrap();
        let mut got = prune_entry_packages(&t, since).unwrap();
        t.commit().unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("P-DONE".to_string(), "entries/P-DONE/image.png".to_string()),
                ("P-LATE".to_string(), "entries/P-LATE/image.png".to_string()),
            ]
        );
        // Audited, not offered to pairing any more, and not pruned twice.
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM audit WHERE action = 'entry_package.evicted'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
        assert!(crate::store::transit::entry_by_id(c, "P-LATE")
            .unwrap()
            .is_none());
        assert!(crate::store::transit::entry_by_id(c, "P-USED")
            .unwrap()
            .is_some());
        let t = c2.transaction().unwrap();
        assert!(prune_entry_packages(&t, since).unwrap().is_empty());
    }

    #[test]
    fn remove_package_dir_stays_inside_entries() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("entries/P1");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("image.png"), b"x").unwrap();
        let scans = dir.path().join("scans/S1");
        std::fs::create_dir_all(&scans).unwrap();
        remove_package_dir(dir.path(), "scans/S1/image.png");
        remove_package_dir(dir.path(), "entries/../scans/S1/image.png");
        remove_package_dir(dir.path(), "entries/image.png");
        assert!(scans.exists() && pkg.exists());
        remove_package_dir(dir.path(), "entries/P1/image.png");
        assert!(!pkg.exists() && dir.path().join("entries").exists());
    }

    #[test]
    fn remove_scan_dir_stays_inside_scans() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("scans/2026/S1")).unwrap();
        std::fs::write(d.path().join("scans/2026/S1/image.png"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("keys")).unwrap();
        assert!(!remove_scan_dir(d.path(), "scans/../keys"));
        assert!(!remove_scan_dir(d.path(), "keys"));
        assert!(d.path().join("keys").exists());
        assert_eq!(dir_bytes(&d.path().join("scans")), 1);
        assert!(remove_scan_dir(d.path(), "scans/2026/S1"));
        assert!(!d.path().join("scans/2026/S1").exists());
        assert!(free_bytes(d.path()).unwrap() > 0);
    }
}
