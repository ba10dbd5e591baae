//! The simulated line scanners: detector geometry, the truck's varying speed through the
//! beam, Beer-Lambert transmission, point spread, scatter, photon and read noise, detector
//! row defects and the 16-bit output. It turns projection shapes into pixels; it must never
//! build scenes, choose goods or write files.

use rand::{Rng, SeedableRng};

use super::geom::{raster, Grid, Kind, Prim};
use super::{uni, SimRng};

/// One scanner model as installed at a site (its detector defects are fixed by `seed`).
#[derive(Clone, Debug)]
pub(crate) struct ScannerModel {
    /// Short code in the scanner id, e.g. "P1".
    pub code: &'static str,
    pub model: &'static str,
    pub energy_mev: f32,
    /// Detector row pitch at the object (mm) at resolution scale 1.
    pub pitch_v: f32,
    /// Horizontal sampling at the nominal truck speed (mm per column) at scale 1.
    pub pitch_h: f32,
    pub rows: usize,
    /// Height above the road of the bottom edge of the lowest row (mm).
    pub bottom_mm: f32,
    /// Counts for an unobstructed beam, above the dark offset.
    pub gain: f32,
    pub offset: f32,
    pub gamma: f32,
    /// Photons reaching one native pixel through air (sets the quantum noise).
    pub photons_air: f32,
    pub read_noise: f32,
    pub row_gain_sigma: f32,
    pub module_rows: usize,
    pub module_gain_sigma: f32,
    /// Linac pulse-to-pulse dose jitter left after reference-detector correction.
    pub pulse_sigma: f32,
    pub dead_rows: usize,
    pub hot_rows: usize,
    /// Detector cross-talk along the column (mm, Gaussian sigma).
    pub psf_v_mm: f32,
    /// Afterglow and motion blur along the scan (columns, Gaussian sigma).
    pub psf_h_px: f32,
    /// Forward scatter reaching the detector, as a share of the local mean transmission.
    pub scatter: f32,
    /// Optical depth of what lies below road level (portal pit, rails).
    pub ground_od: f32,
    pub seed: u64,
}

impl ScannerModel {
    /// A drive-through portal at a sea port.
    pub fn portal(seed: u64) -> Self {
        Self {
            code: "P1",
            model: "RX-Portal 6MV",
            energy_mev: 6.0,
            pitch_v: 4.4,
            pitch_h: 3.6,
            rows: 1088,
            bottom_mm: -70.0,
            gain: 59_300.0,
            offset: 420.0,
            gamma: 1.0,
            photons_air: 50_000.0,
            read_noise: 6.0,
            row_gain_sigma: 0.003,
            module_rows: 32,
            module_gain_sigma: 0.004,
            pulse_sigma: 0.0025,
            dead_rows: 1,
            hot_rows: 0,
            psf_v_mm: 3.0,
            psf_h_px: 0.7,
            scatter: 0.004,
            ground_od: 7.0,
            seed,
        }
    }

    /// A relocatable gantry at the same port, on another lane.
    pub fn gantry(seed: u64) -> Self {
        Self {
            code: "P2",
            model: "GT-Gantry 4MV",
            energy_mev: 4.0,
            pitch_v: 4.8,
            pitch_h: 4.2,
            rows: 1000,
            bottom_mm: -20.0,
            gain: 59_600.0,
            offset: 260.0,
            gamma: 0.96,
            photons_air: 35_000.0,
            read_noise: 9.0,
            row_gain_sigma: 0.004,
            module_rows: 16,
            module_gain_sigma: 0.006,
            pulse_sigma: 0.004,
            dead_rows: 0,
            hot_rows: 1,
            psf_v_mm: 3.5,
            psf_h_px: 0.9,
            scatter: 0.006,
            ground_od: 0.0,
            seed,
        }
    }

    /// A truck-mounted mobile scanner at a border crossing.
    pub fn mobile(seed: u64) -> Self {
        Self {
            code: "M1",
            model: "MV-Mobile 4.5MV",
            energy_mev: 4.5,
            pitch_v: 5.0,
            pitch_h: 4.0,
            rows: 960,
            bottom_mm: 90.0,
            gain: 56_200.0,
            offset: 1_150.0,
            gamma: 1.04,
            photons_air: 20_000.0,
            read_noise: 14.0,
            row_gain_sigma: 0.005,
            module_rows: 24,
            module_gain_sigma: 0.008,
            pulse_sigma: 0.005,
            dead_rows: 2,
            hot_rows: 1,
            psf_v_mm: 4.5,
            psf_h_px: 1.1,
            scatter: 0.008,
            ground_od: 0.0,
            seed,
        }
    }

