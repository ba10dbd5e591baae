//! Evidence export from the UI and the API: `POST /exports` (the scan page's form) and
//! `POST /api/v1/exports` (JSON `{"by":"scan|container|declaration","value":"..."}`) answer
//! with the signed evidence zip that `riac-node export` writes, as a download. Supervisors
//! and admins only (see [`super::auth::policy`]): an export is everything the node holds
//! about a case, and each one is audited under the caller's name.
//!
//! It owns only the HTTP side; the zip itself is [`crate::export`]'s. It must never leave a
//! zip behind in the data dir (the file is unlinked as soon as it is open) and never build
//! two exports at once, which would compete with the scan pipeline for the CPU.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::{Extension, Form, Json};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use super::auth::CurrentUser;
use super::{AppError, AppState};
use crate::export::{ExportError, Selection};

/// The UI's form: which selection, plus the CSRF field the access layer already checked.
#[derive(Debug, Deserialize)]
pub struct ExportForm {
    by: String,
    value: String,
}

pub async fn form(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Form(f): Form<ExportForm>,
) -> Result<Response, AppError> {
    let sel = selection(&f.by, &f.value)?;
    download(st, me, sel).await
}

pub async fn api(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Json(sel): Json<serde_json::Value>,
) -> Result<Response, AppError> {
    let field = |k: &str| {
        sel.get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| AppError::bad(k, format!("`{k}` is missing or not a string")))
    };
    let sel = selection(field("by")?, field("value")?)?;
    download(st, me, sel).await
}

fn selection(by: &str, value: &str) -> Result<Selection, AppError> {
    let value = value.trim();
    // Declaration numbers and container ids are what the sidecar accepted (1-64 printable
    // characters); they only ever reach the database as bound parameters.
    if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
        return Err(AppError::bad(
            "value",
            format!("{value:?} must be 1-64 printable characters"),
        ));
    }
    Ok(match by {
        "scan" => {
            super::api::check_id(value).map_err(|_| {
                AppError::bad(
                    "value",
                    format!("{value:?} is not a scan id (A-Z a-z 0-9 . _ -)"),
                )
            })?;
            Selection::Scan(value.to_string())
        }
        "container" => Selection::Container(value.to_string()),
        "declaration" => Selection::Declaration(value.to_string()),
        other => {
            return Err(AppError::bad(
                "by",
                format!("{other:?}: choose scan, container or declaration"),
            ))
        }
    })
}

async fn download(st: AppState, me: CurrentUser, sel: Selection) -> Result<Response, AppError> {
    let Some(key) = st.node_key.clone() else {
        return Err(AppError::Unavailable(
            "evidence export needs the node's signing key, which this server was started without; use `riac-node export` on the node".into(),
        ));
    };
    let Ok(_permit) = st.export_permit.clone().try_acquire_owned() else {
        return Err(AppError::Unavailable(
            "another evidence export is being built on this node; try again in a minute".into(),
        ));
    };
    let (by, value) = match &sel {
        Selection::Scan(v) => ("scan", v),
        Selection::Container(v) => ("container", v),
        Selection::Declaration(v) => ("declaration", v),
    };
    let name = format!(
        "evidence-{by}-{}-{}Z.zip",
        value
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            })
            .collect::<String>(),
        crate::store::now_rfc3339()
            .chars()
            .filter(char::is_ascii_digit)
            .take(14)
            .collect::<String>()
    );
    let job = crate::export::ExportJob {
        store: st.store.clone(),
        data_dir: st.cfg.data_dir.clone(),
        key,
        node_id: Some(st.cfg.node_id.clone()),
        selection: sel,
        actor: me.username.clone(),
    };
    let (summary, file) =
        crate::export::export_for_download(job, format!("download over HTTP ({name})"))
            .await
            .map_err(|e| match e {
                e @ ExportError::NothingSelected { .. } => AppError::NotFound(e.to_string()),
                e @ ExportError::Write { .. } if e.to_string().contains("No space left") => {
                    AppError::InsufficientStorage(e.to_string())
                }
                other => AppError::Internal(other.to_string()),
            })?;
    tracing::info!(user = %me.username, scans = summary.scans.len(), files = summary.files, bytes = summary.bytes, %name, "evidence exported for download");
    let len = file.metadata().map(|m| m.len()).ok();
    let body = Body::from_stream(ReaderStream::new(tokio::fs::File::from_std(file)));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(r)
}
