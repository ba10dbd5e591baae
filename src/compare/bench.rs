//! `riac-node bench compare`: the transit check on simulator pairs with ground truth
//! (half of them tampered, changes of 0.25 m² and up), measuring what the issue asks:
//! detection rate of changes of 0.5 m² or more, false alarms on untampered pairs,
//! localisation (IoU of the main region) and time per pair. Never run by tests or the
//! daemon. Rendering the pairs is not timed; `compare` is, from decoded 16-bit images to
//! the transit result (outputs for the operator included with `--outputs`).

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{compare, Input, Status, Thresholds};
use crate::bench::Rate;
use crate::imaging::Gray16;
use crate::scan::CabSide;
use crate::sim::{SimDrop, SimOptions, SimPair, Simulator};

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub pairs: usize,
    pub seed: u64,
    pub scale: f64,
    pub tamper_rate: f64,
    /// Reduce the entry image by this factor first, as an entry package carries it.
    pub entry_reduction: Option<f64>,
    /// Also produce the full-size aligned image and heatmap (timed).
    pub outputs: bool,
    /// Withhold the sidecars' pixel sizes: scales are then estimated from the images.
    pub no_pixel_mm: bool,
    /// Write the drops and truth of every pair the check got wrong here.
    pub dump: Option<PathBuf>,
    /// Print one line per pair.
    pub verbose: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct CompareReport {
    pub pairs: usize,
    pub seed: u64,
    pub resolution_scale: f64,
    pub entry_reduction: Option<f64>,
    pub pixel_mm_given: bool,
    /// Tampered pairs whose main change is 0.5 m² or more: found (`changed` with a region
    /// overlapping the truth).
    pub detection_ge_0_5_m2: Rate,
    /// Tampered pairs whose main change is 0.25-0.5 m².
    pub detection_0_25_to_0_5_m2: Rate,
    /// By kind of tampering (all sizes).
    pub detection_by_kind: std::collections::BTreeMap<String, Rate>,
    /// Untampered pairs reported `changed`.
    pub false_alarms: Rate,
    /// Untampered pairs reported `inconclusive` (referred to an operator, not an alarm).
    pub inconclusive_untampered: Rate,
    pub inconclusive_tampered: Rate,
    /// Of untampered pairs, how many would alert (changed with an alert-level region).
    pub false_alerts: Rate,
    /// Detected tampered pairs: IoU of the truth's largest region with the best region.
    pub iou_main_region_mean: f64,
    pub iou_main_region_median: f64,
    pub ms_per_pair_p50: f64,
    pub ms_per_pair_p95: f64,
    pub ms_per_pair_max: f64,
    pub entry_size_min: [u32; 2],
    pub entry_size_max: [u32; 2],
    pub exit_size_min: [u32; 2],
    pub exit_size_max: [u32; 2],
    pub cpus: usize,
}

fn pixel_mm(d: &SimDrop) -> Option<[f64; 2]> {
    let v = d.sidecar.pointer("/image/pixel_mm")?.as_array()?;
    Some([v.first()?.as_f64()?, v.get(1)?.as_f64()?])
}

