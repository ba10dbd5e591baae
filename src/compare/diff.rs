//! The change map between an entry scan and its registered exit scan, on the entry's
//! analysis grid, inside the load carriers only: the exit's response curve is fitted to the
//! entry's (robust cubic through zero: gain, dark offset and gamma differ between scanner
//! models), then a tolerant difference (a pixel counts only if it lies outside the range of
//! the other scan within a few pixels, in both directions) keeps residual misalignment and
//! settling out, and is scaled by the noise measured at each attenuation. Connected areas
//! of significant difference become changed regions. Pure computation.

use image::{GrayImage, Luma};
use imageproc::region_labelling::{connected_components, Connectivity};

use super::layout::Span;
use super::plane::{quantile, Plane};

/// How far above the floor ridge the compared area ends (mm).
const FLOOR_MARGIN_MM: f64 = 100.0;
/// How far inside a carrier's ends the compared area starts (mm).
const END_MARGIN_MM: f64 = 200.0;

/// The compared area: per carrier, its columns and rows from the roof to just above the
/// floor.
#[derive(Debug, Clone)]
pub struct Roi {
    pub rects: Vec<[usize; 4]>,
    pub w: usize,
    pub h: usize,
}

impl Roi {
    /// The carriers' insides on a grid of `mm` pixels: from the roof down to a little above
    /// the floor ridge (which may be the cross-members under the floor; below the load
    /// space are the bottom rails and then the trailer, which may be another one), and
    /// inside the end walls (corner posts and door hardware, the densest parts of an
    /// empty box, are where two scanners' responses differ most, and no load is in them).
    pub fn from_spans(spans: &[Span], w: usize, h: usize, mm: [f64; 2]) -> Roi {
        let above_floor = (FLOOR_MARGIN_MM / mm[1]).round() as usize;
        let inside_ends = (END_MARGIN_MM / mm[0]).round() as usize;
        let rects = spans
            .iter()
            .map(|s| {
                let y0 = (s.roof.floor().max(0.0) as usize).min(h);
                let y1 = (s.floor.round() as usize)
                    .saturating_sub(above_floor)
                    .max(y0 + 1)
                    .min(h);
                let x0 = (s.c0 + inside_ends).min(w);
                let x1 = s.c1.saturating_sub(inside_ends).max(x0 + 1).min(w);
                [x0, y0, x1, y1]
            })
            .collect();
        Roi { rects, w, h }
    }

    /// The bounding box `[x0, y0, x1, y1]` of every rectangle.
    pub fn bbox(&self) -> [usize; 4] {
        if self.rects.is_empty() {
            return [0, 0, self.w, self.h];
        }
        [
            self.rects.iter().map(|r| r[0]).min().unwrap_or(0),
            self.rects.iter().map(|r| r[1]).min().unwrap_or(0),
            self.rects.iter().map(|r| r[2]).max().unwrap_or(self.w),
            self.rects.iter().map(|r| r[3]).max().unwrap_or(self.h),
        ]
    }

    /// The same area in a `w` x `h` crop at (x0, y0) that holds it.
    pub fn shifted(&self, x0: usize, y0: usize, w: usize, h: usize) -> Roi {
        Roi {
            rects: self
                .rects
                .iter()
                .map(|r| [r[0] - x0, r[1] - y0, r[2] - x0, r[3] - y0])
                .collect(),
            w,
            h,
        }
    }

    pub fn contains(&self, x: usize, y: usize) -> bool {
        self.rects
            .iter()
            .any(|r| x >= r[0] && x < r[2] && y >= r[1] && y < r[3])
    }

    /// Every pixel of the area, row by row.
    pub fn pixels(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.rects
            .iter()
            .flat_map(|r| (r[1]..r[3]).flat_map(move |y| (r[0]..r[2]).map(move |x| (x, y))))
    }

    pub fn area(&self) -> usize {
        self.rects
            .iter()
            .map(|r| (r[2] - r[0]) * (r[3] - r[1]))
            .sum()
    }
}

/// entry ≈ c1 x + c2 x² + c3 x³ (x: exit attenuation) up to `top`, the densest level the
/// fit saw; beyond it, a straight continuation with the slope there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Response {
    pub c: [f64; 3],
    pub top: f64,
}

impl Response {
    pub const IDENTITY: Response = Response {
        c: [1.0, 0.0, 0.0],
        top: f64::INFINITY,
    };

    #[inline]
    fn cubic(&self, x: f64) -> f64 {
        x * (self.c[0] + x * (self.c[1] + x * self.c[2]))
    }

