//! The node's HTTP face (axum): JSON API, scan upload, rendered images, `/healthz`,
//! `/metrics` and the operator UI (queue, viewer, transit and manifest views, decisions,
//! status, accounts). [`router`] is built apart from the server so tests drive it with
//! `oneshot`; [`spawn_server`] runs it over HTTP or HTTPS. Every route passes the access
//! middleware in [`auth`]. Handlers only read the store, hand drops to the ingestor, or
//! write decisions, account and session changes and evidence-export audit lines through
//! the one writer; they never block the pipeline, and a browser never sees internal error
//! text.

pub mod accounts;
mod admin;
pub(crate) mod api;
mod assets;
pub mod auth;
pub mod bench;
mod decide;
mod error;
mod events;
mod export;
pub mod images;
mod pages;
mod scan_page;
mod status;
pub mod tls;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::store::Store;

pub use error::AppError;
pub use events::ChangeStamp;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub ingestor: Ingestor,
    pub metrics: Metrics,
    /// Uploads at once (each streamed to disk, then decoded in memory): past this many,
    /// answer 503.
    pub upload_permits: Arc<Semaphore>,
    pub auth: Arc<auth::AuthState>,
    /// Moves when a scan or verdict is stored (see [`events`]); the queue listens.
    pub changes: watch::Receiver<ChangeStamp>,
    changes_tx: Arc<watch::Sender<ChangeStamp>>,
    /// Ends long-lived responses (the event stream) when the node stops.
    pub shutdown: CancellationToken,
    pub images: Arc<images::ImageWork>,
    /// SHA-256 of the TLS certificate in use, shown on the status page.
    pub tls_fingerprint: Option<String>,
    /// The MQTT uplink's status (`GET /api/v1/uplink`); `unstarted` until the node sets it.
    pub uplink: crate::uplink::UplinkHandle,
    /// Retention figures and the disk-full alert (status page, 410 for evicted images).
    pub retention: crate::retention::Retention,
    /// Signs evidence exports (`POST /exports`); `None` where the server runs without one
    /// (some tests), and the export routes then answer 503.
    pub node_key: Option<Arc<crate::uplink::keys::NodeKey>>,
    /// One evidence export at a time.
    pub export_permit: Arc<Semaphore>,
    /// The transit check, for the status page's scanner-pair calibrations; `None` where
    /// the server runs without one (some tests).
    pub transit: Option<crate::compare::transit::Transit>,
}

impl AppState {
    pub fn new(cfg: Arc<Config>, store: Store, ingestor: Ingestor, metrics: Metrics) -> Self {
        let permits = cfg.max_concurrent_uploads;
        let (tx, rx) = watch::channel(ChangeStamp::default());
        let uplink = crate::uplink::UplinkHandle::unstarted(&cfg.uplink);
        AppState {
            auth: Arc::new(auth::AuthState::new(&cfg.web)),
            retention: crate::retention::Retention::new(ingestor.disk_guard().clone()),
            cfg,
            store,
            ingestor,
            metrics,
            upload_permits: Arc::new(Semaphore::new(permits)),
            changes: rx,
            changes_tx: Arc::new(tx),
            shutdown: CancellationToken::new(),
            images: Arc::new(images::ImageWork::new()),
            tls_fingerprint: None,
            uplink,
            node_key: None,
            export_permit: Arc::new(Semaphore::new(1)),
            transit: None,
        }
    }

    /// Whether the UI is served over HTTPS (cookies are then marked `Secure`).
    pub fn tls_on(&self) -> bool {
        self.cfg.web.tls.is_some()
    }
}

