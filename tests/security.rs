//! Issue 16's attacks, replayed against a real node on loopback (127.0.0.1, with other
//! 127.0.0.x source addresses standing in for other machines), so that none can come back:
//! parallel password guessing, open redirects after login, locking someone else's account,
//! log flooding through user names, a scanner account as a password oracle, phishing text
//! in flash messages, tokens outliving a password change, unbounded sidecar text, unsigned
//! centre commands, and the controls that already held (access without a session, CSRF,
//! traversal, SQL in filters, stored markup).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use riac_node::store::users::Role;
use riac_node::web::accounts;

use crate::common::*;

const PW: &str = "operator-pass-1";

/// A client with no cookies of its own that connects from `127.0.0.<last>`: the node sees
/// a different client address per `last`, as it would see different machines.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The login form's token (also its cookie), as a browser gets it from `GET /login`.
async fn login_token(c: &reqwest::Client, base: &str) -> String {
    let r = c.get(format!("{base}/login")).send().await.unwrap();
    set_cookie_value(r.headers(), "riac_login").expect("login cookie")
}

/// `POST /login` with `token` from [`login_token`]; returns status, headers and body.
async fn post_login(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    user: &str,
    password: &str,
    next: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = c
        .post(format!("{base}/login"))
        .header("cookie", format!("riac_login={token}"))
        .form(&[
            ("username", user),
            ("password", password),
            ("csrf", token),
            ("next", next),
        ])
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap_or_default())
}

async fn add_user(node: &TestNode, name: &str, role: Role) {
    accounts::create_user(&node.node.as_ref().unwrap().store, "cli", name, role, PW)
        .await
        .unwrap();
}