    /// A fine-pitch drive-through portal on the second lane of a border crossing: more,
    /// smaller detector rows than the port's scanners, a thicker pit cover.
    pub fn fine_portal(seed: u64) -> Self {
        Self {
            code: "P3",
            model: "RX-Portal 6MV HD",
            energy_mev: 6.0,
            pitch_v: 4.2,
            pitch_h: 3.8,
            rows: 1150,
            bottom_mm: -40.0,
            gain: 61_000.0,
            offset: 780.0,
            gamma: 0.98,
            photons_air: 42_000.0,
            read_noise: 8.0,
            row_gain_sigma: 0.004,
            module_rows: 32,
            module_gain_sigma: 0.005,
            pulse_sigma: 0.003,
            dead_rows: 1,
            hot_rows: 1,
            psf_v_mm: 3.2,
            psf_h_px: 0.8,
            scatter: 0.005,
            ground_od: 5.0,
            seed,
        }
    }

    /// The same scanner on another day: gain, dark offset and response curve drift between
    /// calibrations (by `pass`'s drift factors).
    pub fn drifted(&self, pass: &Pass) -> Self {
        Self {
            gain: self.gain * pass.gain_k,
            offset: self.offset * pass.offset_k,
            gamma: self.gamma + pass.gamma_d,
            ..self.clone()
        }
    }

    /// Output rows and their pitch at `scale` (coverage is kept; pitch follows).
    pub fn rows_at(&self, scale: f32) -> (usize, f32) {
        let n = ((self.rows as f32 * scale).round() as usize).max(16);
        (n, self.pitch_v * self.rows as f32 / n as f32)
    }

    /// Nominal horizontal pixel size at `scale` (what the sidecar reports).
    pub fn pitch_h_at(&self, scale: f32) -> f32 {
        self.pitch_h / scale
    }

    /// Per output row: gain and additive counts, from the native detector's defects binned
    /// down to the output rows.
    fn row_response(&self, out_rows: usize) -> (Vec<f32>, Vec<f32>) {
        let mut r = SimRng::seed_from_u64(self.seed);
        let n = self.rows;
        let modules: Vec<f32> = (0..n.div_ceil(self.module_rows))
            .map(|_| 1.0 + gauss(&mut r) * self.module_gain_sigma)
            .collect();
        let ph = uni(&mut r, 0.0, 6.0);
        let mut gain: Vec<f32> = (0..n)
            .map(|i| {
                let smooth = 0.006 * (i as f32 / n as f32 * 3.1 + ph).sin();
                modules[i / self.module_rows] * (1.0 + gauss(&mut r) * self.row_gain_sigma + smooth)
            })
            .collect();
        let mut add = vec![0.0f32; n];
        for _ in 0..self.dead_rows {
            let i = r.random_range(20..n - 20);
            // Under-corrected rather than fully dead: a faint dark line.
            gain[i] *= uni(&mut r, 0.75, 0.92);
        }
        for _ in 0..self.hot_rows {
            let i = r.random_range(20..n - 20);
            add[i] = uni(&mut r, 400.0, 1500.0);
        }
        let ratio = n as f32 / out_rows as f32;
        let mut g = Vec::with_capacity(out_rows);
        let mut a = Vec::with_capacity(out_rows);
        for o in 0..out_rows {
            let i0 = (o as f32 * ratio) as usize;
            let i1 = (((o + 1) as f32 * ratio) as usize).clamp(i0 + 1, n);
            let k = (i1 - i0) as f32;
            g.push(gain[i0..i1].iter().sum::<f32>() / k);
            a.push(add[i0..i1].iter().sum::<f32>() / k);
        }
        (g, a)
    }
}

