//! `riac-node bench viewer`: what it costs to show a 4000x1400 16-bit scan, on both sides.
//! Server side: decoding the stored PNG, encoding the viewer's samples (riac.samples/1) at
//! two gzip levels, the payload sizes against the stored PNG and plain gzip, and — for
//! comparison — rendering one window server-side to an 8-bit PNG (what every window change
//! would cost if the server rendered). Client side, when Chromium is installed: the real
//! viewer.js in headless Chromium, fetching the payload from a loopback server and timing
//! its decode, its window/level application (lookup table over every pixel, then the canvas
//! upload) and a redraw at a new zoom. Never run by tests or the daemon.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::sync::oneshot;

use super::images::{encode_samples, gzip, SAMPLES_GZIP_LEVEL};
use crate::imaging::{self, Window};
use crate::sim::{SimOptions, Simulator};

#[derive(Debug, Serialize)]
pub struct ViewerReport {
    pub width: u32,
    pub height: u32,
    pub cpus: usize,
    pub png16_bytes: usize,
    pub png16_decode_ms: f64,
    pub samples_encode_ms: f64,
    pub samples_gzip1_ms: f64,
    pub samples_gzip1_bytes: usize,
    pub samples_gzip6_ms: f64,
    pub samples_gzip6_bytes: usize,
    /// The samples without the difference coding, gzip level 1: what the coding buys.
    pub raw_u16_gzip1_bytes: usize,
    /// One server-side window at full resolution, 8-bit PNG: the per-change cost of the
    /// alternative design.
    pub server_window_png8_ms: f64,
    pub server_window_png8_bytes: usize,
    /// Measured in headless Chromium with the real viewer.js; `None` without a browser.
    pub browser: Option<serde_json::Value>,
    pub browser_note: String,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Median of `n` runs of `f`, in ms (the first run warms caches and is counted).
fn time_median<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    (ms(times[times.len() / 2]), last.expect("n >= 1"))
}

#[derive(Debug, thiserror::Error)]
pub enum ViewerBenchError {
    #[error("bench setup failed: {0}")]
    Setup(String),
}

