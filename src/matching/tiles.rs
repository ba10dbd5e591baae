//! From a canonical transmission image to model input: air level, resampling to the
//! model's pixel size, attenuation, the cargo band (where the load sits, without the cab,
//! the chassis and the wheels), its fill (how much of it holds matter denser than a
//! container's walls) and the cargo tiles cut from it. Pure functions of their inputs.
//!
//! The cargo band is found from physics and geometry only, the same way for every scanner:
//! object extent from attenuation, the cab end from the sidecar's `cab_side` (or, when the
//! scanner does not say, the end whose object is lower), the load between the roof line and
//! 1.2 m above the bottom of the object. Scans from scanners with another geometry (a cab
//! longer than [`CAB_MM`]) need these constants revisited.

use super::photometry::Photometry;
use crate::imaging::Gray16;

/// Attenuation above which a pixel is part of the truck (not air).
const OBJECT_ATT: f32 = 0.15;
/// Attenuation above which a pixel holds more than a container's two steel walls: cargo.
pub const CARGO_ATT: f32 = 0.3;
/// Length of the cab and engine at the cab end, excluded from the band (mm).
pub const CAB_MM: f32 = 4500.0;
/// Roof and roof rails below the top of the object (mm).
const ROOF_MM: f32 = 150.0;
/// Deepest cargo below the top of the object: a high-cube container's inside (mm).
const LOAD_DEPTH_MM: f32 = 2500.0;
/// Wheels, chassis and deck above the bottom of the object (mm).
const UNDERCARRIAGE_MM: f32 = 1200.0;
/// A tile is embedded when at least this share of it is cargo.
const TILE_CARGO_SHARE: f32 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preproc {
    pub pixel_mm: f32,
    pub tile: usize,
    pub stride: usize,
    pub clip: [f32; 2],
    /// Whether the scan's dark level is measured and taken out first
    /// ([`super::photometry`]; contract `normalisation = "attenuation-dark"`).
    pub dark_level: bool,
}

/// The cargo band and what is in it, in working pixels (`pixel_mm` each).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub work_w: usize,
    pub work_h: usize,
    /// Air level of the source image (16-bit transmission value).
    pub air: u16,
    /// `[x0, y0, x1, y1]` (x1, y1 exclusive); `None` when no truck was found.
    pub band: Option<[usize; 4]>,
    /// Share of the band that is cargo (attenuation above [`CARGO_ATT`]).
    pub fill: f32,
    /// Cargo tiles, `n * tile * tile` attenuation values (NCHW, one channel).
    pub tiles: Vec<f32>,
    /// Top-left corner of each tile, in working pixels.
    pub positions: Vec<[usize; 2]>,
}

impl Prepared {
    pub fn tile_count(&self) -> usize {
        self.positions.len()
    }
}

/// The image's histogram: one count per 16-bit value.
pub fn histogram(px: &[u16]) -> Vec<u32> {
    let mut hist = vec![0u32; 65536];
    for &v in px {
        hist[usize::from(v)] += 1;
    }
    hist
}

/// The value at quantile `q` of the `n` pixels counted in `hist`.
pub fn hist_quantile(hist: &[u32], n: usize, q: f64) -> u16 {
    let target = (n as f64 * q) as u64;
    let mut acc = 0u64;
    for (v, &c) in hist.iter().enumerate() {
        acc += u64::from(c);
        if acc > target {
            return v as u16;
        }
    }
    u16::MAX
}

/// Quantile of the image taken as its air level: the open beam beside and above the truck.
pub const AIR_Q: f64 = 0.995;

/// The 99.5th percentile of the image: the open beam beside and above the truck.
pub fn air_level(px: &[u16]) -> u16 {
    hist_quantile(&histogram(px), px.len(), AIR_Q)
}

