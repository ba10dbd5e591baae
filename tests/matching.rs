//! Manifest matching: the model contract refuses a wrong model, the two ONNX backends give
//! the same embeddings, library import is idempotent, and the running node tells bottled
//! drinks declared as tyres from real tyres.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use riac_node::matching::{self, Backend, EmbeddingModel, ModelError};
use riac_node::sim::{redeclare, SimImageFormat, SimOptions, Simulator};

use crate::common::*;

/// Big enough for cargo texture at the model's 20 mm pixels, small enough to be quick.
const MATCH_SCALE: f64 = 0.35;

/// Tolerance between tract and ONNX Runtime on the same tiles (embedding components; the
/// embeddings are L2-normalised, so this is also the cosine error order).
const BACKEND_TOLERANCE: f32 = 1e-4;

fn class_sim(seed: u64) -> Simulator {
    Simulator::new(SimOptions {
        seed,
        resolution_scale: MATCH_SCALE,
        format: SimImageFormat::Png,
        ..SimOptions::default()
    })
}

/// `per_class` drops of each class into `dir`; returns their scan ids.
fn write_refs(dir: &Path, classes: &[&str], per_class: usize, seed: u64) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut ids = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let mut s = class_sim(seed + i as u64 * 100);
        for k in 0..per_class {
            let mut d = s.next_drop_of_class(c).unwrap();
            riac_node::sim::rename(&mut d, &format!("REF-{seed}-{i}-{k}"));
            d.write_to(dir).unwrap();
            ids.push(d.scan_id);
        }
    }
    ids
}

/// The shipped contract and model copied into `dir`, the contract edited by `edit`.
fn edited_contract(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let src = matching::bundled_model();
    let spec = ModelSpec::load(&src).unwrap();
    let onnx = src.parent().unwrap().join(&spec.model.file);
    std::fs::copy(&onnx, dir.join(&spec.model.file)).unwrap();
    let text = edit(std::fs::read_to_string(&src).unwrap());
    let out = dir.join("edited.toml");
    std::fs::write(&out, text).unwrap();
    out
}

use riac_node::matching::ModelSpec;

#[test]
fn model_load_refuses_a_wrong_sha256_and_a_wrong_input_shape() {
    let dir = tempfile::tempdir().unwrap();
    let good = ModelSpec::load(&matching::bundled_model()).unwrap();
    let sha = good.model.sha256.clone();

    let bad_sha = edited_contract(dir.path(), |t| t.replace(&sha, &"0".repeat(64)));
    let e = EmbeddingModel::load(&bad_sha, Backend::Tract).unwrap_err();
    assert!(matches!(e, ModelError::Sha256 { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&sha) && msg.contains(&"0".repeat(64)) && msg.contains("riac-texture.onnx"),
        "{msg}"
    );

    // The contract promises 32x32 tiles; the model takes 64x64.
    let bad_shape = edited_contract(dir.path(), |t| {
        t.replace("shape = [-1, 1, 64, 64]", "shape = [-1, 1, 32, 32]")
            .replace("tile = 64", "tile = 32")
    });
    let e = EmbeddingModel::load(&bad_shape, Backend::Tract).unwrap_err();
    assert!(matches!(e, ModelError::Shape { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("[-1, 1, 32, 32]") && msg.contains("64") && msg.contains("edited.toml"),
        "{msg}"
    );

    // An input normalisation this node does not know is refused, naming what it knows.
    let bad_norm = edited_contract(dir.path(), |t| {
        t.replace(
            "normalisation = \"attenuation-dark\"",
            "normalisation = \"log-counts\"",
        )
    });
    let msg = EmbeddingModel::load(&bad_norm, Backend::Tract)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("log-counts")
            && msg.contains("attenuation-dark")
            && msg.contains("edited.toml"),
        "{msg}"
    );

    // And the real one loads, with the dimension its contract states.
    let m = EmbeddingModel::load(&matching::bundled_model(), Backend::Tract).unwrap();
    assert_eq!(m.dim(), good.output.dim);
}

fn ort_library() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cache/onnxruntime/libonnxruntime.so.1.24.1");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-data (the backend agreement test needs ONNX Runtime)",
        p.display()
    );
    p
}