/// One passage of a truck through a scanner: speed profile, air margins, direction.
#[derive(Clone, Debug)]
pub(crate) struct Pass {
    /// Relative speed at evenly spaced times (1.0 = nominal).
    pub knots: Vec<f32>,
    pub air_before: f32,
    pub air_after: f32,
    /// The image shows the truck from the other side (cab on the right).
    pub mirrored: bool,
    pub noise_seed: u64,
    /// Vertical magnification of the fan beam: a truck driving nearer the source looks
    /// taller (a few per cent either way); the sidecar still reports the nominal pitch.
    pub mag: f32,
    /// Calibration drift of this day: gain factor, dark offset factor, gamma change.
    pub gain_k: f32,
    pub offset_k: f32,
    pub gamma_d: f32,
}

impl Pass {
    pub fn random(rng: &mut SimRng, mirrored: bool) -> Self {
        let n = rng.random_range(3..=7);
        let base = uni(rng, 0.9, 1.1);
        let knots = (0..n)
            .map(|_| (base + uni(rng, -0.13, 0.13)).clamp(0.81, 1.19))
            .collect();
        Self {
            knots,
            air_before: uni(rng, 400.0, 2600.0),
            air_after: uni(rng, 400.0, 3000.0),
            mirrored,
            noise_seed: rng.random(),
            mag: uni(rng, 0.96, 1.04),
            gain_k: uni(rng, 0.96, 1.04),
            offset_k: uni(rng, 0.8, 1.25),
            gamma_d: uni(rng, -0.02, 0.02),
        }
    }

    /// A pass at nominal speed with no magnification or drift (tests).
    #[cfg(test)]
    pub fn nominal(mirrored: bool) -> Self {
        Self {
            knots: vec![1.0],
            air_before: 1000.0,
            air_after: 1000.0,
            mirrored,
            noise_seed: 1,
            mag: 1.0,
            gain_k: 1.0,
            offset_k: 1.0,
            gamma_d: 0.0,
        }
    }

    /// Relative speed at normalised time `u` (Catmull-Rom through the knots, clamped).
    fn speed(&self, u: f32) -> f32 {
        let k = &self.knots;
        let n = k.len();
        if n == 1 {
            return k[0];
        }
        let t = u.clamp(0.0, 1.0) * (n - 1) as f32;
        let i = (t.floor() as usize).min(n - 2);
        let f = t - i as f32;
        let p0 = k[i.saturating_sub(1)];
        let (p1, p2) = (k[i], k[i + 1]);
        let p3 = k[(i + 2).min(n - 1)];
        let v = 0.5
            * (2.0 * p1
                + (-p0 + p2) * f
                + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * f * f
                + (-p0 + 3.0 * p1 - 3.0 * p2 + p3) * f * f * f);
        v.clamp(0.8, 1.2)
    }
}

/// Where each column and row of a scan of a truck `length` mm long falls on the truck.
pub(crate) fn make_grid(sc: &ScannerModel, scale: f32, length: f32, pass: &Pass) -> Grid {
    let ph = sc.pitch_h_at(scale);
    let (rows, pv_nominal) = sc.rows_at(scale);
    // Magnification scales the object about the middle of the detector column.
    let pv = pv_nominal / pass.mag;
    let mid = sc.bottom_mm + 0.5 * rows as f32 * pv_nominal;
    let end = length + pass.air_after;
    let n_est = (pass.air_before + end) / ph;
    let mut xe = Vec::with_capacity(n_est as usize * 5 / 4 + 2);
    let mut x = -pass.air_before;
    xe.push(x);
    while x < end {
        x += ph * pass.speed(xe.len() as f32 / n_est);
        xe.push(x);
    }
    Grid {
        w: xe.len() - 1,
        h: rows,
        xe,
        y_top: mid + 0.5 * rows as f32 * pv,
        pv,
    }
}

/// A cheap generator for per-pixel noise, seeded per row so bands can run in parallel and
/// stay deterministic.
struct SplitMix(u64);

impl SplitMix {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Approximately standard normal (Irwin-Hall of four 16-bit uniforms): image noise
    /// does not need the tails.
    #[inline]
    fn gauss(&mut self) -> f32 {
        let v = self.next();
        let s = (v & 0xffff) + ((v >> 16) & 0xffff) + ((v >> 32) & 0xffff) + (v >> 48);
        (s as f32 / 65535.0 - 2.0) * 1.732_050_8
    }
}

