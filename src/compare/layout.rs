//! Where the load is in one scan: the vehicle's extent, its load carriers (containers, box
//! bodies: long runs of columns whose silhouette has a flat roof), each carrier's roof and
//! floor rows (with the other ridges the floor could be, for the registration to choose
//! from with the other scan), and which end the tractor is at. The transit check compares
//! what lies between a carrier's roof and floor; tractors and trailers may legitimately
//! differ between entry and exit, the load may not. Works on the attenuation analysis grid
//! only.

use super::plane::{median, Plane};

/// Smoothed attenuation above this is "something" (air is 0 ± a few thousandths; a
/// container's two steel walls are ~0.08).
const T_OBJECT: f32 = 0.04;
/// Shortest load carrier (mm): a 20 ft container is 6058 mm; a little slack for a truck
/// that sped up while passing.
const MIN_CARRIER_MM: f64 = 4300.0;
/// A carrier's roof is at least this high above the lowest part of the vehicle (mm).
const MIN_ROOF_HEIGHT_MM: f64 = 2400.0;
/// Roof unevenness still counted as one flat roof (mm), and the longest dip tolerated.
const ROOF_TOL_MM: f64 = 60.0;
const ROOF_GAP_MM: f64 = 150.0;
/// How much longer one end must be than the other to say the tractor is there (mm).
const CAB_MARGIN_MM: f64 = 1500.0;
/// A tractor's cab reaches at least this high above the lowest part of the vehicle (mm).
const CAB_MIN_HEIGHT_MM: f64 = 2500.0;
/// Air or low things (a fifth wheel, a drawbar) between a cab and the load (mm).
const CAB_GAP_MM: f64 = 300.0;

/// One load carrier, in analysis pixels: columns `c0..c1`, roof and floor rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub c0: usize,
    pub c1: usize,
    /// Top edge of the roof (first row with something in it).
    pub roof: f32,
    /// Centre of the floor (the lowest strong horizontal ridge low in the carrier).
    pub floor: f32,
    /// Every strong ridge the floor could be, lowest first (`floor` is the first until the
    /// registration chooses among them with the other scan): a
    /// flatbed's deck and beams under a box read as one filled block with it, and only
    /// the other scan of the same box can tell which ridge is its floor.
    pub floors: Vec<f32>,
}

impl Span {
    pub fn len(&self) -> usize {
        self.c1 - self.c0
    }

    pub fn is_empty(&self) -> bool {
        self.c1 <= self.c0
    }

    /// Whether the roof is the image's top edge rather than the roof: a scanner whose
    /// detector column ends below a tall carrier cuts it off there, and the true roof is
    /// somewhere above. Such a roof anchors nothing.
    pub fn roof_cropped(&self) -> bool {
        self.roof <= 1.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Columns holding the vehicle.
    pub v0: usize,
    pub v1: usize,
    /// Load carriers, left to right.
    pub spans: Vec<Span>,
    /// `Some(true)` when the tractor is clearly at the left end, `Some(false)` at the right.
    pub cab_left: Option<bool>,
    /// Each column's top row (the first of two rows holding something; the height when
    /// the column is air).
    top: Vec<usize>,
}

impl Layout {
    /// How high the tallest thing over columns `a..b` reaches above row `base` (mm,
    /// vertical pixel size `mm_v`); 0 when nothing there reaches above it.
    pub fn standing_mm(&self, a: usize, b: usize, base: f32, mm_v: f64) -> f64 {
        self.top
            .get(a..b.min(self.top.len()))
            .and_then(|t| t.iter().min())
            .map_or(0.0, |&t| (f64::from(base) - t as f64).max(0.0) * mm_v)
    }

    /// The union of the carriers' columns.
    pub fn load_cols(&self) -> (usize, usize) {
        (
            self.spans.iter().map(|s| s.c0).min().unwrap_or(0),
            self.spans.iter().map(|s| s.c1).max().unwrap_or(0),
        )
    }

    /// The longest carrier (its roof and floor define the vertical frame).
    pub fn main(&self) -> &Span {
        &self.spans[self.main_index()]
    }

    pub fn main_mut(&mut self) -> &mut Span {
        let i = self.main_index();
        &mut self.spans[i]
    }

