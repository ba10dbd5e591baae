//! JSON API handlers, `/healthz` and `/metrics`.

use axum::extract::multipart::Field;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{AppError, AppState};
use crate::imaging::Window;
use crate::ingest::{
    DropData, IngestOutcome, Rejection, Source, CANONICAL_IMAGE, MAX_SIDECAR_BYTES, UPLOADS_DIR,
};
use crate::scan::verdict::Outcome;
use crate::scan::{is_valid_scan_id, Direction};
use crate::store::{self, scans::ScanFilter};

pub async fn not_found() -> AppError {
    AppError::NotFound("no such page or API route".into())
}

pub async fn healthz(State(st): State<AppState>) -> Response {
    match st.store.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await {
        Ok(_) => Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "node_id": st.cfg.node_id})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database not readable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unhealthy", "reason": "database not readable"}))).into_response()
        }
    }
}

pub async fn metrics(State(st): State<AppState>) -> Result<Response, AppError> {
    let (outbox, scans) = st
        .store
        .read(|c| Ok((store::verdicts::outbox_depth(c)?, store::scans::count(c)?)))
        .await?;
    st.metrics.set_store_gauges(outbox, scans);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    pub(super) limit: Option<String>,
    pub(super) before: Option<String>,
    pub(super) direction: Option<String>,
    pub(super) container: Option<String>,
    pub(super) declaration: Option<String>,
    pub(super) outcome: Option<String>,
    pub(super) state: Option<String>,
}

/// Checks list parameters; shared with the HTML queue page.
pub fn parse_list_params(p: ListParams) -> Result<ScanFilter, AppError> {
    let limit = match p.limit.as_deref() {
        None | Some("") => 50,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                AppError::bad("limit", format!("{s:?} must be a number from 1 to 500"))
            })?,
    };
    let before = match p.before.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            AppError::bad(
                "before",
                format!("{s:?} must be the `next` value of a previous page"),
            )
        })?),
    };
    let nonempty = |v: Option<String>| {
        v.filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_string())
    };
    let direction = nonempty(p.direction);
    if let Some(d) = &direction {
        if Direction::parse(d).is_none() {
            return Err(AppError::bad(
                "direction",
                format!("{d:?} is not one of: {}", Direction::ALLOWED.trim_end()),
            ));
        }
    }
    let outcome = nonempty(p.outcome);
    if let Some(o) = &outcome {
        if Outcome::parse(o).is_none() {
            return Err(AppError::bad(
                "outcome",
                format!("{o:?} is not one of: clear refer alert"),
            ));
        }
    }
    let state = nonempty(p.state);
    if let Some(s) = &state {
        if !matches!(s.as_str(), "ingested" | "decided") {
            return Err(AppError::bad(
                "state",
                format!("{s:?} is not one of: ingested decided"),
            ));
        }
    }
    Ok(ScanFilter {
        limit,
        before,
        direction,
        container: nonempty(p.container).map(|c| c.replace([' ', '-'], "")),
        declaration: nonempty(p.declaration),
        outcome,
        state,
    })
}

pub async fn list_scans(
    State(st): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, AppError> {
    let filter = parse_list_params(p)?;
    let limit = filter.limit as usize;
    let scans = st
        .store
        .read(move |c| store::scans::list(c, &filter))
        .await?;
    let next = if scans.len() == limit {
        scans.last().map(|s| s.id)
    } else {
        None
    };
    Ok(Json(json!({"scans": scans, "next": next})))
}

pub(super) fn check_id(id: &str) -> Result<(), AppError> {
    if is_valid_scan_id(id) {
        Ok(())
    } else {
        Err(AppError::bad(
            "scan_id",
            "not a valid scan id (A-Z a-z 0-9 . _ -)",
        ))
    }
}

pub(super) async fn load_scan(
    st: &AppState,
    id: &str,
) -> Result<store::scans::ScanRecord, AppError> {
    check_id(id)?;
    let id2 = id.to_string();
    st.store
        .read(move |c| store::scans::get(c, &id2))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("scan {id} is not stored on this node")))
}

/// [`load_scan`] for the image endpoints: an evicted scan answers 410 Gone saying when and
/// why its images were deleted.
pub(super) async fn load_scan_with_images(
    st: &AppState,
    id: &str,
) -> Result<store::scans::ScanRecord, AppError> {
    let scan = load_scan(st, id).await?;
    let id2 = id.to_string();
    if let Some(e) = st
        .store
        .read(move |c| crate::retention::eviction_of(c, &id2))
        .await?
    {
        return Err(AppError::Gone(crate::retention::gone_message(id, &e)));
    }
    Ok(scan)
}