fn default_browser() -> Option<PathBuf> {
    [
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

pub async fn viewer(
    width: u32,
    height: u32,
    browser: Option<PathBuf>,
) -> Result<ViewerReport, ViewerBenchError> {
    let (mut report, gz) = tokio::task::spawn_blocking(move || server_side(width, height))
        .await
        .map_err(|e| ViewerBenchError::Setup(e.to_string()))??;
    match browser.or_else(default_browser) {
        None => {
            report.browser_note =
                "no Chromium found (install chromium, or pass --browser): client side not measured"
                    .into()
        }
        Some(b) => match client_side(&b, width, height, gz).await {
            Ok(v) => {
                report.browser = Some(v);
                report.browser_note = format!(
                    "{} headless, software rendering (--disable-gpu), the real viewer.js",
                    b.display()
                );
            }
            Err(e) => report.browser_note = format!("browser run failed: {e}"),
        },
    }
    Ok(report)
}

fn server_side(width: u32, height: u32) -> Result<(ViewerReport, Bytes), ViewerBenchError> {
    // A realistic scan (the simulator at full resolution) resampled to the asked size.
    let d = Simulator::new(SimOptions::default()).next_drop();
    let img = image::imageops::resize(
        &d.image,
        width,
        height,
        image::imageops::FilterType::Triangle,
    );
    let png16 = imaging::encode_png16(&img).map_err(|e| ViewerBenchError::Setup(e.to_string()))?;
    let (png16_decode_ms, decoded) = time_median(5, || imaging::decode_png16(&png16));
    let decoded = decoded.map_err(|e| ViewerBenchError::Setup(e.to_string()))?;
    let (samples_encode_ms, samples) = time_median(5, || encode_samples(&decoded));
    let (samples_gzip1_ms, gz1) = time_median(5, || gzip(&samples, SAMPLES_GZIP_LEVEL));
    let (samples_gzip6_ms, gz6) = time_median(3, || gzip(&samples, 6));
    let raw: Vec<u8> = decoded
        .as_raw()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let raw_gz = gzip(&raw, 1);
    let w = Window {
        center: 30000.0,
        width: 40000.0,
        invert: false,
    };
    let (server_window_png8_ms, png8) = time_median(5, || {
        imaging::encode_png8(&imaging::window_level(&decoded, w))
    });
    let png8 = png8.map_err(|e| ViewerBenchError::Setup(e.to_string()))?;
    Ok((
        ViewerReport {
            width,
            height,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            png16_bytes: png16.len(),
            png16_decode_ms,
            samples_encode_ms,
            samples_gzip1_ms,
            samples_gzip1_bytes: gz1.len(),
            samples_gzip6_ms,
            samples_gzip6_bytes: gz6.len(),
            raw_u16_gzip1_bytes: raw_gz.len(),
            server_window_png8_ms,
            server_window_png8_bytes: png8.len(),
            browser: None,
            browser_note: String::new(),
        },
        Bytes::from(gz1),
    ))
}

const BENCH_JS: &str = r#"
"use strict";
(async function () {
  const v = () => window.RIAC && window.RIAC.viewer;
  const t0 = performance.now();
  while (!(v() && v().ready)) {
    if (performance.now() - t0 > 120000) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const api = v();
  const out = { ready: !!(api && api.ready) };
  if (out.ready) {
    out.fetch_and_decode_ms = api.loadMs;
    out.decode_ms = api.decodeMs;
    const applies = [];
    for (let i = 0; i < 25; i++) {
      api.state.center = 15000 + i * 1500;
      api.state.width = 20000 + (i % 5) * 5000;
      api.apply();
      applies.push(api.applyMs);
    }
    applies.sort((a, b) => a - b);
    out.window_apply_ms_median = applies[12];
    out.window_apply_ms_p95 = applies[23];
    // Reading one pixel back makes the canvas finish drawing, so the time is the redraw's
    // and not only its submission.
    const view = document.getElementById("view").getContext("2d");
    const draws = [];
    for (let i = 0; i < 25; i++) {
      const t = performance.now();
      api.state.scale *= i % 2 ? 1.3 : 1 / 1.3;
      api.draw();
      view.getImageData(0, 0, 1, 1);
      draws.push(performance.now() - t);
    }
    draws.sort((a, b) => a - b);
    out.zoom_redraw_ms_median = draws[12];
    out.canvas = [document.getElementById("view").width, document.getElementById("view").height];
  }
  await fetch("/result", { method: "POST", body: JSON.stringify(out) });
})();
"#;

async fn client_side(
    browser: &std::path::Path,
    width: u32,
    height: u32,
    gz: Bytes,
) -> Result<serde_json::Value, String> {
    let (tx, rx) = oneshot::channel::<String>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/static/app.css"></head>
<body><section id="viewer" class="viewer" data-samples="/samples" data-width="{width}" data-height="{height}" data-pixel-mm="5,5">
<div class="toolbar"><button data-preset="full">Full</button><input id="wl-center" type="range" min="0" max="65535"><output id="wl-center-out"></output>
<input id="wl-width" type="range" min="1" max="65536"><output id="wl-width-out"></output><input id="invert" type="checkbox">
<select id="palette"><option value="gray">Gray</option></select><button id="zoom-fit">Fit</button><button id="zoom-1">1:1</button><button id="profile-toggle">P</button></div>
<div id="stage" class="stage"><canvas id="view"></canvas><div id="viewer-status"></div></div><div id="readout"></div><canvas id="profile" hidden></canvas></section>
<script src="/static/app.js"></script><script src="/static/viewer.js"></script><script src="/bench.js"></script></body></html>"#
    );
    let asset = |name: &'static str| {
        let body = super::assets::body(name).unwrap_or_default();
        let mime = if name.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        move || async move { ([(header::CONTENT_TYPE, mime)], body) }
    };
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route("/static/app.css", get(asset("app.css")))
        .route("/static/app.js", get(asset("app.js")))
        .route("/static/viewer.js", get(asset("viewer.js")))
        .route(
            "/bench.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], BENCH_JS) }),
        )
        .route(
            "/samples",
            get(move || {
                let gz = gz.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/octet-stream"),
                            (header::CONTENT_ENCODING, "gzip"),
                        ],
                        gz,
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/result",
            post(move |body: String| {
                let tx = tx.clone();
                async move {
                    if let Some(tx) = tx.lock().expect("result lock").take() {
                        let _ = tx.send(body);
                    }
                    ""
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1600,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", browser.display()))?;
    let result = tokio::time::timeout(Duration::from_secs(180), rx).await;
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    let body = result
        .map_err(|_| "no result from the browser within 180 s".to_string())?
        .map_err(|_| "the result channel closed".to_string())?;
    serde_json::from_str(&body).map_err(|e| format!("bad result {body:?}: {e}"))
}
