//! Scans in through the hot folder and HTTP: stored once each, with a verdict and an outbox
//! row, surviving restarts.

use std::time::Duration;

use crate::common::*;
use riac_node::sim::SimImageFormat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_hot_folder_drops_become_twenty_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(11);
    let mut ids = Vec::new();
    for i in 0..20 {
        // A mix of the contract's formats.
        let d = if i % 3 == 1 {
            sim_format(100 + i, SimImageFormat::Png).next_drop()
        } else if i % 3 == 2 {
            sim_format(200 + i, SimImageFormat::Pgm).next_drop()
        } else {
            sim.next_drop()
        };
        d.write_to(&node.hot).unwrap();
        ids.push(d.scan_id);
    }
    node.wait_counts((20, 20, 20), Duration::from_secs(120))
        .await;
    wait_until(Duration::from_secs(10), "hot folder emptied", || {
        files_in(&node.hot).is_empty()
    })
    .await;

    let (status, list) = node.get_json("/api/v1/scans?limit=50").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["scans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scan_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 20);
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} missing from the list");
    }
    let (status, one) = node.get_json(&format!("/api/v1/scans/{}", ids[0])).await;
    assert_eq!(status, 200);
    let v = &one["verdict"];
    assert_eq!(v["schema"], "riac.verdict/2");
    assert_eq!(v["signing"]["canonicalization"], "RFC8785");
    assert_eq!(v["scan_id"], ids[0].as_str());
    assert_eq!(v["outcome"], "refer");
    assert_eq!(v["decided_by"], "auto");
    assert_eq!(v["manifest"]["status"], "unknown");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no embedding model"),
        "{v}"
    );
    assert!(v["seq"].as_u64().unwrap() >= 1);
    assert_eq!(v["prev_hash"].as_str().unwrap().len(), 64);
    assert_eq!(one["scan"]["state"], "decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_http_uploads_become_twenty_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(12);
    for _ in 0..20 {
        let d = sim.next_drop();
        let (status, body) = node
            .post_drop(
                &serde_json::to_vec(&d.sidecar).unwrap(),
                Some(d.encode_image()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["scan_id"], d.scan_id.as_str());
    }
    node.wait_counts((20, 20, 20), Duration::from_secs(60))
        .await;
    let (_, list) = node.get_json("/api/v1/scans?limit=5").await;
    assert_eq!(list["scans"].as_array().unwrap().len(), 5);
    assert!(list["next"].is_i64());
    assert_eq!(list["scans"][0]["source"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_scan_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let d = sim(13).next_drop();
    let sidecar = serde_json::to_vec(&d.sidecar).unwrap();
    let (s1, _) = node.post_drop(&sidecar, Some(d.encode_image())).await;
    assert_eq!(s1, 201);
    let (s2, body) = node.post_drop(&sidecar, Some(d.encode_image())).await;
    assert_eq!(s2, 200, "{body}");
    assert_eq!(body["status"], "duplicate");
    // The same drop again through the hot folder: recognised and removed, not stored.
    d.write_to(&node.hot).unwrap();
    wait_until(Duration::from_secs(10), "duplicate drop removed", || {
        files_in(&node.hot).is_empty()
    })
    .await;
    node.wait_counts((1, 1, 1), Duration::from_secs(10)).await;
    assert!(files_in(&node.hot.join("rejected")).is_empty());

    // Same id, other content: a conflict, refused, and the stored scan is untouched.
    let mut other = sim(14).next_drop();
    other.sidecar["scan_id"] = d.scan_id.clone().into();
    other.sidecar["image"]["file"] = d.image_file.clone().into();
    let (s3, body) = node
        .post_drop(
            &serde_json::to_vec(&other.sidecar).unwrap(),
            Some(other.encode_image()),
        )
        .await;
    assert_eq!(s3, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different content"),
        "{body}"
    );
    node.wait_counts((1, 1, 1), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_made_while_stopped_are_ingested_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    std::fs::create_dir_all(&cfg.hot_folder).unwrap();
    let mut sim = sim(15);
    for _ in 0..5 {
        sim.next_drop().write_to(&cfg.hot_folder).unwrap();
    }
    let mut node = TestNode::start_with(cfg).await;
    node.wait_counts((5, 5, 5), Duration::from_secs(60)).await;
    node.stop().await;

    // And again across a restart of the same data dir.
    for _ in 0..3 {
        sim.next_drop().write_to(&dir.path().join("hot")).unwrap();
    }
    let node = TestNode::start(dir.path()).await;
    node.wait_counts((8, 8, 8), Duration::from_secs(60)).await;
    let (_, list) = node.get_json("/api/v1/scans?limit=500").await;
    assert_eq!(list["scans"].as_array().unwrap().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_still_being_written_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let d = sim(16).next_drop();
    let image = d.encode_image();
    // A scanner that breaks the contract: sidecar first, then the image, slowly.
    let sidecar_path = node.hot.join(format!("{}.json", d.scan_id));
    std::fs::write(&sidecar_path, serde_json::to_vec(&d.sidecar).unwrap()).unwrap();
    let img_path = node.hot.join(&d.image_file);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&img_path).unwrap();
        for chunk in image.chunks(image.len() / 8 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Nothing may be stored, and nothing rejected, while the file grows.
            assert_eq!(node.counts().await.0, 0);
            assert!(files_in(&node.hot.join("rejected")).is_empty());
        }
    }
    node.wait_counts((1, 1, 1), Duration::from_secs(20)).await;
    let (_, one) = node.get_json(&format!("/api/v1/scans/{}", d.scan_id)).await;
    assert_eq!(one["scan"]["width"], d.image.width());
}

/// A drop whose files say they are whole (renamed in, or closed after writing) is taken
/// without the settle wait; one still being written waits for it, whatever the sidecar did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_that_arrives_whole_skips_the_settle_wait_and_one_being_written_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    // Far longer than the test waits: only the events can make these drops quick.
    cfg.ingest.settle = Duration::from_secs(60);
    let node = TestNode::start_with(cfg).await;
    let mut s = sim(17);
    // The contract's way: image, then the sidecar by rename.
    let d = s.next_drop();
    d.write_to(&node.hot).unwrap();
    node.wait_counts((1, 1, 1), Duration::from_secs(15)).await;

    // The sidecar renamed in while the image is still open and half written.
    let d = s.next_drop();
    let image = d.encode_image();
    let img_path = node.hot.join(&d.image_file);
    let mut f = std::fs::File::create(&img_path).unwrap();
    {
        use std::io::Write;
        f.write_all(&image[..image.len() / 2]).unwrap();
        f.flush().unwrap();
    }
    let tmp = node.hot.join(format!(".{}.json.tmp", d.scan_id));
    std::fs::write(&tmp, serde_json::to_vec(&d.sidecar).unwrap()).unwrap();
    std::fs::rename(&tmp, node.hot.join(format!("{}.json", d.scan_id))).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(node.counts().await.0, 1, "a half-written image was taken");
    assert!(files_in(&node.hot.join("rejected")).is_empty());
    {
        use std::io::Write;
        f.write_all(&image[image.len() / 2..]).unwrap();
    }
    // Closed after writing: now whole, taken at once.
    drop(f);
    node.wait_counts((2, 2, 2), Duration::from_secs(15)).await;
    let (_, one) = node.get_json(&format!("/api/v1/scans/{}", d.scan_id)).await;
    assert_eq!(one["scan"]["width"], d.image.width());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_exit_verdict_carries_the_transit_check() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(17);
    let pair = sim.next_transit_pair();
    pair.entry.write_to(&node.hot).unwrap();
    pair.exit.write_to(&node.hot).unwrap();
    // The hot folder may take the exit first: then it awaits its entry, and a second
    // verdict supersedes the first once the entry is in.
    let start = std::time::Instant::now();
    let exit = loop {
        let (_, exit) = node
            .get_json(&format!("/api/v1/scans/{}", pair.exit.scan_id))
            .await;
        let status = exit["verdict"]["transit"]["status"].as_str().unwrap_or("");
        if !status.is_empty() && status != "awaiting_entry" {
            break exit;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{exit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit["scan"]["direction"], "exit");
    assert_eq!(
        exit["verdict"]["transit"]["entry_scan_id"],
        pair.entry.scan_id.as_str()
    );
    let reasons = exit["verdict"]["reasons"].to_string();
    assert!(reasons.contains("transit: "), "{reasons}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_energy_low_image_is_stored_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(18);
    let d = sim.next_drop();
    let low_name = d.image_file.replace(".tiff", ".low.tiff");
    std::fs::write(node.hot.join(&low_name), d.encode_image()).unwrap();
    d.write_to(&node.hot).unwrap();
    node.wait_counts((1, 1, 1), Duration::from_secs(20)).await;
    let (_, one) = node.get_json(&format!("/api/v1/scans/{}", d.scan_id)).await;
    assert_eq!(one["scan"]["has_low_energy"], true);
    wait_until(Duration::from_secs(10), "drop removed", || {
        files_in(&node.hot).is_empty()
    })
    .await;

    // A low-energy image of another size is refused with the drop.
    let d2 = sim.next_drop();
    let small = image::imageops::resize(&d2.image, 64, 32, image::imageops::FilterType::Nearest);
    let mut bytes = Vec::new();
    image::DynamicImage::ImageLuma16(small)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Tiff,
        )
        .unwrap();
    std::fs::write(
        node.hot.join(d2.image_file.replace(".tiff", ".low.tiff")),
        bytes,
    )
    .unwrap();
    d2.write_to(&node.hot).unwrap();
    let err = node
        .hot
        .join("rejected")
        .join(format!("{}.error.txt", d2.scan_id));
    wait_until(
        Duration::from_secs(20),
        "low-energy mismatch rejected",
        || err.is_file(),
    )
    .await;
    let text = std::fs::read_to_string(&err).unwrap();
    assert!(
        text.contains("field: image.low") && text.contains("64x32"),
        "{text}"
    );
    assert_eq!(node.counts().await.0, 1);
}
