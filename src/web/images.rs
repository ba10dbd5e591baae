//! Image delivery for the viewer. A browser canvas decodes a 16-bit PNG to 8 bits, which
//! would throw away the detail window/level is for, so the viewer gets the samples
//! themselves ([`samples`], format `riac.samples/1` below) and applies window, palette and
//! invert in JavaScript; thumbnails and the transit view use 8-bit renderings. Encoding and
//! rendering run off the runtime, at most two at a time, and their results are cached
//! (bounded by bytes), so a queue page of thumbnails costs one decode per scan, not one
//! per view. Nothing here writes to disk.
//!
//! `riac.samples/1`: 16 bytes of header — `RIACS16` and a version byte `1`, width and
//! height as little-endian u32 — then the image's row-major 16-bit samples after a
//! horizontal difference (each sample minus its left neighbour, the first of a row minus
//! the first of the row above, wrapping), split into a plane of low bytes and then a plane
//! of high bytes. The differences of neighbouring pixels are mostly small, so the planes
//! deflate well; the body is sent gzip-compressed (`Content-Encoding: gzip`, which the
//! browser undoes natively), and undoing the difference is one pass in JavaScript.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::api::{load_scan, parse_image_params, ImageParams};
use super::{AppError, AppState};
use crate::imaging::{self, Gray16, Window};
use crate::ingest::CANONICAL_IMAGE;
use crate::store;

pub const SAMPLES_MAGIC: &[u8; 8] = b"RIACS16\x01";

/// Encodes `img` as `riac.samples/1` (before gzip).
pub fn encode_samples(img: &Gray16) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = w * h;
    let px = img.as_raw();
    let mut out = vec![0u8; 16 + 2 * n];
    out[..8].copy_from_slice(SAMPLES_MAGIC);
    out[8..12].copy_from_slice(&(w as u32).to_le_bytes());
    out[12..16].copy_from_slice(&(h as u32).to_le_bytes());
    let (lo, hi) = out[16..].split_at_mut(n);
    for y in 0..h {
        let row = &px[y * w..(y + 1) * w];
        let mut prev = if y == 0 { 0 } else { px[(y - 1) * w] };
        for (x, &v) in row.iter().enumerate() {
            let d = v.wrapping_sub(prev);
            lo[y * w + x] = d as u8;
            hi[y * w + x] = (d >> 8) as u8;
            prev = v;
        }
    }
    out
}

/// The inverse of [`encode_samples`]: (width, height, samples). The JavaScript viewer
/// does the same; this one is for tests and the benchmark.
pub fn decode_samples(b: &[u8]) -> Option<(u32, u32, Vec<u16>)> {
    if b.len() < 16 || &b[..8] != SAMPLES_MAGIC {
        return None;
    }
    let w = u32::from_le_bytes(b[8..12].try_into().ok()?) as usize;
    let h = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    let n = w.checked_mul(h)?;
    if b.len() != 16 + 2 * n {
        return None;
    }
    let (lo, hi) = b[16..].split_at(n);
    let mut out = vec![0u16; n];
    for y in 0..h {
        let mut prev = if y == 0 { 0 } else { out[(y - 1) * w] };
        for x in 0..w {
            let i = y * w + x;
            let v = prev.wrapping_add(u16::from(lo[i]) | (u16::from(hi[i]) << 8));
            out[i] = v;
            prev = v;
        }
    }
    Some((w as u32, h as u32, out))
}

pub fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::new(level),
    );
    e.write_all(bytes).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// The gzip level used for samples: level 1 gives nearly the size of level 6 at a
/// fraction of the time on these planes (see `riac-node bench viewer`).
pub const SAMPLES_GZIP_LEVEL: u32 = 1;

/// Rendered images and sample payloads, least recently used out first, bounded by bytes.
/// Two of them: small renderings (thumbnails, transit layers) and the viewer's payloads
/// (megabytes each), so that opening a dozen scans never evicts the queue's thumbnails.
pub struct ImageCache {
    inner: Mutex<CacheInner>,
    budget: usize,
}

