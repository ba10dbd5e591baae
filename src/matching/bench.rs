//! `riac-node bench match`: builds a reference library from simulator scans (N per goods
//! class), matches test scans from seeds the library never used (a share of them declared
//! falsely) and reports accuracy, detection and false alarms; then the latency per
//! 4000x1400 scan on tract and on ONNX Runtime (a child process: one backend per process),
//! the exact search time at a large library, and the peak RSS. With `--families`, the
//! leave-one-family-out protocol instead: the library from some scanner families, the test
//! scans from one never in it, per family and pooled. Never run by tests or the daemon.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{cli, BackendChoice, CheckParams, EmbeddingModel, LibraryIndex, MatchError, Matcher};
use crate::bench::Rate;
use crate::imaging::Gray16;
use crate::scan::verdict::{ManifestStatus, Outcome};
use crate::sim::{
    goods_classes, redeclare, ScannerFamily, SimDrop, SimImageFormat, SimOptions, Simulator,
};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Options {
    pub contract: PathBuf,
    pub backend: BackendChoice,
    pub ort_library: Option<PathBuf>,
    pub per_class: usize,
    pub tests: usize,
    pub false_rate: f64,
    pub resolution_scale: f64,
    pub search_tiles: usize,
    pub latency_scans: usize,
    pub seed: u64,
    /// Thresholds of the checks (the config's `[matching]`, else the defaults).
    pub params: CheckParams,
    /// Leave-one-family-out: the library from these scanner families, the test scans
    /// from another one (latency and search timing are then not measured).
    pub fold: Option<Fold>,
}

/// One fold of the cross-family protocol.
#[derive(Debug, Clone)]
pub struct Fold {
    pub held_out: ScannerFamily,
    pub library: Vec<ScannerFamily>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error("bench setup failed: {0}")]
    Setup(String),
}

impl From<super::ModelError> for BenchError {
    fn from(e: super::ModelError) -> Self {
        BenchError::Match(e.into())
    }
}

