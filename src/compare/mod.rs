//! The transit check's image comparison: given the entry and exit scans of one container
//! (canonical 16-bit transmission images, possibly from two scanner models, the exit
//! possibly mirrored and the entry possibly reduced), find what changed in the load.
//!
//! Stages, each in its own module: [`prep`] (attenuation on a ~10 mm analysis grid),
//! [`layout`] (vehicle, load carriers, roof and floor, tractor end), [`register`]
//! (orientation, vertical scale/offset, non-rigid horizontal DTW warp), [`diff`] (response
//! curve, tolerant difference, noise, changed areas), then scores, outputs and timings
//! here. [`compare`] is a pure, blocking, CPU-bound function: callers run it off the async
//! runtime. This module never touches files, the store or the network, and never guesses:
//! a pair it cannot align is `Inconclusive` with the reason.

pub mod bench;
pub mod cli;
pub mod diff;
pub mod dtw;
pub mod layout;
pub mod plane;
pub mod prep;
pub mod refine;
pub mod register;
pub mod transit;

use std::time::Instant;

use image::RgbaImage;
use serde::Serialize;

use crate::imaging::Gray16;
use diff::{MapParams, NoiseModel, Roi, TOLERANCE_PX};
use plane::Plane;
use prep::{ln_table, Prepared};
use register::ncc;

/// One scan as the comparison needs it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Canonical image: 16-bit transmission, air bright.
    pub image: &'a Gray16,
    /// [horizontal, vertical] mm per pixel, when the scanner says.
    pub pixel_mm: Option<[f64; 2]>,
}

/// The decision thresholds (config `[transit]`, per site).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Changed areas smaller than this (m²) are ignored.
    pub min_region_m2: f64,
    /// A region scoring at least this makes the pair `changed` (outcome refer).
    pub refer_score: f64,
    /// A region scoring at least this, and covering `alert_min_area_m2`, makes it alert.
    pub alert_score: f64,
    pub alert_min_area_m2: f64,
    /// Below this alignment quality the pair is inconclusive (refer), not compared.
    pub min_alignment_quality: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_region_m2: 0.1,
            refer_score: 0.5,
            alert_score: 0.9,
            alert_min_area_m2: 0.25,
            min_alignment_quality: 0.5,
        }
    }
}

/// Thresholds of the change map itself (not per site: they follow from the physics of
/// the analysis grid and were tuned on simulator pairs).
const MAP: MapParams = MapParams {
    low_abs: 0.06,
    low_sigma: 4.0,
    high_abs: 0.15,
    high_sigma: 8.0,
    min_seed_px: 40,
    group_px: 15,
    min_thickness_px: 2.5,
};

/// Integrated attenuation change (optical depth x m²) that scores 1 - 1/e.
const SCORE_SCALE_OD_M2: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unchanged,
    Changed,
    Inconclusive,
}

/// A changed region in entry-image pixels (x1, y1 exclusive).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    /// Area of the changed pixels (m²); `None` when the entry's pixel size is unknown.
    pub area_m2: Option<f64>,
    pub score: f64,
    /// "removed" (the entry held more), "added" (the exit holds more) or "mixed".
    pub kind: &'static str,
    /// Mean attenuation change over the region (optical depth, entry minus exit).
    pub mean_delta: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub prepare_ms: f64,
    pub layout_ms: f64,
    pub register_ms: f64,
    pub difference_ms: f64,
    pub outputs_ms: f64,
    pub total_ms: f64,
}

/// How the pair was aligned, for the analyst.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Details {
    pub entry_grid: [usize; 2],
    pub exit_grid: [usize; 2],
    pub analysis_mm: [f64; 2],
    pub orientation_by: Option<&'static str>,
    /// Exit rows per entry row, and the offset (analysis rows).
    pub vertical_scale: Option<f64>,
    pub vertical_offset: Option<f64>,
    pub dtw_cost: Option<f64>,
    pub load_overlap: Option<f64>,
    /// Exit response mapped onto the entry's: c1 x + c2 x² + c3 x³.
    pub response: Option<[f64; 3]>,
    /// Compared area (m²).
    pub compared_m2: Option<f64>,
    /// Load carriers found, as [first column, end column, roof row, floor row] on each
    /// scan's analysis grid.
    pub entry_carriers: Vec<[f64; 4]>,
    pub exit_carriers: Vec<[f64; 4]>,
    /// Largest local correction of the registration (analysis pixels).
    pub refine_max_px: Option<f64>,
}

