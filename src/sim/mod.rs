//! Scanner simulator: synthetic side-view cargo X-ray scans of trucks and containers, as
//! scan drops (16-bit image + `riac.scan/1` sidecar) and as transit entry/exit pairs with
//! ground truth of what was tampered with. It owns the physical model (scene in mm,
//! Beer-Lambert transmission, scanner and speed models) and the drop files it writes; it
//! must never ingest, judge or store scans, nor read the node's config: everything it needs
//! comes in through [`SimOptions`] (and the clock, which [`Simulator::with_clock`] fixes).
//!
//! By default each site has its own fixed scanners (parallel-beam models). For domain
//! randomisation, [`Simulator::next_drop_with`] and [`Simulator::next_transit_pair_with`]
//! scan the same kind of truck with any of the named [`ScannerFamily`]s instead: fan-beam
//! portals, gantries and mobiles that differ in geometry, response, noise, lag and defects.

mod classes;
mod geom;
mod goods;
mod scanner;
mod scene;
mod vehicle;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::path::Path;

use image::{ImageBuffer, ImageFormat, Luma};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

pub use classes::{goods_classes, redeclare, rename, GoodsClass};
use goods::Goods;
pub use scanner::ScannerFamily;
use scanner::{make_grid, render, Pass, ScannerModel};
use scene::{Scene, TamperKind};

pub(crate) type SimRng = rand_chacha::ChaCha8Rng;

pub(crate) fn uni(rng: &mut SimRng, a: f32, b: f32) -> f32 {
    if b > a {
        rng.random_range(a..b)
    } else {
        a
    }
}

pub(crate) fn chance(rng: &mut SimRng, p: f32) -> bool {
    rng.random::<f32>() < p
}

/// Container format of the 16-bit grayscale image of a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimImageFormat {
    Tiff,
    Png,
    Pgm,
}

impl SimImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            SimImageFormat::Tiff => "tiff",
            SimImageFormat::Png => "png",
            SimImageFormat::Pgm => "pgm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Same seed, same scans (ids, goods, pixels); timestamps follow the clock.
    pub seed: u64,
    pub site_id: String,
    /// Where transit exits are scanned.
    pub exit_site: String,
    /// Share of transit pairs whose exit load is tampered with (0..1).
    pub tamper_rate: f64,
    /// 1.0 renders at the scanners' real pitch (~4000-7000 px wide); 0.25 gives small,
    /// fast images for tests.
    pub resolution_scale: f64,
    pub format: SimImageFormat,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            site_id: "KHI".into(),
            exit_site: "TKM".into(),
            tamper_rate: 0.3,
            resolution_scale: 1.0,
            format: SimImageFormat::Tiff,
        }
    }
}

/// One scan as a scanner would drop it in the hot folder.
#[derive(Debug, Clone)]
pub struct SimDrop {
    pub scan_id: String,
    pub sidecar: serde_json::Value,
    pub image: ImageBuffer<Luma<u16>, Vec<u16>>,
    /// `<scan_id>.<ext>`, as named in the sidecar's `image.file`.
    pub image_file: String,
}

impl SimDrop {
    fn format(&self) -> SimImageFormat {
        match self.image_file.rsplit_once('.').map(|(_, e)| e) {
            Some("png") => SimImageFormat::Png,
            Some("pgm") => SimImageFormat::Pgm,
            _ => SimImageFormat::Tiff,
        }
    }

    /// The bytes of `image_file` in its format (16-bit grayscale).
    pub fn encode_image(&self) -> Vec<u8> {
        match self.format() {
            SimImageFormat::Pgm => {
                // Written by hand: PGM with maxval 65535 is big-endian P5, which the
                // image crate's encoder would turn into a PAM file.
                let (w, h) = self.image.dimensions();
                let mut out = format!("P5\n{w} {h}\n65535\n").into_bytes();
                out.reserve(self.image.as_raw().len() * 2);
                for v in self.image.as_raw() {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out
            }
            f => {
                let mut cur = io::Cursor::new(Vec::new());
                let fmt = if f == SimImageFormat::Png {
                    ImageFormat::Png
                } else {
                    ImageFormat::Tiff
                };
                self.image
                    .write_to(&mut cur, fmt)
                    .expect("encoding a 16-bit grayscale image in memory cannot fail");
                cur.into_inner()
            }
        }
    }

    /// Writes the image, then the sidecar to a temp name, fsync, rename to
    /// `<scan_id>.json` (the contract's order: the sidecar's arrival means the drop is whole).
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        write_atomic(dir, &self.image_file, &self.encode_image())?;
        let json = serde_json::to_vec_pretty(&self.sidecar).map_err(io::Error::other)?;
        write_atomic(dir, &format!("{}.json", self.scan_id), &json)
    }
}

