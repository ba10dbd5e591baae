//! `riac-node doctor`: the field engineer's self-check. Each check reports pass, warn or
//! fail with a sentence saying what was found and what to do; the command exits non-zero
//! when any check fails. Checks only read, or write and remove their own probe files: the
//! doctor never changes the node's data. The broker check opens its own MQTT session
//! under a separate client id with a clean session, so that it neither takes over nor
//! wipes the running node's persistent session.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, Overrides};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
        }
    }
}

/// Below this much free space the node cannot be trusted to store a day of scans.
pub const MIN_FREE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Runs every check against the config at `config_path` with `ov` applied.
pub fn run(config_path: &Path, ov: &Overrides) -> Vec<Check> {
    let cfg = match Config::load(config_path, ov) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::new(
                "config",
                Status::Fail,
                format!(
                    "{e}; fix it, then run `riac-node validate-config {}`",
                    config_path.display()
                ),
            )]
        }
    };
    let mut checks = vec![Check::new(
        "config",
        Status::Pass,
        format!(
            "{} is valid (node {} at site {})",
            config_path.display(),
            cfg.node_id,
            cfg.site_id
        ),
    )];
    checks.push(check_dir_writable("data dir", &cfg.data_dir));
    checks.push(check_free_space(&cfg.data_dir));
    checks.push(check_database(&cfg));
    checks.push(check_hot_folder(&cfg.hot_folder));
    checks.push(check_clock(&cfg));
    checks.push(check_listen(&cfg));
    checks.push(check_model(&cfg));
    checks.push(check_broker(&cfg));
    checks.push(check_centre_key(&cfg));
    checks.push(check_identity(&cfg));
    checks.push(check_library(&cfg));
    checks
}

/// The centre command key the shipped site templates carry until the engineer sets the
/// centre's own (firmware-config/sites/*.toml): a valid key generated for the templates
/// whose private half was not kept, so commands are refused rather than run unsigned.
const TEMPLATE_CENTRE_KEY_HEX: &str =
    "6fee6eaa0e123cc541d3febd2c98527867166bfa07d618ac1a82976491a15642";

/// Whose commands the node will run: the template's placeholder key (every command
/// refused) and unsigned commands (anyone on the broker) are both worth a warning.
fn check_centre_key(cfg: &Config) -> Check {
    let up = &cfg.uplink;
    match &up.centre_public_key {
        Some(k) => {
            if hex::encode(k.to_bytes()) == TEMPLATE_CENTRE_KEY_HEX {
                Check::new(
                    "centre key",
                    Status::Warn,
                    "uplink.centre_public_key is still the site template's placeholder: every command from the centre is refused until the centre's own key is set",
                )
            } else {
                Check::new(
                    "centre key",
                    Status::Pass,
                    "commands must carry the centre's signature (uplink.centre_public_key)",
                )
            }
        }
        None if up.broker.is_some() && up.allow_unsigned_commands => Check::new(
            "centre key",
            Status::Warn,
            "uplink.allow_unsigned_commands = true: anyone who can publish on this node's command topic can change thresholds, add references and pull images; set uplink.centre_public_key",
        ),
        None => Check::new(
            "centre key",
            Status::Pass,
            "no uplink.broker: no centre commands to verify",
        ),
    }
}

/// The node and site ids the shipped configs carry (firmware-config/riac-node.toml and
/// the site templates): a node installed from them and never given its own would sign its
/// verdicts as another node of another site.
const TEMPLATE_IDS: [(&str, &str); 2] = [("KHI-N1", "KHI"), ("TKM-N1", "TKM")];

fn check_identity(cfg: &Config) -> Check {
    let ids = (cfg.node_id.as_str(), cfg.site_id.as_str());
    if TEMPLATE_IDS.contains(&ids) {
        Check::new(
            "identity",
            Status::Warn,
            format!(
                "node.node_id {:?} and node.site_id {:?} are still a shipped template's: unless this really is that node, set this node's own ids before its first verdict (they are signed into every verdict and its chain)",
                ids.0, ids.1
            ),
        )
    } else {
        Check::new(
            "identity",
            Status::Pass,
            format!("node {} at site {}", ids.0, ids.1),
        )
    }
}