/// Images for the operator: the exit warped onto the entry's geometry (in the entry's
/// photometry) and an RGBA heatmap of the changes, both the entry image's size.
pub struct Outputs {
    pub aligned: Gray16,
    pub heatmap: RgbaImage,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Outputs({}x{})",
            self.aligned.width(),
            self.aligned.height()
        )
    }
}

#[derive(Debug)]
pub struct Comparison {
    pub status: Status,
    /// Why, in words an operator reads (always set for `Inconclusive`).
    pub reason: Option<String>,
    /// The strongest changed area's score (0..1), even below the thresholds.
    pub change_score: Option<f64>,
    /// Regions over the thresholds, strongest first.
    pub regions: Vec<Region>,
    /// 0..1: how well the exit's load carrier matches the entry's once aligned.
    pub alignment_quality: Option<f64>,
    pub mirrored: Option<bool>,
    pub details: Details,
    pub timings: Timings,
    pub outputs: Option<Outputs>,
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

fn inconclusive(reason: String, details: Details, timings: Timings) -> Comparison {
    Comparison {
        status: Status::Inconclusive,
        reason: Some(reason),
        change_score: None,
        regions: Vec::new(),
        alignment_quality: None,
        mirrored: None,
        details,
        timings,
        outputs: None,
    }
}

/// Runs two closures on two threads (the machine this runs on has at least two cores).
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let h = s.spawn(a);
        let rb = b();
        (h.join().expect("comparison worker panicked"), rb)
    })
}

