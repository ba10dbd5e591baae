//! `riac-node bench uplink`: drains a backlog of signed verdicts to a real mosquitto on
//! loopback over TLS with client certificates, through the same uplink tasks the daemon
//! runs, and reports verdicts/s, the time to drain the backlog and the process's memory
//! while draining. Also home of [`TestPki`] and [`Mosquitto`] (a throwaway CA and a
//! mosquitto process with a TLS listener), which the integration tests use too. Nothing
//! here runs in the daemon.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Overrides, RawConfig};
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench setup failed: {0}")]
    Setup(String),
    #[error("cannot start {bin}: {reason} (install Debian's `mosquitto` package, or pass --mosquitto PATH)")]
    Mosquitto { bin: String, reason: String },
    #[error("the drain did not finish: {0}")]
    Drain(String),
}

fn setup<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// A throwaway PKI in a directory: a CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate (CN = `client_cn`), all PEM.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn create(dir: &Path, client_cn: &str) -> Result<TestPki, String> {
        let e = |e: rcgen::Error| e.to_string();
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "riac-node test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().map_err(e)?;
            let mut p = CertificateParams::new(names).map_err(e)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).map_err(e)?;
            Ok::<_, String>((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key) =
            leaf(Vec::new(), client_cn, ExtendedKeyUsagePurpose::ClientAuth)?;
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (p, text) in [
            (&pki.ca, ca_cert.pem()),
            (&pki.server_cert, server_pem),
            (&pki.server_key, server_key),
            (&pki.client_cert, client_pem),
            (&pki.client_key, client_key),
        ] {
            std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(pki)
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test broker).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A mosquitto process on 127.0.0.1 with its own config: a plain listener (anonymous,
/// for test subscribers) and a TLS listener that requires a client certificate from the
/// [`TestPki`] CA. Killed when dropped. Persistence on, in its directory, so a restart
/// keeps sessions and queued messages like a production broker.
pub struct Mosquitto {
    child: Option<Child>,
    pub plain_port: u16,
    pub tls_port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl Mosquitto {
    pub fn start(bin: &Path, dir: &Path, pki: &TestPki) -> Result<Mosquitto, BenchError> {
        let ports = (free_port().map_err(setup)?, free_port().map_err(setup)?);
        let mut m = Mosquitto {
            child: None,
            plain_port: ports.0,
            tls_port: ports.1,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
        };
        let conf = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             autosave_interval 1\nmax_queued_messages 100000\nmax_inflight_messages 100\n\
             message_size_limit 0\nlog_dest file {dir}/mosquitto.log\nlog_type error\nlog_type warning\n\
             log_type notice\nlog_type information\nconnection_messages true\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n",
            dir = dir.display(),
            plain = m.plain_port,
            tls = m.tls_port,
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        // Started as root, mosquitto would drop to the `mosquitto` user, which cannot write
        // its log and persistence file into our private temp dir.
        // SAFETY: geteuid(2) has no preconditions.
        let conf = if unsafe { libc::geteuid() } == 0 {
            format!("user root\n{conf}")
        } else {
            conf
        };
        std::fs::create_dir_all(dir).map_err(setup)?;
        std::fs::write(dir.join("mosquitto.conf"), conf).map_err(setup)?;
        m.restart()?;
        Ok(m)
    }

    /// Starts the process (again) on the same ports and waits until both listen.
    pub fn restart(&mut self) -> Result<(), BenchError> {
        let bad = |reason: String| BenchError::Mosquitto {
            bin: self.bin.display().to_string(),
            reason,
        };
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| bad(e.to_string()))?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let up = [self.plain_port, self.tls_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return Ok(());
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                return Err(bad(format!(
                    "exited with {status}: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(bad("did not listen within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the broker vanishes as in a crash or a network loss.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port)
    }

    pub fn plain_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.plain_port)
    }

    /// mosquitto's own version line, for the report.
    pub fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Serialize)]
pub struct UplinkReport {
    pub verdicts: usize,
    pub inflight: u32,
    pub mean_verdict_bytes: f64,
    pub broker: String,
    pub transport: &'static str,
    pub seconds_to_drain: f64,
    pub verdicts_per_second: f64,
    pub rss_before_drain_mib: f64,
    pub peak_rss_while_draining_mib: f64,
    pub cpus: usize,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Fills a fresh store with `count` signed verdicts (one per scan row), then starts the
/// uplink against a TLS mosquitto and times until the outbox is empty.
pub async fn drain(
    count: usize,
    inflight: u32,
    mosquitto: &Path,
) -> Result<UplinkReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("riac-bench-uplink-")
        .tempdir()
        .map_err(setup)?;
    let pki = TestPki::create(&dir.path().join("pki"), "bench-node").map_err(BenchError::Setup)?;
    let mut broker = Mosquitto::start(mosquitto, &dir.path().join("broker"), &pki)?;

    let mut raw = RawConfig::default();
    raw.node.node_id = Some("bench-node".into());
    raw.node.site_id = Some("BENCH".into());
    raw.uplink.broker = Some(broker.tls_url());
    raw.uplink.tls_ca_file = Some(pki.ca.clone());
    raw.uplink.tls_cert_file = Some(pki.client_cert.clone());
    raw.uplink.tls_key_file = Some(pki.client_key.clone());
    raw.uplink.inflight = Some(inflight);
    // The bench sends no commands; a throwaway broker has no centre key.
    raw.uplink.allow_unsigned_commands = Some(true);
    let cfg = Config::from_raw(
        raw,
        &Overrides {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
    )
    .map_err(setup)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(setup)?;
    let db = cfg.db_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(setup)?
        .map_err(setup)?;
    let key =
        Arc::new(super::keys::NodeKey::create(&cfg.uplink.node_key_file, false).map_err(setup)?);
    fill_backlog(&store, &key, "bench-node", "BENCH", count)
        .await
        .map_err(BenchError::Setup)?;
    let total_bytes: i64 = store
        .read(|c| Ok(c.query_row("SELECT sum(length(payload)) FROM outbox", [], |r| r.get(0))?))
        .await
        .map_err(setup)?;

    let rss_before = rss_mib();
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = Metrics::new();
    let started = Instant::now();
    let _handle = super::start(
        Arc::new(cfg),
        store.clone(),
        metrics,
        key,
        token.clone(),
        &tracker,
    )
    .map_err(setup)?;
    let mut peak = rss_before;
    let deadline = Duration::from_secs(600);
    loop {
        peak = peak.max(rss_mib());
        let left: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?))
            .await
            .map_err(setup)?;
        if left == 0 {
            break;
        }
        if started.elapsed() > deadline {
            token.cancel();
            return Err(BenchError::Drain(format!(
                "{left} verdicts still queued after {deadline:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    token.cancel();
    tracker.close();
    tracker.wait().await;
    store.close().await;
    broker.stop();
    Ok(UplinkReport {
        verdicts: count,
        inflight,
        mean_verdict_bytes: total_bytes as f64 / count.max(1) as f64,
        broker: Mosquitto::version(mosquitto),
        transport: "TLS (rustls) with a client certificate, loopback",
        seconds_to_drain: seconds,
        verdicts_per_second: count as f64 / seconds,
        rss_before_drain_mib: rss_before,
        peak_rss_while_draining_mib: peak,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// Adds `count` scans, each with its signed verdict and outbox row made by the pipeline's
/// own functions (`auto_verdict`, `insert_with_outbox`): a backlog as a node offline for a
/// while has it. Used by the bench and the tests.
pub async fn fill_backlog(
    store: &Store,
    key: &Arc<super::keys::NodeKey>,
    node_id: &str,
    site_id: &str,
    count: usize,
) -> Result<(), String> {
    fill_backlog_with(store, key, node_id, site_id, count, |_, _| {}).await
}

/// [`fill_backlog`], with `shape` changing each verdict (its index in this backlog) before
/// it joins the chain: the tests use it for `/1` verdicts as an older node wrote them and
/// for values other languages canonicalise differently.
pub async fn fill_backlog_with(
    store: &Store,
    key: &Arc<super::keys::NodeKey>,
    node_id: &str,
    site_id: &str,
    count: usize,
    shape: impl Fn(usize, &mut crate::scan::verdict::Verdict) + Send + Sync + Clone + 'static,
) -> Result<(), String> {
    use crate::pipeline::{auto_verdict, NodeIdentity};
    use crate::store::scans::{NewScan, ScanRecord};
    let me = NodeIdentity {
        node_id: node_id.into(),
        site_id: site_id.into(),
    };
    let base: i64 = store
        .read(|c| Ok(c.query_row("SELECT count(*) FROM scans", [], |r| r.get(0))?))
        .await
        .map_err(|e| e.to_string())?;
    let topic = me.verdict_topic();
    let mut done = 0;
    while done < count {
        let n = (count - done).min(500);
        let (key, me, topic, shape) = (key.clone(), me.clone(), topic.clone(), shape.clone());
        store
            .write(move |t| {
                for i in done..done + n {
                    let i = i + base as usize;
                    let scan_id = format!("{}-BACKLOG-{i:06}", me.site_id);
                    let sidecar =
                        serde_json::json!({"declaration": {"goods": [{"hs_code": "8703.23"}]}});
                    let new = NewScan {
                        scan_id: scan_id.clone(),
                        scanned_at: crate::store::now_rfc3339(),
                        scanner_id: format!("{}-P1", me.site_id),
                        site_id: me.site_id.clone(),
                        direction: "import".into(),
                        regime: "import".into(),
                        declaration_number: format!("D-{i}"),
                        container_ids: vec!["MSCU1234566".into()],
                        vehicle_plate: None,
                        sidecar: sidecar.clone(),
                        source: "http",
                        content_sha256: format!("{i:064}"),
                        image_dir: format!("scans/{scan_id}"),
                        original_file: "x.tiff".into(),
                        has_low_energy: false,
                        width: 4000,
                        height: 1400,
                        source_format: "tiff".into(),
                        source_bits: 16,
                        pixel_meaning: "transmission".into(),
                    };
                    crate::store::scans::insert(t, &new)?;
                    let rec = ScanRecord {
                        id: 0,
                        scan_id,
                        received_at: String::new(),
                        scanned_at: new.scanned_at.clone(),
                        scanner_id: new.scanner_id.clone(),
                        site_id: new.site_id.clone(),
                        direction: new.direction.clone(),
                        regime: new.regime.clone(),
                        declaration_number: new.declaration_number.clone(),
                        container_ids: new.container_ids.clone(),
                        vehicle_plate: None,
                        source: "http".into(),
                        content_sha256: new.content_sha256.clone(),
                        image_dir: new.image_dir.clone(),
                        original_file: new.original_file.clone(),
                        has_low_energy: false,
                        width: 4000,
                        height: 1400,
                        source_format: "tiff".into(),
                        source_bits: 16,
                        pixel_meaning: "transmission".into(),
                        state: "ingested".into(),
                        outcome: None,
                        sidecar: Some(sidecar),
                    };
                    let mut v = auto_verdict(
                        &rec,
                        &me,
                        crate::matching::not_run(
                            crate::matching::declared_codes(rec.sidecar.as_ref()),
                            "no model in this test",
                        ),
                        None,
                    );
                    shape(i - base as usize, &mut v);
                    crate::store::verdicts::insert_with_outbox(t, v, &topic, Some(key.as_ref()))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        done += n;
    }
    Ok(())
}
