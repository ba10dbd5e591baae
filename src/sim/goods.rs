//! Goods classes of the simulator (HS code, description) and the generators that draw one
//! loading column of each class as items (pallets, cars, coils, sacks...) in millimetres,
//! with the class's own density and texture. It owns what goods *look like*; it must never
//! decide where a column goes in a container, tamper with a load or know about scanners.

use rand::{Rng, SeedableRng};

use super::geom::{bbox_of, deg, mu, od_integral, Prim, Shapes, Tex, LEAD, OD_MM2_PER_GRAM, STEEL};
use super::vehicle::{wheel, UnitKind};
use super::{chance, uni, SimRng};

/// Cargo path across a container's inside width (mm), less the gaps between packages.
const ACROSS: f32 = 2250.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Goods {
    Cars,
    Tyres,
    Garments,
    Electronics,
    Cigarettes,
    Rice,
    Fertiliser,
    SteelCoils,
    SteelRods,
    Bananas,
    Furniture,
    Tiles,
    PaperRolls,
    Machinery,
    /// Soft drinks in PET bottles, shrink-wrapped packs on pallets.
    BottledDrinks,
    Empty,
    /// Undeclared goods: what a tampered load gains.
    Concealed,
}

impl Goods {
    pub fn hs_code(self) -> &'static str {
        match self {
            Goods::Cars => "8703.23",
            Goods::Tyres => "4011.20",
            Goods::Garments => "6109.10",
            Goods::Electronics => "8528.72",
            Goods::Cigarettes => "2402.20",
            Goods::Rice => "1006.30",
            Goods::Fertiliser => "3102.10",
            Goods::SteelCoils => "7208.39",
            Goods::SteelRods => "7213.91",
            Goods::Bananas => "0803.90",
            Goods::Furniture => "9403.60",
            Goods::Tiles => "6907.21",
            Goods::PaperRolls => "4804.11",
            Goods::Machinery => "8429.52",
            Goods::BottledDrinks => "2202.10",
            Goods::Empty => "8609.00",
            Goods::Concealed => "9999.00",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Goods::Cars => "used motor cars",
            Goods::Tyres => "new pneumatic tyres",
            Goods::Garments => "cotton T-shirts in cartons",
            Goods::Electronics => "LCD television sets",
            Goods::Cigarettes => "cigarettes",
            Goods::Rice => "milled rice in bags",
            Goods::Fertiliser => "urea fertiliser",
            Goods::SteelCoils => "hot-rolled steel coils",
            Goods::SteelRods => "steel bars and wire rod",
            Goods::Bananas => "fresh bananas",
            Goods::Furniture => "wooden furniture",
            Goods::Tiles => "ceramic tiles",
            Goods::PaperRolls => "kraft paper in rolls",
            Goods::Machinery => "excavators and parts",
            Goods::BottledDrinks => "soft drinks in PET bottles",
            Goods::Empty => "empty container",
            Goods::Concealed => "undeclared package",
        }
    }

    /// Every class a declaration can name (all but [`Goods::Concealed`]).
    pub const DECLARABLE: [Goods; 16] = [
        Goods::Cars,
        Goods::Tyres,
        Goods::Garments,
        Goods::Electronics,
        Goods::Cigarettes,
        Goods::Rice,
        Goods::Fertiliser,
        Goods::SteelCoils,
        Goods::SteelRods,
        Goods::Bananas,
        Goods::Furniture,
        Goods::Tiles,
        Goods::PaperRolls,
        Goods::Machinery,
        Goods::BottledDrinks,
        Goods::Empty,
    ];

    /// The carriers this class travels in, for scans of one chosen class.
    pub fn carriers(self) -> &'static [UnitKind] {
        use UnitKind::*;
        match self {
            Goods::Bananas => &[Reefer40, BoxBody],
            Goods::Cars => &[Dry40, HighCube40, Dry20],
            Goods::SteelCoils | Goods::Tiles => &[Dry20, Flatbed],
            Goods::SteelRods | Goods::Machinery | Goods::PaperRolls => &[Dry20, Dry40, Flatbed],
            Goods::Fertiliser => &[Dry20, Dry40],
            Goods::BottledDrinks => &[Dry20, Dry40, BoxBody],
            Goods::Empty | Goods::Concealed => &[Dry20, Dry40, HighCube40],
            Goods::Tyres
            | Goods::Garments
            | Goods::Electronics
            | Goods::Cigarettes
            | Goods::Rice
            | Goods::Furniture => &[Dry20, Dry40, HighCube40, BoxBody],
        }
    }

    /// Goods that are mixed with others in one container.
    pub fn mixable(self) -> bool {
        matches!(
            self,
            Goods::Garments
                | Goods::Electronics
                | Goods::Furniture
                | Goods::Tyres
                | Goods::Cigarettes
        )
    }

    /// Clear space between loading columns (mm).
    pub fn gap(self, rng: &mut SimRng) -> f32 {
        match self {
            Goods::SteelCoils => uni(rng, 700.0, 2200.0),
            Goods::Tiles => uni(rng, 80.0, 500.0),
            Goods::Machinery | Goods::Cars => uni(rng, 120.0, 450.0),
            Goods::Furniture => uni(rng, 0.0, 150.0),
            Goods::Cigarettes => uni(rng, 0.0, 15.0),
            _ => uni(rng, 0.0, 60.0),
        }
    }

    /// One loading column of this class, starting at x = 0 on the floor (y = 0); `style`
    /// fixes what is common to the whole load (carton size, orientation, density).
    pub fn column(self, rng: &mut SimRng, style: u64, ctx: &Ctx) -> Vec<Item> {
        let mut st = SimRng::seed_from_u64(style ^ self as u64);
        let items = match self {
            Goods::Cars => cars(rng, &mut st, ctx),
            Goods::Tyres => tyres(rng, &mut st, ctx),
            Goods::Garments => garments(rng, &mut st, ctx),
            Goods::Electronics => electronics(rng, &mut st, ctx),
            Goods::Cigarettes => cigarettes(rng, &mut st, ctx),
            Goods::Rice => bags(rng, &mut st, ctx, self),
            Goods::Fertiliser => bags(rng, &mut st, ctx, self),
            Goods::SteelCoils => coils(rng, &mut st, ctx),
            Goods::SteelRods => rods(rng, &mut st, ctx),
            Goods::Bananas => bananas(rng, &mut st, ctx),
            Goods::Furniture => furniture(rng, &mut st, ctx),
            Goods::Tiles => tiles(rng, &mut st, ctx),
            Goods::PaperRolls => paper(rng, &mut st, ctx),
            Goods::Machinery => machinery(rng, &mut st, ctx),
            Goods::BottledDrinks => bottled_drinks(rng, &mut st, ctx),
            Goods::Empty | Goods::Concealed => Vec::new(),
        };
        items
            .into_iter()
            .filter(|i| i.x + i.w <= ctx.max_w + 1.0 && i.y + i.h <= ctx.max_h + 1.0)
            .collect()
    }
}

/// The space a column may take.
pub(crate) struct Ctx {
    pub max_w: f32,
    pub max_h: f32,
}

/// One removable unit of cargo (a pallet, a car, a coil, a layer of bars).
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub goods: Goods,
    /// Shapes in the item frame: x in [0, w], y in [0, h].
    pub prims: Vec<Prim>,
    pub w: f32,
    pub h: f32,
    /// Where the item frame's origin sits in its parent (column, then unit) frame.
    pub x: f32,
    pub y: f32,
    /// Rotation about the item's centre (radians).
    pub angle: f32,
    pub packages: u32,
    pub mass_kg: f32,
    /// Identity that survives settling and re-loading (for ground truth).
    pub tag: u32,
}

