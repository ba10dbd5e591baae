//! The simulated line scanners: detector geometry (a parallel beam with a magnification for
//! the four original models; fan beams with straight or L-shaped detectors, lane position and
//! depth parallax for the named [`ScannerFamily`]s), the truck's varying speed through the
//! beam, Beer-Lambert transmission, point spread, scatter, afterglow, photon and read noise,
//! detector row defects, dropped pulses and the 16-bit (or 12-bit) output. It turns
//! projection shapes into pixels; it must never build scenes, choose goods or write files.

use rand::{Rng, SeedableRng};

use super::geom::{raster, Grid, Kind, Prim};
use super::{chance, uni, SimRng};

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
    /// Fan-beam geometry; `None` projects with a parallel beam and `Pass::mag`.
    pub fan: Option<FanBeam>,
    /// Share of the signal that lags behind (detector afterglow), 0 for none.
    pub afterglow: f32,
    /// Decay time of the afterglow, in columns at resolution scale 1.
    pub afterglow_px: f32,
    /// Detector lines that are fully dead (gain 0: their rows read the dark level).
    pub dead_lines: usize,
    /// Chance that a linac pulse is dropped (a dark column), per column at scale 1.
    pub pulse_drop: f32,
    /// Output quantisation step in counts: 1 for a true 16-bit ADC, 16 for a 12-bit one
    /// scaled to 16 bits.
    pub adc_step: f32,
    /// Radius (mm) of the forward-scatter halo.
    pub scatter_mm: f32,
    /// Attenuation relative to the scene's (6 MV-like) optical depths: above 1 for softer
    /// beams, which see steel darker.
    pub od_scale: f32,
}

/// Where the source and the detector of a fan-beam scanner stand, seen along the lane
/// (z: horizontal distance from the source across the lane; y: height above the road).
#[derive(Clone, Debug)]
pub(crate) struct FanBeam {
    /// Height of the source's focal spot above the road (mm).
    pub source_h_mm: f32,
    /// Source to the lane centreline (mm).
    pub sod_mm: f32,
    /// Source to the vertical detector arm (mm).
    pub sdd_mm: f32,
    /// The detector as a polyline of `[z, y]` points in the detector plane, from the element
    /// imaged at the top of the scan to the one at the bottom; elements are evenly spaced
    /// along it. Two points: a straight vertical column at `sdd_mm`. Three: an L-shaped
    /// detector whose horizontal boom (at the boom's height: above the source, a top boom;
    /// below it, a floor boom) bends back from the arm towards the source.
    pub det: Vec<[f32; 2]>,
    /// The truck drives up to this far (mm) either side of the lane centreline.
    pub lane_jitter_mm: f32,
    /// How much of the full depth parallax of a 2350 mm wide load smears edges (0..1).
    pub depth_smear: f32,
}

/// Width (mm) of a container across the lane: the depth that depth parallax spans.
const LOAD_DEPTH_MM: f32 = 2350.0;

impl FanBeam {
    fn det_len(&self) -> f32 {
        self.det
            .windows(2)
            .map(|w| (w[1][0] - w[0][0]).hypot(w[1][1] - w[0][1]))
            .sum()
    }

    /// The detector point `s` mm along the polyline.
    fn det_point(&self, mut s: f32) -> [f32; 2] {
        for w in self.det.windows(2) {
            let l = (w[1][0] - w[0][0]).hypot(w[1][1] - w[0][1]);
            if s <= l {
                let f = s / l;
                return [
                    w[0][0] + (w[1][0] - w[0][0]) * f,
                    w[0][1] + (w[1][1] - w[0][1]) * f,
                ];
            }
            s -= l;
        }
        *self.det.last().expect("a detector has points")
    }

    /// Height at which the ray to detector point `d` crosses the plane `z` mm from the source.
    fn project(&self, d: [f32; 2], z: f32) -> f32 {
        self.source_h_mm + (d[1] - self.source_h_mm) * z / d[0]
    }

    /// Detector plane height of a point seen at height `y` on the lane centreline, on the
    /// vertical arm.
    fn arm_y(source_h: f32, sod: f32, sdd: f32, y: f32) -> f32 {
        source_h + (y - source_h) * sdd / sod
    }

    /// A straight vertical detector column that sees heights `bottom..top` (mm) on the lane
    /// centreline.
    fn straight(
        source_h: f32,
        sod: f32,
        sdd: f32,
        bottom: f32,
        top: f32,
        lane_jitter: f32,
        depth_smear: f32,
    ) -> Self {
        let arm = |y| Self::arm_y(source_h, sod, sdd, y);
        Self {
            source_h_mm: source_h,
            sod_mm: sod,
            sdd_mm: sdd,
            det: vec![[sdd, arm(top)], [sdd, arm(bottom)]],
            lane_jitter_mm: lane_jitter,
            depth_smear,
        }
    }