/// The manifest check matches each scan against the reference library: with none, every
/// scan is referred as "no references", which a fresh install should not learn in use.
fn check_library(cfg: &Config) -> Check {
    let path = cfg.db_path();
    let empty = |why: String| {
        Check::new(
            "library",
            Status::Warn,
            format!("{why}: the manifest check has nothing to match scans against; import reference drops with `riac-node library import DIR --data-dir {}`, or have the centre send them", cfg.data_dir.display()),
        )
    };
    if !path.exists() {
        return empty("no database yet, so no reference library".into());
    }
    // References embedded by another model than the configured one (an upgraded model)
    // are not searched until they are imported again.
    let model_sha = cfg
        .matching
        .model
        .as_deref()
        .and_then(|m| crate::matching::ModelSpec::load(m).ok())
        .map(|s| s.model.sha256.to_ascii_lowercase());
    let count = open_read_only(&path).and_then(|c| {
        c.query_row(
            "SELECT count(*), count(*) FILTER (WHERE lower(model_sha256) != ?1) FROM library_refs",
            [model_sha.as_deref().unwrap_or("")],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
    });
    match count {
        Ok((0, _)) => empty("the reference library is empty".into()),
        Ok((n, stale)) if model_sha.is_some() && stale > 0 => Check::new(
            "library",
            Status::Warn,
            format!(
                "{stale} of {n} reference scans were embedded by another model than matching.model (an upgrade?) and are not searched: run `riac-node library import DIR --data-dir {}` again on their folder",
                cfg.data_dir.display()
            ),
        ),
        Ok((n, _)) => Check::new(
            "library",
            Status::Pass,
            format!("{n} reference scans in the library"),
        ),
        // The database check says what is wrong with the file itself.
        Err(e) => Check::new(
            "library",
            Status::Fail,
            format!(
                "cannot count the reference library in {}: {e}",
                path.display()
            ),
        ),
    }
}

/// The scanner writes into the hot folder and the node reads, renames and moves drops
/// there: it must be listable as well as writable.
fn check_hot_folder(dir: &Path) -> Check {
    let w = check_dir_writable("hot folder", dir);
    if w.status != Status::Pass {
        return w;
    }
    match fs::read_dir(dir).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(entries) => Check::new(
            "hot folder",
            Status::Pass,
            format!(
                "{} is readable and writable ({} entries)",
                dir.display(),
                entries.len()
            ),
        ),
        Err(e) => Check::new(
            "hot folder",
            Status::Fail,
            format!(
                "cannot list {}: {e}; the service user riac needs read and execute permission (for a network share: the mount's uid/gid or file_mode/dir_mode)",
                dir.display()
            ),
        ),
    }
}

/// Loads the model exactly as the daemon does: contract, sha256 of the .onnx, the backend,
/// shapes and one trial run.
fn check_model(cfg: &Config) -> Check {
    use crate::matching::{resolve_backend, EmbeddingModel};
    let Some(contract) = &cfg.matching.model else {
        return Check::new(
            "model",
            Status::Warn,
            "matching.model is not set: every verdict will say \"manifest check not run\" (refer); set it to /usr/share/riac-node/models/riac-texture.toml",
        );
    };
    let loaded = resolve_backend(cfg.matching.backend, cfg.matching.ort_library.as_deref())
        .and_then(|backend| EmbeddingModel::load(contract, backend));
    match loaded {
        Ok(m) => Check::new(
            "model",
            Status::Pass,
            format!(
                "{} {} loads on {} (sha256 {} as {} says)",
                m.spec.model.name,
                m.spec.model.version,
                m.backend.name(),
                m.spec.model.sha256,
                contract.display()
            ),
        ),
        Err(e) => Check::new("model", Status::Fail, format!("matching.model: {e}")),
    }
}

