//! Registration of an exit scan onto its entry scan, on the analysis grids: orientation
//! (from where each tractor is, else from which way the images match better), a vertical
//! scale and offset (the carriers' row profiles matched over the magnifications a fan beam
//! allows, anchored on the roofs; else on the roof and the floor, the floor chosen among
//! each scan's candidates by both scans together), and a monotonic non-rigid horizontal
//! warp (coarse-to-fine banded DTW over per-column band means of the carrier's rows). The
//! result maps every entry column and row to a fractional exit column and row. Pure
//! computation.

use super::dtw::{dtw, Band, DtwParams, DtwPath, Feats};
use super::layout::{Layout, Span};
use super::plane::{median, Plane};
use super::prep::Prepared;
use super::refine::Field;

/// Horizontal bands between a carrier's roof and floor whose means make a column's
/// feature vector for the DTW.
const BANDS: usize = 16;
/// Coarse DTW pass works on columns averaged in groups of this many.
const COARSE: usize = 4;
/// Fine pass: radius (columns) of the band around the upsampled coarse path.
const FINE_RADIUS: usize = 2 * COARSE + 2;

/// exit_row = a * entry_row + b (analysis pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerticalMap {
    pub a: f64,
    pub b: f64,
}

impl VerticalMap {
    #[inline]
    pub fn apply(&self, y: f64) -> f64 {
        self.a * y + self.b
    }

