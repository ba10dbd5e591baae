//! Projection primitives of the simulator and their rasterisation into an optical-depth map.
//! Owns the shapes (in millimetres, y up), their per-ray path-length profiles, procedural
//! textures and the anti-aliased splatting onto a scanner's sampling grid; it must never know
//! about trucks, goods, noise or file formats.

use std::f32::consts::PI;

/// Linear attenuation of water-equivalent matter at the 4-6 MeV of cargo linacs, per mm and
/// per g/cm³. Compton scattering dominates there, so attenuation is nearly proportional to
/// density whatever the material; this is also what makes mass ≈ ∫OD dA / 2.8 mm²/g.
pub(crate) const MU_PER_DENSITY: f32 = 0.0028;
/// Optical depth × mm² of projected area per gram of matter (see [`MU_PER_DENSITY`]).
pub(crate) const OD_MM2_PER_GRAM: f32 = MU_PER_DENSITY * 1000.0;

/// Linear attenuation (per mm) of a material of density `rho` g/cm³.
pub(crate) fn mu(rho: f32) -> f32 {
    MU_PER_DENSITY * rho
}

pub(crate) const STEEL: f32 = 0.022;
pub(crate) const LEAD: f32 = 0.05;

/// How the path length through a shape varies across it.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// Constant path, rectangle of half sizes.
    Rect { hw: f32, hh: f32 },
    /// Constant path, ellipse (a disk whose axis is along the beam).
    Disk { rx: f32, ry: f32 },
    /// Constant path, circular annulus.
    Ring { r0: f32, r1: f32 },
    /// Cylinder with a vertical axis (or a hollow one: `hole` = inner/outer radius): the
    /// path is the chord across x.
    CylV { hw: f32, hh: f32, hole: f32 },
    /// Cylinder lying along x: the chord is across y.
    CylH { hw: f32, hh: f32, hole: f32 },
    /// A filled sack: flat in the middle, thinning at the rounded edges.
    Pillow { hw: f32, hh: f32 },
    /// Chord through an ellipsoid (fruit, heads of lettuce, bundles).
    Ellipsoid { rx: f32, ry: f32 },
    /// Constant path, any simple polygon (vertices relative to the centre).
    Poly { pts: Vec<[f32; 2]> },
}

