//! Local refinement of a registration: after the global warp (vertical scale and offset,
//! column-wise DTW), what is left is a few pixels here and there (a container riding a
//! little tilted on another trailer, the vertical scale a fraction off, loading columns
//! that settled). Block matching over small shifts on a grid of blocks across the load,
//! then a median and a mean filter over the grid, give a smooth displacement field. The
//! search is limited to [`MAX_DX`] x [`MAX_DY`] pixels, so a real change (tens of pixels
//! across) can never be matched away. Pure computation.

use super::diff::Roi;
use super::plane::{median, quantile, Plane};

pub const MAX_DX: i32 = 2;
pub const MAX_DY: i32 = 3;
const BLOCK: usize = 24;
const STEP: usize = 12;

/// Displacements (analysis pixels) on a grid of block centres: entry pixel (x, y) is best
/// matched by the warped exit at (x + dx, y + dy).
#[derive(Debug, Clone)]
pub struct Field {
    x0: f32,
    y0: f32,
    gw: usize,
    gh: usize,
    dx: Vec<f32>,
    dy: Vec<f32>,
}

impl Field {
    /// No displacement anywhere.
    pub fn zero() -> Field {
        Field {
            x0: 0.0,
            y0: 0.0,
            gw: 1,
            gh: 1,
            dx: vec![0.0],
            dy: vec![0.0],
        }
    }

    /// Bilinear interpolation of the field at (x, y); constant beyond the grid.
    #[inline]
    pub fn at(&self, x: f32, y: f32) -> (f32, f32) {
        let gx = ((x - self.x0) / STEP as f32).clamp(0.0, (self.gw - 1) as f32);
        let gy = ((y - self.y0) / STEP as f32).clamp(0.0, (self.gh - 1) as f32);
        let i0 = gx.floor() as usize;
        let j0 = gy.floor() as usize;
        let i1 = (i0 + 1).min(self.gw - 1);
        let j1 = (j0 + 1).min(self.gh - 1);
        let (fx, fy) = (gx - i0 as f32, gy - j0 as f32);
        let lerp = |v: &[f32]| {
            let a = v[j0 * self.gw + i0] + (v[j0 * self.gw + i1] - v[j0 * self.gw + i0]) * fx;
            let b = v[j1 * self.gw + i0] + (v[j1 * self.gw + i1] - v[j1 * self.gw + i0]) * fx;
            a + (b - a) * fy
        };
        (lerp(&self.dx), lerp(&self.dy))
    }

    /// Moves the grid by (`dx`, `dy`): a field estimated on a crop, used on the whole.
    pub fn translate(&mut self, dx: f32, dy: f32) {
        self.x0 += dx;
        self.y0 += dy;
    }

    /// Largest displacement in the field (pixels).
    pub fn max_abs(&self) -> f32 {
        self.dx
            .iter()
            .chain(&self.dy)
            .fold(0.0f32, |m, v| m.max(v.abs()))
    }
}

/// Sub-pixel position of a minimum from three samples around it.
fn parabola(a: f64, b: f64, c: f64) -> f32 {
    let den = a - 2.0 * b + c;
    if den > 1e-12 {
        (0.5 * (a - c) / den).clamp(-0.5, 0.5) as f32
    } else {
        0.0
    }
}

