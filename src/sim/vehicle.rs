//! Trucks and load carriers of the simulator: tractor units (engine, cab, chassis, wheels),
//! skeletal container chassis, box and flatbed trailers, and ISO container shells (walls,
//! ribs, rails, doors, floor cross-members), all as projection shapes in millimetres with
//! x = 0 at the truck's front bumper and y = 0 on the road. It only builds geometry; it must
//! never place goods, draw random goods or know about scanners.

use rand::Rng;

use super::geom::{deg, mu, Prim, Shapes, Tex, STEEL};
use super::{chance, uni, SimRng};

/// Path of a sheet seen edge-on across a whole container or cab width, as optical depth.
const EDGE_ON_WIDTH: f32 = 2350.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnitKind {
    Dry20,
    Dry40,
    HighCube40,
    Reefer40,
    BoxBody,
    Flatbed,
}

impl UnitKind {
    pub fn is_container(self) -> bool {
        !matches!(self, Self::BoxBody | Self::Flatbed)
    }

    /// Outside length (mm).
    pub fn length(self) -> f32 {
        match self {
            Self::Dry20 => 6058.0,
            Self::Dry40 | Self::HighCube40 | Self::Reefer40 => 12192.0,
            Self::BoxBody => 13600.0,
            Self::Flatbed => 12500.0,
        }
    }

    /// Outside height (mm).
    pub fn height(self) -> f32 {
        match self {
            Self::Dry20 | Self::Dry40 => 2591.0,
            Self::HighCube40 | Self::Reefer40 => 2896.0,
            Self::BoxBody => 2750.0,
            Self::Flatbed => 2500.0,
        }
    }

    /// Tare mass (kg), for an empty container's declaration.
    pub fn tare_kg(self) -> f64 {
        match self {
            Self::Dry20 => 2230.0,
            Self::Dry40 => 3750.0,
            Self::HighCube40 => 3900.0,
            Self::Reefer40 => 4800.0,
            Self::BoxBody | Self::Flatbed => 0.0,
        }
    }
}

/// A load carrier's own structure (unit frame: x from its front end, y from its bottom) and
/// the box the goods may occupy.
pub(crate) struct Shell {
    pub prims: Vec<Prim>,
    pub interior: [f32; 4],
}

/// Tractor plus trailer, and where each load carrier's frame origin sits on it.
#[derive(Clone)]
pub(crate) struct Vehicle {
    pub prims: Vec<Prim>,
    pub origins: Vec<[f32; 2]>,
    pub length: f32,
}

struct Tractor {
    fifth_wheel_x: f32,
    fifth_wheel_top: f32,
    cab_back: f32,
    length: f32,
}

/// A wheel seen along its axle: `n` tyres and rims project onto each other (both sides of
/// the vehicle, twin tyres), so every path scales with `n`. Truck tyres weigh ~65 kg and
/// their steel rims ~35 kg, which is what makes wheels among the darkest parts of a truck.
pub(crate) fn wheel(
    s: &mut Shapes,
    c: [f32; 2],
    r: f32,
    n: f32,
    truck: bool,
    axle_len: f32,
    seed: u32,
) {
    let [cx, cy] = c;
    let rim = r * if truck { 0.55 } else { 0.6 };
    let k = if truck { 1.0 } else { 0.45 };
    s.ring(cx, cy, rim, r, 0.24 * n * k).tex = Tex::Noise {
        cell: 70.0,
        amp: 0.12,
        seed,
    };
    s.ring(cx, cy, r - 0.07 * r, r - 2.0, 0.5 * n * k).tex = Tex::Noise {
        cell: 22.0,
        amp: 0.3,
        seed: seed ^ 7,
    };
    s.ring(cx, cy, rim, rim + 0.045 * r, 0.45 * n * k);
    // Rim barrel lies along the beam: a thin, very dark circle.
    let metal = if truck { STEEL } else { mu(2.7) * 1.6 };
    s.ring(cx, cy, rim - 0.016 * r, rim, metal * 200.0 * n);
    s.ring(cx, cy, 0.0, rim * 0.6, 0.3 * n * k);
    s.ring(cx, cy, rim * 0.6, rim * 0.8, 0.09 * n * k);
    s.ring(cx, cy, rim * 0.8, rim, 0.26 * n * k);
    // Brake drums or discs, hub, nuts, axle end-on.
    s.ring(cx, cy, 0.36 * r, 0.40 * r, STEEL * 180.0 * 2.0 * k);
    s.disk(cx, cy, 0.3 * r, 1.2 * k + 0.4);
    s.disk(cx, cy, 0.2 * r, 2.2 * k);
    let nuts = if truck { 10 } else { 5 };
    for i in 0..nuts {
        let a = i as f32 * std::f32::consts::TAU / nuts as f32;
        s.disk(
            cx + 0.25 * r * a.cos(),
            cy + 0.25 * r * a.sin(),
            0.028 * r,
            STEEL * 50.0 * n * 0.5,
        );
    }
    s.ring(cx, cy, 0.105 * r, 0.14 * r, STEEL * axle_len);
    s.disk(cx, cy, 0.05 * r, STEEL * axle_len);
}

/// A mudguard or wheel arch: a curved sheet whose surface runs along the beam.
fn arch(s: &mut Shapes, cx: f32, cy: f32, r: f32, a0: f32, a1: f32, od: f32) {
    let n = 7;
    let pts: Vec<[f32; 2]> = (0..=n)
        .map(|i| {
            let a = deg(a0 + (a1 - a0) * i as f32 / n as f32);
            [cx + r * a.cos(), cy + r * a.sin()]
        })
        .collect();
    s.polyline(&pts, 4.0, od);
}