impl From<crate::store::StoreError> for BenchError {
    fn from(e: crate::store::StoreError) -> Self {
        BenchError::Match(e.into())
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub backend: String,
    pub scans: usize,
    pub width: u32,
    pub height: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_tiles: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub classes: usize,
    pub references: usize,
    pub library_tiles: usize,
    pub library_build_s: f64,
    pub tests: usize,
    pub test_seed: u64,
    pub false_declarations: usize,
    pub true_declarations: usize,
    /// Test scans with goods (not empty): the denominator of the top-1 accuracy.
    pub goods_scans: usize,
    /// Top-1 reference heading = true heading, over test scans with goods.
    pub top1_class_accuracy: f64,
    /// False declarations whose manifest status is `inconsistent`.
    pub false_declaration_detection: f64,
    /// False declarations whose outcome is not `clear` (inconsistent or inconclusive).
    pub false_declaration_flagged: f64,
    /// True declarations whose status is `inconsistent`: false alarms.
    pub false_alarms_on_true: f64,
    /// True declarations referred as inconclusive (`unknown`).
    pub unknown_on_true: f64,
    pub empty_check: EmptyStats,
    pub per_class_top1: Vec<(String, usize, f64)>,
    /// Detection and false alarms at other thresholds, on the same scans.
    pub operating_points: Vec<OperatingPoint>,
    pub skipped_references: Vec<(String, String)>,
    pub params: String,
    pub latency: Vec<Latency>,
    /// Not measured in a fold of the cross-family protocol.
    pub search: Option<SearchTiming>,
    pub peak_rss_mib: f64,
    pub cpus: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct EmptyStats {
    /// Declared empty, loaded: flagged share.
    pub loaded_declared_empty_flagged: Option<f64>,
    pub loaded_declared_empty_n: usize,
    /// Empty, goods declared: flagged share.
    pub empty_declared_loaded_flagged: Option<f64>,
    pub empty_declared_loaded_n: usize,
    /// Truly empty and declared empty: wrongly flagged share.
    pub empty_true_false_alarms: Option<f64>,
    pub empty_true_n: usize,
}

#[derive(Debug, Serialize)]
pub struct OperatingPoint {
    pub temperature: f64,
    pub inconsistent_max: f64,
    pub detection: f64,
    pub false_alarms: f64,
    pub unknown_on_true: f64,
}

/// What is kept of each test scan to replay the decision at other thresholds.
struct Kept {
    false_declared: bool,
    codes: Vec<String>,
    fill: Option<f64>,
    basis: super::check::FillBasis,
    tiles: usize,
    scores: Vec<(String, String, f32)>,
}

fn sweep(kept: &[Kept], base: &CheckParams) -> Vec<OperatingPoint> {
    let mut out = Vec::new();
    for temperature in [0.005, 0.01, 0.02, 0.03, 0.05] {
        for inconsistent_max in [0.05, 0.1, 0.2, 0.3] {
            let p = CheckParams {
                temperature,
                inconsistent_max,
                ..*base
            };
            let (mut fd, mut f, mut ta, mut tu, mut t) = (0, 0, 0, 0, 0);
            for k in kept {
                let e = super::check::Evidence {
                    declared: &k.codes,
                    fill: k.fill,
                    basis: k.basis,
                    tiles: k.tiles,
                    scores: k
                        .scores
                        .iter()
                        .map(|(a, b, s)| (a.as_str(), b.as_str(), *s))
                        .collect(),
                };
                let st = super::check::decide(&e, &p).manifest.status;
                if k.false_declared {
                    f += 1;
                    fd += usize::from(st == ManifestStatus::Inconsistent);
                } else {
                    t += 1;
                    ta += usize::from(st == ManifestStatus::Inconsistent);
                    tu += usize::from(st == ManifestStatus::Unknown);
                }
            }
            out.push(OperatingPoint {
                temperature,
                inconsistent_max,
                detection: rate(fd, f),
                false_alarms: rate(ta, t),
                unknown_on_true: rate(tu, t),
            });
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct SearchTiming {
    pub library_tiles: usize,
    pub references: usize,
    pub query_tiles: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rate(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64 * 10_000.0).round() / 10_000.0
    }
}

fn sim(seed: u64, scale: f64) -> Simulator {
    Simulator::new(SimOptions {
        seed,
        resolution_scale: scale,
        format: SimImageFormat::Png,
        ..SimOptions::default()
    })
}

/// Renders drops on every core: each job is (seed, class, scanner family), so the set does
/// not depend on the number of threads. Each drop is named `SIM-<seed>` (simulators started from
/// different seeds may hand out the same scan id).
pub(crate) fn render(
    jobs: Vec<(u64, String, Option<ScannerFamily>)>,
    scale: f64,
) -> Vec<Option<SimDrop>> {
    let n = jobs.len();
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<Option<SimDrop>>> = Mutex::new(vec![None; n]);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = {
                    let mut g = next.lock().expect("lock");
                    let i = *g;
                    *g += 1;
                    i
                };
                if i >= n {
                    break;
                }
                let (seed, class, family) = &jobs[i];
                let d = sim(*seed, scale)
                    .next_drop_of_class_with(class, *family)
                    .map(|mut d| {
                        crate::sim::rename(&mut d, &format!("SIM-{seed}"));
                        d
                    });
                out.lock().expect("lock")[i] = d;
            });
        }
    });
    out.into_inner().expect("lock")
}

fn load_model(o: &Options) -> Result<EmbeddingModel, BenchError> {
    let b = super::resolve_backend(o.backend, o.ort_library.as_deref())?;
    Ok(EmbeddingModel::load(&o.contract, b)?)
}

/// Scans for the latency figures: simulator scans resampled to 4000x1400, as `bench ingest`.
fn latency_images(o: &Options) -> Vec<(Gray16, serde_json::Value)> {
    let classes = goods_classes();
    let jobs: Vec<(u64, String, Option<ScannerFamily>)> = (0..o.latency_scans)
        .map(|i| {
            (
                o.seed + 5000 + i as u64,
                classes[i % (classes.len() - 1)].hs_code.to_string(),
                None,
            )
        })
        .collect();
    render(jobs, 1.0)
        .into_iter()
        .flatten()
        .map(|d| {
            let (w, h) = d.image.dimensions();
            let img = image::imageops::resize(
                &d.image,
                4000,
                1400,
                image::imageops::FilterType::Triangle,
            );
            let mut sc = d.sidecar.clone();
            // The pixel pitch follows the resampling, so the physics stays the same.
            if let Some(p) = sc.pointer_mut("/image/pixel_mm") {
                let ph = p[0].as_f64().unwrap_or(5.0) * f64::from(w) / 4000.0;
                let pv = p[1].as_f64().unwrap_or(5.0) * f64::from(h) / 1400.0;
                *p = serde_json::json!([ph, pv]);
            }
            (img, sc)
        })
        .collect()
}