/// Multiplicative texture on a shape's path, evaluated in the shape's own frame so that it
/// moves with the shape (an item that settles keeps its look).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tex {
    None,
    /// Two-octave value noise: `cell` in mm, relative amplitude `amp`.
    Noise {
        cell: f32,
        amp: f32,
        seed: u32,
    },
    /// Triangle-wave stripes of `period` mm; `along_y` stripes are horizontal lines.
    Stripes {
        period: f32,
        amp: f32,
        along_y: bool,
        phase: f32,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Prim {
    pub kind: Kind,
    pub cx: f32,
    pub cy: f32,
    pub angle: f32,
    /// Optical depth (mu × path) at the thickest point of the shape.
    pub od: f32,
    pub tex: Tex,
    pub tex2: Tex,
}

impl Prim {
    pub fn new(kind: Kind, cx: f32, cy: f32, od: f32) -> Self {
        Self {
            kind,
            cx,
            cy,
            angle: 0.0,
            od,
            tex: Tex::None,
            tex2: Tex::None,
        }
    }

    /// Local half extents before rotation.
    fn half_extents(&self) -> (f32, f32) {
        match &self.kind {
            Kind::Rect { hw, hh }
            | Kind::CylV { hw, hh, .. }
            | Kind::CylH { hw, hh, .. }
            | Kind::Pillow { hw, hh } => (*hw, *hh),
            Kind::Disk { rx, ry } | Kind::Ellipsoid { rx, ry } => (*rx, *ry),
            Kind::Ring { r1, .. } => (*r1, *r1),
            Kind::Poly { pts } => pts.iter().fold((0.0f32, 0.0f32), |(a, b), p| {
                (a.max(p[0].abs()), b.max(p[1].abs()))
            }),
        }
    }

    /// The shape's smallest width (mm): what decides whether it is a sub-pixel sheet.
    fn min_extent(&self) -> f32 {
        match &self.kind {
            Kind::Ring { r0, r1 } => r1 - r0,
            _ => {
                let (hw, hh) = self.half_extents();
                2.0 * hw.min(hh)
            }
        }
    }

    /// Axis-aligned bounding box `[x0, y0, x1, y1]` in the parent frame.
    pub fn bbox(&self) -> [f32; 4] {
        let (hw, hh) = self.half_extents();
        let (s, c) = self.angle.sin_cos();
        let ex = c.abs() * hw + s.abs() * hh;
        let ey = s.abs() * hw + c.abs() * hh;
        [self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey]
    }

    /// Rotates the shape by `angle` about `pivot`, then moves it by `d`.
    pub fn transform(&mut self, pivot: [f32; 2], angle: f32, d: [f32; 2]) {
        if angle != 0.0 {
            let (s, c) = angle.sin_cos();
            let (x, y) = (self.cx - pivot[0], self.cy - pivot[1]);
            self.cx = pivot[0] + c * x - s * y;
            self.cy = pivot[1] + s * x + c * y;
            self.angle += angle;
        }
        self.cx += d[0];
        self.cy += d[1];
    }

    /// Mirrors the shape about the vertical line x = `axis`.
    pub fn mirror_x(&mut self, axis: f32) {
        self.cx = 2.0 * axis - self.cx;
        self.angle = -self.angle;
        if let Kind::Poly { pts } = &mut self.kind {
            for p in pts.iter_mut() {
                p[0] = -p[0];
            }
            pts.reverse();
        }
    }

    /// Path factor in [0, 1] (times `od`) and area coverage in [0, 1] of a pixel whose centre
    /// is at local (x, y) and whose footprint is `fx` × `fy` mm in the local frame.
    #[inline]
    fn eval(&self, x: f32, y: f32, fx: f32, fy: f32) -> (f32, f32) {
        match &self.kind {
            Kind::Rect { hw, hh } => (box_cov(x, y, *hw, *hh, fx, fy), 1.0),
            Kind::Disk { rx, ry } => {
                let k0 = ((x / rx).powi(2) + (y / ry).powi(2)).sqrt();
                let k1 = ((x / (rx * rx)).powi(2) + (y / (ry * ry)).powi(2)).sqrt();
                let d = if k1 > 0.0 {
                    k0 * (k0 - 1.0) / k1
                } else {
                    -rx.min(*ry)
                };
                (sdf_cov(d, 0.5 * (fx + fy)), 1.0)
            }
            Kind::Ring { r0, r1 } => {
                let r = (x * x + y * y).sqrt();
                let f = 0.5 * (fx + fy);
                let lo = if *r0 <= 0.0 { f32::NEG_INFINITY } else { *r0 };
                (overlap(r - 0.5 * f, r + 0.5 * f, lo, *r1) / f, 1.0)
            }
            Kind::CylV { hw, hh, hole } => {
                let cov = box_cov(x, y, *hw, *hh, fx, fy);
                (cov, chord(x, *hw, *hole))
            }
            Kind::CylH { hw, hh, hole } => {
                let cov = box_cov(x, y, *hw, *hh, fx, fy);
                (cov, chord(y, *hh, *hole))
            }
            Kind::Pillow { hw, hh } => {
                let cov = box_cov(x, y, *hw, *hh, fx, fy);
                let u = (x / hw).powi(4).min(1.0);
                let v = (y / hh).powi(4).min(1.0);
                (cov, ((1.0 - u) * (1.0 - v)).sqrt())
            }
            Kind::Ellipsoid { rx, ry } => {
                let k = (x / rx).powi(2) + (y / ry).powi(2);
                if k >= 1.0 {
                    (0.0, 0.0)
                } else {
                    (1.0, (1.0 - k).sqrt())
                }
            }
            Kind::Poly { pts } => (sdf_cov(sd_polygon(pts, x, y), 0.5 * (fx + fy)), 1.0),
        }
    }
}

#[inline]
fn overlap(a0: f32, a1: f32, b0: f32, b1: f32) -> f32 {
    (a1.min(b1) - a0.max(b0)).max(0.0)
}

/// Exact box-filtered coverage of an axis-aligned rectangle: thin sheets seen edge-on (a
/// few mm wide, tens of OD) must keep their true sub-pixel share of the pixel.
#[inline]
fn box_cov(x: f32, y: f32, hw: f32, hh: f32, fx: f32, fy: f32) -> f32 {
    let cx = overlap(x - 0.5 * fx, x + 0.5 * fx, -hw, hw) / fx;
    if cx <= 0.0 {
        return 0.0;
    }
    cx * overlap(y - 0.5 * fy, y + 0.5 * fy, -hh, hh) / fy
}

#[inline]
fn sdf_cov(d: f32, f: f32) -> f32 {
    (0.5 - d / f).clamp(0.0, 1.0)
}

/// Chord through a (hollow) cylinder of radius `r` at offset `x`, relative to 2r.
#[inline]
fn chord(x: f32, r: f32, hole: f32) -> f32 {
    let outer = (1.0 - (x / r).powi(2)).max(0.0).sqrt();
    if hole <= 0.0 {
        return outer;
    }
    let xi = x / (r * hole);
    let inner = (1.0 - xi * xi).max(0.0).sqrt() * hole;
    (outer - inner).max(0.0)
}

/// Signed distance to a polygon, negative inside (after Inigo Quilez).
fn sd_polygon(v: &[[f32; 2]], px: f32, py: f32) -> f32 {
    let n = v.len();
    let mut d = (px - v[0][0]).powi(2) + (py - v[0][1]).powi(2);
    let mut s = 1.0f32;
    let mut j = n - 1;
    for i in 0..n {
        let (ex, ey) = (v[j][0] - v[i][0], v[j][1] - v[i][1]);
        let (wx, wy) = (px - v[i][0], py - v[i][1]);
        let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
        let (bx, by) = (wx - ex * t, wy - ey * t);
        d = d.min(bx * bx + by * by);
        let c1 = py >= v[i][1];
        let c2 = py < v[j][1];
        let c3 = ex * wy > ey * wx;
        if (c1 && c2 && c3) || (!c1 && !c2 && !c3) {
            s = -s;
        }
        j = i;
    }
    s * d.sqrt()
}

#[inline]
fn hash2(ix: i32, iy: i32, seed: u32) -> f32 {
    let mut h = (ix as u32).wrapping_mul(0x27d4_eb2d)
        ^ (iy as u32).wrapping_mul(0x1656_67b1)
        ^ seed.wrapping_mul(0x9e37_79b9);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297a_2d39);
    h ^= h >> 15;
    h as f32 * (2.0 / u32::MAX as f32) - 1.0
}