/// Temp name (a dot file, which watchers skip), fsync, rename, fsync the folder.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Not every platform can fsync a directory; the rename itself already happened.
        let _ = d.sync_all();
    }
    Ok(())
}

/// What really changed between the entry and exit scans of a transit pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub entry_scan_id: String,
    pub exit_scan_id: String,
    pub tampered: bool,
    /// "removed" | "added" | "swapped" | "partial_removal"; `None` when untampered.
    pub kind: Option<String>,
    /// Changed regions as `[x0, y0, x1, y1]` pixel boxes (x1, y1 exclusive) in the entry
    /// image as written (after its own mirroring, if any).
    pub regions_entry_px: Vec<[u32; 4]>,
    /// The same regions in the exit image as written.
    pub regions_exit_px: Vec<[u32; 4]>,
    /// The exit image is mirrored relative to the entry image (cab on the other side).
    pub mirrored: bool,
    pub notes: String,
}

#[derive(Debug, Clone)]
pub struct SimPair {
    pub entry: SimDrop,
    pub exit: SimDrop,
    pub truth: GroundTruth,
}

impl SimPair {
    /// Writes the entry drop, the ground truth as `truth/<exit_scan_id>.json` (a subfolder,
    /// so a node watching `dir` never mistakes it for a sidecar), then the exit drop, so the
    /// truth is in place before the exit's sidecar can trigger anything.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        self.entry.write_to(dir)?;
        self.write_truth(dir)?;
        self.exit.write_to(dir)
    }

    /// Writes only the ground truth, as `truth/<exit_scan_id>.json` under `dir`.
    pub fn write_truth(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.truth).map_err(io::Error::other)?;
        let tdir = dir.join("truth");
        std::fs::create_dir_all(&tdir)?;
        write_atomic(&tdir, &format!("{}.json", self.truth.exit_scan_id), &json)
    }
}

/// What a pair was made from, for tests that re-render it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct PairInternals {
    pub entry_scene: Scene,
    /// The entry scene with the exit's tampering but without settling or a new truck.
    pub tampered_entry_scene: Scene,
    pub entry_scanner: ScannerModel,
    pub entry_pass: Pass,
    /// The entry load before and after tampering, neither settled, on the exit's vehicle:
    /// what the exit scan would show had nothing else moved.
    pub exit_untampered_scene: Scene,
    pub exit_tampered_scene: Scene,
    pub exit_scanner: ScannerModel,
    pub exit_pass: Pass,
    pub scale: f32,
}

/// Deterministic source of scan drops and transit pairs.
pub struct Simulator {
    opts: SimOptions,
    rng: SimRng,
    counter: u32,
    next_tag: u32,
    clock: Option<OffsetDateTime>,
    site_scanners: [ScannerModel; 2],
    /// The exit site's two lanes: a mobile scanner and a fine-pitch portal.
    exit_scanners: [ScannerModel; 2],
}

/// The scanner of `family` installed at `site` (the same detector defects whoever runs the
/// simulator, and whatever its seed) and its pass, derived from the drawn `base` pass.
fn family_scan(family: ScannerFamily, site: &str, base: &Pass) -> (ScannerModel, Pass) {
    let id = format!("{site}-{}", family.code());
    let sc = family.scanner(name_seed(&id));
    let pass = family.pass(base.noise_seed ^ name_seed(family.name()), base.mirrored);
    (sc, pass)
}

