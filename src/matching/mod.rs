//! Reference matching: the ONNX embedding model ([`model`]), the cargo band and its tiles
//! ([`tiles`]), the reference library in SQLite with exact nearest-neighbour search
//! ([`library`]), and the manifest and empty-container checks ([`check`]). [`Matcher`] ties
//! them together for one scan; [`cli`] is `riac-node library ...` and `riac-node match`;
//! [`bench`] is `riac-node bench match`.
//!
//! It owns the model, the library tables and the library thumbnails. It must never decide a
//! whole verdict (it returns its [`Contribution`] for the pipeline to combine with the other
//! checks), never run inference on the async runtime (callers use `spawn_blocking`), and
//! never fetch a model: the model is a file with a contract, checked at load.

pub mod bench;
pub mod check;
pub mod cli;
pub mod empty;
pub mod http;
pub mod library;
pub mod model;
pub mod photometry;
pub mod tiles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::imaging::Gray16;
use crate::scan::verdict::{ManifestResult, ManifestStatus, Outcome};
use crate::scan::CabSide;
use crate::store::scans::ScanRecord;
use crate::store::{Store, StoreError};

pub use check::{CheckParams, Contribution};
pub use library::LibraryIndex;
pub use model::{Backend, EmbeddingModel, ModelError, ModelSpec};
pub use tiles::{Prepared, Preproc};

/// Tiles run through the model at once: bounds the input tensor (64 x 64 x 64 floats).
pub const BATCH: usize = 64;

/// How the node picks its ONNX backend (`matching.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// ONNX Runtime when `matching.ort_library` or `ORT_DYLIB_PATH` names a library, else tract.
    Auto,
    Tract,
    OnnxRuntime,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "tract" => Some(Self::Tract),
            "onnxruntime" => Some(Self::OnnxRuntime),
            _ => None,
        }
    }
}

/// The backend to load: the configured library first, then `ORT_DYLIB_PATH`.
pub fn resolve_backend(
    choice: BackendChoice,
    ort_library: Option<&Path>,
) -> Result<Backend, ModelError> {
    let lib = ort_library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    match (choice, lib) {
        (BackendChoice::Tract, _) | (BackendChoice::Auto, None) => Ok(Backend::Tract),
        (_, Some(library)) => {
            if !library.is_file() {
                return Err(ModelError::Runtime {
                    path: library,
                    message: "no such file".into(),
                });
            }
            Ok(Backend::OnnxRuntime { library })
        }
        (BackendChoice::OnnxRuntime, None) => Err(ModelError::Runtime {
            path: PathBuf::from("(none)"),
            message: "matching.backend = \"onnxruntime\" needs matching.ort_library or ORT_DYLIB_PATH to name libonnxruntime.so".into(),
        }),
    }
}

/// The model shipped with this source tree, for `demo` and the tests.
pub fn bundled_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/riac-texture.toml")
}

#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {message}")]
    Drop { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A scan's embeddings: L2-normalised tile rows and their mean (normalised) as descriptor.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub prepared: Prepared,
    /// The empty check's measure of the same image, made once for both checks.
    pub empty: empty::EmptyEvidence,
    /// The air and dark levels the tiles' attenuation is referenced to.
    pub photometry: photometry::Photometry,
    pub dim: usize,
    pub tiles: Vec<f32>,
    pub descriptor: Vec<f32>,
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The model's input for one image: the empty check's measure of its cargo space, the
/// photometry the model's contract asks for, and the cargo tiles in those units. The one
/// path from an image to tiles, for matching, library import and the model's training data.
pub fn prepare_for_model(
    img: &Gray16,
    pixel_mm: Option<[f64; 2]>,
    cab_left: Option<bool>,
    preproc: &Preproc,
) -> (Prepared, empty::EmptyEvidence, photometry::Photometry) {
    let cab_side = cab_left.map(|l| if l { CabSide::Left } else { CabSide::Right });
    let empty = empty::measure(img, pixel_mm, cab_side);
    let photometry = if preproc.dark_level {
        photometry::Photometry::measure(img.as_raw())
    } else {
        photometry::Photometry::raw(img.as_raw())
    };
    let prepared = tiles::prepare(img, pixel_mm, cab_left, preproc, &photometry);
    (prepared, empty, photometry)
}

impl EmbeddingModel {
    pub fn preproc(&self) -> Preproc {
        let i = &self.spec.input;
        Preproc {
            pixel_mm: i.pixel_mm,
            tile: i.tile as usize,
            stride: i.stride as usize,
            clip: i.clip,
            dark_level: i.normalisation == model::NORMALISATION_DARK,
        }
    }

    /// Finds the cargo band of `img`, embeds its tiles in batches of [`BATCH`]. Blocking.
    pub fn embed_image(
        &self,
        img: &Gray16,
        pixel_mm: Option<[f64; 2]>,
        cab_left: Option<bool>,
    ) -> Result<Embedded, ModelError> {
        let (prepared, empty, photometry) =
            prepare_for_model(img, pixel_mm, cab_left, &self.preproc());
        let dim = self.dim();
        let t2 = (self.spec.input.tile as usize).pow(2);
        let n = prepared.tile_count();
        let mut out = Vec::with_capacity(n * dim);
        for first in (0..n).step_by(BATCH) {
            let k = BATCH.min(n - first);
            let emb = self.run_batch(&prepared.tiles[first * t2..(first + k) * t2], k)?;
            out.extend(emb);
        }
        for row in out.chunks_mut(dim) {
            normalise(row);
        }
        let mut descriptor = vec![0f32; dim];
        for row in out.chunks(dim) {
            descriptor.iter_mut().zip(row).for_each(|(d, x)| *d += x);
        }
        normalise(&mut descriptor);
        Ok(Embedded {
            prepared,
            empty,
            photometry,
            dim,
            tiles: out,
            descriptor,
        })
    }
}

/// Milliseconds spent per stage of one match.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub prepare_and_embed_ms: f64,
    pub search_ms: f64,
    pub total_ms: f64,
}