fn tractor(rng: &mut SimRng, s: &mut Shapes) -> Tractor {
    let conventional = chance(rng, 0.22);
    let sleeper = chance(rng, 0.55);
    let hood = if conventional {
        uni(rng, 1500.0, 1900.0)
    } else {
        0.0
    };
    let cab_x0 = hood + if conventional { 60.0 } else { 70.0 };
    let cab_len = uni(rng, 1950.0, 2300.0) + if sleeper { uni(rng, 450.0, 750.0) } else { 0.0 };
    let cab_back = cab_x0 + cab_len;
    let fa = if conventional {
        uni(rng, 750.0, 1000.0)
    } else {
        uni(rng, 1250.0, 1500.0)
    };
    let wb = if conventional {
        uni(rng, 4300.0, 5200.0)
    } else {
        uni(rng, 3300.0, 3900.0)
    };
    let ra = fa + wb;
    let tandem = chance(rng, 0.45);
    let ra2 = if tandem { ra + 1350.0 } else { ra };
    let r = uni(rng, 495.0, 530.0);
    let wy = r - 18.0;
    let rail_top = uni(rng, 1020.0, 1110.0);
    let rail_h = 290.0;
    let cab_floor = if conventional {
        uni(rng, 1150.0, 1250.0)
    } else {
        uni(rng, 1220.0, 1340.0)
    };
    let cab_top = uni(rng, 2950.0, 3850.0);
    let length = ra2 + uni(rng, 700.0, 1050.0);
    let seed: u32 = rng.random();

    // Chassis rails (two C-channels with inner liners, cables and air lines): webs across
    // the beam, flanges along it.
    s.rect(250.0, rail_top - rail_h, length, rail_top, STEEL * 30.0)
        .tex = Tex::Noise {
        cell: 120.0,
        amp: 0.2,
        seed: seed ^ 11,
    };
    for k in 0..4 {
        let y = rail_top - rail_h + 40.0 + 55.0 * k as f32;
        s.rect(fa, y, length - 200.0, y + 12.0, 0.25);
    }
    s.rect(250.0, rail_top - 8.0, length, rail_top, STEEL * 170.0);
    s.rect(
        250.0,
        rail_top - rail_h,
        length,
        rail_top - rail_h + 8.0,
        STEEL * 170.0,
    );
    let mut x = fa + 700.0;
    while x < length - 300.0 {
        s.frame(
            x,
            rail_top - 230.0,
            x + 80.0,
            rail_top - 60.0,
            5.0,
            STEEL * 800.0,
        );
        x += uni(rng, 900.0, 1500.0);
    }
    s.frame(
        length - 90.0,
        rail_top - 250.0,
        length,
        rail_top - 30.0,
        6.0,
        STEEL * 900.0,
    );

    // Engine, gearbox, radiator: the darkest part of the tractor.
    let e0 = if conventional {
        uni(rng, 250.0, 350.0)
    } else {
        uni(rng, 380.0, 480.0)
    };
    let e1 = e0 + uni(rng, 1000.0, 1250.0);
    let ey = if conventional { 650.0 } else { 560.0 };
    let block = s.rect(e0, ey, e1 - 150.0, ey + 600.0, 4.3);
    block.tex = Tex::Stripes {
        period: (e1 - 150.0 - e0) / 6.0,
        amp: 0.18,
        along_y: false,
        phase: 0.25,
    };
    block.tex2 = Tex::Noise {
        cell: 70.0,
        amp: 0.25,
        seed,
    };
    s.rect(e0 + 30.0, ey + 600.0, e1 - 200.0, ey + 740.0, 2.6)
        .tex = Tex::Noise {
        cell: 40.0,
        amp: 0.3,
        seed: seed ^ 1,
    };
    s.rect(e0 + 120.0, ey - 150.0, e1 - 320.0, ey, 0.9);
    s.cylh(e0 - 40.0, ey + 120.0, e1 - 80.0, ey + 230.0, 0.0, 1.8);
    s.disk(e1 - 110.0, ey + 200.0, 260.0, 2.2);
    s.ring(e1 - 260.0, ey + 690.0, 70.0, 150.0, 1.6);
    s.disk(e0 + 80.0, ey + 520.0, 90.0, 1.5);
    s.rect(e0 + 100.0, ey + 740.0, e1 - 350.0, ey + 840.0, 0.7);
    s.poly(
        &[
            [e1, ey + 40.0],
            [e1 + 680.0, ey + 140.0],
            [e1 + 680.0, ey + 360.0],
            [e1, ey + 470.0],
        ],
        2.9,
    )
    .tex = Tex::Noise {
        cell: 50.0,
        amp: 0.25,
        seed: seed ^ 2,
    };
    s.seg([e1 + 680.0, ey + 250.0], [ra, wy], 95.0, 0.45);
    let rad_x = if conventional { 80.0 } else { 120.0 };
    s.rect(
        rad_x,
        560.0,
        rad_x + 120.0,
        if conventional { 1750.0 } else { 1550.0 },
        0.9,
    )
    .tex = Tex::Stripes {
        period: 9.0,
        amp: 0.45,
        along_y: true,
        phase: 0.0,
    };
    s.ring(rad_x + 190.0, 1050.0, 60.0, 330.0, 0.22);
    s.disk(rad_x + 190.0, 1050.0, 60.0, 1.3);
    // Bumper beam across the front, steps, battery box, air tanks.
    s.frame(0.0, 420.0, 150.0, 690.0, 6.0, STEEL * 900.0);
    s.rect(0.0, 420.0, 150.0, 690.0, 0.6);
    s.rect(
        cab_x0 + 200.0,
        cab_floor - 420.0,
        cab_x0 + 600.0,
        cab_floor - 395.0,
        1.2,
    );
    s.rect(
        cab_x0 + 200.0,
        cab_floor - 760.0,
        cab_x0 + 600.0,
        cab_floor - 735.0,
        1.2,
    );

    if conventional {
        // Long hood over the engine.
        let hood_pts = [
            [20.0, 700.0],
            [10.0, 1500.0],
            [120.0, 1850.0],
            [hood, 1950.0],
            [hood + 40.0, 1200.0],
            [40.0, 650.0],
        ];
        s.poly(&hood_pts, 0.05);
        s.polyline(
            &[[10.0, 1500.0], [120.0, 1850.0], [hood, 1950.0]],
            1.5,
            STEEL * 1600.0,
        );
        arch(s, fa, wy, r + 70.0, 0.0, 180.0, mu(1.4) * 500.0);
    }

    // Cab: skins, edge-on sheets, glass, doors, seats, dashboard, bunk.
    let fz = cab_floor - 100.0;
    let ws0 = [cab_x0 + 30.0, if conventional { 2000.0 } else { 1850.0 }];
    let ws1 = [cab_x0 + 160.0, cab_top - 330.0];
    let roof0 = [cab_x0 + 300.0, cab_top];
    let roof1 = [cab_back - 90.0, cab_top];
    let back0 = [cab_back, cab_top - 180.0];
    let outline = [
        [cab_x0 + 10.0, fz],
        [cab_x0, 1450.0],
        ws0,
        ws1,
        roof0,
        roof1,
        back0,
        [cab_back, fz],
    ];
    s.poly(&outline, STEEL * 2.0 + 0.02);
    s.polyline(
        &[[cab_x0 + 10.0, fz], [cab_x0, 1450.0], ws0],
        1.5,
        STEEL * EDGE_ON_WIDTH,
    );
    s.seg(ws0, ws1, 6.0, mu(2.5) * EDGE_ON_WIDTH);
    s.polyline(&[ws1, roof0, roof1, back0], 1.2, STEEL * EDGE_ON_WIDTH);
    s.seg(back0, [cab_back, fz], 1.5, STEEL * EDGE_ON_WIDTH);
    s.rect(
        cab_x0 + 10.0,
        cab_floor - 14.0,
        cab_back,
        cab_floor,
        STEEL * 600.0,
    );
    let door0 = cab_x0 + if conventional { 200.0 } else { 380.0 };
    let door1 = door0 + uni(rng, 850.0, 1050.0);
    s.rect(door0, fz + 40.0, door1, cab_floor + 750.0, 0.22).tex = Tex::Noise {
        cell: 120.0,
        amp: 0.3,
        seed: seed ^ 3,
    };
    s.seg(
        [door0 + 40.0, fz + 300.0],
        [door1 - 40.0, cab_floor + 500.0],
        40.0,
        1.0,
    );
    s.rect(
        door0 + 50.0,
        cab_floor + 780.0,
        door1 - 50.0,
        cab_floor + 1400.0,
        0.06,
    );
    s.frame(door0, fz + 40.0, door1, cab_floor + 1450.0, 30.0, 0.35);
    if cab_top > 3300.0 {
        // High roof: the fibreglass roof cap and an air deflector.
        s.rect(
            cab_x0 + 400.0,
            cab_top - 520.0,
            cab_back - 150.0,
            cab_top - 500.0,
            0.9,
        );
    }
    let seat_x = cab_x0 + if conventional { 600.0 } else { 750.0 };
    for dx in [0.0, uni(rng, -30.0, 30.0)] {
        let sx = seat_x + dx;
        s.rect(sx, cab_floor + 280.0, sx + 520.0, cab_floor + 470.0, 0.22);
        s.rect(
            sx + 100.0,
            cab_floor + 20.0,
            sx + 420.0,
            cab_floor + 270.0,
            0.9,
        )
        .tex = Tex::Noise {
            cell: 40.0,
            amp: 0.5,
            seed: seed ^ 15,
        };
        s.seg(
            [sx + 470.0, cab_floor + 420.0],
            [sx + 600.0, cab_floor + 1250.0],
            150.0,
            0.13,
        );
        s.polyline(
            &[
                [sx, cab_floor + 280.0],
                [sx + 500.0, cab_floor + 280.0],
                [sx + 620.0, cab_floor + 1260.0],
            ],
            22.0,
            0.9,
        );
        s.seg(
            [sx + 150.0, cab_floor],
            [sx + 250.0, cab_floor + 280.0],
            60.0,
            0.8,
        );
    }
    s.poly(
        &[
            [cab_x0 + 60.0, cab_floor + 450.0],
            [cab_x0 + 480.0, cab_floor + 550.0],
            [cab_x0 + 420.0, cab_floor + 950.0],
            [cab_x0 + 60.0, cab_floor + 1000.0],
        ],
        0.3,
    )
    .tex = Tex::Noise {
        cell: 60.0,
        amp: 0.4,
        seed: seed ^ 4,
    };
    let sw = [seat_x - 250.0, cab_floor + 950.0];
    s.seg([cab_x0 + 150.0, cab_floor + 200.0], sw, 45.0, 1.3);
    s.seg(
        [sw[0] - 180.0, sw[1] - 60.0],
        [sw[0] + 180.0, sw[1] + 60.0],
        30.0,
        0.5,
    );
    if sleeper {
        s.rect(
            cab_back - 720.0,
            cab_floor + 520.0,
            cab_back - 40.0,
            cab_floor + 680.0,
            0.15,
        );
        s.seg(
            [cab_back - 720.0, cab_floor + 520.0],
            [cab_back - 40.0, cab_floor + 520.0],
            25.0,
            0.9,
        );
    }
    // Mirror on its arm, ahead of the cab.
    let my = cab_floor + uni(rng, 900.0, 1200.0);
    s.seg(
        [cab_x0 + 120.0, my + 250.0],
        [cab_x0 - 130.0, my + 150.0],
        25.0,
        0.9,
    );
    s.rect(cab_x0 - 260.0, my - 300.0, cab_x0 - 130.0, my + 200.0, 0.25);
    // Exhaust stack or silencer, fuel tank with its diesel level, battery box.
    if chance(rng, 0.5) {
        s.cylv(
            cab_back + 60.0,
            rail_top - 100.0,
            cab_back + 190.0,
            cab_top + 150.0,
            0.93,
            STEEL * 130.0,
        );
    } else {
        s.cylh(
            cab_back + 40.0,
            480.0,
            cab_back + 820.0,
            780.0,
            0.9,
            STEEL * 300.0,
        );
    }
    let t0 = cab_back + uni(rng, 100.0, 350.0);
    let t1 = (t0 + uni(rng, 800.0, 1400.0))
        .min(ra - r - 150.0)
        .max(t0 + 400.0);
    let fill = uni(rng, 0.15, 0.95);
    s.rect(
        t0 + 6.0,
        470.0,
        t1 - 6.0,
        470.0 + fill * 580.0,
        mu(0.84) * 620.0,
    );
    s.frame(t0, 460.0, t1, 1060.0, 4.0, mu(2.7) * 620.0);
    s.rect(t0, 460.0, t1, 1060.0, mu(2.7) * 6.0);
    for k in [0.25, 0.75] {
        let x = t0 + k * (t1 - t0);
        s.rect(x - 20.0, 440.0, x + 20.0, 1080.0, 1.0);
    }
    s.rect(t0 + 100.0, 520.0, t0 + 600.0, 800.0, 2.2).tex = Tex::Stripes {
        period: 80.0,
        amp: 0.3,
        along_y: false,
        phase: 0.0,
    };
    s.cylh(fa + 500.0, 560.0, fa + 1300.0, 800.0, 0.94, STEEL * 240.0);

    // Front leaf springs and steering box; rear air bellows or springs.
    s.rect(fa - 700.0, wy + 90.0, fa + 700.0, wy + 170.0, STEEL * 150.0)
        .tex = Tex::Stripes {
        period: 16.0,
        amp: 0.35,
        along_y: true,
        phase: 0.0,
    };
    s.rect(fa - 450.0, wy + 180.0, fa - 200.0, wy + 420.0, 2.4);
    s.seg(
        [fa - 330.0, wy + 250.0],
        [fa + 250.0, wy + 150.0],
        50.0,
        1.5,
    );
    for ax in if tandem { vec![ra, ra2] } else { vec![ra] } {
        s.rect(ax - 650.0, wy + 80.0, ax + 650.0, wy + 160.0, STEEL * 120.0);
        s.disk(ax + 420.0, rail_top - rail_h - 120.0, 130.0, 0.7);
        s.cylh(ax - 250.0, wy - 60.0, ax + 250.0, wy + 90.0, 0.0, 3.0);
        s.disk(ax - 260.0, wy + 40.0, 90.0, 1.4);
    }
    // Engine ancillaries: alternator, starter, air compressor, filters, exhaust manifold.
    s.disk(e0 + 60.0, ey + 330.0, 95.0, 2.0);
    s.cylh(e1 - 420.0, ey - 60.0, e1 - 120.0, ey + 60.0, 0.0, 2.5);
    s.rect(e0 + 250.0, ey + 560.0, e1 - 350.0, ey + 640.0, 1.6);
    s.cylv(e0 + 120.0, ey - 40.0, e0 + 230.0, ey + 200.0, 0.0, 1.2);
    s.rect(rad_x - 60.0, 600.0, rad_x, 1400.0, 0.35).tex = Tex::Stripes {
        period: 6.0,
        amp: 0.4,
        along_y: false,
        phase: 0.0,
    };
    s.seg(
        [e1 - 260.0, ey + 690.0],
        [cab_back + 120.0, rail_top + 60.0],
        110.0,
        0.35,
    );
    // Cab interior: trim, tunnel over the engine, storage, the driver's belongings.
    s.poly(&outline, 0.06).tex = Tex::Noise {
        cell: 250.0,
        amp: 0.5,
        seed: seed ^ 12,
    };
    if !conventional {
        s.poly(
            &[
                [e0 + 50.0, cab_floor],
                [e0 + 150.0, cab_floor + 330.0],
                [e1 - 150.0, cab_floor + 330.0],
                [e1, cab_floor],
            ],
            0.25,
        );
    }
    let items = rng.random_range(4..10);
    for _ in 0..items {
        let w = uni(rng, 120.0, 600.0);
        let h = uni(rng, 80.0, 450.0);
        let x = uni(rng, cab_x0 + 150.0, cab_back - w - 60.0);
        let y = uni(
            rng,
            cab_floor + 20.0,
            (cab_top - h - 200.0).max(cab_floor + 40.0),
        );
        let od = uni(rng, 0.08, 0.7);
        // Bags, boxes, a cool box: soft-edged lumps rather than clean geometry.
        let p = if chance(rng, 0.4) {
            s.rect(x, y, x + w, y + h, od)
        } else {
            s.pillow(x, y, x + w, y + h, od * 1.4)
        };
        p.tex = Tex::Noise {
            cell: uni(rng, 25.0, 80.0),
            amp: 0.6,
            seed: rng.random(),
        };
        p.angle = deg(uni(rng, -12.0, 12.0));
    }
    if sleeper {
        s.rect(
            cab_back - 700.0,
            cab_floor + 30.0,
            cab_back - 60.0,
            cab_floor + 500.0,
            0.45,
        )
        .tex = Tex::Noise {
            cell: 60.0,
            amp: 0.6,
            seed: seed ^ 13,
        };
    }
    s.rect(
        cab_x0 + 350.0,
        cab_top - 380.0,
        cab_back - 200.0,
        cab_top - 120.0,
        0.25,
    );
    // Air tanks, AdBlue tank, toolbox and batteries along the chassis.
    for k in 0..rng.random_range(1..4) {
        let x = fa + 600.0 + k as f32 * 700.0 + uni(rng, 0.0, 200.0);
        s.cylh(
            x,
            rail_top - rail_h - 260.0,
            x + 650.0,
            rail_top - rail_h - 20.0,
            0.93,
            STEEL * 260.0,
        );
    }
    s.rect(t1 + 60.0, 520.0, t1 + 500.0, 950.0, 0.55).tex = Tex::Noise {
        cell: 50.0,
        amp: 0.4,
        seed: seed ^ 14,
    };

    // Fifth wheel on its brackets.
    let fw = if tandem {
        0.5 * (ra + ra2) - uni(rng, 0.0, 250.0)
    } else {
        ra - uni(rng, 100.0, 350.0)
    };
    let fw_top = rail_top + uni(rng, 170.0, 230.0);
    s.rect(fw - 460.0, fw_top - 55.0, fw + 460.0, fw_top, 7.5)
        .tex = Tex::Noise {
        cell: 90.0,
        amp: 0.2,
        seed: seed ^ 5,
    };
    s.rect(fw - 330.0, rail_top, fw + 330.0, fw_top - 55.0, 1.3);
    s.poly(
        &[
            [fw + 460.0, fw_top - 55.0],
            [fw + 700.0, fw_top - 140.0],
            [fw + 700.0, fw_top - 110.0],
            [fw + 460.0, fw_top - 10.0],
        ],
        1.5,
    );

    // Wheels and mudguards.
    wheel(s, [fa, wy], r, 2.0, true, 1900.0, seed ^ 6);
    for ax in if tandem { vec![ra, ra2] } else { vec![ra] } {
        wheel(s, [ax, wy], r, 4.0, true, 1800.0, seed ^ ax as u32);
    }
    arch(
        s,
        0.5 * (ra + ra2),
        wy,
        r + 80.0,
        20.0,
        160.0,
        mu(1.2) * 600.0,
    );
    if !conventional {
        arch(s, fa, wy, r + 60.0, 15.0, 170.0, mu(1.2) * 500.0);
    }
    Tractor {
        fifth_wheel_x: fw,
        fifth_wheel_top: fw_top,
        cab_back,
        length,
    }
}

