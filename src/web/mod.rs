//! The node's HTTP face (axum): JSON API, scan upload, rendered images, `/healthz`,
//! `/metrics` and the operator pages. [`router`] is built apart from the server so tests
//! drive it with `oneshot`. Handlers only read the store or hand drops to the ingestor; they
//! never block the pipeline, and a browser never sees internal error text.

mod api;
mod error;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::store::Store;

pub use error::AppError;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub ingestor: Ingestor,
    pub metrics: Metrics,
    /// Uploads hold whole images in memory: past this many at once, answer 503.
    pub upload_permits: Arc<Semaphore>,
}

impl AppState {
    pub fn new(cfg: Arc<Config>, store: Store, ingestor: Ingestor, metrics: Metrics) -> Self {
        let permits = cfg.max_concurrent_uploads;
        AppState {
            cfg,
            store,
            ingestor,
            metrics,
            upload_permits: Arc::new(Semaphore::new(permits)),
        }
    }
}

pub fn router(state: AppState) -> Router {
    // An upload carries the image, maybe a low-energy image and the sidecar.
    let upload_limit = (state.cfg.ingest.limits.max_file_bytes * 2 + 2 * 1024 * 1024)
        .min(usize::MAX as u64) as usize;
    let timeout = state.cfg.request_timeout;
    Router::new()
        .route("/", get(pages::index))
        .route("/scans/{id}", get(pages::scan))
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
        .route("/api/v1/rejects", get(api::list_rejects))
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
        .route(
            "/api/v1/scans/{id}/transit/entry.png",
            get(crate::compare::http::entry),
        )
        .fallback(api::not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// How long in-flight requests get to finish once shutdown starts.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