fn name_seed(s: &str) -> u64 {
    // FNV-1a: a site's detectors keep their defects whoever runs the simulator.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Simulator {
    pub fn new(opts: SimOptions) -> Self {
        Self::build(opts, None)
    }

    /// Like [`Simulator::new`] but with `now` as the clock, so sidecars are reproducible too.
    pub fn with_clock(opts: SimOptions, now: OffsetDateTime) -> Self {
        Self::build(opts, Some(now))
    }

    fn build(opts: SimOptions, clock: Option<OffsetDateTime>) -> Self {
        let mut rng = SimRng::seed_from_u64(opts.seed);
        let counter = 1 + rng.random_range(0..400u32) * 1000;
        let site_scanners = [
            ScannerModel::portal(name_seed(&format!("{}-P1", opts.site_id))),
            ScannerModel::gantry(name_seed(&format!("{}-P2", opts.site_id))),
        ];
        let exit_scanners = [
            ScannerModel::mobile(name_seed(&format!("{}-M1", opts.exit_site))),
            ScannerModel::fine_portal(name_seed(&format!("{}-P3", opts.exit_site))),
        ];
        Self {
            opts,
            rng,
            counter,
            next_tag: 1,
            clock,
            site_scanners,
            exit_scanners,
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.unwrap_or_else(OffsetDateTime::now_utc)
    }

    fn scale(&self) -> f32 {
        (self.opts.resolution_scale as f32).clamp(0.05, 2.0)
    }

    /// A single scan at this site: an import, export or transit-entry truck.
    pub fn next_drop(&mut self) -> SimDrop {
        self.drop_core(None)
    }

    /// Like [`Simulator::next_drop`] (the same truck and declaration for the same seed), but
    /// scanned by this site's scanner of `family`.
    pub fn next_drop_with(&mut self, family: ScannerFamily) -> SimDrop {
        self.drop_core(Some(family))
    }

    fn drop_core(&mut self, family: Option<ScannerFamily>) -> SimDrop {
        let mut r = SimRng::seed_from_u64(self.rng.random());
        let x: f32 = r.random();
        let mut regime = if x < 0.4 {
            "import"
        } else if x < 0.65 {
            "export"
        } else {
            "transit"
        };
        let scene = scene::random_scene(&mut r, false, &mut self.next_tag);
        if scene.units.iter().all(|u| u.container_id.is_none()) && regime == "transit" {
            regime = "import";
        }
        let direction = match regime {
            "transit" => "entry",
            d => d,
        };
        let site = self.opts.site_id.clone();
        let sc = self.site_scanners[usize::from(chance(&mut r, 0.3))].clone();
        let mirrored = chance(&mut r, family.map_or(0.3, |f| f.mirror_p()));
        let pass = Pass::random(&mut r, mirrored);
        let (sc, pass) = match family {
            Some(f) => family_scan(f, &site, &pass),
            None => (sc, pass),
        };
        let when = self.now() - Duration::seconds(r.random_range(20..1800));
        let decl = declaration(&mut r, &scene, regime, &self.opts, when);
        self.drop_for(&scene, &sc, &pass, &site, when, direction, decl)
    }

    /// The same container scanned at entry here and days later at the exit site, its load
    /// possibly tampered with in between.
    pub fn next_transit_pair(&mut self) -> SimPair {
        self.transit_pair_inner().0
    }

    /// Like [`Simulator::next_transit_pair`] (the same load, tampering and ground truth
    /// semantics), but scanned at entry by this site's scanner of family `entry` and at exit
    /// by the exit site's scanner of family `exit`.
    pub fn next_transit_pair_with(&mut self, entry: ScannerFamily, exit: ScannerFamily) -> SimPair {
        self.transit_pair_core(Some((entry, exit))).0
    }

    pub(crate) fn transit_pair_inner(&mut self) -> (SimPair, PairInternals) {
        self.transit_pair_core(None)
    }

    pub(crate) fn transit_pair_core(
        &mut self,
        families: Option<(ScannerFamily, ScannerFamily)>,
    ) -> (SimPair, PairInternals) {
        let mut r = SimRng::seed_from_u64(self.rng.random());
        let scale = self.scale();
        let entry_scene = scene::random_scene(&mut r, true, &mut self.next_tag);
        let entry_sc = self.site_scanners[usize::from(chance(&mut r, 0.3))].clone();
        let exit_sc = self.exit_scanners[usize::from(chance(&mut r, 0.5))].clone();
        let (entry_sc, exit_sc, entry_pass, exit_pass, flipped) = match families {
            None => {
                let mirrored = chance(&mut r, 0.3);
                let entry_pass = Pass::random(&mut r, mirrored);
                let flipped = chance(&mut r, 0.35);
                let exit_pass = Pass::random(&mut r, entry_pass.mirrored != flipped);
                (entry_sc, exit_sc, entry_pass, exit_pass, flipped)
            }
            Some((fe, fx)) => {
                // The same draws as above, so the load and its tampering are the same for
                // the same seed; each family then orients and drives its own passes.
                let entry_mirrored = chance(&mut r, fe.mirror_p());
                let entry_pass = Pass::random(&mut r, entry_mirrored);
                let exit_mirrored = chance(&mut r, fx.mirror_p());
                let exit_pass = Pass::random(&mut r, exit_mirrored);
                let (esc, epass) = family_scan(fe, &self.opts.site_id, &entry_pass);
                let (xsc, xpass) = family_scan(fx, &self.opts.exit_site, &exit_pass);
                (esc, xsc, epass, xpass, entry_mirrored != exit_mirrored)
            }
        };

        // Tamper first (on the load as it was), then let everything settle on the road.
        let mut units = entry_scene.units.clone();
        let mut tampering = None;
        if r.random::<f64>() < self.opts.tamper_rate {
            let kinds = [
                TamperKind::Removed,
                TamperKind::Added,
                TamperKind::Swapped,
                TamperKind::PartialRemoval,
            ];
            let first = kinds[r.random_range(0..kinds.len())];
            for k in [first, TamperKind::Added] {
                if let Some(t) = scene::tamper(&mut r, &mut units, k, &mut self.next_tag) {
                    tampering = Some(t);
                    break;
                }
            }
        }
        let tampered_entry_scene = Scene {
            units: units.clone(),
            ..entry_scene.clone()
        };
        for u in &mut units {
            scene::settle(&mut r, u);
        }
        let (vehicle, plate) = if chance(&mut r, 0.35) {
            scene::new_vehicle_for(&mut r, &entry_scene)
        } else {
            (entry_scene.vehicle.clone(), entry_scene.plate.clone())
        };
        let exit_untampered_scene = Scene {
            vehicle: vehicle.clone(),
            ..entry_scene.clone()
        };
        let exit_tampered_scene = Scene {
            vehicle: vehicle.clone(),
            ..tampered_entry_scene.clone()
        };
        let exit_scene = Scene {
            vehicle,
            units,
            plate,
        };

        let exit_when = self.now() - Duration::seconds(r.random_range(20..1800));
        let entry_when = exit_when - Duration::seconds(r.random_range(86_400..5 * 86_400));
        let decl = declaration(&mut r, &entry_scene, "transit", &self.opts, entry_when);
        let site = self.opts.site_id.clone();
        let exit_site = self.opts.exit_site.clone();
        let entry = self.drop_for(
            &entry_scene,
            &entry_sc,
            &entry_pass,
            &site,
            entry_when,
            "entry",
            decl.clone(),
        );
        let exit = self.drop_for(
            &exit_scene,
            &exit_sc,
            &exit_pass,
            &exit_site,
            exit_when,
            "exit",
            decl,
        );

        // Changed regions, merged in scene millimetres, then mapped through each scan's grid.
        let entry_grid = make_grid(&entry_sc, scale, entry_scene.length(), &entry_pass);
        let exit_grid = make_grid(&exit_sc, scale, exit_scene.length(), &exit_pass);
        let margin = 40.0;
        let mut entry_boxes = Vec::new();
        let mut exit_boxes = Vec::new();
        if let Some(t) = &tampering {
            for c in &t.changes {
                let grow =
                    |b: [f32; 4]| [b[0] - margin, b[1] - margin, b[2] + margin, b[3] + margin];
                entry_boxes.push(grow(entry_scene.unit_box(c.unit, c.entry_box)));
                let mut xb = c.entry_box;
                if let Some(b) = c
                    .exit_tag
                    .and_then(|tag| scene::tagged_box(&exit_scene.units[c.unit], tag))
                {
                    xb = if t.kind == TamperKind::Added {
                        b
                    } else {
                        [
                            xb[0].min(b[0]),
                            xb[1].min(b[1]),
                            xb[2].max(b[2]),
                            xb[3].max(b[3]),
                        ]
                    };
                }
                exit_boxes.push(grow(exit_scene.unit_box(c.unit, xb)));
            }
        }
        let to_px = |boxes: Vec<[f32; 4]>, g: &geom::Grid, mirrored: bool| -> Vec<[u32; 4]> {
            scene::merge_boxes(boxes, 100.0)
                .into_iter()
                .filter_map(|b| g.px_box(b))
                .map(|[x0, y0, x1, y1]| {
                    if mirrored {
                        [g.w as u32 - x1, y0, g.w as u32 - x0, y1]
                    } else {
                        [x0, y0, x1, y1]
                    }
                })
                .collect()
        };
        let truth = GroundTruth {
            entry_scan_id: entry.scan_id.clone(),
            exit_scan_id: exit.scan_id.clone(),
            tampered: tampering.is_some(),
            kind: tampering.as_ref().map(|t| t.kind.as_str().to_string()),
            regions_entry_px: to_px(entry_boxes, &entry_grid, entry_pass.mirrored),
            regions_exit_px: to_px(exit_boxes, &exit_grid, exit_pass.mirrored),
            mirrored: flipped,
            notes: tampering
                .map(|t| t.notes)
                .unwrap_or_else(|| "untampered".into()),
        };
        let internals = PairInternals {
            entry_scene,
            tampered_entry_scene,
            entry_scanner: entry_sc,
            entry_pass,
            exit_untampered_scene,
            exit_tampered_scene,
            exit_scanner: exit_sc,
            exit_pass,
            scale,
        };
        (SimPair { entry, exit, truth }, internals)
    }

    #[allow(clippy::too_many_arguments)]
    fn drop_for(
        &mut self,
        scene: &Scene,
        sc: &ScannerModel,
        pass: &Pass,
        site: &str,
        when: OffsetDateTime,
        direction: &str,
        declaration: serde_json::Value,
    ) -> SimDrop {
        let scale = self.scale();
        let grid = make_grid(sc, scale, scene.length(), pass);
        let pixels = render(&scene.prims(), &sc.drifted(pass), scale, &grid, pass, true);
        let image = ImageBuffer::from_raw(grid.w as u32, grid.h as u32, pixels)
            .expect("render returns w*h pixels");
        let scanner_id = format!("{site}-{}", sc.code);
        let when = when.replace_nanosecond(0).unwrap_or(when);
        let date = format!(
            "{:04}{:02}{:02}",
            when.year(),
            u8::from(when.month()),
            when.day()
        );
        let scan_id = format!("{scanner_id}-{date}-{:06}", self.counter % 1_000_000);
        self.counter += 1;
        let image_file = format!("{scan_id}.{}", self.opts.format.extension());
        let containers: Vec<&str> = scene
            .units
            .iter()
            .filter_map(|u| u.container_id.as_deref())
            .collect();
        let sidecar = json!({
            "schema": "riac.scan/1",
            "scan_id": scan_id,
            "scanner_id": scanner_id,
            "site_id": site,
            "scanned_at": when.format(&Rfc3339).expect("UTC times format as RFC 3339"),
            "direction": direction,
            "container_ids": containers,
            "vehicle_plate": scene.plate,
            "declaration": declaration,
            "image": {
                "file": image_file,
                "pixel_meaning": "transmission",
                // Nominal pitches, as a scanner reports them: the magnification of this
                // pass is not known to it.
                "pixel_mm": [round3(sc.pitch_h_at(scale)), round3(sc.rows_at(scale).1)],
                "cab_side": if pass.mirrored { "right" } else { "left" },
            },
            "vendor": {
                "model": sc.model,
                "energy_mev": sc.energy_mev,
                "simulated": true,
            },
        });
        SimDrop {
            scan_id,
            sidecar,
            image,
            image_file,
        }
    }
}

fn round3(v: f32) -> f64 {
    (v as f64 * 1000.0).round() / 1000.0
}

/// The customs declaration for what is really loaded (before any tampering).
fn declaration(
    rng: &mut SimRng,
    scene: &Scene,
    regime: &str,
    opts: &SimOptions,
    when: OffsetDateTime,
) -> serde_json::Value {
    let code = match regime {
        "transit" => "TI",
        "export" => "EX",
        _ => "IM",
    };
    let number = format!(
        "{}-{code}-{:07}-{}",
        opts.site_id,
        rng.random_range(0..10_000_000),
        when.year()
    );
    let mut goods: Vec<(Goods, u32, f64)> = Vec::new();
    for u in &scene.units {
        for it in &u.items {
            match goods.iter_mut().find(|g| g.0 == it.goods) {
                Some(g) => {
                    g.1 += it.packages;
                    g.2 += it.mass_kg as f64;
                }
                None => goods.push((it.goods, it.packages, it.mass_kg as f64)),
            }
        }
    }
    let mut list: Vec<serde_json::Value> = goods
        .iter()
        .map(|(g, p, kg)| {
            json!({
                "hs_code": g.hs_code(),
                "description": g.description(),
                "packages": p,
                "gross_kg": (kg / 10.0).round() * 10.0,
            })
        })
        .collect();
    if list.is_empty() {
        let tare: f64 = scene.units.iter().map(|u| u.kind.tare_kg()).sum();
        list.push(json!({
            "hs_code": Goods::Empty.hs_code(),
            "description": Goods::Empty.description(),
            "packages": scene.units.len(),
            "gross_kg": tare,
        }));
    }
    let mut d = json!({ "number": number, "regime": regime, "goods": list });
    if regime == "transit" {
        d["exit_site"] = json!(opts.exit_site);
    }
    d
}
