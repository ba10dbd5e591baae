//! Resolution matching of the two aligned scans before they are differenced. Two scanner
//! models do not see an edge equally sharply: a gamma source's spot, a coarser detector
//! pitch and above all depth parallax (a fan beam from a source far below or above a load
//! spreads its horizontal edges vertically, more the further they are from the source's
//! height) blur one scan's layers and gaps into each other where the other shows them
//! crisp. Differencing a sharp scan against a blurred one reports every gap between two
//! layers of goods as a change. So the sharper scan is blurred vertically to the other's
//! sharpness, band of rows by band of rows, by the amount that makes the two agree best
//! over most of the compared area where either scan has a horizontal edge (a quantile of
//! the residual, so a changed area cannot choose the blur). Pure computation on the
//! analysis grid; it never moves anything (the registration does that) and never blurs a
//! scan towards a sharper one.

use super::diff::Roi;
use super::plane::{quantile, Plane};

/// Box radii tried; three passes of a box of radius r are a Gaussian of
/// sigma = sqrt(r (r + 1)) pixels: 0, 1.4, 2.4, 3.5, 4.5, 6.5, 8.5, 11.5 (analysis pixels
/// of ~10 mm: up to ~12 cm, the vertical depth smear of a 2.35 m wide load between a
/// source level with the roof and one at the floor).
const RADII: [usize; 8] = [0, 1, 2, 3, 4, 6, 8, 11];
/// Bands of rows across the compared area (the smear grows with distance from the
/// source's height, so it differs between the roof and the floor).
const BANDS: usize = 6;
/// Quantile of |difference| a blur is judged by: most of the area, never the changes.
const RESIDUAL_Q: f32 = 0.6;
/// A blur must cut that residual by this share to be taken: noise alone favours blurring
/// a little, and a blur that buys nothing only costs sensitivity.
const MIN_GAIN: f32 = 0.1;
/// A pixel is near a horizontal edge when the attenuation changes by more than
/// [`EDGE_OD`] (several times the noise of a dense load) over ±[`EDGE_REACH`] rows.
const EDGE_REACH: usize = 3;
const EDGE_OD: f32 = 0.1;

/// Which scan is blurred, by how much, per band of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BlurMatch {
    /// Centre row of each band (crop rows).
    centres: Vec<f32>,
    /// Box radius applied to the entry / the exit in each band (one of them is 0).
    entry: Vec<usize>,
    exit: Vec<usize>,
}

impl BlurMatch {
    pub fn none() -> BlurMatch {
        BlurMatch {
            centres: vec![0.0],
            entry: vec![0],
            exit: vec![0],
        }
    }

    /// The largest Gaussian sigma applied to the entry and to the exit (pixels).
    pub fn max_sigma(&self) -> [f64; 2] {
        let s = |v: &[usize]| {
            v.iter()
                .map(|&r| ((r * (r + 1)) as f64).sqrt())
                .fold(0.0, f64::max)
        };
        [s(&self.entry), s(&self.exit)]
    }

    pub fn apply_entry(&self, p: &Plane) -> Plane {
        apply(p, &self.centres, &self.entry)
    }

    pub fn apply_exit(&self, p: &Plane) -> Plane {
        apply(p, &self.centres, &self.exit)
    }
}

/// Vertical Gaussian (three box passes) of radius `r`.
fn vblur(p: &Plane, r: usize) -> Plane {
    if r == 0 {
        return p.clone();
    }
    vbox(&vbox(&vbox(p, r), r), r)
}

/// Vertical box mean over 2r+1 rows (at the edges, over the rows that exist), row by row
/// with a running sum of rows so that memory is read in order.
fn vbox(p: &Plane, r: usize) -> Plane {
    let (w, h) = (p.w, p.h);
    let mut out = Plane::new(w, h);
    let mut acc = vec![0.0f32; w];
    let mut n = 0usize;
    for y in 0..r.min(h) {
        acc.iter_mut().zip(p.row(y)).for_each(|(a, v)| *a += v);
        n += 1;
    }
    for y in 0..h {
        if y + r < h {
            acc.iter_mut().zip(p.row(y + r)).for_each(|(a, v)| *a += v);
            n += 1;
        }
        if y > r {
            acc.iter_mut()
                .zip(p.row(y - r - 1))
                .for_each(|(a, v)| *a -= v);
            n -= 1;
        }
        let k = 1.0 / n as f32;
        out.row_mut(y)
            .iter_mut()
            .zip(&acc)
            .for_each(|(o, a)| *o = a * k);
    }
    out
}