impl Item {
    /// Makes an item of shapes drawn in the parent frame.
    pub fn from_shapes(goods: Goods, s: Shapes, packages: u32) -> Item {
        let b = s.bbox();
        let mut prims = s.prims;
        for p in &mut prims {
            p.cx -= b[0];
            p.cy -= b[1];
        }
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        let step = (w.max(h) / 120.0).clamp(10.0, 40.0);
        let mass_kg = od_integral(&prims, [0.0, 0.0, w, h], step) / OD_MM2_PER_GRAM / 1000.0;
        Item {
            goods,
            prims,
            w,
            h,
            x: b[0],
            y: b[1],
            angle: 0.0,
            packages,
            mass_kg,
            tag: 0,
        }
    }

    /// Shapes in the parent frame, shifted by `d`.
    pub fn placed(&self, d: [f32; 2], out: &mut Vec<Prim>) {
        let pivot = [0.5 * self.w, 0.5 * self.h];
        for p in &self.prims {
            let mut q = p.clone();
            q.transform(pivot, self.angle, [self.x + d[0], self.y + d[1]]);
            out.push(q);
        }
    }

    /// Bounding box in the parent frame.
    pub fn bbox(&self) -> [f32; 4] {
        let mut v = Vec::with_capacity(self.prims.len());
        self.placed([0.0, 0.0], &mut v);
        bbox_of(&v)
    }

    /// Mean optical depth over the item's own box: how dark it looks overall.
    pub fn mean_od(&self) -> f32 {
        let step = (self.w.max(self.h) / 80.0).clamp(10.0, 50.0);
        od_integral(&self.prims, [0.0, 0.0, self.w, self.h], step) / (self.w * self.h).max(1.0)
    }

    /// Scales every optical depth (a swapped item matched to the original's darkness).
    pub fn scale_od(&mut self, k: f32) {
        for p in &mut self.prims {
            p.od *= k;
        }
        self.mass_kg *= k;
    }
}

fn pick<T: Copy>(rng: &mut SimRng, v: &[T]) -> T {
    v[rng.random_range(0..v.len())]
}

fn noise(rng: &mut SimRng, cell: f32, amp: f32) -> Tex {
    Tex::Noise {
        cell,
        amp,
        seed: rng.random(),
    }
}

/// A wooden pallet seen from the side: top boards, three blocks, bottom boards.
fn pallet(s: &mut Shapes, x0: f32, x1: f32, y0: f32, n: f32) -> f32 {
    let wood = mu(0.55);
    s.rect(x0, y0 + 122.0, x1, y0 + 144.0, wood * 700.0 * n);
    s.rect(x0, y0, x1, y0 + 22.0, wood * 450.0 * n);
    for k in 0..3 {
        let bx = x0 + k as f32 * (x1 - x0 - 100.0) / 2.0;
        s.rect(bx, y0 + 22.0, bx + 100.0, y0 + 122.0, wood * 435.0 * n);
    }
    y0 + 144.0
}

struct Cartons {
    cw: f32,
    ch: f32,
    od: f32,
    seam: f32,
    stagger: bool,
    jitter: f32,
    cell: f32,
    amp: f32,
}

/// A block of cartons, layer by layer, each carton a little fuller or emptier than the
/// next; the cardboard walls that lie along the beam add a grid (a fainter, offset second
/// grid for the row behind). Returns the number of cartons.
#[allow(clippy::too_many_arguments)]
fn carton_block(
    rng: &mut SimRng,
    s: &mut Shapes,
    c: &Cartons,
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
    ragged_top: bool,
) -> u32 {
    let layers = ((y1 - y0) / c.ch).floor().max(1.0) as usize;
    let per_layer = ((x1 - x0) / c.cw).round().max(1.0) as usize;
    let cw = (x1 - x0) / per_layer as f32;
    let mut count = 0;
    let tex2 = noise(rng, c.cell * 4.0, c.amp * 0.5);
    for j in 0..layers {
        let y = y0 + j as f32 * c.ch;
        let mut n = per_layer;
        if ragged_top && j == layers - 1 && per_layer > 1 && chance(rng, 0.6) {
            n = rng.random_range(1..per_layer);
        }
        let from_right = chance(rng, 0.5);
        let (xa, xb) = if from_right {
            (x1 - n as f32 * cw, x1)
        } else {
            (x0, x0 + n as f32 * cw)
        };
        let off = if c.stagger && j % 2 == 1 {
            0.5 * cw
        } else {
            0.0
        };
        // Cartons of the front row (their own fill) and the back row (offset).
        for (shift, share) in [(off, 0.55), (off + 0.37 * cw, 0.45)] {
            let mut x = xa - cw + shift % cw;
            while x < xb - 1.0 {
                let (a, b) = (x.max(xa), (x + cw).min(xb));
                if b - a > 1.0 {
                    let p = s.rect(a, y, b, y + c.ch, c.od * share * uni(rng, 0.82, 1.18));
                    p.tex = Tex::Noise {
                        cell: c.cell,
                        amp: c.amp,
                        seed: rng.random(),
                    };
                    p.tex2 = tex2;
                    if a > xa + 5.0 {
                        let jx = uni(rng, -c.jitter, c.jitter);
                        s.seg(
                            [a + jx, y + 2.0],
                            [a - jx, y + c.ch - 2.0],
                            6.0,
                            c.seam * share * 2.0,
                        );
                    }
                }
                x += cw;
            }
        }
        count += n as u32;
        s.rect(xa, y + c.ch - 5.0, xb, y + c.ch + 1.0, c.seam);
    }
    count
}

fn garments(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let c = Cartons {
        cw: pick(st, &[480.0, 530.0, 580.0, 620.0]),
        ch: pick(st, &[300.0, 340.0, 380.0, 420.0]),
        od: mu(uni(st, 0.12, 0.18)) * ACROSS,
        seam: uni(st, 0.25, 0.45),
        stagger: chance(st, 0.5),
        jitter: 8.0,
        cell: uni(st, 35.0, 60.0),
        amp: 0.22,
    };
    let palletised = chance(st, 0.35);
    let w = (c.cw * pick(rng, &[2.0, 2.0, 3.0])).min(ctx.max_w);
    if w < c.cw {
        return Vec::new();
    }
    stacked_cartons(rng, Goods::Garments, &c, w, ctx, palletised)
}

/// A column of cartons floor-stacked or on pallets two high, as two items.
fn stacked_cartons(
    rng: &mut SimRng,
    goods: Goods,
    c: &Cartons,
    w: f32,
    ctx: &Ctx,
    palletised: bool,
) -> Vec<Item> {
    let top = ctx.max_h - uni(rng, 20.0, 350.0);
    let mut out = Vec::new();
    if palletised {
        let ph = (0.5 * top).min(1400.0);
        let mut y = 0.0;
        for level in 0..2 {
            if y + ph > top + 1.0 {
                break;
            }
            let mut s = Shapes::default();
            let b = pallet(&mut s, 0.0, w, y, 2.0);
            let n = carton_block(rng, &mut s, c, 0.0, b, w, y + ph - 20.0, level == 1);
            out.push(Item::from_shapes(goods, s, n));
            y += ph + 10.0;
        }
    } else {
        let layers = (top / c.ch).floor().max(1.0) as usize;
        let split = if layers >= 2 {
            rng.random_range(1..layers)
        } else {
            layers
        };
        for (a, b, ragged) in [(0, split, false), (split, layers, true)] {
            if b <= a {
                continue;
            }
            let mut s = Shapes::default();
            let n = carton_block(
                rng,
                &mut s,
                c,
                0.0,
                a as f32 * c.ch,
                w,
                b as f32 * c.ch,
                ragged,
            );
            out.push(Item::from_shapes(goods, s, n));
        }
    }
    out
}

