//! Normalisation of a canonical scan image for comparison: 16-bit transmission to
//! attenuation (optical depth, 0 = air), per detector row and per column (linac pulse)
//! referenced to the air the scan itself shows, box-averaged onto an analysis grid of about
//! [`ANALYSIS_MM`] per pixel. Two scanners' gains, offsets, stripes and pitches differ;
//! after this step only their response curves (handled by the difference stage) and the
//! geometry (handled by registration) remain.

use std::sync::OnceLock;

use super::plane::{quantile, Plane};
use crate::imaging::Gray16;

/// Target pixel size of the analysis grid (mm). Fine enough for a 0.25 m² change to cover
/// ~2500 pixels, coarse enough to keep a 20 m truck around 2000 x 500 pixels.
pub const ANALYSIS_MM: f64 = 10.0;

/// Height a scanner's detector column covers when the sidecar gives no pixel size (mm);
/// only used to pick the analysis grid and to express areas in m².
const ASSUMED_COVERAGE_MM: f64 = 4800.0;

/// Half-width of the running mean that finds each row's air level (source columns).
const AIR_WINDOW: usize = 15;

/// The scan as the comparison sees it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Attenuation on the analysis grid.
    pub att: Plane,
    /// Source pixels per analysis pixel, horizontally and vertically.
    pub kx: usize,
    pub ky: usize,
    pub src_w: usize,
    pub src_h: usize,
    /// Analysis pixel size (mm), [horizontal, vertical].
    pub mm: [f64; 2],
    /// Whether `mm` comes from the sidecar (else it is assumed from the image height).
    pub mm_known: bool,
    /// Air level of each source row (counts), for re-rendering into this scan's photometry.
    pub air_rows: Vec<f32>,
}

/// ln(v) for every 16-bit value (ln(0) is taken as ln(1): a dead pixel, not infinity).
pub(crate) fn ln_table() -> &'static [f32] {
    static T: OnceLock<Vec<f32>> = OnceLock::new();
    T.get_or_init(|| (0..=u16::MAX).map(|v| (v.max(1) as f32).ln()).collect())
}

/// Each row's air level: the brightest stretch of the row, as a running mean over
/// 2*[`AIR_WINDOW`]+1 columns so that noise does not bias it. Every scan starts and ends
/// in air, so every row has some; a row dark end to end (a portal's pit) is its own
/// reference and comes out as air, which keeps the pit out of the comparison.
fn air_levels(img: &Gray16) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let r = AIR_WINDOW.min(w.saturating_sub(1) / 2);
    let n = (2 * r + 1) as u64;
    (0..h)
        .map(|y| {
            let row = &raw[y * w..(y + 1) * w];
            if w <= 2 * r {
                return row.iter().map(|&v| v as f32).sum::<f32>() / w as f32;
            }
            let mut acc: u64 = row[..n as usize].iter().map(|&v| v as u64).sum();
            let mut best = acc;
            for x in n as usize..w {
                acc += row[x] as u64;
                acc -= row[x - n as usize] as u64;
                best = best.max(acc);
            }
            (best as f32 / n as f32).max(1.0)
        })
        .collect()
}

/// The pixel size of a scan of `h` rows: the sidecar's, or assumed from the height.
pub fn native_mm(h: usize, pixel_mm: Option<[f64; 2]>) -> ([f64; 2], bool) {
    match pixel_mm {
        Some([ph, pv]) if ph > 0.0 && pv > 0.0 => ([ph, pv], true),
        _ => {
            let pv = ASSUMED_COVERAGE_MM / h.max(1) as f64;
            ([pv, pv], false)
        }
    }
}

/// The analysis pitch for comparing two scans of native pitches `a` and `b`: about
/// [`ANALYSIS_MM`], or the coarser scan's pitch when that is coarser (a reduced entry
/// image): two scans compared at different sharpness disagree at every edge.
pub fn common_target(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [
        ANALYSIS_MM.max(a[0]).max(b[0]),
        ANALYSIS_MM.max(a[1]).max(b[1]),
    ]
}

/// The analysis grid's factors for a scan with pixel size `mm` and target pitch `target`.
fn factors(mm: [f64; 2], target: [f64; 2]) -> (usize, usize) {
    let kx = ((target[0] / mm[0]).round() as usize).max(1);
    let ky = ((target[1] / mm[1]).round() as usize).max(1);
    (kx, ky)
}