    #[inline]
    fn slope(&self, x: f64) -> f64 {
        self.c[0] + 2.0 * self.c[1] * x + 3.0 * self.c[2] * x * x
    }

    #[inline]
    pub fn apply(&self, x: f32) -> f32 {
        let x = x as f64;
        let y = if x <= self.top {
            self.cubic(x)
        } else {
            self.cubic(self.top) + self.slope(self.top) * (x - self.top)
        };
        y as f32
    }

    /// Increasing, and within what two scanner models' responses can differ by: close to
    /// proportional for thin objects, and for dense ones anything from one scanner
    /// saturating well before the other (slope towards 1/4) to the reverse (towards 4).
    fn plausible(&self) -> bool {
        (0..=40).all(|k| {
            let t = self.top * k as f64 / 40.0;
            let s = self.slope(t);
            (0.25..=4.0).contains(&s)
        }) && (0.7..=1.4).contains(&self.c[0])
    }
}

/// Solves the 3x3 system `m z = r` (Gaussian elimination with pivoting).
#[allow(clippy::needless_range_loop)] // index arithmetic reads clearer here
fn solve3(mut m: [[f64; 3]; 3], mut r: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let piv = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, piv);
        r.swap(col, piv);
        for row in col + 1..3 {
            let f = m[row][col] / m[col][col];
            for k in col..3 {
                m[row][k] -= f * m[col][k];
            }
            r[row] -= f * r[col];
        }
    }
    let mut z = [0.0; 3];
    for row in (0..3).rev() {
        let mut s = r[row];
        for k in row + 1..3 {
            s -= m[row][k] * z[k];
        }
        z[row] = s / m[row][row];
    }
    Some(z)
}

/// Fits the exit's response onto the entry's over `roi`. The pixels are summarised by bins
/// of the exit's value (the median entry value and the count of each); every cubic through
/// the origin and three bin medians (and the identity, and every line) is a candidate; the
/// plausible candidate (increasing, slope 1/4-4) that agrees with the most pixels' bins
/// wins and is refined on them. A changed area puts its bins off the curve of the rest,
/// so however large or dense it is it cannot bend the curve; and two scanners whose
/// responses part ways at high attenuation (a mobile scanner saturating early) are still
/// matched, since their bins agree with each other.
pub fn fit_response(e: &Plane, x: &Plane, roi: &Roi) -> Response {
    const BINS: usize = 48;
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for (i, (px, py)) in roi.pixels().enumerate() {
        if i % 2 == 0 {
            xs.push(x.at(px, py));
            ys.push(e.at(px, py));
        }
    }
    if xs.len() < 200 {
        return Response::IDENTITY;
    }
    let top = quantile(&mut xs.clone(), 0.995).max(0.05);
    let mut per: Vec<Vec<f32>> = vec![Vec::new(); BINS];
    for (&xv, &yv) in xs.iter().zip(&ys) {
        if xv <= top {
            let b = ((xv / top * BINS as f32) as usize).min(BINS - 1);
            per[b].push(yv);
        }
    }
    let min_count = (xs.len() / 1000).max(30);
    // (bin centre, median entry value, count)
    let bins: Vec<(f64, f64, f64)> = per
        .iter_mut()
        .enumerate()
        .filter(|(_, v)| v.len() >= min_count)
        .map(|(b, v)| {
            let n = v.len() as f64;
            (
                ((b as f64 + 0.5) / BINS as f64) * top as f64,
                quantile(v, 0.5) as f64,
                n,
            )
        })
        .collect();
    if bins.len() < 3 {
        return Response::IDENTITY;
    }
    let tol = |xc: f64| (0.06 * xc).max(0.04);
    let score = |f: &Response| -> (f64, f64) {
        let (mut support, mut dev) = (0.0, 0.0);
        for &(xc, me, n) in &bins {
            let d = (me - f.cubic(xc)).abs();
            if d <= tol(xc) {
                support += n;
                dev += d * n;
            }
        }
        (support, dev)
    };
    let top_bin = bins.last().map_or(top as f64, |b| b.0);
    let better = |a: (f64, f64), b: (f64, f64)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    let mut best = Response {
        c: [1.0, 0.0, 0.0],
        top: top_bin,
    };
    let mut best_score = score(&best);
    let mut consider = |c: [f64; 3]| {
        let f = Response { c, top: top_bin };
        if f.plausible() {
            let sc = score(&f);
            if better(sc, best_score) {
                best = f;
                best_score = sc;
            }
        }
    };
    for &(xc, me, _) in &bins {
        consider([me / xc, 0.0, 0.0]);
    }
    let n = bins.len();
    for i in 0..n {
        for j in i + 1..n {
            for k in j + 1..n {
                let m = [bins[i], bins[j], bins[k]].map(|(xc, _, _)| [xc, xc * xc, xc * xc * xc]);
                if let Some(c) = solve3(m, [bins[i].1, bins[j].1, bins[k].1]) {
                    consider(c);
                }
            }
        }
    }
    // Refine on the bins the winner agrees with, weighted by their pixels.
    let inliers: Vec<(f64, f64, f64)> = bins
        .iter()
        .copied()
        .filter(|&(xc, me, _)| (me - best.cubic(xc)).abs() <= tol(xc))
        .collect();
    let mut m = [[0.0f64; 3]; 3];
    let mut r = [0.0f64; 3];
    for &(xc, me, w) in &inliers {
        let b = [xc, xc * xc, xc * xc * xc];
        for p in 0..3 {
            r[p] += w * b[p] * me;
            for q in 0..3 {
                m[p][q] += w * b[p] * b[q];
            }
        }
    }
    let reach = inliers.last().map_or(top_bin, |b| b.0);
    if let Some(c) = solve3(m, r) {
        let f = Response { c, top: reach };
        if f.plausible() && !better(best_score, score(&f)) {
            return f;
        }
    }
    Response { top: reach, ..best }
}