/// Box-filters `img` to `w`x`h` in the transmission domain (a coarser detector averages
/// transmitted intensity), then takes the attenuation against `ph`'s air and dark
/// levels, clipped.
fn resample_attenuation(
    img: &Gray16,
    w: usize,
    h: usize,
    clip: [f32; 2],
    ph: &Photometry,
) -> Vec<f32> {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let edges = |n_out: usize, n_in: usize| -> Vec<usize> {
        (0..=n_out).map(|i| i * n_in / n_out).collect()
    };
    let xs = edges(w, sw);
    let ys = edges(h, sh);
    // Horizontal pass into rows of w sums.
    let mut rows = vec![0f32; sh * w];
    for y in 0..sh {
        let line = &src[y * sw..(y + 1) * sw];
        for x in 0..w {
            let (a, b) = (xs[x], xs[x + 1].max(xs[x] + 1).min(sw));
            let a = a.min(sw - 1);
            let s: u64 = line[a..b].iter().map(|&v| u64::from(v)).sum();
            rows[y * w + x] = s as f32 / (b - a) as f32;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        let (a, b) = (ys[y].min(sh - 1), ys[y + 1].max(ys[y] + 1).min(sh));
        let n = (b - a) as f32;
        for x in 0..w {
            let mut s = 0f32;
            for yy in a..b {
                s += rows[yy * w + x];
            }
            out[y * w + x] = ph.attenuation(s / n).clamp(clip[0], clip[1]);
        }
    }
    out
}

/// Prepares `img` for the model. `pixel_mm` is the sidecar's `[horizontal, vertical]` pixel
/// size (5 mm assumed when absent); `cab_left` says whether the cab is at the left end
/// (`None`: not given by the scanner).
pub fn prepare(
    img: &Gray16,
    pixel_mm: Option<[f64; 2]>,
    cab_left: Option<bool>,
    p: &Preproc,
    photometry: &Photometry,
) -> Prepared {
    let [ph, pv] = pixel_mm.unwrap_or([5.0, 5.0]);
    let w = ((img.width() as f64 * ph / p.pixel_mm as f64).round() as usize).max(1);
    let h = ((img.height() as f64 * pv / p.pixel_mm as f64).round() as usize).max(1);
    let air = photometry.air;
    let att = resample_attenuation(img, w, h, p.clip, photometry);
    let mut out = Prepared {
        work_w: w,
        work_h: h,
        air,
        band: None,
        fill: 0.0,
        tiles: Vec::new(),
        positions: Vec::new(),
    };
    let Some(band) = cargo_band(&att, w, h, p.pixel_mm, cab_left) else {
        return out;
    };
    let [x0, y0, x1, y1] = band;
    out.fill = band_share(&att, w, band);
    out.band = Some(band);
    let t = p.tile;
    for ty in positions(y0, y1, t, p.stride) {
        for tx in positions(x0, x1, t, p.stride) {
            let mut n = 0usize;
            for y in ty..ty + t {
                n += att[y * w + tx..y * w + tx + t]
                    .iter()
                    .filter(|&&a| a > CARGO_ATT)
                    .count();
            }
            if (n as f32) < TILE_CARGO_SHARE * (t * t) as f32 {
                continue;
            }
            for y in ty..ty + t {
                out.tiles
                    .extend_from_slice(&att[y * w + tx..y * w + tx + t]);
            }
            out.positions.push([tx, ty]);
        }
    }
    out
}

/// The cargo band of `img` and its fill (share above [`CARGO_ATT`]) on a grid of `grid_mm`
/// pixels, without cutting tiles: the fixed-level measure, kept as the empty check's
/// fallback where no load carrier with walls is found (flatbed, tanker, bulk).
pub fn band_fill(
    img: &Gray16,
    pixel_mm: Option<[f64; 2]>,
    cab_left: Option<bool>,
    grid_mm: f32,
) -> Option<([usize; 4], f32)> {
    let [ph, pv] = pixel_mm.unwrap_or([5.0, 5.0]);
    let w = ((img.width() as f64 * ph / grid_mm as f64).round() as usize).max(1);
    let h = ((img.height() as f64 * pv / grid_mm as f64).round() as usize).max(1);
    let raw = Photometry::raw(img.as_raw());
    let att = resample_attenuation(img, w, h, [0.0, 8.0], &raw);
    let band = cargo_band(&att, w, h, grid_mm, cab_left)?;
    Some((band, band_share(&att, w, band)))
}

fn band_share(att: &[f32], w: usize, [x0, y0, x1, y1]: [usize; 4]) -> f32 {
    let mut cargo = 0usize;
    for y in y0..y1 {
        cargo += att[y * w + x0..y * w + x1]
            .iter()
            .filter(|&&a| a > CARGO_ATT)
            .count();
    }
    cargo as f32 / ((x1 - x0) * (y1 - y0)).max(1) as f32
}

/// Tile origins covering [a, b) evenly, `stride` apart at most; none if it is too short.
fn positions(a: usize, b: usize, tile: usize, stride: usize) -> Vec<usize> {
    if b < a + tile {
        return Vec::new();
    }
    let span = b - a - tile;
    let n = span.div_ceil(stride) + 1;
    if n == 1 {
        return vec![a];
    }
    (0..n)
        .map(|i| a + (i * span + (n - 1) / 2) / (n - 1))
        .collect()
}

fn cargo_band(
    att: &[f32],
    w: usize,
    h: usize,
    pixel_mm: f32,
    cab_left: Option<bool>,
) -> Option<[usize; 4]> {
    let px = |mm: f32| (mm / pixel_mm).round() as usize;
    let col_share: Vec<f32> = (0..w)
        .map(|x| (0..h).filter(|&y| att[y * w + x] > OBJECT_ATT).count() as f32 / h as f32)
        .collect();
    let x_first = col_share.iter().position(|&s| s > 0.05)?;
    let x_last = col_share.iter().rposition(|&s| s > 0.05)? + 1;
    let cab = px(CAB_MM);
    if x_last <= x_first + cab + px(1000.0) {
        return None;
    }
    let row_share = |y: usize, a: usize, b: usize| {
        att[y * w + a..y * w + b]
            .iter()
            .filter(|&&v| v > OBJECT_ATT)
            .count() as f32
            / (b - a) as f32
    };
    let top_of = |a: usize, b: usize| (0..h).find(|&y| row_share(y, a, b) > 0.05);
    let cab_left = cab_left.unwrap_or_else(|| {
        // The cab is lower than the load it pulls, almost always.
        let left = top_of(x_first, x_first + cab).unwrap_or(h);
        let right = top_of(x_last - cab, x_last).unwrap_or(h);
        left > right
    });
    let (x0, x1) = if cab_left {
        (x_first + cab, x_last)
    } else {
        (x_first, x_last - cab)
    };
    let top = top_of(x0, x1)?;
    let bottom = (0..h).rev().find(|&y| row_share(y, x0, x1) > 0.05)? + 1;
    let y0 = top + px(ROOF_MM);
    let y1 = (top + px(LOAD_DEPTH_MM)).min(bottom.saturating_sub(px(UNDERCARRIAGE_MM)));
    if y1 <= y0 + px(300.0) {
        return None;
    }
    Some([x0, y0, x1, y1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_the_span_evenly() {
        assert_eq!(positions(0, 64, 64, 32), vec![0]);
        assert_eq!(positions(10, 117, 64, 32), vec![10, 32, 53]);
        assert!(positions(0, 63, 64, 32).is_empty());
        let p = positions(0, 1000, 64, 32);
        assert_eq!(*p.last().unwrap(), 1000 - 64);
        assert!(p.windows(2).all(|w| w[1] - w[0] <= 32));
    }

    #[test]
    fn air_level_is_the_open_beam() {
        let mut px = vec![60_000u16; 1000];
        px[..300].iter_mut().for_each(|v| *v = 1000);
        assert_eq!(air_level(&px), 60_000);
    }

    #[test]
    fn a_loaded_box_has_cargo_tiles_and_fill() {
        // 30 m x 6 m at 20 mm: air, a 14 m x 2.4 m box of cargo on a 1.3 m undercarriage,
        // a 4 m cab at the left end.
        let (w, h) = (1500u32, 300u32);
        let mut px = vec![60_000u16; (w * h) as usize];
        let mut paint = |x0: u32, y0: u32, x1: u32, y1: u32, v: u16| {
            for y in y0..y1 {
                for x in x0..x1 {
                    px[(y * w + x) as usize] = v;
                }
            }
        };
        paint(100, 130, 300, 300, 20_000); // cab
        paint(320, 235, 1050, 300, 25_000); // chassis and wheels
        paint(320, 110, 1050, 235, 9_000); // cargo
        let img = crate::imaging::gray16(w, h, px).unwrap();
        let p = Preproc {
            pixel_mm: 20.0,
            tile: 32,
            stride: 16,
            clip: [0.0, 8.0],
            dark_level: false,
        };
        let r = prepare(
            &img,
            Some([20.0, 20.0]),
            Some(true),
            &p,
            &Photometry::raw(img.as_raw()),
        );
        let [x0, y0, x1, y1] = r.band.unwrap();
        assert!(x0 >= 300 && x1 <= 1050, "{:?}", r.band);
        assert!(y0 >= 110 && y1 <= 240, "{:?}", r.band);
        assert!(r.fill > 0.9, "fill {}", r.fill);
        assert!(r.tile_count() > 20);
        assert_eq!(r.tiles.len(), r.tile_count() * 32 * 32);
    }
}