/// Each row blurred by its band's radius, interpolated between band centres so that no
/// seam appears where the radius changes.
fn apply(p: &Plane, centres: &[f32], radii: &[usize]) -> Plane {
    if radii.iter().all(|&r| r == 0) {
        return p.clone();
    }
    let mut distinct: Vec<usize> = radii.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let blurred: Vec<(usize, Plane)> = distinct.iter().map(|&r| (r, vblur(p, r))).collect();
    let of = |r: usize| -> &Plane {
        &blurred
            .iter()
            .find(|(k, _)| *k == r)
            .expect("every radius was blurred")
            .1
    };
    let mut out = Plane::new(p.w, p.h);
    for y in 0..p.h {
        let yf = y as f32;
        let k = centres
            .iter()
            .position(|&c| c > yf)
            .unwrap_or(centres.len());
        let (a, b, t) = if k == 0 {
            (0, 0, 0.0)
        } else if k == centres.len() {
            (k - 1, k - 1, 0.0)
        } else {
            let t = (yf - centres[k - 1]) / (centres[k] - centres[k - 1]);
            (k - 1, k, t)
        };
        let (ra, rb) = (of(radii[a]).row(y), of(radii[b]).row(y));
        for (x, o) in out.row_mut(y).iter_mut().enumerate() {
            *o = ra[x] * (1.0 - t) + rb[x] * t;
        }
    }
    out
}

/// The [`RESIDUAL_Q`] quantile of |a - b| over each band's pixels (`None` for a band with
/// too few to say).
fn band_residuals(
    a: &Plane,
    b: &Plane,
    by_band: &[Vec<(usize, usize)>],
    buf: &mut Vec<f32>,
) -> Vec<Option<f32>> {
    by_band
        .iter()
        .map(|pix| {
            buf.clear();
            buf.extend(pix.iter().map(|&(x, y)| (a.at(x, y) - b.at(x, y)).abs()));
            (buf.len() >= 100).then(|| quantile(buf, RESIDUAL_Q))
        })
        .collect()
}

/// Columns 0, 2, 4, ... of `p`.
fn even_columns(p: &Plane) -> Plane {
    let mut out = Plane::new(p.w.div_ceil(2), p.h);
    for y in 0..p.h {
        for (o, v) in out.row_mut(y).iter_mut().zip(p.row(y).iter().step_by(2)) {
            *o = *v;
        }
    }
    out
}

