//! The dark level of a scan, measured in the scan itself, so that the texture model sees the
//! same attenuation for the same goods whatever pedestal the scanner's detector adds.
//!
//! A detector writes `dark + gain · T^γ`: the dark level (electronics offset, dark current)
//! is not matter. Left in, `ln(air / I)` flattens every dense part of the load towards
//! `ln(air / dark)`: with a dark level at 5 % of air, steel at 1 % transmission reads as
//! 2.9 optical depths instead of 4.6, and goods the library knows from a scanner without an
//! offset look like other goods. Scanners that subtract their dark level before writing the
//! image exist beside ones that do not, and the sidecar does not say which, so the level is
//! measured: most truck scans hold fully absorbed pixels (engine block, axles, wheel hubs,
//! a portal's pit, beam-off columns), and they form a **flat floor** at the bottom of the
//! image's histogram (noise around one level). When that floor is there its level is
//! subtracted; when it is not (the darkest matter still transmits a few per cent and the
//! histogram keeps rising) nothing is subtracted and the scan is taken as dark-corrected.
//! A scan whose darkest matter happens to form such a floor (a block of steel of one
//! thickness, no engine in view) loses that level instead: only pixels within about twice
//! its transmission read denser than they are, i.e. the densest part of that scan.
//!
//! Measured (`bench match --families`, issue 13): the dark level was the largest single part
//! of the texture model's cross-scanner gap. The other photometric difference, the
//! attenuation scale (spectrum, response curve), is not measured here: the container walls
//! that could measure it are hidden behind the goods in most loaded scans, and noisy where
//! seen. The model is trained to tolerate it instead (`tools/build_model.py`, `AUGMENT`).
//!
//! Pure functions of the pixels; never touches files or the store.

use serde::Serialize;

use super::tiles;

/// Quantile of the image taken as its dark level: 1 pixel in 10,000, a few hundred
/// pixels of a 4000 x 1400 scan, so single dead or hot pixels do not set it and an engine
/// block, a set of axles or a portal's pit does.
const DARK_Q: f64 = 1e-4;
/// How flat the floor must be: from 1 pixel in 100,000 to 1 in 1,000 the image may rise
/// by at most this share of the air level. Fully absorbed pixels are noise around one
/// level (read noise, a few counts of photons: well under 0.5 % of air); the darkest
/// matter of a scan without them (a chassis beam at a few per cent transmission) spans
/// several per cent of air over the same range.
const DARK_FLAT: f64 = 0.005;
/// A floor above this share of the air level is not a detector's dark level (it would
/// leave the scanner less than 2.3 optical depths of range) but the scan's darkest
/// matter: nothing is subtracted.
const DARK_MAX: f64 = 0.1;

/// How a scan's attenuation is referenced for the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Photometry {
    /// Air level of the image (16-bit counts, [`tiles::AIR_Q`] quantile).
    pub air: u16,
    /// Dark level subtracted from the image and its air level (16-bit counts); 0 when none.
    pub dark: f32,
    /// Whether the scan showed a flat dark floor (else it is taken as dark-corrected).
    pub dark_seen: bool,
}

impl Photometry {
    /// Attenuation as the image gives it, `ln(air / I)`: for models made before the dark
    /// level was measured (contract `normalisation = "attenuation"`).
    pub fn raw(px: &[u16]) -> Photometry {
        Photometry {
            air: tiles::air_level(px),
            dark: 0.0,
            dark_seen: false,
        }
    }

    /// Measures the air and dark levels of `px` (a 16-bit transmission image), from one
    /// histogram.
    pub fn measure(px: &[u16]) -> Photometry {
        let hist = tiles::histogram(px);
        let air = tiles::hist_quantile(&hist, px.len(), tiles::AIR_Q);
        let dark = dark_level(&hist, px.len(), air);
        Photometry {
            air,
            dark: dark.unwrap_or(0.0),
            dark_seen: dark.is_some(),
        }
    }

    /// The attenuation of a (box-averaged) transmission value `t` against the air level.
    pub fn attenuation(&self, t: f32) -> f32 {
        let a = (f32::from(self.air.max(1)) - self.dark).max(1.0);
        let v = (t - self.dark).max(1.0);
        (a / v).ln()
    }
}

