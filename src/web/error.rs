//! One error type for every handler: the client gets a status and a JSON body with a clear,
//! safe message (and the field at fault); causes the client must not see go to the log.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ingest::{IngestError, Rejection};
use crate::store::StoreError;

#[derive(Debug)]
pub enum AppError {
    BadRequest {
        field: Option<String>,
        message: String,
    },
    NotFound(String),
    /// Not logged in (no valid session cookie or API token).
    Unauthorized(String),
    /// Logged in, but the role may not do this, or the CSRF token is missing or wrong.
    Forbidden(String),
    Conflict(String),
    PayloadTooLarge(String),
    /// The drop or parameters are well-formed but invalid.
    Unprocessable {
        field: String,
        message: String,
    },
    /// Temporarily unable (busy, shutting down): the client should retry.
    Unavailable(String),
    /// The resource existed and was deleted on purpose (an evicted scan's images).
    Gone(String),
    /// The disk is full: nothing can be stored until space is freed.
    InsufficientStorage(String),
    /// Our fault. The cause is logged; the client sees only that it happened.
    Internal(String),
}

impl AppError {
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        AppError::BadRequest {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => AppError::Unavailable("the node is shutting down".into()),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<Rejection> for AppError {
    fn from(r: Rejection) -> Self {
        AppError::Unprocessable {
            field: r.field,
            message: r.message,
        }
    }
}

impl From<IngestError> for AppError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Rejected(r) => r.into(),
            e @ IngestError::Conflict { .. } => AppError::Conflict(e.to_string()),
            e @ IngestError::InFlight(_) => AppError::Conflict(e.to_string()),
            IngestError::ShuttingDown => AppError::Unavailable("the node is shutting down".into()),
            // The log names the data dir and free space; the client learns only what to
            // do (a path is of no use to a scanner and tells an attacker the layout).
            IngestError::DiskFull(d) => AppError::InsufficientStorage(format!(
                "the node's disk is full: {} MB free, below the floor of {} MB (retention.min_free_gb) and nothing more may be evicted; the scan was not stored, send it again later",
                d.free_mb, d.floor_mb
            )),
            IngestError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                AppError::InsufficientStorage(
                    "the node's disk is full; the scan was not stored, send it again later".into(),
                )
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, field, message) = match self {
            AppError::BadRequest { field, message } => {
                (StatusCode::BAD_REQUEST, "bad_request", field, message)
            }
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", None, m),
            AppError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", None, m),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", None, m),
            AppError::Conflict(m) => (StatusCode::CONFLICT, "conflict", None, m),
            AppError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", None, m),
            AppError::Unprocessable { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                Some(field),
                message,
            ),
            AppError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, m),
            AppError::Gone(m) => (StatusCode::GONE, "gone", None, m),
            AppError::InsufficientStorage(m) => {
                (StatusCode::INSUFFICIENT_STORAGE, "disk_full", None, m)
            }
            AppError::Internal(cause) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(error_id = %id, %cause, "internal error answering a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    None,
                    format!("internal error {id}; the node's log has the details"),
                )
            }
        };
        let body = serde_json::json!({"error": {"code": code, "field": field, "message": message}});
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}
