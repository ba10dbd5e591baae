//! Helpers shared by the integration tests: a node started in-process on loopback with
//! temp dirs, the real binary as a child process, simulated drops, polling.

#![allow(dead_code)]

pub mod webdriver;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use riac_node::config::{Config, Overrides};
use riac_node::sim::{SimImageFormat, SimOptions, Simulator};
use tokio_util::sync::CancellationToken;

/// Small images keep the suite fast; the decoders and pipeline do the same work per pixel.
pub const TEST_SCALE: f64 = 0.15;

pub fn sim(seed: u64) -> Simulator {
    Simulator::new(SimOptions {
        seed,
        resolution_scale: TEST_SCALE,
        ..SimOptions::default()
    })
}

pub fn sim_format(seed: u64, format: SimImageFormat) -> Simulator {
    Simulator::new(SimOptions {
        seed,
        resolution_scale: TEST_SCALE,
        format,
        ..SimOptions::default()
    })
}

pub fn test_config(dir: &Path) -> Config {
    let mut cfg = Config::defaults(&Overrides {
        data_dir: Some(dir.join("data")),
        hot_folder: Some(dir.join("hot")),
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .unwrap();
    cfg.node_id = "test-node".into();
    cfg.site_id = "KHI".into();
    cfg.ingest.settle = Duration::from_millis(150);
    cfg.ingest.rescan = Duration::from_secs(1);
    cfg.ingest.missing_image_timeout = Duration::from_secs(2);
    cfg.shutdown_deadline = Duration::from_secs(10);
    cfg
}

pub struct TestNode {
    pub node: Option<riac_node::Node>,
    pub base: String,
    pub hot: PathBuf,
    pub data: PathBuf,
    /// Sends the admin's API token with every request (the API needs a login).
    pub client: reqwest::Client,
    /// A client with no credentials, to check what anonymous callers get.
    pub anon: reqwest::Client,
    /// The admin account every test node has: (name, password, API token).
    pub admin: (String, String, String),
}

pub const TEST_ADMIN: &str = "tester";
pub const TEST_PASSWORD: &str = "test-password-1";

impl TestNode {
    pub async fn start(dir: &Path) -> TestNode {
        Self::start_with(test_config(dir)).await
    }

    pub async fn start_with(cfg: Config) -> TestNode {
        let (hot, data) = (cfg.hot_folder.clone(), cfg.data_dir.clone());
        let scheme = if cfg.web.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let node = riac_node::start(cfg, CancellationToken::new())
            .await
            .unwrap();
        use riac_node::web::accounts;
        // A restarted node on the same data dir already has the account.
        match accounts::create_user(
            &node.store,
            "cli",
            TEST_ADMIN,
            riac_node::store::users::Role::Admin,
            TEST_PASSWORD,
        )
        .await
        {
            Ok(_) | Err(accounts::AccountError::Exists(_)) => {}
            Err(e) => panic!("creating the test admin: {e}"),
        }
        let token = accounts::create_token(&node.store, "cli", TEST_ADMIN, "tests", None)
            .await
            .unwrap()
            .token;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        TestNode {
            base: format!("{scheme}://{}", node.addr),
            node: Some(node),
            hot,
            data,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .unwrap(),
            anon: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin: (TEST_ADMIN.into(), TEST_PASSWORD.into(), token),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        // Once more on a connection the server had just closed: after refusing an upload
        // before reading its body, the server closes that connection, and the client's
        // pool may hand it out again before it notices.
        let r = match self.client.get(&url).send().await {
            Err(e) if !e.is_timeout() => {
                eprintln!("GET {url}: {e}; once more on a new connection");
                self.client.get(&url).send().await.unwrap()
            }
            r => r.unwrap(),
        };
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The body of `GET path` as text (pages, `/metrics`), whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Posts a simulated drop (its sidecar and encoded image) to `POST /api/v1/scans`.
    pub async fn post_sim(&self, d: &riac_node::sim::SimDrop) -> (u16, serde_json::Value) {
        self.post_drop(
            &serde_json::to_vec(&d.sidecar).unwrap(),
            Some(d.encode_image()),
        )
        .await
    }

    /// Posts a simulated drop and asserts it was stored (201).
    pub async fn post_stored(&self, d: &riac_node::sim::SimDrop) {
        let (s, b) = self.post_sim(d).await;
        assert_eq!(s, 201, "{} not stored: {b}", d.scan_id);
    }

    pub async fn post_drop(
        &self,
        sidecar: &[u8],
        image: Option<Vec<u8>>,
    ) -> (u16, serde_json::Value) {
        let mut form = reqwest::multipart::Form::new()
            .part("sidecar", reqwest::multipart::Part::bytes(sidecar.to_vec()));
        if let Some(img) = image {
            form = form.part(
                "image",
                reqwest::multipart::Part::bytes(img).file_name("image"),
            );
        }
        let r = self
            .client
            .post(format!("{}/api/v1/scans", self.base))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// (scans, verdicts, outbox rows) straight from the database.
    pub async fn counts(&self) -> (i64, i64, i64) {
        let store = &self.node.as_ref().unwrap().store;
        store
            .read(|c| {
                let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
                Ok((
                    q("SELECT count(*) FROM scans")?,
                    q("SELECT count(*) FROM verdicts")?,
                    q("SELECT count(*) FROM outbox")?,
                ))
            })
            .await
            .unwrap()
    }

    pub async fn wait_counts(&self, want: (i64, i64, i64), timeout: Duration) {
        let start = Instant::now();
        loop {
            let c = self.counts().await;
            if c == want {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for (scans, verdicts, outbox) = {want:?}; have {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(n) = self.node.take() {
            n.token().cancel();
        }
    }
}

/// Writes a drop with this sidecar (any bytes) and image bytes under `image_name`, image
/// first and the sidecar renamed into place last, as the contract asks.
pub fn write_raw_drop(dir: &Path, stem: &str, sidecar: &[u8], image: Option<(&str, &[u8])>) {
    if let Some((name, bytes)) = image {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let tmp = dir.join(format!(".{stem}.json.tmp"));
    std::fs::write(&tmp, sidecar).unwrap();
    std::fs::rename(tmp, dir.join(format!("{stem}.json"))).unwrap();
}

pub fn sidecars_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real binary, run as a daemon with a config file.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_lines: mpsc::Receiver<String>,
}

pub fn write_daemon_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("riac-node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nnode_id = \"test-daemon\"\nsite_id = \"KHI\"\n[paths]\ndata_dir = \"{}\"\nhot_folder = \"{}\"\n[ingest]\nsettle_ms = 150\nrescan_secs = 1\n[log]\nformat = \"json\"\n",
            dir.join("data").display(),
            dir.join("hot").display()
        ),
    )
    .unwrap();
    cfg
}

impl Daemon {
    pub fn spawn(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_riac-node"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .env("RIAC_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("daemon did not log its start in 30 s");
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("log line is not JSON: {line}");
            };
            if v["message"] == "riac-node started" {
                let addr = v["addr"].as_str().unwrap().parse().unwrap();
                return Daemon {
                    child,
                    addr,
                    stderr_lines: rx,
                };
            }
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the node's database read-only from the test (the daemon may be stopped).
pub fn open_db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data.join("riac-node.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

pub fn db_counts(c: &rusqlite::Connection) -> (i64, i64, i64) {
    let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        q("SELECT count(*) FROM scans"),
        q("SELECT count(*) FROM verdicts"),
        q("SELECT count(*) FROM outbox"),
    )
}

/// A PNG made only of a signature and an IHDR declaring `w`x`h` 8-bit gray, then a tiny
/// IDAT and IEND: what a decompression bomb looks like before it is inflated.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc_in = kind.to_vec();
        crc_in.extend_from_slice(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend(crc32(&crc_in).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib header + a final empty stored block: valid, nearly empty.
    chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where the real radiographs of pydicom-data are (scripts/fetch-test-data puts them there).
pub fn dicom_dir() -> PathBuf {
    let dir = std::env::var_os("RIAC_TEST_DICOM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache/dicom"));
    assert!(
        dir.join("RG1_UNCR.dcm").is_file() && dir.join("RG3_UNCR.dcm").is_file(),
        "real DICOM radiographs not found in {}: run scripts/fetch-test-data (or set RIAC_TEST_DICOM_DIR)",
        dir.display()
    );
    dir
}

/// `riac-node user add NAME --role ROLE` on the node whose data dir is `data`, the
/// password typed on stdin as an engineer would.
pub fn cli_user_add(data: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut add = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a scanner account with the real CLI (password on stdin) on the node whose data
/// dir is `data`, then an API token for it; returns the token.
pub fn cli_scanner_token(data: &Path) -> String {
    cli_user_add(data, "scanner1", "scanner", "scanner-password-1");
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["user", "token", "scanner1", "--label", "test", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "user token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(token.starts_with("riac_"), "{token}");
    token
}

/// The value of the cookie `name` that a response sets.
pub fn set_cookie_value(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Logs in through the login form as a browser does (login cookie and form token, then the
/// session cookie) and returns headers carrying the session: `Cookie`, and the session's
/// CSRF token as `X-CSRF-Token` for state-changing requests.
pub async fn login(base: &str, user: &str, password: &str) -> reqwest::header::HeaderMap {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = c.get(format!("{base}/login")).send().await.unwrap();
    let login_cookie = set_cookie_value(page.headers(), "riac_login").expect("login cookie");
    let r = c
        .post(format!("{base}/login"))
        .header("cookie", format!("riac_login={login_cookie}"))
        .form(&[
            ("username", user),
            ("password", password),
            ("csrf", &login_cookie),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "login as {user} failed");
    let session = set_cookie_value(r.headers(), "riac_session").expect("session cookie");
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::COOKIE,
        format!("riac_session={session}").parse().unwrap(),
    );
    let page = c
        .get(format!("{base}/account"))
        .headers(h.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf meta tag")
        .to_string();
    h.insert("x-csrf-token", csrf.parse().unwrap());
    h
}

/// [`login`] for tests without a runtime.
pub fn login_blocking(base: &str, user: &str, password: &str) -> reqwest::header::HeaderMap {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(login(base, user, password))
}
