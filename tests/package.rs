//! Field deployment: every shipped config template validates; the example central broker
//! (firmware-config/broker/) starts as shipped, with only ports and paths moved to a temp
//! dir on 127.0.0.1, and confines each node to its own topics; `doctor` passes against it
//! and fails clearly on each broken condition; the .deb holds what the field needs and its
//! systemd unit verifies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use riac_node::uplink::bench::free_port;
use riac_node::uplink::config::RawUplink;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};

const BIN: &str = env!("CARGO_BIN_EXE_riac-node");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RIAC_TEST_MOSQUITTO") {
        return p.into();
    }
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("mosquitto not found: install Debian's `mosquitto` package (.ci/run does) or set RIAC_TEST_MOSQUITTO")
}

/// A throwaway CA with a server certificate for 127.0.0.1 and client certificates whose
/// CNs are the given names (the broker's user names), PEM files in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path, clients: &[&str]) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "RIAC test centre CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |file: &str, names: Vec<String>, cn: &str, usage| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        };
        leaf(
            "server",
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        for cn in clients {
            leaf(cn, Vec::new(), cn, ExtendedKeyUsagePurpose::ClientAuth);
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `text` with each `(from, to)` replaced; panics when `from` is not there, so that a
/// changed example is noticed here rather than silently tested unchanged.
fn substitute(text: &str, what: &str, pairs: &[(&str, String)]) -> String {
    let mut t = text.to_string();
    for (from, to) in pairs {
        assert!(
            t.contains(from),
            "{what} no longer contains {from:?}: update this test"
        );
        t = t.replace(from, to);
    }
    t
}

/// A site template made runnable here: TLS files from `pki` (client certificate of the
/// template's node id), the repo's model, data under `dir`, web on a free loopback port,
/// and the broker at `broker` when given.
fn localise_site(template: &Path, dir: &Path, pki: &Pki, broker: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string(template).unwrap();
    let node_id = text
        .lines()
        .find_map(|l| l.strip_prefix("node_id = \""))
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{} sets no node.node_id", template.display()));
    let mut pairs = vec![
        ("/etc/riac-node/tls/centre-ca.pem", pki.file("ca.pem")),
        (
            "/etc/riac-node/tls/node.pem",
            pki.file(&format!("{node_id}.pem")),
        ),
        (
            "/etc/riac-node/tls/node.key",
            pki.file(&format!("{node_id}.key")),
        ),
        ("/etc/riac-node/tls/web.pem", pki.file("server.pem")),
        ("/etc/riac-node/tls/web.key", pki.file("server.key")),
        (
            "/usr/share/riac-node/models/",
            format!("{}/", repo().join("models").display()),
        ),
        ("/var/lib/riac-node", dir.join("data").display().to_string()),
        ("0.0.0.0:8443", "127.0.0.1:0".to_string()),
    ];
    if let Some(b) = broker {
        pairs.push(("mqtts://riac-centre.example:8883", b.to_string()));
    }
    // Templates name only some of these paths.
    let mut out = text.clone();
    for (from, to) in &pairs {
        out = out.replace(from, to);
    }
    // Any other absolute /etc path would be a file this test does not provide.
    for l in out.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            !l.contains("\"/etc/"),
            "{}: {l}: add it to this test",
            template.display()
        );
    }
    std::fs::create_dir_all(dir.join("data/incoming")).unwrap();
    let p = dir.join(template.file_name().unwrap());
    std::fs::write(&p, out).unwrap();
    p
}

fn site_template(name: &str) -> PathBuf {
    repo().join("firmware-config/sites").join(name)
}

fn tomls_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            tomls_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn doctor(config: &Path) -> (bool, String) {
    let (out, text) = run(Command::new(BIN)
        .args(["doctor", "--config"])
        .arg(config)
        .env_remove("RIAC_BROKER")
        .env_remove("RIAC_DATA_DIR")
        .env_remove("RIAC_HOT_FOLDER")
        .env_remove("RIAC_LISTEN"));
    (out.status.success(), text)
}

fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, r)| r.trim_start().starts_with(check))
        })
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{text}"))
}