/// Leaf or air suspension above an axle.
fn suspension(rng: &mut SimRng, s: &mut Shapes, ax: f32, wy: f32, r: f32, beam_bottom: f32) {
    if chance(rng, 0.5) {
        let top = (wy + r * 0.45).min(beam_bottom - 40.0);
        s.rect(ax - 560.0, top - 95.0, ax + 560.0, top, STEEL * 170.0)
            .tex = Tex::Stripes {
            period: 16.0,
            amp: 0.35,
            along_y: true,
            phase: 0.0,
        };
        for dx in [-560.0, 560.0] {
            s.seg([ax + dx, top], [ax + dx, beam_bottom], 60.0, 1.4);
        }
    } else {
        s.seg([ax - 650.0, beam_bottom - 40.0], [ax, wy], 90.0, 2.0);
        s.disk(ax + 250.0, wy + 150.0, 150.0, mu(1.2) * 300.0);
        s.rect(ax + 150.0, wy + 290.0, ax + 350.0, beam_bottom, 0.9);
    }
}

/// Trailer chassis under a load carrier whose bottom is at `deck`, from `x0` to `x1`;
/// `skeletal` chassis have no deck (containers sit on twist-locks).
fn trailer(
    rng: &mut SimRng,
    s: &mut Shapes,
    x0: f32,
    x1: f32,
    deck: f32,
    axles: usize,
    skeletal: bool,
) {
    let beam_h = uni(rng, 330.0, 420.0);
    let bb = deck - beam_h;
    // Main beams: webs across the beam, flanges along it.
    s.rect(x0 + 50.0, bb, x1, deck, STEEL * 14.0);
    s.rect(x0 + 50.0, deck - 14.0, x1, deck, STEEL * 250.0);
    s.rect(x0 + 50.0, bb, x1, bb + 14.0, STEEL * 250.0);
    let mut x = x0 + 300.0;
    while x < x1 - 200.0 {
        s.frame(x, bb + 40.0, x + 100.0, bb + 140.0, 5.0, STEEL * 1000.0);
        let step = uni(rng, 1000.0, 1400.0);
        // Lightening holes in both webs, between the cross-members.
        if x + step < x1 - 300.0 && chance(rng, 0.7) {
            let hx = x + 0.5 * step + 50.0;
            s.push(Prim::new(
                super::geom::Kind::Disk {
                    rx: 0.28 * step,
                    ry: 0.28 * beam_h,
                },
                hx,
                bb + 0.5 * beam_h,
                -STEEL * 14.0,
            ));
        }
        x += step;
    }
    // Air lines and cables along the beams.
    for k in 0..3 {
        let y = bb + 30.0 + 22.0 * k as f32;
        s.rect(x0 + 400.0, y, x1 - 300.0, y + 10.0, 0.3);
    }
    s.frame(x0, deck - 240.0, x0 + 200.0, deck, 8.0, STEEL * 2300.0);
    s.frame(x1 - 200.0, deck - 240.0, x1, deck, 8.0, STEEL * 2300.0);
    // Upper coupler plate and kingpin.
    s.rect(x0 + 50.0, bb - 18.0, x0 + 1900.0, bb, STEEL * 900.0);
    s.rect(x0 + 860.0, bb - 90.0, x0 + 940.0, bb - 18.0, STEEL * 80.0);
    if skeletal {
        for cx in [x0 + 80.0, x1 - 80.0] {
            s.rect(cx - 40.0, deck - 20.0, cx + 40.0, deck + 25.0, 3.0);
        }
    }
    // Landing gear.
    let lg = x0 + uni(rng, 2100.0, 2600.0);
    s.rect(lg, 380.0, lg + 110.0, bb, STEEL * 24.0);
    s.rect(lg, 380.0, lg + 6.0, bb, STEEL * 220.0);
    s.rect(lg + 104.0, 380.0, lg + 110.0, bb, STEEL * 220.0);
    s.rect(lg - 60.0, 320.0, lg + 170.0, 380.0, 2.0);
    s.rect(lg + 110.0, bb - 380.0, lg + 260.0, bb - 200.0, 1.8);
    s.seg(
        [lg + 260.0, bb - 300.0],
        [lg + 480.0, bb - 520.0],
        22.0,
        0.6,
    );
    // Axles at the rear.
    let r = uni(rng, 490.0, 520.0);
    let wy = r - 18.0;
    let last = x1 - uni(rng, 1100.0, 1700.0);
    let seed: u32 = rng.random();
    let mut first = last;
    for k in 0..axles {
        let ax = last - 1310.0 * (axles - 1 - k) as f32;
        first = first.min(ax);
        wheel(s, [ax, wy], r, 4.0, true, 1850.0, seed ^ k as u32);
        suspension(rng, s, ax, wy, r, bb);
    }
    // Side guard, mud flaps, rear bumper and lights.
    if first - r - 300.0 > lg + 500.0 {
        s.rect(lg + 400.0, 620.0, first - r - 250.0, 700.0, 0.35);
        s.rect(lg + 400.0, 860.0, first - r - 250.0, 930.0, 0.35);
    }
    s.rect(last + r + 60.0, 250.0, last + r + 75.0, bb, mu(1.2) * 600.0);
    s.frame(x1 - 160.0, 440.0, x1 - 20.0, 620.0, 6.0, STEEL * 2300.0);
    s.seg([x1 - 90.0, 620.0], [x1 - 200.0, bb], 60.0, 1.2);
    s.rect(x1 - 100.0, bb - 180.0, x1, bb - 60.0, 0.8);
    if chance(rng, 0.6) {
        // Spare wheel lying flat in its carrier.
        let sx = lg + uni(rng, 600.0, 1800.0);
        s.cylv(
            sx,
            bb - 330.0,
            sx + 2.0 * r,
            bb - 60.0,
            0.56,
            mu(1.15) * 2.0 * r,
        );
        s.rect(sx - 50.0, bb - 350.0, sx + 2.0 * r + 50.0, bb - 330.0, 1.8);
    }
}

