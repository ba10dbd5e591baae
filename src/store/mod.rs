//! The node's database: one SQLite file in WAL mode, written by exactly one thread and read
//! by a small pool of connections, both driven from async code without blocking the runtime.
//!
//! Invariants:
//! - every write goes through [`Store::write`], which runs on the single writer thread, so
//!   verdict `seq` numbers and hash chains are assigned without races;
//! - `synchronous = FULL`: a commit that returned has reached the disk (a verdict reported
//!   as stored survives a power cut);
//! - schema changes are numbered migrations in [`schema`], applied at open inside one
//!   transaction each, tracked by `PRAGMA user_version`;
//! - this module never touches image files; callers write and fsync those *before* the row
//!   that names them.

pub mod audit;
pub mod chain;
pub mod entries;
pub mod outbox;
pub mod queue;
pub mod scans;
pub mod schema;
pub mod transit;
pub mod users;
pub mod verdicts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// Errors from the store. Each variant says what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, I/O error, corruption, a bug in a query). Not retryable by
    /// the caller; log it and fail the operation. The transaction was rolled back.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column did not parse: the row was written by a newer or broken version.
    #[error("stored JSON in {what} is corrupt: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// The writer thread is gone (the node is shutting down). Give up quietly.
    #[error("the database writer has stopped")]
    Closed,
    /// The OS refused a thread (resource limits). Refuse to start.
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
    /// A verdict could not be put into its canonical form (a value RFC 8785 cannot sign
    /// exactly, or an unknown schema): a bug in the check that made it. Nothing was stored.
    #[error("verdict {verdict_id} cannot be signed: {reason}")]
    Unsignable { verdict_id: String, reason: String },
    /// The database is newer than this binary (a downgrade). Refuse to start.
    #[error("database {path} has schema version {found}, newer than this riac-node knows ({known}); install the newer riac-node or restore a backup")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Cheap to clone; all clones share the writer thread and reader pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer_tx: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    // A std Mutex: it is held only to pop/push a connection, never across an await.
    readers: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 4;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // busy_timeout: readers may meet a checkpoint; wait rather than fail.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    configure(&conn)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts
    /// the writer thread. Blocking: call before the runtime is busy or in spawn_blocking.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, path = %path.display(), "SQLite refused WAL mode; crash safety relies on the rollback journal");
        }
        configure(&conn)?;
        schema::migrate(&mut conn, path)?;

        let (tx, mut rx) = mpsc::channel::<WriteJob>(256);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
                // Leaves the WAL checkpointed so the file on disk is self-contained.
                let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            })
            .map_err(StoreError::Thread)?;

        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer_tx: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer thread inside one IMMEDIATE transaction that commits if `f`
    /// returns Ok and rolls back otherwise.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let tx = self
            .inner
            .writer_tx
            .lock()
            .expect("writer_tx lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        let (done_tx, done_rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn: &mut Connection| {
            let r = (|| {
                let t = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let v = f(&t)?;
                t.commit()?;
                Ok(v)
            })();
            let _ = done_tx.send(r);
        });
        tx.send(job).await.map_err(|_| StoreError::Closed)?;
        done_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` with a read-only connection on the blocking pool. Reads see the last
    /// committed state and never wait for the writer (WAL).
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// The blocking form of [`Store::read`], for code already off the runtime.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.with_reader(f)
    }

    /// Stops the writer after the jobs already queued and waits for it. Later writes fail
    /// with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.writer_tx.lock().expect("writer_tx lock").take();
        let handle = self.inner.writer_thread.lock().expect("writer lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.inner.readers.lock().expect("readers lock").clear();
    }

    /// `PRAGMA integrity_check`: "ok" or the problems SQLite found.
    pub async fn integrity_check(&self) -> Result<String> {
        self.read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))?))
            .await
    }
}

impl Inner {
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().expect("readers lock").pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let r = f(&conn);
        let mut pool = self.readers.lock().expect("readers lock");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        r
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer_tx.lock().map(|mut t| t.take()).ok();
        if let Some(h) = self.writer_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// Current UTC time as RFC 3339 with millisecond precision: the one timestamp format in
/// the database, so that text order is time order.
pub fn now_rfc3339() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_commits_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .write(|t| {
                t.execute("INSERT INTO rejects(at, scan_id, source, field, reason) VALUES ('x','a','http',NULL,'r')", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let r: Result<()> = store
            .write(|t| {
                t.execute("INSERT INTO rejects(at, scan_id, source, field, reason) VALUES ('x','b','http',NULL,'r')", [])?;
                Err(StoreError::Closed)
            })
            .await;
        assert!(r.is_err());
        let n: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM rejects", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        store.close().await;
        assert!(matches!(
            store.write(|_| Ok(())).await,
            Err(StoreError::Closed)
        ));
    }

    #[test]
    fn timestamps_sort_as_text() {
        use time::macros::datetime;
        assert_eq!(
            format_ts(datetime!(2026-11-28 03:14:02.5 +05:00)),
            "2026-11-27T22:14:02.500Z"
        );
    }
}
