//! Retention through the running node: eviction order and pins, 410 for evicted images,
//! the audit line; the disk-full stop and resume on a real small file system (tmpfs).

use std::time::Duration;

use crate::common::*;

async fn image_status(node: &TestNode, id: &str) -> (u16, serde_json::Value) {
    node.get_json(&format!("/api/v1/scans/{id}/image16.png"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicts_oldest_unpinned_scan_and_explains_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    // Any image is over this quota: every unpinned scan must go, oldest first.
    cfg.retention.max_bytes = Some(1);
    cfg.retention.min_free_bytes = 0;
    cfg.retention.interval = Duration::from_secs(3600);
    // Transit entries among the drops are not held for their exit here (unit tests cover it).
    cfg.transit.unpaired_after = Duration::from_millis(1);
    let node = TestNode::start_with(cfg).await;
    let mut sim = sim(77);
    let drops: Vec<_> = (0..3).map(|_| sim.next_drop()).collect();
    for d in &drops {
        node.post_stored(d).await;
    }
    node.wait_counts((3, 3, 3), Duration::from_secs(60)).await;
    let ids: Vec<String> = drops.iter().map(|d| d.scan_id.clone()).collect();
    let n = node.node.as_ref().unwrap();

    // No model: every verdict is a refer under review, and in the outbox: all pinned.
    let pass = riac_node::retention::run_pass(&n.config, &n.store, &n.metrics, &n.retention)
        .await
        .unwrap();
    assert!(pass.evicted.is_empty(), "{:?}", pass.evicted);
    let st = n.retention.status();
    assert_eq!(st.pinned_scans, 3);
    assert!(st.used_bytes > 0 && st.evictable_bytes == 0, "{st:?}");

    // An operator clears the first two; scan 2 is pinned by an admin; scan 3 stays under
    // review. The broker acknowledges everything (the outbox empties).
    for id in &ids[..2] {
        let r = node
            .client
            .post(format!("{}/api/v1/scans/{id}/decisions", node.base))
            .json(&serde_json::json!({"choice": "clear", "note": "checked"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    // The admin pins scan 2 through the API (an operator may not).
    let r = node
        .client
        .post(format!("{}/api/v1/scans/{}/pin", node.base, ids[1]))
        .json(&serde_json::json!({"pinned": true, "note": "court case"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = node
        .anon
        .post(format!("{}/api/v1/scans/{}/pin", node.base, ids[1]))
        .json(&serde_json::json!({"pinned": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    n.store
        .write(|t| Ok(t.execute("DELETE FROM outbox", [])?))
        .await
        .unwrap();

    let pass = riac_node::retention::run_pass(&n.config, &n.store, &n.metrics, &n.retention)
        .await
        .unwrap();
    let evicted: Vec<&str> = pass.evicted.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(evicted, vec![ids[0].as_str()]);

    // The evicted scan's images answer 410 naming when and why; the others are served.
    let (s, body) = image_status(&node, &ids[0]).await;
    assert_eq!(s, 410, "{body}");
    let msg = body["error"]["message"]
        .as_str()
        .or(body["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("retention") && msg.contains("max_gb"),
        "{body}"
    );
    assert_eq!(image_status(&node, &ids[1]).await.0, 200);
    assert_eq!(image_status(&node, &ids[2]).await.0, 200);
    // The row and verdicts stay; the directory is gone; the audit chain says why.
    let (s, scan) = node.get_json(&format!("/api/v1/scans/{}", ids[0])).await;
    assert_eq!(s, 200, "{scan}");
    let id0 = ids[0].clone();
    let (dir0, audit): (String, String) = n
        .store
        .read(move |c| {
            Ok((
                c.query_row(
                    "SELECT image_dir FROM scans WHERE scan_id = ?1",
                    [&id0],
                    |r| r.get(0),
                )?,
                c.query_row(
                    "SELECT detail FROM audit WHERE subject = ?1 AND action = 'scan.evicted'",
                    [&id0],
                    |r| r.get(0),
                )?,
            ))
        })
        .await
        .unwrap();
    assert!(!node.data.join(&dir0).exists());
    assert!(audit.contains("quota"), "{audit}");
    let metrics = node.get_text("/metrics").await;
    assert!(
        metrics.contains("riac_retention_evicted_scans_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("riac_retention_pinned_scans 2"),
        "{metrics}"
    );
    let (_, status) = node.get_json("/api/v1/status").await;
    assert_eq!(status["retention"]["pinned_scans"], 2, "{status}");
    assert!(status["retention"]["next_candidate"].is_null(), "{status}");

    // Unpinned, the admin's scan goes on the next pass.
    let pin_id = ids[1].clone();
    n.store
        .write(move |t| {
            riac_node::retention::set_pin(t, &pin_id, false, "tester", None).map_err(|e| match e {
                riac_node::retention::PinError::Store(s) => s,
                other => panic!("{other}"),
            })
        })
        .await
        .unwrap();
    let pass = riac_node::retention::run_pass(&n.config, &n.store, &n.metrics, &n.retention)
        .await
        .unwrap();
    let evicted: Vec<&str> = pass.evicted.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(evicted, vec![ids[1].as_str()], "{:?}", n.retention.status());
}

/// Mounts a tmpfs of `mb` MiB at `dir`, unmounted when the guard drops (keep it alive
/// longer than the node using it); None (with the reason printed) when not permitted.
fn mount_tmpfs(dir: &std::path::Path, mb: u32) -> Option<Unmount> {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Unmount(dir.to_path_buf())),
        Ok(o) => {
            eprintln!(
                "SKIPPED disk-full test: cannot mount a tmpfs ({}); run as root to test it",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED disk-full test: no mount command ({e})");
            None
        }
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_stops_intake_keeps_serving_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_unmount) = mount_tmpfs(&data, 64) else {
        return;
    };
    let mut cfg = test_config(dir.path());
    cfg.retention.min_free_bytes = 24 << 20;
    cfg.retention.interval = Duration::from_secs(1);
    let node = TestNode::start_with(cfg).await;
    let mut sim = sim(78);
    let first = sim.next_drop();
    node.post_stored(&first).await;
    node.wait_counts((1, 1, 1), Duration::from_secs(60)).await;

    // Ballast outside the scans: free space drops below the 24 MiB floor. Nothing is
    // evictable (the one scan is under review and in the outbox).
    let free = riac_node::retention::free_bytes(&data).unwrap();
    let ballast = data.join("ballast.bin");
    let fill = free.saturating_sub(16 << 20) as usize;
    std::fs::write(&ballast, vec![0u8; fill]).unwrap();

    let second = sim.next_drop();
    let (s, body) = node.post_sim(&second).await;
    assert_eq!(s, 507, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("MB free") && text.contains("min_free_gb"),
        "{text}"
    );
    // A hot-folder drop waits in place.
    let third = sim.next_drop();
    third.write_to(&node.hot).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sidecars_in(&node.hot).contains(&format!("{}.json", third.scan_id)),
        "{:?}",
        files_in(&node.hot)
    );
    // The alert shows; the UI and API keep answering.
    let mut alerted = false;
    for _ in 0..50 {
        let (s, st) = node.get_json("/api/v1/status").await;
        assert_eq!(s, 200);
        if st["retention"]["disk_full"] == true {
            alerted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alerted, "status never showed disk_full");
    let metrics = node.get_text("/metrics").await;
    assert!(metrics.contains("riac_disk_full 1"), "{metrics}");
    assert_eq!(image_status(&node, &first.scan_id).await.0, 200);

    // Space returns: intake resumes by itself, the waiting drop is ingested.
    std::fs::remove_file(&ballast).unwrap();
    node.wait_counts((2, 2, 2), Duration::from_secs(60)).await;
    node.post_stored(&second).await;
    node.wait_counts((3, 3, 3), Duration::from_secs(60)).await;

    let n = node.node.as_ref().unwrap();
    let ok: String = n
        .store
        .read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(ok, "ok");
}

/// A real ENOSPC in the middle of storing a scan (the free-space floor set to 0, so the gate
/// does not stop it first): the drop is refused, nothing half-written stays, SQLite stays
/// sound, and the same drop is stored once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_mid_write_leaves_nothing_half_stored_and_sqlite_sound() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_unmount) = mount_tmpfs(&data, 48) else {
        return;
    };
    let mut cfg = test_config(dir.path());
    cfg.retention.min_free_bytes = 0;
    let node = TestNode::start_with(cfg).await;
    let mut sim = sim(79);
    let first = sim.next_drop();
    node.post_stored(&first).await;
    node.wait_counts((1, 1, 1), Duration::from_secs(60)).await;

    // Leave less room than the next scan's files need.
    let second = sim.next_drop();
    let image = second.encode_image();
    let free = riac_node::retention::free_bytes(&data).unwrap();
    let room = (image.len() as u64 / 2).max(64 << 10);
    let ballast = data.join("ballast.bin");
    std::fs::write(&ballast, vec![0u8; free.saturating_sub(room) as usize]).unwrap();
    let (s, body) = node
        .post_drop(
            &serde_json::to_vec(&second.sidecar).unwrap(),
            Some(image.clone()),
        )
        .await;
    assert_eq!(
        s, 507,
        "a scan that does not fit is refused as disk full: {body}"
    );
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    // Nothing half-written under scans/, no row for the refused scan, the database sound.
    let mut leftovers = Vec::new();
    let mut stack = vec![data.join("scans")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-") {
                leftovers.push(name);
            } else if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let n = node.node.as_ref().unwrap();
    let id = second.scan_id.clone();
    let (rows, ok): (i64, String) = n
        .store
        .read(move |c| {
            Ok((
                c.query_row(
                    "SELECT count(*) FROM scans WHERE scan_id = ?1",
                    [&id],
                    |r| r.get(0),
                )?,
                c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((rows, ok.as_str()), (0, "ok"));
    assert_eq!(image_status(&node, &first.scan_id).await.0, 200);

    // Space back: the same drop is stored and decided.
    std::fs::remove_file(&ballast).unwrap();
    let (s, b) = node
        .post_drop(&serde_json::to_vec(&second.sidecar).unwrap(), Some(image))
        .await;
    assert_eq!(s, 201, "{b}");
    node.wait_counts((2, 2, 2), Duration::from_secs(60)).await;
}