/// The dark level of an image of `n` pixels counted in `hist`, with air level `air`:
/// `None` when it shows no flat dark floor.
fn dark_level(hist: &[u32], n: usize, air: u16) -> Option<f32> {
    if n == 0 || air == 0 {
        return None;
    }
    let q = |q: f64| f64::from(tiles::hist_quantile(hist, n, q));
    let (lo, level, hi) = (q(DARK_Q / 10.0), q(DARK_Q), q(DARK_Q * 10.0));
    let air = f64::from(air);
    (hi - lo <= DARK_FLAT * air && level <= DARK_MAX * air).then_some(level as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200,000 pixels through a detector with dark level `dark` and gain 60,000
    /// (deterministic ±`noise` counts): `dark_px` fully absorbed, then `matter` (the
    /// transmission of one pixel each, repeated to fill 50,000 pixels), then air.
    fn scan(dark: f32, noise: f32, dark_px: usize, matter: &[f32]) -> Vec<u16> {
        let n = 200_000;
        (0..n)
            .map(|i| {
                let t = if i < dark_px {
                    0.0
                } else if i < dark_px + 50_000 {
                    matter[(i - dark_px) % matter.len()]
                } else {
                    1.0
                };
                let jitter = noise * (((i * 7919) % 17) as f32 / 8.0 - 1.0);
                (dark + 60_000.0 * t + jitter).round().clamp(0.0, 65_535.0) as u16
            })
            .collect()
    }

    #[test]
    fn a_detector_pedestal_is_measured_and_taken_out() {
        // 400 fully absorbed pixels (an engine block) in 200,000 and goods at 1-50 %.
        let px = scan(2_500.0, 12.0, 400, &[0.01, 0.05, 0.2, 0.5]);
        let p = Photometry::measure(&px);
        assert!(p.dark_seen);
        assert!((p.dark - 2_500.0).abs() < 20.0, "{p:?}");
        // Steel at 1 % transmission reads its own optical depth again, not ln(air / dark).
        let steel = 2_500.0 + 600.0;
        let raw = Photometry::raw(&px).attenuation(steel);
        let od = p.attenuation(steel);
        assert!((od - 100f32.ln()).abs() < 0.05, "{od} (raw {raw})");
        assert!(raw < 3.1, "{raw}");
    }

    #[test]
    fn no_dark_floor_means_nothing_is_subtracted() {
        // The darkest matter is a chassis beam: 1,000 pixels from 2 % to 20 % transmission,
        // the rest of the load at 50 %. Its darkest 0.1 % of the image spans 3.6 % of air.
        let matter: Vec<f32> = (0..50_000)
            .map(|i| {
                if i < 1_000 {
                    0.02 + 0.18 * i as f32 / 1_000.0
                } else {
                    0.5
                }
            })
            .collect();
        let px = scan(0.0, 3.0, 0, &matter);
        let p = Photometry::measure(&px);
        assert_eq!(p, Photometry::raw(&px));
        // And a flat floor too high to be a pedestal (a plate of 15 % everywhere dark) is
        // matter, not a dark level.
        let px = scan(9_000.0, 3.0, 2_000, &[0.5]);
        let p = Photometry::measure(&px);
        assert!(!p.dark_seen, "{p:?}");
    }

    #[test]
    fn a_corrected_scan_with_an_engine_block_loses_nothing() {
        // Dark level already 0: the floor is found at ~0 and changes no attenuation.
        let px = scan(0.0, 3.0, 400, &[0.01, 0.3]);
        let p = Photometry::measure(&px);
        assert!(p.dark_seen && p.dark <= 3.0, "{p:?}");
        for t in [600.0, 18_000.0, 59_000.0] {
            let d = p.attenuation(t) - Photometry::raw(&px).attenuation(t);
            assert!(d.abs() < 0.01, "{t}: {d}");
        }
    }

    /// The same scene through a detector with a 5 % pedestal and another gain gives the
    /// model the same tiles once the dark level is taken out, and other tiles without.
    #[test]
    fn a_pedestal_does_not_change_the_model_input() {
        use crate::matching::{prepare_for_model, Preproc};
        use crate::sim::{SimOptions, Simulator};
        let d = Simulator::new(SimOptions {
            seed: 31,
            resolution_scale: 0.25,
            ..SimOptions::default()
        })
        .next_drop_of_class("7208.39")
        .unwrap();
        let other = crate::matching::empty::tests::redetect(&d.image, 45_000.0, 2_500.0, 1.0);
        let (geometry, cab_left) = crate::matching::image_geometry(Some(&d.sidecar));
        let tiles = |img: &crate::imaging::Gray16, dark_level: bool| {
            let p = Preproc {
                pixel_mm: 20.0,
                tile: 64,
                stride: 32,
                clip: [0.0, 8.0],
                dark_level,
            };
            prepare_for_model(img, geometry, cab_left, &p).0
        };
        // Over the tiles cut at the same place in both.
        let mean_abs_diff = |a: &super::super::Prepared, b: &super::super::Prepared| {
            let t2 = 64 * 64;
            let (mut sum, mut n) = (0f64, 0usize);
            for (i, pos) in a.positions.iter().enumerate() {
                if let Some(j) = b.positions.iter().position(|q| q == pos) {
                    let (x, y) = (
                        &a.tiles[i * t2..(i + 1) * t2],
                        &b.tiles[j * t2..(j + 1) * t2],
                    );
                    sum += x
                        .iter()
                        .zip(y)
                        .map(|(u, v)| f64::from((u - v).abs()))
                        .sum::<f64>();
                    n += t2;
                }
            }
            assert!(
                n >= a.tiles.len() / 2,
                "{n} of {} values compared",
                a.tiles.len()
            );
            sum / n as f64
        };
        let same = mean_abs_diff(&tiles(&d.image, true), &tiles(&other, true));
        let raw = mean_abs_diff(&tiles(&d.image, false), &tiles(&other, false));
        assert!(same < 0.02, "dark level taken out: {same}");
        assert!(
            raw > 5.0 * same && raw > 0.05,
            "raw: {raw}, dark level taken out: {same}"
        );
    }
}
