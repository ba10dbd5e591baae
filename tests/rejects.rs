//! Every kind of bad drop gets a clear rejection naming the field, through the hot folder
//! (rejected/ + <scan_id>.error.txt) and through HTTP (4xx JSON), and leaves nothing stored.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use riac_node::sim::SimDrop;

/// Sidecar bytes, and the image file's name and bytes (if the drop has one).
type BadDrop = (Vec<u8>, Option<(String, Vec<u8>)>);

struct Case {
    name: &'static str,
    /// (sidecar bytes, image file name and bytes)
    make: fn(&SimDrop) -> BadDrop,
    field: &'static str,
    /// A word the reason must contain.
    says: &'static str,
    http_status: u16,
}

fn sidecar_with(d: &SimDrop, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = d.sidecar.clone();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn image_of(d: &SimDrop) -> Option<(String, Vec<u8>)> {
    Some((d.image_file.clone(), d.encode_image()))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "bad json",
            make: |d| {
                (
                    b"{\"schema\": \"riac.scan/1\", \"scan_id\": ".to_vec(),
                    image_of(d),
                )
            },
            field: "sidecar",
            says: "JSON",
            http_status: 422,
        },
        Case {
            name: "missing image",
            make: |d| (serde_json::to_vec(&d.sidecar).unwrap(), None),
            field: "image",
            says: "",
            http_status: 422,
        },
        Case {
            name: "wrong check digit",
            make: |d| {
                let bad = {
                    let id = d.sidecar["container_ids"][0].as_str().unwrap().to_string();
                    let last = id.as_bytes()[10] - b'0';
                    format!("{}{}", &id[..10], (last + 1) % 10)
                };
                (
                    sidecar_with(d, |v| v["container_ids"][0] = bad.into()),
                    image_of(d),
                )
            },
            field: "container_ids[0]",
            says: "check digit",
            http_status: 422,
        },
        Case {
            name: "truncated tiff",
            make: |d| {
                let img = d.encode_image();
                (
                    serde_json::to_vec(&d.sidecar).unwrap(),
                    Some((d.image_file.clone(), img[..img.len() / 2].to_vec())),
                )
            },
            field: "image",
            says: "",
            http_status: 422,
        },
        Case {
            name: "truncated png",
            make: |d| {
                let mut img = Vec::new();
                image::DynamicImage::ImageLuma16(d.image.clone())
                    .write_to(&mut std::io::Cursor::new(&mut img), image::ImageFormat::Png)
                    .unwrap();
                let name = d.image_file.replace(".tiff", ".png");
                let n2 = name.clone();
                (
                    sidecar_with(d, |v| v["image"]["file"] = n2.into()),
                    Some((name, img[..img.len() / 2].to_vec())),
                )
            },
            field: "image",
            says: "",
            http_status: 422,
        },
        Case {
            name: "0x0 image",
            make: |d| {
                let name = d.image_file.replace(".tiff", ".png");
                let n2 = name.clone();
                (
                    sidecar_with(d, |v| v["image"]["file"] = n2.into()),
                    Some((name, png_header_only(0, 0))),
                )
            },
            field: "image",
            says: "",
            http_status: 422,
        },
        Case {
            name: "over-limit dimensions",
            make: |d| {
                let name = d.image_file.replace(".tiff", ".png");
                let n2 = name.clone();
                (
                    sidecar_with(d, |v| v["image"]["file"] = n2.into()),
                    Some((name, png_header_only(25_000, 2_000))),
                )
            },
            field: "image",
            says: "max_width",
            http_status: 422,
        },
        Case {
            name: "decompression bomb",
            make: |d| {
                // 400 bytes that would inflate to 4 GB: refused from the header.
                let name = d.image_file.replace(".tiff", ".png");
                let n2 = name.clone();
                (
                    sidecar_with(d, |v| v["image"]["file"] = n2.into()),
                    Some((name, png_header_only(19_000, 7_900))),
                )
            },
            field: "image",
            says: "",
            http_status: 422,
        },
        Case {
            name: "path traversal",
            make: |d| {
                (
                    sidecar_with(d, |v| v["image"]["file"] = "../outside.tiff".into()),
                    None,
                )
            },
            field: "image.file",
            says: "plain file name",
            http_status: 422,
        },
        Case {
            name: "timestamp in the future",
            make: |d| {
                (
                    sidecar_with(d, |v| v["scanned_at"] = "2099-01-01T00:00:00Z".into()),
                    image_of(d),
                )
            },
            field: "scanned_at",
            says: "ahead",
            http_status: 422,
        },
        Case {
            name: "direction does not fit regime",
            make: |d| {
                (
                    sidecar_with(d, |v| {
                        v["declaration"]["regime"] = "export".into();
                        v["direction"] = "import".into();
                    }),
                    image_of(d),
                )
            },
            field: "direction",
            says: "regime",
            http_status: 422,
        },
    ]
}

