//! `riac-node library import|list|remove` and `riac-node match`: the reference library and
//! one-off matching without a daemon, on a data dir. Reference drops follow the scan drop
//! contract; their declared HS code is the label. Import is idempotent: an unchanged drop
//! embedded by the current model is skipped, a changed one (or one embedded by another
//! model) is replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::library::{self, NewReference, ReferenceInfo};
use super::{check, EmbeddingModel, MatchError, Matcher};
use crate::imaging::{self, Gray16};
use crate::ingest::decode::{self, DecodeLimits};
use crate::scan::{PixelMeaning, ScanMeta, ValidationLimits};
use crate::store::Store;

/// A drop read from a folder: validated sidecar, canonical transmission image, content hash.
pub struct LoadedDrop {
    pub meta: ScanMeta,
    pub image: Gray16,
    pub sha256: String,
}

fn drop_err(path: &Path, message: impl Into<String>) -> MatchError {
    MatchError::Drop {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads `<dir>/<scan_id>.json` and its image, validated as at ingest except for the age of
/// the scan (references and archived drops are old on purpose). Blocking.
pub fn load_drop(sidecar: &Path) -> Result<LoadedDrop, MatchError> {
    let bytes = std::fs::read(sidecar).map_err(|source| MatchError::Io {
        path: sidecar.to_path_buf(),
        source,
    })?;
    let limits = ValidationLimits {
        max_future: std::time::Duration::from_secs(366 * 86_400),
        max_age: std::time::Duration::from_secs(100 * 366 * 86_400),
    };
    let meta = ScanMeta::from_json(&bytes, &limits, time::OffsetDateTime::now_utc())
        .map_err(|e| drop_err(sidecar, format!("sidecar is not valid: {e}")))?;
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let image_path = dir.join(&meta.image.file);
    let image_bytes = std::fs::read(&image_path).map_err(|source| MatchError::Io {
        path: image_path.clone(),
        source,
    })?;
    let format = decode::format_from_extension(&meta.image.file).ok_or_else(|| {
        drop_err(
            &image_path,
            "no supported extension (.tiff .tif .png .pgm .dcm .dicos)",
        )
    })?;
    let limits = DecodeLimits {
        max_width: 100_000,
        max_height: 100_000,
        max_pixels: 400_000_000,
        max_file_bytes: 4 << 30,
    };
    let d = decode::decode(&image_bytes, format, &limits)
        .map_err(|e| drop_err(&image_path, e.to_string()))?;
    let mut pixels = d.pixels;
    if meta.image.pixel_meaning == PixelMeaning::Attenuation {
        pixels.iter_mut().for_each(|p| *p = u16::MAX - *p);
    }
    let image = imaging::gray16(d.width, d.height, pixels)
        .map_err(|e| drop_err(&image_path, e.to_string()))?;
    let mut h = sha2::Sha256::default();
    sha2::Digest::update(&mut h, (bytes.len() as u64).to_le_bytes());
    sha2::Digest::update(&mut h, &bytes);
    sha2::Digest::update(&mut h, &image_bytes);
    let sha256 = hex::encode(sha2::Digest::finalize(h));
    Ok(LoadedDrop {
        meta,
        image,
        sha256,
    })
}

/// The sidecars of a drop folder, in name order (temp files, which start with a dot, and
/// sub-folders such as `rejected/` are not drops).
pub fn sidecars_in(dir: &Path) -> Result<Vec<PathBuf>, MatchError> {
    let rd = std::fs::read_dir(dir).map_err(|source| MatchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    /// (file, why): drops that are not references.
    pub skipped: Vec<(String, String)>,
}

fn thumbnail_png(img: &Gray16) -> Result<Vec<u8>, imaging::ImagingError> {
    let small = imaging::fit_width(img, 1024);
    imaging::encode_png8(&imaging::window_level(&small, imaging::Window::default()))
}

/// Embeds one loaded drop as a reference (blocking). `Err` text says why it is not one.
fn make_reference(
    model: &EmbeddingModel,
    data_dir: &Path,
    d: &LoadedDrop,
) -> Result<NewReference, String> {
    let codes: Vec<String> = d
        .meta
        .declaration
        .goods
        .iter()
        .map(|g| g.hs_code.clone())
        .collect();
    let headings: std::collections::BTreeSet<String> =
        codes.iter().map(|c| check::heading(c)).collect();
    let hs_code = match (headings.len(), codes.first()) {
        (0, _) | (_, None) => "8609.00".to_string(),
        (1, Some(c)) => c.clone(),
        _ => {
            return Err(format!(
                "declares {} HS headings ({}); a reference must show one class of goods",
                headings.len(),
                codes.join(", ")
            ))
        }
    };
    let (pixel_mm, cab_left) = super::image_geometry(Some(&d.meta.raw));
    let description = d
        .meta
        .declaration
        .goods
        .first()
        .and_then(|g| g.description.clone());
    reference_from_image(
        model,
        data_dir,
        ReferenceSource {
            reference_id: &d.meta.scan_id,
            hs_code: &hs_code,
            description,
            declares_empty: check::declares_empty(&codes),
            image: &d.image,
            pixel_mm,
            cab_left,
            source_sha256: &d.sha256,
        },
    )
}

/// What a reference is made of, wherever it came from (a drop, a centre command).
pub struct ReferenceSource<'a> {
    pub reference_id: &'a str,
    pub hs_code: &'a str,
    pub description: Option<String>,
    /// The label says "empty container": no cargo tile is expected.
    pub declares_empty: bool,
    /// Canonical: 16-bit transmission, air bright.
    pub image: &'a Gray16,
    pub pixel_mm: Option<[f64; 2]>,
    pub cab_left: Option<bool>,
    /// Of the source bytes: an unchanged re-import is a no-op.
    pub source_sha256: &'a str,
}

/// Embeds one image as a reference and writes its thumbnail durably (blocking). `Err`
/// text says why it cannot be one.
pub fn reference_from_image(
    model: &EmbeddingModel,
    data_dir: &Path,
    r: ReferenceSource<'_>,
) -> Result<NewReference, String> {
    let e = model
        .embed_image(r.image, r.pixel_mm, r.cab_left)
        .map_err(|e| e.to_string())?;
    if e.prepared.band.is_none() {
        return Err("no truck or cargo space found in the image".into());
    }
    if !r.declares_empty && e.prepared.tile_count() == 0 {
        return Err("goods declared but no cargo tile found in the image".into());
    }
    let png = thumbnail_png(r.image).map_err(|e| e.to_string())?;
    let rel = library::thumbnail_rel(r.reference_id);
    library::write_file_durably(data_dir, &rel, &png).map_err(|e| format!("{rel}: {e}"))?;
    Ok(NewReference {
        info: ReferenceInfo {
            reference_id: r.reference_id.to_string(),
            hs_code: r.hs_code.to_string(),
            description: r.description,
            imported_at: crate::store::now_rfc3339(),
            source_sha256: r.source_sha256.to_string(),
            model_sha256: model.reference().sha256,
            tile_count: e.prepared.tile_count() as u32,
            fill: f64::from(e.prepared.fill),
            width: r.image.width(),
            height: r.image.height(),
            thumbnail: rel,
        },
        dim: e.dim,
        descriptor: e.descriptor,
        tiles: e.tiles,
    })
}

/// Imports every drop of `dir` into the library of `store` (data dir `data_dir`).
pub async fn import_dir(
    store: &Store,
    data_dir: &Path,
    model: Arc<EmbeddingModel>,
    dir: &Path,
) -> Result<ImportReport, MatchError> {
    let mut report = ImportReport::default();
    let model_sha = model.reference().sha256;
    for sidecar in sidecars_in(dir)? {
        let name = sidecar
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let path = sidecar.clone();
        let loaded = tokio::task::spawn_blocking(move || load_drop(&path))
            .await
            .expect("drop loading does not panic");
        let d = match loaded {
            Ok(d) => d,
            Err(e) => {
                report.skipped.push((name, e.to_string()));
                continue;
            }
        };
        let id = d.meta.scan_id.clone();
        let existing = {
            let id = id.clone();
            store.read(move |c| library::get(c, &id)).await?
        };
        if let Some(x) = &existing {
            if x.source_sha256 == d.sha256 && x.model_sha256.eq_ignore_ascii_case(&model_sha) {
                report.unchanged.push(id);
                continue;
            }
        }
        let (m, dd) = (model.clone(), data_dir.to_path_buf());
        let made = tokio::task::spawn_blocking(move || make_reference(&m, &dd, &d))
            .await
            .expect("embedding does not panic");
        let r = match made {
            Ok(r) => r,
            Err(why) => {
                report.skipped.push((name, why));
                continue;
            }
        };
        store.write(move |t| library::upsert(t, &r)).await?;
        if existing.is_some() {
            report.replaced.push(id);
        } else {
            report.added.push(id);
        }
    }
    Ok(report)
}

pub async fn list(store: &Store) -> Result<Vec<ReferenceInfo>, MatchError> {
    Ok(store.read(library::list).await?)
}

/// Removes references by id; returns the ids that were not in the library.
pub async fn remove(
    store: &Store,
    data_dir: &Path,
    ids: &[String],
) -> Result<Vec<String>, MatchError> {
    let mut missing = Vec::new();
    for id in ids {
        let i = id.clone();
        match store.write(move |t| library::remove(t, &i)).await? {
            // The row is gone first: a thumbnail without a row is harmless, the reverse not.
            Some(rel) => {
                let _ = std::fs::remove_file(data_dir.join(rel));
            }
            None => missing.push(id.clone()),
        }
    }
    Ok(missing)
}

/// What `riac-node match` prints.
#[derive(Debug, Serialize)]
pub struct MatchOutput {
    pub scan_id: String,
    pub outcome: crate::scan::verdict::Outcome,
    pub reasons: Vec<String>,
    pub manifest: crate::scan::verdict::ManifestResult,
    pub model: crate::scan::verdict::ModelRef,
    pub backend: &'static str,
    pub library: LibrarySummary,
    pub timings_ms: super::Timings,
    /// How the empty-container check measured the cargo space (against which walls).
    pub empty_space: super::empty::EmptyEvidence,
    /// The dark level taken out of the image before the model saw it.
    pub photometry: super::photometry::Photometry,
    /// Per-tile embeddings (with `--embeddings`), for comparing backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
}

#[derive(Debug, Serialize)]
pub struct LibrarySummary {
    pub references: usize,
    pub tiles: usize,
    pub headings: usize,
}

/// Matches one drop against the library (blocking).
pub fn match_drop(
    matcher: &Matcher,
    sidecar: &Path,
    with_embeddings: bool,
) -> Result<MatchOutput, MatchError> {
    let d = load_drop(sidecar)?;
    let declared: Vec<String> = d
        .meta
        .declaration
        .goods
        .iter()
        .map(|g| g.hs_code.clone())
        .collect();
    let (pixel_mm, cab_left) = super::image_geometry(Some(&d.meta.raw));
    let r = matcher.check_image(&declared, &d.image, pixel_mm, cab_left)?;
    let idx = matcher.index()?;
    Ok(MatchOutput {
        scan_id: d.meta.scan_id,
        outcome: r.contribution.outcome,
        reasons: r.contribution.reasons,
        manifest: r.contribution.manifest,
        model: matcher.model().reference(),
        backend: matcher.model().backend.name(),
        library: LibrarySummary {
            references: idx.refs.len(),
            tiles: idx.tile_count(),
            headings: idx.headings().len(),
        },
        timings_ms: r.timings,
        empty_space: r.embedded.empty,
        photometry: r.embedded.photometry,
        embeddings: with_embeddings.then(|| {
            r.embedded
                .tiles
                .chunks(r.embedded.dim.max(1))
                .map(<[f32]>::to_vec)
                .collect()
        }),
    })
}

/// Writes the model-input tiles of every drop in `dir` to `out` (little-endian f32, tile after
/// tile) and an index `out.json` (per drop: scan id, declared codes, tile count, fill): the
/// training data of `tools/build_model.py`, cut by exactly the code the node runs.
pub fn export_tiles(dir: &Path, out: &Path, p: &super::Preproc) -> Result<usize, MatchError> {
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MatchError::Io { path, source }
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).map_err(io(out))?);
    let mut index = Vec::new();
    let mut total = 0;
    for sidecar in sidecars_in(dir)? {
        let d = load_drop(&sidecar)?;
        let (pixel_mm, cab_left) = super::image_geometry(Some(&d.meta.raw));
        let (prep, _, _) = super::prepare_for_model(&d.image, pixel_mm, cab_left, p);
        for v in &prep.tiles {
            f.write_all(&v.to_le_bytes()).map_err(io(out))?;
        }
        total += prep.tile_count();
        index.push(serde_json::json!({
            "scan_id": d.meta.scan_id,
            "hs_codes": d.meta.declaration.goods.iter().map(|g| g.hs_code.clone()).collect::<Vec<_>>(),
            "tiles": prep.tile_count(),
            "fill": prep.fill,
            "band": prep.band,
        }));
    }
    f.flush().map_err(io(out))?;
    let idx_path = out.with_extension("json");
    std::fs::write(
        &idx_path,
        serde_json::to_vec_pretty(&serde_json::json!({
            "tile": p.tile, "stride": p.stride, "pixel_mm": p.pixel_mm, "clip": p.clip,
            "drops": index,
        }))
        .expect("json"),
    )
    .map_err(io(&idx_path))?;
    Ok(total)
}