#[test]
fn every_shipped_config_template_validates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"), &["KHI-N1", "TKM-N1"]);
    let mut files = Vec::new();
    tomls_under(&repo().join("firmware-config"), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        "firmware-config/riac-node.toml",
        "firmware-config/sites/sea-port-entry.toml",
        "firmware-config/sites/border-exit.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    for (i, f) in files.iter().enumerate() {
        let work = dir.path().join(i.to_string());
        let cfg = localise_site(f, &work, &pki, None);
        let (out, text) = run(Command::new(BIN).arg("validate-config").arg(&cfg));
        assert!(out.status.success(), "{}:\n{text}", f.display());
        assert!(text.contains("is valid"), "{text}");
    }
    // The packaged config and the templates name the model the package installs (a fresh
    // install checks from the start), and it exists in the source tree.
    let packaged = std::fs::read_to_string(repo().join("firmware-config/riac-node.toml")).unwrap();
    assert!(packaged
        .lines()
        .any(|l| l == "model = \"/usr/share/riac-node/models/riac-texture.toml\""));
    for t in ["sea-port-entry.toml", "border-exit.toml"] {
        let text = std::fs::read_to_string(site_template(t)).unwrap();
        assert!(
            text.contains("model = \"/usr/share/riac-node/models/riac-texture.toml\""),
            "{t}"
        );
        assert!(text.contains("broker = \"mqtts://"), "{t} must use TLS");
    }
    assert!(repo().join("models/riac-texture.toml").is_file());
}

