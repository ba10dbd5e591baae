//! The transit check's image comparison: given the entry and exit scans of one container
//! (canonical 16-bit transmission images, possibly from two scanner models, the exit
//! possibly mirrored and the entry possibly reduced), find what changed in the load.
//!
//! Stages, each in its own module: [`prep`] (attenuation on a ~10 mm analysis grid),
//! [`layout`] (vehicle, load carriers, roof and floor, tractor end), [`register`]
//! (orientation, vertical scale/offset, non-rigid horizontal DTW warp), [`blur`] (the
//! sharper scan blurred to the other's sharpness), [`diff`] (response curve, tolerant
//! difference, noise, changed areas), then the common measurable range, scores, outputs and
//! timings here. [`compare`] is a pure, blocking, CPU-bound function: callers run it off
//! the async runtime. This module never touches files, the store or the network, and never
//! guesses: a pair it cannot align is `Inconclusive` with the reason.

pub mod bench;
pub mod blur;
pub mod calibrate;
pub mod cli;
pub mod diff;
pub mod dtw;
pub mod http;
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
use crate::scan::CabSide;
use diff::{MapParams, NoiseModel, Roi};
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
    /// The sidecar's `image.cab_side`: a hint for the orientation, used only when the
    /// images leave it open.
    pub cab_side: Option<CabSide>,
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
    /// This scanner pair's calibrated evidence limits, which replace `refer_score` and
    /// `alert_score` (see [`calibrate`]); `None`: uncalibrated defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<calibrate::CalibratedLimits>,
}

impl Thresholds {
    /// Whether a region is a change to report.
    pub fn refers(&self, r: &Region) -> bool {
        match &self.calibrated {
            Some(c) => r.evidence_od_m2 >= c.refer_od_m2,
            None => r.score >= self.refer_score,
        }
    }

    /// Whether a reported region is strong enough for an alert (its area is checked by the
    /// caller against `alert_min_area_m2`).
    pub fn alerts(&self, r: &Region) -> bool {
        match &self.calibrated {
            Some(c) => r.evidence_od_m2 >= c.alert_od_m2,
            None => r.score >= self.alert_score,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_region_m2: 0.02,
            refer_score: 0.35,
            alert_score: 0.9,
            alert_min_area_m2: 0.25,
            min_alignment_quality: 0.5,
            calibrated: None,
        }
    }
}

/// Thresholds of the change map itself (not per site: they follow from the physics of
/// the analysis grid and were tuned on simulator pairs). Sizes are in millimetres and
/// become pixels through the analysis grid's pitch.
const LOW_ABS: f32 = 0.06;
const LOW_SIGMA: f32 = 4.0;
const HIGH_ABS: f32 = 0.15;
const HIGH_SIGMA: f32 = 8.0;
/// Strong pixels a change needs (area, mm²).
const MIN_SEED_MM2: f64 = 4000.0;
/// Pieces of change closer than this are one region (mm).
const GROUP_MM: f64 = 350.0;
/// Thinner pieces are misregistration along an edge (mm).
const MIN_THICKNESS_MM: f64 = 50.0;
/// Misalignment the difference tolerates (mm).
const TOLERANCE_MM: f64 = 20.0;

fn map_params(mm: [f64; 2]) -> MapParams {
    let pitch = 0.5 * (mm[0] + mm[1]);
    MapParams {
        low_abs: LOW_ABS,
        low_sigma: LOW_SIGMA,
        high_abs: HIGH_ABS,
        high_sigma: HIGH_SIGMA,
        min_seed_px: ((MIN_SEED_MM2 / (mm[0] * mm[1])).round() as usize).max(4),
        group_px: ((GROUP_MM / pitch).round() as usize).max(2),
        min_thickness_px: ((MIN_THICKNESS_MM / pitch) as f32).max(1.5),
    }
}

fn tolerance_px(mm: [f64; 2]) -> usize {
    ((TOLERANCE_MM / (0.5 * (mm[0] + mm[1]))).round() as usize).max(1)
}

