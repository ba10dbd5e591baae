//! HTTPS for the operator UI: loads the site's certificate and key, or generates a
//! self-signed pair under `<data_dir>/tls/` on first start (kept across restarts, so
//! browsers that accepted it once keep accepting it), and a listener that completes TLS
//! handshakes off the accept loop (a slow or hostile client never stalls the others). It
//! never falls back to plain HTTP when TLS is configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TlsConfig};
use crate::store::chain::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path} holds no usable PEM {what}: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("the certificate and key do not make a TLS configuration ({message}); check that web.tls_key is the key of web.tls_cert")]
    Config { message: String },
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write the self-signed certificate under {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The TLS setup the server runs with, and what to tell operators about it.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), for checking a self-signed certificate
    /// on first connection.
    pub fingerprint: String,
    pub cert_path: PathBuf,
    pub self_signed: bool,
}

/// Builds the TLS setup from the config, generating the self-signed pair when needed.
/// Blocking (file I/O, key generation): call from spawn_blocking or at start.
pub fn load(cfg: &Config) -> Result<Option<Tls>, TlsError> {
    let (cert_path, key_path, self_signed) = match &cfg.web.tls {
        None => return Ok(None),
        Some(TlsConfig::Files { cert, key }) => (cert.clone(), key.clone(), false),
        Some(TlsConfig::SelfSigned) => {
            let dir = cfg.data_dir.join("tls");
            let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
            if !(cert.is_file() && key.is_file()) {
                generate_self_signed(&dir, &cert, &key, cfg)?;
            }
            (cert, key, true)
        }
    };
    let (ck, kk) = if self_signed {
        ("self-signed certificate", "self-signed key")
    } else {
        ("web.tls_cert", "web.tls_key")
    };
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(ck, &cert_path)?;
    let key_pem = read(kk, &key_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            key: ck,
            path: cert_path.clone(),
            what: "certificate",
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: ck,
            path: cert_path,
            what: "certificate",
            message: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        key: kk,
        path: key_path.clone(),
        what: "private key",
        message: e.to_string(),
    })?;
    let fingerprint = sha256_hex(certs[0].as_ref());
    // The provider is named explicitly: another crate in the build may enable a second
    // rustls provider, and then rustls refuses to guess.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config {
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Config {
        message: e.to_string(),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls {
        config: Arc::new(config),
        fingerprint,
        cert_path,
        self_signed,
    }))
}

fn self_signed_names(cfg: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    let ip = cfg.listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names.push(cfg.node_id.clone());
    names.sort();
    names.dedup();
    names
}

fn generate_self_signed(dir: &Path, cert: &Path, key: &Path, cfg: &Config) -> Result<(), TlsError> {
    let names = self_signed_names(cfg);
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("riac-node {}", cfg.node_id),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let kp = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let c = params
        .self_signed(&kp)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let werr = |source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    // The key first and the certificate last: `load` regenerates unless both exist, so a
    // crash in between leaves a state that is repaired at the next start.
    write_durably(key, kp.serialize_pem().as_bytes(), 0o600).map_err(werr)?;
    write_durably(cert, c.pem().as_bytes(), 0o644).map_err(werr)?;
    tracing::info!(names = ?names, path = %cert.display(), "generated a self-signed TLS certificate (replace it with the site's certificate via web.tls_cert / web.tls_key)");
    Ok(())
}

fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("tls.pem");
    crate::fsx::write_file(dir, name, bytes, Some(mode)).map(|_| ())
}

/// Handshakes that may be in progress at once, and how long one may take.
const MAX_HANDSHAKES: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An axum listener yielding finished TLS connections. A background task accepts TCP and
/// runs each handshake in its own task; failed handshakes are logged at debug and dropped.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        tracker: &TaskTracker,
        token: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let t2 = tracker.clone();
        tracker.spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = token.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                };
                let (stream, addr) = tokio::select! {
                    _ = token.cancelled() => break,
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: pause rather than spin.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                t2.spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task has stopped (shutdown): the server stops calling accept once
            // its graceful shutdown begins, so wait for that.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
