//! Dynamic time warping of two sequences of column features: the monotonic, non-rigid
//! horizontal correspondence between two line-scanner images whose truck speed varied
//! differently. Steps are a diagonal (1,1) or a stretch (3,2) / (2,3) that passes through
//! two diagonal cells: the local slope stays within [2/3, 3/2], which is what two passes
//! whose speeds each vary by ±20 % can produce, and an object present in only one scan can
//! neither be squeezed into one column of the other nor stretched over its neighbours (it
//! has to show up as a difference). A truck that stops and goes in one portal stretches
//! part of its load several times over: steep steps (k columns against one, up to
//! `max_slope`) follow it, each extra column paying a penalty, so they are taken only
//! where the images clearly ask for them. Every matched cell costs its distance once and a
//! stretch costs a penalty on top. A band restricts each row to a window of columns (the
//! coarse pass runs with the full band, the fine pass around the coarse path), and the ends
//! are free: a path may start and end anywhere on the border by paying, for each column it
//! leaves out, that column's distance to air, so air margins of different lengths cost
//! nothing and a tractor present in only one scan costs what it holds. Pure computation.

/// `n` columns of `b` features each, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Feats {
    pub n: usize,
    pub b: usize,
    pub v: Vec<f32>,
}

impl Feats {
    pub fn new(n: usize, b: usize) -> Self {
        Feats {
            n,
            b,
            v: vec![0.0; n * b],
        }
    }

    #[inline]
    pub fn col(&self, i: usize) -> &[f32] {
        &self.v[i * self.b..(i + 1) * self.b]
    }

    #[inline]
    pub fn col_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.v[i * self.b..(i + 1) * self.b]
    }

    /// Means of `k` consecutive columns (the last group may be shorter).
    pub fn downsample(&self, k: usize) -> Feats {
        let k = k.max(1);
        let n = self.n.div_ceil(k);
        let mut out = Feats::new(n, self.b);
        for i in 0..n {
            let (a, z) = (i * k, ((i + 1) * k).min(self.n));
            let inv = 1.0 / (z - a) as f32;
            let dst = &mut out.v[i * self.b..(i + 1) * self.b];
            for c in a..z {
                for (d, s) in dst.iter_mut().zip(&self.v[c * self.b..(c + 1) * self.b]) {
                    *d += s * inv;
                }
            }
        }
        out
    }

    /// The columns in reverse order (a mirrored scan).
    pub fn reversed(&self) -> Feats {
        let mut out = Feats::new(self.n, self.b);
        for i in 0..self.n {
            out.col_mut(i).copy_from_slice(self.col(self.n - 1 - i));
        }
        out
    }
}

#[inline]
fn l1(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
}

#[derive(Debug, Clone, Copy)]
pub struct DtwParams {
    /// Added to each non-diagonal step.
    pub step_penalty: f32,
    /// Multiplies a left-out column's distance to air.
    pub skip_weight: f32,
    /// Free ends (start and end anywhere on the border, paying for what is left out);
    /// otherwise the path runs from the first pair to the last.
    pub free_ends: bool,
    /// Steepest local slope allowed beyond the stretch steps' 3/2: with 2 or more, steps
    /// of `k` columns of one sequence against one of the other (k = 2..=`max_slope`) are
    /// allowed too, each extra column costing `steep_penalty` (a truck that stops and
    /// goes in one scanner and not in the other stretches a stretch of its load several
    /// times over).
    pub max_slope: usize,
    pub steep_penalty: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DtwPath {
    /// Matched (row of `a`, row of `b`) pairs, both non-decreasing, from start to end.
    pub path: Vec<(usize, usize)>,
    /// Total cost divided by `a.n + b.n`.
    pub cost: f32,
}

/// Rows `i` of `a` may match columns `lo[i]..=hi[i]` of `b`; both bounds non-decreasing.
#[derive(Debug, Clone)]
pub struct Band {
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
}

impl Band {
    pub fn full(n: usize, m: usize) -> Band {
        Band {
            lo: vec![0; n],
            hi: vec![m.saturating_sub(1); n],
        }
    }