/// Classes the demo seeds its library with (>= 10, the empty container included).
pub const DEMO_CLASSES: [&str; 12] = [
    "4011.20", "2202.10", "1006.30", "7208.39", "6907.21", "8703.23", "0803.90", "4804.11",
    "6109.10", "8528.72", "9403.60", "8609.00",
];

/// Seeds a library from the simulator: `per_class` scans of each of `classes`, written as
/// drops into a folder under the data dir, imported, then the folder removed.
pub async fn seed_from_simulator(
    store: &Store,
    data_dir: &Path,
    model: Arc<EmbeddingModel>,
    classes: &[&str],
    per_class: usize,
    resolution_scale: f64,
    seed: u64,
) -> Result<ImportReport, MatchError> {
    let dir = data_dir.join("library-seed");
    std::fs::create_dir_all(&dir).map_err(|source| MatchError::Io {
        path: dir.clone(),
        source,
    })?;
    let jobs: Vec<(u64, String, Option<crate::sim::ScannerFamily>)> = classes
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| {
            (0..per_class).map(move |k| (seed + (ci * 100 + k) as u64, c.to_string(), None))
        })
        .collect();
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for d in super::bench::render(jobs, resolution_scale)
            .into_iter()
            .flatten()
        {
            d.write_to(&d2)?;
        }
        Ok(())
    })
    .await
    .expect("rendering does not panic")
    .map_err(|source| MatchError::Io {
        path: dir.clone(),
        source,
    })?;
    let r = import_dir(store, data_dir, model, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The demo's next drop: mostly trucks of one library class, every third one declared as
/// another class (a false declaration the manifest check should catch).
pub fn demo_drop(sim: &mut crate::sim::Simulator, n: u64) -> crate::sim::SimDrop {
    let k = (n as usize * 7) % DEMO_CLASSES.len();
    let truth = DEMO_CLASSES[k];
    match sim.next_drop_of_class(truth) {
        Some(mut d) => {
            if n % 3 == 0 {
                let lie = DEMO_CLASSES[(k + 1 + (n as usize % 5)) % DEMO_CLASSES.len()];
                crate::sim::redeclare(&mut d, lie);
            }
            d
        }
        None => sim.next_drop(),
    }
}