/// Builds a tractor with a trailer for `units`, which are laid front to back.
pub(crate) fn build_vehicle(rng: &mut SimRng, units: &[UnitKind]) -> Vehicle {
    let mut s = Shapes::default();
    let t = tractor(rng, &mut s);
    let load_len: f32 =
        units.iter().map(|u| u.length()).sum::<f32>() + 76.0 * units.len().saturating_sub(1) as f32;
    let kp = uni(rng, 800.0, 1000.0).min(t.fifth_wheel_x - t.cab_back - 350.0);
    let x0 = t.fifth_wheel_x - kp;
    let deck_gap = uni(rng, 60.0, 150.0);
    let mut origins = Vec::new();
    let trailer_end = match units {
        [UnitKind::BoxBody] | [UnitKind::Flatbed] => {
            let deck = t.fifth_wheel_top + deck_gap;
            let len = units[0].length();
            trailer(rng, &mut s, x0, x0 + len, deck, 3, false);
            origins.push([x0, deck]);
            x0 + len
        }
        _ => {
            // A lone 20 ft box rides either on its own short chassis or somewhere on a 40 ft one.
            let deck = t.fifth_wheel_top + deck_gap + 40.0;
            let (chassis_len, axles, offset) = if units.len() == 1 && units[0] == UnitKind::Dry20 {
                if chance(rng, 0.55) {
                    (6200.0, 2, 60.0)
                } else {
                    let slack = 12300.0 - units[0].length() - 100.0;
                    let off = [60.0, 0.5 * slack, slack][rng.random_range(0..3)];
                    (12300.0, 3, off)
                }
            } else {
                (
                    load_len.max(12192.0) + 110.0,
                    if chance(rng, 0.7) { 3 } else { 2 },
                    60.0,
                )
            };
            trailer(rng, &mut s, x0, x0 + chassis_len, deck, axles, true);
            let mut ux = x0 + offset;
            for u in units {
                origins.push([ux, deck]);
                ux += u.length() + 76.0;
            }
            x0 + chassis_len
        }
    };
    Vehicle {
        prims: s.prims,
        origins,
        length: trailer_end.max(t.length),
    }
}