fn time_latency(m: &Matcher, imgs: &[(Gray16, serde_json::Value)]) -> Result<Latency, BenchError> {
    let mut ms = Vec::new();
    let mut tiles = 0usize;
    // One warm-up: the first run allocates the model's buffers.
    if let Some((img, sc)) = imgs.first() {
        let (p, c) = super::image_geometry(Some(sc));
        m.check_image(&super::declared_codes(Some(sc)), img, p, c)?;
    }
    for (img, sc) in imgs {
        let (p, c) = super::image_geometry(Some(sc));
        let t0 = Instant::now();
        let r = m.check_image(&super::declared_codes(Some(sc)), img, p, c)?;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        tiles += r.embedded.prepared.tile_count();
    }
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        backend: m.model().backend.name().to_string(),
        scans: imgs.len(),
        width: 4000,
        height: 1400,
        p50_ms: (pct(&ms, 0.5) * 10.0).round() / 10.0,
        p95_ms: (pct(&ms, 0.95) * 10.0).round() / 10.0,
        mean_tiles: tiles as f64 / imgs.len().max(1) as f64,
    })
}

/// The child side of the ONNX Runtime latency: same scans, own process.
pub async fn latency_only(o: &Options) -> Result<Latency, BenchError> {
    let o = o.clone();
    tokio::task::spawn_blocking(move || {
        let model = load_model(&o)?;
        let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
        let store = Store::open(&crate::config::db_in(dir.path()))?;
        let m = Matcher::new(model, o.params, store);
        time_latency(&m, &latency_images(&o))
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))?
}

