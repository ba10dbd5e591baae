//! Scans of one chosen goods class, for reference libraries, model training, benchmarks and
//! the demo: a truck whose one carrier holds only that class (or nothing, for an empty
//! container), declared truthfully. [`redeclare`] then makes a false declaration of it. It
//! owns the choice of carrier for a class; it must never change how goods or scanners look.

use rand::{Rng, SeedableRng};
use serde_json::json;
use time::Duration;

use super::goods::Goods;
use super::scanner::{Pass, ScannerFamily};
use super::scene::{container_id, load, Scene, Unit};
use super::vehicle::{build_vehicle, shell, UnitKind};
use super::{chance, declaration, SimDrop, SimRng, Simulator};

/// A goods class the simulator can load, named as a declaration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoodsClass {
    pub hs_code: &'static str,
    pub description: &'static str,
}

/// Every class a declaration can name, the empty container (HS 8609) last.
pub fn goods_classes() -> Vec<GoodsClass> {
    Goods::DECLARABLE
        .iter()
        .map(|g| GoodsClass {
            hs_code: g.hs_code(),
            description: g.description(),
        })
        .collect()
}

fn class_by_code(hs_code: &str) -> Option<Goods> {
    Goods::DECLARABLE
        .iter()
        .copied()
        .find(|g| g.hs_code() == hs_code)
}

/// Replaces the drop's declared goods by one line of `hs_code` (a false declaration when it
/// is not what the truck carries). The description is the class's own when the simulator
/// knows the code.
pub fn redeclare(drop: &mut SimDrop, hs_code: &str) {
    let description = class_by_code(hs_code).map_or("goods", |g| g.description());
    drop.sidecar["declaration"]["goods"] = json!([{
        "hs_code": hs_code,
        "description": description,
        "packages": 1,
        "gross_kg": 10000.0,
    }]);
}

/// Gives the drop another scan id (its image file follows), for sets of drops made by many
/// simulators whose own counters may collide.
pub fn rename(drop: &mut SimDrop, scan_id: &str) {
    let ext = drop
        .image_file
        .rsplit_once('.')
        .map_or("tiff", |(_, e)| e)
        .to_string();
    drop.scan_id = scan_id.to_string();
    drop.image_file = format!("{scan_id}.{ext}");
    drop.sidecar["scan_id"] = json!(scan_id);
    drop.sidecar["image"]["file"] = json!(drop.image_file);
}

fn plate(rng: &mut SimRng) -> String {
    let l: String = (0..3)
        .map(|_| (b'A' + rng.random_range(0..26u8)) as char)
        .collect();
    format!("{l}-{:04}", rng.random_range(0..10_000))
}

impl Simulator {
    /// An import scan of a truck carrying only `hs_code` goods (one of [`goods_classes`]),
    /// declared truthfully; `None` for a code the simulator does not know.
    pub fn next_drop_of_class(&mut self, hs_code: &str) -> Option<SimDrop> {
        self.next_drop_of_class_with(hs_code, None)
    }

    /// Like [`Simulator::next_drop_of_class`] (the same load for the same seed), scanned by
    /// this site's scanner of `family` when one is given.
    pub fn next_drop_of_class_with(
        &mut self,
        hs_code: &str,
        family: Option<ScannerFamily>,
    ) -> Option<SimDrop> {
        let goods = class_by_code(hs_code)?;
        let mut r = SimRng::seed_from_u64(self.rng.random());
        let carriers = goods.carriers();
        let mut scene = None;
        // A column may not fit the first carrier drawn (a coil in a box body): try others.
        for _ in 0..12 {
            let kind = carriers[r.random_range(0..carriers.len())];
            let sh = shell(&mut r, kind);
            let mut unit = Unit {
                kind,
                shell: sh.prims,
                interior: sh.interior,
                items: Vec::new(),
                goods: vec![goods],
                container_id: kind
                    .is_container()
                    .then(|| container_id(&mut r, kind == UnitKind::Reefer40)),
            };
            load(&mut r, &mut unit, &mut self.next_tag);
            if goods != Goods::Empty && unit.items.is_empty() {
                continue;
            }
            let vehicle = build_vehicle(&mut r, &[kind]);
            scene = Some(Scene {
                vehicle,
                units: vec![unit],
                plate: plate(&mut r),
            });
            break;
        }
        let scene = scene?;
        let sc = self.site_scanners[usize::from(chance(&mut r, 0.3))].clone();
        let mirrored = chance(&mut r, family.map_or(0.3, |f| f.mirror_p()));
        let pass = Pass::random(&mut r, mirrored);
        let site = self.opts.site_id.clone();
        let (sc, pass) = match family {
            Some(f) => super::family_scan(f, &site, &pass),
            None => (sc, pass),
        };
        let when = self.now() - Duration::seconds(r.random_range(20..1800));
        let decl = declaration(&mut r, &scene, "import", &self.opts, when);
        Some(self.drop_for(&scene, &sc, &pass, &site, when, "import", decl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimOptions;

    #[test]
    fn every_class_loads_and_is_declared_truthfully_then_falsely() {
        let mut sim = Simulator::new(SimOptions {
            seed: 5,
            resolution_scale: 0.1,
            ..SimOptions::default()
        });
        let classes = goods_classes();
        assert!(classes.len() >= 16);
        assert!(classes.iter().any(|c| c.hs_code == "2202.10"));
        for c in &classes {
            let mut d = sim.next_drop_of_class(c.hs_code).unwrap();
            let goods = d.sidecar["declaration"]["goods"]
                .as_array()
                .unwrap()
                .clone();
            assert_eq!(goods.len(), 1, "{}: {goods:?}", c.hs_code);
            assert_eq!(goods[0]["hs_code"], c.hs_code);
            redeclare(&mut d, "4011.20");
            assert_eq!(d.sidecar["declaration"]["goods"][0]["hs_code"], "4011.20");
            rename(&mut d, "X-1");
            assert_eq!(
                d.sidecar["image"]["file"].as_str(),
                Some(d.image_file.as_str())
            );
            assert!(d.image_file.starts_with("X-1."));
        }
        assert!(sim.next_drop_of_class("1234.56").is_none());
    }
}
