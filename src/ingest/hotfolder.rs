//! The hot folder: watches the scanner's drop folder and feeds complete drops to the
//! [`Ingestor`]. It owns the drop files' fate: removed once stored, moved to `rejected/`
//! with a `<scan_id>.error.txt` when bad, left in place when the node cannot store them.
//!
//! A drop is taken only when it is complete: the sidecar (written last, by contract) and
//! the image must both be unchanged for `ingest.settle_ms` (size and mtime seen twice), so
//! a scanner still writing, or a contract-breaking one that writes the sidecar first, is
//! never read half-written. Where the files say themselves that they are complete, no
//! settle wait is needed: a file renamed into the folder (inotify `moved_to`) or closed
//! after writing (`close_write`) is whole, so a drop whose sidecar and image both did so
//! is taken at the next tick; the settle wait stays for what events do not show (network
//! shares, drops found by a rescan or at start). A periodic rescan catches what events miss
//! (network shares, overflowed queues) and what arrived while the node was down. This task
//! never decodes images itself.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DropData, IngestError, IngestOutcome, Ingestor, Rejection, Source, MAX_SIDECAR_BYTES};
use crate::config::Config;

/// Size and mtime of a file: what "unchanged" means.
type Sig = (u64, SystemTime);

#[derive(Debug)]
struct Candidate {
    first_seen: Instant,
    last_sig: Option<(Sig, Option<Sig>)>,
    /// Don't look again before this (backoff after a node-side failure).
    not_before: Instant,
    in_flight: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HotFolderError {
    #[error("cannot create or read the hot folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the hot folder {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// What an ingest task reports back to the scheduler.
struct Done {
    sidecar: PathBuf,
    retry_after: Option<Duration>,
}

pub struct HotFolder {
    dir: PathBuf,
    rejected: PathBuf,
    settle: Duration,
    missing_image_timeout: Duration,
    rescan: Duration,
    max_file_bytes: u64,
    ingestor: Ingestor,
}

const TICK: Duration = Duration::from_millis(200);
/// Files remembered as whole at most; beyond it new ones wait the settle time instead.
const MAX_WHOLE: usize = 10_000;
const RETRY_AFTER_NODE_ERROR: Duration = Duration::from_secs(30);

/// What a watcher event says about its file: `Some(true)` whole (renamed into the folder,
/// the `to` side being the last path of a two-path rename event, or closed after
/// writing), `Some(false)` changing (created, written, renamed away, removed), `None`
/// nothing about its content (reads, attributes).
fn is_whole(kind: &notify::EventKind, last_path: bool) -> Option<bool> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    use notify::EventKind;
    match kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(true),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => Some(last_path),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Name(_)) => {
            Some(false)
        }
        _ => None,
    }
}

