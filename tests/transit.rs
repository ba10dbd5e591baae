//! The transit check in the running node: an exit scan paired with its entry scan (from
//! this node or from an entry package), compared, and decided; exits whose entry comes
//! later or never; the transit images over HTTP.

use std::time::{Duration, Instant};

use riac_node::sim::{SimOptions, SimPair, Simulator};
use riac_node::store::entries::{EntryPackage, ENTRY_SCHEMA};

use crate::common::*;

/// Transit pairs need a little more resolution than the other tests' scans: a quarter of a
/// real scanner's (~18 mm pixels).
const TRANSIT_SCALE: f64 = 0.25;

fn pair_sim(seed: u64, tamper_rate: f64) -> Simulator {
    Simulator::new(SimOptions {
        seed,
        tamper_rate,
        resolution_scale: TRANSIT_SCALE,
        ..SimOptions::default()
    })
}

fn truth_area_m2(p: &SimPair) -> f64 {
    let mm = &p.entry.sidecar["image"]["pixel_mm"];
    let px = mm[0].as_f64().unwrap() * mm[1].as_f64().unwrap() / 1e6;
    p.truth
        .regions_entry_px
        .iter()
        .map(|b| (b[2] - b[0]) as f64 * (b[3] - b[1]) as f64 * px)
        .fold(0.0, f64::max)
}

/// The first pair of this seed whose tampering is a clear one: goods removed or added,
/// over half a square metre.
fn clearly_tampered(seed: u64) -> SimPair {
    let mut sim = pair_sim(seed, 1.0);
    loop {
        let p = sim.next_transit_pair();
        let kind = p.truth.kind.as_deref().unwrap_or("");
        if (kind == "removed" || kind == "added") && truth_area_m2(&p) >= 0.5 {
            return p;
        }
    }
}