/// Estimates the displacement field between the entry `e` and the warped exit `w` (same
/// grid, same photometry) over the compared area.
pub fn estimate(e: &Plane, w: &Plane, roi: &Roi) -> Field {
    if roi.rects.is_empty() {
        return Field::zero();
    }
    let bx0 = roi.rects.iter().map(|r| r[0]).min().unwrap_or(0);
    let by0 = roi.rects.iter().map(|r| r[1]).min().unwrap_or(0);
    let bx1 = roi.rects.iter().map(|r| r[2]).max().unwrap_or(0);
    let by1 = roi.rects.iter().map(|r| r[3]).max().unwrap_or(0);
    let half = BLOCK / 2;
    let gw = ((bx1 - bx0) / STEP).max(1) + 1;
    let gh = ((by1 - by0) / STEP).max(1) + 1;
    let (x0, y0) = (bx0 as f32, by0 as f32);
    let nx = (2 * MAX_DX + 1) as usize;
    let ny = (2 * MAX_DY + 1) as usize;
    let mut dx = vec![f32::NAN; gw * gh];
    let mut dy = vec![f32::NAN; gw * gh];
    // Residual per pixel at the best shift: a block over a change matches nowhere well.
    let mut resid = vec![f32::NAN; gw * gh];
    let mut ssd = vec![0.0f64; nx * ny];
    for gj in 0..gh {
        for gi in 0..gw {
            let cx = bx0 + gi * STEP;
            let cy = by0 + gj * STEP;
            if !roi.contains(cx.min(e.w - 1), cy.min(e.h - 1)) {
                continue;
            }
            let xa = cx.saturating_sub(half);
            let ya = cy.saturating_sub(half);
            let xb = (cx + half).min(e.w);
            let yb = (cy + half).min(e.h);
            if xb <= xa + 4 || yb <= ya + 4 {
                continue;
            }
            // A block without structure across a direction says nothing about the shift
            // in that direction (a wall's vertical ribs fix dx, not dy).
            let (mut gxx, mut gyy) = (0.0f64, 0.0f64);
            for y in ya..yb - 1 {
                for x in xa..xb - 1 {
                    let v = e.at(x, y);
                    gxx += ((e.at(x + 1, y) - v) as f64).powi(2);
                    gyy += ((e.at(x, y + 1) - v) as f64).powi(2);
                }
            }
            let n = ((xb - xa) * (yb - ya)) as f64;
            let (x_known, y_known) = (gxx / n >= 5e-4, gyy / n >= 5e-4);
            if !x_known && !y_known {
                continue;
            }
            // Pixels whose every shifted partner lies inside the plane, every other one in
            // each direction (the field is smooth; the blocks overlap).
            let xa = xa.max(MAX_DX as usize);
            let ya = ya.max(MAX_DY as usize);
            let xb = xb.min(e.w - MAX_DX as usize);
            let yb = yb.min(e.h - MAX_DY as usize);
            if xb <= xa + 4 || yb <= ya + 4 {
                continue;
            }
            for (k, s) in ssd.iter_mut().enumerate() {
                let sx = (k % nx) as i64 - MAX_DX as i64;
                let sy = (k / nx) as i64 - MAX_DY as i64;
                let mut acc = 0.0f32;
                for y in (ya..yb).step_by(2) {
                    let er = &e.row(y)[xa..xb];
                    let wy = (y as i64 + sy) as usize;
                    let wx0 = (xa as i64 + sx) as usize;
                    let wr = &w.row(wy)[wx0..wx0 + (xb - xa)];
                    for (a, b) in er.iter().zip(wr.iter()) {
                        let d = a - b;
                        acc += d * d;
                    }
                }
                *s = acc as f64;
            }
            let (k, _) = ssd
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .expect("at least one shift");
            let (ix, iy) = (k % nx, k / nx);
            let sub_x = if ix > 0 && ix + 1 < nx {
                parabola(ssd[k - 1], ssd[k], ssd[k + 1])
            } else {
                0.0
            };
            let sub_y = if iy > 0 && iy + 1 < ny {
                parabola(ssd[k - nx], ssd[k], ssd[k + nx])
            } else {
                0.0
            };
            if x_known {
                dx[gj * gw + gi] = ix as f32 - MAX_DX as f32 + sub_x;
            }
            if y_known {
                dy[gj * gw + gi] = iy as f32 - MAX_DY as f32 + sub_y;
            }
            resid[gj * gw + gi] = (ssd[k] / ((xb - xa) * (yb - ya) / 2).max(1) as f64) as f32;
        }
    }
    // A lower quantile sets the bar: when much of the load changed, the median block is
    // itself a changed one.
    let mut known: Vec<f32> = resid.iter().copied().filter(|v| v.is_finite()).collect();
    let limit = (4.0 * quantile(&mut known, 0.3)).max(0.02 * 0.02);
    for k in 0..gw * gh {
        if resid[k].is_nan() || resid[k] > limit {
            dx[k] = f32::NAN;
            dy[k] = f32::NAN;
        }
    }
    let dx = smooth(&fill(&dx, gw, gh), gw, gh);
    // Vertically, what is left is a slightly wrong scale, offset or tilt of the carrier:
    // a bilinear surface, fitted robustly, not a field that could ripple around changes.
    let dy = bilinear_fit(&dy, gw, gh);
    Field {
        x0,
        y0,
        gw,
        gh,
        dx,
        dy,
    }
}

/// Robust fit of dy = p0 + p1 i + p2 j + p3 i j over the known cells (IRLS, Huber); 0 where
/// too few are known.
fn bilinear_fit(v: &[f32], gw: usize, gh: usize) -> Vec<f32> {
    let pts: Vec<(f64, f64, f64)> = (0..gw * gh)
        .filter(|&k| v[k].is_finite())
        .map(|k| ((k % gw) as f64, (k / gw) as f64, v[k] as f64))
        .collect();
    if pts.len() < 8 {
        return vec![0.0; gw * gh];
    }
    let basis = |i: f64, j: f64| [1.0, i, j, i * j];
    let mut p = [0.0f64; 4];
    let mut w = vec![1.0f64; pts.len()];
    for _ in 0..6 {
        let mut m = [[0.0f64; 4]; 4];
        let mut r = [0.0f64; 4];
        for (k, &(i, j, d)) in pts.iter().enumerate() {
            let b = basis(i, j);
            for a in 0..4 {
                r[a] += w[k] * b[a] * d;
                for c in 0..4 {
                    m[a][c] += w[k] * b[a] * b[c];
                }
            }
        }
        match solve4(m, r) {
            Some(q) => p = q,
            None => break,
        }
        for (k, &(i, j, d)) in pts.iter().enumerate() {
            let b = basis(i, j);
            let res = (d - (0..4).map(|a| p[a] * b[a]).sum::<f64>()).abs();
            w[k] = if res <= 0.5 { 1.0 } else { 0.5 / res };
        }
    }
    (0..gw * gh)
        .map(|k| {
            let b = basis((k % gw) as f64, (k / gw) as f64);
            let d: f64 = (0..4).map(|a| p[a] * b[a]).sum();
            d.clamp(-(MAX_DY as f64), MAX_DY as f64) as f32
        })
        .collect()
}

