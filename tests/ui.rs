//! The operator UI end to end: HTTPS with the self-signed certificate, and a real headless
//! Chromium (driven through chromedriver) that logs in, walks the queue with the keyboard,
//! changes window/level in the 16-bit viewer, opens the transit view, records a decision
//! and finds it in the history. Screenshots go to target/ui-screenshots/.

use std::sync::Arc;
use std::time::Duration;

use riac_node::config::TlsConfig;
use riac_node::store::users::Role;
use riac_node::web::accounts;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::webdriver::{screenshot_dir, Browser};
use crate::common::*;

/// One HTTP/1.1 request over TLS, trusting only `cert_pem`; returns the raw response.
async fn https_get(addr: std::net::SocketAddr, cert_pem: &[u8], path: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the node's certificate");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_config(dir: &std::path::Path) -> riac_node::config::Config {
    let mut cfg = test_config(dir);
    cfg.web.tls = Some(TlsConfig::SelfSigned);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_with(tls_config(dir.path())).await;
    let addr = node.node.as_ref().unwrap().addr;
    let cert_path = node.data.join("tls/self-signed.crt");
    let cert = std::fs::read(&cert_path).unwrap();
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(node.data.join("tls/self-signed.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        key_mode, 0o600,
        "the private key is readable by its owner only"
    );

    let health = https_get(addr, &cert, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{health}"
    );
    let login = https_get(addr, &cert, "/login").await;
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // A restart keeps the certificate a browser may already trust.
    node.stop().await;
    let node = TestNode::start_with(tls_config(dir.path())).await;
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
    let addr = node.node.as_ref().unwrap().addr;
    assert!(https_get(addr, &cert, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reviews_a_scan_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(tls_config(dir.path())).await;
    let store = node.node.as_ref().unwrap().store.clone();
    let base = node.base.clone();
    assert!(base.starts_with("https://"));
    accounts::create_user(&store, "cli", "olga", Role::Operator, "night-shift-42")
        .await
        .unwrap();
    let mut sim = sim(61);
    let pair = sim.next_transit_pair();
    let single = sim.next_drop();
    // The entry first, so the exit pairs at once (an exit ahead of its entry waits for it
    // and gets a second, superseding verdict: tests/transit.rs covers that).
    for d in [&single, &pair.entry] {
        d.write_to(&node.hot).unwrap();
    }
    node.wait_counts((2, 2, 2), Duration::from_secs(60)).await;
    pair.exit.write_to(&node.hot).unwrap();
    node.wait_counts((3, 3, 3), Duration::from_secs(60)).await;
    let shots = screenshot_dir();

    let b = Browser::start().await;
    // Not logged in: the queue sends the browser to the login page.
    b.goto(&format!("{base}/")).await;
    let user = b
        .wait_for("input[name=username]", Duration::from_secs(20))
        .await;
    assert!(b.url().await.contains("/login?next="));
    b.type_into(&user, "olga").await;
    let pw = b.find("input[name=password]").await.unwrap();
    b.type_into(&pw, "night-shift-42").await;
    b.screenshot(&shots, "01-login.png").await;
    b.click(&b.find("form.login button").await.unwrap()).await;

    // The queue: three scans, all automatic `refer`, all standing out as needing review.
    b.wait_for("#queue tr.scan-row", Duration::from_secs(20))
        .await;
    b.wait_true(
        "return document.querySelectorAll('#queue img').length === 3 && \
         Array.from(document.querySelectorAll('#queue img')).every(i => i.complete && i.naturalWidth > 0)",
        Duration::from_secs(30),
        "queue thumbnails",
    )
    .await;
    let review_rows = b
        .exec(
            "return document.querySelectorAll('#queue tr.needs-review').length",
            json!([]),
        )
        .await;
    assert_eq!(review_rows, json!(3));
    b.screenshot(&shots, "02-queue.png").await;

    // A new scan arrives while the page is open: the live queue shows it without a reload.
    let late = sim.next_drop();
    late.write_to(&node.hot).unwrap();
    b.wait_true(
        &format!(
            "return !!document.querySelector('#queue tr[data-scan=\"{}\"]')",
            late.scan_id
        ),
        Duration::from_secs(30),
        "the new scan in the live queue",
    )
    .await;

    // Keyboard: the newest row is selected; j moves down, Enter opens.
    b.keys("j").await;
    let selected = b
        .exec(
            "return document.querySelector('#queue tr.selected').dataset.scan",
            json!([]),
        )
        .await;
    b.keys("\u{E007}").await; // Enter
    b.wait_for("#viewer[data-ready='1']", Duration::from_secs(30))
        .await;
    assert!(b.url().await.contains(selected.as_str().unwrap()));

    // Go to the single scan and look at it through the viewer.
    b.goto(&format!("{base}/scans/{}", single.scan_id)).await;
    b.wait_for("#viewer[data-ready='1']", Duration::from_secs(30))
        .await;
    let probe = "const c = document.getElementById('view'); const g = c.getContext('2d'); \
                 const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0; \
                 for (let i = 0; i < d.length; i += 4 * 97) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2]; return s;";
    let before = b.exec(probe, json!([])).await;
    b.screenshot(&shots, "03-viewer-full-range.png").await;
    b.click(&b.find("button[data-preset=organic]").await.unwrap())
        .await;
    b.wait_true(
        "return document.querySelector('button[data-preset=organic]').getAttribute('aria-pressed') === 'true'",
        Duration::from_secs(5),
        "organic preset",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = b.exec(probe, json!([])).await;
    assert_ne!(before, after, "the window changed what is drawn");
    let center: u32 = b
        .text(&b.find("#wl-center-out").await.unwrap())
        .await
        .parse()
        .unwrap();
    assert!(
        center > 32768,
        "the organic window sits in the bright (light-material) range: {center}"
    );
    b.screenshot(&shots, "04-viewer-organic.png").await;
    // Palette and a pixel readout in attenuation units.
    b.exec(
        "const p = document.getElementById('palette'); p.value = 'turbo'; p.dispatchEvent(new Event('change'));",
        json!([]),
    )
    .await;
    let stage = b.find("#stage").await.unwrap();
    b.hover(&stage, 10, 5).await;
    b.wait_true(
        "return document.getElementById('readout').textContent.includes('attenuation')",
        Duration::from_secs(5),
        "attenuation readout",
    )
    .await;
    let apply_ms = b
        .exec(
            "return parseFloat(document.getElementById('viewer').dataset.applyMs)",
            json!([]),
        )
        .await;
    println!("viewer: window applied in {apply_ms} ms (test-size scan)");
    // A profile: `p`, then drag a line across the image.
    b.keys("p").await;
    b.drag(&stage, (-200, 0), (200, 5)).await;
    b.wait_true(
        "return !document.getElementById('profile').hidden",
        Duration::from_secs(5),
        "the attenuation profile",
    )
    .await;
    b.screenshot(&shots, "05-viewer-palette-readout-profile.png")
        .await;
    b.keys("p").await;

    // The transit view of the exit scan: the node paired it with its entry scan and
    // compared them; the entry, the exit aligned onto it and the heatmap are all served.
    b.goto(&format!("{base}/scans/{}", pair.exit.scan_id)).await;
    b.wait_for("#viewer", Duration::from_secs(20)).await;
    b.keys("t").await;
    b.wait_for("#transit-stage .tframe", Duration::from_secs(20))
        .await;
    b.wait_true(
        "return document.querySelectorAll('#transit-stage .msg').length === 0 && \
         Array.from(document.querySelectorAll('#transit-stage img')).length >= 2 && \
         Array.from(document.querySelectorAll('#transit-stage img')).every(i => i.complete && i.naturalWidth > 0)",
        Duration::from_secs(20),
        "the entry and the aligned exit image of the node's own transit check",
    )
    .await;
    let head = b.text(&b.find("body").await.unwrap()).await;
    assert!(
        head.contains(&format!("entry scan {}", pair.entry.scan_id)),
        "{head}"
    );
    b.screenshot(&shots, "06-transit-real.png").await;

    // The same view with a changed region (test data written straight into the store, as
    // the contract is written): one box per panel over the same images.
    let (ew, eh) = pair.entry.image.dimensions();
    let exit_id = pair.exit.scan_id.clone();
    let entry_id = pair.entry.scan_id.clone();
    store
        .write(move |t| {
            // Built from JSON, as the contract is written: fields the checks add later
            // (with serde defaults) do not break this test.
            let mut v = riac_node::store::verdicts::current_for_scan(t, &exit_id)?.unwrap();
            v.supersedes = Some(v.verdict_id.clone());
            v.verdict_id = uuid::Uuid::now_v7().to_string();
            v.transit = Some(
                serde_json::from_value(json!({
                    "status": "changed",
                    "entry_scan_id": entry_id,
                    "change_score": 0.81,
                    "regions": [{
                        "x0": ew * 3 / 10, "y0": eh * 3 / 10, "x1": ew * 45 / 100, "y1": eh * 7 / 10,
                        "area_m2": 2.4, "score": 0.77,
                    }],
                    "reason": "test data: one region changed",
                }))
                .unwrap(),
            );
            let declared = v
                .manifest
                .declared_hs_codes
                .first()
                .cloned()
                .unwrap_or_else(|| "8703.23".into());
            v.manifest = serde_json::from_value(json!({
                "status": "inconsistent",
                "declared_hs_codes": v.manifest.declared_hs_codes,
                "top_matches": [
                    {"hs_code": "2402.20", "score": 0.91, "reference_id": "ref-cigarettes-01"},
                    {"hs_code": declared, "score": 0.42},
                ],
                "reason": "test data: the image looks like undeclared goods",
            }))
            .unwrap();
            riac_node::store::verdicts::insert_with_outbox(t, v, "riac/v1/KHI/test-node/verdicts", None)
        })
        .await
        .unwrap();
    b.goto(&format!("{base}/scans/{}/transit", pair.exit.scan_id))
        .await;
    b.wait_for("#transit-stage .tframe", Duration::from_secs(20))
        .await;
    b.wait_true(
        "return document.querySelectorAll('#transit-stage svg rect').length === 2 && \
         document.querySelectorAll('#transit-stage .msg').length === 0 && \
         Array.from(document.querySelectorAll('#transit-stage img')).every(i => i.complete && i.naturalWidth > 0)",
        Duration::from_secs(20),
        "entry and aligned images, one box per panel",
    )
    .await;
    b.screenshot(&shots, "07-transit-side-by-side.png").await;
    b.click(&b.find("button[data-mode=swipe]").await.unwrap())
        .await;
    b.wait_for(
        "#transit-stage[data-mode=swipe] svg rect",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot(&shots, "08-transit-swipe.png").await;
    // Its manifest view: declared goods against the nearest references; the reference
    // thumbnails come from the matching module's library, absent in this build.
    b.goto(&format!("{base}/scans/{}#manifest", pair.exit.scan_id))
        .await;
    b.wait_true(
        "return document.querySelectorAll('#manifest figure.ref').length === 2 && \
         document.querySelectorAll('#manifest .ref-thumb.none').length === 2",
        Duration::from_secs(20),
        "two reference matches, without thumbnails on this node",
    )
    .await;
    let manifest = b.text(&b.find("#manifest").await.unwrap()).await;
    assert!(
        manifest.contains("2402.20") && manifest.contains("not declared"),
        "{manifest}"
    );
    b.exec(
        "document.getElementById('manifest').scrollIntoView()",
        json!([]),
    )
    .await;
    b.screenshot(&shots, "08b-manifest.png").await;

    // Record a decision on the single scan, with a note.
    b.goto(&format!("{base}/scans/{}", single.scan_id)).await;
    b.wait_for("#decision-form", Duration::from_secs(20)).await;
    b.click(&b.find("#decision-form input[value=inspect]").await.unwrap())
        .await;
    b.type_into(
        &b.find("#note").await.unwrap(),
        "Dense block behind the cab, not in the declaration",
    )
    .await;
    b.screenshot(&shots, "09-decision-form.png").await;
    b.click(&b.find("#decision-form button[type=submit]").await.unwrap())
        .await;
    let flash = b.wait_for("p.flash", Duration::from_secs(20)).await;
    assert!(b.text(&flash).await.contains("Decision recorded"));
    let history = b.text(&b.find("#history").await.unwrap()).await;
    assert!(
        history.contains("olga")
            && history.contains("Dense block behind the cab")
            && history.contains("verdict.decided"),
        "{history}"
    );
    b.screenshot(&shots, "10-history.png").await;

    // The queue no longer flags it.
    b.goto(&format!("{base}/")).await;
    b.wait_for("#queue tr.scan-row", Duration::from_secs(20))
        .await;
    let still = b
        .exec(
            &format!(
                "return document.querySelector('#queue tr[data-scan=\"{}\"]').classList.contains('needs-review')",
                single.scan_id
            ),
            json!([]),
        )
        .await;
    assert_eq!(still, json!(false));
    b.screenshot(&shots, "11-queue-after.png").await;

    // The status page, as an operator sees it; this node has no broker configured.
    b.goto(&format!("{base}/status")).await;
    let absent = b
        .wait_for("#uplink-disabled", Duration::from_secs(20))
        .await;
    assert!(b.text(&absent).await.contains("No broker is configured"));
    let depth = b.text(&b.find("#outbox-depth").await.unwrap()).await;
    assert!(depth.starts_with("6 "), "{depth}");
    b.screenshot(&shots, "12-status.png").await;
    // An operator has no user administration.
    assert!(b.find("a[href='/admin/users']").await.is_none());
    b.close().await;

    // The decision is a verdict in the chain and in the outbox, and in the audit trail.
    let id = single.scan_id.clone();
    let (n, by, note) = store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT count(*), max(decided_by), json_extract(max(body), '$.note') FROM verdicts WHERE scan_id = ?1 AND decided_by <> 'auto'",
                [id],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!((n, by.as_str()), (1, "olga"));
    assert!(note.contains("Dense block"));
    node.wait_counts((4, 6, 6), Duration::from_secs(10)).await;
    let trail = store
        .read(|c| riac_node::store::audit::for_subject(c, "user:olga"))
        .await
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "login"));
}

fn user_cli(data: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_user_command_manages_accounts_and_keeps_the_database_the_services() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // As root (CI), on a data dir owned by another user: the files stay that user's.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        let mut p = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(dir.path(), p).unwrap();
    }
    let (ok, out, err) = user_cli(
        &data,
        &["add", "Alice", "--role", "supervisor"],
        "night-owl-secret\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("created alice (supervisor)"), "{out}");
    if as_root {
        for f in std::fs::read_dir(&data).unwrap() {
            let f = f.unwrap();
            assert_eq!(
                f.metadata().unwrap().uid(),
                65534,
                "{:?} is owned by root",
                f.path()
            );
        }
    }
    let (ok, _, err) = user_cli(&data, &["add", "bob"], "short\n");
    assert!(!ok && err.contains("at least 10 characters"), "{err}");
    let (ok, _, err) = user_cli(&data, &["add", "alice"], "another-long-one\n");
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, err) = user_cli(&data, &["passwd", "alice"], "a-new-long-secret\n");
    assert!(ok && out.contains("password of alice changed"), "{err}");
    let (ok, _, err) = user_cli(&data, &["disable", "alice"], "");
    assert!(ok, "{err}");
    let (ok, out, _) = user_cli(&data, &["list"], "");
    assert!(
        ok && out.contains("alice") && out.contains("disabled"),
        "{out}"
    );
    let (ok, _, err) = user_cli(&data, &["role", "alice", "king"], "");
    assert!(
        !ok && err.contains("operator, supervisor, admin, scanner"),
        "{err}"
    );
    // A wrong --data-dir is named, not silently given a fresh database.
    let (ok, _, err) = user_cli(&dir.path().join("nope"), &["list"], "");
    assert!(
        !ok && err.contains("no database at") && err.contains("--data-dir"),
        "{err}"
    );
    // The trail of it all, by the CLI.
    let db = open_db(&data);
    let actions: Vec<String> = db
        .prepare("SELECT action FROM audit WHERE actor = 'cli' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "user.must_change_password",
            "user.password_changed",
            "user.disabled"
        ]
    );
}
