//! Router tests with `oneshot`: every route's access rule (anonymous, wrong role, right
//! role), CSRF refusals, clear 4xx answers naming the field, decisions and their chain and
//! audit, login with rate limiting, and that no response carries internal error text.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::accounts::{create_token, create_user, new_secret, secret_hash};
use super::{router, AppState};
use crate::config::{Config, Overrides};
use crate::ingest::{DropData, Ingestor, Source};
use crate::metrics::Metrics;
use crate::pipeline::{auto_verdict, NodeIdentity};
use crate::sim::{SimOptions, Simulator};
use crate::store::users::{self, Role};
use crate::store::{self, Store};

struct Fx {
    _dir: tempfile::TempDir,
    st: AppState,
    /// A single scan and a transit exit scan, both with their automatic verdict.
    single: String,
    exit: String,
    /// Bearer tokens by role.
    tokens: std::collections::HashMap<Role, String>,
    /// A logged-in operator's session cookie value and CSRF token.
    op_cookie: String,
    op_csrf: String,
}

const PW: &str = "long-enough-password";

async fn ingest(st: &AppState, d: &crate::sim::SimDrop) {
    let sidecar = serde_json::to_vec(&d.sidecar).unwrap();
    let meta = st.ingestor.parse_sidecar(&sidecar).unwrap();
    st.ingestor
        .ingest(
            meta,
            DropData {
                sidecar,
                image: d.encode_image(),
                low: None,
            },
            Source::Http,
        )
        .await
        .unwrap();
    let id = d.scan_id.clone();
    let scan = st
        .store
        .read(move |c| store::scans::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    let me = NodeIdentity {
        node_id: st.cfg.node_id.clone(),
        site_id: st.cfg.site_id.clone(),
    };
    let v = auto_verdict(
        &scan,
        &me,
        crate::matching::not_run(
            crate::matching::declared_codes(scan.sidecar.as_ref()),
            "no model in this test",
        ),
        None,
    );
    let topic = me.verdict_topic();
    let key = st.node_key.clone();
    st.store
        .write(move |t| {
            let signer = key
                .as_deref()
                .map(|k| k as &dyn store::verdicts::VerdictSigner);
            store::verdicts::insert_with_outbox(t, v, &topic, signer)
        })
        .await
        .unwrap();
}

async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::defaults(&Overrides {
        data_dir: Some(dir.path().join("data")),
        hot_folder: Some(dir.path().join("hot")),
        ..Default::default()
    })
    .unwrap();
    cfg.web.login_max_failures = 3;
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let store = Store::open(&cfg.db_path()).unwrap();
    let metrics = Metrics::new();
    // The pipeline is not running: verdicts are written by `ingest` above.
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let ingestor = Ingestor::new(&cfg, store.clone(), metrics.clone(), tx);
    let mut st = AppState::new(Arc::new(cfg), store.clone(), ingestor, metrics);
    st.node_key = Some(Arc::new(
        crate::uplink::keys::NodeKey::generate(&dir.path().join("node.key")).unwrap(),
    ));

    let mut sim = Simulator::new(SimOptions {
        seed: 5,
        resolution_scale: 0.12,
        ..SimOptions::default()
    });
    let pair = sim.next_transit_pair();
    let single = sim.next_drop();
    for d in [&single, &pair.entry, &pair.exit] {
        ingest(&st, d).await;
    }

    let mut tokens = std::collections::HashMap::new();
    for (name, role) in [
        ("ada", Role::Admin),
        ("sam", Role::Supervisor),
        ("olga", Role::Operator),
        ("otto", Role::Operator),
        ("scan1", Role::Scanner),
    ] {
        create_user(&store, "cli", name, role, PW).await.unwrap();
        if name != "otto" {
            tokens.insert(
                role,
                create_token(&store, "cli", name, "t", None)
                    .await
                    .unwrap()
                    .token,
            );
        }
    }
    let (op_cookie, op_csrf) = (new_secret(), new_secret());
    let (h, c) = (secret_hash(&op_cookie), op_csrf.clone());
    store
        .write(move |t| {
            let (u, _) = users::find(t, "olga")?.unwrap();
            users::create_session(t, &h, u.id, &c, "2999-01-01T00:00:00.000Z", "test")
        })
        .await
        .unwrap();
    Fx {
        _dir: dir,
        st,
        single: single.scan_id,
        exit: pair.exit.scan_id,
        tokens,
        op_cookie,
        op_csrf,
    }
}