fn cigarettes(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let c = Cartons {
        cw: 580.0,
        ch: 290.0,
        od: mu(uni(st, 0.2, 0.26)) * ACROSS,
        seam: 0.45,
        stagger: false,
        jitter: 0.0,
        cell: 25.0,
        amp: 0.04,
    };
    let w = (2.0 * c.cw).min(ctx.max_w);
    if w < c.cw {
        return Vec::new();
    }
    let mut items = stacked_cartons(rng, Goods::Cigarettes, &c, w, ctx, false);
    // Inside each master case: ten-carton rows, very regular.
    for it in &mut items {
        for p in &mut it.prims {
            if matches!(p.tex, Tex::Noise { .. }) {
                p.tex2 = Tex::Stripes {
                    period: c.cw / 5.0,
                    amp: 0.05,
                    along_y: false,
                    phase: 0.0,
                };
            }
        }
        it.packages *= 50;
    }
    items
}

fn electronics(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let cw = uni(st, 850.0, 1300.0);
    let ch = uni(st, 540.0, 800.0);
    let face_on = chance(st, 0.6);
    let palletised = chance(st, 0.5);
    let per = if cw * 2.0 <= ctx.max_w && chance(rng, 0.5) {
        2.0
    } else {
        1.0
    };
    let w = cw * per;
    if w > ctx.max_w {
        return Vec::new();
    }
    let top = ctx.max_h - uni(rng, 50.0, 400.0);
    let mut out = Vec::new();
    let mut y = 0.0;
    let level_h = if palletised {
        (0.5 * top).min(1600.0)
    } else {
        top
    };
    while y + ch + if palletised { 144.0 } else { 0.0 } <= top {
        let mut s = Shapes::default();
        let mut yb = if palletised {
            pallet(&mut s, 0.0, w, y, 2.0)
        } else {
            y
        };
        let lim = (y + level_h).min(top);
        let mut n = 0;
        while yb + ch <= lim {
            let mut x = 0.0;
            while x + cw <= w + 1.0 {
                tv_carton(rng, &mut s, x, yb, cw, ch, face_on);
                n += 1;
                x += cw;
            }
            yb += ch;
        }
        if n == 0 {
            break;
        }
        out.push(Item::from_shapes(Goods::Electronics, s, n * 8));
        y = yb + 10.0;
        if !palletised {
            break;
        }
    }
    out
}

/// One carton position of TV sets: several cartons stand one behind the other across the
/// container width, never quite aligned, so their parts overlap as offset ghosts.
fn tv_carton(rng: &mut SimRng, s: &mut Shapes, x: f32, y: f32, cw: f32, ch: f32, face_on: bool) {
    s.rect(x, y, x + cw, y + ch, mu(0.03) * ACROSS).tex = noise(rng, 60.0, 0.4);
    s.frame(x, y, x + cw, y + ch, 6.0, 0.3);
    let groups = 3;
    let n = 8.0 / groups as f32;
    for _ in 0..groups {
        let (dx, dy) = (uni(rng, -35.0, 35.0), uni(rng, -20.0, 20.0));
        let (x, y) = (x + dx, y + dy);
        if face_on {
            let i = 45.0 + uni(rng, 0.0, 25.0);
            s.rect(x + i, y + i, x + cw - i, y + ch - i, 0.035 * n).tex = noise(rng, 70.0, 0.35);
            let bx = x + cw * uni(rng, 0.3, 0.5);
            let by = y + ch * uni(rng, 0.2, 0.35);
            s.rect(
                bx,
                by,
                bx + uni(rng, 180.0, 280.0),
                by + uni(rng, 100.0, 160.0),
                0.11 * n,
            )
            .tex = noise(rng, 20.0, 0.5);
            let px = x + cw * uni(rng, 0.55, 0.7);
            s.rect(px, by - 20.0, px + 150.0, by + 90.0, 0.2 * n).tex = noise(rng, 15.0, 0.6);
            s.disk(px + 50.0, by + 40.0, 26.0, 0.35 * n);
            for sx in [x + 90.0, x + cw - 130.0] {
                s.disk(sx + uni(rng, -20.0, 20.0), y + 80.0, 35.0, 0.25 * n);
            }
            // Polystyrene corner blocks, the stand packed beside the set.
            for (cx, cy) in [(x + 30.0, y + 30.0), (x + cw - 90.0, y + ch - 90.0)] {
                s.rect(cx, cy, cx + 60.0, cy + 60.0, 0.04 * n);
            }
            let sy = y + ch - uni(rng, 60.0, 110.0);
            s.seg([x + 0.3 * cw, sy], [x + 0.7 * cw, sy], 40.0, 0.12 * n);
        } else {
            // Panels edge-on: glass and steel back sheets lie along the beam.
            let k = rng.random_range(1..=3);
            for j in 0..k {
                let px = x + (j as f32 + 0.5) * cw / k as f32 + uni(rng, -30.0, 30.0);
                s.rect(px, y + 40.0, px + 2.0, y + ch - 40.0, mu(2.5) * 330.0);
                s.rect(px + 12.0, y + 40.0, px + 13.0, y + ch - 40.0, STEEL * 330.0);
                let by = y + ch * uni(rng, 0.2, 0.5);
                s.rect(px + 13.0, by, px + 45.0, by + 160.0, 0.55);
            }
        }
    }
}

fn bananas(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let w = pick(st, &[1000.0, 1200.0]);
    if w > ctx.max_w {
        return Vec::new();
    }
    let h = uni(rng, 1850.0, 2200.0).min(ctx.max_h - 60.0);
    let c = Cartons {
        cw: w / 2.0,
        ch: 250.0,
        od: mu(uni(st, 0.3, 0.4)) * ACROSS,
        seam: 0.5,
        stagger: false,
        jitter: 6.0,
        cell: 32.0,
        amp: 0.38,
    };
    let mut s = Shapes::default();
    let b = pallet(&mut s, 0.0, w, 0.0, 2.0);
    let n = carton_block(rng, &mut s, &c, 0.0, b, w, h, false);
    for x in [0.0, w - 12.0] {
        s.rect(x, b, x + 12.0, h, mu(0.7) * 2000.0 * 0.012);
    }
    for k in 1..4 {
        let y = b + (h - b) * k as f32 / 4.0;
        s.rect(0.0, y, w, y + 4.0, 0.5);
    }
    vec![Item::from_shapes(Goods::Bananas, s, n * 2)]
}

