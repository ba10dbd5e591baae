//! The node's Ed25519 identity and the public keys it checks. This module owns the node key
//! file (PKCS#8 PEM, mode 0600, written to a temp file, fsynced and renamed so a crash
//! leaves either no key or a whole one), refuses a key file that is unreadable, malformed or
//! readable by anyone but its owner, signs verdicts, and parses the public keys given to
//! `verify-chain` and `uplink.centre_public_key`. It never logs, prints or sends the private
//! key, and never replaces an existing key unless `keys init --force` asks it to.
//!
//! Key encodings: the private key file is PKCS#8 PEM (`openssl pkey -in node.key -pubout`
//! reads it); public keys and signatures travel as lowercase hex (64 and 128 characters).
//! A public key may also be given as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::store::verdicts::VerdictSigner;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key file yet: run `riac-node keys init`, or let the node make one (see
    /// [`NodeKey::load_or_create`]).
    #[error("node key file {path} does not exist; create it with `riac-node keys init`")]
    Missing { path: PathBuf },
    #[error("cannot read node key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Anyone who can read the key can sign verdicts in this node's name.
    #[error("node key file {path} has mode {mode:o}; it must be readable by its owner only: run `chmod 600 {path}`")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("node key file {path} is not an Ed25519 PKCS#8 PEM private key ({reason}); restore it from a backup or make a new one with `riac-node keys init --force` and register the new public key with the centre")]
    Malformed { path: PathBuf, reason: String },
    #[error("node key file {path} already exists; refusing to replace it (verdicts already signed with it would no longer match this node's key). Use --force to replace it anyway")]
    Exists { path: PathBuf },
    #[error("cannot write node key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("{what} {value:?} is not an Ed25519 public key: {reason}")]
    BadPublicKey {
        what: String,
        value: String,
        reason: String,
    },
}

/// The node's signing key. Cheap to share behind an `Arc`; signing never fails.
pub struct NodeKey {
    signing: SigningKey,
    path: PathBuf,
}

impl std::fmt::Debug for NodeKey {
    // Never print the secret half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("path", &self.path)
            .field("public", &self.public_hex())
            .finish()
    }
}

/// What [`NodeKey::load_or_create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Loaded,
    Created,
}

impl NodeKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(path: &Path) -> Result<NodeKey, KeyError> {
        use rand::TryRngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let signing = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(NodeKey {
            signing,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 hex characters: what `verify-chain --pubkey` and the centre take.
    pub fn public_hex(&self) -> String {
        hex::encode(self.verifying_key().as_bytes())
    }

    /// The public key as SPKI PEM, written beside the private key for convenience.
    pub fn public_pem(&self) -> String {
        self.verifying_key()
            .to_public_key_pem(Default::default())
            .expect("an Ed25519 public key encodes")
    }

    /// Ed25519 signature of `msg`, as 128 hex characters.
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        hex::encode(self.signing.sign(msg).to_bytes())
    }

    /// Loads the key at `path`, refusing files that anyone but the owner may read.
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(KeyError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if !meta.is_file() {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::LoosePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(NodeKey {
            signing,
            path: path.to_path_buf(),
        })
    }

    /// Makes a new key and writes it to `path` crash-safely (temp file with mode 0600,
    /// fsync, rename, fsync of the directory), with the public key beside it as
    /// `<path>.pub`. Refuses to replace an existing key unless `force`.
    pub fn create(path: &Path, force: bool) -> Result<NodeKey, KeyError> {
        if !force && fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::Exists {
                path: path.to_path_buf(),
            });
        }
        let key = NodeKey::generate(path)?;
        key.write(force)?;
        Ok(key)
    }

    fn write(&self, force: bool) -> Result<(), KeyError> {
        let path = &self.path;
        let werr = |source| KeyError::Write {
            path: path.clone(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(werr)?;
        let pem = self
            .signing
            .to_pkcs8_pem(Default::default())
            .map_err(|e| KeyError::Write {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map_or("node.key".into(), |n| n.to_string_lossy()),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            drop(f);
            if !force && fs::symlink_metadata(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "appeared while writing",
                ));
            }
            fs::rename(&tmp, path)?;
            let public = path.with_extension("pub");
            let ptmp = dir.join(format!(".node.pub.tmp-{}", uuid::Uuid::new_v4().simple()));
            let mut p = fs::File::create(&ptmp)?;
            p.write_all(self.public_pem().as_bytes())?;
            p.sync_all()?;
            drop(p);
            fs::rename(&ptmp, &public)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(KeyError::Exists { path: path.clone() })
            }
            r => r.map_err(werr),
        }
    }