/// Signed tolerant difference (entry minus exit): where the entry exceeds everything the
/// exit shows within `r` pixels, by how much (something was removed); where the exit
/// exceeds everything the entry shows within `r` pixels, minus that (something was added);
/// else 0. Misalignment up to `r` pixels cancels; a thin object (a frame, a bar) that one
/// scan has and the other lacks does not.
pub fn tolerant_diff(e: &Plane, x: &Plane, r: usize) -> Plane {
    let emax = e.min_max_filter(r, true);
    let xmax = x.min_max_filter(r, true);
    let mut out = Plane::new(e.w, e.h);
    for i in 0..e.v.len() {
        let removed = e.v[i] - xmax.v[i];
        let added = x.v[i] - emax.v[i];
        out.v[i] = if removed > 0.0 {
            removed
        } else if added > 0.0 {
            -added
        } else {
            0.0
        };
    }
    out
}

/// Noise of one scan as a function of its attenuation, by bins, from the median absolute
/// deviation of each pixel from its 3x3 neighbourhood: measured inside each scan, so what
/// changed between the two scans cannot inflate it. Detector noise grows with attenuation
/// (fewer photons); fine texture in the load counts too, as it should.
#[derive(Debug, Clone)]
pub struct ScanNoise {
    top: f32,
    sigma: Vec<f32>,
}

impl ScanNoise {
    const BINS: usize = 16;
    pub const FLOOR: f32 = 0.005;

    pub fn measure(p: &Plane, roi: &Roi) -> ScanNoise {
        let mut vals: Vec<f32> = roi.pixels().map(|(px, py)| p.at(px, py)).collect();
        let top = quantile(&mut vals, 0.995).max(0.1);
        let local = p.box_mean(1, 1);
        let mut bins: Vec<Vec<f32>> = vec![Vec::new(); Self::BINS];
        for (px, py) in roi.pixels() {
            let v = p.at(px, py);
            let b = ((v / top * Self::BINS as f32) as usize).min(Self::BINS - 1);
            bins[b].push((v - local.at(px, py)).abs());
        }
        // |v - mean of 9| of white noise has a standard deviation of sqrt(8/9) sigma.
        let scale = 1.4826 / (8.0f32 / 9.0).sqrt();
        let mut sigma: Vec<f32> = bins
            .iter_mut()
            .map(|b| {
                if b.len() < 30 {
                    f32::NAN
                } else {
                    (scale * quantile(b, 0.5)).max(Self::FLOOR)
                }
            })
            .collect();
        // Empty bins take the nearest measured one.
        let known: Vec<usize> = (0..Self::BINS).filter(|&i| sigma[i].is_finite()).collect();
        for i in 0..Self::BINS {
            if !sigma[i].is_finite() {
                sigma[i] = known
                    .iter()
                    .min_by_key(|&&k| k.abs_diff(i))
                    .map_or(Self::FLOOR * 4.0, |&k| sigma[k]);
            }
        }
        ScanNoise { top, sigma }
    }

    #[inline]
    pub fn at(&self, att: f32) -> f32 {
        let b = ((att / self.top * Self::BINS as f32).max(0.0) as usize).min(Self::BINS - 1);
        self.sigma[b]
    }
}

/// The noise of `e - x`: both scans' noise at their own values, plus a floor for what the
/// response fit leaves (a few per cent of the attenuation).
#[derive(Debug, Clone)]
pub struct NoiseModel {
    e: ScanNoise,
    x: ScanNoise,
}