fn tiles(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let w = pick(st, &[1000.0, 1100.0, 1200.0]);
    if w > ctx.max_w {
        return Vec::new();
    }
    let box_h = uni(st, 60.0, 110.0);
    let box_w = pick(st, &[300.0, 400.0, 600.0]);
    let across = if chance(st, 0.25) { 2.0 } else { 1.0 };
    let ph = uni(rng, 650.0, 1000.0);
    let mut out = Vec::new();
    let levels = if chance(rng, 0.15) && 2.0 * ph + 300.0 < ctx.max_h {
        2
    } else {
        1
    };
    for level in 0..levels {
        let y0 = level as f32 * (ph + 160.0);
        let mut s = Shapes::default();
        let b = pallet(&mut s, 0.0, w, y0, across);
        let top = y0 + ph;
        let p = s.rect(0.0, b, w, top, mu(uni(st, 0.95, 1.25)) * 1000.0 * across);
        p.tex = Tex::Stripes {
            period: box_h,
            amp: 0.22,
            along_y: true,
            phase: uni(rng, 0.0, 1.0),
        };
        p.tex2 = noise(rng, 60.0, 0.05);
        let mut x = box_w;
        while x < w - 20.0 {
            s.rect(x - 3.0, b, x + 3.0, top, 0.5);
            x += box_w;
        }
        let mut y = b + box_h;
        while y < top - 10.0 {
            s.rect(0.0, y - 2.0, w, y + 2.0, 0.6);
            y += box_h;
        }
        let boxes = ((top - b) / box_h) as u32 * (w / box_w) as u32 * 3;
        out.push(Item::from_shapes(Goods::Tiles, s, boxes));
    }
    out
}

fn bags(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx, goods: Goods) -> Vec<Item> {
    let rho = if goods == Goods::Rice {
        uni(st, 0.78, 0.88)
    } else {
        uni(st, 0.72, 0.85)
    };
    let jumbo = goods == Goods::Fertiliser && chance(st, 0.5);
    let target_h = uni(st, 1200.0, 2100.0).min(ctx.max_h - 80.0);
    let mut out = Vec::new();
    if jumbo {
        let w = uni(rng, 950.0, 1100.0);
        if w > ctx.max_w {
            return out;
        }
        let h = uni(rng, 1000.0, 1250.0);
        let mut s = Shapes::default();
        let p = s.pillow(0.0, 0.0, w, h, mu(rho) * 2000.0 * 0.9);
        p.tex = noise(rng, 9.0, 0.05);
        p.tex2 = noise(rng, 250.0, 0.1);
        s.ellipsoid(0.5 * w, h - 40.0, 0.45 * w, 90.0, mu(rho) * 900.0);
        for x in [0.12 * w, 0.88 * w] {
            s.seg(
                [x, h - 30.0],
                [x + uni(rng, -40.0, 40.0), h + 140.0],
                30.0,
                0.25,
            );
        }
        out.push(Item::from_shapes(goods, s, 2));
        return out;
    }
    let lx = if chance(st, 0.5) {
        uni(st, 820.0, 950.0)
    } else {
        uni(st, 480.0, 560.0)
    };
    let ty = uni(st, 145.0, 195.0);
    let per = pick(rng, &[2usize, 3]);
    let w = lx * per as f32;
    if w > ctx.max_w {
        return out;
    }
    let layers = (target_h / ty).floor() as usize;
    let od = mu(rho) * ACROSS;
    let mut j = 0;
    while j < layers {
        let group = rng.random_range(3..=6).min(layers - j);
        let mut s = Shapes::default();
        let mut n = 0;
        for l in j..j + group {
            let y = l as f32 * ty;
            // Squeezed sacks fill the layer; three rows across the width, each bonded
            // differently, round off the seams between them.
            let p = s.rect(0.0, y, w, y + ty, 0.78 * od);
            p.tex = noise(rng, 10.0, 0.05);
            p.tex2 = noise(rng, 180.0, 0.1);
            for row in 0..3 {
                let off = ((l + row) % 3) as f32 * lx / 3.0 + uni(rng, -40.0, 40.0);
                let mut x = -off;
                while x < w - 1.0 {
                    let (a, b) = (x.max(0.0), (x + lx).min(w));
                    if b - a > 0.25 * lx {
                        let sag = uni(rng, -10.0, 10.0);
                        s.pillow(
                            a,
                            y + sag.max(0.0),
                            b,
                            y + ty + sag.min(0.0),
                            0.075 * od * uni(rng, 0.85, 1.15),
                        )
                        .tex = noise(rng, 12.0, 0.08);
                        n += 1;
                    }
                    x += lx;
                }
            }
        }
        out.push(Item::from_shapes(goods, s, n * 4 / 3));
        j += group;
    }
    out
}

fn coils(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let r = uni(rng, 520.0, 900.0);
    let width = uni(st, 900.0, 1550.0);
    let eye_side = chance(st, 0.7);
    let mut s = Shapes::default();
    if eye_side {
        let cy = 180.0 + r;
        if 2.0 * r + 200.0 > ctx.max_w || cy + r > ctx.max_h {
            return Vec::new();
        }
        let cx = 100.0 + r;
        let rin = uni(st, 295.0, 315.0);
        s.ring(cx, cy, rin, r, STEEL * width).tex = noise(rng, 30.0, 0.03);
        // Cradle: timber wedges and a base beam.
        let wood = mu(0.6) * width;
        for sgn in [-1.0f32, 1.0] {
            let x = cx + sgn * r * 0.75;
            s.poly(
                &[
                    [x - sgn * 180.0, 0.0],
                    [x + sgn * 260.0, 0.0],
                    [x + sgn * 120.0, cy - 0.55 * r],
                ],
                wood,
            );
        }
        s.rect(cx - 0.95 * r, 0.0, cx + 0.95 * r, 70.0, wood);
        for a in [90.0f32, 270.0, uni(rng, 20.0, 60.0)] {
            let (sn, cs) = deg(a).sin_cos();
            s.seg(
                [cx + cs * rin, cy + sn * rin],
                [cx + cs * (r + 4.0), cy + sn * (r + 4.0)],
                32.0,
                0.6,
            );
        }
        s.ring(cx, cy, r, r + 3.0, STEEL * 60.0);
        for sgn in [-1.0f32, 1.0] {
            s.seg([cx, cy + r], [cx + sgn * (r + 350.0), 30.0], 10.0, 0.2);
        }
    } else {
        let h = width;
        if 2.0 * r + 200.0 > ctx.max_w || h + 200.0 > ctx.max_h {
            return Vec::new();
        }
        s.rect(60.0, 0.0, 2.0 * r + 140.0, 120.0, mu(0.6) * 1800.0);
        s.cylv(
            100.0,
            120.0,
            100.0 + 2.0 * r,
            120.0 + h,
            305.0 / r,
            STEEL * 2.0 * r,
        )
        .tex = noise(rng, 40.0, 0.03);
        for k in 0..3 {
            let y = 120.0 + h * (k as f32 + 0.5) / 3.0;
            s.rect(95.0, y, 105.0 + 2.0 * r, y + 30.0, 0.4);
        }
    }
    vec![Item::from_shapes(Goods::SteelCoils, s, 1)]
}

