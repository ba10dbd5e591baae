//! The MQTT uplink to the central RIAC (rumqttc): store-and-forward of the SQLite outbox,
//! the retained `status` with its `offline` LWT, entry packages between sites, and commands
//! from the centre. It owns the broker connection and the outbox rows' lifetime after they
//! are queued; it must never delete an outbox row before the broker's PUBACK for it, never
//! make the pipeline wait on the network, and never let a message from the network crash or
//! stall the node.
//!
//! Tasks (all under the node's CancellationToken + TaskTracker):
//! - `session::drive`: owns rumqttc's `EventLoop` and only polls it (a poll future is never
//!   dropped half-way, which could lose a packet), reconnecting with jittered backoff;
//! - `session::Session::run`: the outbox drain: maps packet ids to rows, deletes rows on
//!   PUBACK, keeps the in-flight window, publishes `status`, subscribes for entry packages
//!   and commands;
//! - `incoming`: stores entry packages and answers commands, acknowledging each message only
//!   once its effect is durable (manual acks), so a crash means redelivery, never loss;
//! - `entries::publisher`: turns this node's transit entry scans into entry packages;
//! - `monitor`: outbox figures, quota alert, metrics, even with no broker configured.
//!
//! Outbox quota policy (`uplink.outbox_quota_mb`): verdicts and command replies are always
//! queued, whatever the quota (they are small, and a verdict is never dropped); at
//! `outbox_warn_percent` the status, `/metrics` and `GET /api/v1/uplink` say `near_full`
//! and the log warns; at the quota they say `over_quota`, entry packages wait in
//! `entry_outgoing` as `deferred` (queued when space frees) and image requests are refused
//! with an error reply. Nothing is dropped to make room.