/// Smooth value noise in [-1, 1].
#[inline]
pub(crate) fn vnoise(x: f32, y: f32, seed: u32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (ix, iy) = (x0 as i32, y0 as i32);
    let sx = fx * fx * (3.0 - 2.0 * fx);
    let sy = fy * fy * (3.0 - 2.0 * fy);
    let a = hash2(ix, iy, seed);
    let b = hash2(ix + 1, iy, seed);
    let c = hash2(ix, iy + 1, seed);
    let d = hash2(ix + 1, iy + 1, seed);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

impl Tex {
    #[inline]
    fn factor(&self, x: f32, y: f32) -> f32 {
        match *self {
            Tex::None => 1.0,
            Tex::Noise { cell, amp, seed } => {
                let n1 = vnoise(x / cell, y / cell, seed);
                let n2 = vnoise(x / (cell * 0.37), y / (cell * 0.37), seed ^ 0x5bd1);
                (1.0 + amp * (0.7 * n1 + 0.45 * n2)).max(0.0)
            }
            Tex::Stripes {
                period,
                amp,
                along_y,
                phase,
            } => {
                let u = if along_y { y } else { x } / period + phase;
                let t = u - u.floor();
                1.0 + amp * (1.0 - 4.0 * (t - 0.5).abs())
            }
        }
    }
}

/// Where each pixel of a scan sits on the truck: columns follow the truck's (varying) speed,
/// rows the detector pitch. Column 0 is the first to pass the beam.
#[derive(Clone, Debug)]
pub(crate) struct Grid {
    pub w: usize,
    pub h: usize,
    /// Scene x (mm) of the column edges, `w + 1` values, strictly increasing.
    pub xe: Vec<f32>,
    /// Scene y (mm) of the top edge of row 0.
    pub y_top: f32,
    /// Row pitch (mm); the mean pitch when `ye` is set.
    pub pv: f32,
    /// Scene y (mm) of the row edges, `h + 1` values, strictly decreasing, for detectors
    /// whose rows are not evenly spaced on the truck (the boom of an L-shaped detector);
    /// empty when rows are uniform (`y_top`, `pv`).
    pub ye: Vec<f32>,
    /// Per row, the scene heights `[lo, hi]` (mm) whose optical depth the row averages: the
    /// depth parallax of a fan beam smears an edge over a band. Empty when rows see only
    /// their own span.
    pub reach: Vec<[f32; 2]>,
}

impl Grid {
    /// A grid of evenly spaced rows, without parallax.
    pub fn uniform(xe: Vec<f32>, h: usize, y_top: f32, pv: f32) -> Self {
        Self {
            w: xe.len() - 1,
            h,
            xe,
            y_top,
            pv,
            ye: Vec::new(),
            reach: Vec::new(),
        }
    }

    /// Columns whose span meets [x0, x1), as a half-open range.
    pub fn col_range(&self, x0: f32, x1: f32) -> (usize, usize) {
        let a = self.xe.partition_point(|&e| e <= x0).saturating_sub(1);
        let b = self.xe.partition_point(|&e| e < x1).min(self.w);
        (a.min(self.w), b.max(a.min(self.w)))
    }

    /// Rows whose span meets [y0, y1) (y up, rows down), as a half-open range.
    pub fn row_range(&self, y0: f32, y1: f32) -> (usize, usize) {
        if !self.ye.is_empty() {
            // Rows above the span end at or above y1; rows below it start at or below y0.
            let a = self.ye[1..].partition_point(|&e| e >= y1);
            let b = self.ye[..self.h].partition_point(|&e| e > y0);
            return (a.min(self.h), b.min(self.h).max(a.min(self.h)));
        }
        let a = ((self.y_top - y1) / self.pv).floor().max(0.0) as usize;
        let b = ((self.y_top - y0) / self.pv).ceil().max(0.0) as usize;
        (a.min(self.h), b.min(self.h).max(a.min(self.h)))
    }

    pub fn row_center(&self, r: usize) -> f32 {
        if !self.ye.is_empty() {
            return 0.5 * (self.ye[r] + self.ye[r + 1]);
        }
        self.y_top - (r as f32 + 0.5) * self.pv
    }

    /// Height (mm) of row `r` on the truck.
    pub fn row_h(&self, r: usize) -> f32 {
        if self.ye.is_empty() {
            self.pv
        } else {
            self.ye[r] - self.ye[r + 1]
        }
    }

    /// Rows that see anything of [y0, y1), parallax included, as a half-open range.
    pub fn seen_rows(&self, y0: f32, y1: f32) -> (usize, usize) {
        let (a, b) = self.row_range(y0, y1);
        if self.reach.is_empty() || a >= b {
            return (a, b);
        }
        // The rows a shape is drawn into hold its depth over their whole height.
        let (y0, y1) = (self.ye[b], self.ye[a]);
        let mut first = self.h;
        let mut last = 0;
        for (r, &[lo, hi]) in self.reach.iter().enumerate() {
            if lo < y1 && hi > y0 {
                first = first.min(r);
                last = r + 1;
            }
        }
        if first >= last {
            (0, 0)
        } else {
            (first, last)
        }
    }

    /// Pixel box `[x0, y0, x1, y1]` (half-open) covering a scene box, or `None` if it is
    /// outside the image.
    pub fn px_box(&self, b: [f32; 4]) -> Option<[u32; 4]> {
        let (c0, c1) = self.col_range(b[0], b[2]);
        let (r0, r1) = self.seen_rows(b[1], b[3]);
        (c1 > c0 && r1 > r0).then_some([c0 as u32, r0 as u32, c1 as u32, r1 as u32])
    }
}

/// Adds one shape's optical depth to the rows `band_r0..` of `od` (row-major, `g.w` wide).
///
/// A pixel partly covered by a *thin* shape gets `-ln(1 - c(1 - e^-od))`, the OD of a pixel
/// that is a fraction `c` opaque-ish and otherwise clear: the detector averages photons, not
/// optical depths, so a 2 mm steel sheet seen edge-on greys a 12 mm pixel instead of
/// blackening it. Larger shapes share their edges with neighbours (stacked sacks, cartons),
/// where that assumption would open bright seams, so their coverage scales OD linearly.
pub(crate) fn raster(od: &mut [f32], g: &Grid, band_r0: usize, p: &Prim) {
    let band_rows = od.len() / g.w;
    let bb = p.bbox();
    let (c0, c1) = g.col_range(bb[0], bb[2]);
    let (r0, r1) = g.row_range(bb[1], bb[3]);
    let r0 = r0.max(band_r0);
    let r1 = r1.min(band_r0 + band_rows);
    if c0 >= c1 || r0 >= r1 || p.od == 0.0 {
        return;
    }
    let (s, c) = (-p.angle).sin_cos();
    let rotated = p.angle != 0.0;
    let pixel = ((g.xe[c1] - g.xe[c0]) / (c1 - c0) as f32).max(g.pv);
    let thin = p.min_extent() < 2.0 * pixel;
    let textured = !matches!(p.tex, Tex::None) || !matches!(p.tex2, Tex::None);
    for r in r0..r1 {
        let y = g.row_center(r) - p.cy;
        let pv = g.row_h(r);
        let row = &mut od[(r - band_r0) * g.w..(r - band_r0 + 1) * g.w];
        for (col, px) in row.iter_mut().enumerate().take(c1).skip(c0) {
            let (xa, xb) = (g.xe[col], g.xe[col + 1]);
            let fx = xb - xa;
            let x = 0.5 * (xa + xb) - p.cx;
            let (lx, ly, lfx, lfy) = if rotated {
                (
                    c * x - s * y,
                    s * x + c * y,
                    (c * fx).hypot(s * pv),
                    (s * fx).hypot(c * pv),
                )
            } else {
                (x, y, fx, pv)
            };
            let (cov, f) = p.eval(lx, ly, lfx, lfy);
            if cov <= 0.0 || f <= 0.0 {
                continue;
            }
            let mut d = p.od * f;
            if textured {
                d *= p.tex.factor(lx, ly) * p.tex2.factor(lx, ly);
            }
            if cov >= 0.999 || !thin {
                *px += cov * d;
            } else if d > 0.0 {
                *px -= (1.0 - cov * (1.0 - (-d).exp())).ln();
            }
        }
    }
}

/// Mean optical depth × area (OD·mm²) of shapes, integrated on a coarse grid: a projection
/// of the item's mass ([`OD_MM2_PER_GRAM`]) and of its overall darkness.
pub(crate) fn od_integral(prims: &[Prim], bbox: [f32; 4], step: f32) -> f32 {
    let nx = (((bbox[2] - bbox[0]) / step).ceil() as usize).max(1);
    let ny = (((bbox[3] - bbox[1]) / step).ceil() as usize).max(1);
    let mut xe = Vec::with_capacity(nx + 1);
    for i in 0..=nx {
        xe.push(bbox[0] + i as f32 * step);
    }
    let g = Grid::uniform(xe, ny, bbox[1] + ny as f32 * step, step);
    let mut od = vec![0.0f32; nx * ny];
    for p in prims {
        raster(&mut od, &g, 0, p);
    }
    od.iter().sum::<f32>() * step * step
}

/// A convenience for composing shapes in an item's frame.
#[derive(Default)]
pub(crate) struct Shapes {
    pub prims: Vec<Prim>,
}

impl Shapes {
    pub fn push(&mut self, p: Prim) -> &mut Prim {
        self.prims.push(p);
        self.prims.last_mut().expect("just pushed")
    }

    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, od: f32) -> &mut Prim {
        let (x0, x1) = (x0.min(x1), x0.max(x1));
        let (y0, y1) = (y0.min(y1), y0.max(y1));
        self.push(Prim::new(
            Kind::Rect {
                hw: 0.5 * (x1 - x0),
                hh: 0.5 * (y1 - y0),
            },
            0.5 * (x0 + x1),
            0.5 * (y0 + y1),
            od,
        ))
    }

    /// A straight bar of width `wd` from a to b (square ends).
    pub fn seg(&mut self, a: [f32; 2], b: [f32; 2], wd: f32, od: f32) -> &mut Prim {
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = dx.hypot(dy);
        let mut p = Prim::new(
            Kind::Rect {
                hw: 0.5 * len,
                hh: 0.5 * wd,
            },
            0.5 * (a[0] + b[0]),
            0.5 * (a[1] + b[1]),
            od,
        );
        p.angle = dy.atan2(dx);
        self.push(p)
    }

    /// Bars through consecutive points.
    pub fn polyline(&mut self, pts: &[[f32; 2]], wd: f32, od: f32) {
        for w in pts.windows(2) {
            self.seg(w[0], w[1], wd, od);
        }
    }

    pub fn disk(&mut self, cx: f32, cy: f32, r: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(Kind::Disk { rx: r, ry: r }, cx, cy, od))
    }

    pub fn ring(&mut self, cx: f32, cy: f32, r0: f32, r1: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(Kind::Ring { r0, r1 }, cx, cy, od))
    }

    pub fn cylv(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, hole: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(
            Kind::CylV {
                hw: 0.5 * (x1 - x0).abs(),
                hh: 0.5 * (y1 - y0).abs(),
                hole,
            },
            0.5 * (x0 + x1),
            0.5 * (y0 + y1),
            od,
        ))
    }

    pub fn cylh(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, hole: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(
            Kind::CylH {
                hw: 0.5 * (x1 - x0).abs(),
                hh: 0.5 * (y1 - y0).abs(),
                hole,
            },
            0.5 * (x0 + x1),
            0.5 * (y0 + y1),
            od,
        ))
    }

    pub fn pillow(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(
            Kind::Pillow {
                hw: 0.5 * (x1 - x0).abs(),
                hh: 0.5 * (y1 - y0).abs(),
            },
            0.5 * (x0 + x1),
            0.5 * (y0 + y1),
            od,
        ))
    }

    pub fn ellipsoid(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, od: f32) -> &mut Prim {
        self.push(Prim::new(Kind::Ellipsoid { rx, ry }, cx, cy, od))
    }

    /// A polygon given in the parent frame (its centre is the mean of its bounding box).
    pub fn poly(&mut self, pts: &[[f32; 2]], od: f32) -> &mut Prim {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in pts {
            x0 = x0.min(p[0]);
            y0 = y0.min(p[1]);
            x1 = x1.max(p[0]);
            y1 = y1.max(p[1]);
        }
        let (cx, cy) = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let local = pts.iter().map(|p| [p[0] - cx, p[1] - cy]).collect();
        self.push(Prim::new(Kind::Poly { pts: local }, cx, cy, od))
    }

    /// A rectangle outline: four bars of width `wd` inside the box.
    pub fn frame(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, wd: f32, od: f32) {
        self.rect(x0, y0, x1, y0 + wd, od);
        self.rect(x0, y1 - wd, x1, y1, od);
        self.rect(x0, y0 + wd, x0 + wd, y1 - wd, od);
        self.rect(x1 - wd, y0 + wd, x1, y1 - wd, od);
    }

    /// Bounding box of everything pushed so far.
    pub fn bbox(&self) -> [f32; 4] {
        bbox_of(&self.prims)
    }
}

