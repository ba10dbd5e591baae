//! The library's HTTP face for the operator UI's manifest view: the list of references and
//! each reference's thumbnail, by the `reference_id` the verdict's `top_matches` name.
//! Read-only; errors reach the client as the web layer's safe messages.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::library;
use crate::web::{AppError, AppState};

/// `GET /api/v1/library`: every reference (id, HS code, description, tiles, fill).
pub async fn list(State(st): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    let refs = st.store.read(library::list).await?;
    Ok(Json(serde_json::json!({ "references": refs })))
}

/// `GET /api/v1/library/{reference_id}/image.png`: the reference's 8-bit thumbnail.
pub async fn image(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    if !crate::scan::is_valid_scan_id(&id) {
        return Err(AppError::NotFound(format!("no library reference {id:?}")));
    }
    let key = id.clone();
    let Some(r) = st.store.read(move |c| library::get(c, &key)).await? else {
        return Err(AppError::NotFound(format!("no library reference {id:?}")));
    };
    let path = st.cfg.data_dir.join(&r.thumbnail);
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