/// Corrugated sheet in a plane across the beam (end walls, doors): flat faces lie along
/// the beam, so the band shows two dark lines with a grey band between them.
fn end_wall(s: &mut Shapes, x_out: f32, dir: f32, y0: f32, y1: f32, depth: f32) {
    let xi = x_out + dir * depth;
    s.rect(x_out, y0, x_out + dir * 2.0, y1, STEEL * 1100.0);
    s.rect(xi, y0, xi - dir * 2.0, y1, STEEL * 1100.0);
    s.rect(x_out + dir * 2.0, y0, xi - dir * 2.0, y1, 1.1);
}

/// An ISO container shell in its own frame (x = 0 at the front end wall, y = 0 at the
/// bottom of the bottom rails).
pub(crate) fn container_shell(rng: &mut SimRng, kind: UnitKind) -> Shell {
    let mut s = Shapes::default();
    let l = kind.length();
    let h = kind.height();
    let reefer = kind == UnitKind::Reefer40;
    let forty = l > 10000.0;
    let floor_top = 188.0;

    // Side walls: both walls flat across the beam, corrugation slopes a little longer.
    if reefer {
        s.rect(
            0.0,
            160.0,
            l,
            h - 60.0,
            STEEL * 1.8 + mu(2.7) * 2.0 + mu(0.05) * 180.0,
        )
        .tex = Tex::Noise {
            cell: 400.0,
            amp: 0.1,
            seed: rng.random(),
        };
        // Flush-riveted panels: faint seams every metre or so.
        let mut x = 600.0;
        while x < l - 200.0 {
            s.rect(x, 160.0, x + 12.0, h - 60.0, 0.05);
            x += uni(rng, 1100.0, 1250.0);
        }
    } else {
        s.rect(0.0, 160.0, l, h - 60.0, STEEL * 3.2);
        let pitch = 278.0;
        let mut x = 180.0;
        while x + pitch < l - 180.0 {
            for (a, b) in [(72.0, 140.0), (210.0, 278.0)] {
                s.rect(x + a, 170.0, x + b, h - 70.0, STEEL * 3.2 * 0.45);
            }
            x += pitch;
        }
    }
    // Top side rails (square tubes along x).
    s.rect(0.0, h - 60.0, l, h, STEEL * 12.0);
    s.rect(0.0, h - 3.0, l, h, STEEL * 120.0);
    s.rect(0.0, h - 60.0, l, h - 57.0, STEEL * 120.0);
    // Roof sheet, corrugated across the width: a zig-zag of a sheet seen edge-on.
    let mut x = 100.0;
    let mut up = false;
    while x < l - 160.0 {
        let y = if up { h - 8.0 } else { h - 26.0 };
        let y2 = if up { h - 26.0 } else { h - 8.0 };
        s.seg([x, y], [x + 55.0, y], 2.0, STEEL * EDGE_ON_WIDTH);
        s.seg([x + 55.0, y], [x + 80.0, y2], 2.0, STEEL * EDGE_ON_WIDTH);
        x += 80.0;
        up = !up;
    }
    // Bottom side rails (C-channels along x), floor, cross-members across the beam.
    s.rect(0.0, 0.0, l, 160.0, STEEL * 9.0);
    s.rect(0.0, 0.0, l, 4.5, STEEL * 100.0);
    s.rect(0.0, 155.5, l, 160.0, STEEL * 100.0);
    if reefer {
        // T-bar aluminium floor over insulation.
        s.rect(0.0, 160.0, l, 220.0, mu(2.7) * 120.0);
        s.rect(0.0, 216.0, l, 222.0, mu(2.7) * EDGE_ON_WIDTH);
    } else {
        s.rect(0.0, 160.0, l, floor_top, mu(0.7) * EDGE_ON_WIDTH)
            .tex = Tex::Noise {
            cell: 150.0,
            amp: 0.05,
            seed: rng.random(),
        };
    }
    let tunnel = if forty { uni(rng, 3100.0, 3200.0) } else { 0.0 };
    if forty {
        s.rect(150.0, 118.0, tunnel, 122.0, STEEL * EDGE_ON_WIDTH);
    }
    let mut x = 160.0;
    while x < l - 200.0 {
        let y0 = if x < tunnel { 122.0 } else { 38.0 };
        s.rect(x, y0, x + 4.5, 160.0, STEEL * EDGE_ON_WIDTH);
        s.rect(x, y0, x + 45.0, y0 + 4.5, STEEL * EDGE_ON_WIDTH);
        x += if x > l - 1200.0 {
            220.0
        } else {
            uni(rng, 270.0, 320.0)
        };
    }
    // Front end: corner posts, end wall (or reefer machinery), top rail and sill.
    for (x0, x1) in [(0.0, 170.0), (l - 120.0, l)] {
        s.rect(x0, 0.0, x1, h, STEEL * 24.0);
        s.rect(x0, 0.0, x0 + 6.0, h, STEEL * 300.0);
        s.rect(x1 - 6.0, 0.0, x1, h, STEEL * 300.0);
    }
    if reefer {
        // Refrigeration unit: compressor, condenser coil, fans, control box.
        s.rect(10.0, 200.0, 420.0, h - 80.0, 0.35);
        s.rect(30.0, h - 1200.0, 200.0, h - 200.0, 0.9).tex = Tex::Stripes {
            period: 7.0,
            amp: 0.5,
            along_y: true,
            phase: 0.0,
        };
        s.disk(250.0, 700.0, 190.0, 5.0);
        s.rect(120.0, 350.0, 400.0, 520.0, 2.2);
        s.ring(230.0, h - 700.0, 40.0, 300.0, 0.35);
        s.rect(250.0, 950.0, 410.0, 1400.0, 1.1);
        s.rect(420.0, 200.0, 440.0, h - 80.0, mu(2.7) * EDGE_ON_WIDTH * 0.3);
    } else {
        end_wall(&mut s, 6.0, 1.0, 160.0, h - 60.0, 40.0);
    }
    s.frame(0.0, h - 150.0, 170.0, h, 6.0, STEEL * EDGE_ON_WIDTH);
    s.frame(0.0, 0.0, 170.0, 170.0, 6.0, STEEL * EDGE_ON_WIDTH);
    // Door end: leaves, header, sill, locking bars, cams, handles.
    end_wall(&mut s, l - 8.0, -1.0, 160.0, h - 180.0, 45.0);
    s.frame(l - 160.0, h - 200.0, l, h, 8.0, STEEL * EDGE_ON_WIDTH);
    s.frame(l - 160.0, 0.0, l, 190.0, 8.0, STEEL * EDGE_ON_WIDTH);
    s.cylv(l + 5.0, 150.0, l + 33.0, h - 150.0, 0.7, STEEL * 4.0 * 28.0);
    for y in [150.0, h - 260.0] {
        s.rect(l - 5.0, y, l + 45.0, y + 110.0, 3.0);
    }
    let hy = uni(rng, 1050.0, 1350.0);
    for k in 0..2 {
        let y = hy + k as f32 * 60.0;
        s.rect(l + 10.0, y, l + 140.0, y + 40.0, 1.4);
    }
    for y in [450.0, h * 0.5, h - 550.0] {
        s.rect(l - 6.0, y, l + 20.0, y + 180.0, 2.5);
    }
    // Corner castings.
    for (x0, y0) in [
        (0.0, 0.0),
        (0.0, h - 118.0),
        (l - 178.0, 0.0),
        (l - 178.0, h - 118.0),
    ] {
        s.rect(x0, y0, x0 + 178.0, y0 + 118.0, 2.2);
        s.frame(x0, y0, x0 + 178.0, y0 + 118.0, 14.0, 3.5);
    }
    let x_in0 = if reefer { 450.0 } else { 60.0 };
    let y_in0 = if reefer { 222.0 } else { floor_top };
    Shell {
        prims: s.prims,
        interior: [x_in0, y_in0, l - 70.0, h - 80.0],
    }
}