    /// An L-shaped detector: a vertical arm that sees down to `bottom` (mm, on the lane
    /// centreline) and rises to a top boom at `boom_h`, which runs back towards the source
    /// to `boom_end` mm from it.
    #[allow(clippy::too_many_arguments)]
    fn top_boom(
        source_h: f32,
        sod: f32,
        sdd: f32,
        bottom: f32,
        boom_h: f32,
        boom_end: f32,
        lane_jitter: f32,
        depth_smear: f32,
    ) -> Self {
        let low = Self::arm_y(source_h, sod, sdd, bottom);
        Self {
            source_h_mm: source_h,
            sod_mm: sod,
            sdd_mm: sdd,
            det: vec![[boom_end, boom_h], [sdd, boom_h], [sdd, low]],
            lane_jitter_mm: lane_jitter,
            depth_smear,
        }
    }

    /// An L-shaped detector with a floor boom: a vertical arm that sees up to `top` (mm, on
    /// the lane centreline) and runs down to a channel at `boom_h` under the road, which runs
    /// back towards the source to `boom_end` mm from it.
    #[allow(clippy::too_many_arguments)]
    fn floor_boom(
        source_h: f32,
        sod: f32,
        sdd: f32,
        top: f32,
        boom_h: f32,
        boom_end: f32,
        lane_jitter: f32,
        depth_smear: f32,
    ) -> Self {
        let high = Self::arm_y(source_h, sod, sdd, top);
        Self {
            source_h_mm: source_h,
            sod_mm: sod,
            sdd_mm: sdd,
            det: vec![[sdd, high], [sdd, boom_h], [boom_end, boom_h]],
            lane_jitter_mm: lane_jitter,
            depth_smear,
        }
    }
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
            ..Self::parallel_defaults()
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
            ..Self::parallel_defaults()
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
            ..Self::parallel_defaults()
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
            ..Self::parallel_defaults()
        }
    }

    /// The physics the four original models do without: a parallel beam, no afterglow, no
    /// dead lines or dropped pulses, a 16-bit ADC, a 250 mm scatter halo, the scene's own
    /// attenuation. Only its new fields are meant to be used (`..Self::parallel_defaults()`).
    fn parallel_defaults() -> Self {
        Self {
            code: "",
            model: "",
            energy_mev: 0.0,
            pitch_v: 1.0,
            pitch_h: 1.0,
            rows: 16,
            bottom_mm: 0.0,
            gain: 0.0,
            offset: 0.0,
            gamma: 1.0,
            photons_air: 1.0,
            read_noise: 0.0,
            row_gain_sigma: 0.0,
            module_rows: 1,
            module_gain_sigma: 0.0,
            pulse_sigma: 0.0,
            dead_rows: 0,
            hot_rows: 0,
            psf_v_mm: 0.0,
            psf_h_px: 0.0,
            scatter: 0.0,
            ground_od: 0.0,
            seed: 0,
            fan: None,
            afterglow: 0.0,
            afterglow_px: 1.0,
            dead_lines: 0,
            pulse_drop: 0.0,
            adc_step: 1.0,
            scatter_mm: 250.0,
            od_scale: 1.0,
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
        // Drawn last, so models without dead lines keep their defects.
        let dead: Vec<usize> = (0..self.dead_lines)
            .map(|_| r.random_range(20..n - 20))
            .collect();
        let ratio = n as f32 / out_rows as f32;
        let mut g = Vec::with_capacity(out_rows);
        let mut a = Vec::with_capacity(out_rows);
        for o in 0..out_rows {
            let i0 = (o as f32 * ratio) as usize;
            let i1 = (((o + 1) as f32 * ratio) as usize).clamp(i0 + 1, n);
            let k = (i1 - i0) as f32;
            // A dead line darkens the whole output row it falls in, at any scale: the
            // scanner reads it as dark, whatever the simulator bins it with.
            let is_dead = dead.iter().any(|d| (i0..i1).contains(d));
            g.push(if is_dead {
                0.0
            } else {
                gain[i0..i1].iter().sum::<f32>() / k
            });
            a.push(add[i0..i1].iter().sum::<f32>() / k);
        }
        (g, a)
    }
}