/// The scan's current verdict once its transit status is `want` (or any status other
/// than awaiting_entry when `want` is None).
async fn wait_transit(node: &TestNode, scan_id: &str, want: Option<&str>) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (_, one) = node.get_json(&format!("/api/v1/scans/{scan_id}")).await;
        let status = one["verdict"]["transit"]["status"].as_str().unwrap_or("");
        let done = match want {
            Some(w) => status == w,
            None => !status.is_empty() && status != "awaiting_entry",
        };
        if done {
            return one;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {scan_id}'s transit status {want:?}; have {}",
            one["verdict"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn overlaps(region: &serde_json::Value, b: &[u32; 4]) -> bool {
    let g = |k: &str| region[k].as_u64().unwrap() as u32;
    g("x0") < b[2] && b[0] < g("x1") && g("y0") < b[3] && b[1] < g("y1")
}

async fn get_png(node: &TestNode, path: &str) -> image::DynamicImage {
    let r = node
        .client
        .get(format!("{}{path}", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    assert_eq!(r.headers()["content-type"], "image/png");
    image::load_from_memory(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_pair_is_changed_where_the_truth_is_and_untampered_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;

    let bad = clearly_tampered(5);
    node.post_stored(&bad.entry).await;
    node.post_stored(&bad.exit).await;
    let one = wait_transit(&node, &bad.exit.scan_id, None).await;
    let v = &one["verdict"];
    let t = &v["transit"];
    assert_eq!(t["status"], "changed", "{} ({})", v, bad.truth.notes);
    assert_eq!(t["entry_scan_id"], bad.entry.scan_id.as_str());
    assert!(t["alignment_quality"].as_f64().unwrap() > 0.5, "{t}");
    assert_eq!(t["mirrored"], bad.truth.mirrored);
    let regions = t["regions"].as_array().unwrap();
    assert!(
        regions
            .iter()
            .any(|r| bad.truth.regions_entry_px.iter().any(|b| overlaps(r, b))),
        "no region of {regions:?} overlaps the truth {:?} ({})",
        bad.truth.regions_entry_px,
        bad.truth.notes
    );
    assert!(regions.iter().all(|r| r["area_m2"].as_f64().unwrap() > 0.0));
    assert!(
        ["alert", "refer"].contains(&v["outcome"].as_str().unwrap()),
        "{v}"
    );
    assert!(
        v["reasons"].to_string().contains("transit: changed"),
        "{}",
        v["reasons"]
    );

    // The operator's side-by-side: three images of the entry's size.
    let (ew, eh) = bad.entry.image.dimensions();
    let base = format!("/api/v1/scans/{}/transit", bad.exit.scan_id);
    for name in ["aligned.png", "heatmap.png", "entry.png", "aligned16.png"] {
        let img = get_png(&node, &format!("{base}/{name}")).await;
        assert_eq!((img.width(), img.height()), (ew, eh), "{name}");
    }
    let small = get_png(&node, &format!("{base}/heatmap.png?max_width=200")).await;
    assert_eq!(small.width(), 200);
    // Something changed inside the truth's box: the heatmap is not transparent there.
    let heat = get_png(&node, &format!("{base}/heatmap.png"))
        .await
        .into_rgba8();
    let b = bad.truth.regions_entry_px[0];
    let lit = (b[1]..b[3])
        .flat_map(|y| (b[0]..b[2]).map(move |x| (x, y)))
        .filter(|&(x, y)| heat.get_pixel(x, y)[3] > 100)
        .count();
    assert!(lit > 0, "heatmap shows nothing inside {b:?}");
    // An entry scan has no transit images; a bad id is a 400.
    let (s, _) = node
        .get_json(&format!(
            "/api/v1/scans/{}/transit/aligned.png",
            bad.entry.scan_id
        ))
        .await;
    assert_eq!(s, 404);
    let (s, _) = node
        .get_json("/api/v1/scans/..%2Fx/transit/heatmap.png")
        .await;
    assert_eq!(s, 400);

    let good = pair_sim(6, 0.0).next_transit_pair();
    assert!(!good.truth.tampered);
    node.post_stored(&good.entry).await;
    node.post_stored(&good.exit).await;
    let one = wait_transit(&node, &good.exit.scan_id, None).await;
    let v = &one["verdict"];
    assert_eq!(v["transit"]["status"], "unchanged", "{v}");
    assert_eq!(v["transit"]["regions"], serde_json::json!([]));
    // The manifest check does not run on this build, so the pair is still referred.
    assert_eq!(v["outcome"], "refer");
    assert!(
        v["reasons"].to_string().contains("transit: unchanged"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_before_its_entry_awaits_then_a_new_verdict_supersedes() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let p = pair_sim(8, 0.0).next_transit_pair();
    node.post_stored(&p.exit).await;
    let first = wait_transit(&node, &p.exit.scan_id, Some("awaiting_entry")).await;
    let awaiting_id = first["verdict"]["verdict_id"].as_str().unwrap().to_string();
    assert_eq!(first["verdict"]["outcome"], "refer");
    let (s, _) = node
        .get_json(&format!(
            "/api/v1/scans/{}/transit/aligned.png",
            p.exit.scan_id
        ))
        .await;
    assert_eq!(s, 404, "no comparison yet");

    node.post_stored(&p.entry).await;
    let done = wait_transit(&node, &p.exit.scan_id, None).await;
    let v = &done["verdict"];
    assert_eq!(v["transit"]["status"], "unchanged", "{v}");
    assert_eq!(v["supersedes"], awaiting_id.as_str());
    assert_eq!(done["verdict_history"].as_array().unwrap().len(), 2);
    // Entry and exit verdicts, and the superseding one: each with its outbox row.
    node.wait_counts((2, 3, 3), Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_whose_entry_never_comes_becomes_unpaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.transit.unpaired_after = Duration::from_secs(2);
    cfg.transit.sweep = Duration::from_millis(500);
    let node = TestNode::start_with(cfg).await;
    let p = pair_sim(9, 0.0).next_transit_pair();
    node.post_stored(&p.exit).await;
    let first = wait_transit(&node, &p.exit.scan_id, Some("awaiting_entry")).await;
    let done = wait_transit(&node, &p.exit.scan_id, Some("unpaired")).await;
    let v = &done["verdict"];
    assert_eq!(v["supersedes"], first["verdict"]["verdict_id"]);
    assert_eq!(v["outcome"], "refer");
    assert!(
        v["transit"]["reason"]
            .as_str()
            .unwrap()
            .contains(p.exit.sidecar["declaration"]["number"].as_str().unwrap()),
        "{v}"
    );
    // Once unpaired, the sweep leaves it alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.wait_counts((1, 2, 2), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_package_from_the_entry_site_is_paired_at_reduced_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let p = clearly_tampered(11);
    node.post_stored(&p.exit).await;
    wait_transit(&node, &p.exit.scan_id, Some("awaiting_entry")).await;

    // What the uplink does with a received package: image durable first, then the row,
    // then the notification.
    let reduction = 0.5;
    let (w, h) = p.entry.image.dimensions();
    let (rw, rh) = (
        (w as f64 * reduction).round() as u32,
        (h as f64 * reduction).round() as u32,
    );
    let small = image::imageops::resize(
        &p.entry.image,
        rw,
        rh,
        image::imageops::FilterType::Triangle,
    );
    let rel = format!("entries/{}/image.png", p.entry.scan_id);
    let path = node.data.join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    small.save(&path).unwrap();
    let mm = &p.entry.sidecar["image"]["pixel_mm"];
    let pkg = EntryPackage {
        schema: ENTRY_SCHEMA.into(),
        entry_scan_id: p.entry.scan_id.clone(),
        origin_site: "KHI".into(),
        origin_node: "KHI-N1".into(),
        exit_site: "TKM".into(),
        declaration_number: p.entry.sidecar["declaration"]["number"]
            .as_str()
            .unwrap()
            .into(),
        container_ids: p.entry.sidecar["container_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect(),
        scanned_at: p.entry.sidecar["scanned_at"].as_str().unwrap().into(),
        sidecar: p.entry.sidecar.clone(),
        image_width: rw,
        image_height: rh,
        reduction,
        pixel_mm: Some([
            mm[0].as_f64().unwrap() / reduction,
            mm[1].as_f64().unwrap() / reduction,
        ]),
        embeddings: None,
    };
    let n = node.node.as_ref().unwrap();
    n.store
        .write(move |t| riac_node::store::entries::insert(t, &pkg, &rel))
        .await
        .unwrap();
    n.transit.entry_available(&p.entry.scan_id).await;

    let done = wait_transit(&node, &p.exit.scan_id, None).await;
    let t = &done["verdict"]["transit"];
    assert_eq!(t["status"], "changed", "{t} ({})", p.truth.notes);
    assert_eq!(t["entry_scan_id"], p.entry.scan_id.as_str());
    // Regions are in the package image's pixels.
    let truth: Vec<[u32; 4]> = p
        .truth
        .regions_entry_px
        .iter()
        .map(|b| b.map(|v| (v as f64 * reduction).round() as u32))
        .collect();
    let regions = t["regions"].as_array().unwrap();
    assert!(
        regions.iter().any(|r| truth.iter().any(|b| overlaps(r, b))),
        "{regions:?} vs {truth:?}"
    );
    let img = get_png(
        &node,
        &format!("/api/v1/scans/{}/transit/entry.png", p.exit.scan_id),
    )
    .await;
    assert_eq!((img.width(), img.height()), (rw, rh));

    // Once the exit's images are evicted, retention removes the package's image too, and
    // the transit view says so instead of failing.
    let exit_id = p.exit.scan_id.clone();
    n.store
        .write(move |t| {
            t.execute(
                "UPDATE scans SET evicted_at = '2026-11-28T00:00:00.000Z', evicted_reason = 'quota' WHERE scan_id = ?1",
                [&exit_id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let report = riac_node::retention::run_pass(&n.config, &n.store, &n.metrics, &n.retention)
        .await
        .unwrap();
    assert_eq!(report.entry_packages_evicted, vec![p.entry.scan_id.clone()]);
    assert!(!n
        .config
        .data_dir
        .join(format!("entries/{}", p.entry.scan_id))
        .exists());
    let (s, body) = node
        .get_json(&format!(
            "/api/v1/scans/{}/transit/entry.png",
            p.exit.scan_id
        ))
        .await;
    assert_eq!(s, 410, "{body}");
    assert!(body.to_string().contains("removed by retention"), "{body}");
}

fn scanner_of(d: &riac_node::sim::SimDrop) -> String {
    d.sidecar["scanner_id"].as_str().unwrap().to_string()
}

/// The next pairs of `sim` whose entry and exit scanners are `pair`, until `n` are found.
fn pairs_of(sim: &mut Simulator, pair: (&str, &str), n: usize) -> Vec<SimPair> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = sim.next_transit_pair();
        if scanner_of(&p.entry) == pair.0 && scanner_of(&p.exit) == pair.1 {
            out.push(p);
        }
    }
    out
}

fn riac(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The calibration's mechanism end to end, on a scanner pair the comparison handles (the
/// cross-family figures, where it does not yet, are `bench compare --families`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calibrated_scanner_pair_flags_a_tampered_pair_clears_a_clean_one_and_survives_a_restart()
{
    let pair = ("KHI-P1", "TKM-M1");
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs");
    std::fs::create_dir_all(&pairs).unwrap();
    for p in pairs_of(&mut pair_sim(40, 0.0), pair, 12) {
        p.write_to(&pairs).unwrap();
    }
    let data = dir.path().join("data");
    let out = riac(&[
        "calibrate".as_ref(),
        "transit".as_ref(),
        pairs.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--json".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "calibrate failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cal = &report["calibrated"][0];
    assert_eq!(
        report["calibrated"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(cal["entry_scanner"], pair.0, "{cal}");
    assert_eq!(cal["exit_scanner"], pair.1, "{cal}");
    let used = cal["pairs_used"].as_u64().unwrap() + cal["pairs_inconclusive"].as_u64().unwrap();
    assert_eq!(used, 12, "{cal}");
    let refer = cal["refer_od_m2"].as_f64().unwrap();
    assert!(refer >= 0.02, "{cal}");
    // Fewer than the recommended 30 pairs is said.
    assert!(
        report["notes"]
            .to_string()
            .contains("30 pairs are recommended"),
        "{report}"
    );

    // A clearly tampered pair and a clean one of the same two scanners, from seeds the
    // calibration never saw. Clearly: 1.5 m² or more of goods. What 12 clean pairs
    // can certify at a 1 % false-alarm rate is a couple of OD·m² when one of them shows
    // any candidate at all (the log-normal's spread is then a wide prior), which half a
    // square metre of light goods (~400 kg, ~1 OD·m²) need not reach.
    let mut tampered = pair_sim(41, 1.0);
    let bad = loop {
        let p = pairs_of(&mut tampered, pair, 1).remove(0);
        let kind = p.truth.kind.as_deref().unwrap_or("");
        if (kind == "removed" || kind == "added") && truth_area_m2(&p) >= 1.5 {
            break p;
        }
    };
    let good = pairs_of(&mut pair_sim(42, 0.0), pair, 1).remove(0);
    let single = dir.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    good.write_to(&single).unwrap();
    let sidecar = |d: &riac_node::sim::SimDrop| single.join(format!("{}.json", d.scan_id));
    let out = riac(&[
        "compare".as_ref(),
        sidecar(&good.entry).as_os_str(),
        sidecar(&good.exit).as_os_str(),
        "--json".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["calibration"]["limits"]["refer_od_m2"], refer, "{r}");
    assert_eq!(r["status"], "unchanged", "{r}");

    let mut node = TestNode::start(dir.path()).await;
    let metrics = node.get_text("/metrics").await;
    let gauge = format!(
        "riac_transit_calibration_refer_od_m2{{pair=\"{}->{}\"}}",
        pair.0, pair.1
    );
    assert!(metrics.contains(&gauge), "{metrics}");
    node.post_stored(&bad.entry).await;
    node.post_stored(&bad.exit).await;
    let v = wait_transit(&node, &bad.exit.scan_id, None).await["verdict"].clone();
    assert_eq!(
        v["transit"]["status"], "changed",
        "{v} ({})",
        bad.truth.notes
    );
    assert!(!v["reasons"].to_string().contains("not calibrated"), "{v}");
    node.stop().await;

    // After a restart the calibration is still in force.
    let mut node = TestNode::start(dir.path()).await;
    node.post_stored(&good.entry).await;
    node.post_stored(&good.exit).await;
    let v = wait_transit(&node, &good.exit.scan_id, None).await["verdict"].clone();
    assert_eq!(v["transit"]["status"], "unchanged", "{v}");
    assert!(!v["reasons"].to_string().contains("not calibrated"), "{v}");

    // Clearing the clean exit: an operator's clearance leaves the calibration alone; a
    // supervisor's (here the admin's) refines it, once, with an audit line each time.
    let file = data.join("transit-calibration.json");
    let read_cal =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };
    let store = node.node.as_ref().unwrap().store.clone();
    use riac_node::web::accounts;
    accounts::create_user(
        &store,
        "cli",
        "olga",
        riac_node::store::users::Role::Operator,
        "operator-password-1",
    )
    .await
    .unwrap();
    let olga = accounts::create_token(&store, "cli", "olga", "tests", None)
        .await
        .unwrap()
        .token;
    let decide = |token: Option<&str>| {
        let mut r = node
            .client
            .post(format!(
                "{}/api/v1/scans/{}/decisions",
                node.base, good.exit.scan_id
            ))
            .json(
                &serde_json::json!({"choice": "clear", "note": "seal intact, goods as declared"}),
            );
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = decide(Some(&olga)).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert!(
        read_cal()["pairs"][0].get("cleared").is_none(),
        "{}",
        read_cal()
    );
    let r = decide(None).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let c = read_cal()["pairs"][0].clone();
    assert_eq!(
        c["cleared"][0]["exit_scan_id"],
        good.exit.scan_id.as_str(),
        "{c}"
    );
    assert_eq!(c["cleared"][0]["by"], TEST_ADMIN, "{c}");
    assert_eq!(c["refined"]["day_start_refer_od_m2"], refer, "{c}");
    let moved = c["refer_od_m2"].as_f64().unwrap();
    assert!((moved - refer).abs() <= 0.1 * refer + 1e-5, "{c}");
    // The same exit cleared again is not counted twice; the audit says so.
    let r = decide(None).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(
        read_cal()["pairs"][0]["cleared"].as_array().unwrap().len(),
        1
    );
    let sid = good.exit.scan_id.clone();
    let audit = store
        .read(move |c| riac_node::store::audit::for_subject(c, &sid))
        .await
        .unwrap();
    let refined: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "transit-calibration.refined")
        .collect();
    assert_eq!(refined.len(), 2, "{audit:?}");
    assert_eq!(refined[0].actor, TEST_ADMIN);
    assert_eq!(refined[0].detail["used"], true, "{:?}", refined[0]);
    assert_eq!(refined[1].detail["used"], false, "{:?}", refined[1]);
    assert!(
        refined[1].detail["reason"]
            .to_string()
            .contains("already counted"),
        "{:?}",
        refined[1]
    );
    // In force at once: the status API lists the refined limit.
    let (_, status) = node.get_json("/api/v1/status").await;
    let listed = &status["transit_calibration"][0];
    assert_eq!(listed["refer_od_m2"].as_f64(), Some(moved), "{status}");
    assert_eq!(listed["cleared_pairs"], 1, "{status}");

    // A scanner pair that was not calibrated says so in its verdict.
    let other = pairs_of(&mut pair_sim(43, 0.0), ("KHI-P2", "TKM-P3"), 1).remove(0);
    node.post_stored(&other.entry).await;
    node.post_stored(&other.exit).await;
    let v = wait_transit(&node, &other.exit.scan_id, None).await["verdict"].clone();
    assert_eq!(v["transit"]["status"], "unchanged", "{v}");
    assert!(
        v["reasons"]
            .to_string()
            .contains("scanner pair KHI-P2->TKM-P3 is not calibrated"),
        "{v}"
    );
    node.stop().await;

    // A damaged calibration file stops the start with the file and the fix named.
    let file = data.join("transit-calibration.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("\"refer_od_m2\": ", "\"refer_od_m2\": -", 1),
    )
    .unwrap();
    let err = match riac_node::start(test_config(dir.path()), Default::default()).await {
        Ok(_) => panic!("a node started on a damaged calibration file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("transit-calibration.json")
            && err.contains("refer_od_m2")
            && err.contains("calibrate transit"),
        "{err}"
    );
}