/// Decodes of whole scans at once, across both caches (each holds a full image).
pub struct ImageWork {
    pub renders: ImageCache,
    pub samples: ImageCache,
    permits: Semaphore,
}

impl Default for ImageWork {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageWork {
    pub fn new() -> Self {
        ImageWork {
            renders: ImageCache::new(32 * 1024 * 1024),
            samples: ImageCache::new(64 * 1024 * 1024),
            permits: Semaphore::new(2),
        }
    }

    /// The value cached under `key` in `cache`, or `make` run off the runtime (at most
    /// two at once), then cached.
    pub async fn get_or_make<F>(
        &self,
        cache: &ImageCache,
        key: String,
        make: F,
    ) -> Result<Bytes, AppError>
    where
        F: FnOnce() -> Result<Vec<u8>, AppError> + Send + 'static,
    {
        if let Some(v) = cache.get(&key) {
            return Ok(v);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable("the node is shutting down".into()))?;
        if let Some(v) = cache.get(&key) {
            return Ok(v);
        }
        let v = Bytes::from(
            tokio::task::spawn_blocking(make)
                .await
                .map_err(|e| AppError::Internal(e.to_string()))??,
        );
        cache.put(key, v.clone());
        Ok(v)
    }
}

struct CacheInner {
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ImageCache {
    pub fn new(budget: usize) -> Self {
        ImageCache {
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            budget,
        }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        let mut c = self.inner.lock().expect("cache lock");
        let v = c.map.get(key).cloned()?;
        if let Some(pos) = c.order.iter().position(|k| k == key) {
            c.order.remove(pos);
        }
        c.order.push_back(key.to_string());
        Some(v)
    }

    pub fn put(&self, key: String, v: Bytes) {
        if v.len() > self.budget / 4 {
            return;
        }
        let mut c = self.inner.lock().expect("cache lock");
        if let Some(old) = c.map.insert(key.clone(), v.clone()) {
            c.bytes -= old.len();
            if let Some(pos) = c.order.iter().position(|k| *k == key) {
                c.order.remove(pos);
            }
        }
        c.bytes += v.len();
        c.order.push_back(key);
        while c.bytes > self.budget {
            let Some(k) = c.order.pop_front() else { break };
            if let Some(old) = c.map.remove(&k) {
                c.bytes -= old.len();
            }
        }
    }
}

fn read_png16(path: &std::path::Path) -> Result<Gray16, AppError> {
    let bytes =
        std::fs::read(path).map_err(|e| AppError::Internal(format!("{}: {e}", path.display())))?;
    imaging::decode_png16(&bytes)
        .map_err(|e| AppError::Internal(format!("{}: {e}", path.display())))
}

/// Renders the 16-bit PNG at `path` with `window`, at most `max_width` wide, through the
/// cache under `key`.
pub async fn render_cached(
    st: &AppState,
    key: String,
    path: std::path::PathBuf,
    window: Window,
    max_width: u32,
) -> Result<Bytes, AppError> {
    let key = format!(
        "png8:{key}:{}:{}:{}:{max_width}",
        window.center, window.width, window.invert
    );
    st.images
        .get_or_make(&st.images.renders, key, move || {
            let img = read_png16(&path)?;
            let img = imaging::fit_width(&img, max_width);
            imaging::encode_png8(&imaging::window_level(&img, window))
                .map_err(|e| AppError::Internal(e.to_string()))
        })
        .await
}

pub fn png_response(png: Bytes, etag: Option<String>) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        png,
    )
        .into_response();
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        r.headers_mut().insert(header::ETAG, e);
    }
    r
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// `GET /api/v1/scans/{id}/samples`: the scan's 16-bit samples for the viewer
/// (`riac.samples/1`, see the module doc).
pub async fn samples(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let scan = super::api::load_scan_with_images(&st, &id).await?;
    // A scan id's content never changes (a different drop under the same id is refused),
    // so its hash is a strong validator.
    let etag = format!(
        "\"{}-s1\"",
        &scan.content_sha256[..32.min(scan.content_sha256.len())]
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let path = st.cfg.data_dir.join(&scan.image_dir).join(CANONICAL_IMAGE);
    let gz = st
        .images
        .get_or_make(&st.images.samples, format!("samples:{id}"), move || {
            let img = read_png16(&path)?;
            Ok(gzip(&encode_samples(&img), SAMPLES_GZIP_LEVEL))
        })
        .await?;
    let mut r = if accepts_gzip(&headers) {
        let mut r = gz.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        let plain = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out)
                .map(|_| out)
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))?;
        plain.into_response()
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(r)
}