/// A named kind of cargo scanner, for scans that differ the way real vendors' do: beam
/// geometry, pitch, detector response, noise, blur, lag, defects, speed and orientation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScannerFamily {
    /// Drive-through 6 MV portal, source low on one side, L-shaped detector with a top boom.
    PortalLowSource,
    /// Rail gantry (4 MV, mid-height source) moving over a parked truck, straight column, CsI lag.
    GantryMidSource,
    /// Truck-mounted 2.5 MV mobile scanner with an inverted-L boom: noisy, blurry, 12-bit.
    MobileBoom,
    /// High-throughput 9 MV fine-pitch portal with radar-corrected columns and a deep pit.
    PortalRadar,
    /// Cobalt-60 gamma-ray portal (VACIS-like): soft photons counted, coarse and noisy.
    GammaCobalt,
    /// 6 MV gantry with a high source and an L-shaped detector whose boom runs under the lane.
    GantryHighSource,
    /// Fast-scan 4 MV drive-through lane: wide columns, strong afterglow, dropped pulses.
    PortalFastScan,
}

/// How a scanner's columns follow the truck.
#[derive(Clone, Copy, Debug)]
enum SpeedStyle {
    /// A driver drives through: the speed wanders by ±`spread`; with chance `stop_go` the
    /// truck slows to about 0.3 of nominal and picks up again.
    Driven { spread: f32, stop_go: f32 },
    /// A gantry on rails, or a portal that measures the speed by radar and resamples:
    /// nearly constant pitch, within ±`ripple`.
    Smooth { ripple: f32 },
}

/// What a family's passes look like.
struct PassStyle {
    speed: SpeedStyle,
    /// Chance that a scan shows the truck from the other side (cab on the right).
    mirror_p: f32,
    air_before: (f32, f32),
    air_after: (f32, f32),
}

impl ScannerFamily {
    pub const ALL: [ScannerFamily; 7] = [
        ScannerFamily::PortalLowSource,
        ScannerFamily::GantryMidSource,
        ScannerFamily::MobileBoom,
        ScannerFamily::PortalRadar,
        ScannerFamily::GammaCobalt,
        ScannerFamily::GantryHighSource,
        ScannerFamily::PortalFastScan,
    ];