/// Finds the blur that makes the entry `e` and the aligned exit `x` (same grid, same
/// photometry) agree best over `roi`, band by band.
pub fn match_blur(e: &Plane, x: &Plane, roi: &Roi) -> BlurMatch {
    let [_, y0, _, y1] = roi.bbox();
    if y1 <= y0 + BANDS * 4 {
        return BlurMatch::none();
    }
    let band_h = (y1 - y0) as f32 / BANDS as f32;
    let band_of = |y: usize| (((y - y0) as f32 / band_h) as usize).min(BANDS - 1);
    // Every other pixel in each direction is plenty for a quantile; grouped by band once.
    // The blur is vertical, so every other column blurred alone is exact there: the
    // candidates are judged on half-width planes.
    // Only pixels near a horizontal edge in either scan: a vertical blur changes nothing
    // on flat areas (air above a low load, the inside of a block), and a band that is
    // mostly flat would otherwise hide its edges' disagreement under the quantile.
    let edge = |p: &Plane, x: usize, y: usize| {
        let (a, b) = (y.saturating_sub(EDGE_REACH), (y + EDGE_REACH).min(p.h - 1));
        (p.at(x, b) - p.at(x, a)).abs() > EDGE_OD
    };
    let mut by_band: Vec<Vec<(usize, usize)>> = vec![Vec::new(); BANDS];
    for (px, py) in roi
        .pixels()
        .filter(|&(px, py)| px % 2 == 0 && py % 2 == 0)
        .filter(|&(px, py)| edge(e, px, py) || edge(x, px, py))
    {
        by_band[band_of(py)].push((px / 2, py));
    }
    let (e, x) = (&even_columns(e), &even_columns(x));
    let base = band_residuals(e, x, &by_band, &mut Vec::new());
    // Each candidate blur's residuals, the entry's and the exit's on two threads.
    let candidates = |a: &Plane, b: &Plane| -> Vec<Vec<Option<f32>>> {
        let mut buf = Vec::new();
        RADII[1..]
            .iter()
            .map(|&r| band_residuals(&vblur(a, r), b, &by_band, &mut buf))
            .collect()
    };
    let (from_e, from_x) = super::both(|| candidates(e, x), || candidates(x, e));
    let mut centres = Vec::with_capacity(BANDS);
    let (mut entry, mut exit) = (Vec::with_capacity(BANDS), Vec::with_capacity(BANDS));
    for (band, base) in base.iter().enumerate() {
        centres.push(y0 as f32 + (band as f32 + 0.5) * band_h);
        let (mut re, mut rx) = (0, 0);
        if let Some(base) = base {
            let mut best = base * (1.0 - MIN_GAIN);
            for (i, &r) in RADII[1..].iter().enumerate() {
                if let Some(v) = from_e[i][band] {
                    if v < best {
                        (best, re, rx) = (v, r, 0);
                    }
                }
                if let Some(v) = from_x[i][band] {
                    if v < best {
                        (best, re, rx) = (v, 0, r);
                    }
                }
            }
        }
        entry.push(re);
        exit.push(rx);
    }
    BlurMatch {
        centres,
        entry,
        exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers of goods 30 px thick with 8 px gaps, over 240 rows.
    fn layers(w: usize, h: usize) -> Plane {
        let mut p = Plane::new(w, h);
        for y in 0..h {
            let v = if y % 38 < 30 { 2.0 } else { 0.1 };
            for x in 0..w {
                p.set(x, y, v + 0.02 * ((x * 7 + y * 13) % 5) as f32);
            }
        }
        p
    }

    fn roi(w: usize, h: usize) -> Roi {
        Roi {
            rects: vec![[0, 0, w, h]],
            w,
            h,
        }
    }

    #[test]
    fn the_vertical_box_is_the_planes_box_mean() {
        let p = layers(7, 50);
        for r in [1, 3, 11, 60] {
            let (a, b) = (vbox(&p, r), p.box_mean(0, r));
            let worst =
                a.v.iter()
                    .zip(&b.v)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
            assert!(worst < 1e-4, "r {r}: {worst}");
        }
    }

    #[test]
    fn blurs_the_sharper_scan_to_the_blurrier_and_leaves_equal_scans_alone() {
        let (w, h) = (120, 240);
        let sharp = layers(w, h);
        let soft = vblur(&sharp, 4);
        let r = roi(w, h);
        let m = match_blur(&sharp, &soft, &r);
        assert!(m.entry.iter().all(|&k| (3..=6).contains(&k)), "{m:?}");
        assert!(m.exit.iter().all(|&k| k == 0), "{m:?}");
        let before: f32 = sharp
            .v
            .iter()
            .zip(&soft.v)
            .map(|(a, b)| (a - b).abs())
            .sum();
        let e2 = m.apply_entry(&sharp);
        let after: f32 = e2.v.iter().zip(&soft.v).map(|(a, b)| (a - b).abs()).sum();
        assert!(after < 0.2 * before, "{after} vs {before}");
        // The other way round, the exit is the sharp one.
        let m = match_blur(&soft, &sharp, &r);
        assert!(m.exit.iter().all(|&k| (3..=6).contains(&k)), "{m:?}");
        assert!(m.entry.iter().all(|&k| k == 0), "{m:?}");
        // The same scan twice: nothing to match.
        assert_eq!(match_blur(&sharp, &sharp, &r).max_sigma(), [0.0, 0.0]);
    }

    #[test]
    fn a_low_load_under_much_air_still_gets_its_blur() {
        // Layered goods in the left quarter only, air elsewhere: most of each band is
        // flat, and only the layers' edges can tell the blur.
        let (w, h) = (200, 240);
        let mut sharp = layers(w, h);
        for y in 0..h {
            for x in 50..w {
                sharp.set(x, y, 0.05);
            }
        }
        let soft = vblur(&sharp, 4);
        let m = match_blur(&sharp, &soft, &roi(w, h));
        assert!(m.entry.iter().all(|&k| (3..=6).contains(&k)), "{m:?}");
        assert!(m.exit.iter().all(|&k| k == 0), "{m:?}");
    }

    #[test]
    fn a_changed_block_does_not_choose_the_blur() {
        let (w, h) = (200, 240);
        let e = layers(w, h);
        let mut x = e.clone();
        // A third of the width emptied over the whole height: a large removal.
        for y in 0..h {
            for px in 0..60 {
                x.set(px, y, 0.05);
            }
        }
        let m = match_blur(&e, &x, &roi(w, h));
        assert_eq!(m.max_sigma(), [0.0, 0.0], "{m:?}");
    }
}
