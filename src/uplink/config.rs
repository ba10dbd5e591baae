//! The `[uplink]` config section: [`RawUplink`] as written, validated into [`UplinkConfig`]
//! by [`validate`] (called from `Config::from_raw`), with every error naming the key and the
//! value. Validation here is pure; the files the section names (TLS certificates, the
//! password file) are read by [`BrokerConfig::load_tls`] / [`BrokerConfig::credentials`] at
//! start and by `validate-config`, so that a bad file stops the node before it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::config::{invalid, ranged, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUplink {
    pub broker: Option<String>,
    pub client_id: Option<String>,
    pub allow_plain: Option<bool>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub inflight: Option<u32>,
    pub inflight_mb: Option<u64>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_secs: Option<u64>,
    pub status_interval_secs: Option<u64>,
    pub outbox_quota_mb: Option<u64>,
    pub outbox_warn_percent: Option<u32>,
    pub max_message_mb: Option<u64>,
    pub command_max_kb: Option<u64>,
    pub image_chunk_kb: Option<u64>,
    pub entry_image_reduction: Option<f64>,
    pub entry_max_age_days: Option<u64>,
    pub node_key_file: Option<PathBuf>,
    pub centre_public_key: Option<String>,
    pub allow_unsigned_commands: Option<bool>,
    pub command_max_ttl_hours: Option<u64>,
}

/// How to reach the central RIAC's broker. Present only when a broker is configured.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port`, as shown in status (never credentials).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub client_id: String,
    pub username: Option<String>,
    password: Option<Secret>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    /// Messages published and not yet acknowledged, at most.
    pub inflight: usize,
    /// Bytes published and not yet acknowledged, at most (one message always fits).
    pub inflight_bytes: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

#[derive(Clone)]
enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("<password>"),
            Secret::File(p) => write!(f, "<password in {}>", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub broker: Option<BrokerConfig>,
    pub node_key_file: PathBuf,
    /// When set, commands from the centre must carry its signature.
    pub centre_public_key: Option<VerifyingKey>,
    /// With a broker and no centre key, commands are accepted unsigned: only when the
    /// config says so explicitly (`uplink.allow_unsigned_commands`; the demo does).
    pub allow_unsigned_commands: bool,
    /// How far ahead a command's `expires_at` may lie: a signed command is a bearer
    /// instrument until it expires, so its life is kept short.
    pub command_max_ttl: Duration,
    pub status_interval: Duration,
    pub outbox_quota_bytes: u64,
    /// Fraction of the quota at which the outbox is reported near full.
    pub outbox_warn_fraction: f64,
    /// Largest MQTT message sent or accepted (entry packages are the big ones).
    pub max_message_bytes: usize,
    pub command_max_bytes: usize,
    pub image_chunk_bytes: usize,
    pub entry_image_reduction: f64,
    pub entry_max_age: Duration,
}

/// Errors reading the files named in `[uplink]`.
#[derive(Debug, thiserror::Error)]
pub enum UplinkFileError {
    #[error("config key `{key}` = {path}: cannot read the file: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}` = {path}: {reason}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

fn file_path(key: &'static str, p: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(p) if p.as_os_str().is_empty() => Err(invalid(key, "\"\"", "must be a file path")),
        Some(p) if p.is_relative() => Ok(Some(
            std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p),
        )),
        other => Ok(other),
    }
}

/// Parses `mqtt://host[:port]` / `mqtts://host[:port]` into (tls, host, port).
pub fn parse_broker_url(key: &'static str, s: &str) -> Result<(bool, String, u16), ConfigError> {
    let shown = format!("{s:?}");
    let allowed = "mqtt://host:port or mqtts://host:port (credentials go in uplink.username / uplink.password_file)";
    let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(invalid(key, shown, allowed));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) {
        return Err(invalid(key, shown, allowed));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| invalid(key, &shown, allowed))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(invalid(key, shown, allowed)),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(invalid(key, shown, allowed));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| invalid(key, &shown, "the port must be a number from 1 to 65535"))?,
    };
    Ok((tls, host, port))
}