/// A mosquitto started from one of the shipped examples, moved to `dir` and a free
/// loopback port.
struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    /// firmware-config/broker/mosquitto.conf: the central broker.
    fn centre(dir: &Path, pki: &Pki) -> Broker {
        let port = free_port().unwrap();
        let acl = dir.join("riac.acl");
        Broker::start(
            "mosquitto.conf",
            dir,
            port,
            &[
                ("listener 8883", format!("listener {port} 127.0.0.1")),
                ("/etc/mosquitto/certs/riac-ca.pem", pki.file("ca.pem")),
                ("/etc/mosquitto/certs/broker.pem", pki.file("server.pem")),
                ("/etc/mosquitto/certs/broker.key", pki.file("server.key")),
                ("/etc/mosquitto/riac.acl", acl.display().to_string()),
                ("/var/lib/mosquitto/", format!("{}/", dir.display())),
                (
                    "/var/log/mosquitto/mosquitto.log",
                    dir.join("mosquitto.log").display().to_string(),
                ),
            ],
        )
    }

    /// firmware-config/broker/bridge.conf: a site broker bridged to `centre`.
    fn site(dir: &Path, pki: &Pki, centre: &Broker) -> Broker {
        let port = free_port().unwrap();
        let acl = dir.join("riac.acl");
        Broker::start(
            "bridge.conf",
            dir,
            port,
            &[
                ("listener 8883", format!("listener {port} 127.0.0.1")),
                (
                    "address riac-centre.example:8883",
                    format!("address 127.0.0.1:{}", centre.port),
                ),
                ("/etc/mosquitto/certs/riac-ca.pem", pki.file("ca.pem")),
                (
                    "/etc/mosquitto/certs/site-broker.pem",
                    pki.file("server.pem"),
                ),
                (
                    "/etc/mosquitto/certs/site-broker.key",
                    pki.file("server.key"),
                ),
                ("/etc/mosquitto/certs/centre-ca.pem", pki.file("ca.pem")),
                (
                    "/etc/mosquitto/certs/site-KHI-bridge.pem",
                    pki.file("site-KHI-bridge.pem"),
                ),
                (
                    "/etc/mosquitto/certs/site-KHI-bridge.key",
                    pki.file("site-KHI-bridge.key"),
                ),
                ("/etc/mosquitto/riac.acl", acl.display().to_string()),
                ("/var/lib/mosquitto/", format!("{}/", dir.display())),
            ],
        )
    }

    fn start(example: &str, dir: &Path, port: u16, pairs: &[(&str, String)]) -> Broker {
        let src = repo().join("firmware-config/broker").join(example);
        let conf = substitute(&std::fs::read_to_string(&src).unwrap(), example, pairs);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(
            repo().join("firmware-config/broker/acl.example"),
            dir.join("riac.acl"),
        )
        .unwrap();
        // As root, mosquitto would switch to its own user, which cannot write our temp dir.
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        // The site example keeps mosquitto's default log; the test wants it beside it.
        let log = if conf.contains("log_dest file") {
            String::new()
        } else {
            format!("log_dest file {}\n", dir.join("mosquitto.log").display())
        };
        let conf = format!("{user}{log}{conf}");
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto with the shipped {example} exited {status}: {err}\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto with {example} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client with the client certificate `cn` (the node's own TLS code builds the
/// rustls config), subscribed to `filters`; returns once the broker acknowledged them.
async fn client(centre: &Broker, pki: &Pki, cn: &str, filters: &[&str]) -> (AsyncClient, Inbox) {
    let raw = RawUplink {
        broker: Some(centre.url()),
        tls_ca_file: Some(pki.dir.join("ca.pem")),
        tls_cert_file: Some(pki.dir.join(format!("{cn}.pem"))),
        tls_key_file: Some(pki.dir.join(format!("{cn}.key"))),
        allow_unsigned_commands: Some(true),
        ..Default::default()
    };
    let up = riac_node::uplink::config::validate(raw, None, &pki.dir, "x", "y").unwrap();
    let tls = up.broker.unwrap().load_tls().unwrap().unwrap();
    let mut o = MqttOptions::new(format!("test-{cn}"), "127.0.0.1", centre.port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (c, mut el) = AsyncClient::new(o, 100);
    let inbox: Inbox = Arc::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
    let (c2, inbox2, name) = (c.clone(), inbox.clone(), cn.to_string());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut pending = filters.len();
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    for f in &filters {
                        c2.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                    }
                    if filters.is_empty() {
                        let _ = ready.take().map(|r| r.send(()));
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    pending = pending.saturating_sub(1);
                    if pending == 0 {
                        let _ = ready.take().map(|r| r.send(()));
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => inbox2
                    .lock()
                    .unwrap()
                    .push((p.topic.clone(), p.payload.to_vec())),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("test client {name}: {e}");
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{cn} not connected and subscribed within 10 s:\n{}",
                centre.log()
            )
        })
        .unwrap();
    (c, inbox)
}

async fn wait_for(inbox: &Inbox, topic: &str, centre: &Broker) {
    let start = Instant::now();
    while !inbox.lock().unwrap().iter().any(|(t, _)| t == topic) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing on {topic} within 10 s:\n{}",
            centre.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_broker_config_confines_each_node_to_its_topics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(
        &dir.path().join("pki"),
        &["KHI-N1", "TKM-N1", "riac-centre"],
    );
    let centre = Broker::centre(&dir.path().join("broker"), &pki);
    let (centre_client, centre_in) = client(&centre, &pki, "riac-centre", &["riac/v1/#"]).await;
    let (_t, tkm_in) = client(
        &centre,
        &pki,
        "TKM-N1",
        &["riac/v1/transit/TKM/entries", "riac/v1/KHI/KHI-N1/cmd/#"],
    )
    .await;
    let (khi, _k) = client(&centre, &pki, "KHI-N1", &[]).await;

    // Denied first: messages from one client arrive in order, so once the allowed ones that
    // follow have arrived, a denied one that got through would have arrived too.
    let denied = [
        "riac/v1/TKM/TKM-N1/verdicts",
        "riac/v1/KHI/KHI-N2/verdicts",
        "riac/v1/KHI/KHI-N1/cmd/thresholds",
    ];
    let allowed = [
        "riac/v1/KHI/KHI-N1/verdicts",
        "riac/v1/KHI/KHI-N1/cmd-reply",
        "riac/v1/transit/TKM/entries",
    ];
    for t in denied.iter().chain(&allowed) {
        khi.publish(*t, QoS::AtLeastOnce, false, t.as_bytes().to_vec())
            .await
            .unwrap();
    }
    for t in allowed {
        wait_for(&centre_in, t, &centre).await;
    }
    wait_for(&tkm_in, "riac/v1/transit/TKM/entries", &centre).await;
    let seen: Vec<String> = centre_in
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    for t in denied {
        assert!(
            !seen.iter().any(|s| s == t),
            "{t} got through the ACL: {seen:?}"
        );
    }
    // TKM-N1 subscribed to KHI-N1's commands, but the ACL gives it nothing there.
    let centre_cmd = "riac/v1/KHI/KHI-N1/cmd/library-update";
    centre_client
        .publish(centre_cmd, QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    wait_for(&centre_in, centre_cmd, &centre).await;
    assert!(
        !tkm_in.lock().unwrap().iter().any(|(t, _)| t == centre_cmd),
        "TKM-N1 read KHI-N1's commands"
    );
}

#[test]
fn doctor_passes_against_the_shipped_broker_and_fails_on_a_foreign_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"), &["KHI-N1"]);
    let centre = Broker::centre(&dir.path().join("broker"), &pki);
    let cfg = localise_site(
        &site_template("sea-port-entry.toml"),
        dir.path(),
        &pki,
        Some(&centre.url()),
    );
    let t0 = Instant::now();
    let (ok, text) = doctor(&cfg);
    eprintln!("doctor took {:?}:\n{text}", t0.elapsed());
    for check in [
        "config",
        "data dir",
        "database",
        "hot folder",
        "web listen",
        "model",
        "broker",
    ] {
        assert!(line(&text, check).starts_with("PASS"), "{check}:\n{text}");
    }
    assert!(
        line(&text, "broker").contains("TLS with client certificate"),
        "{text}"
    );
    assert!(line(&text, "model").contains("riac-texture"), "{text}");
    // The site template's placeholder centre key is still in: a warning, not a failure.
    assert!(
        line(&text, "centre key").starts_with("WARN")
            && line(&text, "centre key").contains("placeholder"),
        "{text}"
    );
    // ...and so are the template's node and site ids.
    assert!(
        line(&text, "identity").starts_with("WARN") && line(&text, "identity").contains("KHI-N1"),
        "{text}"
    );
    // A fresh install has no reference library yet.
    assert!(line(&text, "library").starts_with("WARN"), "{text}");
    // A small CI disk may fail the free-space check; nothing else may fail.
    let disk_failed = line(&text, "disk space").starts_with("FAIL");
    assert_eq!(ok, !disk_failed, "{text}");
    assert!(
        centre.log().contains("riac-KHI-KHI-N1-doctor"),
        "{}",
        centre.log()
    );

    // The node trusting another CA: the TLS handshake fails, and says what to check.
    let other = Pki::create(&dir.path().join("other"), &["KHI-N1"]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&pki.file("ca.pem"), &other.file("ca.pem"));
    std::fs::write(&cfg, text).unwrap();
    let (ok, text) = doctor(&cfg);
    assert!(!ok, "{text}");
    let l = line(&text, "broker");
    assert!(
        l.starts_with("FAIL") && l.contains("TLS handshake") && l.contains("uplink.tls_ca_file"),
        "{l}"
    );
}

/// A minimal valid config in `dir` with `extra` appended.
fn plain_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("data/incoming")).unwrap();
    let p = dir.join("riac-node.toml");
    std::fs::write(
        &p,
        format!(
            "[node]\nnode_id = \"N1\"\nsite_id = \"KHI\"\n[paths]\ndata_dir = \"{}\"\n[web]\nlisten = \"127.0.0.1:0\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn doctor_fails_clearly_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain_config(dir.path(), "[ingest]\nmax_width = 1\n");
    let (ok, text) = doctor(&cfg);
    assert!(!ok, "{text}");
    let l = line(&text, "config");
    assert!(
        l.starts_with("FAIL") && l.contains("ingest.max_width") && l.contains("validate-config"),
        "{l}"
    );
}

#[test]
fn doctor_fails_clearly_on_an_unwritable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain_config(dir.path(), "");
    let data = dir.path().join("data");
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (ok, text) = if root {
        // Root ignores permission bits: run the doctor as `nobody`, for whom the root-owned
        // data dir is read-only, as it would be for the riac user after a bad chown.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The build dir may sit under a home nobody cannot enter (/root on CI): give
        // nobody the binary where it can reach it.
        let bin = dir.path().join("riac-node");
        if std::fs::hard_link(BIN, &bin).is_err() {
            std::fs::copy(BIN, &bin).unwrap();
        }
        let (out, text) = run(Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&bin)
            .args(["doctor", "--config"])
            .arg(&cfg));
        (out.status.success(), text)
    } else {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
        let r = doctor(&cfg);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        r
    };
    assert!(!ok, "{text}");
    let l = line(&text, "data dir");
    assert!(
        l.starts_with("FAIL")
            && l.contains("cannot write in")
            && l.contains(&data.display().to_string()),
        "{l}"
    );
}

