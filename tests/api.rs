//! The HTTP API beyond intake: listing filters, images, health, metrics, clear 4xx errors.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_images_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(41);
    let pair = sim.next_transit_pair();
    let single = sim.next_drop();
    for d in [&pair.entry, &pair.exit, &single] {
        node.post_stored(d).await;
    }
    node.wait_counts((3, 3, 3), Duration::from_secs(30)).await;

    let container = pair.entry.sidecar["container_ids"][0].as_str().unwrap();
    let (_, by_container) = node
        .get_json(&format!("/api/v1/scans?container={}", &container[..6]))
        .await;
    let ids: Vec<&str> = by_container["scans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scan_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&pair.entry.scan_id.as_str()) && ids.contains(&pair.exit.scan_id.as_str()),
        "{ids:?}"
    );

    let (_, exits) = node.get_json("/api/v1/scans?direction=exit").await;
    assert!(exits["scans"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["direction"] == "exit"));
    let (_, refer) = node.get_json("/api/v1/scans?outcome=refer").await;
    assert_eq!(refer["scans"].as_array().unwrap().len(), 3);
    let (_, clear) = node.get_json("/api/v1/scans?outcome=clear").await;
    assert_eq!(clear["scans"].as_array().unwrap().len(), 0);
    let decl = single.sidecar["declaration"]["number"].as_str().unwrap();
    let (_, by_decl) = node
        .get_json(&format!("/api/v1/scans?declaration={decl}"))
        .await;
    assert_eq!(by_decl["scans"][0]["scan_id"], single.scan_id.as_str());

    // Paging: two pages of one and two.
    let (_, p1) = node.get_json("/api/v1/scans?limit=2").await;
    let next = p1["next"].as_i64().unwrap();
    let (_, p2) = node
        .get_json(&format!("/api/v1/scans?limit=2&before={next}"))
        .await;
    assert_eq!(p2["scans"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());

    // Rendered image: an 8-bit PNG of the asked width; the 16-bit original as stored.
    let r = node
        .client
        .get(format!(
            "{}/api/v1/scans/{}/image.png?max_width=200&center=30000&width=20000&invert=true",
            node.base, single.scan_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(img.width(), 200);
    assert!(matches!(img, image::DynamicImage::ImageLuma8(_)));
    let r = node
        .client
        .get(format!(
            "{}/api/v1/scans/{}/image16.png",
            node.base, single.scan_id
        ))
        .send()
        .await
        .unwrap();
    let img16 = image::load_from_memory(&r.bytes().await.unwrap())
        .unwrap()
        .into_luma16();
    assert_eq!(img16.dimensions(), single.image.dimensions());
    assert_eq!(
        img16.as_raw(),
        single.image.as_raw(),
        "transmission images are stored losslessly"
    );

    let (s, h) = node.get_json("/healthz").await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let metrics = node.get_text("/metrics").await;
    assert!(
        metrics.contains("riac_scans_ingested_total{source=\"http\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("riac_outbox_depth 3"), "{metrics}");
    assert!(
        metrics.contains("riac_stage_seconds_count{stage=\"decode\"} 3"),
        "{metrics}"
    );

    let page = node.get_text("/").await;
    assert!(page.contains(&single.scan_id), "queue page lists the scan");
    let page = node
        .client
        .get(format!("{}/scans/{}", node.base, single.scan_id))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    for (path, status, field) in [
        ("/api/v1/scans?limit=0", 400, "limit"),
        ("/api/v1/scans?limit=abc", 400, "limit"),
        ("/api/v1/scans?before=x", 400, "before"),
        ("/api/v1/scans?direction=sideways", 400, "direction"),
        ("/api/v1/scans?outcome=maybe", 400, "outcome"),
        ("/api/v1/scans/..%2Fetc", 400, "scan_id"),
        ("/api/v1/scans/NOPE-1/image.png?center=-5", 400, "center"),
        (
            "/api/v1/scans/NOPE-1/image.png?invert=perhaps",
            400,
            "invert",
        ),
    ] {
        let (s, body) = node.get_json(path).await;
        assert_eq!(s, status, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    let (s, body) = node.get_json("/api/v1/scans/NOPE-1").await;
    assert_eq!(s, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("NOPE-1"));
    let (s, _) = node.get_json("/no/such/route").await;
    assert_eq!(s, 404);

    // Multipart with an unknown part, and a body that is not multipart at all.
    let form = reqwest::multipart::Form::new()
        .part("junk", reqwest::multipart::Part::bytes(b"x".to_vec()));
    let r = node
        .client
        .post(format!("{}/api/v1/scans", node.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = node
        .client
        .post(format!("{}/api/v1/scans", node.base))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attenuation_images_are_stored_in_transmission_polarity() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let d = sim(42).next_drop();
    // The same scan delivered as an attenuation image (air dark).
    let inverted: Vec<u16> = d.image.as_raw().iter().map(|v| u16::MAX - v).collect();
    let att = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(
        d.image.width(),
        d.image.height(),
        inverted,
    )
    .unwrap();
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma16(att)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut sc = d.sidecar.clone();
    sc["image"]["pixel_meaning"] = "attenuation".into();
    sc["image"]["file"] = format!("{}.png", d.scan_id).into();
    let (s, b) = node
        .post_drop(&serde_json::to_vec(&sc).unwrap(), Some(png))
        .await;
    assert_eq!(s, 201, "{b}");
    let stored = image::load_from_memory(&stored_image16(&node, &d.scan_id).await)
        .unwrap()
        .into_luma16();
    assert_eq!(stored.as_raw(), d.image.as_raw());

    // A 16-bit grayscale transmission PNG already is the canonical image: stored as sent.
    let d = sim(43).next_drop();
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma16(d.image.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut sc = d.sidecar.clone();
    sc["image"]["file"] = format!("{}.png", d.scan_id).into();
    let (s, b) = node
        .post_drop(&serde_json::to_vec(&sc).unwrap(), Some(png.clone()))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(stored_image16(&node, &d.scan_id).await, png);
}

/// The scan's canonical image as the node serves it.
async fn stored_image16(node: &TestNode, scan_id: &str) -> Vec<u8> {
    let r = node
        .client
        .get(format!("{}/api/v1/scans/{scan_id}/image16.png", node.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.bytes().await.unwrap().to_vec()
}