    /// Short name for command lines and reports.
    pub fn name(self) -> &'static str {
        match self {
            ScannerFamily::PortalLowSource => "portal-lowsrc",
            ScannerFamily::GantryMidSource => "gantry-midsrc",
            ScannerFamily::MobileBoom => "mobile-boom",
            ScannerFamily::PortalRadar => "portal-radar",
            ScannerFamily::GammaCobalt => "gamma-cobalt",
            ScannerFamily::GantryHighSource => "gantry-highsrc",
            ScannerFamily::PortalFastScan => "portal-fastscan",
        }
    }

    /// The scanner's code in scanner ids (`{site}-{code}`).
    pub fn code(self) -> &'static str {
        match self {
            ScannerFamily::PortalLowSource => "PL",
            ScannerFamily::GantryMidSource => "GM",
            ScannerFamily::MobileBoom => "MB",
            ScannerFamily::PortalRadar => "PR",
            ScannerFamily::GammaCobalt => "GC",
            ScannerFamily::GantryHighSource => "GH",
            ScannerFamily::PortalFastScan => "FS",
        }
    }

    /// The vendor model string of the sidecar.
    pub fn model(self) -> &'static str {
        match self {
            ScannerFamily::PortalLowSource => "Aster LX-6 Portal",
            ScannerFamily::GantryMidSource => "Borealis G4 Gantry",
            ScannerFamily::MobileBoom => "Nomad M25 Mobile",
            ScannerFamily::PortalRadar => "Helix HS-9 Portal",
            ScannerFamily::GammaCobalt => "Vigil C60 Gamma Portal",
            ScannerFamily::GantryHighSource => "Titan TG-6 Gantry",
            ScannerFamily::PortalFastScan => "Swift FS-4 Drive-through",
        }
    }

    fn pass_style(self) -> PassStyle {
        use SpeedStyle::*;
        let (speed, mirror_p, air_before, air_after) = match self {
            ScannerFamily::PortalLowSource => (
                Driven {
                    spread: 0.15,
                    stop_go: 0.35,
                },
                0.0,
                (300.0, 1500.0),
                (300.0, 1500.0),
            ),
            ScannerFamily::GantryMidSource => (
                Smooth { ripple: 0.01 },
                1.0,
                (2000.0, 4500.0),
                (2000.0, 4500.0),
            ),
            ScannerFamily::MobileBoom => (
                Driven {
                    spread: 0.06,
                    stop_go: 0.0,
                },
                0.3,
                (1500.0, 4000.0),
                (1500.0, 4000.0),
            ),
            ScannerFamily::PortalRadar => (
                Smooth { ripple: 0.02 },
                0.0,
                (600.0, 2000.0),
                (600.0, 2000.0),
            ),
            ScannerFamily::GammaCobalt => (
                Driven {
                    spread: 0.12,
                    stop_go: 0.5,
                },
                0.3,
                (800.0, 3000.0),
                (800.0, 3000.0),
            ),
            ScannerFamily::GantryHighSource => (
                Smooth { ripple: 0.015 },
                1.0,
                (2500.0, 5000.0),
                (2500.0, 5000.0),
            ),
            ScannerFamily::PortalFastScan => (
                Driven {
                    spread: 0.2,
                    stop_go: 0.5,
                },
                0.0,
                (200.0, 1000.0),
                (200.0, 1000.0),
            ),
        };
        PassStyle {
            speed,
            mirror_p,
            air_before,
            air_after,
        }
    }

    /// Chance that a scan of this family is mirrored (cab on the right).
    pub(crate) fn mirror_p(self) -> f32 {
        self.pass_style().mirror_p
    }

    /// A passage of a truck through this family's scanner, drawn from its own stream
    /// (seeded by `seed`): speed profile, air margins, lane position, calibration drift.
    pub(crate) fn pass(self, seed: u64, mirrored: bool) -> Pass {
        let st = self.pass_style();
        let mut r = SimRng::seed_from_u64(seed);
        let (knots, vmin, vmax) = match st.speed {
            SpeedStyle::Driven { spread, stop_go } => {
                let stop = chance(&mut r, stop_go);
                let n = if stop {
                    r.random_range(8..=12)
                } else {
                    r.random_range(4..=7)
                };
                let base = uni(&mut r, 0.88, 1.12);
                let mut k: Vec<f32> = (0..n)
                    .map(|_| (base + uni(&mut r, -spread, spread)).clamp(0.6, 1.4))
                    .collect();
                if stop {
                    let i = r.random_range(2..n - 2);
                    k[i] = uni(&mut r, 0.25, 0.35);
                    k[i + 1] = uni(&mut r, 0.28, 0.45);
                }
                (k, 0.2, 1.5)
            }
            SpeedStyle::Smooth { ripple } => {
                let k = (0..3).map(|_| 1.0 + uni(&mut r, -ripple, ripple)).collect();
                (k, 1.0 - 2.0 * ripple, 1.0 + 2.0 * ripple)
            }
        };
        let jitter = self.scanner(0).fan.map_or(0.0, |f| f.lane_jitter_mm);
        Pass {
            knots,
            air_before: uni(&mut r, st.air_before.0, st.air_before.1),
            air_after: uni(&mut r, st.air_after.0, st.air_after.1),
            mirrored,
            noise_seed: r.random(),
            mag: 1.0,
            gain_k: uni(&mut r, 0.97, 1.03),
            offset_k: uni(&mut r, 0.85, 1.2),
            gamma_d: uni(&mut r, -0.015, 0.015),
            vmin,
            vmax,
            lane_mm: uni(&mut r, -jitter, jitter),
        }
    }

    /// This family's scanner as installed somewhere (its detector defects fixed by `seed`).
    pub(crate) fn scanner(self, seed: u64) -> ScannerModel {
        let base = ScannerModel {
            code: self.code(),
            model: self.model(),
            seed,
            ..ScannerModel::parallel_defaults()
        };
        match self {
            ScannerFamily::PortalLowSource => with_fan(
                ScannerModel {
                    energy_mev: 6.0,
                    pitch_v: 4.6,
                    pitch_h: 4.0,
                    gain: 60_500.0,
                    offset: 350.0,
                    gamma: 1.0,
                    photons_air: 60_000.0,
                    read_noise: 5.0,
                    row_gain_sigma: 0.003,
                    module_rows: 32,
                    module_gain_sigma: 0.004,
                    pulse_sigma: 0.0025,
                    dead_rows: 1,
                    psf_v_mm: 2.5,
                    psf_h_px: 0.6,
                    scatter: 0.005,
                    scatter_mm: 300.0,
                    ground_od: 6.0,
                    afterglow: 0.01,
                    afterglow_px: 2.0,
                    ..base
                },
                FanBeam::top_boom(1100.0, 3000.0, 5300.0, -20.0, 5200.0, 3400.0, 250.0, 0.2),
            ),
            ScannerFamily::GantryMidSource => with_fan(
                ScannerModel {
                    energy_mev: 4.0,
                    pitch_v: 5.2,
                    pitch_h: 5.0,
                    gain: 52_000.0,
                    offset: 1_800.0,
                    gamma: 0.92,
                    photons_air: 38_000.0,
                    read_noise: 10.0,
                    row_gain_sigma: 0.004,
                    module_rows: 16,
                    module_gain_sigma: 0.006,
                    pulse_sigma: 0.004,
                    hot_rows: 1,
                    psf_v_mm: 3.8,
                    psf_h_px: 0.9,
                    scatter: 0.007,
                    scatter_mm: 220.0,
                    afterglow: 0.04,
                    afterglow_px: 4.0,
                    dead_lines: 1,
                    od_scale: 1.08,
                    ..base
                },
                FanBeam::straight(2200.0, 3600.0, 4800.0, -50.0, 4900.0, 300.0, 0.3),
            ),
            ScannerFamily::MobileBoom => with_fan(
                ScannerModel {
                    energy_mev: 2.5,
                    pitch_v: 5.6,
                    pitch_h: 6.5,
                    gain: 61_000.0,
                    offset: 64.0,
                    gamma: 1.12,
                    photons_air: 14_000.0,
                    read_noise: 24.0,
                    row_gain_sigma: 0.008,
                    module_rows: 24,
                    module_gain_sigma: 0.012,
                    pulse_sigma: 0.008,
                    dead_rows: 2,
                    hot_rows: 1,
                    psf_v_mm: 5.5,
                    psf_h_px: 1.3,
                    scatter: 0.014,
                    scatter_mm: 450.0,
                    afterglow: 0.02,
                    afterglow_px: 3.0,
                    dead_lines: 1,
                    pulse_drop: 0.0008,
                    adc_step: 16.0,
                    od_scale: 1.15,
                    ..base
                },
                FanBeam::top_boom(1300.0, 2400.0, 4100.0, 600.0, 5200.0, 3000.0, 450.0, 0.25),
            ),
            ScannerFamily::PortalRadar => with_fan(
                ScannerModel {
                    energy_mev: 9.0,
                    pitch_v: 3.6,
                    pitch_h: 3.2,
                    gain: 61_000.0,
                    offset: 150.0,
                    gamma: 1.06,
                    photons_air: 90_000.0,
                    read_noise: 4.0,
                    row_gain_sigma: 0.002,
                    module_rows: 32,
                    module_gain_sigma: 0.003,
                    pulse_sigma: 0.002,
                    psf_v_mm: 2.2,
                    psf_h_px: 0.5,
                    scatter: 0.003,
                    scatter_mm: 200.0,
                    ground_od: 6.0,
                    afterglow: 0.005,
                    afterglow_px: 1.5,
                    dead_lines: 2,
                    od_scale: 0.9,
                    ..base
                },
                FanBeam::straight(1900.0, 3000.0, 4800.0, -80.0, 4750.0, 200.0, 0.2),
            ),
            ScannerFamily::GammaCobalt => with_fan(
                ScannerModel {
                    energy_mev: 1.25,
                    pitch_v: 6.0,
                    pitch_h: 7.5,
                    gain: 38_000.0,
                    offset: 0.0,
                    gamma: 1.0,
                    photons_air: 3_500.0,
                    read_noise: 2.0,
                    row_gain_sigma: 0.01,
                    module_rows: 16,
                    module_gain_sigma: 0.01,
                    psf_v_mm: 7.0,
                    psf_h_px: 1.5,
                    scatter: 0.02,
                    scatter_mm: 500.0,
                    od_scale: 1.35,
                    ..base
                },
                FanBeam::straight(1500.0, 2700.0, 4300.0, -30.0, 4700.0, 350.0, 0.3),
            ),
            ScannerFamily::GantryHighSource => with_fan(
                ScannerModel {
                    energy_mev: 6.0,
                    pitch_v: 5.0,
                    pitch_h: 4.5,
                    gain: 57_000.0,
                    offset: 900.0,
                    gamma: 0.95,
                    photons_air: 45_000.0,
                    read_noise: 8.0,
                    row_gain_sigma: 0.004,
                    module_rows: 32,
                    module_gain_sigma: 0.005,
                    pulse_sigma: 0.003,
                    dead_rows: 1,
                    hot_rows: 1,
                    psf_v_mm: 3.0,
                    psf_h_px: 0.8,
                    scatter: 0.006,
                    scatter_mm: 300.0,
                    ground_od: 2.0,
                    afterglow: 0.03,
                    afterglow_px: 5.0,
                    pulse_drop: 0.0015,
                    ..base
                },
                FanBeam::floor_boom(3300.0, 3400.0, 5600.0, 4575.0, -400.0, 3900.0, 300.0, 0.25),
            ),
            ScannerFamily::PortalFastScan => with_fan(
                ScannerModel {
                    energy_mev: 4.0,
                    pitch_v: 4.8,
                    pitch_h: 8.0,
                    gain: 45_000.0,
                    offset: 2_500.0,
                    gamma: 0.88,
                    photons_air: 25_000.0,
                    read_noise: 12.0,
                    row_gain_sigma: 0.005,
                    module_rows: 16,
                    module_gain_sigma: 0.006,
                    pulse_sigma: 0.005,
                    dead_rows: 1,
                    psf_v_mm: 3.2,
                    psf_h_px: 1.0,
                    scatter: 0.008,
                    scatter_mm: 260.0,
                    afterglow: 0.06,
                    afterglow_px: 6.0,
                    pulse_drop: 0.003,
                    od_scale: 1.08,
                    ..base
                },
                FanBeam::straight(1300.0, 3000.0, 4000.0, -30.0, 4700.0, 300.0, 0.35),
            ),
        }
    }
}