/// One scan matched: the verdict's part and how long it took.
#[derive(Debug, Clone)]
pub struct MatchReport {
    pub contribution: Contribution,
    pub timings: Timings,
    pub embedded: Embedded,
}

/// The model, the check thresholds and the library, for one node or one CLI run.
pub struct Matcher {
    model: EmbeddingModel,
    // Read to copy, written by the centre's `cmd/thresholds`; never held across inference.
    params: std::sync::RwLock<CheckParams>,
    store: Store,
    // A std Mutex: held only to swap the Arc, never across inference or an await.
    index: Mutex<Option<Arc<LibraryIndex>>>,
}

impl Matcher {
    pub fn new(model: EmbeddingModel, params: CheckParams, store: Store) -> Self {
        Matcher {
            model,
            params: std::sync::RwLock::new(params),
            store,
            index: Mutex::new(None),
        }
    }

    pub fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    /// The manifest-check thresholds in force.
    pub fn params(&self) -> CheckParams {
        *self.params.read().expect("params lock")
    }

    /// Replaces the thresholds in force (the centre's `cmd/thresholds`).
    pub fn set_params(&self, p: CheckParams) {
        *self.params.write().expect("params lock") = p;
    }

    /// The library index, reloaded from the store when its content changed (a `library
    /// import` beside the running node). Blocking.
    pub fn index(&self) -> Result<Arc<LibraryIndex>, StoreError> {
        let current = self.index.lock().expect("index lock").clone();
        let generation = self.store.read_blocking(library::generation)?;
        if let Some(idx) = current.filter(|i| i.generation == generation) {
            return Ok(idx);
        }
        let sha = self.model.reference().sha256;
        let dim = self.model.dim();
        let idx = Arc::new(
            self.store
                .read_blocking(|c| LibraryIndex::load(c, &sha, dim))?,
        );
        if idx.stale > 0 {
            tracing::warn!(
                stale = idx.stale,
                "library references embedded by another model are ignored; run `riac-node library import` on their folder again"
            );
        }
        *self.index.lock().expect("index lock") = Some(idx.clone());
        Ok(idx)
    }

    /// Runs both checks on one image. Blocking and CPU-heavy: call from `spawn_blocking`.
    pub fn check_image(
        &self,
        declared: &[String],
        img: &Gray16,
        pixel_mm: Option<[f64; 2]>,
        cab_left: Option<bool>,
    ) -> Result<MatchReport, MatchError> {
        let t0 = Instant::now();
        // Embedding measures the cargo space against its own walls too (the band's
        // fixed-level fill only where no carrier with walls is found).
        let embedded = self.model.embed_image(img, pixel_mm, cab_left)?;
        let empty = &embedded.empty;
        let t1 = Instant::now();
        let index = self.index()?;
        let scores = index.reference_scores(&embedded.tiles);
        let evidence = check::Evidence {
            declared,
            fill: empty.fill,
            basis: empty.basis(),
            tiles: embedded.prepared.tile_count(),
            scores: index
                .refs
                .iter()
                .zip(&scores)
                .map(|(r, s)| (r.reference_id.as_str(), r.hs_code.as_str(), *s))
                .collect(),
        };
        let mut contribution = check::decide(&evidence, &self.params());
        contribution.model = Some(self.model.reference());
        let t2 = Instant::now();
        Ok(MatchReport {
            contribution,
            timings: Timings {
                prepare_and_embed_ms: ms(t1 - t0),
                search_ms: ms(t2 - t1),
                total_ms: ms(t2 - t0),
            },
            embedded,
        })
    }