/// Compares the exit scan with the entry scan. Blocking and CPU-bound (~0.1-0.5 s for
/// full-resolution scans on two cores); `with_outputs` adds the full-size aligned image
/// and heatmap.
pub fn compare(
    entry: Input<'_>,
    exit: Input<'_>,
    th: &Thresholds,
    with_outputs: bool,
) -> Comparison {
    let t_all = Instant::now();
    let mut tm = Timings::default();
    let mut det = Details::default();

    let t = Instant::now();
    let (pe, px) = both(
        || prep::prepare(entry.image, entry.pixel_mm),
        || prep::prepare(exit.image, exit.pixel_mm),
    );
    tm.prepare_ms = ms(t);
    det.entry_grid = [pe.att.w, pe.att.h];
    det.exit_grid = [px.att.w, px.att.h];
    det.analysis_mm = pe.mm;

    let t = Instant::now();
    let (le, lx) = (layout::find(&pe.att, pe.mm), layout::find(&px.att, px.mm));
    tm.layout_ms = ms(t);
    let carriers = |l: &Result<layout::Layout, layout::LayoutError>| -> Vec<[f64; 4]> {
        l.as_ref().map_or(Vec::new(), |l| {
            l.spans
                .iter()
                .map(|s| [s.c0 as f64, s.c1 as f64, s.roof as f64, s.floor as f64])
                .collect()
        })
    };
    det.entry_carriers = carriers(&le);
    det.exit_carriers = carriers(&lx);
    let (le, lx) = match (le, lx) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => {
            tm.total_ms = ms(t_all);
            return inconclusive(format!("entry scan: {e}"), det, tm);
        }
        (_, Err(e)) => {
            tm.total_ms = ms(t_all);
            return inconclusive(format!("exit scan: {e}"), det, tm);
        }
    };

    let t = Instant::now();
    let al = register::register(&pe, &le, &px, &lx);
    tm.register_ms = ms(t);
    let al = match al {
        Ok(a) => a,
        Err(e) => {
            tm.total_ms = ms(t_all);
            return inconclusive(format!("cannot align the scans: {e}"), det, tm);
        }
    };
    det.orientation_by = Some(al.orientation_by);
    det.vertical_scale = Some(al.vmap.a);
    det.vertical_offset = Some(al.vmap.b);
    det.dtw_cost = Some(al.dtw_cost as f64);
    det.load_overlap = Some(al.load_overlap);

    let t = Instant::now();
    let (w, h) = (pe.att.w, pe.att.h);
    let warped = register::warp(&px.att, &al, w, h);
    let roi = Roi::from_spans(&le.spans, w, h);
    let px_m2 = pe.mm[0] * pe.mm[1] / 1e6;
    det.compared_m2 = Some(roi.area() as f64 * px_m2);
    let response = diff::fit_response(&pe.att, &warped, &roi);
    det.response = Some(response.c);
    let mut xm = warped;
    for v in xm.v.iter_mut() {
        *v = response.apply(*v);
    }
    let field = refine::estimate(&pe.att, &xm, &roi);
    det.refine_max_px = Some(round3(field.max_abs() as f64));
    let (cx, cy) = register::coords(&al, &field, w, h);
    let mut xm = register::warp_at(&px.att, &cx, &cy);
    for v in xm.v.iter_mut() {
        *v = response.apply(*v);
    }
    let d = diff::tolerant_diff(&pe.att, &xm, TOLERANCE_PX);
    let noise = NoiseModel::measure(&pe.att, &xm, &roi);
    let (abs, z) = diff::significance(&d, &pe.att, &noise, &roi);
    let blobs = diff::blobs(&abs, &z, &d, &MAP);
    let quality = alignment_quality(&pe.att, &xm, &roi, &blobs);
    tm.difference_ms = ms(t);

    let mut regions: Vec<Region> = blobs
        .iter()
        .map(|b| {
            let area = b.pixels as f64 * px_m2;
            let integrated = b.sum_abs * px_m2;
            let score = 1.0 - (-integrated / SCORE_SCALE_OD_M2).exp();
            let kind = if b.mean_signed > 0.3 * (b.sum_abs / b.pixels as f64) {
                "removed"
            } else if b.mean_signed < -0.3 * (b.sum_abs / b.pixels as f64) {
                "added"
            } else {
                "mixed"
            };
            let (kx, ky) = (pe.kx as u32, pe.ky as u32);
            Region {
                x0: b.x0 as u32 * kx,
                y0: b.y0 as u32 * ky,
                x1: (b.x1 as u32 * kx).min(pe.src_w as u32),
                y1: (b.y1 as u32 * ky).min(pe.src_h as u32),
                area_m2: pe.mm_known.then_some(round3(area)),
                score: round3(score),
                kind,
                mean_delta: round3(b.mean_signed),
            }
        })
        .collect();
    regions.sort_by(|a, b| b.score.total_cmp(&a.score));
    let change_score = regions.first().map_or(0.0, |r| r.score);
    let area_of = |r: &Region| {
        r.area_m2.unwrap_or_else(|| {
            ((r.x1 - r.x0) as f64 / pe.kx as f64) * ((r.y1 - r.y0) as f64 / pe.ky as f64) * px_m2
        })
    };
    regions.retain(|r| r.score >= th.refer_score && area_of(r) >= th.min_region_m2);

    let outputs = with_outputs.then(|| {
        let t = Instant::now();
        let o = render_outputs(
            entry.image,
            &pe,
            exit.image,
            &px,
            (&cx, &cy),
            &response,
            &abs,
            &d,
            &roi,
        );
        tm.outputs_ms = ms(t);
        o
    });

    let (status, reason) = if quality < th.min_alignment_quality {
        (
            Status::Inconclusive,
            Some(format!(
                "the exit scan's load carrier does not match the entry's once aligned (alignment quality {quality:.2}, below {:.2})",
                th.min_alignment_quality
            )),
        )
    } else if regions.is_empty() {
        (Status::Unchanged, None)
    } else {
        (Status::Changed, None)
    };
    tm.total_ms = ms(t_all);
    Comparison {
        status,
        reason,
        change_score: Some(round3(change_score)),
        regions: if status == Status::Changed {
            regions
        } else {
            Vec::new()
        },
        alignment_quality: Some(round3(quality)),
        mirrored: Some(al.mirrored),
        details: det,
        timings: tm,
        outputs,
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// How well the aligned exit matches the entry where nothing changed: the correlation of
/// the two over the compared area outside the changed regions (grown by a margin).
fn alignment_quality(e: &Plane, x: &Plane, roi: &Roi, blobs: &[diff::Blob]) -> f64 {
    let m = 4usize;
    let outside = |px: usize, py: usize| {
        !blobs
            .iter()
            .any(|b| px + m >= b.x0 && px < b.x1 + m && py + m >= b.y0 && py < b.y1 + m)
    };
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (px, py) in roi.pixels() {
        if outside(px, py) {
            a.push(e.at(px, py));
            b.push(x.at(px, py));
        }
    }
    if a.len() < 100 {
        return 0.0;
    }
    ncc(&a, &b).max(0.0)
}

/// Full-size aligned exit and heatmap for the operator.
#[allow(clippy::too_many_arguments)]
fn render_outputs(
    entry: &Gray16,
    pe: &Prepared,
    exit: &Gray16,
    px: &Prepared,
    coords: (&Plane, &Plane),
    response: &diff::Response,
    abs: &Plane,
    signed: &Plane,
    roi: &Roi,
) -> Outputs {
    let (w, h) = (entry.width() as usize, entry.height() as usize);
    let (xw, xh) = (exit.width() as usize, exit.height() as usize);
    let (cx, cy) = coords;
    let lut = ln_table();
    let raw = exit.as_raw();
    let mut aligned = vec![0u16; w * h];
    let rows_per = h.div_ceil(2).max(1);
    std::thread::scope(|s| {
        for (band, chunk) in aligned.chunks_mut(rows_per * w).enumerate() {
            s.spawn(move || {
                for (r, out) in chunk.chunks_mut(w).enumerate() {
                    let sy = band * rows_per + r;
                    let ay = (sy as f32 + 0.5) / pe.ky as f32 - 0.5;
                    let air_e = pe.air_rows[sy];
                    for (sx, o) in out.iter_mut().enumerate() {
                        let ax = (sx as f32 + 0.5) / pe.kx as f32 - 0.5;
                        // Exit source position through the analysis-grid coordinate planes.
                        let x = (cx.sample(ax, ay) + 0.5) * px.kx as f32 - 0.5;
                        let y = (cy.sample(ax, ay) + 0.5) * px.ky as f32 - 0.5;
                        if x < 0.0 || x > (xw - 1) as f32 || y < 0.0 || y > (xh - 1) as f32 {
                            *o = air_e.round() as u16;
                            continue;
                        }
                        let x0 = x.floor() as usize;
                        let x1 = (x0 + 1).min(xw - 1);
                        let y0 = y.floor() as usize;
                        let y1 = (y0 + 1).min(xh - 1);
                        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
                        let (ln_air0, ln_air1) = (px.air_rows[y0].ln(), px.air_rows[y1].ln());
                        let a00 = ln_air0 - lut[raw[y0 * xw + x0] as usize];
                        let a01 = ln_air0 - lut[raw[y0 * xw + x1] as usize];
                        let a10 = ln_air1 - lut[raw[y1 * xw + x0] as usize];
                        let a11 = ln_air1 - lut[raw[y1 * xw + x1] as usize];
                        let top = a00 + (a01 - a00) * fx;
                        let bot = a10 + (a11 - a10) * fx;
                        let att = (top + (bot - top) * fy).max(0.0);
                        let v = air_e * (-response.apply(att)).exp();
                        *o = v.round().clamp(0.0, 65535.0) as u16;
                    }
                }
            });
        }
    });
    let aligned = crate::imaging::gray16(w as u32, h as u32, aligned)
        .expect("the aligned image has the entry's size");

    // Heatmap: one colour per analysis pixel, then blown up to the entry's size.
    let (aw, ah) = (abs.w, abs.h);
    let mut cell = vec![[0u8; 4]; aw * ah];
    for (x, y) in roi.pixels() {
        let a = abs.at(x, y);
        let i = y * aw + x;
        if a > MAP.low_abs {
            let t = ((a - MAP.low_abs) / 0.5).clamp(0.0, 1.0);
            let alpha = (110.0 + 140.0 * t) as u8;
            cell[i] = if signed.at(x, y) >= 0.0 {
                // Removed (the entry held more): yellow to red.
                [255, (220.0 * (1.0 - t)) as u8, 0, alpha]
            } else {
                // Added (the exit holds more): cyan to blue.
                [0, (200.0 * (1.0 - t)) as u8, 255, alpha]
            };
        }
    }
    // The compared area's outline, faint, so the operator sees what was compared.
    for r in &roi.rects {
        for x in r[0]..r[2] {
            for y in [r[1], r[3].saturating_sub(1)] {
                if cell[y * aw + x][3] == 0 {
                    cell[y * aw + x] = [80, 220, 120, 150];
                }
            }
        }
        for y in r[1]..r[3] {
            for x in [r[0], r[2].saturating_sub(1)] {
                if cell[y * aw + x][3] == 0 {
                    cell[y * aw + x] = [80, 220, 120, 150];
                }
            }
        }
    }
    let mut heat = RgbaImage::new(w as u32, h as u32);
    for (sy, row) in heat.as_mut().chunks_mut(w * 4).enumerate() {
        let ay = (sy / pe.ky).min(ah - 1);
        for sx in 0..w {
            let ax = (sx / pe.kx).min(aw - 1);
            row[sx * 4..sx * 4 + 4].copy_from_slice(&cell[ay * aw + ax]);
        }
    }
    Outputs {
        aligned,
        heatmap: heat,
    }
}