impl HotFolder {
    pub fn new(cfg: &Config, ingestor: Ingestor) -> Result<Self, HotFolderError> {
        for d in [&cfg.hot_folder, &cfg.rejected_dir()] {
            fs::create_dir_all(d).map_err(|source| HotFolderError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        Ok(HotFolder {
            dir: cfg.hot_folder.clone(),
            rejected: cfg.rejected_dir(),
            settle: cfg.ingest.settle,
            missing_image_timeout: cfg.ingest.missing_image_timeout,
            rescan: cfg.ingest.rescan,
            max_file_bytes: cfg.ingest.limits.max_file_bytes,
            ingestor,
        })
    }

    /// Runs until `token` is cancelled. Ingests it starts are tracked by `tracker`, so
    /// shutdown waits for them.
    pub async fn run(
        self,
        token: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<(), HotFolderError> {
        let (ev_tx, mut ev_rx) = mpsc::channel::<(PathBuf, Option<bool>)>(1024);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let last = ev.paths.len().saturating_sub(1);
                for (i, p) in ev.paths.into_iter().enumerate() {
                    // A full queue only delays intake until the next rescan.
                    let _ = ev_tx.try_send((p, is_whole(&ev.kind, i == last)));
                }
            }
        })
        .map_err(|source| HotFolderError::Watch {
            path: self.dir.clone(),
            source,
        })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| HotFolderError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        tracing::info!(dir = %self.dir.display(), "watching hot folder");

        let (done_tx, mut done_rx) = mpsc::channel::<Done>(64);
        let mut pending: HashMap<PathBuf, Candidate> = HashMap::new();
        // Files the watcher saw arrive whole (renamed in, or closed after writing).
        let mut whole: HashSet<PathBuf> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut rescan = tokio::time::interval(self.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                Some((p, is_whole)) = ev_rx.recv() => {
                    match is_whole {
                        Some(true) if whole.len() < MAX_WHOLE => { whole.insert(p.clone()); }
                        // Created, written or moved away since: no longer known to be whole.
                        Some(false) => { whole.remove(&p); }
                        _ => {}
                    }
                    self.consider(&mut pending, p);
                }
                Some(done) = done_rx.recv() => {
                    match done.retry_after {
                        Some(d) => if let Some(c) = pending.get_mut(&done.sidecar) {
                            c.in_flight = false;
                            c.last_sig = None;
                            c.not_before = Instant::now() + d;
                        },
                        None => { pending.remove(&done.sidecar); }
                    }
                }
                _ = rescan.tick() => {
                    whole.retain(|p| p.exists());
                    match fs::read_dir(&self.dir) {
                        Ok(entries) => for e in entries.flatten() { self.consider(&mut pending, e.path()) },
                        Err(e) => tracing::error!(dir = %self.dir.display(), error = %e, "cannot list the hot folder"),
                    }
                }
                _ = tick.tick() => self.evaluate(&mut pending, &whole, &done_tx, &token, &tracker).await,
            }
        }
        drop(watcher);
        Ok(())
    }

    fn consider(&self, pending: &mut HashMap<PathBuf, Candidate>, p: PathBuf) {
        if p.parent() != Some(self.dir.as_path())
            || !is_sidecar_name(&p)
            || pending.contains_key(&p)
        {
            return;
        }
        let now = Instant::now();
        pending.insert(
            p,
            Candidate {
                first_seen: now,
                last_sig: None,
                not_before: now,
                in_flight: false,
            },
        );
    }

    async fn evaluate(
        &self,
        pending: &mut HashMap<PathBuf, Candidate>,
        whole: &HashSet<PathBuf>,
        done_tx: &mpsc::Sender<Done>,
        token: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (path, cand) in pending.iter_mut() {
            if cand.in_flight || cand.not_before > now || token.is_cancelled() {
                continue;
            }
            match self.check_ready(path, cand, whole) {
                Readiness::Gone => gone.push(path.clone()),
                Readiness::Wait => {}
                Readiness::Ready(job) => {
                    cand.in_flight = true;
                    let this = self.task_ctx();
                    let done_tx = done_tx.clone();
                    let sidecar = path.clone();
                    tracker.spawn(async move {
                        let retry_after = this.process(&sidecar, job).await;
                        let _ = done_tx
                            .send(Done {
                                sidecar,
                                retry_after,
                            })
                            .await;
                    });
                }
            }
        }
        for p in gone {
            pending.remove(&p);
        }
    }

    fn task_ctx(&self) -> TaskCtx {
        TaskCtx {
            dir: self.dir.clone(),
            rejected: self.rejected.clone(),
            max_file_bytes: self.max_file_bytes,
            ingestor: self.ingestor.clone(),
        }
    }

    /// Decides whether the drop named by `sidecar` is complete. Cheap: stats and one small read.
    fn check_ready(
        &self,
        sidecar: &Path,
        cand: &mut Candidate,
        whole: &HashSet<PathBuf>,
    ) -> Readiness {
        let Some(s_sig) = sig(sidecar) else {
            return Readiness::Gone;
        };
        let settled = |s: &Sig| s.1.elapsed().map(|age| age >= self.settle).unwrap_or(true);
        let sidecar_whole = whole.contains(sidecar);
        if !sidecar_whole && !settled(&s_sig) {
            cand.last_sig = None;
            return Readiness::Wait;
        }
        // The image's name is in the sidecar; a sidecar that doesn't parse is judged by
        // the ingestor (after settling, it is really bad, not half-written).
        let bytes = match read_limited(sidecar, MAX_SIDECAR_BYTES) {
            Ok(b) => b,
            Err(_) => return Readiness::Wait,
        };
        let image_name = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("image")
                    .and_then(|i| i.get("file"))
                    .and_then(|f| f.as_str())
                    .map(str::to_string)
            });
        let image_path = image_name
            .as_deref()
            .filter(|n| crate::scan::check_drop_file_name(n, "image.file").is_ok())
            .map(|n| self.dir.join(n));
        let i_sig = image_path.as_deref().and_then(sig);
        if let (Some(p), None) = (&image_path, &i_sig) {
            // Finish a rejection a crash interrupted: the image already went to rejected/.
            let moved = self.rejected.join(p.file_name().expect("joined name"));
            if !moved.exists() && cand.first_seen.elapsed() < self.missing_image_timeout {
                return Readiness::Wait;
            }
        }
        let image_whole = image_path.as_deref().is_some_and(|p| whole.contains(p));
        if sidecar_whole && image_whole {
            // Both arrived whole: nothing to wait for.
            return Readiness::Ready(Job {
                sidecar_bytes: bytes,
            });
        }
        if let Some(i) = &i_sig {
            if !image_whole && !settled(i) {
                cand.last_sig = None;
                return Readiness::Wait;
            }
        }
        let current = (s_sig, i_sig);
        if cand.last_sig != Some(current) {
            cand.last_sig = Some(current);
            return Readiness::Wait;
        }
        Readiness::Ready(Job {
            sidecar_bytes: bytes,
        })
    }
}