/// Solves the 4x4 system `m z = r` (Gaussian elimination with pivoting).
#[allow(clippy::needless_range_loop)]
fn solve4(mut m: [[f64; 4]; 4], mut r: [f64; 4]) -> Option<[f64; 4]> {
    for col in 0..4 {
        let piv = (col..4).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-9 {
            return None;
        }
        m.swap(col, piv);
        r.swap(col, piv);
        for row in col + 1..4 {
            let f = m[row][col] / m[col][col];
            for k in col..4 {
                m[row][k] -= f * m[col][k];
            }
            r[row] -= f * r[col];
        }
    }
    let mut z = [0.0; 4];
    for row in (0..4).rev() {
        let mut s = r[row];
        for k in row + 1..4 {
            s -= m[row][k] * z[k];
        }
        z[row] = s / m[row][row];
    }
    Some(z)
}

/// Unknown cells take the mean of known neighbours, spreading outwards; 0 if none known.
fn fill(v: &[f32], gw: usize, gh: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    if out.iter().all(|x| x.is_nan()) {
        return vec![0.0; v.len()];
    }
    for _ in 0..gw.max(gh) {
        if out.iter().all(|x| x.is_finite()) {
            break;
        }
        let prev = out.clone();
        for j in 0..gh {
            for i in 0..gw {
                if prev[j * gw + i].is_finite() {
                    continue;
                }
                let mut s = 0.0;
                let mut n = 0;
                for (di, dj) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (a, b) = (i as i64 + di, j as i64 + dj);
                    if a >= 0 && b >= 0 && (a as usize) < gw && (b as usize) < gh {
                        let u = prev[b as usize * gw + a as usize];
                        if u.is_finite() {
                            s += u;
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    out[j * gw + i] = s / n as f32;
                }
            }
        }
    }
    out.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0);
    out
}

/// 3x3 median (outliers: blocks over a change) then 3x3 mean.
fn smooth(v: &[f32], gw: usize, gh: usize) -> Vec<f32> {
    let nb = |v: &[f32], i: usize, j: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(9);
        for b in j.saturating_sub(1)..=(j + 1).min(gh - 1) {
            for a in i.saturating_sub(1)..=(i + 1).min(gw - 1) {
                out.push(v[b * gw + a]);
            }
        }
        out
    };
    let med: Vec<f32> = (0..gw * gh)
        .map(|k| median(&mut nb(v, k % gw, k / gw)))
        .collect();
    (0..gw * gh)
        .map(|k| {
            let n = nb(&med, k % gw, k / gw);
            n.iter().sum::<f32>() / n.len() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_small_shift_and_ignores_a_changed_block() {
        let (w, h) = (200usize, 120usize);
        let tex = |x: f32, y: f32| {
            1.0 + 0.5 * (x * 0.37).sin() * (y * 0.23).cos() + 0.3 * (x * 0.11 + y * 0.19).sin()
        };
        let mut e = Plane::new(w, h);
        let mut x = Plane::new(w, h);
        for yy in 0..h {
            for xx in 0..w {
                e.set(xx, yy, tex(xx as f32, yy as f32));
                // The exit content sits 1.5 px right and 2 px down, with a changed block.
                let mut v = tex(xx as f32 - 1.5, yy as f32 - 2.0);
                if (80..120).contains(&xx) && (40..80).contains(&yy) {
                    v = 3.0;
                }
                x.set(xx, yy, v);
            }
        }
        let roi = Roi {
            rects: vec![[10, 10, 190, 110]],
            w,
            h,
        };
        let f = estimate(&e, &x, &roi);
        for (px, py) in [(40.0, 30.0), (160.0, 90.0), (30.0, 100.0), (170.0, 20.0)] {
            let (dx, dy) = f.at(px, py);
            assert!(
                (dx - 1.5).abs() < 0.35 && (dy - 2.0).abs() < 0.35,
                "({px},{py}): {dx} {dy}"
            );
        }
        assert!(f.max_abs() <= 3.5);
    }
}