impl Fx {
    fn app(&self) -> Router {
        router(self.st.clone())
    }
    fn bearer(&self, role: Role) -> String {
        format!("Bearer {}", self.tokens[&role])
    }
    fn cookie(&self) -> String {
        format!("riac_session={}", self.op_cookie)
    }
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

async fn send(app: Router, req: Request<Body>) -> Resp {
    let r = app.oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

/// Every route, as (method, path, body content type, body). Paths use the fixture's ids.
fn routes(fx: &Fx) -> Vec<(Method, String, &'static str, String)> {
    let s = &fx.single;
    let e = &fx.exit;
    let decision = r#"{"choice":"inspect","note":"looks odd"}"#.to_string();
    vec![
        (Method::GET, "/".into(), "", String::new()),
        (Method::GET, "/queue/rows".into(), "", String::new()),
        (Method::GET, format!("/scans/{s}"), "", String::new()),
        (
            Method::GET,
            format!("/scans/{e}/transit"),
            "",
            String::new(),
        ),
        (
            Method::POST,
            format!("/scans/{s}/decision"),
            "application/x-www-form-urlencoded",
            "choice=clear&note=fine".into(),
        ),
        (Method::GET, "/status".into(), "", String::new()),
        (Method::GET, "/audit".into(), "", String::new()),
        (Method::GET, "/account".into(), "", String::new()),
        (
            Method::POST,
            "/account".into(),
            "application/x-www-form-urlencoded",
            "current=x&new=y&repeat=y".into(),
        ),
        (Method::GET, "/admin/users".into(), "", String::new()),
        (
            Method::POST,
            "/admin/users".into(),
            "application/x-www-form-urlencoded",
            "action=enable&username=otto".into(),
        ),
        (Method::POST, "/logout".into(), "", String::new()),
        (Method::GET, "/api/v1/scans".into(), "", String::new()),
        (
            Method::POST,
            "/api/v1/scans".into(),
            "text/plain",
            "x".into(),
        ),
        (Method::GET, format!("/api/v1/scans/{s}"), "", String::new()),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/image.png?max_width=64"),
            "",
            String::new(),
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/image16.png"),
            "",
            String::new(),
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/samples"),
            "",
            String::new(),
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{e}/transit/entry.png"),
            "",
            String::new(),
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            "application/json",
            decision,
        ),
        (Method::GET, "/api/v1/rejects".into(), "", String::new()),
        (Method::GET, "/api/v1/status".into(), "", String::new()),
        (Method::GET, "/api/v1/events".into(), "", String::new()),
        (
            Method::POST,
            "/exports".into(),
            "application/x-www-form-urlencoded",
            format!("by=scan&value={s}"),
        ),
        (
            Method::POST,
            "/api/v1/exports".into(),
            "application/json",
            format!(r#"{{"by":"scan","value":"{s}"}}"#),
        ),
    ]
}

fn build(m: &Method, path: &str, ct: &str) -> axum::http::request::Builder {
    let mut b = req(m.clone(), path);
    if !ct.is_empty() {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_login_and_the_right_role() {
    let fx = fixture().await;
    for (m, path, ct, body) in routes(&fx) {
        // Anonymous: pages redirect to the login page, the API answers 401.
        let r = send(
            fx.app(),
            build(&m, &path, ct)
                .header(header::ACCEPT, "text/html")
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
        if m == Method::GET && !path.starts_with("/api/") {
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{m} {path}");
            let loc = r.headers[header::LOCATION].to_str().unwrap();
            assert!(
                loc.starts_with("/login?next=%2F") || loc.starts_with("/login?next=/"),
                "{loc}"
            );
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {path}: {}", r.body);
        }
        // A scanner account may only upload.
        let r = send(
            fx.app(),
            build(&m, &path, ct)
                .header(header::AUTHORIZATION, fx.bearer(Role::Scanner))
                .body(Body::from(body.clone()))
                .unwrap(),
        )
        .await;
        if path == "/api/v1/scans" && m == Method::POST {
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "upload reaches the handler: {}",
                r.body
            );
        } else if path == "/logout" || path == "/account" {
            assert_ne!(r.status, StatusCode::FORBIDDEN, "{m} {path}");
        } else {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path}: {}", r.body);
            assert!(r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("scanner"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_see_what_they_may_and_nothing_more() {
    let fx = fixture().await;
    let admin_only = ["/admin/users"];
    let supervisor_only = ["/audit"];
    // (The event stream never ends and the entry image needs a transit result: both are
    // tested on their own below.)
    for (m, path, _, _) in routes(&fx)
        .into_iter()
        .filter(|r| r.0 == Method::GET && !r.1.ends_with("/events") && !r.1.ends_with("entry.png"))
    {
        for role in [Role::Operator, Role::Supervisor, Role::Admin] {
            let r = send(
                fx.app(),
                req(m.clone(), &path)
                    .header(header::AUTHORIZATION, fx.bearer(role))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            let want_forbidden = (admin_only.contains(&path.as_str()) && role != Role::Admin)
                || (supervisor_only.contains(&path.as_str()) && role < Role::Supervisor);
            if want_forbidden {
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{role:?} GET {path}");
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{role:?} GET {path}: {}",
                    r.body.get(..300).unwrap_or(&r.body)
                );
            }
        }
    }
    // Uploads: operators and supervisors may not, admins may (the body is refused later).
    for (role, want) in [
        (Role::Operator, StatusCode::FORBIDDEN),
        (Role::Supervisor, StatusCode::FORBIDDEN),
        (Role::Admin, StatusCode::BAD_REQUEST),
    ] {
        let r = send(
            fx.app(),
            req(Method::POST, "/api/v1/scans")
                .header(header::AUTHORIZATION, fx.bearer(role))
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, want, "{role:?} upload: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_requests_that_change_state_need_the_csrf_token() {
    let fx = fixture().await;
    for (m, path, ct, body) in routes(&fx).into_iter().filter(|r| r.0 == Method::POST) {
        // No token, and a wrong token, in the form and in the header.
        for (extra_header, extra_body) in [
            (None, String::new()),
            (Some("0".repeat(64)), String::new()),
            (None, format!("&csrf={}", "0".repeat(64))),
        ] {
            let mut b = build(&m, &path, ct).header(header::COOKIE, fx.cookie());
            if let Some(h) = &extra_header {
                b = b.header("x-csrf-token", h);
            }
            let r = send(
                fx.app(),
                b.body(Body::from(format!("{body}{extra_body}"))).unwrap(),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{m} {path} {extra_header:?} {extra_body}: {}",
                r.body
            );
        }
    }
    // With the right token in the form, the operator's decision goes through.
    let r = send(
        fx.app(),
        req(Method::POST, &format!("/scans/{}/decision", fx.single))
            .header(header::COOKIE, fx.cookie())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "csrf={}&choice=clear&note=checked+the+image",
                fx.op_csrf
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    // And in the header, for scripts.
    let r = send(
        fx.app(),
        req(
            Method::POST,
            &format!("/api/v1/scans/{}/decisions", fx.exit),
        )
        .header(header::COOKIE, fx.cookie())
        .header("x-csrf-token", &fx.op_csrf)
        .body(Body::from(r#"{"choice":"escalate","note":"odd shape"}"#))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // API tokens are not sent by browsers on their own: no CSRF token needed.
    let r = send(
        fx.app(),
        req(
            Method::POST,
            &format!("/api/v1/scans/{}/decisions", fx.exit),
        )
        .header(header::AUTHORIZATION, fx.bearer(Role::Supervisor))
        .body(Body::from(r#"{"choice":"clear","note":"seen it"}"#))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_a_clear_4xx_naming_the_field() {
    let fx = fixture().await;
    let s = &fx.single;
    let cases: Vec<(Method, String, String, StatusCode, Option<&str>)> = vec![
        (
            Method::GET,
            "/?outcome=maybe".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("outcome"),
        ),
        (
            Method::GET,
            "/queue/rows?review=later".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("review"),
        ),
        (
            Method::GET,
            "/?limit=0".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            Method::GET,
            "/scans/..%2Fetc".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("scan_id"),
        ),
        (
            Method::GET,
            "/scans/NOPE-1".into(),
            String::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            "/scans/NOPE-1/transit".into(),
            String::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            "/api/v1/scans/NOPE-1/samples".into(),
            String::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/image.png?width=0"),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("width"),
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/image.png?max_width=wide"),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("max_width"),
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/transit/entry.png"),
            String::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/scans/{s}/transit/entry.png?invert=2"),
            String::new(),
            StatusCode::BAD_REQUEST,
            Some("invert"),
        ),
        (
            Method::GET,
            "/static/nope.js".into(),
            String::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            "not json".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            r#"{"choice":"release","note":"x y z"}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("choice"),
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            r#"{"choice":"clear","note":"  "}"#.into(),
            StatusCode::BAD_REQUEST,
            Some("note"),
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            format!(r#"{{"choice":"clear","note":"{}"}}"#, "x".repeat(2001)),
            StatusCode::BAD_REQUEST,
            Some("note"),
        ),
        (
            Method::POST,
            "/api/v1/scans/NOPE-1/decisions".into(),
            r#"{"choice":"clear","note":"x y z"}"#.into(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/scans/{s}/decisions"),
            r#"{"choice":"clear","note":"x y z","supersedes":"0000"}"#.into(),
            StatusCode::CONFLICT,
            None,
        ),
    ];
    for (m, path, body, want, field) in cases {
        let r = send(
            fx.app(),
            req(m.clone(), &path)
                .header(header::AUTHORIZATION, fx.bearer(Role::Admin))
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, want, "{m} {path}: {}", r.body);
        let j = r.json();
        let msg = j["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{path}: a message is given: {}", r.body);
        assert!(!msg.contains("internal"), "{path}: {msg}");
        if let Some(f) = field {
            assert_eq!(j["error"]["field"], f, "{path}: {}", r.body);
        }
    }
    // A browser asking for a page gets the same refusal as a page, not JSON.
    let r = send(
        fx.app(),
        req(Method::GET, "/scans/NOPE-1")
            .header(header::AUTHORIZATION, fx.bearer(Role::Admin))
            .header(header::ACCEPT, "text/html")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        r.body.contains("NOPE-1 is not stored on this node"),
        "{}",
        r.body
    );
}

async fn verdicts_of(fx: &Fx, id: &str) -> Vec<crate::scan::verdict::Verdict> {
    let id = id.to_string();
    fx.st
        .store
        .read(move |c| store::verdicts::history_for_scan(c, &id))
        .await
        .unwrap()
}

async fn decide(fx: &Fx, who: Role, id: &str, body: &str) -> Resp {
    send(
        fx.app(),
        req(Method::POST, &format!("/api/v1/scans/{id}/decisions"))
            .header(header::AUTHORIZATION, fx.bearer(who))
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_supersedes_the_verdict_joins_the_chain_and_is_audited() {
    let fx = fixture().await;
    let before = verdicts_of(&fx, &fx.single).await;
    assert_eq!(before.len(), 1);
    let auto = &before[0];
    let outbox0 = fx
        .st
        .store
        .read(store::verdicts::outbox_depth)
        .await
        .unwrap();

    let r = decide(
        &fx,
        Role::Operator,
        &fx.single,
        &format!(
            r#"{{"choice":"inspect","note":"dense block behind the cab","supersedes":"{}"}}"#,
            auto.verdict_id
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let v = r.json();
    assert_eq!(v["outcome"], "refer");
    assert_eq!(v["decided_by"], "olga");
    assert_eq!(v["supersedes"], auto.verdict_id.as_str());
    assert_eq!(v["note"], "dense block behind the cab");
    assert_eq!(
        v["manifest"],
        serde_json::to_value(&auto.manifest).unwrap(),
        "evidence carried over"
    );
    let after = verdicts_of(&fx, &fx.single).await;
    assert_eq!(after.len(), 2);
    let all_hashes: Vec<String> = fx
        .st
        .store
        .read(|c| {
            let mut st = c.prepare("SELECT hash FROM verdicts ORDER BY seq")?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(v)
        })
        .await
        .unwrap();
    assert_eq!(
        after[1].prev_hash,
        all_hashes[all_hashes.len() - 2],
        "linked to the previous verdict of the node"
    );
    assert_eq!(
        fx.st
            .store
            .read(store::verdicts::outbox_depth)
            .await
            .unwrap(),
        outbox0 + 1
    );
    let id = fx.single.clone();
    let trail = fx
        .st
        .store
        .read(move |c| store::audit::for_subject(c, &id))
        .await
        .unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("olga", "verdict.decided")
    );
    assert_eq!(last.detail["note"], "dense block behind the cab");
    assert_eq!(fx.st.store.read(store::audit::verify).await.unwrap(), None);

    // The same stale view again: refused, nothing stacked on top.
    let r = decide(
        &fx,
        Role::Operator,
        &fx.single,
        &format!(
            r#"{{"choice":"clear","note":"again","supersedes":"{}"}}"#,
            auto.verdict_id
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("olga"));
    // Another operator may not override olga; a supervisor may.
    let otto = create_token(&fx.st.store, "cli", "otto", "t", None)
        .await
        .unwrap()
        .token;
    let r = send(
        fx.app(),
        req(
            Method::POST,
            &format!("/api/v1/scans/{}/decisions", fx.single),
        )
        .header(header::AUTHORIZATION, format!("Bearer {otto}"))
        .body(Body::from(r#"{"choice":"clear","note":"I disagree"}"#))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("supervisor"));
    let r = decide(
        &fx,
        Role::Supervisor,
        &fx.single,
        r#"{"choice":"escalate","note":"supervisor: escalate"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["outcome"], "alert");
    assert_eq!(verdicts_of(&fx, &fx.single).await.len(), 3);
    // The JSON API shows the whole history.
    let r = send(
        fx.app(),
        req(Method::GET, &format!("/api/v1/scans/{}", fx.single))
            .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let j = r.json();
    assert_eq!(j["verdict"]["decided_by"], "sam");
    assert_eq!(j["verdict_history"].as_array().unwrap().len(), 3);
    // And the page's history names who and when.
    let r = send(
        fx.app(),
        req(Method::GET, &format!("/scans/{}", fx.single))
            .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(
        r.body.contains("supervisor: escalate") && r.body.contains("dense block behind the cab")
    );
    assert!(r.body.contains("verdict.decided"));
}

async fn login_form(fx: &Fx, user: &str, password: &str) -> Resp {
    let page = send(
        fx.app(),
        req(Method::GET, "/login").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    let set = page.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "no TLS in this fixture: {set}");
    let token = set
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    send(
        fx.app(),
        req(Method::POST, "/login")
            .header(header::COOKIE, format!("riac_login={token}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "username={user}&password={password}&csrf={token}&next=%2Fstatus"
            )))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_session_cookie_is_rate_limited_and_audited() {
    let fx = fixture().await;
    let r = login_form(&fx, "sam", PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/status");
    let session = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("riac_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("Path=/"),
        "{session}"
    );
    let cookie = session.split(';').next().unwrap().to_string();
    let page = send(
        fx.app(),
        req(Method::GET, "/status")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    assert!(page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));

    // A login form without its cookie (posted from elsewhere) is refused.
    let r = send(
        fx.app(),
        req(Method::POST, "/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("username=sam&password={PW}&csrf=abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Three failures (the fixture's limit), then even the right password waits.
    for _ in 0..3 {
        assert_eq!(
            login_form(&fx, "olga", "wrong-password-x").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = login_form(&fx, "olga", PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // The limit is per (address, name): another name from this address is only
    // checked (and fails), and the address as a whole has four times the limit.
    assert_eq!(
        login_form(&fx, "nobody", PW).await.status,
        StatusCode::UNAUTHORIZED,
    );

    let trail = fx
        .st
        .store
        .read(|c| store::audit::for_subject(c, "user:olga"))
        .await
        .unwrap();
    assert_eq!(
        trail.iter().filter(|e| e.action == "login.failed").count(),
        3
    );
    let trail = fx
        .st
        .store
        .read(|c| store::audit::for_subject(c, "user:sam"))
        .await
        .unwrap();
    assert!(trail.iter().any(|e| e.action == "login"));

    // Logging out ends the session.
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = send(
        fx.app(),
        req(Method::POST, "/logout")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = send(
        fx.app(),
        req(Method::GET, "/api/v1/scans")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_account_cannot_log_in_and_a_disabled_user_is_out_at_once() {
    let fx = fixture().await;
    // A scanner account's right password answers like any failed login (no oracle).
    let r = login_form(&fx, "scan1", PW).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.body.contains("scanner"), "{}", r.body);
    // Disabling olga ends her session and her token immediately.
    super::accounts::set_disabled(&fx.st.store, "ada", "olga", true)
        .await
        .unwrap();
    for auth in [
        (header::COOKIE, fx.cookie()),
        (header::AUTHORIZATION, fx.bearer(Role::Operator)),
    ] {
        let r = send(
            fx.app(),
            req(Method::GET, "/api/v1/scans")
                .header(auth.0, auth.1)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_accounts_through_the_page() {
    let fx = fixture().await;
    let post = |body: String| {
        req(Method::POST, "/admin/users")
            .header(header::AUTHORIZATION, fx.bearer(Role::Admin))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    let r = send(
        fx.app(),
        post("action=add&username=Nadia&role=supervisor&password=another-long-one".into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = send(
        fx.app(),
        post("action=add&username=nadia&role=operator&password=another-long-one".into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = send(
        fx.app(),
        post("action=add&username=x&role=operator&password=another-long-one".into()),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("username"))
    );
    let r = send(
        fx.app(),
        post("action=add&username=nina&role=king&password=another-long-one".into()),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "role");
    let r = send(
        fx.app(),
        post("action=add&username=nina&role=operator&password=short".into()),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "password");
    let r = send(
        fx.app(),
        post("action=token&username=nadia&label=workstation".into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("riac_"), "the token is shown once");
    let r = send(
        fx.app(),
        post("action=role&username=ada&role=operator".into()),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "the last admin stays: {}",
        r.body
    );
    let r = send(fx.app(), post("action=explode&username=ada".into())).await;
    assert_eq!(r.json()["error"]["field"], "action");
    let trail = fx
        .st
        .store
        .read(|c| store::audit::for_subject(c, "user:nadia"))
        .await
        .unwrap();
    let acts: Vec<_> = trail
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        acts,
        [("ada", "user.created"), ("ada", "user.token_created")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_the_stored_16_bit_image_exactly() {
    let fx = fixture().await;
    let r = fx
        .app()
        .oneshot(
            req(Method::GET, &format!("/api/v1/scans/{}/samples", fx.single))
                .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
                .header(header::ACCEPT_ENCODING, "gzip, deflate")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    let etag = r.headers()[header::ETAG].clone();
    let gz = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    let (w, h, px) = super::images::decode_samples(&raw).unwrap();
    let id = fx.single.clone();
    let scan = fx
        .st
        .store
        .read(move |c| store::scans::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    let stored = crate::imaging::decode_png16(
        &std::fs::read(
            fx.st
                .cfg
                .data_dir
                .join(&scan.image_dir)
                .join(crate::ingest::CANONICAL_IMAGE),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!((w, h), stored.dimensions());
    assert_eq!(px, stored.into_raw());
    // Unchanged since: 304. Without gzip: the plain format.
    let r = send(
        fx.app(),
        req(Method::GET, &format!("/api/v1/scans/{}/samples", fx.single))
            .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = fx
        .app()
        .oneshot(
            req(Method::GET, &format!("/api/v1/scans/{}/samples", fx.single))
                .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    let plain = axum::body::to_bytes(r.into_body(), 64 << 20).await.unwrap();
    assert_eq!(&plain[..], &raw[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_review_state_transit_absence_and_the_event_stream_speaks() {
    let fx = fixture().await;
    let get = |path: String| {
        req(Method::GET, &path)
            .header(header::AUTHORIZATION, fx.bearer(Role::Operator))
            .body(Body::empty())
            .unwrap()
    };
    let q = send(fx.app(), get("/".into())).await;
    assert_eq!(
        q.body.matches("scan-row needs-review").count(),
        3,
        "automatic refer verdicts need review"
    );
    let q = send(fx.app(), get("/queue/rows?review=needed".into())).await;
    assert_eq!(q.body.matches("<tr").count(), 3);
    let t = send(fx.app(), get(format!("/scans/{}/transit", fx.exit))).await;
    assert!(
        t.body.contains("transit-absent")
            && t.body.contains("transit check has not produced a result"),
        "{}",
        t.body
    );
    let t = send(fx.app(), get(format!("/scans/{}/transit", fx.single))).await;
    assert!(t.body.contains("transit-absent") && t.body.contains("Only the exit scan"));
    let s = send(fx.app(), get(format!("/scans/{}", fx.single))).await;
    assert!(s.body.contains("decision-form") && s.body.contains("manifest check not run"));

    let r = fx
        .app()
        .oneshot(get("/api/v1/events".into()))
        .await
        .unwrap();
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = r.into_body().into_data_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: changed"), "{text}");
    // The stream ends when the node stops, so a shutdown never waits on an open page.
    fx.st.shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(x) = body.next().await {
            x.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "stream ended on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_stay_open() {
    let fx = fixture().await;
    for path in [
        "/healthz",
        "/metrics",
        "/login",
        "/static/app.js",
        "/static/viewer.js",
        "/favicon.ico",
    ] {
        let r = send(
            fx.app(),
            req(Method::GET, path).body(Body::empty()).unwrap(),
        )
        .await;
        assert!(r.status.is_success(), "{path}: {}", r.status);
    }
    let js = send(
        fx.app(),
        req(Method::GET, &super::assets::url("app.js"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(js.headers[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_export_is_a_verifiable_download_for_supervisors_and_audited() {
    let fx = fixture().await;
    let post = |role: Role, body: String| {
        req(Method::POST, "/api/v1/exports")
            .header(header::AUTHORIZATION, fx.bearer(role))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let r = fx
        .app()
        .oneshot(post(
            Role::Supervisor,
            format!(r#"{{"by":"scan","value":"{}"}}"#, fx.single),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/zip");
    let cd = r.headers()[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cd.starts_with(&format!(
            "attachment; filename=\"evidence-scan-{}-",
            fx.single
        )),
        "{cd}"
    );
    let zip = axum::body::to_bytes(r.into_body(), 256 << 20)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.zip");
    std::fs::write(&file, &zip).unwrap();
    let key = fx.st.node_key.as_ref().unwrap().verifying_key();
    let rep = crate::export::verify(&file, Some(key)).unwrap();
    assert!(rep.ok(), "{}", rep.render());
    assert!(
        rep.verdicts_checked >= 1 && rep.files_checked >= 5,
        "{}",
        rep.render()
    );
    // Nothing is left in the data dir; the export is audited under the caller's name.
    let staging = fx.st.cfg.data_dir.join(crate::export::STAGING_DIR);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    let id = fx.single.clone();
    let audit = fx
        .st
        .store
        .read(move |c| store::audit::for_subject(c, &id))
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "evidence.exported" && a.actor == "sam"),
        "{audit:?}"
    );

    // The declaration of the transit pair selects both its scans.
    let decl = fx
        .st
        .store
        .read({
            let e = fx.exit.clone();
            move |c| store::scans::get(c, &e)
        })
        .await
        .unwrap()
        .unwrap()
        .declaration_number;
    let r = send(
        fx.app(),
        post(
            Role::Admin,
            format!(r#"{{"by":"declaration","value":"{decl}"}}"#),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Operators may not; unknown and malformed selections are named.
    let r = send(
        fx.app(),
        post(
            Role::Operator,
            format!(r#"{{"by":"scan","value":"{}"}}"#, fx.single),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = send(
        fx.app(),
        post(Role::Supervisor, r#"{"by":"scan","value":"NOPE-1"}"#.into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.body.contains("NOPE-1"), "{}", r.body);
    let r = send(
        fx.app(),
        post(Role::Supervisor, r#"{"by":"truck","value":"X"}"#.into()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "by");
    let r = send(
        fx.app(),
        post(Role::Supervisor, r#"{"by":"scan","value":"../etc"}"#.into()),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "value", "{}", r.body);

    // The scan page offers the buttons to supervisors only.
    let page = |role: Role| {
        req(Method::GET, &format!("/scans/{}", fx.single))
            .header(header::AUTHORIZATION, fx.bearer(role))
            .body(Body::empty())
            .unwrap()
    };
    let s = send(fx.app(), page(Role::Supervisor)).await;
    assert!(s.body.contains("Evidence export") && s.body.contains(r#"action="/exports""#));
    let s = send(fx.app(), page(Role::Operator)).await;
    assert!(!s.body.contains(r#"action="/exports""#));
}