fn match_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("match")
        .args(args)
        .args(["--json", "--config", "/nonexistent"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "riac-node match {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn tract_and_onnx_runtime_give_the_same_embeddings() {
    let lib = ort_library();
    let dir = tempfile::tempdir().unwrap();
    let (refs, data) = (dir.path().join("refs"), dir.path().join("data"));
    write_refs(&refs, &["4011.20", "2202.10"], 1, 900);
    let probe_dir = dir.path().join("probe");
    write_refs(&probe_dir, &["1006.30"], 1, 901);
    let probe = std::fs::read_dir(&probe_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();

    let st = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["library", "import"])
        .arg(&refs)
        .arg("--data-dir")
        .arg(&data)
        .args(["--backend", "tract", "--config", "/nonexistent"])
        .status()
        .unwrap();
    assert!(st.success());

    let p = probe.to_str().unwrap();
    let d = data.to_str().unwrap();
    let tract = match_json(&[p, "--data-dir", d, "--backend", "tract", "--embeddings"]);
    let ort = match_json(&[
        p,
        "--data-dir",
        d,
        "--backend",
        "onnxruntime",
        "--ort-library",
        lib.to_str().unwrap(),
        "--embeddings",
    ]);
    assert_eq!(tract["backend"], "tract");
    assert_eq!(ort["backend"], "onnxruntime");
    let a = tract["embeddings"].as_array().unwrap();
    let b = ort["embeddings"].as_array().unwrap();
    assert!(a.len() >= 4, "too few tiles to compare: {}", a.len());
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.as_array().unwrap().iter().zip(y.as_array().unwrap()) {
            worst = worst.max((u.as_f64().unwrap() as f32 - v.as_f64().unwrap() as f32).abs());
        }
    }
    assert!(
        worst < BACKEND_TOLERANCE,
        "tract and ONNX Runtime differ by {worst}"
    );
    // Same embeddings, same decision.
    assert_eq!(tract["manifest"]["status"], ort["manifest"]["status"]);
    assert_eq!(
        tract["manifest"]["top_matches"][0]["reference_id"],
        ort["manifest"]["top_matches"][0]["reference_id"]
    );
}