/// `GET /api/v1/scans/{id}/transit/entry.png`: the entry scan this exit scan was compared
/// with, rendered like `image.png` — from the local store when the entry was scanned here,
/// else from the entry package received from the entry site.
pub async fn transit_entry(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<ImageParams>,
) -> Result<Response, AppError> {
    let (window, max_width) = parse_image_params(&p)?;
    load_scan(&st, &id).await?;
    let id2 = id.clone();
    let verdict = st
        .store
        .read(move |c| store::verdicts::current_for_scan(c, &id2))
        .await?;
    let entry_id = verdict
        .as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| {
            v.pointer("/transit/entry_scan_id")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| AppError::NotFound(format!("scan {id} has no paired entry scan")))?;
    if !crate::scan::is_valid_scan_id(&entry_id) {
        return Err(AppError::NotFound(format!(
            "scan {id} has no usable entry scan id"
        )));
    }
    let e2 = entry_id.clone();
    let (local, package) = st
        .store
        .read(move |c| Ok((store::scans::get(c, &e2)?, store::entries::get(c, &e2)?)))
        .await?;
    let path = match (local, package) {
        (Some(s), _) => {
            super::api::load_scan_with_images(&st, &s.scan_id).await?;
            st.cfg.data_dir.join(s.image_dir).join(CANONICAL_IMAGE)
        }
        (None, Some(p)) if p.evicted_at.is_some() => {
            return Err(AppError::Gone(format!(
                "the image of entry package {entry_id} was removed by retention at {} (no exit scan here needed it any more)",
                p.evicted_at.unwrap_or_default()
            )))
        }
        (None, Some(p)) => {
            // The path was written by this node's uplink, but the package came from another
            // node: never follow it out of the data dir.
            let rel = std::path::Path::new(&p.image_path);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(AppError::Internal(format!(
                    "entry package {entry_id} names an image outside the data dir: {}",
                    p.image_path
                )));
            }
            st.cfg.data_dir.join(rel)
        }
        (None, None) => {
            return Err(AppError::NotFound(format!(
                "entry scan {entry_id} is not on this node (neither scanned here nor received as an entry package)"
            )))
        }
    };
    let png = render_cached(&st, format!("entry:{entry_id}"), path, window, max_width).await?;
    Ok(png_response(png, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_exactly() {
        let px: Vec<u16> = (0..7 * 5).map(|i| ((i * 7919) % 65536) as u16).collect();
        let img = imaging::gray16(7, 5, px.clone()).unwrap();
        let enc = encode_samples(&img);
        assert_eq!(enc.len(), 16 + 2 * 35);
        let (w, h, back) = decode_samples(&enc).unwrap();
        assert_eq!((w, h), (7, 5));
        assert_eq!(back, px);
        assert!(decode_samples(&enc[..20]).is_none());
    }

    #[test]
    fn cache_evicts_oldest_beyond_its_budget() {
        let budget = 1000;
        let c = ImageCache::new(budget);
        let big = Bytes::from(vec![0u8; budget / 5]);
        for i in 0..6 {
            c.put(format!("k{i}"), big.clone());
        }
        assert!(c.get("k0").is_none(), "oldest evicted");
        assert!(c.get("k5").is_some());
        assert!(c.inner.lock().unwrap().bytes <= budget);
        c.put("huge".into(), Bytes::from(vec![0u8; budget / 2]));
        assert!(
            c.get("huge").is_none(),
            "a value over a quarter of the budget is not kept"
        );
    }
}