/// A box body (aluminium panels on posts) or a flatbed deck, in the unit frame.
pub(crate) fn body_shell(rng: &mut SimRng, kind: UnitKind) -> Shell {
    let mut s = Shapes::default();
    let l = kind.length();
    let h = kind.height();
    let deck = 45.0;
    s.rect(0.0, 0.0, l, deck, mu(0.7) * EDGE_ON_WIDTH).tex = Tex::Noise {
        cell: 200.0,
        amp: 0.05,
        seed: rng.random(),
    };
    if kind == UnitKind::Flatbed {
        let mut x = 300.0;
        while x < l - 100.0 {
            s.rect(x, -60.0, x + 60.0, deck, 1.6);
            x += uni(rng, 900.0, 1300.0);
        }
        s.frame(-20.0, -220.0, 80.0, 350.0, 5.0, STEEL * 900.0);
        return Shell {
            prims: s.prims,
            interior: [120.0, deck, l - 50.0, h],
        };
    }
    s.rect(0.0, deck, l, h, mu(2.7) * 5.0);
    let mut x = 1100.0;
    while x < l - 500.0 {
        s.rect(x, deck, x + 60.0, h - 40.0, mu(2.7) * 50.0);
        x += uni(rng, 1150.0, 1300.0);
    }
    s.rect(0.0, deck, 25.0, h, mu(2.7) * EDGE_ON_WIDTH * 0.12);
    s.rect(0.0, h - 35.0, l, h, mu(2.7) * EDGE_ON_WIDTH * 0.08);
    s.rect(0.0, h - 4.0, l, h, mu(2.7) * EDGE_ON_WIDTH * 0.5);
    s.frame(l - 110.0, 0.0, l, h, 8.0, STEEL * 900.0);
    s.cylv(l + 5.0, 120.0, l + 33.0, h - 120.0, 0.7, STEEL * 3.0 * 28.0);
    Shell {
        prims: s.prims,
        interior: [60.0, deck, l - 120.0, h - 50.0],
    }
}

pub(crate) fn shell(rng: &mut SimRng, kind: UnitKind) -> Shell {
    if kind.is_container() {
        container_shell(rng, kind)
    } else {
        body_shell(rng, kind)
    }
}