fn gauss(r: &mut SimRng) -> f32 {
    let mut s = SplitMix(r.random());
    s.gauss()
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// Runs `f(first_row, band)` over horizontal bands of `buf` (rows of `w`), in parallel.
fn bands<F>(buf: &mut [f32], w: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let h = buf.len() / w;
    let n = threads();
    let rows_per = h.div_ceil(n).max(1);
    if n == 1 || h < 64 {
        f(0, buf);
        return;
    }
    std::thread::scope(|s| {
        for (i, band) in buf.chunks_mut(rows_per * w).enumerate() {
            let f = &f;
            s.spawn(move || f(i * rows_per, band));
        }
    });
}

fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i32;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

fn blur_h(buf: &mut [f32], w: usize, sigma: f32) {
    if sigma < 0.3 {
        return;
    }
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    bands(buf, w, |_, band| {
        let mut tmp = vec![0.0f32; w];
        for row in band.chunks_mut(w) {
            for (x, t) in tmp.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let xi = (x as isize + j as isize - r).clamp(0, w as isize - 1) as usize;
                    acc += kv * row[xi];
                }
                *t = acc;
            }
            row.copy_from_slice(&tmp);
        }
    });
}

fn blur_v(buf: &mut [f32], w: usize, sigma: f32) {
    if sigma < 0.3 {
        return;
    }
    let h = buf.len() / w;
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    let src = buf.to_vec();
    bands(buf, w, |r0, band| {
        for (i, row) in band.chunks_mut(w).enumerate() {
            let y = (r0 + i) as isize;
            row.iter_mut().for_each(|v| *v = 0.0);
            for (j, kv) in k.iter().enumerate() {
                let yi = (y + j as isize - r).clamp(0, h as isize - 1) as usize;
                let s = &src[yi * w..(yi + 1) * w];
                for (o, v) in row.iter_mut().zip(s) {
                    *o += kv * v;
                }
            }
        }
    });
}

/// Box mean over (2rx+1) × (2ry+1) by running sums: the broad halo of forward scatter.
fn box_mean(src: &[f32], w: usize, rx: usize, ry: usize) -> Vec<f32> {
    let h = src.len() / w;
    let mut tmp = vec![0.0f32; src.len()];
    for (row, out) in src.chunks(w).zip(tmp.chunks_mut(w)) {
        let mut acc = 0.0f32;
        let mut cnt = 0usize;
        for v in row.iter().take(rx.min(w)) {
            acc += v;
            cnt += 1;
        }
        for x in 0..w {
            if x + rx < w {
                acc += row[x + rx];
                cnt += 1;
            }
            if x > rx {
                acc -= row[x - rx - 1];
                cnt -= 1;
            }
            out[x] = acc / cnt as f32;
        }
    }
    let mut out = vec![0.0f32; src.len()];
    let mut acc = vec![0.0f32; w];
    let mut cnt = 0usize;
    for y in 0..ry.min(h) {
        for (a, v) in acc.iter_mut().zip(&tmp[y * w..(y + 1) * w]) {
            *a += v;
        }
        cnt += 1;
    }
    for y in 0..h {
        if y + ry < h {
            for (a, v) in acc.iter_mut().zip(&tmp[(y + ry) * w..(y + ry + 1) * w]) {
                *a += v;
            }
            cnt += 1;
        }
        if y > ry {
            for (a, v) in acc.iter_mut().zip(&tmp[(y - ry - 1) * w..(y - ry) * w]) {
                *a -= v;
            }
            cnt -= 1;
        }
        let inv = 1.0 / cnt as f32;
        for (o, a) in out[y * w..(y + 1) * w].iter_mut().zip(&acc) {
            *o = a * inv;
        }
    }
    out
}

/// Transmission (0..1) of every pixel: shapes splatted as optical depth, then Beer-Lambert.
pub(crate) fn transmission(prims: &[Prim], sc: &ScannerModel, g: &Grid) -> Vec<f32> {
    let ground = (sc.ground_od > 0.0).then(|| {
        let x0 = g.xe[0] - 1000.0;
        let x1 = g.xe[g.w] + 1000.0;
        Prim::new(
            Kind::Rect {
                hw: 0.5 * (x1 - x0),
                hh: 1500.0,
            },
            0.5 * (x0 + x1),
            -1500.0,
            sc.ground_od,
        )
    });
    let mut t = vec![0.0f32; g.w * g.h];
    bands(&mut t, g.w, |r0, band| {
        for p in prims.iter().chain(ground.iter()) {
            raster(band, g, r0, p);
        }
        // Holes are drawn as negative depth inside their part; rounding at their edges
        // must not make anything brighter than air.
        for v in band.iter_mut() {
            *v = (-v.max(0.0)).exp();
        }
    });
    t
}