pub(crate) fn bbox_of(prims: &[Prim]) -> [f32; 4] {
    prims
        .iter()
        .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |a, p| {
            let b = p.bbox();
            [
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]
        })
}

pub(crate) fn deg(a: f32) -> f32 {
    a * PI / 180.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_grid(w: usize, h: usize, step: f32) -> Grid {
        Grid::uniform(
            (0..=w).map(|i| i as f32 * step).collect(),
            h,
            h as f32 * step,
            step,
        )
    }

    #[test]
    fn rect_coverage_is_exact_for_sub_pixel_sheets() {
        // A 2 mm sheet of OD 50 inside one 10 mm pixel passes ~80% of the photons.
        let g = uniform_grid(3, 1, 10.0);
        let mut od = vec![0.0; 3];
        let mut s = Shapes::default();
        s.rect(14.0, 0.0, 16.0, 10.0, 50.0);
        raster(&mut od, &g, 0, &s.prims[0]);
        assert_eq!(od[0], 0.0);
        assert!(((-od[1]).exp() - 0.8).abs() < 1e-3, "{}", od[1]);
        assert_eq!(od[2], 0.0);
    }

    #[test]
    fn od_integral_of_rect_is_area_times_od() {
        let mut s = Shapes::default();
        s.rect(0.0, 0.0, 100.0, 50.0, 2.0);
        let v = od_integral(&s.prims, [-10.0, -10.0, 110.0, 60.0], 5.0);
        assert!((v - 100.0 * 50.0 * 2.0).abs() < 1.0, "{v}");
    }

    #[test]
    fn polygon_sdf_sign() {
        let sq = [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]];
        assert!(sd_polygon(&sq, 0.0, 0.0) < 0.0);
        assert!(sd_polygon(&sq, 2.0, 0.0) > 0.0);
        assert!((sd_polygon(&sq, 3.0, 0.0) - 2.0).abs() < 1e-5);
    }
}