#[test]
fn doctor_fails_clearly_on_a_model_file_that_does_not_match_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for f in ["riac-texture.toml", "riac-texture.onnx"] {
        std::fs::copy(repo().join("models").join(f), models.join(f)).unwrap();
    }
    let onnx = models.join("riac-texture.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let contract = models.join("riac-texture.toml");
    let cfg = plain_config(
        dir.path(),
        &format!(
            "[matching]\nmodel = \"{}\"\nbackend = \"tract\"\n",
            contract.display()
        ),
    );
    let (ok, text) = doctor(&cfg);
    assert!(!ok, "{text}");
    let l = line(&text, "model");
    let expected = std::fs::read_to_string(&contract)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("sha256 = \"")
                .map(|r| r.trim_end_matches('"').to_string())
        })
        .unwrap();
    assert!(
        l.starts_with("FAIL")
            && l.contains(&onnx.display().to_string())
            && l.contains(&expected)
            && l.contains("has sha256"),
        "{l}"
    );
}

#[test]
fn doctor_fails_clearly_on_an_unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens there.
    let port = free_port().unwrap();
    let cfg = plain_config(
        dir.path(),
        &format!("[uplink]\nbroker = \"mqtt://127.0.0.1:{port}\"\nallow_plain = true\nallow_unsigned_commands = true\n"),
    );
    let (ok, text) = doctor(&cfg);
    assert!(!ok, "{text}");
    let l = line(&text, "broker");
    assert!(
        l.starts_with("FAIL")
            && l.contains(&format!("127.0.0.1:{port}"))
            && l.contains("cannot open a TCP connection"),
        "{l}"
    );
}

