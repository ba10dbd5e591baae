//! Evidence export through the real node and the real binary: round trip, tamper
//! detection (a file, a verdict), selection by container and declaration, unknown ids.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(args)
        .env_remove("RIAC_CONFIG")
        .env_remove("RIAC_DATA_DIR")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copies `src` to `dst`, passing each entry's bytes through `edit`.
fn rewrite_zip(src: &Path, dst: &Path, edit: impl Fn(&str, &mut Vec<u8>)) {
    let mut za = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zw = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    for i in 0..za.len() {
        let mut f = za.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        edit(&name, &mut b);
        zw.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(&b).unwrap();
    }
    zw.finish().unwrap();
}

fn manifest(zip_path: &Path) -> serde_json::Value {
    let mut za = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    let mut f = za.by_name("manifest.json").unwrap();
    let mut b = Vec::new();
    f.read_to_end(&mut b).unwrap();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trip_tamper_and_selection() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(dir.path()).await;
    let mut sim = sim(81);
    let drops: Vec<_> = (0..2).map(|_| sim.next_drop()).collect();
    for d in &drops {
        node.post_stored(d).await;
    }
    node.wait_counts((2, 2, 2), Duration::from_secs(60)).await;
    let id0 = drops[0].scan_id.clone();
    // An operator decision: a second, signed verdict for scan 0.
    let r = node
        .client
        .post(format!("{}/api/v1/scans/{id0}/decisions", node.base))
        .json(&serde_json::json!({"choice": "clear", "note": "checked"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let store = node.node.as_ref().unwrap().store.clone();
    let id1 = drops[1].scan_id.clone();
    let rec1 = store
        .read(move |c| riac_node::store::scans::get(c, &id1))
        .await
        .unwrap()
        .unwrap();
    node.stop().await;

    let data = node.data.display().to_string();
    let out = dir.path().join("case.zip");
    let outs = out.display().to_string();
    let t = std::time::Instant::now();
    let o = bin(&[
        "export",
        "--scan",
        &id0,
        "--out",
        &outs,
        "--data-dir",
        &data,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("export took {:?}", t.elapsed());
    let m = manifest(&out);
    let paths: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in [
        format!("scans/{id0}/files/image.png"),
        format!("scans/{id0}/rendered.png"),
        format!("scans/{id0}/verdicts.json"),
        format!("scans/{id0}/decisions.json"),
        format!("scans/{id0}/chain_proof.json"),
        format!("scans/{id0}/audit.json"),
        "node_public_key.txt".to_string(),
    ] {
        assert!(paths.contains(&want.as_str()), "{want} not in {paths:?}");
    }
    assert_eq!(m["scans"][0]["verdicts"], 2, "{m}");
    assert_eq!(m["scans"][0]["decisions"], 1, "{m}");
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with(&format!("scans/{id0}/files/")) && !p.ends_with("image.png")),
        "no original image or sidecar: {paths:?}"
    );

    // Round trip: with the key in the zip, and with the node's key given.
    let o = bin(&["verify-export", &outs]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("OK"), "{}", text(&o));
    let key = riac_node::uplink::keys::NodeKey::load(&node.data.join("keys/node.key"))
        .unwrap()
        .public_hex();
    let o = bin(&["verify-export", &outs, "--pubkey", &key]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--pubkey"), "{}", text(&o));
    // A different key: the manifest signature fails.
    let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let o = bin(&["verify-export", &outs, "--pubkey", other]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("manifest signature invalid"),
        "{}",
        text(&o)
    );

    // One byte of one file changed: fails naming that file.
    let bad = dir.path().join("bad-file.zip");
    let target = format!("scans/{id0}/rendered.png");
    rewrite_zip(&out, &bad, |name, b| {
        if name == target {
            let i = b.len() / 2;
            b[i] ^= 0x01;
        }
    });
    let o = bin(&["verify-export", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("FAIL: {target}: sha256")),
        "{}",
        text(&o)
    );

    // A verdict altered: fails naming the verdict.
    let bad = dir.path().join("bad-verdict.zip");
    let target = format!("scans/{id0}/verdicts.json");
    rewrite_zip(&out, &bad, |name, b| {
        if name == target {
            let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v[1]["note"] = "nothing to see".into();
            *b = serde_json::to_vec_pretty(&v).unwrap();
        }
    });
    let o = bin(&["verify-export", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let seq1 = {
        let mut za = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
        let mut f = za.by_name(&target).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v[1]["seq"].as_u64().unwrap()
    };
    assert!(
        text(&o).contains(&format!("verdict seq {seq1} (")),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("signature does not match"),
        "{}",
        text(&o)
    );

    // Selection by container and by declaration.
    let export_by = |flag: &str, value: &str, name: &str| {
        let out = dir.path().join(name);
        let o = bin(&[
            "export",
            flag,
            value,
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            &data,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let m = manifest(&out);
        assert!(
            m["scans"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["scan_id"] == rec1.scan_id.as_str()),
            "{m}"
        );
        (out, m)
    };
    let (out2, m) = export_by("--container", &rec1.container_ids[0], "container.zip");
    assert_eq!(m["selection"]["by"], "container", "{m}");
    assert!(bin(&["verify-export", out2.to_str().unwrap()])
        .status
        .success());
    export_by("--declaration", &rec1.declaration_number, "declaration.zip");

    // Unknown scan: a clear error, non-zero exit, no zip.
    let out4 = dir.path().join("none.zip");
    let o = bin(&[
        "export",
        "--scan",
        "no-such-scan",
        "--out",
        out4.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no stored scan matches scan id \"no-such-scan\""),
        "{}",
        text(&o)
    );
    assert!(!out4.exists());

    // The export is audited.
    let c = open_db(&node.data);

    // An evicted scan (as retention leaves it: row marked, files gone) is exported with
    // the manifest saying so, and verifies.
    let w = rusqlite::Connection::open(node.data.join("riac-node.db")).unwrap();
    w.execute(
        "UPDATE scans SET evicted_at = '2026-01-01T00:00:00.000Z', evicted_reason = 'age' WHERE scan_id = ?1",
        [&rec1.scan_id],
    )
    .unwrap();
    std::fs::remove_dir_all(node.data.join(&rec1.image_dir)).unwrap();
    let out5 = dir.path().join("evicted.zip");
    let o = bin(&[
        "export",
        "--scan",
        &rec1.scan_id,
        "--out",
        out5.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("evicted by retention"), "{}", text(&o));
    let m = manifest(&out5);
    assert_eq!(m["scans"][0]["evicted"]["reason"], "age", "{m}");
    assert!(
        !m["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"].as_str().unwrap().contains("/files/")),
        "{m}"
    );
    let o = bin(&["verify-export", out5.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'evidence.exported' AND subject = ?1",
            [&id0],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}