/// Share of a scan's analysis pixels at or above the level taken as the densest it
/// measures: a few hundred pixels, so a dead pixel or two cannot set it.
const CEILING_Q: f32 = 0.9995;
/// How far below its densest level a scanner is still trusted to tell levels apart (OD).
/// Near its floor a detector reads its dark offset and noise, not the object: a scan whose
/// darkest reading is its offset pedestal compresses everything in the last few tenths of
/// an optical depth (a quarter is where a pedestal of a fifth of the signal starts to
/// bend the logarithm by more than the response fit's tolerance).
const CEILING_MARGIN_OD: f32 = 0.25;
/// The common ceiling is never put below this (OD): a scan of nothing dense at all still
/// compares its thin goods.
const CEILING_MIN_OD: f32 = 1.0;

/// The densest level a prepared scan measures (OD, its own photometry).
fn ceiling(p: &Plane) -> f32 {
    let mut v: Vec<f32> = p.v.iter().step_by(2).copied().collect();
    plane::quantile(&mut v, CEILING_Q)
}

/// A scan clipped at the densest level both scans measure (entry photometry). Two scanners
/// see through different amounts of steel (a 1.25 MeV gamma source or a mobile unit
/// reaches its floor where a 9 MeV portal still measures): beyond the lower of the two
/// ceilings one of them reads only its floor, and a difference there is the scanners,
/// not the load. A load changed from opaque to less than the ceiling still shows.
fn clip(p: &mut Plane, ceiling_od: f32) {
    for v in p.v.iter_mut() {
        *v = v.min(ceiling_od);
    }
}

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
    /// The change integrated over the region (optical depth x m²), for a region of one
    /// sign only as far as the mass in its columns changed too: what a scanner pair's
    /// calibration sets its limits on. `score` is a saturating function of it.
    pub evidence_od_m2: f64,
    /// "removed" (the entry held more), "added" (the exit holds more) or "mixed".
    pub kind: &'static str,
    /// Mean attenuation change over the region (optical depth, entry minus exit).
    pub mean_delta: f64,
    /// Mean significance: |change| in multiples of the noise at that attenuation.
    pub mean_z: f64,
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
    /// scan's analysis grid (the entry's main floor: the higher of the two scans' floors,
    /// the exit's mapped onto the entry, which is where the compared area ends).
    pub entry_carriers: Vec<[f64; 4]>,
    pub exit_carriers: Vec<[f64; 4]>,
    /// Largest local correction of the registration (analysis pixels).
    pub refine_max_px: Option<f64>,
    /// The densest level both scans measure (OD, entry photometry); denser is compared as
    /// this level.
    pub common_ceiling_od: Option<f64>,
    /// Largest vertical blur (Gaussian sigma, analysis pixels) put on the entry and on the
    /// exit to match the other's sharpness.
    pub blur_sigma_px: Option<[f64; 2]>,
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
    /// Every changed area found, strongest first, before the thresholds (for analysts
    /// and tuning; not part of the verdict).
    pub candidates: Vec<Region>,
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
        candidates: Vec::new(),
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
    let target = prep::common_target(
        prep::native_mm(entry.image.height() as usize, entry.pixel_mm).0,
        prep::native_mm(exit.image.height() as usize, exit.pixel_mm).0,
    );
    let (pe, px) = both(
        || prep::prepare(entry.image, entry.pixel_mm, target),
        || prep::prepare(exit.image, exit.pixel_mm, target),
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
    let sidecar_mirrored = match (entry.cab_side, exit.cab_side) {
        (Some(a), Some(b)) => Some(a != b),
        _ => None,
    };
    let al = register::register(&pe, &le, &px, &lx, sidecar_mirrored);
    tm.register_ms = ms(t);
    let al = match al {
        Ok(a) => a,
        Err(e) => {
            tm.total_ms = ms(t_all);
            return inconclusive(format!("cannot align the scans: {e}"), det, tm);
        }
    };
    // Each scan's floor ridge was found on its own, and a flatbed's deck or beams can pass
    // for a box's floor in one scan only (the deck reads as one filled block with the box).
    // What lies below either scan's floor is trailer, which may be another one: the
    // compared area ends at the higher of the two floors, the exit's mapped onto the entry.
    let (mut le, mut lx) = (le, lx);
    if let Some([fe, fx]) = al.floors {
        le.main_mut().floor = fe;
        lx.main_mut().floor = fx;
        det.exit_carriers = carriers(&Ok(lx.clone()));
    }
    let exit_floor = al.vmap.invert(lx.main().floor as f64) as f32;
    let main = le.main_mut();
    if exit_floor < main.floor && exit_floor > main.roof + 0.6 * (main.floor - main.roof) {
        main.floor = exit_floor;
    }
    det.entry_carriers = carriers(&Ok(le.clone()));
    det.orientation_by = Some(al.orientation_by);
    det.vertical_scale = Some(al.vmap.a);
    det.vertical_offset = Some(al.vmap.b);
    det.dtw_cost = Some(al.dtw_cost as f64);
    det.load_overlap = Some(al.load_overlap);

    let t = Instant::now();
    let (w, h) = (pe.att.w, pe.att.h);
    // Everything from here works on the load's bounding box only.
    let roi_full = Roi::from_spans(&le.spans, w, h, pe.mm);
    let [rx0, ry0, rx1, ry1] = roi_full.bbox();
    // The crop also holds the carriers' shells (end walls, floor) for the quality check.
    let pad = 4;
    let floor_row = le
        .spans
        .iter()
        .map(|s| s.floor.ceil() as usize)
        .max()
        .unwrap_or(ry1);
    let (bx0, by0) = (rx0.saturating_sub(pad), ry0.saturating_sub(pad));
    let (bx1, by1) = ((rx1 + pad).min(w), (floor_row + pad).max(ry1).min(h));
    let (cw, ch) = (bx1 - bx0, by1 - by0);
    let roi = roi_full.shifted(bx0, by0, cw, ch);
    let e = pe.att.crop(bx0, by0, bx1, by1);
    let (gx, gy) = register::coords(&al, &refine::Field::zero(), bx0, by0, cw, ch);
    let warped = register::warp_at(&px.att, &gx, &gy);
    let px_m2 = pe.mm[0] * pe.mm[1] / 1e6;
    det.compared_m2 = Some(roi.area() as f64 * px_m2);
    let response = diff::fit_response(&e, &warped, &roi);
    det.response = Some(response.c);
    let common = (ceiling(&pe.att).min(response.apply(ceiling(&px.att))) - CEILING_MARGIN_OD)
        .max(CEILING_MIN_OD);
    det.common_ceiling_od = Some(round3(common as f64));
    let mut e = e;
    let mut xm = warped;
    for v in xm.v.iter_mut() {
        *v = response.apply(*v);
    }
    clip(&mut e, common);
    clip(&mut xm, common);
    let sharpness = blur::match_blur(&e, &xm, &roi);
    det.blur_sigma_px = Some(sharpness.max_sigma().map(round3));
    // The entry is clipped and blurred once; only the re-warped exit is again below.
    let e = sharpness.apply_entry(&e);
    let xm = sharpness.apply_exit(&xm);
    // Registration uses the whole crop: the roof, the floor and the end walls anchor it.
    let whole = Roi {
        rects: vec![[0, 0, cw, ch]],
        w: cw,
        h: ch,
    };
    let mut field = refine::estimate(&e, &xm, &whole);
    field.translate(bx0 as f32, by0 as f32);
    det.refine_max_px = Some(round3(field.max_abs() as f64));
    let (cx, cy) = register::coords(&al, &field, bx0, by0, cw, ch);
    let mut xm = register::warp_at(&px.att, &cx, &cy);
    for v in xm.v.iter_mut() {
        *v = response.apply(*v);
    }
    clip(&mut xm, common);
    let xm = sharpness.apply_exit(&xm);
    let d = diff::tolerant_diff(&e, &xm, tolerance_px(pe.mm));
    let noise = NoiseModel::measure(&e, &xm, &roi);
    let (abs, z) = diff::significance(&d, &e, &xm, &noise, &roi);
    let blobs = diff::blobs(&abs, &z, &d, &map_params(pe.mm));
    let quality = alignment_quality(
        &e,
        &xm,
        &shell_bands(
            &le.spans,
            le.main().roof_cropped() || lx.main().roof_cropped(),
            pe.mm,
            [bx0, by0],
            cw,
            ch,
        ),
        &blobs,
    );
    tm.difference_ms = ms(t);

    let column_mass = column_mass_change(&e, &xm, &roi);
    let mut regions: Vec<Region> = blobs
        .iter()
        .map(|b| {
            let area = b.pixels as f64 * px_m2;
            let kind = if b.mean_signed > 0.3 * (b.sum_abs / b.pixels as f64) {
                "removed"
            } else if b.mean_signed < -0.3 * (b.sum_abs / b.pixels as f64) {
                "added"
            } else {
                "mixed"
            };
            let integrated = b.sum_abs * px_m2 * mass_share(b, kind, &column_mass);
            let score = 1.0 - (-integrated / SCORE_SCALE_OD_M2).exp();
            let (kx, ky) = (pe.kx as u32, pe.ky as u32);
            let (ox, oy) = (bx0 as u32, by0 as u32);
            Region {
                x0: (b.x0 as u32 + ox) * kx,
                y0: (b.y0 as u32 + oy) * ky,
                x1: ((b.x1 as u32 + ox) * kx).min(pe.src_w as u32),
                y1: ((b.y1 as u32 + oy) * ky).min(pe.src_h as u32),
                area_m2: pe.mm_known.then_some(round3(area)),
                score: round3(score),
                evidence_od_m2: (integrated * 1e5).round() / 1e5,
                kind,
                mean_delta: round3(b.mean_signed),
                mean_z: round3(b.sum_z / b.pixels.max(1) as f64),
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
    let candidates = regions.clone();
    regions.retain(|r| th.refers(r) && area_of(r) >= th.min_region_m2);

    let outputs = with_outputs.then(|| {
        let t = Instant::now();
        let (fx, fy) = register::coords(&al, &field, 0, 0, w, h);
        let o = render_outputs(
            entry.image,
            &pe,
            exit.image,
            &px,
            (&fx, &fy),
            &response,
            (&abs, &d, [bx0, by0]),
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
        candidates,
        outputs,
    }
}

/// Per column of the crop, the attenuation the entry holds more than the exit, summed
/// over the compared rows: the mass in that column, gone (> 0) or come (< 0). Moving
/// matter up or down within a column does not change it: depth parallax that differs
/// between two source heights, a vertical misregistration, goods settling.
fn column_mass_change(e: &Plane, xm: &Plane, roi: &Roi) -> Vec<f64> {
    let mut out = vec![0.0f64; e.w];
    for (x, y) in roi.pixels() {
        out[x] += (e.at(x, y) - xm.at(x, y)) as f64;
    }
    out
}

/// How much of a one-signed region's change its columns confirm as mass gone or come
/// (0..1): goods taken out or put in change the mass in their columns by what they
/// hold, while a layer's edge seen at another height leaves a `removed` strip over an
/// `added` one in the same columns, and their mass does not change. A mixed region
/// (goods swapped for others of similar density) is not judged by mass.
fn mass_share(b: &diff::Blob, kind: &str, column_mass: &[f64]) -> f64 {
    let signed = b.mean_signed * b.pixels as f64;
    if kind == "mixed" || signed == 0.0 {
        return 1.0;
    }
    let columns: f64 = column_mass[b.x0..b.x1.min(column_mass.len())].iter().sum();
    (columns / signed).clamp(0.0, 1.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The carriers' own structure, which no tampering with the load moves: a band along the
/// roof and top rails, one just above the floor ridge (below it the trailer, maybe another
/// one, begins), and one inside each end wall. Pixels of the `w` x `h` crop at `off`,
/// band by band. `roof_cut`: one of the scans cut the roof off, so there is no roof band
/// to compare.
fn shell_bands(
    spans: &[layout::Span],
    roof_cut: bool,
    mm: [f64; 2],
    off: [usize; 2],
    w: usize,
    h: usize,
) -> Vec<Vec<(usize, usize)>> {
    let roof_band = (60.0 / mm[1]).round() as i64 + 2;
    let floor_band = (30.0 / mm[1]).round() as i64 + 2;
    let end_band = (250.0 / mm[0]).round() as i64;
    let (ox, oy) = (off[0] as i64, off[1] as i64);
    let rect = |x0: i64, y0: i64, x1: i64, y1: i64| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for y in (y0 - oy).max(0)..(y1 - oy).min(h as i64) {
            for x in (x0 - ox).max(0)..(x1 - ox).min(w as i64) {
                out.push((x as usize, y as usize));
            }
        }
        out
    };
    let mut bands = Vec::new();
    for s in spans {
        let (c0, c1) = (s.c0 as i64, s.c1 as i64);
        let (roof, floor) = (s.roof.round() as i64, s.floor.round() as i64);
        if !roof_cut {
            bands.push(rect(c0, roof - 2, c1, roof + roof_band));
        }
        bands.push(rect(c0, floor - floor_band, c1, floor + 1));
        bands.push(rect(
            c0 - 2,
            roof + roof_band,
            c0 + end_band,
            floor - floor_band,
        ));
        bands.push(rect(
            c1 - end_band,
            roof + roof_band,
            c1 + 2,
            floor - floor_band,
        ));
    }
    bands
}

/// How well the aligned exit matches the entry on the carriers' shells: the correlation
/// of the two in each band, away from the changes found (goods against a wall are not
/// the wall), averaged by pixels. A load changed however much leaves the shell alone; a
/// pair that was not aligned (or not the same kind of carrier) does not match there.
fn alignment_quality(
    e: &Plane,
    x: &Plane,
    bands: &[Vec<(usize, usize)>],
    blobs: &[diff::Blob],
) -> f64 {
    let m = 3usize;
    let clear = |px: usize, py: usize| {
        !blobs
            .iter()
            .any(|b| px + m >= b.x0 && px < b.x1 + m && py + m >= b.y0 && py < b.y1 + m)
    };
    let (mut sum, mut n) = (0.0f64, 0usize);
    for band in bands {
        let kept: Vec<(usize, usize)> = band
            .iter()
            .copied()
            .filter(|&(px, py)| clear(px, py))
            .collect();
        if kept.len() < 60 {
            continue;
        }
        let a: Vec<f32> = kept.iter().map(|&(px, py)| e.at(px, py)).collect();
        let b: Vec<f32> = kept.iter().map(|&(px, py)| x.at(px, py)).collect();
        sum += ncc(&a, &b).max(0.0) * kept.len() as f64;
        n += kept.len();
    }
    if n < 100 {
        0.0
    } else {
        sum / n as f64
    }
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
    change: (&Plane, &Plane, [usize; 2]),
    roi: &Roi,
) -> Outputs {
    // The change planes cover the load's box at `off` on the analysis grid.
    let (abs, signed, off) = change;
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
    let (aw, ah) = (pe.att.w, pe.att.h);
    let mut cell = vec![[0u8; 4]; aw * ah];
    for (x, y) in roi.pixels() {
        let a = abs.at(x, y);
        let i = (y + off[1]) * aw + x + off[0];
        if a > LOW_ABS {
            let t = ((a - LOW_ABS) / 0.5).clamp(0.0, 1.0);
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
    let mut outline = |x: usize, y: usize| {
        let i = (y + off[1]) * aw + x + off[0];
        if cell[i][3] == 0 {
            cell[i] = [80, 220, 120, 150];
        }
    };
    for r in &roi.rects {
        for x in r[0]..r[2] {
            outline(x, r[1]);
            outline(x, r[3].saturating_sub(1));
        }
        for y in r[1]..r[3] {
            outline(r[0], y);
            outline(r[2].saturating_sub(1), y);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 40-column, 60-row crop with a block of attenuation 1 over rows `top..top + 20`.
    fn block(top: usize) -> Plane {
        let mut p = Plane::new(40, 60);
        for y in top..top + 20 {
            for x in 10..30 {
                p.set(x, y, 1.0);
            }
        }
        p
    }

    /// The `removed` strip rows `y0..y1` of the block's columns leave behind.
    fn strip(y0: usize, y1: usize) -> diff::Blob {
        let pixels = 20 * (y1 - y0);
        diff::Blob {
            x0: 10,
            y0,
            x1: 30,
            y1,
            pixels,
            sum_abs: pixels as f64,
            mean_signed: 1.0,
            peak: 1.0,
            sum_z: 10.0 * pixels as f64,
        }
    }

    #[test]
    fn a_layer_seen_lower_is_no_mass_gone_goods_taken_out_are() {
        let roi = Roi {
            rects: vec![[0, 0, 40, 60]],
            w: 40,
            h: 60,
        };
        let entry = block(10);
        // The same layer 4 rows lower in the exit (parallax, settling): a removed strip
        // over an added one, and the columns hold what they held.
        let mass = column_mass_change(&entry, &block(14), &roi);
        assert!(mass_share(&strip(10, 14), "removed", &mass) < 0.01);
        // Taken out: the columns lost all of it.
        let mass = column_mass_change(&entry, &Plane::new(40, 60), &roi);
        assert!((mass_share(&strip(10, 30), "removed", &mass) - 1.0).abs() < 1e-9);
        // A mixed region is not judged by mass.
        assert_eq!(mass_share(&strip(10, 14), "mixed", &[0.0; 40]), 1.0);
    }
}