fn rods(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let wire = chance(st, 0.4);
    if wire {
        let r = uni(st, 560.0, 650.0);
        let h = uni(st, 1100.0, 1500.0).min(ctx.max_h - 100.0);
        if 2.0 * r > ctx.max_w {
            return Vec::new();
        }
        let mut s = Shapes::default();
        s.cylv(0.0, 80.0, 2.0 * r, 80.0 + h, 0.68, STEEL * 0.42 * 2.0 * r)
            .tex = Tex::Stripes {
            period: 9.0,
            amp: 0.08,
            along_y: true,
            phase: 0.0,
        };
        s.rect(0.0, 0.0, 2.0 * r, 80.0, mu(0.6) * 1500.0);
        for k in 0..4 {
            let x = 2.0 * r * (k as f32 + 0.5) / 4.0;
            s.rect(x - 15.0, 80.0, x + 15.0, 80.0 + h, 0.7);
        }
        return vec![Item::from_shapes(Goods::SteelRods, s, 1)];
    }
    let len = (ctx.max_w - uni(rng, 50.0, 400.0)).min(uni(st, 5600.0, 11900.0));
    if len < 2000.0 {
        return Vec::new();
    }
    let d = uni(st, 280.0, 420.0);
    let layers = rng.random_range(1..=3);
    let across = rng.random_range(2..=4);
    let mut out = Vec::new();
    let mut y = 0.0;
    for _ in 0..layers {
        let mut s = Shapes::default();
        s.rect(300.0, y, 380.0, y + 70.0, mu(0.6) * 2300.0);
        s.rect(len * 0.5, y, len * 0.5 + 80.0, y + 70.0, mu(0.6) * 2300.0);
        s.rect(len - 380.0, y, len - 300.0, y + 70.0, mu(0.6) * 2300.0);
        let yb = y + 70.0;
        for _ in 0..across {
            let dx = uni(rng, -80.0, 80.0);
            let dy = uni(rng, -10.0, 25.0).max(0.0);
            let p = s.cylh(
                dx.max(0.0),
                yb + dy,
                len + dx.min(0.0),
                yb + dy + d,
                0.0,
                STEEL * 0.6 * d,
            );
            p.tex = Tex::Stripes {
                period: 11.0,
                amp: 0.05,
                along_y: false,
                phase: 0.0,
            };
            p.tex2 = noise(rng, 60.0, 0.06);
        }
        let mut x = 600.0;
        while x < len - 300.0 {
            s.rect(x, yb - 5.0, x + 32.0, yb + d + 30.0, 1.1);
            x += uni(rng, 1300.0, 2100.0);
        }
        out.push(Item::from_shapes(Goods::SteelRods, s, across as u32));
        y = yb + d + 40.0;
        if y + d + 100.0 > ctx.max_h {
            break;
        }
    }
    out
}

fn paper(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let d = uni(st, 900.0, 1300.0);
    let standing = chance(st, 0.7);
    if d + 20.0 > ctx.max_w {
        return Vec::new();
    }
    let rho = uni(st, 0.7, 0.85);
    let core = uni(st, 38.0, 76.0);
    let mut out = Vec::new();
    if standing {
        let h = uni(st, 900.0, 1400.0);
        let mut y = 0.0;
        while y + h <= ctx.max_h - 50.0 {
            let mut s = Shapes::default();
            for _ in 0..2 {
                let dx = uni(rng, 0.0, 160.0);
                s.cylv(dx, y, dx + d, y + h - 5.0, core / (0.5 * d), mu(rho) * d)
                    .tex = noise(rng, 300.0, 0.04);
                s.rect(dx, y + h - 12.0, dx + d, y + h - 5.0, mu(rho) * d * 0.3);
            }
            out.push(Item::from_shapes(Goods::PaperRolls, s, 2));
            y += h;
            if chance(rng, 0.3) {
                break;
            }
        }
    } else {
        let width = uni(st, 1400.0, 2200.0);
        let r = 0.5 * d;
        let mut s = Shapes::default();
        s.ring(r, r + 10.0, core, r, mu(rho) * width).tex = noise(rng, 200.0, 0.03);
        s.ring(r, r + 10.0, core - 12.0, core, 0.8);
        s.rect(0.1 * d, 0.0, 0.9 * d, 20.0, 1.0);
        out.push(Item::from_shapes(Goods::PaperRolls, s, 1));
    }
    out
}

fn tyres(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let r = uni(st, 300.0, 540.0);
    let tw = (r * uni(st, 0.42, 0.6)).min(320.0);
    let rim = r * uni(st, 0.58, 0.7);
    let lying = chance(st, 0.55);
    let rubber = mu(1.15);
    let mut out = Vec::new();
    if lying {
        let w = 2.0 * r + 170.0;
        if w > ctx.max_w {
            return out;
        }
        let stacks = (2300.0 / (2.0 * r)).floor().max(1.0) as usize;
        let n = ((ctx.max_h - uni(rng, 30.0, 300.0)) / tw).floor() as usize;
        let split = if n > 3 { rng.random_range(n / 3..n) } else { n };
        for (a, b) in [(0, split), (split, n)] {
            if b <= a {
                continue;
            }
            let mut s = Shapes::default();
            for _ in 0..stacks {
                let dx = uni(rng, 0.0, 160.0);
                for i in a..b {
                    let y = i as f32 * tw;
                    s.cylv(
                        dx,
                        y,
                        dx + 2.0 * r,
                        y + tw - 3.0,
                        (r - 16.0) / r,
                        rubber * 2.0 * r * 1.3,
                    );
                    for yy in [y, y + tw - 15.0] {
                        s.cylv(dx, yy, dx + 2.0 * r, yy + 12.0, rim / r, rubber * 2.0 * r);
                    }
                }
            }
            out.push(Item::from_shapes(
                Goods::Tyres,
                s,
                (stacks * (b - a)) as u32,
            ));
        }
    } else {
        let w = 2.0 * r + 110.0;
        if w > ctx.max_w {
            return out;
        }
        let per = (2300.0 / tw).floor();
        let rows = ((ctx.max_h - 40.0) / (2.0 * r - 30.0)).floor().max(1.0) as usize;
        for k in 0..rows {
            let mut s = Shapes::default();
            let cy = r + k as f32 * (2.0 * r - 30.0);
            // Rows are never quite stacked plumb.
            let row_dx = uni(rng, 0.0, 60.0);
            for _ in 0..3 {
                let m = per / 3.0;
                let (dx, dy) = (row_dx + uni(rng, -25.0, 25.0), uni(rng, -20.0, 0.0));
                let (cx, cyy) = (r + dx, cy + dy);
                s.ring(cx, cyy, rim, r, rubber * 24.0 * m);
                s.ring(cx, cyy, r - 22.0, r, (rubber * tw + STEEL * 4.0) * m);
                s.ring(cx, cyy, rim, rim + 16.0, STEEL * 20.0 * m);
            }
            out.push(Item::from_shapes(Goods::Tyres, s, per as u32));
        }
    }
    out
}