pub fn router(state: AppState) -> Router {
    // An upload carries the image, maybe a low-energy image and the sidecar, plus the
    // multipart framing. Each part is also checked against its own limit as it arrives.
    let upload_limit =
        (state.cfg.ingest.limits.max_file_bytes * 2 + crate::ingest::MAX_SIDECAR_BYTES + 64 * 1024)
            .min(usize::MAX as u64) as usize;
    let timeout = state.cfg.request_timeout;
    let authn = axum::middleware::from_fn_with_state(state.clone(), auth::layer);
    // Outside the request timeout: the event stream lives as long as the page, and an
    // export of a whole declaration may take longer than a page request should.
    let long = Router::new()
        .route("/api/v1/events", get(events::sse))
        .route("/exports", post(export::form))
        .route("/api/v1/exports", post(export::api));
    Router::new()
        .route("/", get(pages::index))
        .route("/queue/rows", get(pages::queue_rows))
        .route("/scans/{id}", get(scan_page::scan))
        .route("/scans/{id}/transit", get(scan_page::transit))
        .route("/scans/{id}/decision", post(decide::form))
        .route("/status", get(status::page))
        .route("/audit", get(status::audit_page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route(
            "/account",
            get(admin::account_page).post(admin::account_password),
        )
        .route(
            "/admin/users",
            get(admin::users_page).post(admin::users_action),
        )
        .route("/static/{file}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route(
            "/api/v1/scans",
            get(api::list_scans)
                .post(api::post_scan)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/v1/scans/{id}", get(api::get_scan))
        .route("/api/v1/scans/{id}/image.png", get(api::scan_image))
        .route("/api/v1/scans/{id}/image16.png", get(api::scan_image16))
        .route("/api/v1/scans/{id}/samples", get(images::samples))
        .route(
            "/api/v1/scans/{id}/transit/entry.png",
            get(images::transit_entry),
        )
        .route("/api/v1/scans/{id}/decisions", post(decide::api))
        .route("/api/v1/scans/{id}/pin", post(api::pin))
        .route("/api/v1/rejects", get(api::list_rejects))
        .route("/api/v1/status", get(status::api))
        // uplink (MQTT) status for the UI's status page
        .route("/api/v1/uplink", get(crate::uplink::api::status))
        // The reference library (src/matching/http.rs), for the manifest view.
        .route("/api/v1/library", get(crate::matching::http::list))
        .route(
            "/api/v1/library/{reference_id}/image.png",
            get(crate::matching::http::image),
        )
        // Transit check images (src/compare/http.rs).
        .route(
            "/api/v1/scans/{id}/transit/aligned.png",
            get(crate::compare::http::aligned),
        )
        .route(
            "/api/v1/scans/{id}/transit/aligned16.png",
            get(crate::compare::http::aligned16),
        )
        .route(
            "/api/v1/scans/{id}/transit/heatmap.png",
            get(crate::compare::http::heatmap),
        )
        .fallback(api::not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .merge(long)
        .layer(authn)
        .layer(axum::middleware::map_response(security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Headers on every response: no framing, no sniffing, scripts and styles only from the
/// node itself (the pages have no inline script), HSTS under TLS is added by the server.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

async fn hsts(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

/// How long in-flight requests get to finish once shutdown starts.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot set up the listener: {0}")]
    Listener(std::io::Error),
}

/// Serves `state`'s router on `listener` (HTTPS when `[web]` asks for TLS) until `token`
/// is cancelled, and runs the change watcher that feeds the queue's live updates. Both
/// tasks are tracked by `tracker`.
pub async fn spawn_server(
    listener: TcpListener,
    mut state: AppState,
    tracker: &TaskTracker,
    token: &CancellationToken,
) -> Result<(), WebError> {
    state.shutdown = token.clone();
    let cfg = state.cfg.clone();
    let tls = tokio::task::spawn_blocking(move || tls::load(&cfg))
        .await
        .map_err(|e| WebError::Listener(std::io::Error::other(e.to_string())))??;
    if let Some(t) = &tls {
        state.tls_fingerprint = Some(t.fingerprint.clone());
        tracing::info!(cert = %t.cert_path.display(), sha256 = %t.fingerprint, self_signed = t.self_signed, "serving HTTPS");
    } else if !state.cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %state.cfg.listen, "serving plain HTTP on a network address (web.tls = false): passwords and session cookies cross the network in clear");
    }
    tracker.spawn(events::watch(
        state.store.clone(),
        state.changes_tx.clone(),
        token.clone(),
    ));
    let app = router(state);
    let stop = token.clone().cancelled_owned();
    match tls {
        None => {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop);
            tracker.spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "web server failed");
                }
            });
        }
        Some(t) => {
            let app = app.layer(axum::middleware::map_response(hsts));
            let l = tls::TlsListener::new(listener, t.config, tracker, token.clone())
                .map_err(WebError::Listener)?
                .tap_io(|_| ());
            let serve = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stop);
            tracker.spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "web server failed");
                }
            });
        }
    }
    Ok(())
}