impl NoiseModel {
    pub fn measure(e: &Plane, x: &Plane, roi: &Roi) -> NoiseModel {
        NoiseModel {
            e: ScanNoise::measure(e, roi),
            x: ScanNoise::measure(x, roi),
        }
    }

    #[inline]
    pub fn at(&self, e: f32, x: f32) -> f32 {
        let (a, b) = (self.e.at(e), self.x.at(x));
        let c = 0.01 + 0.02 * e.max(x);
        (a * a + b * b + c * c).sqrt()
    }
}

/// Thresholds of the change map (attenuation units and multiples of the noise).
#[derive(Debug, Clone, Copy)]
pub struct MapParams {
    /// A pixel belongs to a change above max(low_abs, low_sigma x noise).
    pub low_abs: f32,
    pub low_sigma: f32,
    /// A change needs pixels above max(high_abs, high_sigma x noise).
    pub high_abs: f32,
    pub high_sigma: f32,
    /// ...at least this many of them (analysis pixels).
    pub min_seed_px: usize,
    /// Changed areas closer than this (analysis pixels) are one region.
    pub group_px: usize,
    /// Pieces thinner than this on average (pixels / longer side) are ignored.
    pub min_thickness_px: f32,
}

/// One connected changed area, in analysis pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub pixels: usize,
    /// Sum of |difference| over the blob (attenuation x pixels).
    pub sum_abs: f64,
    /// Mean signed difference: > 0 the entry held more (something removed), < 0 added.
    pub mean_signed: f64,
    pub peak: f32,
    /// Sum of the significance (|difference| over the noise) over the blob.
    pub sum_z: f64,
}

/// Smoothed significance of the difference: |d| over the local noise, box-averaged over
/// 3x3 so that isolated noisy pixels fall below the thresholds and areas do not.
pub fn significance(
    d: &Plane,
    e: &Plane,
    xm: &Plane,
    noise: &NoiseModel,
    roi: &Roi,
) -> (Plane, Plane) {
    let sm = d.box_mean(1, 1);
    let mut abs = Plane::new(d.w, d.h);
    let mut z = Plane::new(d.w, d.h);
    for (x, y) in roi.pixels() {
        let v = sm.at(x, y).abs();
        abs.set(x, y, v);
        z.set(x, y, v / noise.at(e.at(x, y), xm.at(x, y)));
    }
    (abs, z)
}

