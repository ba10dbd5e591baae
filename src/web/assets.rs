//! The UI's static files (CSS, JavaScript), compiled into the binary so the node needs no
//! files beside it and no network. URLs carry a content hash (`?v=`), so browsers may cache
//! them for a year and still get a new version the moment the binary changes.

use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::store::chain::sha256_hex;

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "viewer.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("assets/viewer.js"),
    },
    Asset {
        name: "transit.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("assets/transit.js"),
    },
];

fn hashes() -> &'static Vec<String> {
    static H: OnceLock<Vec<String>> = OnceLock::new();
    H.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| sha256_hex(a.body.as_bytes())[..12].to_string())
            .collect()
    })
}

/// An asset's text (the viewer benchmark serves the real files).
pub fn body(name: &str) -> Option<&'static str> {
    ASSETS.iter().find(|a| a.name == name).map(|a| a.body)
}

/// The versioned URL of an asset, for pages to link.
pub fn url(name: &str) -> String {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => format!("/static/{name}?v={}", hashes()[i]),
        None => format!("/static/{name}"),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Version {
    v: Option<String>,
}

pub async fn serve(
    Path(file): Path<String>,
    Query(q): Query<Version>,
    headers: HeaderMap,
) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == file) else {
        return super::AppError::NotFound(format!("no static file {file:?}")).into_response();
    };
    let (a, hash) = (&ASSETS[i], &hashes()[i]);
    let etag = format!("\"{hash}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let cache = if q.v.as_deref() == Some(hash.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (
        [
            (header::CONTENT_TYPE, a.mime),
            (header::CACHE_CONTROL, cache),
        ],
        a.body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// No icon: answer 204 so browsers stop asking and logs stay quiet.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}