/// Sets a model's fan beam and the detector rows and bottom edge it implies.
fn with_fan(sc: ScannerModel, fan: FanBeam) -> ScannerModel {
    // Detector element pitch: the nominal pitch at the lane centreline, magnified.
    let dp = sc.pitch_v * fan.sdd_mm / fan.sod_mm;
    let rows = (fan.det_len() / dp).round() as usize;
    let last = *fan.det.last().expect("a detector has points");
    let bottom_mm = fan.project(last, fan.sod_mm);
    ScannerModel {
        rows,
        bottom_mm,
        fan: Some(fan),
        ..sc
    }
}

impl std::fmt::Display for ScannerFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ScannerFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let want = s.trim().to_ascii_lowercase();
        ScannerFamily::ALL
            .into_iter()
            .find(|f| f.name() == want)
            .ok_or_else(|| {
                let names: Vec<&str> = ScannerFamily::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown scanner family '{s}' (expected one of: {})",
                    names.join(", ")
                )
            })
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
    /// Bounds of the relative speed.
    pub vmin: f32,
    pub vmax: f32,
    /// Where the truck drives across the lane (mm from the centreline, away from the
    /// source when positive): the magnification of a fan beam follows it.
    pub lane_mm: f32,
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
            vmin: 0.8,
            vmax: 1.2,
            lane_mm: 0.0,
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
            vmin: 0.8,
            vmax: 1.2,
            lane_mm: 0.0,
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
        v.clamp(self.vmin, self.vmax)
    }
}