/// Validates the section. `broker_override` is `--broker` / `RIAC_BROKER`; ids are the
/// already validated `node.node_id` / `node.site_id`.
pub fn validate(
    raw: RawUplink,
    broker_override: Option<String>,
    data_dir: &Path,
    node_id: &str,
    site_id: &str,
) -> Result<UplinkConfig, ConfigError> {
    let key_of_broker = if broker_override.is_some() {
        "--broker"
    } else {
        "uplink.broker"
    };
    let broker_url = broker_override
        .or(raw.broker)
        .filter(|s| !s.trim().is_empty());
    let ca_file = file_path("uplink.tls_ca_file", raw.tls_ca_file)?;
    let cert = file_path("uplink.tls_cert_file", raw.tls_cert_file)?;
    let key = file_path("uplink.tls_key_file", raw.tls_key_file)?;
    let password_file = file_path("uplink.password_file", raw.password_file)?;
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(c), None) => {
            return Err(invalid(
                "uplink.tls_key_file",
                "(not set)",
                format!(
                    "uplink.tls_cert_file = {} needs its private key in uplink.tls_key_file",
                    c.display()
                ),
            ))
        }
        (None, Some(k)) => {
            return Err(invalid(
                "uplink.tls_cert_file",
                "(not set)",
                format!(
                    "uplink.tls_key_file = {} needs its certificate in uplink.tls_cert_file",
                    k.display()
                ),
            ))
        }
    };
    let password = match (raw.password, password_file) {
        (Some(_), Some(f)) => {
            return Err(invalid(
                "uplink.password_file",
                f.display(),
                "set uplink.password or uplink.password_file, not both",
            ))
        }
        (Some(p), None) => Some(Secret::Inline(p)),
        (None, Some(f)) => Some(Secret::File(f)),
        (None, None) => None,
    };
    if password.is_some() && raw.username.is_none() {
        return Err(invalid(
            "uplink.username",
            "(not set)",
            "a password is configured, so uplink.username is required",
        ));
    }
    if let Some(u) = &raw.username {
        if u.is_empty() || u.len() > 256 {
            return Err(invalid(
                "uplink.username",
                format!("{u:?}"),
                "1-256 characters",
            ));
        }
    }

    let keep_alive = Duration::from_secs(ranged(
        "uplink.keep_alive_secs",
        raw.keep_alive_secs,
        30,
        5,
        3600,
    )?);
    let connect_timeout = Duration::from_secs(ranged(
        "uplink.connect_timeout_secs",
        raw.connect_timeout_secs,
        10,
        1,
        300,
    )?);
    let inflight = ranged("uplink.inflight", raw.inflight, 32, 1, 256)? as usize;
    let inflight_bytes =
        ranged("uplink.inflight_mb", raw.inflight_mb, 16, 1, 1024)? as usize * 1024 * 1024;
    let reconnect_min = Duration::from_millis(ranged(
        "uplink.reconnect_min_ms",
        raw.reconnect_min_ms,
        500,
        50,
        60_000,
    )?);
    let reconnect_max = Duration::from_secs(ranged(
        "uplink.reconnect_max_secs",
        raw.reconnect_max_secs,
        60,
        1,
        3600,
    )?);
    if reconnect_max < reconnect_min {
        return Err(invalid(
            "uplink.reconnect_max_secs",
            reconnect_max.as_secs(),
            format!(
                "must not be less than uplink.reconnect_min_ms ({} ms)",
                reconnect_min.as_millis()
            ),
        ));
    }
    let max_message_mb = ranged("uplink.max_message_mb", raw.max_message_mb, 32, 1, 256)?;
    let max_message_bytes = max_message_mb as usize * 1024 * 1024;
    let command_max_bytes = ranged(
        "uplink.command_max_kb",
        raw.command_max_kb,
        8192,
        1,
        max_message_mb * 1024,
    )? as usize
        * 1024;
    let image_chunk_bytes = ranged(
        "uplink.image_chunk_kb",
        raw.image_chunk_kb,
        256,
        16,
        // base64 grows a chunk by 4/3; leave room for the chunk's JSON header.
        (max_message_mb * 1024 * 2 / 3).max(16),
    )? as usize
        * 1024;

    let broker = match broker_url {
        None => {
            for (k, set) in [
                ("uplink.tls_ca_file", ca_file.is_some()),
                ("uplink.tls_cert_file", client_cert.is_some()),
                ("uplink.username", raw.username.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        k,
                        "(set)",
                        "no broker is configured (uplink.broker or --broker), so this key does nothing; set the broker or remove the key",
                    ));
                }
            }
            None
        }
        Some(url) => {
            let (tls, host, port) = parse_broker_url(key_of_broker, url.trim())?;
            if !tls {
                if raw.allow_plain != Some(true) {
                    return Err(invalid(
                        key_of_broker,
                        format!("{url:?}"),
                        "plain mqtt:// sends verdicts unencrypted; use mqtts://, or set uplink.allow_plain = true to allow it explicitly",
                    ));
                }
                if ca_file.is_some() || client_cert.is_some() {
                    return Err(invalid(
                        key_of_broker,
                        format!("{url:?}"),
                        "TLS files are configured but the broker URL is plain mqtt://; use mqtts://",
                    ));
                }
            }
            let client_id = raw
                .client_id
                .unwrap_or_else(|| format!("riac-{site_id}-{node_id}"));
            if client_id.is_empty()
                || client_id.len() > 128
                || !client_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(
                    "uplink.client_id",
                    format!("{client_id:?}"),
                    "1-128 characters of A-Z a-z 0-9 . _ - (the broker keeps this node's session under it)",
                ));
            }
            let shown_host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            Some(BrokerConfig {
                url: format!(
                    "{}://{shown_host}:{port}",
                    if tls { "mqtts" } else { "mqtt" }
                ),
                host,
                port,
                tls,
                ca_file,
                client_cert,
                client_id,
                username: raw.username,
                password,
                keep_alive,
                connect_timeout,
                inflight,
                inflight_bytes,
                reconnect_min,
                reconnect_max,
            })
        }
    };

    let node_key_file = file_path("uplink.node_key_file", raw.node_key_file)?
        .unwrap_or_else(|| data_dir.join("keys").join("node.key"));
    let centre_public_key = match raw.centre_public_key {
        None => None,
        Some(k) => Some(
            super::keys::parse_public_key("uplink.centre_public_key", &k).map_err(|e| {
                invalid(
                    "uplink.centre_public_key",
                    format!("{k:?}"),
                    format!("an Ed25519 public key as 64 hex characters or a PEM ({e})"),
                )
            })?,
        ),
    };
    let allow_unsigned_commands = raw.allow_unsigned_commands == Some(true);
    if broker.is_some() && centre_public_key.is_none() && !allow_unsigned_commands {
        return Err(invalid(
            "uplink.centre_public_key",
            "(missing)",
            "a broker is configured, so commands from it must be signed by the centre: set uplink.centre_public_key to the centre's Ed25519 public key, or set uplink.allow_unsigned_commands = true to accept unsigned commands explicitly (labs and demos only: anyone who can publish on the command topic could then change thresholds, add library references and pull scan images)",
        ));
    }
    if centre_public_key.is_some() && allow_unsigned_commands {
        return Err(invalid(
            "uplink.allow_unsigned_commands",
            "true",
            "uplink.centre_public_key is set, so commands must be signed; remove one of the two",
        ));
    }
    let command_max_ttl = Duration::from_secs(
        3600 * ranged(
            "uplink.command_max_ttl_hours",
            raw.command_max_ttl_hours,
            24,
            1,
            720,
        )?,
    );
    let pct = ranged(
        "uplink.outbox_warn_percent",
        raw.outbox_warn_percent,
        80,
        10,
        99,
    )?;
    Ok(UplinkConfig {
        broker,
        node_key_file,
        centre_public_key,
        allow_unsigned_commands,
        command_max_ttl,
        status_interval: Duration::from_secs(ranged(
            "uplink.status_interval_secs",
            raw.status_interval_secs,
            60,
            5,
            3600,
        )?),
        outbox_quota_bytes: ranged(
            "uplink.outbox_quota_mb",
            raw.outbox_quota_mb,
            2048,
            1,
            10_000_000,
        )? * 1024
            * 1024,
        outbox_warn_fraction: f64::from(pct) / 100.0,
        max_message_bytes,
        command_max_bytes,
        image_chunk_bytes,
        entry_image_reduction: ranged(
            "uplink.entry_image_reduction",
            raw.entry_image_reduction,
            0.5,
            0.1,
            1.0,
        )?,
        entry_max_age: Duration::from_secs(
            86_400
                * ranged(
                    "uplink.entry_max_age_days",
                    raw.entry_max_age_days,
                    30,
                    1,
                    3650,
                )?,
        ),
    })
}