fn audit_actions(data: &Path, subject: &str) -> Vec<(String, String)> {
    let c = open_db(data);
    let mut st = c
        .prepare("SELECT action, detail FROM audit WHERE subject = ?1 ORDER BY seq")
        .unwrap();
    st.query_map([subject], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_are_counted_before_they_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "olga", Role::Operator).await;
    let c = client_from(1);
    let token = login_token(&c, &node.base).await;

    // 40 wrong passwords released at once (the attack of issue 16, item 1).
    let gate = Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (c, base, token, gate) = (c.clone(), node.base.clone(), token.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            post_login(&c, &base, &token, "olga", &format!("wrong-guess-{i}"), "/")
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 40, "{statuses:?}");
    // The default limit is 5 per (address, name): no more may have been checked.
    assert!(
        checked <= 5,
        "{checked} passwords were checked: {statuses:?}"
    );
    assert!(checked >= 1, "{statuses:?}");
    let failed = audit_actions(&node.data, "user:olga")
        .into_iter()
        .filter(|(a, _)| a == "login.failed")
        .count();
    assert_eq!(failed, checked, "every checked attempt is audited");

    // The right password from this address waits too; from another it goes in at once.
    let (s, h, _) = post_login(&c, &node.base, &token, "olga", PW, "/").await;
    assert_eq!(s, 429);
    assert!(h.contains_key("retry-after"));
    let other = client_from(2);
    let t2 = login_token(&other, &node.base).await;
    let (s, _, body) = post_login(&other, &node.base, &t2, "olga", PW, "/").await;
    assert_eq!(s, 303, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_lock_an_account_from_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    // A long cap, so that the backoff below is tens of seconds and a slow machine cannot
    // outwait it between two requests.
    cfg.web.login_name_backoff_max = Duration::from_secs(600);
    let node = TestNode::start_with(cfg).await;
    add_user(&node, "vera", Role::Supervisor).await;
    // One attacker address runs into its (address, name) limit...
    let c = client_from(10);
    let t = login_token(&c, &node.base).await;
    for i in 0..5 {
        let (s, _, _) = post_login(&c, &node.base, &t, "vera", &format!("guess-{i}-x"), "/").await;
        assert_eq!(s, 401);
    }
    assert_eq!(
        post_login(&c, &node.base, &t, "vera", "yet-another-guess", "/")
            .await
            .0,
        429
    );
    // ... other attacker addresses get one try each, then the name's backoff holds them.
    for last in 11..=16 {
        let c = client_from(last);
        let t = login_token(&c, &node.base).await;
        let (s, _, _) = post_login(&c, &node.base, &t, "vera", "one-more-guess", "/").await;
        assert_eq!(s, 401);
    }
    let slow = client_from(11);
    let t = login_token(&slow, &node.base).await;
    let (s, h, _) = post_login(&slow, &node.base, &t, "vera", "and-another-1", "/").await;
    assert_eq!(s, 429);
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    // 11 failures on the name, 5 over the limit: 2^6 s after the name's last attempt.
    assert!((30..=64).contains(&wait), "{wait}");
    // ... but the owner at a fresh address logs in at once.
    let owner = client_from(20);
    let t = login_token(&owner, &node.base).await;
    let (s, _, body) = post_login(&owner, &node.base, &t, "vera", PW, "/").await;
    assert_eq!(s, 303, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_after_login_is_always_a_local_path() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "olga", Role::Operator).await;
    let c = client_from(1);
    for next in [
        "/\t/evil.example",
        "/\n",
        "/\x7f",
        "/\0",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/\r\nSet-Cookie: x=y",
    ] {
        let t = login_token(&c, &node.base).await;
        let (s, h, body) = post_login(&c, &node.base, &t, "olga", PW, next).await;
        assert_eq!(s, 303, "{next:?}: {body}");
        assert_eq!(h["location"], "/", "{next:?}");
    }
    let t = login_token(&c, &node.base).await;
    let (s, h, _) = post_login(&c, &node.base, &t, "olga", PW, "/scans/X-1?j=1").await;
    assert_eq!(
        (s, h["location"].to_str().unwrap()),
        (303, "/scans/X-1?j=1")
    );
    // The login page never carries such a destination into its form either.
    let page = c
        .get(format!("{}/login?next=/%09/evil.example", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("evil.example"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_control_character_user_names_go_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "olga", Role::Operator).await;
    let c = client_from(3);
    let t = login_token(&c, &node.base).await;
    let huge = "a".repeat(1_500_000);
    let long = "b".repeat(65);
    for name in [
        huge.as_str(),
        "olga\nINFO forged line",
        "olga\u{1b}[2J",
        long.as_str(),
    ] {
        for _ in 0..8 {
            let (s, _, body) = post_login(&c, &node.base, &t, name, "whatever-pass", "/").await;
            assert_eq!(s, 400, "{}", &body[..body.len().min(300)]);
            assert!(
                body.contains("64 characters"),
                "the refusal says what is wrong"
            );
        }
    }
    // Not counted (the limiter keeps no such keys), not audited.
    let (s, _, _) = post_login(&c, &node.base, &t, "olga", "wrong-but-plain", "/").await;
    assert_eq!(s, 401);
    let c2 = open_db(&node.data);
    let longest: i64 = c2
        .query_row(
            "SELECT coalesce(max(length(subject)), 0) FROM audit WHERE action = 'login.failed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(longest <= 5 + 64, "{longest}");
    let forged: i64 = c2
        .query_row(
            "SELECT count(*) FROM audit WHERE subject LIKE '%forged%' OR actor LIKE '%forged%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(forged, 0);
}

#[test]
fn the_daemon_logs_neither_huge_nor_multi_line_user_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let daemon = Daemon::spawn(&cfg);
    let base = format!("http://{}", daemon.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client_from(1);
        let t = login_token(&c, &base).await;
        for name in ["x".repeat(1_500_000), "evil\nFAKE forged log line".into()] {
            assert_eq!(
                post_login(&c, &base, &t, &name, "pw-whatever", "/").await.0,
                400
            );
        }
        // A plain failure with a marker: once its line is out, the earlier ones are too.
        assert_eq!(
            post_login(&c, &base, &t, "marker-user", "pw-whatever", "/")
                .await
                .0,
            401
        );
    });
    let mut seen = Vec::new();
    loop {
        let line = daemon
            .stderr_lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the marker's log line");
        let done = line.contains("marker-user");
        seen.push(line);
        if done {
            break;
        }
    }
    for l in &seen {
        assert!(l.len() < 4096, "a {} byte log line", l.len());
        assert!(!l.contains("FAKE forged"), "{l}");
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "one JSON object per line: {l}"
        );
    }
    assert!(seen.iter().any(|l| l.contains("malformed user name")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_password_at_the_ui_login_is_just_a_failed_login() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "scan1", Role::Scanner).await;
    let c = client_from(1);
    let t = login_token(&c, &node.base).await;
    let (right_status, _, right_body) = post_login(&c, &node.base, &t, "scan1", PW, "/").await;
    let (wrong_status, _, wrong_body) =
        post_login(&c, &node.base, &t, "scan1", "not-the-password", "/").await;
    assert_eq!((right_status, wrong_status), (401, 401));
    let strip = |b: &str| b.replace(&t, "");
    assert_eq!(strip(&right_body), strip(&wrong_body), "no oracle");
    let failed: Vec<_> = audit_actions(&node.data, "user:scan1")
        .into_iter()
        .filter(|(a, _)| a == "login.failed")
        .collect();
    assert_eq!(failed.len(), 2, "both counted and audited: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_messages_are_codes_and_the_disk_full_answer_names_no_path() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "olga", Role::Operator).await;
    let admin = login(&node.base, TEST_ADMIN, TEST_PASSWORD).await;
    let page = |q: &'static str| {
        let admin = admin.clone();
        let base = node.base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/admin/users{q}"))
                .headers(admin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let phish = page("?done=Your+session+expired.+Re-enter+your+password+at+evil.example").await;
    assert!(!phish.contains("evil.example"), "free text is never shown");
    assert!(!phish.contains("Re-enter"));
    let made = page("?done=created&user=olga").await;
    assert!(made.contains("Created olga."), "a known code is");
    let odd = page("?done=created&user=%3Cb%3Eevil.example").await;
    assert!(
        !odd.contains("evil.example"),
        "and only with a real user name"
    );

    // The 507 of a full disk says what to do, not where the data lives.
    use axum::response::IntoResponse;
    let full = riac_node::ingest::IngestError::DiskFull(riac_node::retention::DiskFull {
        dir: "/srv/secret-layout/riac".into(),
        free_mb: 1,
        floor_mb: 2048,
    });
    let resp = riac_node::web::AppError::from(full).into_response();
    assert_eq!(resp.status(), 507);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("secret-layout"), "{body}");
    assert!(body.contains("disk is full"), "{body}");
}

/// `riac-node user ...` on the node's data dir (the node is running: SQLite shares it).
fn user_cli(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_end_with_a_password_change_and_can_be_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    add_user(&node, "olga", Role::Operator).await;
    let store = &node.node.as_ref().unwrap().store;
    let bearer = |tok: &str| {
        let tok = tok.to_string();
        let base = node.base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/api/v1/scans"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let t1 = accounts::create_token(store, "cli", "olga", "laptop", None)
        .await
        .unwrap();
    assert_eq!(bearer(&t1.token).await, 200);

    // An admin resets olga's password on the users page: the token is dead.
    let admin = login(&node.base, TEST_ADMIN, TEST_PASSWORD).await;
    let r = client_from(1)
        .post(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .form(&[
            ("action", "password"),
            ("username", "olga"),
            ("password", "a-brand-new-pass"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(bearer(&t1.token).await, 401, "revoked by the reset");

    // The CLI lists tokens by id (never the value) and revokes one.
    let t2 = accounts::create_token(store, "cli", "olga", "ci-job", Some(30))
        .await
        .unwrap();
    assert!(t2.expires_at.is_some());
    let (ok, out) = user_cli(&node.data, &["tokens", "olga"]);
    assert!(ok, "{out}");
    assert!(out.contains(&t1.id) && out.contains("revoked"), "{out}");
    assert!(out.contains(&t2.id) && out.contains("active"), "{out}");
    assert!(!out.contains(&t2.token), "never the value: {out}");
    assert_eq!(bearer(&t2.token).await, 200);
    let (ok, out) = user_cli(&node.data, &["revoke-token", &t2.id]);
    assert!(ok && out.contains("revoked"), "{out}");
    assert_eq!(bearer(&t2.token).await, 401);
    let (ok, out) = user_cli(&node.data, &["revoke-token", "nonsense"]);
    assert!(!ok && out.contains("12 hex digits"), "{out}");
    let (ok, out) = user_cli(
        &node.data,
        &[
            "token",
            "olga",
            "--label",
            "cli-made",
            "--expires-days",
            "7",
        ],
    );
    assert!(ok && out.contains("expires 20"), "{out}");
    let cli_token = out.lines().next().unwrap().trim().to_string();
    assert_eq!(bearer(&cli_token).await, 200);
    let (ok, out) = user_cli(&node.data, &["token", "olga", "--expires-days", "0"]);
    assert!(!ok && out.contains("expires-days"), "{out}");

    // The admin page lists tokens and revokes one.
    let t3 = accounts::create_token(store, "cli", "olga", "kiosk", None)
        .await
        .unwrap();
    let page = reqwest::Client::new()
        .get(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&t3.id) && page.contains("kiosk"), "{page}");
    assert!(!page.contains(&t3.token));
    let r = client_from(1)
        .post(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .form(&[
            ("action", "revoke-token"),
            ("username", "olga"),
            ("token_id", t3.id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(bearer(&t3.token).await, 401);
    // A token made on the page may expire; a nonsense expiry is refused by name.
    let made = client_from(1)
        .post(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .form(&[
            ("action", "token"),
            ("username", "olga"),
            ("label", "page"),
            ("expires_days", "14"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        made.contains("new-token") && made.contains("expires"),
        "{made}"
    );
    let r = client_from(1)
        .post(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .header("accept", "application/json")
        .form(&[
            ("action", "token"),
            ("username", "olga"),
            ("expires_days", "forever"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("expires_days"));
    let trail = audit_actions(&node.data, "user:olga");
    assert!(trail.iter().any(|(a, _)| a == "user.token_revoked"));

    // An expired token is refused (its expiry moved into the past in the database).
    let t4 = accounts::create_token(store, "cli", "olga", "short", Some(1))
        .await
        .unwrap();
    assert_eq!(bearer(&t4.token).await, 200);
    open_db_rw(&node.data)
        .execute(
            "UPDATE api_tokens SET expires_at = '2001-01-01T00:00:00.000Z' WHERE substr(token_hash, 1, 12) = ?1",
            [&t4.id],
        )
        .unwrap();
    assert_eq!(bearer(&t4.token).await, 401);
}

fn open_db_rw(data: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data.join("riac-node.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_text_and_lists_are_bounded_and_control_characters_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(16);
    let d = sim.next_drop();
    let image = d.encode_image();
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "vehicle_plate",
            Box::new(|v| v["vehicle_plate"] = "P".repeat(100_000).into()),
        ),
        (
            "vehicle_plate",
            Box::new(|v| v["vehicle_plate"] = "TLH\u{1b}[31m4471".into()),
        ),
        (
            "vehicle_plate",
            Box::new(|v| v["vehicle_plate"] = "TLH\r\n4471".into()),
        ),
        (
            "declaration.goods[0].description",
            Box::new(|v| v["declaration"]["goods"][0]["description"] = "cars\u{0}".into()),
        ),
        (
            "declaration.goods[0].description",
            Box::new(|v| v["declaration"]["goods"][0]["description"] = "d".repeat(5000).into()),
        ),
        (
            "declaration.goods",
            Box::new(|v| {
                let line = serde_json::json!({"hs_code": "8703", "description": "x"});
                v["declaration"]["goods"] = serde_json::Value::Array(vec![line; 1000]);
            }),
        ),
        (
            "sidecar",
            Box::new(|v| v["vendor_blob"] = "z".repeat(400_000).into()),
        ),
    ];
    for (field, change) in cases {
        let mut sc = d.sidecar.clone();
        change(&mut sc);
        let (s, body) = node
            .post_drop(&serde_json::to_vec(&sc).unwrap(), Some(image.clone()))
            .await;
        assert_eq!(s, 422, "{field}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(
            body.to_string().len() < 1000,
            "the answer does not echo the field: {} bytes",
            body.to_string().len()
        );
    }
    let (_, rejects) = node.get_json("/api/v1/rejects").await;
    assert!(
        rejects.to_string().len() < 20_000,
        "nor does the rejects list"
    );
    // The drop itself, within every bound, is stored.
    node.post_stored(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_a_centre_key_needs_explicit_consent_shown_on_the_status_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = riac_node::config::RawConfig::default();
    raw.node.node_id = Some("N1".into());
    raw.node.site_id = Some("KHI".into());
    raw.uplink.broker = Some("mqtts://127.0.0.1:1".into());
    let ov = riac_node::config::Overrides {
        data_dir: Some(dir.path().join("data")),
        ..Default::default()
    };
    let e = riac_node::config::Config::from_raw(raw, &ov)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uplink.centre_public_key") && e.contains("allow_unsigned_commands = true"),
        "{e}"
    );

    // Consent given: the node runs, and the status page says what it means.
    let mut cfg = test_config(dir.path());
    let up = riac_node::uplink::config::RawUplink {
        broker: Some("mqtt://127.0.0.1:1".into()),
        allow_plain: Some(true),
        allow_unsigned_commands: Some(true),
        ..Default::default()
    };
    cfg.uplink =
        riac_node::uplink::config::validate(up, None, &cfg.data_dir, &cfg.node_id, &cfg.site_id)
            .unwrap();
    let node = TestNode::start_with(cfg).await;
    let page = node.get_text("/status").await;
    assert!(
        page.contains("unsigned-commands") && page.contains("accepted unsigned"),
        "{page}"
    );
    let (_, up) = node.get_json("/api/v1/uplink").await;
    assert_eq!(up["commands_require_signature"], false, "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_from_user_add_changes_its_password_first_and_idle_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    cli_user_add(&node.data, "nina", "operator", "typed-by-admin-1");

    let h = login(&node.base, "nina", "typed-by-admin-1").await;
    let c = client_from(1);
    let r = c
        .get(format!("{}/", node.base))
        .headers(h.clone())
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/account");
    let r = c
        .get(format!("{}/api/v1/scans", node.base))
        .headers(h.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{}/account", node.base))
        .headers(h.clone())
        .form(&[
            ("current", "typed-by-admin-1"),
            ("new", "my-own-secret-9"),
            ("repeat", "my-own-secret-9"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let h = login(&node.base, "nina", "my-own-secret-9").await;
    let r = c
        .get(format!("{}/api/v1/scans", node.base))
        .headers(h.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "free to work once the password is hers");

    // A session unused for longer than web.session_idle_minutes is over (its last use
    // moved back in the database rather than waiting an hour).
    open_db_rw(&node.data)
        .execute(
            "UPDATE sessions SET last_seen_at = '2001-01-01T00:00:00.000Z', created_at = '2001-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
    let r = c
        .get(format!("{}/api/v1/scans", node.base))
        .headers(h)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_that_held_still_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut sim = sim(17);
    let mut d = sim.next_drop();
    d.sidecar["vehicle_plate"] = "<script>x</script>".into();
    node.post_stored(&d).await;
    let anon = client_from(4);
    // No session: pages send to the login, the API answers 401, writes are refused.
    for path in ["/", "/status", "/audit", "/admin/users", "/account"] {
        let r = anon
            .get(format!("{}{path}", node.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
    }
    for path in ["/api/v1/scans", "/api/v1/status", "/api/v1/rejects"] {
        let r = anon
            .get(format!("{}{path}", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // A session without its CSRF token may not change anything.
    let mut admin = login(&node.base, TEST_ADMIN, TEST_PASSWORD).await;
    admin.remove("x-csrf-token");
    let r = anon
        .post(format!("{}/admin/users", node.base))
        .headers(admin.clone())
        .form(&[("action", "disable"), ("username", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Traversal out of /static, SQL in a filter.
    let r = node
        .client
        .get(format!("{}/static/..%2f..%2fCargo.toml", node.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let (s, list) = node
        .get_json("/api/v1/scans?container=%27%20OR%201%3D1--")
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["scans"].as_array().unwrap().len(), 0, "{list}");
    // Stored markup is shown as text.
    let rows = node.get_text("/queue/rows").await;
    assert!(!rows.contains("<script>x"), "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_is_refused_as_it_arrives_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.ingest.limits.max_file_bytes = 1 << 20;
    let node = TestNode::start_with(cfg).await;
    let mut sim = sim(18);
    let d = sim.next_drop();
    // The body says 3 MiB of image are coming, but only a little over 1 MiB is ever sent:
    // the answer can only arrive if the node refuses the part as its bytes pass the limit
    // (a node that buffered the part first would wait for the rest, and the 30 s guard
    // below would fail the test).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let boundary = "riac-test-boundary";
    let sidecar = serde_json::to_vec(&d.sidecar).unwrap();
    let mut head =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"sidecar\"\r\n\r\n")
            .into_bytes();
    head.extend_from_slice(&sidecar);
    head.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        )
        .as_bytes(),
    );
    let declared_image = 3usize << 20;
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() + declared_image + tail.len();
    let addr = node.base.trim_start_matches("http://").to_string();
    let token = &node.admin.2;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /api/v1/scans HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        sock.write_all(&head).await.unwrap();
        // A little over the 1 MiB limit, in chunks, never the rest.
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..17 {
            if sock.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let mut buf = Vec::new();
        let _ = sock.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("no answer before the whole body was sent: the part was buffered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("image") && answer.contains("ingest.max_file_mb"),
        "{answer}"
    );
    let uploads = node.data.join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
    // A drop within the limit still goes through the same path.
    node.post_stored(&d).await;
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left: {left:?}");
}