/// Why the broker could not be used, stage by stage.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve {host}: {source}; check uplink.broker and the node's DNS")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot open a TCP connection to {addr}: {source}; check that the broker runs, uplink.broker's host and port, and the firewall (TCP {port} outbound)")]
    Connect {
        addr: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("{0}")]
    Files(#[from] crate::uplink::config::UplinkFileError),
    #[error("uplink.broker host {host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("TLS handshake with {addr} failed: {source}; check that uplink.tls_ca_file is the centre's CA, that the broker's certificate names {host}, and that the client certificate is signed by the broker's CA")]
    Tls {
        addr: String,
        host: String,
        source: std::io::Error,
    },
    #[error("no MQTT answer from {addr} within {secs} s ({source}); is it an MQTT broker, and TLS on a TLS port (mqtts://) only?")]
    NoConnack {
        addr: String,
        secs: u64,
        source: std::io::Error,
    },
    #[error("{addr} answered with something that is not an MQTT CONNACK ({bytes:02x?})")]
    NotMqtt { addr: String, bytes: Vec<u8> },
    #[error("the broker at {addr} refused the connection: {reason}")]
    Refused { addr: String, reason: &'static str },
}

fn check_broker(cfg: &Config) -> Check {
    let Some(b) = &cfg.uplink.broker else {
        return Check::new(
            "broker",
            Status::Warn,
            "no uplink.broker: the node works offline and the outbox keeps every verdict until a broker is configured",
        );
    };
    match probe_broker(b) {
        Ok(how) => Check::new(
            "broker",
            Status::Pass,
            format!("{} accepted an MQTT session ({how})", b.url),
        ),
        Err(e) => Check::new("broker", Status::Fail, format!("{}: {e}", b.url)),
    }
}

/// TCP connect, TLS handshake (with the configured CA and client certificate) and an
/// MQTT 3.1.1 CONNECT answered by CONNACK 0, each within the uplink's connect timeout.
pub fn probe_broker(b: &crate::uplink::config::BrokerConfig) -> Result<String, ProbeError> {
    let tls = b.load_tls()?;
    let credentials = b.credentials()?;
    let timeout = b.connect_timeout.min(Duration::from_secs(15));
    let addrs: Vec<_> = (b.host.as_str(), b.port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            host: b.host.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut sock = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                sock = Some((s, *a));
                break;
            }
            Err(e) => last = Some((*a, e)),
        }
    }
    let (sock, addr) = match (sock, last) {
        (Some(s), _) => s,
        (None, Some((a, source))) => {
            return Err(ProbeError::Connect {
                addr: a.to_string(),
                port: b.port,
                source,
            })
        }
        (None, None) => {
            return Err(ProbeError::Resolve {
                host: b.host.clone(),
                source: std::io::Error::other("no address"),
            })
        }
    };
    let addr = addr.to_string();
    let io_timeout = |s: &TcpStream| {
        let _ = s.set_read_timeout(Some(timeout));
        let _ = s.set_write_timeout(Some(timeout));
    };
    io_timeout(&sock);
    // Our own client id, clean session: see the module header.
    let client_id = format!("{}-doctor", b.client_id);
    let connect = connect_packet(&client_id, credentials.as_ref(), b.keep_alive);
    let how = match tls {
        None => {
            let mut s = sock;
            mqtt_connect(&mut s, &connect, &addr, timeout)?;
            "plain TCP"
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(b.host.clone()).map_err(|_| {
                ProbeError::ServerName {
                    host: b.host.clone(),
                }
            })?;
            let conn =
                rustls::ClientConnection::new(config, name).map_err(|e| ProbeError::Tls {
                    addr: addr.clone(),
                    host: b.host.clone(),
                    source: std::io::Error::other(e),
                })?;
            let mut s = rustls::StreamOwned::new(conn, sock);
            while s.conn.is_handshaking() {
                s.conn
                    .complete_io(&mut s.sock)
                    .map_err(|source| ProbeError::Tls {
                        addr: addr.clone(),
                        host: b.host.clone(),
                        source,
                    })?;
            }
            let how = if b.client_cert.is_some() {
                "TLS with client certificate"
            } else {
                "TLS"
            };
            mqtt_connect(&mut s, &connect, &addr, timeout)?;
            how
        }
    };
    Ok(format!("{how}, CONNACK accepted as client {client_id}"))
}

/// MQTT 3.1.1 CONNECT with clean session (section 3.1 of the standard).
fn connect_packet(
    client_id: &str,
    cred: Option<&(String, String)>,
    keep_alive: Duration,
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut flags = 0x02u8;
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    if cred.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&(keep_alive.as_secs().min(u64::from(u16::MAX)) as u16).to_be_bytes());
    string(&mut body, client_id.as_bytes());
    if let Some((u, p)) = cred {
        string(&mut body, u.as_bytes());
        string(&mut body, p.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

fn mqtt_connect<S: Read + Write>(
    s: &mut S,
    connect: &[u8],
    addr: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let no_ack = |source| ProbeError::NoConnack {
        addr: addr.to_string(),
        secs: timeout.as_secs(),
        source,
    };
    s.write_all(connect)
        .and_then(|()| s.flush())
        .map_err(no_ack)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).map_err(no_ack)?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        return Err(ProbeError::NotMqtt {
            addr: addr.to_string(),
            bytes: ack.to_vec(),
        });
    }
    let reason = match ack[3] {
        0 => {
            // DISCONNECT, so that the broker does not publish a will or log a lost client.
            let _ = s.write_all(&[0xe0, 0x00]);
            let _ = s.flush();
            return Ok(());
        }
        1 => "unacceptable protocol version (the broker must speak MQTT 3.1.1)",
        2 => "client identifier rejected (check uplink.client_id; the doctor appends -doctor)",
        3 => "server unavailable",
        4 => "bad user name or password (uplink.username / uplink.password_file)",
        5 => "not authorised (is this node's certificate CN / user name in the broker's ACL and allowed to connect?)",
        _ => "unknown CONNACK return code",
    };
    Err(ProbeError::Refused {
        addr: addr.to_string(),
        reason,
    })
}