enum Readiness {
    Gone,
    Wait,
    Ready(Job),
}

struct Job {
    sidecar_bytes: Vec<u8>,
}

/// What an ingest task needs, detached from the scheduler's state.
struct TaskCtx {
    dir: PathBuf,
    rejected: PathBuf,
    max_file_bytes: u64,
    ingestor: Ingestor,
}

impl TaskCtx {
    /// Ingests one complete drop and disposes of its files. Returns a retry delay when the
    /// drop must stay (node-side failure), `None` when it has been dealt with.
    async fn process(&self, sidecar: &Path, job: Job) -> Option<Duration> {
        let stem = sidecar
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = match self.ingestor.parse_sidecar(&job.sidecar_bytes) {
            Ok(m) => m,
            Err(rej) => {
                let files = image_names_for_bad_sidecar(&self.dir, &stem, &job.sidecar_bytes);
                let name = rej.scan_id.clone().unwrap_or(stem);
                return self.reject(sidecar, &files, &name, rej).await;
            }
        };
        let files: Vec<String> = std::iter::once(meta.image.file.clone())
            .chain(meta.low_energy_file())
            .collect();
        let image_path = self.dir.join(&meta.image.file);
        let low_path = meta.low_energy_file().map(|n| self.dir.join(n));
        let id = meta.scan_id.clone();
        // Room in the read budget before the files are read: a burst of drops waits here,
        // on disk, instead of in memory in front of the decoders. Held until the drop is
        // stored or refused.
        let size = |p: &Path| fs::symlink_metadata(p).map_or(0, |m| m.len());
        let bytes = size(&image_path) + low_path.as_deref().map_or(0, size);
        let Ok(_reserved) = self.ingestor.reserve_read(bytes).await else {
            return Some(RETRY_AFTER_NODE_ERROR);
        };

        // Off the runtime: a drop's files are megabytes.
        let (ip, lp, rid, max) = (
            image_path.clone(),
            low_path.clone(),
            id.clone(),
            self.max_file_bytes,
        );
        let Ok((image_read, low_read)) = tokio::task::spawn_blocking(move || {
            (
                read_drop_file(&ip, "image.file", &rid, max),
                lp.as_deref()
                    .map(|p| read_drop_file(p, "image.low", &rid, max)),
            )
        })
        .await
        else {
            return Some(RETRY_AFTER_NODE_ERROR);
        };
        let image = match image_read {
            Ok(Some(b)) => b,
            Ok(None) => {
                let moved = self.rejected.join(&meta.image.file);
                let rej = if moved.exists() {
                    Rejection::new(
                        Some(&id),
                        "image.file",
                        "drop was rejected before a restart; see the earlier error file",
                    )
                } else {
                    Rejection::new(
                        Some(&id),
                        "image.file",
                        format!("{:?} was not found in the drop folder", meta.image.file),
                    )
                };
                return self.reject(sidecar, &files, &id, rej).await;
            }
            Err(rej) => return self.reject(sidecar, &files, &id, rej).await,
        };
        let low = match low_read {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(b))) => Some(b),
            Some(Err(rej)) => return self.reject(sidecar, &files, &id, rej).await,
        };
        let data = DropData {
            sidecar: job.sidecar_bytes,
            image,
            low,
        };
        match self.ingestor.ingest(meta, data, Source::HotFolder).await {
            Ok(IngestOutcome::Stored { .. }) | Ok(IngestOutcome::Duplicate { .. }) => {
                remove_drop(sidecar, &self.dir, &files);
                None
            }
            Err(IngestError::Rejected(rej)) => self.move_to_rejected(sidecar, &files, &id, &rej),
            Err(e @ IngestError::Conflict { .. }) => {
                let rej = Rejection::new(Some(&id), "scan_id", e.to_string());
                self.move_to_rejected(sidecar, &files, &id, &rej)
            }
            Err(IngestError::InFlight(_)) => Some(Duration::from_secs(1)),
            Err(IngestError::ShuttingDown) => Some(RETRY_AFTER_NODE_ERROR),
            // Disk full: the drop waits here; retried soon, as retention may free space.
            Err(IngestError::DiskFull(_)) => Some(Duration::from_secs(5)),
            Err(_) => Some(RETRY_AFTER_NODE_ERROR),
        }
    }

    async fn reject(
        &self,
        sidecar: &Path,
        files: &[String],
        name: &str,
        rej: Rejection,
    ) -> Option<Duration> {
        self.ingestor
            .record_rejection(&rej, Source::HotFolder)
            .await;
        self.move_to_rejected(sidecar, files, name, &rej)
    }

    /// Writes `<name>.error.txt` first, then moves the image(s), the sidecar last: a crash
    /// in between leaves a sidecar whose image is already in rejected/, which the next
    /// look finishes.
    fn move_to_rejected(
        &self,
        sidecar: &Path,
        files: &[String],
        name: &str,
        rej: &Rejection,
    ) -> Option<Duration> {
        let text = format!(
            "rejected at {}\nfile: {}\nfield: {}\nreason: {}\n",
            crate::store::now_rfc3339(),
            sidecar
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            rej.field,
            rej.message
        );
        let err_path = self.rejected.join(format!("{name}.error.txt"));
        let tmp = self.rejected.join(format!(".{name}.error.txt.tmp"));
        let sidecar_name = sidecar.file_name().expect("sidecar has a name");
        let write = (|| -> std::io::Result<()> {
            keep_earlier_rejection(&self.rejected, sidecar_name, name, files)?;
            fs::write(&tmp, text.as_bytes())?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &err_path)?;
            for f in files {
                let from = self.dir.join(f);
                if from.is_file() {
                    fs::rename(&from, self.rejected.join(f))?;
                }
            }
            let to = self
                .rejected
                .join(sidecar.file_name().expect("sidecar has a name"));
            fs::rename(sidecar, to)?;
            crate::fsx::sync_dir(&self.rejected)?;
            crate::fsx::sync_dir(&self.dir)
        })();
        match write {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(sidecar = ?sidecar, error = %e, "cannot move the rejected drop to rejected/");
                Some(RETRY_AFTER_NODE_ERROR)
            }
        }
    }
}