fn cars(rng: &mut SimRng, _st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let len = uni(rng, 3800.0, 4900.0);
    let h = uni(rng, 1400.0, 1780.0);
    if len + 50.0 > ctx.max_w || h > ctx.max_h {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut s = Shapes::default();
    car(rng, &mut s, len, h);
    let mut item = Item::from_shapes(Goods::Cars, s, 1);
    if chance(rng, 0.5) {
        for p in &mut item.prims {
            p.mirror_x(0.5 * item.w);
        }
    }
    out.push(item);
    // A second car on a rack above, nose down, where the box is tall enough.
    if ctx.max_h > 2700.0 && chance(rng, 0.6) {
        let mut s = Shapes::default();
        let l2 = uni(rng, 3600.0, 4300.0).min(ctx.max_w - 100.0);
        let h2 = uni(rng, 1350.0, 1500.0);
        car(rng, &mut s, l2, h2);
        let mut up = Item::from_shapes(Goods::Cars, s, 1);
        up.angle = deg(uni(rng, 6.0, 11.0)) * if chance(rng, 0.5) { 1.0 } else { -1.0 };
        let lift = ctx.max_h - up.h - 0.5 * l2 * up.angle.abs().sin() - 40.0;
        up.x = uni(
            rng,
            0.0,
            (ctx.max_w - up.w - 0.5 * l2 * (1.0 - up.angle.cos())).clamp(0.0, 300.0),
        );
        up.y = lift.max(0.5 * h);
        out.push(up);
    }
    out
}

/// A car in side view (front at x = 0, on the floor at y = 0), `l` long and `h` tall.
fn car(rng: &mut SimRng, s: &mut Shapes, l: f32, h: f32) {
    let clear = uni(rng, 140.0, 220.0);
    let r = uni(rng, 290.0, 360.0);
    let wb = l * uni(rng, 0.57, 0.62);
    let fa = l * uni(rng, 0.18, 0.22);
    let ra = fa + wb;
    let belt = clear + uni(rng, 620.0, 760.0);
    let hatch = chance(rng, 0.4);
    let sheet = STEEL * 1500.0;
    let prof = [
        [30.0, clear + 120.0],
        [0.0, clear + 380.0],
        [40.0, belt - 40.0],
        [0.25 * l, belt + 50.0],
        [0.42 * l, h],
        [0.78 * l, h - 15.0],
        [
            if hatch { 0.97 * l } else { 0.9 * l },
            if hatch { h - 120.0 } else { belt + 80.0 },
        ],
        [l, belt + 20.0],
        [l - 10.0, clear + 120.0],
        [ra + r, clear],
        [fa - r, clear],
    ];
    s.poly(&prof, 0.14).tex = noise(rng, 200.0, 0.3);
    // Doors, sills, floor, seats and trim below the belt line; glass above.
    let lower = [
        [20.0, clear + 120.0],
        [5.0, belt - 60.0],
        [l - 5.0, belt - 20.0],
        [l - 10.0, clear + 120.0],
        [ra + r, clear],
        [fa - r, clear],
    ];
    s.poly(&lower, 0.3).tex = noise(rng, 120.0, 0.35);
    s.rect(fa + r, clear, ra - r, clear + 130.0, 0.7);
    s.rect(0.3 * l, clear + 60.0, 0.82 * l, belt, 0.16).tex = noise(rng, 150.0, 0.3);
    // Cross-car beam under the dashboard, end-on; strut towers.
    s.disk(0.3 * l, belt - 40.0, 28.0, STEEL * 1300.0 * 0.15);
    for ax in [fa, ra] {
        s.seg([ax, r], [ax - 60.0, belt - 60.0], 60.0, 1.1);
    }
    // Used cars travel full of household goods.
    for _ in 0..rng.random_range(0..5) {
        let w = uni(rng, 150.0, 500.0);
        let hh = uni(rng, 100.0, 350.0);
        let x = uni(rng, 0.4 * l, 0.95 * l - w);
        let y = clear + uni(rng, 150.0, 550.0);
        s.pillow(x, y, x + w, y + hh, uni(rng, 0.2, 0.9)).tex = noise(rng, 40.0, 0.5);
    }
    s.seg(
        [0.33 * l, clear + 300.0],
        [0.55 * l, clear + 330.0],
        35.0,
        0.7,
    );
    s.seg(
        [0.58 * l, clear + 300.0],
        [0.8 * l, clear + 330.0],
        35.0,
        0.7,
    );
    // Edge-on sheets: roof, hood, boot, floor pan, windscreens.
    s.polyline(&[prof[3], prof[2]], 1.0, sheet);
    s.polyline(
        &[[0.42 * l + 80.0, h - 2.0], [0.78 * l - 60.0, h - 17.0]],
        1.0,
        sheet,
    );
    s.seg(prof[3], [0.42 * l + 80.0, h - 5.0], 5.0, mu(2.5) * 1400.0);
    s.seg([0.78 * l, h - 15.0], prof[6], 4.0, mu(2.5) * 1300.0);
    s.rect(fa + r, clear + 30.0, ra - r, clear + 34.0, sheet * 0.6);
    if !hatch {
        s.seg(prof[6], prof[7], 1.0, sheet);
    }
    // Engine, gearbox, radiator, battery, exhaust, fuel tank.
    let e0 = 0.07 * l;
    let (ex0, ex1, ey0, ey1) = (e0, e0 + 0.15 * l, clear + 160.0, belt - 90.0);
    s.poly(
        &[
            [ex0, ey0 + 80.0],
            [ex0 + 60.0, ey0],
            [ex1 - 40.0, ey0 + 20.0],
            [ex1, ey0 + 160.0],
            [ex1 - 20.0, ey1],
            [ex0 + 80.0, ey1 - 30.0],
            [ex0, ey1 - 140.0],
        ],
        3.0,
    )
    .tex = noise(rng, 45.0, 0.35);
    s.disk(ex0 + 40.0, ey1 - 110.0, 70.0, 1.5);
    s.rect(ex0 + 50.0, ey1 - 20.0, ex1 - 60.0, ey1 + 60.0, 0.8);
    s.poly(
        &[
            [e0 + 0.15 * l, clear + 200.0],
            [e0 + 0.26 * l, clear + 250.0],
            [e0 + 0.26 * l, clear + 380.0],
            [e0 + 0.15 * l, clear + 480.0],
        ],
        2.0,
    );
    s.rect(40.0, clear + 180.0, 90.0, belt - 120.0, 0.5).tex = Tex::Stripes {
        period: 7.0,
        amp: 0.4,
        along_y: true,
        phase: 0.0,
    };
    s.rect(
        e0 + 0.1 * l,
        belt - 260.0,
        e0 + 0.1 * l + 240.0,
        belt - 90.0,
        0.06 + LEAD * 30.0,
    );
    s.cylh(
        fa + r,
        clear + 10.0,
        l - 150.0,
        clear + 70.0,
        0.8,
        STEEL * 60.0,
    );
    s.rect(
        ra - r - 600.0,
        clear + 40.0,
        ra - r - 50.0,
        clear + 230.0,
        0.35,
    );
    // Seats, dashboard, steering wheel.
    for (x, w) in [(0.43 * l, 0.14 * l), (0.62 * l, 0.18 * l)] {
        s.rect(x, clear + 250.0, x + w, clear + 420.0, 0.3);
        s.seg(
            [x + w, clear + 400.0],
            [x + w + 80.0, belt + 280.0],
            110.0,
            0.25,
        );
        s.polyline(
            &[
                [x, clear + 260.0],
                [x + w, clear + 260.0],
                [x + w + 90.0, belt + 290.0],
            ],
            18.0,
            1.2,
        );
    }
    s.rect(0.27 * l, belt - 150.0, 0.36 * l, belt + 60.0, 0.45)
        .tex = noise(rng, 40.0, 0.4);
    s.seg([0.3 * l, belt - 100.0], [0.4 * l, belt + 70.0], 28.0, 0.8);
    // Wheels: light alloy rims, tyres, discs and hubs.
    for ax in [fa, ra] {
        let seed = rng.random();
        wheel(
            s,
            [ax, r - 8.0],
            r,
            2.0,
            false,
            if ax == fa { 600.0 } else { 1300.0 },
            seed,
        );
    }
    if chance(rng, 0.5) {
        let sx = ra + 0.2 * r;
        s.cylv(
            sx,
            belt - 240.0,
            sx + 1.6 * r,
            belt - 40.0,
            0.6,
            mu(1.15) * 1.6 * r * 0.5,
        );
    }
}

fn furniture(rng: &mut SimRng, _st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let w = uni(rng, 1400.0, 2600.0).min(ctx.max_w);
    if w < 900.0 {
        return Vec::new();
    }
    let n = rng.random_range(5..=12);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = Shapes::default();
        let kind = rng.random_range(0..6);
        let pw = uni(rng, 700.0, w.min(2100.0));
        let ph = uni(rng, 400.0, 1500.0).min(ctx.max_h - 200.0);
        // Several pieces stand one behind the other across the container width.
        let wood = mu(0.62) * uni(rng, 1.5, 3.0);
        match kind {
            0 => {
                // Sofa: frame, springs, foam.
                s.rect(0.0, 100.0, pw, 0.55 * ph, 0.09).tex = noise(rng, 80.0, 0.4);
                s.rect(0.0, 0.55 * ph, 0.2 * pw, ph, 0.09);
                s.polyline(
                    &[
                        [0.0, 100.0],
                        [pw, 100.0],
                        [pw, 0.5 * ph],
                        [0.0, 0.5 * ph],
                        [0.0, ph],
                        [0.2 * pw, ph],
                    ],
                    45.0,
                    wood * 900.0 * 0.25,
                );
                let zig: Vec<[f32; 2]> = (0..12)
                    .map(|i| {
                        [
                            pw * (i as f32 + 0.5) / 12.0,
                            if i % 2 == 0 { 0.45 * ph } else { 0.5 * ph },
                        ]
                    })
                    .collect();
                s.polyline(&zig, 3.0, STEEL * 600.0);
                for x in [40.0, pw - 80.0] {
                    s.rect(x, 0.0, x + 40.0, 100.0, wood * 80.0);
                }
            }
            1 => {
                // Table, top down or up.
                let t = uni(rng, 25.0, 45.0);
                s.rect(0.0, ph - t, pw, ph, wood * 900.0);
                for x in [30.0, pw - 80.0] {
                    s.rect(x, 0.0, x + 50.0, ph - t, wood * 100.0);
                }
                s.rect(30.0, ph - t - 90.0, pw - 30.0, ph - t, wood * 40.0);
            }
            2 => {
                // Stack of chairs.
                let k = rng.random_range(2..6);
                let metal = chance(rng, 0.4);
                let od = if metal { STEEL * 6.0 } else { wood * 90.0 };
                for i in 0..k {
                    let dx = i as f32 * 60.0;
                    let dy = i as f32 * 70.0;
                    let (sw, sh) = (450.0, 450.0);
                    s.polyline(
                        &[
                            [dx, dy],
                            [dx + 20.0, dy + sh],
                            [dx + sw, dy + sh],
                            [dx + sw + 20.0, dy],
                        ],
                        28.0,
                        od,
                    );
                    s.polyline(
                        &[[dx + sw, dy + sh], [dx + sw + 40.0, dy + sh + 450.0]],
                        28.0,
                        od,
                    );
                    s.rect(
                        dx + 20.0,
                        dy + sh - 20.0,
                        dx + sw,
                        dy + sh + 10.0,
                        wood * 400.0,
                    );
                }
            }
            3 => {
                // Flat-pack carton of boards.
                let p = s.rect(0.0, 0.0, pw, ph.min(700.0), wood * uni(rng, 250.0, 600.0));
                p.tex = Tex::Stripes {
                    period: 18.0,
                    amp: 0.4,
                    along_y: true,
                    phase: 0.0,
                };
                s.frame(0.0, 0.0, pw, ph.min(700.0), 6.0, 0.35);
            }
            4 => {
                // Cabinet or wardrobe: panels seen edge-on, shelves, a door.
                let pnl = wood * 550.0;
                s.frame(0.0, 0.0, pw.min(1200.0), ph, 18.0, pnl);
                let shelves = rng.random_range(1..5);
                for k in 1..=shelves {
                    let y = ph * k as f32 / (shelves + 1) as f32;
                    s.rect(18.0, y, pw.min(1200.0) - 18.0, y + 18.0, pnl);
                }
                s.rect(0.0, 0.0, pw.min(1200.0), ph, wood * 25.0);
                s.rect(
                    0.45 * pw.min(1200.0),
                    0.5 * ph,
                    0.45 * pw.min(1200.0) + 20.0,
                    0.5 * ph + 120.0,
                    1.2,
                );
            }
            _ => {
                // Mattress on its side or flat.
                let p = s.rect(0.0, 0.0, pw, ph.min(250.0), 0.14);
                p.tex = Tex::Stripes {
                    period: 75.0,
                    amp: 0.35,
                    along_y: false,
                    phase: 0.0,
                };
                s.frame(0.0, 0.0, pw, ph.min(250.0), 5.0, STEEL * 300.0);
            }
        }
        let mut it = Item::from_shapes(Goods::Furniture, s, 1);
        it.angle = deg(uni(rng, -25.0, 25.0)) * if chance(rng, 0.5) { 0.2 } else { 1.0 };
        let half = |it: &Item| {
            let (sn, cs) = (it.angle.sin().abs(), it.angle.cos().abs());
            (0.5 * (it.w * cs + it.h * sn), 0.5 * (it.w * sn + it.h * cs))
        };
        let (hx, hy) = half(&it);
        if 2.0 * hx > w || 2.0 * hy > ctx.max_h - 20.0 {
            it.angle = 0.0;
            if it.w > w || it.h > ctx.max_h - 20.0 {
                continue;
            }
        }
        let (hx, hy) = half(&it);
        let cx = uni(rng, hx, (w - hx).max(hx + 1.0));
        // Most pieces end up low; a few lean on top of others.
        let room = (ctx.max_h - 20.0 - 2.0 * hy).max(0.0);
        let cy = hy + room * uni(rng, 0.0, 1.0) * uni(rng, 0.0, 1.0);
        it.x = cx - 0.5 * it.w;
        it.y = cy - 0.5 * it.h;
        out.push(it);
    }
    out
}