/// Where each column and row of a scan of a truck `length` mm long falls on the truck.
pub(crate) fn make_grid(sc: &ScannerModel, scale: f32, length: f32, pass: &Pass) -> Grid {
    let ph = sc.pitch_h_at(scale);
    let (rows, pv_nominal) = sc.rows_at(scale);
    let end = length + pass.air_after;
    let n_est = (pass.air_before + end) / ph;
    let xe = column_edges(ph, n_est, end, pass);
    if let Some(fan) = &sc.fan {
        return fan_grid(fan, xe, rows, pass);
    }
    // Magnification scales the object about the middle of the detector column.
    let pv = pv_nominal / pass.mag;
    let mid = sc.bottom_mm + 0.5 * rows as f32 * pv_nominal;
    Grid::uniform(xe, rows, mid + 0.5 * rows as f32 * pv, pv)
}

/// Column edges from `-air_before` to past `end`: one column per pulse, as far as the truck
/// moved. The speed is floored so a truck that (nearly) stops cannot make the scan endless;
/// past a cap of columns the whole profile is sped up.
fn column_edges(ph: f32, n_est: f32, end: f32, pass: &Pass) -> Vec<f32> {
    let cap = (n_est * 6.0) as usize + 16;
    let mut boost = 1.0f32;
    loop {
        let mut xe = Vec::with_capacity(n_est as usize * 5 / 4 + 2);
        let mut x = -pass.air_before;
        xe.push(x);
        while x < end && xe.len() <= cap {
            x += ph * pass.speed(xe.len() as f32 / n_est).max(0.05) * boost;
            xe.push(x);
        }
        if x >= end {
            return xe;
        }
        boost *= 1.5;
    }
}