/// A drop with this name was rejected before and is complete in `rejected/` (its sidecar,
/// moved last, is there): its files move into `rejected/<name>.earlier-N/` so the new
/// rejection does not overwrite them. A rejection a crash interrupted (image moved, sidecar
/// not) is left alone: it is the same drop, being finished.
fn keep_earlier_rejection(
    rejected: &Path,
    sidecar_name: &std::ffi::OsStr,
    name: &str,
    files: &[String],
) -> std::io::Result<()> {
    if !rejected.join(sidecar_name).exists() {
        return Ok(());
    }
    let mut n = 1;
    let keep = loop {
        let d = rejected.join(format!("{name}.earlier-{n}"));
        if !d.exists() {
            break d;
        }
        n += 1;
    };
    fs::create_dir(&keep)?;
    let error_txt = std::ffi::OsString::from(format!("{name}.error.txt"));
    let names = std::iter::once(sidecar_name.to_os_string())
        .chain(std::iter::once(error_txt))
        .chain(files.iter().map(std::ffi::OsString::from));
    for f in names {
        let from = rejected.join(&f);
        if from.is_file() {
            fs::rename(&from, keep.join(&f))?;
        }
    }
    crate::fsx::sync_dir(&keep)?;
    crate::fsx::sync_dir(rejected)
}