#[tokio::test]
async fn library_import_is_idempotent_and_replaces_changed_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (refs, data) = (dir.path().join("refs"), dir.path().join("data"));
    let ids = write_refs(&refs, &["4011.20", "8609.00"], 2, 910);
    std::fs::create_dir_all(&data).unwrap();
    let store = riac_node::store::Store::open(&data.join("riac-node.db")).unwrap();
    let model = Arc::new(EmbeddingModel::load(&matching::bundled_model(), Backend::Tract).unwrap());

    let r = matching::cli::import_dir(&store, &data, model.clone(), &refs)
        .await
        .unwrap();
    assert_eq!(r.added.len(), 4, "{r:?}");
    let r = matching::cli::import_dir(&store, &data, model.clone(), &refs)
        .await
        .unwrap();
    assert_eq!(
        (r.added.len(), r.replaced.len(), r.unchanged.len()),
        (0, 0, 4),
        "{r:?}"
    );
    let listed = matching::cli::list(&store).await.unwrap();
    assert_eq!(listed.len(), 4);
    for l in &listed {
        assert!(data.join(&l.thumbnail).is_file(), "{}", l.thumbnail);
    }

    // A changed drop (a new description) is replaced, once.
    let sc = refs.join(format!("{}.json", ids[0]));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&sc).unwrap()).unwrap();
    v["declaration"]["goods"][0]["description"] = "radial tyres".into();
    std::fs::write(&sc, serde_json::to_vec(&v).unwrap()).unwrap();
    let r = matching::cli::import_dir(&store, &data, model.clone(), &refs)
        .await
        .unwrap();
    assert_eq!(
        (r.replaced.clone(), r.unchanged.len()),
        (vec![ids[0].clone()], 3)
    );
    assert_eq!(matching::cli::list(&store).await.unwrap().len(), 4);

    // A mixed load is no reference.
    let mut d = class_sim(911).next_drop_of_class("6109.10").unwrap();
    d.sidecar["declaration"]["goods"] = serde_json::json!([
        {"hs_code": "6109.10"}, {"hs_code": "8528.72"}
    ]);
    d.write_to(&refs).unwrap();
    let r = matching::cli::import_dir(&store, &data, model, &refs)
        .await
        .unwrap();
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert!(r.skipped[0].1.contains("one class"), "{r:?}");

    let missing = matching::cli::remove(&store, &data, &[ids[1].clone(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(missing, vec!["nope".to_string()]);
    assert_eq!(matching::cli::list(&store).await.unwrap().len(), 3);
    store.close().await;
}

async fn verdict_of(node: &TestNode, scan_id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, v) = node.get_json(&format!("/api/v1/scans/{scan_id}")).await;
        if status == 200 && !v["verdict"].is_null() {
            return v["verdict"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no verdict for {scan_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bottled_drinks_declared_as_tyres_are_inconsistent_and_real_tyres_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.matching.model = Some(matching::bundled_model());
    cfg.matching.backend = matching::BackendChoice::Tract;
    // The library, imported before the node starts, as a site would.
    let refs = dir.path().join("refs");
    write_refs(
        &refs,
        &["4011.20", "2202.10", "1006.30", "6109.10", "8609.00"],
        3,
        920,
    );
    {
        std::fs::create_dir_all(&cfg.data_dir).unwrap();
        let store = riac_node::store::Store::open(&cfg.db_path()).unwrap();
        let model =
            Arc::new(EmbeddingModel::load(&matching::bundled_model(), Backend::Tract).unwrap());
        let r = matching::cli::import_dir(&store, &cfg.data_dir, model, &refs)
            .await
            .unwrap();
        assert_eq!(r.added.len(), 15, "{r:?}");
        store.close().await;
    }
    let mut node = TestNode::start_with(cfg).await;

    // Seeds the library never saw.
    let mut drinks = class_sim(7001).next_drop_of_class("2202.10").unwrap();
    redeclare(&mut drinks, "4011.20");
    let tyres = class_sim(7002).next_drop_of_class("4011.20").unwrap();
    drinks.write_to(&node.hot).unwrap();
    tyres.write_to(&node.hot).unwrap();

    let v = verdict_of(&node, &drinks.scan_id).await;
    let m = &v["manifest"];
    assert_eq!(m["status"], "inconsistent", "{v:#}");
    assert_eq!(m["declared_hs_codes"], serde_json::json!(["4011.20"]));
    assert!(
        m["top_matches"][0]["hs_code"]
            .as_str()
            .unwrap()
            .starts_with("2202"),
        "{m:#}"
    );
    assert_ne!(v["outcome"], "clear", "{v:#}");
    assert_eq!(v["model"]["name"], "riac-texture");
    // The UI shows the look-alike reference: its image is served.
    let rid = m["top_matches"][0]["reference_id"].as_str().unwrap();
    let img = node
        .client
        .get(format!("{}/api/v1/library/{rid}/image.png", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(img.status(), 200);
    assert_eq!(&img.bytes().await.unwrap()[..4], b"\x89PNG");

    let v = verdict_of(&node, &tyres.scan_id).await;
    assert_eq!(v["manifest"]["status"], "consistent", "{v:#}");
    assert_eq!(v["outcome"], "clear", "{v:#}");
    assert_eq!(v["manifest"]["empty"]["status"], "consistent", "{v:#}");
    node.stop().await;
}

#[tokio::test]
async fn a_loaded_container_declared_empty_is_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = riac_node::store::Store::open(&data.join("riac-node.db")).unwrap();
    let model = EmbeddingModel::load(&matching::bundled_model(), Backend::Tract).unwrap();
    let m = matching::Matcher::new(model, matching::CheckParams::default(), store.clone());
    let mut rice = class_sim(7100).next_drop_of_class("1006.30").unwrap();
    redeclare(&mut rice, "8609.00");
    let empty = class_sim(7101).next_drop_of_class("8609.00").unwrap();
    let mut empty_declared_rice = class_sim(7102).next_drop_of_class("8609.00").unwrap();
    redeclare(&mut empty_declared_rice, "1006.30");
    let run = |d: &riac_node::sim::SimDrop| {
        let codes = matching::declared_codes(Some(&d.sidecar));
        let (p, c) = matching::image_geometry(Some(&d.sidecar));
        m.check_image(&codes, &d.image, p, c).unwrap().contribution
    };
    let c = run(&rice);
    assert_eq!(c.outcome.as_str(), "alert", "{:?}", c.manifest);
    assert!(c.reasons[0].contains("declared empty"), "{:?}", c.reasons);
    let c = run(&empty);
    assert_eq!(c.outcome.as_str(), "clear", "{:?}", c.manifest);
    let c = run(&empty_declared_rice);
    assert_eq!(c.outcome.as_str(), "alert", "{:?}", c.manifest);
    store.close().await;
}

#[test]
fn the_daemon_refuses_to_start_with_a_model_that_does_not_match_its_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sha = ModelSpec::load(&matching::bundled_model())
        .unwrap()
        .model
        .sha256;
    let bad = edited_contract(dir.path(), |t| t.replace(&sha, &"a".repeat(64)));
    let cfg = write_daemon_config(dir.path());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[matching]\nmodel = \"{}\"\nbackend = \"tract\"\n",
        bad.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256") && err.contains(&sha) && err.contains("riac-texture.onnx"),
        "{err}"
    );
}