/// Connected areas of change. `abs` is |smoothed difference|, `z` its significance.
pub fn blobs(abs: &Plane, z: &Plane, signed: &Plane, p: &MapParams) -> Vec<Blob> {
    let (w, h) = (abs.w, abs.h);
    let mut low = GrayImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let (a, s) = (abs.at(x, y), z.at(x, y));
            if a > p.low_abs && s > p.low_sigma {
                low.put_pixel(x as u32, y as u32, Luma([255]));
            }
        }
    }
    // Bridge gaps of a couple of pixels so that one changed object is one region.
    let closed = imageproc::morphology::close(&low, imageproc::distance_transform::Norm::LInf, 2);
    let labels = connected_components(&closed, Connectivity::Eight, Luma([0u8]));
    let mut acc: Vec<Option<(Blob, usize, f64)>> = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let l = labels.get_pixel(x as u32, y as u32)[0] as usize;
            if l == 0 || low.get_pixel(x as u32, y as u32)[0] == 0 {
                continue;
            }
            if acc.len() <= l {
                acc.resize(l + 1, None);
            }
            let a = abs.at(x, y);
            let strong = a > p.high_abs && z.at(x, y) > p.high_sigma;
            let e = acc[l].get_or_insert_with(|| {
                (
                    Blob {
                        x0: x,
                        y0: y,
                        x1: x + 1,
                        y1: y + 1,
                        pixels: 0,
                        sum_abs: 0.0,
                        mean_signed: 0.0,
                        peak: 0.0,
                        sum_z: 0.0,
                    },
                    0,
                    0.0,
                )
            });
            let b = &mut e.0;
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x + 1);
            b.y1 = b.y1.max(y + 1);
            b.pixels += 1;
            b.sum_abs += a as f64;
            b.sum_z += z.at(x, y) as f64;
            b.peak = b.peak.max(a);
            e.1 += usize::from(strong);
            e.2 += signed.at(x, y) as f64;
        }
    }
    // Pieces of one changed object, cut apart by what lies in front of or behind it (a
    // package among steel bars shows between the bars), become one region.
    // Only pieces with some strong pixels of their own join: faint specks do not chain
    // distant changes together.
    let mut parts: Vec<(Blob, usize, f64)> = acc
        .into_iter()
        .flatten()
        .filter(|(_, strong, _)| *strong >= p.min_seed_px / 4)
        // A line one or two pixels thin along an edge is residual misregistration, not
        // goods: changed goods have some thickness.
        .filter(|(b, _, _)| {
            let long = (b.x1 - b.x0).max(b.y1 - b.y0) as f32;
            b.pixels as f32 / long >= p.min_thickness_px
        })
        .collect();
    let g = p.group_px;
    let near = |a: &Blob, b: &Blob| {
        a.x0 <= b.x1 + g && b.x0 <= a.x1 + g && a.y0 <= b.y1 + g && b.y0 <= a.y1 + g
    };
    loop {
        let mut merged = false;
        'outer: for i in 0..parts.len() {
            for j in i + 1..parts.len() {
                if near(&parts[i].0, &parts[j].0) {
                    let (b, s2, g2) = parts.swap_remove(j);
                    let a = &mut parts[i];
                    a.0.x0 = a.0.x0.min(b.x0);
                    a.0.y0 = a.0.y0.min(b.y0);
                    a.0.x1 = a.0.x1.max(b.x1);
                    a.0.y1 = a.0.y1.max(b.y1);
                    a.0.pixels += b.pixels;
                    a.0.sum_abs += b.sum_abs;
                    a.0.sum_z += b.sum_z;
                    a.0.peak = a.0.peak.max(b.peak);
                    a.1 += s2;
                    a.2 += g2;
                    merged = true;
                    break 'outer;
                }
            }
        }
        if !merged {
            break;
        }
    }
    parts
        .into_iter()
        .filter(|(_, strong, _)| *strong >= p.min_seed_px)
        .map(|(mut b, _, signed_sum)| {
            b.mean_signed = signed_sum / b.pixels.max(1) as f64;
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(w: usize, h: usize) -> Plane {
        let mut p = Plane::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let v = 0.8 + 0.4 * ((x as f32 * 0.31).sin() * (y as f32 * 0.17).cos());
                p.set(x, y, v);
            }
        }
        p
    }

    #[test]
    fn response_curve_is_recovered_despite_a_changed_block() {
        let e = textured(200, 100);
        let mut x = e.clone();
        // Exit scanner: gamma-like compression; plus a block that really changed.
        for v in x.v.iter_mut() {
            *v = 0.9 * *v - 0.08 * *v * *v;
        }
        for y in 30..60 {
            for xx in 50..90 {
                x.set(xx, y, 0.05);
            }
        }
        let roi = Roi {
            rects: vec![[0, 0, 200, 100]],
            w: 200,
            h: 100,
        };
        let f = fit_response(&e, &x, &roi);
        let probe = 0.9 * 1.0 - 0.08 * 1.0;
        assert!((f.apply(probe) - 1.0).abs() < 0.02, "{f:?}");
    }

    #[test]
    fn an_inserted_block_is_found_where_it_is_and_a_shift_is_not() {
        let e = textured(240, 120);
        // The exit: shifted by one pixel (residual misalignment), with noise, and with a
        // dense block inserted at columns 100..140, rows 40..70.
        let mut x = Plane::new(240, 120);
        let mut seed = 7u32;
        for y in 0..120 {
            for xx in 0..240usize {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let n = ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.02;
                let mut v = e.at(xx.saturating_sub(1), y) + n;
                if (100..140).contains(&xx) && (40..70).contains(&y) {
                    v += 0.6;
                }
                x.set(xx, y, v);
            }
        }
        let roi = Roi {
            rects: vec![[0, 0, 240, 120]],
            w: 240,
            h: 120,
        };
        let d = tolerant_diff(&e, &x, 2);
        let noise = NoiseModel::measure(&e, &x, &roi);
        let (abs, z) = significance(&d, &e, &x, &noise, &roi);
        let p = MapParams {
            low_abs: 0.06,
            low_sigma: 4.0,
            high_abs: 0.15,
            high_sigma: 8.0,
            min_seed_px: 20,
            group_px: 15,
            min_thickness_px: 2.5,
        };
        let found = blobs(&abs, &z, &d, &p);
        assert_eq!(found.len(), 1, "{found:?}");
        let b = &found[0];
        assert!(b.x0.abs_diff(100) <= 3 && b.x1.abs_diff(140) <= 3, "{b:?}");
        assert!(b.y0.abs_diff(40) <= 3 && b.y1.abs_diff(70) <= 3, "{b:?}");
        assert!(b.mean_signed < 0.0, "added matter shows as negative: {b:?}");
    }
}