    /// The entry row that maps to exit row `y`.
    #[inline]
    pub fn invert(&self, y: f64) -> f64 {
        (y - self.b) / self.a
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alignment {
    /// The exit scan shows the truck the other way round.
    pub mirrored: bool,
    /// How the orientation was decided: "tractor position" or "image match".
    pub orientation_by: &'static str,
    /// For each entry analysis column, the (fractional) exit analysis column.
    pub col_map: Vec<f32>,
    pub vmap: VerticalMap,
    /// The main carriers' floors (entry's, exit's) when the map was anchored on them
    /// (chosen among each layout's candidates).
    pub floors: Option<[f32; 2]>,
    /// Mean DTW cost per column of the fine pass (lower is a better match).
    pub dtw_cost: f32,
    /// Overlap (0..1) between where the entry's load carriers map to in the exit and
    /// where the exit's own carriers are.
    pub load_overlap: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlignError {
    #[error("the load carriers' row profiles do not match at any plausible scale (carrier heights {entry_m:.2} m in the entry scan, {exit_m:.2} m in the exit scan)")]
    Height { entry_m: f64, exit_m: f64 },
    #[error("the load carriers differ in length: {entry_m:.1} m in the entry scan, {exit_m:.1} m in the exit scan")]
    Length { entry_m: f64, exit_m: f64 },
    #[error("the horizontal alignment failed: the entry's load maps onto only {percent:.0}% of the exit's load")]
    Warp { percent: f64 },
}

/// Median over the columns of `s` (5 % inset) of each row's vertical gradient: the
/// carrier's own horizontal structure (roof, rails, floor, cross-members), which is at the
/// same row in every column, stands out; the load's edges, at different rows in different
/// columns, and whatever was taken out or put in, do not.
fn gradient_profile(p: &Plane, s: &Span) -> Vec<f32> {
    let inset = s.len() / 20;
    let step = (s.len() / 300).max(1);
    let cols: Vec<usize> = (s.c0 + inset..s.c1 - inset).step_by(step).collect();
    let h = p.h;
    let mut buf = Vec::with_capacity(cols.len());
    (0..h)
        .map(|y| {
            let (a, b) = (y.saturating_sub(1), (y + 1).min(h - 1));
            buf.clear();
            buf.extend(cols.iter().map(|&x| p.at(x, b) - p.at(x, a)));
            median(&mut buf)
        })
        .collect()
}

fn sample1(v: &[f32], t: f64) -> f32 {
    let n = v.len();
    let t = t.clamp(0.0, (n - 1) as f64);
    let i = t.floor() as usize;
    let j = (i + 1).min(n - 1);
    let f = (t - i as f64) as f32;
    v[i] + (v[j] - v[i]) * f
}

/// Normalised cross-correlation of two equally long sequences.
pub fn ncc(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let ma = a[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let mb = b[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] as f64 - ma, b[i] as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa <= 1e-12 || sbb <= 1e-12 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

/// NCC of the entry's profile gradient `ge` over rows `y0..` with the exit's `gx` sampled
/// through `a`, `b`.
fn profile_match(ge: &[f32], y0: usize, gx: &[f32], a: f64, b: f64, buf: &mut [f32]) -> f64 {
    for (k, v) in buf.iter_mut().enumerate() {
        *v = sample1(gx, a * (y0 + k) as f64 + b);
    }
    ncc(ge, buf)
}

/// The vertical map: the main carriers' roofs anchor it, their row profiles (gradients:
/// roof, rails, floor, cross-members, the top of the load) fix the scale. The scale is
/// searched over [`ANCHOR_SCALE_RANGE`] around the ratio of the sidecars' pitches (the
/// pitch holds at the lane's centre line only: a source at another height or distance and
/// a truck off the centre line magnify a carrier by up to about a quarter), or widely when
/// a pitch is unknown. Not from the floors found: a flatbed trailer's deck under a box
/// reads as one filled block with the box's floor, and its beams can pass for the floor.
/// When the roofs and floors anchor the map, it also returns the floors it took
/// (entry's, exit's).
fn vertical(
    e: &Prepared,
    se: &Span,
    x: &Prepared,
    sx: &Span,
) -> Result<(VerticalMap, Option<[f32; 2]>), AlignError> {
    let ge = gradient_profile(&e.att, se);
    let gx = gradient_profile(&x.att, sx);
    let y0 = (se.roof as f64 - 6.0).max(0.0) as usize;
    let y1 = ((se.floor as f64 + 12.0) as usize).min(e.att.h - 1);
    let seg = &ge[y0..=y1];
    let mut buf = vec![0.0f32; seg.len()];
    let (lo, hi, step) = if e.mm_known && x.mm_known {
        let r = e.mm[1] / x.mm[1];
        (
            r * ANCHOR_SCALE_RANGE.0,
            r * ANCHOR_SCALE_RANGE.1,
            r * 0.0025,
        )
    } else {
        (0.6, 1.7, 0.005)
    };
    // The roofs anchor the map. When one scan cut its carrier's roof off, the image's top
    // edge is no roof: the floors, found in both, are tried as the anchor too, and the
    // profiles decide (a floor ridge can be the trailer's beams in one scan).
    let roof_anchor = |a: f64| sx.roof as f64 - a * se.roof as f64;
    let floor_anchor = |a: f64| sx.floor as f64 - a * se.floor as f64;
    let cropped = se.roof_cropped() || sx.roof_cropped();
    let mut best = (f64::NEG_INFINITY, 1.0, 0.0);
    let mut by_floor = false;
    for floor in [false, true] {
        if floor && !cropped {
            break;
        }
        let mut a = lo;
        while a <= hi {
            // The roofs (floors) are found to a pixel or so in both scans.
            let base = if floor {
                floor_anchor(a)
            } else {
                roof_anchor(a)
            };
            for k in -3..=3 {
                let b = base + 0.5 * k as f64;
                let c = profile_match(seg, y0, &gx, a, b, &mut buf);
                if c > best.0 {
                    best = (c, a, b);
                    by_floor = floor;
                }
            }
            a += step;
        }
    }
    let anchor = |a: f64| {
        if by_floor {
            floor_anchor(a)
        } else {
            roof_anchor(a)
        }
    };
    // Refine around the best.
    let (_, a0, b0) = best;
    for ia in -10..=10 {
        let a = a0 + step * 0.1 * ia as f64;
        for ib in -10..=10 {
            let b = b0 + 0.05 * ib as f64 + (anchor(a) - anchor(a0));
            let c = profile_match(seg, y0, &gx, a, b, &mut buf);
            if c > best.0 {
                best = (c, a, b);
            }
        }
    }
    let (score, a, b) = best;
    let entry_m = (se.floor - se.roof) as f64 * e.mm[1] / 1000.0;
    let exit_m = (sx.floor - sx.roof) as f64 * x.mm[1] / 1000.0;
    if score >= 0.5 {
        return Ok((VerticalMap { a, b }, None));
    }
    // Two scanners whose rows do not map linearly onto each other (an L-shaped detector's
    // boom, a source at another height: the carrier's inside projects differently) leave
    // no profile that matches at one scale. The carrier's roof and floor are the same
    // steel in both scans, so they still anchor a map; the refinement and the alignment
    // quality on the carrier's shell then decide whether the pair can be compared. Which
    // ridge is the floor, each scan alone cannot always tell (a flatbed's deck and beams
    // below it): of the plausible pairs of candidates, the one whose map matches the
    // profiles between roof and floor best.
    let plausible = |a: f64| {
        if e.mm_known && x.mm_known {
            let r = e.mm[1] / x.mm[1];
            (r * ANCHOR_SCALE_RANGE.0..=r * ANCHOR_SCALE_RANGE.1).contains(&a)
        } else {
            (0.6..=1.7).contains(&a)
        }
    };
    let mut anchored: Option<(f64, VerticalMap, [f32; 2])> = None;
    for &fe in &se.floors {
        for &fx in &sx.floors {
            let (he, hx) = ((fe - se.roof) as f64, (fx - sx.roof) as f64);
            if he <= 0.0 || hx <= 0.0 || !plausible(hx / he) {
                continue;
            }
            let map = VerticalMap {
                a: hx / he,
                b: sx.roof as f64 - hx / he * se.roof as f64,
            };
            let y1 = ((fe as f64 + 12.0) as usize).min(e.att.h - 1);
            if y1 <= y0 + 8 {
                continue;
            }
            let seg = &ge[y0..=y1];
            let c = profile_match(seg, y0, &gx, map.a, map.b, &mut vec![0.0; seg.len()]);
            if anchored.as_ref().is_none_or(|(best, _, _)| c > *best) {
                anchored = Some((c, map, [fe, fx]));
            }
        }
    }
    match anchored {
        Some((_, map, floors)) => Ok((map, Some(floors))),
        None => Err(AlignError::Height { entry_m, exit_m }),
    }
}

/// How far the roof-to-floor scale of two scans may stray from the ratio of their
/// sidecars' pitches: the pitch is given at the lane's centre line, and a fan beam
/// magnifies a carrier by the ratio of the source distances, which a truck 0.5 m off the
/// centre line and two scanners' source heights change by up to about a quarter.
const ANCHOR_SCALE_RANGE: (f64, f64) = (0.75, 1.33);

/// Per-column means of `p` over `BANDS` bands between rows `r0` and `r1` (fractional,
/// already in this scan's rows), for every column.
fn band_features(p: &Plane, rows: &[(f64, f64)]) -> Feats {
    let (w, h) = (p.w, p.h);
    // Column-wise prefix sums, interpolated at fractional rows.
    let mut pre = vec![0.0f32; w * (h + 1)];
    for y in 0..h {
        let src = p.row(y);
        let (prev, next) = pre.split_at_mut((y + 1) * w);
        let prev = &prev[y * w..];
        for x in 0..w {
            next[x] = prev[x] + src[x];
        }
    }
    let at = |x: usize, t: f64| -> f32 {
        let t = t.clamp(0.0, h as f64);
        let i = (t.floor() as usize).min(h);
        let f = (t - i as f64) as f32;
        let base = pre[i * w + x];
        if i < h {
            base + f * p.at(x, i)
        } else {
            base
        }
    };
    let mut out = Feats::new(w, rows.len());
    for x in 0..w {
        let col = out.col_mut(x);
        for (k, &(a, z)) in rows.iter().enumerate() {
            let len = (z - a).max(1e-3) as f32;
            col[k] = (at(x, z) - at(x, a)) / len;
        }
    }
    out
}

/// `f` resampled to `round(n * ratio)` columns (linear interpolation; new column `j` sits
/// at old column `(j + 0.5) / ratio - 0.5`).
fn resample(f: &Feats, ratio: f64) -> Feats {
    let n = ((f.n as f64 * ratio).round() as usize).max(1);
    let mut out = Feats::new(n, f.b);
    for j in 0..n {
        let t = ((j as f64 + 0.5) / ratio - 0.5).clamp(0.0, (f.n - 1) as f64);
        let i0 = t.floor() as usize;
        let i1 = (i0 + 1).min(f.n - 1);
        let w = (t - i0 as f64) as f32;
        let (c0, c1) = (f.col(i0).to_vec(), f.col(i1));
        for (o, (u, v)) in out.col_mut(j).iter_mut().zip(c0.iter().zip(c1)) {
            *o = u + (v - u) * w;
        }
    }
    out
}

fn params() -> DtwParams {
    DtwParams {
        step_penalty: 0.01 * BANDS as f32,
        skip_weight: 1.0,
        free_ends: false,
        max_slope: MAX_SLOPE,
        steep_penalty: STEEP_PENALTY * BANDS as f32,
    }
}

/// Steepest local speed ratio between the two passes the warp follows: a truck that
/// brakes to a quarter of its speed in one portal and drives on through the other.
const MAX_SLOPE: usize = 4;
/// What each column of a steep step costs, per band (attenuation units): several times
/// a stretch step's, so that only a stretch the images clearly show is followed.
const STEEP_PENALTY: f32 = 0.2;

/// Columns `a..b` of `f`.
fn slice(f: &Feats, a: usize, b: usize) -> Feats {
    Feats {
        n: b - a,
        b: f.b,
        v: f.v[a * f.b..b * f.b].to_vec(),
    }
}

/// Coarse (full band) then fine (around the coarse path) warp of `fe` onto `fx`.
fn warp_path(fe: &Feats, fx: &Feats) -> Option<DtwPath> {
    let (ce, cx) = (fe.downsample(COARSE), fx.downsample(COARSE));
    let coarse = dtw(&ce, &cx, &Band::full(ce.n, cx.n), &params())?;
    let band = Band::around(&coarse.path, COARSE, fe.n, fx.n, FINE_RADIUS);
    dtw(fe, fx, &band, &params())
}

/// Margin around the load carriers that the warp also matches (mm): their end walls.
const LOAD_MARGIN_MM: f64 = 400.0;

/// How much worse (ratio of DTW costs) the tractor's orientation must match than the
/// other for the images to overrule it.
const OVERRULE: f32 = 1.3;

/// Below this ratio of DTW costs the two orientations match about equally well.
const AMBIGUOUS: f32 = 1.05;

/// Registers `x` (exit) onto `e` (entry).
///
/// `sidecar_mirrored` is what the sidecars' `cab_side` say; it only decides the
/// orientation when the images cannot.
pub fn register(
    e: &Prepared,
    le: &Layout,
    x: &Prepared,
    lx: &Layout,
    sidecar_mirrored: Option<bool>,
) -> Result<Alignment, AlignError> {
    let (se, sx) = (le.main(), lx.main());
    let (vmap, floors) = vertical(e, se, x, sx)?;

    let (ce0, ce1) = le.load_cols();
    let (cx0, cx1) = lx.load_cols();
    let len_e = (ce1 - ce0) as f64 * e.mm[0];
    let len_x = (cx1 - cx0) as f64 * x.mm[0];
    // The truck's speed changes lengths by up to ±20 % in each scan.
    if !(0.6..=1.65).contains(&(len_x / len_e)) {
        return Err(AlignError::Length {
            entry_m: len_e / 1000.0,
            exit_m: len_x / 1000.0,
        });
    }

    let (r0, r1) = (se.roof as f64, floors.map_or(se.floor, |f| f[0]) as f64);
    let rows_e: Vec<(f64, f64)> = (0..BANDS)
        .map(|k| {
            let a = r0 + (r1 - r0) * k as f64 / BANDS as f64;
            let z = r0 + (r1 - r0) * (k + 1) as f64 / BANDS as f64;
            (a, z)
        })
        .collect();
    let rows_x: Vec<(f64, f64)> = rows_e
        .iter()
        .map(|&(a, z)| (vmap.apply(a), vmap.apply(z)))
        .collect();
    let fe_all = band_features(&e.att, &rows_e);
    // The exit's columns resampled so that its load is as many columns long as the
    // entry's: what remains for the DTW is the speed's variation within each pass.
    let ratio = (ce1 - ce0) as f64 / (cx1 - cx0) as f64;
    let fx_all = resample(&band_features(&x.att, &rows_x), ratio);
    let wr = fx_all.n;

    // The warp runs between the load carriers' ends (the strongest landmarks there are),
    // with a margin, start to end: the tractors and trailers around them may differ.
    let m = (LOAD_MARGIN_MM / e.mm[0]).round() as usize;
    let (e0, e1) = (ce0.saturating_sub(m), (ce1 + m).min(fe_all.n));
    let fe = slice(&fe_all, e0, e1);
    let window = |mirrored: bool| -> (usize, usize) {
        let (a, b) = (
            (cx0 as f64 * ratio).round() as usize,
            (cx1 as f64 * ratio).round() as usize,
        );
        let (a, b) = if mirrored {
            (wr.saturating_sub(b), wr.saturating_sub(a))
        } else {
            (a, b)
        };
        (a.saturating_sub(m), (b + m).min(wr))
    };
    let try_orientation = |mirrored: bool| -> Option<(DtwPath, usize)> {
        let fx = if mirrored {
            fx_all.reversed()
        } else {
            fx_all.clone()
        };
        let (x0, x1) = window(mirrored);
        warp_path(&fe, &slice(&fx, x0, x1)).map(|p| (p, x0))
    };
    let fwd = try_orientation(false);
    let rev = try_orientation(true);
    let cost = |r: &Option<(DtwPath, usize)>| r.as_ref().map_or(f32::INFINITY, |(p, _)| p.cost);
    let (cf, cr) = (cost(&fwd), cost(&rev));
    let by_images = cr < cf;
    let (mirrored, orientation_by) = match (le.cab_left, lx.cab_left) {
        (Some(a), Some(b)) => {
            let by_tractor = a != b;
            let (mine, other) = if by_tractor { (cr, cf) } else { (cf, cr) };
            if by_tractor != by_images && mine > OVERRULE * other {
                (by_images, "image match (overruling the tractor position)")
            } else {
                (by_tractor, "tractor position")
            }
        }
        _ => {
            let ratio = cf.max(cr) / cf.min(cr).max(1e-9);
            match sidecar_mirrored {
                Some(m) if ratio < AMBIGUOUS => (m, "sidecar cab_side (the images are ambiguous)"),
                _ => (by_images, "image match"),
            }
        }
    };
    let (fine, x0) = if mirrored { rev } else { fwd }.ok_or(AlignError::Warp { percent: 0.0 })?;

    let n = fe_all.n;
    let mut sum = vec![0.0f64; n];
    let mut cnt = vec![0u32; n];
    for &(i, j) in &fine.path {
        sum[i + e0] += (j + x0) as f64;
        cnt[i + e0] += 1;
    }
    let mut map: Vec<f64> = vec![f64::NAN; n];
    for i in 0..n {
        if cnt[i] > 0 {
            map[i] = sum[i] / cnt[i] as f64;
        }
    }
    let first = (0..n).find(|&i| cnt[i] > 0).unwrap_or(0);
    let last = (0..n).rev().find(|&i| cnt[i] > 0).unwrap_or(n - 1);
    // Beyond the matched part, columns continue at the mean ratio.
    for i in 0..first {
        map[i] = map[first] - (first - i) as f64;
    }
    for i in last + 1..n {
        map[i] = map[last] + (i - last) as f64;
    }
    // Light smoothing (speed changes are gradual; settling moves whole loading columns),
    // then monotone.
    let r = 2usize;
    let smooth: Vec<f64> = (0..n)
        .map(|i| {
            let (a, z) = (i.saturating_sub(r), (i + r).min(n - 1));
            map[a..=z].iter().sum::<f64>() / (z - a + 1) as f64
        })
        .collect();
    let mut mono = smooth;
    for i in 1..n {
        if mono[i] < mono[i - 1] {
            mono[i] = mono[i - 1];
        }
    }
    let col_map: Vec<f32> = mono
        .iter()
        .map(|&j| {
            let j = if mirrored { wr as f64 - 1.0 - j } else { j };
            ((j + 0.5) / ratio - 0.5) as f32
        })
        .collect();

    // Where the entry's load lands in the exit, against where the exit's load is.
    let m0 = col_map[ce0.min(n - 1)] as f64;
    let m1 = col_map[(ce1 - 1).min(n - 1)] as f64;
    let (lo, hi) = (m0.min(m1), m0.max(m1));
    let inter = (hi.min(cx1 as f64) - lo.max(cx0 as f64)).max(0.0);
    let union = hi.max(cx1 as f64) - lo.min(cx0 as f64);
    let load_overlap = if union > 0.0 { inter / union } else { 0.0 };
    if load_overlap < 0.75 {
        return Err(AlignError::Warp {
            percent: 100.0 * load_overlap,
        });
    }
    Ok(Alignment {
        mirrored,
        orientation_by,
        col_map,
        vmap,
        floors,
        dtw_cost: fine.cost,
        load_overlap,
    })
}

/// The exit coordinates (analysis pixels, column and row planes) of the entry analysis
/// pixels in the `w` x `h` rectangle at (`x0`, `y0`), through `al` refined by `field`.
pub fn coords(
    al: &Alignment,
    field: &Field,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
) -> (Plane, Plane) {
    let n = al.col_map.len();
    let col_at = |x: f32| {
        let x = x.clamp(0.0, (n - 1) as f32);
        let i = x.floor() as usize;
        let j = (i + 1).min(n - 1);
        al.col_map[i] + (al.col_map[j] - al.col_map[i]) * (x - i as f32)
    };
    let (mut cx, mut cy) = (Plane::new(w, h), Plane::new(w, h));
    for j in 0..h {
        let y = (y0 + j) as f32;
        for i in 0..w {
            let x = (x0 + i) as f32;
            let (dx, dy) = field.at(x, y);
            cx.set(i, j, col_at(x + dx));
            cy.set(i, j, al.vmap.apply((y + dy) as f64) as f32);
        }
    }
    (cx, cy)
}

/// The exit plane sampled at `coords`.
pub fn warp_at(x: &Plane, cx: &Plane, cy: &Plane) -> Plane {
    let mut out = Plane::new(cx.w, cx.h);
    for i in 0..out.v.len() {
        out.v[i] = x.sample(cx.v[i], cy.v[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::layout::find;
    use super::super::layout::tests::truck;
    use super::*;

    fn prepared(att: Plane) -> Prepared {
        Prepared {
            kx: 1,
            ky: 1,
            src_w: att.w,
            src_h: att.h,
            mm: [10.0, 10.0],
            mm_known: true,
            air_rows: vec![1.0; att.h],
            att,
        }
    }

    /// The truck scanned again: mirrored or not, rows scaled by `a` and shifted by `b`,
    /// columns stretched by a smooth non-uniform warp, with 37 more columns of air.
    fn rescanned(src: &Plane, mirrored: bool, a: f64, b: f64) -> (Plane, impl Fn(f64) -> f64) {
        let src = if mirrored {
            src.flipped_h()
        } else {
            src.clone()
        };
        // exit column -> source column (monotone, local stretch up to ~±15 %)
        let inv = |c: f64| {
            let u = c - 37.0;
            u + 40.0 * (u / 260.0).sin()
        };
        let (w, h) = (src.w + 60, src.h);
        let mut out = Plane::new(w, h);
        for y in 0..h {
            for c in 0..w {
                let sx = inv(c as f64);
                let sy = (y as f64 - b) / a;
                let v = if sx < 0.0 || sx > (src.w - 1) as f64 {
                    0.0
                } else {
                    src.sample(sx as f32, sy as f32)
                };
                out.set(c, y, v);
            }
        }
        (out, inv)
    }

    #[test]
    fn known_warp_is_recovered_within_two_pixels() {
        for mirrored in [false, true] {
            let e = truck(true);
            let (x, inv) = rescanned(&e, mirrored, 1.08, -14.0);
            let (pe, px) = (prepared(e), prepared(x));
            let le = find(&pe.att, pe.mm).unwrap();
            let lx = find(&px.att, px.mm).unwrap();
            let al = register(&pe, &le, &px, &lx, None).unwrap();
            assert_eq!(al.mirrored, mirrored);
            assert!((al.vmap.a - 1.08).abs() < 0.01, "{:?}", al.vmap);
            assert!(
                (al.vmap.apply(300.0) - (300.0 * 1.08 - 14.0)).abs() < 1.0,
                "{:?}",
                al.vmap
            );
            let (c0, c1) = le.load_cols();
            let mut worst = 0.0f64;
            for c in c0 + 5..c1 - 5 {
                // Entry column c shows source column c (or w-1-c when mirrored).
                let want = if mirrored {
                    (pe.att.w - 1 - c) as f64
                } else {
                    c as f64
                };
                let got = inv(al.col_map[c] as f64);
                worst = worst.max((got - want).abs());
            }
            assert!(
                worst <= 2.0,
                "mirrored {mirrored}: worst column error {worst}"
            );
        }
    }

    #[test]
    fn a_cropped_roof_anchors_nothing_the_floors_do() {
        // The entry scanner's detector ends 60 rows below the roof (the image starts inside
        // the box); the exit shows the whole carrier, 14 rows higher.
        let full = truck(true);
        let cut = 120;
        let mut e = Plane::new(full.w, full.h - cut);
        for y in 0..e.h {
            for x in 0..e.w {
                e.set(x, y, full.at(x, y + cut));
            }
        }
        let (x, _) = rescanned(&full, false, 1.0, -14.0);
        let (pe, px) = (prepared(e), prepared(x));
        let le = find(&pe.att, pe.mm).unwrap();
        let lx = find(&px.att, px.mm).unwrap();
        assert!(le.main().roof_cropped() && !lx.main().roof_cropped());
        let al = register(&pe, &le, &px, &lx, None).unwrap();
        // Entry row y is source row y + 120, which the exit shows at y + 106.
        assert!((al.vmap.a - 1.0).abs() < 0.02, "{:?}", al.vmap);
        assert!((al.vmap.apply(150.0) - 256.0).abs() < 1.5, "{:?}", al.vmap);
    }
}
