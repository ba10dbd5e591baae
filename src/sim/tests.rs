//! Tests of the simulator as its users see it: deterministic drops whose sidecars validate,
//! consistent geometry, air where there is no truck, physically ordered densities, and
//! transit ground truth that matches what really changed in the pixels.

use rand::SeedableRng;
use time::macros::datetime;
use time::OffsetDateTime;

use super::geom::Grid;
use super::geom::Shapes;
use super::goods::{Ctx, Goods};
use super::scanner::{make_grid, render, transmission, Pass, ScannerModel};
use super::*;
use crate::scan::{ScanMeta, ValidationLimits};

const NOW: OffsetDateTime = datetime!(2026-11-28 04:00:00 UTC);
const SCALE: f64 = 0.2;

fn sim(seed: u64, tamper_rate: f64, format: SimImageFormat) -> Simulator {
    Simulator::with_clock(
        SimOptions {
            seed,
            tamper_rate,
            resolution_scale: SCALE,
            format,
            ..SimOptions::default()
        },
        NOW,
    )
}

fn validate(d: &SimDrop) -> ScanMeta {
    let bytes = serde_json::to_vec(&d.sidecar).unwrap();
    ScanMeta::from_json(&bytes, &ValidationLimits::default(), NOW)
        .unwrap_or_else(|e| panic!("{} does not validate: {e}\n{}", d.scan_id, d.sidecar))
}

#[test]
fn same_seed_same_scans() {
    let mut a = sim(7, 0.5, SimImageFormat::Png);
    let mut b = sim(7, 0.5, SimImageFormat::Png);
    for _ in 0..2 {
        let (x, y) = (a.next_drop(), b.next_drop());
        assert_eq!(x.sidecar, y.sidecar);
        assert_eq!(x.image, y.image);
    }
    let (p, q) = (a.next_transit_pair(), b.next_transit_pair());
    assert_eq!(p.truth, q.truth);
    assert_eq!(p.exit.image, q.exit.image);
    let mut c = sim(8, 0.5, SimImageFormat::Png);
    assert_ne!(
        c.next_drop().image,
        sim(7, 0.5, SimImageFormat::Png).next_drop().image
    );
}

#[test]
fn every_sidecar_validates_and_ids_are_unique() {
    let mut s = sim(11, 0.5, SimImageFormat::Tiff);
    let mut ids = std::collections::HashSet::new();
    let mut drops = Vec::new();
    for _ in 0..8 {
        drops.push(s.next_drop());
    }
    for _ in 0..3 {
        let p = s.next_transit_pair();
        let (e, x) = (validate(&p.entry), validate(&p.exit));
        assert_eq!(e.direction, crate::scan::Direction::Entry);
        assert_eq!(x.direction, crate::scan::Direction::Exit);
        assert_eq!(e.site_id, "KHI");
        assert_eq!(x.site_id, "TKM");
        assert_eq!(e.container_ids, x.container_ids);
        assert!(!e.container_ids.is_empty());
        assert_eq!(e.declaration.number, x.declaration.number);
        assert_eq!(e.declaration.exit_site.as_deref(), Some("TKM"));
        let days = (x.scanned_at - e.scanned_at).whole_hours() as f64 / 24.0;
        assert!((1.0..=5.0).contains(&days), "{days}");
        assert!(NOW - x.scanned_at < time::Duration::days(1));
        drops.push(p.entry);
        drops.push(p.exit);
    }
    for d in &drops {
        let m = validate(d);
        assert!(ids.insert(d.scan_id.clone()), "duplicate {}", d.scan_id);
        assert_eq!(m.scan_id, d.scan_id);
        assert!(d.scan_id.starts_with(&format!("{}-", m.scanner_id)));
        assert!(d
            .scan_id
            .contains(&m.scanned_at.date().to_string().replace('-', "")));
        assert_eq!(m.image.file, d.image_file);
        assert_eq!(d.image_file, format!("{}.tiff", d.scan_id));
        assert_eq!(
            m.image.pixel_meaning,
            crate::scan::PixelMeaning::Transmission
        );
        assert!(!m.declaration.goods.is_empty());
        assert!(NOW - m.scanned_at < time::Duration::days(6));
        match m.declaration.regime {
            crate::scan::Regime::Transit => assert!(
                m.declaration.exit_site.is_some() || m.direction == crate::scan::Direction::Exit
            ),
            crate::scan::Regime::Import => assert_eq!(m.direction, crate::scan::Direction::Import),
            crate::scan::Regime::Export => assert_eq!(m.direction, crate::scan::Direction::Export),
        }
    }
}