fn check_dir_writable(name: &'static str, dir: &Path) -> Check {
    if !dir.exists() {
        return Check::new(
            name,
            Status::Fail,
            format!(
                "{} does not exist; create it (owned by the riac user) or fix the config",
                dir.display()
            ),
        );
    }
    let probe = dir.join(format!(".riac-doctor-{}", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&probe)?;
        f.write_all(b"probe")?;
        f.sync_all()?;
        fs::remove_file(&probe)
    })();
    match r {
        Ok(()) => Check::new(name, Status::Pass, format!("{} is writable", dir.display())),
        Err(e) => {
            let _ = fs::remove_file(&probe);
            Check::new(
                name,
                Status::Fail,
                format!("cannot write in {}: {e}; check ownership and permissions (the service runs as user riac)", dir.display()),
            )
        }
    }
}

fn check_free_space(dir: &Path) -> Check {
    match crate::fsx::space(dir) {
        Err(e) => Check::new(
            "disk space",
            Status::Fail,
            format!("cannot read free space of {}: {e}", dir.display()),
        ),
        Ok(crate::fsx::Space { free, total }) => {
            let gib = |b: u64| b as f64 / (1024.0 * 1024.0 * 1024.0);
            let detail = format!(
                "{:.1} GiB free of {:.1} GiB on {}",
                gib(free),
                gib(total),
                dir.display()
            );
            if free < MIN_FREE_BYTES {
                Check::new(
                    "disk space",
                    Status::Fail,
                    format!("{detail}; free space or move the data dir to a larger disk"),
                )
            } else if total > 0 && free * 10 < total {
                Check::new("disk space", Status::Warn, format!("{detail} (under 10%)"))
            } else {
                Check::new("disk space", Status::Pass, detail)
            }
        }
    }
}

/// The node's database as the checks read it: never written, never created.
fn open_read_only(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
}

fn check_database(cfg: &Config) -> Check {
    let path = cfg.db_path();
    if !path.exists() {
        return Check::new(
            "database",
            Status::Pass,
            format!(
                "{} does not exist yet; the node creates it at first start",
                path.display()
            ),
        );
    }
    let r = (|| -> rusqlite::Result<(String, i64)> {
        let c = open_read_only(&path)?;
        let qc: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok((qc, v))
    })();
    match r {
        Ok((qc, v)) if qc == "ok" && v <= crate::store::schema::VERSION => Check::new(
            "database",
            Status::Pass,
            format!("{} passes quick_check (schema {v})", path.display()),
        ),
        Ok((qc, v)) if qc == "ok" => Check::new(
            "database",
            Status::Fail,
            format!(
                "{} has schema {v}, newer than this riac-node ({}); install the newer version",
                path.display(),
                crate::store::schema::VERSION
            ),
        ),
        Ok((qc, _)) => Check::new(
            "database",
            Status::Fail,
            format!(
                "{} is damaged: {qc}; stop the node and restore from backup",
                path.display()
            ),
        ),
        Err(e) => Check::new(
            "database",
            Status::Fail,
            format!("cannot read {}: {e}", path.display()),
        ),
    }
}