pub mod api;
pub mod bench;
pub mod commands;
pub mod config;
pub mod entries;
pub mod keys;
mod session;
pub mod status;
pub mod verify;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use commands::{CommandCall, CommandKind};
use config::UplinkFileError;
use keys::{KeyError, KeyOrigin, NodeKey};
use status::{ConnState, QuotaAlert, UplinkStatus};

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    File(#[from] UplinkFileError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("node key: {0}")]
    Store(#[from] StoreError),
}

/// Embeddings of a scan for its entry package, when the matching module has them.
pub type EmbeddingSource =
    Arc<dyn Fn(&rusqlite::Connection, &str) -> Option<serde_json::Value> + Send + Sync>;

struct Shared {
    // std Mutex/RwLock: held only to copy or update a field, never across an await.
    status: Mutex<UplinkStatus>,
    outbox_changed: Notify,
    entries_tx: broadcast::Sender<String>,
    library: RwLock<Option<mpsc::Sender<CommandCall>>>,
    thresholds: RwLock<Option<mpsc::Sender<CommandCall>>>,
    calibration: RwLock<Option<mpsc::Sender<CommandCall>>>,
    model: RwLock<Option<serde_json::Value>>,
    embeddings: RwLock<Option<EmbeddingSource>>,
    signer: Option<Arc<NodeKey>>,
    warn_fraction: f64,
}

/// The uplink as other modules see it. Cheap to clone.
#[derive(Clone)]
pub struct UplinkHandle {
    inner: Arc<Shared>,
}

impl UplinkHandle {
    fn new(status: UplinkStatus, warn_fraction: f64, signer: Option<Arc<NodeKey>>) -> Self {
        let (entries_tx, _) = broadcast::channel(1024);
        UplinkHandle {
            inner: Arc::new(Shared {
                status: Mutex::new(status),
                outbox_changed: Notify::new(),
                entries_tx,
                library: RwLock::new(None),
                thresholds: RwLock::new(None),
                calibration: RwLock::new(None),
                model: RwLock::new(None),
                embeddings: RwLock::new(None),
                signer,
                warn_fraction,
            }),
        }
    }

    /// A handle with no uplink task behind it (router tests, tools): status `offline`,
    /// with the configured quota.
    pub fn unstarted(cfg: &config::UplinkConfig) -> Self {
        UplinkHandle::new(
            UplinkStatus::new(
                None,
                cfg.outbox_quota_bytes,
                None,
                cfg.centre_public_key.is_some(),
            ),
            cfg.outbox_warn_fraction,
            None,
        )
    }

    /// The node key as a verdict signer, for code outside the pipeline that stores verdicts
    /// (an operator's decision): pass it to `store::verdicts::insert_with_outbox`. `None`
    /// on an unstarted handle.
    pub fn signer(&self) -> Option<Arc<dyn crate::store::verdicts::VerdictSigner>> {
        self.inner
            .signer
            .clone()
            .map(|k| k as Arc<dyn crate::store::verdicts::VerdictSigner>)
    }

    /// A copy of the current status (what `GET /api/v1/uplink` shows).
    pub fn status(&self) -> UplinkStatus {
        self.inner.status.lock().expect("status lock").clone()
    }

    fn update_status<T>(&self, f: impl FnOnce(&mut UplinkStatus) -> T) -> T {
        f(&mut self.inner.status.lock().expect("status lock"))
    }

    /// The pairing signal: the `entry_scan_id` of each entry package received and stored
    /// (the row is committed and its image durable when it is sent). A receiver that lags
    /// more than 1024 packages gets `RecvError::Lagged` and should re-check every exit scan
    /// awaiting its entry.
    pub fn subscribe_entries(&self) -> broadcast::Receiver<String> {
        self.inner.entries_tx.subscribe()
    }

    /// Tells the drain that rows were queued (it also polls, so this only cuts latency).
    pub fn outbox_changed(&self) {
        self.inner.outbox_changed.notify_one();
    }

    /// Registers the handler for `cmd/library-add` or `cmd/thresholds`. Until one is
    /// registered (or after its receiver is dropped) those commands are answered
    /// "not supported on this node".
    pub fn set_command_handler(&self, kind: CommandKind, tx: mpsc::Sender<CommandCall>) {
        let slot = match kind {
            CommandKind::LibraryAdd => &self.inner.library,
            CommandKind::Thresholds => &self.inner.thresholds,
            CommandKind::TransitCalibration => &self.inner.calibration,
        };
        *slot.write().expect("handler lock") = Some(tx);
    }

    fn command_handler(&self, kind: CommandKind) -> Option<mpsc::Sender<CommandCall>> {
        let slot = match kind {
            CommandKind::LibraryAdd => &self.inner.library,
            CommandKind::Thresholds => &self.inner.thresholds,
            CommandKind::TransitCalibration => &self.inner.calibration,
        };
        slot.read().expect("handler lock").clone()
    }

    /// What the `status` message says under `model` (name, version, sha256 of the
    /// embedding model, set by the matching module once it has loaded one).
    pub fn set_model_info(&self, model: serde_json::Value) {
        *self.inner.model.write().expect("model lock") = Some(model);
    }

    fn model_info(&self) -> Option<serde_json::Value> {
        self.inner.model.read().expect("model lock").clone()
    }

    /// Where entry packages get their `embeddings` from (the matching module's store).
    pub fn set_embedding_source(&self, f: EmbeddingSource) {
        *self.inner.embeddings.write().expect("embeddings lock") = Some(f);
    }

    fn embedding_source(&self) -> Option<EmbeddingSource> {
        self.inner
            .embeddings
            .read()
            .expect("embeddings lock")
            .clone()
    }
}

/// Loads the node key, or creates it on a node that has never signed a verdict (a fresh
/// install: nobody can have registered another key for it). See [`NodeKey::load_or_create`].
pub async fn load_node_key(cfg: &Config, store: &Store) -> Result<Arc<NodeKey>, UplinkError> {
    let signed: i64 = store
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM verdicts WHERE json_extract(body, '$.signature') IS NOT NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await?;
    let path = cfg.uplink.node_key_file.clone();
    let (key, origin) =
        tokio::task::spawn_blocking(move || NodeKey::load_or_create(&path, signed == 0))
            .await
            .map_err(|_| StoreError::Closed)??;
    match origin {
        KeyOrigin::Created => tracing::warn!(
            path = %key.path().display(),
            public_key = %key.public_hex(),
            "created this node's signing key (first start); register its public key with the central RIAC"
        ),
        KeyOrigin::Loaded => {
            tracing::info!(public_key = %key.public_hex(), "node signing key loaded")
        }
    }
    Ok(Arc::new(key))
}

/// Starts the uplink's tasks. With no broker configured only the monitor runs (outbox
/// figures and quota alerts): the node works offline and the outbox grows.
pub fn start(
    cfg: Arc<Config>,
    store: Store,
    metrics: Metrics,
    key: Arc<NodeKey>,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Result<UplinkHandle, UplinkError> {
    let u = &cfg.uplink;
    let status = UplinkStatus::new(
        u.broker
            .as_ref()
            .map(|b| (b.url.as_str(), b.client_id.as_str())),
        u.outbox_quota_bytes,
        Some(key.public_hex()),
        u.centre_public_key.is_some(),
    );
    let handle = UplinkHandle::new(status, u.outbox_warn_fraction, Some(key.clone()));
    // Files first: a bad certificate or password file stops the node before any task runs.
    let prepared = match &u.broker {
        Some(b) => Some((b.clone(), b.load_tls()?, b.credentials()?)),
        None => None,
    };
    entries::sweep_temp_dirs(&cfg.data_dir);
    tracker.spawn(monitor(
        handle.clone(),
        store.clone(),
        metrics.clone(),
        token.clone(),
    ));

    let Some((broker, tls, credentials)) = prepared else {
        tracing::info!("no broker configured (uplink.broker or --broker): working offline, the outbox keeps every verdict until one is");
        return Ok(handle);
    };
    tracing::info!(broker = %broker.url, client_id = %broker.client_id, "uplink starting");
    let ctx = Arc::new(session::Context {
        cfg: cfg.clone(),
        broker,
        store,
        metrics,
        handle: handle.clone(),
    });
    session::spawn(ctx.clone(), tls, credentials, token.clone(), tracker);
    tracker.spawn(entries::publisher(ctx, token));
    Ok(handle)
}

/// Keeps outbox figures, the quota alert and metrics fresh, broker or not.
async fn monitor(handle: UplinkHandle, store: Store, metrics: Metrics, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = refresh_status(&handle, &store, &metrics).await.map(drop) {
            if matches!(e, StoreError::Closed) {
                break;
            }
            tracing::warn!(error = %e, "cannot read the outbox figures");
        }
    }
    handle.update_status(|s| {
        if s.state != ConnState::Offline {
            s.set_state(ConnState::Stopped)
        }
    });
}

/// Reads the outbox and entry-package figures into the status and metrics (logging quota
/// transitions) and returns the fresh status: what the monitor does every 2 s and
/// `GET /api/v1/uplink` does per request.
pub async fn refresh_status(
    handle: &UplinkHandle,
    store: &Store,
    metrics: &Metrics,
) -> Result<UplinkStatus, StoreError> {
    let (stats, entry_counts) = store
        .read(|c| {
            let s = crate::store::outbox::stats(c)?;
            let mut st = c.prepare_cached(
                "SELECT state, count(*) FROM entry_outgoing WHERE state IN ('queued','deferred','failed') GROUP BY state",
            )?;
            let counts = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((s, counts))
        })
        .await?;
    let warn = handle.inner.warn_fraction;
    let (before, now, snapshot) = handle.update_status(|s| {
        let before = s.set_outbox(&stats, warn);
        s.entry_packages.queued = 0;
        s.entry_packages.deferred = 0;
        s.entry_packages.failed = 0;
        for (state, n) in &entry_counts {
            match state.as_str() {
                "queued" => s.entry_packages.queued = *n,
                "deferred" => s.entry_packages.deferred = *n,
                _ => s.entry_packages.failed = *n,
            }
        }
        (before, s.outbox.alert, s.clone())
    });
    metrics.uplink().set_outbox(&snapshot);
    metrics.set_outbox_depth(stats.depth);
    if before != now {
        match now {
            QuotaAlert::Ok => tracing::info!(bytes = stats.bytes, "outbox back under its warning level"),
            QuotaAlert::NearFull => tracing::warn!(
                bytes = stats.bytes,
                quota = snapshot.outbox.quota_bytes,
                "outbox near its quota (uplink.outbox_quota_mb): the central RIAC has not acknowledged for a while"
            ),
            QuotaAlert::OverQuota => tracing::error!(
                bytes = stats.bytes,
                quota = snapshot.outbox.quota_bytes,
                "outbox over its quota: entry packages wait and image requests are refused; verdicts are still kept"
            ),
        }
    }
    Ok(snapshot)
}
