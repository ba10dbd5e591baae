//! Whole scanned scenes: a vehicle with its load carriers (containers, box body, flatbed),
//! goods loaded into them column by column, the settling of a load between two scans and
//! the tampering of a transit load (removal, addition, swap, partial unloading) with its
//! changed regions. It owns what is where on the truck; it must never render pixels or
//! write sidecars.

use rand::Rng;

use super::geom::Prim;
use super::goods::{concealed, Ctx, Goods, Item};
use super::vehicle::{build_vehicle, shell, UnitKind, Vehicle};
use super::{chance, uni, SimRng};

/// One load carrier and its cargo, in the unit frame (x from its front end).
#[derive(Clone)]
pub(crate) struct Unit {
    pub kind: UnitKind,
    pub shell: Vec<Prim>,
    pub interior: [f32; 4],
    pub items: Vec<Item>,
    /// Declared goods classes, in loading order.
    pub goods: Vec<Goods>,
    pub container_id: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Scene {
    pub vehicle: Vehicle,
    pub units: Vec<Unit>,
    pub plate: String,
}

impl Scene {
    /// Every shape in scene coordinates.
    pub fn prims(&self) -> Vec<Prim> {
        let mut out = self.vehicle.prims.clone();
        for (u, o) in self.units.iter().zip(&self.vehicle.origins) {
            for p in &u.shell {
                let mut q = p.clone();
                q.transform([0.0, 0.0], 0.0, *o);
                out.push(q);
            }
            for it in &u.items {
                it.placed(*o, &mut out);
            }
        }
        out
    }

    pub fn length(&self) -> f32 {
        self.vehicle.length
    }

    /// A box in unit `u`'s frame, in scene coordinates.
    pub fn unit_box(&self, u: usize, b: [f32; 4]) -> [f32; 4] {
        let o = self.vehicle.origins[u];
        [b[0] + o[0], b[1] + o[1], b[2] + o[0], b[3] + o[1]]
    }