pub async fn get_scan(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let scan = load_scan(&st, &id).await?;
    let id2 = id.clone();
    let (verdict, history, audit) = st
        .store
        .read(move |c| {
            Ok((
                store::verdicts::current_for_scan(c, &id2)?,
                store::verdicts::history_for_scan(c, &id2)?,
                store::audit::for_subject(c, &id2)?,
            ))
        })
        .await?;
    Ok(Json(json!({
        "scan": scan,
        "verdict": verdict,
        "verdict_history": history,
        "audit": audit,
        "links": {
            "image": format!("/api/v1/scans/{id}/image.png"),
            "image16": format!("/api/v1/scans/{id}/image16.png"),
            "samples": format!("/api/v1/scans/{id}/samples"),
            "page": format!("/scans/{id}"),
        }
    })))
}

#[derive(Debug, Default, Deserialize)]
pub struct ImageParams {
    pub(super) center: Option<String>,
    pub(super) width: Option<String>,
    pub(super) invert: Option<String>,
    pub(super) max_width: Option<String>,
}

fn parse_f32(
    field: &str,
    v: Option<&str>,
    default: f32,
    min: f32,
    max: f32,
) -> Result<f32, AppError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<f32>()
            .ok()
            .filter(|x| x.is_finite() && *x >= min && *x <= max)
            .ok_or_else(|| {
                AppError::bad(field, format!("{s:?} must be a number from {min} to {max}"))
            }),
    }
}

/// Checks window and size parameters shared by the rendered-image endpoints.
pub(crate) fn parse_image_params(p: &ImageParams) -> Result<(Window, u32), AppError> {
    let window = Window {
        center: parse_f32("center", p.center.as_deref(), 32768.0, 0.0, 65535.0)?,
        width: parse_f32("width", p.width.as_deref(), 65536.0, 1.0, 131072.0)?,
        invert: match p.invert.as_deref() {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(s) => {
                return Err(AppError::bad(
                    "invert",
                    format!("{s:?} must be true or false"),
                ))
            }
        },
    };
    let max_width = parse_f32("max_width", p.max_width.as_deref(), 0.0, 0.0, 100_000.0)? as u32;
    Ok((window, max_width))
}

/// The scan rendered to 8-bit with a window over the 16-bit transmission range.
pub async fn scan_image(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ImageParams>,
) -> Result<Response, AppError> {
    let (window, max_width) = parse_image_params(&p)?;
    let scan = load_scan_with_images(&st, &id).await?;
    let path = st.cfg.data_dir.join(&scan.image_dir).join(CANONICAL_IMAGE);
    let png =
        super::images::render_cached(&st, format!("scan:{id}"), path, window, max_width).await?;
    Ok(super::images::png_response(png, None))
}

/// The stored canonical 16-bit PNG, for viewers that window on the client.
pub async fn scan_image16(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let scan = load_scan_with_images(&st, &id).await?;
    let path = st.cfg.data_dir.join(&scan.image_dir).join(CANONICAL_IMAGE);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| AppError::Internal(format!("{}: {e}", path.display())))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

pub async fn list_rejects(State(st): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let rejects = st
        .store
        .read(|c| store::scans::recent_rejects(c, 100))
        .await?;
    Ok(Json(json!({"rejects": rejects})))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge("upload is larger than ingest.max_file_mb allows".into())
    } else {
        AppError::BadRequest {
            field: None,
            message: format!("malformed multipart body: {}", e.body_text()),
        }
    }
}

/// One upload's image parts on disk while they arrive, in `<data_dir>/uploads/`; removed
/// when the request ends however it ends (a crash leaves it to
/// `ingest::sweep_temp_dirs` at the next start).
struct UploadDir(std::path::PathBuf);

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn upload_io(e: std::io::Error) -> AppError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        AppError::InsufficientStorage(
            "the node's disk is full; the scan was not stored, send it again later".into(),
        )
    } else {
        AppError::Internal(format!("writing an upload to its temp file: {e}"))
    }
}

/// Reads one part, refusing it with 413 as soon as it passes `max` bytes: nothing larger
/// than the limit is ever held or written. With `to` the bytes go to that file as they
/// arrive (images); without, they are kept (the sidecar, a few kB).
async fn receive(
    field: &mut Field<'_>,
    name: &str,
    max: u64,
    to: Option<&std::path::Path>,
) -> Result<Vec<u8>, AppError> {
    use tokio::io::AsyncWriteExt;
    let mut file = match to {
        Some(p) => Some(tokio::fs::File::create(p).await.map_err(upload_io)?),
        None => None,
    };
    let mut kept = Vec::new();
    let mut n: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        n += chunk.len() as u64;
        if n > max {
            if to.is_none() {
                // The sidecar: invalid content rather than a big upload (a few kB).
                return Err(AppError::Unprocessable {
                    field: name.to_string(),
                    message: format!("is larger than {max} bytes, the most a sidecar may be"),
                });
            }
            return Err(AppError::PayloadTooLarge(format!(
                "part `{name}` is larger than {max} bytes, the most this node accepts (ingest.max_file_mb)"
            )));
        }
        match file.as_mut() {
            Some(f) => f.write_all(&chunk).await.map_err(upload_io)?,
            None => kept.extend_from_slice(&chunk),
        }
    }
    if let Some(mut f) = file {
        f.flush().await.map_err(upload_io)?;
    }
    Ok(kept)
}