fn have(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn deb_package_holds_binary_unit_conffile_models_and_its_unit_verifies() {
    if !have("cargo", &["deb", "--version"]) || !have("dpkg-deb", &["--version"]) {
        eprintln!("SKIPPED deb_package test: cargo-deb or dpkg-deb is not installed (cargo install cargo-deb; apt install dpkg)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // cargo-deb takes the binary from <target>/release/; give it this test's (dev) binary,
    // stripped so that packing it takes seconds, in a target dir of our own.
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    let (out, text) = run(Command::new("strip")
        .arg("-o")
        .arg(target.join("release/riac-node"))
        .arg(BIN));
    assert!(out.status.success(), "strip: {text}");
    let deb = dir.path().join("riac-node.deb");
    let t0 = Instant::now();
    let (out, text) = run(Command::new("cargo")
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(&deb)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target));
    assert!(out.status.success(), "cargo deb: {text}");
    eprintln!(
        "cargo deb took {:?}, {} bytes",
        t0.elapsed(),
        std::fs::metadata(&deb).unwrap().len()
    );

    let (out, contents) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(out.status.success(), "{contents}");
    let entry = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"))
            .to_string()
    };
    let bin_entry = entry("/usr/bin/riac-node");
    assert!(bin_entry.starts_with("-rwxr-xr-x 0/0"), "{bin_entry}");
    let conf_entry = entry("/etc/riac-node/riac-node.toml");
    assert!(conf_entry.starts_with("-rw-r----- 0/0"), "{conf_entry}");
    let unit = if contents.contains(" ./usr/lib/systemd/system/riac-node.service") {
        "/usr/lib/systemd/system/riac-node.service"
    } else {
        "/lib/systemd/system/riac-node.service"
    };
    entry(unit);
    for f in [
        "/usr/share/riac-node/models/riac-texture.toml",
        "/usr/share/riac-node/models/riac-texture.onnx",
        "/usr/share/riac-node/firmware-config/riac-node.toml",
        "/usr/share/riac-node/firmware-config/sites/sea-port-entry.toml",
        "/usr/share/riac-node/firmware-config/sites/border-exit.toml",
        "/usr/share/riac-node/firmware-config/broker/mosquitto.conf",
        "/usr/share/riac-node/firmware-config/broker/acl.example",
        "/usr/share/riac-node/firmware-config/broker/bridge.conf",
        "/usr/share/riac-node/firmware-config/tls/README.md",
        "/usr/share/doc/riac-node/COMMISSIONING.md",
        "/usr/share/doc/riac-node/DEPLOYMENT.md",
    ] {
        entry(f);
    }

    let info = |what: &[&str]| {
        let (out, text) = run(Command::new("dpkg-deb").arg("--info").arg(&deb).args(what));
        assert!(out.status.success(), "dpkg-deb --info {what:?}: {text}");
        text
    };
    let control = info(&[]);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let arch_line = format!("Architecture: {arch}");
    for want in [
        "Package: riac-node",
        &arch_line,
        "adduser",
        "conffiles",
        "postinst",
        "postrm",
    ] {
        assert!(control.contains(want), "{want} not in:\n{control}");
    }
    let conffiles = info(&["conffiles"]);
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/riac-node/riac-node.toml"),
        "{conffiles}"
    );
    let postinst = info(&["postinst"]);
    for want in ["adduser --system", "keys init", "deb-systemd-helper"] {
        assert!(
            postinst.contains(want),
            "{want} not in postinst:\n{postinst}"
        );
    }

    // The packaged unit, its binary path pointed at the binary this test packed.
    if !have("systemd-analyze", &["--version"]) {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed (apt install systemd)");
        return;
    }
    let x = dir.path().join("x");
    let (out, text) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    assert!(out.status.success(), "{text}");
    let unit_text = std::fs::read_to_string(x.join(unit.trim_start_matches('/'))).unwrap();
    let bin = x.join("usr/bin/riac-node");
    let unit_file = dir.path().join("riac-node.service");
    std::fs::write(
        &unit_file,
        substitute(
            &unit_text,
            unit,
            &[("/usr/bin/riac-node", bin.display().to_string())],
        ),
    )
    .unwrap();
    let (out, text) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file));
    // verify exits 0 on unknown keys but warns: any output is a finding.
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let (out, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit_file));
    assert!(out.status.success(), "{text}");
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for riac-node.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security exposure: {exposure}");
    assert!(
        exposure <= 2.0,
        "the unit's hardening regressed: exposure {exposure}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_bridge_config_carries_a_sites_traffic_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(
        &dir.path().join("pki"),
        &["KHI-N1", "riac-centre", "site-KHI-bridge"],
    );
    let centre = Broker::centre(&dir.path().join("centre"), &pki);
    let site = Broker::site(&dir.path().join("site"), &pki, &centre);
    let start = Instant::now();
    while !centre.log().contains("as site-KHI-bridge") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the site broker's bridge did not connect:\n{}\n{}",
            centre.log(),
            site.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (centre_client, centre_in) = client(&centre, &pki, "riac-centre", &["riac/v1/#"]).await;
    let (node, node_in) = client(&site, &pki, "KHI-N1", &["riac/v1/KHI/KHI-N1/cmd/#"]).await;
    let up = "riac/v1/KHI/KHI-N1/verdicts";
    node.publish(up, QoS::AtLeastOnce, false, b"v".to_vec())
        .await
        .unwrap();
    wait_for(&centre_in, up, &centre).await;
    let down = "riac/v1/KHI/KHI-N1/cmd/thresholds";
    let start = Instant::now();
    // A command sent before the bridge's subscription is in place is not queued for it
    // (the bridge's session starts with it), so resend until one arrives.
    while !node_in.lock().unwrap().iter().any(|(t, _)| t == down) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no command reached the node through the bridge:\n{}",
            site.log()
        );
        centre_client
            .publish(down, QoS::AtLeastOnce, false, b"c".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