    fn main_index(&self) -> usize {
        (0..self.spans.len())
            .max_by_key(|&i| self.spans[i].len())
            .expect("a layout has at least one span")
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayoutError {
    #[error("no vehicle found (the image shows only air)")]
    NoVehicle,
    #[error("no load carrier found: no run of {min_m:.1} m or more with a flat roof at least {roof_m:.1} m above the lowest part of the vehicle")]
    NoCarrier { min_m: f64, roof_m: f64 },
}

/// Finds the layout of a scan from its attenuation `att` with pixel size `mm` (h, v).
pub fn find(att: &Plane, mm: [f64; 2]) -> Result<Layout, LayoutError> {
    let (w, h) = (att.w, att.h);
    let s = att.box_mean(1, 1);
    let mut top = vec![h; w];
    let mut bottom = vec![0usize; w];
    for x in 0..w {
        for y in 0..h.saturating_sub(1) {
            if s.at(x, y) > T_OBJECT && s.at(x, y + 1) > T_OBJECT {
                top[x] = y;
                break;
            }
        }
        for y in (1..h).rev() {
            if s.at(x, y) > T_OBJECT && s.at(x, y - 1) > T_OBJECT {
                bottom[x] = y;
                break;
            }
        }
    }
    // The vehicle: the first and last runs of object columns at least 0.3 m long.
    let min_run = ((300.0 / mm[0]).round() as usize).max(2);
    let runs = runs_of(&top, |t| t < h);
    let long: Vec<(usize, usize)> = runs.into_iter().filter(|(a, z)| z - a >= min_run).collect();
    let (v0, v1) = match (long.first(), long.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => return Err(LayoutError::NoVehicle),
    };
    let lowest = (v0..v1).map(|x| bottom[x]).max().unwrap_or(h - 1);

    let tol = ((ROOF_TOL_MM / mm[1]).round() as i64).max(2);
    let gap = ((ROOF_GAP_MM / mm[0]).round() as usize).max(2);
    let min_len = (MIN_CARRIER_MM / mm[0]).ceil() as usize;
    let mut spans = Vec::new();
    let mut x = v0;
    while x < v1 {
        if top[x] >= h {
            x += 1;
            continue;
        }
        let r = top[x] as i64;
        let start = x;
        let mut last = x;
        let mut y = x + 1;
        while y < v1 {
            if (top[y] as i64 - r).abs() <= tol {
                last = y;
            } else if y - last > gap {
                break;
            }
            y += 1;
        }
        let end = last + 1;
        let roof_mm = (lowest as f64 - r as f64) * mm[1];
        if end - start >= min_len && roof_mm >= MIN_ROOF_HEIGHT_MM {
            let mut tops: Vec<f32> = (start..end)
                .filter(|&c| (top[c] as i64 - r).abs() <= tol)
                .map(|c| top[c] as f32)
                .collect();
            let roof = median(&mut tops);
            if let Some(floors) = find_floor(&s, start, end, roof, lowest, mm) {
                spans.push(Span {
                    c0: start,
                    c1: end,
                    roof,
                    floor: floors[0],
                    floors,
                });
            }
        }
        x = end;
    }
    if spans.is_empty() {
        return Err(LayoutError::NoCarrier {
            min_m: MIN_CARRIER_MM / 1000.0,
            roof_m: MIN_ROOF_HEIGHT_MM / 1000.0,
        });
    }
    let (c0, c1) = (spans[0].c0, spans[spans.len() - 1].c1);
    let mut layout = Layout {
        v0,
        v1,
        spans,
        cab_left: None,
        top,
    };
    // The tractor is the tall thing beyond one end of the load (a cab stands ~3-4 m high;
    // a bare chassis or a trailer's tail ~1.5 m); failing that, the longer end.
    let gap = (CAB_GAP_MM / mm[0]).round() as usize;
    let base = lowest as f32;
    let left_h = layout.standing_mm(v0, c0.saturating_sub(gap).max(v0), base, mm[1]);
    let right_h = layout.standing_mm((c1 + gap).min(v1), v1, base, mm[1]);
    let left_mm = (c0 - v0) as f64 * mm[0];
    let right_mm = (v1 - c1) as f64 * mm[0];
    let cab_left = if left_h >= CAB_MIN_HEIGHT_MM && right_h < CAB_MIN_HEIGHT_MM - 500.0 {
        Some(true)
    } else if right_h >= CAB_MIN_HEIGHT_MM && left_h < CAB_MIN_HEIGHT_MM - 500.0 {
        Some(false)
    } else if left_mm > right_mm + CAB_MARGIN_MM {
        Some(true)
    } else if right_mm > left_mm + CAB_MARGIN_MM {
        Some(false)
    } else {
        None
    };
    layout.cab_left = cab_left;
    Ok(layout)
}

/// Maximal runs `[a, z)` of indices whose value satisfies `pred`.
pub(crate) fn runs_of<T: Copy>(v: &[T], pred: impl Fn(T) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &x) in v.iter().enumerate() {
        match (pred(x), start) {
            (true, None) => start = Some(i),
            (false, Some(a)) => {
                out.push((a, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a, v.len()));
    }
    out
}

/// The floors the carrier over columns `c0..c1` whose roof is at row `roof` may have,
/// lowest first: the strong horizontal ridges of the carrier's median row profile in the
/// lower part of the rows that are filled across (nearly) every column. An edge-on floor
/// (boards or aluminium across the full width of the box) is the densest line of any
/// carrier; a flatbed's deck and beams below it can be as strong.
fn find_floor(
    s: &Plane,
    c0: usize,
    c1: usize,
    roof: f32,
    lowest: usize,
    mm: [f64; 2],
) -> Option<Vec<f32>> {
    let h = s.h;
    let inset = (c1 - c0) / 20;
    let step = ((c1 - c0) / 400).max(1);
    let cols: Vec<usize> = (c0 + inset..c1 - inset).step_by(step).collect();
    if cols.len() < 8 {
        return None;
    }
    let r0 = roof.max(0.0) as usize;
    let r1 = (lowest + 1).min(h);
    let mut prof = vec![0.0f32; h];
    let mut fill = vec![0.0f32; h];
    let mut buf = Vec::with_capacity(cols.len());
    for y in r0..r1 {
        buf.clear();
        buf.extend(cols.iter().map(|&x| s.at(x, y)));
        fill[y] = buf.iter().filter(|&&v| v > T_OBJECT).count() as f32 / buf.len() as f32;
        prof[y] = median(&mut buf);
    }
    // Filled across: from the roof down until less than 80 % of the columns hold something.
    // The roof is flat only to within the roof tolerance, so the rows that far below its
    // median are not all filled yet (a roof edge smeared by depth parallax, a dented or
    // cambered roof): the count starts below them.
    let tol = ((ROOF_TOL_MM / mm[1]).round() as usize).max(2);
    let mut cont = (r0 + tol).min(r1.saturating_sub(1)).max(r0);
    while cont + 1 < r1 && fill[cont + 1] >= 0.8 {
        cont += 1;
    }
    let height = cont.saturating_sub(r0);
    // A carrier is at least ~2 m tall; anything shorter is not a box with a floor.
    if (height as f64) * mm[1] < 1800.0 {
        return None;
    }
    // The floor is the lowest strong horizontal ridge from 2 m below the roof down to a
    // quarter metre above the bottom of the filled rows (the trailer's beams are below
    // it). Not simply the strongest: a dense load on pallets can out-ridge a reefer's
    // aluminium floor.
    let d = ((60.0 / mm[1]).round() as usize).max(2);
    let lo = (r0 + (2000.0 / mm[1]).round() as usize).max(d);
    let mut hi = cont.saturating_sub((250.0 / mm[1]).round() as usize);
    if hi < lo {
        hi = cont;
    }
    let hi = hi.min(h - 1 - d);
    if lo > hi {
        return None;
    }
    let ridge: Vec<f32> = (lo..=hi)
        .map(|y| prof[y] - 0.5 * (prof[y - d] + prof[y + d]))
        .collect();
    let strongest = ridge.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if strongest <= 0.05 {
        return None;
    }
    let is_peak = |k: usize| {
        ridge[k] >= 0.4 * strongest
            && (k == 0 || ridge[k] >= ridge[k - 1])
            && (k + 1 == ridge.len() || ridge[k] >= ridge[k + 1])
    };
    // Sub-pixel centre of the ridge at `y`.
    let centre = |y: usize| {
        let (a, b, c) = (prof[y - 1], prof[y], prof[y + 1]);
        let den = a - 2.0 * b + c;
        let off = if den.abs() > 1e-6 {
            (0.5 * (a - c) / den).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        y as f32 + off
    };
    // Peaks closer than a floor's thickness are one ridge (its upper and lower edges).
    let mut floors: Vec<f32> = Vec::new();
    for k in (0..ridge.len()).rev().filter(|&k| is_peak(k)) {
        let y = centre(lo + k);
        if floors.last().is_none_or(|&f| f - y > d as f32) {
            floors.push(y);
        }
    }
    (!floors.is_empty()).then_some(floors)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic side view at 10 mm pixels: a 40 ft box (roof at row 60, floor ridge at
    /// row 320), a cab at one end, road at row 450.
    pub(crate) fn truck(cab_left: bool) -> Plane {
        let (w, h) = (2000usize, 460usize);
        let mut p = Plane::new(w, h);
        let (b0, b1) = if cab_left { (700, 1920) } else { (80, 1300) };
        let (k0, k1) = if cab_left { (250, 500) } else { (1500, 1750) };
        for y in 0..h {
            for x in 0..w {
                let mut v = 0.0;
                if (b0..b1).contains(&x) {
                    if (60..62).contains(&y) {
                        v = 0.6;
                    } else if (62..318).contains(&y) {
                        let (xf, yf) = (x as f32, y as f32);
                        v = 0.09
                            + if (120..300).contains(&y) {
                                0.9 + 0.5 * (xf * 0.061).sin() * (xf * 0.023 + yf * 0.05).cos()
                            } else {
                                0.0
                            };
                    } else if (318..323).contains(&y) {
                        v = 2.5;
                    } else if (323..370).contains(&y) {
                        v = 0.25;
                    }
                }
                if (k0..k1).contains(&x) && (120..380).contains(&y) {
                    v = 0.5;
                }
                if (370..450).contains(&y) && (x % 400) < 100 && (100..1900).contains(&x) {
                    v = 2.0;
                }
                p.set(x, y, v);
            }
        }
        p
    }

    #[test]
    fn finds_carrier_roof_floor_and_cab() {
        for cab_left in [true, false] {
            let p = truck(cab_left);
            let l = find(&p, [10.0, 10.0]).unwrap();
            assert_eq!(l.spans.len(), 1, "{l:?}");
            let s = &l.spans[0];
            let (b0, b1) = if cab_left { (700, 1920) } else { (80, 1300) };
            assert!(s.c0.abs_diff(b0) <= 2 && s.c1.abs_diff(b1) <= 2, "{s:?}");
            assert!((s.roof - 60.0).abs() <= 1.0, "{s:?}");
            assert!((s.floor - 320.0).abs() <= 1.5, "{s:?}");
            assert_eq!(l.cab_left, Some(cab_left));
        }
    }

    #[test]
    fn a_flatbeds_deck_below_the_floor_leaves_the_floor_a_candidate() {
        // A deck as dense as the floor, 18 rows (0.18 m) under it and across the whole box:
        // the lowest ridge is the deck, and the box's floor stays among the candidates.
        let mut p = truck(true);
        for y in 335..342 {
            for x in 700..1920 {
                p.set(x, y, 2.5);
            }
        }
        let l = find(&p, [10.0, 10.0]).unwrap();
        let s = &l.spans[0];
        assert!((s.floor - 338.0).abs() <= 1.5, "{s:?}");
        assert_eq!(s.floors[0], s.floor);
        assert!(s.floors.iter().any(|f| (f - 320.0).abs() <= 1.5), "{s:?}");
    }

    #[test]
    fn a_roof_edge_uneven_within_the_tolerance_is_still_a_carrier() {
        // Runs of columns whose roof starts 0-6 rows (<= 60 mm) below row 60, as a roof
        // smeared by depth parallax or a dented one reads: the rows just below the roof's
        // median are filled in only some of the columns.
        let mut p = truck(true);
        for x in 700..1920 {
            for y in 60..60 + (x / 30) % 7 {
                p.set(x, y, 0.0);
            }
        }
        let l = find(&p, [10.0, 10.0]).unwrap();
        assert_eq!(l.spans.len(), 1, "{l:?}");
        assert!((l.spans[0].floor - 320.0).abs() <= 1.5, "{l:?}");
    }

    #[test]
    fn air_only_and_low_loads_are_refused() {
        let p = Plane::new(500, 300);
        assert_eq!(find(&p, [10.0, 10.0]), Err(LayoutError::NoVehicle));
        let mut q = Plane::new(500, 300);
        for y in 250..290 {
            for x in 100..400 {
                q.set(x, y, 1.0);
            }
        }
        assert!(matches!(
            find(&q, [10.0, 10.0]),
            Err(LayoutError::NoCarrier { .. })
        ));
    }
}