/// `POST /api/v1/scans`: multipart with parts `sidecar` (JSON), `image`, optional `low`.
/// The images are streamed to temp files and read back only once complete and within
/// `ingest.max_file_mb`, so an oversized or slow upload never sits in memory.
pub async fn post_scan(
    State(st): State<AppState>,
    mut mp: Multipart,
) -> Result<Response, AppError> {
    let _permit = st
        .upload_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| AppError::Unavailable("too many uploads at once; retry shortly".into()))?;
    let dir = UploadDir(
        st.cfg
            .data_dir
            .join(UPLOADS_DIR)
            .join(uuid::Uuid::new_v4().simple().to_string()),
    );
    tokio::fs::create_dir_all(&dir.0).await.map_err(upload_io)?;
    let max_file = st.cfg.ingest.limits.max_file_bytes;
    let (mut sidecar, mut image, mut low) = (None, None, None);
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        let slot = match name.as_str() {
            "sidecar" => &mut sidecar,
            "image" => &mut image,
            "low" => &mut low,
            other => {
                return Err(AppError::bad(
                    other,
                    "unknown multipart part; expected sidecar, image and optionally low",
                ))
            }
        };
        if slot.is_some() {
            return Err(AppError::bad(&name, "part given twice"));
        }
        *slot = Some(if name == "sidecar" {
            receive(&mut field, &name, MAX_SIDECAR_BYTES, None).await?
        } else {
            let path = dir.0.join(&name);
            receive(&mut field, &name, max_file, Some(&path)).await?;
            Vec::new()
        });
    }
    // Complete and within the limits: read the images back for the decoder.
    let read = |name: &str| {
        let p = dir.0.join(name);
        async move {
            tokio::fs::read(&p)
                .await
                .map_err(|e| AppError::Internal(format!("reading back an upload: {e}")))
        }
    };
    let image = match image {
        Some(_) => Some(read("image").await?),
        None => None,
    };
    let low = match low {
        Some(_) => Some(read("low").await?),
        None => None,
    };
    drop(dir);
    let reject = |r: Rejection| async {
        st.ingestor.record_rejection(&r, Source::Http).await;
        AppError::from(r)
    };
    let Some(sidecar) = sidecar else {
        return Err(reject(Rejection::new(None, "sidecar", "multipart part is missing")).await);
    };
    let meta = match st.ingestor.parse_sidecar(&sidecar) {
        Ok(m) => m,
        Err(r) => return Err(reject(r).await),
    };
    let Some(image) = image else {
        return Err(reject(Rejection::new(
            Some(&meta.scan_id),
            "image",
            "multipart part is missing",
        ))
        .await);
    };
    let data = DropData {
        sidecar,
        image,
        low,
    };
    match st.ingestor.ingest(meta, data, Source::Http).await? {
        IngestOutcome::Stored { scan_id } => Ok((
            StatusCode::CREATED,
            [(header::LOCATION, format!("/api/v1/scans/{scan_id}"))],
            Json(json!({"scan_id": scan_id, "status": "stored"})),
        )
            .into_response()),
        IngestOutcome::Duplicate { scan_id } => Ok((
            StatusCode::OK,
            Json(json!({"scan_id": scan_id, "status": "duplicate"})),
        )
            .into_response()),
    }
}

#[derive(Debug, Deserialize)]
pub struct PinInput {
    pub pinned: bool,
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /api/v1/scans/{id}/pin` (admin): `{pinned, note?}` sets or releases the admin pin
/// that keeps the scan's images from retention; audited.
pub async fn pin(
    State(st): State<AppState>,
    axum::Extension(me): axum::Extension<super::auth::CurrentUser>,
    Path(id): Path<String>,
    Json(p): Json<PinInput>,
) -> Result<Json<serde_json::Value>, AppError> {
    check_id(&id)?;
    let (id2, actor) = (id.clone(), me.username.clone());
    let r = st
        .store
        .write(move |t| {
            Ok(crate::retention::set_pin(
                t,
                &id2,
                p.pinned,
                &actor,
                p.note.as_deref(),
            ))
        })
        .await?;
    match r {
        Ok(changed) => Ok(Json(
            json!({"scan_id": id, "pinned": p.pinned, "changed": changed}),
        )),
        Err(e @ crate::retention::PinError::NoSuchScan(_)) => {
            Err(AppError::NotFound(e.to_string()))
        }
        Err(e @ crate::retention::PinError::Evicted { .. }) => {
            Err(AppError::Conflict(e.to_string()))
        }
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}