fn machinery(rng: &mut SimRng, _st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let mut s = Shapes::default();
    if ctx.max_w > 4200.0 && ctx.max_h > 2200.0 && chance(rng, 0.5) {
        // A mini excavator, boom folded.
        let l = uni(rng, 3000.0, 3900.0).min(ctx.max_w - 300.0);
        let th = uni(rng, 420.0, 560.0);
        s.rect(0.0, 0.0, l, th, STEEL * 2.0 * 350.0 * 0.22).tex = Tex::Stripes {
            period: 170.0,
            amp: 0.35,
            along_y: false,
            phase: 0.0,
        };
        s.frame(0.0, 0.0, l, th, 40.0, STEEL * 700.0 * 0.35);
        let n = ((l - 400.0) / 260.0) as usize;
        for k in 0..=n {
            s.disk(200.0 + k as f32 * (l - 400.0) / n as f32, 110.0, 80.0, 5.0);
        }
        for x in [0.5 * th, l - 0.5 * th] {
            s.ring(x, 0.5 * th, 60.0, 0.45 * th, 4.0);
        }
        let top = th + 100.0;
        s.rect(0.15 * l, th, 0.85 * l, top, 4.0);
        let ub0 = 0.1 * l;
        let ub1 = 0.95 * l;
        s.rect(ub0, top, ub1, top + 700.0, 0.6).tex = noise(rng, 90.0, 0.4);
        s.rect(ub1 - 500.0, top, ub1, top + 650.0, 9.0).tex = noise(rng, 80.0, 0.1);
        s.rect(
            ub0 + 0.4 * l,
            top + 80.0,
            ub0 + 0.4 * l + 600.0,
            top + 550.0,
            4.5,
        )
        .tex = noise(rng, 45.0, 0.3);
        let cab_top = (top + 1550.0).min(ctx.max_h - 60.0);
        s.polyline(
            &[
                [ub0 + 0.3 * l, top + 700.0],
                [ub0 + 0.3 * l, cab_top],
                [ub0 + 0.3 * l + 900.0, cab_top],
                [ub0 + 0.3 * l + 900.0, top + 700.0],
            ],
            60.0,
            1.4,
        );
        s.rect(
            ub0 + 0.3 * l,
            top + 700.0,
            ub0 + 0.3 * l + 900.0,
            cab_top,
            0.08,
        );
        let b0 = [ub0 + 0.25 * l, top + 400.0];
        let b1 = [ub0 + 0.02 * l, cab_top - 150.0];
        let b2 = [0.0, top + 150.0];
        s.seg(b0, b1, 240.0, 0.7);
        s.seg(b0, b1, 14.0, STEEL * 400.0);
        s.seg(b1, b2, 200.0, 0.7);
        s.seg(
            [b0[0] + 100.0, b0[1] - 80.0],
            [b1[0] + 150.0, b1[1] - 180.0],
            110.0,
            2.6,
        );
        s.polyline(
            &[
                b2,
                [b2[0] + 350.0, b2[1] - 250.0],
                [b2[0] + 600.0, b2[1] - 120.0],
                [b2[0] + 450.0, b2[1] + 200.0],
            ],
            22.0,
            STEEL * 700.0,
        );
        return vec![Item::from_shapes(Goods::Machinery, s, 1)];
    }
    // Parts in wooden crates.
    let cw = uni(rng, 1000.0, 2200.0).min(ctx.max_w);
    let ch = uni(rng, 700.0, 1600.0).min(ctx.max_h - 100.0);
    if cw < 700.0 || ch < 500.0 {
        return Vec::new();
    }
    let wood = mu(0.6);
    s.frame(0.0, 0.0, cw, ch, 60.0, wood * 1200.0 * 0.3);
    s.rect(0.0, 0.0, cw, ch, wood * 40.0);
    s.seg([60.0, 60.0], [cw - 60.0, ch - 60.0], 60.0, wood * 100.0);
    let parts = rng.random_range(1..=3);
    for _ in 0..parts {
        let pw = uni(rng, 250.0, (cw - 200.0).max(260.0));
        let ph = uni(rng, 200.0, (ch - 200.0).max(210.0));
        let x = uni(rng, 80.0, (cw - 80.0 - pw).max(81.0));
        let y = uni(rng, 70.0, (ch - 70.0 - ph).max(71.0));
        match rng.random_range(0..4) {
            0 => {
                s.rect(x, y, x + pw, y + ph, uni(rng, 3.0, 7.0)).tex = noise(rng, 50.0, 0.3);
            }
            1 => {
                let r = 0.5 * pw.min(ph);
                s.ring(x + r, y + r, 0.3 * r, r, uni(rng, 3.0, 8.0)).tex = Tex::Stripes {
                    period: 25.0,
                    amp: 0.2,
                    along_y: false,
                    phase: 0.0,
                };
            }
            2 => {
                s.cylh(x, y, x + pw, y + 0.3 * ph, 0.0, uni(rng, 3.0, 8.0));
            }
            _ => {
                s.poly(
                    &[
                        [x, y],
                        [x + pw, y],
                        [x + 0.8 * pw, y + ph],
                        [x + 0.1 * pw, y + 0.7 * ph],
                    ],
                    uni(rng, 2.5, 6.0),
                )
                .tex = noise(rng, 40.0, 0.25);
            }
        }
    }
    let mut it = Item::from_shapes(Goods::Machinery, s, 1);
    it.y = 0.0;
    vec![it]
}