impl BrokerConfig {
    /// The username and password, reading the password file if one is configured.
    pub fn credentials(&self) -> Result<Option<(String, String)>, UplinkFileError> {
        let Some(user) = &self.username else {
            return Ok(None);
        };
        let pass = match &self.password {
            None => String::new(),
            Some(Secret::Inline(p)) => p.clone(),
            Some(Secret::File(f)) => std::fs::read_to_string(f)
                .map_err(|source| UplinkFileError::Read {
                    key: "uplink.password_file",
                    path: f.clone(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        };
        Ok(Some((user.clone(), pass)))
    }

    /// The rustls client configuration: the CA file's certificates (or the system's roots
    /// when none is given) and the client certificate, if configured. `None` for plain TCP.
    pub fn load_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, UplinkFileError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if !self.tls {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(ca) => {
                let certs = read_certs("uplink.tls_ca_file", ca)?;
                for c in certs {
                    roots.add(c).map_err(|e| UplinkFileError::Invalid {
                        key: "uplink.tls_ca_file",
                        path: ca.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(UplinkFileError::Invalid {
                        key: "uplink.tls_ca_file",
                        path: PathBuf::from("(not set)"),
                        reason: "no CA file is configured and the system has no CA certificates; set uplink.tls_ca_file to the centre's CA".into(),
                    });
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default TLS versions")
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = read_certs("uplink.tls_cert_file", cert)?;
                let pk =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| UplinkFileError::Invalid {
                        key: "uplink.tls_key_file",
                        path: key.clone(),
                        reason: format!("no PEM private key found ({e})"),
                    })?;
                builder
                    .with_client_auth_cert(chain, pk)
                    .map_err(|e| UplinkFileError::Invalid {
                        key: "uplink.tls_key_file",
                        path: key.clone(),
                        reason: format!("does not fit uplink.tls_cert_file: {e}"),
                    })?
            }
        };
        Ok(Some(Arc::new(config)))
    }
}

fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, UplinkFileError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(path).map_err(|source| UplinkFileError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UplinkFileError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(UplinkFileError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(raw: RawUplink, broker: Option<&str>) -> Result<UplinkConfig, ConfigError> {
        validate(
            raw,
            broker.map(str::to_string),
            Path::new("/d"),
            "N1",
            "KHI",
        )
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_broker_url("k", "mqtts://centre.example").unwrap(),
            (true, "centre.example".into(), 8883)
        );
        assert_eq!(
            parse_broker_url("k", "mqtt://127.0.0.1:1884").unwrap(),
            (false, "127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_broker_url("k", "mqtts://[::1]:8884/").unwrap(),
            (true, "::1".into(), 8884)
        );
        for bad in [
            "tcp://x:1",
            "mqtt://",
            "mqtt://u:p@h:1",
            "mqtts://h:0",
            "mqtts://h:x",
            "mqtt://h/a",
        ] {
            let e = parse_broker_url("uplink.broker", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("uplink.broker") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn no_broker_is_offline_and_plain_needs_consent() {
        let c = v(RawUplink::default(), None).unwrap();
        assert!(c.broker.is_none());
        assert_eq!(c.node_key_file, PathBuf::from("/d/keys/node.key"));

        let e = v(RawUplink::default(), Some("mqtt://127.0.0.1:1883"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--broker") && e.contains("allow_plain"), "{e}");
        let c = v(
            RawUplink {
                allow_plain: Some(true),
                allow_unsigned_commands: Some(true),
                ..Default::default()
            },
            Some("mqtt://127.0.0.1:1883"),
        )
        .unwrap();
        assert!(c.allow_unsigned_commands);
        let b = c.broker.unwrap();
        assert_eq!(
            (b.tls, b.port, b.client_id.as_str()),
            (false, 1883, "riac-KHI-N1")
        );

        let e = v(
            RawUplink {
                tls_cert_file: Some("/c.pem".into()),
                broker: Some("mqtts://h".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uplink.tls_key_file"), "{e}");

        let e = v(
            RawUplink {
                password: Some("x".into()),
                broker: Some("mqtts://h".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uplink.username"), "{e}");

        let e = v(
            RawUplink {
                inflight: Some(0),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uplink.inflight") && e.contains("= 0"), "{e}");

        let e = v(
            RawUplink {
                centre_public_key: Some("zz".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("uplink.centre_public_key") && e.contains("zz"),
            "{e}"
        );
    }

    #[test]
    fn a_broker_needs_the_centre_key_or_explicit_unsigned_commands() {
        let e = v(RawUplink::default(), Some("mqtts://centre.example"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uplink.centre_public_key") && e.contains("allow_unsigned_commands"),
            "{e}"
        );
        let key = "11".repeat(32);
        let e = v(
            RawUplink {
                centre_public_key: Some(key.clone()),
                allow_unsigned_commands: Some(true),
                ..Default::default()
            },
            Some("mqtts://centre.example"),
        );
        // A malformed test key may fail first; either way the pair is not accepted.
        assert!(e.is_err());
        let c = v(
            RawUplink {
                command_max_ttl_hours: Some(2),
                allow_unsigned_commands: Some(true),
                ..Default::default()
            },
            Some("mqtts://centre.example"),
        )
        .unwrap();
        assert_eq!(c.command_max_ttl, Duration::from_secs(7200));
        // Without a broker nothing can send commands: no key needed.
        assert!(v(RawUplink::default(), None).is_ok());
    }
}