    pub fn unit_kinds(&self) -> Vec<UnitKind> {
        self.units.iter().map(|u| u.kind).collect()
    }
}

/// Payload limit per carrier (kg): heavy goods stop loading here.
fn payload_kg(kind: UnitKind) -> f32 {
    match kind {
        UnitKind::Dry20 => 26_000.0,
        UnitKind::BoxBody | UnitKind::Flatbed => 24_000.0,
        _ => 27_000.0,
    }
}

/// Picks the goods classes of one carrier.
pub(crate) fn random_goods(rng: &mut SimRng, kind: UnitKind) -> Vec<Goods> {
    use Goods::*;
    if kind == UnitKind::Reefer40 {
        return vec![if chance(rng, 0.85) { Bananas } else { Empty }];
    }
    if kind.is_container() && chance(rng, 0.08) {
        return vec![Empty];
    }
    let pool: &[Goods] = match kind {
        UnitKind::Dry20 => &[
            Tyres,
            Garments,
            Electronics,
            Cigarettes,
            Rice,
            Fertiliser,
            SteelCoils,
            SteelRods,
            Tiles,
            PaperRolls,
            Furniture,
            Cars,
            Machinery,
        ],
        UnitKind::Flatbed => &[SteelCoils, SteelRods, Machinery, PaperRolls, Tiles],
        UnitKind::BoxBody => &[
            Garments,
            Electronics,
            Furniture,
            Tyres,
            Cigarettes,
            Rice,
            Bananas,
        ],
        _ => &[
            Cars,
            Tyres,
            Garments,
            Electronics,
            Cigarettes,
            Rice,
            Fertiliser,
            Furniture,
            PaperRolls,
            Machinery,
            Garments,
            Furniture,
            Electronics,
            SteelRods,
        ],
    };
    let first = pool[rng.random_range(0..pool.len())];
    let mut out = vec![first];
    if first.mixable() && chance(rng, 0.35) {
        let mix: Vec<Goods> = [Garments, Electronics, Furniture, Tyres, Cigarettes]
            .into_iter()
            .filter(|g| *g != first)
            .collect();
        out.push(mix[rng.random_range(0..mix.len())]);
        if chance(rng, 0.25) {
            let g = mix[rng.random_range(0..mix.len())];
            if !out.contains(&g) {
                out.push(g);
            }
        }
    }
    out
}

fn column_width(items: &[Item]) -> f32 {
    items.iter().map(|i| i.bbox()[2]).fold(0.0, f32::max)
}

/// Loads `unit` with its goods, front to back, each class in its own stretch.
pub(crate) fn load(rng: &mut SimRng, unit: &mut Unit, next_tag: &mut u32) {
    let [x0, y0, x1, y1] = unit.interior;
    let max_h = y1 - y0;
    let classes: Vec<Goods> = unit
        .goods
        .iter()
        .copied()
        .filter(|g| *g != Goods::Empty)
        .collect();
    if classes.is_empty() {
        return;
    }
    let fill = if chance(rng, 0.25) {
        uni(rng, 0.35, 0.8)
    } else {
        uni(rng, 0.85, 1.0)
    };
    let weights: Vec<f32> = classes.iter().map(|_| uni(rng, 0.5, 1.5)).collect();
    let total: f32 = weights.iter().sum();
    let mut seg0 = x0 + uni(rng, 0.0, 60.0);
    let mut mass = 0.0f32;
    let limit = payload_kg(unit.kind);
    for (g, wgt) in classes.iter().zip(&weights) {
        let seg1 = seg0 + (x1 - x0) * wgt / total;
        let stop = seg0 + (seg1 - seg0) * fill;
        let style: u64 = rng.random();
        let mut cols: Vec<(Vec<Item>, f32)> = Vec::new();
        let mut cursor = seg0;
        // Bulk bags are loaded lower along the whole box rather than full height at the
        // front: the payload is spread over the floor.
        let col_h = if matches!(g, Goods::Rice | Goods::Fertiliser) {
            let by_weight = limit / (0.85e-6 * (seg1 - seg0) * 2300.0);
            by_weight.clamp(900.0, max_h)
        } else {
            max_h
        };
        while cursor < stop {
            let ctx = Ctx {
                max_w: seg1.min(x1) - cursor,
                max_h: col_h,
            };
            let items = g.column(rng, style, &ctx);
            if items.is_empty() {
                break;
            }
            let m: f32 = items.iter().map(|i| i.mass_kg).sum();
            if mass + m > limit {
                break;
            }
            mass += m;
            let w = column_width(&items);
            let gap = g.gap(rng);
            cols.push((items, w));
            cursor += w + gap;
        }
        // Heavy goods are spread over the floor to share the load between the axles.
        let used: f32 = cols.iter().map(|c| c.1).sum();
        let spread = matches!(g, Goods::SteelCoils | Goods::Tiles | Goods::Machinery)
            && !cols.is_empty()
            && cursor < seg1;
        let gap = if spread {
            ((seg1.min(x1) - seg0 - used) / (cols.len() + 1) as f32).max(0.0)
        } else {
            0.0
        };
        let mut x = seg0 + gap;
        for (items, w) in cols {
            let col_gap = if spread { gap } else { g.gap(rng) };
            for mut it in items {
                it.x += x;
                it.y += y0;
                it.tag = *next_tag;
                *next_tag += 1;
                unit.items.push(it);
            }
            x += w + col_gap;
        }
        seg0 = seg1;
    }
    if unit.kind == UnitKind::Flatbed {
        lash(rng, unit);
    }
}

/// Straps over flatbed goods, down to the deck edge.
fn lash(rng: &mut SimRng, unit: &mut Unit) {
    let mut s = super::geom::Shapes::default();
    for it in &unit.items {
        let b = it.bbox();
        let x = 0.5 * (b[0] + b[2]) + uni(rng, -100.0, 100.0);
        s.seg(
            [x, b[3]],
            [x + uni(rng, -300.0, 300.0), unit.interior[1]],
            10.0,
            0.3,
        );
    }
    unit.shell.extend(s.prims);
}

/// ISO 6346 container id with a valid check digit.
pub(crate) fn container_id(rng: &mut SimRng, reefer: bool) -> String {
    const OWNERS: [&str; 16] = [
        "MSCU", "MAEU", "MRKU", "CMAU", "HLXU", "OOLU", "COSU", "CSNU", "EGHU", "TGHU", "TCLU",
        "SEGU", "GESU", "ONEU", "YMLU", "HDMU",
    ];
    const REEFER: [&str; 4] = ["MWCU", "SZLU", "CXRU", "TRIU"];
    let owner = if reefer {
        REEFER[rng.random_range(0..REEFER.len())]
    } else {
        OWNERS[rng.random_range(0..OWNERS.len())]
    };
    let first10 = format!("{owner}{:06}", rng.random_range(0..1_000_000u32));
    let cd = crate::scan::check_digit(&first10);
    format!("{first10}{cd}")
}

fn plate(rng: &mut SimRng) -> String {
    let l: String = (0..3)
        .map(|_| (b'A' + rng.random_range(0..26u8)) as char)
        .collect();
    format!("{l}-{:04}", rng.random_range(0..10_000))
}

/// The carriers of one truck; `container_only` for transit (pairing needs container ids).
pub(crate) fn random_units(rng: &mut SimRng, container_only: bool) -> Vec<UnitKind> {
    let x: f32 = rng.random();
    let kinds = if x < 0.38 {
        vec![UnitKind::Dry40]
    } else if x < 0.48 {
        vec![UnitKind::HighCube40]
    } else if x < 0.55 {
        vec![UnitKind::Reefer40]
    } else if x < 0.76 {
        vec![UnitKind::Dry20]
    } else if x < 0.86 {
        vec![UnitKind::Dry20, UnitKind::Dry20]
    } else if x < 0.95 {
        vec![UnitKind::BoxBody]
    } else {
        vec![UnitKind::Flatbed]
    };
    if container_only && !kinds[0].is_container() {
        return vec![UnitKind::Dry40];
    }
    kinds
}

/// A loaded truck.
pub(crate) fn random_scene(rng: &mut SimRng, container_only: bool, next_tag: &mut u32) -> Scene {
    let kinds = random_units(rng, container_only);
    let vehicle = build_vehicle(rng, &kinds);
    let mut units = Vec::new();
    for k in kinds {
        let sh = shell(rng, k);
        let goods = random_goods(rng, k);
        let mut u = Unit {
            kind: k,
            shell: sh.prims,
            interior: sh.interior,
            items: Vec::new(),
            goods,
            container_id: k
                .is_container()
                .then(|| container_id(rng, k == UnitKind::Reefer40)),
        };
        load(rng, &mut u, next_tag);
        if u.items.is_empty() {
            u.goods = vec![Goods::Empty];
        }
        units.push(u);
    }
    Scene {
        vehicle,
        units,
        plate: plate(rng),
    }
}

/// The same carriers, as moved onto another tractor and trailer.
pub(crate) fn new_vehicle_for(rng: &mut SimRng, scene: &Scene) -> (Vehicle, String) {
    (build_vehicle(rng, &scene.unit_kinds()), plate(rng))
}

/// Goods shift a few centimetres on the road (lashed heavy goods less): each loading
/// column slides as a whole, into the gaps around it but never into its neighbours.
pub(crate) fn settle(rng: &mut SimRng, unit: &mut Unit) {
    let [x0, y0, x1, _] = unit.interior;
    let boxes: Vec<[f32; 4]> = unit.items.iter().map(|i| i.bbox()).collect();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| boxes[a][0].total_cmp(&boxes[b][0]));
    let mut cols: Vec<([f32; 2], Vec<usize>)> = Vec::new();
    for i in order {
        let b = boxes[i];
        if let Some((span, members)) = cols.last_mut() {
            let ov = span[1].min(b[2]) - span[0].max(b[0]);
            if ov > 0.5 * (b[2] - b[0]).min(span[1] - span[0]) {
                span[1] = span[1].max(b[2]);
                members.push(i);
                continue;
            }
        }
        cols.push(([b[0], b[2]], vec![i]));
    }
    let mut prev_end = x0;
    for k in 0..cols.len() {
        let (span, members) = &cols[k];
        let sd = match unit.items[members[0]].goods {
            Goods::SteelCoils | Goods::Cars | Goods::Machinery | Goods::SteelRods => 6.0,
            _ => 14.0,
        };
        let want = ((uni(rng, -1.0, 1.0) + uni(rng, -1.0, 1.0)) * sd).clamp(-35.0, 35.0);
        let next = cols.get(k + 1).map_or(x1, |c| c.0[0]);
        let lo = (prev_end - span[0]).min(0.0);
        let hi = (0.5 * (next - span[1])).max(0.0);
        let d = want.clamp(lo, hi);
        for &i in members {
            let it = &mut unit.items[i];
            let slide = if boxes[i][1] > y0 + 50.0 {
                uni(rng, -4.0, 4.0)
            } else {
                0.0
            };
            it.x += d + slide;
            if matches!(it.goods, Goods::Furniture | Goods::Cars) && chance(rng, 0.3) {
                it.angle += super::geom::deg(uni(rng, -0.4, 0.4));
            }
        }
        prev_end = span[1] + d;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TamperKind {
    Removed,
    Added,
    Swapped,
    PartialRemoval,
}

impl TamperKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TamperKind::Removed => "removed",
            TamperKind::Added => "added",
            TamperKind::Swapped => "swapped",
            TamperKind::PartialRemoval => "partial_removal",
        }
    }
}

