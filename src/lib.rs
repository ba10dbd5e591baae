//! riac-node: the edge node beside a cargo X-ray scanner. [`start`] wires the tasks
//! (hot folder and HTTP intake, pipeline, store, web) under one cancellation token and one
//! task tracker; [`Node::shutdown`] stops intake, lets in-flight work finish within the
//! configured deadline, and closes the database last. See docs/ARCHITECTURE.md.

pub mod bench;
pub mod compare;
pub mod config;
pub mod doctor;
pub mod export;
pub mod fsx;
pub mod imaging;
pub mod ingest;
pub mod matching;
pub mod metrics;
pub mod pipeline;
pub mod retention;
pub mod scan;
pub mod sim;
pub mod store;
pub mod tuning;
pub mod uplink;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use ingest::hotfolder::{HotFolder, HotFolderError};
use ingest::Ingestor;
use metrics::Metrics;
use pipeline::{NodeIdentity, Pipeline};
use store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source} (another service may hold the port; set web.listen or --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    HotFolder(#[from] HotFolderError),
    #[error("cannot start the web server: {0}")]
    Web(#[from] web::WebError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Tuning(#[from] tuning::TuningError),
    #[error("transit calibration: {0}")]
    Calibration(#[from] compare::calibrate::CalibrationError),
    #[error("cannot load the embedding model ([matching] in the config): {0}")]
    Matching(#[from] matching::MatchError),
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    /// The address the web server is bound to (useful with port 0).
    pub addr: SocketAddr,
    pub store: Store,
    pub ingestor: Ingestor,
    pub metrics: Metrics,
    pub config: Arc<Config>,
    /// The MQTT uplink: status, the entry-package pairing signal, command handlers.
    pub uplink: uplink::UplinkHandle,
    /// The key this node signs its verdicts with.
    pub node_key: Arc<uplink::keys::NodeKey>,
    /// The transit check: each entry package the uplink stores reaches
    /// [`compare::transit::Transit::entry_available`] through a task started here.
    pub transit: compare::transit::Transit,
    /// Retention figures and the disk-full gate.
    pub retention: retention::Retention,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Starts every task of the node. Returns once the node accepts drops and requests.
pub async fn start(cfg: Config, token: CancellationToken) -> Result<Node, NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let swept = ingest::sweep_temp_dirs(&cfg.data_dir);
    if swept > 0 {
        tracing::info!(
            count = swept,
            "removed temp directories left by an interrupted ingest"
        );
    }
    let swept = export::sweep_staging(&cfg.data_dir);
    if swept > 0 {
        tracing::info!(
            count = swept,
            "removed evidence exports left by an interrupted download"
        );
    }
    // A calibration file that does not validate stops the start: running on defaults
    // while the site believes its scanners are calibrated would be worse.
    let calibration = compare::calibrate::CalibrationSet::load(&cfg.data_dir)?;
    if calibration.is_empty() {
        tracing::warn!("no transit calibration (riac-node calibrate transit): every scanner pair uses the uncalibrated default thresholds");
    } else {
        let pairs: Vec<String> = calibration.pairs().map(|p| p.key()).collect();
        tracing::info!(pairs = %pairs.join(", "), "transit calibration loaded");
    }
    let db = cfg.db_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|_| StoreError::Closed)??;
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new();
    metrics.set_transit_calibration(&calibration);
    let tracker = TaskTracker::new();
    let node_key = uplink::load_node_key(&cfg, &store).await?;
    let uplink = uplink::start(
        cfg.clone(),
        store.clone(),
        metrics.clone(),
        node_key.clone(),
        token.clone(),
        &tracker,
    )?;

    let matcher = match cfg.matching.model.clone() {
        // A configured model that cannot be loaded stops the start: matching with no model,
        // or the wrong one, must not pass for a node that checks manifests.
        Some(contract) => {
            let (m, st) = (cfg.matching.clone(), store.clone());
            let r = tokio::task::spawn_blocking(move || {
                matching::load_matcher(&contract, m.backend, m.ort_library.as_deref(), m.params, st)
            })
            .await
            .map_err(|_| StoreError::Closed)?;
            match r {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    store.close().await;
                    return Err(e.into());
                }
            }
        }
        None => {
            tracing::warn!("no embedding model configured ([matching] model): verdicts will say the manifest check did not run");
            None
        }
    };

    let (tx, rx) = mpsc::channel::<String>(cfg.ingest.queue_depth);
    let identity = NodeIdentity {
        node_id: cfg.node_id.clone(),
        site_id: cfg.site_id.clone(),
    };
    let signer = Some(node_key.clone() as Arc<dyn store::verdicts::VerdictSigner>);
    let manifest = pipeline::ManifestCheck {
        matcher: matcher.clone(),
        data_dir: cfg.data_dir.clone(),
        metrics: metrics.clone(),
    };
    let (transit, transit_rx) = compare::transit::Transit::new(
        &cfg,
        calibration,
        store.clone(),
        metrics.clone(),
        identity.clone(),
        signer.clone(),
        manifest.clone(),
    );
    let tuning = match tuning::Tuning::load(
        &cfg.data_dir,
        cfg.ingest.limits,
        store.clone(),
        transit.clone(),
        matcher,
    ) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            token.cancel();
            tracker.close();
            tracker.wait().await;
            store.close().await;
            return Err(e.into());
        }
    };
    tuning.spawn(&uplink, &tracker, &token);
    tracker.spawn(transit.clone().run(transit_rx, token.clone()));
    {
        // Entry packages the uplink stores are handed to pairing. A lagging receiver only
        // loses wake-ups: the transit sweep finds the awaiting exits by itself.
        let mut entries = uplink.subscribe_entries();
        let (transit, token) = (transit.clone(), token.clone());
        tracker.spawn(async move {
            loop {
                let id = tokio::select! {
                    _ = token.cancelled() => break,
                    r = entries.recv() => match r {
                        Ok(id) => id,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "entry-package signals missed; the transit sweep pairs them");
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                };
                transit.entry_available(&id).await;
            }
        });
    }
    let pipeline = Pipeline {
        store: store.clone(),
        metrics: metrics.clone(),
        identity,
        signer,
        manifest,
        transit: transit.clone(),
        uplink: Some(uplink.clone()),
    };
    tracker.spawn(pipeline.run(rx, token.clone()));
    {
        // Scans stored before a crash but never decided go first.
        let (store, tx, token) = (store.clone(), tx.clone(), token.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                r = pipeline::requeue_undecided(&store, &tx) => match r {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "requeued scans stored but not decided before the last stop"),
                    Err(e) => tracing::error!(error = %e, "cannot requeue undecided scans"),
                },
            }
        });
    }

    let ingestor = Ingestor::new(&cfg, store.clone(), metrics.clone(), tx);
    let hot = HotFolder::new(&cfg, ingestor.clone())?;
    {
        let (token, t2) = (token.clone(), tracker.clone());
        tracker.spawn(async move {
            if let Err(e) = hot.run(token.clone(), t2).await {
                tracing::error!(error = %e, "hot folder stopped; the node keeps serving the API");
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let mut state = web::AppState::new(
        cfg.clone(),
        store.clone(),
        ingestor.clone(),
        metrics.clone(),
    );
    state.uplink = uplink.clone();
    state.node_key = Some(node_key.clone());
    state.transit = Some(transit.clone());
    let retention = state.retention.clone();
    tracker.spawn(retention::run(
        cfg.clone(),
        store.clone(),
        metrics.clone(),
        retention.clone(),
        token.clone(),
    ));
    web::spawn_server(listener, state, &tracker, &token).await?;
    tracing::info!(%addr, node_id = %cfg.node_id, site_id = %cfg.site_id, data_dir = %cfg.data_dir.display(), "riac-node started");

    systemd_ready(&tracker, &token, &store);
    Ok(Node {
        addr,
        store,
        ingestor,
        metrics,
        config: cfg,
        uplink,
        node_key,
        transit,
        retention,
        token,
        tracker,
    })
}

/// Tells systemd we are up and, when it asks for a watchdog, pings it only while the
/// database answers: a wedged node is restarted rather than left looking alive.
fn systemd_ready(tracker: &TaskTracker, token: &CancellationToken, store: &Store) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    let (token, store) = (token.clone(), store.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    let probe = store.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?));
                    match tokio::time::timeout(period, probe).await {
                        Ok(Ok(_)) => { let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]); }
                        _ => tracing::error!("database did not answer the watchdog probe; not pinging systemd"),
                    }
                }
            }
        }
    });
}

impl Node {
    /// The token that stops this node (cancel it, or call [`Node::shutdown`]).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Waits until the token is cancelled (a signal, a test), then shuts down.
    pub async fn run_until_stopped(self) {
        self.token.cancelled().await;
        self.shutdown().await;
    }

    /// Stops intake, waits up to `shutdown.deadline_secs` for in-flight work, closes the
    /// database. Work still running at the deadline is logged and abandoned: every drop it
    /// held is still in the hot folder or already committed, so nothing is lost.
    pub async fn shutdown(self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.token.cancel();
        self.tracker.close();
        let deadline = self.config.shutdown_deadline;
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = self.tracker.len(),
                deadline_secs = deadline.as_secs(),
                "shutdown deadline reached with tasks still running; abandoning them"
            );
        }
        self.store.close().await;
        tracing::info!("riac-node stopped");
    }
}