/// Rows of a fan beam: detector elements evenly spaced along the detector, projected from
/// the source onto the plane of the truck (its lateral position sets the magnification),
/// with the depth parallax window of each row.
fn fan_grid(fan: &FanBeam, xe: Vec<f32>, rows: usize, pass: &Pass) -> Grid {
    let z = fan.sod_mm + pass.lane_mm;
    let len = fan.det_len();
    let ye: Vec<f32> = (0..=rows)
        .map(|i| fan.project(fan.det_point(len * i as f32 / rows as f32), z))
        .collect();
    let (top, bottom) = (ye[0], ye[rows]);
    let reach = if fan.depth_smear > 0.0 {
        // An edge at height y is seen across a band |y - source| * depth / distance high.
        let k = 0.5 * LOAD_DEPTH_MM / z * fan.depth_smear;
        (0..rows)
            .map(|r| {
                let yc = 0.5 * (ye[r] + ye[r + 1]);
                let s = k * (yc - fan.source_h_mm).abs();
                [(ye[r + 1] - s).max(bottom), (ye[r] + s).min(top)]
            })
            .collect()
    } else {
        Vec::new()
    };
    Grid {
        w: xe.len() - 1,
        h: rows,
        xe,
        y_top: top,
        pv: (top - bottom) / rows as f32,
        ye,
        reach,
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

/// Transmission (0..1) of every pixel: shapes splatted as optical depth, smeared by depth
/// parallax (fan beams), then Beer-Lambert.
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
    // The original models' path: no parallax, the scene's attenuation, one pass.
    let plain = g.reach.is_empty() && sc.od_scale == 1.0;
    let mut t = vec![0.0f32; g.w * g.h];
    bands(&mut t, g.w, |r0, band| {
        for p in prims.iter().chain(ground.iter()) {
            raster(band, g, r0, p);
        }
        // Holes are drawn as negative depth inside their part; rounding at their edges
        // must not make anything brighter than air.
        if plain {
            for v in band.iter_mut() {
                *v = (-v.max(0.0)).exp();
            }
        } else {
            for v in band.iter_mut() {
                *v = v.max(0.0);
            }
        }
    });
    if !plain {
        let k = sc.od_scale;
        if g.reach.is_empty() {
            bands(&mut t, g.w, |_, band| {
                for v in band.iter_mut() {
                    *v = (-*v * k).exp();
                }
            });
        } else {
            depth_smear_transmit(&mut t, g, k);
        }
    }
    t
}

/// Replaces each row's optical depth by its mean over the row's `reach` (heights, weighted
/// by length), column by column through prefix sums in f64, then by the transmission
/// `exp(-k · od)`.
fn depth_smear_transmit(od: &mut [f32], g: &Grid, k: f32) {
    const B: usize = 32;
    let (w, h) = (g.w, g.h);
    // A height as (row, distance below that row's top edge).
    let at = |y: f32| -> (usize, f64) {
        let i = g.ye[1..].partition_point(|&e| e >= y).min(h - 1);
        (i, (g.ye[i] - y).clamp(0.0, g.ye[i] - g.ye[i + 1]) as f64)
    };
    let win: Vec<(usize, f64, usize, f64, f64)> = g
        .reach
        .iter()
        .map(|&[lo, hi]| {
            let (ih, ah) = at(hi);
            let (il, al) = at(lo);
            (ih, ah, il, al, 1.0 / (hi - lo).max(1e-3) as f64)
        })
        .collect();
    let heights: Vec<f64> = (0..h).map(|r| g.row_h(r) as f64).collect();
    let src: &[f32] = od;
    // Columns c0..c1, returned row-major (c1 - c0 wide).
    let smear_cols = |c0: usize, c1: usize| -> Vec<f32> {
        let pw = c1 - c0;
        let mut out = vec![0.0f32; pw * h];
        let mut q = vec![0.0f64; (h + 1) * B];
        let mut b0 = c0;
        while b0 < c1 {
            let bw = B.min(c1 - b0);
            for (r, hr) in heights.iter().enumerate() {
                let (prev, next) = q.split_at_mut((r + 1) * B);
                let prev = &prev[r * B..r * B + bw];
                let row = &src[r * w + b0..r * w + b0 + bw];
                for ((n, p), v) in next[..bw].iter_mut().zip(prev).zip(row) {
                    *n = p + *v as f64 * hr;
                }
            }
            for (r, &(ih, ah, il, al, inv)) in win.iter().enumerate() {
                let qh = &q[ih * B..ih * B + bw];
                let sh = &src[ih * w + b0..ih * w + b0 + bw];
                let ql = &q[il * B..il * B + bw];
                let sl = &src[il * w + b0..il * w + b0 + bw];
                let o = &mut out[r * pw + (b0 - c0)..r * pw + (b0 - c0) + bw];
                for ((((o, qh), sh), ql), sl) in o.iter_mut().zip(qh).zip(sh).zip(ql).zip(sl) {
                    let mean = ((ql + *sl as f64 * al) - (qh + *sh as f64 * ah)) * inv;
                    *o = (-(mean as f32) * k).exp();
                }
            }
            b0 += bw;
        }
        out
    };
    let n = threads();
    let per = w.div_ceil(n).max(1);
    let parts: Vec<(usize, usize, Vec<f32>)> = if n == 1 || w < 4 * B {
        vec![(0, w, smear_cols(0, w))]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..w)
                .step_by(per)
                .map(|c0| {
                    let c1 = (c0 + per).min(w);
                    let f = &smear_cols;
                    (c0, c1, s.spawn(move || f(c0, c1)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(c0, c1, hd)| (c0, c1, hd.join().expect("smear thread")))
                .collect()
        })
    };
    for (c0, c1, part) in parts {
        let pw = c1 - c0;
        for r in 0..h {
            od[r * w + c0..r * w + c1].copy_from_slice(&part[r * pw..(r + 1) * pw]);
        }
    }
}

/// Detector lag along the scan (scan-time order, before any mirroring): each column reads
/// `1 - a` of its own signal and `a` of an exponentially fading memory of the columns
/// before it, so a steady signal (air) is unchanged.
fn afterglow(buf: &mut [f32], w: usize, a: f32, tau_cols: f32) {
    let decay = (-1.0 / tau_cols.max(0.05)).exp();
    bands(buf, w, |_, band| {
        for row in band.chunks_mut(w) {
            let mut lag = row[0];
            for v in row.iter_mut() {
                let now = *v;
                *v = (1.0 - a) * now + a * lag;
                lag = decay * lag + (1.0 - decay) * now;
            }
        }
    });
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
    if sc.afterglow > 0.0 {
        afterglow(&mut t, w, sc.afterglow, sc.afterglow_px * scale);
    }
    let rx = (sc.scatter_mm / sc.pitch_h_at(scale)).round().max(1.0) as usize;
    let ry = (sc.scatter_mm / g.pv).round().max(1.0) as usize;
    let halo = box_mean(&t, w, rx, ry);
    let (row_gain, row_add) = sc.row_response(g.h);
    let mut pr = SimRng::seed_from_u64(pass.noise_seed);
    let mut pulse: Vec<f32> = (0..w)
        .map(|_| {
            if noisy {
                1.0 + gauss(&mut pr) * sc.pulse_sigma
            } else {
                1.0
            }
        })
        .collect();
    if sc.pulse_drop > 0.0 {
        // A defect of the pass, not noise: noise-free renders drop the same pulses. An
        // output column of several pulses loses the share of the one dropped.
        let mut d = SplitMix(pass.noise_seed ^ 0x6a09_e667_f3bc_c908);
        let per_col = (sc.pulse_drop / scale.min(1.0)).min(0.5);
        let keep = 1.0 - scale.min(1.0);
        for v in pulse.iter_mut() {
            if ((d.next() >> 40) as f32) < per_col * (1u64 << 24) as f32 {
                *v *= keep;
            }
        }
    }
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
                row[c] = if sc.adc_step > 1.0 {
                    // A coarser ADC scaled up to 16 bits.
                    ((counts / sc.adc_step).round() * sc.adc_step).clamp(0.0, 65536.0 - sc.adc_step)
                        as u16
                } else {
                    counts.round().clamp(0.0, 65535.0) as u16
                };
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
    fn a_truck_that_stops_still_ends_its_scan() {
        let sc = ScannerFamily::PortalFastScan.scanner(1);
        let pass = Pass {
            knots: vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            vmin: 0.0,
            ..Pass::nominal(false)
        };
        let g = make_grid(&sc, 0.5, 15_000.0, &pass);
        let n_est = (17_000.0 / sc.pitch_h_at(0.5)) as usize;
        assert!(g.w <= 6 * n_est + 16, "{} columns", g.w);
        assert!(g.xe.windows(2).all(|w| w[1] > w[0]));
        assert!(*g.xe.last().unwrap() >= 16_000.0);
    }

    #[test]
    fn family_speed_profiles_follow_their_style() {
        let mut stopped = false;
        for seed in 0..40u64 {
            for f in ScannerFamily::ALL {
                let p = f.pass(seed, false);
                let v: Vec<f32> = (0..=200).map(|i| p.speed(i as f32 / 200.0)).collect();
                let (lo, hi) = v
                    .iter()
                    .fold((f32::MAX, 0.0f32), |a, &x| (a.0.min(x), a.1.max(x)));
                assert!(lo >= 0.2 && hi <= 1.5, "{f}: {lo}..{hi}");
                match f {
                    // Gantries and radar-corrected portals: nearly constant pitch.
                    ScannerFamily::GantryMidSource
                    | ScannerFamily::GantryHighSource
                    | ScannerFamily::PortalRadar => assert!(hi - lo < 0.1, "{f}: {lo}..{hi}"),
                    ScannerFamily::MobileBoom => assert!(lo > 0.6, "{f}: {lo}"),
                    _ => stopped |= lo < 0.4,
                }
                let jitter = f.scanner(0).fan.unwrap().lane_jitter_mm;
                assert!(p.lane_mm.abs() <= jitter && jitter > 0.0);
            }
        }
        assert!(stopped, "some drivers stop and go");
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