/// Pallets of shrink-wrapped bottle packs, one or two pallets high. Seen from the side, each
/// layer is a band of liquid (the beam crosses some thirty bottles of it) topped by a lighter
/// band of shoulders and necks with the caps above, then a slip sheet: a banding with the
/// bottle height as period, which no other class has at that density.
fn bottled_drinks(rng: &mut SimRng, st: &mut SimRng, ctx: &Ctx) -> Vec<Item> {
    let w = pick(st, &[1000.0, 1200.0]);
    if w > ctx.max_w {
        return Vec::new();
    }
    // 0.5 l, 1.5 l and 2 l bottles: height and diameter (mm).
    let (bh, bd) = pick(st, &[(225.0, 65.0), (310.0, 90.0), (335.0, 105.0)]);
    let liquid = mu(1.0) * ACROSS * uni(st, 0.5, 0.62);
    let pack_w = bd * pick(st, &[2.0, 3.0, 4.0]);
    let layers_per_pallet = rng.random_range(4..=6);
    let pallet_h = 144.0 + layers_per_pallet as f32 * (bh + 4.0);
    let levels = if 2.0 * pallet_h + 150.0 < ctx.max_h && chance(rng, 0.6) {
        2
    } else {
        1
    };
    if pallet_h > ctx.max_h {
        return Vec::new();
    }
    let mut out = Vec::new();
    for level in 0..levels {
        let mut s = Shapes::default();
        let y0 = level as f32 * (pallet_h + 10.0);
        let mut y = pallet(&mut s, 0.0, w, y0, 2.0);
        let mut packs = 0;
        for _ in 0..layers_per_pallet {
            let mut x = 0.0;
            while x + 0.5 * pack_w <= w {
                let x1 = (x + pack_w).min(w);
                // Packs are a little fuller or emptier; film gaps between them.
                let k = uni(rng, 0.93, 1.07);
                let body = s.rect(x + 3.0, y, x1 - 3.0, y + 0.7 * bh, liquid * k);
                body.tex = Tex::Stripes {
                    period: bd,
                    amp: 0.12,
                    along_y: false,
                    phase: uni(rng, 0.0, 1.0),
                };
                body.tex2 = noise(rng, 40.0, 0.04);
                // Shoulders taper: less liquid towards the neck.
                s.rect(
                    x + 3.0,
                    y + 0.7 * bh,
                    x1 - 3.0,
                    y + 0.82 * bh,
                    0.45 * liquid * k,
                );
                s.rect(
                    x + 3.0,
                    y + 0.82 * bh,
                    x1 - 3.0,
                    y + 0.95 * bh,
                    0.08 * liquid,
                );
                s.rect(x + 3.0, y + 0.95 * bh, x1 - 3.0, y + bh, 0.5).tex = noise(rng, 8.0, 0.3);
                packs += 1;
                x += pack_w;
            }
            s.rect(0.0, y + bh, w, y + bh + 4.0, 0.45);
            y += bh + 4.0;
        }
        out.push(Item::from_shapes(Goods::BottledDrinks, s, packs));
    }
    out
}

/// An undeclared package hidden in a load: drug bricks, weapon parts or a dense block.
pub(crate) fn concealed(rng: &mut SimRng) -> Item {
    let mut s = Shapes::default();
    let w = uni(rng, 280.0, 600.0);
    let h = uni(rng, 180.0, 420.0);
    match rng.random_range(0..3) {
        0 => {
            s.rect(0.0, 0.0, w, h, mu(1.15) * uni(rng, 700.0, 1200.0))
                .tex = noise(rng, 25.0, 0.08);
            let mut x = 110.0;
            while x < w - 20.0 {
                s.rect(x, 0.0, x + 5.0, h, 0.15);
                x += 110.0;
            }
        }
        1 => {
            s.rect(0.0, 0.0, w, h, 0.4);
            let k = rng.random_range(3..7);
            for _ in 0..k {
                let a = [uni(rng, 20.0, 0.5 * w), uni(rng, 20.0, h - 20.0)];
                let b = [uni(rng, 0.5 * w, w - 20.0), uni(rng, 20.0, h - 20.0)];
                s.seg(a, b, uni(rng, 25.0, 45.0), STEEL * uni(rng, 60.0, 160.0));
            }
        }
        _ => {
            s.rect(0.0, 0.0, w, h, uni(rng, 2.2, 3.5)).tex = noise(rng, 30.0, 0.15);
        }
    }
    Item::from_shapes(Goods::Concealed, s, 1)
}