fn nothing_stored(data: &Path) {
    let scans = data.join("scans");
    let mut stack = vec![scans];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            assert!(
                p.is_dir(),
                "a file was stored for a rejected drop: {}",
                p.display()
            );
            stack.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drops_in_the_hot_folder_are_moved_aside_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let outside = dir.path().join("outside.tiff");
    std::fs::write(&outside, b"not yours").unwrap();
    let mut sim = sim(21);
    let cases = cases();
    let mut expected = Vec::new();
    let mut first = None;
    for case in &cases {
        let d = sim.next_drop();
        let (sidecar, image) = (case.make)(&d);
        if first.is_none() {
            first = Some((d.scan_id.clone(), sidecar.clone(), image.clone()));
        }
        write_raw_drop(
            &node.hot,
            &d.scan_id,
            &sidecar,
            image.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
        );
        expected.push((case, d.scan_id.clone()));
    }
    let rejected = node.hot.join("rejected");
    for (case, id) in &expected {
        let err_file = rejected.join(format!("{id}.error.txt"));
        wait_until(
            Duration::from_secs(30),
            &format!("{} rejected", case.name),
            || err_file.is_file(),
        )
        .await;
        let text = std::fs::read_to_string(&err_file).unwrap();
        assert!(
            text.contains(&format!("field: {}", case.field)),
            "{}: {text}",
            case.name
        );
        assert!(text.contains(case.says), "{}: {text}", case.name);
    }
    wait_until(Duration::from_secs(10), "hot folder emptied", || {
        files_in(&node.hot).is_empty()
    })
    .await;
    for (_, id) in &expected {
        assert!(
            rejected.join(format!("{id}.json")).is_file(),
            "sidecar of {id} moved to rejected/"
        );
    }
    assert_eq!(node.counts().await, (0, 0, 0));
    nothing_stored(&node.data);
    assert_eq!(std::fs::read(&outside).unwrap(), b"not yours");
    let (_, rejects) = node.get_json("/api/v1/rejects").await;
    assert_eq!(rejects["rejects"].as_array().unwrap().len(), cases.len());

    // The same bad drop again: the earlier rejection is kept beside the new one.
    let (id, sidecar, image) = first.unwrap();
    let before = std::fs::read_to_string(rejected.join(format!("{id}.error.txt"))).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_raw_drop(
        &node.hot,
        &id,
        &sidecar,
        image.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    let earlier = rejected.join(format!("{id}.earlier-1"));
    wait_until(Duration::from_secs(30), "second rejection", || {
        earlier.join(format!("{id}.error.txt")).is_file()
            && rejected.join(format!("{id}.json")).is_file()
            && files_in(&node.hot).is_empty()
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(earlier.join(format!("{id}.error.txt"))).unwrap(),
        before
    );
    assert!(earlier.join(format!("{id}.json")).is_file());
    let after = std::fs::read_to_string(rejected.join(format!("{id}.error.txt"))).unwrap();
    assert_ne!(after, before, "a new error file, with its own time");
    // Retention deletes rejected drops past `retention.rejected_days` (here: all of them).
    assert_eq!(
        riac_node::retention::prune_rejected(&rejected, Duration::from_secs(86_400)),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(riac_node::retention::prune_rejected(&rejected, Duration::ZERO) > cases.len());
    assert_eq!(std::fs::read_dir(&rejected).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_answered_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(22);
    for case in cases() {
        let d = sim.next_drop();
        let (sidecar, image) = (case.make)(&d);
        let (status, body) = node.post_drop(&sidecar, image.map(|(_, b)| b)).await;
        assert_eq!(status, case.http_status, "{}: {body}", case.name);
        let field = body["error"]["field"].as_str().unwrap_or("");
        assert!(field.starts_with(case.field), "{}: {body}", case.name);
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(case.says), "{}: {msg}", case.name);
        assert!(
            !msg.contains("panicked") && !msg.contains("internal"),
            "{}: {msg}",
            case.name
        );
    }
    assert_eq!(node.counts().await, (0, 0, 0));
    nothing_stored(&node.data);
}