/// One changed place: its box in the untampered unit frame, and the tag of the item that
/// stands there after tampering (whose settled position adds to the exit box).
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub unit: usize,
    pub entry_box: [f32; 4],
    pub exit_tag: Option<u32>,
}

pub(crate) struct Tampering {
    pub kind: TamperKind,
    pub changes: Vec<Change>,
    pub notes: String,
}

fn union(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[2].max(b[2]),
        a[3].max(b[3]),
    ]
}

fn area(b: [f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

fn overlaps_x(a: [f32; 4], b: [f32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2]
}

/// Tampers with the load of `units` (untouched if nothing could be done: `None`).
pub(crate) fn tamper(
    rng: &mut SimRng,
    units: &mut [Unit],
    kind: TamperKind,
    next_tag: &mut u32,
) -> Option<Tampering> {
    let loaded: Vec<usize> = (0..units.len())
        .filter(|&u| !units[u].items.is_empty())
        .collect();
    match kind {
        TamperKind::Removed => {
            let &u = loaded.get(rng.random_range(0..loaded.len().max(1)))?;
            let items = &mut units[u].items;
            let big: Vec<usize> = (0..items.len())
                .filter(|&i| area(items[i].bbox()) >= MIN_CHANGE_MM2)
                .collect();
            let &i = big.get(rng.random_range(0..big.len().max(1)))?;
            let b = items[i].bbox();
            let mut take = vec![i];
            if chance(rng, 0.4) {
                // A group: the item and whatever shares its column.
                take.extend(
                    (0..items.len())
                        .filter(|&j| j != i && overlaps_x(items[j].bbox(), b) && chance(rng, 0.7)),
                );
            }
            take.sort_unstable();
            take.dedup();
            let goods = items[i].goods;
            let mut changes = Vec::new();
            for &j in take.iter().rev() {
                let it = items.remove(j);
                changes.push(Change {
                    unit: u,
                    entry_box: it.bbox(),
                    exit_tag: None,
                });
            }
            Some(Tampering {
                kind,
                notes: format!(
                    "{} item(s) of {} ({}) removed",
                    changes.len(),
                    goods.hs_code(),
                    goods.description()
                ),
                changes,
            })
        }
        TamperKind::Added => {
            let u = if loaded.is_empty() {
                rng.random_range(0..units.len())
            } else {
                loaded[rng.random_range(0..loaded.len())]
            };
            let unit = &mut units[u];
            let mut pkg = consignment(rng);
            let [x0, y0, x1, y1] = unit.interior;
            // Among light goods where there are some, else anywhere on the floor.
            let hosts: Vec<[f32; 4]> = unit
                .items
                .iter()
                .filter(|i| i.mean_od() < 2.6 && i.w > pkg.w + 40.0 && i.h > pkg.h + 40.0)
                .map(|i| i.bbox())
                .collect();
            let (px, py) = if let Some(&hb) = hosts.get(rng.random_range(0..hosts.len().max(1))) {
                (
                    uni(rng, hb[0] + 20.0, hb[2] - pkg.w - 20.0),
                    uni(rng, hb[1] + 20.0, hb[3] - pkg.h - 20.0),
                )
            } else {
                (
                    uni(rng, x0 + 100.0, x1 - pkg.w - 100.0),
                    y0 + uni(rng, 0.0, 0.3 * (y1 - y0)),
                )
            };
            pkg.x = px.clamp(x0 + 10.0, x1 - pkg.w - 10.0);
            pkg.y = py.clamp(y0, y1 - pkg.h - 10.0);
            pkg.tag = *next_tag;
            *next_tag += 1;
            let change = Change {
                unit: u,
                entry_box: pkg.bbox(),
                exit_tag: Some(pkg.tag),
            };
            let notes = format!(
                "undeclared package {:.0}x{:.0} mm (~{:.0} kg) added",
                pkg.w, pkg.h, pkg.mass_kg
            );
            unit.items.push(pkg);
            Some(Tampering {
                kind,
                changes: vec![change],
                notes,
            })
        }
        TamperKind::Swapped => {
            let &u = loaded.get(rng.random_range(0..loaded.len().max(1)))?;
            let unit = &mut units[u];
            let big: Vec<usize> = (0..unit.items.len())
                .filter(|&i| unit.items[i].w > 700.0 && unit.items[i].h > 500.0)
                .collect();
            let &i = big.get(rng.random_range(0..big.len().max(1)))?;
            let old = unit.items[i].clone();
            let target = old.mean_od();
            let choices: Vec<Goods> = [
                Goods::Garments,
                Goods::Electronics,
                Goods::Cigarettes,
                Goods::Tyres,
                Goods::Bananas,
                Goods::Rice,
                Goods::Tiles,
                Goods::PaperRolls,
                Goods::Machinery,
                Goods::Furniture,
            ]
            .into_iter()
            .filter(|g| *g != old.goods)
            .collect();
            let mut made = None;
            for _ in 0..8 {
                let g = choices[rng.random_range(0..choices.len())];
                let ctx = Ctx {
                    max_w: old.w + 150.0,
                    max_h: old.h + 100.0,
                };
                let style: u64 = rng.random();
                let parts = g.column(rng, style, &ctx);
                if parts.is_empty() {
                    continue;
                }
                let mut prims = Vec::new();
                let mut packages = 0;
                for p in &parts {
                    p.placed([0.0, 0.0], &mut prims);
                    packages += p.packages;
                }
                let mut it = Item::from_shapes(g, super::geom::Shapes { prims }, packages);
                if it.w < 0.5 * old.w || it.h < 0.4 * old.h {
                    continue;
                }
                let k = (target / it.mean_od().max(1e-3)).clamp(0.2, 5.0);
                it.scale_od(k);
                it.x = old.x;
                it.y = old.y;
                made = Some(it);
                break;
            }
            let mut it = made?;
            it.tag = *next_tag;
            *next_tag += 1;
            let change = Change {
                unit: u,
                entry_box: union(old.bbox(), it.bbox()),
                exit_tag: Some(it.tag),
            };
            let notes = format!(
                "{} ({}) replaced by {} ({}) of similar density",
                old.goods.hs_code(),
                old.goods.description(),
                it.goods.hs_code(),
                it.goods.description()
            );
            unit.items[i] = it;
            Some(Tampering {
                kind,
                changes: vec![change],
                notes,
            })
        }
        TamperKind::PartialRemoval => {
            let cand: Vec<usize> = loaded
                .iter()
                .copied()
                .filter(|&u| units[u].items.len() >= 3)
                .collect();
            let &u = cand.get(rng.random_range(0..cand.len().max(1)))?;
            let unit = &mut units[u];
            let boxes: Vec<[f32; 4]> = unit.items.iter().map(|i| i.bbox()).collect();
            let floor = unit.interior[1];
            let upper: Vec<usize> = (0..boxes.len())
                .filter(|&i| boxes[i][1] > floor + 300.0)
                .collect();
            let top_layer = !upper.is_empty() && chance(rng, 0.5);
            let mut take: Vec<usize> = if top_layer {
                let mut n = ((upper.len() as f32 * uni(rng, 0.3, 0.8)).ceil() as usize).max(1);
                let start = rng.random_range(0..=upper.len() - n);
                // At least the smallest change the check is specified for.
                while n < upper.len() - start
                    && upper[start..start + n]
                        .iter()
                        .map(|&i| area(boxes[i]))
                        .sum::<f32>()
                        < MIN_CHANGE_MM2
                {
                    n += 1;
                }
                upper[start..start + n].to_vec()
            } else {
                // Unloaded from the door end.
                let mut order: Vec<usize> = (0..boxes.len()).collect();
                order.sort_by(|&a, &b| boxes[b][2].total_cmp(&boxes[a][2]));
                let mut n = ((boxes.len() as f32 * uni(rng, 0.2, 0.45)).ceil() as usize)
                    .clamp(1, boxes.len() - 1);
                while n < boxes.len() - 1
                    && order[..n].iter().map(|&i| area(boxes[i])).sum::<f32>() < MIN_CHANGE_MM2
                {
                    n += 1;
                }
                order.truncate(n);
                order
            };
            take.sort_unstable();
            let mut changes = Vec::new();
            for &j in take.iter().rev() {
                let it = unit.items.remove(j);
                changes.push(Change {
                    unit: u,
                    entry_box: it.bbox(),
                    exit_tag: None,
                });
            }
            Some(Tampering {
                kind,
                notes: format!(
                    "{} of {} items taken off ({})",
                    changes.len(),
                    boxes.len(),
                    if top_layer { "top layer" } else { "door end" }
                ),
                changes,
            })
        }
    }
}

/// The smallest tampering made (side-view area, mm²): 0.25 m², the smallest change the
/// transit check is specified to find.
const MIN_CHANGE_MM2: f32 = 0.25e6;

/// An undeclared consignment: concealed packages stacked into a block of 0.25 to 1.2 m²
/// (side view), in rows of a random width.
fn consignment(rng: &mut SimRng) -> Item {
    let target = uni(rng, 0.25, 1.2) * 1e6;
    let width = (target * uni(rng, 0.6, 2.2)).sqrt();
    let mut prims = Vec::new();
    let (mut x, mut y, mut row_h) = (0.0f32, 0.0f32, 0.0f32);
    let mut n = 0;
    loop {
        let it = concealed(rng);
        if x > 0.0 && x + it.w > width {
            y += row_h;
            x = 0.0;
            row_h = 0.0;
        }
        it.placed([x, y], &mut prims);
        x += it.w;
        row_h = row_h.max(it.h);
        n += 1;
        let b = super::geom::bbox_of(&prims);
        if area(b) >= target || n >= 24 {
            break;
        }
    }
    Item::from_shapes(Goods::Concealed, super::geom::Shapes { prims }, n)
}

/// Merges boxes that overlap or nearly touch (mm), so one taken-off stack is one region.
pub(crate) fn merge_boxes(mut v: Vec<[f32; 4]>, slack: f32) -> Vec<[f32; 4]> {
    loop {
        let mut merged = false;
        'outer: for i in 0..v.len() {
            for j in i + 1..v.len() {
                let (a, b) = (v[i], v[j]);
                if a[0] - slack < b[2]
                    && b[0] - slack < a[2]
                    && a[1] - slack < b[3]
                    && b[1] - slack < a[3]
                {
                    v[i] = union(a, b);
                    v.remove(j);
                    merged = true;
                    break 'outer;
                }
            }
        }
        if !merged {
            return v;
        }
    }
}

/// Bounding box of the item tagged `tag`, if the unit still holds it.
pub(crate) fn tagged_box(unit: &Unit, tag: u32) -> Option<[f32; 4]> {
    unit.items.iter().find(|i| i.tag == tag).map(|i| i.bbox())
}