    /// A band of radius `r` around `coarse` (a path between sequences `k` times shorter),
    /// for sequences of `n` and `m`.
    pub fn around(coarse: &[(usize, usize)], k: usize, n: usize, m: usize, r: usize) -> Band {
        let nc = n.div_ceil(k);
        let mut clo = vec![usize::MAX; nc];
        let mut chi = vec![0usize; nc];
        for &(i, j) in coarse {
            if i < nc {
                clo[i] = clo[i].min(j);
                chi[i] = chi[i].max(j);
            }
        }
        // Rows the coarse path skipped take their neighbours' windows.
        for i in 1..nc {
            if clo[i] == usize::MAX {
                clo[i] = clo[i - 1].min(chi[i - 1]);
                chi[i] = chi[i - 1];
            }
        }
        for i in (0..nc.saturating_sub(1)).rev() {
            if clo[i] == usize::MAX {
                clo[i] = clo[i + 1];
                chi[i] = clo[i + 1];
            }
        }
        let mut lo = vec![0usize; n];
        let mut hi = vec![0usize; n];
        for i in 0..n {
            let c = (i / k).min(nc - 1);
            let a = if clo[c] == usize::MAX { 0 } else { clo[c] * k };
            let z = if clo[c] == usize::MAX {
                m - 1
            } else {
                (chi[c] * k + k - 1).min(m - 1)
            };
            lo[i] = a.saturating_sub(r);
            hi[i] = (z + r).min(m - 1);
        }
        for i in 1..n {
            lo[i] = lo[i].max(lo[i - 1]);
        }
        for i in (0..n - 1).rev() {
            hi[i] = hi[i].min(hi[i + 1]);
        }
        for i in 0..n {
            hi[i] = hi[i].max(lo[i]);
        }
        Band { lo, hi }
    }
}

const START: u8 = 0;
const DIAG: u8 = 1;
/// From (i-3, j-2): one step in `a` alone, then two diagonal.
const UP: u8 = 2;
/// From (i-2, j-3): one step in `b` alone, then two diagonal.
const LEFT: u8 = 3;
/// From (i-k, j-1): `k` - 1 steps in `a` alone, then a diagonal; move `STEEP_A + k`.
const STEEP_A: u8 = 10;
/// From (i-1, j-k): `k` - 1 steps in `b` alone, then a diagonal; move `STEEP_B + k`.
const STEEP_B: u8 = 40;

/// Warps `a` onto `b` within `band`. `None` if either sequence is empty.
#[allow(clippy::needless_range_loop)] // cells are addressed by (i, j) throughout
pub fn dtw(a: &Feats, b: &Feats, band: &Band, p: &DtwParams) -> Option<DtwPath> {
    let (n, m) = (a.n, b.n);
    if n == 0 || m == 0 || a.b != b.b {
        return None;
    }
    let air = vec![0.0f32; a.b];
    let skip_a: Vec<f32> = (0..n).map(|i| p.skip_weight * l1(a.col(i), &air)).collect();
    let skip_b: Vec<f32> = (0..m).map(|j| p.skip_weight * l1(b.col(j), &air)).collect();
    let prefix = |s: &[f32]| {
        let mut v = vec![0.0f32; s.len() + 1];
        for (i, x) in s.iter().enumerate() {
            v[i + 1] = v[i] + x;
        }
        v
    };
    let (pa, pb) = (prefix(&skip_a), prefix(&skip_b));

    let mut offs = Vec::with_capacity(n + 1);
    let mut total = 0usize;
    for i in 0..n {
        offs.push(total);
        total += band.hi[i] + 1 - band.lo[i];
    }
    offs.push(total);
    // Each cell's own distance is kept: a stretch step reads two earlier diagonal cells.
    let mut dist = vec![f32::INFINITY; total];
    let mut cost = vec![f32::INFINITY; total];
    let mut from = vec![START; total];
    let idx = |i: usize, j: usize| -> Option<usize> {
        (j >= band.lo[i] && j <= band.hi[i]).then(|| offs[i] + j - band.lo[i])
    };
    let dd = |dist: &[f32], i: usize, j: usize| -> f32 {
        match idx(i, j) {
            Some(k) => dist[k],
            None => l1(a.col(i), b.col(j)),
        }
    };

    for i in 0..n {
        for j in band.lo[i]..=band.hi[i] {
            let d = l1(a.col(i), b.col(j));
            let k = offs[i] + j - band.lo[i];
            dist[k] = d;
            let mut best = f32::INFINITY;
            let mut mv = START;
            if (i == 0 || j == 0) && (p.free_ends || (i == 0 && j == 0)) {
                best = pa[i] + pb[j];
            }
            if i > 0 && j > 0 {
                if let Some(q) = idx(i - 1, j - 1) {
                    if cost[q] < best {
                        best = cost[q];
                        mv = DIAG;
                    }
                }
            }
            if i >= 3 && j >= 2 {
                if let Some(q) = idx(i - 3, j - 2) {
                    let c = cost[q]
                        + dd(&dist, i - 2, j - 2)
                        + dd(&dist, i - 1, j - 1)
                        + p.step_penalty;
                    if c < best {
                        best = c;
                        mv = UP;
                    }
                }
            }
            if i >= 2 && j >= 3 {
                if let Some(q) = idx(i - 2, j - 3) {
                    let c = cost[q]
                        + dd(&dist, i - 2, j - 2)
                        + dd(&dist, i - 1, j - 1)
                        + p.step_penalty;
                    if c < best {
                        best = c;
                        mv = LEFT;
                    }
                }
            }
            for st in 2..=p.max_slope.min(STEEP_B as usize - STEEP_A as usize - 1) {
                if i >= st && j >= 1 {
                    if let Some(q) = idx(i - st, j - 1) {
                        let mut c = cost[q] + (st - 1) as f32 * p.steep_penalty;
                        for t in 1..st {
                            c += dd(&dist, i - t, j - 1);
                        }
                        if c < best {
                            best = c;
                            mv = STEEP_A + st as u8;
                        }
                    }
                }
                if j >= st && i >= 1 {
                    if let Some(q) = idx(i - 1, j - st) {
                        let mut c = cost[q] + (st - 1) as f32 * p.steep_penalty;
                        for t in 1..st {
                            c += dd(&dist, i - 1, j - t);
                        }
                        if c < best {
                            best = c;
                            mv = STEEP_B + st as u8;
                        }
                    }
                }
            }
            cost[k] = best + d;
            from[k] = mv;
        }
    }

    // Best end on the bottom or right border, paying for what it leaves out.
    let mut end = None;
    let mut best = f32::INFINITY;
    let mut consider = |i: usize, j: usize, cost: &[f32]| {
        if let Some(k) = idx(i, j) {
            let c = cost[k] + (pa[n] - pa[i + 1]) + (pb[m] - pb[j + 1]);
            if c < best {
                best = c;
                end = Some((i, j));
            }
        }
    };
    if p.free_ends {
        for j in band.lo[n - 1]..=band.hi[n - 1] {
            consider(n - 1, j, &cost);
        }
        for i in 0..n {
            if band.hi[i] == m - 1 {
                consider(i, m - 1, &cost);
            }
        }
    } else {
        consider(n - 1, m - 1, &cost);
    }
    if !best.is_finite() {
        return None;
    }
    let (mut i, mut j) = end?;
    let mut path = Vec::with_capacity(n + m);
    loop {
        path.push((i, j));
        let k = idx(i, j).expect("path stays in the band");
        match from[k] {
            DIAG => {
                i -= 1;
                j -= 1;
            }
            UP => {
                path.push((i - 1, j - 1));
                path.push((i - 2, j - 2));
                i -= 3;
                j -= 2;
            }
            LEFT => {
                path.push((i - 1, j - 1));
                path.push((i - 2, j - 2));
                i -= 2;
                j -= 3;
            }
            m if m > STEEP_B => {
                let st = (m - STEEP_B) as usize;
                for t in 1..st {
                    path.push((i - 1, j - t));
                }
                i -= 1;
                j -= st;
            }
            m if m > STEEP_A => {
                let st = (m - STEEP_A) as usize;
                for t in 1..st {
                    path.push((i - t, j - 1));
                }
                i -= st;
                j -= 1;
            }
            _ => break,
        }
    }
    path.reverse();
    Some(DtwPath {
        path,
        cost: best / (n + m) as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(vals: &[f32]) -> Feats {
        Feats {
            n: vals.len(),
            b: 1,
            v: vals.to_vec(),
        }
    }

    /// A bumpy signal sampled at positions `x(t)`.
    fn signal(x: impl Fn(f32) -> f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|t| {
                let u = x(t as f32);
                if !(20.0..180.0).contains(&u) {
                    0.0
                } else {
                    1.0 + (u * 0.21).sin() + 0.5 * (u * 0.057).cos()
                }
            })
            .collect()
    }

    #[test]
    fn recovers_a_nonuniform_stretch_with_different_margins() {
        // b samples the same object with a speed that changes by up to ±30 % (slope
        // 1 + 0.3 cos) and 15 more columns of air in front.
        let a = signal(|t| t, 200);
        let warp = |t: f32| {
            let u = t - 15.0;
            u + 7.5 * (u / 25.0).sin()
        };
        let b = signal(warp, 220);
        let p = DtwParams {
            step_penalty: 0.02,
            skip_weight: 1.0,
            free_ends: true,
            max_slope: 1,
            steep_penalty: 0.0,
        };
        let r = dtw(&feats(&a), &feats(&b), &Band::full(200, 220), &p).unwrap();
        // For each a column inside the object, the matched b column maps back within 2.
        let mut worst = 0.0f32;
        for &(i, j) in &r.path {
            if (30..170).contains(&i) {
                worst = worst.max((warp(j as f32) - i as f32).abs());
            }
        }
        assert!(worst <= 2.0, "worst {worst}");
    }

    /// The truck braked to a third of its speed for a while in `b`'s scanner: a stretch of
    /// the object three times as long there.
    fn stop_and_go(t: f32) -> f32 {
        match t {
            t if t < 60.0 => t,
            t if t < 150.0 => 60.0 + (t - 60.0) / 3.0,
            t => t - 60.0,
        }
    }

    #[test]
    fn follows_a_stop_and_go_stretch_only_with_steep_steps() {
        let a = signal(|t| t, 200);
        let b = signal(stop_and_go, 260);
        let worst = |max_slope: usize| {
            let p = DtwParams {
                step_penalty: 0.02,
                skip_weight: 1.0,
                free_ends: true,
                max_slope,
                steep_penalty: 0.05,
            };
            let r = dtw(&feats(&a), &feats(&b), &Band::full(200, 260), &p).unwrap();
            r.path
                .iter()
                .filter(|&&(i, _)| (30..170).contains(&i))
                .map(|&(i, j)| (stop_and_go(j as f32) - i as f32).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(worst(4) <= 2.0, "steep steps: worst {}", worst(4));
        assert!(worst(1) > 4.0, "slope 3/2 at most: worst {}", worst(1));
    }

    #[test]
    fn banded_pass_around_a_coarse_path_agrees_with_the_full_one() {
        let a = signal(|t| t, 200);
        let b = signal(|t| (t - 8.0) * 0.9, 230);
        let p = DtwParams {
            step_penalty: 0.02,
            skip_weight: 1.0,
            free_ends: true,
            max_slope: 1,
            steep_penalty: 0.0,
        };
        let (fa, fb) = (feats(&a), feats(&b));
        let full = dtw(&fa, &fb, &Band::full(200, 230), &p).unwrap();
        let coarse = dtw(
            &fa.downsample(4),
            &fb.downsample(4),
            &Band::full(50, 58),
            &p,
        )
        .unwrap();
        let band = Band::around(&coarse.path, 4, 200, 230, 6);
        let fine = dtw(&fa, &fb, &band, &p).unwrap();
        assert!((fine.cost - full.cost).abs() < 1e-3 * full.cost.max(1.0));
    }

    #[test]
    fn reversed_and_downsampled_features() {
        let f = feats(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(f.reversed().v, vec![5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(f.downsample(2).v, vec![1.5, 3.5, 5.0]);
    }
}
