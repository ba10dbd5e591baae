//! A plain row-major `f32` image (the transit check works in attenuation, a float), with
//! the few separable operations the check needs. Pure functions, no I/O.

/// Row-major `w` x `h` floats.
#[derive(Clone, PartialEq)]
pub struct Plane {
    pub w: usize,
    pub h: usize,
    pub v: Vec<f32>,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plane({}x{})", self.w, self.h)
    }
}

impl Plane {
    pub fn new(w: usize, h: usize) -> Self {
        Plane {
            w,
            h,
            v: vec![0.0; w * h],
        }
    }

    pub fn filled(w: usize, h: usize, value: f32) -> Self {
        Plane {
            w,
            h,
            v: vec![value; w * h],
        }
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.v[y * self.w + x]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, value: f32) {
        self.v[y * self.w + x] = value;
    }

    #[inline]
    pub fn row(&self, y: usize) -> &[f32] {
        &self.v[y * self.w..(y + 1) * self.w]
    }

    #[inline]
    pub fn row_mut(&mut self, y: usize) -> &mut [f32] {
        &mut self.v[y * self.w..(y + 1) * self.w]
    }

    /// Bilinear sample at (x, y) in pixel-centre coordinates; outside the plane the
    /// nearest edge value is used.
    #[inline]
    pub fn sample(&self, x: f32, y: f32) -> f32 {
        let xm = (self.w - 1) as f32;
        let ym = (self.h - 1) as f32;
        let x = x.clamp(0.0, xm);
        let y = y.clamp(0.0, ym);
        let x0 = x.floor() as usize;
        let y0 = y.floor() as usize;
        let x1 = (x0 + 1).min(self.w - 1);
        let y1 = (y0 + 1).min(self.h - 1);
        let fx = x - x0 as f32;
        let fy = y - y0 as f32;
        let a = self.at(x0, y0) + (self.at(x1, y0) - self.at(x0, y0)) * fx;
        let b = self.at(x0, y1) + (self.at(x1, y1) - self.at(x0, y1)) * fx;
        a + (b - a) * fy
    }

    /// The rectangle `x0..x1` x `y0..y1`.
    pub fn crop(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Plane {
        let (w, h) = (x1 - x0, y1 - y0);
        let mut out = Plane::new(w, h);
        for y in 0..h {
            out.row_mut(y)
                .copy_from_slice(&self.v[(y + y0) * self.w + x0..(y + y0) * self.w + x1]);
        }
        out
    }

    /// Mirror left-right.
    pub fn flipped_h(&self) -> Plane {
        let mut out = self.clone();
        for y in 0..self.h {
            out.row_mut(y).reverse();
        }
        out
    }

    /// Box mean over (2rx+1) x (2ry+1), by running sums (edges use the pixels that exist).
    pub fn box_mean(&self, rx: usize, ry: usize) -> Plane {
        let (w, h) = (self.w, self.h);
        let mut tmp = Plane::new(w, h);
        for y in 0..h {
            running_mean(self.row(y), tmp.row_mut(y), rx);
        }
        let mut out = Plane::new(w, h);
        let mut col = vec![0.0f32; h];
        let mut res = vec![0.0f32; h];
        for x in 0..w {
            for (y, c) in col.iter_mut().enumerate() {
                *c = tmp.v[y * w + x];
            }
            running_mean(&col, &mut res, ry);
            for (y, r) in res.iter().enumerate() {
                out.v[y * w + x] = *r;
            }
        }
        out
    }

    /// Separable min (`max = false`) or max filter over (2r+1) x (2r+1).
    #[allow(clippy::needless_range_loop)]
    pub fn min_max_filter(&self, r: usize, max: bool) -> Plane {
        let (w, h) = (self.w, self.h);
        let pick = |a: f32, b: f32| if max { a.max(b) } else { a.min(b) };
        let mut tmp = Plane::new(w, h);
        for y in 0..h {
            let src = self.row(y);
            let dst = &mut tmp.v[y * w..(y + 1) * w];
            for x in 0..w {
                let lo = x.saturating_sub(r);
                let hi = (x + r).min(w - 1);
                let mut m = src[lo];
                for &v in &src[lo + 1..=hi] {
                    m = pick(m, v);
                }
                dst[x] = m;
            }
        }
        let mut out = Plane::new(w, h);
        for y in 0..h {
            let lo = y.saturating_sub(r);
            let hi = (y + r).min(h - 1);
            let dst = &mut out.v[y * w..(y + 1) * w];
            dst.copy_from_slice(&tmp.v[lo * w..(lo + 1) * w]);
            for yy in lo + 1..=hi {
                let src = &tmp.v[yy * w..(yy + 1) * w];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = pick(*d, s);
                }
            }
        }
        out
    }
}

/// Mean over a sliding window of 2r+1 samples, shrinking at the ends.
fn running_mean(src: &[f32], dst: &mut [f32], r: usize) {
    let n = src.len();
    if n == 0 {
        return;
    }
    let mut acc = 0.0f64;
    let mut cnt = 0usize;
    for &v in src.iter().take(r.min(n)) {
        acc += v as f64;
        cnt += 1;
    }
    for x in 0..n {
        if x + r < n {
            acc += src[x + r] as f64;
            cnt += 1;
        }
        if x > r {
            acc -= src[x - r - 1] as f64;
            cnt -= 1;
        }
        dst[x] = (acc / cnt as f64) as f32;
    }
}

/// Median of a slice (reorders it); 0 for an empty slice.
pub fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// The `q` quantile (0..1) of a slice (reorders it); 0 for an empty slice.
pub fn quantile(v: &mut [f32], q: f32) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f32 * q.clamp(0.0, 1.0)).round() as usize;
    let (_, m, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_mean_and_min_max_of_a_step() {
        let mut p = Plane::new(9, 5);
        for y in 0..5 {
            for x in 5..9 {
                p.set(x, y, 1.0);
            }
        }
        let m = p.box_mean(1, 1);
        assert!((m.at(4, 2) - 1.0 / 3.0).abs() < 1e-6);
        assert!((m.at(0, 0)).abs() < 1e-6 && (m.at(8, 4) - 1.0).abs() < 1e-6);
        let mx = p.min_max_filter(1, true);
        let mn = p.min_max_filter(1, false);
        assert_eq!((mx.at(4, 2), mx.at(3, 2)), (1.0, 0.0));
        assert_eq!((mn.at(5, 2), mn.at(6, 2)), (0.0, 1.0));
        assert!((p.sample(4.5, 2.0) - 0.5).abs() < 1e-6);
        assert_eq!(p.flipped_h().at(0, 0), 1.0);
    }

    #[test]
    fn median_and_quantile() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