    /// The manifest part of a stored scan's verdict. Never fails: a scan that cannot be
    /// matched gets `unknown` and a reason saying why, so the verdict is `refer`. Blocking.
    pub fn check_stored_scan(&self, data_dir: &Path, scan: &ScanRecord) -> Contribution {
        let declared = declared_codes(scan.sidecar.as_ref());
        let path = data_dir
            .join(&scan.image_dir)
            .join(crate::ingest::CANONICAL_IMAGE);
        let img = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::imaging::decode_png16(&b).map_err(|e| e.to_string()))
        {
            Ok(img) => img,
            Err(e) => {
                tracing::error!(scan_id = %scan.scan_id, path = %path.display(), error = %e, "cannot read the stored image for matching");
                return not_run(declared, "the stored image could not be read");
            }
        };
        let (pixel_mm, cab_left) = image_geometry(scan.sidecar.as_ref());
        match self.check_image(&declared, &img, pixel_mm, cab_left) {
            Ok(r) => {
                tracing::debug!(scan_id = %scan.scan_id, ms = r.timings.total_ms, tiles = r.embedded.prepared.tile_count(), "matched");
                r.contribution
            }
            Err(e) => {
                tracing::error!(scan_id = %scan.scan_id, error = %e, "manifest check failed");
                not_run(declared, "the matching failed on this node (see its log)")
            }
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// The declared HS codes of a sidecar (`declaration.goods[].hs_code`).
pub fn declared_codes(sidecar: Option<&serde_json::Value>) -> Vec<String> {
    sidecar
        .and_then(|s| s.pointer("/declaration/goods"))
        .and_then(|g| g.as_array())
        .map(|goods| {
            goods
                .iter()
                .filter_map(|g| g.get("hs_code").and_then(|h| h.as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `image.pixel_mm` and whether the cab is on the left, from a sidecar.
pub fn image_geometry(sidecar: Option<&serde_json::Value>) -> (Option<[f64; 2]>, Option<bool>) {
    let img = sidecar.and_then(|s| s.get("image"));
    let pixel_mm = img
        .and_then(|i| i.get("pixel_mm"))
        .and_then(|p| p.as_array())
        .and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?]));
    let cab_left = img
        .and_then(|i| i.get("cab_side"))
        .and_then(|c| c.as_str())
        .and_then(|c| match c {
            "left" => Some(true),
            "right" => Some(false),
            _ => None,
        });
    (pixel_mm, cab_left)
}

/// The honest "did not run" contribution: `unknown`, refer, and why.
pub fn not_run(declared: Vec<String>, why: &str) -> Contribution {
    let reason = format!("manifest check not run: {why}");
    Contribution {
        manifest: ManifestResult {
            status: ManifestStatus::Unknown,
            declared_hs_codes: declared,
            top_matches: Vec::new(),
            reason: Some(reason.clone()),
            confidence: None,
            heading_probability: None,
            chapter_probability: None,
            tiles: None,
            empty: None,
        },
        outcome: Outcome::Refer,
        reasons: vec![reason],
        model: None,
    }
}

/// Loads the configured model and the library of `store` for the daemon. Blocking.
pub fn load_matcher(
    contract: &Path,
    choice: BackendChoice,
    ort_library: Option<&Path>,
    params: CheckParams,
    store: Store,
) -> Result<Matcher, MatchError> {
    let backend = resolve_backend(choice, ort_library)?;
    let model = EmbeddingModel::load(contract, backend)?;
    let m = Matcher::new(model, params, store);
    let idx = m.index()?;
    tracing::info!(
        model = %m.model.spec.model.name,
        version = %m.model.spec.model.version,
        backend = m.model.backend.name(),
        references = idx.refs.len(),
        tiles = idx.tile_count(),
        "embedding model loaded"
    );
    Ok(m)
}