    /// At start: loads the key, or creates it when there is none and `may_create` (the
    /// node has never signed a verdict, so no one can have registered another key). A
    /// missing key on a node that has signed verdicts is an error: a lost key is a human
    /// decision (restore the backup, or `keys init --force` and register the new key).
    pub fn load_or_create(path: &Path, may_create: bool) -> Result<(NodeKey, KeyOrigin), KeyError> {
        match NodeKey::load(path) {
            Ok(k) => Ok((k, KeyOrigin::Loaded)),
            Err(KeyError::Missing { .. }) if may_create => {
                Ok((NodeKey::create(path, false)?, KeyOrigin::Created))
            }
            Err(e) => Err(e),
        }
    }
}

impl VerdictSigner for NodeKey {
    fn sign(&self, signing_bytes: &[u8]) -> String {
        self.sign_hex(signing_bytes)
    }
}

/// Parses a public key given as 64 hex characters or an SPKI PEM. `what` names where it
/// came from (a config key, a flag) for the error.
pub fn parse_public_key(what: &str, text: &str) -> Result<VerifyingKey, KeyError> {
    let t = text.trim();
    let bad = |reason: &str| KeyError::BadPublicKey {
        what: what.to_string(),
        value: if t.len() > 80 {
            format!("{}…", &t[..80])
        } else {
            t.to_string()
        },
        reason: reason.to_string(),
    };
    if t.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(t).map_err(|e| bad(&e.to_string()));
    }
    let bytes =
        hex::decode(t).map_err(|_| bad("expected 64 hex characters or a PEM public key"))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| bad("expected 32 bytes (64 hex characters)"))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| bad(&e.to_string()))
}

/// `verify-chain --pubkey K`: K is the key itself or a file holding it.
pub fn load_public_key_arg(arg: &str) -> Result<VerifyingKey, KeyError> {
    let p = Path::new(arg);
    if p.is_file() {
        let text = fs::read_to_string(p).map_err(|e| KeyError::BadPublicKey {
            what: "--pubkey".into(),
            value: arg.into(),
            reason: format!("cannot read the file: {e}"),
        })?;
        return parse_public_key(&format!("--pubkey file {arg}"), &text);
    }
    parse_public_key("--pubkey", arg)
}

/// Checks a hex signature over `msg`. Strict verification: no malleable signatures.
pub fn verify_hex(key: &VerifyingKey, msg: &[u8], sig_hex: &str) -> Result<(), String> {
    let bytes = hex::decode(sig_hex).map_err(|_| "signature is not hex".to_string())?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| "signature is not 64 bytes".to_string())?;
    let sig = Signature::from_bytes(&arr);
    key.verify_strict(msg, &sig)
        .map_err(|_| "signature does not match".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        let k = NodeKey::create(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(path.with_extension("pub").is_file());
        let again = NodeKey::load(&path).unwrap();
        assert_eq!(again.public_hex(), k.public_hex());
        let sig = again.sign_hex(b"hello");
        let pk = parse_public_key("t", &k.public_hex()).unwrap();
        assert!(verify_hex(&pk, b"hello", &sig).is_ok());
        assert!(verify_hex(&pk, b"hellO", &sig).is_err());
        let pem_pk = parse_public_key(
            "t",
            &fs::read_to_string(path.with_extension("pub")).unwrap(),
        )
        .unwrap();
        assert_eq!(pem_pk, pk);
        // No silent replacement.
        assert!(matches!(
            NodeKey::create(&path, false),
            Err(KeyError::Exists { .. })
        ));
        let replaced = NodeKey::create(&path, true).unwrap();
        assert_ne!(replaced.public_hex(), k.public_hex());
        // Debug output does not leak the secret.
        assert!(!format!("{replaced:?}").contains("signing"));
    }

    #[test]
    fn refuses_loose_permissions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::create(&path, false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("644") && e.contains("chmod 600"), "{e}");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = NodeKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519"), "{e}");
        let missing = dir.path().join("none.key");
        assert!(matches!(
            NodeKey::load_or_create(&missing, false),
            Err(KeyError::Missing { .. })
        ));
        let (_, origin) = NodeKey::load_or_create(&missing, true).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        let (_, origin) = NodeKey::load_or_create(&missing, true).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
    }

    #[test]
    fn public_key_errors_name_the_source() {
        let e = parse_public_key("uplink.centre_public_key", "abc")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uplink.centre_public_key") && e.contains("\"abc\""),
            "{e}"
        );
    }
}