/// Sidecar first: if we crash after it is gone, an orphan image remains (harmless); the
/// other order could leave a sidecar whose image is gone, which would be misreported.
fn remove_drop(sidecar: &Path, dir: &Path, files: &[String]) {
    for f in std::iter::once(sidecar.to_path_buf()).chain(files.iter().map(|f| dir.join(f))) {
        if let Err(e) = fs::remove_file(&f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = ?f, error = %e, "stored scan, but cannot remove its drop file");
            }
        }
    }
    let _ = crate::fsx::sync_dir(dir);
}

/// The image files of a drop whose sidecar failed validation, so that a bad drop is moved
/// aside whole: the names its JSON gives if they are safe to touch, else (the JSON is
/// unreadable) the contract's `<stem>.<image extension>` files beside the sidecar.
fn image_names_for_bad_sidecar(dir: &Path, stem: &str, sidecar: &[u8]) -> Vec<String> {
    let named = serde_json::from_slice::<serde_json::Value>(sidecar)
        .ok()
        .and_then(|v| v.get("image")?.get("file")?.as_str().map(str::to_string))
        .filter(|f| crate::scan::check_drop_file_name(f, "image.file").is_ok());
    let names: Vec<String> = match named {
        Some(file) => vec![file],
        None => IMAGE_EXTENSIONS
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .collect(),
    };
    names
        .into_iter()
        .flat_map(|f| {
            let low = crate::scan::low_energy_name(&f);
            std::iter::once(f).chain(low)
        })
        .filter(|f| dir.join(f).is_file())
        .collect()
}

/// One file of a drop, read whole: `None` when it is not there; refused when it is not a
/// regular file (symlinks) or larger than `max` bytes, naming `field`.
fn read_drop_file(p: &Path, field: &str, id: &str, max: u64) -> Result<Option<Vec<u8>>, Rejection> {
    let md = match fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Rejection::new(
                Some(id),
                field,
                format!("cannot read {}: {e}", p.display()),
            ))
        }
    };
    if !md.file_type().is_file() {
        return Err(Rejection::new(
            Some(id),
            field,
            format!(
                "{} is not a regular file (symlinks are refused)",
                p.display()
            ),
        ));
    }
    if md.len() > max {
        return Err(Rejection::new(
            Some(id),
            field,
            format!(
                "{} is {} bytes; ingest.max_file_mb allows {max}",
                p.display(),
                md.len()
            ),
        ));
    }
    fs::read(p)
        .map(Some)
        .map_err(|e| Rejection::new(Some(id), field, format!("cannot read {}: {e}", p.display())))
}

const IMAGE_EXTENSIONS: &[&str] = &[
    "tiff", "tif", "png", "pgm", "dcm", "dicos", "TIFF", "TIF", "PNG", "PGM", "DCM",
];

fn is_sidecar_name(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".json") && !name.starts_with('.') && name.len() > 5
}

fn sig(p: &Path) -> Option<Sig> {
    let md = fs::symlink_metadata(p).ok()?;
    Some((md.len(), md.modified().ok()?))
}

fn read_limited(p: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(p)?.take(max + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names() {
        assert!(is_sidecar_name(Path::new("/h/KHI-1.json")));
        assert!(!is_sidecar_name(Path::new("/h/.KHI-1.json")));
        assert!(!is_sidecar_name(Path::new("/h/KHI-1.json.tmp")));
        assert!(!is_sidecar_name(Path::new("/h/KHI-1.tiff")));
        assert!(!is_sidecar_name(Path::new("/h/.json")));
    }
}
