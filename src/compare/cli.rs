//! `riac-node compare ENTRY_SIDECAR EXIT_SIDECAR`: the transit check on two scan drops,
//! without a daemon, for analysts and for evaluation. Reads each drop per the scan drop
//! contract (the sidecar names the image beside it) with the node's own decoders, prints
//! the verdict's `transit` object with timings, and with `--out` writes the aligned exit,
//! the heatmap and an annotated overview as PNGs. It never touches a node's data dir.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_hollow_rect_mut;
use imageproc::rect::Rect;
use serde_json::json;

use super::calibrate::{fit, pair_key, pair_statistic, CalibrationSet, RECOMMENDED_PAIRS};
use super::{compare, Comparison, Input, Thresholds};
use crate::imaging::{self, Gray16};
use crate::ingest::decode::{self, DecodeLimits};
use crate::scan::{Direction, PixelMeaning, Regime, ScanMeta, ValidationLimits};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Drop { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// One drop, decoded into the canonical image.
pub struct LoadedDrop {
    pub meta: ScanMeta,
    pub image: Gray16,
    pub decode_ms: f64,
}

impl LoadedDrop {
    /// The drop as the comparison takes it.
    pub fn input(&self) -> Input<'_> {
        Input {
            image: &self.image,
            pixel_mm: self.meta.image.pixel_mm,
            cab_side: self.meta.image.cab_side,
        }
    }
}

/// Reads and validates a sidecar (its age is not checked: analysts compare old scans too).
pub fn load_meta(sidecar: &Path) -> Result<ScanMeta, CliError> {
    let bytes = std::fs::read(sidecar).map_err(|source| CliError::Read {
        path: sidecar.to_path_buf(),
        source,
    })?;
    let forever = Duration::from_secs(100 * 365 * 86_400);
    ScanMeta::from_json(
        &bytes,
        &ValidationLimits {
            max_future: forever,
            max_age: forever,
        },
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| CliError::Drop {
        path: sidecar.to_path_buf(),
        message: format!("not a valid riac.scan/1 sidecar: {e}"),
    })
}