fn scanner_id(d: &SimDrop) -> String {
    d.sidecar
        .get("scanner_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

fn cab_side(d: &SimDrop) -> Option<CabSide> {
    CabSide::parse(d.sidecar.pointer("/image/cab_side")?.as_str()?)
}

fn iou(a: [u32; 4], b: [u32; 4]) -> f64 {
    let ix = (a[2].min(b[2]) as f64 - a[0].max(b[0]) as f64).max(0.0);
    let iy = (a[3].min(b[3]) as f64 - a[1].max(b[1]) as f64).max(0.0);
    let inter = ix * iy;
    let area = |r: [u32; 4]| (r[2] - r[0]) as f64 * (r[3] - r[1]) as f64;
    let u = area(a) + area(b) - inter;
    if u > 0.0 {
        inter / u
    } else {
        0.0
    }
}

fn reduce(img: &Gray16, f: f64) -> Gray16 {
    let w = ((img.width() as f64 * f).round() as u32).max(1);
    let h = ((img.height() as f64 * f).round() as u32).max(1);
    image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    v[k]
}

fn dump(dir: &PathBuf, p: &SimPair) {
    let _ = std::fs::create_dir_all(dir);
    if let Err(e) = p.write_to(dir) {
        eprintln!(
            "cannot write {} into {}: {e}",
            p.exit.scan_id,
            dir.display()
        );
    }
}

pub fn run(a: &BenchArgs, th: &Thresholds) -> CompareReport {
    let mut sim = Simulator::new(SimOptions {
        seed: a.seed,
        tamper_rate: a.tamper_rate,
        resolution_scale: a.scale,
        ..SimOptions::default()
    });
    let mut r = CompareReport {
        pairs: a.pairs,
        seed: a.seed,
        resolution_scale: a.scale,
        entry_reduction: a.entry_reduction,
        pixel_mm_given: !a.no_pixel_mm,
        entry_size_min: [u32::MAX; 2],
        exit_size_min: [u32::MAX; 2],
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..CompareReport::default()
    };
    let mut times = Vec::new();
    let mut ious = Vec::new();
    for k in 0..a.pairs {
        let p = sim.next_transit_pair();
        let mut emm = pixel_mm(&p.entry);
        let reduced;
        let mut entry_img = &p.entry.image;
        let mut truth = p.truth.regions_entry_px.clone();
        if let Some(f) = a.entry_reduction {
            reduced = reduce(&p.entry.image, f);
            entry_img = &reduced;
            emm = emm.map(|[h, v]| [h / f, v / f]);
            for b in &mut truth {
                for v in b.iter_mut() {
                    *v = (*v as f64 * f).round() as u32;
                }
            }
        }
        for (mn, mx, img) in [
            (&mut r.entry_size_min, &mut r.entry_size_max, entry_img),
            (&mut r.exit_size_min, &mut r.exit_size_max, &p.exit.image),
        ] {
            let d = [img.width(), img.height()];
            for i in 0..2 {
                mn[i] = mn[i].min(d[i]);
                mx[i] = mx[i].max(d[i]);
            }
        }
        let given = |mm: Option<[f64; 2]>| if a.no_pixel_mm { None } else { mm };
        let t = Instant::now();
        let c = compare(
            Input {
                image: entry_img,
                pixel_mm: given(emm),
                cab_side: cab_side(&p.entry),
            },
            Input {
                image: &p.exit.image,
                pixel_mm: given(pixel_mm(&p.exit)),
                cab_side: cab_side(&p.exit),
            },
            th,
            a.outputs,
        );
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let px_m2 = emm.map_or(0.0, |[h, v]| h * v / 1e6);
        let main = truth
            .iter()
            .copied()
            .max_by_key(|b| (b[2] - b[0]) * (b[3] - b[1]));
        let main_m2 = main.map_or(0.0, |b| (b[2] - b[0]) as f64 * (b[3] - b[1]) as f64 * px_m2);
        let boxes: Vec<[u32; 4]> = c.regions.iter().map(|g| [g.x0, g.y0, g.x1, g.y1]).collect();
        let wrong = if p.truth.tampered {
            let hit = c.status == Status::Changed
                && boxes
                    .iter()
                    .any(|b| truth.iter().any(|t| iou(*b, *t) > 0.0));
            if main_m2 >= 0.5 {
                r.detection_ge_0_5_m2.add(hit);
            } else {
                r.detection_0_25_to_0_5_m2.add(hit);
            }
            r.detection_by_kind
                .entry(p.truth.kind.clone().unwrap_or_default())
                .or_default()
                .add(hit);
            r.inconclusive_tampered
                .add(c.status == Status::Inconclusive);
            if hit {
                if let Some(m) = main {
                    ious.push(boxes.iter().map(|b| iou(*b, m)).fold(0.0, f64::max));
                }
            }
            !hit
        } else {
            let fa = c.status == Status::Changed;
            r.false_alarms.add(fa);
            r.inconclusive_untampered
                .add(c.status == Status::Inconclusive);
            r.false_alerts.add(
                fa && c.regions.iter().any(|g| {
                    g.score >= th.alert_score && g.area_m2.unwrap_or(0.0) >= th.alert_min_area_m2
                }),
            );
            fa || c.status == Status::Inconclusive
        };
        if a.verbose {
            let cands: Vec<String> = c
                .candidates
                .iter()
                .take(3)
                .map(|g| {
                    let hit = truth
                        .iter()
                        .any(|t| iou([g.x0, g.y0, g.x1, g.y1], *t) > 0.0);
                    format!(
                        "{}{:.3}m²/{:.2}/{}/{:+.2}/z{:.0}",
                        if hit { "*" } else { "" },
                        g.area_m2.unwrap_or(0.0),
                        g.score,
                        &g.kind[..1],
                        g.mean_delta,
                        g.mean_z
                    )
                })
                .collect();
            eprintln!(
                "{k:4} {} {:>16} truth {:5.2} m² -> {:?}{} score {:.3} q {:.3} regions {} mirrored {:?}/{} {:.0} ms [{}]{}",
                p.exit.scan_id,
                p.truth.kind.clone().unwrap_or_else(|| "-".into()),
                main_m2,
                c.status,
                if wrong { " WRONG" } else { "" },
                c.change_score.unwrap_or(0.0),
                c.alignment_quality.unwrap_or(0.0),
                c.regions.len(),
                c.mirrored,
                p.truth.mirrored,
                c.timings.total_ms,
                cands.join(" "),
                c.reason.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
            );
        }
        if wrong {
            if let Some(dir) = &a.dump {
                dump(dir, &p);
            }
        }
    }
    r.ms_per_pair_p50 = (percentile(&mut times, 0.5) * 10.0).round() / 10.0;
    r.ms_per_pair_p95 = (percentile(&mut times, 0.95) * 10.0).round() / 10.0;
    r.ms_per_pair_max = (percentile(&mut times, 1.0) * 10.0).round() / 10.0;
    if !ious.is_empty() {
        r.iou_main_region_mean =
            (ious.iter().sum::<f64>() / ious.len() as f64 * 1000.0).round() / 1000.0;
        r.iou_main_region_median = (percentile(&mut ious, 0.5) * 1000.0).round() / 1000.0;
    }
    r
}

/// `bench compare --families`: the protocol that cannot flatter itself. For each family in
/// turn as the entry scanner, with the next one in the list as the exit scanner (so every
/// family is an entry once and an exit once, and entry and exit always differ), it
///   1. calibrates that scanner pair on `calibration_pairs` clean pairs of its own, from
///      seeds never used for testing, as a site's commissioning would;
///   2. runs `pairs` test pairs (`tamper_rate` tampered) from other seeds, and scores each
///      with the uncalibrated defaults and with the pair's calibration.
///
/// None of the families was used to set the check's fixed constants (those predate them),
/// and a calibration only ever sees its own scanner pair's clean pairs, so every figure is
/// on scanners the check was not built on.
#[derive(Debug, Clone)]
pub struct FamilyArgs {
    pub families: Vec<crate::sim::ScannerFamily>,
    pub pairs: usize,
    pub calibration_pairs: usize,
    pub seed: u64,
    pub scale: f64,
    pub tamper_rate: f64,
    pub target_far: f64,
    pub verbose: bool,
}

/// Detection and false alarms under one set of limits.
#[derive(Debug, Serialize, Default)]
pub struct Outcomes {
    /// Tampered pairs whose main change is 0.5 m² or more, found where the truth is.
    pub detection_ge_0_5_m2: Rate,
    pub detection_0_25_to_0_5_m2: Rate,
    /// Untampered pairs reported `changed`.
    pub false_alarms: Rate,
    /// Untampered pairs referred at all (`changed` or `inconclusive`): what an operator
    /// sees as a false alarm.
    pub flagged_untampered: Rate,
}

impl Outcomes {
    fn add_from(&mut self, o: &Outcomes) {
        for (a, b) in [
            (&mut self.detection_ge_0_5_m2, &o.detection_ge_0_5_m2),
            (
                &mut self.detection_0_25_to_0_5_m2,
                &o.detection_0_25_to_0_5_m2,
            ),
            (&mut self.false_alarms, &o.false_alarms),
            (&mut self.flagged_untampered, &o.flagged_untampered),
        ] {
            a.add_counts(b.hits, b.of);
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ComboReport {
    pub entry_family: String,
    pub exit_family: String,
    pub calibration: Option<super::calibrate::PairCalibration>,
    pub calibration_error: Option<String>,
    /// Inconclusive (alignment failed) among all test pairs.
    pub inconclusive: Rate,
    pub uncalibrated: Outcomes,
    pub calibrated: Outcomes,
    /// `compare` alone (decode excluded).
    pub ms_per_pair_p50: f64,
    pub ms_per_pair_p95: f64,
}

#[derive(Debug, Serialize)]
pub struct FamilyReport {
    pub protocol: &'static str,
    pub families: Vec<String>,
    pub pairs_per_combination: usize,
    pub calibration_pairs: usize,
    pub target_false_alarm_rate: f64,
    pub seed: u64,
    pub resolution_scale: f64,
    pub combinations: Vec<ComboReport>,
    pub pooled_uncalibrated: Outcomes,
    pub pooled_calibrated: Outcomes,
    pub pooled_inconclusive: Rate,
    pub ms_per_pair_p95: f64,
    pub cpus: usize,
}

fn compare_pair(p: &SimPair, th: &Thresholds) -> (super::Comparison, f64) {
    let t = Instant::now();
    let c = compare(
        Input {
            image: &p.entry.image,
            pixel_mm: pixel_mm(&p.entry),
            cab_side: cab_side(&p.entry),
        },
        Input {
            image: &p.exit.image,
            pixel_mm: pixel_mm(&p.exit),
            cab_side: cab_side(&p.exit),
        },
        th,
        false,
    );
    (c, t.elapsed().as_secs_f64() * 1000.0)
}

/// Scores one compared test pair under `th` into `o`.
fn score(o: &mut Outcomes, p: &SimPair, c: &super::Comparison, th: &Thresholds) {
    let reported: Vec<&super::Region> = if c.status == Status::Inconclusive {
        Vec::new()
    } else {
        c.candidates
            .iter()
            .filter(|r| th.refers(r) && r.area_m2.unwrap_or(0.0) >= th.min_region_m2)
            .collect()
    };
    let changed = !reported.is_empty();
    if p.truth.tampered {
        let px_m2 = pixel_mm(&p.entry).map_or(0.0, |[h, v]| h * v / 1e6);
        let truth = &p.truth.regions_entry_px;
        let main_m2 = truth
            .iter()
            .map(|b| (b[2] - b[0]) as f64 * (b[3] - b[1]) as f64 * px_m2)
            .fold(0.0, f64::max);
        let hit = reported.iter().any(|g| {
            truth
                .iter()
                .any(|t| iou([g.x0, g.y0, g.x1, g.y1], *t) > 0.0)
        });
        if main_m2 >= 0.5 {
            o.detection_ge_0_5_m2.add(hit);
        } else {
            o.detection_0_25_to_0_5_m2.add(hit);
        }
    } else {
        o.false_alarms.add(changed);
        o.flagged_untampered
            .add(changed || c.status == Status::Inconclusive);
    }
}

pub fn run_families(a: &FamilyArgs, th: &Thresholds) -> FamilyReport {
    let n = a.families.len();
    let mut combos = Vec::new();
    let mut all_times = Vec::new();
    for i in 0..n {
        let (ef, xf) = (a.families[i], a.families[(i + 1) % n]);
        // Disjoint seeds: calibration and test pairs of each combination never overlap,
        // nor do two combinations'.
        let base = a.seed.wrapping_mul(1_000_003).wrapping_add(i as u64 * 7919);
        let mut cal_sim = Simulator::new(SimOptions {
            seed: base.wrapping_add(1),
            tamper_rate: 0.0,
            resolution_scale: a.scale,
            ..SimOptions::default()
        });
        let mut uncal = th.clone();
        uncal.calibrated = None;
        let (mut samples, mut cal_inconclusive) = (Vec::new(), 0);
        let (mut entry_scanner, mut exit_scanner) = (String::new(), String::new());
        for _ in 0..a.calibration_pairs {
            let p = cal_sim.next_transit_pair_with(ef, xf);
            entry_scanner = scanner_id(&p.entry);
            exit_scanner = scanner_id(&p.exit);
            let (c, _) = compare_pair(&p, &uncal);
            match super::calibrate::pair_statistic(&c, &uncal) {
                Some(s) => samples.push(s),
                None => cal_inconclusive += 1,
            }
        }
        let cal = super::calibrate::fit(
            &entry_scanner,
            &exit_scanner,
            &samples,
            cal_inconclusive,
            a.target_far,
            "bench",
        );
        let mut calibrated_th = uncal.clone();
        calibrated_th.calibrated = cal.as_ref().ok().map(|c| c.limits());
        let mut test_sim = Simulator::new(SimOptions {
            seed: base.wrapping_add(2),
            tamper_rate: a.tamper_rate,
            resolution_scale: a.scale,
            ..SimOptions::default()
        });
        let mut r = ComboReport {
            entry_family: ef.to_string(),
            exit_family: xf.to_string(),
            calibration: cal.as_ref().ok().cloned(),
            calibration_error: cal.as_ref().err().map(|e| e.to_string()),
            inconclusive: Rate::default(),
            uncalibrated: Outcomes::default(),
            calibrated: Outcomes::default(),
            ms_per_pair_p50: 0.0,
            ms_per_pair_p95: 0.0,
        };
        let mut times = Vec::new();
        for k in 0..a.pairs {
            let p = test_sim.next_transit_pair_with(ef, xf);
            let (c, ms) = compare_pair(&p, &uncal);
            times.push(ms);
            r.inconclusive.add(c.status == Status::Inconclusive);
            score(&mut r.uncalibrated, &p, &c, &uncal);
            if calibrated_th.calibrated.is_some() {
                score(&mut r.calibrated, &p, &c, &calibrated_th);
            }
            if a.verbose {
                let best = c
                    .candidates
                    .iter()
                    .map(|g| g.evidence_od_m2)
                    .fold(0.0, f64::max);
                eprintln!(
                    "{ef}->{xf} {k:3} tampered {} {:?} best evidence {best:.4} q {:.2}{}",
                    p.truth.tampered,
                    c.status,
                    c.alignment_quality.unwrap_or(0.0),
                    c.reason
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                );
                for g in c.candidates.iter().filter(|g| g.evidence_od_m2 > 0.0) {
                    eprintln!(
                        "    region [{} {} {} {}] {:.2} m² evidence {:.3} {} delta {:.3} z {:.1}",
                        g.x0,
                        g.y0,
                        g.x1,
                        g.y1,
                        g.area_m2.unwrap_or(0.0),
                        g.evidence_od_m2,
                        g.kind,
                        g.mean_delta,
                        g.mean_z
                    );
                }
            }
        }
        all_times.extend_from_slice(&times);
        r.ms_per_pair_p50 = (percentile(&mut times, 0.5) * 10.0).round() / 10.0;
        r.ms_per_pair_p95 = (percentile(&mut times, 0.95) * 10.0).round() / 10.0;
        eprintln!(
            "{ef}->{xf}: uncalibrated {:.2} found at {:.2} flagged; calibrated {:.2} found at {:.2} flagged; inconclusive {:.2}",
            r.uncalibrated.detection_ge_0_5_m2.rate,
            r.uncalibrated.flagged_untampered.rate,
            r.calibrated.detection_ge_0_5_m2.rate,
            r.calibrated.flagged_untampered.rate,
            r.inconclusive.rate
        );
        combos.push(r);
    }
    let mut pooled_u = Outcomes::default();
    let mut pooled_c = Outcomes::default();
    let mut pooled_i = Rate::default();
    for c in &combos {
        pooled_u.add_from(&c.uncalibrated);
        pooled_c.add_from(&c.calibrated);
        pooled_i.add_counts(c.inconclusive.hits, c.inconclusive.of);
    }
    FamilyReport {
        protocol: "entry family i, exit family i+1 (cyclic); each pair of scanners calibrated only on its own clean pairs from seeds disjoint from its test pairs; no family was used to set the check's constants",
        families: a.families.iter().map(|f| f.to_string()).collect(),
        pairs_per_combination: a.pairs,
        calibration_pairs: a.calibration_pairs,
        target_false_alarm_rate: a.target_far,
        seed: a.seed,
        resolution_scale: a.scale,
        combinations: combos,
        pooled_uncalibrated: pooled_u,
        pooled_calibrated: pooled_c,
        pooled_inconclusive: pooled_i,
        ms_per_pair_p95: (percentile(&mut all_times, 0.95) * 10.0).round() / 10.0,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}