/// Converts and averages `img` onto the analysis grid. Blocking, O(pixels).
pub fn prepare(img: &Gray16, pixel_mm: Option<[f64; 2]>, target: [f64; 2]) -> Prepared {
    let (src_w, src_h) = (img.width() as usize, img.height() as usize);
    let (mm, mm_known) = native_mm(src_h, pixel_mm);
    let (kx, ky) = factors(mm, target);
    let (kx, ky) = (kx.min(src_w.max(1)), ky.min(src_h.max(1)));
    let (w, h) = ((src_w / kx).max(1), (src_h / ky).max(1));
    let air = air_levels(img);
    let lut = ln_table();
    let raw = img.as_raw();
    let mut att = Plane::new(w, h);
    let inv = 1.0 / (kx * ky) as f32;
    let mut acc = vec![0.0f32; w];
    for ay in 0..h {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for sy in ay * ky..((ay + 1) * ky).min(src_h) {
            let ln_air = air[sy].ln();
            let row = &raw[sy * src_w..sy * src_w + w * kx];
            for (a, block) in acc.iter_mut().zip(row.chunks_exact(kx)) {
                let mut s = 0.0f32;
                for &v in block {
                    s += lut[v as usize];
                }
                *a += kx as f32 * ln_air - s;
            }
        }
        for (o, a) in att.row_mut(ay).iter_mut().zip(&acc) {
            *o = a * inv;
        }
    }
    correct_columns(&mut att);
    // Brighter than air is noise on air, not negative matter.
    att.v.iter_mut().for_each(|v| *v = v.max(0.0));
    Prepared {
        att,
        kx,
        ky,
        src_w,
        src_h,
        mm: [mm[0] * kx as f64, mm[1] * ky as f64],
        mm_known,
        air_rows: air,
    }
}

/// Removes each column's offset (the linac's pulse-to-pulse dose) measured in the air
/// above the truck, when the scan has enough rows of clear air at its top.
fn correct_columns(att: &mut Plane) {
    let (w, h) = (att.w, att.h);
    let mut clear_rows = 0;
    let mut buf = Vec::with_capacity(w);
    for y in 0..h / 3 {
        buf.clear();
        buf.extend_from_slice(att.row(y));
        if quantile(&mut buf, 0.99) > 0.04 {
            break;
        }
        clear_rows = y + 1;
    }
    // Skip the first rows, which may hold the top of the detector's blur or a crop edge.
    let first = clear_rows / 4;
    if clear_rows - first < 6 {
        return;
    }
    let n = (clear_rows - first) as f32;
    let offsets: Vec<f32> = (0..w)
        .map(|x| (first..clear_rows).map(|y| att.at(x, y)).sum::<f32>() / n)
        .collect();
    for y in 0..h {
        for (v, o) in att.row_mut(y).iter_mut().zip(&offsets) {
            *v -= o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::gray16;

    #[test]
    fn air_is_zero_and_a_known_absorber_has_its_optical_depth() {
        // 200 x 100, air 50_000 in rows with a per-row gain, a block transmitting 20 %.
        let (w, h) = (200usize, 100usize);
        let mut px = vec![0u16; w * h];
        for y in 0..h {
            let air = 50_000.0 * (1.0 + 0.01 * (y % 3) as f32);
            for x in 0..w {
                let t = if (80..120).contains(&x) && (40..80).contains(&y) {
                    0.2
                } else {
                    1.0
                };
                px[y * w + x] = (air * t) as u16;
            }
        }
        let img = gray16(w as u32, h as u32, px).unwrap();
        let p = prepare(&img, Some([5.0, 5.0]), [ANALYSIS_MM; 2]);
        assert_eq!((p.kx, p.ky), (2, 2));
        assert_eq!((p.att.w, p.att.h), (100, 50));
        assert!(p.att.at(5, 5).abs() < 1e-3);
        let od = p.att.at(50, 30);
        assert!((od - 5.0f32.ln()).abs() < 1e-3, "{od}");
        assert_eq!(p.mm, [10.0, 10.0]);
    }

    #[test]
    fn unknown_pixel_size_is_assumed_from_the_height_and_a_coarse_scan_sets_the_pitch() {
        let (mm, known) = native_mm(960, None);
        assert!(!known);
        assert!((mm[1] - 5.0).abs() < 1e-9);
        assert_eq!(factors(mm, [ANALYSIS_MM; 2]), (2, 2));
        // A half-size entry package at 8.8 x 9.6 mm against a 4 x 5 mm exit.
        let t = common_target([8.8, 9.6], [4.0, 5.0]);
        assert_eq!(t, [10.0, 10.0]);
        let t = common_target([17.6, 19.2], [4.0, 5.0]);
        assert_eq!(factors([4.0, 5.0], t), (4, 4));
        assert_eq!(factors([17.6, 19.2], t), (1, 1));
    }
}