pub async fn run(o: &Options) -> Result<Report, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("riac-bench-match-")
        .tempdir()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let data_dir = dir.path().to_path_buf();
    let store = {
        let db = crate::config::db_in(&data_dir);
        tokio::task::spawn_blocking(move || Store::open(&db))
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))??
    };
    let tract = Options {
        backend: BackendChoice::Tract,
        ..o.clone()
    };
    let model = Arc::new({
        let t = tract.clone();
        tokio::task::spawn_blocking(move || load_model(&t))
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))??
    });
    let classes = goods_classes();

    // The library: per_class scans of every class, from the library seed.
    let t0 = Instant::now();
    let lib_dir = data_dir.join("refs");
    std::fs::create_dir_all(&lib_dir).map_err(|e| BenchError::Setup(e.to_string()))?;
    let lib_family = |k: usize| o.fold.as_ref().map(|f| f.library[k % f.library.len()]);
    let jobs: Vec<(u64, String, Option<ScannerFamily>)> = classes
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| {
            (0..o.per_class).map(move |k| {
                (
                    o.seed * 100_000 + (ci * 1000 + k) as u64,
                    c.hs_code.to_string(),
                    lib_family(ci * o.per_class + k),
                )
            })
        })
        .collect();
    let scale = o.resolution_scale;
    let drops = tokio::task::spawn_blocking(move || render(jobs, scale))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    for d in drops.iter().flatten() {
        d.write_to(&lib_dir)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    drop(drops);
    let imported = cli::import_dir(&store, &data_dir, model.clone(), &lib_dir).await?;
    let library_build_s = t0.elapsed().as_secs_f64();
    for (f, why) in &imported.skipped {
        tracing::warn!(file = %f, reason = %why, "bench reference skipped");
    }

    let model_name = format!("{} {}", model.spec.model.name, model.spec.model.version);
    let matcher = Arc::new(Matcher::new(
        Arc::try_unwrap(model).unwrap_or_else(|_| unreachable!("the import is done with it")),
        o.params,
        store.clone(),
    ));
    let index = matcher.index()?;

    // Test scans: other seeds; a share declared falsely.
    let test_seed = o.seed * 100_000 + 50_000;
    let test_family = o.fold.as_ref().map(|f| f.held_out);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(test_seed);
    let mut plan = Vec::new();
    for i in 0..o.tests {
        let truth = classes[rng.random_range(0..classes.len())]
            .hs_code
            .to_string();
        let declared = if rng.random::<f64>() < o.false_rate {
            loop {
                let c = classes[rng.random_range(0..classes.len())].hs_code;
                if c != truth {
                    break Some(c.to_string());
                }
            }
        } else {
            None
        };
        plan.push((test_seed + i as u64, truth, declared));
    }
    #[derive(Default)]
    struct Tally {
        n: usize,
        n_goods: usize,
        top1: usize,
        false_n: usize,
        detected: usize,
        flagged: usize,
        true_n: usize,
        false_alarm: usize,
        unknown_true: usize,
        per_class: std::collections::BTreeMap<String, (usize, usize)>,
        empty: EmptyStats,
        led_flag: usize,
        edl_flag: usize,
        et_alarm: usize,
    }
    let m2 = matcher.clone();
    let plan2 = plan.clone();
    let t = tokio::task::spawn_blocking(move || -> Result<(Tally, Vec<Kept>), BenchError> {
        let mut t = Tally::default();
        let mut kept = Vec::new();
        // A few scans rendered at a time: the test set never sits in memory whole.
        let mut scans = Vec::new();
        for chunk in plan2.chunks(8) {
            let jobs = chunk
                .iter()
                .map(|(s, c, _)| (*s, c.clone(), test_family))
                .collect();
            scans.extend(render(jobs, scale).into_iter().zip(chunk.iter().cloned()));
            for (d, (_, truth, declared)) in scans.drain(..) {
                let Some(mut d) = d else { continue };
                t.n += 1;
                if let Some(c) = &declared {
                    redeclare(&mut d, c);
                }
                let sc = &d.sidecar;
                let codes = super::declared_codes(Some(sc));
                let (p, c) = super::image_geometry(Some(sc));
                let r = m2.check_image(&codes, &d.image, p, c)?;
                kept.push(Kept {
                    false_declared: declared.is_some(),
                    codes: codes.clone(),
                    fill: r.embedded.empty.fill,
                    basis: r.embedded.empty.basis(),
                    tiles: r.embedded.prepared.tile_count(),
                    scores: m2
                        .index()?
                        .refs
                        .iter()
                        .map(|x| (x.reference_id.clone(), x.hs_code.clone()))
                        .zip(m2.index()?.reference_scores(&r.embedded.tiles))
                        .map(|((a, b), s)| (a, b, s))
                        .collect(),
                });
                let man = &r.contribution.manifest;
                let th = super::check::heading(&truth);
                let truth_empty = th == "8609";
                let decl_empty = super::check::declares_empty(&codes);
                if !truth_empty {
                    t.n_goods += 1;
                    let ok = man
                        .top_matches
                        .first()
                        .is_some_and(|m| super::check::heading(&m.hs_code) == th);
                    t.top1 += usize::from(ok);
                    let e = t.per_class.entry(truth.clone()).or_default();
                    e.0 += 1;
                    e.1 += usize::from(ok);
                }
                let inconsistent = man.status == ManifestStatus::Inconsistent;
                if declared.is_some() {
                    t.false_n += 1;
                    t.detected += usize::from(inconsistent);
                    t.flagged += usize::from(r.contribution.outcome != Outcome::Clear);
                    if decl_empty && !truth_empty {
                        t.empty.loaded_declared_empty_n += 1;
                        t.led_flag += usize::from(inconsistent);
                    }
                    if truth_empty && !decl_empty {
                        t.empty.empty_declared_loaded_n += 1;
                        t.edl_flag += usize::from(inconsistent);
                    }
                } else {
                    t.true_n += 1;
                    t.false_alarm += usize::from(inconsistent);
                    t.unknown_true += usize::from(man.status == ManifestStatus::Unknown);
                    if truth_empty {
                        t.empty.empty_true_n += 1;
                        t.et_alarm += usize::from(inconsistent);
                    }
                }
            }
        }
        Ok((t, kept))
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))??;
    let (t, kept) = t;
    let sweep = sweep(&kept, &o.params);

    // Latency on a 4000x1400 scan: tract here, ONNX Runtime in a child process; the
    // exact search at `search_tiles`. Neither depends on the fold: measured only once.
    let (latency, search) = if o.fold.is_some() {
        (Vec::new(), None)
    } else {
        let (l, s) = timings(o, &matcher, &index).await?;
        (l, Some(s))
    };

    store.close().await;
    Ok(Report {
        model: model_name,
        classes: classes.len(),
        references: index.refs.len(),
        library_tiles: index.tile_count(),
        library_build_s: (library_build_s * 10.0).round() / 10.0,
        tests: t.n,
        test_seed,
        false_declarations: t.false_n,
        true_declarations: t.true_n,
        goods_scans: t.n_goods,
        top1_class_accuracy: rate(t.top1, t.n_goods),
        false_declaration_detection: rate(t.detected, t.false_n),
        false_declaration_flagged: rate(t.flagged, t.false_n),
        false_alarms_on_true: rate(t.false_alarm, t.true_n),
        unknown_on_true: rate(t.unknown_true, t.true_n),
        empty_check: EmptyStats {
            loaded_declared_empty_flagged: (t.empty.loaded_declared_empty_n > 0)
                .then(|| rate(t.led_flag, t.empty.loaded_declared_empty_n)),
            empty_declared_loaded_flagged: (t.empty.empty_declared_loaded_n > 0)
                .then(|| rate(t.edl_flag, t.empty.empty_declared_loaded_n)),
            empty_true_false_alarms: (t.empty.empty_true_n > 0)
                .then(|| rate(t.et_alarm, t.empty.empty_true_n)),
            ..t.empty
        },
        per_class_top1: t
            .per_class
            .iter()
            .map(|(c, (n, ok))| (c.clone(), *n, rate(*ok, *n)))
            .collect(),
        operating_points: sweep,
        skipped_references: imported.skipped.clone(),
        params: format!("{:?}", o.params),
        latency,
        search,
        peak_rss_mib: crate::bench::peak_rss_mib(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// `bench match --families`: leave-one-family-out folds and their pooled figures.
#[derive(Debug, Serialize)]
pub struct FamilyReport {
    pub protocol: &'static str,
    pub families: Vec<String>,
    pub folds: Vec<FoldReport>,
    pub pooled: Pooled,
    pub cpus: usize,
}

#[derive(Debug, Serialize)]
pub struct FoldReport {
    /// The family every test scan of the fold comes from, never in its library.
    pub test_family: String,
    pub library_families: Vec<String>,
    pub report: Report,
}

/// Counts summed over the folds.
#[derive(Debug, Default, Serialize)]
pub struct Pooled {
    pub top1_class_accuracy: Rate,
    pub false_declaration_detection: Rate,
    pub false_declaration_flagged: Rate,
    pub false_alarms_on_true: Rate,
    pub unknown_on_true: Rate,
    /// Truly empty containers declared empty and called inconsistent.
    pub empty_true_false_alarms: Rate,
}

/// Each family in turn is the test scanner; the library is built from the other families'
/// scans (references spread over them in turn) at the same seeds as every other fold, so
/// the folds differ only in which scanners took the pictures.
pub async fn run_families(
    o: &Options,
    families: &[ScannerFamily],
) -> Result<FamilyReport, BenchError> {
    let mut folds = Vec::new();
    let mut pooled = Pooled::default();
    for &held_out in families {
        let library: Vec<ScannerFamily> = families
            .iter()
            .copied()
            .filter(|&f| f != held_out)
            .collect();
        let fo = Options {
            fold: Some(Fold {
                held_out,
                library: library.clone(),
            }),
            ..o.clone()
        };
        let r = run(&fo).await?;
        eprintln!(
            "test family {held_out}: top-1 {:.3}, false declarations caught {:.3}, false alarms {:.3}, inconclusive on true {:.3}",
            r.top1_class_accuracy,
            r.false_declaration_detection,
            r.false_alarms_on_true,
            r.unknown_on_true
        );
        let p = &mut pooled;
        let e = &r.empty_check;
        for (sum, share, of) in [
            (
                &mut p.top1_class_accuracy,
                Some(r.top1_class_accuracy),
                r.goods_scans,
            ),
            (
                &mut p.false_declaration_detection,
                Some(r.false_declaration_detection),
                r.false_declarations,
            ),
            (
                &mut p.false_declaration_flagged,
                Some(r.false_declaration_flagged),
                r.false_declarations,
            ),
            (
                &mut p.false_alarms_on_true,
                Some(r.false_alarms_on_true),
                r.true_declarations,
            ),
            (
                &mut p.unknown_on_true,
                Some(r.unknown_on_true),
                r.true_declarations,
            ),
            (
                &mut p.empty_true_false_alarms,
                e.empty_true_false_alarms,
                e.empty_true_n,
            ),
        ] {
            // Each fold reports a share of a count it also reports: back to hits.
            sum.add_counts((share.unwrap_or(0.0) * of as f64).round() as usize, of);
        }
        folds.push(FoldReport {
            test_family: held_out.to_string(),
            library_families: library.iter().map(|f| f.to_string()).collect(),
            report: r,
        });
    }
    Ok(FamilyReport {
        protocol: "leave one scanner family out: for each family, the reference library is built from the other families' scans only and every test scan comes from the held-out family; no family was used to set the check's constants",
        families: families.iter().map(|f| f.to_string()).collect(),
        folds,
        pooled,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

async fn timings(
    o: &Options,
    matcher: &Arc<Matcher>,
    index: &Arc<LibraryIndex>,
) -> Result<(Vec<Latency>, SearchTiming), BenchError> {
    let imgs = {
        let o = o.clone();
        tokio::task::spawn_blocking(move || latency_images(&o))
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?
    };
    let mut latency = Vec::new();
    {
        let m = matcher.clone();
        latency.push(
            tokio::task::spawn_blocking(move || time_latency(&m, &imgs))
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))??,
        );
    }
    match super::resolve_backend(BackendChoice::OnnxRuntime, o.ort_library.as_deref()) {
        Ok(super::Backend::OnnxRuntime { library }) => {
            latency.push(ort_child(o, &library).await?);
        }
        _ => tracing::warn!(
            "no ONNX Runtime library (--ort-library or ORT_DYLIB_PATH): its latency is not measured"
        ),
    }

    // Exact search at `search_tiles`: the real library's tiles repeated.
    let search = {
        let idx = index.clone();
        let target = o.search_tiles;
        tokio::task::spawn_blocking(move || search_timing(&idx, target))
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?
    };
    Ok((latency, search))
}

async fn ort_child(o: &Options, library: &std::path::Path) -> Result<Latency, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let out = tokio::process::Command::new(exe)
        .args([
            "bench",
            "match",
            "--latency-only",
            "--backend",
            "onnxruntime",
        ])
        .arg("--ort-library")
        .arg(library)
        .arg("--model")
        .arg(&o.contract)
        .args(["--latency-scans", &o.latency_scans.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .args(["--config", "/nonexistent"])
        .output()
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "ONNX Runtime latency child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| BenchError::Setup(format!("{e}: {line}")))?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(Latency {
        backend: "onnxruntime".into(),
        scans: f("scans") as usize,
        width: 4000,
        height: 1400,
        p50_ms: f("p50_ms"),
        p95_ms: f("p95_ms"),
        mean_tiles: f("mean_tiles"),
    })
}

fn search_timing(idx: &LibraryIndex, target: usize) -> SearchTiming {
    let d = idx.dim;
    let mut big = LibraryIndex {
        dim: d,
        ..Default::default()
    };
    let mut k = 0usize;
    while big.tile_count() < target && !idx.refs.is_empty() {
        let r = &idx.refs[k % idx.refs.len()];
        big.refs.push(super::library::IndexedRef {
            reference_id: format!("{}-{k}", r.reference_id),
            hs_code: r.hs_code.clone(),
            start: big.tile_count(),
            count: r.count,
        });
        big.tiles
            .extend_from_slice(&idx.tiles[r.start * d..(r.start + r.count) * d]);
        k += 1;
    }
    let q_ref = idx.refs.iter().max_by_key(|r| r.count);
    let query: Vec<f32> = q_ref.map_or_else(Vec::new, |r| {
        idx.tiles[r.start * d..(r.start + r.count) * d].to_vec()
    });
    let mut ms = Vec::new();
    for _ in 0..15 {
        let t0 = Instant::now();
        std::hint::black_box(big.reference_scores(&query));
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    SearchTiming {
        library_tiles: big.tile_count(),
        references: big.refs.len(),
        query_tiles: query.len() / d.max(1),
        p50_ms: (pct(&ms, 0.5) * 100.0).round() / 100.0,
        p95_ms: (pct(&ms, 0.95) * 100.0).round() / 100.0,
    }
}