fn check_clock(cfg: &Config) -> Check {
    let now = time::OffsetDateTime::now_utc();
    if now.year() < 2025 {
        return Check::new(
            "clock",
            Status::Fail,
            format!("system clock says {now}; set the time (NTP) before scanning: timestamps are evidence"),
        );
    }
    // A clock that jumped back behind scans already stored would make new scans look older.
    let newest: Option<String> = rusqlite::Connection::open_with_flags(
        cfg.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()
    .and_then(|c| {
        c.query_row("SELECT max(received_at) FROM scans", [], |r| r.get(0))
            .ok()
    })
    .flatten();
    let now_s = crate::store::format_ts(now);
    if let Some(n) = newest {
        if n > now_s {
            return Check::new(
                "clock",
                Status::Fail,
                format!("system clock ({now_s}) is behind the newest stored scan ({n}); fix NTP before starting the node"),
            );
        }
    }
    match std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
    {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "yes" => {
            Check::new(
                "clock",
                Status::Pass,
                format!("{now_s}, synchronised by NTP"),
            )
        }
        Ok(out) if out.status.success() => Check::new(
            "clock",
            Status::Warn,
            format!(
                "{now_s}, but systemd reports it is not NTP-synchronised; enable timesyncd/chrony"
            ),
        ),
        _ => Check::new(
            "clock",
            Status::Warn,
            format!("{now_s}; cannot ask timedatectl whether NTP is synchronised"),
        ),
    }
}

fn check_listen(cfg: &Config) -> Check {
    match std::net::TcpListener::bind(cfg.listen) {
        Ok(_) => Check::new(
            "web listen",
            Status::Pass,
            format!("{} is free to bind", cfg.listen),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::new(
            "web listen",
            Status::Warn,
            format!(
                "{} is in use (the node may already be running: `systemctl status riac-node`)",
                cfg.listen
            ),
        ),
        Err(e) => Check::new(
            "web listen",
            Status::Fail,
            format!("cannot bind {}: {e}; change web.listen", cfg.listen),
        ),
    }
}

/// Prints the checks as a list and returns whether all passed or only warned.
pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        println!("{:<5} {:<12} {}", c.status, c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed == 0 {
        println!("all checks passed");
    } else {
        println!("{failed} check(s) failed");
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
        let p = dir.join("c.toml");
        fs::write(
            &p,
            format!(
                "[node]\nnode_id = \"n\"\nsite_id = \"S\"\n[paths]\ndata_dir = \"{}\"\n[web]\nlisten = \"127.0.0.1:0\"\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        p
    }

    fn status_of(checks: &[Check], name: &str) -> Status {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
            .status
    }

    #[test]
    fn bad_config_fails_first() {
        let d = tempfile::tempdir().unwrap();
        let p = write_config(d.path(), "[ingest]\nmax_width = 1\n");
        let checks = run(&p, &Overrides::default());
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].detail.contains("ingest.max_width"));
    }

    #[test]
    fn missing_and_unwritable_dirs_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = write_config(d.path(), "");
        let checks = run(&p, &Overrides::default());
        assert_eq!(status_of(&checks, "data dir"), Status::Fail);
        fs::create_dir_all(d.path().join("data/incoming")).unwrap();
        let checks = run(&p, &Overrides::default());
        assert_eq!(status_of(&checks, "data dir"), Status::Pass);
        assert_eq!(status_of(&checks, "hot folder"), Status::Pass);
        assert_eq!(status_of(&checks, "database"), Status::Pass);
        assert_eq!(status_of(&checks, "web listen"), Status::Pass);
        // Root ignores permission bits, so unwritability is made with a file in the way.
        let blocked = d.path().join("blocked");
        fs::write(&blocked, b"x").unwrap();
        let c = check_dir_writable("hot folder", &blocked.join("sub"));
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn a_shipped_templates_ids_are_warned_about_and_the_list_is_the_templates() {
        let d = tempfile::tempdir().unwrap();
        let p = write_config(d.path(), "");
        let mut cfg = Config::load(&p, &Overrides::default()).unwrap();
        assert_eq!(check_identity(&cfg).status, Status::Pass);
        (cfg.node_id, cfg.site_id) = ("TKM-N1".into(), "TKM".into());
        let c = check_identity(&cfg);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("TKM-N1"), "{}", c.detail);
        // Every shipped config's ids are in the list, so none can slip past the warning.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
        let mut files = vec![root.join("riac-node.toml")];
        for e in fs::read_dir(root.join("sites")).unwrap() {
            files.push(e.unwrap().path());
        }
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            let id = |key: &str| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("{key} = \"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("{} sets no {key}", f.display()))
                    .to_string()
            };
            let ids = (id("node_id"), id("site_id"));
            assert!(
                TEMPLATE_IDS.contains(&(ids.0.as_str(), ids.1.as_str())),
                "{}: {ids:?} is not in TEMPLATE_IDS",
                f.display()
            );
        }
    }

    #[test]
    fn an_empty_or_stale_reference_library_is_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let p = write_config(d.path(), "");
        let cfg = Config::load(&p, &Overrides::default()).unwrap();
        // Fresh install: no database yet.
        assert_eq!(check_library(&cfg).status, Status::Warn);
        fs::create_dir_all(&cfg.data_dir).unwrap();
        let store = crate::store::Store::open(&cfg.db_path()).unwrap();
        let c = check_library(&cfg);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(c.detail.contains("library import"), "{}", c.detail);
        drop(store);
        let c = rusqlite::Connection::open(cfg.db_path()).unwrap();
        c.execute(
            "INSERT INTO library_refs VALUES ('R1', '1006.30', NULL, '2026-12-07T00:00:00Z', 'a', 'b', 1, 1, 0.5, 10, 10, 't.png', x'00000000', x'00000000')",
            [],
        )
        .unwrap();
        let c = check_library(&cfg);
        assert_eq!(c.status, Status::Pass, "{}", c.detail);
        assert!(c.detail.starts_with("1 reference"), "{}", c.detail);

        // With the shipped model configured, that reference (model sha "b") is another
        // model's: not searched, and said so, as for an empty library.
        let model = crate::matching::bundled_model();
        let p = write_config(
            d.path(),
            &format!("[matching]\nmodel = \"{}\"\n", model.display()),
        );
        let cfg = Config::load(&p, &Overrides::default()).unwrap();
        let c = check_library(&cfg);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(
            c.detail.contains("1 of 1") && c.detail.contains("library import"),
            "{}",
            c.detail
        );
        let sha = crate::matching::ModelSpec::load(&model)
            .unwrap()
            .model
            .sha256;
        rusqlite::Connection::open(cfg.db_path())
            .unwrap()
            .execute(
                &format!("INSERT INTO library_refs VALUES ('R2', '1006.30', NULL, '2026-12-07T00:00:00Z', 'a', '{sha}', 1, 1, 0.5, 10, 10, 't.png', x'00000000', x'00000000')"),
                [],
            )
            .unwrap();
        let c = check_library(&cfg);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(c.detail.contains("1 of 2"), "{}", c.detail);
    }

    #[test]
    fn connect_packet_is_mqtt_3_1_1_with_clean_session() {
        let p = connect_packet("c", None, Duration::from_secs(30));
        assert_eq!(
            p,
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'c']
        );
        let cred = ("u".to_string(), "pw".to_string());
        let p = connect_packet("c", Some(&cred), Duration::from_secs(30));
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(p[9], 0xc2);
        assert!(p.ends_with(&[0, 1, b'u', 0, 2, b'p', b'w']));
    }

    /// A broker that answers every write with `reply`.
    struct Answer {
        reply: std::io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }
    impl Read for Answer {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.reply.read(b)
        }
    }
    impl Write for Answer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn connack_codes_are_named() {
        let mut ok = Answer {
            reply: std::io::Cursor::new(vec![0x20, 2, 0, 0]),
            written: Vec::new(),
        };
        mqtt_connect(&mut ok, &[0x10, 0], "a:1", Duration::from_secs(1)).unwrap();
        assert_eq!(ok.written, [0x10, 0, 0xe0, 0]);
        let mut refused = Answer {
            reply: std::io::Cursor::new(vec![0x20, 2, 0, 5]),
            written: Vec::new(),
        };
        let e = mqtt_connect(&mut refused, &[0x10, 0], "a:1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a:1") && e.contains("not authorised"), "{e}");
        let mut http = Answer {
            reply: std::io::Cursor::new(b"HTTP/1.1 400".to_vec()),
            written: Vec::new(),
        };
        let e = mqtt_connect(&mut http, &[0x10, 0], "a:1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an MQTT CONNACK"), "{e}");
        let mut silent = Answer {
            reply: std::io::Cursor::new(Vec::new()),
            written: Vec::new(),
        };
        let e = mqtt_connect(&mut silent, &[0x10, 0], "a:1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no MQTT answer"), "{e}");
    }

    #[test]
    fn damaged_database_fails() {
        let d = tempfile::tempdir().unwrap();
        let p = write_config(d.path(), "");
        fs::create_dir_all(d.path().join("data")).unwrap();
        fs::write(
            d.path().join("data/riac-node.db"),
            b"this is not a database, it is a text file that is long enough",
        )
        .unwrap();
        let checks = run(&p, &Overrides::default());
        assert_eq!(status_of(&checks, "database"), Status::Fail);
    }
}