/// Reads a drop by its sidecar (see [`load_meta`]) and decodes its image.
pub fn load_drop(sidecar: &Path, limits: &DecodeLimits) -> Result<LoadedDrop, CliError> {
    let meta = load_meta(sidecar)?;
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let path = dir.join(&meta.image.file);
    let format = decode::format_from_extension(&meta.image.file).ok_or_else(|| CliError::Drop {
        path: path.clone(),
        message: "image.file has no supported extension (.tiff .tif .png .pgm .dcm .dicos)".into(),
    })?;
    let data = std::fs::read(&path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    let t = Instant::now();
    let d = decode::decode(&data, format, limits).map_err(|e| CliError::Drop {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut px = d.pixels;
    if meta.image.pixel_meaning == PixelMeaning::Attenuation {
        px.iter_mut().for_each(|p| *p = u16::MAX - *p);
    }
    let image = imaging::gray16(d.width, d.height, px).map_err(|e| CliError::Drop {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(LoadedDrop {
        meta,
        image,
        decode_ms: t.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The `transit` object of a verdict for this comparison, plus what an analyst wants.
pub fn report_json(
    c: &Comparison,
    entry: &ScanMeta,
    exit: &ScanMeta,
    decode_ms: f64,
) -> serde_json::Value {
    json!({
        "status": c.status,
        "entry_scan_id": entry.scan_id,
        "exit_scan_id": exit.scan_id,
        "change_score": c.change_score,
        "regions": c.regions,
        "alignment_quality": c.alignment_quality,
        "mirrored": c.mirrored,
        "reason": c.reason,
        "details": c.details,
        "timings_ms": {
            "decode": (decode_ms * 10.0).round() / 10.0,
            "prepare": c.timings.prepare_ms,
            "layout": c.timings.layout_ms,
            "register": c.timings.register_ms,
            "difference": c.timings.difference_ms,
            "outputs": c.timings.outputs_ms,
            "compare_total": c.timings.total_ms,
        },
    })
}

fn human(c: &Comparison, entry: &ScanMeta, exit: &ScanMeta) -> String {
    let mut s = format!(
        "entry {}  exit {}\nstatus: {}\n",
        entry.scan_id,
        exit.scan_id,
        serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(r) = &c.reason {
        s += &format!("reason: {r}\n");
    }
    if let (Some(q), Some(m)) = (c.alignment_quality, c.mirrored) {
        s += &format!(
            "alignment quality {q:.3}, exit mirrored: {m}, change score {:.3}\n",
            c.change_score.unwrap_or(0.0)
        );
    }
    for (i, r) in c.regions.iter().enumerate() {
        s += &format!(
            "  region {}: x {}..{} y {}..{} (entry px), {} m², score {:.3}, {} (mean ΔOD {:+.2})\n",
            i + 1,
            r.x0,
            r.x1,
            r.y0,
            r.y1,
            r.area_m2.map_or("?".into(), |a| format!("{a:.2}")),
            r.score,
            r.kind,
            r.mean_delta
        );
    }
    let t = &c.timings;
    s += &format!(
        "time: prepare {} ms, layout {} ms, register {} ms, difference {} ms, outputs {} ms, total {} ms\n",
        t.prepare_ms, t.layout_ms, t.register_ms, t.difference_ms, t.outputs_ms, t.total_ms
    );
    s
}

fn write_png(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The entry rendered for the eye (log scale), the heatmap blended over it, regions boxed.
pub fn overview(entry: &Gray16, c: &Comparison) -> RgbImage {
    let (w, h) = entry.dimensions();
    let air = super::prep::prepare(entry, None, [super::prep::ANALYSIS_MM; 2]).air_rows;
    let lut = super::prep::ln_table();
    let mut out = RgbImage::new(w, h);
    let heat = c.outputs.as_ref().map(|o| &o.heatmap);
    for y in 0..h {
        let ln_air = air[y as usize].ln();
        for x in 0..w {
            let a = (ln_air - lut[entry.get_pixel(x, y)[0] as usize]).max(0.0);
            let g = 255.0 * (1.0 - a / 5.5).clamp(0.0, 1.0);
            let mut px = [g, g, g];
            if let Some(hm) = heat {
                let p = hm.get_pixel(x, y).0;
                let al = p[3] as f32 / 255.0 * 0.6;
                for k in 0..3 {
                    px[k] = px[k] * (1.0 - al) + p[k] as f32 * al;
                }
            }
            out.put_pixel(x, y, Rgb([px[0] as u8, px[1] as u8, px[2] as u8]));
        }
    }
    for r in &c.regions {
        for k in 0..3 {
            let (x0, y0) = (r.x0 as i32 - k, r.y0 as i32 - k);
            let (rw, rh) = (r.x1 - r.x0 + 2 * k as u32, r.y1 - r.y0 + 2 * k as u32);
            if rw > 0 && rh > 0 {
                draw_hollow_rect_mut(
                    &mut out,
                    Rect::at(x0, y0).of_size(rw, rh),
                    Rgb([255, 0, 255]),
                );
            }
        }
    }
    out
}

/// Runs the command; returns what to print.
pub fn run(
    entry_sidecar: &Path,
    exit_sidecar: &Path,
    as_json: bool,
    out: Option<&Path>,
    th: &Thresholds,
    limits: &DecodeLimits,
    calibration: Option<&CalibrationSet>,
) -> Result<String, CliError> {
    let e = load_drop(entry_sidecar, limits)?;
    let x = load_drop(exit_sidecar, limits)?;
    let mut th = th.clone();
    th.calibrated = calibration
        .and_then(|set| set.get(&e.meta.scanner_id, &x.meta.scanner_id))
        .map(|p| p.limits());
    let th = &th;
    let c = compare(e.input(), x.input(), th, out.is_some());
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Write {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(o) = &c.outputs {
            let aligned = imaging::encode_png16(&o.aligned).map_err(|e| CliError::Write {
                path: dir.join("aligned.png"),
                message: e.to_string(),
            })?;
            write_png(&dir.join("aligned.png"), &aligned)?;
            let mut heat = Vec::new();
            o.heatmap
                .write_to(
                    &mut std::io::Cursor::new(&mut heat),
                    image::ImageFormat::Png,
                )
                .map_err(|e| CliError::Write {
                    path: dir.join("heatmap.png"),
                    message: e.to_string(),
                })?;
            write_png(&dir.join("heatmap.png"), &heat)?;
        }
        let mut ov = Vec::new();
        overview(&e.image, &c)
            .write_to(&mut std::io::Cursor::new(&mut ov), image::ImageFormat::Png)
            .map_err(|e| CliError::Write {
                path: dir.join("overview.png"),
                message: e.to_string(),
            })?;
        write_png(&dir.join("overview.png"), &ov)?;
    }
    let mut report = report_json(&c, &e.meta, &x.meta, e.decode_ms + x.decode_ms);
    let pair = pair_key(&e.meta.scanner_id, &x.meta.scanner_id);
    let calibration_note = match (&th.calibrated, calibration) {
        (Some(l), _) => format!(
            "scanner pair {pair}: calibrated (refer at {} OD·m², alert at {} OD·m²)",
            l.refer_od_m2, l.alert_od_m2
        ),
        (None, Some(_)) => format!(
            "scanner pair {pair}: not calibrated in this data dir; uncalibrated default thresholds"
        ),
        (None, None) => "no --data-dir: uncalibrated default thresholds".to_string(),
    };
    report["calibration"] = json!({
        "pair": pair,
        "limits": th.calibrated,
        "note": calibration_note,
    });
    Ok(if as_json {
        serde_json::to_string_pretty(&report).expect("a JSON value serialises")
    } else {
        format!("{}{calibration_note}\n", human(&c, &e.meta, &x.meta))
    })
}

/// One entry/exit pair found in a folder of drops.
struct DropPair {
    entry: PathBuf,
    exit: PathBuf,
    entry_scanner: String,
    exit_scanner: String,
}

/// Pairs the drops of `dir` as the daemon pairs them: each transit exit with the latest
/// entry scan of the same declaration that shares a container id with it. Returns the
/// pairs and what could not be used, each with the reason.
fn pair_drops(dir: &Path) -> Result<(Vec<DropPair>, Vec<String>), CliError> {
    let rd = std::fs::read_dir(dir).map_err(|source| CliError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut sidecars: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    sidecars.sort();
    let mut skipped = Vec::new();
    let mut metas = Vec::new();
    for p in sidecars {
        match load_meta(&p) {
            Ok(m) => metas.push((p, m)),
            Err(e) => skipped.push(format!("{}: skipped: {e}", p.display())),
        }
    }
    let shares = |a: &ScanMeta, b: &ScanMeta| {
        a.container_ids
            .iter()
            .any(|c| b.container_ids.iter().any(|d| d == c))
    };
    let mut pairs = Vec::new();
    for (xp, x) in metas
        .iter()
        .filter(|(_, m)| m.direction == Direction::Exit && m.declaration.regime == Regime::Transit)
    {
        let entry = metas
            .iter()
            .filter(|(_, m)| {
                m.direction == Direction::Entry
                    && m.declaration.regime == Regime::Transit
                    && m.declaration.number == x.declaration.number
                    && shares(m, x)
            })
            .max_by_key(|(_, m)| m.scanned_at);
        match entry {
            Some((ep, e)) => pairs.push(DropPair {
                entry: ep.clone(),
                exit: xp.clone(),
                entry_scanner: e.scanner_id.clone(),
                exit_scanner: x.scanner_id.clone(),
            }),
            None => skipped.push(format!(
                "{}: exit scan of declaration {} has no entry scan in the folder",
                xp.display(),
                x.declaration.number
            )),
        }
    }
    Ok((pairs, skipped))
}

/// `riac-node calibrate transit PAIRS_DIR --data-dir D`: compares every entry/exit pair of
/// known-unchanged drops in `dir`, fits each scanner pair's limits for `target_far`, and
/// stores them in `data_dir` (other scanner pairs' calibrations are kept). Returns what to
/// print. A scanner pair with too few comparable pairs is reported and left as it was.
pub fn calibrate_dir(
    dir: &Path,
    data_dir: &Path,
    th: &Thresholds,
    target_far: f64,
    limits: &DecodeLimits,
    as_json: bool,
) -> Result<String, CliError> {
    let invalid = |message: String| CliError::Drop {
        path: dir.to_path_buf(),
        message,
    };
    // Refuse a bad existing file before spending minutes on comparisons.
    let mut set = CalibrationSet::load(data_dir).map_err(|e| invalid(e.to_string()))?;
    let (pairs, mut notes) = pair_drops(dir)?;
    if pairs.is_empty() {
        return Err(invalid(format!(
            "no entry/exit pair found: the folder must hold the drops (sidecar JSON + image) of transit entry and exit scans known to be unchanged, with matching declaration numbers and container ids ({} files skipped)",
            notes.len()
        )));
    }
    let mut groups: std::collections::BTreeMap<(String, String), (Vec<f64>, usize)> =
        Default::default();
    let mut th = th.clone();
    th.calibrated = None;
    for p in &pairs {
        let e = load_drop(&p.entry, limits)?;
        let x = load_drop(&p.exit, limits)?;
        let c = compare(e.input(), x.input(), &th, false);
        let g = groups
            .entry((p.entry_scanner.clone(), p.exit_scanner.clone()))
            .or_default();
        match pair_statistic(&c, &th) {
            Some(s) => g.0.push(s),
            None => {
                g.1 += 1;
                notes.push(format!(
                    "{}: not comparable, not used: {}",
                    p.exit.display(),
                    c.reason.as_deref().unwrap_or("inconclusive")
                ));
            }
        }
    }
    let mut fitted = Vec::new();
    for ((es, xs), (samples, inconclusive)) in &groups {
        match fit(es, xs, samples, *inconclusive, target_far, "commissioning") {
            Ok(p) => {
                if p.pairs_used < RECOMMENDED_PAIRS {
                    notes.push(format!(
                        "scanner pair {}: only {} pairs; the limit is set conservatively high, and {RECOMMENDED_PAIRS} pairs are recommended",
                        p.key(),
                        p.pairs_used
                    ));
                }
                fitted.push(p);
            }
            Err(e) => notes.push(format!("{e}; its calibration is left as it was")),
        }
    }
    if fitted.is_empty() {
        return Err(invalid(format!(
            "no scanner pair could be calibrated: {}",
            notes.join("; ")
        )));
    }
    for p in &fitted {
        set.insert(p.clone());
    }
    set.save(data_dir).map_err(|e| CliError::Write {
        path: data_dir.join(super::calibrate::CALIBRATION_FILE),
        message: e.to_string(),
    })?;
    if as_json {
        let v = json!({
            "file": data_dir.join(super::calibrate::CALIBRATION_FILE),
            "calibrated": fitted,
            "notes": notes,
        });
        return Ok(serde_json::to_string_pretty(&v).expect("a JSON value serialises"));
    }
    let mut s = String::new();
    for p in &fitted {
        s += &format!(
            "scanner pair {}: {} clean pairs used ({} not comparable); refer at {} OD·m², alert at {} OD·m²; target false-alarm rate {}, fitted rate at the limit {:.4}; largest clean value {} OD·m²\n",
            p.key(),
            p.pairs_used,
            p.pairs_inconclusive,
            p.refer_od_m2,
            p.alert_od_m2,
            p.target_false_alarm_rate,
            p.null.expected_false_alarm_rate,
            p.null.max_observed_od_m2
        );
    }
    for n in &notes {
        s += &format!("note: {n}\n");
    }
    s += &format!(
        "saved in {}; a running node reads it at its next start\n",
        data_dir.join(super::calibrate::CALIBRATION_FILE).display()
    );
    Ok(s)
}