/// Renders a scan: transmission, detector blur, scatter, noise (when `noisy`), row and
/// pulse gains, gamma, 16-bit counts; columns reversed when the pass is mirrored.
pub(crate) fn render(
    prims: &[Prim],
    sc: &ScannerModel,
    scale: f32,
    g: &Grid,
    pass: &Pass,
    noisy: bool,
) -> Vec<u16> {
    let w = g.w;
    let mut t = transmission(prims, sc, g);
    blur_v(&mut t, w, sc.psf_v_mm / g.pv);
    blur_h(&mut t, w, sc.psf_h_px * scale.min(1.0));
    let rx = (250.0 / sc.pitch_h_at(scale)).round().max(1.0) as usize;
    let ry = (250.0 / g.pv).round().max(1.0) as usize;
    let halo = box_mean(&t, w, rx, ry);
    let (row_gain, row_add) = sc.row_response(g.h);
    let mut pr = SimRng::seed_from_u64(pass.noise_seed);
    let pulse: Vec<f32> = (0..w)
        .map(|_| {
            if noisy {
                1.0 + gauss(&mut pr) * sc.pulse_sigma
            } else {
                1.0
            }
        })
        .collect();
    let photons = sc.photons_air / (scale * scale);
    let floor = 6e-4f32;
    let mut out = vec![0u16; w * g.h];
    let rows_out: Vec<(usize, &mut [u16])> = out.chunks_mut(w).enumerate().collect();
    let n = threads();
    let per = rows_out.len().div_ceil(n).max(1);
    let mut groups: Vec<Vec<(usize, &mut [u16])>> = Vec::new();
    let mut it = rows_out.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    let work = |group: Vec<(usize, &mut [u16])>| {
        for (r, row) in group {
            let mut rng =
                SplitMix(pass.noise_seed ^ (r as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let src = &t[r * w..(r + 1) * w];
            let hal = &halo[r * w..(r + 1) * w];
            for c in 0..w {
                let mut v = src[c] + sc.scatter * hal[c] + floor;
                if noisy {
                    let n = photons * v;
                    v = ((n + n.sqrt() * rng.gauss()) / photons).max(0.0);
                }
                let resp = if sc.gamma == 1.0 { v } else { v.powf(sc.gamma) };
                let mut counts = sc.offset + sc.gain * row_gain[r] * pulse[c] * resp + row_add[r];
                if noisy {
                    counts += sc.read_noise * rng.gauss();
                }
                row[c] = counts.round().clamp(0.0, 65535.0) as u16;
            }
            if pass.mirrored {
                row.reverse();
            }
        }
    };
    if groups.len() <= 1 {
        groups.into_iter().for_each(work);
    } else {
        std::thread::scope(|s| {
            for grp in groups {
                let work = &work;
                s.spawn(move || work(grp));
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_profile_is_bounded_and_monotonic_grid() {
        let mut r = SimRng::seed_from_u64(3);
        for _ in 0..20 {
            let p = Pass::random(&mut r, false);
            for i in 0..=100 {
                let v = p.speed(i as f32 / 100.0);
                assert!((0.8..=1.2).contains(&v), "{v}");
            }
            let g = make_grid(&ScannerModel::portal(1), 0.25, 15000.0, &p);
            assert!(g.xe.windows(2).all(|w| w[1] > w[0]));
            assert!(g.xe[0] < 0.0 && *g.xe.last().unwrap() > 15000.0);
        }
    }

    #[test]
    fn box_mean_of_constant_is_constant() {
        let v = vec![2.0f32; 40 * 30];
        let m = box_mean(&v, 40, 5, 7);
        assert!(m.iter().all(|x| (x - 2.0).abs() < 1e-5));
    }

    #[test]
    fn gauss_has_unit_variance() {
        let mut s = SplitMix(7);
        let n = 20000;
        let v: Vec<f32> = (0..n).map(|_| s.gauss()).collect();
        let mean = v.iter().sum::<f32>() / n as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