#[test]
fn declared_goods_are_the_loaded_goods() {
    let mut s = sim(21, 0.0, SimImageFormat::Png);
    let mut r = SimRng::seed_from_u64(5);
    for _ in 0..6 {
        let mut tag = 1;
        let scene = scene::random_scene(&mut r, false, &mut tag);
        let d = declaration(&mut r, &scene, "import", &s.opts, NOW);
        let declared: Vec<&str> = d["goods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["hs_code"].as_str().unwrap())
            .collect();
        let loaded: Vec<&str> = scene
            .units
            .iter()
            .flat_map(|u| u.items.iter().map(|i| i.goods.hs_code()))
            .collect();
        if loaded.is_empty() {
            assert_eq!(declared, vec!["8609.00"]);
        } else {
            for h in &loaded {
                assert!(
                    declared.contains(h),
                    "{h} loaded but not declared: {declared:?}"
                );
            }
            assert!(declared.iter().all(|h| loaded.contains(h)));
        }
    }
    let _ = s.next_drop();
}

#[test]
fn dimensions_match_pixel_mm_and_scanner() {
    let mut s = sim(3, 0.5, SimImageFormat::Pgm);
    let models = [
        ScannerModel::portal(0),
        ScannerModel::gantry(0),
        ScannerModel::mobile(0),
        ScannerModel::fine_portal(0),
    ];
    for _ in 0..5 {
        let p = s.next_transit_pair();
        for d in [&p.entry, &p.exit, &s.next_drop()] {
            let m = validate(d);
            let [ph, pv] = m.image.pixel_mm.unwrap();
            let code = m.scanner_id.rsplit('-').next().unwrap();
            let sc = models.iter().find(|x| x.code == code).unwrap();
            let (rows, pitch) = sc.rows_at(SCALE as f32);
            assert_eq!(d.image.height() as usize, rows);
            assert!((pv - pitch as f64).abs() < 0.01);
            assert!((ph - sc.pitch_h as f64 / SCALE).abs() < 0.01);
            // The detector column covers the same height at any scale.
            assert!((pv * rows as f64 - (sc.pitch_v * sc.rows as f32) as f64).abs() < 1.0);
            // Speed varies within ±20%, so the width is within that of length / pitch.
            let w = d.image.width() as f64 * ph;
            assert!((8_000.0..32_000.0).contains(&w), "{w}");
        }
        // Entry and exit scanners differ in vertical pitch by 0.85..1.15.
        let r = p.entry.sidecar["image"]["pixel_mm"][1].as_f64().unwrap()
            / p.exit.sidecar["image"]["pixel_mm"][1].as_f64().unwrap();
        assert!((0.85..=1.15).contains(&r) && r != 1.0, "{r}");
    }
}

#[test]
fn air_at_both_ends_is_bright_and_unclipped() {
    let mut s = sim(5, 0.5, SimImageFormat::Png);
    for _ in 0..6 {
        let d = s.next_drop();
        let (w, h) = d.image.dimensions();
        for x in [0, 1, w - 2, w - 1] {
            let mut col: Vec<u16> = (h / 10..h * 9 / 10)
                .map(|y| d.image.get_pixel(x, y)[0])
                .collect();
            col.sort_unstable();
            let med = col[col.len() / 2];
            assert!(
                (52_000..65_000).contains(&med),
                "{} column {x}: {med}",
                d.scan_id
            );
        }
        assert!(d.image.as_raw().iter().all(|&v| v < 65_535));
    }
}

#[test]
fn steel_is_darker_than_garments_and_not_black() {
    let mut r = SimRng::seed_from_u64(9);
    let ctx = Ctx {
        max_w: 3000.0,
        max_h: 2400.0,
    };
    let coil = loop {
        let v = Goods::SteelCoils.column(&mut r, 1, &ctx);
        if !v.is_empty() {
            break v;
        }
    };
    let cloth = Goods::Garments.column(&mut r, 2, &ctx);
    let mut prims = Vec::new();
    for it in &coil {
        it.placed([0.0, 0.0], &mut prims);
    }
    let cloth_x = 3500.0;
    for it in &cloth {
        it.placed([cloth_x, 0.0], &mut prims);
    }
    let sc = ScannerModel::portal(1);
    let pass = Pass {
        air_before: 500.0,
        air_after: 500.0,
        noise_seed: 1,
        ..Pass::nominal(false)
    };
    let g = make_grid(&sc, 0.25, 7000.0, &pass);
    let t = transmission(&prims, &sc, &g);
    let px = render(&prims, &sc, 0.25, &g, &pass, true);
    let mean = |b: [f32; 4], v: &dyn Fn(usize) -> f32| {
        let [c0, r0, c1, r1] = g.px_box(b).unwrap();
        let (c0, c1, r0, r1) = (
            c0 as usize + 2,
            c1 as usize - 2,
            r0 as usize + 2,
            r1 as usize - 2,
        );
        let mut s = 0.0;
        for y in r0..r1 {
            for x in c0..c1 {
                s += v(y * g.w + x);
            }
        }
        s / ((r1 - r0) * (c1 - c0)) as f32
    };
    let cb = cloth[0].bbox();
    let cloth_box = [cb[0] + 100.0, cb[1] + 100.0, cb[2] - 100.0, cb[3] - 100.0];
    let t_cloth = mean(cloth_box, &|i| t[i]);
    // The darkest tenth of the coil: steel a metre thick.
    let [c0, r0, c1, r1] = g.px_box(coil[0].bbox()).unwrap();
    let mut steel: Vec<(f32, u16)> = Vec::new();
    for y in r0 as usize..r1 as usize {
        for x in c0 as usize..c1 as usize {
            steel.push((t[y * g.w + x], px[y * g.w + x]));
        }
    }
    steel.sort_by(|a, b| a.0.total_cmp(&b.0));
    let dark = &steel[..steel.len() / 10];
    let t_steel = dark.iter().map(|v| v.0).sum::<f32>() / dark.len() as f32;
    assert!(
        t_steel < 0.002 && t_cloth > 0.15,
        "steel {t_steel} garments {t_cloth}"
    );
    let c_steel = dark.iter().map(|v| v.1 as f32).sum::<f32>() / dark.len() as f32;
    let c_cloth = mean(cloth_box, &|i| px[i] as f32);
    assert!(
        c_steel > 0.5 * sc.offset && c_steel < 0.05 * c_cloth,
        "{c_steel} {c_cloth}"
    );
}

/// Per-pixel log contrast |ln a - ln b| of two noise-free renders of the same grid (above
/// the dark offset): what an analyst sees change.
fn diff(a: &[u16], b: &[u16], offset: f32) -> Vec<f32> {
    let l = |v: u16| (v as f32 - offset).max(1.0).ln();
    a.iter()
        .zip(b)
        .map(|(x, y)| (l(*x) - l(*y)).abs())
        .collect()
}

fn inside(r: &[[u32; 4]], x: usize, y: usize, slack: u32) -> bool {
    let (x, y) = (x as u32, y as u32);
    r.iter()
        .any(|b| x + slack >= b[0] && x < b[2] + slack && y + slack >= b[1] && y < b[3] + slack)
}

#[test]
fn transit_truth_regions_cover_exactly_what_changed() {
    let mut s = sim(17, 1.0, SimImageFormat::Png);
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..std::env::var("SIM_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
    {
        let (p, int) = s.transit_pair_inner();
        let t = &p.truth;
        assert!(t.tampered, "{:?}", t);
        kinds.insert(t.kind.clone().unwrap());
        assert!(
            !t.regions_entry_px.is_empty() && !t.regions_exit_px.is_empty(),
            "{t:?}"
        );
        let (w, h) = p.entry.image.dimensions();
        for b in &t.regions_entry_px {
            assert!(
                b[0] < b[2] && b[2] <= w && b[1] < b[3] && b[3] <= h,
                "{b:?} in {w}x{h}"
            );
        }
        let (xw, xh) = p.exit.image.dimensions();
        for b in &t.regions_exit_px {
            assert!(
                b[0] < b[2] && b[2] <= xw && b[1] < b[3] && b[3] <= xh,
                "{b:?} in {xw}x{xh}"
            );
        }
        // The same places in both scans: heights agree (the speed only stretches widths).
        let tall = |r: &[[u32; 4]], d: &SimDrop| {
            let pv = d.sidecar["image"]["pixel_mm"][1].as_f64().unwrap();
            r.iter()
                .map(|b| (b[3] - b[1]) as f64 * pv)
                .fold(0.0, f64::max)
        };
        let (he, hx) = (
            tall(&t.regions_entry_px, &p.entry),
            tall(&t.regions_exit_px, &p.exit),
        );
        assert!(
            (he - hx).abs() < 0.25 * he + 40.0,
            "heights {he} vs {hx} mm ({})",
            t.notes
        );
        // Entry scanner, same pass, noise-free: the untampered and the tampered load.
        let g = make_grid(
            &int.entry_scanner,
            int.scale,
            int.entry_scene.length(),
            &int.entry_pass,
        );
        let a = render(
            &int.entry_scene.prims(),
            &int.entry_scanner,
            int.scale,
            &g,
            &int.entry_pass,
            false,
        );
        let b = render(
            &int.tampered_entry_scene.prims(),
            &int.entry_scanner,
            int.scale,
            &g,
            &int.entry_pass,
            false,
        );
        let d = diff(&a, &b, int.entry_scanner.offset);
        // Objects changed only inside the regions (the detector's scatter halo aside).
        let ta = transmission(&int.entry_scene.prims(), &int.entry_scanner, &g);
        let tb = transmission(&int.tampered_entry_scene.prims(), &int.entry_scanner, &g);
        let mirror = |i: usize| {
            let (x, y) = (i % g.w, i / g.w);
            (
                if int.entry_pass.mirrored {
                    g.w - 1 - x
                } else {
                    x
                },
                y,
            )
        };
        for (i, (u, v)) in ta.iter().zip(&tb).enumerate() {
            if (u - v).abs() > 0.003 {
                let (x, y) = mirror(i);
                assert!(
                    inside(&t.regions_entry_px, x, y, 0),
                    "change at ({x},{y}) outside {:?} ({})",
                    t.regions_entry_px,
                    t.notes
                );
            }
        }
        let mut peak_in = 0.0f32;
        for (i, v) in d.iter().enumerate() {
            let (x, y) = (i % g.w, i / g.w);
            if inside(&t.regions_entry_px, x, y, 0) {
                peak_in = peak_in.max(*v);
            }
        }
        assert!(
            peak_in > 0.3,
            "regions {:?} barely change: {peak_in} ({})",
            t.regions_entry_px,
            t.notes
        );
        // Every region holds a real change.
        for r in &t.regions_entry_px {
            let mut m = 0.0f32;
            for y in r[1]..r[3] {
                for x in r[0]..r[2] {
                    m = m.max(d[y as usize * g.w + x as usize]);
                }
            }
            assert!(m > 0.15, "region {r:?} shows no change ({})", t.notes);
        }
    }
    assert!(kinds.len() >= 3, "{kinds:?}");
}

#[test]
fn untampered_pairs_have_no_regions() {
    let mut s = sim(23, 0.0, SimImageFormat::Png);
    for _ in 0..3 {
        let p = s.next_transit_pair();
        assert!(!p.truth.tampered);
        assert!(p.truth.kind.is_none());
        assert!(p.truth.regions_entry_px.is_empty() && p.truth.regions_exit_px.is_empty());
    }
}

/// The side ("left" or "right") whose end of the truck is darker at engine height: the
/// tractor's engine block outweighs anything at the back of a trailer.
fn engine_side(d: &SimDrop) -> &'static str {
    let m = validate(d);
    let code = m.scanner_id.rsplit('-').next().unwrap();
    let sc = [
        ScannerModel::portal(0),
        ScannerModel::gantry(0),
        ScannerModel::mobile(0),
        ScannerModel::fine_portal(0),
    ]
    .into_iter()
    .find(|x| x.code == code)
    .unwrap();
    let [ph, pv] = m.image.pixel_mm.unwrap();
    let (w, h) = d.image.dimensions();
    let y_top = sc.bottom_mm as f64 + h as f64 * pv;
    let row = |y: f64| ((y_top - y) / pv).clamp(0.0, h as f64 - 1.0) as u32;
    let (r0, r1) = (row(1150.0), row(700.0));
    let air = d.image.get_pixel(0, 5)[0] as f32;
    let col_min = |x: u32| (r0..r1).map(|y| d.image.get_pixel(x, y)[0]).min().unwrap() as f32;
    let first = (0..w).find(|&x| col_min(x) < 0.9 * air).unwrap();
    let last = (0..w).rev().find(|&x| col_min(x) < 0.9 * air).unwrap();
    let span = (1500.0 / ph) as u32;
    let mean = |x0: u32, x1: u32| {
        let mut s = 0.0;
        for x in x0..x1 {
            for y in r0..r1 {
                s += (d.image.get_pixel(x, y)[0] as f32).max(1.0).ln();
            }
        }
        s / ((x1 - x0) * (r1 - r0)) as f32
    };
    if mean(first, first + span) < mean(last - span, last) {
        "left"
    } else {
        "right"
    }
}

#[test]
fn cab_side_and_exit_mirroring_match_the_pixels() {
    let mut s = sim(31, 0.0, SimImageFormat::Png);
    let mut seen = [false, false];
    let n = std::env::var("SIM_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for _ in 0..n {
        let p = s.next_transit_pair();
        let cab = |d: &SimDrop| d.sidecar["image"]["cab_side"].as_str().unwrap().to_string();
        assert_eq!(p.truth.mirrored, cab(&p.entry) != cab(&p.exit));
        seen[usize::from(p.truth.mirrored)] = true;
        for d in [&p.entry, &p.exit, &s.next_drop()] {
            assert_eq!(engine_side(d), cab(d), "{}", d.scan_id);
        }
    }
    assert!(seen[0] && seen[1], "both orientations should occur");
}

#[test]
fn images_encode_in_each_format_and_drops_are_written_in_order() {
    let dir = std::env::temp_dir().join(format!("riac-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in [
        SimImageFormat::Tiff,
        SimImageFormat::Png,
        SimImageFormat::Pgm,
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = sim(40 + i as u64, 1.0, f);
        let d = s.next_drop();
        let bytes = d.encode_image();
        let back = if f == SimImageFormat::Pgm {
            let header = format!("P5\n{} {}\n65535\n", d.image.width(), d.image.height());
            assert!(bytes.starts_with(header.as_bytes()));
            let px: Vec<u16> = bytes[header.len()..]
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            ImageBuffer::from_raw(d.image.width(), d.image.height(), px).unwrap()
        } else {
            image::load_from_memory(&bytes).unwrap().into_luma16()
        };
        assert_eq!(back, d.image);
        let p = s.next_transit_pair();
        p.write_to(&dir).unwrap();
        for name in [
            p.entry.image_file.clone(),
            format!("{}.json", p.entry.scan_id),
            p.exit.image_file.clone(),
            format!("{}.json", p.exit.scan_id),
            format!("truth/{}.json", p.exit.scan_id),
        ] {
            assert!(dir.join(&name).is_file(), "{name}");
        }
        let truth: GroundTruth = serde_json::from_slice(
            &std::fs::read(dir.join("truth").join(format!("{}.json", p.exit.scan_id))).unwrap(),
        )
        .unwrap();
        assert_eq!(truth, p.truth);
        let sc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{}.json", p.exit.scan_id))).unwrap(),
        )
        .unwrap();
        assert_eq!(sc, p.exit.sidecar);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn container_ids_carry_valid_check_digits() {
    let mut r = SimRng::seed_from_u64(2);
    for _ in 0..50 {
        let id = scene::container_id(&mut r, false);
        crate::scan::ContainerId::parse(&id).unwrap();
    }
}

#[test]
fn tiny_shapes_still_render() {
    let mut sh = Shapes::default();
    sh.rect(0.0, 500.0, 3.0, 2500.0, 50.0);
    let sc = ScannerModel::portal(2);
    let pass = Pass {
        air_before: 100.0,
        air_after: 100.0,
        noise_seed: 3,
        ..Pass::nominal(false)
    };
    let g = make_grid(&sc, 0.25, 100.0, &pass);
    let t = transmission(&sh.prims, &sc, &g);
    let (r, _) = g.row_range(1500.0, 1501.0);
    let min = t[r * g.w..(r + 1) * g.w]
        .iter()
        .cloned()
        .fold(1.0, f32::min);
    // A 3 mm sheet in a 14 mm column darkens it by about its width, no more.
    assert!(min > 0.7 && min < 0.9, "{min}");
}

/// FNV-1a over bytes.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn drop_hash(h: u64, d: &SimDrop) -> u64 {
    let h = fnv(h, d.sidecar.to_string().as_bytes());
    let px: Vec<u8> = d
        .image
        .as_raw()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    fnv(h, &px)
}

/// The existing scanners' output for fixed seeds: adding scanner families must not change
/// a pixel, a sidecar or a truth box of the default paths.
#[test]
fn default_paths_are_unchanged() {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for seed in [1u64, 2, 3] {
        let mut s = sim(seed, 0.6, SimImageFormat::Png);
        for _ in 0..2 {
            h = drop_hash(h, &s.next_drop());
        }
        for _ in 0..2 {
            let p = s.next_transit_pair();
            h = drop_hash(h, &p.entry);
            h = drop_hash(h, &p.exit);
            h = fnv(h, serde_json::to_string(&p.truth).unwrap().as_bytes());
        }
        h = drop_hash(h, &s.next_drop_of_class("4011.20").unwrap());
    }
    // Computed with the simulator as it was before scanner families existed.
    assert_eq!(h, 0xda2c_25bf_1205_e1c2, "default scans changed: {h:#018x}");
}

/// Median of `v` (sorted copy).
fn median(mut v: Vec<u16>) -> f32 {
    v.sort_unstable();
    v[v.len() / 2] as f32
}

/// Like [`engine_side`], for a family's scan: the engine rows come from the scanner's grid
/// at the lane centreline, and a truck column is one of three dark columns in a row (a
/// dropped pulse is one dark column in the air).
fn family_engine_side(d: &SimDrop, f: ScannerFamily, scale: f32) -> &'static str {
    let g = make_grid(&f.scanner(0), scale, 1000.0, &Pass::nominal(false));
    let (r0, r1) = g.row_range(700.0, 1150.0);
    let (r0, r1) = (r0 as u32, r1 as u32);
    let ph = d.sidecar["image"]["pixel_mm"][0].as_f64().unwrap();
    let (w, h) = d.image.dimensions();
    let air = median((0..h).map(|y| d.image.get_pixel(0, y)[0]).collect());
    // Dead detector lines read dark everywhere: leave them out.
    let live: Vec<u32> = (r0..r1)
        .filter(|&y| d.image.get_pixel(0, y)[0] as f32 > 0.5 * air)
        .collect();
    let col_min = |x: u32| {
        live.iter()
            .map(|&y| d.image.get_pixel(x, y)[0])
            .min()
            .unwrap() as f32
    };
    let truck = |x: u32| (x..x + 3).all(|x| col_min(x) < 0.8 * air);
    let first = (0..w - 3).find(|&x| truck(x)).unwrap();
    let last = (0..w - 3).rev().find(|&x| truck(x)).unwrap() + 2;
    let span = (1500.0 / ph) as u32;
    let mean = |x0: u32, x1: u32| {
        let mut s = 0.0;
        for x in x0..x1 {
            for &y in &live {
                s += (d.image.get_pixel(x, y)[0] as f32).max(1.0).ln();
            }
        }
        s / ((x1 - x0) as usize * live.len()) as f32
    };
    if mean(first, first + span) < mean(last - span, last) {
        "left"
    } else {
        "right"
    }
}

#[test]
fn scanner_families_are_named_and_parse() {
    let mut codes = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for f in ScannerFamily::ALL {
        assert_eq!(f.name().parse::<ScannerFamily>(), Ok(f));
        assert_eq!(f.to_string(), f.name());
        assert!(f
            .name()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-'));
        assert!(names.insert(f.name()));
        assert!((2..=3).contains(&f.code().len()), "{}", f.code());
        assert!(!["P1", "P2", "M1", "P3"].contains(&f.code()));
        assert!(codes.insert(f.code()));
        assert!(!f.model().is_empty());
    }
    assert!(ScannerFamily::ALL.len() >= 6);
    let e = "portal".parse::<ScannerFamily>().unwrap_err();
    assert!(
        e.contains("portal-lowsrc") && e.contains("gamma-cobalt"),
        "{e}"
    );
}

#[test]
fn every_family_renders_a_plausible_scan() {
    for f in ScannerFamily::ALL {
        let sc = f.scanner(0);
        let mut s = sim(50, 0.5, SimImageFormat::Png);
        for _ in 0..4 {
            let d = s.next_drop_with(f);
            let m = validate(&d);
            assert_eq!(m.scanner_id, format!("KHI-{}", f.code()));
            assert!(d.scan_id.starts_with(&format!("KHI-{}-", f.code())));
            assert_eq!(d.sidecar["vendor"]["model"], f.model());
            let (rows, pv) = sc.rows_at(SCALE as f32);
            let [ph, pvr] = m.image.pixel_mm.unwrap();
            assert_eq!(d.image.height() as usize, rows, "{f}");
            assert!((pvr - pv as f64).abs() < 0.01, "{f}: {pvr} vs {pv}");
            assert!((ph - sc.pitch_h as f64 / SCALE).abs() < 0.01, "{f}: {ph}");
            let (w, h) = d.image.dimensions();
            // A truck 8-20 m long plus air, stretched at most ~5x where it stops.
            let w_mm = w as f64 * ph;
            assert!((8_000.0..90_000.0).contains(&w_mm), "{f}: {w_mm} mm");
            // Air at both ends (above the pit or floor channel) reads near gain + offset.
            let full = sc.gain + sc.offset;
            // Three columns at each end, so that a dropped pulse does not count.
            for x in [0, w - 3] {
                let air = median(
                    (h / 20..h * 3 / 5)
                        .flat_map(|y| (x..x + 3).map(move |x| (x, y)))
                        .map(|(x, y)| d.image.get_pixel(x, y)[0])
                        .collect(),
                );
                assert!(
                    (0.85..1.12).contains(&(air / full)),
                    "{f} {} column {x}: air {air} of {full}",
                    d.scan_id
                );
            }
            // The truck is dark somewhere (engine, axles, load).
            let mut v = d.image.as_raw().clone();
            v.sort_unstable();
            let p2 = v[v.len() / 50] as f32;
            assert!(p2 < 0.35 * full, "{f}: 2nd percentile {p2} of {full}");
            assert!(v[v.len() - 1] < 65_535, "{f} clips");
            if sc.adc_step > 1.0 {
                assert!(v.iter().all(|&p| p % sc.adc_step as u16 == 0), "{f}");
            }
            let cab = d.sidecar["image"]["cab_side"].as_str().unwrap();
            assert_eq!(
                family_engine_side(&d, f, SCALE as f32),
                cab,
                "{f} {}",
                d.scan_id
            );
            if f.mirror_p() == 0.0 {
                assert_eq!(cab, "left", "{f}");
            } else if f.mirror_p() == 1.0 {
                assert_eq!(cab, "right", "{f}");
            }
        }
    }
}

#[test]
fn a_family_drop_scans_the_same_truck_as_the_default_drop() {
    let a = sim(9, 0.5, SimImageFormat::Png).next_drop();
    let b = sim(9, 0.5, SimImageFormat::Png).next_drop_with(ScannerFamily::MobileBoom);
    for k in [
        "container_ids",
        "vehicle_plate",
        "declaration",
        "scanned_at",
        "direction",
    ] {
        assert_eq!(a.sidecar[k], b.sidecar[k], "{k}");
    }
    assert_ne!(a.sidecar["scanner_id"], b.sidecar["scanner_id"]);
}

#[test]
fn a_goods_class_drop_of_a_family_is_the_same_load_on_that_family_s_scanner() {
    // What `bench match --families` rests on: the references and test scans of every fold
    // hold the same goods; only the scanner that took them differs.
    let a = sim(11, 0.3, SimImageFormat::Png)
        .next_drop_of_class("2202.10")
        .unwrap();
    let b = sim(11, 0.3, SimImageFormat::Png)
        .next_drop_of_class_with("2202.10", Some(ScannerFamily::GammaCobalt))
        .unwrap();
    for k in ["container_ids", "vehicle_plate", "declaration"] {
        assert_eq!(a.sidecar[k], b.sidecar[k], "{k}");
    }
    assert_ne!(a.sidecar["scanner_id"], b.sidecar["scanner_id"]);
    assert_eq!(
        b.sidecar["scanner_id"],
        sim(12, 0.3, SimImageFormat::Png)
            .next_drop_with(ScannerFamily::GammaCobalt)
            .sidecar["scanner_id"]
    );
}

#[test]
fn a_site_and_family_is_one_physical_scanner() {
    // Its fully dead detector lines are the same rows whatever the simulator's seed.
    let dead_rows = |seed: u64, site: &str, f: ScannerFamily| -> Vec<u32> {
        let mut s = Simulator::with_clock(
            SimOptions {
                seed,
                site_id: site.into(),
                resolution_scale: SCALE,
                ..SimOptions::default()
            },
            NOW,
        );
        let d = s.next_drop_with(f);
        let sc = f.scanner(0);
        let (w, h) = d.image.dimensions();
        // Away from the pit or floor channel at the bottom.
        (0..h * 9 / 10)
            .filter(|&y| {
                let m = median((0..w).map(|x| d.image.get_pixel(x, y)[0]).collect());
                m < 0.05 * sc.gain + 1.5 * sc.offset
            })
            .collect()
    };
    for f in [ScannerFamily::PortalRadar, ScannerFamily::GantryMidSource] {
        let a = dead_rows(1, "KHI", f);
        assert_eq!(a.len(), f.scanner(0).dead_lines, "{f}: {a:?}");
        assert_eq!(a, dead_rows(2, "KHI", f), "{f}");
        assert_eq!(a, dead_rows(3, "KHI", f), "{f}");
    }
}

fn row_heights(g: &Grid) -> Vec<f32> {
    (0..g.h).map(|r| g.row_h(r)).collect()
}

#[test]
fn l_shaped_detector_rows_are_not_evenly_spaced() {
    let nominal = Pass::nominal(false);
    for f in [
        ScannerFamily::PortalLowSource,
        ScannerFamily::GantryHighSource,
    ] {
        let sc = f.scanner(0);
        // Arm and boom.
        assert_eq!(sc.fan.as_ref().unwrap().det.len(), 3);
        let g = make_grid(&sc, 1.0, 10_000.0, &nominal);
        assert_eq!(g.ye.len(), g.h + 1);
        assert!(g.ye.windows(2).all(|e| e[1] < e[0]), "{f}");
        let hs = row_heights(&g);
        let (lo, hi) = hs
            .iter()
            .fold((f32::MAX, 0.0f32), |a, &v| (a.0.min(v), a.1.max(v)));
        assert!(hi > 1.8 * lo, "{f}: rows {lo}..{hi} mm");
        // The vertical arm's rows have the nominal pitch at the lane centreline; the boom's
        // far end (top for a top boom, bottom for a floor boom) is much coarser.
        let mid = hs[g.row_range(2500.0, 2501.0).0];
        assert!((mid - sc.pitch_v).abs() < 0.01 * sc.pitch_v, "{f}: {mid}");
        let far = if f == ScannerFamily::PortalLowSource {
            hs[0]
        } else {
            hs[g.h - 1]
        };
        assert!(far > 1.3 * sc.pitch_v, "{f}: boom end {far}");
        // The row lookup agrees with the edges.
        for r in [0, g.h / 3, g.h - 1] {
            let (a, b) = g.row_range(g.row_center(r), g.row_center(r) + 0.01);
            assert_eq!((a, b), (r, r + 1), "{f}");
        }
    }
    // A straight column's rows are even.
    let g = make_grid(
        &ScannerFamily::GantryMidSource.scanner(0),
        1.0,
        10_000.0,
        &nominal,
    );
    let hs = row_heights(&g);
    let (lo, hi) = hs
        .iter()
        .fold((f32::MAX, 0.0f32), |a, &v| (a.0.min(v), a.1.max(v)));
    assert!(hi < 1.001 * lo, "{lo}..{hi}");
}

#[test]
fn fan_beam_magnification_follows_the_lane_position() {
    let at = |f: ScannerFamily, lane: f32| {
        let pass = Pass {
            lane_mm: lane,
            ..Pass::nominal(false)
        };
        // Without the pit cover, which the farther lane sees more of.
        let sc = ScannerModel {
            ground_od: 0.0,
            ..f.scanner(0)
        };
        let g = make_grid(&sc, 0.5, 10_000.0, &pass);
        // A 2 m tall box: how many rows it fills.
        let mut sh = Shapes::default();
        sh.rect(3000.0, 1000.0, 6000.0, 3000.0, 4.0);
        let t = transmission(&sh.prims, &sc, &g);
        let c = g.col_range(4500.0, 4501.0).0;
        let dark = (0..g.h).filter(|&r| t[r * g.w + c] < 0.1).count();
        (g.ye[0] - g.ye[g.h], dark)
    };
    for f in [
        ScannerFamily::GantryMidSource,
        ScannerFamily::PortalLowSource,
    ] {
        let sod = f.scanner(0).fan.unwrap().sod_mm;
        let (near, near_rows) = at(f, -300.0);
        let (mid, _) = at(f, 0.0);
        let (far, far_rows) = at(f, 300.0);
        // The object plane spanned by the detector grows with the distance from the source.
        assert!(((near / mid) - (sod - 300.0) / sod).abs() < 1e-3, "{f}");
        assert!(((far / mid) - (sod + 300.0) / sod).abs() < 1e-3, "{f}");
        // So the same box looks taller when the truck drives nearer the source.
        let ratio = near_rows as f32 / far_rows as f32;
        let expect = (sod + 300.0) / (sod - 300.0);
        assert!(
            (ratio - expect).abs() < 0.05,
            "{f}: {near_rows} vs {far_rows} rows"
        );
    }
}

#[test]
fn depth_smear_widens_edges_far_from_the_source_height() {
    let f = ScannerFamily::PortalLowSource;
    // Without the pit cover, whose edge the parallax smears too.
    let sc = ScannerModel {
        ground_od: 0.0,
        ..f.scanner(0)
    };
    let fan = sc.fan.clone().unwrap();
    let pass = Pass::nominal(false);
    let g = make_grid(&sc, 1.0, 8000.0, &pass);
    // Two thin plates, 20 mm thick: one at the source's height, one high above it.
    let near_y = fan.source_h_mm;
    let far_y = 4000.0;
    let mut sh = Shapes::default();
    sh.rect(0.0, near_y - 10.0, 3000.0, near_y + 10.0, 3.0);
    sh.rect(4000.0, far_y - 10.0, 7000.0, far_y + 10.0, 3.0);
    let t = transmission(&sh.prims, &sc, &g);
    // Height (mm) of the band a plate darkens, and its total OD·mm (mass is kept).
    let band = |x: f32| {
        let c = g.col_range(x, x + 1.0).0;
        let rows: Vec<usize> = (0..g.h).filter(|&r| t[r * g.w + c] < 0.9999).collect();
        let mm: f32 = rows.iter().map(|&r| g.row_h(r)).sum();
        let od: f32 = (0..g.h).map(|r| -t[r * g.w + c].ln() * g.row_h(r)).sum();
        (rows, mm, od)
    };
    let (near_rows, near_mm, near_od) = band(1500.0);
    let c = g.col_range(1500.0, 1501.0).0;
    for &r in &near_rows {
        eprintln!(
            "row {r} y {} h {} reach {:?} t {}",
            g.row_center(r),
            g.row_h(r),
            g.reach[r],
            t[r * g.w + c]
        );
    }
    let (far_rows, far_mm, far_od) = band(5500.0);
    let expect = (far_y - fan.source_h_mm) * 2350.0 / fan.sod_mm * fan.depth_smear;
    assert!(near_mm < 60.0, "near band {near_mm} mm");
    assert!(far_mm > 5.0 * near_mm, "far {far_mm} vs near {near_mm}");
    assert!(
        (far_mm - expect).abs() < 0.25 * expect,
        "far band {far_mm} mm, expected ~{expect}"
    );
    for od in [near_od, far_od] {
        assert!((od - 60.0).abs() < 3.0, "OD·mm {od}");
    }
    // The truth box of the far plate grows with it.
    let b = g
        .px_box([4000.0, far_y - 10.0, 7000.0, far_y + 10.0])
        .unwrap();
    assert!(far_rows
        .iter()
        .all(|&r| (b[1] as usize..b[3] as usize).contains(&r)));
    assert!(
        (b[3] - b[1]) as usize <= far_rows.len() + 2,
        "{b:?} {}",
        far_rows.len()
    );
}

#[test]
fn afterglow_leaves_a_tail_only_after_an_object_in_scan_order() {
    let scale = 0.5;
    let mut sc = ScannerFamily::PortalFastScan.scanner(3);
    sc.pulse_drop = 0.0;
    assert!(sc.afterglow > 0.0);
    let no_glow = ScannerModel {
        afterglow: 0.0,
        ..sc.clone()
    };
    let mut sh = Shapes::default();
    sh.rect(2000.0, 500.0, 3000.0, 3000.0, 3.0);
    for mirrored in [false, true] {
        let pass = Pass {
            air_before: 1500.0,
            air_after: 3000.0,
            ..Pass::nominal(mirrored)
        };
        let g = make_grid(&sc, scale, 4000.0, &pass);
        let a = render(&sh.prims, &sc, scale, &g, &pass, false);
        let b = render(&sh.prims, &no_glow, scale, &g, &pass, false);
        let r = g.row_range(1500.0, 1501.0).0;
        let (c0, c1) = g.col_range(2000.0, 3000.0);
        // Scan order to image column.
        let img = |c: usize| if mirrored { g.w - 1 - c } else { c };
        let px = |v: &[u16], c: usize| v[r * g.w + img(c)] as f32;
        for c in 0..c0 - 3 {
            assert!((px(&a, c) - px(&b, c)).abs() <= 2.0, "before, column {c}");
        }
        // Just after the object, the lag of its darkness; fading with time.
        let d1 = px(&b, c1 + 3) - px(&a, c1 + 3);
        let d2 = px(&b, c1 + 12) - px(&a, c1 + 12);
        assert!(d1 > 0.01 * sc.gain, "tail {d1} (mirrored {mirrored})");
        assert!(d2 > 0.0 && d2 < 0.5 * d1, "tail fades: {d1} then {d2}");
        // Inside the object, just after its leading edge, the lag of the bright air.
        assert!(px(&a, c0 + 3) > px(&b, c0 + 3) + 0.01 * sc.gain);
    }
}

#[test]
fn fan_beam_pair_truth_covers_the_change_in_both_images() {
    use ScannerFamily::*;
    let mut s = sim(61, 1.0, SimImageFormat::Png);
    let mut mirrored = [false, false];
    for (fe, fx) in [
        (PortalLowSource, GammaCobalt),
        (GantryHighSource, MobileBoom),
        (PortalRadar, GantryMidSource),
        (PortalFastScan, PortalLowSource),
        (GammaCobalt, GantryHighSource),
        (MobileBoom, PortalFastScan),
        (GantryMidSource, PortalRadar),
        (PortalLowSource, GantryHighSource),
    ] {
        let (p, int) = s.transit_pair_core(Some((fe, fx)));
        let t = &p.truth;
        assert!(t.tampered, "{t:?}");
        let (e, x) = (validate(&p.entry), validate(&p.exit));
        assert_eq!(e.scanner_id, format!("KHI-{}", fe.code()));
        assert_eq!(x.scanner_id, format!("TKM-{}", fx.code()));
        assert_eq!(e.container_ids, x.container_ids);
        assert_eq!(e.declaration.number, x.declaration.number);
        let cab = |d: &SimDrop| d.sidecar["image"]["cab_side"].as_str().unwrap().to_string();
        assert_eq!(t.mirrored, cab(&p.entry) != cab(&p.exit));
        mirrored[usize::from(t.mirrored)] = true;
        for (regions, sc, pass, before, after, d) in [
            (
                &t.regions_entry_px,
                &int.entry_scanner,
                &int.entry_pass,
                &int.entry_scene,
                &int.tampered_entry_scene,
                &p.entry,
            ),
            (
                &t.regions_exit_px,
                &int.exit_scanner,
                &int.exit_pass,
                &int.exit_untampered_scene,
                &int.exit_tampered_scene,
                &p.exit,
            ),
        ] {
            assert!(!regions.is_empty(), "{fe}->{fx}: {t:?}");
            let g = make_grid(sc, int.scale, before.length(), pass);
            assert_eq!((g.w as u32, g.h as u32), d.image.dimensions());
            for b in regions {
                assert!(b[0] < b[2] && b[2] <= g.w as u32 && b[1] < b[3] && b[3] <= g.h as u32);
            }
            let ta = transmission(&before.prims(), sc, &g);
            let tb = transmission(&after.prims(), sc, &g);
            let mut peak_in = 0.0f32;
            for (i, (u, v)) in ta.iter().zip(&tb).enumerate() {
                let (c, y) = (i % g.w, i / g.w);
                let x = if pass.mirrored { g.w - 1 - c } else { c };
                let delta = (u - v).abs();
                // Settling moves the exit's load by up to ~40 mm: one pixel of slack there.
                let slack = u32::from(!std::ptr::eq(d, &p.entry));
                if delta > 0.003 {
                    assert!(
                        inside(regions, x, y, slack),
                        "{fe}->{fx}: change at ({x},{y}) outside {regions:?} ({})",
                        t.notes
                    );
                }
                if inside(regions, x, y, 0) {
                    // Optical depth: a change behind dense cargo is small in transmission.
                    let l = |t: f32| t.max(1e-37).ln();
                    peak_in = peak_in.max((l(*u) - l(*v)).abs());
                }
            }
            assert!(
                peak_in > 0.1,
                "{fe}->{fx}: regions barely change ({})",
                t.notes
            );
        }
    }
    assert!(mirrored[1], "a pair with a gantry exit is mirrored");
}
