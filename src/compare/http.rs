//! HTTP routes of the transit check, for the operator's side-by-side view of a transit exit
//! scan: the aligned exit (on the entry's geometry), the heatmap of changes, and the entry
//! image it was compared with, all the same size so they overlay pixel for pixel (the
//! verdict's region boxes are in these pixels). Read-only; a client never sees paths or
//! internal errors.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::transit::{ALIGNED_FILE, HEATMAP_FILE};
use crate::scan::is_valid_scan_id;
use crate::store::{self, scans::ScanRecord};
use crate::web::api::{parse_image_params as window, ImageParams};
use crate::web::{AppError, AppState};

/// The stored transit exit scan `id`.
async fn exit_scan(st: &AppState, id: &str) -> Result<ScanRecord, AppError> {
    if !is_valid_scan_id(id) {
        return Err(AppError::bad(
            "scan_id",
            "not a valid scan id (A-Z a-z 0-9 . _ -)",
        ));
    }
    let id2 = id.to_string();
    let scan = st
        .store
        .read(move |c| store::scans::get(c, &id2))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("scan {id} is not stored on this node")))?;
    if scan.regime != "transit" || scan.direction != "exit" {
        return Err(AppError::NotFound(format!(
            "scan {id} is not a transit exit scan; only those have transit images"
        )));
    }
    Ok(scan)
}

fn png(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            // Replaced when an awaiting exit is paired: revalidate rather than cache.
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        bytes,
    )
        .into_response()
}

async fn read_file(path: std::path::PathBuf, missing: String) -> Result<Vec<u8>, AppError> {
    match tokio::fs::read(&path).await {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AppError::NotFound(missing)),
        Err(e) => Err(AppError::Internal(format!("{}: {e}", path.display()))),
    }
}

fn no_comparison(id: &str) -> String {
    format!(
        "scan {id} has no transit comparison (yet): its entry scan has not been compared with it"
    )
}

/// `GET /api/v1/scans/{id}/transit/aligned.png?center=&width=&invert=&max_width=`
pub async fn aligned(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ImageParams>,
) -> Result<Response, AppError> {
    let (w, max_width) = window(&p)?;
    let scan = exit_scan(&st, &id).await?;
    let path = st.cfg.data_dir.join(&scan.image_dir).join(ALIGNED_FILE);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AppError::NotFound(no_comparison(&id)))
        }
        Err(e) => return Err(AppError::Internal(format!("{}: {e}", path.display()))),
    };
    // The file appears when an awaiting exit is paired: its size and time are in the key,
    // so the shared render cache never serves an older comparison.
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("aligned:{id}:{}:{stamp}", meta.len());
    let out = crate::web::images::render_cached(&st, key, path, w, max_width).await?;
    Ok(png(out.to_vec()))
}

/// `GET /api/v1/scans/{id}/transit/aligned16.png`: the stored 16-bit aligned exit.
pub async fn aligned16(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let scan = exit_scan(&st, &id).await?;
    let bytes = read_file(
        st.cfg.data_dir.join(&scan.image_dir).join(ALIGNED_FILE),
        no_comparison(&id),
    )
    .await?;
    Ok(png(bytes))
}

/// `GET /api/v1/scans/{id}/transit/heatmap.png?max_width=`: RGBA, transparent where
/// nothing changed (yellow to red: removed; cyan to blue: added; green: compared area).
pub async fn heatmap(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ImageParams>,
) -> Result<Response, AppError> {
    let (_, max_width) = window(&p)?;
    let scan = exit_scan(&st, &id).await?;
    let bytes = read_file(
        st.cfg.data_dir.join(&scan.image_dir).join(HEATMAP_FILE),
        no_comparison(&id),
    )
    .await?;
    if max_width == 0 {
        return Ok(png(bytes));
    }
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, AppError> {
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .map_err(|e| AppError::Internal(e.to_string()))?
            .into_rgba8();
        if img.width() <= max_width {
            return Ok(bytes);
        }
        let h = ((img.height() as u64 * max_width as u64) / img.width() as u64).max(1) as u32;
        let small =
            image::imageops::resize(&img, max_width, h, image::imageops::FilterType::Triangle);
        let mut out = Vec::new();
        small
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(out)
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    Ok(png(out))
}
